//! A pool's package source with real `.deb` files (built with `dpkg-deb`): the index it writes is
//! one the real apt resolves dependencies against, it follows the directory, and it serves only
//! the files it lists.
#![allow(clippy::unwrap_used)] // test setup: a failure should panic

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use minion_fetch::{Budget, FetchError, PackageSource};
use minion_formula::{FetchRequest, PACKAGE_INDEX};
use minion_testenv::deb::{build, Deb};
use minion_testenv::{require, Need};

fn deb(
    dir: &Path,
    work: &Path,
    name: &'static str,
    version: &'static str,
    depends: Vec<&'static str>,
) {
    build(
        work,
        dir,
        &Deb {
            name,
            version,
            files: vec![(
                "/usr/share/doc/minion-tests/x",
                name.as_bytes().to_vec(),
                0o644,
            )],
            depends,
        },
    )
    .unwrap();
}

/// A scratch dir with the pool's package directory, the .deb staging area and the index output.
fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let (dir, work, out) = (
        t.path().join("pool"),
        t.path().join("work"),
        t.path().join("out"),
    );
    (t, dir, work, out)
}

fn budget() -> Budget {
    Budget::new(1 << 30, Duration::from_secs(60))
}

fn packages(files: &[&str]) -> FetchRequest {
    FetchRequest::Packages {
        files: files.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn the_index_is_one_apt_resolves_and_it_follows_the_directory() {
    if !require(
        "package_index_for_apt",
        &[Need::Program("dpkg-deb"), Need::Program("apt-get")],
    ) {
        return;
    }
    let (t, dir, work, out) = dirs();
    deb(&dir, &work, "minion-test-lib", "1.0", vec![]);
    deb(
        &dir,
        &work,
        "minion-test-tool",
        "2.1",
        vec!["minion-test-lib (>= 1.0)"],
    );
    std::fs::write(dir.join("README"), "not a package").unwrap();
    std::fs::write(dir.join("broken.deb"), "not a package either").unwrap();
    let src = PackageSource::open(&dir, &out).unwrap();
    assert_eq!(
        src.package_count(),
        2,
        "the broken .deb and the README are left out"
    );

    let index = src
        .fetch(&FetchRequest::PackageIndex, &mut budget())
        .unwrap();
    assert_eq!(index.len(), 1);
    assert_eq!(index[0].name, PACKAGE_INDEX);
    // Asked again with nothing changed (the broken .deb included): the same index, not rewritten.
    let written = std::fs::metadata(&index[0].blob.path)
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let again = src
        .fetch(&FetchRequest::PackageIndex, &mut budget())
        .unwrap();
    assert_eq!(again[0].blob.path, index[0].blob.path);
    assert_eq!(
        std::fs::metadata(&again[0].blob.path)
            .unwrap()
            .modified()
            .unwrap(),
        written
    );
    let text = std::fs::read_to_string(&index[0].blob.path).unwrap();
    assert!(text.contains("Package: minion-test-tool\n"), "{text}");
    assert!(
        text.contains("Depends: minion-test-lib (>= 1.0)\n"),
        "{text}"
    );
    assert!(
        text.contains("Filename: ./minion-test-tool_2.1_all.deb\n"),
        "{text}"
    );
    assert!(text.contains("SHA256: "), "{text}");

    // The real apt, with a private state, resolves the tool's dependency from this index.
    let repo = t.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::copy(&index[0].blob.path, repo.join(PACKAGE_INDEX)).unwrap();
    let uris = apt_print_uris(t.path(), &repo, "minion-test-tool");
    assert_eq!(
        uris,
        [
            "minion-test-lib_1.0_all.deb",
            "minion-test-tool_2.1_all.deb"
        ],
        "apt installs the dependency first"
    );

    // A new package shows up in the next index; the files it names are served from the dir.
    deb(&dir, &work, "minion-test-extra", "0.1", vec![]);
    let index2 = src
        .fetch(&FetchRequest::PackageIndex, &mut budget())
        .unwrap();
    assert_ne!(index2[0].blob.path, index[0].blob.path);
    assert!(
        index[0].blob.path.exists(),
        "the previous index stays for jobs streaming it"
    );
    assert!(std::fs::read_to_string(&index2[0].blob.path)
        .unwrap()
        .contains("Package: minion-test-extra\n"));
    let files = src
        .fetch(&packages(&["minion-test-extra_0.1_all.deb"]), &mut budget())
        .unwrap();
    assert_eq!(
        files[0].blob.path,
        dir.join("minion-test-extra_0.1_all.deb")
    );
    assert_eq!(
        files[0].blob.size,
        std::fs::metadata(&files[0].blob.path).unwrap().len()
    );
}

/// What `apt-get install --print-uris` would fetch for `package` from a flat repo at `repo`.
fn apt_print_uris(base: &Path, repo: &Path, package: &str) -> Vec<String> {
    let state = base.join("apt-state");
    let cache = base.join("apt-cache");
    for d in [state.join("lists/partial"), cache.join("archives/partial")] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(state.join("status"), "").unwrap();
    let sources = base.join("sources.list");
    std::fs::write(
        &sources,
        format!("deb [trusted=yes] file:{} ./\n", repo.display()),
    )
    .unwrap();
    let opts = [
        format!("Dir::State={}", state.display()),
        format!("Dir::State::status={}", state.join("status").display()),
        format!("Dir::Cache={}", cache.display()),
        format!("Dir::Etc::SourceList={}", sources.display()),
        "Dir::Etc::SourceParts=/nonexistent".into(),
        "Debug::NoLocking=1".into(),
        "APT::Sandbox::User=root".into(),
    ];
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        for o in &opts {
            c.arg("-o").arg(o);
        }
        let out = c.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "apt-get {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    apt(&["-qq", "update"]);
    apt(&["-qq", "--print-uris", "install", package])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

#[test]
fn only_listed_files_are_served_and_they_count_against_the_budget() {
    if !require("package_source_serves_listed", &[Need::Program("dpkg-deb")]) {
        return;
    }
    let (t, dir, work, out) = dirs();
    deb(&dir, &work, "minion-test-lib", "1.0", vec![]);
    std::fs::write(t.path().join("secret.deb"), "outside the pool").unwrap();
    let src = PackageSource::open(&dir, &out).unwrap();
    let e = src
        .fetch(&packages(&["secret.deb"]), &mut budget())
        .unwrap_err();
    assert_eq!(
        e,
        FetchError::NotFound {
            what: "the pool's package source has no file secret.deb".into()
        }
    );
    let e = src
        .fetch(&packages(&["../secret.deb"]), &mut budget())
        .unwrap_err();
    assert!(matches!(e, FetchError::BadRequest(_)), "{e}");
    let mut small = Budget::new(10, Duration::from_secs(60));
    let e = src
        .fetch(&packages(&["minion-test-lib_1.0_all.deb"]), &mut small)
        .unwrap_err();
    assert_eq!(e, FetchError::OverBudget { limit: 10 });
    let e = src
        .fetch(
            &FetchRequest::KojiTag {
                tag: "f40".into(),
                rpms: minion_formula::RpmFilter {
                    arches: vec![],
                    exclude: vec![],
                    src: false,
                    debuginfo: false,
                    build_log: false,
                },
            },
            &mut budget(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("is not a package request"), "{e}");

    let e = PackageSource::open(&t.path().join("nope"), &out).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}
