//! A formula's `environment` end to end: real miniond, real VMs, real apt in the guest. Packages
//! (real `.deb`s built with dpkg-deb) come from the pool's package source on the host, over the
//! guest channel, into VMs that have no NIC at all; a pool that opts into `network = "user"` gets a
//! NAT-out NIC the guest reaches the host through.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use minion_testenv::deb::{build, Deb};
use minion_testenv::Need;

fn ended(d: &Daemon, id: &str) -> serde_json::Value {
    let j = d.wait_state(
        id,
        &["FINISHED", "FAILED", "TIMED_OUT"],
        Duration::from_secs(240),
    );
    d.assert_no_vm(id);
    j
}

/// Submits `repo`, waits for the end (and the VM gone): the job and its log.
fn run(d: &Daemon, repo: &Path) -> (serde_json::Value, String) {
    let id = d.submit(repo, &[]);
    let j = ended(d, &id);
    let log = d.cli(&["job", "logs", &id]);
    (j, String::from_utf8_lossy(&log.stdout).into_owned())
}

/// The pool's package directory: a tool, the library it depends on, and a package whose
/// dependency is nowhere.
fn package_dir(base: &Path) -> std::path::PathBuf {
    let dir = base.join("debs");
    let work = base.join("work");
    let debs = [
        Deb {
            name: "minion-test-lib",
            version: "1.0",
            files: vec![(
                "/usr/share/minion-test/lib.txt",
                b"lib 1.0\n".to_vec(),
                0o644,
            )],
            depends: vec![],
        },
        Deb {
            name: "minion-test-tool",
            version: "2.1",
            files: vec![(
                "/usr/bin/minion-test-tool",
                b"#!/bin/sh\necho \"tool 2.1 with $(cat /usr/share/minion-test/lib.txt)\"\n"
                    .to_vec(),
                0o755,
            )],
            depends: vec!["minion-test-lib (>= 1.0)"],
        },
        Deb {
            name: "minion-test-broken",
            version: "0.1",
            files: vec![],
            depends: vec!["minion-test-absent"],
        },
    ];
    for d in &debs {
        build(&work, &dir, d).expect("dpkg-deb");
    }
    dir
}

