//! The image catalog: `<images_dir>/<name>/manifest.json` (see TEAM.md "Guest images").
//!
//! A manifest is checked field by field so an error names the file and the field, and every file it
//! names (disk, kernel, initrd) must be a plain relative path inside the image directory that exists.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::ProvisionError;

pub const MANIFEST_FILE: &str = "manifest.json";

/// How the agent gets started inside the guest (decides nothing on the host today; reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentStart {
    /// The image's init execs the agent from the seed (PID 1).
    Init,
    /// A systemd unit in the image starts the agent from the seed.
    Systemd,
    /// A generic cloud image: the seed's user-data starts the agent.
    CloudInit,
}

impl AgentStart {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStart::Init => "init",
            AgentStart::Systemd => "systemd",
            AgentStart::CloudInit => "cloud-init",
        }
    }
}

/// Disk formats a base image may have (the overlay is always qcow2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// `manifest.json`, validated. Paths are relative to the image directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    pub name: String,
    pub arch: String,
    pub format: DiskFormat,
    pub disk: PathBuf,
    pub virtual_size: Option<u64>,
    pub file_size: Option<u64>,
    pub sha256: Option<String>,
    /// Direct kernel boot when set.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub recipe_hash: Option<String>,
    pub built_at: Option<String>,
    pub agent_start: AgentStart,
}

/// One image: its directory (symlinks resolved, so a rebuild that moves the catalog symlink does not
/// pull the base from under a running job) and its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Image {
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }
    pub fn disk_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.disk)
    }
    pub fn kernel_path(&self) -> Option<PathBuf> {
        self.manifest.kernel.as_ref().map(|k| self.dir.join(k))
    }
    pub fn initrd_path(&self) -> Option<PathBuf> {
        self.manifest.initrd.as_ref().map(|i| self.dir.join(i))
    }
}

/// Loads and checks `<images_dir>/<name>/manifest.json` and the files it names.
pub fn load(images_dir: &Path, name: &str) -> Result<Image, ProvisionError> {
    check_image_name(name)?;
    let entry = images_dir.join(name);
    let manifest_path = entry.join(MANIFEST_FILE);
    if !manifest_path.exists() {
        return Err(ProvisionError::ImageNotFound {
            name: name.to_string(),
            manifest: manifest_path,
        });
    }
    let dir = entry
        .canonicalize()
        .map_err(ProvisionError::io("resolve", &entry))?;
    let manifest_path = dir.join(MANIFEST_FILE);
    let text =
        std::fs::read_to_string(&manifest_path).map_err(|source| ProvisionError::ManifestRead {
            path: manifest_path.clone(),
            source,
        })?;
    let manifest = parse_manifest(&manifest_path, &text)?;
    if manifest.name != name {
        return Err(field_error(
            &manifest_path,
            "name",
            format!(
                "is `{}` but the image was looked up as `{name}`",
                manifest.name
            ),
        ));
    }
    let image = Image { dir, manifest };
    check_files(&image, &manifest_path)?;
    Ok(image)
}

/// The catalog: every entry of `images_dir` whose manifest's `name` is the entry's own name (so the
/// `minimal` symlink is listed, its versioned target `minimal-<hash>` is not). Broken entries are
/// logged and left out, so one bad image does not hide the others; use [`load`] for its error.
pub fn list(images_dir: &Path) -> Result<Vec<Image>, ProvisionError> {
    let entries = std::fs::read_dir(images_dir).map_err(ProvisionError::io("list", images_dir))?;
    let mut images = Vec::new();
    for entry in entries {
        let entry = entry.map_err(ProvisionError::io("list", images_dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') || !entry.path().join(MANIFEST_FILE).exists() {
            continue;
        }
        match load(images_dir, &name) {
            Ok(image) => images.push(image),
            // A versioned build directory: its manifest names the catalog entry, not itself.
            Err(e @ ProvisionError::ManifestField { .. }) if is_name_mismatch(&e) => {
                tracing::debug!("`{name}` is not a catalog entry: {e}")
            }
            Err(e) => tracing::warn!("image `{name}` left out of the catalog: {e}"),
        }
    }
    images.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
    Ok(images)
}

fn is_name_mismatch(e: &ProvisionError) -> bool {
    matches!(e, ProvisionError::ManifestField { field, .. } if field == "name")
}

fn check_image_name(name: &str) -> Result<(), ProvisionError> {
    if minion_safepath::plain_name(name).is_ok() {
        Ok(())
    } else {
        Err(ProvisionError::invalid(
            "image name",
            format!("`{name}` (use letters, digits, `-`, `_`, `.`; not starting with `.`)"),
        ))
    }
}

fn check_files(image: &Image, manifest_path: &Path) -> Result<(), ProvisionError> {
    let files = [
        ("disk", Some(image.disk_path())),
        ("kernel", image.kernel_path()),
        ("initrd", image.initrd_path()),
    ];
    for (field, path) in files {
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ProvisionError::ImageFileMissing {
                    manifest: manifest_path.to_path_buf(),
                    field: field.to_string(),
                    path,
                });
            }
        }
    }
    Ok(())
}

