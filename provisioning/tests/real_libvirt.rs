//! Against the real libvirtd (`qemu:///system`) and the real `minimal`/`standard` images: overlay,
//! seed with a stub agent, transient domain, marker on the serial console, destroy, cleanup, and
//! nothing left. Names contain `real_libvirt` so nextest runs them one at a time (.config/nextest.toml).
//!
//! Needs root, `make image`, and libvirtd (started here through scripts/libvirt-start.sh).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use minion_provisioning::{accel, image, overlay, vm, Accel, Hypervisor, VmFiles};

const URI: &str = "qemu:///system";
const IMAGES_DIR: &str = "/var/cache/minion/images";
/// qemu runs as libvirt-qemu: the VM files must sit under directories others can traverse, which a
/// tempdir under /tmp (mode 0700) is not.
const STATE_PARENT: &str = "/var/lib/minion";

/// `cargo test` runs a binary's tests in parallel; VMs on 2 shared cores should not.
static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate sits in the repo")
        .to_path_buf()
}

/// Whether this machine can run these tests (root, both images), then starts libvirtd if it is
/// not running. Without root or images: a skip line on a developer's machine, a failure under
/// CI (see minion-testenv).
fn ensure_libvirtd(test: &str) -> bool {
    use minion_testenv::{require, Need};
    let images = Path::new(IMAGES_DIR);
    let ok = require(
        test,
        &[
            Need::Root,
            Need::Image {
                dir: images,
                name: "minimal",
            },
            Need::Image {
                dir: images,
                name: "standard",
            },
            Need::Program("virsh"),
        ],
    );
    if !ok {
        return false;
    }
    let script = repo_root().join("scripts/libvirt-start.sh");
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "libvirtd is not available ({} failed): {}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

fn load_image(name: &str) -> image::Image {
    image::load(Path::new(IMAGES_DIR), name).unwrap_or_else(|e| {
        panic!("image `{name}` is not usable: {e}\nBuild the images first: `make image`")
    })
}

/// A stub agent: prints the marker on the console and powers the guest off (as PID 1 under
/// `minion-init` through reboot(2); under systemd through systemctl), like images/smoke-boot.sh.
/// With `power_off = false` it keeps the guest running (for destroy tests).
fn stub_agent(dir: &Path, marker: &str, power_off: bool) -> PathBuf {
    let path = dir.join("stub-agent");
    let end = if power_off {
        "if [ $$ = 1 ]; then\n    [ -x /bin/busybox ] && /bin/busybox poweroff -f\n    python3 -c 'import ctypes; ctypes.CDLL(None).reboot(0x4321FEDC)'\nelse\n    systemctl poweroff --no-block\nfi\nsleep 60\n"
    } else {
        "while :; do sleep 1; done\n"
    };
    fs::write(
        &path,
        format!("#!/bin/sh\necho \"{marker}\" > /dev/console\n{end}"),
    )
    .expect("write stub agent");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod"); // the seed makes it 0755
    path
}

/// Destroys the domain and removes the files even when an assertion fails half-way.
struct VmGuard<'a> {
    hv: &'a Hypervisor,
    name: String,
    files: VmFiles,
}

impl Drop for VmGuard<'_> {
    fn drop(&mut self) {
        let _ = self.hv.destroy(&self.name);
        let _ = self.files.remove_all();
    }
}

struct Scratch {
    state_dir: tempfile::TempDir,
}

fn scratch() -> Scratch {
    fs::create_dir_all(STATE_PARENT).expect("state parent");
    fs::set_permissions(STATE_PARENT, fs::Permissions::from_mode(0o755))
        .expect("chmod state parent");
    let state_dir = tempfile::Builder::new()
        .prefix("test-")
        .tempdir_in(STATE_PARENT)
        .expect("state dir");
    fs::set_permissions(state_dir.path(), fs::Permissions::from_mode(0o755))
        .expect("chmod state dir");
    Scratch { state_dir }
}

fn unique_job_id(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    format!("it-{tag}-{}-{nanos:09}", std::process::id())
}

