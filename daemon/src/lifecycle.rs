//! The job lifecycle as an explicit state machine. Illegal transitions are errors, so a race (cancel
//! vs. the scheduler picking the job up) resolves to exactly one winner.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Queued,
    Provisioning,
    Booting,
    Running,
    Collecting,
    Reporting,
    Finished,
    Failed,
    Cancelled,
    TimedOut,
}

impl State {
    /// No further transition happens on its own (FAILED may still be requeued by a restart).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Finished | State::Failed | State::Cancelled | State::TimedOut
        )
    }

    /// A VM may exist for the job (it was picked up and has not ended).
    pub fn is_in_flight(self) -> bool {
        matches!(
            self,
            State::Provisioning
                | State::Booting
                | State::Running
                | State::Collecting
                | State::Reporting
        )
    }

    /// Every state, in lifecycle order.
    pub const ALL: [State; 10] = [
        State::Queued,
        State::Provisioning,
        State::Booting,
        State::Running,
        State::Collecting,
        State::Reporting,
        State::Finished,
        State::Failed,
        State::Cancelled,
        State::TimedOut,
    ];

    /// The state named `s` (`QUEUED` … `TIMED_OUT`).
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "QUEUED",
            State::Provisioning => "PROVISIONING",
            State::Booting => "BOOTING",
            State::Running => "RUNNING",
            State::Collecting => "COLLECTING",
            State::Reporting => "REPORTING",
            State::Finished => "FINISHED",
            State::Failed => "FAILED",
            State::Cancelled => "CANCELLED",
            State::TimedOut => "TIMED_OUT",
        }
    }

    /// Whether `self → to` is allowed.
    pub fn can_go_to(self, to: State) -> bool {
        use State::*;
        match (self, to) {
            (Queued, Provisioning) => true,
            (Provisioning, Booting) => true,
            (Booting, Running) => true,
            (Running, Collecting) => true,
            (Collecting, Reporting) => true,
            (Reporting, Finished) => true,
            // REPORTING is entered only when there are results to report somewhere.
            (Collecting, Finished) => true,
            // A queued job can be cancelled or fail (e.g. its pool vanished) but cannot time out:
            // the timeout counts from when it is picked up.
            (Queued, Cancelled | Failed) => true,
            (s, Failed | Cancelled | TimedOut) if s.is_in_flight() => true,
            // Requeue after a daemon restart, while the retry budget lasts.
            (Failed, Queued) => true,
            _ => false,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("job {job}: illegal transition {from} → {to}")]
pub struct IllegalTransition {
    pub job: String,
    pub from: State,
    pub to: State,
}

#[cfg(test)]
mod tests {
    use super::State::*;
    use super::*;

    const ALL: [State; 10] = [
        Queued,
        Provisioning,
        Booting,
        Running,
        Collecting,
        Reporting,
        Finished,
        Failed,
        Cancelled,
        TimedOut,
    ];

    #[test]
    fn happy_path_is_legal() {
        let path = [
            Queued,
            Provisioning,
            Booting,
            Running,
            Collecting,
            Reporting,
            Finished,
        ];
        for w in path.windows(2) {
            assert!(w[0].can_go_to(w[1]), "{} → {}", w[0], w[1]);
        }
        assert!(Collecting.can_go_to(Finished), "nothing to report");
        assert!(!Running.can_go_to(Finished), "collecting is not skipped");
    }

    #[test]
    fn terminal_states_go_nowhere_except_failed_requeue() {
        for to in ALL {
            assert!(!Finished.can_go_to(to), "FINISHED → {to}");
            assert!(!Cancelled.can_go_to(to), "CANCELLED → {to}");
            assert!(!TimedOut.can_go_to(to), "TIMED_OUT → {to}");
            assert_eq!(Failed.can_go_to(to), to == Queued, "FAILED → {to}");
        }
    }

    #[test]
    fn no_skipping_and_no_going_back() {
        assert!(!Queued.can_go_to(Running));
        assert!(!Provisioning.can_go_to(Running));
        assert!(!Running.can_go_to(Booting));
        assert!(!Queued.can_go_to(TimedOut));
        assert!(!Queued.can_go_to(Queued));
        for s in ALL.into_iter().filter(|s| s.is_in_flight()) {
            assert!(s.can_go_to(Failed) && s.can_go_to(Cancelled) && s.can_go_to(TimedOut));
            assert!(!s.can_go_to(Queued));
        }
    }
}
