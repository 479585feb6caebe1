//! Store records ↔ gRPC messages.

use minion_proto::controller as pb;

use super::store::{EventRecord, ExecStatus, JobRecord, Provenance};
use crate::lifecycle::State;

pub fn state_to_pb(s: State) -> pb::JobState {
    match s {
        State::Queued => pb::JobState::Queued,
        State::Provisioning => pb::JobState::Provisioning,
        State::Booting => pb::JobState::Booting,
        State::Running => pb::JobState::Running,
        State::Collecting => pb::JobState::Collecting,
        State::Reporting => pb::JobState::Reporting,
        State::Finished => pb::JobState::Finished,
        State::Failed => pb::JobState::Failed,
        State::Cancelled => pb::JobState::Cancelled,
        State::TimedOut => pb::JobState::TimedOut,
    }
}

pub fn state_from_pb(v: i32) -> Option<State> {
    Some(match pb::JobState::try_from(v).ok()? {
        pb::JobState::Unspecified => return None,
        pb::JobState::Queued => State::Queued,
        pb::JobState::Provisioning => State::Provisioning,
        pb::JobState::Booting => State::Booting,
        pb::JobState::Running => State::Running,
        pb::JobState::Collecting => State::Collecting,
        pb::JobState::Reporting => State::Reporting,
        pb::JobState::Finished => State::Finished,
        pb::JobState::Failed => State::Failed,
        pb::JobState::Cancelled => State::Cancelled,
        pb::JobState::TimedOut => State::TimedOut,
    })
}

pub fn event_to_pb(e: &EventRecord) -> pb::LifecycleEvent {
    pb::LifecycleEvent {
        state: state_to_pb(e.state) as i32,
        at_unix_ms: e.at_ms,
        message: e.message.clone(),
    }
}

pub fn job_to_pb(r: &JobRecord) -> pb::Job {
    let q = &r.request;
    pb::Job {
        id: r.id.clone(),
        state: state_to_pb(r.state) as i32,
        pool: q.pool.clone(),
        repo: q.repo.clone(),
        git_ref: q.git_ref.clone(),
        formula: q.formula.clone(),
        item: q.item.clone(),
        item_type: q.item_type.clone(),
        arch: q.arch.clone(),
        timeout_seconds: q.timeout_seconds,
        args: q.args.clone().into_iter().collect(),
        events: r.events.iter().map(event_to_pb).collect(),
        execution_status: match r.execution_status {
            None => pb::ExecutionStatus::Unspecified,
            Some(ExecStatus::Ok) => pb::ExecutionStatus::Ok,
            Some(ExecStatus::NotOk) => pb::ExecutionStatus::NotOk,
        } as i32,
        status_message: r.status_message.clone(),
        exit_code: r.exit_code,
        failure_reason: r.failure_reason.clone(),
        attempt: r.attempt,
        results: r
            .results
            .iter()
            .map(|t| pb::TaskResult {
                item: t.item.clone(),
                r#type: t.item_type.clone(),
                checkname: t.checkname.clone(),
                outcome: t.outcome.clone(),
                note: t.note.clone(),
            })
            .collect(),
        results_yaml: r.results_yaml.clone(),
        tap: r.tap.clone(),
        created_unix_ms: r.created_ms,
        idempotency_key: r.idempotency_key.clone(),
        submitter: r.request.submitter.clone(),
        provenance: r.provenance.as_ref().map(provenance_to_pb),
        reporting: r.reporting.as_ref().map(|s| pb::Reporting {
            posted: s.posted,
            pending: s.pending,
            refused: s
                .refused
                .iter()
                .map(|f| pb::Refusal {
                    testcase: f.testcase.clone(),
                    reason: f.reason.clone(),
                })
                .collect(),
        }),
        artifact_bytes: r.artifact_bytes,
        artifacts_pruned: r
            .artifacts_pruned
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default(),
    }
}

pub fn provenance_to_pb(p: &Provenance) -> pb::Provenance {
    pb::Provenance {
        message_id: p.message_id.clone(),
        topic: p.topic.clone(),
        rule_index: p.rule_index,
        task_name: p.task_name.clone(),
    }
}

pub fn provenance_from_pb(p: &pb::Provenance) -> Provenance {
    Provenance {
        message_id: p.message_id.clone(),
        topic: p.topic.clone(),
        rule_index: p.rule_index,
        task_name: p.task_name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips() {
        for s in State::ALL {
            assert_eq!(state_from_pb(state_to_pb(s) as i32), Some(s));
        }
        assert_eq!(state_from_pb(0), None);
        assert_eq!(state_from_pb(99), None);
    }
}
