//! REPORTING: a finished job's results go to ResultsDB v2.0 from the host (the guest has no
//! network and holds no credentials), through a durable outbox in the jobs store.
//!
//! ```text
//! session ended → plan: one outbox entry per result (namespace allowed?), ref_url = the
//!   artifact's URL or the job's artifacts URL → REPORTING (entries written with the record)
//!   → post_job: one attempt per entry, bounded → FINISHED (whatever is left stays in the outbox)
//! run (background): every pending entry, retried with backoff while ResultsDB is down or 5xx;
//!   a 4xx is a refusal, kept on the job with ResultsDB's message, never retried
//! ```
//!
//! Exactly once: an entry is marked sent (durably) before its POST; an entry found marked sent
//! (the daemon died mid-POST) is first looked up in ResultsDB by its `data.minion_result` id.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use minion_channel::SessionOutcome;
use serde_json::{json, Value};
use tokio::sync::{Mutex, Notify};

use crate::bus::Bus;
use crate::config::ReportingConfig;
use crate::jobs::{JobRecord, Jobs, OutboxEntry, Refusal, ReportPlan, Resolution};
use crate::recorder::{Post, Recorder};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Longest server message kept on a refused result.
const MAX_REASON: usize = 1000;

/// Why ResultsDB could not be asked.
#[derive(Debug, thiserror::Error)]
enum AskError {
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{0}")]
    Answer(String),
    #[error("ResultsDB task: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// One POST's result.
enum Attempt {
    Posted,
    Refused(String),
    /// Down, unreachable or 5xx: try again later.
    Retry(String),
}

pub struct Reporter {
    jobs: Arc<Jobs>,
    recorder: Recorder,
    cfg: ReportingConfig,
    api: String,
    /// One poster at a time (the runner's first attempt and the background retries), so an
    /// entry is never posted twice at once.
    posting: Mutex<()>,
    wake: Notify,
    /// `result.new` for each posted result, when the bus is configured.
    bus: Option<Arc<Bus>>,
}

impl Reporter {
    pub fn new(
        jobs: &Arc<Jobs>,
        cfg: &ReportingConfig,
        bus: Option<Arc<Bus>>,
        recorder: Recorder,
    ) -> Arc<Reporter> {
        Arc::new(Reporter {
            recorder,
            jobs: jobs.clone(),
            api: minion_formula::report::resultsdb_api(&cfg.resultsdb_url),
            cfg: cfg.clone(),
            posting: Mutex::new(()),
            wake: Notify::new(),
            bus,
        })
    }

    /// How long a job waits in REPORTING for its first attempt.
    pub fn wait(&self) -> Duration {
        Duration::from_secs(self.cfg.wait_seconds)
    }

    fn base(&self) -> &str {
        self.cfg.artifacts_base_url.trim_end_matches('/')
    }

    /// Whether a task from `repo` may post into `namespace`.
    fn allowed(&self, namespace: &str, repo: &str) -> bool {
        self.cfg.safe_namespaces.iter().any(|n| n == namespace)
            || self
                .cfg
                .namespaces
                .get(namespace)
                .is_some_and(|prefixes| prefixes.iter().any(|p| repo.starts_with(p.as_str())))
    }

    /// The `ref_url` of a result: its artifact's URL when the artifact is one of the job's
    /// (under `task_output/`, as the guest names it or relative), else the job's artifacts URL.
    fn ref_url(&self, job: &str, artifact: Option<&str>, artifacts_dir: &Path) -> String {
        let all = format!("{}/jobs/{job}/artifacts/", self.base());
        let Some(a) = artifact else { return all };
        // The guest's own path is `<run>/task_output/<rel>`; a relative one is under task_output.
        let rel = match a.rfind("/task_output/") {
            Some(i) => &a[i + "/task_output/".len()..],
            None if !a.starts_with('/') => a.strip_prefix("task_output/").unwrap_or(a),
            None => "",
        };
        let root = artifacts_dir.join("task_output");
        match minion_safepath::resolve_file_beneath(&root, Path::new(rel)) {
            Ok(_) => format!("{all}task_output/{rel}"),
            Err(e) => {
                tracing::warn!(job = %job, artifact = %a, "the result's artifact is not one of the job's ({e}): ref_url is the job's artifacts");
                all
            }
        }
    }

