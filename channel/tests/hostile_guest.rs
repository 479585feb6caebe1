//! The host side of the guest channel against a `FakeGuest`: a plain task on the other end of an
//! in-memory duplex pipe, playing an honest agent or a hostile one. Each hostile case asserts the
//! specific `ChannelError` and that the host stayed within its bounds.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use minion_channel::{
    frame::{decode_frame, encode_frame, MAX_FRAME},
    run_session, ActionState, ChannelError, FrameError, JobSpec, Limits, LogStream, SessionEvent,
    SessionOutcome,
};
use minion_proto::guest::{
    guest_frame::Kind as G, host_frame::Kind as H, Action, ArtifactChunk, ArtifactEnd, GuestFrame,
    Heartbeat, HostFrame, Log, Ready, Result as GuestResult,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

/// The guest end of the pipe, speaking raw frames.
struct FakeGuest {
    io: DuplexStream,
    buf: BytesMut,
}

impl FakeGuest {
    async fn recv(&mut self) -> Option<HostFrame> {
        loop {
            if let Some(f) =
                decode_frame::<HostFrame>(&mut self.buf, MAX_FRAME).expect("host frames are valid")
            {
                return Some(f);
            }
            if self.io.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    async fn send(&mut self, kind: G) {
        let bytes = encode_frame(&GuestFrame { kind: Some(kind) }, MAX_FRAME).expect("encode");
        // The host may have hung up on us already; a hostile guest does not care.
        let _ = self.io.write_all(&bytes).await;
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.io.write_all(bytes).await;
    }

    /// Hello → Ready.
    async fn handshake(&mut self) {
        match self.recv().await {
            Some(HostFrame {
                kind: Some(H::Hello(h)),
            }) => assert_eq!(h.protocol_max, 1),
            other => panic!("expected Hello, got {other:?}"),
        }
        self.send(G::Ready(Ready {
            protocol: 1,
            agent_version: "fake-0".into(),
        }))
        .await;
    }

    /// Job + task tar; returns the job and the tar bytes.
    async fn receive_job(&mut self) -> (minion_proto::guest::Job, Vec<u8>) {
        let job = match self.recv().await {
            Some(HostFrame {
                kind: Some(H::Job(j)),
            }) => j,
            other => panic!("expected Job, got {other:?}"),
        };
        let mut tar = Vec::new();
        loop {
            match self.recv().await {
                Some(HostFrame {
                    kind: Some(H::TaskChunk(c)),
                }) => tar.extend(c.data),
                Some(HostFrame {
                    kind: Some(H::TaskEnd(e)),
                }) => {
                    assert_eq!(e.total_bytes, tar.len() as u64);
                    return (job, tar);
                }
                other => panic!("expected task data, got {other:?}"),
            }
        }
    }

    async fn send_artifacts(&mut self, tar: &[u8]) {
        for chunk in tar.chunks(64 * 1024) {
            self.send(G::ArtifactChunk(ArtifactChunk {
                data: chunk.to_vec(),
            }))
            .await;
        }
        self.send(G::ArtifactEnd(ArtifactEnd {
            total_bytes: tar.len() as u64,
            entries: 0,
        }))
        .await;
    }

    /// The end of an honest job: the artifacts tar, then the Result.
    async fn finish(&mut self, tar: &[u8]) {
        self.send_artifacts(tar).await;
        self.send_result().await;
    }

    async fn send_result(&mut self) {
        self.send(G::Result(GuestResult {
            execution_ok: true,
            status_message: "all good".into(),
            exit_code: 0,
            cancelled: false,
            results_yaml: "results: []\n".into(),
            tap: "TAP version 13\n1..0\n".into(),
        }))
        .await;
    }
}

struct Host {
    task: tempfile::TempDir,
    art: tempfile::TempDir,
    job: JobSpec,
    limits: Limits,
}

impl Host {
    fn new() -> Self {
        let task = tempfile::tempdir().expect("tempdir");
        std::fs::write(task.path().join("runtask.yml"), "name: t\nactions: []\n").expect("write");
        Self {
            task,
            art: tempfile::tempdir().expect("tempdir"),
            job: JobSpec {
                id: "job-1".into(),
                item: "foo-1.0-1.fc40".into(),
                item_type: "koji_build".into(),
                arch: "x86_64".into(),
                formula_path: "runtask.yml".into(),
                timeout: Duration::from_secs(60),
                ..JobSpec::default()
            },
            limits: Limits {
                ready_timeout: Duration::from_secs(5),
                heartbeat_timeout: Duration::from_secs(5),
                cancel_grace: Duration::from_millis(500),
                ..Limits::default()
            },
        }
    }

    fn artifacts(&self) -> &Path {
        self.art.path()
    }

    /// Runs a session against `guest`; returns its result, the events seen, and the elapsed time.
    async fn run<F, Fut>(
        &self,
        cancel: CancellationToken,
        guest: F,
    ) -> (
        Result<SessionOutcome, ChannelError>,
        Vec<SessionEvent>,
        Duration,
    )
    where
        F: FnOnce(FakeGuest) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (host_end, guest_end) = tokio::io::duplex(256 * 1024);
        let fake = FakeGuest {
            io: guest_end,
            buf: BytesMut::new(),
        };
        let guest_task = tokio::spawn(guest(fake));
        let (tx, mut rx) = mpsc::channel(1024);
        let collector = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(e) = rx.recv().await {
                seen.push(e);
            }
            seen
        });
        let started = Instant::now();
        let result = run_session(
            host_end,
            &self.job,
            self.task.path(),
            self.artifacts(),
            &self.limits,
            tx,
            cancel,
        )
        .await;
        let elapsed = started.elapsed();
        guest_task.abort();
        let events = collector.await.expect("collector");
        (result, events, elapsed)
    }
}

