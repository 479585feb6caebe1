//! A writer for small, single-directory ISO9660 volumes with Rock Ridge: exactly what a NoCloud
//! seed needs, written in-process (forking `genisoimage` and staging a copy of the agent cost
//! ~11 ms per job; this streams the agent straight from its source with `copy_file_range`).
//!
//! Layout (sectors of 2048 bytes):
//!
//! | sector | contents |
//! | --- | --- |
//! | 0–15 | system area, zero (ECMA-119 6.2.1) |
//! | 16 | Primary Volume Descriptor (8.4) |
//! | 17 | Volume Descriptor Set Terminator (8.3) |
//! | 18 / 19 | L / M path table (9.4): one entry, the root |
//! | 20… | root directory extent (records never straddle a sector, 6.8.1.1) |
//! | next | SUSP continuation area holding the Rock Ridge `ER` entry |
//! | next… | file extents, each starting on a sector boundary, zero-padded |
//!
//! Names: level-1 `NAME8.EXT;1` identifiers for readers without Rock Ridge; the real name, mode and
//! times ride in Rock Ridge (RRIP 1991A, as genisoimage writes it: `SP`/`CE`→`ER` on the root's
//! `.`, `RR`, `PX`, `NM`, `TF` everywhere). No Joliet: Linux prefers Rock Ridge.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::ProvisionError;

/// Logical block (= sector) size; ECMA-119 allows others, every reader expects 2048.
pub const SECTOR: usize = 2048;
/// Longest file name accepted (Rock Ridge `NM` could carry more; the seed's names are short, and
/// the bound keeps every directory record under 255 bytes without `CE` continuations).
pub const MAX_NAME_LEN: usize = 64;
/// Longest volume label: the PVD's volume identifier field (ECMA-119 8.4.6).
pub const MAX_LABEL_LEN: usize = 32;

const PVD_SECTOR: u32 = 16;
const TERMINATOR_SECTOR: u32 = 17;
const L_PATH_TABLE_SECTOR: u32 = 18;
const M_PATH_TABLE_SECTOR: u32 = 19;
const ROOT_DIR_SECTOR: u32 = 20;
/// A directory record's length is one byte (ECMA-119 9.1.1).
const MAX_RECORD_LEN: usize = 255;
const APPLICATION_ID: &str = "MINION";
const SYSTEM_ID: &str = "LINUX";

const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;

// RRIP 1991A `ER` strings, as genisoimage writes them (readers match on the identifier only).
const ER_ID: &[u8] = b"RRIP_1991A";
const ER_DESCRIPTOR: &[u8] =
    b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
const ER_SOURCE: &[u8] = b"PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";

