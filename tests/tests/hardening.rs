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

/// 200 MB into its artifacts: more than a 240 MiB state dir can hold while keeping 64 MiB free
/// (the VM's overlay, where the guest writes it first, is a volume of the storage pool, not here).
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
    let mount = LoopMount::new(&d.state.path().join("state.ext4"), &d.state_dir(), 240);
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
    let port = free_port();
    let d = Daemon::start_with(
        2,
        0,
        &format!("reap_interval_secs = 2\nlisten_http = \"127.0.0.1:{port}\"\n"),
    );
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
    let (status, metrics) = http_get(&format!("http://127.0.0.1:{port}/metrics"));
    assert_eq!(status, 200);
    for want in [
        "minion_reaped_leftovers_total{kind=\"domain\"} 1",
        "minion_reaped_leftovers_total{kind=\"vm_dir\"} 1",
        "minion_vms_alive 1",
    ] {
        assert!(metrics.contains(want), "{want} not in:\n{metrics}");
    }
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
    if !daemon_env(
        "a_clone_in_progress_dies_with_a_killed_daemon",
        &[Need::Program("git"), Need::Program("pgrep")],
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

/// xorshift64*: the chaos schedule, reproducible from the printed seed (`MINION_CHAOS_SEED`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi` (seconds, as a Duration).
    fn between(&mut self, lo: f64, hi: f64) -> Duration {
        let f = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        Duration::from_secs_f64(lo + f * (hi - lo))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    KillDaemon,
    RestartLibvirtd,
    KillQemu,
}

fn restart_libvirtd() {
    if let Ok(pid) = std::fs::read_to_string("/run/libvirtd.pid") {
        let _ = Command::new("kill").arg(pid.trim()).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while Command::new("kill")
            .args(["-0", pid.trim()])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let st = Command::new(workspace_root().join("scripts/libvirt-start.sh"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("libvirt-start.sh");
    assert!(st.success(), "libvirtd did not come back");
}

/// Kills -9 the qemu of one of the daemon's running domains; its name, if there was one.
fn kill_one_qemu(d: &Daemon) -> Option<String> {
    let name = d.domains().into_iter().next()?;
    let pids = pids_with(&format!("guest={name}"));
    for p in &pids {
        let _ = Command::new("kill").args(["-9", p]).status();
    }
    (!pids.is_empty()).then_some(name)
}

const QUICK: &str =
    "name: quick\nnamespace: qa\ndesc: d\nmaintainer: m\ninput:\n  args: [koji_build]\n\
     actions:\n  - name: work\n    shell:\n      - echo working\n      - sleep 1\n";

/// 110 jobs on a pool of 2 while the daemon is killed -9 five times at random moments, libvirtd
/// is restarted once and one qemu is killed. Afterwards every job is final, none is lost, no
/// two VMs ran at once beyond the pool's 2, and nothing of any VM is left.
#[test]
fn chaos_nothing_lost_doubled_or_leaked() {
    if !vm_env("chaos_nothing_lost_doubled_or_leaked") {
        return;
    }
    let seed = std::env::var("MINION_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(1)
        });
    eprintln!("chaos: seed {seed} (MINION_CHAOS_SEED={seed} replays this schedule)");
    let mut rng = Rng(seed);
    let started = std::time::Instant::now();
    let mut d = Daemon::start(2, 0);
    let repo = task_repo(QUICK);
    let jobs = 110;
    let ids: Vec<String> = (0..jobs).map(|_| d.submit(repo.path(), &[])).collect();
    let sampler = AliveSampler::start(&d.state_dir());

    let mut faults: Vec<(Duration, Fault)> = (0..5)
        .map(|_| (rng.between(5.0, 150.0), Fault::KillDaemon))
        .collect();
    faults.push((rng.between(20.0, 120.0), Fault::RestartLibvirtd));
    faults.push((rng.between(10.0, 120.0), Fault::KillQemu));
    faults.sort_by_key(|f| f.0);
    let t0 = std::time::Instant::now();
    let mut done = Vec::new();
    for (at, fault) in &faults {
        if let Some(wait) = at.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        match fault {
            Fault::KillDaemon => {
                d.kill9();
                std::thread::sleep(rng.between(0.0, 2.0));
                d.spawn();
                done.push(format!("{:.0}s kill -9 miniond", at.as_secs_f64()));
            }
            Fault::RestartLibvirtd => {
                restart_libvirtd();
                done.push(format!("{:.0}s libvirtd restarted", at.as_secs_f64()));
            }
            Fault::KillQemu => {
                let hit = kill_one_qemu(&d).unwrap_or_else(|| "none running".into());
                done.push(format!("{:.0}s qemu killed ({hit})", at.as_secs_f64()));
            }
        }
    }
    eprintln!("chaos: faults {done:?}");

    // Every job reaches a final state.
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let listed = loop {
        let list = d.json(&["job", "list", "--limit", "1000"]);
        let all = list.as_array().cloned().unwrap_or_default();
        let open = all
            .iter()
            .filter(|j| {
                !matches!(
                    j["state"].as_str(),
                    Some("FINISHED" | "FAILED" | "CANCELLED" | "TIMED_OUT")
                )
            })
            .count();
        if open == 0 {
            break all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} jobs never ended:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    let max_alive = sampler.finish();

    let seen: std::collections::HashSet<&str> =
        listed.iter().filter_map(|j| j["id"].as_str()).collect();
    let lost: Vec<&String> = ids.iter().filter(|i| !seen.contains(i.as_str())).collect();
    // A job ran twice at once if it has more RUNNING entries than attempts.
    let doubled: Vec<&str> = listed
        .iter()
        .filter(|j| {
            let running = states(j).iter().filter(|s| *s == "RUNNING").count() as u64;
            running > j["attempt"].as_u64().unwrap_or(0) + 1
        })
        .filter_map(|j| j["id"].as_str())
        .collect();
    let mut by_state = std::collections::BTreeMap::new();
    let mut reasons = std::collections::BTreeMap::new();
    for j in &listed {
        *by_state
            .entry(j["state"].as_str().unwrap_or("?").to_string())
            .or_insert(0) += 1;
        if let Some(r) = j["failure_reason"].as_str().filter(|r| !r.is_empty()) {
            // Ids and names vary; the first words say what happened.
            let short: String = r.split_whitespace().take(6).collect::<Vec<_>>().join(" ");
            *reasons.entry(short).or_insert(0) += 1;
        }
    }
    eprintln!("chaos: failure reasons {reasons:?}");
    d.terminate();
    let leaked_domains = d.domains();
    let leaked_dirs = d.vm_ids();
    // A VM's qemu names its overlay, a volume named with the daemon's owner tag.
    let tag = minion_provisioning::volumes::owner_tag(&d.state_dir().to_string_lossy());
    let leaked_qemu = pids_with(&format!("minion-{tag}-"));
    let leaked_volumes: Vec<PathBuf> = daemon_volumes(&d.state_dir())
        .into_iter()
        .filter(|v| !v.to_string_lossy().contains("minion-snap-"))
        .collect();
    eprintln!(
        "chaos: {} jobs, {} faults ({} kill -9), lost {}, doubled {}, max VMs alive {max_alive}, \
         leaked domains {}, dirs {}, qemu {}; states {by_state:?}; {:.0} s",
        ids.len(),
        faults.len(),
        faults.iter().filter(|f| f.1 == Fault::KillDaemon).count(),
        lost.len(),
        doubled.len(),
        leaked_domains.len(),
        leaked_dirs.len(),
        leaked_qemu.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(doubled.is_empty(), "ran twice: {doubled:?}");
    assert!(
        max_alive <= 2,
        "{max_alive} VMs alive at once on a pool of 2"
    );
    assert!(
        leaked_domains.is_empty(),
        "domains left: {leaked_domains:?}"
    );
    assert!(leaked_dirs.is_empty(), "VM dirs left: {leaked_dirs:?}");
    assert!(leaked_qemu.is_empty(), "qemu left: {leaked_qemu:?}");
    assert!(
        leaked_volumes.is_empty(),
        "volumes left: {leaked_volumes:?}"
    );
    assert!(
        by_state.get("FINISHED").copied().unwrap_or(0) >= jobs * 3 / 4,
        "most jobs should still finish: {by_state:?}"
    );
}
