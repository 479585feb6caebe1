//! Running a formula: variables, steps in order, exports, the run's verdict.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::directives::{self, StepError};
use crate::error::FormulaError;
use crate::formula::{Action, Formula};
use crate::results::{results_to_tap13, results_to_yaml, CheckResult};
use crate::subst::{self, Vars};

/// Exit code when an `exitcode` step says the check failed.
pub const EXIT_CHECK_FAILED: i32 = 100;
/// Exit code when the execution itself failed.
pub const EXIT_EXECUTION_FAILED: i32 = 1;
/// Exit code for bad input (a missing `input.args` variable).
pub const EXIT_BAD_INPUT: i32 = 2;

/// Shared cancel switch: `run` checks it between steps and kills a running child's process group.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// ResultsDB reporting (`--report`).
#[derive(Debug, Clone)]
pub struct ReportConfig {
    /// Base URL of ResultsDB, e.g. `http://resultsdb.example/` (the API path is appended).
    pub resultsdb_url: String,
    /// Where the run's log will be published, used as `ref_url` when a result has no artifact.
    pub log_url: Option<String>,
    /// Tries per result before giving up.
    pub attempts: u32,
}

/// Everything a run needs besides the formula.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub item: String,
    pub item_type: String,
    pub arch: String,
    pub jobid: String,
    pub uuid: String,
    /// `--arg K=V`: extra variables; they override built-ins of the same name.
    pub args: BTreeMap<String, String>,
    /// `${workdir}`: scratch space; shell and python steps run here.
    pub workdir: PathBuf,
    /// `${artifactsdir}`: kept after the run.
    pub artifactsdir: PathBuf,
    /// `None`: reporting off (the local default).
    pub report: Option<ReportConfig>,
    pub cancel: CancelFlag,
}

impl RunConfig {
    /// The variables a run starts with.
    pub fn variables(&self, formula: &Formula) -> Vars {
        use serde_json::Value;
        let mut v = Vars::new();
        let s = |x: &str| Value::String(x.to_string());
        v.insert("item".into(), s(&self.item));
        v.insert("item_type".into(), s(&self.item_type));
        if !self.item_type.is_empty() {
            v.insert(self.item_type.clone(), s(&self.item));
        }
        v.insert("arch".into(), s(&self.arch));
        v.insert("jobid".into(), s(&self.jobid));
        v.insert("uuid".into(), s(&self.uuid));
        v.insert("taskname".into(), s(&formula.name));
        v.insert(
            "namespace".into(),
            s(formula.namespace.as_deref().unwrap_or("")),
        );
        v.insert("workdir".into(), s(&self.workdir.to_string_lossy()));
        v.insert(
            "artifactsdir".into(),
            s(&self.artifactsdir.to_string_lossy()),
        );
        for (k, val) in &self.args {
            v.insert(k.clone(), s(val));
        }
        v
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
    /// The runner's own messages.
    Runner,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionState {
    Started,
    Succeeded,
    Failed,
    Skipped,
}

/// Where a run's live output goes (a terminal and log file locally, the guest channel in a VM).
pub trait EventSink {
    fn log(&mut self, stream: LogStream, data: &[u8]);
    fn action(&mut self, index: usize, name: &str, state: ActionState);
}

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

/// What a directive sees while it runs.
pub(crate) struct StepContext<'a> {
    pub formula: &'a Formula,
    pub config: &'a RunConfig,
    pub sink: &'a mut dyn EventSink,
    pub action: &'a Action,
    pub results: &'a mut Vec<CheckResult>,
    /// The worst `exitcode` seen so far.
    pub exit_code: &'a mut i32,
}

impl StepContext<'_> {
    pub fn say(&mut self, msg: &str) {
        let line = format!("[minion] {msg}\n");
        self.sink.log(LogStream::Runner, line.as_bytes());
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
        say(sink, &e.to_string());
        report.execution_status = ExecutionStatus::NotOk;
        report.status_message = e.to_string();
        report.exit_code = EXIT_BAD_INPUT;
        return report;
    }
    for dir in [&config.workdir, &config.artifactsdir] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            let msg = format!("cannot create {}: {e}", dir.display());
            say(sink, &msg);
            report.execution_status = ExecutionStatus::NotOk;
            report.status_message = msg;
            report.exit_code = EXIT_EXECUTION_FAILED;
            return report;
        }
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