/// One file of the volume's only directory.
#[derive(Debug, Clone, Copy)]
pub struct IsoFile<'a> {
    /// The real (Rock Ridge) name: 1–64 bytes, no `/` or NUL, not `.` or `..`.
    pub name: &'a str,
    /// Permission bits (≤ 0o7777); the file type is always "regular".
    pub mode: u32,
    pub source: IsoSource<'a>,
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, Copy)]
pub enum IsoSource<'a> {
    Bytes(&'a [u8]),
    /// Streamed from this regular file (`copy_file_range` when `out` is a file too).
    Path(&'a Path),
}

/// Writes the volume labelled `label` holding `files` to `out` from its current position (a fresh
/// file, in practice). `out_path` only names `out` in errors. On error, `out` holds garbage: the
/// caller writes to a temporary file and renames it into place on success.
pub fn write(
    label: &str,
    files: &[IsoFile<'_>],
    out: &mut File,
    out_path: &Path,
) -> Result<(), ProvisionError> {
    write_at(label, files, out, out_path, SystemTime::now())
}

/// [`write`] with a fixed clock (tests).
fn write_at(
    label: &str,
    files: &[IsoFile<'_>],
    out: &mut File,
    out_path: &Path,
    now: SystemTime,
) -> Result<(), ProvisionError> {
    check_label(label)?;
    let stamp = Stamp::from_system_time(now);
    let mut entries = prepare(files)?;
    // ECMA-119 9.3: records ordered by file identifier.
    entries.sort_by(|a, b| a.iso_id.cmp(&b.iso_id));

    // Record lengths do not depend on extents, so the directory is laid out with placeholder
    // extents first and patched once the extents are known.
    let dir_mode = S_IFDIR | 0o755;
    let dot_sua = [
        &sp()[..],
        &rr(RR_PX | RR_TF),
        &px(dir_mode, 2),
        &tf(&stamp),
        &ce(0, 0, 0), // placeholder of the same length; the real one is written below
    ]
    .concat();
    let dotdot_sua = [&rr(RR_PX | RR_TF)[..], &px(dir_mode, 2), &tf(&stamp)].concat();
    let mut records = Vec::with_capacity(entries.len() + 2);
    records.push(dir_record(true, &[0], &dot_sua, &stamp)?);
    records.push(dir_record(true, &[1], &dotdot_sua, &stamp)?);
    for e in &entries {
        let sua = [
            &rr(RR_PX | RR_NM | RR_TF)[..],
            &nm(e.name.as_bytes()),
            &px(S_IFREG | e.mode, 1),
            &tf(&stamp),
        ]
        .concat();
        let mut rec = dir_record(false, &e.iso_id, &sua, &stamp)?;
        set_both32(&mut rec[10..18], e.size);
        records.push(rec);
    }
    let (offsets, dir_sectors) = pack_records(&records);

    let ce_sector = ROOT_DIR_SECTOR + dir_sectors;
    let mut next = ce_sector + 1;
    for e in &mut entries {
        if e.size > 0 {
            e.extent = next;
            next = next.checked_add(sectors_for(e.size)).ok_or_else(too_big)?;
        }
    }
    let total_sectors = next;
    let dir_len = dir_sectors.checked_mul(SECTOR as u32).ok_or_else(too_big)?;

    // Everything up to the first file extent, built in memory and written at once.
    let mut head = vec![0u8; (ce_sector as usize + 1) * SECTOR];
    let root_in_pvd = {
        let mut r = dir_record(true, &[0], &[], &stamp)?;
        set_both32(&mut r[2..10], ROOT_DIR_SECTOR);
        set_both32(&mut r[10..18], dir_len);
        r
    };
    let pvd_at = PVD_SECTOR as usize * SECTOR;
    fill_pvd(
        &mut head[pvd_at..pvd_at + SECTOR],
        label,
        total_sectors,
        &root_in_pvd,
        &stamp,
    );
    let term_at = TERMINATOR_SECTOR as usize * SECTOR;
    head[term_at] = 255;
    head[term_at + 1..term_at + 6].copy_from_slice(b"CD001");
    head[term_at + 6] = 1;
    let l_at = L_PATH_TABLE_SECTOR as usize * SECTOR;
    head[l_at..l_at + PATH_TABLE_LEN].copy_from_slice(&path_table_entry(ROOT_DIR_SECTOR, false));
    let m_at = M_PATH_TABLE_SECTOR as usize * SECTOR;
    head[m_at..m_at + PATH_TABLE_LEN].copy_from_slice(&path_table_entry(ROOT_DIR_SECTOR, true));

    // The `.` record again, now that the continuation area's place is known (same length).
    let er = er();
    let dot_sua = [
        &sp()[..],
        &rr(RR_PX | RR_TF),
        &px(dir_mode, 2),
        &tf(&stamp),
        &ce(ce_sector, 0, er.len() as u32),
    ]
    .concat();
    records[0] = dir_record(true, &[0], &dot_sua, &stamp)?;
    let dir_at = ROOT_DIR_SECTOR as usize * SECTOR;
    for (i, (rec, off)) in records.iter_mut().zip(&offsets).enumerate() {
        match i {
            0 | 1 => {
                set_both32(&mut rec[2..10], ROOT_DIR_SECTOR);
                set_both32(&mut rec[10..18], dir_len);
            }
            _ => set_both32(&mut rec[2..10], entries[i - 2].extent),
        }
        let at = dir_at + off;
        head[at..at + rec.len()].copy_from_slice(rec);
    }
    let ce_at = ce_sector as usize * SECTOR;
    head[ce_at..ce_at + er.len()].copy_from_slice(&er);

    // Then the files in extent order; small ones and padding are batched with the head.
    let mut pending = head;
    for e in &mut entries {
        match &mut e.content {
            Content::Bytes(b) => pending.extend_from_slice(b),
            Content::File { file, path } => {
                out.write_all(&pending)
                    .map_err(ProvisionError::io("write", out_path))?;
                pending.clear();
                // Exactly the size recorded at open: a source that grew meanwhile is cut there
                // (the directory already says that size); one that shrank is an error.
                let copied = io::copy(&mut Read::take(&mut *file, u64::from(e.size)), out)
                    .map_err(ProvisionError::io("copy into the ISO", path))?;
                if copied != u64::from(e.size) {
                    return Err(ProvisionError::invalid(
                        "iso file",
                        format!(
                            "{} shrank from {} to {copied} bytes while being written",
                            path.display(),
                            e.size
                        ),
                    ));
                }
            }
        }
        let pad = (SECTOR - e.size as usize % SECTOR) % SECTOR;
        pending.resize(pending.len() + pad, 0);
    }
    out.write_all(&pending)
        .map_err(ProvisionError::io("write", out_path))?;
    Ok(())
}

/// A prepared file: validated, its source opened and sized, its ISO identifier chosen.
struct Entry<'a> {
    name: &'a str,
    iso_id: Vec<u8>,
    mode: u32,
    size: u32,
    extent: u32,
    content: Content<'a>,
}

enum Content<'a> {
    Bytes(&'a [u8]),
    File { file: File, path: &'a Path },
}

fn prepare<'a>(files: &[IsoFile<'a>]) -> Result<Vec<Entry<'a>>, ProvisionError> {
    let mut names = HashSet::new();
    let mut ids = HashSet::new();
    let mut entries = Vec::with_capacity(files.len());
    for f in files {
        check_name(f.name)?;
        if !names.insert(f.name) {
            return Err(ProvisionError::invalid(
                "iso file name",
                format!("`{}` appears twice", f.name),
            ));
        }
        if f.mode > 0o7777 {
            return Err(ProvisionError::invalid(
                "iso file mode",
                format!("{:o} for `{}` is not a permission mode", f.mode, f.name),
            ));
        }
        let (content, len) = match f.source {
            IsoSource::Bytes(b) => (Content::Bytes(b), b.len() as u64),
            IsoSource::Path(path) => {
                let file = File::open(path).map_err(ProvisionError::io("open", path))?;
                let meta = file.metadata().map_err(ProvisionError::io("stat", path))?;
                if !meta.is_file() {
                    return Err(ProvisionError::invalid(
                        "iso file source",
                        format!("{} is not a regular file", path.display()),
                    ));
                }
                (Content::File { file, path }, meta.len())
            }
        };
        // ECMA-119 9.1.4: the data length is a 32-bit field; multi-extent files are not worth it.
        let size = u32::try_from(len).map_err(|_| {
            ProvisionError::invalid(
                "iso file size",
                format!("`{}` is {len} bytes; at most 4 GiB - 1 fit", f.name),
            )
        })?;
        let iso_id = iso_identifier(f.name, &ids);
        ids.insert(iso_id.clone());
        entries.push(Entry {
            name: f.name,
            iso_id,
            mode: f.mode,
            size,
            extent: 0,
            content,
        });
    }
    Ok(entries)
}

