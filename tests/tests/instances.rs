//! Developers' instances end to end: a real `miniond` makes VMs of the `minimal` image through
//! the real libvirtd, and the real `minion` CLI works in them through the agent (no network):
//! exec with exit codes and stdin, cp both ways, an interactive shell driven through a real
//! pseudo-terminal (output, resize, Ctrl-C, exit status), the console log; eight created at once;
//! `remove --all` and a daemon killed with instances alive leave no domain and no file.
//!
//! Needs what `daemon_e2e.rs` needs (libvirtd, the `minimal` image, `target/agent/minion-agent`).

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;

use common::*;

/// The pool's and the instances' VMs boot (a snapshot would be one more VM to make first); at
/// most `max` instances.
fn instances_config(max: u32) -> String {
    format!("start = \"boot\"\n[instances]\nmax = {max}\nper_owner = {max}\nstart = \"boot\"")
}

/// `minion instance create` output (`--json`), asserted to succeed.
fn create(d: &Daemon, args: &[&str]) -> Value {
    let mut a = vec!["instance", "create", "minimal"];
    a.extend_from_slice(args);
    d.json(&a)
}

fn list(d: &Daemon) -> Vec<Value> {
    d.json(&["instance", "list"])
        .as_array()
        .expect("a list")
        .clone()
}