fn artifact_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, *data).expect("append");
    }
    b.into_inner().expect("tar")
}

#[tokio::test]
async fn honest_guest_full_exchange() {
    let host = Host::new();
    let (result, events, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            let (job, tar) = g.receive_job().await;
            assert_eq!(job.item, "foo-1.0-1.fc40");
            assert_eq!(job.uuid, "job-1");
            let names: Vec<String> = tar::Archive::new(&tar[..])
                .entries()
                .expect("tar")
                .map(|e| {
                    e.expect("entry")
                        .path()
                        .expect("path")
                        .display()
                        .to_string()
                })
                .collect();
            assert!(
                names.iter().any(|n| n.ends_with("runtask.yml")),
                "{names:?}"
            );
            g.send(G::Action(Action {
                index: 0,
                name: "run it".into(),
                state: 1,
            }))
            .await;
            g.send(G::Log(Log {
                stream: 1,
                data: b"hello from the guest\n".to_vec(),
            }))
            .await;
            g.send(G::Heartbeat(Heartbeat { seq: 1 })).await;
            g.finish(&artifact_tar(&[
                ("task_output/out.txt", b"artifact!"),
                ("results.yaml", b"results: []\n"),
            ]))
            .await;
        })
        .await;
    let outcome = result.expect("session succeeds");
    assert!(outcome.execution_status_ok);
    assert_eq!(outcome.agent_version, "fake-0");
    assert_eq!(outcome.artifact_entries, 2);
    assert_eq!(outcome.log_bytes, 21);
    assert_eq!(
        std::fs::read(host.artifacts().join("task_output/out.txt")).expect("artifact"),
        b"artifact!"
    );
    assert_eq!(
        events,
        vec![
            SessionEvent::Ready {
                agent_version: "fake-0".into()
            },
            SessionEvent::Action {
                index: 0,
                name: "run it".into(),
                state: ActionState::Started
            },
            SessionEvent::Log {
                stream: LogStream::Stdout,
                data: b"hello from the guest\n".to_vec()
            },
            SessionEvent::Heartbeat,
            SessionEvent::Collecting,
        ]
    );
}

