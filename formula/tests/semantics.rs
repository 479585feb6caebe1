//! The original runner's behaviour, point by point, as Taskotron tasks rely on it: lenient
//! ResultYAML, `resultsdb`'s required keys, `dummy`, `xunit`, typed exports into `python`, and the
//! task directory as the working directory. (Command-line defaults: `cli/tests/runtask.rs`.)
#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic

mod common;

use common::Task;
use minion_formula::*;

/// ResultYAML as a YAML-quoted scalar inside a formula.
fn quoted(results: &str) -> String {
    serde_json::to_string(results).unwrap()
}

#[test]
fn resultyaml_needs_only_the_results_list_and_a_missing_outcome_is_needs_inspection() {
    // Not even item/type/checkname: exitcode looks only at outcomes.
    let no_outcome = quoted("results:\n  - note: forgot the outcome\n");
    let t = Task::new(&format!(
        "name: t\nactions:\n  - exitcode: {{result_worst: {no_outcome}}}\n"
    ));
    let (r, rec) = t.run();
    assert_eq!(r.execution_status, ExecutionStatus::Ok, "{}", rec.runner);
    assert_eq!(r.exit_code, EXIT_CHECK_FAILED);
    assert!(
        rec.runner.contains("NEEDS_INSPECTION → 100"),
        "{}",
        rec.runner
    );

    // An empty list, and `results: null`, are success.
    for empty in ["results: []\n", "results:\n", "results: null\n"] {
        let t = Task::new(&format!(
            "name: t\nactions:\n  - exitcode: {{result_last: {}}}\n",
            quoted(empty)
        ));
        assert_eq!(t.run().0.exit_code, 0, "{empty}");
    }
}

#[test]
fn extra_result_keys_are_kept_and_reported_as_data() {
    let yaml = quoted(
        "results:\n  - {item: foo-1-1, type: koji_build, checkname: c, outcome: PASSED, python_versions: [2, 3], arch: s390x}\n",
    );
    let t = Task::new(&format!(
        "name: t\nactions:\n  - resultsdb: {{results: {yaml}}}\n"
    ));
    let (r, rec) = t.run();
    assert_eq!(r.execution_status, ExecutionStatus::Ok, "{}", rec.runner);
    assert_eq!(
        r.results[0].extra,
        [
            ("python_versions".to_string(), serde_json::json!([2, 3])),
            ("arch".to_string(), serde_json::json!("s390x")),
        ]
    );
    let body = report::result_body(&r.results[0], Some("dist"), "x86_64", &"G".into(), None);
    assert_eq!(body["data"]["python_versions"], serde_json::json!([2, 3]));
    assert_eq!(body["testcase"]["name"], "dist.c");
    // The result's own `arch` wins over the job's.
    assert_eq!(body["data"]["arch"], "s390x");
    assert!(r.results_yaml().contains("python_versions"));
}

#[test]
fn resultsdb_refuses_a_result_without_item_type_or_checkname() {
    for (result, missing) in [
        ("{type: koji_build, checkname: c, outcome: PASSED}", "item"),
        ("{item: foo, checkname: c, outcome: PASSED}", "type"),
        (
            "{item: foo, type: koji_build, outcome: PASSED}",
            "checkname",
        ),
    ] {
        let yaml = quoted(&format!("results:\n  - {{item: ok, type: t, checkname: first, outcome: PASSED}}\n  - {result}\n"));
        let t = Task::new(&format!(
            "name: t\nactions:\n  - resultsdb: {{results: {yaml}}}\n"
        ));
        let (r, _) = t.run();
        assert_eq!(r.execution_status, ExecutionStatus::NotOk, "{result}");
        assert!(
            r.status_message.contains("result 1 (")
                && r.status_message.contains(&format!("has no `{missing}`")),
            "{}",
            r.status_message
        );
        assert!(
            r.status_message.contains("actions[0].resultsdb.results"),
            "{}",
            r.status_message
        );
    }
    // A missing outcome is not refused: it is reported as NEEDS_INSPECTION.
    let yaml = quoted("results:\n  - {item: foo, type: koji_build, checkname: c}\n");
    let t = Task::new(&format!(
        "name: t\nactions:\n  - resultsdb: {{results: {yaml}}}\n"
    ));
    let (r, _) = t.run();
    assert_eq!(r.execution_status, ExecutionStatus::Ok);
    let body = report::result_body(&r.results[0], None, "", &"G".into(), None);
    assert_eq!(body["outcome"], "NEEDS_INSPECTION");
}

#[test]
fn dummy_fails_on_fail_in_any_case_and_returns_msg_unchanged() {
    for word in ["FAIL", "fail", "Fail"] {
        let t = Task::new(&format!(
            "name: t\nactions:\n  - dummy: {{result: {word}}}\n"
        ));
        let (r, _) = t.run();
        assert_eq!(r.execution_status, ExecutionStatus::NotOk, "{word}");
        assert!(r.status_message.contains("dummy step asked to fail"));
    }
    // A mapping and a list come back as they are, exported and used further on.
    let t = Task::new(
        "name: t\nactions:\n  - dummy:\n      result: PASSED\n      msg: {nvr: foo-1-1, arches: [x86_64, noarch]}\n    export: m\n  - dummy: {result: failed, msg: '${m}'}\n    export: n\n  - python: {file: check.py, callable: run, info: '${m}'}\n",
    )
    .file(
        "check.py",
        "def run(info):\n    assert isinstance(info, dict), type(info)\n    print('arches=%s' % ','.join(info['arches']))\n",
    );
    let (r, rec) = t.run();
    assert_eq!(r.execution_status, ExecutionStatus::Ok, "{}", rec.runner);
    assert!(String::from_utf8_lossy(&rec.stdout).contains("arches=x86_64,noarch"));
}

