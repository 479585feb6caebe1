//! The fetchers against the Koji/Bodhi/dist-git stand-in, with real RPMs built by rpmbuild.
#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic

use std::path::PathBuf;
use std::time::Duration;

use minion_fetch::{Budget, Fetch, FetchError, FetchLimits, KojiEndpoint, Sources, UrlEndpoint};
use minion_formula::{FetchRequest, FetchedKind, RpmFilter};
use minion_testenv::fedora::FedoraStandIn;
use minion_testenv::rpm::{build, Package};
use minion_testenv::{require, Need};

struct World {
    koji: FedoraStandIn,
    _dir: tempfile::TempDir,
    cache: PathBuf,
}

/// A build `foo-1.0-1.fc40` with `python3-foo` (noarch), `foo` and `foo-debuginfo` (x86_64) and
/// its source package; tagged in `f40-updates`; Bodhi update `FEDORA-2040-abc` holds it.
fn world(test: &str) -> Option<World> {
    if !require(test, &[Need::Program("rpmbuild")]) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let mk = |name: &'static str, arch: &'static str| {
        build(
            dir.path(),
            &Package {
                name,
                version: "1.0",
                release: "1.fc40",
                arch,
                files: vec![(
                    Box::leak(format!("/usr/share/{name}/README").into_boxed_str()),
                    format!("{name}\n").into_bytes(),
                )],
                requires: vec![],
            },
        )
        .unwrap()
    };
    let py = mk("python3-foo", "noarch");
    let bin = mk("foo", "x86_64");
    let dbg = mk("foo-debuginfo", "x86_64");
    let src = dir.path().join("foo-1.0-1.fc40.src.rpm");
    std::fs::copy(&bin, &src).unwrap();
    let koji = FedoraStandIn::start();
    koji.add_build("foo-1.0-1.fc40", &[&py, &bin, &dbg, &src]);
    koji.tag("f40-updates", "foo-1.0-1.fc40");
    koji.add_update("FEDORA-2040-abc", &["foo-1.0-1.fc40"]);
    koji.add_distgit_file("rpms", "foo", "f40", "foo.spec", b"Name: foo\n");
    let cache = dir.path().join("cache");
    Some(World {
        koji,
        _dir: dir,
        cache,
    })
}

impl World {
    fn sources(&self) -> Sources {
        Sources {
            koji: Some(KojiEndpoint {
                hub: self.koji.koji_hub(),
                packages: self.koji.koji_packages(),
            }),
            bodhi: Some(UrlEndpoint {
                url: self.koji.bodhi_url(),
            }),
            distgit: Some(UrlEndpoint {
                url: self.koji.distgit_url(),
            }),
        }
    }
    fn fetch(&self) -> Fetch {
        Fetch::new(self.sources(), &self.cache, &FetchLimits::default()).unwrap()
    }
    fn package_requests(&self) -> usize {
        self.koji
            .requests()
            .iter()
            .filter(|(_, p, _)| p.starts_with("/packages/"))
            .count()
    }
}

fn filter(arches: &[&str]) -> RpmFilter {
    RpmFilter {
        arches: arches.iter().map(|s| s.to_string()).collect(),
        exclude: vec![],
        src: false,
        debuginfo: false,
        build_log: false,
    }
}

fn budget() -> Budget {
    FetchLimits::default().budget()
}

fn names(files: &[minion_fetch::CachedFile]) -> Vec<&str> {
    let mut n: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    n.sort_unstable();
    n
}

#[test]
fn a_koji_build_is_fetched_by_arch_and_cached_by_checksum() {
    let Some(w) = world("a_koji_build_is_fetched_by_arch_and_cached_by_checksum") else {
        return;
    };
    let f = w.fetch();
    let req = FetchRequest::KojiBuild {
        nvr: "foo-1.0-1.fc40".into(),
        rpms: filter(&["x86_64"]),
    };
    let files = f.fetch(&req, &mut budget()).unwrap();
    assert_eq!(
        names(&files),
        [
            "foo-1.0-1.fc40.x86_64.rpm",
            "python3-foo-1.0-1.fc40.noarch.rpm"
        ]
    );
    assert!(files
        .iter()
        .all(|c| !c.blob.hit && c.kind == FetchedKind::Rpm));
    // Real RPMs, as rpm reads them.
    let out = std::process::Command::new("rpm")
        .args(["-qp", "--qf", "%{NAME}"])
        .arg(&files[0].blob.path)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(w.koji.koji_calls(), ["getBuild", "listRPMs"]);
    assert_eq!(w.package_requests(), 2);

    // Again: the hub is asked, the files come from the cache.
    let again = f.fetch(&req, &mut budget()).unwrap();
    assert!(again.iter().all(|c| c.blob.hit));
    assert_eq!(w.package_requests(), 2);
    assert_eq!(
        again.iter().map(|c| &c.blob.sha256).collect::<Vec<_>>(),
        files.iter().map(|c| &c.blob.sha256).collect::<Vec<_>>()
    );

    // src and debuginfo when asked; every arch with `all`.
    let mut all = filter(&[]);
    all.src = true;
    all.debuginfo = true;
    let every = f
        .fetch(
            &FetchRequest::KojiBuild {
                nvr: "foo-1.0-1.fc40".into(),
                rpms: all,
            },
            &mut budget(),
        )
        .unwrap();
    assert_eq!(every.len(), 4);
}