fn check_label(label: &str) -> Result<(), ProvisionError> {
    let ok = !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ProvisionError::invalid(
            "iso label",
            format!("`{label}` is not 1–{MAX_LABEL_LEN} characters of [A-Za-z0-9_-]"),
        ))
    }
}

fn check_name(name: &str) -> Result<(), ProvisionError> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("is longer than 64 bytes")
    } else if name.contains('/') || name.contains('\0') {
        Some("contains `/` or NUL (the volume has one flat directory)")
    } else if name == "." || name == ".." {
        Some("is `.` or `..`")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(ProvisionError::invalid(
            "iso file name",
            format!("`{}` {p}", name.escape_debug()),
        )),
    }
}

/// A level-1 identifier (ECMA-119 7.5, 10.1): `BASE.EXT;1`, up to 8 + 3 d-characters, others
/// mapped to `_`, like genisoimage (`meta-data` → `META_DAT.;1`). Clashes get a numeric tail.
fn iso_identifier(name: &str, taken: &HashSet<Vec<u8>>) -> Vec<u8> {
    let (base, ext) = match name.rfind('.') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => (name, ""),
    };
    let d_chars = |s: &str, max: usize| -> String {
        s.bytes()
            .take(max)
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'_' {
                    char::from(b.to_ascii_uppercase())
                } else {
                    '_'
                }
            })
            .collect()
    };
    let base = d_chars(base, 8);
    let ext = d_chars(ext, 3);
    let mut n: u64 = 0;
    loop {
        let b = if n == 0 {
            base.clone()
        } else {
            let tail = n.to_string();
            let keep = 8usize.saturating_sub(tail.len()).min(base.len());
            format!("{}{tail}", &base[..keep])
        };
        let id = format!("{b}.{ext};1").into_bytes();
        if !taken.contains(&id) {
            return id;
        }
        n += 1;
    }
}

