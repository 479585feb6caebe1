//! The harness the end-to-end tests share: a real `miniond` process (own config, state dir and
//! socket) on the `minimal` image under the real libvirtd, driven through the real `minion` CLI.
//!
//! Needs: libvirtd running (`scripts/libvirt-start.sh`), the `minimal` image (`make image`), and the
//! static agent (`scripts/build-agent.sh` → `target/agent/minion-agent`). Env overrides:
//! `MINION_AGENT_BINARY`, `MINION_IMAGES_DIR`, `MINION_LIBVIRT_URI`.
// Each test file uses part of it.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
pub use std::path::{Path, PathBuf};
pub use std::process::{Child, Command, Output, Stdio};
pub use std::sync::atomic::{AtomicBool, Ordering};
pub use std::sync::Arc;
pub use std::time::{Duration, Instant};

pub use serde_json::Value;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf()
}

/// `target/debug` of this very test binary (`target/debug/deps/<test>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/debug/deps/<test>")
        .to_path_buf()
}

/// The daemon and CLI binaries cargo built into this target dir (`cargo build -p miniond -p
/// minion-cli`; `make test` builds them before the tests). Never built from here: a test does not
/// run a nested cargo.
pub fn binaries() -> (PathBuf, PathBuf) {
    (bin_dir().join("miniond"), bin_dir().join("minion"))
}

pub fn images_dir() -> PathBuf {
    std::env::var_os("MINION_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/minion/images"))
}

/// Whether this machine can run a VM test of the daemon (root, libvirtd, the `minimal` image,
/// the agent, the binaries): skips with one line on a developer's machine, fails under CI
/// (see minion-testenv). The binaries are whatever `cargo build` last made: `make test` builds
/// them first; by hand, `cargo build -p miniond -p minion-cli` before `cargo test -p minion-e2e`.
pub fn vm_env(test: &str) -> bool {
    vm_env_with(test, &[])
}

/// [`vm_env`], and `more`.
pub fn vm_env_with(test: &str, more: &[minion_testenv::Need<'_>]) -> bool {
    let (miniond, minion) = binaries();
    let mut needs = binary_needs(&miniond, &minion).to_vec();
    needs.extend_from_slice(more);
    image_env(test, "minimal", &needs)
}

/// The Python with the tests' stock grpcio client (scripts/setup-host.sh makes it).
pub fn grpc_python() -> PathBuf {
    std::env::var_os("MINION_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/minion/pyenv/bin/python"))
}

/// Runs tests/python/grpc_client.py against `target`: its exit status and its JSON lines.
pub fn grpc_python_client(target: &str, repo: &Path, extra: &[&str]) -> (bool, Vec<Value>) {
    let out = Command::new(grpc_python())
        .arg(workspace_root().join("tests/python/grpc_client.py"))
        .arg(target)
        .arg(repo)
        .args(extra)
        .output()
        .expect("the Python client runs");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    eprintln!(
        "grpc_client.py stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), lines)
}

/// The daemon's and the CLI's binaries, built.
fn binary_needs<'a>(miniond: &'a Path, minion: &'a Path) -> [minion_testenv::Need<'a>; 2] {
    let make = "cargo build -p miniond -p minion-cli";
    [
        minion_testenv::Need::File {
            path: miniond,
            make,
        },
        minion_testenv::Need::File { path: minion, make },
    ]
}

