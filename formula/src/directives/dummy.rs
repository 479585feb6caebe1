//! `dummy`: for testing the runner itself. `result: FAIL` fails the step; anything else succeeds
//! and the value is `msg` (or the result).

use super::{str_param, Directive, Params, Run, Spec, StepContext, StepError, Ty};
use crate::yaml::Node;

pub(super) const DIRECTIVE: Directive = Directive {
    name: "dummy",
    params: Params::Spec(Spec {
        required: &[("result", Ty::Str)],
        optional: &[("msg", Ty::Str)],
        one_of: &[],
        choices: &[],
        extra_allowed: false,
    }),
    run: Run::Here(run),
};

pub(super) fn run(
    params: &Node,
    ctx: &mut StepContext<'_>,
) -> Result<serde_json::Value, StepError> {
    let result = str_param(params, "result").unwrap_or_default();
    let msg = str_param(params, "msg");
    if result == "FAIL" {
        return Err(StepError::msg(format!(
            "dummy step asked to fail{}",
            msg.map(|m| format!(": {m}")).unwrap_or_default()
        )));
    }
    ctx.say(&format!("dummy: {result}"));
    Ok(serde_json::Value::String(msg.unwrap_or(result)))
}
