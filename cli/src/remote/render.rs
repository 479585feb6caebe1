//! Human output: tables, times, durations. (`--json` output is built in `commands`.)

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use minion_proto::controller as pb;

pub fn state_name(v: i32) -> &'static str {
    match pb::JobState::try_from(v).unwrap_or(pb::JobState::Unspecified) {
        pb::JobState::Unspecified => "?",
        pb::JobState::Queued => "QUEUED",
        pb::JobState::Provisioning => "PROVISIONING",
        pb::JobState::Booting => "BOOTING",
        pb::JobState::Running => "RUNNING",
        pb::JobState::Collecting => "COLLECTING",
        pb::JobState::Reporting => "REPORTING",
        pb::JobState::Finished => "FINISHED",
        pb::JobState::Failed => "FAILED",
        pb::JobState::Cancelled => "CANCELLED",
        pb::JobState::TimedOut => "TIMED_OUT",
    }
}

pub fn exec_name(v: i32) -> &'static str {
    match pb::ExecutionStatus::try_from(v).unwrap_or(pb::ExecutionStatus::Unspecified) {
        pb::ExecutionStatus::Unspecified => "-",
        pb::ExecutionStatus::Ok => "OK",
        pb::ExecutionStatus::NotOk => "NOT_OK",
    }
}

pub fn is_final(v: i32) -> bool {
    matches!(
        pb::JobState::try_from(v),
        Ok(pb::JobState::Finished
            | pb::JobState::Failed
            | pb::JobState::Cancelled
            | pb::JobState::TimedOut)
    )
}

/// `YYYY-MM-DD HH:MM:SS.mmm` UTC from unix milliseconds (civil-from-days, no tz database needed).
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{milli:03}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.2} s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