/// A directory record (ECMA-119 9.1) with extent and data length zero, to be patched.
fn dir_record(
    is_dir: bool,
    id: &[u8],
    sua: &[u8],
    stamp: &Stamp,
) -> Result<Vec<u8>, ProvisionError> {
    // 9.1.12: a padding byte keeps the system use area at an even offset.
    let id_field = id.len() + usize::from(id.len() % 2 == 0);
    let mut len = 33 + id_field + sua.len();
    len += len % 2; // SUSP 4: records are of even length
    if len > MAX_RECORD_LEN {
        return Err(ProvisionError::invalid(
            "iso directory record",
            format!(
                "`{}` needs {len} bytes; a record holds at most {MAX_RECORD_LEN}",
                String::from_utf8_lossy(id)
            ),
        ));
    }
    let mut r = vec![0u8; len];
    r[0] = len as u8;
    r[18..25].copy_from_slice(&stamp.record());
    r[25] = if is_dir { 0x02 } else { 0x00 };
    r[28..32].copy_from_slice(&both16(1)); // volume sequence number
    r[32] = id.len() as u8;
    r[33..33 + id.len()].copy_from_slice(id);
    let sua_at = 33 + id_field;
    r[sua_at..sua_at + sua.len()].copy_from_slice(sua);
    Ok(r)
}

/// Offsets of `records` in the directory extent, starting a new sector whenever the next record
/// would cross a boundary (ECMA-119 6.8.1.1); and the number of sectors used.
fn pack_records(records: &[Vec<u8>]) -> (Vec<usize>, u32) {
    let mut offsets = Vec::with_capacity(records.len());
    let mut at = 0usize;
    for r in records {
        let room = SECTOR - at % SECTOR;
        if r.len() > room {
            at += room;
        }
        offsets.push(at);
        at += r.len();
    }
    (offsets, at.div_ceil(SECTOR) as u32)
}

fn sectors_for(size: u32) -> u32 {
    size.div_ceil(SECTOR as u32)
}

fn too_big() -> ProvisionError {
    ProvisionError::invalid("iso volume", "more than 2^32 sectors")
}

const PATH_TABLE_LEN: usize = 10;

/// The root's path table entry (ECMA-119 9.4): in little-endian (L) or big-endian (M) order.
fn path_table_entry(extent: u32, big_endian: bool) -> [u8; PATH_TABLE_LEN] {
    let mut e = [0u8; PATH_TABLE_LEN];
    e[0] = 1; // length of the directory identifier (the root's is one 0x00 byte)
    let (ext, parent) = if big_endian {
        (extent.to_be_bytes(), 1u16.to_be_bytes())
    } else {
        (extent.to_le_bytes(), 1u16.to_le_bytes())
    };
    e[2..6].copy_from_slice(&ext);
    e[6..8].copy_from_slice(&parent);
    e
}

/// The Primary Volume Descriptor (ECMA-119 8.4), byte positions 0-based.
fn fill_pvd(s: &mut [u8], label: &str, total_sectors: u32, root: &[u8], stamp: &Stamp) {
    s[0] = 1;
    s[1..6].copy_from_slice(b"CD001");
    s[6] = 1;
    put_padded(&mut s[8..40], SYSTEM_ID);
    put_padded(&mut s[40..72], label);
    set_both32(&mut s[80..88], total_sectors);
    s[120..124].copy_from_slice(&both16(1)); // volume set size
    s[124..128].copy_from_slice(&both16(1)); // volume sequence number
    s[128..132].copy_from_slice(&both16(SECTOR as u16));
    set_both32(&mut s[132..140], PATH_TABLE_LEN as u32);
    s[140..144].copy_from_slice(&L_PATH_TABLE_SECTOR.to_le_bytes());
    s[148..152].copy_from_slice(&M_PATH_TABLE_SECTOR.to_be_bytes());
    s[156..190].copy_from_slice(root);
    // Volume set, publisher, preparer: blank; then the application.
    put_padded(&mut s[190..574], "");
    put_padded(&mut s[574..702], APPLICATION_ID);
    put_padded(&mut s[702..813], ""); // copyright, abstract, bibliographic file ids
    let long = stamp.volume();
    s[813..830].copy_from_slice(&long); // creation
    s[830..847].copy_from_slice(&long); // modification
    s[847..863].copy_from_slice(b"0000000000000000"); // expiration: none (8.4.4.1)
    s[864..881].copy_from_slice(&long); // effective
    s[881] = 1; // file structure version
}

fn put_padded(field: &mut [u8], text: &str) {
    field.fill(b' ');
    field[..text.len()].copy_from_slice(text.as_bytes());
}