fn field_error(path: &Path, field: &str, message: impl Into<String>) -> ProvisionError {
    ProvisionError::ManifestField {
        path: path.to_path_buf(),
        field: field.to_string(),
        message: message.into(),
    }
}

/// Parses and validates manifest text; `path` is only for the errors.
pub fn parse_manifest(path: &Path, text: &str) -> Result<Manifest, ProvisionError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ProvisionError::ManifestSyntax {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let Value::Object(obj) = value else {
        return Err(field_error(path, "(top level)", "must be a JSON object"));
    };
    let f = Fields { path, obj: &obj };

    let name = f.required_str("name")?;
    check_image_name(&name)
        .map_err(|_| field_error(path, "name", format!("`{name}` is not a valid image name")))?;
    let arch = f.required_str("arch")?;
    if arch != "x86_64" {
        return Err(field_error(
            path,
            "arch",
            format!("`{arch}` is not supported (only x86_64)"),
        ));
    }
    let format = match f.required_str("format")?.as_str() {
        "qcow2" => DiskFormat::Qcow2,
        "raw" => DiskFormat::Raw,
        other => {
            return Err(field_error(
                path,
                "format",
                format!("`{other}` is not a disk format (qcow2 or raw)"),
            ))
        }
    };
    let disk = f.relative_path("disk", Some(f.required_str("disk")?))?;
    let kernel = f.relative_path("kernel", f.optional_str("kernel")?)?;
    let initrd = f.relative_path("initrd", f.optional_str("initrd")?)?;
    if initrd.is_some() && kernel.is_none() {
        return Err(field_error(
            path,
            "initrd",
            "is set but `kernel` is not (an initrd needs a kernel)",
        ));
    }
    let cmdline = f.optional_str("cmdline")?.unwrap_or_default();
    let agent_start = match f.optional_str("agent_start")?.as_deref() {
        None | Some("cloud-init") => AgentStart::CloudInit,
        Some("init") => AgentStart::Init,
        Some("systemd") => AgentStart::Systemd,
        Some(other) => {
            return Err(field_error(
                path,
                "agent_start",
                format!("`{other}` (expected init, systemd or cloud-init)"),
            ))
        }
    };
    Ok(Manifest {
        name,
        arch,
        format,
        disk: disk.unwrap_or_default(),
        virtual_size: f.optional_u64("virtual_size")?,
        file_size: f.optional_u64("file_size")?,
        sha256: f.optional_str("sha256")?,
        kernel,
        initrd,
        cmdline,
        recipe_hash: f.optional_str("recipe_hash")?,
        built_at: f.optional_str("built_at")?,
        agent_start,
    })
}

