//! Waiting, before a snapshot template answers Quiesced, for the guest's init to finish booting.
//!
//! The agent of a systemd image starts early, beside the rest of the boot. A VM restored from a
//! template saved mid-boot would resume that boot's tail (cloud-init, getty, timers) in every job,
//! costing each one CPU on its single vCPU and letting late boot steps (cloud-init's host name)
//! act after the job's identity was applied. So the template waits, bounded, until systemd says
//! the boot is over; a guest without systemd is settled at once.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Longest wait: a boot that never ends (a unit stuck starting) must not stop the snapshot.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(250);

/// How the wait ended, for the agent's log.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    /// Not a systemd guest (or systemctl is missing): nothing to wait for.
    NoInit,
    /// systemd's state once it was past starting (`running`, `degraded`, …).
    Booted { state: String, waited: Duration },
    /// Still starting after the limit.
    GaveUp { state: String },
}

/// Waits until systemd (when it runs the guest) has finished starting up, at most `limit`.
pub fn wait_for_boot(limit: Duration) -> Settled {
    if !Path::new("/run/systemd/system").is_dir() {
        return Settled::NoInit;
    }
    wait_with(limit, POLL, system_state)
}

/// `systemctl is-system-running`'s answer; `None` when it cannot be asked.
fn system_state() -> Option<String> {
    // It exits non-zero for every state but `running`; the state is on stdout either way.
    let out = Command::new("systemctl")
        .arg("is-system-running")
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn still_booting(state: &str) -> bool {
    matches!(state, "initializing" | "starting")
}

fn wait_with(
    limit: Duration,
    poll: Duration,
    mut probe: impl FnMut() -> Option<String>,
) -> Settled {
    let t0 = Instant::now();
    loop {
        let Some(state) = probe() else {
            return Settled::NoInit;
        };
        if !still_booting(&state) {
            return Settled::Booted {
                state,
                waited: t0.elapsed(),
            };
        }
        if t0.elapsed() >= limit {
            return Settled::GaveUp { state };
        }
        std::thread::sleep(poll.min(limit.saturating_sub(t0.elapsed())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(list: &[&str]) -> impl FnMut() -> Option<String> {
        let mut it: Vec<Option<String>> = list.iter().map(|s| Some(s.to_string())).collect();
        it.reverse();
        move || it.pop().unwrap_or(None)
    }

    #[test]
    fn waits_past_starting_and_reports_the_state() {
        let got = wait_with(
            Duration::from_secs(5),
            Duration::from_millis(1),
            answers(&["initializing", "starting", "starting", "degraded"]),
        );
        match got {
            Settled::Booted { state, .. } => assert_eq!(state, "degraded"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_boot_that_never_ends_is_given_up_on_at_the_limit() {
        let t0 = Instant::now();
        let got = wait_with(Duration::from_millis(50), Duration::from_millis(5), || {
            Some("starting".into())
        });
        assert_eq!(
            got,
            Settled::GaveUp {
                state: "starting".into()
            }
        );
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    }

    #[test]
    fn no_answer_means_no_init_to_wait_for() {
        assert_eq!(
            wait_with(Duration::from_secs(5), Duration::from_millis(1), || None),
            Settled::NoInit
        );
    }
}
