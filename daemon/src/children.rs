//! Processes the daemon starts (git for task repos) must not outlive it: each gets
//! `PR_SET_PDEATHSIG(SIGKILL)`, so the kernel kills it when the daemon dies, `kill -9` included.
//! The signal follows the thread that spawned the child; tokio's worker threads live as long as
//! the runtime, which is the daemon's life.

/// Arranges for `cmd`'s process to be killed when the daemon dies.
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    let daemon = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // syscalls (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The daemon may have died between fork and prctl: then nobody would signal us.
            if libc::getppid() as u32 != daemon {
                return Err(std::io::Error::other(
                    "the daemon exited while starting a child",
                ));
            }
            Ok(())
        });
    }
}
