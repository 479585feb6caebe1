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

fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .arg("-c")
        .arg(libvirt_uri())
        .args(args)
        .output()
        .expect("virsh")
}

/// `xml` of a running job's domain made into a leftover of the same daemon: another name, UUID
/// and VM id in its mark, and none of the job's files (no disk, channel or console).
fn leftover_of(xml: &str, leak_id: &str, job_id: &str) -> String {
    let mut out = xml
        .replace(&format!("minion-{job_id}"), &format!("minion-{leak_id}"))
        .replace(&format!("id=\"{job_id}\""), &format!("id=\"{leak_id}\""));
    // No kernel either: the firmware then waits for a boot device, alive, until destroyed.
    for tag in [
        "uuid",
        "disk",
        "channel",
        "serial",
        "console",
        "interface",
        "kernel",
        "initrd",
        "cmdline",
    ] {
        while let Some(a) = out.find(&format!("<{tag}")) {
            let close = format!("</{tag}>");
            let end = match (out[a..].find(&close), out[a..].find("/>")) {
                (Some(c), Some(s)) if s < c && !out[a..a + s].contains('>') => a + s + 2,
                (Some(c), _) => a + c + close.len(),
                (None, Some(s)) => a + s + 2,
                (None, None) => break,
            };
            out.replace_range(a..end, "");
        }
    }
    out
}

#[test]
fn the_periodic_reaper_destroys_leftovers_and_leaves_live_vms_alone() {
    if !vm_env("the_periodic_reaper_destroys_leftovers_and_leaves_live_vms_alone") {
        return;
    }
    let d = Daemon::start_with(2, 0, "reap_interval_secs = 2\n");
    let slow = task_repo(
        "name: slow\nnamespace: qa\ndesc: d\nmaintainer: m\ninput:\n  args: [koji_build]\n\
         actions:\n  - name: wait\n    shell:\n      - sleep 25\n",
    );
    let id = d.submit(slow.path(), &[]);
    d.wait_state(&id, &["RUNNING"], Duration::from_secs(120));
    let xml = virsh(&["dumpxml", &format!("minion-{id}")]);
    assert!(
        xml.status.success(),
        "{}",
        String::from_utf8_lossy(&xml.stderr)
    );
    let leak = uuid_like(&id);
    // Gone whatever happens (the reaper should be first).
    struct Planted(String);
    impl Drop for Planted {
        fn drop(&mut self) {
            let _ = virsh(&["destroy", &self.0]);
        }
    }
    let _planted = Planted(format!("minion-{leak}"));
    let leaked = leftover_of(&String::from_utf8_lossy(&xml.stdout), &leak, &id);
    let file = d.state.path().join("leak.xml");
    std::fs::write(&file, leaked).expect("xml");
    let made = virsh(&["create", &file.to_string_lossy()]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        running_domains().contains(&format!("minion-{leak}")),
        "the planted leftover runs"
    );
    let dir = d.state_dir().join("vms").join(format!("leftover-{leak}"));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("overlay.qcow2"), b"x").expect("file");

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while (running_domains().contains(&format!("minion-{leak}")) || dir.exists())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        !running_domains().contains(&format!("minion-{leak}")),
        "the leftover domain is still there: {}",
        d.log()
    );
    assert!(!dir.exists(), "the leftover dir is still there");
    let log = d.log();
    assert!(
        log.contains("reaper: destroyed a domain no live VM owns"),
        "{log}"
    );
    assert!(
        log.contains("reaper: removed a VM directory no live VM owns"),
        "{log}"
    );
    // The live job's VM was never touched: it finishes as usual.
    let j = d.wait_state(&id, &["FINISHED", "FAILED"], Duration::from_secs(120));
    assert_eq!(j["state"], "FINISHED", "{j}");
    assert_eq!(j["execution_status"], "OK", "{j}");
    d.assert_no_vm(&id);
}

/// A fresh id shaped like the daemon's (a UUID), derived from `id` so that it differs.
fn uuid_like(id: &str) -> String {
    let mut s: Vec<char> = id.chars().collect();
    for c in s.iter_mut().take(8) {
        *c = if *c == 'a' { 'b' } else { 'a' };
    }
    s.into_iter().collect()
}

/// Processes whose command line contains `needle`.
fn pids_with(needle: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-f", needle])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_clone_in_progress_dies_with_a_killed_daemon() {
    use minion_testenv::Need;
    let (miniond, minion) = binaries();
    let build = "cargo build -p miniond -p minion-cli";
    if !minion_testenv::require(
        "a_clone_in_progress_dies_with_a_killed_daemon",
        &[
            Need::Root,
            Need::Program("git"),
            Need::Program("pgrep"),
            Need::File {
                path: &miniond,
                make: build,
            },
            Need::File {
                path: &minion,
                make: build,
            },
        ],
    ) {
        return;
    }
    // An HTTP "server" that accepts and never answers: git (and its git-remote-http helper)
    // wait on it until killed.
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = server.local_addr().expect("addr").port();
    let _held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in server.incoming().flatten() {
            conns.push(c);
        }
    });
    let mut d = Daemon::prepare(1, 0, "");
    d.spawn();
    for (round, daemon_killed) in [(1, true), (2, false)] {
        let url = format!(
            "http://127.0.0.1:{port}/stalled-{}-{round}.git",
            std::process::id()
        );
        let mut submit = Command::new(&d.minion)
            .env("MINION_SOCKET", &d.socket)
            .args(["submit", &url, "-i", "x-1-1", "-t", "koji_build"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("submit");
        // git clone, and the helper it starts for http (`git remote-http origin URL`).
        let (clone, helper) = (format!("clone.*{url}"), format!("remote-http.*{url}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while pids_with(&clone).is_empty() || pids_with(&helper).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "git and its helper never started: {:?} {:?}\n{}",
                pids_with(&clone),
                pids_with(&helper),
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if daemon_killed {
            // Round 1: the daemon dies mid-clone.
            d.kill9();
        }
        // Round 2: the request ends (its client went away); the daemon lives on.
        let _ = submit.kill();
        let _ = submit.wait();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !pids_with(&url).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            pids_with(&url),
            Vec::<String>::new(),
            "round {round}: git (or its transport helper) outlived {}",
            if daemon_killed {
                "the daemon's kill -9"
            } else {
                "its request"
            }
        );
        if daemon_killed {
            d.spawn();
        }
    }
}
