//! Fetching what a task checks, on the host: Koji builds (XML-RPC hub + package URL), Bodhi
//! updates (REST, then Koji for each build) and dist-git files (HTTP raw files), from the
//! configured endpoints only. A [`minion_formula::FetchRequest`] names things, never URLs, so
//! nothing a task (or a hostile guest) sends can point the host anywhere else. Downloads are
//! counted against a per-job [`Budget`] and kept in a checksum-keyed [`Cache`].
//!
//! `minion runtask` uses [`HostFetcher`] (files placed straight into the step's target dir);
//! miniond calls [`Fetch::fetch`] and streams the cached files into the guest.

mod budget;
mod cache;
mod http;
mod koji;
mod packages;
pub mod xmlrpc;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minion_formula::{FetchRequest, Fetched, FetchedKind, Fetcher};
use serde::Deserialize;

pub use budget::Budget;
pub use cache::{Blob, Cache};
pub use http::Http;
pub use koji::KojiEndpoint;
pub use packages::PackageSource;

const BODHI: &str = "Bodhi";
const DISTGIT: &str = "dist-git";

/// Why a fetch failed. Each says what was asked and of whom.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("no {service} is configured here ({hint})")]
    NotConfigured {
        service: &'static str,
        hint: &'static str,
    },
    #[error("{what}")]
    NotFound { what: String },
    #[error("{service} at {url} is unreachable: {message}")]
    Unreachable {
        service: &'static str,
        url: String,
        message: String,
    },
    #[error("{service} refused: {message}")]
    Refused {
        service: &'static str,
        message: String,
    },
    #[error("{service} answered something unexpected: {message}")]
    Protocol {
        service: &'static str,
        message: String,
    },
    #[error("over the job's fetch budget of {limit} bytes")]
    OverBudget { limit: u64 },
    #[error("over the job's fetch time of {}s", limit.as_secs())]
    OutOfTime { limit: Duration },
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("bad request: {0}")]
    BadRequest(String),
}

/// A file to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub url: String,
    /// Its file name in the target directory (a plain name).
    pub name: String,
    pub kind: FetchedKind,
    pub size: Option<u64>,
    /// The same URL always gives the same bytes (Koji's package files): the cache may answer.
    pub immutable: bool,
}

/// A fetched file, in the host's cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile {
    pub name: String,
    pub kind: FetchedKind,
    pub blob: Blob,
}

/// The services this host may fetch from (the `[koji]`, `[bodhi]`, `[distgit]` config tables).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Sources {
    pub koji: Option<KojiEndpoint>,
    pub bodhi: Option<UrlEndpoint>,
    pub distgit: Option<UrlEndpoint>,
}

/// A service by its base URL (`https://bodhi.fedoraproject.org`, `https://src.fedoraproject.org`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UrlEndpoint {
    pub url: String,
}

/// Budgets and the cache (the `[fetch]` config table).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FetchLimits {
    /// Bytes one job may fetch in all.
    pub max_job_mib: u64,
    /// Wall-clock seconds one job may spend fetching in all.
    pub max_job_secs: u64,
    /// The host cache's bound.
    pub cache_max_mib: u64,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            max_job_mib: 4096,
            max_job_secs: 1800,
            cache_max_mib: 20 * 1024,
        }
    }
}

impl FetchLimits {
    /// A fresh budget for one job.
    pub fn budget(&self) -> Budget {
        Budget::new(
            self.max_job_mib.saturating_mul(1024 * 1024),
            Duration::from_secs(self.max_job_secs),
        )
    }
}

/// The fetching service: sources, cache, HTTP client, and the limits each job's budget starts from.
#[derive(Debug)]
pub struct Fetch {
    sources: Sources,
    cache: Cache,
    http: Http,
    limits: FetchLimits,
}