#[test]
fn bad_items_name_what_was_asked() {
    let Some(w) = world("bad_items_name_what_was_asked") else {
        return;
    };
    let f = w.fetch();
    let e = f
        .fetch(
            &FetchRequest::KojiBuild {
                nvr: "nosuch-1.0-1.fc40".into(),
                rpms: filter(&[]),
            },
            &mut budget(),
        )
        .unwrap_err();
    assert_eq!(e.to_string(), "Koji has no build nosuch-1.0-1.fc40");

    let e = f
        .fetch(
            &FetchRequest::KojiBuild {
                nvr: "foo-1.0-1.fc40".into(),
                rpms: RpmFilter {
                    exclude: vec!["noarch".into()],
                    ..filter(&["aarch64"])
                },
            },
            &mut budget(),
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Koji build foo-1.0-1.fc40 has no RPMs for arch aarch64 (it has: noarch, src, x86_64)"
    );

    let e = f
        .fetch(
            &FetchRequest::BodhiUpdate {
                id: "FEDORA-2040-nope".into(),
                rpms: filter(&[]),
            },
            &mut budget(),
        )
        .unwrap_err();
    assert_eq!(e.to_string(), "Bodhi has no update FEDORA-2040-nope");

    let e = f
        .fetch(
            &FetchRequest::KojiTag {
                tag: "f99".into(),
                rpms: filter(&[]),
            },
            &mut budget(),
        )
        .unwrap_err();
    assert_eq!(e.to_string(), "Koji has no tag f99");

    // Over the budget: refused before the download, from Koji's sizes.
    let e = f
        .fetch(
            &FetchRequest::KojiBuild {
                nvr: "foo-1.0-1.fc40".into(),
                rpms: filter(&[]),
            },
            &mut Budget::new(100, Duration::from_secs(60)),
        )
        .unwrap_err();
    assert!(matches!(e, FetchError::OverBudget { limit: 100 }), "{e}");

    // A URL or a path where a name belongs is refused before anything is asked.
    let before = w.koji.requests().len();
    for nvr in ["http://evil.example/x-1-1", "../../../etc/passwd-1-1"] {
        let e = f
            .fetch(
                &FetchRequest::KojiBuild {
                    nvr: nvr.into(),
                    rpms: filter(&[]),
                },
                &mut budget(),
            )
            .unwrap_err();
        assert!(matches!(e, FetchError::BadRequest(_)), "{e}");
    }
    assert_eq!(w.koji.requests().len(), before);
}

#[test]
fn a_hub_that_does_not_answer_times_out_within_the_budget() {
    let Some(w) = world("a_hub_that_does_not_answer_times_out_within_the_budget") else {
        return;
    };
    w.koji.set_delay(Duration::from_secs(5));
    let started = std::time::Instant::now();
    let e = w
        .fetch()
        .fetch(
            &FetchRequest::KojiBuild {
                nvr: "foo-1.0-1.fc40".into(),
                rpms: filter(&[]),
            },
            &mut Budget::new(1 << 30, Duration::from_secs(1)),
        )
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(&e, FetchError::Unreachable { message, .. } if message.contains("no answer within 1s")),
        "{e}"
    );
    assert!(e
        .to_string()
        .starts_with(&format!("Koji at {}/kojihub is unreachable", w.koji.url)));
}

#[test]
fn bodhi_latest_stable_tags_and_distgit_resolve_to_files() {
    let Some(w) = world("bodhi_latest_stable_tags_and_distgit_resolve_to_files") else {
        return;
    };
    let f = w.fetch();
    let x86 = filter(&["x86_64"]);
    let update = f
        .fetch(
            &FetchRequest::BodhiUpdate {
                id: "FEDORA-2040-abc".into(),
                rpms: x86.clone(),
            },
            &mut budget(),
        )
        .unwrap();
    assert_eq!(update.len(), 2);
    let stable = f
        .fetch(
            &FetchRequest::KojiLatestStable {
                nvr: "foo-2.0-1.fc40".into(),
                rpms: x86.clone(),
            },
            &mut budget(),
        )
        .unwrap();
    assert_eq!(names(&stable), names(&update));
    // No stable build of another release: nothing, and no error.
    let none = f
        .fetch(
            &FetchRequest::KojiLatestStable {
                nvr: "foo-2.0-1.fc41".into(),
                rpms: x86.clone(),
            },
            &mut budget(),
        )
        .unwrap();
    assert!(none.is_empty());
    let tag = f
        .fetch(
            &FetchRequest::KojiTag {
                tag: "f40-updates".into(),
                rpms: x86,
            },
            &mut budget(),
        )
        .unwrap();
    assert_eq!(tag.len(), 2);

    let git = |paths: &[&str], ignore_missing: bool| FetchRequest::DistGit {
        namespace: "rpms".into(),
        package: "foo".into(),
        gitref: "f40".into(),
        paths: paths.iter().map(|s| s.to_string()).collect(),
        ignore_missing,
    };
    let spec = f.fetch(&git(&["foo.spec"], false), &mut budget()).unwrap();
    assert_eq!(std::fs::read(&spec[0].blob.path).unwrap(), b"Name: foo\n");
    assert_eq!(spec[0].kind, FetchedKind::File);
    let e = f
        .fetch(&git(&["foo.spec", "gating.yaml"], false), &mut budget())
        .unwrap_err();
    assert!(e.to_string().contains("gating.yaml"), "{e}");
    assert_eq!(
        f.fetch(&git(&["foo.spec", "gating.yaml"], true), &mut budget())
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn nothing_configured_says_which_setting_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fetch::new(Sources::default(), dir.path(), &FetchLimits::default()).unwrap();
    let e = f
        .fetch(
            &FetchRequest::KojiBuild {
                nvr: "foo-1-1".into(),
                rpms: filter(&[]),
            },
            &mut budget(),
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "no Koji is configured here ([koji] hub and packages)"
    );
}
