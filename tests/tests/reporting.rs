//! REPORTING end to end: real miniond, real VMs, and the ResultsDB stand-in (minion-testenv:
//! a local HTTP server checking what ResultsDB checks). The guest has no network: the daemon
//! posts each result from its outbox, with the job as the group and `ref_url`s into its
//! artifacts; namespaces are authorised; a 4xx is kept on the job; ResultsDB down and a daemon
//! restart meanwhile still give every result exactly once.

mod common;

use common::*;
use minion_testenv::resultsdb::ResultsDbStandIn;

/// The `[reporting]` config, and `listen_http` on `port` (prepended: top-level keys come before
/// the tables).
fn reporting(rdb: &ResultsDbStandIn, port: u16) -> String {
    format!(
        "listen_http = \"127.0.0.1:{port}\"\n[reporting]\nresultsdb_url = \"{}/api/v2.0/\"\nauth_header = \"Bearer e2e-secret\"\n\
         artifacts_base_url = \"http://127.0.0.1:{port}\"\nsafe_namespaces = [\"scratch\"]\nwait_seconds = 5\n\
         [reporting.namespaces]\nqa = [\"/\"]\n",
        rdb.url
    )
}

/// A task whose results are written as given, in namespace `ns`.
fn results_task(ns: &str, results: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("task");
    let indented: String = results
        .lines()
        .map(|l| format!("          {l}\n"))
        .collect();
    std::fs::write(
        d.path().join("runtask.yml"),
        format!(
            "name: reported\nnamespace: {ns}\ninput:\n  args: [koji_build]\nactions:\n  - name: log\n    shell:\n      - echo the log > ${{artifactsdir}}/check.log\n  - name: report\n    resultsdb:\n      results: |\n{indented}"
        ),
    )
    .expect("formula");
    d
}

fn result(check: &str, outcome: &str, artifact: &str) -> String {
    format!(
        "- item: foo-1.0-1.fc40\n  type: koji_build\n  checkname: {check}\n  outcome: {outcome}\n  note: n\n  artifact: {artifact}\n"
    )
}

/// A ResultYAML document of these results.
fn results_doc(results: &[String]) -> String {
    let items: String = results
        .iter()
        .flat_map(|r| r.lines().map(|l| format!("  {l}\n")).collect::<Vec<_>>())
        .collect();
    format!("results:\n{items}")
}

fn finished(d: &Daemon, id: &str) -> Value {
    let j = d.wait_state(
        id,
        &["FINISHED", "FAILED", "TIMED_OUT"],
        Duration::from_secs(120),
    );
    assert_eq!(j["state"], "FINISHED", "{j:#}\n{}", d.log());
    d.assert_no_vm(id);
    j
}

