//! Per-job copy-on-write disks: a qcow2 overlay whose backing file is the image's disk, made with
//! `qemu-img`. The base is never written.
//!
//! `qemu-img create` costs ~11 ms per call (process start, library loading), half of the daemon's
//! per-job budget. Its output for a given base is always the same bytes (a qcow2 header holds no
//! per-file identity: no UUID, no timestamp), so [`create_from_template`] runs it once per base and
//! gives each job a copy of that ~200 KiB file (well under 1 ms, in-kernel `copy_file_range`).

use std::fs::{self, File, OpenOptions};
use std::hash::Hasher;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::command;
use crate::error::ProvisionError;
use crate::image::DiskFormat;

/// Creates `overlay` (qcow2) backed by the qcow2 `base`. Errors carry `qemu-img`'s stderr.
pub fn create(base: &Path, overlay: &Path) -> Result<(), ProvisionError> {
    create_with_format(base, DiskFormat::Qcow2, overlay)
}

/// Like [`create`] for a base of any supported format (the image manifest's `format`).
///
/// The base path is made absolute (qemu-img would resolve a relative backing path against the
/// overlay's directory), and an existing `overlay` is refused rather than silently replaced.
pub fn create_with_format(
    base: &Path,
    base_format: DiskFormat,
    overlay: &Path,
) -> Result<(), ProvisionError> {
    let base = absolute(base)?;
    if !base.is_file() {
        return Err(ProvisionError::invalid(
            "overlay base",
            format!("{} is not a file", base.display()),
        ));
    }
    if overlay.symlink_metadata().is_ok() {
        return Err(ProvisionError::invalid(
            "overlay path",
            format!("{} already exists (remove it first)", overlay.display()),
        ));
    }
    let args: [&std::ffi::OsStr; 8] = [
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-b".as_ref(),
        base.as_os_str(),
        "-F".as_ref(),
        base_format.as_str().as_ref(),
    ];
    if let Err(e) = command::run(
        "qemu-img",
        args.iter()
            .copied()
            .chain(std::iter::once(overlay.as_os_str())),
    ) {
        // qemu-img may have written the file before it found the base unusable.
        let _ = std::fs::remove_file(overlay);
        return Err(e);
    }
    tracing::debug!(base = %base.display(), overlay = %overlay.display(), "overlay created");
    Ok(())
}

/// The bytes of a fresh qcow2 overlay of `capacity` bytes on `backing` (a path on the VM's host,
/// not opened here: `qemu-img create -u`), of format `backing_format`. The same arguments always
/// give the same bytes, so a host's overlays are uploads of one cached header.
pub fn header(
    backing: &str,
    backing_format: &str,
    capacity: u64,
) -> Result<Vec<u8>, ProvisionError> {
    let dir = tempfile::tempdir().map_err(ProvisionError::io(
        "make a directory in",
        &std::env::temp_dir(),
    ))?;
    let file = dir.path().join("overlay.qcow2");
    command::run(
        "qemu-img",
        [
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-u".as_ref(),
            "-b".as_ref(),
            backing.as_ref(),
            "-F".as_ref(),
            backing_format.as_ref(),
            file.as_os_str(),
            capacity.to_string().as_ref(),
        ],
    )?;
    fs::read(&file).map_err(ProvisionError::io("read", &file))
}

/// Grows the qcow2 `overlay` to `bytes` (its backing file is untouched); refused when that is
/// less than it is.
pub fn grow(overlay: &Path, bytes: u64) -> Result<(), ProvisionError> {
    command::run(
        "qemu-img",
        [
            "resize".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            overlay.as_os_str(),
            bytes.to_string().as_ref(),
        ],
    )
}

/// `<state_dir>/overlay-templates`: one pristine overlay per base image, copied for each job.
pub fn templates_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("overlay-templates")
}

