//! The real agent binary against the real host side (`minion_channel::run_session`), over a unix
//! socket instead of a virtio port: the whole protocol, the formula run, live logs, artifacts and the
//! result, without a VM. The VM variant of this lives in `tests/tests/vm_agent.rs`.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use minion_channel::{run_session, ChannelError, JobSpec, Limits, LogStream, SessionEvent};
use tokio::{net::UnixListener, sync::mpsc};
use tokio_util::sync::CancellationToken;

const FORMULA: &str = r#"
name: channel-e2e
desc: a shell step, a python step returning ResultYAML, an artifact
maintainer: minion
input:
  args: [koji_build]
actions:
  - name: shell step
    shell:
      - echo "hello from ${koji_build}"
      - echo "to stderr" >&2
      - echo artifact-data > ${artifactsdir}/out.txt
  - name: slow step
    shell:
      - sleep ${naptime}
  - name: python step
    python:
      file: check.py
      callable: run
      item: ${koji_build}
    export: results
  - name: report
    resultsdb:
      results: ${results}
"#;

const CHECK_PY: &str = r#"
def run(item, **kwargs):
    print("python says hi")
    return """results:
  - item: %s
    type: koji_build
    checkname: minion.e2e
    outcome: PASSED
""" % item
"#;

struct Agent {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the agent against a fresh socket; returns it and the accepted host end.
async fn start_agent() -> (Agent, tokio::net::UnixStream) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("channel.sock");
    let listener = UnixListener::bind(&sock).expect("bind");
    let child = Command::new(env!("CARGO_BIN_EXE_minion-agent"))
        .arg("--connect")
        .arg(&sock)
        .arg("--workdir")
        .arg(dir.path().join("guest"))
        .arg("--no-poweroff")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn agent");
    let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("agent connects")
        .expect("accept");
    (Agent { child, _dir: dir }, stream)
}

fn task_tree(dir: &Path) {
    std::fs::write(dir.join("runtask.yml"), FORMULA).expect("formula");
    std::fs::write(dir.join("check.py"), CHECK_PY).expect("check.py");
}

fn job(nap: &str) -> JobSpec {
    JobSpec {
        id: "agent-test".into(),
        item: "foo-1.0-1.fc40".into(),
        item_type: "koji_build".into(),
        arch: "x86_64".into(),
        formula_path: "runtask.yml".into(),
        variables: [("naptime".to_string(), nap.to_string())].into(),
        timeout: Duration::from_secs(60),
        ..JobSpec::default()
    }
}

#[tokio::test]
async fn agent_runs_a_formula_and_returns_logs_artifacts_and_result() {
    let (mut agent, stream) = start_agent().await;
    let task = tempfile::tempdir().expect("tempdir");
    task_tree(task.path());
    let art = tempfile::tempdir().expect("tempdir");
    let (tx, mut rx) = mpsc::channel(1024);
    let outcome = run_session(
        stream,
        &job("0"),
        task.path(),
        art.path(),
        &Limits::default(),
        tx,
        CancellationToken::new(),
    )
    .await
    .expect("session");
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    let stdout: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Log {
                stream: LogStream::Stdout,
                data,
            } => Some(data.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let stdout = String::from_utf8_lossy(&stdout);
    assert!(stdout.contains("hello from foo-1.0-1.fc40"), "{stdout}");
    assert!(stdout.contains("python says hi"), "{stdout}");
    assert!(events
        .iter()
        .any(|e| matches!(e, SessionEvent::Action { name, .. } if name == "python step")));
    assert!(outcome.execution_status_ok, "{outcome:?}");
    assert_eq!(outcome.exit_code, 0);
    assert!(
        outcome.results_yaml.contains("minion.e2e"),
        "{}",
        outcome.results_yaml
    );
    assert!(outcome.tap.contains("ok"), "{}", outcome.tap);
    assert_eq!(
        std::fs::read_to_string(art.path().join("task_output/out.txt")).expect("artifact"),
        "artifact-data\n"
    );
    assert!(art.path().join("results.yaml").exists());
    let status = agent.child.wait().expect("agent exits");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn cancel_stops_the_running_formula_quickly() {
    let (_agent, stream) = start_agent().await;
    let task = tempfile::tempdir().expect("tempdir");
    task_tree(task.path());
    let art = tempfile::tempdir().expect("tempdir");
    let (tx, mut rx) = mpsc::channel(1024);
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    // Cancel once the slow step has started.
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            if matches!(&e, SessionEvent::Action { name, .. } if name == "slow step") {
                trigger.cancel();
            }
        }
    });
    let started = Instant::now();
    let limits = Limits {
        cancel_grace: Duration::from_secs(10),
        ..Limits::default()
    };
    let result = run_session(
        stream,
        &job("300"),
        task.path(),
        art.path(),
        &limits,
        tx,
        cancel,
    )
    .await;
    assert!(matches!(result, Err(ChannelError::Cancelled)), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // The agent still sent what it had before stopping.
    assert!(art.path().join("task_output/out.txt").exists());
}
