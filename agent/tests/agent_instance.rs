//! The real agent binary as an instance against the real host side (`ReadySession::attach`), over a
//! unix socket instead of a virtio port: commands on pipes and on a pseudo-terminal, exit codes,
//! signals, resizes, several at once, and the host hanging up. The VM variant is in
//! `tests/tests/instances.rs`.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use minion_channel::{
    handshake, AttachedSession, ExecControl, ExecEvent, ExecSpec, ExecStream, InstanceLink, Limits,
};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

struct Agent {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn attached() -> (
    Agent,
    InstanceLink,
    tokio::task::JoinHandle<Result<(), minion_channel::ChannelError>>,
    CancellationToken,
) {
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
    let limits = Limits::default();
    let ready = handshake(stream, &limits, CancellationToken::new())
        .await
        .expect("ready");
    let (link, session): (InstanceLink, AttachedSession<UnixStream>) =
        ready.attach(None, false, &limits).await.expect("attached");
    let stop = CancellationToken::new();
    let run = tokio::spawn(session.run(stop.clone()));
    (Agent { child, _dir: dir }, link, run, stop)
}

fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Everything a command wrote (stdout, stderr) and its (code, signal, error).
async fn collect(
    exec: &mut minion_channel::Exec,
) -> (Vec<u8>, Vec<u8>, (i32, i32, Option<String>)) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let deadline = Duration::from_secs(20);
    loop {
        let ev = tokio::time::timeout(deadline, exec.next())
            .await
            .expect("command ends in time")
            .expect("an Exit before the stream ends");
        match ev {
            ExecEvent::Output {
                stream: ExecStream::Stdout,
                data,
            } => out.extend(data),
            ExecEvent::Output {
                stream: ExecStream::Stderr,
                data,
            } => err.extend(data),
            ExecEvent::Exit {
                code,
                signal,
                error,
            } => return (out, err, (code, signal, error)),
        }
    }
}

#[tokio::test]
async fn commands_on_pipes_return_output_streams_and_exit_codes() {
    let (_agent, link, _run, _stop) = attached().await;
    let mut e = link
        .exec(ExecSpec {
            argv: argv(&["sh", "-c", "echo out; echo err >&2; exit 7"]),
            ..ExecSpec::default()
        })
        .await
        .expect("exec");
    let (out, err, status) = collect(&mut e).await;
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
    assert_eq!(status, (7, 0, None));
    assert!(e.next().await.is_none(), "nothing after the Exit");

    // stdin goes in, eof closes it.
    let mut cat = link
        .exec(ExecSpec {
            argv: argv(&["cat"]),
            ..ExecSpec::default()
        })
        .await
        .expect("exec cat");
    let big = vec![b'x'; 300_000];
    cat.send(ExecControl::Input(big.clone()))
        .await
        .expect("input");
    cat.send(ExecControl::Eof).await.expect("eof");
    let (out, _, status) = collect(&mut cat).await;
    assert_eq!(out.len(), big.len(), "every byte back through cat");
    assert_eq!(status.0, 0);

    // A program that is not there says so and ran nothing.
    let mut missing = link
        .exec(ExecSpec {
            argv: argv(&["/no/such/program"]),
            ..ExecSpec::default()
        })
        .await
        .expect("exec");
    let (_, _, (code, _, error)) = collect(&mut missing).await;
    assert_eq!(code, 127);
    assert!(
        error.as_deref().unwrap_or("").contains("/no/such/program"),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_terminal_has_its_size_takes_resizes_and_ctrl_c_interrupts() {
    let (_agent, link, _run, _stop) = attached().await;
    let mut sh = link
        .exec(ExecSpec {
            argv: argv(&["sh"]),
            env: [("PS1".to_string(), "$ ".to_string())].into(),
            tty: true,
            rows: 33,
            cols: 111,
            ..ExecSpec::default()
        })
        .await
        .expect("exec sh on a tty");
    let mut seen = Vec::new();
    async fn until(
        exec: &mut minion_channel::Exec,
        seen: &mut Vec<u8>,
        want: &str,
    ) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !String::from_utf8_lossy(seen).contains(want) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, exec.next()).await {
                Ok(Some(ExecEvent::Output { data, .. })) => seen.extend(data),
                other => {
                    return Err(format!(
                        "waiting for {want:?}: {other:?}; saw {:?}",
                        String::from_utf8_lossy(seen)
                    ))
                }
            }
        }
        Ok(())
    }
    sh.send(ExecControl::Input(b"stty size; tty\n".to_vec()))
        .await
        .expect("input");
    until(&mut sh, &mut seen, "33 111").await.expect("size");
    until(&mut sh, &mut seen, "/dev/pts/").await.expect("a pty");
    sh.send(ExecControl::Resize {
        rows: 50,
        cols: 160,
    })
    .await
    .expect("resize");
    seen.clear();
    sh.send(ExecControl::Input(b"stty size\n".to_vec()))
        .await
        .expect("input");
    until(&mut sh, &mut seen, "50 160").await.expect("new size");
    // Ctrl-C reaches the foreground job through the terminal, not the shell.
    seen.clear();
    sh.send(ExecControl::Input(b"sleep 30; echo slept\n".to_vec()))
        .await
        .expect("input");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    sh.send(ExecControl::Input(vec![0x03])).await.expect("^C");
    sh.send(ExecControl::Input(b"echo after-$?\n".to_vec()))
        .await
        .expect("input");
    until(&mut sh, &mut seen, "after-130")
        .await
        .expect("interrupted");
    assert!(t.elapsed() < Duration::from_secs(10));
    // The line itself is echoed; the echo it ran would be a line of its own.
    assert!(!String::from_utf8_lossy(&seen).contains("\nslept"));
    sh.send(ExecControl::Input(b"exit 3\n".to_vec()))
        .await
        .expect("input");
    let (_, _, status) = collect(&mut sh).await;
    assert_eq!(status, (3, 0, None));
}

