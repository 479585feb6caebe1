//! miniond end to end: a real `miniond` process (own config, state dir and socket), real VMs on the
//! `minimal` image under the real libvirtd, driven through the real `minion` CLI (so every check
//! covers the gRPC API and the CLI's messages/exit codes together).
//!
//! Needs: libvirtd running (`scripts/libvirt-start.sh`), the `minimal` image (`make image`), and the
//! static agent (`scripts/build-agent.sh` → `target/agent/minion-agent`). Env overrides:
//! `MINION_AGENT_BINARY`, `MINION_IMAGES_DIR`, `MINION_LIBVIRT_URI`.

mod common;

use common::*;

#[test]
fn passing_task_finishes_with_artifacts_and_leaves_nothing() {
    if !vm_env("passing_task_finishes_with_artifacts_and_leaves_nothing") {
        return;
    }
    let d = Daemon::start(2, 0);
    let repo = task_repo(PASSING);
    let out = d.submit_follow(repo.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{stderr}\n{}",
        d.log()
    );
    assert!(
        stdout.contains("checking the item now"),
        "live log: {stdout}"
    );
    assert!(stderr.contains("FINISHED (execution OK"), "{stderr}");

    let jobs = d.json(&["job", "list"]);
    let j = &jobs.as_array().expect("list")[0];
    let id = j["id"].as_str().expect("id");
    assert_eq!(j["state"], "FINISHED");
    assert_eq!(j["execution_status"], "OK");
    // REPORTING is entered only when results are reported somewhere; nothing is configured here.
    assert_eq!(
        states(j),
        [
            "QUEUED",
            "PROVISIONING",
            "BOOTING",
            "RUNNING",
            "COLLECTING",
            "FINISHED"
        ]
    );
    // Artifacts through the API.
    let listed = d.json(&["job", "artifacts", id]);
    let paths: Vec<&str> = listed
        .as_array()
        .expect("artifacts")
        .iter()
        .filter_map(|a| a["path"].as_str())
        .collect();
    for want in [
        "minion.log",
        "console.log",
        "task_output/out.txt",
        "results.yaml",
    ] {
        assert!(paths.contains(&want), "{want} not in {paths:?}");
    }
    let got = d.cli(&["job", "artifacts", id, "--get", "task_output/out.txt"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "e2e-artifact\n");
    let log = d.cli(&["job", "logs", id]);
    assert!(String::from_utf8_lossy(&log.stdout).contains("checking the item now"));
    let escape = d.cli(&["job", "artifacts", id, "--get", "../../jobs.db"]);
    assert_eq!(escape.status.code(), Some(2));

    // `job show` names every step with a duration.
    let show = d.cli(&["job", "show", id]);
    let text = String::from_utf8_lossy(&show.stdout);
    for step in [
        "PROVISIONING",
        "BOOTING",
        "RUNNING",
        "COLLECTING",
        "FINISHED",
    ] {
        assert!(text.contains(step), "{text}");
    }
    assert!(text.contains(" ms") || text.contains(" s"), "{text}");
    d.assert_no_vm(id);
    assert!(!d.state_dir().join("tasks").join(id).exists());
}

#[test]
fn failing_task_is_finished_not_ok_and_the_cli_exits_non_zero() {
    if !vm_env("failing_task_is_finished_not_ok_and_the_cli_exits_non_zero") {
        return;
    }
    let d = Daemon::start(2, 0);
    let repo = task_repo(FAILING);
    let out = d.submit_follow(repo.path());
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("about to fail"));
    let jobs = d.json(&["job", "list"]);
    let j = &jobs.as_array().expect("list")[0];
    assert_eq!(j["state"], "FINISHED", "{j:#}");
    assert_eq!(j["execution_status"], "NOT_OK", "{j:#}");
    assert_ne!(j["exit_code"], 0);
    d.assert_no_vm(j["id"].as_str().expect("id"));
}

#[test]
fn timeout_ends_timed_out_and_the_vm_is_gone() {
    if !vm_env("timeout_ends_timed_out_and_the_vm_is_gone") {
        return;
    }
    let d = Daemon::start(2, 0);
    let repo = task_repo(SLEEPING);
    let id = d.submit(repo.path(), &["--timeout", "8"]);
    let t = Instant::now();
    let j = d.wait_state(
        &id,
        &["TIMED_OUT", "FINISHED", "FAILED"],
        Duration::from_secs(120),
    );
    assert_eq!(j["state"], "TIMED_OUT", "{j:#}");
    assert!(t.elapsed() >= Duration::from_secs(8));
    assert!(states(&j).contains(&"RUNNING".to_string()), "{j:#}");
    d.assert_no_vm(&id);
}

