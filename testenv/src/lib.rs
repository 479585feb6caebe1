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

use std::path::Path;

pub mod deb;
pub mod fedora;
pub mod http;
pub mod resultsdb;
pub mod rpm;

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
    /// A program on `PATH`.
    Program(&'a str),
    /// A TCP service answering at `addr` (e.g. RabbitMQ at `127.0.0.1:5672`), named `what`.
    Tcp {
        addr: &'a str,
        what: &'a str,
        start: &'a str,
    },
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

/// Runs `git -C DIR ARGS…` for a test fixture (a fixed identity, `main` as the first branch) and
/// panics with git's stderr if it fails.
pub fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
        Need::Tcp { addr, what, start } => {
            // A host name resolves here (Debian's mirror), an address parses as itself.
            use std::net::ToSocketAddrs;
            let reachable = addr
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .and_then(|a| {
                    std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).ok()
                })
                .is_some();
            (!reachable).then(|| format!("{what} at {addr} ({start})"))
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
}