    /// The outbox entries (and namespace refusals) for a finished session's results.
    pub fn plan(&self, rec: &JobRecord, o: &SessionOutcome, artifacts_dir: &Path) -> ReportPlan {
        let mut plan = ReportPlan::default();
        let results = match minion_formula::parse_results(&o.results_yaml) {
            Ok(r) => r,
            Err(_) if o.results_yaml.trim().is_empty() => return plan,
            Err(e) => {
                tracing::warn!(job = %rec.id, "results do not parse, nothing to report: {e}");
                return plan;
            }
        };
        let ns = rec.request.namespace.as_str();
        let group = json!({
            "uuid": rec.id,
            "ref_url": format!("{}/jobs/{}", self.base(), rec.id),
            "description": format!("{} on {}", rec.request.formula, rec.request.item),
        });
        for (index, r) in results.iter().enumerate() {
            let testcase = minion_formula::report::testcase_name(Some(ns), &r.checkname);
            // The agent's resultsdb step refuses these; a hostile guest may still send one.
            if let Some(missing) = r.missing_identity() {
                let reason = format!("result {index} has no `{missing}`");
                tracing::warn!(job = %rec.id, %testcase, "result not reported: {reason}");
                plan.refused.push(Refusal { testcase, reason });
                continue;
            }
            if !self.allowed(ns, &rec.request.repo) {
                let reason = format!(
                    "namespace `{ns}` is not open to tasks from {} (safe_namespaces, or [reporting.namespaces])",
                    rec.request.repo
                );
                tracing::warn!(job = %rec.id, %testcase, "result not reported: {reason}");
                plan.refused.push(Refusal { testcase, reason });
                continue;
            }
            let ref_url = self.ref_url(&rec.id, r.artifact.as_deref(), artifacts_dir);
            let mut body = minion_formula::report::result_body(
                r,
                Some(ns),
                &rec.request.arch,
                &group,
                Some(&ref_url),
            );
            body["data"]["minion_result"] = Value::String(format!("{}/{index}", rec.id));
            plan.entries.push(OutboxEntry {
                job: rec.id.clone(),
                index: index as u32,
                testcase,
                body,
                sent: false,
            });
        }
        plan
    }

