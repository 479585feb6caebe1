//! Tests that need a machine say so. A test that needs root, a running libvirtd, a built image,
//! the static agent or the workspace's binaries calls [`require`] first:
//!
//! ```no_run
//! use minion_testenv::{require, Need};
//! if !require("boots_minimal", &[Need::Root, Need::Libvirtd("qemu:///system")]) {
//!     return;
//! }
//! ```
//!
//! When something is missing, a developer's run (`cargo test --workspace` on a laptop) prints one
//! line saying what and why the test did not run, and the test passes without running. Under CI
//! (`CI=true`) or with `MINION_REQUIRE_VM_TESTS=1` the same line fails the test instead, so CI
//! can never pass by skipping.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One thing a test needs from the machine.
#[derive(Debug, Clone)]
pub enum Need<'a> {
    /// Running as root (libvirt's system instance, `/var/lib/minion`).
    Root,
    /// A libvirtd answering at this URI (checked through its socket for `qemu:///system`).
    Libvirtd(&'a str),
    /// `<images_dir>/<name>/manifest.json` (`make image`).
    Image { dir: &'a Path, name: &'a str },
    /// A file that must exist, with the command that makes it.
    File { path: &'a Path, make: &'a str },
    /// A workspace binary built no earlier than the sources under `sources` (so a test never
    /// runs a stale daemon), with the command that builds it.
    FreshBinary {
        path: &'a Path,
        sources: &'a [PathBuf],
        make: &'a str,
    },
    /// A program on `PATH`.
    Program(&'a str),
}

/// Whether a missing need fails the test rather than skipping it.
pub fn strict() -> bool {
    let on = |k: &str| {
        std::env::var(k).is_ok_and(|v| {
            let v = v.trim().to_ascii_lowercase();
            !v.is_empty() && v != "0" && v != "false" && v != "no"
        })
    };
    on("CI") || on("MINION_REQUIRE_VM_TESTS")
}

/// What is missing of `needs`, one text per need, empty when the machine has everything.
pub fn missing(needs: &[Need<'_>]) -> Vec<String> {
    needs.iter().filter_map(check).collect()
}

/// `true` when `test` can run. Otherwise prints one line naming what is missing and returns
/// `false` (skip), or panics with that line when [`strict`].
pub fn require(test: &str, needs: &[Need<'_>]) -> bool {
    let gaps = missing(needs);
    if gaps.is_empty() {
        return true;
    }
    let line = format!("{test}: needs {}", gaps.join("; "));
    if strict() {
        panic!("{line} (CI=true or MINION_REQUIRE_VM_TESTS=1: failing instead of skipping)");
    }
    eprintln!("SKIP {line} (set MINION_REQUIRE_VM_TESTS=1 to fail instead)");
    false
}

fn check(need: &Need<'_>) -> Option<String> {
    match need {
        Need::Root => {
            // SAFETY: geteuid has no preconditions.
            (unsafe { libc::geteuid() } != 0).then(|| "root".to_string())
        }
        Need::Libvirtd(uri) => libvirtd_gap(uri),
        Need::Image { dir, name } => {
            let m = dir.join(name).join("manifest.json");
            (!m.is_file())
                .then(|| format!("the `{name}` image ({} missing: make image)", m.display()))
        }
        Need::File { path, make } => {
            (!path.is_file()).then(|| format!("{} (missing: {make})", path.display()))
        }
        Need::FreshBinary {
            path,
            sources,
            make,
        } => {
            let built = match std::fs::metadata(path).and_then(|m| m.modified()) {
                Ok(t) => t,
                Err(_) => return Some(format!("{} (missing: {make})", path.display())),
            };
            let newest = sources.iter().filter_map(|s| newest_mtime(s)).max();
            match newest {
                Some(src) if src > built => Some(format!(
                    "{} rebuilt (older than its sources: {make})",
                    path.display()
                )),
                _ => None,
            }
        }
        Need::Program(name) => {
            let found = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
                .unwrap_or(false);
            (!found).then(|| format!("`{name}` on PATH"))
        }
    }
}

fn libvirtd_gap(uri: &str) -> Option<String> {
    // The system instance's socket; other URIs are taken as reachable (the test says otherwise).
    if uri != "qemu:///system" {
        return None;
    }
    let sock = Path::new("/var/run/libvirt/libvirt-sock");
    match std::os::unix::net::UnixStream::connect(sock) {
        Ok(_) => None,
        Err(e) => Some(format!(
            "libvirtd running ({}: {e}; scripts/libvirt-start.sh)",
            sock.display()
        )),
    }
}

/// The newest modification time of any `.rs`, `.proto` or `Cargo.toml` under `dir`.
fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if p.file_name().is_some_and(|n| n != "target") {
                    stack.push(p);
                }
            } else if p
                .extension()
                .is_some_and(|x| x == "rs" || x == "proto" || x == "toml")
            {
                if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                    newest = newest.max(Some(t));
                }
            }
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_missing_is_named() {
        let t = std::env::temp_dir();
        let gaps = missing(&[
            Need::Image {
                dir: &t,
                name: "no-such-image-xyz",
            },
            Need::File {
                path: Path::new("/nonexistent/agent"),
                make: "scripts/build-agent.sh",
            },
            Need::Program("no-such-program-xyz"),
            Need::Program("sh"),
        ]);
        assert_eq!(gaps.len(), 3, "{gaps:?}");
        assert!(gaps[0].contains("`no-such-image-xyz` image"), "{gaps:?}");
        assert_eq!(
            gaps[1],
            "/nonexistent/agent (missing: scripts/build-agent.sh)"
        );
        assert_eq!(gaps[2], "`no-such-program-xyz` on PATH");
    }

    #[test]
    fn a_binary_older_than_its_sources_is_stale() {
        let t = tempfile_dir();
        let src = t.join("src");
        std::fs::create_dir_all(&src).expect("mkdir");
        let bin = t.join("bin");
        std::fs::write(&bin, b"x").expect("bin");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(src.join("main.rs"), b"fn main() {}").expect("src");
        let sources = [src.clone()];
        let need = Need::FreshBinary {
            path: &bin,
            sources: &sources,
            make: "cargo build",
        };
        assert!(missing(std::slice::from_ref(&need))[0].contains("older than its sources"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&bin, b"y").expect("rebuilt");
        assert!(missing(&[need]).is_empty());
        let _ = std::fs::remove_dir_all(&t);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("minion-testenv-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("tmp");
        d
    }
}