#[test]
fn cancel_while_running() {
    if !vm_env("cancel_while_running") {
        return;
    }
    let d = Daemon::start(2, 0);
    let repo = task_repo(SLEEPING);
    let id = d.submit(repo.path(), &[]);
    d.wait_state(&id, &["RUNNING"], Duration::from_secs(120));
    let out = d.cli(&["job", "cancel", &id]);
    assert!(out.status.success(), "{out:?}");
    let j = d.wait_state(
        &id,
        &["CANCELLED", "FAILED", "FINISHED"],
        Duration::from_secs(60),
    );
    assert_eq!(j["state"], "CANCELLED", "{j:#}");
    d.assert_no_vm(&id);
    // A final job cannot be cancelled again: a clear refusal.
    let again = d.cli(&["job", "cancel", &id]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already CANCELLED"));
}

#[test]
fn kill_9_mid_running_then_restart_reconciles_and_requeues() {
    if !vm_env("kill_9_mid_running_then_restart_reconciles_and_requeues") {
        return;
    }
    let mut d = Daemon::start(1, 0);
    let sleeper = task_repo(SLEEPING);
    let quick = task_repo(PASSING);
    let running = d.submit(sleeper.path(), &[]);
    let queued = d.submit(quick.path(), &[]);
    d.wait_state(&running, &["RUNNING"], Duration::from_secs(120));
    assert_eq!(d.job(&queued)["state"], "QUEUED");
    let domain = format!("minion-{running}");
    assert!(running_domains().contains(&domain));

    d.kill9();
    // The VM dies with the daemon's libvirt connection (autodestroy; a restored VM's agent
    // powers it off when its channel closes): nothing of it runs on unsupervised.
    until(
        "the VM gone with the daemon",
        Duration::from_secs(15),
        || !running_domains().contains(&domain),
    );
    d.spawn();

    let j = d.job(&running);
    let st = states(&j);
    let failed_at = st.iter().position(|s| s == "FAILED").expect("FAILED event");
    assert_eq!(st[failed_at + 1], "QUEUED", "{j:#}");
    let reason = &j["events"][failed_at]["message"];
    assert_eq!(reason, "daemon restart", "{j:#}");
    assert_eq!(j["attempt"], 1);
    // Requeued: cancel its second attempt so the queued job gets the pool's only slot.
    let out = d.cli(&["job", "cancel", &running]);
    assert!(out.status.success(), "{out:?}");
    d.wait_state(&running, &["CANCELLED"], Duration::from_secs(120));
    let q = d.wait_state(&queued, &["FINISHED", "FAILED"], Duration::from_secs(180));
    assert_eq!(q["state"], "FINISHED", "{q:#}");
    assert_eq!(q["execution_status"], "OK");
    d.assert_no_vm(&running);
    d.assert_no_vm(&queued);
    let vms: Vec<_> = std::fs::read_dir(d.state_dir().join("vms"))
        .map(|r| r.flatten().collect())
        .unwrap_or_default();
    assert!(vms.is_empty(), "left in vms/: {vms:?}");
}

#[test]
fn twenty_jobs_on_a_pool_of_two_never_exceed_two_vms() {
    if !vm_env("twenty_jobs_on_a_pool_of_two_never_exceed_two_vms") {
        return;
    }
    let d = Daemon::start(2, 0);
    let repo = task_repo(PASSING);
    let ids: Vec<String> = (0..20).map(|_| d.submit(repo.path(), &[])).collect();
    let watcher = AliveSampler::start(&d.state_dir());
    let t = Instant::now();
    for id in &ids {
        let j = d.wait_state(
            id,
            &["FINISHED", "FAILED", "TIMED_OUT"],
            Duration::from_secs(480),
        );
        assert_eq!(j["state"], "FINISHED", "{j:#}");
        assert_eq!(j["execution_status"], "OK", "{j:#}");
    }
    let elapsed = t.elapsed();
    let max_alive = watcher.finish();
    eprintln!(
        "20 jobs on a pool of 2: {:.1} s, {:.1} jobs/min, at most {max_alive} VMs alive",
        elapsed.as_secs_f64(),
        20.0 * 60.0 / elapsed.as_secs_f64()
    );
    assert!(max_alive <= 2, "{max_alive} VMs alive at once");
    assert!(max_alive >= 1, "the watcher never saw a VM");
    for id in &ids {
        d.assert_no_vm(id);
    }
}

#[test]
fn bad_input_is_refused_clearly_and_creates_nothing() {
    if !vm_env("bad_input_is_refused_clearly_and_creates_nothing") {
        return;
    }
    let d = Daemon::start(2, 0);
    let repo = task_repo(PASSING);
    let r = repo.path().to_str().expect("utf8");
    let cases: [(&[&str], &str); 6] = [
        (
            &["submit", r, "-i", "x", "-t", "koji_build", "--pool", "nope"],
            "no pool named `nope` (pools: minimal)",
        ),
        (
            &[
                "submit",
                r,
                "-i",
                "x",
                "-t",
                "koji_build",
                "-f",
                "missing.yml",
            ],
            "formula: `missing.yml` not found in repo",
        ),
        (
            &[
                "submit",
                "file:///nonexistent/minion-e2e.git",
                "-i",
                "x",
                "-t",
                "koji_build",
            ],
            "no such directory on the daemon's host",
        ),
        (
            &["submit", "/usr", "-i", "x", "-t", "koji_build"],
            "refused: repo /usr: local task repos are accepted only under the configured roots",
        ),
        (
            &["submit", r, "-i", "x", "-t", "kojibuild"],
            "item_type: `kojibuild` is not one of",
        ),
        (
            &[
                "submit",
                "/nonexistent/task-dir",
                "-i",
                "x",
                "-t",
                "koji_build",
            ],
            "no such directory",
        ),
    ];
    for (args, want) in cases {
        let out = d.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(d.json(&["job", "list"]), Value::Array(vec![]));
    let tasks: Vec<_> = std::fs::read_dir(d.state_dir().join("tasks"))
        .map(|r| r.flatten().collect())
        .unwrap_or_default();
    assert!(tasks.is_empty(), "half-created: {tasks:?}");

    // No daemon: a clear message naming the socket.
    let missing = d.state.path().join("nobody.sock");
    let out = Command::new(&d.minion)
        .args(["job", "list"])
        .env("MINION_SOCKET", &missing)
        .output()
        .expect("minion runs");
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("miniond is not running"), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
}

/// A channel to the daemon's unix socket for the generic gRPC clients below.
async fn grpc_channel(socket: &Path) -> tonic::transport::Channel {
    let path = socket.to_path_buf();
    tonic::transport::Endpoint::try_from("http://[::1]:50051")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .expect("connect to miniond")
}

#[test]
fn health_and_reflection_answer_as_grpcurl_needs() {
    if !vm_env("health_and_reflection_answer_as_grpcurl_needs") {
        return;
    }
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let d = Daemon::start(1, 0);
    // The socket is the `minion` group's, 0660 (the defaults): root and the group may connect.
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&d.socket).expect("socket");
        assert_eq!(meta.mode() & 0o777, 0o660);
        let group = Command::new("getent")
            .args(["group", "minion"])
            .output()
            .expect("getent");
        let gid: u32 = String::from_utf8_lossy(&group.stdout)
            .split(':')
            .nth(2)
            .and_then(|g| g.trim().parse().ok())
            .expect("the minion group (scripts/setup-host.sh makes it)");
        assert_eq!(meta.gid(), gid);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ch = grpc_channel(&d.socket).await;
        let status = HealthClient::new(ch.clone())
            .check(HealthCheckRequest {
                service: "minion.v1.controller.Controller".into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(status, 1, "SERVING");
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = ServerReflectionClient::new(ch)
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .expect("reflection")
            .into_inner();
        let first = resp
            .message()
            .await
            .expect("reflection answer")
            .expect("one message");
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("unexpected reflection answer: {first:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.contains(&"minion.v1.controller.Controller".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"grpc.health.v1.Health".to_string()),
            "{names:?}"
        );

        // v1alpha too: what Python's grpcio-reflection asks.
        use tonic_reflection::pb::v1alpha as alpha;
        let req = alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        let ch = grpc_channel(&d.socket).await;
        let first = alpha::server_reflection_client::ServerReflectionClient::new(ch)
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .expect("reflection v1alpha")
            .into_inner()
            .message()
            .await
            .expect("reflection v1alpha answer")
            .expect("one message");
        let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            first.message_response
        else {
            panic!("unexpected v1alpha answer: {first:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.contains(&"minion.v1.controller.Controller".to_string()),
            "{names:?}"
        );
    });
}

#[test]
fn sigterm_destroys_running_vms_and_the_restart_requeues() {
    if !vm_env("sigterm_destroys_running_vms_and_the_restart_requeues") {
        return;
    }
    let mut d = Daemon::start(1, 0);
    let sleeper = task_repo(SLEEPING);
    let id = d.submit(sleeper.path(), &[]);
    d.wait_state(&id, &["RUNNING"], Duration::from_secs(120));
    d.terminate();
    // Gone at shutdown, not only at the next start.
    d.assert_no_vm(&id);
    assert!(!d.socket.exists(), "socket removed at shutdown");
    d.spawn();
    let j = d.job(&id);
    let st = states(&j);
    assert!(st.contains(&"FAILED".to_string()), "{j:#}");
    assert_eq!(j["attempt"], 1, "{j:#}");
    let out = d.cli(&["job", "cancel", &id]);
    assert!(out.status.success(), "{out:?}");
    d.wait_state(&id, &["CANCELLED"], Duration::from_secs(120));
    d.assert_no_vm(&id);
}

#[test]
fn a_second_daemon_on_the_same_libvirtd_leaves_the_first_ones_vms_alone() {
    if !vm_env("a_second_daemon_on_the_same_libvirtd_leaves_the_first_ones_vms_alone") {
        return;
    }
    // The original system's concurrent instances removed each other's VMs. Two daemons (two state
    // dirs) on one libvirtd: the second one's start-up reconcile must not touch the first one's
    // running VM, whose job it does not know.
    let a = Daemon::start(1, 0);
    let sleeper = task_repo(SLEEPING);
    let running = a.submit(sleeper.path(), &[]);
    a.wait_state(&running, &["RUNNING"], Duration::from_secs(120));
    let domain = format!("minion-{running}");

    let b = Daemon::start(1, 0);
    let quick = task_repo(PASSING);
    let other = b.submit(quick.path(), &[]);
    let j = b.wait_state(&other, &["FINISHED", "FAILED"], Duration::from_secs(180));
    assert_eq!(j["state"], "FINISHED", "{j:#}");
    b.assert_no_vm(&other);

    assert!(
        running_domains().contains(&domain),
        "the second daemon destroyed the first one's VM\n--- second miniond ---\n{}",
        b.log()
    );
    assert_eq!(a.job(&running)["state"], "RUNNING");
    let out = a.cli(&["job", "cancel", &running]);
    assert!(out.status.success(), "{out:?}");
    a.wait_state(&running, &["CANCELLED"], Duration::from_secs(60));
    a.assert_no_vm(&running);
}

#[test]
fn an_idempotency_key_submitted_twice_makes_one_job() {
    if !vm_env("an_idempotency_key_submitted_twice_makes_one_job") {
        return;
    }
    let d = Daemon::start(1, 0);
    let repo = task_repo(PASSING);
    let key = "4e1b8d3c-8d3e-4a8a-9d5e-0c2f6f1d9a10/python-check/x86_64";
    let first = d.submit(repo.path(), &["--idempotency-key", key]);
    let again = d.submit(repo.path(), &["--idempotency-key", key]);
    assert_eq!(first, again, "a redelivered submission makes no second job");
    let other = d.submit(repo.path(), &[]);
    assert_ne!(other, first);
    let j = d.job(&first);
    assert_eq!(j["idempotency_key"], key);
    let listed = d.json(&["job", "list", "--item", "foo-1.0-1.fc40"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed:#}");
    for id in [&first, &other] {
        let j = d.wait_state(id, &["FINISHED", "FAILED"], Duration::from_secs(120));
        assert_eq!(j["state"], "FINISHED", "{j:#}");
        d.assert_no_vm(id);
    }
    // Still one job for the key after both ran.
    assert_eq!(d.submit(repo.path(), &["--idempotency-key", key]), first);
}
