//! Guests' fetch requests (koji/bodhi/distgit steps), answered on the host from the configured
//! sources only ([`minion_fetch`]), each job with its own byte and time budget; the files come
//! from the host's cache under `STATE/cache/fetch` and are streamed into the guest.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use minion_channel::{FetchHandler, HostFile};
use minion_fetch::{Budget, Fetch, FetchError, FetchLimits, Sources};
use minion_formula::FetchRequest;

/// The daemon's fetching service, shared by its jobs; `None` when no source is configured.
pub fn open(
    sources: Sources,
    state_dir: &Path,
    limits: &FetchLimits,
) -> Result<Option<Arc<Fetch>>, FetchError> {
    if sources == Sources::default() {
        return Ok(None);
    }
    let cache = state_dir.join("cache").join("fetch");
    Ok(Some(Arc::new(Fetch::new(sources, &cache, limits)?)))
}

/// One job's fetch handler: every request of the job draws on one budget.
pub struct JobFetch {
    job: String,
    fetch: Arc<Fetch>,
    budget: Arc<Mutex<Budget>>,
}

impl JobFetch {
    pub fn new(job: &str, fetch: Arc<Fetch>) -> Self {
        Self {
            job: job.to_string(),
            budget: Arc::new(Mutex::new(fetch.job_budget())),
            fetch,
        }
    }
}

impl FetchHandler for JobFetch {
    fn fetch(
        &self,
        request: FetchRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<HostFile>, String>> + Send + '_>> {
        let fetch = self.fetch.clone();
        let budget = self.budget.clone();
        let job = self.job.clone();
        Box::pin(async move {
            let what = request.describe();
            let started = std::time::Instant::now();
            // Blocking HTTP and disk: off the runtime. A fetch the session stops waiting for
            // (the job was cancelled) still ends within the job's fetch time.
            let done = tokio::task::spawn_blocking(move || {
                let mut b = budget
                    .lock()
                    .map_err(|_| "fetch budget poisoned".to_string())?;
                fetch.fetch(&request, &mut b).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| format!("fetch task: {e}"))?;
            match &done {
                Ok(files) => tracing::info!(
                    job = %job,
                    %what,
                    files = files.len(),
                    bytes = files.iter().map(|f| f.blob.size).sum::<u64>(),
                    cached = files.iter().filter(|f| f.blob.hit).count(),
                    ms = started.elapsed().as_millis() as u64,
                    "fetched for the guest"
                ),
                Err(e) => tracing::warn!(job = %job, %what, "fetch failed: {e}"),
            }
            Ok(done?
                .into_iter()
                .map(|f| HostFile {
                    name: f.name,
                    kind: f.kind,
                    path: f.blob.path,
                    size: f.blob.size,
                })
                .collect())
        })
    }
}