struct Fields<'a> {
    path: &'a Path,
    obj: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn required_str(&self, field: &str) -> Result<String, ProvisionError> {
        self.optional_str(field)?
            .ok_or_else(|| field_error(self.path, field, "is missing"))
    }

    /// Absent and `null` are both "not set".
    fn optional_str(&self, field: &str) -> Result<Option<String>, ProvisionError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(field_error(
                self.path,
                field,
                format!("must be a string, found {}", kind(other)),
            )),
        }
    }

    fn optional_u64(&self, field: &str) -> Result<Option<u64>, ProvisionError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
                field_error(
                    self.path,
                    field,
                    format!("must be a non-negative integer, found {n}"),
                )
            }),
            Some(other) => Err(field_error(
                self.path,
                field,
                format!("must be a non-negative integer, found {}", kind(other)),
            )),
        }
    }

    /// A file inside the image directory: relative, no `..`, not empty.
    fn relative_path(
        &self,
        field: &str,
        value: Option<String>,
    ) -> Result<Option<PathBuf>, ProvisionError> {
        let Some(value) = value else { return Ok(None) };
        // minion-safepath's lexical rule, and no `.` either: the manifest names files as they are.
        let p = PathBuf::from(&value);
        let confined = minion_safepath::relative(&p).is_ok_and(|clean| clean == p);
        if !confined {
            return Err(field_error(
                self.path,
                field,
                format!("`{value}` must be a relative path inside the image directory (no `/…`, no `..`)"),
            ));
        }
        Ok(Some(p))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const MINIMAL: &str = r#"{
  "name": "minimal", "arch": "x86_64", "format": "qcow2", "disk": "disk.qcow2",
  "virtual_size": 2147483648, "file_size": 134479872, "sha256": "8a7e",
  "kernel": "vmlinux", "initrd": null,
  "cmdline": "console=ttyS0 root=/dev/vda init=/usr/sbin/minion-init",
  "recipe_hash": "0539b0a96b1567c0", "built_at": "2026-11-23T04:26:48Z", "agent_start": "init"
}"#;

    fn image_dir(root: &Path, entry: &str, manifest: &str, files: &[&str]) -> PathBuf {
        let dir = root.join(entry);
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join(MANIFEST_FILE), manifest).expect("write manifest");
        for f in files {
            fs::write(dir.join(f), b"x").expect("write file");
        }
        dir
    }

    fn with_field(field: &str, value: &str) -> String {
        let mut v: Value = serde_json::from_str(MINIMAL).expect("valid");
        let new: Value = serde_json::from_str(value).expect("valid value");
        v.as_object_mut()
            .expect("object")
            .insert(field.to_string(), new);
        v.to_string()
    }

    fn without_field(field: &str) -> String {
        let mut v: Value = serde_json::from_str(MINIMAL).expect("valid");
        v.as_object_mut().expect("object").remove(field);
        v.to_string()
    }

    fn field_of(err: &ProvisionError) -> &str {
        match err {
            ProvisionError::ManifestField { field, .. } => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn loads_a_valid_image_resolving_the_catalog_symlink() {
        let tmp = tempfile::tempdir().expect("tmp");
        let real = image_dir(
            tmp.path(),
            "minimal-0539",
            MINIMAL,
            &["disk.qcow2", "vmlinux"],
        );
        std::os::unix::fs::symlink("minimal-0539", tmp.path().join("minimal")).expect("symlink");
        let image = load(tmp.path(), "minimal").expect("loads");
        assert_eq!(image.dir, real.canonicalize().expect("canon"));
        assert_eq!(image.manifest.kernel, Some(PathBuf::from("vmlinux")));
        assert_eq!(image.manifest.initrd, None);
        assert_eq!(image.manifest.agent_start, AgentStart::Init);
        assert_eq!(image.manifest.format, DiskFormat::Qcow2);
        assert_eq!(image.disk_path(), image.dir.join("disk.qcow2"));
        assert!(image.manifest.cmdline.contains("minion-init"));
    }

    #[test]
    fn missing_image_says_make_image() {
        let tmp = tempfile::tempdir().expect("tmp");
        let err = load(tmp.path(), "minimal").expect_err("no such image");
        assert!(matches!(err, ProvisionError::ImageNotFound { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("make image") && msg.contains("manifest.json"),
            "{msg}"
        );
    }

    #[test]
    fn bad_json_names_file_line_and_column() {
        let tmp = tempfile::tempdir().expect("tmp");
        image_dir(
            tmp.path(),
            "minimal",
            "{\n  \"name\": \"minimal\",\n  oops\n}",
            &[],
        );
        let err = load(tmp.path(), "minimal").expect_err("bad json");
        let ProvisionError::ManifestSyntax {
            path, line, column, ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert!(path.ends_with("minimal/manifest.json"));
        assert_eq!((*line, *column), (3, 3));
        assert!(err.to_string().contains("manifest.json:3:3:"), "{err}");
    }

    #[test]
    fn each_bad_field_is_named() {
        let p = Path::new("/images/x/manifest.json");
        let cases = [
            (without_field("disk"), "disk", "is missing"),
            (without_field("name"), "name", "is missing"),
            (
                with_field("disk", "42"),
                "disk",
                "must be a string, found a number",
            ),
            (
                with_field("disk", "\"../../etc/shadow\""),
                "disk",
                "relative path",
            ),
            (
                with_field("disk", "\"/etc/shadow\""),
                "disk",
                "relative path",
            ),
            (with_field("kernel", "\"\""), "kernel", "relative path"),
            (with_field("format", "\"vmdk\""), "format", "vmdk"),
            (with_field("arch", "\"aarch64\""), "arch", "aarch64"),
            (
                with_field("agent_start", "\"rc.local\""),
                "agent_start",
                "rc.local",
            ),
            (
                with_field("virtual_size", "-1"),
                "virtual_size",
                "non-negative",
            ),
            (
                with_field("virtual_size", "\"big\""),
                "virtual_size",
                "found a string",
            ),
            (with_field("cmdline", "[]"), "cmdline", "found an array"),
            (
                serde_json::to_string(&{
                    let mut v: Value =
                        serde_json::from_str(&with_field("initrd", "\"initrd.img\"")).expect("v");
                    v.as_object_mut()
                        .expect("o")
                        .insert("kernel".into(), Value::Null);
                    v
                })
                .expect("s"),
                "initrd",
                "needs a kernel",
            ),
            ("[1]".to_string(), "(top level)", "JSON object"),
        ];
        for (text, field, needle) in cases {
            let err =
                parse_manifest(p, &text).expect_err(&format!("{field} must be rejected: {text}"));
            assert_eq!(field_of(&err), field, "{err}");
            let msg = err.to_string();
            assert!(msg.starts_with("/images/x/manifest.json: field `"), "{msg}");
            assert!(msg.contains(needle), "{msg} should contain {needle}");
        }
    }

    #[test]
    fn optional_fields_may_be_absent_or_null() {
        let text =
            r#"{"name":"cloud","arch":"x86_64","format":"qcow2","disk":"d.qcow2","kernel":null}"#;
        let m = parse_manifest(Path::new("m.json"), text).expect("minimal manifest is valid");
        assert_eq!(m.kernel, None);
        assert_eq!(m.cmdline, "");
        assert_eq!(m.agent_start, AgentStart::CloudInit);
        assert_eq!(m.virtual_size, None);
    }

    #[test]
    fn missing_disk_and_missing_kernel_name_the_field_and_path() {
        let tmp = tempfile::tempdir().expect("tmp");
        image_dir(tmp.path(), "minimal", MINIMAL, &["vmlinux"]);
        let err = load(tmp.path(), "minimal").expect_err("no disk");
        let ProvisionError::ImageFileMissing { field, path, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(field, "disk");
        assert!(path.ends_with("disk.qcow2"));

        fs::write(tmp.path().join("minimal/disk.qcow2"), b"x").expect("disk");
        fs::remove_file(tmp.path().join("minimal/vmlinux")).expect("rm kernel");
        let err = load(tmp.path(), "minimal").expect_err("no kernel");
        let ProvisionError::ImageFileMissing { field, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(field, "kernel");
        assert!(err.to_string().contains("`kernel` names"), "{err}");
    }

    #[test]
    fn name_mismatch_is_an_error_and_bad_names_are_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        image_dir(tmp.path(), "other", MINIMAL, &["disk.qcow2", "vmlinux"]);
        let err = load(tmp.path(), "other").expect_err("name mismatch");
        assert_eq!(field_of(&err), "name");
        for bad in ["", "..", "../etc", "a/b", ".hidden"] {
            let err = load(tmp.path(), bad).expect_err("bad name");
            assert!(
                matches!(err, ProvisionError::InvalidSpec { .. }),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn list_shows_catalog_names_only_and_skips_broken_entries() {
        let tmp = tempfile::tempdir().expect("tmp");
        image_dir(
            tmp.path(),
            "minimal-0539",
            MINIMAL,
            &["disk.qcow2", "vmlinux"],
        );
        std::os::unix::fs::symlink("minimal-0539", tmp.path().join("minimal")).expect("symlink");
        let standard = MINIMAL.replace("\"minimal\"", "\"standard\"");
        image_dir(tmp.path(), "standard", &standard, &["vmlinux"]); // no disk: broken
        image_dir(tmp.path(), ".build-minimal-x", MINIMAL, &[]);
        fs::create_dir(tmp.path().join("empty")).expect("mkdir");
        let images = list(tmp.path()).expect("lists");
        let names: Vec<_> = images.iter().map(|i| i.manifest.name.as_str()).collect();
        assert_eq!(names, ["minimal"]);
    }

    #[test]
    fn list_of_a_missing_dir_is_an_error_naming_it() {
        let err = list(Path::new("/nonexistent/minion-images")).expect_err("missing dir");
        assert!(
            err.to_string().contains("/nonexistent/minion-images"),
            "{err}"
        );
    }
}
