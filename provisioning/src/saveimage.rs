//! libvirt's qemu save image, as far as a restore under a new identity needs it. A save image is
//! a 92-byte header, a data area (the domain XML, NUL, libvirt's migration cookie, zero padding:
//! libvirt leaves room to edit the XML in place), then qemu's migration stream:
//!
//! ```text
//! "LibvirtQemudSave" version:u32 data_len:u32 was_running:u32 compressed:u32 cookie_offset:u32 unused:[u32; 14]
//! data_len bytes: <domain>…</domain> \0 <cookie>…</cookie> \0 … \0
//! the migration stream ("QEVM"…)
//! ```
//!
//! libvirt refuses a restore whose XML names another UUID than the saved one, and two domains
//! cannot share a UUID; so each restored VM gets its own copy of the image with its own XML in the
//! data area (same length, same stream offset; the stream is copied in the kernel, ~10 ms for a
//! 512 MiB guest's 26 MB here).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::ProvisionError;

const MAGIC: &[u8; 16] = b"LibvirtQemudSave";
const HEADER_LEN: usize = 92;
/// The data area libvirt writes is 64 KiB and a bit; more is not a save image of ours.
const MAX_DATA: usize = 16 * 1024 * 1024;

/// The header and data area of a save image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveImage {
    header: Vec<u8>,
    /// The domain XML (without its NUL).
    pub xml: String,
    /// The cookie and the rest of the data area, from `cookie_offset` on.
    cookie: Vec<u8>,
    data_len: usize,
}

fn bad(path: &Path, why: impl Into<String>) -> ProvisionError {
    ProvisionError::invalid("save image", format!("{}: {}", path.display(), why.into()))
}

fn u32_at(b: &[u8], at: usize) -> usize {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w) as usize
}

impl SaveImage {
    /// Reads the header and data area of the image at `path`. Only whole, uncompressed images
    /// of version 2 (what this libvirt writes; a half-written one still has libvirt's "partial"
    /// magic) are accepted.
    pub fn read(path: &Path) -> Result<SaveImage, ProvisionError> {
        let mut f = fs::File::open(path).map_err(ProvisionError::io("open", path))?;
        let mut head = vec![0u8; HEADER_LEN];
        f.read_exact(&mut head)
            .map_err(|_| bad(path, "shorter than a save image's header"))?;
        let data_len = Self::data_len(&head, path)?;
        head.resize(HEADER_LEN + data_len, 0);
        f.read_exact(&mut head[HEADER_LEN..])
            .map_err(|_| bad(path, "truncated in its data area"))?;
        SaveImage::parse(&head, path)
    }

    /// How many bytes of an image's start [`SaveImage::parse`] needs at most.
    pub const MAX_HEAD: usize = HEADER_LEN + MAX_DATA;

    /// The data area's length a header (at least its first 92 bytes) announces, checked.
    fn data_len(head: &[u8], path: &Path) -> Result<usize, ProvisionError> {
        if head.len() < HEADER_LEN {
            return Err(bad(path, "shorter than a save image's header"));
        }
        if &head[..16] != MAGIC {
            return Err(bad(path, "not a whole libvirt save image (bad magic)"));
        }
        let (version, data_len, compressed, cookie_offset) = (
            u32_at(head, 16),
            u32_at(head, 20),
            u32_at(head, 28),
            u32_at(head, 32),
        );
        if version != 2 {
            return Err(bad(path, format!("save image version {version}, not 2")));
        }
        if compressed != 0 {
            return Err(bad(path, "a compressed save image"));
        }
        if data_len == 0 || data_len > MAX_DATA || cookie_offset > data_len {
            return Err(bad(path, format!("a data area of {data_len} bytes")));
        }
        Ok(data_len)
    }