/// Creates `overlay` like [`create_with_format`], as a copy of a pristine overlay of `base` kept in
/// `templates_dir` (made with `qemu-img` on first use). A template is keyed by the base's path and
/// its identity (size, mtime, inode): a replaced base gets a new template, and the old one of the
/// same path is deleted then, so the directory holds one template per base in use.
pub fn create_from_template(
    base: &Path,
    base_format: DiskFormat,
    overlay: &Path,
    templates_dir: &Path,
) -> Result<(), ProvisionError> {
    let base = absolute(base)?;
    let meta = fs::metadata(&base).map_err(ProvisionError::io("read overlay base", &base))?;
    if !meta.is_file() {
        return Err(ProvisionError::invalid(
            "overlay base",
            format!("{} is not a file", base.display()),
        ));
    }
    let path_key = fnv64(&[
        base.as_os_str().as_encoded_bytes(),
        base_format.as_str().as_bytes(),
    ]);
    let identity = fnv64(&[
        &meta.len().to_le_bytes(),
        &meta.mtime().to_le_bytes(),
        &meta.mtime_nsec().to_le_bytes(),
        &meta.ino().to_le_bytes(),
        &meta.dev().to_le_bytes(),
    ]);
    let prefix = format!("{path_key:016x}-");
    let template = templates_dir.join(format!("{prefix}{identity:016x}.qcow2"));
    if !template.is_file() {
        make_template(&base, base_format, &template, &prefix)?;
    }
    copy_new(&template, overlay)?;
    tracing::debug!(base = %base.display(), overlay = %overlay.display(), "overlay copied from its template");
    Ok(())
}

/// Makes `template` with qemu-img under a temporary name and renames it into place, so a crash or a
/// concurrent maker never leaves a partial template (two makers write the same bytes; the last
/// rename wins). Then deletes the templates of older versions of the same base.
fn make_template(
    base: &Path,
    base_format: DiskFormat,
    template: &Path,
    prefix: &str,
) -> Result<(), ProvisionError> {
    let dir = template.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(ProvisionError::io("create", dir))?;
    let staging = tempfile::Builder::new()
        .prefix(".template-")
        .tempdir_in(dir)
        .map_err(ProvisionError::io("create a staging directory in", dir))?;
    let tmp = staging.path().join("overlay.qcow2");
    create_with_format(base, base_format, &tmp)?;
    fs::rename(&tmp, template).map_err(ProvisionError::io("move into place", template))?;
    tracing::info!(base = %base.display(), template = %template.display(), "overlay template made");
    let entries = fs::read_dir(dir).map_err(ProvisionError::io("list", dir))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(prefix) && path != template {
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), "cannot delete an outdated overlay template: {e}");
            }
        }
    }
    Ok(())
}

/// Copies `from` to a new file `to` (never replacing one); a failed copy leaves no `to`.
fn copy_new(from: &Path, to: &Path) -> Result<(), ProvisionError> {
    let mut src = File::open(from).map_err(ProvisionError::io("open overlay template", from))?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => ProvisionError::invalid(
                "overlay path",
                format!("{} already exists (remove it first)", to.display()),
            ),
            _ => ProvisionError::io("create overlay", to)(e),
        })?;
    if let Err(e) = std::io::copy(&mut src, &mut dst) {
        let _ = fs::remove_file(to);
        return Err(ProvisionError::io("copy the overlay template to", to)(e));
    }
    Ok(())
}

/// FNV-1a, 64 bit: a stable key for file names (std's hasher may change between Rust releases).
fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h = Fnv64(0xcbf2_9ce4_8422_2325);
    for part in parts {
        h.write(part);
        h.write(&[0xff]); // separator: ("ab","c") and ("a","bc") differ
    }
    h.finish()
}

struct Fnv64(u64);

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Deletes an overlay; already gone is success.
pub fn remove(overlay: &Path) -> Result<(), ProvisionError> {
    match std::fs::remove_file(overlay) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ProvisionError::Io {
            op: "remove overlay",
            path: overlay.to_path_buf(),
            source: e,
        }),
    }
}

