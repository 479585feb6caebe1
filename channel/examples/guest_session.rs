//! Runs one guest-channel session against a socket and prints machine-readable timings.
//! Used by `scripts/bench-vm.sh` (domain start → Ready, artifact throughput).
//!
//! guest_session SOCKET TASK_DIR ARTIFACTS_DIR [FORMULA_PATH]
//! Prints `key=value` lines: ready_unix (wall clock of Ready, seconds), artifact_bytes,
//! artifact_secs, artifact_mb_s, exit_code, ok; live logs go to stderr.

use std::{
    io::Write,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use minion_channel::{connect_unix, run_session, JobSpec, Limits, SessionEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: guest_session SOCKET TASK_DIR ARTIFACTS_DIR [FORMULA_PATH]");
        return ExitCode::from(2);
    }
    let socket = PathBuf::from(&args[0]);
    let task = PathBuf::from(&args[1]);
    let artifacts = PathBuf::from(&args[2]);
    let formula = args.get(3).cloned().unwrap_or_else(|| "runtask.yml".into());
    let job = JobSpec {
        id: "bench".into(),
        item: "bench-1.0-1".into(),
        item_type: "koji_build".into(),
        arch: "x86_64".into(),
        formula_path: formula,
        timeout: Duration::from_secs(600),
        ..JobSpec::default()
    };
    let stream = match connect_unix(&socket, Duration::from_secs(60)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let (tx, mut rx) = mpsc::channel(1024);
    let printer = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            match e {
                SessionEvent::Ready { agent_version } => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default();
                    println!("ready_unix={:.3}", now.as_secs_f64());
                    eprintln!("agent {agent_version} ready");
                }
                SessionEvent::Log { data, .. } => {
                    let _ = std::io::stderr().write_all(&data);
                }
                SessionEvent::Action { index, name, state } => {
                    eprintln!("[action {index} {name}: {state:?}]");
                }
                SessionEvent::Heartbeat => {}
                SessionEvent::Collecting => eprintln!("[collecting artifacts]"),
            }
        }
    });
    let result = run_session(
        stream,
        &job,
        &task,
        &artifacts,
        &Limits::default(),
        tx,
        CancellationToken::new(),
    )
    .await;
    let _ = printer.await;
    match result {
        Ok(o) => {
            let secs = o.artifact_transfer.as_secs_f64();
            println!("artifact_bytes={}", o.artifact_bytes);
            println!("artifact_secs={secs:.3}");
            if secs > 0.0 {
                println!("artifact_mb_s={:.1}", o.artifact_bytes as f64 / secs / 1e6);
            }
            println!("exit_code={}", o.exit_code);
            println!("ok={}", o.execution_status_ok);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("session failed: {e}");
            ExitCode::FAILURE
        }
    }
}
