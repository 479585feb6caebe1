//! Guests' fetch requests, answered on the host: koji/bodhi/distgit steps from the configured
//! sources only ([`minion_fetch::Fetch`]), the formula's `environment` packages from the pool's
//! package source ([`PackageSource`]); each job with one byte and time budget for both. The files
//! come from the host's cache under `STATE/cache/fetch` (or the pool's package directory) and are
//! streamed into the guest.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use minion_channel::{FetchHandler, HostFile};
use minion_fetch::{Budget, Fetch, FetchError, FetchLimits, PackageSource, Sources};
use minion_formula::FetchRequest;

/// The daemon's fetching service, shared by its jobs. With no source configured it answers every
/// koji/bodhi/distgit request with the setting that is missing.
pub fn open(
    sources: Sources,
    state_dir: &Path,
    limits: &FetchLimits,
) -> Result<Arc<Fetch>, FetchError> {
    let cache = state_dir.join("cache").join("fetch");
    Ok(Arc::new(Fetch::new(sources, &cache, limits)?))
}

/// Pool `pool`'s package source (`packages = DIR`), indexed now; its generated indexes go under
/// `STATE/cache/packages/<pool>`.
pub fn open_packages(
    pool: &str,
    dir: &Path,
    state_dir: &Path,
) -> Result<Arc<PackageSource>, FetchError> {
    let out = state_dir.join("cache").join("packages").join(pool);
    let source = PackageSource::open(dir, &out)?;
    tracing::info!(pool, dir = %dir.display(), packages = source.package_count(), "package source indexed");
    Ok(Arc::new(source))
}

/// One job's fetch handler: every request of the job draws on one budget.
pub struct JobFetch {
    job: String,
    pool: String,
    fetch: Arc<Fetch>,
    packages: Option<Arc<PackageSource>>,
    budget: Arc<Mutex<Budget>>,
}

impl JobFetch {
    pub fn new(
        job: &str,
        pool: &str,
        fetch: Arc<Fetch>,
        packages: Option<Arc<PackageSource>>,
    ) -> Self {
        Self {
            job: job.to_string(),
            pool: pool.to_string(),
            budget: Arc::new(Mutex::new(fetch.job_budget())),
            fetch,
            packages,
        }
    }
}

impl FetchHandler for JobFetch {
    fn fetch(
        &self,
        request: FetchRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<HostFile>, String>> + Send + '_>> {
        let fetch = self.fetch.clone();
        let packages = self.packages.clone();
        let pool = self.pool.clone();
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
                if !request.is_package_request() {
                    return fetch.fetch(&request, &mut b).map_err(|e| e.to_string());
                }
                match packages {
                    Some(p) => p.fetch(&request, &mut b).map_err(|e| e.to_string()),
                    None => Err(format!(
                        "pool {pool} has no package source (pools.{pool}.packages in miniond.toml)"
                    )),
                }
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
