//! Running formulas end to end in-process: every directive, exports, exit codes, cancel.
#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic

mod common;

use common::Task;
use minion_formula::*;

#[test]
fn shell_streams_substitutes_and_exports() {
    let t = Task::new(
        "name: t\ninput: {args: [koji_build]}\nactions:\n  - shell:\n      - echo ${koji_build} $arch $taskname\n      - echo second\n    export: out\n  - shell: [\"echo 'got:$out' > $artifactsdir/out.txt\"]\n",
    );
    let (r, rec) = t.run();
    assert_eq!(r.execution_status, ExecutionStatus::Ok, "{}", rec.runner);
    assert_eq!(r.exit_code, 0);
    assert_eq!(
        String::from_utf8_lossy(&rec.out),
        "foo-1.0-1.fc40 x86_64 t\nsecond\n"
    );
    let out = std::fs::read_to_string(t.path().join("artifacts/out.txt")).unwrap();
    assert_eq!(out, "got:foo-1.0-1.fc40 x86_64 t\nsecond\n");
    assert_eq!(
        rec.actions,
        [
            (0, ActionState::Started),
            (0, ActionState::Succeeded),
            (1, ActionState::Started),
            (1, ActionState::Succeeded)
        ]
    );
}

#[test]
fn a_failing_command_fails_the_run_unless_ignored() {
    let t = Task::new("name: t\nactions:\n  - shell:\n      - ignorereturn: [exit 3]\n      - 'false'\n  - shell: [echo never]\n");
    let (r, rec) = t.run();
    assert_eq!(r.execution_status, ExecutionStatus::NotOk);
    assert_eq!(r.exit_code, EXIT_EXECUTION_FAILED);
    assert!(
        r.status_message
            .contains("runtask.yml:5:9: actions[0].shell[1]"),
        "{}",
        r.status_message
    );
    assert!(r.status_message.contains("exited with 1"));
    assert!(rec.runner.contains("(ignored: ignorereturn)"));
    assert!(rec.actions.contains(&(1, ActionState::Skipped)));
    assert!(!String::from_utf8_lossy(&rec.out).contains("never"));
}

#[test]
fn python_returns_resultyaml_which_resultsdb_keeps_and_exitcode_judges() {
    let t = Task::new(
        "name: t\nactions:\n  - python: {file: check.py, callable: run, nvr: '${koji_build}', n: 2}\n    export: res\n  - resultsdb: {results: '${res}'}\n  - exitcode: {result_worst: '${res}'}\n",
    )
    .file(
        "check.py",
        "import sys\ndef run(nvr, n):\n    print('checking', nvr, n)\n    sys.stderr.write('warn\\n')\n    return 'results:\\n  - item: %s\\n    type: koji_build\\n    checkname: demo\\n    outcome: FAILED\\n' % nvr\n",
    );
    let (r, rec) = t.run();
    assert_eq!(r.execution_status, ExecutionStatus::Ok, "{}", rec.runner);
    assert_eq!(r.exit_code, EXIT_CHECK_FAILED);
    assert_eq!(r.results.len(), 1);
    assert_eq!(r.results[0].outcome, Some(Outcome::Failed));
    assert!(String::from_utf8_lossy(&rec.stdout).contains("checking foo-1.0-1.fc40 2\n"));
    assert!(r
        .tap13()
        .contains("not ok - demo for Koji build foo-1.0-1.fc40 # FAIL\n"));
}

#[test]
fn a_python_exception_fails_with_its_traceback_in_the_log() {
    let t = Task::new("name: t\nactions:\n  - python: {file: check.py, callable: run}\n").file(
        "check.py",
        "def run():\n    raise ValueError('broken task')\n",
    );
    let (r, rec) = t.run();
    assert_eq!(r.exit_code, EXIT_EXECUTION_FAILED);
    let out = String::from_utf8_lossy(&rec.out);
    assert!(
        out.contains("Traceback") && out.contains("ValueError: broken task"),
        "{out}"
    );
}

#[test]
fn worst_exitcode_wins() {
    let passed = "results:\\n  - {item: a, type: b, checkname: c, outcome: PASSED}\\n";
    let failed = "results:\\n  - {item: a, type: b, checkname: c, outcome: PASSED}\\n  - {item: a, type: b, checkname: d, outcome: NEEDS_INSPECTION}\\n";
    let t = Task::new(&format!(
        "name: t\nactions:\n  - exitcode: {{result_worst: \"{failed}\"}}\n  - exitcode: {{result_last: \"{passed}\"}}\n"
    ));
    assert_eq!(t.run().0.exit_code, EXIT_CHECK_FAILED);
}

#[test]
fn an_unknown_variable_names_step_and_parameter() {
    let t = Task::new("name: t\nactions:\n  - name: greet\n    shell: ['echo $nobody']\n");
    let (r, _) = t.run();
    assert_eq!(r.exit_code, EXIT_EXECUTION_FAILED);
    assert!(
        r.status_message
            .contains(":4:13: actions[0].shell[0]: step `greet` failed: unknown variable `nobody`"),
        "{}",
        r.status_message
    );
}

#[test]
fn a_missing_input_is_bad_input() {
    let t = Task::new("name: t\ninput: {args: [compose]}\nactions:\n  - shell: ['true']\n");
    let (r, _) = t.run();
    assert_eq!(r.exit_code, EXIT_BAD_INPUT);
    assert!(r.status_message.contains("input.args[0]"));
    let mut c = t.config();
    c.args.insert("compose".into(), "Fedora-40".into());
    assert_eq!(t.run_with(c).0.exit_code, 0);
}

