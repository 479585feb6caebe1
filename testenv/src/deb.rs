//! Real Debian packages for tests, built with `dpkg-deb --build`: what a pool's package source
//! holds, and what the guest's apt installs for a formula's `environment`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One package to build (`Architecture: all`).
pub struct Deb<'a> {
    pub name: &'a str,
    pub version: &'a str,
    /// Files to install: (absolute path in the package, content, mode).
    pub files: Vec<(&'a str, Vec<u8>, u32)>,
    /// `Depends:` entries.
    pub depends: Vec<&'a str>,
}

impl Deb<'_> {
    /// The file name Debian gives it.
    pub fn file_name(&self) -> String {
        format!("{}_{}_all.deb", self.name, self.version)
    }
}

/// Builds `deb` under `work` (its staging tree) into `out` and returns the `.deb`'s path.
pub fn build(work: &Path, out: &Path, deb: &Deb<'_>) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let root = work.join(format!("deb-{}-{}", deb.name, deb.version));
    let control_dir = root.join("DEBIAN");
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    std::fs::create_dir_all(&control_dir).map_err(|e| io(&control_dir, e))?;
    for (path, content, mode) in &deb.files {
        let dest = root.join(path.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        std::fs::write(&dest, content).map_err(|e| io(&dest, e))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(*mode))
            .map_err(|e| io(&dest, e))?;
    }
    let mut control = format!(
        "Package: {}\nVersion: {}\nArchitecture: all\nMaintainer: Minion tests <tests@minion.invalid>\n",
        deb.name, deb.version
    );
    if !deb.depends.is_empty() {
        control.push_str(&format!("Depends: {}\n", deb.depends.join(", ")));
    }
    control.push_str("Description: a package built by Minion's tests\n");
    let control_file = control_dir.join("control");
    std::fs::write(&control_file, control).map_err(|e| io(&control_file, e))?;
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let dest = out.join(deb.file_name());
    let result = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&root)
        .arg(&dest)
        .output()
        .map_err(|e| format!("cannot run dpkg-deb: {e}"))?;
    if !result.status.success() {
        return Err(format!(
            "dpkg-deb of {} failed: {}",
            deb.name,
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    Ok(dest)
}
