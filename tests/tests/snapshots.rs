//! Snapshot-restored VMs end to end (`start = "snapshot"`): a real `miniond` boots a template VM
//! of the `minimal` image, saves it through the real libvirtd, and restores every job's VM from
//! it. Restored VMs run jobs, are unique (RNG, machine id, host name, clock), serve `min_ready`,
//! and a snapshot that is half-written when the daemon is killed, or that no longer restores, is
//! never used: the VMs boot instead.
//!
//! Needs what `daemon_e2e.rs` needs (libvirtd, the `minimal` image, `target/agent/minion-agent`).

mod common;

use std::path::{Path, PathBuf};

use common::*;

const SNAPSHOT: &str = "start = \"snapshot\"";
/// What the agent logs on the console as it starts: a booted VM's console has it, a restored one's
/// does not (its agent started in the template, before the save).
const AGENT_START: &str = "minion-agent starting";

/// Prints what makes a VM itself, one `key=value` per line.
const WHOAMI: &str = r#"name: e2e-whoami
desc: prints the VM's identity
maintainer: minion
input:
  args: [koji_build]
actions:
  - name: whoami
    shell:
      - echo "urandom=$$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
      - echo "uuid=$$(cat /proc/sys/kernel/random/uuid)"
      - echo "machine_id=$$(cat /etc/machine-id)"
      - echo "hostname=$$(hostname)"
      - echo "clock=$$(date +%s.%N)"
"#;

/// A daemon's snapshots on this machine, each as the common start of its volumes' paths
/// (`<test volumes>/minion-snap-<tag>-<key>`), those with their marker (written last: `whole`)
/// or those without.
fn snapshot_dirs(state: &Path, whole: bool) -> Vec<PathBuf> {
    let mut snaps: Vec<PathBuf> = daemon_volumes(state)
        .into_iter()
        .filter_map(|v| {
            let name = v.file_name()?.to_string_lossy().into_owned();
            let stem = name
                .strip_prefix("minion-snap-")?
                .split_once('.')?
                .0
                .to_string();
            Some(v.with_file_name(format!("minion-snap-{stem}")))
        })
        .collect();
    snaps.sort();
    snaps.dedup();
    snaps.retain(|s| part(s, "json").is_file() == whole);
    snaps
}

/// One of a snapshot's volumes: `disk.qcow2`, `seed.iso`, `memory` (the save image), `json`.
fn part(snap: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}.{suffix}", snap.display()))
}

/// Whether any volume of the snapshot is there.
fn exists(snap: &Path) -> bool {
    let prefix = format!("{}.", snap.display());
    std::fs::read_dir(TEST_VOLUMES)
        .map(|r| {
            r.flatten()
                .any(|e| e.path().to_string_lossy().starts_with(&prefix))
        })
        .unwrap_or(false)
}

/// The whole snapshots of a daemon.
fn snapshots(state: &Path) -> Vec<PathBuf> {
    snapshot_dirs(state, true)
}

/// Its half-made ones (a template being booted or saved).
fn partials(state: &Path) -> Vec<PathBuf> {
    snapshot_dirs(state, false)
}

fn wait_snapshot(d: &Daemon) -> PathBuf {
    until("the pool's snapshot", Duration::from_secs(180), || {
        !snapshots(&d.state_dir()).is_empty()
    });
    snapshots(&d.state_dir()).remove(0)
}

