//! `shell`: commands run with `/bin/sh -c` in the task directory (where `runtask.yml` is, so a
//! task calls its own scripts by relative path), in order. A non-zero exit fails the
//! step unless the command sits in an `ignorereturn` list. Value: the joined stdout.

use std::process::Command;

use super::process::{describe, run_streaming};
use super::{Directive, ParamError, Params, Run, StepContext, StepError};
use crate::subst;
use crate::yaml::{Kind, Node};

pub(super) const DIRECTIVE: Directive = Directive {
    name: "shell",
    params: Params::Custom(validate),
    run: Run::Here(run),
};

pub(super) fn validate(params: &Node, field: &str) -> Result<(), ParamError> {
    if subst::is_whole_reference(params) {
        return Ok(());
    }
    let items = params.as_seq().ok_or_else(|| {
        ParamError::new(
            params.mark,
            field,
            format!(
                "`shell` takes a list of commands, found {}",
                params.type_name()
            ),
        )
    })?;
    if items.is_empty() {
        return Err(ParamError::new(
            params.mark,
            field,
            "`shell` has no commands",
        ));
    }
    for (i, item) in items.iter().enumerate() {
        let f = format!("{field}[{i}]");
        match &item.kind {
            Kind::Str(_) | Kind::Int(_) | Kind::Bool(_) | Kind::Float(_) => {}
            Kind::Map(entries) => {
                let (k, v) = match entries.as_slice() {
                    [(k, v)] if k.as_str() == Some("ignorereturn") => (k, v),
                    _ => {
                        return Err(ParamError::new(
                            item.mark,
                            f,
                            "a mapping in `shell` must be exactly `ignorereturn: [commands]` \
                             (a command containing `: ` must be quoted)",
                        ))
                    }
                };
                let _ = k;
                let ok = match &v.kind {
                    Kind::Str(_) => true,
                    Kind::Seq(cmds) => {
                        !cmds.is_empty()
                            && cmds.iter().all(|c| {
                                matches!(c.kind, Kind::Str(_) | Kind::Int(_) | Kind::Bool(_))
                            })
                    }
                    _ => false,
                };
                if !ok {
                    return Err(ParamError::new(
                        v.mark,
                        format!("{f}.ignorereturn"),
                        format!(
                            "must be a command or a non-empty list of commands, found {}",
                            v.type_name()
                        ),
                    ));
                }
            }
            _ => {
                return Err(ParamError::new(
                    item.mark,
                    f,
                    format!("a command must be a string, found {}", item.type_name()),
                ))
            }
        }
    }
    Ok(())
}

/// (command, ignore its exit status, index of its list item)
fn commands(params: &Node) -> Vec<(String, bool, usize)> {
    let mut out = Vec::new();
    for (i, item) in params.as_seq().unwrap_or_default().iter().enumerate() {
        match item.get("ignorereturn") {
            Some(v) => match &v.kind {
                Kind::Seq(cmds) => out.extend(
                    cmds.iter()
                        .filter_map(Node::scalar_text)
                        .map(|c| (c, true, i)),
                ),
                _ => out.extend(v.scalar_text().map(|c| (c, true, i))),
            },
            None => out.extend(item.scalar_text().map(|c| (c, false, i))),
        }
    }
    out
}

pub(super) fn run(
    params: &Node,
    ctx: &mut StepContext<'_>,
) -> Result<serde_json::Value, StepError> {
    let mut stdout = Vec::new();
    for (cmd, ignore, i) in commands(params) {
        ctx.say(&format!("$ {cmd}"));
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(&cmd).current_dir(ctx.formula.taskdir());
        let done = run_streaming(c, &ctx.config.cancel, ctx.sink)?;
        stdout.extend_from_slice(&done.stdout);
        if !done.status.success() {
            if ignore {
                ctx.say(&format!(
                    "command {} (ignored: ignorereturn)",
                    describe(done.status)
                ));
            } else {
                return Err(StepError {
                    mark: params.as_seq().and_then(|s| s.get(i)).map(|n| n.mark),
                    field: Some(format!("{}[{i}]", ctx.action.field())),
                    message: format!("command `{cmd}` {}", describe(done.status)),
                });
            }
        }
    }
    let mut text = String::from_utf8_lossy(&stdout).into_owned();
    while text.ends_with('\n') {
        text.pop();
    }
    Ok(serde_json::Value::String(text))
}
