//! `createrepo`: makes `repodir` (relative to the task directory, or absolute) a yum repository
//! with `createrepo_c`, as the original did with createrepo. Value: the tool's output.

use std::process::Command;

use super::process::{describe, run_streaming};
use super::{str_param, Directive, Params, Run, Spec, StepContext, StepError, Ty, NONE};
use crate::yaml::Node;

pub(super) const DIRECTIVE: Directive = Directive {
    name: "createrepo",
    params: Params::Spec(Spec {
        required: &[("repodir", Ty::Str)],
        optional: NONE,
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
    let repodir = ctx.resolve(&str_param(params, "repodir").unwrap_or_default());
    if !repodir.is_dir() {
        return Err(StepError {
            mark: params.get("repodir").map(|n| n.mark),
            field: Some(format!("{}.repodir", ctx.action.field())),
            message: format!("{} is not a directory", repodir.display()),
        });
    }
    ctx.say(&format!("createrepo_c {}", repodir.display()));
    let mut cmd = Command::new("createrepo_c");
    cmd.arg("--quiet")
        .arg(&repodir)
        .current_dir(ctx.formula.taskdir());
    let done = run_streaming(cmd, &ctx.config.cancel, ctx.sink).map_err(|e| {
        StepError::msg(format!(
            "{} (createrepo needs createrepo_c: Debian's createrepo-c package)",
            e.message
        ))
    })?;
    if !done.status.success() {
        return Err(StepError::msg(format!(
            "createrepo_c {} {}",
            repodir.display(),
            describe(done.status)
        )));
    }
    Ok(serde_json::Value::String(
        String::from_utf8_lossy(&done.stdout).trim_end().to_string(),
    ))
}
