//! Per-job copy-on-write disks: a qcow2 overlay whose backing file is the image's disk, made with
//! `qemu-img` (≈10 ms whatever the base's size). The base is never written.

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
        let tmp = tempfile::tempdir().expect("tmp");
        let base = tmp.path().join("base.qcow2");
        command::run(
            "qemu-img",
            ["create", "-q", "-f", "qcow2"]
                .iter()
                .map(|s| s.as_ref())
                .chain([base.as_os_str(), "64M".as_ref()]),
        )
        .expect("base");
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
        let tmp = tempfile::tempdir().expect("tmp");
        let err = create(&tmp.path().join("nope.qcow2"), &tmp.path().join("o.qcow2"))
            .expect_err("no base");
        assert!(err.to_string().contains("nope.qcow2"), "{err}");
    }

    #[test]
    fn an_existing_overlay_is_not_clobbered_and_remove_is_idempotent() {
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
}