// Rock Ridge / SUSP entries. Each: signature (2), length, version, data.

const RR_PX: u8 = 0x01;
const RR_NM: u8 = 0x08;
const RR_TF: u8 = 0x80;
const PX_LEN: usize = 36;
const TF_LEN: usize = 26;
const CE_LEN: usize = 28;

/// SUSP 5.3 `SP`: first entry of the root's `.`; marks SUSP in use, nothing to skip.
fn sp() -> [u8; 7] {
    [b'S', b'P', 7, 1, 0xBE, 0xEF, 0]
}

/// RRIP 1991A 4.1.7 `RR`: which Rock Ridge entries this record has (dropped in 1.12; Linux and
/// genisoimage still write and honour it).
fn rr(flags: u8) -> [u8; 5] {
    [b'R', b'R', 5, 1, flags]
}

/// RRIP 4.1.1 `PX`: mode, links, uid, gid (the 1991A 36-byte form, no inode number).
fn px(mode: u32, nlink: u32) -> [u8; PX_LEN] {
    let mut e = [0u8; PX_LEN];
    e[..4].copy_from_slice(&[b'P', b'X', PX_LEN as u8, 1]);
    set_both32(&mut e[4..12], mode);
    set_both32(&mut e[12..20], nlink);
    // uid and gid 0: the guest's root owns the seed.
    e
}

/// RRIP 4.1.4 `NM`: the real name, in one piece (names are ≤ 64 bytes).
fn nm(name: &[u8]) -> Vec<u8> {
    let mut e = vec![b'N', b'M', (5 + name.len()) as u8, 1, 0];
    e.extend_from_slice(name);
    e
}

/// RRIP 4.1.6 `TF`: modify, access and attribute-change times, 7-byte form.
fn tf(stamp: &Stamp) -> [u8; TF_LEN] {
    let mut e = [0u8; TF_LEN];
    e[..5].copy_from_slice(&[b'T', b'F', TF_LEN as u8, 1, 0x0e]);
    for i in 0..3 {
        e[5 + 7 * i..12 + 7 * i].copy_from_slice(&stamp.record());
    }
    e
}

/// SUSP 5.1 `CE`: the rest of this record's entries live at `sector`+`offset`, `len` bytes.
fn ce(sector: u32, offset: u32, len: u32) -> [u8; CE_LEN] {
    let mut e = [0u8; CE_LEN];
    e[..4].copy_from_slice(&[b'C', b'E', CE_LEN as u8, 1]);
    set_both32(&mut e[4..12], sector);
    set_both32(&mut e[12..20], offset);
    set_both32(&mut e[20..28], len);
    e
}

/// SUSP 5.5 `ER`: names the extension in use (RRIP 1991A). Too long for the `.` record itself
/// (237 bytes), hence the continuation area.
fn er() -> Vec<u8> {
    let len = 8 + ER_ID.len() + ER_DESCRIPTOR.len() + ER_SOURCE.len();
    let mut e = vec![
        b'E',
        b'R',
        len as u8,
        1,
        ER_ID.len() as u8,
        ER_DESCRIPTOR.len() as u8,
        ER_SOURCE.len() as u8,
        1,
    ];
    e.extend_from_slice(ER_ID);
    e.extend_from_slice(ER_DESCRIPTOR);
    e.extend_from_slice(ER_SOURCE);
    e
}

/// ECMA-119 7.2.3: a 32-bit number in both byte orders, little-endian first.
fn set_both32(field: &mut [u8], v: u32) {
    field[..4].copy_from_slice(&v.to_le_bytes());
    field[4..8].copy_from_slice(&v.to_be_bytes());
}

/// ECMA-119 7.2.3 for 16 bits.
fn both16(v: u16) -> [u8; 4] {
    let [a, b] = v.to_le_bytes();
    [a, b, b, a]
}