fn exec(d: &Daemon, name: &str, cmd: &[&str]) -> std::process::Output {
    let mut a = vec!["instance", "exec", name, "--"];
    a.extend_from_slice(cmd);
    d.cli(&a)
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Nothing of the daemon's VMs is left: no domain, no per-VM dir.
fn assert_nothing_left(d: &Daemon) {
    until("every instance VM gone", TEARDOWN_AFTER_END, || {
        d.domains().is_empty() && d.vm_ids().is_empty()
    });
}

/// A pty pair: the master for the test, the slave for the CLI.
fn openpty(rows: u16, cols: u16) -> (std::fs::File, OwnedFd) {
    let (mut m, mut s) = (-1, -1);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds; name and termios may be null.
    let rc = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both were just opened and are ours.
    unsafe { (std::fs::File::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
}

/// Reads the master into `seen` until it holds `want` (or panics after 60 s).
fn expect(master: &mut std::fs::File, seen: &mut Vec<u8>, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(seen).contains(want) {
        assert!(
            Instant::now() < deadline,
            "no {want:?} on the terminal; it shows:\n{}",
            String::from_utf8_lossy(seen)
        );
        let mut pfd = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 200) } <= 0 {
            continue;
        }
        match master.read(&mut buf) {
            Ok(0) | Err(_) => std::thread::sleep(Duration::from_millis(50)),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn an_instance_runs_commands_copies_files_and_gives_a_real_shell() {
    let test = "an_instance_runs_commands_copies_files_and_gives_a_real_shell";
    if !vm_env(test) {
        return;
    }
    let d = Daemon::start_with(1, 0, &instances_config(2));
    let i = create(&d, &["--name", "e2e-dev"]);
    assert_eq!(i["name"], "e2e-dev");
    assert_eq!(i["state"], "ready", "{i:#}");
    assert!(i["ready_ms"].as_u64().unwrap_or(0) > 0, "{i:#}");
    let l = list(&d);
    assert_eq!(l.len(), 1, "{l:#?}");
    assert_eq!(l[0]["state"], "ready");
    assert_eq!(d.domains().len(), 1, "one domain for the instance");

    // A second one with the same name is refused; a bad name and an unknown image too.
    let dup = d.cli(&["instance", "create", "minimal", "--name", "e2e-dev"]);
    assert_eq!(dup.status.code(), Some(2), "{}", output_text(&dup));
    assert!(
        output_text(&dup).contains("exists"),
        "{}",
        output_text(&dup)
    );
    let bad = d.cli(&["instance", "create", "minimal", "--name", "Bad_Name"]);
    assert_eq!(bad.status.code(), Some(2), "{}", output_text(&bad));
    let unknown = d.cli(&["instance", "create", "no-such-image"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", output_text(&unknown));
    assert!(
        output_text(&unknown).contains("no-such-image"),
        "{}",
        output_text(&unknown)
    );

    // exec: output, the exit status, the VM's own name, stderr apart, stdin passed on.
    let o = exec(
        &d,
        "e2e-dev",
        &["sh", "-c", "hostname; echo err >&2; exit 3"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    assert_eq!(stdout(&o), "e2e-dev\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    let mut child = std::process::Command::new(&d.minion)
        .args(["instance", "exec", "e2e-dev", "--", "wc", "-c"])
        .env("MINION_SOCKET", &d.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("minion runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&vec![b'z'; 100_000])
        .expect("write");
    let o = child.wait_with_output().expect("exits");
    assert!(o.status.success());
    assert_eq!(stdout(&o).trim(), "100000");
    let none = exec(&d, "e2e-dev", &["/no/such/program"]);
    assert_ne!(none.status.code(), Some(0));
    assert!(
        output_text(&none).contains("/no/such/program"),
        "{}",
        output_text(&none)
    );

    // cp in and out: the same bytes back.
    let dir = tempfile::tempdir().expect("tempdir");
    let data: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.path().join("in.bin"), &data).expect("write");
    let up = d.cli(&[
        "instance",
        "cp",
        dir.path().join("in.bin").to_str().expect("utf8"),
        "e2e-dev:/root/in.bin",
    ]);
    assert!(up.status.success(), "{}", output_text(&up));
    let sum = exec(&d, "e2e-dev", &["sha256sum", "/root/in.bin"]);
    let local = {
        use std::process::Command;
        let o = Command::new("sha256sum")
            .arg(dir.path().join("in.bin"))
            .output()
            .expect("sha256sum");
        stdout(&o)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        stdout(&sum).starts_with(&local),
        "{} vs {local}",
        stdout(&sum)
    );
    let out = dir.path().join("out.bin");
    let down = d.cli(&[
        "instance",
        "cp",
        "e2e-dev:/root/in.bin",
        out.to_str().expect("utf8"),
    ]);
    assert!(down.status.success(), "{}", output_text(&down));
    assert_eq!(std::fs::read(&out).expect("copied out"), data);
    let missing = d.cli(&[
        "instance",
        "cp",
        "e2e-dev:/no/such",
        out.to_str().expect("utf8"),
    ]);
    assert_ne!(missing.status.code(), Some(0));
    assert!(!out.exists(), "a failed copy leaves no file");

    // The shell, through a real terminal: size, resize, Ctrl-C, exit status.
    let (mut master, slave) = openpty(31, 97);
    let mut cmd = std::process::Command::new(&d.minion);
    cmd.args(["instance", "shell", "e2e-dev"])
        .env("MINION_SOCKET", &d.socket)
        .env("TERM", "xterm")
        .stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::from(slave.try_clone().expect("dup")))
        .stderr(Stdio::from(slave));
    // SAFETY: setsid and TIOCSCTTY between fork and exec: the terminal is the CLI's own, so it
    // gets SIGWINCH when the test resizes it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut shell = cmd.spawn().expect("minion instance shell");
    drop(cmd);
    let mut seen = Vec::new();
    master
        .write_all(b"stty size; echo marker-$((6*7))\r")
        .expect("type");
    expect(&mut master, &mut seen, "31 97");
    expect(&mut master, &mut seen, "marker-42");
    let ws = libc::winsize {
        ws_row: 45,
        ws_col: 132,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize.
    assert_eq!(
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
        0
    );
    std::thread::sleep(Duration::from_millis(500));
    seen.clear();
    master.write_all(b"stty size\r").expect("type");
    expect(&mut master, &mut seen, "45 132");
    seen.clear();
    master.write_all(b"sleep 60; echo slept\r").expect("type");
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    master.write_all(&[0x03]).expect("^C");
    master.write_all(b"echo status-$?\r").expect("type");
    expect(&mut master, &mut seen, "status-130");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "Ctrl-C took {:?}",
        t.elapsed()
    );
    master.write_all(b"exit 5\r").expect("type");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = shell.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the shell did not end");
        // Keep the terminal drained so the CLI never blocks writing to it.
        let mut pfd = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 100) } > 0 {
            let mut buf = [0u8; 4096];
            let _ = master.read(&mut buf);
        }
    };
    assert_eq!(
        status.code(),
        Some(5),
        "the shell's exit status is the CLI's"
    );

    // The console log: what the agent wrote as it started (the VM booted).
    let con = d.cli(&["instance", "console", "e2e-dev"]);
    assert!(con.status.success(), "{}", output_text(&con));
    assert!(
        stdout(&con).contains("minion-agent starting"),
        "{}",
        stdout(&con)
    );

    let rm = d.cli(&["instance", "remove", "e2e-dev"]);
    assert!(rm.status.success(), "{}", output_text(&rm));
    assert!(list(&d).is_empty());
    assert_nothing_left(&d);
    let gone = exec(&d, "e2e-dev", &["true"]);
    assert_eq!(gone.status.code(), Some(2), "{}", output_text(&gone));
}

#[test]
fn eight_instances_created_at_once_are_distinct_and_remove_all_leaves_nothing() {
    let test = "eight_instances_created_at_once_are_distinct_and_remove_all_leaves_nothing";
    if !vm_env(test) {
        return;
    }
    let d = Daemon::start_with(1, 0, &instances_config(8));
    let names: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| create(&d, &[])["name"].as_str().expect("name").to_string()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("create"))
            .collect()
    });
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 8, "{names:?}");
    assert_eq!(d.domains().len(), 8);
    // A ninth is over the limit and makes nothing.
    let ninth = d.cli(&["instance", "create", "minimal"]);
    assert_eq!(ninth.status.code(), Some(2), "{}", output_text(&ninth));
    assert!(
        output_text(&ninth).contains("limit"),
        "{}",
        output_text(&ninth)
    );
    assert_eq!(d.domains().len(), 8);
    for n in &names {
        let o = exec(&d, n, &["sh", "-c", "hostname; cat /etc/machine-id"]);
        assert!(o.status.success(), "{n}: {}", output_text(&o));
        assert!(
            stdout(&o).starts_with(&format!("{n}\n")),
            "{n}: {}",
            stdout(&o)
        );
    }
    let rm = d.json(&["instance", "remove", "--all"]);
    assert_eq!(rm["removed"].as_array().map(Vec::len), Some(8), "{rm}");
    assert!(list(&d).is_empty());
    assert_nothing_left(&d);
}

#[test]
fn a_daemon_killed_with_instances_alive_leaves_no_vm_and_they_stay_listed_as_lost() {
    let test = "a_daemon_killed_with_instances_alive_leaves_no_vm_and_they_stay_listed_as_lost";
    if !vm_env(test) {
        return;
    }
    let mut d = Daemon::start_with(1, 0, &instances_config(4));
    let domains: Vec<String> = ["kept-a", "kept-b"]
        .iter()
        .map(|n| {
            create(&d, &["--name", n])["domain"]
                .as_str()
                .expect("domain")
                .to_string()
        })
        .collect();
    assert_eq!(d.domains().len(), 2);
    d.kill9();
    // Killed: each agent sees the host hang up and powers its VM off (the domain may already be
    // gone); the VMs' files stay until the next start reaps them, with any domain still alive.
    assert_eq!(d.vm_ids().len(), 2, "{:?}", d.vm_ids());
    d.spawn();
    until(
        "the killed daemon's instances reaped",
        TEARDOWN_AFTER_END,
        || {
            let alive = running_domains();
            domains.iter().all(|n| !alive.contains(n))
        },
    );
    assert_nothing_left(&d);
    let l = list(&d);
    assert_eq!(l.len(), 2, "{l:#?}");
    for i in &l {
        assert_eq!(i["state"], "lost", "{i:#}");
        assert!(
            i["reason"].as_str().unwrap_or("").contains("restarted"),
            "{i:#}"
        );
    }
    let o = exec(&d, "kept-a", &["true"]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(output_text(&o).contains("lost"), "{}", output_text(&o));
    // The name is free for a new instance; removing clears the rest.
    create(&d, &["--name", "kept-a"]);
    let o = exec(&d, "kept-a", &["hostname"]);
    assert_eq!(stdout(&o), "kept-a\n", "{}", output_text(&o));
    let rm = d.json(&["instance", "remove", "--all"]);
    assert_eq!(rm["removed"].as_array().map(Vec::len), Some(2), "{rm}");
    assert_nothing_left(&d);

    // A clean stop destroys them too.
    let domain = create(&d, &["--name", "stopped"])["domain"]
        .as_str()
        .expect("domain")
        .to_string();
    d.terminate();
    assert!(
        !running_domains().contains(&domain),
        "SIGTERM destroyed the instance"
    );
}

/// A formula that reports a result, writes an artifact and leaves a file in the VM.
const RUNTASK_FORMULA: &str = r#"name: e2e-runtask
desc: reports a result, writes an artifact, leaves a marker in the VM
maintainer: minion
input:
  args: [koji_build]
actions:
  - name: work
    shell:
      - echo "checking ${koji_build}"
      - echo e2e-artifact > ${artifactsdir}/out.txt
      - if [ -d /run/minion/seed ]; then echo kept > /root/marker; fi
  - name: results
    python:
      file: check.py
      callable: run
      item: ${koji_build}
    export: results
  - name: report
    resultsdb:
      results: ${results}
"#;

const RUNTASK_CHECK: &str = r#"
def run(item, **kwargs):
    return """results:
  - item: %s
    type: koji_build
    checkname: e2e.runtask
    outcome: PASSED
""" % item
"#;

#[test]
fn runtask_libvirt_runs_like_a_local_run_and_no_destroy_keeps_the_vm_to_shell_into() {
    let test = "runtask_libvirt_runs_like_a_local_run_and_no_destroy_keeps_the_vm_to_shell_into";
    if !vm_env(test) {
        return;
    }
    let d = Daemon::start_with(1, 0, &instances_config(2));
    // Outside every submissions.local_repo_roots: the task travels with the submission.
    let task = tempfile::tempdir_in("/var/tmp").expect("task dir");
    std::fs::write(task.path().join("runtask.yml"), RUNTASK_FORMULA).expect("formula");
    std::fs::write(task.path().join("check.py"), RUNTASK_CHECK).expect("check.py");
    let runs = tempfile::tempdir().expect("run dirs");
    let run = |extra: &[&str], dir: &str| {
        let mut a = vec![
            "runtask",
            "-i",
            "foo-1.0-1.fc40",
            "-t",
            "koji_build",
            "--artifactsdir",
        ];
        let out_dir = runs.path().join(dir);
        let out_str = out_dir.to_str().expect("utf8").to_string();
        a.push(&out_str);
        a.extend_from_slice(extra);
        let formula = task.path().join("runtask.yml");
        a.push(formula.to_str().expect("utf8"));
        let o = d.cli(&a);
        (o, out_dir)
    };
    let (local, local_dir) = run(&[], "local");
    let (vm, vm_dir) = run(&["--libvirt", "--no-destroy"], "vm");
    assert_eq!(local.status.code(), Some(0), "{}", output_text(&local));
    assert_eq!(
        vm.status.code(),
        local.status.code(),
        "{}\n{}",
        output_text(&vm),
        d.log()
    );
    // The same files in both run directories, the same TAP on stdout.
    for f in [
        "results.yaml",
        "results.tap",
        "minion.log",
        "task_output/out.txt",
    ] {
        assert!(local_dir.join(f).is_file(), "local {f}");
        assert!(vm_dir.join(f).is_file(), "vm {f}: {}", output_text(&vm));
    }
    assert_eq!(
        std::fs::read_to_string(local_dir.join("results.yaml")).expect("local"),
        std::fs::read_to_string(vm_dir.join("results.yaml")).expect("vm"),
    );
    let tap = |o: &std::process::Output| {
        stdout(o)
            .lines()
            .filter(|l| !l.starts_with("runtask-"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(tap(&vm), tap(&local));
    assert!(stdout(&vm).contains("ok - e2e.runtask"), "{}", stdout(&vm));
    let log = std::fs::read_to_string(vm_dir.join("minion.log")).expect("log");
    assert!(log.contains("checking foo-1.0-1.fc40"), "{log}");

    // The kept VM: its name is the last line, and a shell in it sees what the task left.
    let name = stdout(&vm)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(name.starts_with("runtask-"), "{}", output_text(&vm));
    let l = list(&d);
    assert_eq!(l.len(), 1, "{l:#?}");
    assert_eq!(l[0]["name"], name.as_str());
    assert_eq!(l[0]["state"], "ready");
    let sh = d.cli(&[
        "instance",
        "shell",
        &name,
        "--",
        "sh",
        "-c",
        "cat /root/marker; exit 4",
    ]);
    assert_eq!(sh.status.code(), Some(4), "{}", output_text(&sh));
    assert!(stdout(&sh).contains("kept"), "{}", stdout(&sh));

    // Without --no-destroy nothing is kept.
    let (again, _) = run(&["--libvirt"], "vm2");
    assert_eq!(again.status.code(), Some(0), "{}", output_text(&again));
    assert_eq!(list(&d).len(), 1);
    let rm = d.cli(&["instance", "remove", "--all"]);
    assert!(rm.status.success(), "{}", output_text(&rm));
    assert_nothing_left(&d);
}

#[test]
fn a_stopped_instance_keeps_its_disk_and_starts_again_as_itself() {
    let test = "a_stopped_instance_keeps_its_disk_and_starts_again_as_itself";
    if !vm_env(test) {
        return;
    }
    let d = Daemon::start_with(1, 0, &instances_config(2));
    let i = create(&d, &["--name", "sleepy", "--keep-console"]);
    assert_eq!(i["keep_console"], true, "{i:#}");
    let domain = i["domain"].as_str().expect("domain").to_string();
    let o = exec(
        &d,
        "sleepy",
        &[
            "sh",
            "-c",
            "echo written > /root/kept; sync; cat /etc/machine-id",
        ],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let machine_id = stdout(&o);

    let s = d.json(&["instance", "stop", "sleepy"]);
    assert_eq!(s["state"], "stopped", "{s:#}");
    assert!(!running_domains().contains(&domain), "powered off");
    assert_eq!(d.vm_ids().len(), 1, "its disk is kept");
    let refused = exec(&d, "sleepy", &["true"]);
    assert_eq!(refused.status.code(), Some(2), "{}", output_text(&refused));
    assert!(
        output_text(&refused).contains("stopped"),
        "{}",
        output_text(&refused)
    );

    let s = d.json(&["instance", "start", "sleepy"]);
    assert_eq!(s["state"], "ready", "{s:#}\n{}", d.log());
    let o = exec(
        &d,
        "sleepy",
        &["sh", "-c", "cat /root/kept /etc/machine-id; hostname"],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(
        stdout(&o),
        format!("written\n{machine_id}sleepy\n"),
        "the same disk, the same machine"
    );

    let s = d.json(&["instance", "reboot", "sleepy"]);
    assert_eq!(s["state"], "ready", "{s:#}");
    let o = exec(&d, "sleepy", &["cat", "/root/kept"]);
    assert_eq!(stdout(&o), "written\n", "{}", output_text(&o));
    // What the guest writes on its serial console outlives the instance (--keep-console).
    let o = exec(
        &d,
        "sleepy",
        &["sh", "-c", "echo console-marker-$((6*7)) > /dev/ttyS0"],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let rm = d.json(&["instance", "remove", "sleepy"]);
    assert_eq!(rm["removed"], serde_json::json!(["sleepy"]), "{rm:#}");
    let kept = std::path::PathBuf::from(rm["kept_consoles"]["sleepy"].as_str().expect("kept"));
    assert!(kept.starts_with(d.state_dir()), "{}", kept.display());
    let log = std::fs::read_to_string(&kept).expect("the kept console log");
    assert!(log.contains("console-marker-42"), "{log}");
    assert_nothing_left(&d);
    // Without it, removing leaves no log.
    create(&d, &["--name", "plain"]);
    let rm = d.json(&["instance", "remove", "plain"]);
    assert_eq!(rm["kept_consoles"], serde_json::json!({}), "{rm:#}");
    assert!(!d.state_dir().join("instances/plain.console.log").exists());
    assert_nothing_left(&d);
}

#[test]
fn an_instance_has_no_network_unless_asked_and_then_reaches_out_through_nat() {
    let test = "an_instance_has_no_network_unless_asked_and_then_reaches_out_through_nat";
    if !vm_env(test) {
        return;
    }
    // A host service on loopback: qemu's user network shows the host as 10.0.2.2.
    let url = minion_testenv::http::serve("host service", move |_req, mut stream| {
        let body = "hello from the host\n";
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    });
    let port = url.rsplit(':').next().expect("port").to_string();
    let d = Daemon::start_with(1, 0, &instances_config(2));
    create(&d, &["--name", "offline"]);
    create(&d, &["--name", "online", "--network", "user"]);
    let nics = |name: &str| stdout(&exec(&d, name, &["ls", "/sys/class/net"]));
    assert_eq!(nics("offline"), "lo\n");
    assert_eq!(nics("online"), "eth0\nlo\n");
    let fetch = format!(
        "import urllib.request; print(urllib.request.urlopen('http://10.0.2.2:{port}/', timeout=30).read().decode().strip())"
    );
    let o = exec(&d, "online", &["python3", "-c", &fetch]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(stdout(&o), "hello from the host\n");
    let o = exec(&d, "offline", &["python3", "-c", &fetch]);
    assert_ne!(o.status.code(), Some(0), "no network: {}", output_text(&o));
    let rm = d.cli(&["instance", "remove", "--all"]);
    assert!(rm.status.success(), "{}", output_text(&rm));
    assert_nothing_left(&d);
}

#[test]
fn disk_size_grows_the_instance_disk_and_is_bounded() {
    let test = "disk_size_grows_the_instance_disk_and_is_bounded";
    if !vm_env(test) {
        return;
    }
    let d = Daemon::start_with(1, 0, &instances_config(2));
    let i = create(&d, &["--name", "roomy", "--disk-size", "5"]);
    assert_eq!(i["state"], "ready", "{i:#}");
    let o = exec(&d, "roomy", &["cat", "/sys/block/vda/size"]);
    let sectors: u64 = stdout(&o).trim().parse().unwrap_or(0);
    assert_eq!(sectors * 512, 5 << 30, "{}", output_text(&o));
    let plain = create(&d, &["--name", "plain"]);
    assert_eq!(plain["state"], "ready");
    let o = exec(&d, "plain", &["cat", "/sys/block/vda/size"]);
    let sectors: u64 = stdout(&o).trim().parse().unwrap_or(0);
    assert!(
        sectors * 512 < 5 << 30,
        "the image's own size: {}",
        output_text(&o)
    );
    let big = d.cli(&["instance", "create", "minimal", "--disk-size", "100000"]);
    assert_eq!(big.status.code(), Some(2), "{}", output_text(&big));
    let rm = d.cli(&["instance", "remove", "--all"]);
    assert!(rm.status.success(), "{}", output_text(&rm));
    assert_nothing_left(&d);
}
