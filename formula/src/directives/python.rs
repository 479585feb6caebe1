//! `python`: imports `file` (relative to the task dir) with the system `python3` and calls
//! `callable` with every other parameter as a keyword argument, keeping each value's YAML type
//! (an exported mapping arrives as a dict). Runs in the task directory. Value: what the callable
//! returned.

use std::path::Path;
use std::process::Command;

use super::process::{describe, run_streaming};
use super::{str_param, Directive, Params, Run, Spec, StepContext, StepError, Ty, NONE};
use crate::yaml::Node;

pub(super) const DIRECTIVE: Directive = Directive {
    name: "python",
    params: Params::Spec(Spec {
        required: &[("file", Ty::Str), ("callable", Ty::Str)],
        optional: NONE,
        one_of: &[],
        choices: &[],
        extra_allowed: true,
    }),
    run: Run::Here(run),
};

/// The wrapper the interpreter runs. The return value travels through a file, so the task's own
/// stdout/stderr stream untouched.
const WRAPPER: &str = r#"
import importlib.util, json, os, sys
path, name, kwargs_path, out_path = sys.argv[1:5]
sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
spec = importlib.util.spec_from_file_location("minion_task", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
func = getattr(module, name, None)
if not callable(func):
    sys.stderr.write("minion: %s has no callable %r\n" % (path, name))
    sys.exit(3)
with open(kwargs_path) as f:
    kwargs = json.load(f)
value = func(**kwargs)
with open(out_path, "w") as f:
    json.dump(value, f, default=str)
"#;

pub(super) fn run(
    params: &Node,
    ctx: &mut StepContext<'_>,
) -> Result<serde_json::Value, StepError> {
    let file = str_param(params, "file").unwrap_or_default();
    let callable = str_param(params, "callable").unwrap_or_default();
    // The file must be inside the task directory, symlinks included (minion-safepath's rules).
    let path = minion_safepath::resolve_file_beneath(ctx.formula.taskdir(), Path::new(&file))
        .map_err(|e| {
            let why = match e {
                minion_safepath::PathError::Missing { .. }
                | minion_safepath::PathError::NotAFile { .. } => format!(
                    "{} does not exist",
                    ctx.formula.taskdir().join(&file).display()
                ),
                _ => "must be a path inside the task directory".to_string(),
            };
            param_error(params, "file", ctx, &why)
        })?;
    let kwargs: serde_json::Map<String, serde_json::Value> = params
        .as_map()
        .unwrap_or_default()
        .iter()
        .filter_map(|(k, v)| {
            let key = k.scalar_text()?;
            (key != "file" && key != "callable").then(|| (key, v.to_json()))
        })
        .collect();
    let scratch = ctx.config.workdir.join(".minion");
    std::fs::create_dir_all(&scratch)
        .map_err(|e| StepError::msg(format!("cannot create {}: {e}", scratch.display())))?;
    let kwargs_path = scratch.join(format!("python-{}-kwargs.json", ctx.action.index));
    let out_path = scratch.join(format!("python-{}-value.json", ctx.action.index));
    let _ = std::fs::remove_file(&out_path);
    std::fs::write(&kwargs_path, serde_json::Value::Object(kwargs).to_string())
        .map_err(|e| StepError::msg(format!("cannot write {}: {e}", kwargs_path.display())))?;

    ctx.say(&format!("python {file}:{callable}()"));
    let mut cmd = Command::new(interpreter());
    cmd.arg("-c")
        .arg(WRAPPER)
        .arg(&path)
        .arg(&callable)
        .arg(&kwargs_path)
        .arg(&out_path)
        .current_dir(ctx.formula.taskdir())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let done = run_streaming(cmd, &ctx.config.cancel, ctx.sink)?;
    if !done.status.success() {
        return Err(StepError::msg(format!(
            "python {file}:{callable} {} (traceback above in the log)",
            describe(done.status)
        )));
    }
    let text = std::fs::read_to_string(&out_path).map_err(|e| {
        StepError::msg(format!(
            "python {file}:{callable} returned nothing readable: {e}"
        ))
    })?;
    serde_json::from_str(&text)
        .map_err(|e| StepError::msg(format!("python {file}:{callable}: bad return value: {e}")))
}

/// The system interpreter, as libtaskotron ran callables in its own (system) Python, where the
/// distribution's modules (`rpm`, `dnf`, `koji`) are; `MINION_PYTHON` overrides, and a host
/// without `/usr/bin/python3` uses `python3` from `PATH`.
fn interpreter() -> std::ffi::OsString {
    if let Some(p) = std::env::var_os("MINION_PYTHON") {
        return p;
    }
    let system = Path::new("/usr/bin/python3");
    if system.is_file() {
        return system.into();
    }
    "python3".into()
}

fn param_error(params: &Node, key: &str, ctx: &StepContext<'_>, msg: &str) -> StepError {
    StepError {
        mark: params.get(key).map(|n| n.mark),
        field: Some(format!("{}.{key}", ctx.action.field())),
        message: msg.to_string(),
    }
}