/// Whether this machine can run a daemon that boots no VM: root, the binaries, and `more`.
pub fn daemon_env(test: &str, more: &[minion_testenv::Need<'_>]) -> bool {
    let (miniond, minion) = binaries();
    let mut needs = vec![minion_testenv::Need::Root];
    needs.extend(binary_needs(&miniond, &minion));
    needs.extend_from_slice(more);
    minion_testenv::require(test, &needs)
}

/// Whether this machine can boot `variant` with the agent (root, libvirtd, the image, the agent,
/// virsh), and has `more`.
pub fn image_env(test: &str, variant: &str, more: &[minion_testenv::Need<'_>]) -> bool {
    use minion_testenv::{require, Need};
    let uri = libvirt_uri();
    let images = images_dir();
    let agent = agent_path();
    let mut needs = vec![
        Need::Root,
        Need::Libvirtd(&uri),
        Need::Image {
            dir: &images,
            name: variant,
        },
        Need::File {
            path: &agent,
            make: "scripts/build-agent.sh",
        },
        Need::Program("virsh"),
    ];
    needs.extend_from_slice(more);
    require(test, &needs)
}

pub fn libvirt_uri() -> String {
    std::env::var("MINION_LIBVIRT_URI").unwrap_or_else(|_| "qemu:///system".into())
}

fn agent_path() -> PathBuf {
    std::env::var_os("MINION_AGENT_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/agent/minion-agent"))
}

pub fn agent_binary() -> PathBuf {
    let p = agent_path();
    assert!(
        p.is_file(),
        "{} missing: run scripts/build-agent.sh",
        p.display()
    );
    p
}

/// Names of the domains libvirt runs.
pub fn running_domains() -> Vec<String> {
    try_running_domains().unwrap_or_else(|e| panic!("virsh: {e}"))
}

/// [`running_domains`], or why virsh could not say (libvirtd restarting).
pub fn try_running_domains() -> Result<Vec<String>, String> {
    let out = Command::new("virsh")
        .args(["-c", &libvirt_uri(), "list", "--all", "--name"])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{out:?}"));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

pub const PASSING: &str = r#"name: e2e-pass
desc: writes an artifact and passes
maintainer: minion
input:
  args: [koji_build]
actions:
  - name: work
    shell:
      - echo "checking the item now"
      - echo e2e-artifact > ${artifactsdir}/out.txt
"#;

/// A task repo (a local directory) holding one formula.
pub fn task_repo(formula: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("task repo");
    std::fs::write(d.path().join("runtask.yml"), formula).expect("formula");
    d
}

/// Keys of `extra` that go at the config's top level (the rest goes into the pool's table).
const TOP_LEVEL: &[&str] = &[
    "images_dir",
    "listen_http",
    "listen_tcp",
    "keep_free_mib",
    "reap_interval_secs",
];

/// The storage pool of this machine the test daemons keep their VMs' volumes, snapshots and
/// images' copies in (apart from a real `minion` pool; the images are copied there once).
pub const TEST_STORAGE_POOL: &str = "minion-test";
pub const TEST_VOLUMES: &str = "/var/lib/minion/test-volumes";

/// The volumes in [`TEST_VOLUMES`] of the daemon whose state dir is `state_dir`: its VMs'
/// (`minion-<tag>-…`) and its snapshots' (`minion-snap-<tag>-…`).
pub fn daemon_volumes(state_dir: &Path) -> Vec<PathBuf> {
    let tag = minion_provisioning::volumes::owner_tag(&state_dir.to_string_lossy());
    let (vm, snap) = (format!("minion-{tag}-"), format!("minion-snap-{tag}-"));
    std::fs::read_dir(TEST_VOLUMES)
        .map(|r| {
            r.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with(&vm) || n.starts_with(&snap)
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// The core file process `pid` left: `core`/`core.PID` in `cwd` for a relative core_pattern,
/// or a file naming the pid in an absolute pattern's directory (a `|` pattern keeps none).
fn core_of(cwd: &Path, pid: u32) -> Option<PathBuf> {
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").ok()?;
    let pattern = pattern.trim();
    if pattern.starts_with('|') {
        return None;
    }
    let dir = match Path::new(pattern).parent() {
        Some(d) if pattern.starts_with('/') => d.to_path_buf(),
        _ => cwd.to_path_buf(),
    };
    let pid = pid.to_string();
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("core")
                    && (n == "core" || n.split(|c: char| !c.is_ascii_digit()).any(|d| d == pid))
            })
        })
}

/// One miniond process with its own state dir, socket and config.
pub struct Daemon {
    pub child: Option<Child>,
    pub state: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub minion: PathBuf,
    pub miniond: PathBuf,
}

impl Daemon {
    pub fn start(max_vms: u32, min_ready: u32) -> Daemon {
        Daemon::start_with(max_vms, min_ready, "")
    }

    /// [`Daemon::start`] with `extra` appended to the config (e.g. a `[reporting]` table).
    pub fn start_with(max_vms: u32, min_ready: u32, extra: &str) -> Daemon {
        let mut d = Daemon::prepare(max_vms, min_ready, extra);
        d.spawn();
        d
    }

    /// [`Daemon::start_with`] without starting the process ([`Daemon::spawn`] does).
    pub fn prepare(max_vms: u32, min_ready: u32, extra: &str) -> Daemon {
        let (miniond, minion) = binaries();
        // qemu runs as its own user: the state dir must be traversable; short for the socket limit.
        std::fs::create_dir_all("/var/lib/minion").expect("/var/lib/minion");
        let state = tempfile::Builder::new()
            .prefix("e2e-d-")
            .tempdir_in("/var/lib/minion")
            .expect("state dir");
        let images = images_dir();
        let socket = state.path().join("miniond.sock");
        let config = state.path().join("miniond.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = {state:?}\n{images}agent_binary = {agent:?}\n{top}\
                 listen = {socket:?}\nlog_format = \"json\"\nretry_budget = 1\n\n\
                 [submissions]\nlocal_repo_roots = [{tmp:?}, {workspace:?}]\n\n\
                 [local]\nstorage_pool = {test_pool:?}\nstorage_dir = {test_volumes:?}\n\n\
                 [pools.minimal]\nimage = \"minimal\"\nlibvirt_uri = {uri:?}\nmax_vms = {max_vms}\n\
                 min_ready = {min_ready}\n\
                 vcpus = 1\nmemory_mib = 512\ndefault_timeout_seconds = 300\n{start}{extra}",
                state = state.path().join("state"),
                // A test with a catalog of its own (image imports) names it in `extra`.
                images = if extra.lines().any(|l| l.starts_with("images_dir")) {
                    String::new()
                } else {
                    format!("images_dir = {images:?}\n")
                },
                top = extra
                    .lines()
                    .filter(|l| TOP_LEVEL.iter().any(|k| l.starts_with(k)))
                    .map(|l| format!("{l}\n"))
                    .collect::<String>(),
                extra = extra
                    .lines()
                    .filter(|l| !TOP_LEVEL.iter().any(|k| l.starts_with(k)))
                    .map(|l| format!("{l}\n"))
                    .collect::<String>(),
                // Booted VMs unless a test asks for snapshots (tests/snapshots.rs): each daemon
                // here has its own state dir, and would make its own snapshot first.
                start = if extra.lines().any(|l| l.starts_with("start")) {
                    ""
                } else {
                    "start = \"boot\"\n"
                },
                agent = agent_binary(),
                test_pool = TEST_STORAGE_POOL,
                test_volumes = TEST_VOLUMES,
                uri = libvirt_uri(),
                // Tests submit task repos from temp dirs and the workspace's examples.
                tmp = std::env::temp_dir(),
                workspace = workspace_root(),
            ),
        )
        .expect("config");
        Daemon {
            child: None,
            state,
            config,
            socket,
            minion,
            miniond,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state.path().join("state")
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.path().join("miniond.log"))
            .expect("log file");
        let mut cmd = Command::new(&self.miniond);
        cmd.arg("--config")
            .arg(&self.config)
            // A crash leaves its core here (with a relative core_pattern), for `death`.
            .current_dir(self.state.path())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                let unlimited = libc::rlimit {
                    rlim_cur: libc::RLIM_INFINITY,
                    rlim_max: libc::RLIM_INFINITY,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &unlimited);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("miniond starts");
        self.child = Some(child);
        // Ready when the health of the API answers through the CLI.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.socket.exists() && self.cli(&["pool", "list"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "miniond did not come up: {}{}",
                self.log(),
                self.death()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reaped");
        }
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let st = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .expect("kill runs");
            assert!(st.success());
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if c.try_wait().expect("wait").is_some() {
                    return;
                }
                assert!(Instant::now() < deadline, "miniond ignored SIGTERM");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// How miniond ended, when it did without being told to: its exit status or signal, and
    /// the backtrace of every thread from its core when there is one and gdb is installed.
    /// Empty while it runs. Does not reap it.
    pub fn death(&self) -> String {
        let Some(c) = self.child.as_ref() else {
            return String::new();
        };
        let pid = c.id();
        // SAFETY: a zeroed siginfo_t is valid; WNOWAIT leaves the child to be reaped later.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: waitid filled `info` for an exited child (si_pid 0 means still running).
        let (exited, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
        if rc != 0 || exited == 0 {
            return String::new();
        }
        if code == libc::CLD_EXITED {
            return format!("\nminiond (pid {pid}) exited with status {status}");
        }
        let mut report = format!("\nminiond (pid {pid}) was killed by signal {status}");
        let Some(core) = core_of(self.state.path(), pid) else {
            report.push_str(" (no core file found)");
            return report;
        };
        report.push_str(&format!("; core {}", core.display()));
        match Command::new("gdb")
            .args([
                "-batch",
                "-nx",
                "-ex",
                "bt",
                "-ex",
                "thread apply all bt 12",
            ])
            .arg(&self.miniond)
            .arg(&core)
            .output()
        {
            Ok(out) => report.push_str(&format!("\n{}", String::from_utf8_lossy(&out.stdout))),
            Err(e) => report.push_str(&format!(" (gdb: {e})")),
        }
        report
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("miniond.log")).unwrap_or_default()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.minion)
            .args(args)
            .env("MINION_SOCKET", &self.socket)
            .output()
            .expect("minion runs")
    }

    /// `minion ARGS` as uid `uid` with only `groups` (setpriv), on this daemon's socket.
    pub fn cli_as(&self, uid: u32, groups: &[u32], args: &[&str]) -> Output {
        let groups = if groups.is_empty() {
            "--clear-groups".to_string()
        } else {
            format!(
                "--groups={}",
                groups
                    .iter()
                    .map(|g| g.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        Command::new("setpriv")
            .args([format!("--reuid={uid}"), format!("--regid={uid}"), groups])
            .arg(&self.minion)
            .args(args)
            .env("MINION_SOCKET", &self.socket)
            .output()
            .expect("setpriv runs")
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.cli(&a);
        assert!(
            out.status.success(),
            "minion {args:?}: {}\n{}{}",
            String::from_utf8_lossy(&out.stderr),
            self.log(),
            self.death()
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// `minion submit REPO -i foo-1.0-1.fc40 -t koji_build EXTRA…`'s arguments.
    pub fn submit_args<'a>(repo: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec![
            "submit",
            repo.to_str().expect("utf8 path"),
            "-i",
            "foo-1.0-1.fc40",
            "-t",
            "koji_build",
        ];
        a.extend_from_slice(extra);
        a
    }

    /// Submits and returns the job id (`--json`).
    pub fn submit(&self, repo: &Path, extra: &[&str]) -> String {
        self.json(&Self::submit_args(repo, extra))["id"]
            .as_str()
            .expect("job id")
            .to_string()
    }

    /// `minion submit … --follow`: the CLI's output once the job has ended.
    pub fn submit_follow(&self, repo: &Path) -> Output {
        self.cli(&Self::submit_args(repo, &["--follow"]))
    }

    pub fn job(&self, id: &str) -> Value {
        self.json(&["job", "show", id])
    }

    pub fn wait_state(&self, id: &str, want: &[&str], within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let j = self.job(id);
            if want.contains(&j["state"].as_str().unwrap_or("")) {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not in {want:?} after {within:?}: {j:#}\n--- miniond ---\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGHUP to the daemon (it re-reads its config file).
    pub fn hup(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let st = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
    }

    /// Nothing of the job is left: no domain, no per-VM dir (overlay, seed). A job's end is
    /// written once its VM is paused, and the domain and files go right after (before the slot
    /// is reused): this allows that teardown a few seconds, no more.
    pub fn assert_no_vm(&self, id: &str) {
        let name = format!("minion-{id}");
        let dir = self.state_dir().join("vms").join(id);
        let deadline = Instant::now() + TEARDOWN_AFTER_END;
        loop {
            let domain = running_domains().contains(&name);
            if !domain && !dir.exists() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{TEARDOWN_AFTER_END:?} after the job's end: {}",
                if domain {
                    format!("domain {name} still exists")
                } else {
                    format!("{} left behind", dir.display())
                }
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// How long a VM's teardown may run on after its job's end was written.
pub const TEARDOWN_AFTER_END: Duration = Duration::from_secs(10);

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // Whatever a failed test left: destroy this daemon's domains.
        if let Ok(jobs) = std::fs::read_dir(self.state_dir().join("vms")) {
            for j in jobs.flatten() {
                let name = format!("minion-{}", j.file_name().to_string_lossy());
                let _ = Command::new("virsh")
                    .args(["-c", &libvirt_uri(), "destroy", &name])
                    .output();
            }
        }
        // Its snapshots (kept across restarts) and anything else it left: its state dir goes.
        let left = daemon_volumes(&self.state_dir());
        if !left.is_empty() {
            for v in &left {
                let _ = std::fs::remove_file(v);
            }
            let _ = Command::new("virsh")
                .args(["-c", &libvirt_uri(), "pool-refresh", TEST_STORAGE_POOL])
                .output();
        }
    }
}

/// The domains alive in libvirt of the daemon whose state dir is `state_dir` (its per-VM dirs
/// name them: a domain `minion-<id>` exists only while `vms/<id>` does).
pub fn daemon_domains(state_dir: &Path) -> Vec<String> {
    let ids = vm_ids(state_dir);
    running_domains()
        .into_iter()
        .filter(|n| ids.iter().any(|i| *n == format!("minion-{i}")))
        .collect()
}

/// The VM ids under `state_dir/vms`.
pub fn vm_ids(state_dir: &Path) -> Vec<String> {
    std::fs::read_dir(state_dir.join("vms"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

impl Daemon {
    /// This daemon's VM ids.
    pub fn vm_ids(&self) -> Vec<String> {
        vm_ids(&self.state_dir())
    }

    /// This daemon's domains alive in libvirt.
    pub fn domains(&self) -> Vec<String> {
        daemon_domains(&self.state_dir())
    }
}

/// Samples, every 50 ms on its own thread, how many of a daemon's domains are alive at once.
pub struct AliveSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl AliveSampler {
    pub fn start(state_dir: &Path) -> AliveSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, dir) = (stop.clone(), state_dir.to_path_buf());
        let thread = std::thread::spawn(move || {
            let mut max_alive = 0;
            while !flag.load(Ordering::SeqCst) {
                // While libvirtd restarts nobody can say: that sample is skipped.
                if let Ok(all) = try_running_domains() {
                    let ids = vm_ids(&dir);
                    let alive = all
                        .iter()
                        .filter(|n| ids.iter().any(|i| **n == format!("minion-{i}")))
                        .count();
                    max_alive = max_alive.max(alive);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            max_alive
        });
        AliveSampler { stop, thread }
    }

    /// Stops sampling; the most domains seen alive at once.
    pub fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("sampler thread")
    }
}

pub fn states(j: &Value) -> Vec<String> {
    j["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["state"].as_str().unwrap_or("").to_string())
        .collect()
}

pub const FAILING: &str = r#"name: e2e-fail
desc: its shell step fails
maintainer: minion
actions:
  - name: fail
    shell:
      - echo "about to fail"
      - exit 3
"#;

pub const SLEEPING: &str = r#"name: e2e-sleep
desc: runs for a long time
maintainer: minion
actions:
  - name: sleep
    shell:
      - echo "sleeping"
      - sleep 600
"#;

/// A free loopback port for the daemon's `listen_http`.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// GET `url` (plain http on loopback): status and body.
pub fn http_get(url: &str) -> (u16, String) {
    let (status, _, body) = http_get_with(url, &[]);
    (status, body)
}

/// GET `url` with extra request headers: status, response head, body.
pub fn http_get_with(url: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// A CA and a server certificate for `localhost` / 127.0.0.1 it signed (openssl, P-256).
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Runs `openssl ARGS` in `dir` (relative paths are under it); it must succeed.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn make_pki(dir: &Path, name: &str) -> Pki {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let run = |args: &[&str]| openssl(dir, args);
    let s = |p: &PathBuf| p.to_str().expect("utf8 path").to_string();
    let (ca, ca_key, csr, cert, key, ext) = (
        p("ca.pem"),
        p("ca.key"),
        p("server.csr"),
        p("server.pem"),
        p("server.key"),
        p("ext.cnf"),
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509", "-days", "2", "-subj"];
    let subj = format!("/CN=minion test CA {name}");
    a.push(&subj);
    a.extend(ec);
    let (ca_s, ca_key_s) = (s(&ca), s(&ca_key));
    a.extend(["-keyout", &ca_key_s, "-out", &ca_s]);
    run(&a);
    let (csr_s, key_s, cert_s, ext_s) = (s(&csr), s(&key), s(&cert), s(&ext));
    let mut a = vec!["req", "-subj", "/CN=localhost"];
    a.extend(ec);
    a.extend(["-keyout", &key_s, "-out", &csr_s]);
    run(&a);
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext file");
    run(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &csr_s,
        "-CA",
        &ca_s,
        "-CAkey",
        &ca_key_s,
        "-CAcreateserial",
        "-extfile",
        &ext_s,
        "-out",
        &cert_s,
    ]);
    Pki { ca, cert, key }
}

/// A daemon serving TLS on TCP too, with one token per role (made by `minion token new`).
pub struct TlsDaemon {
    pub d: Daemon,
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    /// A CA that did not sign the server's certificate.
    pub other_ca: PathBuf,
    pub url: String,
    pub port: u16,
    /// `read`, `submit`, `admin`.
    pub tokens: std::collections::HashMap<&'static str, String>,
}

impl TlsDaemon {
    pub fn start(max_vms: u32) -> TlsDaemon {
        TlsDaemon::start_with(max_vms, "")
    }

    /// [`TlsDaemon::start`] with `extra` config lines (e.g. `listen_http`).
    pub fn start_with(max_vms: u32, extra: &str) -> TlsDaemon {
        let dir = tempfile::tempdir().expect("tmp");
        let pki = make_pki(dir.path(), "good");
        let other_ca = make_pki(dir.path(), "other").ca;
        let (_, minion) = binaries();
        let mut tokens = std::collections::HashMap::new();
        let mut entries = String::new();
        for role in ["read", "submit", "admin"] {
            let out = Command::new(&minion)
                .args([
                    "token",
                    "new",
                    &format!("{role}-bot"),
                    "--role",
                    role,
                    "--json",
                ])
                .output()
                .expect("minion token new");
            assert!(out.status.success(), "{out:?}");
            let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
            tokens.insert(role, v["token"].as_str().expect("token").to_string());
            entries.push_str(v["entry"].as_str().expect("entry"));
        }
        let tokens_file = dir.path().join("tokens.toml");
        std::fs::write(&tokens_file, entries).expect("tokens file");
        let port = free_port();
        let d = Daemon::start_with(
            max_vms,
            0,
            &format!(
                "listen_tcp = \"127.0.0.1:{port}\"\n{extra}\n[access]\ntokens_file = {tokens_file:?}\n\
                 [tls]\ncert = {:?}\nkey = {:?}\n",
                pki.cert, pki.key
            ),
        );
        TlsDaemon {
            d,
            dir,
            pki,
            other_ca,
            url: format!("https://localhost:{port}"),
            port,
            tokens,
        }
    }

    /// `minion ARGS --connect URL --ca CA` with `token` in MINION_TOKEN (none: unset).
    pub fn cli(&self, token: Option<&str>, ca: &Path, args: &[&str]) -> Output {
        let mut c = Command::new(&self.d.minion);
        c.args(args)
            .args(["--connect", &self.url, "--ca"])
            .arg(ca)
            .env_remove("MINION_SOCKET")
            .env_remove("MINION_TOKEN");
        if let Some(t) = token {
            c.env("MINION_TOKEN", t);
        }
        c.output().expect("minion runs")
    }
}

/// An output's stdout and stderr, for assertions.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The gid of the `minion` group (scripts/setup-host.sh creates it).
pub fn minion_gid() -> u32 {
    let out = Command::new("getent")
        .args(["group", "minion"])
        .output()
        .expect("getent");
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .expect("the minion group exists (scripts/setup-host.sh)")
}

/// Polls `f` every 200 ms until it is true.
pub fn until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `promtool check metrics` on `text`: whether it passed, and what it said.
pub fn promtool_check(text: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool ends");
    (out.status.success(), output_text(&out))
}