    /// One attempt at each of `job`'s entries, within `within`.
    pub async fn post_job(&self, job: &str, within: Duration) {
        let deadline = Instant::now() + within;
        let _one = self.posting.lock().await;
        let entries = match self.jobs.outbox() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(job = %job, "outbox: {e}");
                return;
            }
        };
        for e in entries.iter().filter(|e| e.job == job) {
            if Instant::now() >= deadline {
                break;
            }
            if let Attempt::Retry(why) = self.post_entry(e).await {
                tracing::warn!(job = %job, "ResultsDB cannot take results now ({why}): they stay in the outbox");
                self.wake.notify_one();
                break;
            }
        }
    }

    /// Posts whatever waits in the outbox, for ever: at start (entries of an earlier run), when
    /// woken, and with backoff while ResultsDB is down.
    pub async fn run(self: Arc<Self>) {
        let mut wait = FIRST_BACKOFF;
        loop {
            let failed = {
                let _one = self.posting.lock().await;
                let entries = self.jobs.outbox().unwrap_or_default();
                let mut failed = false;
                for e in &entries {
                    if let Attempt::Retry(why) = self.post_entry(e).await {
                        tracing::warn!(
                            pending = entries.len(),
                            retry_in_s = wait.as_secs(),
                            "ResultsDB cannot take results now: {why}"
                        );
                        failed = true;
                        break;
                    }
                }
                failed
            };
            if failed {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            } else {
                wait = FIRST_BACKOFF;
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
            }
        }
    }

    /// Posts one entry (after asking ResultsDB whether an earlier POST of it arrived) and
    /// records what became of it.
    async fn post_entry(&self, e: &OutboxEntry) -> Attempt {
        let attempt = if e.sent {
            match self.lookup(e).await {
                Ok(true) => Attempt::Posted,
                Ok(false) => self.post(e).await,
                Err(why) => Attempt::Retry(why.to_string()),
            }
        } else {
            if let Err(err) = self.jobs.outbox_sent(e) {
                return Attempt::Retry(format!("outbox: {err}"));
            }
            self.post(e).await
        };
        self.recorder.resultsdb_post(match &attempt {
            Attempt::Posted => Post::Posted,
            Attempt::Refused(_) => Post::Refused,
            Attempt::Retry(_) => Post::Retry,
        });
        let how = match &attempt {
            Attempt::Posted => {
                if let Some(bus) = &self.bus {
                    bus.result_new(e);
                }
                Resolution::Posted
            }
            Attempt::Refused(why) => {
                tracing::warn!(job = %e.job, testcase = %e.testcase, "ResultsDB refused the result: {why}");
                Resolution::Refused(why.clone())
            }
            Attempt::Retry(_) => return attempt,
        };
        if let Err(err) = self.jobs.outbox_resolve(e, &how) {
            tracing::error!(job = %e.job, "outbox: {err}");
        }
        attempt
    }

    fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(15)))
            .http_status_as_error(false)
            .build()
            .into()
    }

    async fn post(&self, e: &OutboxEntry) -> Attempt {
        let (agent, url, auth, body) = (
            self.agent(),
            format!("{}/results", self.api),
            self.cfg.auth_header.clone(),
            e.body.clone(),
        );
        let sent = tokio::task::spawn_blocking(move || {
            let mut req = agent.post(&url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            match req.send_json(&body) {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    Ok((status, text))
                }
                Err(err) => Err(format!("{url}: {err}")),
            }
        })
        .await;
        match sent {
            Ok(Ok((s, _))) if (200..300).contains(&s) => Attempt::Posted,
            Ok(Ok((s, text))) if (400..500).contains(&s) => Attempt::Refused(reason(s, &text)),
            Ok(Ok((s, text))) => Attempt::Retry(reason(s, &text)),
            Ok(Err(why)) => Attempt::Retry(why),
            Err(join) => Attempt::Retry(format!("post task: {join}")),
        }
    }

    /// Whether ResultsDB already has `e` (by its `minion_result` id).
    async fn lookup(&self, e: &OutboxEntry) -> Result<bool, AskError> {
        let id = format!("{}/{}", e.job, e.index);
        let (agent, auth) = (self.agent(), self.cfg.auth_header.clone());
        let url = format!(
            "{}/results?minion_result={}",
            self.api,
            id.replace('/', "%2F")
        );
        tokio::task::spawn_blocking(move || {
            let mut req = agent.get(&url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            let http = |message: String| AskError::Http {
                url: url.clone(),
                message,
            };
            let mut resp = req.call().map_err(|err| http(err.to_string()))?;
            let status = resp.status().as_u16();
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            if status != 200 {
                return Err(AskError::Answer(reason(status, &text)));
            }
            let v: Value = serde_json::from_str(&text).map_err(|err| http(err.to_string()))?;
            Ok(v["data"].as_array().is_some_and(|d| !d.is_empty()))
        })
        .await
        .map_err(AskError::Task)?
    }
}

/// A server's answer as a reason: its JSON `message` when there is one, else its text.
fn reason(status: u16, text: &str) -> String {
    let msg = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.trim().to_string());
    let mut out = format!("{status}: {msg}");
    if out.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_become_reasons() {
        assert_eq!(
            reason(400, r#"{"message": "outcome: `GREAT` is not one of …"}"#),
            "400: outcome: `GREAT` is not one of …"
        );
        assert_eq!(reason(502, "Bad Gateway\n"), "502: Bad Gateway");
        assert!(reason(400, &"x".repeat(5000)).len() <= MAX_REASON);
    }
}