fn absolute(path: &Path) -> Result<PathBuf, ProvisionError> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        std::path::absolute(path).map_err(ProvisionError::io("resolve", path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_img_info(path: &Path) -> String {
        let out = std::process::Command::new("qemu-img")
            .args(["info", "--output=json", "-U"])
            .arg(path)
            .output()
            .expect("qemu-img info runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    #[test]
    fn overlay_on_a_qcow2_base_records_the_absolute_backing_file() {
        if !minion_testenv::require(
            "overlay_on_a_qcow2_base_records_the_absolute_backing_file",
            &[minion_testenv::Need::Program("qemu-img")],
        ) {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let base = tmp.path().join("base.qcow2");
        qcow2_base(&base, "64M");
        let overlay = tmp.path().join("overlay.qcow2");
        create(&base, &overlay).expect("overlay");
        let info: serde_json::Value = serde_json::from_str(&qemu_img_info(&overlay)).expect("json");
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["backing-filename"], base.to_str().expect("utf8"));
        assert_eq!(info["backing-filename-format"], "qcow2");
        assert_eq!(info["virtual-size"], 64 * 1024 * 1024);
    }

    #[test]
    fn a_base_that_is_not_qcow2_fails_with_qemu_img_stderr() {
        if !minion_testenv::require(
            "a_base_that_is_not_qcow2_fails_with_qemu_img_stderr",
            &[minion_testenv::Need::Program("qemu-img")],
        ) {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let base = tmp.path().join("not-an-image.qcow2");
        std::fs::write(&base, b"this is text, not a qcow2 header").expect("write");
        let overlay = tmp.path().join("overlay.qcow2");
        let err = create(&base, &overlay).expect_err("bad base");
        let ProvisionError::Command {
            command, stderr, ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert!(command.starts_with("qemu-img create"), "{command}");
        // qemu-img 7.2's own words.
        assert!(stderr.contains("Image is not in qcow2 format"), "{stderr}");
        assert!(stderr.contains("Could not open backing image"), "{stderr}");
        assert!(
            err.to_string().contains(stderr.as_str()),
            "Display carries stderr: {err}"
        );
        assert!(!overlay.exists(), "a failed create leaves no overlay");
    }

    #[test]
    fn a_missing_base_is_refused_naming_it() {
        if !minion_testenv::require(
            "a_missing_base_is_refused_naming_it",
            &[minion_testenv::Need::Program("qemu-img")],
        ) {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let err = create(&tmp.path().join("nope.qcow2"), &tmp.path().join("o.qcow2"))
            .expect_err("no base");
        assert!(err.to_string().contains("nope.qcow2"), "{err}");
    }

    #[test]
    fn an_existing_overlay_is_not_clobbered_and_remove_is_idempotent() {
        if !minion_testenv::require(
            "an_existing_overlay_is_not_clobbered_and_remove_is_idempotent",
            &[minion_testenv::Need::Program("qemu-img")],
        ) {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let base = tmp.path().join("base.raw");
        std::fs::write(&base, vec![0u8; 1 << 20]).expect("raw base");
        let overlay = tmp.path().join("overlay.qcow2");
        create_with_format(&base, DiskFormat::Raw, &overlay).expect("overlay on raw");
        let err = create_with_format(&base, DiskFormat::Raw, &overlay).expect_err("exists");
        assert!(err.to_string().contains("already exists"), "{err}");
        remove(&overlay).expect("remove");
        assert!(!overlay.exists());
        remove(&overlay).expect("second remove is fine");
    }

    fn qcow2_base(path: &Path, size: &str) {
        command::run(
            "qemu-img",
            ["create", "-q", "-f", "qcow2"]
                .iter()
                .map(|s| s.as_ref())
                .chain([path.as_os_str(), size.as_ref()]),
        )
        .expect("base");
    }

    #[test]
    fn overlays_from_a_template_equal_qemu_img_output_and_are_independent_files() {
        if !minion_testenv::require(
            "overlays_from_a_template_equal_qemu_img_output_and_are_independent_files",
            &[minion_testenv::Need::Program("qemu-img")],
        ) {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let base = tmp.path().join("base.qcow2");
        qcow2_base(&base, "64M");
        let templates = tmp.path().join("templates");
        let direct = tmp.path().join("direct.qcow2");
        create(&base, &direct).expect("qemu-img overlay");
        let a = tmp.path().join("a.qcow2");
        let b = tmp.path().join("b.qcow2");
        create_from_template(&base, DiskFormat::Qcow2, &a, &templates)
            .expect("first (makes the template)");
        create_from_template(&base, DiskFormat::Qcow2, &b, &templates).expect("second (copies it)");
        let direct_bytes = fs::read(&direct).expect("direct");
        assert_eq!(
            fs::read(&a).expect("a"),
            direct_bytes,
            "a template copy is what qemu-img writes"
        );
        assert_eq!(fs::read(&b).expect("b"), direct_bytes);
        assert_eq!(
            fs::read_dir(&templates).expect("dir").count(),
            1,
            "one template per base"
        );

        // Writing one overlay leaves the other (and the template) untouched.
        command::run(
            "qemu-io",
            ["-f", "qcow2", "-c", "write -P 0xab 0 64k"]
                .iter()
                .map(|s| s.as_ref())
                .chain([a.as_os_str()]),
        )
        .expect("qemu-io write");
        assert_ne!(fs::read(&a).expect("a"), direct_bytes);
        assert_eq!(fs::read(&b).expect("b"), direct_bytes);
        let info: serde_json::Value = serde_json::from_str(&qemu_img_info(&b)).expect("json");
        assert_eq!(info["backing-filename"], base.to_str().expect("utf8"));

        let err = create_from_template(&base, DiskFormat::Qcow2, &a, &templates)
            .expect_err("an existing overlay is not replaced");
        assert!(err.to_string().contains("already exists"), "{err}");
    }

    #[test]
    fn a_replaced_base_gets_a_new_template_and_the_old_one_is_deleted() {
        if !minion_testenv::require(
            "a_replaced_base_gets_a_new_template_and_the_old_one_is_deleted",
            &[minion_testenv::Need::Program("qemu-img")],
        ) {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let base = tmp.path().join("base.qcow2");
        qcow2_base(&base, "64M");
        let templates = tmp.path().join("templates");
        create_from_template(
            &base,
            DiskFormat::Qcow2,
            &tmp.path().join("a.qcow2"),
            &templates,
        )
        .expect("a");
        let first: Vec<_> = fs::read_dir(&templates)
            .expect("dir")
            .flatten()
            .map(|e| e.path())
            .collect();

        fs::remove_file(&base).expect("rm base");
        qcow2_base(&base, "128M"); // same path, new file
        let b = tmp.path().join("b.qcow2");
        create_from_template(&base, DiskFormat::Qcow2, &b, &templates).expect("b");
        let second: Vec<_> = fs::read_dir(&templates)
            .expect("dir")
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(second.len(), 1, "{second:?}");
        assert_ne!(first, second, "a new template for the new base");
        let info: serde_json::Value = serde_json::from_str(&qemu_img_info(&b)).expect("json");
        assert_eq!(
            info["virtual-size"],
            128 * 1024 * 1024,
            "the overlay follows the new base"
        );
    }

    #[test]
    fn a_bad_base_makes_no_template_and_no_overlay() {
        if !minion_testenv::require(
            "a_bad_base_makes_no_template_and_no_overlay",
            &[minion_testenv::Need::Program("qemu-img")],
        ) {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let base = tmp.path().join("bad.qcow2");
        fs::write(&base, b"not qcow2").expect("write");
        let templates = tmp.path().join("templates");
        let overlay = tmp.path().join("o.qcow2");
        let err = create_from_template(&base, DiskFormat::Qcow2, &overlay, &templates)
            .expect_err("bad base");
        assert!(
            err.to_string().contains("Image is not in qcow2 format"),
            "{err}"
        );
        assert!(!overlay.exists());
        let left: Vec<_> = fs::read_dir(&templates).expect("dir").flatten().collect();
        assert!(left.is_empty(), "{left:?}");
        let err = create_from_template(
            &tmp.path().join("nope"),
            DiskFormat::Qcow2,
            &overlay,
            &templates,
        )
        .expect_err("missing base");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn fnv64_is_stable() {
        // Template names must not change between builds: pinned values.
        assert_eq!(fnv64(&[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64(&[b"a"]), fnv64(&[b"a"]));
        assert_ne!(fnv64(&[b"ab", b"c"]), fnv64(&[b"a", b"bc"]));
        let mut h = Fnv64(0xcbf2_9ce4_8422_2325);
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c, "FNV-1a 64 of \"a\"");
    }
}
