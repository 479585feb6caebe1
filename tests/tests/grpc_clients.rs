//! Any gRPC client reaches miniond: a stock Python grpcio client (PyPI), default channel options,
//! no generated code: health, reflection (v1alpha and v1), SubmitJob, WatchJob to the end.

mod common;
use common::*;

fn step<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["step"] == name)
        .unwrap_or_else(|| panic!("no {name} step in {lines:?}"))
}

fn assert_full_session(ok: bool, lines: &[Value]) {
    assert!(ok, "the client failed: {lines:?}");
    assert_eq!(step(lines, "health")["status"], "SERVING");
    for reflection in ["reflection_v1alpha", "reflection_v1"] {
        let services = step(lines, reflection)["services"].to_string();
        for want in ["minion.v1.controller.Controller", "grpc.health.v1.Health"] {
            assert!(services.contains(want), "{reflection}: {services}");
        }
    }
    let watch = step(lines, "watch");
    assert_eq!(watch["state"], "FINISHED", "{lines:?}");
    assert!(watch["log_bytes"].as_u64() > Some(0), "{lines:?}");
    assert!(watch["lifecycle_events"].as_u64() >= Some(4), "{lines:?}");
}

#[test]
fn a_stock_python_grpcio_client_works_on_the_unix_socket() {
    let py = grpc_python();
    let need = minion_testenv::Need::File {
        path: &py,
        make: "scripts/setup-host.sh",
    };
    if !vm_env_with(
        "a_stock_python_grpcio_client_works_on_the_unix_socket",
        &[need],
    ) {
        return;
    }
    let d = Daemon::start(1, 0);
    let repo = task_repo(PASSING);
    let target = format!("unix:{}", d.socket.display());
    let (ok, lines) = grpc_python_client(&target, repo.path(), &[]);
    assert_full_session(ok, &lines);
    let id = step(&lines, "submit")["id"]
        .as_str()
        .expect("job id")
        .to_string();
    assert_eq!(d.job(&id)["state"], "FINISHED");
    assert!(
        !d.log().contains("closing a client connection"),
        "{}",
        d.log()
    );
}

#[test]
fn a_stock_python_grpcio_client_works_over_tls_with_a_token() {
    let py = grpc_python();
    let need = [
        minion_testenv::Need::File {
            path: &py,
            make: "scripts/setup-host.sh",
        },
        minion_testenv::Need::Program("openssl"),
    ];
    if !vm_env_with(
        "a_stock_python_grpcio_client_works_over_tls_with_a_token",
        &need,
    ) {
        return;
    }
    let t = TlsDaemon::start(1);
    let repo = task_repo(PASSING);
    let (ok, lines) = grpc_python_client(
        &format!("localhost:{}", t.port),
        repo.path(),
        &[
            "--ca",
            t.pki.ca.to_str().expect("utf8"),
            "--token",
            &t.tokens["submit"],
        ],
    );
    assert_full_session(ok, &lines);
    let id = step(&lines, "submit")["id"]
        .as_str()
        .expect("job id")
        .to_string();
    assert_eq!(t.d.job(&id)["submitter"], "token:submit-bot");
}
