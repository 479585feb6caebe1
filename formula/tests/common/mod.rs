//! The harness the in-process formula tests share: a task directory and a sink that records.
#![allow(clippy::unwrap_used, dead_code)] // test helpers: a failed setup should panic

use std::collections::BTreeMap;
use std::path::Path;

use minion_formula::*;

#[derive(Default)]
pub struct Recorder {
    pub out: Vec<u8>,
    pub stdout: Vec<u8>,
    pub runner: String,
    pub actions: Vec<(usize, ActionState)>,
}

impl EventSink for Recorder {
    fn log(&mut self, stream: LogStream, data: &[u8]) {
        match stream {
            LogStream::Runner => self.runner.push_str(&String::from_utf8_lossy(data)),
            LogStream::Stdout => {
                self.stdout.extend_from_slice(data);
                self.out.extend_from_slice(data);
            }
            LogStream::Stderr => self.out.extend_from_slice(data),
        }
    }
    fn action(&mut self, index: usize, _name: &str, state: ActionState) {
        self.actions.push((index, state));
    }
}

pub struct Task {
    dir: tempfile::TempDir,
}

impl Task {
    pub fn new(formula: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("runtask.yml"), formula).unwrap();
        Self { dir }
    }
    pub fn file(self, name: &str, text: &str) -> Self {
        std::fs::write(self.dir.path().join(name), text).unwrap();
        self
    }
    pub fn config(&self) -> RunConfig {
        RunConfig {
            item: "foo-1.0-1.fc40".into(),
            item_type: "koji_build".into(),
            arch: "x86_64".into(),
            jobid: "job-1".into(),
            uuid: "uuid-1".into(),
            args: BTreeMap::new(),
            workdir: self.dir.path().join("work"),
            artifactsdir: self.dir.path().join("artifacts"),
            report: None,
            cancel: CancelFlag::new(),
            debug: false,
            fetcher: None,
            environment: None,
        }
    }
    pub fn run(&self) -> (RunReport, Recorder) {
        self.run_with(self.config())
    }
    pub fn run_with(&self, config: RunConfig) -> (RunReport, Recorder) {
        let f = load_formula(&self.dir.path().join("runtask.yml")).unwrap();
        let mut rec = Recorder::default();
        let report = run(&f, &config, &mut rec);
        (report, rec)
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
