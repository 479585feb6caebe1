//! Duties of PID 1 (the `minimal` image execs the agent as init) and powering the guest off.
//!
//! As PID 1 the agent forks at once: the child does the job, while PID 1 only reaps every process
//! that exits (orphans are re-parented to it) and, when the child is gone, syncs and powers off.
//! Reaping in a separate process keeps `waitpid(-1)` from stealing the exit statuses the formula
//! runner waits for.

use std::{process::Command, thread, time::Duration};

/// Default PATH for a process started by the kernel with an empty environment.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Gives the job a usable environment when the kernel started us with next to none.
pub fn default_env() {
    // Single-threaded at this point, so changing the environment is sound.
    if std::env::var_os("PATH").is_none() {
        std::env::set_var("PATH", DEFAULT_PATH);
    }
    if std::env::var_os("HOME").is_none() {
        std::env::set_var("HOME", "/root");
    }
}

/// As PID 1: forks; returns in the child (which runs the agent). The parent never returns: it
/// reaps until the child exits, then powers the machine off.
pub fn fork_supervisor() -> std::io::Result<()> {
    // SAFETY: called before any thread is started, so the child inherits a consistent process.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if child == 0 {
        return Ok(());
    }
    reap_until(child);
    tracing::info!("agent finished; powering off");
    power_off_syscall();
}

fn reap_until(child: libc::pid_t) {
    loop {
        let mut status = 0;
        // SAFETY: plain syscall with a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == child {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            };
            tracing::info!(code, "agent process exited");
            return;
        }
        if pid < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                tracing::error!(%err, "waitpid failed");
                return;
            }
        }
    }
}

/// sync + reboot(RB_POWER_OFF). Only returns by never returning: if the syscall fails, PID 1 must
/// still not exit (that panics the kernel), so it waits for the host to destroy the domain.
pub fn power_off_syscall() -> ! {
    // SAFETY: plain syscalls without pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    tracing::error!(err = %std::io::Error::last_os_error(), "reboot(RB_POWER_OFF) failed");
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

/// Not PID 1 (systemd or cloud-init started us): ask the init system, fall back to the syscall.
pub fn power_off_via_init() -> ! {
    match Command::new("systemctl").arg("poweroff").status() {
        Ok(s) if s.success() => {
            // systemd stops us as part of the shutdown.
            loop {
                thread::sleep(Duration::from_secs(3600));
            }
        }
        Ok(s) => tracing::warn!(status = %s, "systemctl poweroff failed; using the syscall"),
        Err(e) => tracing::warn!(err = %e, "no systemctl; using the syscall"),
    }
    power_off_syscall()
}