/// A UTC time broken down for the two ISO date formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl Stamp {
    fn from_system_time(t: SystemTime) -> Stamp {
        // Before 1970 only on a broken clock: clamp to the epoch.
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        Stamp {
            // Directory-record years are 1900 + one byte (ECMA-119 9.1.5).
            year: year.clamp(1970, 2155) as u16,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    /// ECMA-119 9.1.5: seven bytes, the last the offset from GMT in 15-minute steps (0: UTC).
    fn record(&self) -> [u8; 7] {
        [
            (self.year - 1900) as u8,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            0,
        ]
    }

    /// ECMA-119 8.4.26.1: `YYYYMMDDHHMMSScc` digits and a GMT offset byte.
    fn volume(&self) -> [u8; 17] {
        let digits = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        );
        let mut v = [0u8; 17];
        v[..16].copy_from_slice(digits.as_bytes());
        v
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u8, u8) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;
    use std::process::Command;

    /// `isoinfo -i ISO ARGS…`'s stdout (the seed's tests read their ISOs back with it too).
    pub(crate) fn isoinfo(iso: &Path, args: &[&str]) -> Vec<u8> {
        let out = Command::new("isoinfo")
            .arg("-i")
            .arg(iso)
            .args(args)
            .output()
            .expect("isoinfo runs");
        assert!(
            out.status.success(),
            "isoinfo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn text(b: Vec<u8>) -> String {
        String::from_utf8(b).expect("utf-8")
    }

    fn write_iso(
        dir: &Path,
        label: &str,
        files: &[IsoFile<'_>],
    ) -> Result<PathBuf, ProvisionError> {
        let path = dir.join("out.iso");
        let mut out = File::create(&path).expect("create");
        write(label, files, &mut out, &path)?;
        Ok(path)
    }

    use std::path::PathBuf;

    /// Bytes that differ per position, so a misplaced sector shows.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 2048) as u8).collect()
    }

    #[test]
    fn isoinfo_reads_label_rock_ridge_names_modes_and_contents() {
        if !minion_testenv::require(
            "isoinfo_reads_label_rock_ridge_names_modes_and_contents",
            &[minion_testenv::Need::Program("isoinfo")],
        ) {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let agent = tmp.path().join("agent-src");
        let agent_bytes = pattern(3 * SECTOR + 123);
        fs::write(&agent, &agent_bytes).expect("agent");
        let empty = tmp.path().join("empty-src");
        fs::write(&empty, b"").expect("empty");
        let meta = b"instance-id: x\n";
        let files = [
            IsoFile {
                name: "meta-data",
                mode: 0o644,
                source: IsoSource::Bytes(meta),
            },
            IsoFile {
                name: "user-data",
                mode: 0o644,
                source: IsoSource::Bytes(b"#cloud-config\n"),
            },
            IsoFile {
                name: "minion-agent",
                mode: 0o755,
                source: IsoSource::Path(&agent),
            },
            IsoFile {
                name: "empty",
                mode: 0o600,
                source: IsoSource::Path(&empty),
            },
            IsoFile {
                name: "empty-bytes",
                mode: 0o644,
                source: IsoSource::Bytes(b""),
            },
        ];
        let iso = write_iso(tmp.path(), "cidata", &files).expect("written");

        let len = fs::metadata(&iso).expect("iso").len();
        assert_eq!(len % SECTOR as u64, 0, "not whole sectors: {len}");
        let pvd = text(isoinfo(&iso, &["-d"]));
        assert!(pvd.contains("Volume id: cidata\n"), "{pvd}");
        assert!(
            pvd.contains("Rock Ridge signatures version 1 found"),
            "{pvd}"
        );
        assert!(pvd.contains("Logical block size is: 2048"), "{pvd}");
        assert!(
            pvd.contains(&format!("Volume size is: {}\n", len / SECTOR as u64)),
            "volume size ≠ file size: {len} bytes\n{pvd}"
        );
        assert!(pvd.contains("Application id: MINION"), "{pvd}");

        let listing = text(isoinfo(&iso, &["-R", "-l"]));
        let mode_of = |name: &str| -> String {
            let line = listing
                .lines()
                .find(|l| l.trim_end().ends_with(&format!(" {name}")))
                .unwrap_or_else(|| panic!("{name} not listed:\n{listing}"));
            line.split_whitespace()
                .next()
                .expect("mode column")
                .to_string()
        };
        assert_eq!(mode_of("minion-agent"), "-rwxr-xr-x");
        assert_eq!(mode_of("meta-data"), "-rw-r--r--");
        assert_eq!(mode_of("user-data"), "-rw-r--r--");
        assert_eq!(mode_of("empty"), "-rw-------");
        assert_eq!(mode_of("."), "drwxr-xr-x");

        assert_eq!(isoinfo(&iso, &["-R", "-x", "/minion-agent"]), agent_bytes);
        assert_eq!(isoinfo(&iso, &["-R", "-x", "/meta-data"]), meta);
        assert_eq!(
            isoinfo(&iso, &["-R", "-x", "/user-data"]),
            b"#cloud-config\n"
        );
        assert_eq!(isoinfo(&iso, &["-R", "-x", "/empty"]), b"");
        assert_eq!(isoinfo(&iso, &["-R", "-x", "/empty-bytes"]), b"");

        // Without Rock Ridge: genisoimage-style level-1 names.
        let plain = text(isoinfo(&iso, &["-l"]));
        for id in [
            "META_DAT.;1",
            "USER_DAT.;1",
            "MINION_A.;1",
            "EMPTY.;1",
            "EMPTY_BY.;1",
        ] {
            assert!(plain.contains(id), "{id} missing:\n{plain}");
        }
        // Files follow the head (system area, PVD, terminator, 2 path tables, 1 dir, CE) in
        // identifier order, each on its own sector: the agent is the only multi-sector one.
        assert_eq!(len, (22 + 1 + 4 + 1) * SECTOR as u64, "{plain}");
    }

    #[test]
    fn directories_spanning_sectors_keep_records_whole() {
        if !minion_testenv::require(
            "directories_spanning_sectors_keep_records_whole",
            &[minion_testenv::Need::Program("isoinfo")],
        ) {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let names: Vec<String> = (0..40)
            .map(|i| format!("{i:02}-{}", "n".repeat(60)))
            .collect();
        let bodies: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("file {i}\n").into_bytes())
            .collect();
        let files: Vec<IsoFile<'_>> = names
            .iter()
            .zip(&bodies)
            .map(|(n, b)| IsoFile {
                name: n,
                mode: 0o644,
                source: IsoSource::Bytes(b),
            })
            .collect();
        let iso = write_iso(tmp.path(), "MANY", &files).expect("written");

        // Walk the root directory ourselves: records never cross a sector boundary.
        let img = fs::read(&iso).expect("read");
        let pvd = &img[16 * SECTOR..17 * SECTOR];
        let root_extent = u32::from_le_bytes(pvd[158..162].try_into().expect("4")) as usize;
        let root_len = u32::from_le_bytes(pvd[166..170].try_into().expect("4")) as usize;
        assert!(
            root_len > SECTOR,
            "the test needs a multi-sector directory: {root_len}"
        );
        let dir = &img[root_extent * SECTOR..root_extent * SECTOR + root_len];
        let (mut at, mut seen) = (0, 0);
        while at < dir.len() {
            let len = dir[at] as usize;
            if len == 0 {
                at = (at / SECTOR + 1) * SECTOR; // rest of this sector is padding
                continue;
            }
            assert_eq!(
                at / SECTOR,
                (at + len - 1) / SECTOR,
                "record at {at} straddles"
            );
            seen += 1;
            at += len;
        }
        assert_eq!(seen, 42, ". and .. and 40 files");

        let listing = text(isoinfo(&iso, &["-R", "-l"]));
        for (n, b) in names.iter().zip(&bodies) {
            assert!(listing.contains(n.as_str()), "{n} missing:\n{listing}");
            assert_eq!(&isoinfo(&iso, &["-R", "-x", &format!("/{n}")]), b, "{n}");
        }
        // 40 names share their first 8 characters in pairs … all level-1 identifiers distinct.
        let plain = text(isoinfo(&iso, &["-l"]));
        let ids: HashSet<&str> = plain
            .lines()
            .filter_map(|l| l.split_whitespace().last())
            .filter(|w| w.ends_with(";1"))
            .collect();
        assert_eq!(ids.len(), 40, "{plain}");
    }

    #[test]
    fn level1_identifiers_are_unique_and_genisoimage_like() {
        let mut taken = HashSet::new();
        let mut id = |n: &str| {
            let id = String::from_utf8(iso_identifier(n, &taken)).expect("ascii");
            taken.insert(id.clone().into_bytes());
            id
        };
        assert_eq!(id("meta-data"), "META_DAT.;1");
        assert_eq!(id("meta-data2"), "META_DA1.;1");
        assert_eq!(id("meta-data3"), "META_DA2.;1");
        assert_eq!(id("a.tar.gz"), "A_TAR.GZ;1");
        assert_eq!(id(".profile"), ".PRO;1");
        assert_eq!(id("ünï"), "__N__.;1"); // bytes, not chars
    }

    #[test]
    fn bad_input_is_refused_naming_the_field() {
        if !minion_testenv::require(
            "bad_input_is_refused_naming_the_field",
            &[minion_testenv::Need::Program("isoinfo")],
        ) {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let ok = |name| IsoFile {
            name,
            mode: 0o644,
            source: IsoSource::Bytes(b"x"),
        };
        let cases: Vec<(&str, Vec<IsoFile<'_>>, &str)> = vec![
            ("", vec![], "invalid iso label"),
            ("ci data", vec![], "invalid iso label"),
            ("ci/data", vec![], "invalid iso label"),
            ("cïdata", vec![], "invalid iso label"),
            (
                "cidata",
                vec![ok("a"), ok("b"), ok("a")],
                "invalid iso file name: `a` appears twice",
            ),
            ("cidata", vec![ok("")], "invalid iso file name: `` is empty"),
            ("cidata", vec![ok("a/b")], "invalid iso file name: `a/b`"),
            ("cidata", vec![ok("..")], "invalid iso file name: `..`"),
            ("cidata", vec![ok("a\0b")], "invalid iso file name"),
            (
                "cidata",
                vec![IsoFile {
                    mode: 0o10644,
                    ..ok("m")
                }],
                "invalid iso file mode",
            ),
        ];
        let long_label = "x".repeat(33);
        let long_name = "n".repeat(65);
        let mut cases = cases;
        cases.push((&long_label, vec![], "invalid iso label"));
        cases.push(("cidata", vec![ok(&long_name)], "longer than 64"));
        for (label, files, want) in cases {
            let err = write_iso(tmp.path(), label, &files).expect_err(want);
            assert!(err.to_string().contains(want), "{label:?}: {err}");
        }
        // The longest name fits in one record.
        let longest = "n".repeat(MAX_NAME_LEN);
        let iso = write_iso(tmp.path(), "cidata", &[ok(&longest)]).expect("64-byte name");
        assert_eq!(isoinfo(&iso, &["-R", "-x", &format!("/{longest}")]), b"x");
    }

    #[test]
    fn unreadable_sources_name_their_path() {
        let tmp = tempfile::tempdir().expect("tmp");
        let missing = tmp.path().join("no-such-agent");
        let err = write_iso(
            tmp.path(),
            "cidata",
            &[IsoFile {
                name: "a",
                mode: 0o755,
                source: IsoSource::Path(&missing),
            }],
        )
        .expect_err("missing");
        assert!(
            matches!(err, ProvisionError::Io { op: "open", .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("no-such-agent"), "{err}");

        let err = write_iso(
            tmp.path(),
            "cidata",
            &[IsoFile {
                name: "a",
                mode: 0o755,
                source: IsoSource::Path(tmp.path()),
            }],
        )
        .expect_err("a directory");
        assert!(
            err.to_string().starts_with("invalid iso file source")
                && err.to_string().contains(&tmp.path().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn oversized_records_are_refused_not_truncated() {
        let stamp = Stamp::from_system_time(UNIX_EPOCH);
        assert_eq!(
            dir_record(false, b"A.;1", &[0; 216], &stamp)
                .expect("fits")
                .len(),
            254
        );
        let err = dir_record(false, b"A.;1", &[0; 220], &stamp).expect_err("too long");
        assert!(err.to_string().contains("at most 255"), "{err}");
    }

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let at = |s| Stamp::from_system_time(UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(&at(0).volume()[..16], b"1970010100000000");
        assert_eq!(at(0).record(), [70, 1, 1, 0, 0, 0, 0]);
        assert_eq!(&at(1_700_000_000).volume()[..16], b"2023111422132000");
        assert_eq!(&at(951_782_400).volume()[..16], b"2000022900000000"); // leap day
        assert_eq!(&at(1_795_000_000).volume()[..16], b"2026111811064000");
        assert_eq!(at(1_795_000_000).record(), [126, 11, 18, 11, 6, 40, 0]);
    }

    #[test]
    fn timestamps_read_back_through_isoinfo() {
        if !minion_testenv::require(
            "timestamps_read_back_through_isoinfo",
            &[minion_testenv::Need::Program("isoinfo")],
        ) {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("t.iso");
        let mut out = File::create(&path).expect("create");
        let when = UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let f = [IsoFile {
            name: "a",
            mode: 0o644,
            source: IsoSource::Bytes(b"x"),
        }];
        write_at("cidata", &f, &mut out, &path, when).expect("written");
        let pvd = text(isoinfo(&path, &["-d", "-debug"]));
        assert!(
            pvd.contains("Creation Date:     2023 11 14 22:13:20.00"),
            "{pvd}"
        );
        let listing = text(isoinfo(&path, &["-R", "-l"]));
        let a = listing
            .lines()
            .find(|l| l.ends_with(" a "))
            .expect("a listed");
        assert!(a.contains("Nov 14 2023"), "{listing}");
    }
}
