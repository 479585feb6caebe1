//! Pools changed while miniond runs (admin only): drain and undrain, max_vms and min_ready;
//! running jobs are never dropped, every action is logged with who did it.

mod common;
use common::*;

fn pools(d: &Daemon) -> Value {
    d.json(&["pool", "list"])[0].clone()
}

#[test]
fn an_admin_drains_resizes_and_pre_boots_a_running_pool_and_nothing_running_is_dropped() {
    let test =
        "an_admin_drains_resizes_and_pre_boots_a_running_pool_and_nothing_running_is_dropped";
    if !vm_env_with(test, &[minion_testenv::Need::Program("setpriv")]) {
        return;
    }
    let d = Daemon::start(1, 0);
    std::fs::set_permissions(
        d.state.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");

    // The harness's pools boot their VMs: no snapshot.
    assert_eq!(pools(&d)["snapshot"], "off");
    // Drained: a job waits in the queue; pre-booting waits too.
    let p = d.json(&["pool", "drain", "minimal"]);
    assert_eq!(p[0]["drained"], true);
    assert_eq!(
        d.json(&["pool", "set", "minimal", "--min-ready", "1"])[0]["min_ready"],
        1
    );
    let pass = task_repo(PASSING);
    let queued = d.submit(pass.path(), &[]);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(d.job(&queued)["state"], "QUEUED");
    assert_eq!(pools(&d)["ready"], 0, "no VM pre-booted while drained");
    assert!(d.domains().is_empty(), "{:?}", d.domains());

    // Undrained: the job runs, then a VM is pre-booted for the next one.
    d.json(&["pool", "undrain", "minimal"]);
    d.wait_state(&queued, &["FINISHED"], Duration::from_secs(120));
    until("a parked VM", Duration::from_secs(120), || {
        pools(&d)["ready"] == 1
    });
    // Fewer wanted: the parked VM is destroyed.
    d.json(&["pool", "set", "minimal", "--min-ready", "0"]);
    until("the parked VM gone", Duration::from_secs(60), || {
        pools(&d)["ready"] == 0 && d.domains().is_empty()
    });

    // Two slots: two jobs run at once; one slot again: neither running job is dropped.
    d.json(&["pool", "set", "minimal", "--max-vms", "2"]);
    let sleep = task_repo(SLEEPING);
    let a = d.submit(sleep.path(), &[]);
    let b = d.submit(sleep.path(), &[]);
    d.wait_state(&a, &["RUNNING"], Duration::from_secs(120));
    d.wait_state(&b, &["RUNNING"], Duration::from_secs(120));
    d.json(&["pool", "set", "minimal", "--max-vms", "1"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(d.job(&a)["state"], "RUNNING");
    assert_eq!(d.job(&b)["state"], "RUNNING");
    // With one slot retired as its VM goes, a third job waits for the one left.
    let c = d.submit(sleep.path(), &[]);
    d.cli(&["job", "cancel", &a]);
    d.wait_state(&a, &["CANCELLED"], Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        d.job(&c)["state"],
        "QUEUED",
        "max_vms 1: b still holds the only slot"
    );
    d.cli(&["job", "cancel", &b]);
    d.wait_state(&c, &["RUNNING"], Duration::from_secs(120));
    d.cli(&["job", "cancel", &c]);
    d.wait_state(&c, &["CANCELLED"], Duration::from_secs(60));

    // Refused: bad limits, an unknown pool, a caller without the admin role.
    let out = d.cli(&["pool", "set", "minimal", "--min-ready", "5"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("min_ready 5 is more than max_vms 1"),
        "{}",
        output_text(&out)
    );
    let out = d.cli(&["pool", "drain", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("no pool `nope` (pools: minimal)"),
        "{}",
        output_text(&out)
    );
    let gid = minion_gid();
    let out = d.cli_as(65534, &[gid], &["pool", "drain", "minimal"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out)
            .contains("uid:65534 (role submit) may not drain pools: that needs role admin"),
        "{}",
        output_text(&out)
    );
    assert_eq!(pools(&d)["drained"], false);

    let log = d.log();
    for want in [
        "admin: pool drained",
        "admin: pool undrained",
        "admin: pool limits set",
    ] {
        assert!(log.contains(want), "{want} not logged");
    }
    assert!(log.contains("\"caller\":\"uid:0\""), "who did it is logged");
}

#[test]
fn sighup_adds_and_changes_pools_keeps_running_jobs_and_refuses_a_bad_file() {
    let test = "sighup_adds_and_changes_pools_keeps_running_jobs_and_refuses_a_bad_file";
    if !vm_env(test) {
        return;
    }
    let d = Daemon::start(1, 0);
    let original = std::fs::read_to_string(&d.config).expect("config");
    let second = "\n[pools.second]\nimage = \"minimal\"\nlibvirt_uri = \"qemu:///system\"\n\
                  max_vms = 1\nvcpus = 1\nmemory_mib = 512\nstart = \"boot\"\n";
    // A new pool, and the first one changed (two slots, drained).
    let changed = original.replace("max_vms = 1\n", "max_vms = 2\ndrained = true\n");
    assert_ne!(changed, original, "the harness's config has `max_vms = 1`");
    std::fs::write(&d.config, format!("{changed}{second}")).expect("write");
    d.hup();
    until("the reload", Duration::from_secs(20), || {
        d.log().contains("reloaded") && d.log().contains("pool second: added")
    });
    let list = d.json(&["pool", "list"]);
    let by = |name: &str| {
        list.as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no pool {name}: {list}"))
    };
    assert_eq!(by("minimal")["max_vms"], 2);
    assert_eq!(by("minimal")["drained"], true);
    assert_eq!(by("second")["max_vms"], 1);

    // The new pool runs jobs; one running on it survives the pool leaving the file.
    let sleep = task_repo(SLEEPING);
    let job = d.submit(sleep.path(), &["--pool", "second"]);
    d.wait_state(&job, &["RUNNING"], Duration::from_secs(120));
    std::fs::write(&d.config, &original).expect("write");
    d.hup();
    until("the second reload", Duration::from_secs(20), || {
        d.log()
            .contains("pool second: not in the file any more: drained")
    });
    assert_eq!(
        d.job(&job)["state"],
        "RUNNING",
        "a reload never drops a running job"
    );
    let list = d.json(&["pool", "list"]);
    assert_eq!(
        list[0]["drained"], false,
        "minimal is back to the file's values"
    );
    assert_eq!(list[0]["max_vms"], 1);

    // A file that does not parse changes nothing and says why.
    std::fs::write(&d.config, format!("{original}\n[pools.broken\n")).expect("write");
    d.hup();
    until("the refusal", Duration::from_secs(20), || {
        d.log().contains("reload refused, the running config stays")
    });
    let log = d.log();
    assert!(log.contains("miniond.toml"), "the refusal names the file");
    assert_eq!(d.json(&["pool", "list"]).as_array().map(Vec::len), Some(2));
    d.cli(&["job", "cancel", &job]);
    d.wait_state(&job, &["CANCELLED"], Duration::from_secs(60));
    d.assert_no_vm(&job);
}
