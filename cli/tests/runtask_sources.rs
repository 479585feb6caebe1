//! `minion runtask` with Koji: the python-versions example on this host, fetching real RPMs from
//! the Koji stand-in.
#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic

use std::path::{Path, PathBuf};
use std::process::Command;

use minion_testenv::fedora::{python_versions_builds, FedoraStandIn};
use minion_testenv::{require, Need};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python-versions")
}

/// `minion runtask` of the example for `item` with Koji at the stand-in; `env` adds variables.
/// Returns the exit code, stdout (TAP) and stderr (the log).
fn runtask(
    koji: &FedoraStandIn,
    item: &str,
    run: &Path,
    env: &[(&str, &Path)],
) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_minion"))
        .args(["runtask", "-i", item, "-t", "koji_build", "--koji-hub"])
        .arg(koji.koji_hub())
        .arg("--koji-packages")
        .arg(koji.koji_packages())
        .arg("--artifactsdir")
        .arg(run)
        .arg(example())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn python_versions_runs_on_the_host_with_rpms_from_koji() {
    if !require(
        "python_versions_runs_on_the_host_with_rpms_from_koji",
        &[
            Need::Program("rpmbuild"),
            Need::File {
                path: Path::new("/usr/lib/python3/dist-packages/rpm/__init__.py"),
                make: "apt-get install python3-rpm (scripts/setup-host.sh)",
            },
        ],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let koji = FedoraStandIn::start();
    python_versions_builds(&koji, dir.path(), 0).unwrap();
    let state = dir.path().join("state");

    // A sources file named but absent is an error…
    let (code, _, err) = runtask(
        &koji,
        "foo-1.0-1.fc40",
        &dir.path().join("named"),
        &[
            ("MINION_STATE_DIR", &state),
            ("MINION_SOURCES", Path::new("/nonexistent/sources.toml")),
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/sources.toml"), "{err}");

    let run = |item: &str, name: &str| {
        runtask(
            &koji,
            item,
            &dir.path().join(name),
            &[
                ("MINION_STATE_DIR", &state),
                ("XDG_CONFIG_HOME", dir.path()),
            ],
        )
    };
    // …while no sources file at all is fine (the flags say everything).
    let (code, tap, err) = run("foo-1.0-1.fc40", "good");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        tap.contains("ok - python-versions for Koji build foo-1.0-1.fc40\n"),
        "{tap}"
    );
    assert!(tap.contains("  packages_checked: 1\n"), "{tap}");
    assert!(err.contains("koji: 1 file(s) in"), "{err}");
    let log =
        std::fs::read_to_string(dir.path().join("good/task_output/python-versions.log")).unwrap();
    assert_eq!(log, "python3-foo: python 3\n");

    let (code, tap, err) = run("mixed-1.0-1.fc40", "bad");
    assert_eq!(code, Some(100), "{err}");
    assert!(
        tap.contains("not ok - python-versions for Koji build mixed-1.0-1.fc40 # FAIL\n"),
        "{tap}"
    );
    assert!(tap.contains("requires both Python 2 and 3: mixed"), "{tap}");

    // An NVR Koji does not know: execution NOT_OK naming the step and the build.
    let (code, _, err) = run("nosuch-1.0-1.fc40", "missing");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("step `download rpms from koji` failed: koji: Koji build nosuch-1.0-1.fc40: Koji has no build nosuch-1.0-1.fc40"),
        "{err}"
    );
    // The second run of foo came from the host cache: one download of the package in all.
    let (code, _, _) = run("foo-1.0-1.fc40", "again");
    assert_eq!(code, Some(0));
    let downloads = koji
        .requests()
        .iter()
        .filter(|(_, p, _)| p.ends_with("python3-foo-1.0-1.fc40.noarch.rpm"))
        .count();
    assert_eq!(downloads, 1);
}