impl Fetch {
    pub fn new(
        sources: Sources,
        cache_dir: &Path,
        limits: &FetchLimits,
    ) -> Result<Self, FetchError> {
        Ok(Self {
            sources,
            cache: Cache::open(cache_dir, limits.cache_max_mib.saturating_mul(1024 * 1024))?,
            http: Http::new(),
            limits: limits.clone(),
        })
    }

    /// A fresh budget for one job (or one `minion runtask`), from the configured limits.
    pub fn job_budget(&self) -> Budget {
        self.limits.budget()
    }

    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    fn koji(&self) -> Result<koji::Koji<'_>, FetchError> {
        let endpoint = self
            .sources
            .koji
            .as_ref()
            .ok_or(FetchError::NotConfigured {
                service: "Koji",
                hint: "[koji] hub and packages",
            })?;
        Ok(koji::Koji {
            endpoint,
            http: &self.http,
        })
    }

    /// What `request` needs downloaded, asked of the configured services.
    fn plan(&self, request: &FetchRequest, budget: &Budget) -> Result<Vec<Remote>, FetchError> {
        match request {
            FetchRequest::KojiBuild { nvr, rpms } => self.koji()?.build(nvr, rpms, budget),
            FetchRequest::KojiTag { tag, rpms } => self.koji()?.tag(tag, rpms, budget),
            FetchRequest::KojiLatestStable { nvr, rpms } => {
                self.koji()?.latest_stable(nvr, rpms, budget)
            }
            FetchRequest::BodhiUpdate { id, rpms } => {
                let koji = self.koji()?;
                let mut out = Vec::new();
                for nvr in self.bodhi_builds(id, budget)? {
                    out.extend(koji.build(&nvr, rpms, budget)?);
                }
                Ok(out)
            }
            FetchRequest::DistGit {
                namespace,
                package,
                gitref,
                paths,
                ..
            } => {
                let base = &self
                    .sources
                    .distgit
                    .as_ref()
                    .ok_or(FetchError::NotConfigured {
                        service: DISTGIT,
                        hint: "[distgit] url",
                    })?
                    .url;
                let base = base.trim_end_matches('/');
                Ok(paths
                    .iter()
                    .map(|p| {
                        let path: Vec<String> = p.split('/').map(http::segment).collect();
                        Remote {
                            url: format!(
                                "{base}/{}/{}/raw/{}/f/{}",
                                http::segment(namespace),
                                http::segment(package),
                                http::segment(gitref),
                                path.join("/")
                            ),
                            // Flattened, as the original placed them: the last path component.
                            name: p.rsplit('/').next().unwrap_or(p).to_string(),
                            kind: FetchedKind::File,
                            size: None,
                            // A branch moves: never answered from the cache index.
                            immutable: false,
                        }
                    })
                    .collect())
            }
            FetchRequest::PackageIndex | FetchRequest::Packages { .. } => {
                Err(FetchError::NotConfigured {
                    service: "package source",
                    hint: "a pool's package source answers these, not the fetcher",
                })
            }
        }
    }

    /// The NVRs of a Bodhi update's builds (`GET /updates/ID`).
    fn bodhi_builds(&self, id: &str, budget: &Budget) -> Result<Vec<String>, FetchError> {
        let base = &self
            .sources
            .bodhi
            .as_ref()
            .ok_or(FetchError::NotConfigured {
                service: BODHI,
                hint: "[bodhi] url",
            })?
            .url;
        let url = format!(
            "{}/updates/{}",
            base.trim_end_matches('/'),
            http::segment(id)
        );
        let (status, text) = self.http.get_text(BODHI, &url, budget)?;
        match status {
            200 => {}
            404 => {
                return Err(FetchError::NotFound {
                    what: format!("Bodhi has no update {id}"),
                })
            }
            s => {
                return Err(FetchError::Unreachable {
                    service: BODHI,
                    url,
                    message: format!("HTTP {s}"),
                })
            }
        }
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| FetchError::Protocol {
                service: BODHI,
                message: format!("{url}: not JSON: {e}"),
            })?;
        let builds = v
            .pointer("/update/builds")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| FetchError::Protocol {
                service: BODHI,
                message: format!("{url}: no update.builds in the answer"),
            })?;
        builds
            .iter()
            .map(|b| {
                let nvr = b
                    .get("nvr")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("");
                minion_formula::check_nvr(nvr).map_err(|m| FetchError::Protocol {
                    service: BODHI,
                    message: format!("update {id}: {m}"),
                })?;
                Ok(nvr.to_string())
            })
            .collect()
    }

    /// Does `request`: checks it, asks the services what it names, downloads what the cache does
    /// not have. The files stay in the cache; the caller places or streams them.
    pub fn fetch(
        &self,
        request: &FetchRequest,
        budget: &mut Budget,
    ) -> Result<Vec<CachedFile>, FetchError> {
        request.check().map_err(FetchError::BadRequest)?;
        let ignore_missing = matches!(
            request,
            FetchRequest::DistGit {
                ignore_missing: true,
                ..
            }
        );
        let remotes = self.plan(request, budget)?;
        let mut out = Vec::with_capacity(remotes.len());
        let mut names = std::collections::BTreeSet::new();
        for r in remotes {
            if minion_formula::check_name("file", &r.name).is_err() || !names.insert(r.name.clone())
            {
                return Err(FetchError::Protocol {
                    service: "the source",
                    message: format!(
                        "file name `{}` is not plain or not unique",
                        r.name.escape_debug()
                    ),
                });
            }
            let service = match r.kind {
                FetchedKind::File => DISTGIT,
                _ => "Koji",
            };
            match self
                .cache
                .fetch(&self.http, service, &r.url, r.immutable, r.size, budget)
            {
                Ok(blob) => {
                    tracing::debug!(url = %r.url, size = blob.size, hit = blob.hit, "fetched");
                    out.push(CachedFile {
                        name: r.name,
                        kind: r.kind,
                        blob,
                    });
                }
                Err(FetchError::NotFound { .. }) if ignore_missing => {}
                Err(FetchError::NotFound { what }) => {
                    return Err(FetchError::NotFound {
                        what: format!("{service} has no {}: {what}", r.name),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// Puts cached files into `target_dir`: a hard link where the cache is on the same filesystem,
/// else a copy.
pub fn place(files: &[CachedFile], target_dir: &Path) -> Result<Vec<Fetched>, FetchError> {
    files
        .iter()
        .map(|f| {
            let dest = target_dir.join(&f.name);
            let _ = std::fs::remove_file(&dest);
            if std::fs::hard_link(&f.blob.path, &dest).is_err() {
                std::fs::copy(&f.blob.path, &dest).map_err(|e| FetchError::Io {
                    path: dest.clone(),
                    message: e.to_string(),
                })?;
            }
            Ok(Fetched {
                path: dest,
                kind: f.kind,
            })
        })
        .collect()
}

/// The fetcher of a run on this host (`minion runtask`): one budget for the whole run.
pub struct HostFetcher {
    fetch: Fetch,
    budget: Mutex<Budget>,
}

impl HostFetcher {
    pub fn new(fetch: Fetch) -> Arc<Self> {
        let budget = Mutex::new(fetch.job_budget());
        Arc::new(Self { fetch, budget })
    }
}

impl Fetcher for HostFetcher {
    fn fetch(&self, request: &FetchRequest, target_dir: &Path) -> Result<Vec<Fetched>, String> {
        let mut budget = self
            .budget
            .lock()
            .map_err(|_| "the fetch budget is poisoned".to_string())?;
        let files = self
            .fetch
            .fetch(request, &mut budget)
            .map_err(|e| e.to_string())?;
        // Placed files are hard links: pruning the cache later leaves them intact. Placing a file
        // whose blob a concurrent prune removed is an I/O error, not a wrong file.
        place(&files, target_dir).map_err(|e| e.to_string())
    }
}
