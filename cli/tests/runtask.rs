//! `minion runtask` and `minion formula check` through the real binary, on the examples.
#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn minion(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_minion"))
        .args(args)
        .output()
        .unwrap()
}

fn runtask(item: &str, task: &Path, run_dir: &Path) -> Output {
    minion(&[
        "runtask",
        "-i",
        item,
        "-t",
        "koji_build",
        "--artifactsdir",
        run_dir.to_str().unwrap(),
        task.to_str().unwrap(),
    ])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn shell_example_passes_and_keeps_its_artifact_and_log() {
    let run = tempfile::tempdir().unwrap();
    let out = runtask(
        "foo-1.0-1.fc40",
        &examples().join("shell-check"),
        run.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "TAP version 13\n1..0\n");
    let log = std::fs::read_to_string(run.path().join("minion.log")).unwrap();
    assert!(log.contains("checking foo-1.0-1.fc40 on noarch"), "{log}");
    let artifact = std::fs::read_to_string(run.path().join("task_output/shell-check.log")).unwrap();
    assert_eq!(artifact, "nvr ok: foo-1.0-1.fc40\n");
    assert!(text(&out.stderr).contains(&format!("artifacts in {}", run.path().display())));
}

#[test]
fn python_example_reports_resultyaml_and_prints_tap() {
    let run = tempfile::tempdir().unwrap();
    let out = runtask(
        "foo-1.0-1.fc40",
        &examples().join("python-check/runtask.yml"),
        run.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let tap = text(&out.stdout);
    assert!(
        tap.starts_with(
            "TAP version 13\n1..1\nok - nvr_format for Koji build foo-1.0-1.fc40\n  ---\n"
        ),
        "{tap}"
    );
    assert_eq!(
        std::fs::read_to_string(run.path().join("results.tap")).unwrap(),
        tap
    );
    let results = minion_formula::parse_results(
        &std::fs::read_to_string(run.path().join("results.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(results[0].outcome, Some(minion_formula::Outcome::Passed));
    assert!(run.path().join("task_output/python-check.log").is_file());
}

#[test]
fn exitcode_example_exits_100_on_failure_and_0_on_success() {
    let run = tempfile::tempdir().unwrap();
    let task = examples().join("exitcode-check");
    let bad = runtask("broken-1.0-1.fc40", &task, &run.path().join("bad"));
    assert_eq!(bad.status.code(), Some(100), "{}", text(&bad.stderr));
    assert!(text(&bad.stdout)
        .contains("not ok - exitcode_demo for Koji build broken-1.0-1.fc40 # FAIL\n"));
    let good = runtask("fine-1.0-1.fc40", &task, &run.path().join("good"));
    assert_eq!(good.status.code(), Some(0), "{}", text(&good.stderr));
}

#[test]
fn execution_failure_exits_1_and_bad_input_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("runtask.yml");
    std::fs::write(
        &f,
        "name: t\ninput: {args: [koji_build]}\nactions:\n  - shell: ['exit 7']\n",
    )
    .unwrap();
    let out = runtask("x-1-1", &f, &dir.path().join("run"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("execution NOT_OK"),
        "{}",
        text(&out.stderr)
    );

    // The formula needs koji_build; -t compose does not supply it. Refused before anything is
    // created: the default runs dir stays empty.
    let state = dir.path().join("state");
    let out = Command::new(env!("CARGO_BIN_EXE_minion"))
        .args(["runtask", "-i", "Fedora-40", "-t", "compose"])
        .arg(&f)
        .env("MINION_STATE_DIR", &state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!state.exists(), "bad input left {}", state.display());
    assert!(
        text(&out.stderr).contains("runtask.yml:2:16: input.args[0]"),
        "{}",
        text(&out.stderr)
    );

    std::fs::write(&f, "name: t\nactions:\n  - sh: [true]\n").unwrap();
    let out = runtask("x-1-1", &f, &dir.path().join("run2"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("runtask.yml:3:5: actions[0].sh: unknown directive `sh`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn formula_check_validates_without_running() {
    let ok = minion(&[
        "formula",
        "check",
        examples().join("shell-check").to_str().unwrap(),
        examples()
            .join("python-check/runtask.yml")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("OK: python-check (2 step(s), needs koji_build)"));
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../formula/tests/malformed/08-unknown-directive.yml");
    let bad = minion(&["formula", "check", corpus.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("08-unknown-directive.yml:4:5: actions[0].bash"));
}

/// libtaskotron's command-line defaults: `-a noarch`, `-j -1`, `--uuid` the UTC time.
#[test]
fn command_line_defaults_are_the_originals() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("runtask.yml");
    std::fs::write(
        &f,
        "name: t\nactions:\n  - shell: ['echo \"arch=${arch} jobid=${jobid} uuid=${uuid}\"']\n",
    )
    .unwrap();
    let out = runtask("x-1-1", &f, &dir.path().join("run"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("arch="))
        .unwrap_or_else(|| panic!("{err}"));
    let (head, uuid) = line.split_once(" uuid=").unwrap();
    assert_eq!(head, "arch=noarch jobid=-1");
    let parts: Vec<usize> = uuid.split('_').map(str::len).collect();
    assert_eq!(parts, [8, 6, 6], "{uuid}");
    // -j takes a value that starts with a dash, and --uuid replaces the default.
    let out = minion(&[
        "runtask",
        "-i",
        "x-1-1",
        "-t",
        "koji_build",
        "-j",
        "-5",
        "--uuid",
        "U1",
        "-a",
        "x86_64",
        "--artifactsdir",
        dir.path().join("run2").to_str().unwrap(),
        f.to_str().unwrap(),
    ]);
    assert!(
        text(&out.stderr).contains("arch=x86_64 jobid=-5 uuid=U1"),
        "{}",
        text(&out.stderr)
    );
}

/// `-t` takes only the known item types (argparse `choices` in the original): exit 2 naming the
/// value and the list; `git_commit` and `module_build` are among them.
#[test]
fn item_types_are_restricted_to_the_known_list() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("runtask.yml");
    std::fs::write(&f, "name: t\nactions:\n  - shell: ['true']\n").unwrap();
    let out = minion(&[
        "runtask",
        "-i",
        "x",
        "-t",
        "koji-build",
        f.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("'koji-build'"), "{err}");
    for t in minion_formula::ITEM_TYPES {
        assert!(err.contains(t), "{t} missing from: {err}");
    }
    for t in ["git_commit", "module_build"] {
        let run = dir.path().join(t);
        let out = minion(&[
            "runtask",
            "-i",
            "x",
            "-t",
            t,
            "--artifactsdir",
            run.to_str().unwrap(),
            f.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{t}: {}", text(&out.stderr));
    }
}

/// `-d/--debug` shows each step's substituted parameters and returned value.
#[test]
fn debug_shows_substituted_parameters_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("runtask.yml");
    std::fs::write(
        &f,
        "name: t\nactions:\n  - dummy: {result: PASSED, msg: {nvr: '${koji_build}'}}\n",
    )
    .unwrap();
    let run = |extra: &[&str], name: &str| {
        let mut args = vec!["runtask", "-i", "foo-1-1", "-t", "koji_build"];
        args.extend_from_slice(extra);
        let d = dir.path().join(name);
        args.extend_from_slice(&["--artifactsdir", d.to_str().unwrap(), f.to_str().unwrap()]);
        text(&minion(&args).stderr)
    };
    let quiet = run(&[], "quiet");
    assert!(!quiet.contains("returned"), "{quiet}");
    let debug = run(&["-d"], "debug");
    assert!(
        debug.contains(r#"step 0 dummy: {"msg":{"nvr":"foo-1-1"},"result":"PASSED"}"#),
        "{debug}"
    );
    assert!(
        debug.contains(r#"step 0 returned: {"nvr":"foo-1-1"}"#),
        "{debug}"
    );
}

#[test]
fn environment_is_checked_on_the_host_and_nothing_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("runtask.yml");
    // dpkg is installed wherever this suite runs (Debian); the other package is nowhere.
    std::fs::write(
        &f,
        "name: t\nenvironment:\n  rpm: [dpkg]\nactions:\n  - shell: ['echo ran']\n",
    )
    .unwrap();
    let out = runtask("x-1-1", &f, &dir.path().join("run"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("environment: dpkg installed on this host"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(
        &f,
        "name: t\nenvironment:\n  rpm: [dpkg, minion-no-such-package]\nactions:\n  - shell: ['echo ran']\n",
    )
    .unwrap();
    let out = runtask("x-1-1", &f, &dir.path().join("run2"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("environment: not installed on this host: minion-no-such-package (minion runtask checks the environment and installs nothing"),
        "{err}"
    );
    assert!(!err.contains("ran\n"), "no step ran: {err}");
}