#[test]
fn services_that_are_not_here_fail_clearly() {
    let t =
        Task::new("name: t\nactions:\n  - koji: {action: download, koji_build: '$koji_build'}\n");
    let (r, _) = t.run();
    assert_eq!(r.exit_code, EXIT_EXECUTION_FAILED);
    assert!(
        r.status_message.contains("`koji` is not available here"),
        "{}",
        r.status_message
    );
}

#[test]
fn dummy_fail_raises() {
    let t = Task::new("name: t\nactions:\n  - dummy: {result: PASSED, msg: hi}\n    export: m\n  - dummy: {result: FAIL, msg: '$m'}\n");
    let (r, _) = t.run();
    assert!(
        r.status_message.contains("dummy step asked to fail: hi"),
        "{}",
        r.status_message
    );
}

#[test]
fn xunit_turns_junit_into_results() {
    let t = Task::new(
        "name: t\nactions:\n  - shell: ['cp j.xml ${workdir}/']\n  - xunit: {item: x, type: koji_build, checkname: unit, file: '${workdir}/j.xml', aggregation: none}\n    export: res\n  - resultsdb: {results: '$res'}\n",
    )
    .file("j.xml", r#"<testsuite><testcase name="a"/><testcase name="b"><failure message="no"/></testcase></testsuite>"#);
    let (r, rec) = t.run();
    assert_eq!(r.execution_status, ExecutionStatus::Ok, "{}", rec.runner);
    let names: Vec<_> = r
        .results
        .iter()
        .map(|c| (c.checkname.as_str(), c.outcome))
        .collect();
    assert_eq!(
        names,
        [
            ("unit.a", Some(Outcome::Passed)),
            ("unit.b", Some(Outcome::Failed))
        ]
    );
}

#[test]
fn cancel_kills_the_running_command() {
    let t = Task::new("name: t\nactions:\n  - shell: ['sleep 30']\n  - shell: ['echo after']\n");
    let cfg = t.config();
    let flag = cfg.cancel.clone();
    let started = std::time::Instant::now();
    let h = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        flag.cancel();
    });
    let (r, _) = t.run_with(cfg);
    h.join().unwrap();
    assert!(r.cancelled);
    assert_eq!(r.execution_status, ExecutionStatus::NotOk);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn reporting_to_an_unreachable_resultsdb_is_an_error_not_a_hang() {
    let t = Task::new("name: t\nactions:\n  - resultsdb: {results: \"results:\\n  - {item: a, type: b, checkname: c, outcome: PASSED}\\n\"}\n");
    let mut c = t.config();
    c.report = Some(ReportConfig {
        resultsdb_url: "http://127.0.0.1:9".into(),
        log_url: None,
        attempts: 2,
    });
    let (r, _) = t.run_with(c);
    assert_eq!(r.exit_code, EXIT_EXECUTION_FAILED);
    assert!(
        r.status_message.contains("127.0.0.1:9"),
        "{}",
        r.status_message
    );
}

/// An environment that has `have` and nothing else, and remembers what it was asked.
struct FakeEnvironment {
    have: Vec<&'static str>,
    asked: std::sync::Mutex<Vec<String>>,
}

impl Environment for FakeEnvironment {
    fn prepare(&self, packages: &[String], log: &mut dyn FnMut(&str)) -> Result<(), String> {
        self.asked.lock().unwrap().extend(packages.iter().cloned());
        match packages.iter().find(|p| !self.have.contains(&p.as_str())) {
            Some(p) => Err(format!("package `{p}` is not available")),
            None => {
                log("environment: all present");
                Ok(())
            }
        }
    }
}

#[test]
fn environment_packages_are_prepared_before_the_first_step() {
    let formula = "name: t\nenvironment:\n  rpm: [rpmlint, python3-rpm]\nactions:\n  - shell: ['echo ran > $artifactsdir/ran']\n";
    let t = Task::new(formula);
    let env = std::sync::Arc::new(FakeEnvironment {
        have: vec!["rpmlint", "python3-rpm"],
        asked: Default::default(),
    });
    let mut config = t.config();
    config.environment = Some(env.clone());
    let (r, rec) = t.run_with(config);
    assert_eq!(r.execution_status, ExecutionStatus::Ok, "{}", rec.runner);
    assert_eq!(*env.asked.lock().unwrap(), ["rpmlint", "python3-rpm"]);
    let said = rec.runner.find("environment: all present").expect("logged");
    assert!(
        said < rec.runner.find("step 0").expect("step ran"),
        "{}",
        rec.runner
    );
    assert!(t.path().join("artifacts/ran").exists());
}

#[test]
fn a_package_that_cannot_be_provided_fails_the_run_before_any_step() {
    let formula = "name: t\nenvironment:\n  rpm: [rpmlint, nonesuch]\nactions:\n  - shell: ['echo ran > $artifactsdir/ran']\n  - shell: ['true']\n";
    let t = Task::new(formula);
    let mut config = t.config();
    config.environment = Some(std::sync::Arc::new(FakeEnvironment {
        have: vec!["rpmlint"],
        asked: Default::default(),
    }));
    let (r, rec) = t.run_with(config);
    assert_eq!(r.execution_status, ExecutionStatus::NotOk);
    assert_eq!(r.exit_code, EXIT_EXECUTION_FAILED);
    assert_eq!(
        r.status_message,
        "environment: package `nonesuch` is not available"
    );
    assert_eq!(
        rec.actions,
        [(0, ActionState::Skipped), (1, ActionState::Skipped)]
    );
    assert!(!t.path().join("artifacts/ran").exists());

    // A runner with no way to provide packages says so, naming them.
    let (r, _) = t.run();
    assert_eq!(r.execution_status, ExecutionStatus::NotOk);
    assert_eq!(
        r.status_message,
        "environment: this runner cannot provide packages (rpmlint, nonesuch)"
    );
}