    /// Parses an image's start (header and data area; more is ignored), read from `path`
    /// (named in errors) by whatever means: a file, or a volume's download.
    pub fn parse(head: &[u8], path: &Path) -> Result<SaveImage, ProvisionError> {
        let data_len = Self::data_len(head, path)?;
        let cookie_offset = u32_at(head, 32);
        let data = head
            .get(HEADER_LEN..HEADER_LEN + data_len)
            .ok_or_else(|| bad(path, "truncated in its data area"))?;
        let xml_end = data
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad(path, "the domain XML has no end"))?;
        let xml = String::from_utf8(data[..xml_end].to_vec())
            .map_err(|_| bad(path, "the domain XML is not UTF-8"))?;
        let cookie_start = if cookie_offset > 0 {
            cookie_offset
        } else {
            xml_end + 1
        };
        Ok(SaveImage {
            header: head[..HEADER_LEN].to_vec(),
            xml,
            cookie: data[cookie_start..].to_vec(),
            data_len,
        })
    }

    /// The image's header and data area with `xml` in place of its domain XML: as long as the
    /// original's, so written over an image's start it leaves the migration stream where it was.
    /// `dest` is named in errors.
    pub fn head_with_xml(&self, xml: &str, dest: &Path) -> Result<Vec<u8>, ProvisionError> {
        let cookie_offset = xml.len() + 1;
        let used = cookie_offset + self.cookie.len();
        // The cookie's own tail is padding: trim it if the new XML is longer.
        let mut cookie = self.cookie.clone();
        if used > self.data_len {
            let trailing = cookie.iter().rev().take_while(|&&b| b == 0).count();
            let over = used - self.data_len;
            // Keep the cookie's terminating NUL.
            if trailing < over + 1 {
                return Err(bad(dest, "the new domain XML does not fit the data area"));
            }
            cookie.truncate(cookie.len() - over);
        }
        let mut head = self.header.clone();
        let off = u32::try_from(cookie_offset)
            .map_err(|_| bad(dest, "the new domain XML does not fit the data area"))?;
        head[32..36].copy_from_slice(&off.to_le_bytes());
        head.extend_from_slice(xml.as_bytes());
        head.push(0);
        head.extend_from_slice(&cookie);
        head.resize(HEADER_LEN + self.data_len, 0);
        Ok(head)
    }

    /// Writes the image at `src` (this one's source) to `dest` with `xml` in place of its domain
    /// XML: same data area length, same migration stream.
    pub fn write_with_xml(&self, src: &Path, xml: &str, dest: &Path) -> Result<(), ProvisionError> {
        let head = self.head_with_xml(xml, dest)?;
        let mut from = fs::File::open(src).map_err(ProvisionError::io("open", src))?;
        from.seek(SeekFrom::Start((HEADER_LEN + self.data_len) as u64))
            .map_err(ProvisionError::io("seek", src))?;
        let mut to = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .map_err(ProvisionError::io("create", dest))?;
        to.write_all(&head)
            .map_err(ProvisionError::io("write", dest))?;
        // File to file: the kernel copies it (copy_file_range), no pass through user space.
        std::io::copy(&mut from, &mut to).map_err(ProvisionError::io("copy into", dest))?;
        Ok(())
    }
}

/// Where the content of the first `<tag>…</tag>` in `text` is.
/// The template's saved domain XML as VM `job_id`'s: the template's id replaced by the job's
/// (name, metadata, every path named after it) and a new UUID and generation id.
pub fn restore_xml(template_xml: &str, job_id: &str) -> Result<String, ProvisionError> {
    let name = element(template_xml, "name")
        .ok_or_else(|| ProvisionError::invalid("save image", "its domain XML has no name"))?;
    let template_id = name
        .strip_prefix(crate::DOMAIN_PREFIX)
        .filter(|id| id.len() >= 8)
        .ok_or_else(|| {
            ProvisionError::invalid("save image", format!("domain {name} is not Minion's"))
        })?;
    let mut xml = template_xml.replace(template_id, job_id);
    for tag in ["uuid", "genid"] {
        xml = replace_element(&xml, tag, &uuid::Uuid::new_v4().to_string()).ok_or_else(|| {
            ProvisionError::invalid("save image", format!("its domain XML has no <{tag}>"))
        })?;
    }
    Ok(xml)
}

fn element_range(text: &str, tag: &str) -> Option<std::ops::Range<usize>> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&format!("</{tag}>"))?;
    Some(start..end)
}

/// The content of the first `<tag>…</tag>` in `text`.
pub(crate) fn element<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    element_range(text, tag).map(|r| &text[r])
}