#[test]
fn environment_packages_come_from_the_pool_into_vms_without_network() {
    if !image_env(
        "environment_packages_come_from_the_pool_into_vms_without_network",
        "minimal",
        &[Need::Program("dpkg-deb")],
    ) {
        return;
    }
    let base = tempfile::tempdir().expect("tmp");
    let debs = package_dir(base.path());
    let d = Daemon::start_with(2, 0, &format!("packages = {:?}\n", debs));

    // The tool and its dependency are installed before the first step; python3 is in the image.
    let ok = task_repo(
        "name: uses-tool\nenvironment:\n  rpm: [minion-test-tool, python3]\nactions:\n  - shell:\n      \
         - minion-test-tool > $artifactsdir/out.txt\n      - ls /sys/class/net > $artifactsdir/nics\n",
    );
    // A package the pool does not have; one whose dependency cannot be met.
    let missing = task_repo(
        "name: missing\nenvironment:\n  rpm: [minion-test-tool, nonesuch-pkg]\nactions:\n  \
         - shell: ['echo ran > $artifactsdir/ran']\n",
    );
    let broken = task_repo(
        "name: broken\nenvironment:\n  rpm: [minion-test-broken]\nactions:\n  \
         - shell: ['touch $artifactsdir/ran']\n",
    );
    let ok_id = d.submit(ok.path(), &[]);
    let missing_id = d.submit(missing.path(), &[]);
    let j = ended(&d, &ok_id);
    assert_eq!(
        (j["state"].as_str(), j["execution_status"].as_str()),
        (Some("FINISHED"), Some("OK")),
        "{j:#}\n{}",
        d.log()
    );
    let get = |id: &str, path: &str| {
        let out = d.cli(&["job", "artifacts", id, "--get", path]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        get(&ok_id, "task_output/out.txt"),
        "tool 2.1 with lib 1.0\n"
    );
    assert_eq!(
        get(&ok_id, "task_output/nics"),
        "lo\n",
        "a default pool's VM has no NIC"
    );
    let log = d.cli(&["job", "logs", &ok_id]);
    let log = String::from_utf8_lossy(&log.stdout);
    for line in log.lines().filter(|l| l.contains("environment:")) {
        eprintln!("{line}");
    }
    assert!(
        log.contains("environment: installing minion-test-tool\n"),
        "{log}"
    );
    assert!(
        log.contains("environment: 2 files (") && log.contains("from the pool's package source"),
        "apt asked for the tool and its library only: {log}"
    );

    let j = ended(&d, &missing_id);
    assert_eq!(
        (j["state"].as_str(), j["execution_status"].as_str()),
        (Some("FINISHED"), Some("NOT_OK")),
        "{j:#}"
    );
    assert_eq!(
        j["status_message"],
        "environment: not in the image nor in the pool's package source: nonesuch-pkg"
    );
    assert!(
        !get(&missing_id, "task_output/ran").contains("ran"),
        "no step ran"
    );

    let broken_id = d.submit(broken.path(), &[]);
    let j = ended(&d, &broken_id);
    assert_eq!(j["execution_status"], "NOT_OK", "{j:#}");
    let why = j["status_message"].as_str().unwrap_or("");
    assert!(
        why.starts_with("environment: apt-get install failed")
            && why.contains("minion-test-absent"),
        "apt's reason names the unmet dependency: {why}"
    );
}

#[test]
fn a_pool_without_a_package_source_names_the_setting() {
    if !image_env(
        "a_pool_without_a_package_source_names_the_setting",
        "minimal",
        &[],
    ) {
        return;
    }
    let d = Daemon::start(1, 0);
    let repo = task_repo(
        "name: needs\nenvironment:\n  rpm: [python3, minion-test-tool]\nactions:\n  - shell: ['true']\n",
    );
    let id = d.submit(repo.path(), &[]);
    let j = ended(&d, &id);
    assert_eq!(j["execution_status"], "NOT_OK", "{j:#}");
    assert_eq!(
        j["status_message"],
        "environment: not in the image: minion-test-tool (the pool has no package source and its VMs no network)"
    );
}

#[test]
fn a_network_user_pool_reaches_out_through_nat() {
    if !image_env(
        "a_network_user_pool_reaches_out_through_nat",
        "minimal",
        &[],
    ) {
        return;
    }
    // A host service on loopback: qemu's user network shows the host as 10.0.2.2.
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    let url = minion_testenv::http::serve("host service", move |req, mut stream| {
        seen.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(req.target.clone());
        let body = "hello from the host\n";
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    });
    let port = url.rsplit(':').next().expect("port");
    let d = Daemon::start_with(1, 0, "network = \"user\"\n");
    let repo = task_repo(&format!(
        "name: reaches-out\nactions:\n  - python:\n      file: get.py\n      callable: run\n      \
         url: 'http://10.0.2.2:{port}/from-guest'\n"
    ));
    std::fs::write(
        repo.path().join("get.py"),
        "import os, urllib.request\n\
         def run(url, **_):\n    \
             body = urllib.request.urlopen(url, timeout=30).read().decode()\n    \
             print('got:', body.strip())\n    \
             print('nics:', ' '.join(sorted(os.listdir('/sys/class/net'))))\n",
    )
    .expect("get.py");
    let (j, log) = run(&d, repo.path());
    assert_eq!(j["execution_status"], "OK", "{j:#}\n{}", d.log());
    assert!(
        log.contains("network: eth0 up on qemu's user network"),
        "{log}"
    );
    assert!(log.contains("got: hello from the host"), "{log}");
    assert!(log.contains("nics: eth0 lo"), "{log}");
    assert_eq!(
        *asked.lock().unwrap_or_else(|p| p.into_inner()),
        ["/from-guest"]
    );
}

/// Debian's mirror, which the image's own apt sources name (and the one network this suite may use).
const DEBIAN_MIRROR: &str = "deb.debian.org:80";

#[test]
fn a_network_user_pool_without_a_package_source_installs_from_the_images_sources() {
    if !image_env(
        "a_network_user_pool_without_a_package_source_installs_from_the_images_sources",
        "minimal",
        &[Need::Tcp {
            addr: DEBIAN_MIRROR,
            what: "Debian's mirror",
            start: "the guest's apt reaches it through qemu's NAT",
        }],
    ) {
        return;
    }
    let d = Daemon::start_with(1, 0, "network = \"user\"\n");
    let repo =
        task_repo("name: hello\nenvironment:\n  rpm: [hello]\nactions:\n  - shell: [hello]\n");
    let (j, log) = run(&d, repo.path());
    assert_eq!(j["execution_status"], "OK", "{j:#}\n{}", d.log());
    assert!(
        log.contains("[minion] environment: installing hello\n"),
        "{log}"
    );
    assert!(log.contains("Hello, world!"), "{log}");
}
