//! Imported images: a disk someone has (a distribution's cloud image, qcow2 or raw) checked with
//! `qemu-img` and put into the catalog with a manifest of the same format the recipes write, and
//! the record of its validation boot (`validation.json` beside the manifest).
//!
//! ```text
//! <images_dir>/.import-<name>-<uuid>/disk.in   (the caller streams the file here: staging_dir)
//! inspect: qemu-img info → format (qcow2|raw), virtual size; refused: a backing file, an
//!          external data file, encryption, another format; qcow2: qemu-img check
//! install: disk.<format> + manifest.json (+ validation.json: pending) → <name>-<sha12>/,
//!          <name> → <name>-<sha12> (a symlink, renamed into place)
//! ```
//!
//! An imported disk is hostile input: a qcow2 may name any file of the host as its backing file
//! (and the VM would read it), so such disks are refused, never "fixed".

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command;
use crate::error::ProvisionError;
use crate::image::{self, AgentStart, DiskFormat, Image, MANIFEST_FILE};

/// The validation record's file, beside the manifest.
pub const VALIDATION_FILE: &str = "validation.json";
/// Largest virtual disk accepted (a bigger one is almost surely a mistake).
pub const MAX_VIRTUAL_SIZE: u64 = 2 << 40;

/// What `qemu-img info` says of a disk that may be imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    pub format: DiskFormat,
    pub virtual_size: u64,
}

/// Whether an image may be used: booted once to the agent's Ready, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValidationState {
    Pending,
    Ok,
    Failed,
}

/// `validation.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validation {
    pub state: ValidationState,
    /// Why it failed.
    #[serde(default)]
    pub reason: String,
    /// Domain start → the agent's Ready, in the validation boot.
    #[serde(default)]
    pub ready_ms: u64,
    /// When it was validated (RFC 3339).
    #[serde(default)]
    pub at: String,
}

/// Why pools and instances may not use an image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("image {name} failed its validation: {reason}")]
    Failed { name: String, reason: String },
}

/// Whether work may be given to `image`: any image but one that failed its validation. One with
/// no record yet (built by a recipe) or a pending one is validated before its first VM starts.
pub fn usable(image: &Image) -> Result<(), Unusable> {
    match read_validation(image) {
        Some(v) if v.state == ValidationState::Failed => Err(Unusable::Failed {
            name: image.manifest.name.clone(),
            reason: v.reason,
        }),
        _ => Ok(()),
    }
}

