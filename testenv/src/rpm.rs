//! Real RPM packages for tests, built with `rpmbuild` (Debian's `rpm` package) from a generated
//! spec: what the Koji stand-in serves, and what tasks inspect with rpm's own tools.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One package to build.
pub struct Package<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub release: &'a str,
    /// `noarch`, or a real arch (`x86_64`): rpmbuild then labels the package so.
    pub arch: &'a str,
    /// Files to install: (absolute path in the package, content).
    pub files: Vec<(&'a str, Vec<u8>)>,
    /// `Requires:` lines.
    pub requires: Vec<&'a str>,
}

impl Package<'_> {
    pub fn nvr(&self) -> String {
        format!("{}-{}-{}", self.name, self.version, self.release)
    }

    /// The file name rpmbuild gives it.
    pub fn file_name(&self) -> String {
        format!("{}.{}.rpm", self.nvr(), self.arch)
    }
}

/// Builds `pkg` under `work` (its rpmbuild tree) and returns the `.rpm`'s path. The payload is
/// not compressed (fast to build, and tests of large files measure transfer, not xz).
pub fn build(work: &Path, pkg: &Package<'_>) -> Result<PathBuf, String> {
    let top = work.join(format!("rpmbuild-{}", pkg.nvr()));
    let sources = top.join("SOURCES");
    std::fs::create_dir_all(&sources).map_err(|e| format!("{}: {e}", sources.display()))?;
    let mut install = String::new();
    let mut listed = String::new();
    for (i, (path, content)) in pkg.files.iter().enumerate() {
        let src = sources.join(format!("file{i}"));
        std::fs::write(&src, content).map_err(|e| format!("{}: {e}", src.display()))?;
        let dir = Path::new(path)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let _ = writeln!(install, "mkdir -p %{{buildroot}}{dir}");
        let _ = writeln!(install, "cp {} %{{buildroot}}{path}", src.display());
        let _ = writeln!(listed, "{path}");
    }
    let mut spec = format!(
        "Name: {}\nVersion: {}\nRelease: {}\nSummary: Minion test package\nLicense: MIT\nBuildArch: {}\n",
        pkg.name, pkg.version, pkg.release, pkg.arch
    );
    for r in &pkg.requires {
        let _ = writeln!(spec, "Requires: {r}");
    }
    let _ = write!(
        spec,
        "\n%description\nA package built by Minion's tests.\n\n%install\n{install}\n%files\n{listed}"
    );
    let spec_path = top.join(format!("{}.spec", pkg.name));
    std::fs::write(&spec_path, spec).map_err(|e| format!("{}: {e}", spec_path.display()))?;
    let out = Command::new("rpmbuild")
        .arg("-bb")
        .arg("--quiet")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .arg("--define")
        .arg("_binary_payload w0.ufdio")
        .arg("--define")
        .arg("__os_install_post %{nil}")
        .arg("--define")
        .arg("debug_package %{nil}")
        .arg("--target")
        .arg(pkg.arch)
        .arg(&spec_path)
        .output()
        .map_err(|e| format!("cannot run rpmbuild: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "rpmbuild of {} failed: {}",
            pkg.nvr(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let rpm = top.join("RPMS").join(pkg.arch).join(pkg.file_name());
    if !rpm.is_file() {
        return Err(format!("rpmbuild made no {}", rpm.display()));
    }
    Ok(rpm)
}
