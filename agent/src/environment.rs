//! The formula's `environment` in the guest: packages the image lacks are installed with the
//! image's own apt before the first step. The guest has no network, so by default they come from
//! the pool's package source on the host: the agent gets its index over the channel, lets apt
//! resolve the dependencies against it (`--print-uris`), asks the host for exactly those files and
//! installs them from a local flat repository. A pool with `network = "user"` and no package
//! source installs from the image's own apt sources instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use minion_formula::{
    package_base, Environment, FetchRequest, Fetcher, PackageDb, MAX_LIST, PACKAGE_INDEX,
};

/// Where the flat repository is assembled (the root disk: the VM is thrown away afterwards).
const REPO: &str = "/var/lib/minion/packages";
/// Lines of apt's output kept in an error.
const TAIL_LINES: usize = 15;

/// Where the packages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The pool's package source, over the channel.
    Host,
    /// The image's own apt sources, over the VM's NIC.
    Network,
    /// Nowhere: only what the image has.
    None,
}

pub struct GuestPackages {
    fetcher: Arc<dyn Fetcher>,
    source: Source,
}

impl GuestPackages {
    pub fn new(fetcher: Arc<dyn Fetcher>, source: Source) -> Self {
        Self { fetcher, source }
    }

    fn install_from_host(
        &self,
        missing: &[String],
        log: &mut dyn FnMut(&str),
    ) -> Result<(), String> {
        let repo = Path::new(REPO);
        std::fs::create_dir_all(repo).map_err(|e| format!("{REPO}: {e}"))?;
        self.fetcher
            .fetch(&FetchRequest::PackageIndex, repo)
            .map_err(|e| format!("the pool's package index: {e}"))?;
        let index = std::fs::read_to_string(repo.join(PACKAGE_INDEX))
            .map_err(|e| format!("the pool's package index: {e}"))?;
        let listed = index_names(&index);
        let absent: Vec<&str> = missing
            .iter()
            .map(|p| package_base(p))
            .filter(|p| !listed.contains(p))
            .collect();
        if !absent.is_empty() {
            return Err(format!(
                "not in the image nor in the pool's package source: {}",
                absent.join(", ")
            ));
        }
        let list = repo.join("sources.list");
        std::fs::write(&list, format!("deb [trusted=yes] file:{REPO} ./\n"))
            .map_err(|e| format!("{}: {e}", list.display()))?;
        let apt = Apt {
            sources: Some(list),
        };
        apt.run(&["-qq", "update"])?;
        // apt resolves against the index; the host sends only the files it would install.
        let mut args = vec!["-q", "--print-uris", "--no-install-recommends", "install"];
        args.extend(missing.iter().map(String::as_str));
        let files = uri_files(&apt.run(&args)?);
        let mut bytes = 0;
        for batch in files.chunks(MAX_LIST) {
            let placed = self
                .fetcher
                .fetch(
                    &FetchRequest::Packages {
                        files: batch.to_vec(),
                    },
                    repo,
                )
                .map_err(|e| format!("package files from the host: {e}"))?;
            bytes += placed
                .iter()
                .filter_map(|f| std::fs::metadata(&f.path).ok())
                .map(|m| m.len())
                .sum::<u64>();
        }
        log(&format!(
            "environment: {} files ({} KiB) from the pool's package source",
            files.len(),
            bytes / 1024
        ));
        apt.install(missing)
    }

    fn install_from_network(&self, missing: &[String]) -> Result<(), String> {
        let apt = Apt { sources: None };
        apt.run(&["-qq", "update"])?;
        apt.install(missing)
    }
}

impl Environment for GuestPackages {
    fn prepare(&self, packages: &[String], log: &mut dyn FnMut(&str)) -> Result<(), String> {
        let db = PackageDb::Dpkg;
        if PackageDb::detect() != Some(db) {
            return Err(
                "this image has no dpkg/apt: environment packages need a Debian-based image".into(),
            );
        }
        let missing = db.missing(packages)?;
        if missing.is_empty() {
            log(&format!(
                "environment: {} already in the image",
                packages.join(", ")
            ));
            return Ok(());
        }
        log(&format!("environment: installing {}", missing.join(", ")));
        let started = std::time::Instant::now();
        match self.source {
            Source::Host => self.install_from_host(&missing, log)?,
            Source::Network => self.install_from_network(&missing)?,
            Source::None => {
                return Err(format!(
                    "not in the image: {} (the pool has no package source and its VMs no network)",
                    missing.join(", ")
                ))
            }
        }
        // apt said it installed them; the database must agree.
        let still = db.missing(&missing)?;
        if !still.is_empty() {
            return Err(format!("apt did not install {}", still.join(", ")));
        }
        log(&format!(
            "environment: installed {} in {:.1}s",
            missing.join(", "),
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

/// apt-get with Minion's options: a private source list when given (the image's own sources
/// otherwise), no prompts, no sandbox user (the agent is root in a throwaway VM).
struct Apt {
    sources: Option<PathBuf>,
}

impl Apt {
    fn command(&self) -> Command {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", "APT::Sandbox::User=root"])
            .args(["-o", "Dpkg::Use-Pty=0"]);
        if let Some(list) = &self.sources {
            c.arg("-o")
                .arg(format!("Dir::Etc::SourceList={}", list.display()))
                .args(["-o", "Dir::Etc::SourceParts=/nonexistent"]);
        }
        c
    }

    /// Runs apt-get; its stdout, or an error with the tail of what it said.
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command()
            .args(args)
            .output()
            .map_err(|e| format!("cannot run apt-get: {e}"))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let verb = args.iter().find(|a| !a.starts_with('-')).unwrap_or(&"");
        Err(format!(
            "apt-get {verb} failed ({}):\n{}",
            out.status,
            tail(&out.stdout, &out.stderr)
        ))
    }

    fn install(&self, packages: &[String]) -> Result<(), String> {
        let mut args = vec!["-q", "-y", "--no-install-recommends", "install"];
        args.extend(packages.iter().map(String::as_str));
        self.run(&args).map(|_| ())
    }
}

/// The last lines of apt's output (its errors come last, on either stream).
fn tail(stdout: &[u8], stderr: &[u8]) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr)
    );
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// The package names an index lists.
fn index_names(index: &str) -> std::collections::BTreeSet<&str> {
    index
        .lines()
        .filter_map(|l| l.strip_prefix("Package:"))
        .map(str::trim)
        .collect()
}

/// The file names in `apt-get --print-uris` output: `'URI' FILE SIZE HASH` lines.
fn uri_files(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with('\''))
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_uris_and_index_are_read_as_apt_writes_them() {
        let out = "'file:/var/lib/minion/packages/./b_2.0_all.deb' b_2.0_all.deb 716 SHA256:c4\n\
                   'file:/var/lib/minion/packages/./a_1.0_all.deb' a_1.0_all.deb 602 SHA256:94\n";
        assert_eq!(uri_files(out), ["b_2.0_all.deb", "a_1.0_all.deb"]);
        let index = "Package: a\nVersion: 1\n\nPackage: b-tool\nDepends: a\n";
        assert_eq!(
            index_names(index).into_iter().collect::<Vec<_>>(),
            ["a", "b-tool"]
        );
        let t = tail(b"one\n\ntwo\n", b"E: three\n");
        assert_eq!(t, "one\ntwo\nE: three");
    }
}
