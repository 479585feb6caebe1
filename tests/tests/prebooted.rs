//! Pre-booted VMs (`min_ready`) end to end: a real `miniond` with `min_ready = 1`, real VMs on the
//! `minimal` image under the real libvirtd, driven through the real `minion` CLI. A parked VM serves
//! a job without a boot, is replaced, and is destroyed on every path (job end, SIGTERM, kill -9 then
//! the restart's reconcile); the pool never exceeds `max_vms`.
//!
//! Needs what `daemon_e2e.rs` needs (libvirtd, the `minimal` image, `target/agent/minion-agent`);
//! the harness is `common/`.

mod common;

use common::*;

impl Daemon {
    fn pool(&self) -> Value {
        let pools = self.json(&["pool", "list"]);
        pools.as_array().expect("pools")[0].clone()
    }

    /// Domains of the pre-booted VMs jobs took (from their PROVISIONING details).
    fn used_vms(&self) -> Vec<String> {
        let jobs = self.json(&["job", "list"]);
        jobs.as_array()
            .expect("jobs")
            .iter()
            .flat_map(|j| j["events"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| {
                e["message"]
                    .as_str()
                    .and_then(|m| m.strip_prefix("pre-booted VM "))
                    .map(|vm| format!("minion-{vm}"))
            })
            .collect()
    }

    /// Waits until the pool reports `n` parked VMs; returns their domains.
    fn wait_ready(&self, n: u64, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let p = self.pool();
            if p["ready"] == n {
                // A pre-booted VM a job took keeps its name: only the ones no job names.
                let used = self.used_vms();
                let parked: Vec<String> = self
                    .domains()
                    .into_iter()
                    .filter(|d| d.starts_with("minion-prebooted-") && !used.contains(d))
                    .collect();
                if parked.len() as u64 >= n {
                    return parked;
                }
            }
            assert!(
                Instant::now() < deadline,
                "pool not at {n} ready after {within:?}: {p}\n--- miniond ---\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn event<'a>(j: &'a Value, state: &str) -> &'a Value {
    j["events"]
        .as_array()
        .expect("events")
        .iter()
        .rev()
        .find(|e| e["state"] == state)
        .unwrap_or_else(|| panic!("no {state} event: {j:#}"))
}

fn at_ms(e: &Value) -> i64 {
    e["at_unix_ms"].as_i64().expect("at_unix_ms")
}

#[test]
fn parked_vm_runs_a_job_without_a_boot_and_is_replaced_by_a_fresh_one() {
    if !vm_env("parked_vm_runs_a_job_without_a_boot_and_is_replaced_by_a_fresh_one") {
        return;
    }
    let d = Daemon::start(2, 1);
    let parked = d.wait_ready(1, Duration::from_secs(120));
    assert_eq!(parked.len(), 1, "{parked:?}");
    let pool = d.pool();
    assert_eq!(
        (pool["min_ready"].as_u64(), pool["running"].as_u64()),
        (Some(1), Some(0))
    );

    let repo = task_repo(PASSING);
    let id = d.submit(repo.path(), &[]);
    let j = d.wait_state(
        &id,
        &["FINISHED", "FAILED", "TIMED_OUT"],
        Duration::from_secs(120),
    );
    assert_eq!(j["state"], "FINISHED", "{j:#}");
    assert_eq!(j["execution_status"], "OK", "{j:#}");
    assert_eq!(
        states(&j),
        [
            "QUEUED",
            "PROVISIONING",
            "BOOTING",
            "RUNNING",
            "COLLECTING",
            "FINISHED"
        ]
    );
    // The job says which VM it ran on: the one that was parked.
    let prov = event(&j, "PROVISIONING");
    let msg = prov["message"].as_str().expect("message");
    let vm = msg
        .strip_prefix("pre-booted VM ")
        .unwrap_or_else(|| panic!("PROVISIONING detail: {msg:?}"));
    assert_eq!(event(&j, "BOOTING")["message"], msg);
    assert_eq!(format!("minion-{vm}"), parked[0]);
    // PROVISIONING → RUNNING (agent Ready) without a boot: a cold one takes ~1.5-3 s here.
    let no_boot = at_ms(event(&j, "RUNNING")) - at_ms(prov);
    eprintln!("pre-booted job: PROVISIONING → RUNNING in {no_boot} ms");
    assert!(
        no_boot < 500,
        "provisioning + booting took {no_boot} ms: {j:#}"
    );

    // The used VM is gone (domain and dir; its teardown runs on right after the job's end), and
    // no dir was made under the job's id.
    d.assert_no_vm(vm);
    assert!(!d.state_dir().join("vms").join(&id).exists());
    // The job's artifacts are complete (console.log comes from the pre-booted VM).
    let listed = d.json(&["job", "artifacts", &id]);
    let paths: Vec<&str> = listed
        .as_array()
        .expect("artifacts")
        .iter()
        .filter_map(|a| a["path"].as_str())
        .collect();
    for want in ["minion.log", "console.log", "task_output/out.txt"] {
        assert!(paths.contains(&want), "{want} not in {paths:?}");
    }
    // A fresh replacement parks: a different domain.
    let next = d.wait_ready(1, Duration::from_secs(120));
    assert_eq!(next.len(), 1, "{next:?}");
    assert_ne!(next[0], parked[0], "the used VM came back");
}

#[test]
fn sigterm_destroys_the_parked_vm_and_a_kill_9_restart_reconciles_it() {
    if !vm_env("sigterm_destroys_the_parked_vm_and_a_kill_9_restart_reconciles_it") {
        return;
    }
    let mut d = Daemon::start(2, 1);
    let first = d.wait_ready(1, Duration::from_secs(120));
    d.terminate();
    assert!(
        !running_domains().contains(&first[0]),
        "{} left by SIGTERM",
        first[0]
    );
    assert!(d.vm_ids().is_empty(), "left in vms/: {:?}", d.vm_ids());

    d.spawn();
    let second = d.wait_ready(1, Duration::from_secs(120));
    assert_ne!(second, first);
    let parked = d.vm_ids();
    d.kill9();
    // The parked VM dies with the daemon's libvirt connection (autodestroy).
    until(
        "the parked VM gone with the daemon",
        Duration::from_secs(15),
        || !running_domains().contains(&second[0]),
    );
    assert!(!parked.is_empty(), "the parked VM's directory");
    d.spawn();
    // The start reconciles before it serves: the old parked VM's directory and volumes are gone
    // by the first answer.
    let left: Vec<String> = daemon_volumes(&d.state_dir())
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|v| parked.iter().any(|id| v.contains(id.as_str())))
        .collect();
    assert!(
        left.is_empty(),
        "survived the restart: {left:?}\n{}",
        d.log()
    );
    assert!(
        d.vm_ids().iter().all(|id| !parked.contains(id)),
        "{parked:?} survived the restart\n{}",
        d.log()
    );
    let third = d.wait_ready(1, Duration::from_secs(120));
    assert_ne!(third, second);
    d.terminate();
    assert!(!running_domains().contains(&third[0]));
    assert!(d.vm_ids().is_empty(), "left in vms/: {:?}", d.vm_ids());
}

#[test]
fn jobs_at_once_with_min_ready_never_exceed_max_vms() {
    if !vm_env("jobs_at_once_with_min_ready_never_exceed_max_vms") {
        return;
    }
    let mut d = Daemon::start(2, 1);
    d.wait_ready(1, Duration::from_secs(120));
    let repo = task_repo(PASSING);
    let ids: Vec<String> = (0..8).map(|_| d.submit(repo.path(), &[])).collect();

    let watcher = AliveSampler::start(&d.state_dir());
    let mut prebooted = 0;
    for id in &ids {
        let j = d.wait_state(
            id,
            &["FINISHED", "FAILED", "TIMED_OUT"],
            Duration::from_secs(300),
        );
        assert_eq!(j["state"], "FINISHED", "{j:#}");
        assert_eq!(j["execution_status"], "OK", "{j:#}");
        if event(&j, "PROVISIONING")["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("pre-booted VM "))
        {
            prebooted += 1;
        }
    }
    // Back to one parked VM, and nothing else alive.
    d.wait_ready(1, Duration::from_secs(120));
    let max_alive = watcher.finish();
    eprintln!("8 jobs, min_ready 1, max_vms 2: {prebooted} on pre-booted VMs, at most {max_alive} VMs alive");
    assert!(max_alive <= 2, "{max_alive} VMs alive at once");
    assert!(max_alive >= 1, "the watcher never saw a VM");
    assert!(prebooted >= 1, "no job took the parked VM");
    for id in &ids {
        d.assert_no_vm(id);
    }
    assert_eq!(d.domains().len(), 1, "{:?}", d.domains());
    d.terminate();
    assert!(
        d.domains().is_empty() && d.vm_ids().is_empty(),
        "{:?}",
        d.vm_ids()
    );
}

/// Waits for one parked VM, then runs `virsh <action>` on its domain behind the daemon's back.
/// Returns the parked domains and that VM's id.
fn harm_the_parked_vm(d: &Daemon, action: &str) -> (Vec<String>, String) {
    let parked = d.wait_ready(1, Duration::from_secs(120));
    let vm = parked[0]
        .strip_prefix("minion-")
        .expect("domain name")
        .to_string();
    let out = Command::new("virsh")
        .args(["-c", &libvirt_uri(), action, &parked[0]])
        .output()
        .expect("virsh runs");
    assert!(out.status.success(), "{out:?}");
    (parked, vm)
}

/// Waits until the daemon has deleted VM `vm`'s directory (it does after destroying the domain).
fn wait_vm_gone(d: &Daemon, vm: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while d.state_dir().join("vms").join(vm).exists() {
        assert!(
            Instant::now() < deadline,
            "parked VM {vm} not cleaned up within {within:?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_parked_vm_that_dies_is_cleaned_up_and_replaced() {
    if !vm_env("a_parked_vm_that_dies_is_cleaned_up_and_replaced") {
        return;
    }
    let d = Daemon::start(1, 1);
    // Killed behind the daemon's back (qemu gone): its channel closes while it is parked.
    let (parked, vm) = harm_the_parked_vm(&d, "destroy");
    wait_vm_gone(&d, &vm, Duration::from_secs(30));
    assert!(d.log().contains("parked VM is dead"), "{}", d.log());
    let next = d.wait_ready(1, Duration::from_secs(120));
    assert_ne!(next, parked);
    // The replacement serves a job (max_vms = 1: the slot went back when the dead VM was reaped).
    let repo = task_repo(PASSING);
    let id = d.submit(repo.path(), &[]);
    let j = d.wait_state(
        &id,
        &["FINISHED", "FAILED", "TIMED_OUT"],
        Duration::from_secs(120),
    );
    assert_eq!(j["state"], "FINISHED", "{j:#}");
    assert_eq!(
        event(&j, "PROVISIONING")["message"],
        format!("pre-booted VM {}", next[0].trim_start_matches("minion-"))
    );
}

#[test]
fn a_parked_vm_that_hangs_is_found_by_its_silence_and_replaced() {
    if !vm_env("a_parked_vm_that_hangs_is_found_by_its_silence_and_replaced") {
        return;
    }
    // A hung guest keeps its channel open but says nothing: paused behind the daemon's back, it
    // stops its Heartbeats, and after the heartbeat timeout (30 s) it is destroyed and replaced.
    let d = Daemon::start(1, 1);
    let (parked, vm) = harm_the_parked_vm(&d, "suspend");
    let paused_at = Instant::now();
    wait_vm_gone(&d, &vm, Duration::from_secs(60));
    assert!(
        paused_at.elapsed() >= Duration::from_secs(20),
        "declared dead after {:?}, before the heartbeat timeout",
        paused_at.elapsed()
    );
    assert!(d.log().contains("parked VM is dead"), "{}", d.log());
    assert!(!running_domains().contains(&parked[0]));
    let next = d.wait_ready(1, Duration::from_secs(120));
    assert_ne!(next, parked);
}

#[test]
fn cancelling_a_queued_job_leaves_the_parked_vm_for_the_next_job() {
    if !vm_env("cancelling_a_queued_job_leaves_the_parked_vm_for_the_next_job") {
        return;
    }
    let d = Daemon::start(2, 1);
    let first = d.wait_ready(1, Duration::from_secs(120));
    let sleeper = task_repo(SLEEPING);
    let running = d.submit(sleeper.path(), &[]);
    d.wait_state(&running, &["RUNNING"], Duration::from_secs(60));
    // The replacement is booting now; this job waits for it and is cancelled while queued.
    let quick = task_repo(PASSING);
    let queued = d.submit(quick.path(), &[]);
    let out = d.cli(&["job", "cancel", &queued]);
    assert!(out.status.success(), "{out:?}");
    let j = d.wait_state(&queued, &["CANCELLED"], Duration::from_secs(30));
    assert_eq!(states(&j), ["QUEUED", "CANCELLED"], "{j:#}");
    // The replacement parks and stays parked (not destroyed, not used)…
    let parked = d.wait_ready(1, Duration::from_secs(120));
    assert_ne!(parked, first);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(d.pool()["ready"], 1);
    assert!(running_domains().contains(&parked[0]));
    // …and the next job runs on that very VM.
    let next = d.submit(quick.path(), &[]);
    let j = d.wait_state(&next, &["FINISHED", "FAILED"], Duration::from_secs(120));
    assert_eq!(j["state"], "FINISHED", "{j:#}");
    assert_eq!(
        event(&j, "PROVISIONING")["message"],
        format!("pre-booted VM {}", parked[0].trim_start_matches("minion-"))
    );
    let out = d.cli(&["job", "cancel", &running]);
    assert!(out.status.success(), "{out:?}");
    d.wait_state(&running, &["CANCELLED"], Duration::from_secs(60));
    d.assert_no_vm(&running);
}
