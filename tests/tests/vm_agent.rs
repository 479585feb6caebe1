//! The guest channel end to end, per image variant: a real transient domain under the real libvirtd
//! (TCG here), the static agent riding on the seed volume, a job whose formula runs shell and python
//! steps and writes an artifact; live log lines, the artifact and the result come back; then the
//! domain is destroyed, the VM's files deleted, and nothing is left.
//!
//! Needs: libvirtd running (`scripts/libvirt-start.sh`), the images (`make image`), and the static
//! agent (`scripts/build-agent.sh` → `target/agent/minion-agent`). Env overrides:
//! `MINION_LIBVIRT_URI`, `MINION_IMAGES_DIR`, `MINION_AGENT_BINARY`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use minion_channel::{connect_unix, run_session, JobSpec, Limits, LogStream, SessionEvent};
use minion_provisioning::{
    accel, image,
    vm::{self, PreparedVm, VmRequest},
    Hypervisor,
};
use tokio::sync::mpsc;
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

async fn run_job_in_fresh_vm(variant: &str) {
    let agent = env_path(
        "MINION_AGENT_BINARY",
        workspace_root().join("target/agent/minion-agent"),
    );
    assert!(
        agent.is_file(),
        "{} missing: run scripts/build-agent.sh first",
        agent.display()
    );
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
    let job_id = format!("vmagent-{variant}-{}", std::process::id());

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
    let socket = prepared.files.channel_socket.clone();
    let overlay = prepared.files.overlay.clone();
    let vm_dir = prepared.files.dir.clone();
    let name = prepared.name.clone();
    let xml = prepared.xml.clone();
    let mut guard = VmGuard {
        hv,
        vm: prepared,
        done: false,
    };
    let uri = libvirt_uri();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || {
        Hypervisor::connect(&uri)
            .expect("connect")
            .create_transient(&xml)
            .expect("create the domain")
    })
    .await
    .expect("join");

    let task = tempfile::tempdir().expect("task dir");
    std::fs::write(task.path().join("runtask.yml"), FORMULA).expect("formula");
    std::fs::write(task.path().join("check.py"), CHECK_PY).expect("check.py");
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
    let console = std::fs::read_to_string(&guard.vm.files.console_log).unwrap_or_default();
    let outcome = outcome.unwrap_or_else(|e| {
        panic!("session with the {variant} guest failed: {e}\n--- console ---\n{console}")
    });

    let ready_at = events
        .iter()
        .find(|(_, e)| matches!(e, SessionEvent::Ready { .. }))
        .map(|(t, _)| *t)
        .expect("Ready event");
    eprintln!(
        "{variant}: domain start → Ready {:.2}s, whole job {:.2}s",
        (ready_at - started).as_secs_f64(),
        (finished - started).as_secs_f64()
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
        finished - live_line >= Duration::from_secs(2),
        "log line arrived only {:?} before the end",
        finished - live_line
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
        std::fs::read_to_string(artifacts.path().join("task_output/artifact.txt"))
            .expect("artifact came back"),
        "vm artifact for foo-1.0-1.fc40\n"
    );
    assert!(artifacts.path().join("results.yaml").is_file());

    // The guest powers itself off; either way the domain is destroyed and the files deleted.
    tokio::task::spawn_blocking(move || {
        guard.teardown();
        guard
    })
    .await
    .expect("teardown");
    assert!(
        !virsh_list_all().lines().any(|l| l.trim() == name),
        "domain {name} still listed"
    );
    assert!(!overlay.exists(), "{} left behind", overlay.display());
    assert!(!vm_dir.exists(), "{} left behind", vm_dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_agent_minimal_image_runs_a_job() {
    run_job_in_fresh_vm("minimal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_agent_standard_image_runs_a_job() {
    run_job_in_fresh_vm("standard").await;
}
