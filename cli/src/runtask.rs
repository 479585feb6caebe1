//! `minion runtask`: run a formula on this host, with libtaskotron's command line.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use minion_formula::{
    load_formula, resolve_formula_path, ActionState, CancelFlag, EventSink, ExecutionStatus,
    LogStream, ReportConfig, RunConfig, EXIT_BAD_INPUT,
};

#[derive(Args, Debug)]
pub struct RuntaskArgs {
    /// The item to check (e.g. an NVR for koji_build).
    #[arg(short = 'i', long)]
    item: String,
    /// The item's type (also the item's variable name, e.g. `${koji_build}`).
    #[arg(short = 't', long = "type", value_parser = clap::builder::PossibleValuesParser::new(minion_formula::ITEM_TYPES))]
    item_type: String,
    /// Architecture of the item (`${arch}`).
    #[arg(short = 'a', long, default_value = "noarch")]
    arch: String,
    /// Job id (production passes `<builder>/<build>`; -1 marks a local run).
    #[arg(short = 'j', long, default_value = "-1", allow_hyphen_values = true)]
    jobid: String,
    /// Run UUID (default: the current UTC time, YYYYMMDD_HHMMSS_micro).
    #[arg(long)]
    uuid: Option<String>,
    /// Debug output: each step's substituted parameters and exported value.
    #[arg(short = 'd', long)]
    debug: bool,
    /// Run on this host (the default; the original's `--local`).
    #[arg(long = "local", conflicts_with = "libvirt")]
    _local: bool,
    /// Run in a fresh VM through miniond (the original's `--libvirt`): the same output, run
    /// directory and exit code; the daemon's configuration decides reporting and fetching.
    #[arg(long, conflicts_with_all = ["report", "koji_hub", "bodhi_url", "distgit_url", "sources"])]
    libvirt: bool,
    /// With --libvirt: the pool to run in (default: the first pool of --image, else miniond's
    /// default pool).
    #[arg(long, requires = "libvirt")]
    pool: Option<String>,
    /// With --libvirt: run on a pool of this image.
    #[arg(long, requires = "libvirt")]
    image: Option<String>,
    /// With --libvirt: keep the VM afterwards as an instance (its name is printed) to debug in
    /// with `minion instance shell NAME`.
    #[arg(long, requires = "libvirt")]
    no_destroy: bool,
    /// miniond's socket (with --libvirt).
    #[arg(
        long,
        env = "MINION_SOCKET",
        default_value = "/run/minion/miniond.sock"
    )]
    socket: PathBuf,
    /// Extra variable KEY=VALUE, repeatable.
    #[arg(long = "arg", value_name = "KEY=VALUE", value_parser = parse_kv)]
    args: Vec<(String, String)>,
    /// Where the run's log, results and task output go (default: a new dir under the state dir).
    #[arg(long)]
    artifactsdir: Option<PathBuf>,
    /// Report results to ResultsDB (off by default).
    #[arg(long, requires = "resultsdb_url")]
    report: bool,
    /// ResultsDB base URL (with --report).
    #[arg(long, env = "MINION_RESULTSDB_URL")]
    resultsdb_url: Option<String>,
    /// Where the log will be published (ResultsDB ref_url of results without an artifact).
    #[arg(long)]
    log_url: Option<String>,
    /// Koji hub for koji/bodhi steps (e.g. https://koji.fedoraproject.org/kojihub).
    #[arg(long, env = "MINION_KOJI_HUB")]
    koji_hub: Option<String>,
    /// Koji's package URL (e.g. https://kojipkgs.fedoraproject.org/packages).
    #[arg(long, env = "MINION_KOJI_PACKAGES", requires = "koji_hub")]
    koji_packages: Option<String>,
    /// Bodhi for bodhi steps (e.g. https://bodhi.fedoraproject.org).
    #[arg(long, env = "MINION_BODHI_URL")]
    bodhi_url: Option<String>,
    /// dist-git for distgit steps (e.g. https://src.fedoraproject.org).
    #[arg(long, env = "MINION_DISTGIT_URL")]
    distgit_url: Option<String>,
    /// A TOML file with [koji] hub/packages, [bodhi] url, [distgit] url and [fetch] limits
    /// (default: ~/.config/minion/sources.toml, then /etc/minion/sources.toml, when present);
    /// the flags above override it.
    #[arg(long, env = "MINION_SOURCES")]
    sources: Option<PathBuf>,
    /// The formula file, or a task directory holding runtask.yml.
    formula: PathBuf,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
    if !is_identifier(k) {
        return Err(format!(
            "`{k}` is not a variable name (letters, digits, `_`)"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f == '_' || f.is_ascii_alphabetic())
        && c.all(|x| x == '_' || x.is_ascii_alphanumeric())
}

/// Where local runs keep their state (`runs/`, the fetch cache `cache/fetch/`):
/// `$MINION_STATE_DIR`, else `/var/lib/minion` for root, else `$XDG_STATE_HOME/minion` (or
/// `~/.local/state/minion`).
fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MINION_STATE_DIR") {
        return PathBuf::from(d);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/minion");
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    state.join("minion")
}

