//! The formula's `environment`: packages that must be present before the first step. Who makes
//! them present depends on where the run is: in a VM the agent installs them from the pool's
//! package source (the guest has no network); `minion runtask` on the host only checks them, since
//! installing packages on a developer's machine is not a task runner's business.

use std::process::Command;

/// Most packages one formula may name.
pub const MAX_PACKAGES: usize = 256;

/// Makes a formula's packages present.
pub trait Environment: Send + Sync {
    /// Makes `packages` present, or says which cannot be and why. `log` narrates progress.
    fn prepare(&self, packages: &[String], log: &mut dyn FnMut(&str)) -> Result<(), String>;
}

impl std::fmt::Debug for dyn Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Environment")
    }
}

/// A package name as Debian and RPM spell them: starts with a letter or digit; then letters,
/// digits and `._+-` (an `:arch` qualifier is allowed too), at most 128 characters.
pub fn check_package_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a package name (a letter or digit, then letters, digits and ._+-:)",
            name.escape_debug()
        ))
    }
}

/// A package name without its `:arch` qualifier (what package databases and indexes list).
pub fn package_base(name: &str) -> &str {
    name.split(':').next().unwrap_or(name)
}

/// Whether a program of this name is on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// The package databases this can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageDb {
    Dpkg,
    Rpm,
}

impl PackageDb {
    /// The system's own: dpkg where its database exists (Debian and derivatives), else rpm.
    pub fn detect() -> Option<PackageDb> {
        let has = |tool: &str| {
            std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        };
        if std::path::Path::new("/var/lib/dpkg/status").is_file() && has("dpkg-query") {
            Some(PackageDb::Dpkg)
        } else if has("rpm") {
            Some(PackageDb::Rpm)
        } else {
            None
        }
    }

    /// Which of `packages` are not installed, in the order given.
    pub fn missing(self, packages: &[String]) -> Result<Vec<String>, String> {
        if packages.is_empty() {
            return Ok(Vec::new());
        }
        // Both tools print the installed ones and exit non-zero when some are not: the output,
        // not the exit code, says which.
        let out = match self {
            PackageDb::Dpkg => Command::new("dpkg-query")
                .args(["-W", "-f", "${Package}\t${db:Status-Status}\n", "--"])
                .args(packages)
                .output(),
            PackageDb::Rpm => Command::new("rpm")
                .args(["-q", "--qf", "%{NAME}\tinstalled\n", "--"])
                .args(packages)
                .output(),
        }
        .map_err(|e| format!("cannot run {}: {e}", self.tool()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let installed: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter(|(_, status)| *status == "installed")
            .map(|(name, _)| name)
            .collect();
        Ok(packages
            .iter()
            .filter(|p| !installed.contains(package_base(p)))
            .cloned()
            .collect())
    }

    fn tool(self) -> &'static str {
        match self {
            PackageDb::Dpkg => "dpkg-query",
            PackageDb::Rpm => "rpm",
        }
    }
}

/// `minion runtask` on the host: checks that the packages are installed, installs nothing.
pub struct HostPackages;

impl Environment for HostPackages {
    fn prepare(&self, packages: &[String], log: &mut dyn FnMut(&str)) -> Result<(), String> {
        let db = PackageDb::detect()
            .ok_or("cannot check the packages: this host has neither dpkg nor rpm")?;
        let missing = db.missing(packages)?;
        if missing.is_empty() {
            log(&format!(
                "environment: {} installed on this host",
                packages.join(", ")
            ));
            return Ok(());
        }
        Err(format!(
            "not installed on this host: {} (minion runtask checks the environment and installs \
             nothing: install them, or run the task in a VM)",
            missing.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_are_plain() {
        for ok in [
            "rpmlint",
            "python3-rpm",
            "libstdc++6",
            "foo:amd64",
            "g++",
            "0ad",
        ] {
            assert!(check_package_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-rf",
            "a b",
            "a;b",
            "$(x)",
            "../x",
            "a/b",
            &"x".repeat(129),
        ] {
            assert!(check_package_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_host_database_tells_installed_from_missing() {
        let db = PackageDb::detect().expect("the suite runs on a dpkg- or rpm-based host");
        // The package database's own package is installed wherever the database exists.
        let own = match db {
            PackageDb::Dpkg => "dpkg",
            PackageDb::Rpm => "rpm",
        };
        let asked = vec![own.to_string(), "minion-no-such-package".to_string()];
        assert_eq!(
            db.missing(&asked).expect("query runs"),
            ["minion-no-such-package"]
        );
        let mut said = Vec::new();
        let err = HostPackages
            .prepare(&asked, &mut |m| said.push(m.to_string()))
            .expect_err("one is missing");
        assert!(
            err.contains("not installed on this host: minion-no-such-package"),
            "{err}"
        );
        HostPackages
            .prepare(&[own.to_string()], &mut |m| said.push(m.to_string()))
            .expect("installed");
        assert_eq!(said, [format!("environment: {own} installed on this host")]);
    }
}