/// The BOOTING event's detail of job `j`.
fn booting_detail(j: &Value) -> String {
    j["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["state"] == "BOOTING")
        .and_then(|e| e["message"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn run(d: &Daemon, formula: &str) -> (Value, String) {
    let repo = task_repo(formula);
    let id = d.submit(repo.path(), &[]);
    let j = d.wait_state(
        &id,
        &["FINISHED", "FAILED", "TIMED_OUT", "CANCELLED"],
        Duration::from_secs(180),
    );
    let log = output_text(&d.cli(&["job", "logs", &id]));
    (j, log)
}

fn field(log: &str, key: &str) -> String {
    log.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the job's log:\n{log}"))
        .trim()
        .to_string()
}

fn console(d: &Daemon, j: &Value) -> String {
    let id = j["id"].as_str().expect("id");
    std::fs::read_to_string(d.state_dir().join("artifacts").join(id).join("console.log"))
        .unwrap_or_default()
}

#[test]
fn restored_vms_run_jobs_and_each_is_unique() {
    let test = "restored_vms_run_jobs_and_each_is_unique";
    if !vm_env(test) {
        return;
    }
    let d = Daemon::start_with(1, 0, SNAPSHOT);
    let snap = wait_snapshot(&d);
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(part(&snap, "json")).expect("meta"))
            .expect("json");
    assert_eq!(meta["image"], "minimal", "{meta}");
    // Frozen: the restored VMs write their own overlays, never the snapshot's disk or seed.
    let stamp = |f: &str| {
        let m = std::fs::metadata(part(&snap, f)).expect("snapshot part");
        (m.len(), m.modified().expect("mtime"))
    };
    let frozen: Vec<_> = ["disk.qcow2", "seed.iso", "memory"].map(stamp).to_vec();

    let mut seen: Vec<std::collections::BTreeMap<&str, String>> = Vec::new();
    for _ in 0..2 {
        let before_ms = jobs_now_ms();
        let (j, log) = run(&d, WHOAMI);
        let after_ms = jobs_now_ms();
        assert_eq!(j["state"], "FINISHED", "{j:#}\n{log}\n{}", d.log());
        assert_eq!(
            booting_detail(&j),
            "restored from a snapshot",
            "{j:#}\n{}",
            d.log()
        );
        // Restored, not booted: the agent started before the save, on the template's console.
        let con = console(&d, &j);
        assert!(!con.contains(AGENT_START), "the VM booted:\n{con}");
        let clock_ms = (field(&log, "clock").parse::<f64>().expect("clock") * 1000.0) as i64;
        assert!(
            clock_ms >= before_ms - 1000 && clock_ms <= after_ms + 1000,
            "guest clock {clock_ms} not within 1 s of the host's [{before_ms}, {after_ms}]"
        );
        let mut me = std::collections::BTreeMap::new();
        for k in ["urandom", "uuid", "machine_id", "hostname"] {
            me.insert(k, field(&log, k));
        }
        seen.push(me);
        d.assert_no_vm(j["id"].as_str().expect("id"));
    }
    for k in ["urandom", "uuid", "machine_id", "hostname"] {
        assert_ne!(
            seen[0][k], seen[1][k],
            "two restored VMs share {k}: {seen:?}"
        );
    }
    assert_eq!(seen[0]["machine_id"].len(), 32, "{seen:?}");
    assert_eq!(
        ["disk.qcow2", "seed.iso", "memory"].map(stamp).to_vec(),
        frozen,
        "a restored VM wrote its snapshot"
    );
    assert!(seen[0]["hostname"].starts_with("minion-"), "{seen:?}");
    // Nothing of the template or the jobs' VMs is left running.
    until("no VM left", TEARDOWN_AFTER_END, || d.domains().is_empty());
}

fn jobs_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

#[test]
fn pre_booted_vms_of_a_snapshot_pool_are_restored() {
    let test = "pre_booted_vms_of_a_snapshot_pool_are_restored";
    if !vm_env(test) {
        return;
    }
    let d = Daemon::start_with(2, 1, SNAPSHOT);
    wait_snapshot(&d);
    // The first parked VM may have booted before the snapshot existed: the one parked after a job
    // took it is restored.
    until("a parked VM", Duration::from_secs(120), || {
        d.json(&["pool", "list"])[0]["ready"] == 1
    });
    let (first, _) = run(&d, PASSING);
    assert_eq!(first["state"], "FINISHED", "{first:#}");
    until("a parked VM again", Duration::from_secs(120), || {
        d.json(&["pool", "list"])[0]["ready"] == 1
    });
    let (j, log) = run(&d, PASSING);
    assert_eq!(j["state"], "FINISHED", "{j:#}\n{log}");
    let con = console(&d, &j);
    assert!(!con.contains(AGENT_START), "the parked VM booted:\n{con}");
    assert!(d.log().contains("pre-booted VM ready"), "{}", d.log());
}

#[test]
fn a_snapshot_half_written_when_the_daemon_is_killed_is_never_used() {
    let test = "a_snapshot_half_written_when_the_daemon_is_killed_is_never_used";
    if !vm_env(test) {
        return;
    }
    let mut d = Daemon::start_with(1, 0, SNAPSHOT);
    // The save takes seconds under TCG: catch it half-way and kill the daemon there.
    until("a snapshot being written", Duration::from_secs(180), || {
        !partials(&d.state_dir()).is_empty()
    });
    d.kill9();
    let half = partials(&d.state_dir());
    assert_eq!(half.len(), 1, "{half:?}");
    assert!(snapshots(&d.state_dir()).is_empty());

    d.spawn();
    // At start the half-written one goes; a job never restores from it.
    until(
        "the partial snapshot removed",
        Duration::from_secs(60),
        || !exists(&half[0]),
    );
    let (j, log) = run(&d, PASSING);
    assert_eq!(j["state"], "FINISHED", "{j:#}\n{log}\n{}", d.log());
    let snap = wait_snapshot(&d);
    assert!(part(&snap, "memory").is_file());
    let (j, _) = run(&d, PASSING);
    assert_eq!(j["state"], "FINISHED", "{j:#}");
    assert_eq!(booting_detail(&j), "restored from a snapshot", "{j:#}");
    until("no VM left", TEARDOWN_AFTER_END, || d.domains().is_empty());
}

#[test]
fn a_snapshot_that_no_longer_restores_is_dropped_once_and_vms_boot() {
    let test = "a_snapshot_that_no_longer_restores_is_dropped_once_and_vms_boot";
    if !vm_env(test) {
        return;
    }
    let d = Daemon::start_with(1, 0, SNAPSHOT);
    let snap = wait_snapshot(&d);
    until(
        "pool list says the snapshot is ready",
        Duration::from_secs(10),
        || {
            let p = &d.json(&["pool", "list"])[0];
            p["snapshot"] == "ready" && p["snapshot_bytes"].as_u64().unwrap_or(0) > 1 << 20
        },
    );
    // Damage the saved state and its copies made ahead: libvirt refuses it, or the guest never
    // comes back.
    let prefix = format!("{}.", snap.display());
    for v in daemon_volumes(&d.state_dir()) {
        let name = v.to_string_lossy().into_owned();
        if name.starts_with(&prefix) && (name.ends_with(".memory") || name.contains(".spare-")) {
            std::fs::write(&v, b"not a libvirt save image").expect("damage");
        }
    }

    for _ in 0..2 {
        let (j, log) = run(&d, PASSING);
        assert_eq!(j["state"], "FINISHED", "{j:#}\n{log}\n{}", d.log());
        assert!(console(&d, &j).contains(AGENT_START), "not booted");
    }
    let said = d.log().matches("snapshot not usable").count();
    assert_eq!(said, 1, "logged {said} times:\n{}", d.log());
    let p = &d.json(&["pool", "list"])[0];
    assert_eq!(p["snapshot"], "broken", "{p:#}");
    assert!(
        p["snapshot_reason"]
            .as_str()
            .unwrap_or("")
            .contains("restoring it failed"),
        "{p:#}"
    );
    let table = d.cli(&["pool", "list"]);
    assert!(
        output_text(&table).contains("broken: restoring it failed"),
        "{}",
        output_text(&table)
    );
    assert!(!exists(&snap), "the broken snapshot is still there");
    until("no VM left", TEARDOWN_AFTER_END, || d.domains().is_empty());
}

#[test]
fn a_new_vm_shape_gets_a_new_snapshot_and_the_old_one_goes() {
    let test = "a_new_vm_shape_gets_a_new_snapshot_and_the_old_one_goes";
    if !vm_env(test) {
        return;
    }
    let d = Daemon::start_with(1, 0, SNAPSHOT);
    let old = wait_snapshot(&d);
    // More memory per VM: a saved 512 MiB guest cannot be restored as a 640 MiB one.
    let cfg = std::fs::read_to_string(&d.config).expect("config");
    let changed = cfg.replace("memory_mib = 512\n", "memory_mib = 640\n");
    assert_ne!(changed, cfg, "the harness's config has `memory_mib = 512`");
    std::fs::write(&d.config, changed).expect("write");
    d.hup();
    until("the reload", Duration::from_secs(20), || {
        d.log().contains("reloaded")
    });

    // The first job after the change boots (and starts the new snapshot); then the new one
    // replaces the old on disk.
    let (j, log) = run(&d, PASSING);
    assert_eq!(j["state"], "FINISHED", "{j:#}\n{log}");
    assert_ne!(booting_detail(&j), "restored from a snapshot", "{j:#}");
    until(
        "the new snapshot, and the old one gone",
        Duration::from_secs(180),
        || {
            let now = snapshots(&d.state_dir());
            now.len() == 1 && now[0] != old
        },
    );
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(part(&snapshots(&d.state_dir())[0], "json")).expect("meta"),
    )
    .expect("json");
    assert_eq!(meta["memory_mib"], 640, "{meta}");
    let (j, _) = run(&d, PASSING);
    assert_eq!(j["state"], "FINISHED", "{j:#}");
    assert_eq!(booting_detail(&j), "restored from a snapshot", "{j:#}");
}