#[test]
fn xunit_allpass_counts_cases_by_outcome_and_points_at_the_xml() {
    let xml = r#"<testsuite><testcase classname="pkg.Mod" name="a"/><testcase name="b"/><testcase classname="pkg.Mod" name="c"><failure message="no"/></testcase></testsuite>"#;
    let t = Task::new(
        "name: t\nactions:\n  - xunit: {item: x, type: koji_build, checkname: unit, file: j.xml}\n    export: res\n  - resultsdb: {results: '$res'}\n",
    )
    .file("j.xml", xml);
    let (r, rec) = t.run();
    assert_eq!(r.execution_status, ExecutionStatus::Ok, "{}", rec.runner);
    assert_eq!(r.results.len(), 1);
    let one = &r.results[0];
    assert_eq!(
        (one.checkname.as_str(), one.outcome),
        ("unit", Some(Outcome::Failed))
    );
    assert_eq!(one.note.as_deref(), Some("2 PASSED, 1 FAILED"));
    assert_eq!(
        one.artifact.as_deref(),
        Some(t.path().join("j.xml").to_str().unwrap())
    );

    let all_pass =
        r#"<testsuite><testcase name="a"/><testcase name="b"/><testcase name="c"/></testsuite>"#;
    let t = Task::new(
        "name: t\nactions:\n  - xunit: {item: x, type: koji_build, checkname: unit, file: j.xml, aggregation: allpass}\n    export: res\n  - resultsdb: {results: '$res'}\n",
    )
    .file("j.xml", all_pass);
    let (r, _) = t.run();
    assert_eq!(r.results[0].note.as_deref(), Some("3 PASSED"));
    assert_eq!(r.results[0].outcome, Some(Outcome::Passed));
}

#[test]
fn xunit_none_names_each_case_by_its_name_alone() {
    let xml = r#"<testsuites><testsuite><testcase classname="tests.test_mod.TestX" name="test_one"/><testcase classname="tests.test_mod.TestX" name="test_two"><error message="boom"/></testcase></testsuite></testsuites>"#;
    let t = Task::new(
        "name: t\nactions:\n  - xunit: {item: x, type: koji_build, checkname: unit, file: j.xml, aggregation: none}\n    export: res\n  - resultsdb: {results: '$res'}\n",
    )
    .file("j.xml", xml);
    let (r, rec) = t.run();
    assert_eq!(r.execution_status, ExecutionStatus::Ok, "{}", rec.runner);
    let got: Vec<(&str, Option<Outcome>)> = r
        .results
        .iter()
        .map(|c| (c.checkname.as_str(), c.outcome))
        .collect();
    assert_eq!(
        got,
        [
            ("unit.test_one", Some(Outcome::Passed)),
            ("unit.test_two", Some(Outcome::Failed))
        ]
    );
    assert!(r
        .results
        .iter()
        .all(|c| c.artifact.as_deref().is_some_and(|a| a.ends_with("/j.xml"))));
}

#[test]
fn exported_values_keep_their_yaml_type_through_python_keyword_arguments() {
    let t = Task::new(
        "name: t\nactions:\n  - python: {file: check.py, callable: make}\n    export: info\n  - python: {file: check.py, callable: use, info: '${info}', n: 3, flag: true, items: [a, b]}\n",
    )
    .file(
        "check.py",
        "def make():\n    return {'nvr': 'foo-1-1', 'counts': {'errors': 2}}\n\ndef use(info, n, flag, items):\n    assert info['counts']['errors'] == 2\n    assert (n, flag, items) == (3, True, ['a', 'b']), (n, flag, items)\n    print('ok', info['nvr'])\n",
    );
    let (r, rec) = t.run();
    assert_eq!(
        r.execution_status,
        ExecutionStatus::Ok,
        "{}{}",
        rec.runner,
        String::from_utf8_lossy(&rec.out)
    );
    assert!(String::from_utf8_lossy(&rec.stdout).contains("ok foo-1-1"));
}

#[test]
fn shell_and_python_run_in_the_task_directory() {
    let t = Task::new(
        "name: t\nactions:\n  - shell: ['bash ./mycheck.sh --out ${workdir}/out.txt', 'pwd > ${artifactsdir}/shell-cwd']\n  - python: {file: check.py, callable: run, artifactsdir: '${artifactsdir}'}\n  - shell: ['cat ${workdir}/out.txt']\n    export: out\n  - dummy: {result: PASSED, msg: '${out}'}\n",
    )
    .file("mycheck.sh", "echo \"ran from $(pwd)\" > \"$2\"\n")
    .file(
        "check.py",
        "import os\ndef run(artifactsdir):\n    open(os.path.join(artifactsdir, 'py-cwd'), 'w').write(os.getcwd())\n    assert open('mycheck.sh').read()\n",
    );
    let (r, rec) = t.run();
    assert_eq!(
        r.execution_status,
        ExecutionStatus::Ok,
        "{}{}",
        rec.runner,
        String::from_utf8_lossy(&rec.out)
    );
    let taskdir = std::fs::canonicalize(t.path()).unwrap();
    let read = |f: &str| std::fs::read_to_string(t.path().join("artifacts").join(f)).unwrap();
    assert_eq!(read("shell-cwd").trim(), taskdir.to_str().unwrap());
    assert_eq!(read("py-cwd"), taskdir.to_str().unwrap());
}
