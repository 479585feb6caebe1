//! Processes miniond starts (git for task repos, qemu-img and genisoimage for VMs, dpkg-deb for
//! package indexes) must not outlive it: [`die_with_parent`] gives each `PR_SET_PDEATHSIG(SIGKILL)`,
//! so the kernel kills it when the daemon dies, `kill -9` included.
//!
//! The signal follows the *thread* that spawned the child: spawn from a thread that lives at least
//! as long as the child (a tokio worker thread, or the blocking thread that waits for the child).
//!
//! The death signal is not inherited: what the child starts itself (git's `git-remote-https`)
//! would live on. [`group_dying_with_parent`] covers those: the program runs under a shell that
//! leads its own process group and, told by the death signal, kills the whole group.

use std::os::unix::process::CommandExt;

/// Makes `cmd` run `program` (its arguments follow with `.arg`) in a new process group led by a
/// shell that kills the whole group when this process dies. Drop a [`KillGroup`] of the spawned
/// child's id to kill the group when the request that started it ends.
pub fn group_dying_with_parent(program: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("trap 'kill -KILL 0' TERM; \"$@\" & wait $!")
        .arg("sh")
        .arg(program)
        .process_group(0);
    set_death_signal(&mut cmd, libc::SIGTERM);
    cmd
}

/// Kills the process group `pgid` (a child started by [`group_dying_with_parent`]: its id) when
/// dropped.
#[derive(Debug)]
pub struct KillGroup(pub u32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.0) {
            if pgid > 0 {
                // SAFETY: a plain kill(2) of a process group this process made; a group that is
                // gone already is ESRCH, ignored.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
        }
    }
}

/// Arranges for `cmd`'s process to be killed when this process dies.
pub fn die_with_parent(cmd: &mut std::process::Command) -> &mut std::process::Command {
    set_death_signal(cmd, libc::SIGKILL)
}

fn set_death_signal(cmd: &mut std::process::Command, signal: i32) -> &mut std::process::Command {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // syscalls (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would signal us.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other(
                    "the parent exited while starting a child",
                ));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn alive(pid: i32) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    /// Whether `pid` is gone, waiting up to 5 s for the kernel to finish killing it.
    fn gone_within_5s(pid: i32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        !alive(pid)
    }

    /// A middle process starts a child the way the daemon does (`how`), prints the pid of the
    /// process that must not outlive it, and is killed -9: that process must be gone with it.
    fn killed_middle_leaves_nothing(how: &str) {
        let exe = std::env::current_exe().expect("exe");
        // The middle: this test binary, re-run as a process that spawns `sleep 60` the way the
        // daemon does and prints its pid.
        let mut middle = std::process::Command::new(exe)
            .args([
                "--exact",
                "tests::middle",
                "--nocapture",
                "--include-ignored",
            ])
            .env("MINION_CHILDREN_MIDDLE", how)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("middle");
        let mut out = middle.stdout.take().expect("stdout");
        let mut text = String::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let pid = loop {
            use std::io::Read;
            let mut buf = [0u8; 256];
            let n = out.read(&mut buf).expect("read");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if let Some(p) = text
                .lines()
                .find_map(|l| l.strip_prefix("child pid "))
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                break p;
            }
            assert!(n > 0 && Instant::now() < deadline, "no pid: {text}");
        };
        assert!(alive(pid));
        middle.kill().expect("kill -9 the middle");
        middle.wait().expect("reaped");
        assert!(
            gone_within_5s(pid),
            "the child outlived its parent's kill -9"
        );
    }

    #[test]
    fn a_child_dies_when_its_parent_is_killed() {
        killed_middle_leaves_nothing("child");
    }

    #[test]
    fn what_a_grouped_child_starts_dies_when_its_parent_is_killed() {
        killed_middle_leaves_nothing("grandchild");
    }

    #[test]
    fn dropping_the_group_guard_kills_the_group() {
        let mut cmd = group_dying_with_parent("sh");
        cmd.args(["-c", "sleep 60 & echo $!; wait"])
            .stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("pid");
        let pid: i32 = line.trim().parse().expect("pid");
        assert!(alive(pid));
        drop(KillGroup(child.id()));
        child.wait().expect("reaped");
        assert!(gone_within_5s(pid), "the group's sleep lived on");
    }

    #[test]
    #[ignore = "run by killed_middle_leaves_nothing as the middle process"]
    fn middle() {
        let Ok(how) = std::env::var("MINION_CHILDREN_MIDDLE") else {
            return;
        };
        let mut child = if how == "child" {
            let child = die_with_parent(&mut std::process::Command::new("sleep"))
                .arg("60")
                .spawn()
                .expect("sleep");
            println!("child pid {}", child.id());
            child
        } else {
            // sh → sh → sleep: the sleep is a grandchild of the group's leader.
            let mut cmd = group_dying_with_parent("sh");
            cmd.args(["-c", "sleep 60 & echo child pid $!; wait"]);
            cmd.spawn().expect("group")
        };
        // Killed before this returns.
        let _ = child.wait();
    }
}