/// `text` with the content of the first `<tag>…</tag>` replaced by `value`.
pub(crate) fn replace_element(text: &str, tag: &str, value: &str) -> Option<String> {
    let r = element_range(text, tag)?;
    Some(format!("{}{value}{}", &text[..r.start], &text[r.end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(
        dir: &Path,
        xml: &str,
        cookie: &str,
        data_len: usize,
        stream: &[u8],
    ) -> std::path::PathBuf {
        let mut h = Vec::new();
        h.extend_from_slice(MAGIC);
        for v in [2u32, data_len as u32, 1, 0, (xml.len() + 1) as u32] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h.resize(HEADER_LEN, 0);
        let mut data = xml.as_bytes().to_vec();
        data.push(0);
        data.extend_from_slice(cookie.as_bytes());
        data.push(0);
        data.resize(data_len, 0);
        let p = dir.join("src.save");
        fs::write(&p, [h, data, stream.to_vec()].concat()).expect("write");
        p
    }

    #[test]
    fn the_xml_is_replaced_and_the_stream_kept() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = image(
            tmp.path(),
            "<domain><uuid>a</uuid></domain>",
            "<cookie/>",
            256,
            b"QEVMstream",
        );
        let img = SaveImage::read(&src).expect("read");
        assert_eq!(img.xml, "<domain><uuid>a</uuid></domain>");
        let new_xml = replace_element(&img.xml, "uuid", "b-much-longer-than-before").expect("uuid");
        let dest = tmp.path().join("dest.save");
        img.write_with_xml(&src, &new_xml, &dest).expect("write");
        let again = SaveImage::read(&dest).expect("read back");
        assert_eq!(again.xml, new_xml);
        assert_eq!(again.cookie[..9], *b"<cookie/>");
        let (a, b) = (fs::read(&src).expect("src"), fs::read(&dest).expect("dest"));
        assert_eq!(a.len(), b.len());
        assert!(b.ends_with(b"QEVMstream"));
        // Never over an existing file.
        assert!(img.write_with_xml(&src, &new_xml, &dest).is_err());
    }

    #[test]
    fn partial_compressed_and_broken_images_are_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = image(tmp.path(), "<domain/>", "<cookie/>", 64, b"QEVM");
        let whole = fs::read(&src).expect("read");
        for (what, bytes) in [
            (
                "bad magic",
                [b"LibvirtQemudPart".as_slice(), &whole[16..]].concat(),
            ),
            ("header", whole[..40].to_vec()),
            ("truncated", whole[..HEADER_LEN + 10].to_vec()),
            ("compressed", {
                let mut b = whole.clone();
                b[28] = 1;
                b
            }),
        ] {
            fs::write(&src, &bytes).expect("write");
            let err = SaveImage::read(&src).expect_err(what);
            assert!(err.to_string().contains("save image"), "{what}: {err}");
        }
        // An XML that no longer fits the data area.
        fs::write(&src, &whole).expect("write");
        let img = SaveImage::read(&src).expect("read");
        let err = img
            .write_with_xml(&src, &"x".repeat(100), &tmp.path().join("big.save"))
            .expect_err("too big");
        assert!(err.to_string().contains("does not fit"), "{err}");
    }

    #[test]
    fn a_restored_vm_gets_the_template_s_xml_under_its_own_id_and_uuid() {
        let t =
            "<domain><name>minion-snapshot-0123456789abcdef</name><uuid>u1</uuid><genid>g1</genid>\
                 <disk file='/v/minion-abc-snapshot-0123456789abcdef.overlay.qcow2'/></domain>";
        let x = restore_xml(t, "job-42").expect("restore xml");
        assert!(x.contains("<name>minion-job-42</name>"), "{x}");
        assert!(x.contains("minion-abc-job-42.overlay.qcow2"), "{x}");
        assert!(
            !x.contains("<uuid>u1</uuid>") && !x.contains("<genid>g1</genid>"),
            "{x}"
        );
        assert!(restore_xml("<domain><name>other</name></domain>", "j").is_err());
    }

    #[test]
    fn elements_are_replaced_once() {
        assert_eq!(
            replace_element("<a><uuid>1</uuid><uuid>2</uuid></a>", "uuid", "x").as_deref(),
            Some("<a><uuid>x</uuid><uuid>2</uuid></a>")
        );
        assert_eq!(replace_element("<a/>", "uuid", "x"), None);
        assert_eq!(element("<a><name>n</name></a>", "name"), Some("n"));
    }
}
