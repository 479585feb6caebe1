//! Runs the job's formula with `minion-formula`, in the run layout the host expects:
//! `<run>/task_output/` (= `${artifactsdir}`), `<run>/results.yaml`, `<run>/results.tap`.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use minion_formula::{CancelFlag, ExecutionStatus, Fetcher, RunConfig, EXIT_EXECUTION_FAILED};
use minion_proto::guest::Job;

use crate::environment::{GuestPackages, Source};
use crate::sink::ChannelSink;

/// Exit code for a job that could not start (bad formula path or formula): "bad input".
const EXIT_BAD_INPUT: i32 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub execution_ok: bool,
    pub status_message: String,
    pub exit_code: i32,
    pub cancelled: bool,
    pub results_yaml: String,
    pub tap: String,
}

impl Outcome {
    pub fn failed(message: String, exit_code: i32, cancelled: bool) -> Self {
        Self {
            execution_ok: false,
            status_message: message,
            exit_code,
            cancelled,
            results_yaml: String::new(),
            tap: String::new(),
        }
    }
}

/// The job's directories under the agent's scratch dir.
pub struct Layout {
    pub task: PathBuf,
    pub work: PathBuf,
    pub run: PathBuf,
}

impl Layout {
    pub fn new(base: &Path) -> Self {
        Self {
            task: base.join("task"),
            work: base.join("work"),
            run: base.join("run"),
        }
    }

    pub fn artifacts(&self) -> PathBuf {
        self.run.join("task_output")
    }

    pub fn create(&self) -> std::io::Result<()> {
        for d in [&self.task, &self.work, &self.artifacts()] {
            fs::create_dir_all(d)?;
        }
        Ok(())
    }
}

/// A formula path inside the task tree, or why it is not one.
pub fn formula_in_task(task: &Path, formula_path: &str) -> Result<PathBuf, String> {
    // "." (the tree itself: its runtask.yml) is allowed; minion-safepath's rule otherwise.
    if formula_path.is_empty() || Path::new(formula_path) == Path::new(".") {
        return Ok(task.to_path_buf());
    }
    let rel = minion_safepath::relative(Path::new(formula_path)).map_err(|_| {
        format!("formula path {formula_path:?} must be relative to the task tree, without `..`")
    })?;
    Ok(task.join(rel))
}

pub fn run_job(
    job: &Job,
    layout: &Layout,
    cancel: &CancelFlag,
    fetcher: Arc<dyn Fetcher>,
    sink: &mut ChannelSink,
) -> Outcome {
    let path = match formula_in_task(&layout.task, &job.formula_path) {
        Ok(p) => p,
        Err(e) => return bad_input(sink, e),
    };
    let formula = match minion_formula::resolve_formula_path(&path)
        .and_then(|p| minion_formula::load_formula(&p))
    {
        Ok(f) => f,
        Err(e) => return bad_input(sink, e.to_string()),
    };
    if job.network {
        match crate::network::bring_up() {
            Ok(nic) => sink.runner(&format!(
                "network: {nic} up on qemu's user network (NAT out only)"
            )),
            Err(e) => {
                let msg = format!("network: {e}");
                sink.runner(&msg);
                return Outcome::failed(msg, EXIT_EXECUTION_FAILED, false);
            }
        }
    }
    let source = match (job.package_source, job.network) {
        (true, _) => Source::Host,
        (false, true) => Source::Network,
        (false, false) => Source::None,
    };
    let environment = Arc::new(GuestPackages::new(fetcher.clone(), source));
    let config = RunConfig {
        item: job.item.clone(),
        item_type: job.item_type.clone(),
        arch: job.arch.clone(),
        jobid: job.id.clone(),
        uuid: if job.uuid.is_empty() {
            job.id.clone()
        } else {
            job.uuid.clone()
        },
        args: job
            .variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        workdir: layout.work.clone(),
        artifactsdir: layout.artifacts(),
        report: None,
        cancel: cancel.clone(),
        debug: false,
        fetcher: Some(fetcher),
        environment: Some(environment),
    };
    let report = minion_formula::run(&formula, &config, sink);
    Outcome {
        execution_ok: matches!(report.execution_status, ExecutionStatus::Ok),
        status_message: report.status_message.clone(),
        exit_code: report.exit_code,
        cancelled: report.cancelled,
        results_yaml: report.results_yaml(),
        tap: report.tap13(),
    }
}

fn bad_input(sink: &mut ChannelSink, message: String) -> Outcome {
    sink.runner(&message);
    Outcome::failed(message, EXIT_BAD_INPUT, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_path_must_stay_in_the_task_tree() {
        let task = Path::new("/t");
        assert_eq!(
            formula_in_task(task, "checks/runtask.yml").expect("ok"),
            PathBuf::from("/t/checks/runtask.yml")
        );
        assert_eq!(
            formula_in_task(task, ".").expect("ok"),
            PathBuf::from("/t/.")
        );
        assert!(formula_in_task(task, "../etc/x.yml").is_err());
        assert!(formula_in_task(task, "/etc/x.yml").is_err());
    }
}
