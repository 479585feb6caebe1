//! `resultsdb`: takes ResultYAML (`results:` text or `file:`), validates it and keeps the results.
//! With reporting on, POSTs each result to ResultsDB's v2.0 API, with retries.

use super::{
    results_text, str_param, Directive, Params, Run, Spec, StepContext, StepError, Ty, NONE,
};
use crate::context::LogStream;
use crate::context::ReportConfig;
use crate::results::{parse_results, results_to_yaml, CheckResult};
use crate::yaml::Node;

pub(super) const DIRECTIVE: Directive = Directive {
    name: "resultsdb",
    params: Params::Spec(Spec {
        required: NONE,
        optional: &[("results", Ty::Any), ("file", Ty::Str)],
        one_of: &["results", "file"],
        choices: &[],
        extra_allowed: false,
    }),
    run: Run::Here(run),
};

pub(super) fn run(
    params: &Node,
    ctx: &mut StepContext<'_>,
) -> Result<serde_json::Value, StepError> {
    let (key, text) = match (params.get("results"), str_param(params, "file")) {
        (Some(node), None) => ("results", results_text(node)?),
        (None, Some(file)) => {
            let path = ctx.resolve(&file);
            let text = std::fs::read_to_string(&path).map_err(|e| StepError {
                mark: params.get("file").map(|n| n.mark),
                field: Some(format!("{}.file", ctx.action.field())),
                message: format!("cannot read {}: {e}", path.display()),
            })?;
            ("file", text)
        }
        _ => return Err(StepError::msg("needs exactly one of results, file")),
    };
    let results = parse_results(&text).map_err(|e| StepError {
        mark: params.get(key).map(|n| n.mark),
        field: Some(format!("{}.{key}", ctx.action.field())),
        message: e.to_string(),
    })?;
    // ResultsDB needs to know what a result is about; the original refused such a result too.
    if let Some((i, missing)) = results
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.missing_identity().map(|m| (i, m)))
    {
        return Err(StepError {
            mark: params.get(key).map(|n| n.mark),
            field: Some(format!("{}.{key}", ctx.action.field())),
            message: format!(
                "result {i} ({}) has no `{missing}`: every reported result needs item, type and checkname",
                describe(&results[i])
            ),
        });
    }
    let yaml = results_to_yaml(&results);
    match &ctx.config.report {
        None => {
            ctx.say(&format!(
                "resultsdb: reporting off; {} result(s) kept:",
                results.len()
            ));
            ctx.sink.log(LogStream::Runner, yaml.as_bytes());
        }
        Some(report) => {
            for r in &results {
                post(report, ctx, r)?;
            }
            ctx.say(&format!(
                "resultsdb: reported {} result(s) to {}",
                results.len(),
                report.resultsdb_url
            ));
        }
    }
    ctx.results.extend(results);
    Ok(serde_json::Value::String(yaml))
}

/// A result in an error message: what it has of its checkname and item.
fn describe(r: &CheckResult) -> String {
    match (r.checkname.as_str(), r.item.as_str()) {
        ("", "") => "no checkname, no item".to_string(),
        (c, "") => format!("checkname `{c}`"),
        ("", i) => format!("item `{i}`"),
        (c, i) => format!("`{c}` for `{i}`"),
    }
}

/// The ResultsDB v2.0 body for one result.
#[cfg(feature = "report")]
pub(crate) fn body(
    r: &CheckResult,
    ctx: &StepContext<'_>,
    report: &ReportConfig,
) -> serde_json::Value {
    // A local run has no published artifacts directory: every result points at the log.
    let ref_url = report.log_url.clone();
    crate::report::result_body(
        r,
        ctx.formula.namespace.as_deref(),
        &ctx.config.arch,
        &serde_json::Value::String(ctx.config.uuid.clone()),
        ref_url.as_deref(),
    )
}

#[cfg(feature = "report")]
fn post(
    report: &ReportConfig,
    ctx: &mut StepContext<'_>,
    r: &CheckResult,
) -> Result<(), StepError> {
    use std::time::Duration;
    let url = format!(
        "{}/results",
        crate::report::resultsdb_api(&report.resultsdb_url)
    );
    let payload = body(r, ctx, report);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let attempts = report.attempts.max(1);
    let mut last = String::new();
    for attempt in 1..=attempts {
        match agent.post(&url).send_json(&payload) {
            Ok(_) => return Ok(()),
            Err(e) => {
                last = e.to_string();
                ctx.say(&format!(
                    "resultsdb: POST {url} failed (attempt {attempt}/{attempts}): {last}"
                ));
                if attempt < attempts {
                    std::thread::sleep(Duration::from_millis(500 * u64::from(attempt)));
                }
            }
        }
    }
    Err(StepError::msg(format!(
        "cannot report to ResultsDB at {url} after {attempts} attempts: {last}"
    )))
}

#[cfg(not(feature = "report"))]
fn post(
    report: &ReportConfig,
    _ctx: &mut StepContext<'_>,
    _r: &CheckResult,
) -> Result<(), StepError> {
    Err(StepError::msg(format!(
        "reporting to {} asked for, but this build has no ResultsDB support (feature `report`)",
        report.resultsdb_url
    )))
}
