//! How fast the host side takes in artifacts, without a VM: a `FakeGuest` thread writes a 200 MiB
//! artifact tar as fast as a unix socket allows. Run with
//! `cargo test --release -p minion-channel --test host_throughput -- --ignored --nocapture`.
//! Under TCG the guest is the bottleneck; this says how much headroom the host has.

use std::{
    io::Write,
    os::unix::net::UnixStream as StdUnixStream,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use minion_channel::{
    frame::{decode_frame, encode_frame, MAX_FRAME},
    run_session, JobSpec, Limits,
};
use minion_proto::guest::{
    guest_frame::Kind as G, ArtifactChunk, ArtifactEnd, GuestFrame, HostFrame, Ready,
    Result as GuestResult,
};
use tokio_util::sync::CancellationToken;

fn send(s: &mut StdUnixStream, kind: G) {
    let bytes = encode_frame(&GuestFrame { kind: Some(kind) }, MAX_FRAME).expect("encode");
    s.write_all(&bytes).expect("write");
}

/// Reads host frames until `stop` says so.
fn read_until(s: &mut StdUnixStream, buf: &mut BytesMut, stop: impl Fn(&HostFrame) -> bool) {
    let mut chunk = vec![0u8; 65536];
    loop {
        while let Some(f) = decode_frame::<HostFrame>(buf, MAX_FRAME).expect("host frame") {
            if stop(&f) {
                return;
            }
        }
        let n = std::io::Read::read(s, &mut chunk).expect("read");
        assert!(n > 0, "host hung up");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn host_takes_in_a_200_mib_artifact() {
    const SIZE: usize = 200 * 1024 * 1024;
    let (host_end, mut guest) = StdUnixStream::pair().expect("socketpair");
    host_end.set_nonblocking(true).expect("nonblocking");
    let host_end = tokio::net::UnixStream::from_std(host_end).expect("tokio stream");
    // The guest's bytes are encoded before the clock starts: this measures the host alone.
    let mut h = tar::Header::new_gnu();
    h.set_path("task_output/big.bin").expect("path");
    h.set_size(SIZE as u64);
    h.set_mode(0o644);
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.resize(512 + SIZE + 1024, 0);
    let mut wire = Vec::with_capacity(tar.len() + 4096);
    for c in tar.chunks(MAX_FRAME - 64) {
        let f = GuestFrame {
            kind: Some(G::ArtifactChunk(ArtifactChunk { data: c.to_vec() })),
        };
        wire.extend(encode_frame(&f, MAX_FRAME).expect("encode"));
    }
    let tail: Vec<G> = vec![
        G::ArtifactEnd(ArtifactEnd {
            total_bytes: tar.len() as u64,
            entries: 1,
        }),
        G::Result(GuestResult {
            execution_ok: true,
            ..GuestResult::default()
        }),
    ];
    drop(tar);
    let guest_thread = std::thread::spawn(move || {
        let mut buf = BytesMut::new();
        read_until(&mut guest, &mut buf, |f| {
            matches!(
                f.kind,
                Some(minion_proto::guest::host_frame::Kind::Hello(_))
            )
        });
        send(
            &mut guest,
            G::Ready(Ready {
                protocol: 1,
                agent_version: "fake".into(),
            }),
        );
        read_until(&mut guest, &mut buf, |f| {
            matches!(
                f.kind,
                Some(minion_proto::guest::host_frame::Kind::TaskEnd(_))
            )
        });
        guest.write_all(&wire).expect("artifacts");
        for k in tail {
            send(&mut guest, k);
        }
    });
    let task = tempfile::tempdir().expect("task");
    let art = tempfile::tempdir().expect("artifacts");
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let started = Instant::now();
    let outcome = run_session(
        host_end,
        &JobSpec {
            id: "tp".into(),
            formula_path: "runtask.yml".into(),
            timeout: Duration::from_secs(60),
            ..JobSpec::default()
        },
        task.path(),
        art.path(),
        &Limits::default(),
        tx,
        CancellationToken::new(),
    )
    .await
    .expect("session");
    guest_thread.join().expect("guest");
    let secs = outcome.artifact_transfer.as_secs_f64();
    println!(
        "host side: {} bytes in {secs:.3}s = {:.0} MB/s (whole session {:.3}s)",
        outcome.artifact_bytes,
        outcome.artifact_bytes as f64 / secs / 1e6,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        std::fs::metadata(art.path().join("task_output/big.bin"))
            .expect("artifact")
            .len(),
        SIZE as u64
    );
}
