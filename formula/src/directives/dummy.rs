//! `dummy`: for testing the runner itself. `result: FAIL` (in any case) fails the step; anything
//! else succeeds, and the value is `msg` unchanged, whatever its YAML type (null without one).

use super::{str_param, Directive, Params, Run, Spec, StepContext, StepError, Ty};
use crate::yaml::Node;

pub(super) const DIRECTIVE: Directive = Directive {
    name: "dummy",
    params: Params::Spec(Spec {
        required: &[("result", Ty::Str)],
        optional: &[("msg", Ty::Any)],
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
    let msg = params
        .get("msg")
        .map_or(serde_json::Value::Null, Node::to_json);
    if result.eq_ignore_ascii_case("fail") {
        let said = match &msg {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => format!(": {s}"),
            other => format!(": {other}"),
        };
        return Err(StepError::msg(format!("dummy step asked to fail{said}")));
    }
    ctx.say(&format!("dummy: {result}"));
    Ok(msg)
}
