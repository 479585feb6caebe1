//! miniond under the faults the hardening issue names, with real VMs: a full state dir, children
//! that must die with the daemon, and a bounded chaos run (kill -9, a libvirtd restart, a killed
//! qemu) after which nothing is lost, doubled or leaked.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small ext4 filesystem in a file, loop-mounted at `at` until dropped.
struct LoopMount {
    at: PathBuf,
}

impl LoopMount {
    fn new(image: &Path, at: &Path, mib: u64) -> LoopMount {
        let f = std::fs::File::create(image).expect("fs image");
        f.set_len(mib * 1024 * 1024).expect("size");
        run(
            "mkfs.ext4",
            &["-q", "-F", "-m", "0", &image.to_string_lossy()],
        );
        std::fs::create_dir_all(at).expect("mount point");
        run(
            "mount",
            &[
                "-o",
                "loop",
                &image.to_string_lossy(),
                &at.to_string_lossy(),
            ],
        );
        // qemu (its own user) must reach the VM files under it.
        run("chmod", &["755", &at.to_string_lossy()]);
        LoopMount {
            at: at.to_path_buf(),
        }
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

fn free_mib(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1M"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df avail")
}

/// 200 MB into its artifacts: more than a 320 MiB state dir can hold beside the VM's overlay
/// (where the guest writes it first) while keeping 64 MiB free.
const FILLS_THE_DISK: &str = "name: fill\nnamespace: qa\ndesc: d\nmaintainer: m\ninput:\n  args: [koji_build]\n\
     actions:\n  - name: big\n    shell:\n      - head -c 200000000 /dev/zero > $artifactsdir/big.bin\n";

#[test]
fn a_full_state_dir_fails_the_job_with_that_reason_and_the_daemon_goes_on() {
    use minion_testenv::Need;
    if !image_env(
        "a_full_state_dir_fails_the_job_with_that_reason_and_the_daemon_goes_on",
        "minimal",
        &[
            Need::Program("mkfs.ext4"),
            Need::Program("mount"),
            Need::Program("umount"),
        ],
    ) || !vm_env("a_full_state_dir_fails_the_job_with_that_reason_and_the_daemon_goes_on")
    {
        return;
    }
    let mut d = Daemon::prepare(1, 0, "keep_free_mib = 64\n");
    let mount = LoopMount::new(&d.state.path().join("state.ext4"), &d.state_dir(), 320);
    d.spawn();

    let big = task_repo(FILLS_THE_DISK);
    let id = d.submit(big.path(), &[]);
    let j = d.wait_state(
        &id,
        &["FAILED", "FINISHED", "TIMED_OUT", "CANCELLED"],
        Duration::from_secs(240),
    );
    assert_eq!(j["state"], "FAILED", "{j}\n{}", d.log());
    let reason = j["failure_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("the host's state dir is full")
            && reason.contains("at least 67108864 are kept free"),
        "{reason}"
    );
    d.assert_no_vm(&id);
    assert!(
        !d.state_dir()
            .join("artifacts")
            .join(&id)
            .join("task_output")
            .exists(),
        "the partial artifacts are removed"
    );
    assert!(free_mib(&d.state_dir()) > 200, "the space is back");

    // The daemon is up, and the next job runs as usual.
    let ok = task_repo(PASSING);
    let out = d.submit_follow(ok.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    d.terminate();
    drop(mount);
}
