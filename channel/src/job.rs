//! What the host asks the guest to run.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use crate::fetch::FetchHandler;

#[derive(Debug, Clone, Default)]
pub struct JobSpec {
    pub id: String,
    /// The job's uuid as the formula sees it (`${uuid}`); empty = same as `id`.
    pub uuid: String,
    pub item: String,
    pub item_type: String,
    pub arch: String,
    /// The formula file or its directory, relative to the task tree.
    pub formula_path: String,
    /// `--arg K=V` values.
    pub variables: BTreeMap<String, String>,
    /// Wall-clock limit of the formula run; zero = none.
    pub timeout: Duration,
    /// Answers the guest's fetch requests (koji/bodhi/distgit steps); `None`: they are refused.
    pub fetch: Option<Arc<dyn FetchHandler>>,
    /// The pool has a package source for the formula's `environment` (answered through `fetch`).
    pub package_source: bool,
    /// The VM has a NIC on qemu's user network, for the agent to bring up.
    pub network: bool,
    /// Who the VM is (entropy, clock, host name, machine and instance id), applied by the agent
    /// before the job runs: a VM restored from a snapshot shares its template's memory.
    pub identity: Option<minion_proto::guest::Identity>,
    /// Keep the VM after the Result (it becomes an instance on the next connection).
    pub keep: bool,
}
