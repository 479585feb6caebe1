//! `koji`, `bodhi`, `distgit` and `createrepo` steps through the run's fetcher: the request each
//! makes, where files land, and the dict it returns.
#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::Task;
use minion_formula::*;

/// Records requests and writes one small file per request (or fails with `error`).
#[derive(Default)]
struct Fake {
    seen: Mutex<Vec<FetchRequest>>,
    error: Option<String>,
}

impl Fetcher for Fake {
    fn fetch(&self, request: &FetchRequest, target_dir: &Path) -> Result<Vec<Fetched>, String> {
        self.seen.lock().unwrap().push(request.clone());
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let (name, kind) = match request {
            FetchRequest::DistGit { package, .. } => (format!("{package}.spec"), FetchedKind::File),
            _ => ("foo-1.0-1.fc40.noarch.rpm".to_string(), FetchedKind::Rpm),
        };
        let path = target_dir.join(name);
        std::fs::write(&path, b"x").unwrap();
        Ok(vec![Fetched { path, kind }])
    }
}

fn run_with(t: &Task, fake: Arc<Fake>) -> (RunReport, common::Recorder) {
    let mut c = t.config();
    c.fetcher = Some(fake);
    t.run_with(c)
}

#[test]
fn koji_download_returns_downloaded_rpms_in_the_target_dir() {
    let t = Task::new(
        "name: t\nactions:\n  - koji: {action: download, koji_build: '${koji_build}', arch: [x86_64], src: true, target_dir: '${workdir}/rpms'}\n    export: k\n  - python: {file: check.py, callable: run, k: '${k}'}\n",
    )
    .file(
        "check.py",
        "import os\ndef run(k):\n    assert list(k) == ['downloaded_rpms'], k\n    for p in k['downloaded_rpms']:\n        assert os.path.isfile(p), p\n        print('got', os.path.basename(p), os.path.basename(os.path.dirname(p)))\n",
    );
    let fake = Arc::new(Fake::default());
    let (r, rec) = run_with(&t, fake.clone());
    assert_eq!(
        r.execution_status,
        ExecutionStatus::Ok,
        "{}{}",
        rec.runner,
        String::from_utf8_lossy(&rec.out)
    );
    assert!(String::from_utf8_lossy(&rec.stdout).contains("got foo-1.0-1.fc40.noarch.rpm rpms"));
    assert_eq!(
        fake.seen.lock().unwrap()[0],
        FetchRequest::KojiBuild {
            nvr: "foo-1.0-1.fc40".into(),
            rpms: RpmFilter {
                arches: vec!["x86_64".into()],
                exclude: vec![],
                src: true,
                debuginfo: false,
                build_log: false
            }
        }
    );
}

#[test]
fn each_action_and_service_makes_its_request() {
    let t = Task::new(
        "name: t\nactions:\n  - koji: {action: download_tag, koji_tag: f40-updates, arch: all}\n  - koji: {action: download_latest_stable, koji_build: '${koji_build}'}\n  - bodhi: {action: download, bodhi_id: FEDORA-2040-abc}\n  - distgit: {action: download, package: foo, path: [foo.spec, tests/tests.yml]}\n    export: d\n",
    );
    let fake = Arc::new(Fake::default());
    let (r, rec) = run_with(&t, fake.clone());
    assert_eq!(r.execution_status, ExecutionStatus::Ok, "{}", rec.runner);
    let seen = fake.seen.lock().unwrap();
    assert!(
        matches!(&seen[0], FetchRequest::KojiTag { tag, rpms } if tag == "f40-updates" && rpms.arches.is_empty())
    );
    assert!(
        matches!(&seen[1], FetchRequest::KojiLatestStable { nvr, .. } if nvr == "foo-1.0-1.fc40")
    );
    assert!(matches!(&seen[2], FetchRequest::BodhiUpdate { id, .. } if id == "FEDORA-2040-abc"));
    assert_eq!(
        seen[3],
        FetchRequest::DistGit {
            namespace: "rpms".into(),
            package: "foo".into(),
            gitref: "rawhide".into(),
            paths: vec!["foo.spec".into(), "tests/tests.yml".into()],
            ignore_missing: false
        }
    );
    assert!(
        t.path().join("work/foo.spec").is_file(),
        "default target_dir is ${{workdir}}"
    );
}

#[test]
fn a_failed_fetch_fails_the_step_naming_what_was_asked() {
    let t = Task::new("name: t\nactions:\n  - name: get it\n    koji: {action: download, koji_build: nosuch-1-1}\n");
    let fake = Arc::new(Fake {
        error: Some("Koji has no build nosuch-1-1".into()),
        ..Fake::default()
    });
    let (r, _) = run_with(&t, fake);
    assert_eq!(r.execution_status, ExecutionStatus::NotOk);
    assert!(
        r.status_message.contains(
            "step `get it` failed: koji: Koji build nosuch-1-1: Koji has no build nosuch-1-1"
        ),
        "{}",
        r.status_message
    );
    // A name that is not a plain NVR never reaches the fetcher.
    let t = Task::new("name: t\nactions:\n  - koji: {action: download, koji_build: '../x-1-1'}\n");
    let fake = Arc::new(Fake::default());
    let (r, _) = run_with(&t, fake.clone());
    assert!(
        r.status_message.contains("is not a plain name"),
        "{}",
        r.status_message
    );
    assert!(fake.seen.lock().unwrap().is_empty());
    // download needs koji_build.
    let t = Task::new("name: t\nactions:\n  - koji: {action: download, koji_tag: f40}\n");
    let (r, _) = run_with(&t, Arc::new(Fake::default()));
    assert!(
        r.status_message
            .contains("`action: download` needs `koji_build`"),
        "{}",
        r.status_message
    );
}

#[test]
fn createrepo_makes_a_repository_of_the_downloaded_rpms() {
    if !minion_testenv::require(
        "createrepo_makes_a_repository_of_the_downloaded_rpms",
        &[minion_testenv::Need::Program("createrepo_c")],
    ) {
        return;
    }
    let t = Task::new(
        "name: t\nactions:\n  - shell: ['mkdir -p ${workdir}/repo']\n  - createrepo: {repodir: '${workdir}/repo'}\n  - createrepo: {repodir: nosuchdir}\n",
    );
    let (r, rec) = t.run();
    assert!(
        t.path().join("work/repo/repodata/repomd.xml").is_file(),
        "{}",
        rec.runner
    );
    assert!(
        r.status_message.contains("actions[2].createrepo.repodir"),
        "{}",
        r.status_message
    );
    assert!(
        r.status_message.contains("is not a directory"),
        "{}",
        r.status_message
    );
}

#[test]
fn mash_and_yumrepoinfo_say_why_they_are_not_here() {
    let t = Task::new("name: t\nactions:\n  - mash: {rpmdir: x}\n");
    let (r, _) = t.run();
    assert!(
        r.status_message
            .contains("`mash` is not available in Minion"),
        "{}",
        r.status_message
    );
}
