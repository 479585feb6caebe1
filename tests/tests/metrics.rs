//! `/metrics` after real jobs: parsed and linted by Prometheus's own `promtool`, each lifecycle
//! phase observed, OpenMetrics when the scraper asks for it.

mod common;
use common::*;
use minion_testenv::Need;

#[test]
fn metrics_after_real_jobs_pass_promtool_and_observe_every_phase() {
    let test = "metrics_after_real_jobs_pass_promtool_and_observe_every_phase";
    if !vm_env_with(test, &[Need::Program("promtool")]) {
        return;
    }
    let port = free_port();
    let d = Daemon::start_with(1, 0, &format!("listen_http = \"127.0.0.1:{port}\""));
    let pass = task_repo(PASSING);
    let fail = task_repo(FAILING);
    let a = d.submit(pass.path(), &[]);
    let b = d.submit(fail.path(), &[]);
    d.wait_state(&a, &["FINISHED"], Duration::from_secs(120));
    d.wait_state(&b, &["FINISHED"], Duration::from_secs(120));
    let url = format!("http://127.0.0.1:{port}/metrics");
    // A job's end is written once its VM is paused; its teardown is observed right after.
    until("both teardowns observed", TEARDOWN_AFTER_END, || {
        http_get_with(&url, &[])
            .2
            .contains("minion_vm_teardown_duration_seconds_count 2")
    });
    let (status, head, text) = http_get_with(&url, &[]);
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let (ok, lint) = promtool_check(&text);
    assert!(ok && lint.trim().is_empty(), "promtool: {lint}\n{text}");
    for want in [
        "# TYPE minion_jobs_ended_total counter",
        "minion_jobs_ended_total{state=\"FINISHED\",pool=\"minimal\"} 2",
        "# TYPE minion_job_phase_duration_seconds histogram",
        "minion_vm_teardown_duration_seconds_count 2",
        "minion_vms_ready{pool=\"minimal\"} 0",
        "minion_build_info{version=\"",
    ] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
    for phase in ["queue_wait", "provisioning", "boot", "run", "collect"] {
        let want = format!(
            "minion_job_phase_duration_seconds_count{{phase=\"{phase}\",pool=\"minimal\"}} 2"
        );
        assert!(text.contains(&want), "{want} not in:\n{text}");
    }
    assert!(!text.contains("minion_boot_failures_total{"), "{text}");

    // A scraper that asks for OpenMetrics gets it.
    let (status, head, om) = http_get_with(
        &url,
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    );
    assert_eq!(status, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(
        om.contains("# UNIT minion_job_phase_duration_seconds seconds"),
        "{om}"
    );
}
