//! The guest channel end to end, per image variant: a real transient domain under the real libvirtd
//! (TCG here), the static agent riding on the seed volume, a job whose formula runs shell and python
//! steps and writes an artifact; live log lines, the artifact and the result come back; then the
//! domain is destroyed, the VM's files deleted, and nothing is left.
//!
//! Needs: libvirtd running (`scripts/libvirt-start.sh`), the images (`make image`), and the static
//! agent (`scripts/build-agent.sh` → `target/agent/minion-agent`). Env overrides:
//! `MINION_LIBVIRT_URI`, `MINION_IMAGES_DIR`, `MINION_AGENT_BINARY`.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use minion_channel::{
    connect_unix, run_session, ChannelError, JobSpec, Limits, LogStream, SessionEvent,
    SessionOutcome,
};
use minion_provisioning::{
    accel, image,
    vm::{self, PreparedVm, VmRequest},
    Hypervisor,
};
use tokio::{io::AsyncReadExt, sync::mpsc};
use tokio_util::sync::CancellationToken;

const FORMULA: &str = r#"
name: vm-agent-e2e
desc: shell and python steps in a fresh VM, one artifact
maintainer: minion
input:
  args: [koji_build]
actions:
  - name: shell step
    shell:
      - echo "live line from ${koji_build}"
      - uname -s
      - echo "vm artifact for ${koji_build}" > ${artifactsdir}/artifact.txt
  - name: pause
    shell:
      - sleep 3
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
import platform

def run(item, **kwargs):
    print("python in the guest: " + platform.python_version())
    return """results:
  - item: %s
    type: koji_build
    checkname: minion.vm_agent
    outcome: PASSED
""" % item
"#;

fn env_path(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf()
}

fn libvirt_uri() -> String {
    std::env::var("MINION_LIBVIRT_URI").unwrap_or_else(|_| "qemu:///system".into())
}

/// Whether this machine can boot `variant` with the agent (a skip line on a developer's
/// machine, a failure under CI).
fn vm_env(test: &str, variant: &str) -> bool {
    common::image_env(test, variant, &[])
}

