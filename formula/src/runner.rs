//! Running a formula: variables, steps in order, exports, the run's verdict.

use crate::context::{
    ActionState, EventSink, LogStream, RunConfig, StepContext, EXIT_BAD_INPUT,
    EXIT_EXECUTION_FAILED,
};
use crate::directives::{self, StepError};
use crate::error::FormulaError;
use crate::formula::{Action, Formula};
use crate::results::{results_to_tap13, results_to_yaml, CheckResult};
use crate::subst::{self, Vars};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionStatus {
    Ok,
    NotOk,
}

/// The verdict of a run. `execution_status` is about the runner (did every step run);
/// `results` are the checks' own outcomes.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub execution_status: ExecutionStatus,
    pub status_message: String,
    pub exit_code: i32,
    pub cancelled: bool,
    pub results: Vec<CheckResult>,
}

impl RunReport {
    pub fn results_yaml(&self) -> String {
        results_to_yaml(&self.results)
    }
    pub fn tap13(&self) -> String {
        results_to_tap13(&self.results)
    }
}

fn say(sink: &mut dyn EventSink, msg: &str) {
    sink.log(LogStream::Runner, format!("[minion] {msg}\n").as_bytes());
}

/// Runs every step in order; stops at the first failing step. Blocking; never panics on input.
pub fn run(formula: &Formula, config: &RunConfig, sink: &mut dyn EventSink) -> RunReport {
    let mut vars = config.variables(formula);
    let mut report = RunReport {
        execution_status: ExecutionStatus::Ok,
        status_message: String::new(),
        exit_code: 0,
        cancelled: false,
        results: Vec::new(),
    };
    if let Err(e) = formula.check_inputs(|n| vars.contains_key(n)) {
        return not_started(report, sink, e.to_string(), EXIT_BAD_INPUT);
    }
    for dir in [&config.workdir, &config.artifactsdir] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            let msg = format!("cannot create {}: {e}", dir.display());
            return not_started(report, sink, msg, EXIT_EXECUTION_FAILED);
        }
    }
    if let Err(msg) = prepare_environment(formula, config, sink) {
        let report = not_started(report, sink, msg, EXIT_EXECUTION_FAILED);
        for a in &formula.actions {
            sink.action(a.index, &a.display_name(), ActionState::Skipped);
        }
        return report;
    }
    say(
        sink,
        &format!(
            "task {} for {} {} ({} steps)",
            formula.name,
            config.item_type,
            config.item,
            formula.actions.len()
        ),
    );
    let mut exit_code = 0;
    let mut failed_at = None;
    for action in &formula.actions {
        let name = action.display_name();
        if config.cancel.is_cancelled() {
            report.cancelled = true;
            failed_at = Some(action.index);
            report.status_message = "cancelled".into();
            say(sink, "cancelled");
            break;
        }
        sink.action(action.index, &name, ActionState::Started);
        say(sink, &format!("step {}: {name}", action.index));
        let outcome = run_step(
            formula,
            config,
            sink,
            action,
            &vars,
            &mut report.results,
            &mut exit_code,
        );
        match outcome {
            Ok(value) => {
                if config.debug {
                    say(sink, &format!("step {} returned: {value}", action.index));
                }
                if let Some(var) = &action.export {
                    vars.insert(var.clone(), value);
                }
                sink.action(action.index, &name, ActionState::Succeeded);
            }
            Err(e) => {
                let msg = step_error_text(formula, action, &e);
                say(sink, &msg);
                sink.action(action.index, &name, ActionState::Failed);
                report.cancelled = config.cancel.is_cancelled();
                report.status_message = if report.cancelled {
                    "cancelled".into()
                } else {
                    msg
                };
                failed_at = Some(action.index);
                break;
            }
        }
    }
    if let Some(at) = failed_at {
        for a in formula.actions.iter().filter(|a| a.index > at) {
            sink.action(a.index, &a.display_name(), ActionState::Skipped);
        }
        report.execution_status = ExecutionStatus::NotOk;
        report.exit_code = EXIT_EXECUTION_FAILED;
    } else {
        report.exit_code = exit_code;
    }
    say(
        sink,
        &format!(
            "execution {}, exit code {}",
            if failed_at.is_some() { "NOT_OK" } else { "OK" },
            report.exit_code
        ),
    );
    report
}

/// A run that ends before its first step: NOT_OK with `msg`, said in the log.
fn not_started(
    mut report: RunReport,
    sink: &mut dyn EventSink,
    msg: String,
    exit_code: i32,
) -> RunReport {
    say(sink, &msg);
    report.execution_status = ExecutionStatus::NotOk;
    report.status_message = msg;
    report.exit_code = exit_code;
    report
}

/// The formula's `environment`, before the first step: a package that cannot be made present
/// fails the run, named.
fn prepare_environment(
    formula: &Formula,
    config: &RunConfig,
    sink: &mut dyn EventSink,
) -> Result<(), String> {
    let packages = &formula.environment_rpms;
    if packages.is_empty() {
        return Ok(());
    }
    let env = config.environment.as_ref().ok_or_else(|| {
        format!(
            "environment: this runner cannot provide packages ({})",
            packages.join(", ")
        )
    })?;
    env.prepare(packages, &mut |m| say(sink, m))
        .map_err(|e| format!("environment: {e}"))
}

fn run_step(
    formula: &Formula,
    config: &RunConfig,
    sink: &mut dyn EventSink,
    action: &Action,
    vars: &Vars,
    results: &mut Vec<CheckResult>,
    exit_code: &mut i32,
) -> Result<serde_json::Value, StepError> {
    let field = action.field();
    let params = subst::substitute(&action.params, vars, &field)?;
    directives::validate(&action.directive, &params, &field)?;
    if config.debug {
        let text = format!(
            "step {} {}: {}",
            action.index,
            action.directive,
            params.to_json()
        );
        say(sink, &text);
    }
    let mut ctx = StepContext {
        formula,
        config,
        sink,
        action,
        results,
        exit_code,
    };
    directives::execute(&action.directive, &params, &mut ctx)
}

fn step_error_text(formula: &Formula, action: &Action, e: &StepError) -> String {
    let err = FormulaError::new(
        &formula.path,
        e.mark.unwrap_or(action.mark),
        e.field.clone().unwrap_or_else(|| action.field()),
        format!("step `{}` failed: {}", action.display_name(), e.message),
    );
    err.to_string()
}