#[tokio::test]
async fn oversized_frame_is_refused_before_allocation() {
    let host = Host::new();
    let (result, _, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            // A 64 MiB length prefix, then a trickle of bytes: the host must not wait for or
            // allocate the body.
            let mut prefix = Vec::new();
            prost::encoding::encode_varint(64 * 1024 * 1024, &mut prefix);
            g.send_raw(&prefix).await;
            g.send_raw(&[0u8; 100]).await;
            std::future::pending::<()>().await;
        })
        .await;
    match result {
        Err(ChannelError::Frame(FrameError::TooLarge { len, max })) => {
            assert_eq!(len, 64 * 1024 * 1024);
            assert_eq!(max, MAX_FRAME);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_is_a_frame_error_not_a_panic() {
    let host = Host::new();
    let (result, _, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            // Length 8 then bytes that are not a GuestFrame (wire type 7 is invalid).
            g.send_raw(&[8, 0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
                .await;
            std::future::pending::<()>().await;
        })
        .await;
    assert!(
        matches!(
            result,
            Err(ChannelError::Frame(FrameError::Decode { len: 8, .. }))
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn garbage_before_ready_is_rejected() {
    let host = Host::new();
    let (result, _, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.send_raw(&[0xff; 16]).await;
            std::future::pending::<()>().await;
        })
        .await;
    assert!(
        matches!(result, Err(ChannelError::Frame(FrameError::BadLength))),
        "{result:?}"
    );
}

#[tokio::test]
async fn path_escaping_tar_entries_are_refused_and_nothing_lands_outside() {
    for (name, reason) in [
        (&b"../../escaped"[..], "path contains `..`"),
        (&b"/tmp/minion-absolute-escape"[..], "absolute path"),
    ] {
        let host = Host::new();
        let name_owned = name.to_vec();
        let (result, _, _) = host
            .run(CancellationToken::new(), move |mut g| async move {
                g.handshake().await;
                g.receive_job().await;
                // A raw header: the tar crate's builder would refuse these names itself.
                let mut h = tar::Header::new_old();
                h.as_old_mut().name[..name_owned.len()].copy_from_slice(&name_owned);
                h.set_size(4);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_cksum();
                let mut tar = h.as_bytes().to_vec();
                tar.extend(b"evil");
                tar.resize(tar.len() + 508 + 1024, 0);
                g.finish(&tar).await;
            })
            .await;
        match result {
            Err(ChannelError::UnsafeArtifact { reason: r, .. }) => assert_eq!(r, reason),
            other => panic!("expected UnsafeArtifact, got {other:?}"),
        }
        assert!(!host
            .artifacts()
            .parent()
            .expect("parent")
            .join("escaped")
            .exists());
        assert!(!Path::new("/tmp/minion-absolute-escape").exists());
    }
}

#[tokio::test]
async fn symlink_artifact_is_refused() {
    let host = Host::new();
    let (result, _, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            g.receive_job().await;
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "task_output/passwd", "/etc/passwd")
                .expect("link");
            g.finish(&b.into_inner().expect("tar")).await;
        })
        .await;
    assert!(
        matches!(
            result,
            Err(ChannelError::UnsafeArtifact {
                reason: "links are not accepted",
                ..
            })
        ),
        "{result:?}"
    );
    assert!(!host.artifacts().join("task_output/passwd").exists());
}

#[tokio::test]
async fn endless_logs_hit_the_log_budget() {
    let mut host = Host::new();
    host.limits.max_log_bytes = 1024 * 1024;
    let (result, events, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            loop {
                g.send(G::Log(Log {
                    stream: 2,
                    data: vec![b'x'; 32 * 1024],
                }))
                .await;
            }
        })
        .await;
    assert!(
        matches!(result, Err(ChannelError::LimitExceeded { what: "log bytes", limit }) if limit == 1024 * 1024),
        "{result:?}"
    );
    let forwarded: usize = events
        .iter()
        .map(|e| match e {
            SessionEvent::Log { data, .. } => data.len(),
            _ => 0,
        })
        .sum();
    assert!(forwarded <= 1024 * 1024, "forwarded {forwarded} bytes");
}

#[tokio::test]
async fn endless_artifacts_hit_the_artifact_budget() {
    let mut host = Host::new();
    host.limits.max_artifact_bytes = 2 * 1024 * 1024;
    let (result, _, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            g.receive_job().await;
            // One regular file header claiming a huge size, then endless data.
            let mut h = tar::Header::new_gnu();
            h.set_path("task_output/huge").expect("path");
            h.set_size(1 << 40);
            h.set_mode(0o644);
            h.set_cksum();
            g.send(G::ArtifactChunk(ArtifactChunk {
                data: h.as_bytes().to_vec(),
            }))
            .await;
            loop {
                g.send(G::ArtifactChunk(ArtifactChunk {
                    data: vec![0; 256 * 1024],
                }))
                .await;
            }
        })
        .await;
    assert!(
        matches!(
            result,
            Err(ChannelError::LimitExceeded {
                what: "artifact bytes",
                ..
            })
        ),
        "{result:?}"
    );
    let written = std::fs::metadata(host.artifacts().join("task_output/huge"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(written <= 2 * 1024 * 1024, "wrote {written} bytes");
}

#[tokio::test]
async fn too_many_artifact_entries() {
    let mut host = Host::new();
    host.limits.max_artifact_entries = 10;
    let (result, _, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            g.receive_job().await;
            let files: Vec<(String, Vec<u8>)> = (0..50)
                .map(|i| (format!("task_output/f{i}"), vec![]))
                .collect();
            let refs: Vec<(&str, &[u8])> = files
                .iter()
                .map(|(n, d)| (n.as_str(), d.as_slice()))
                .collect();
            g.finish(&artifact_tar(&refs)).await;
        })
        .await;
    assert!(
        matches!(
            result,
            Err(ChannelError::LimitExceeded {
                what: "artifact entries",
                limit: 10
            })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn silent_guest_times_out_waiting_for_ready() {
    let mut host = Host::new();
    host.limits.ready_timeout = Duration::from_millis(300);
    let (result, _, elapsed) = host
        .run(CancellationToken::new(), |g| async move {
            // Holds the pipe open and says nothing.
            let _held = g;
            std::future::pending::<()>().await;
        })
        .await;
    assert!(
        matches!(
            result,
            Err(ChannelError::Timeout {
                what: "the agent's Ready",
                ..
            })
        ),
        "{result:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn guest_silent_after_ready_misses_heartbeats() {
    let mut host = Host::new();
    host.limits.heartbeat_timeout = Duration::from_millis(300);
    let (result, _, elapsed) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            g.receive_job().await;
            std::future::pending::<()>().await;
        })
        .await;
    assert!(
        matches!(
            result,
            Err(ChannelError::Timeout {
                what: "a frame from the guest (heartbeat)",
                ..
            })
        ),
        "{result:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn guest_that_stops_reading_cannot_stall_the_host() {
    // A task tree far larger than the pipe: the host's writer blocks, the reader's timeout still fires.
    let mut host = Host::new();
    std::fs::write(host.task.path().join("big.bin"), vec![1u8; 8 * 1024 * 1024]).expect("write");
    host.limits.heartbeat_timeout = Duration::from_millis(400);
    let (result, _, elapsed) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            std::future::pending::<()>().await;
        })
        .await;
    assert!(
        matches!(result, Err(ChannelError::Timeout { .. })),
        "{result:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn cancel_sends_cancel_and_waits_for_the_guest_to_wrap_up() {
    let host = Host::new();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let (seen_tx, mut seen_rx) = mpsc::channel(1);
    let (result, _, _) = host
        .run(cancel, move |mut g| async move {
            g.handshake().await;
            g.receive_job().await;
            trigger.cancel();
            match g.recv().await {
                Some(HostFrame {
                    kind: Some(H::Cancel(c)),
                }) => {
                    seen_tx.send(c.reason).await.expect("report");
                }
                other => panic!("expected Cancel, got {other:?}"),
            }
            g.finish(&artifact_tar(&[("task_output/partial.txt", b"p")]))
                .await;
        })
        .await;
    assert!(matches!(result, Err(ChannelError::Cancelled)), "{result:?}");
    assert_eq!(
        seen_rx.recv().await.as_deref(),
        Some("cancelled by the host")
    );
    // What the guest sent before stopping is kept.
    assert!(host.artifacts().join("task_output/partial.txt").exists());
}

#[tokio::test]
async fn cancel_of_an_unresponsive_guest_is_bounded_by_the_grace() {
    let host = Host::new();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let (result, _, elapsed) = host
        .run(cancel, move |mut g| async move {
            g.handshake().await;
            g.receive_job().await;
            trigger.cancel();
            loop {
                g.send(G::Heartbeat(Heartbeat { seq: 0 })).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    assert!(matches!(result, Err(ChannelError::Cancelled)), "{result:?}");
    // cancel_grace is 500 ms.
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn job_timeout_cancels_the_guest() {
    let mut host = Host::new();
    host.job.timeout = Duration::from_millis(300);
    let (result, _, elapsed) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            g.receive_job().await;
            loop {
                g.send(G::Heartbeat(Heartbeat { seq: 0 })).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    assert!(
        matches!(result, Err(ChannelError::JobTimeout(t)) if t == Duration::from_millis(300)),
        "{result:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn guest_hanging_up_mid_job_is_reported() {
    let host = Host::new();
    let (result, _, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            g.receive_job().await;
            drop(g);
        })
        .await;
    assert!(
        matches!(
            result,
            Err(ChannelError::Closed {
                during: "the job was running"
            })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn protocol_violations_are_named() {
    let host = Host::new();
    let (result, _, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.recv().await;
            g.send(G::Log(Log {
                stream: 1,
                data: b"early".to_vec(),
            }))
            .await;
        })
        .await;
    assert!(
        matches!(&result, Err(ChannelError::Protocol(m)) if m == "Log before Ready"),
        "{result:?}"
    );

    let host = Host::new();
    let (result, _, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            g.receive_job().await;
            g.send_result().await;
        })
        .await;
    assert!(
        matches!(&result, Err(ChannelError::Protocol(m)) if m == "Result before ArtifactEnd"),
        "{result:?}"
    );

    let host = Host::new();
    let (result, _, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.recv().await;
            g.send(G::Ready(Ready {
                protocol: 9,
                agent_version: "future".into(),
            }))
            .await;
        })
        .await;
    assert!(
        matches!(result, Err(ChannelError::Version { guest: 9, .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn agent_error_is_reported_with_its_message() {
    let host = Host::new();
    let (result, _, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            g.receive_job().await;
            g.send(G::Error(minion_proto::guest::Error {
                message: "formula runtask.yml not found".into(),
            }))
            .await;
        })
        .await;
    assert!(
        matches!(&result, Err(ChannelError::Agent(m)) if m == "formula runtask.yml not found"),
        "{result:?}"
    );
}

#[tokio::test]
async fn guest_cannot_overwrite_the_hosts_own_files_beside_the_artifacts() {
    let host = Host::new();
    std::fs::write(host.artifacts().join("minion.log"), b"host log\n").expect("host file");
    let (result, _, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            g.receive_job().await;
            g.finish(&artifact_tar(&[("minion.log", b"forged\n")]))
                .await;
        })
        .await;
    assert!(
        matches!(
            result,
            Err(ChannelError::UnsafeArtifact {
                reason: "outside task_output/, results.yaml and results.tap",
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(
        std::fs::read(host.artifacts().join("minion.log")).expect("host file"),
        b"host log\n"
    );
}

/// A handler that records what it was asked and answers with files it wrote.
struct FakeSources {
    asked: std::sync::Mutex<Vec<minion_formula::FetchRequest>>,
    dir: tempfile::TempDir,
}

impl minion_channel::FetchHandler for FakeSources {
    fn fetch(
        &self,
        request: minion_formula::FetchRequest,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<Vec<minion_channel::HostFile>, String>>
                + Send
                + '_,
        >,
    > {
        self.asked.lock().expect("lock").push(request);
        Box::pin(async move {
            let mut out = Vec::new();
            for (name, size) in [
                ("a-1-1.noarch.rpm", 300 * 1024usize),
                ("b-1-1.x86_64.rpm", 5),
            ] {
                let path = self.dir.path().join(name);
                std::fs::write(&path, vec![b'x'; size]).map_err(|e| e.to_string())?;
                out.push(minion_channel::HostFile {
                    name: name.into(),
                    kind: minion_formula::FetchedKind::Rpm,
                    path,
                    size: size as u64,
                });
            }
            Ok(out)
        })
    }
}

fn fake_sources() -> std::sync::Arc<FakeSources> {
    std::sync::Arc::new(FakeSources {
        asked: std::sync::Mutex::new(Vec::new()),
        dir: tempfile::tempdir().expect("tempdir"),
    })
}

fn koji_request(id: u32, nvr: &str) -> G {
    G::FetchRequest(minion_proto::guest::FetchRequest {
        id,
        what: Some(minion_proto::guest::fetch_request::What::KojiBuild(
            minion_proto::guest::KojiBuildFetch {
                nvr: nvr.into(),
                rpms: None,
            },
        )),
    })
}

impl FakeGuest {
    /// Reads one fetch answer: the files (name → bytes) and FetchEnd's error.
    async fn fetch_answer(&mut self) -> (Vec<(String, Vec<u8>)>, String) {
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        loop {
            match self.recv().await.and_then(|f| f.kind) {
                Some(H::FetchFile(f)) => files.push((f.name, Vec::with_capacity(f.size as usize))),
                Some(H::FetchChunk(c)) => files.last_mut().expect("a file").1.extend(c.data),
                Some(H::FetchEnd(e)) => return (files, e.error),
                other => panic!("expected a fetch answer, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn fetch_requests_are_answered_and_streamed_into_the_guest() {
    let mut host = Host::new();
    let sources = fake_sources();
    host.job.fetch = Some(sources.clone());
    let (result, _, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            g.receive_job().await;
            g.send(koji_request(7, "foo-1.0-1.fc40")).await;
            let (files, error) = g.fetch_answer().await;
            assert_eq!(error, "");
            assert_eq!(files.len(), 2);
            assert_eq!(files[0].0, "a-1-1.noarch.rpm");
            assert_eq!(files[0].1.len(), 300 * 1024, "chunked, nothing lost");
            assert_eq!(files[1].1, b"xxxxx");
            g.finish(&artifact_tar(&[("results.yaml", b"results: []\n")]))
                .await;
        })
        .await;
    result.expect("session succeeds");
    let asked = sources.asked.lock().expect("lock");
    assert!(
        matches!(&asked[..], [minion_formula::FetchRequest::KojiBuild { nvr, .. }] if nvr == "foo-1.0-1.fc40")
    );
}

/// The guest names things; it cannot make the host fetch a URL or a path of its choosing.
#[tokio::test]
async fn a_guest_cannot_make_the_host_fetch_anything_but_what_the_sources_answer() {
    let mut host = Host::new();
    let sources = fake_sources();
    host.job.fetch = Some(sources.clone());
    let (result, _, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            g.receive_job().await;
            let dist_git = |paths: &[&str]| {
                G::FetchRequest(minion_proto::guest::FetchRequest {
                    id: 9,
                    what: Some(minion_proto::guest::fetch_request::What::DistGit(
                        minion_proto::guest::DistGitFetch {
                            namespace: "rpms".into(),
                            package: "foo".into(),
                            gitref: "rawhide".into(),
                            paths: paths.iter().map(|s| s.to_string()).collect(),
                            ignore_missing: false,
                        },
                    )),
                })
            };
            for bad in [
                koji_request(1, "http://169.254.169.254/latest-1-1"),
                koji_request(2, "../../../../etc/shadow-1-1"),
                koji_request(3, "foo-1-1@evil.example"),
                dist_git(&["../../../etc/passwd"]),
                dist_git(&["/etc/passwd"]),
                G::FetchRequest(minion_proto::guest::FetchRequest { id: 4, what: None }),
            ] {
                g.send(bad).await;
                let (files, error) = g.fetch_answer().await;
                assert!(files.is_empty());
                assert!(error.starts_with("refused: "), "{error}");
            }
            g.finish(&artifact_tar(&[("results.yaml", b"results: []\n")]))
                .await;
        })
        .await;
    result.expect("refusals do not end the session");
    assert!(
        sources.asked.lock().expect("lock").is_empty(),
        "the sources were never asked"
    );
}

#[tokio::test]
async fn fetch_requests_are_bounded_and_need_sources() {
    // No handler: answered with an error naming the config, the session goes on.
    let host = Host::new();
    let (result, _, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            g.receive_job().await;
            g.send(koji_request(1, "foo-1.0-1.fc40")).await;
            let (_, error) = g.fetch_answer().await;
            assert!(
                error.contains("no sources to fetch Koji build foo-1.0-1.fc40"),
                "{error}"
            );
            g.finish(&artifact_tar(&[("results.yaml", b"results: []\n")]))
                .await;
        })
        .await;
    result.expect("session succeeds");

    // More requests than allowed.
    let mut host = Host::new();
    host.limits.max_fetch_requests = 2;
    host.job.fetch = Some(fake_sources());
    let (result, _, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            g.receive_job().await;
            for id in 1..=3 {
                g.send(koji_request(id, "foo-1.0-1.fc40")).await;
                if id < 3 {
                    g.fetch_answer().await;
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
    assert!(
        matches!(
            result,
            Err(ChannelError::LimitExceeded {
                what: "fetch requests",
                limit: 2
            })
        ),
        "{result:?}"
    );

    // A request once the artifacts are coming is a protocol violation.
    let host = Host::new();
    let (result, _, _) = host
        .run(CancellationToken::new(), |mut g| async move {
            g.handshake().await;
            g.receive_job().await;
            g.send(G::ArtifactChunk(ArtifactChunk { data: vec![0; 512] }))
                .await;
            g.send(koji_request(1, "foo-1.0-1.fc40")).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
    assert!(
        matches!(&result, Err(ChannelError::Protocol(m)) if m.contains("FetchRequest while receiving artifacts")),
        "{result:?}"
    );
}