/// Every domain libvirt knows, running or not.
fn virsh_list_all() -> String {
    let out = Command::new("virsh")
        .args(["-c", &libvirt_uri(), "list", "--all", "--name"])
        .output()
        .expect("virsh runs");
    assert!(
        out.status.success(),
        "virsh list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Tears the VM down however the test ends (a failed assertion included).
struct VmGuard {
    hv: Hypervisor,
    vm: PreparedVm,
    done: bool,
}

impl VmGuard {
    fn teardown(&mut self) {
        if !self.done {
            self.done = true;
            if let Err(e) = vm::teardown(&self.hv, &self.vm.name, &self.vm.files, None) {
                eprintln!("teardown of {}: {e}", self.vm.name);
            }
        }
    }
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// One job in a fresh VM of `variant`, up to the end of the session (the VM is still there).
struct Run {
    guard: VmGuard,
    started: Instant,
    finished: Instant,
    events: Vec<(Instant, SessionEvent)>,
    outcome: Result<SessionOutcome, ChannelError>,
    artifacts: tempfile::TempDir,
    _state: tempfile::TempDir,
}

impl Run {
    fn ready_after(&self) -> Option<Duration> {
        self.events
            .iter()
            .find(|(_, e)| matches!(e, SessionEvent::Ready { .. }))
            .map(|(t, _)| *t - self.started)
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.guard.vm.files.console_log).unwrap_or_default()
    }

    /// Waits for the guest to power itself off; returns how long that took after the session.
    async fn wait_for_poweroff(&self, within: Duration) -> Option<Duration> {
        let uri = libvirt_uri();
        let name = self.guard.vm.name.clone();
        let finished = self.finished;
        tokio::task::spawn_blocking(move || {
            let hv = Hypervisor::connect(&uri).expect("connect");
            hv.wait_until_inactive(&name, within)
                .expect("poll the domain")
                .then(|| finished.elapsed())
        })
        .await
        .expect("join")
    }

    /// Destroys the domain and deletes the VM's files, then checks nothing is left.
    async fn teardown_and_check(self) {
        let name = self.guard.vm.name.clone();
        let overlay = self.guard.vm.files.overlay.clone();
        let vm_dir = self.guard.vm.files.dir.clone();
        let mut guard = self.guard;
        tokio::task::spawn_blocking(move || guard.teardown())
            .await
            .expect("teardown");
        assert!(
            !virsh_list_all().lines().any(|l| l.trim() == name),
            "domain {name} still listed"
        );
        assert!(!overlay.exists(), "{} left behind", overlay.display());
        assert!(!vm_dir.exists(), "{} left behind", vm_dir.display());
    }
}

fn default_agent() -> PathBuf {
    let agent = env_path(
        "MINION_AGENT_BINARY",
        workspace_root().join("target/agent/minion-agent"),
    );
    assert!(
        agent.is_file(),
        "{} missing: run scripts/build-agent.sh first",
        agent.display()
    );
    agent
}

/// A prepared (not yet started) VM of `variant` whose seed carries `agent`.
struct Prepared {
    guard: VmGuard,
    xml: String,
    socket: PathBuf,
    job_id: String,
    state: tempfile::TempDir,
}

async fn prepare_vm(variant: &str, tag: &str, agent: PathBuf) -> Prepared {
    let images = env_path(
        "MINION_IMAGES_DIR",
        PathBuf::from("/var/cache/minion/images"),
    );
    let image = image::load(&images, variant)
        .unwrap_or_else(|e| panic!("image {variant} (run `make image`): {e}"));

    // qemu runs as its own user: the state dir must be traversable.
    std::fs::create_dir_all("/var/lib/minion").expect("/var/lib/minion");
    let state = tempfile::Builder::new()
        .prefix("e2e-")
        .tempdir_in("/var/lib/minion")
        .expect("state dir");
    std::fs::set_permissions(
        state.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let job_id = format!("vmagent-{variant}-{tag}-{}", std::process::id());

    let req = VmRequest {
        state_dir: state.path().to_path_buf(),
        job_id: job_id.clone(),
        image,
        accel: accel::detect(),
        agent_binary: agent,
        vcpus: 1,
        memory_mib: 1024,
        hostname: "minion-e2e".into(),
        network: None,
        disk_bytes: None,
        host_image: None,
        template_of: None,
    };
    let uri = libvirt_uri();
    let (hv, prepared) = tokio::task::spawn_blocking(move || {
        let hv = Hypervisor::connect(&uri)
            .unwrap_or_else(|e| panic!("libvirtd at {uri} (scripts/libvirt-start.sh): {e}"));
        let prepared = vm::prepare(&req).expect("prepare the VM");
        (hv, prepared)
    })
    .await
    .expect("join");
    Prepared {
        socket: prepared.files.channel_socket.clone(),
        xml: prepared.xml.clone(),
        guard: VmGuard {
            hv,
            vm: prepared,
            done: false,
        },
        job_id,
        state,
    }
}

/// Starts the prepared domain; returns when libvirt has created it (the "domain start" instant
/// is taken just before).
async fn start_domain(xml: String) -> Instant {
    let uri = libvirt_uri();
    let hv = tokio::task::spawn_blocking(move || Hypervisor::connect(&uri).expect("connect"))
        .await
        .expect("join");
    let started = Instant::now();
    tokio::task::spawn_blocking(move || hv.create_transient(&xml).expect("create the domain"))
        .await
        .expect("join");
    started
}

async fn run_in_fresh_vm(variant: &str, tag: &str, files: &[(&str, &str)]) -> Run {
    let Prepared {
        guard,
        xml,
        socket,
        job_id,
        state,
    } = prepare_vm(variant, tag, default_agent()).await;
    let task = tempfile::tempdir().expect("task dir");
    for (name, text) in files {
        std::fs::write(task.path().join(name), text).expect("task file");
    }
    let artifacts = tempfile::tempdir().expect("artifacts dir");
    let job = JobSpec {
        id: job_id.clone(),
        item: "foo-1.0-1.fc40".into(),
        item_type: "koji_build".into(),
        arch: "x86_64".into(),
        formula_path: "runtask.yml".into(),
        timeout: Duration::from_secs(300),
        ..JobSpec::default()
    };

    // Events are stamped as they arrive, to prove the log is live (not delivered at the end).
    let (tx, mut rx) = mpsc::channel(1024);
    let collector = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(e) = rx.recv().await {
            seen.push((Instant::now(), e));
        }
        seen
    });
    let started = start_domain(xml).await;
    let stream = connect_unix(&socket, Duration::from_secs(30))
        .await
        .expect("connect to the channel socket");
    let limits = Limits {
        ready_timeout: Duration::from_secs(180),
        ..Limits::default()
    };
    let outcome = run_session(
        stream,
        &job,
        task.path(),
        artifacts.path(),
        &limits,
        tx,
        CancellationToken::new(),
    )
    .await;
    let finished = Instant::now();
    let events = collector.await.expect("collector");
    Run {
        guard,
        started,
        finished,
        events,
        outcome,
        artifacts,
        _state: state,
    }
}

async fn run_job_in_fresh_vm(variant: &str) {
    let run = run_in_fresh_vm(
        variant,
        "e2e",
        &[("runtask.yml", FORMULA), ("check.py", CHECK_PY)],
    )
    .await;
    let outcome = match &run.outcome {
        Ok(o) => o.clone(),
        Err(e) => panic!(
            "session with the {variant} guest failed: {e}\n--- console ---\n{}",
            run.console()
        ),
    };
    let events = &run.events;
    eprintln!(
        "{variant}: domain start → Ready {:.2}s, whole job {:.2}s",
        run.ready_after().expect("Ready event").as_secs_f64(),
        (run.finished - run.started).as_secs_f64()
    );
    let live_line = events
        .iter()
        .find(|(_, e)| {
            matches!(e, SessionEvent::Log { stream: LogStream::Stdout, data }
                if String::from_utf8_lossy(data).contains("live line from foo-1.0-1.fc40"))
        })
        .map(|(t, _)| *t)
        .unwrap_or_else(|| panic!("no live log line; events: {events:?}"));
    // The formula sleeps 3 s after that line: it must have arrived well before the end.
    assert!(
        run.finished - live_line >= Duration::from_secs(2),
        "log line arrived only {:?} before the end",
        run.finished - live_line
    );
    let stdout: String = events
        .iter()
        .filter_map(|(_, e)| match e {
            SessionEvent::Log { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
            _ => None,
        })
        .collect();
    assert!(stdout.contains("Linux"), "{stdout}");
    assert!(stdout.contains("python in the guest: 3."), "{stdout}");
    assert!(
        outcome.execution_status_ok,
        "{outcome:?}\n--- log ---\n{stdout}"
    );
    assert_eq!(outcome.exit_code, 0);
    assert!(
        outcome.results_yaml.contains("minion.vm_agent"),
        "{}",
        outcome.results_yaml
    );
    assert!(outcome.tap.contains("ok - "), "{}", outcome.tap);
    assert_eq!(
        std::fs::read_to_string(run.artifacts.path().join("task_output/artifact.txt"))
            .expect("artifact came back"),
        "vm artifact for foo-1.0-1.fc40\n"
    );
    assert!(run.artifacts.path().join("results.yaml").is_file());

    // The agent powers the guest off by itself once the Result is sent.
    let off = run.wait_for_poweroff(Duration::from_secs(90)).await;
    assert!(
        off.is_some(),
        "the {variant} guest did not power itself off\n--- console ---\n{}",
        run.console()
    );
    run.teardown_and_check().await;
}

/// The baseline the protocol is compared with, measured the same way issue #3 did: a shell "agent"
/// `dd`s 64 KiB blocks of zeros into the port; the host reads the socket. Bytes/s, first byte to last.
async fn raw_port_throughput(variant: &str, tag: &str, size_mb: u64) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("raw-dd-agent");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name")" = org.minion.agent.0 ] && port=/dev/${{p##*/}}
done
dd if=/dev/zero of="$port" bs=65536 count={blocks} 2>/dev/null
sleep 2
if [ $$ = 1 ]; then python3 -c 'import ctypes; ctypes.CDLL(None).reboot(0x4321FEDC)'; else systemctl poweroff; fi
sleep 60
"#,
            blocks = size_mb * 16
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let Prepared {
        mut guard,
        xml,
        socket,
        state: _state,
        ..
    } = prepare_vm(variant, tag, script).await;
    start_domain(xml).await;
    let mut stream = connect_unix(&socket, Duration::from_secs(30))
        .await
        .expect("connect");
    let want = size_mb * 1024 * 1024;
    let mut buf = vec![0u8; 1024 * 1024];
    let mut got = 0u64;
    let mut first = None;
    while got < want {
        let n = tokio::time::timeout(Duration::from_secs(120), stream.read(&mut buf))
            .await
            .expect("raw data keeps coming")
            .expect("read");
        assert!(n > 0, "guest closed after {got} bytes");
        first.get_or_insert_with(Instant::now);
        got += n as u64;
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    tokio::task::spawn_blocking(move || guard.teardown())
        .await
        .expect("teardown");
    got as f64 / secs
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `scripts/bench-vm.sh` runs this: domain start → Ready (median of MINION_BENCH_RUNS, default 10)
/// per variant (MINION_BENCH_VARIANTS, default "minimal,standard"), and the artifact throughput
/// of a MINION_BENCH_SIZE_MB (default 200) MiB file on the first variant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark (minutes): scripts/bench-vm.sh"]
async fn vm_agent_bench() {
    if !vm_env("vm_agent_bench", "minimal") {
        return;
    }
    let runs: usize = env_or("MINION_BENCH_RUNS", 10);
    let size_mb: u64 = env_or("MINION_BENCH_SIZE_MB", 200);
    let variants: String = env_or("MINION_BENCH_VARIANTS", "minimal,standard".to_string());
    let ready_formula = "name: bench-ready\ndesc: smallest job\nmaintainer: minion\nactions:\n  - name: hello\n    shell:\n      - echo ready\n";
    let mut report = Vec::new();
    for variant in variants.split(',').filter(|_| runs > 0) {
        let mut ready = Vec::new();
        let mut off = Vec::new();
        for i in 0..runs {
            let run =
                run_in_fresh_vm(variant, &format!("r{i}"), &[("runtask.yml", ready_formula)]).await;
            if let Err(e) = &run.outcome {
                panic!("{variant} run {i}: {e}\n--- console ---\n{}", run.console());
            }
            let r = run.ready_after().expect("Ready").as_secs_f64();
            let o = run.wait_for_poweroff(Duration::from_secs(90)).await;
            eprintln!(
                "{variant} run {i}: domain start → Ready {r:.3}s, Result → domain gone {}",
                o.map_or("(did not power off)".into(), |d| format!(
                    "{:.2}s",
                    d.as_secs_f64()
                ))
            );
            ready.push(r);
            if let Some(o) = o {
                off.push(o.as_secs_f64());
            }
            run.teardown_and_check().await;
        }
        let (lo, hi) = (
            ready.iter().copied().fold(f64::MAX, f64::min),
            ready.iter().copied().fold(0.0, f64::max),
        );
        report.push(format!(
            "ready {variant}: median {:.3}s of {runs} (min {lo:.3}s, max {hi:.3}s); Result → gone median {:.2}s",
            median(&mut ready),
            if off.is_empty() { f64::NAN } else { median(&mut off) }
        ));
    }
    // Throughput: the protocol and the raw port alternately, so both see the same machine load.
    let variant = variants.split(',').next().unwrap_or("minimal");
    let rounds: usize = env_or("MINION_BENCH_TP_ROUNDS", 3);
    let big = format!(
        "name: bench-artifact\ndesc: one big artifact\nmaintainer: minion\nactions:\n  - name: write\n    shell:\n      - dd if=/dev/zero of=${{artifactsdir}}/big.bin bs=1M count={size_mb} status=none\n"
    );
    let (mut proto, mut raw) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let r = raw_port_throughput(variant, &format!("raw{i}"), size_mb).await / 1e6;
        let run =
            run_in_fresh_vm(variant, &format!("tp{i}"), &[("runtask.yml", big.as_str())]).await;
        let outcome = match &run.outcome {
            Ok(o) => o.clone(),
            Err(e) => panic!("throughput run: {e}\n--- console ---\n{}", run.console()),
        };
        let got = std::fs::metadata(run.artifacts.path().join("task_output/big.bin"))
            .expect("big artifact")
            .len();
        assert_eq!(got, size_mb * 1024 * 1024);
        let secs = outcome.artifact_transfer.as_secs_f64();
        let p = outcome.artifact_bytes as f64 / secs / 1e6;
        eprintln!(
            "{variant} throughput round {i}: raw port {r:.1} MB/s, protocol {p:.1} MB/s ({} tar bytes in {secs:.3}s)",
            outcome.artifact_bytes
        );
        run.teardown_and_check().await;
        proto.push(p);
        raw.push(r);
    }
    let (p, r) = (median(&mut proto), median(&mut raw));
    report.push(format!(
        "artifact {variant}: {size_mb} MiB file over the protocol median {p:.1} MB/s vs raw port (dd bs=64k) median {r:.1} MB/s in the same conditions = {:.0}%; vs the 355 MB/s reference {:.0}%",
        p / r * 100.0,
        p / 355.0 * 100.0
    ));
    for line in report {
        println!("{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_agent_minimal_image_runs_a_job() {
    if !vm_env("vm_agent_minimal_image_runs_a_job", "minimal") {
        return;
    }
    run_job_in_fresh_vm("minimal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_agent_standard_image_runs_a_job() {
    if !vm_env("vm_agent_standard_image_runs_a_job", "standard") {
        return;
    }
    run_job_in_fresh_vm("standard").await;
}
