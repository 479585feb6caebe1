//! `--json` output: stable field names, states as strings.

use minion_proto::controller as pb;
use serde_json::{json, Value};

use super::render::{exec_name, instance_state_name, state_name};

pub fn job(j: &pb::Job) -> Value {
    json!({
        "id": j.id,
        "state": state_name(j.state),
        "pool": j.pool,
        "repo": j.repo,
        "git_ref": j.git_ref,
        "formula": j.formula,
        "item": j.item,
        "item_type": j.item_type,
        "arch": j.arch,
        "timeout_seconds": j.timeout_seconds,
        "args": j.args,
        "execution_status": exec_name(j.execution_status),
        "status_message": j.status_message,
        "exit_code": j.exit_code,
        "failure_reason": j.failure_reason,
        "attempt": j.attempt,
        "created_unix_ms": j.created_unix_ms,
        "idempotency_key": j.idempotency_key,
        "submitter": j.submitter,
        "artifact_bytes": j.artifact_bytes,
        "artifacts_pruned": (!j.artifacts_pruned.is_empty()).then_some(&j.artifacts_pruned),
        "reporting": j.reporting.as_ref().map(|r| json!({
            "posted": r.posted,
            "pending": r.pending,
            "refused": r.refused.iter().map(|f| json!({"testcase": f.testcase, "reason": f.reason})).collect::<Vec<_>>(),
        })),
        "provenance": j.provenance.as_ref().map(|p| json!({
            "message_id": p.message_id,
            "topic": p.topic,
            "rule_index": p.rule_index,
            "task_name": p.task_name,
        })),
        "events": j.events.iter().map(|e| json!({
            "state": state_name(e.state),
            "at_unix_ms": e.at_unix_ms,
            "message": e.message,
        })).collect::<Vec<_>>(),
        "results": j.results.iter().map(|r| json!({
            "item": r.item,
            "type": r.r#type,
            "checkname": r.checkname,
            "outcome": r.outcome,
            "note": r.note,
        })).collect::<Vec<_>>(),
        "results_yaml": j.results_yaml,
        "tap": j.tap,
    })
}

pub fn pool(p: &pb::Pool) -> Value {
    json!({
        "name": p.name, "image": p.image, "libvirt_uri": p.libvirt_uri, "max_vms": p.max_vms,
        "vcpus": p.vcpus, "memory_mib": p.memory_mib,
        "default_timeout_seconds": p.default_timeout_seconds, "running": p.running, "queued": p.queued,
        "ready": p.ready, "booting": p.booting, "min_ready": p.min_ready, "drained": p.drained,
        "snapshot": p.snapshot, "snapshot_reason": p.snapshot_reason,
        "snapshot_bytes": p.snapshot_bytes,
        "hosts": p.hosts.iter().map(|h| json!({
            "name": h.name, "usable": h.usable, "reason": h.reason,
        })).collect::<Vec<_>>(),
    })
}

pub fn host(h: &pb::Host) -> Value {
    json!({
        "name": h.name, "uri": h.uri, "state": h.state, "vms": h.vms, "max_vms": h.max_vms,
        "last_error": h.last_error, "since_unix_ms": h.since_unix_ms,
        "storage_pool": h.storage_pool, "pools": h.pools,
        "images": h.images.iter().map(|i| json!({
            "image": i.image, "verified": i.verified, "reason": i.reason,
        })).collect::<Vec<_>>(),
    })
}

pub fn image(i: &pb::Image) -> Value {
    json!({
        "name": i.name, "arch": i.arch, "format": i.format, "virtual_size": i.virtual_size,
        "file_size": i.file_size, "sha256": i.sha256, "recipe_hash": i.recipe_hash,
        "built_at": i.built_at, "dir": i.dir, "agent_start": i.agent_start, "source": i.source,
        "validation": i.validation, "validation_reason": i.validation_reason,
        "validated_ready_ms": i.validated_ready_ms,
    })
}

pub fn artifact(a: &pb::Artifact) -> Value {
    json!({ "path": a.path, "size": a.size })
}

pub fn instance(i: &pb::Instance) -> Value {
    json!({
        "name": i.name,
        "state": instance_state_name(i.state),
        "reason": i.reason,
        "owner": i.owner,
        "image": i.image,
        "vcpus": i.vcpus,
        "memory_mib": i.memory_mib,
        "network": if i.network { "user" } else { "none" },
        "created_unix_ms": i.created_at_ms,
        "ready_ms": i.ready_ms,
        "restored": i.restored,
        "domain": i.domain,
        "agent_version": i.agent_version,
        "running": i.running,
        "keep_console": i.keep_console,
    })
}
