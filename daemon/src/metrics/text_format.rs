//! The classic Prometheus text format (0.0.4) from OpenMetrics text, for scrapers and tools that
//! do not ask for OpenMetrics (promtool, older Prometheus, curl). The samples are the same; what
//! differs is the metadata: a counter's family is named with its `_total`, `info` is a gauge
//! named `_info`, and there is no `# UNIT` or `# EOF`.

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `openmetrics` as the classic format. Each family's `# HELP` comes before its `# TYPE` (as
/// prometheus-client writes them), so a HELP is held until its TYPE says how to name it.
pub fn from_openmetrics(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // (family, help text) of a HELP whose TYPE has not come yet.
    let mut held: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            emit_help(&mut out, held.take());
            held = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "info" => (format!("{family}_info"), "gauge"),
                "stateset" | "gaugehistogram" | "unknown" => (family.to_string(), "untyped"),
                k => (family.to_string(), k),
            };
            match held.take() {
                Some((f, text)) if f == family => emit_help(&mut out, Some((&name, text))),
                other => emit_help(&mut out, other),
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        emit_help(&mut out, held.take());
        out.push_str(line);
        out.push('\n');
    }
    emit_help(&mut out, held.take());
    out
}

fn emit_help(out: &mut String, help: Option<(&str, &str)>) {
    if let Some((name, text)) = help {
        out.push_str(&format!("# HELP {name} {text}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_info_and_units_become_classic() {
        let om = "# HELP minion_build The running miniond.\n# TYPE minion_build info\n\
                  minion_build_info{version=\"0.1.0\"} 1\n\
                  # HELP minion_jobs_ended Jobs ended.\n# TYPE minion_jobs_ended counter\n\
                  minion_jobs_ended_total{state=\"FAILED\"} 2\n\
                  # HELP minion_t_seconds T.\n# TYPE minion_t_seconds histogram\n\
                  # UNIT minion_t_seconds seconds\nminion_t_seconds_sum 0.3\n\
                  minion_t_seconds_count 1\nminion_t_seconds_bucket{le=\"+Inf\"} 1\n# EOF\n";
        assert_eq!(
            from_openmetrics(om),
            "# HELP minion_build_info The running miniond.\n# TYPE minion_build_info gauge\n\
             minion_build_info{version=\"0.1.0\"} 1\n\
             # HELP minion_jobs_ended_total Jobs ended.\n# TYPE minion_jobs_ended_total counter\n\
             minion_jobs_ended_total{state=\"FAILED\"} 2\n\
             # HELP minion_t_seconds T.\n# TYPE minion_t_seconds histogram\n\
             minion_t_seconds_sum 0.3\nminion_t_seconds_count 1\n\
             minion_t_seconds_bucket{le=\"+Inf\"} 1\n"
        );
    }
}
