//! What a run is given and where its output goes: the run's configuration, the live-output sink,
//! and the context a directive sees while a step runs. Both the runner and the directives depend
//! on this module; neither depends on the other's internals.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::environment::Environment;
use crate::fetch::Fetcher;
use crate::formula::{Action, Formula};
use crate::results::CheckResult;
use crate::subst::Vars;

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
    /// `${workdir}`: scratch space (shell and python steps run in the task directory).
    pub workdir: PathBuf,
    /// `${artifactsdir}`: kept after the run.
    pub artifactsdir: PathBuf,
    /// `None`: reporting off (the local default).
    pub report: Option<ReportConfig>,
    pub cancel: CancelFlag,
    /// `-d/--debug`: log each step's substituted parameters and the value it exported.
    pub debug: bool,
    /// Who fetches Koji builds, Bodhi updates and dist-git files; `None`: those steps fail with
    /// "not available here".
    pub fetcher: Option<Arc<dyn Fetcher>>,
    /// Who makes the formula's `environment` packages present; `None`: a formula naming any
    /// fails before its first step.
    pub environment: Option<Arc<dyn Environment>>,
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
    /// A path a step names: absolute as it is, relative to the task directory (the working
    /// directory of shell and python steps).
    pub fn resolve(&self, path: &str) -> PathBuf {
        self.formula.taskdir().join(path)
    }

    pub fn say(&mut self, msg: &str) {
        let line = format!("[minion] {msg}\n");
        self.sink.log(LogStream::Runner, line.as_bytes());
    }
}
