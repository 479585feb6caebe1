//! `minion-trigger check` and `dry-run` through the real binary: the shipped example files, a
//! local dist-git repository for discover, and the exit codes.

use minion_testenv::git;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_minion-trigger")
}

fn here(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("minion-trigger runs")
}

#[test]
fn check_accepts_the_example_and_names_the_error_of_a_bad_file() {
    let out = run(&[
        "--config",
        here("minion-trigger.example.toml").to_str().expect("utf8"),
        "check",
        here("examples/trigger_rules.yml").to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(": 3 rules, OK\n"));

    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("rules.yml");
    std::fs::write(&bad, "- when: {name: {$in: foo}}\n  do: [{tasks: [x]}]\n").expect("write");
    let out = run(&["check", bad.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "{}:1:22: [0].when.name.$in: must be a list of values or one `${{var}}` naming a list, found a string\n",
            bad.display()
        )
    );
}

#[test]
fn dry_run_prints_named_and_discovered_jobs_once_each() {
    // A dist-git repo for `foo` with a nested task on its main branch (no f40 branch: fallback).
    let srv = tempfile::tempdir().expect("srv");
    let repo = srv.path().join("rpms/foo.git");
    std::fs::create_dir_all(repo.join("tests/smoke")).expect("mkdir");
    git(&repo, &["init", "--quiet"]);
    std::fs::write(
        repo.join("tests/smoke/runtask.yml"),
        "name: smoke\ninput:\n  args: [koji_build]\nactions:\n  - dummy: {result: PASSED}\n",
    )
    .expect("formula");
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "smoke"]);

    let dir = tempfile::tempdir().expect("tmp");
    let rules = dir.path().join("rules.yml");
    let example = std::fs::read_to_string(here("examples/trigger_rules.yml")).expect("example");
    std::fs::write(
        &rules,
        example.replace("/srv/distgit", &srv.path().display().to_string()),
    )
    .expect("rules");
    let cache = dir.path().join("cache");
    let args = |json: bool| {
        let mut a = vec![
            "--config".to_string(),
            here("minion-trigger.example.toml").display().to_string(),
            "dry-run".into(),
            here("examples/messages/koji-build-complete.json")
                .display()
                .to_string(),
            "--rules".into(),
            rules.display().to_string(),
            "--cache-dir".into(),
            cache.display().to_string(),
        ];
        if json {
            a.push("--json".into());
        }
        a
    };
    let a = args(true);
    let out = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{out:?}");
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let got: Vec<(String, String, String, String)> = jobs
        .as_array()
        .expect("list")
        .iter()
        .map(|j| {
            let s = |k: &str| j[k].as_str().unwrap_or_default().to_string();
            (s("task"), s("formula"), s("git_ref"), s("arch"))
        })
        .collect();
    let url = format!("file://{}/rpms/foo.git", srv.path().display());
    assert_eq!(
        got,
        [
            (
                "python-check".into(),
                String::new(),
                String::new(),
                "x86_64".into()
            ),
            (
                format!("{url}#tests/smoke"),
                "tests/smoke".into(),
                "main".into(),
                "x86_64".into()
            ),
        ]
    );
    assert!(jobs[0]["item"] == "foo-1.0-1.fc40" && jobs[1]["rule"] == 1);

    // A message that starts nothing, and one that is malformed.
    let ignored = dir.path().join("started.json");
    let text =
        std::fs::read_to_string(here("examples/messages/koji-build-complete.json")).expect("msg");
    std::fs::write(&ignored, text.replace("\"new\": 1", "\"new\": 0")).expect("write");
    let mut a = args(false);
    a[3] = ignored.display().to_string();
    let out = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ignored: build state 0, not COMPLETE (1)\n"
    );
    std::fs::write(&ignored, text.replace("\"headers\"", "\"no-headers\"")).expect("write");
    let out = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "malformed: no headers (not a Fedora Messaging publisher)\n"
    );
}

#[test]
fn run_refuses_to_start_on_a_bad_rules_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let rules = dir.path().join("rules.yml");
    std::fs::write(&rules, "- when: {a: b}\n  do: [{tasks: [nosuchtask]}]\n").expect("write");
    let out = run(&[
        "--config",
        here("minion-trigger.example.toml").to_str().expect("utf8"),
        "run",
        "--rules",
        rules.to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "{}:2:17: [0].do[0].tasks[0]: task `nosuchtask` has no repository in the config ([tasks] or task_repo_template)\n",
            rules.display()
        )
    );
}