/// What `[koji]`, `[bodhi]`, `[distgit]` and `[fetch]` of a sources file hold.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SourcesFile {
    #[serde(flatten)]
    sources: minion_fetch::Sources,
    #[serde(default)]
    fetch: minion_fetch::FetchLimits,
}

fn sources_file(a: &RuntaskArgs) -> Result<SourcesFile, String> {
    let path = match &a.sources {
        Some(p) => p.clone(),
        None => {
            let user = std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
                .map(|d| d.join("minion/sources.toml"));
            match user
                .into_iter()
                .chain([PathBuf::from("/etc/minion/sources.toml")])
                .find(|p| p.is_file())
            {
                Some(p) => p,
                None => return Ok(SourcesFile::default()),
            }
        }
    };
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The fetcher for koji/bodhi/distgit steps, from the sources file and the flags; none when
/// nothing is configured (those steps then say so).
fn host_fetcher(
    a: &RuntaskArgs,
) -> Result<Option<std::sync::Arc<dyn minion_formula::Fetcher>>, String> {
    use minion_fetch::{KojiEndpoint, UrlEndpoint};
    let mut file = sources_file(a)?;
    if let Some(hub) = &a.koji_hub {
        let packages = a.koji_packages.clone().ok_or(
            "--koji-hub needs --koji-packages too (Koji's package URL, e.g. https://kojipkgs.fedoraproject.org/packages)",
        )?;
        file.sources.koji = Some(KojiEndpoint {
            hub: hub.clone(),
            packages,
        });
    }
    if let Some(url) = &a.bodhi_url {
        file.sources.bodhi = Some(UrlEndpoint { url: url.clone() });
    }
    if let Some(url) = &a.distgit_url {
        file.sources.distgit = Some(UrlEndpoint { url: url.clone() });
    }
    if file.sources == minion_fetch::Sources::default() {
        return Ok(None);
    }
    let cache = default_state_dir().join("cache/fetch");
    let fetch =
        minion_fetch::Fetch::new(file.sources, &cache, &file.fetch).map_err(|e| e.to_string())?;
    Ok(Some(minion_fetch::HostFetcher::new(fetch)))
}

/// The original's default run id: the current UTC time as `YYYYMMDD_HHMMSS_micro`.
fn default_uuid() -> String {
    // `2026-12-02T07:35:00.123456Z` → `20261202_073500_123456`
    let t = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    let digits: String = t.chars().filter(char::is_ascii_digit).collect();
    format!("{}_{}_{}", &digits[..8], &digits[8..14], &digits[14..])
}

/// Live output to the terminal (stderr: stdout is for the TAP at the end) and to `minion.log`.
struct TerminalSink {
    log: File,
}

impl EventSink for TerminalSink {
    fn log(&mut self, _stream: LogStream, data: &[u8]) {
        let _ = std::io::stderr().write_all(data);
        let _ = self.log.write_all(data);
    }
    fn action(&mut self, _index: usize, _name: &str, _state: ActionState) {}
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("minion: error: {msg}");
    EXIT_BAD_INPUT
}

pub fn run(a: RuntaskArgs) -> i32 {
    if a.libvirt {
        return crate::remote::runtask::run(crate::remote::runtask::LibvirtRun {
            socket: a.socket,
            formula: a.formula,
            item: a.item,
            item_type: a.item_type,
            arch: a.arch,
            args: a.args,
            pool: a.pool,
            image: a.image,
            no_destroy: a.no_destroy,
            artifactsdir: a.artifactsdir,
            runs_dir: default_state_dir().join("runs"),
        });
    }
    let formula = match resolve_formula_path(&a.formula).and_then(|p| load_formula(&p)) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let uuid = a.uuid.clone().unwrap_or_else(default_uuid);
    let run_dir = a
        .artifactsdir
        .clone()
        .unwrap_or_else(|| default_state_dir().join("runs").join(&uuid));
    let task_output = run_dir.join("task_output");
    // Bad input (a bad sources file, a missing `input.args` variable) is refused before anything
    // is created: no empty run directory is left behind.
    let fetcher = match host_fetcher(&a) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let mut config = RunConfig {
        item: a.item,
        item_type: a.item_type,
        arch: a.arch,
        jobid: a.jobid,
        uuid,
        args: a.args.into_iter().collect::<BTreeMap<_, _>>(),
        workdir: PathBuf::new(),
        artifactsdir: task_output.clone(),
        report: if a.report {
            a.resultsdb_url.map(|url| ReportConfig {
                resultsdb_url: url,
                log_url: a.log_url,
                attempts: 3,
            })
        } else {
            None
        },
        cancel: CancelFlag::new(),
        debug: a.debug,
        fetcher,
        environment: Some(Arc::new(minion_formula::HostPackages)),
    };
    let vars = config.variables(&formula);
    if let Err(e) = formula.check_inputs(|n| vars.contains_key(n)) {
        return fail(e);
    }
    if let Err(e) = fs::create_dir_all(&task_output) {
        return fail(format!("cannot create {}: {e}", task_output.display()));
    }
    let workdir = match tempfile::Builder::new().prefix("minion-work-").tempdir() {
        Ok(d) => d,
        Err(e) => return fail(format!("cannot create a work directory: {e}")),
    };
    config.workdir = workdir.path().to_path_buf();
    let log_path = run_dir.join("minion.log");
    let log = match File::create(&log_path) {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot create {}: {e}", log_path.display())),
    };
    let mut sink = TerminalSink { log };
    let report = minion_formula::run(&formula, &config, &mut sink);
    let tap = report.tap13();
    let written = write(&run_dir.join("results.yaml"), &report.results_yaml())
        .and_then(|()| write(&run_dir.join("results.tap"), &tap));
    if let Err(e) = written {
        eprintln!("minion: error: {e}");
    }
    print!("{tap}");
    let _ = std::io::stdout().flush();
    let status = match report.execution_status {
        ExecutionStatus::Ok => "OK".to_string(),
        ExecutionStatus::NotOk => format!("NOT_OK ({})", report.status_message),
    };
    eprintln!(
        "minion: {} finished: execution {status}, {} result(s), exit code {}; artifacts in {}",
        formula.name,
        report.results.len(),
        report.exit_code,
        run_dir.display()
    );
    report.exit_code
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_uuid_is_the_utc_time() {
        let u = super::default_uuid();
        let parts: Vec<&str> = u.split('_').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 6, 6],
            "{u}"
        );
        assert!(parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit())));
        assert!(u.starts_with("20"));
    }
}