#[test]
fn results_are_reported_from_the_host_into_resultsdb() {
    if !vm_env("results_are_reported_from_the_host_into_resultsdb") {
        return;
    }
    let rdb = ResultsDbStandIn::start();
    let port = free_port();
    let d = Daemon::start_with(1, 0, &reporting(&rdb, port));
    let base = format!("http://127.0.0.1:{port}");
    let body = results_doc(&[
        result("good", "PASSED", "${artifactsdir}/check.log"),
        result("elsewhere", "FAILED", "/etc/passwd"),
        result("odd", "WAIVED", "check.log"),
    ]);
    let task = results_task("qa", &body);
    let id = d.submit(task.path(), &[]);
    let j = finished(&d, &id);
    assert!(states(&j).contains(&"REPORTING".to_string()), "{j:#}");
    assert_eq!(j["execution_status"], "OK");

    // Two posted; WAIVED is not an outcome ResultsDB knows: refused with its message, kept.
    let posted = rdb.results();
    assert_eq!(posted.len(), 2, "{posted:#?}");
    let good = &posted[0];
    assert_eq!(good["testcase"]["name"], "qa.good");
    assert_eq!(good["outcome"], "PASSED");
    assert_eq!(good["data"]["item"], "foo-1.0-1.fc40");
    assert_eq!(good["data"]["type"], "koji_build");
    assert_eq!(good["data"]["arch"], "x86_64");
    assert_eq!(good["groups"][0]["uuid"], id.as_str());
    assert_eq!(good["groups"][0]["ref_url"], format!("{base}/jobs/{id}"));
    assert_eq!(
        good["ref_url"],
        format!("{base}/jobs/{id}/artifacts/task_output/check.log"),
        "an artifact of the job: its own URL"
    );
    // The ref_urls answer: miniond serves the job's artifacts, and its page.
    let url = good["ref_url"].as_str().expect("ref_url");
    assert_eq!(http_get(url), (200, "the log\n".to_string()));
    assert_eq!(http_get(&format!("{base}/jobs/{id}/artifacts/")).0, 200);
    assert_eq!(http_get(&format!("{base}/jobs/{id}")).0, 200);
    assert_eq!(
        posted[1]["ref_url"],
        format!("{base}/jobs/{id}/artifacts/"),
        "an artifact outside the job is dropped: the job's artifacts"
    );
    let r = &j["reporting"];
    assert_eq!(
        (r["posted"].as_u64(), r["pending"].as_u64()),
        (Some(2), Some(0)),
        "{j:#}"
    );
    assert_eq!(r["refused"][0]["testcase"], "qa.odd");
    assert_eq!(
        r["refused"][0]["reason"],
        "400: outcome: `WAIVED` is not one of PASSED, INFO, FAILED, NEEDS_INSPECTION"
    );
    assert!(rdb
        .auth_headers()
        .iter()
        .all(|h| h.as_deref() == Some("Bearer e2e-secret")));
    let shown = d.cli(&["job", "show", &id]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("reported 2 / refused (1: qa.odd: 400:"),
        "{text}"
    );

    // A namespace the task's repo may not post into: refused before posting, visible.
    let closed = results_task("dist", &results_doc(&[result("c", "PASSED", "x")]));
    let id2 = d.submit(closed.path(), &[]);
    let j2 = finished(&d, &id2);
    assert_eq!(rdb.results().len(), 2, "nothing posted into `dist`");
    let why = j2["reporting"]["refused"][0]["reason"]
        .as_str()
        .unwrap_or("");
    assert!(
        why.starts_with("namespace `dist` is not open to tasks from"),
        "{j2:#}"
    );
}

#[test]
fn resultsdb_down_across_a_daemon_restart_still_gets_each_result_once() {
    if !vm_env("resultsdb_down_across_a_daemon_restart_still_gets_each_result_once") {
        return;
    }
    let rdb = ResultsDbStandIn::start();
    rdb.set_down(true);
    let mut d = Daemon::start_with(1, 0, &reporting(&rdb, free_port()));
    let body = results_doc(&[
        result("one", "PASSED", "check.log"),
        result("two", "FAILED", "check.log"),
    ]);
    let task = results_task("qa", &body);
    let id = d.submit(task.path(), &[]);
    // The job ends although ResultsDB is down: its execution does not depend on reporting.
    let j = finished(&d, &id);
    assert_eq!(j["reporting"]["pending"], 2, "{j:#}");
    assert!(rdb.results().is_empty());

    d.kill9();
    d.spawn();
    assert_eq!(d.job(&id)["reporting"]["pending"], 2, "the outbox survived");
    rdb.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let j = d.job(&id);
        if j["reporting"]["pending"] == 0 {
            assert_eq!(j["reporting"]["posted"], 2, "{j:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still pending: {j:#}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let posted = rdb.results();
    let mut names: Vec<&str> = posted
        .iter()
        .filter_map(|r| r["testcase"]["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["qa.one", "qa.two"], "each result exactly once");
    assert_eq!(d.job(&id)["state"], "FINISHED");
}