/// Where an upload is staged (on the catalog's filesystem, so installing it is a rename). The
/// directory is new; the caller writes the disk to `<dir>/disk.in`.
pub fn staging_dir(images_dir: &Path, name: &str) -> Result<PathBuf, ProvisionError> {
    check_name(name)?;
    let dir = images_dir.join(format!(".import-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(ProvisionError::io("create", &dir))?;
    Ok(dir)
}

fn check_name(name: &str) -> Result<(), ProvisionError> {
    minion_safepath::plain_name(name).map(|_| ()).map_err(|_| {
        ProvisionError::invalid(
            "image name",
            format!("`{name}` (use letters, digits, `-`, `_`, `.`; not starting with `.`)"),
        )
    })
}

/// Checks a disk with `qemu-img info` (and `qemu-img check` for qcow2).
pub fn inspect(disk: &Path) -> Result<DiskInfo, ProvisionError> {
    let out = command::output(
        "qemu-img",
        [
            "info".as_ref(),
            "--output=json".as_ref(),
            "-U".as_ref(),
            disk.as_os_str(),
        ],
    )?;
    let info: Value = serde_json::from_slice(&out).map_err(|e| {
        ProvisionError::invalid(
            "disk",
            format!("qemu-img info said something unreadable: {e}"),
        )
    })?;
    let info = parse_info(&info)?;
    if info.format == DiskFormat::Qcow2 {
        command::run(
            "qemu-img",
            [
                "check".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                disk.as_os_str(),
            ],
        )
        .map_err(|e| ProvisionError::invalid("disk", format!("a damaged qcow2: {e}")))?;
    }
    Ok(info)
}

/// `qemu-img info --output=json`'s answer, as an importable disk or why it is not one.
pub fn parse_info(v: &Value) -> Result<DiskInfo, ProvisionError> {
    let refuse = |m: String| Err(ProvisionError::invalid("disk", m));
    let format = match v["format"].as_str() {
        Some("qcow2") => DiskFormat::Qcow2,
        Some("raw") => DiskFormat::Raw,
        Some(other) => {
            return refuse(format!(
                "format `{other}` (only qcow2 and raw are imported)"
            ))
        }
        None => return refuse("qemu-img info names no format".into()),
    };
    if let Some(b) = v.get("backing-filename").and_then(Value::as_str) {
        return refuse(format!(
            "it has a backing file ({b}): a VM of it would read that host file; \
             flatten it first (`qemu-img convert -O qcow2 IN OUT`)"
        ));
    }
    if v["encrypted"].as_bool() == Some(true) {
        return refuse("it is encrypted".into());
    }
    if let Some(df) = v
        .pointer("/format-specific/data/data-file")
        .and_then(Value::as_str)
    {
        return refuse(format!("it keeps its data in another file ({df})"));
    }
    let virtual_size = match v["virtual-size"].as_u64() {
        Some(0) | None => return refuse("its virtual size is 0 or unknown".into()),
        Some(n) if n > MAX_VIRTUAL_SIZE => {
            return refuse(format!(
                "its virtual size {n} is over {MAX_VIRTUAL_SIZE} bytes"
            ))
        }
        Some(n) => n,
    };
    Ok(DiskInfo {
        format,
        virtual_size,
    })
}

/// What an import records besides the disk.
#[derive(Debug, Clone)]
pub struct ImportSpec {
    pub name: String,
    pub arch: String,
    pub agent_start: AgentStart,
}

/// Puts the staged disk (`<staging>/disk.in`, already hashed: `sha256`) into the catalog as
/// `spec.name`, with its validation pending. Refused when the name is taken. The staging
/// directory is gone afterwards, whatever happened.
pub fn install(
    images_dir: &Path,
    staging: &Path,
    spec: &ImportSpec,
    sha256: &str,
) -> Result<Image, ProvisionError> {
    let result = install_staged(images_dir, staging, spec, sha256);
    let _ = std::fs::remove_dir_all(staging);
    result
}

fn install_staged(
    images_dir: &Path,
    staging: &Path,
    spec: &ImportSpec,
    sha256: &str,
) -> Result<Image, ProvisionError> {
    check_name(&spec.name)?;
    if spec.arch != "x86_64" {
        return Err(ProvisionError::invalid(
            "arch",
            format!("`{}` is not supported (only x86_64)", spec.arch),
        ));
    }
    let entry = images_dir.join(&spec.name);
    if entry.symlink_metadata().is_ok() {
        return Err(ProvisionError::invalid(
            "image name",
            format!(
                "`{}` is in the catalog already (remove it first)",
                spec.name
            ),
        ));
    }
    let staged = staging.join("disk.in");
    let info = inspect(&staged)?;
    let disk_name = format!("disk.{}", info.format.as_str());
    let disk = staging.join(&disk_name);
    std::fs::rename(&staged, &disk).map_err(ProvisionError::io("rename", &staged))?;
    let file_size = std::fs::metadata(&disk)
        .map_err(ProvisionError::io("stat", &disk))?
        .len();
    let manifest = serde_json::json!({
        "name": spec.name,
        "arch": spec.arch,
        "format": info.format.as_str(),
        "disk": disk_name,
        "virtual_size": info.virtual_size,
        "file_size": file_size,
        "sha256": sha256,
        "kernel": null,
        "initrd": null,
        "cmdline": "",
        "recipe_hash": null,
        "built_at": null,
        "imported_at": now_rfc3339(),
        "agent_start": spec.agent_start.as_str(),
    });
    write_json(&staging.join(MANIFEST_FILE), &manifest)?;
    write_validation(
        staging,
        &Validation {
            state: ValidationState::Pending,
            reason: String::new(),
            ready_ms: 0,
            at: String::new(),
        },
    )?;
    // The disk is never written again: every VM has its own overlay on it.
    set_read_only(&disk)?;
    let dir_name = format!("{}-{}", spec.name, &sha256[..12.min(sha256.len())]);
    let dir = images_dir.join(&dir_name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(ProvisionError::io("remove", &dir))?;
    }
    std::fs::rename(staging, &dir).map_err(ProvisionError::io("rename", staging))?;
    let link_tmp = images_dir.join(format!(
        ".{}.link-{}",
        spec.name,
        uuid::Uuid::new_v4().simple()
    ));
    std::os::unix::fs::symlink(&dir_name, &link_tmp)
        .map_err(ProvisionError::io("symlink", &link_tmp))?;
    std::fs::rename(&link_tmp, &entry).map_err(ProvisionError::io("rename", &link_tmp))?;
    image::load(images_dir, &spec.name)
}

fn set_read_only(path: &Path) -> Result<(), ProvisionError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
        .map_err(ProvisionError::io("chmod", path))
}

fn write_json(path: &Path, v: &Value) -> Result<(), ProvisionError> {
    let tmp = path.with_extension("json.tmp");
    let mut text = serde_json::to_string_pretty(v)
        .map_err(|e| ProvisionError::invalid("json", e.to_string()))?;
    text.push('\n');
    std::fs::write(&tmp, text).map_err(ProvisionError::io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(ProvisionError::io("rename", &tmp))
}

/// The image's validation record; `None` for an image that has none (built by a recipe).
pub fn read_validation(image: &Image) -> Option<Validation> {
    let text = std::fs::read_to_string(image.dir.join(VALIDATION_FILE)).ok()?;
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => Some(Validation {
            state: ValidationState::Failed,
            reason: format!("{VALIDATION_FILE} is unreadable: {e}"),
            ready_ms: 0,
            at: String::new(),
        }),
    }
}

/// Writes `v` as the validation record of the image in `dir`.
pub fn write_validation(dir: &Path, v: &Validation) -> Result<(), ProvisionError> {
    let value = serde_json::to_value(v)
        .map_err(|e| ProvisionError::invalid("validation", e.to_string()))?;
    write_json(&dir.join(VALIDATION_FILE), &value)
}

/// Removes catalog entry `name` and the directory it names (a recipe's older builds stay).
pub fn remove(images_dir: &Path, name: &str) -> Result<PathBuf, ProvisionError> {
    check_name(name)?;
    let entry = images_dir.join(name);
    let meta = entry
        .symlink_metadata()
        .map_err(|_| ProvisionError::ImageNotFound {
            name: name.to_string(),
            manifest: entry.join(MANIFEST_FILE),
        })?;
    let dir = if meta.file_type().is_symlink() {
        let target = std::fs::read_link(&entry).map_err(ProvisionError::io("readlink", &entry))?;
        let target = images_dir.join(target);
        std::fs::remove_file(&entry).map_err(ProvisionError::io("remove", &entry))?;
        target
    } else {
        entry
    };
    // Only inside the catalog.
    if dir.parent() == Some(images_dir) && dir.is_dir() {
        std::fs::remove_dir_all(&dir).map_err(ProvisionError::io("remove", &dir))?;
    }
    Ok(dir)
}

pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(extra: Value) -> Value {
        let mut v = serde_json::json!({"format": "qcow2", "virtual-size": 1_073_741_824u64});
        if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
            m.extend(e);
        }
        v
    }

    #[test]
    fn only_self_contained_qcow2_and_raw_disks_are_imported() {
        assert_eq!(
            parse_info(&info(serde_json::json!({}))).expect("ok"),
            DiskInfo {
                format: DiskFormat::Qcow2,
                virtual_size: 1 << 30
            }
        );
        let raw = parse_info(&info(serde_json::json!({"format": "raw"}))).expect("raw");
        assert_eq!(raw.format, DiskFormat::Raw);
        for (bad, says) in [
            (
                serde_json::json!({"backing-filename": "/etc/shadow"}),
                "/etc/shadow",
            ),
            (serde_json::json!({"format": "vmdk"}), "vmdk"),
            (serde_json::json!({"encrypted": true}), "encrypted"),
            (
                serde_json::json!({"format-specific": {"type": "qcow2", "data": {"data-file": "/dev/sda"}}}),
                "/dev/sda",
            ),
            (serde_json::json!({"virtual-size": 0}), "virtual size"),
        ] {
            let e = parse_info(&info(bad)).expect_err("refused");
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn a_qcow2_with_a_backing_file_is_refused_by_the_real_qemu_img() {
        let d = tempfile::tempdir().expect("tempdir");
        let base = d.path().join("base.qcow2");
        let top = d.path().join("top.qcow2");
        let ok = command::run(
            "qemu-img",
            [
                "create",
                "-q",
                "-f",
                "qcow2",
                base.to_str().unwrap_or_default(),
                "16M",
            ],
        );
        if ok.is_err() {
            eprintln!("qemu-img not installed: skipped");
            return;
        }
        command::run(
            "qemu-img",
            [
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                base.to_str().unwrap_or_default(),
                "-F",
                "qcow2",
                top.to_str().unwrap_or_default(),
            ],
        )
        .expect("overlay");
        assert_eq!(inspect(&base).expect("base").format, DiskFormat::Qcow2);
        let e = inspect(&top).expect_err("refused");
        assert!(e.to_string().contains("backing file"), "{e}");
        std::fs::write(d.path().join("junk"), b"not a disk").expect("write");
        // Ten bytes of text are a raw disk to qemu-img: refused as too small to boot by the
        // validation, not here; a truncated qcow2 is refused here.
        let mut q = std::fs::read(&base).expect("read");
        q.truncate(100);
        std::fs::write(d.path().join("cut.qcow2"), q).expect("write");
        assert!(inspect(&d.path().join("cut.qcow2")).is_err());
    }

    #[test]
    fn install_puts_a_disk_in_the_catalog_and_remove_takes_it_out() {
        let d = tempfile::tempdir().expect("tempdir");
        let images = d.path();
        let staging = staging_dir(images, "imported").expect("staging");
        if command::run(
            "qemu-img",
            [
                "create",
                "-q",
                "-f",
                "qcow2",
                staging.join("disk.in").to_str().unwrap_or_default(),
                "64M",
            ],
        )
        .is_err()
        {
            eprintln!("qemu-img not installed: skipped");
            return;
        }
        let spec = ImportSpec {
            name: "imported".into(),
            arch: "x86_64".into(),
            agent_start: AgentStart::CloudInit,
        };
        let img = install(images, &staging, &spec, &"ab".repeat(32)).expect("installed");
        assert!(!staging.exists());
        assert_eq!(img.manifest.name, "imported");
        assert_eq!(img.manifest.format, DiskFormat::Qcow2);
        assert_eq!(img.manifest.kernel, None);
        assert_eq!(img.manifest.agent_start, AgentStart::CloudInit);
        assert_eq!(
            read_validation(&img).map(|v| v.state),
            Some(ValidationState::Pending)
        );
        // Pending: work may queue for it; its first VM start validates it.
        assert_eq!(usable(&img), Ok(()));
        let failed = Validation {
            state: ValidationState::Failed,
            reason: "no Ready in 120 s".into(),
            ready_ms: 0,
            at: now_rfc3339(),
        };
        write_validation(&img.dir, &failed).expect("write");
        assert!(usable(&img)
            .expect_err("failed")
            .to_string()
            .contains("no Ready in 120 s"));
        write_validation(
            &img.dir,
            &Validation {
                state: ValidationState::Ok,
                ..failed
            },
        )
        .expect("write");
        assert_eq!(usable(&img), Ok(()));
        assert!(img.dir.ends_with("imported-abababababab"));
        // The name is taken now.
        let again = staging_dir(images, "imported").expect("staging");
        std::fs::write(again.join("disk.in"), b"x").expect("write");
        assert!(install(images, &again, &spec, "cd").is_err());
        assert!(!again.exists());
        let removed = remove(images, "imported").expect("removed");
        assert!(!removed.exists());
        assert!(image::load(images, "imported").is_err());
        assert!(remove(images, "imported").is_err());
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_790), (2026, 12, 3));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(now_rfc3339().len(), 20);
    }
}