pub fn outcome_summary(j: &pb::Job) -> String {
    if j.results.is_empty() {
        return "-".into();
    }
    let mut counts: Vec<(String, usize)> = Vec::new();
    for r in &j.results {
        match counts.iter_mut().find(|(o, _)| *o == r.outcome) {
            Some((_, n)) => *n += 1,
            None => counts.push((r.outcome.clone(), 1)),
        }
    }
    counts
        .iter()
        .map(|(o, n)| format!("{o}×{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn jobs_table(jobs: &[pb::Job]) -> Table {
    let mut t = table(&[
        "ID", "STATE", "POOL", "ITEM", "TYPE", "EXEC", "OUTCOMES", "CREATED",
    ]);
    for j in jobs {
        t.add_row(vec![
            j.id.clone(),
            state_name(j.state).to_string(),
            j.pool.clone(),
            j.item.clone(),
            j.item_type.clone(),
            exec_name(j.execution_status).to_string(),
            outcome_summary(j),
            utc(j.created_unix_ms),
        ]);
    }
    t
}

/// Each lifecycle step with how long the job stayed in it (the last one until `now_ms` if the job
/// is still going).
pub fn steps_table(j: &pb::Job, now_ms: i64) -> Table {
    let mut t = table(&["STEP", "AT (UTC)", "DURATION", "NOTE"]);
    for (i, e) in j.events.iter().enumerate() {
        let dur = match j.events.get(i + 1) {
            Some(next) => duration(next.at_unix_ms - e.at_unix_ms),
            None if is_final(e.state) => "-".into(),
            None => format!("{} (so far)", duration(now_ms - e.at_unix_ms)),
        };
        t.add_row(vec![
            state_name(e.state).to_string(),
            utc(e.at_unix_ms),
            dur,
            e.message.clone(),
        ]);
    }
    t
}

/// `reported 2 / pending (1) / refused (1: dist.x: why)`.
pub fn reporting_text(r: &pb::Reporting) -> String {
    let mut parts = vec![format!("reported {}", r.posted)];
    if r.pending > 0 {
        parts.push(format!("pending ({})", r.pending));
    }
    if !r.refused.is_empty() {
        let why: Vec<String> = r
            .refused
            .iter()
            .map(|f| format!("{}: {}", f.testcase, f.reason))
            .collect();
        parts.push(format!("refused ({}: {})", r.refused.len(), why.join("; ")));
    }
    parts.join(" / ")
}

pub fn job_details(j: &pb::Job, now_ms: i64) -> String {
    let mut out = String::new();
    let mut kv = table(&["FIELD", "VALUE"]);
    let mut row = |k: &str, v: String| {
        kv.add_row(vec![k.to_string(), v]);
    };
    row("id", j.id.clone());
    row("state", state_name(j.state).into());
    row("execution", exec_name(j.execution_status).into());
    if !j.failure_reason.is_empty() {
        row("reason", j.failure_reason.clone());
    }
    if !j.status_message.is_empty() {
        row("status", j.status_message.clone());
    }
    row("exit code", j.exit_code.to_string());
    row("pool", j.pool.clone());
    row(
        "repo",
        format!("{} {}", j.repo, j.git_ref).trim().to_string(),
    );
    row("formula", j.formula.clone());
    row("item", format!("{} ({})", j.item, j.item_type));
    row("arch", j.arch.clone());
    row("timeout", format!("{} s", j.timeout_seconds));
    row("attempt", j.attempt.to_string());
    if let Some(p) = &j.provenance {
        row(
            "triggered by",
            format!(
                "message {} ({}), rule {}, task {}",
                p.message_id, p.topic, p.rule_index, p.task_name
            ),
        );
    }
    if let Some(r) = &j.reporting {
        row("reporting", reporting_text(r));
    }
    if !j.artifacts_pruned.is_empty() {
        row("artifacts", format!("pruned {}", j.artifacts_pruned));
    } else if j.artifact_bytes > 0 {
        row("artifacts", format!("{} bytes", j.artifact_bytes));
    }
    if !j.submitter.is_empty() {
        row("submitter", j.submitter.clone());
    }
    if !j.idempotency_key.is_empty() {
        row("idempotency key", j.idempotency_key.clone());
    }
    if let (Some(first), Some(last)) = (j.events.first(), j.events.last()) {
        let end = if is_final(j.state) {
            last.at_unix_ms
        } else {
            now_ms
        };
        row("total", duration(end - first.at_unix_ms));
    }
    out.push_str(&kv.to_string());
    out.push_str("\n\n");
    out.push_str(&steps_table(j, now_ms).to_string());
    if !j.results.is_empty() {
        let mut t = table(&["CHECK", "ITEM", "OUTCOME", "NOTE"]);
        for r in &j.results {
            t.add_row(vec![
                r.checkname.clone(),
                r.item.clone(),
                r.outcome.clone(),
                r.note.clone(),
            ]);
        }
        out.push_str("\n\n");
        out.push_str(&t.to_string());
    }
    out
}

pub fn pools_table(p: &[pb::Pool]) -> Table {
    let mut t = table(&[
        "POOL", "IMAGE", "LIBVIRT", "MAX VMS", "VCPUS", "MEMORY", "TIMEOUT", "RUNNING", "READY",
        "QUEUED", "SNAPSHOT",
    ]);
    for p in p {
        t.add_row(vec![
            p.name.clone(),
            p.image.clone(),
            if p.hosts.is_empty() {
                p.libvirt_uri.clone()
            } else {
                // Its hosts; one that takes none of its VMs says why.
                p.hosts
                    .iter()
                    .map(|h| {
                        if h.usable {
                            h.name.clone()
                        } else {
                            format!("{} (unused: {})", h.name, h.reason)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            },
            p.max_vms.to_string(),
            p.vcpus.to_string(),
            format!("{} MiB", p.memory_mib),
            format!("{} s", p.default_timeout_seconds),
            p.running.to_string(),
            // Parked pre-booted VMs / the pool's min_ready (+ those booting).
            match p.booting {
                0 => format!("{}/{}", p.ready, p.min_ready),
                b => format!("{}/{} (+{b} booting)", p.ready, p.min_ready),
            },
            if p.drained {
                format!("{} (drained)", p.queued)
            } else {
                p.queued.to_string()
            },
            match p.snapshot.as_str() {
                "ready" => format!("ready, {}", size(p.snapshot_bytes)),
                "broken" => format!("broken: {}", p.snapshot_reason),
                s => s.to_string(),
            },
        ]);
    }
    t
}

pub fn hosts_table(hosts: &[pb::Host]) -> Table {
    let mut t = table(&[
        "HOST",
        "URI",
        "STATE",
        "VMS",
        "POOLS",
        "IMAGES",
        "LAST ERROR",
    ]);
    for h in hosts {
        t.add_row(vec![
            h.name.clone(),
            h.uri.clone(),
            h.state.clone(),
            format!("{}/{}", h.vms, h.max_vms),
            h.pools.join(", "),
            h.images
                .iter()
                .map(|i| {
                    if i.verified {
                        format!("{} ok", i.image)
                    } else {
                        format!("{}: {}", i.image, i.reason)
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
            h.last_error.clone(),
        ]);
    }
    t
}

fn size(b: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if b >= MIB {
        format!("{:.1} MiB", b as f64 / MIB as f64)
    } else if b >= 1024 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

pub fn images_table(imgs: &[pb::Image]) -> Table {
    let mut t = table(&[
        "IMAGE",
        "ARCH",
        "FORMAT",
        "VIRTUAL",
        "FILE",
        "SOURCE",
        "AGENT",
        "VALIDATION",
        "BUILT",
    ]);
    for i in imgs {
        let source = match i.source.as_str() {
            "recipe" => format!("recipe {}", i.recipe_hash),
            s => s.to_string(),
        };
        let validation = match i.validation.as_str() {
            "" => "-".to_string(),
            "ok" => format!(
                "ok (ready in {:.1} s)",
                i.validated_ready_ms as f64 / 1000.0
            ),
            "failed" => format!("failed: {}", i.validation_reason),
            other => other.to_string(),
        };
        t.add_row(vec![
            i.name.clone(),
            i.arch.clone(),
            i.format.clone(),
            size(i.virtual_size),
            size(i.file_size),
            source,
            i.agent_start.clone(),
            validation,
            i.built_at.clone(),
        ]);
    }
    t
}

pub fn instance_state_name(v: i32) -> &'static str {
    match pb::InstanceState::try_from(v) {
        Ok(pb::InstanceState::Creating) => "creating",
        Ok(pb::InstanceState::Ready) => "ready",
        Ok(pb::InstanceState::Failed) => "failed",
        Ok(pb::InstanceState::Lost) => "lost",
        Ok(pb::InstanceState::Stopped) => "stopped",
        _ => "unknown",
    }
}

pub fn instances_table(list: &[pb::Instance]) -> Table {
    let mut t = table(&[
        "INSTANCE", "STATE", "IMAGE", "OWNER", "VCPUS", "MEMORY", "NETWORK", "READY IN", "RUNNING",
        "CREATED",
    ]);
    for i in list {
        let state = match (instance_state_name(i.state), i.reason.as_str()) {
            (s, "") => s.to_string(),
            (s, why) => format!("{s}: {why}"),
        };
        t.add_row(vec![
            i.name.clone(),
            state,
            i.image.clone(),
            i.owner.clone(),
            i.vcpus.to_string(),
            format!("{} MiB", i.memory_mib),
            if i.network { "user" } else { "none" }.to_string(),
            match (i.ready_ms, i.restored) {
                (0, _) => "-".to_string(),
                (ms, true) => format!("{:.2} s (snapshot)", ms as f64 / 1000.0),
                (ms, false) => format!("{:.2} s (boot)", ms as f64 / 1000.0),
            },
            i.running.to_string(),
            utc(i.created_at_ms),
        ]);
    }
    t
}

pub fn artifacts_table(a: &[pb::Artifact]) -> Table {
    let mut t = table(&["PATH", "SIZE"]);
    for a in a {
        t.add_row(vec![a.path.clone(), size(a.size)]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_and_durations() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(utc(1_795_000_000_123), "2026-11-18 11:06:40.123");
        assert_eq!(utc(951_825_600_000), "2000-02-29 12:00:00.000");
        assert_eq!(duration(12), "12 ms");
        assert_eq!(duration(2500), "2.50 s");
        assert_eq!(duration(125_000), "2m05s");
    }

    #[test]
    fn steps_show_time_in_each_state() {
        let ev = |s: pb::JobState, at| pb::LifecycleEvent {
            state: s as i32,
            at_unix_ms: at,
            message: String::new(),
        };
        let j = pb::Job {
            state: pb::JobState::Running as i32,
            events: vec![
                ev(pb::JobState::Queued, 1000),
                ev(pb::JobState::Provisioning, 1010),
                ev(pb::JobState::Running, 4010),
            ],
            ..pb::Job::default()
        };
        let s = steps_table(&j, 5010).to_string();
        assert!(s.contains("10 ms"), "{s}");
        assert!(s.contains("3.00 s"), "{s}");
        assert!(s.contains("1.00 s (so far)"), "{s}");
    }
}