#[tokio::test]
async fn many_commands_run_at_once_and_a_dropped_one_is_killed() {
    let (_agent, link, _run, _stop) = attached().await;
    let t = Instant::now();
    let mut execs = Vec::new();
    for i in 0..8 {
        execs.push(
            link.exec(ExecSpec {
                argv: argv(&["sh", "-c", &format!("sleep 1; echo {i}")]),
                ..ExecSpec::default()
            })
            .await
            .expect("exec"),
        );
    }
    for (i, e) in execs.iter_mut().enumerate() {
        let (out, _, status) = collect(e).await;
        assert_eq!(String::from_utf8_lossy(&out), format!("{i}\n"));
        assert_eq!(status.0, 0);
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "8 one-second commands ran at once: {:?}",
        t.elapsed()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("alive");
    let e = link
        .exec(ExecSpec {
            argv: argv(&["sh", "-c", &format!("sleep 2; touch {}", marker.display())]),
            ..ExecSpec::default()
        })
        .await
        .expect("exec");
    drop(e);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!marker.exists(), "a dropped command is killed");
    assert_eq!(link.running(), 0);

    // A signal ends a command and says which.
    let mut s = link
        .exec(ExecSpec {
            argv: argv(&["sleep", "30"]),
            ..ExecSpec::default()
        })
        .await
        .expect("exec");
    s.send(ExecControl::Signal(15)).await.expect("signal");
    let (_, _, (code, signal, _)) = collect(&mut s).await;
    assert_eq!((code, signal), (143, 15));
}

#[tokio::test]
async fn the_host_hanging_up_ends_the_agent_and_what_it_ran() {
    let (mut agent, link, run, stop) = attached().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("alive");
    let _e = link
        .exec(ExecSpec {
            argv: argv(&["sh", "-c", &format!("sleep 2; touch {}", marker.display())]),
            ..ExecSpec::default()
        })
        .await
        .expect("exec");
    stop.cancel();
    run.await.expect("join").expect("stopped cleanly");
    drop(link);
    let t = Instant::now();
    loop {
        if let Some(status) = agent.child.try_wait().expect("try_wait") {
            assert!(status.success(), "agent exit: {status}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "agent still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!marker.exists(), "the command died with the instance");
}