fn wait_for_marker(console: &Path, marker: &str, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if fs::read(console)
            .map(|b| String::from_utf8_lossy(&b).contains(marker))
            .unwrap_or(false)
        {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn virsh_all_names() -> Vec<String> {
    let out = Command::new("virsh")
        .args(["-c", URI, "list", "--all", "--name"])
        .output()
        .expect("virsh runs");
    assert!(
        out.status.success(),
        "virsh list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn console_tail(console: &Path) -> String {
    let text = fs::read(console)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    text.lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}

struct Prepared {
    files: VmFiles,
    xml: String,
    name: String,
    job_id: String,
    marker: String,
}

fn prepare(scratch: &Scratch, variant: &str, power_off: bool, accel: &Accel) -> Prepared {
    let job_id = unique_job_id(variant);
    let marker = format!("MINION-PROVISIONING-MARKER-{job_id}");
    let req = vm::VmRequest {
        state_dir: scratch.state_dir.path().to_path_buf(),
        job_id: job_id.clone(),
        image: load_image(variant),
        accel: accel.clone(),
        agent_binary: stub_agent(scratch.state_dir.path(), &marker, power_off),
        vcpus: 1,
        memory_mib: 512,
        hostname: "minion".into(),
        network: None,
        disk_bytes: None,
        host_image: None,
        template_of: None,
    };
    let prepared = vm::prepare(&req).expect("prepare the VM");
    eprintln!("{variant}: {:?}", prepared.timings);
    Prepared {
        files: prepared.files,
        xml: prepared.xml,
        name: prepared.name,
        job_id,
        marker,
    }
}

fn assert_nothing_left(hv: &Hypervisor, p: &Prepared) {
    assert!(
        !hv.is_active(&p.name).expect("is_active"),
        "{} still active",
        p.name
    );
    assert!(
        !virsh_all_names().contains(&p.name),
        "`virsh list --all` still shows {}",
        p.name
    );
    assert!(!hv
        .list_marked()
        .expect("list_marked")
        .iter()
        .any(|m| m.job_id == p.job_id));
    assert!(
        !p.files.dir.exists(),
        "{} still exists",
        p.files.dir.display()
    );
    assert!(
        !p.files.overlay.exists() && !p.files.seed.exists() && !p.files.channel_socket.exists()
    );
}

/// Boots `variant` with a stub agent that powers off; checks marker, self power-off, cleanup.
fn boot_to_marker(variant: &str, timeout: Duration) {
    let _serial = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !ensure_libvirtd(&format!(
        "real_libvirt_{variant}_boots_stub_agent_and_leaves_nothing"
    )) {
        return;
    }
    let accel = accel::detect();
    let scratch = scratch();
    let p = prepare(&scratch, variant, true, &accel);
    let hv = Hypervisor::connect(URI).expect("connect to libvirtd");

    let t0 = Instant::now();
    let name = hv.create_transient(&p.xml).expect("domain starts");
    let t_create = t0.elapsed();
    let guard = VmGuard {
        hv: &hv,
        name: name.clone(),
        files: p.files.clone(),
    };
    assert_eq!(name, p.name);
    assert!(hv.is_active(&name).expect("is_active"));
    let marked = hv.list_marked().expect("list_marked");
    assert!(
        marked
            .iter()
            .any(|m| m.name == name && m.job_id == p.job_id && m.active),
        "our domain is not among the marked ones: {marked:?}"
    );
    assert!(
        p.files.channel_socket.exists(),
        "libvirt did not create the channel socket"
    );

    let Some(t_marker) = wait_for_marker(&p.files.console_log, &p.marker, timeout) else {
        panic!(
            "no marker within {timeout:?} ({accel}); console tail:\n{}",
            console_tail(&p.files.console_log)
        );
    };
    let t = Instant::now();
    let gone = hv
        .wait_until_inactive(&name, Duration::from_secs(60))
        .expect("wait");
    assert!(
        gone,
        "the guest powered off but the domain is still running; console:\n{}",
        console_tail(&p.files.console_log)
    );
    let t_gone = t.elapsed();
    eprintln!(
        "{variant} ({accel}): create {t_create:?}, create→marker {:?}, marker→gone {t_gone:?}",
        t_marker + t_create
    );
    let kept = scratch.state_dir.path().join("console.kept");
    vm::teardown(&hv, &name, &p.files, Some(&kept)).expect("teardown of a powered-off domain");
    let console = fs::read_to_string(&kept).expect("console log kept");
    assert!(
        console.contains(&p.marker),
        "kept console log lacks the marker"
    );
    drop(guard);
    assert_nothing_left(&hv, &p);
}

#[test]
fn real_libvirt_minimal_boots_stub_agent_and_leaves_nothing() {
    boot_to_marker("minimal", Duration::from_secs(60));
}

#[test]
fn real_libvirt_standard_boots_stub_agent_and_leaves_nothing() {
    boot_to_marker("standard", Duration::from_secs(120));
}

#[test]
fn real_libvirt_destroy_of_a_running_domain_and_twice() {
    let _serial = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !ensure_libvirtd("real_libvirt_destroy_of_a_running_domain_and_twice") {
        return;
    }
    let accel = accel::detect();
    let scratch = scratch();
    let p = prepare(&scratch, "minimal", false, &accel);
    let hv = Hypervisor::connect(URI).expect("connect to libvirtd");
    let name = hv.create_transient(&p.xml).expect("domain starts");
    let guard = VmGuard {
        hv: &hv,
        name: name.clone(),
        files: p.files.clone(),
    };
    let Some(_) = wait_for_marker(&p.files.console_log, &p.marker, Duration::from_secs(60)) else {
        panic!(
            "no marker; console tail:\n{}",
            console_tail(&p.files.console_log)
        );
    };
    assert!(
        hv.is_active(&name).expect("is_active"),
        "the stub keeps the guest running"
    );
    let t = Instant::now();
    hv.destroy(&name).expect("destroy");
    let t_destroy = t.elapsed();
    assert!(!hv.is_active(&name).expect("is_active"));
    hv.destroy(&name).expect("second destroy is Ok");
    eprintln!("destroy of a running domain: {t_destroy:?}");
    p.files.remove_all().expect("remove");
    p.files.remove_all().expect("remove twice");
    drop(guard);
    assert_nothing_left(&hv, &p);
}

#[test]
fn real_libvirt_refuses_a_domain_whose_overlay_is_missing() {
    let _serial = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !ensure_libvirtd("real_libvirt_refuses_a_domain_whose_overlay_is_missing") {
        return;
    }
    let scratch = scratch();
    let p = prepare(&scratch, "minimal", true, &accel::detect());
    overlay::remove(&p.files.overlay).expect("remove overlay");
    let hv = Hypervisor::connect(URI).expect("connect");
    let err = hv
        .create_transient(&p.xml)
        .expect_err("no overlay → libvirt refuses");
    let _guard = VmGuard {
        hv: &hv,
        name: p.name.clone(),
        files: p.files.clone(),
    };
    assert!(err.to_string().contains(&p.name), "{err}");
    assert!(
        err.message().contains("overlay.qcow2"),
        "libvirt's message names the file: {err}"
    );
    assert!(!hv.is_active(&p.name).expect("is_active"));
}

#[test]
fn real_libvirt_autodestroy_domain_dies_with_its_connection() {
    let _serial = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !ensure_libvirtd("real_libvirt_autodestroy_domain_dies_with_its_connection") {
        return;
    }
    let scratch = scratch();
    let p = prepare(&scratch, "minimal", false, &accel::detect());
    let watcher = Hypervisor::connect(URI).expect("connect");
    let _guard = VmGuard {
        hv: &watcher,
        name: p.name.clone(),
        files: p.files.clone(),
    };
    let owner = Hypervisor::connect(URI).expect("second connection");
    let name = owner
        .create_transient_autodestroy(&p.xml)
        .expect("domain starts");
    assert!(watcher.is_active(&name).expect("is_active"));
    // The owner's process "dies": its connection closes, and libvirt destroys the domain.
    drop(owner);
    let gone = watcher
        .wait_until_inactive(&name, Duration::from_secs(30))
        .expect("wait");
    assert!(gone, "an autodestroy domain outlived its connection");
    vm::teardown(&watcher, &name, &p.files, None).expect("teardown");
    assert_nothing_left(&watcher, &p);
}

/// Closes this process's connections on the libvirtd side (`virt-admin client-disconnect`), as a
/// libvirtd restart would, without disturbing anyone else's.
fn disconnect_my_libvirt_clients() -> usize {
    let out = Command::new("virt-admin")
        .args(["srv-clients-list", "libvirtd"])
        .output()
        .expect("virt-admin runs");
    assert!(
        out.status.success(),
        "virt-admin: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .next()
                .filter(|id| id.chars().all(|c| c.is_ascii_digit()))
        })
        .map(String::from)
        .collect();
    let me = format!("unix_process_id: {}", std::process::id());
    let mut closed = 0;
    for id in ids {
        let info = Command::new("virt-admin")
            .args(["client-info", "libvirtd", &id])
            .output()
            .expect("client-info");
        let text = String::from_utf8_lossy(&info.stdout).replace(' ', "");
        if text.lines().any(|l| l == me.replace(' ', "")) {
            let st = Command::new("virt-admin")
                .args(["client-disconnect", "libvirtd", &id])
                .status()
                .expect("disconnect");
            assert!(st.success(), "client-disconnect {id}");
            closed += 1;
        }
    }
    closed
}

#[test]
fn real_libvirt_connection_is_reopened_after_libvirtd_drops_it() {
    let _serial = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !ensure_libvirtd("real_libvirt_connection_is_reopened_after_libvirtd_drops_it") {
        return;
    }
    let hv = Hypervisor::connect(URI).expect("connect");
    hv.list_marked().expect("list before");
    assert!(hv.is_alive());
    assert!(
        disconnect_my_libvirt_clients() >= 1,
        "found none of this process's libvirt connections"
    );
    // The next calls notice the closed socket, connect again and succeed.
    hv.list_marked()
        .expect("list after the server closed the connection");
    assert!(!hv
        .is_active("minion-never-existed")
        .expect("lookup after reconnect"));
    assert!(hv.is_alive());
    // And once more, through a lookup first.
    assert!(disconnect_my_libvirt_clients() >= 1);
    assert!(!hv
        .is_active("minion-never-existed")
        .expect("lookup after the second close"));
}

/// The generic-cloud-image path: on `standard` with its own agent unit masked, only cloud-init can
/// start the agent, from the rendered user-data's `bootcmd`.
#[test]
fn real_libvirt_cloud_init_user_data_starts_the_agent() {
    let _serial = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !ensure_libvirtd("real_libvirt_cloud_init_user_data_starts_the_agent") {
        return;
    }
    let scratch = scratch();
    let job_id = unique_job_id("cloudinit");
    let marker = format!("MINION-PROVISIONING-MARKER-{job_id}");
    let mut img = load_image("standard");
    img.manifest
        .cmdline
        .push_str(" systemd.mask=minion-agent.service");
    let req = vm::VmRequest {
        state_dir: scratch.state_dir.path().to_path_buf(),
        job_id: job_id.clone(),
        image: img,
        accel: accel::detect(),
        agent_binary: stub_agent(scratch.state_dir.path(), &marker, true),
        vcpus: 1,
        memory_mib: 768,
        hostname: "minion-cloud".into(),
        network: None,
        disk_bytes: None,
        host_image: None,
        template_of: None,
    };
    let p = vm::prepare(&req).expect("prepare");
    let hv = Hypervisor::connect(URI).expect("connect");
    let name = hv.create_transient(&p.xml).expect("domain starts");
    let _guard = VmGuard {
        hv: &hv,
        name: name.clone(),
        files: p.files.clone(),
    };
    let timeout = Duration::from_secs(400);
    let Some(t) = wait_for_marker(&p.files.console_log, &marker, timeout) else {
        panic!(
            "cloud-init did not start the agent within {timeout:?}; console tail:\n{}",
            console_tail(&p.files.console_log)
        );
    };
    eprintln!("standard via cloud-init user-data: create→marker {t:?}");
    let console = fs::read_to_string(&p.files.console_log).unwrap_or_default();
    assert!(
        !console.contains("minion-agent-start"),
        "the image's own unit ran although masked; this test would not prove the user-data path"
    );
    vm::teardown(&hv, &name, &p.files, None).expect("teardown");
}

/// A hostile guest cannot fill the host's disk through its serial console: the console file goes
/// through virtlogd, which rotates it (virtlogd.conf max_size 2 MiB, max_backups 3 by default),
/// all inside the VM directory that teardown deletes.
#[test]
fn real_libvirt_console_spam_is_bounded_by_rotation() {
    let _serial = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !ensure_libvirtd("real_libvirt_console_spam_is_bounded_by_rotation") {
        return;
    }
    let scratch = scratch();
    let p = prepare(&scratch, "minimal", false, &accel::detect());
    // Replace the stub's seed with one that writes 3 MiB to the console (~25 s under TCG), then the marker.
    let spam = scratch.state_dir.path().join("spam-agent");
    fs::write(
        &spam,
        format!(
            "#!/bin/sh\nhead -c 3145728 /dev/zero | tr '\\0' 'x' > /dev/console\necho {} > /dev/console\nwhile :; do sleep 1; done\n",
            p.marker
        ),
    )
    .expect("spam agent");
    minion_provisioning::seed::remove(&p.files.seed).expect("old seed");
    minion_provisioning::seed::write(
        &minion_provisioning::SeedSpec {
            instance_id: p.job_id.clone(),
            hostname: "minion".into(),
            agent_binary: spam,
        },
        &p.files.seed,
    )
    .expect("spam seed");
    let hv = Hypervisor::connect(URI).expect("connect");
    let name = hv.create_transient(&p.xml).expect("domain starts");
    let _guard = VmGuard {
        hv: &hv,
        name: name.clone(),
        files: p.files.clone(),
    };
    let t = Instant::now();
    let Some(_) = wait_for_marker(&p.files.console_log, &p.marker, Duration::from_secs(300)) else {
        panic!(
            "no marker after the spam; console tail:\n{}",
            console_tail(&p.files.console_log)
        );
    };
    let written = t.elapsed();
    let mut total = 0;
    for entry in fs::read_dir(&p.files.dir).expect("ls") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("console.log") {
            let len = entry.metadata().expect("meta").len();
            assert!(len <= 2 * 1024 * 1024 + 64 * 1024, "{name} is {len} bytes");
            total += len;
        }
    }
    let mut names: Vec<_> = fs::read_dir(&p.files.dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("console.log"))
        .collect();
    names.sort();
    eprintln!("3 MiB of console spam in {written:?}: {total} bytes on disk in {names:?}");
    // Rotation happened, so the total is capped at (1 + max_backups) × max_size (8 MiB by
    // default; a 12 MiB spam measured 6 MiB kept).
    assert!(
        names.len() >= 2,
        "virtlogd did not rotate the console log: {names:?}"
    );
    vm::teardown(&hv, &name, &p.files, None).expect("teardown");
    assert_nothing_left(&hv, &p);
}

/// A channel opened again the moment its previous socket closed (a kept job's VM adopted as an
/// instance does this): libvirtd 9.0 deadlocks if the new open races the old stream's close, so
/// `channel_socket` ends the previous pump first. Each open must return, and libvirtd must still
/// answer at the end.
#[test]
fn real_libvirt_a_channel_reopened_as_its_socket_closes_leaves_libvirtd_answering() {
    let _serial = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !ensure_libvirtd(
        "real_libvirt_a_channel_reopened_as_its_socket_closes_leaves_libvirtd_answering",
    ) {
        return;
    }
    let scratch = scratch();
    let p = prepare(&scratch, "minimal", false, &accel::detect());
    let hv = std::sync::Arc::new(Hypervisor::connect(URI).expect("connect"));
    let name = hv.create_transient(&p.xml).expect("domain starts");
    let guard = VmGuard {
        hv: &hv,
        name: name.clone(),
        files: p.files.clone(),
    };
    let mut previous: Option<std::os::unix::net::UnixStream> = None;
    for round in 0..200 {
        let (tx, rx) = std::sync::mpsc::channel();
        let (h, n) = (hv.clone(), name.clone());
        // Our side of the previous channel hangs up just as the next open goes out: the event
        // loop aborts that stream while libvirtd opens the channel again.
        let closing = previous.take();
        std::thread::spawn(move || {
            let _ = tx.send(h.channel_socket(&n, minion_provisioning::domain::AGENT_CHANNEL));
        });
        std::thread::sleep(Duration::from_micros(round % 7 * 50));
        drop(closing);
        let sock = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!("round {round}: the channel's open hangs (libvirtd deadlocked?)")
            })
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        previous = Some(sock);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let h = hv.clone();
    std::thread::spawn(move || {
        let _ = tx.send(h.versions());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("libvirtd answers after the reopens")
        .expect("versions");
    drop(guard);
    assert_nothing_left(&hv, &p);
}
