//! `exitcode`: `result_last` / `result_worst` over ResultYAML sets the task's exit code:
//! 0 when the outcome counts as success (PASSED, INFO; no results at all), 100 otherwise; a result
//! without an outcome counts as NEEDS_INSPECTION. Several steps: the worst wins.

use super::{results_text, Directive, Params, Run, Spec, StepContext, StepError, Ty, NONE};
use crate::context::EXIT_CHECK_FAILED;
use crate::results::{parse_results, CheckResult, Outcome};
use crate::yaml::Node;

pub(super) const DIRECTIVE: Directive = Directive {
    name: "exitcode",
    params: Params::Spec(Spec {
        required: NONE,
        optional: &[("result_last", Ty::Any), ("result_worst", Ty::Any)],
        one_of: &["result_last", "result_worst"],
        choices: &[],
        extra_allowed: false,
    }),
    run: Run::Here(run),
};

pub(super) fn run(
    params: &Node,
    ctx: &mut StepContext<'_>,
) -> Result<serde_json::Value, StepError> {
    let (mode, node) = match (params.get("result_last"), params.get("result_worst")) {
        (Some(n), None) => ("result_last", n),
        (None, Some(n)) => ("result_worst", n),
        _ => {
            return Err(StepError::msg(
                "needs exactly one of result_last, result_worst",
            ))
        }
    };
    let results = parse_results(&results_text(node)?).map_err(|e| StepError {
        mark: Some(node.mark),
        field: Some(format!("{}.{mode}", ctx.action.field())),
        message: e.to_string(),
    })?;
    let outcome = if mode == "result_last" {
        results.last().map(CheckResult::effective_outcome)
    } else {
        results
            .iter()
            .map(CheckResult::effective_outcome)
            .max_by_key(|o| o.rank())
    };
    let code = match outcome {
        Some(o) if !o.is_success() => EXIT_CHECK_FAILED,
        _ => 0,
    };
    ctx.say(&format!(
        "exitcode {mode}: {} → {code}",
        outcome.map_or("no results", Outcome::as_str)
    ));
    *ctx.exit_code = (*ctx.exit_code).max(code);
    Ok(serde_json::Value::from(code))
}
