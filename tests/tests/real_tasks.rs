//! Taskotron-shaped tasks end to end: real miniond, real VMs with no network, the Koji stand-in
//! (minion-testenv: XML-RPC hub and package files) serving RPMs built with rpmbuild, and the
//! ResultsDB stand-in. The python-versions example downloads its build through the host, checks it
//! with rpm's Python bindings in the guest, and its result reaches ResultsDB.

mod common;

use common::*;
use minion_testenv::fedora::{python_versions_builds, FedoraStandIn};
use minion_testenv::resultsdb::ResultsDbStandIn;
use minion_testenv::Need;

fn example() -> std::path::PathBuf {
    workspace_root().join("examples/python-versions")
}

fn submit(d: &Daemon, item: &str) -> String {
    d.json(&[
        "submit",
        example().to_str().expect("utf8"),
        "-i",
        item,
        "-t",
        "koji_build",
    ])["id"]
        .as_str()
        .expect("job id")
        .to_string()
}

fn ended(d: &Daemon, id: &str) -> serde_json::Value {
    let j = d.wait_state(
        id,
        &["FINISHED", "FAILED", "TIMED_OUT"],
        std::time::Duration::from_secs(180),
    );
    d.assert_no_vm(id);
    j
}

#[test]
fn python_versions_runs_in_a_fresh_vm_with_its_build_fetched_by_the_host() {
    if !image_env(
        "python_versions_runs_in_a_fresh_vm_with_its_build_fetched_by_the_host",
        "minimal",
        &[Need::Program("rpmbuild")],
    ) {
        return;
    }
    let work = tempfile::tempdir().expect("work");
    let koji = FedoraStandIn::start();
    python_versions_builds(&koji, work.path(), 0).expect("rpmbuild");
    let rdb = ResultsDbStandIn::start();
    let d = Daemon::start_with(
        1,
        0,
        &format!(
            "[koji]\nhub = \"{}\"\npackages = \"{}\"\n[reporting]\nresultsdb_url = \"{}\"\n\
             artifacts_base_url = \"http://artifacts.example\"\nwait_seconds = 5\n\
             [reporting.namespaces]\ndist = [\"/\"]\n",
            koji.koji_hub(),
            koji.koji_packages(),
            rdb.url
        ),
    );

    // A passing build.
    let good = submit(&d, "foo-1.0-1.fc40");
    let j = ended(&d, &good);
    assert_eq!(
        (j["state"].as_str(), j["execution_status"].as_str()),
        (Some("FINISHED"), Some("OK")),
        "{j:#}\n{}",
        d.log()
    );
    assert_eq!(j["exit_code"], 0);
    assert!(
        j["tap"]
            .as_str()
            .unwrap_or("")
            .contains("ok - python-versions for Koji build foo-1.0-1.fc40\n"),
        "{j:#}"
    );
    let log = d.cli(&["job", "logs", &good]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(log.contains("koji: 1 file(s) in"), "{log}");
    assert!(log.contains("python3-foo: python 3"), "{log}");
    let got = d.cli(&[
        "job",
        "artifacts",
        &good,
        "--get",
        "task_output/python-versions.log",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "python3-foo: python 3\n"
    );

    // A failing one: the check's own outcome, not an execution failure.
    let bad = submit(&d, "mixed-1.0-1.fc40");
    let j = ended(&d, &bad);
    assert_eq!(j["execution_status"], "OK", "{j:#}");
    assert_eq!(j["exit_code"], 100);
    assert_eq!(j["results"][0]["outcome"], "FAILED");
    assert_eq!(
        j["results"][0]["note"],
        "requires both Python 2 and 3: mixed"
    );

    // Both results reached ResultsDB, as dist.python-versions, with the check's extra data.
    let posted = rdb.results();
    assert_eq!(posted.len(), 2, "{posted:#?}");
    assert_eq!(posted[0]["testcase"]["name"], "dist.python-versions");
    assert_eq!(posted[0]["data"]["item"], "foo-1.0-1.fc40");
    assert_eq!(posted[0]["data"]["packages_checked"], 1);
    assert_eq!(posted[1]["outcome"], "FAILED");

    // An NVR Koji does not know: execution NOT_OK, the reason names the step and the build.
    let missing = submit(&d, "nosuch-1.0-1.fc40");
    let j = ended(&d, &missing);
    assert_eq!(j["execution_status"], "NOT_OK", "{j:#}");
    let why = j["status_message"].as_str().unwrap_or("");
    assert!(
        why.contains("step `download rpms from koji` failed")
            && why.contains("Koji has no build nosuch-1.0-1.fc40"),
        "{why}"
    );

    // The same build again: its RPM came from the host's cache, downloaded once in all.
    let again = submit(&d, "foo-1.0-1.fc40");
    assert_eq!(ended(&d, &again)["execution_status"], "OK");
    let downloads = koji
        .requests()
        .iter()
        .filter(|(_, p, _)| p.ends_with("/python3-foo-1.0-1.fc40.noarch.rpm"))
        .count();
    assert_eq!(downloads, 1, "{:#?}", koji.requests());
    // Only the configured endpoints were asked: Koji's hub and its package URL.
    assert!(koji
        .requests()
        .iter()
        .all(|(_, p, _)| p == "/kojihub" || p.starts_with("/packages/")));
}

/// The seconds a koji step reported for its fetch (`koji: N file(s) in DIR (X.Ys)`).
fn fetch_seconds(log: &str) -> f64 {
    log.lines()
        .find_map(|l| {
            let rest = l.split("koji: ").nth(1)?;
            let secs = rest.rsplit_once('(')?.1.strip_suffix("s)")?;
            secs.parse().ok()
        })
        .unwrap_or_else(|| panic!("no koji timing in: {log}"))
}

/// Benchmark (issue: a 50 MiB build fetched and placed in the guest, cold and cached): the same
/// build fetched by a koji step in a fresh VM through miniond, cold (host downloads from Koji)
/// and cached (host cache), beside the baselines in the same run: a plain HTTP download of the
/// file from the stand-in, and `minion runtask` fetching it on the host (cold and cached).
#[test]
#[ignore = "benchmark: scripts/bench-fetch.sh"]
fn bench_fetch_50mib_build_into_the_guest() {
    if !image_env(
        "bench_fetch_50mib_build_into_the_guest",
        "minimal",
        &[Need::Program("rpmbuild"), Need::Program("curl")],
    ) {
        return;
    }
    let work = tempfile::tempdir().expect("work");
    let koji = FedoraStandIn::start();
    python_versions_builds(&koji, work.path(), 50 * 1024 * 1024).expect("rpmbuild");
    let task = task_repo(
        "name: fetch-bench\ninput: {args: [koji_build]}\nactions:\n  - koji: {action: download, koji_build: '${koji_build}', arch: [all]}\n  - shell: ['dd if=/dev/zero of=${workdir}/zero bs=1M count=50 conv=fsync 2>&1 | tail -n 1']\n",
    );
    let file = format!(
        "{}/foo/1.0/1.fc40/noarch/python3-foo-1.0-1.fc40.noarch.rpm",
        koji.koji_packages()
    );
    let started = std::time::Instant::now();
    let curl = std::process::Command::new("curl")
        .args([
            "-sS",
            "-f",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &file,
        ])
        .output()
        .expect("curl");
    let curl_secs = started.elapsed().as_secs_f64();
    let size: u64 = String::from_utf8_lossy(&curl.stdout).parse().unwrap_or(0);
    assert!(
        size > 50 * 1024 * 1024,
        "{size} {file}: {}",
        String::from_utf8_lossy(&curl.stderr)
    );

    let host = |name: &str| {
        let (_, minion) = binaries();
        let out = std::process::Command::new(minion)
            .args([
                "runtask",
                "-i",
                "foo-1.0-1.fc40",
                "-t",
                "koji_build",
                "--koji-hub",
            ])
            .arg(koji.koji_hub())
            .arg("--koji-packages")
            .arg(koji.koji_packages())
            .arg("--artifactsdir")
            .arg(work.path().join(name))
            .arg(task.path())
            .env("MINION_STATE_DIR", work.path().join("host-state"))
            .env("XDG_CONFIG_HOME", work.path())
            .output()
            .expect("runtask");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fetch_seconds(&String::from_utf8_lossy(&out.stderr))
    };
    let host_cold = host("h1");
    let host_cached = host("h2");

    let d = Daemon::start_with(
        1,
        0,
        &format!(
            "[koji]\nhub = \"{}\"\npackages = \"{}\"\n",
            koji.koji_hub(),
            koji.koji_packages()
        ),
    );
    let guest = || {
        let id = d.json(&[
            "submit",
            task.path().to_str().expect("utf8"),
            "-i",
            "foo-1.0-1.fc40",
            "-t",
            "koji_build",
        ])["id"]
            .as_str()
            .expect("id")
            .to_string();
        let j = ended(&d, &id);
        assert_eq!(j["execution_status"], "OK", "{j:#}");
        let log = d.cli(&["job", "logs", &id]);
        let log = String::from_utf8_lossy(&log.stdout).into_owned();
        let dd = log
            .lines()
            .find(|l| l.contains("copied"))
            .unwrap_or("")
            .to_string();
        (fetch_seconds(&log), dd)
    };
    let (vm_cold, dd) = guest();
    let (vm_cached, _) = guest();
    let mib = size as f64 / (1024.0 * 1024.0);
    println!("bench-fetch: a {mib:.1} MiB build (one RPM), koji step `download`:");
    println!(
        "  baseline  curl from the Koji stand-in        {curl_secs:6.2} s  {:6.0} MiB/s",
        mib / curl_secs
    );
    println!("  baseline  minion runtask on the host, cold   {host_cold:6.2} s");
    println!("  baseline  minion runtask on the host, cached {host_cached:6.2} s");
    println!(
        "  minion    into a fresh VM via miniond, cold   {vm_cold:6.2} s  {:6.0} MiB/s",
        mib / vm_cold.max(0.01)
    );
    println!(
        "  minion    into a fresh VM via miniond, cached {vm_cached:6.2} s  {:6.0} MiB/s",
        mib / vm_cached.max(0.01)
    );
    println!("  for scale: 50 MiB written to the guest's disk by dd (fsync): {dd}");
}
