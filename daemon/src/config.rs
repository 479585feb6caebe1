//! `miniond.toml`: every key, its default, and validation. `daemon/miniond.example.toml` mirrors it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Jobs database, artifacts and per-VM directories. Default `/var/lib/minion`. Must be absolute.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Image catalog (`<name>/manifest.json`). Default `/var/cache/minion/images`.
    #[serde(default = "default_images_dir")]
    pub images_dir: PathBuf,
    /// The static in-guest agent put on each seed. Default `/usr/local/lib/minion/minion-agent`.
    #[serde(default = "default_agent_binary")]
    pub agent_binary: PathBuf,
    /// gRPC unix socket. Default `/run/minion/miniond.sock`.
    #[serde(default = "default_listen")]
    pub listen: PathBuf,
    /// Group that owns the unix socket: its members may use the API (the Docker-group
    /// convention). Default `minion`.
    #[serde(default = "default_socket_group")]
    pub socket_group: String,
    /// Mode of the unix socket, in octal. Default `0660`.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
    /// Optional gRPC TCP address (`127.0.0.1:7700`). Default: none.
    #[serde(default)]
    pub listen_tcp: Option<String>,
    /// Optional read-only HTTP address for artifacts (`/jobs/<uuid>/artifacts/…`), e.g.
    /// `127.0.0.1:7701`. Default: none.
    #[serde(default)]
    pub listen_http: Option<String>,
    /// `human` or `json`. Default `human`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// How many times a job interrupted by a daemon restart is requeued. Default 1.
    #[serde(default = "default_retry_budget")]
    pub retry_budget: u32,
    /// Pool used when a submission names none. Default: the only pool, or `default`.
    #[serde(default)]
    pub default_pool: Option<String>,
    /// Pools by name. At least one.
    pub pools: BTreeMap<String, PoolConfig>,
    /// libvirt hosts pools may run their VMs on (`[hosts.NAME]`), reached only through libvirt.
    /// Default: none (every pool runs on its `libvirt_uri`).
    #[serde(default)]
    pub hosts: BTreeMap<String, HostConfig>,
    /// This machine's libvirt storage pool, where the VMs of pools without `hosts` keep their
    /// disks (as every host does).
    #[serde(default)]
    pub local: LocalConfig,
    /// Reporting results to ResultsDB. Default: off.
    #[serde(default)]
    pub reporting: Option<ReportingConfig>,
    /// Job events and posted results on the message bus. Default: off.
    #[serde(default)]
    pub bus: Option<BusConfig>,
    /// Koji (`hub`, `packages`) for the guests' koji and bodhi steps. Default: none.
    #[serde(default)]
    pub koji: Option<minion_fetch::KojiEndpoint>,
    /// Bodhi (`url`) for bodhi steps. Default: none.
    #[serde(default)]
    pub bodhi: Option<minion_fetch::UrlEndpoint>,
    /// dist-git (`url`) for distgit steps. Default: none.
    #[serde(default)]
    pub distgit: Option<minion_fetch::UrlEndpoint>,
    /// Per-job fetch budget and the host's fetch cache bound.
    #[serde(default)]
    pub fetch: minion_fetch::FetchLimits,
    /// What a submission's task repo may be: local roots, size, files, time.
    #[serde(default)]
    pub submissions: crate::taskrepo::RepoLimits,
    /// Free space (MiB) kept on the state dir's filesystem: a job whose artifacts would take
    /// more fails (FAILED, with that reason), so the jobs database always has room. Default 512.
    #[serde(default = "default_keep_free_mib")]
    pub keep_free_mib: u64,
    /// Seconds between the reaper's passes over this daemon's domains and VM directories
    /// (each leftover is destroyed on the second pass that finds it unowned). Default 60.
    #[serde(default = "default_reap_interval_secs")]
    pub reap_interval_secs: u64,
    /// How long job records and artifacts are kept, and how much artifact space they may take.
    #[serde(default)]
    pub retention: crate::retention::Retention,
    /// Who may do what (see daemon/README.md, "Access").
    #[serde(default)]
    pub access: AccessConfig,
    /// The certificate and key `listen_tcp` serves TLS with. Required with `listen_tcp`.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Developers' instances (`minion instance create`): limits and the VM shape they get.
    #[serde(default)]
    pub instances: InstancesConfig,
}

/// `[instances]`: throwaway VMs a developer creates from an image and works in.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InstancesConfig {
    /// Instances alive at once, everyone's together. 0 turns instances off. Default 4.
    #[serde(default = "default_instances_max")]
    pub max: u32,
    /// Instances one caller may have alive at once. Default 4.
    #[serde(default = "default_instances_max")]
    pub per_owner: u32,
    /// libvirt URI. Default `qemu:///system`.
    #[serde(default = "default_uri")]
    pub libvirt_uri: String,
    /// vCPUs when `create` asks for none. Default 1.
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Memory (MiB) when `create` asks for none. Default 512.
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// The most an instance may ask for.
    #[serde(default = "default_instance_max_vcpus")]
    pub max_vcpus: u32,
    #[serde(default = "default_instance_max_memory")]
    pub max_memory_mib: u64,
    /// The largest disk an instance may ask for (`--disk-size`), GiB.
    #[serde(default = "default_instance_max_disk")]
    pub max_disk_gib: u64,
    /// `snapshot` (default) or `boot`, as a pool's `start`: the first instance of an image and
    /// shape boots, later ones are restored from its snapshot.
    #[serde(default)]
    pub start: VmStart,
    /// The host instances run on: this machine's libvirtd on `libvirt_uri` (set at load).
    #[serde(skip)]
    pub hosts: Vec<String>,
}

impl Default for InstancesConfig {
    fn default() -> Self {
        InstancesConfig {
            max: default_instances_max(),
            per_owner: default_instances_max(),
            libvirt_uri: default_uri(),
            vcpus: default_vcpus(),
            memory_mib: default_memory(),
            max_vcpus: default_instance_max_vcpus(),
            max_memory_mib: default_instance_max_memory(),
            max_disk_gib: default_instance_max_disk(),
            start: VmStart::default(),
            hosts: Vec::new(),
        }
    }
}

impl InstancesConfig {
    /// The pool an instance of this shape is made in (one VM slot per allowed instance).
    pub fn pool_config(
        &self,
        image: &str,
        vcpus: u32,
        memory_mib: u64,
        network: GuestNetwork,
        disk_gib: Option<u64>,
    ) -> PoolConfig {
        PoolConfig {
            image: image.to_string(),
            libvirt_uri: self.libvirt_uri.clone(),
            // A snapshot template takes a slot while it is made.
            max_vms: self.max.saturating_add(1),
            min_ready: 0,
            vcpus,
            memory_mib,
            default_timeout_seconds: default_timeout(),
            drained: false,
            packages: None,
            network,
            start: self.start,
            disk_gib,
            hosts: self.hosts.clone(),
        }
    }
}

fn default_instances_max() -> u32 {
    4
}
fn default_instance_max_vcpus() -> u32 {
    4
}
fn default_instance_max_memory() -> u64 {
    8192
}
fn default_instance_max_disk() -> u64 {
    200
}

/// `[access]`.
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// Socket callers with the admin role besides root (user names or uids); every other socket
    /// caller has the submit role. Default: none.
    #[serde(default)]
    pub socket_admins: Vec<String>,
    /// The bearer tokens TCP callers must send (`[[token]]` name, role, sha256). Required with
    /// `listen_tcp`.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// With `tokens_file`, let callers without a token read the HTTP side (dashboard,
    /// artifacts, metrics): the results' links in ResultsDB open for everyone. Default false.
    #[serde(default)]
    pub http_anonymous_read: bool,
}

/// `[tls]`: PEM files.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Config {
    /// `socket_mode` as permission bits, if it is an octal mode up to 0777.
    pub fn socket_mode_bits(&self) -> Option<u32> {
        let m = self.socket_mode.trim();
        let digits = m.strip_prefix("0o").unwrap_or(m);
        u32::from_str_radix(digits, 8).ok().filter(|b| *b <= 0o777)
    }

    /// The services guests may have the host fetch from: only these.
    pub fn sources(&self) -> minion_fetch::Sources {
        minion_fetch::Sources {
            koji: self.koji.clone(),
            bodhi: self.bodhi.clone(),
            distgit: self.distgit.clone(),
        }
    }
}

/// Publishing `job.finished` and `result.new` to an AMQP broker (`amq.topic`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// Default `amqp://127.0.0.1:5672/%2f`.
    #[serde(default = "default_bus_url")]
    pub url: String,
    /// Topics are `<topic_prefix>.job.finished` and `<topic_prefix>.result.new`. Default
    /// `org.minion.prod`.
    #[serde(default = "default_bus_prefix")]
    pub topic_prefix: String,
}

fn default_bus_url() -> String {
    "amqp://127.0.0.1:5672/%2f".into()
}
fn default_bus_prefix() -> String {
    "org.minion.prod".into()
}

/// REPORTING: the daemon posts each finished job's results to ResultsDB from a durable outbox
/// (the guest has no network and holds no credentials).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReportingConfig {
    /// ResultsDB: its server root or its `/api/v2.0/` URL. Required.
    pub resultsdb_url: String,
    /// An `Authorization` header value sent with every request (e.g. `Bearer …`). Default: none.
    #[serde(default)]
    pub auth_header: Option<String>,
    /// Where `/jobs/<uuid>/artifacts/…` are served (the `ref_url`s point there), e.g.
    /// `http://minion.example:7701`. Required.
    pub artifacts_base_url: String,
    /// Namespaces any task may post into. Default `["scratch"]`.
    #[serde(default = "default_safe_namespaces")]
    pub safe_namespaces: Vec<String>,
    /// Namespace → the task repository URL prefixes allowed to post into it. Default: none.
    #[serde(default)]
    pub namespaces: BTreeMap<String, Vec<String>>,
    /// How long a job waits in REPORTING for its first posting attempt before it ends (what is
    /// not posted stays in the outbox). Default 30.
    #[serde(default = "default_report_wait")]
    pub wait_seconds: u64,
}

fn default_safe_namespaces() -> Vec<String> {
    vec!["scratch".into()]
}
fn default_report_wait() -> u64 {
    30
}

/// One pool: an image on a libvirt host, with limits.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Image name in `images_dir`. Required.
    pub image: String,
    /// libvirt URI. Default `qemu:///system`.
    #[serde(default = "default_uri")]
    pub libvirt_uri: String,
    /// VMs alive at once (parked pre-booted ones included). Default 2.
    #[serde(default = "default_max_vms")]
    pub max_vms: u32,
    /// Fresh VMs kept booted to the agent's Ready, parked for the next jobs (each still runs one
    /// job and is destroyed). At most `max_vms`. Default 0: every VM boots after its job is
    /// picked up.
    #[serde(default)]
    pub min_ready: u32,
    /// vCPUs per VM. Default 1.
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Memory per VM in MiB. Default 512.
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// Job timeout in seconds when the submission gives none. Default 1800.
    #[serde(default = "default_timeout")]
    pub default_timeout_seconds: u64,
    /// Accept and queue jobs, start none (maintenance; what the submission benchmark measures
    /// into). Default false.
    #[serde(default)]
    pub drained: bool,
    /// A directory of `.deb` files the guests' apt installs a formula's `environment` from (the
    /// host indexes it; the guest gets the index and the files it needs over its channel, without
    /// network). Must be absolute. Default: none (a formula naming packages the image lacks fails).
    #[serde(default)]
    pub packages: Option<PathBuf>,
    /// `none` (default): the guest has no NIC at all. `user`: a NAT-out-only NIC (qemu's user
    /// networking): the guest can reach out, nothing can reach in; less isolated, for tasks that
    /// need the network. With no `packages`, apt then installs `environment` from the image's own
    /// sources.
    #[serde(default)]
    pub network: GuestNetwork,
    /// Each VM's disk grown to this many GiB (its overlay; the image is untouched). The image's own
    /// tools grow its file system (a cloud image's cloud-init does). Default: the image's size.
    #[serde(default)]
    pub disk_gib: Option<u64>,
    /// How the pool's VMs start. `snapshot` (default): restored from a saved memory image of a
    /// VM booted to the agent's Ready (one per image, agent build and VM shape, made in the
    /// background in a pool slot; until it exists, and where restoring fails, VMs boot). `boot`:
    /// every VM boots its image.
    #[serde(default)]
    pub start: VmStart,
    /// `[hosts]` names the pool's VMs run on (each job's VM on the least-loaded one with a free
    /// slot that holds the image); `libvirt_uri` is then unused. Default: none, and then the
    /// pool runs on host [`LOCAL_HOST`], this machine's libvirtd on `libvirt_uri` (set at load).
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// The host of pools without `hosts`: this machine's libvirtd, reached as every host is.
pub const LOCAL_HOST: &str = "local";

/// `[local]`: this machine as a host of the pools without `hosts`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// The storage pool of this machine's libvirtd for VM disks, snapshots and images' copies;
    /// miniond defines it (a directory pool on `storage_dir`, autostarted) when there is none of
    /// that name. Default `minion`.
    #[serde(default = "default_storage_pool")]
    pub storage_pool: String,
    /// Where miniond makes that pool. Default `/var/lib/minion/volumes`. Must be absolute.
    #[serde(default = "default_storage_dir")]
    pub storage_dir: PathBuf,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            storage_pool: default_storage_pool(),
            storage_dir: default_storage_dir(),
        }
    }
}

fn default_storage_dir() -> PathBuf {
    PathBuf::from("/var/lib/minion/volumes")
}

/// `[hosts.NAME]`: one libvirt host, reached only through its libvirt connection (its disks
/// are volumes of `storage_pool`, its channels and consoles libvirt streams).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// `qemu+tls://host/system`, `qemu+ssh://user@host/system`, `qemu+tcp://…` (an isolated
    /// network only) or `qemu:///system` (this machine, through volumes too). Required.
    pub uri: String,
    /// The host's libvirt storage pool for VM disks and images. Default `minion`.
    #[serde(default = "default_storage_pool")]
    pub storage_pool: String,
    /// VMs alive on the host at once, every pool's together. Default 2.
    #[serde(default = "default_max_vms")]
    pub max_vms: u32,
    /// Takes no new VM until undrained (`minion host undrain`). Default false.
    #[serde(default)]
    pub drained: bool,
    /// Set at load for [`LOCAL_HOST`]: miniond makes its storage pool (`[local]`) and puts the
    /// images its pools use there itself.
    #[serde(skip)]
    pub local: Option<PathBuf>,
}

fn default_storage_pool() -> String {
    "minion".into()
}

impl PoolConfig {
    /// Whether the pool's VMs are restored from snapshots (`start = snapshot`): on this
    /// machine's libvirtd, or one snapshot on each of its `hosts`.
    pub fn snapshots(&self) -> bool {
        self.start == VmStart::Snapshot
    }
}

/// How a pool's VMs start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VmStart {
    Boot,
    #[default]
    Snapshot,
}

/// A pool's guest networking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GuestNetwork {
    #[default]
    None,
    User,
}

fn default_socket_group() -> String {
    "minion".into()
}

fn default_socket_mode() -> String {
    "0660".into()
}

fn default_reap_interval_secs() -> u64 {
    60
}

fn default_keep_free_mib() -> u64 {
    512
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/minion")
}
fn default_images_dir() -> PathBuf {
    PathBuf::from("/var/cache/minion/images")
}
fn default_agent_binary() -> PathBuf {
    PathBuf::from("/usr/local/lib/minion/minion-agent")
}
fn default_listen() -> PathBuf {
    PathBuf::from("/run/minion/miniond.sock")
}
fn default_retry_budget() -> u32 {
    1
}
fn default_uri() -> String {
    "qemu:///system".into()
}
fn default_max_vms() -> u32 {
    2
}
fn default_vcpus() -> u32 {
    1
}
fn default_memory() -> u64 {
    512
}
fn default_timeout() -> u64 {
    1800
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        if cfg.socket_mode_bits().is_none() {
            return Err(invalid(
                "socket_mode",
                format!("`{}` is not an octal mode up to 0777", cfg.socket_mode),
            ));
        }
        if cfg.listen_tcp.is_some() {
            if cfg.tls.is_none() {
                return Err(invalid(
                    "listen_tcp",
                    "needs [tls] cert and key: TCP is served only over TLS".into(),
                ));
            }
            if cfg.access.tokens_file.is_none() {
                return Err(invalid(
                    "listen_tcp",
                    "needs access.tokens_file: TCP callers are known only by their tokens".into(),
                ));
            }
        }
        if cfg.listen_http.is_some() && cfg.access.tokens_file.is_some() && cfg.tls.is_none() {
            return Err(invalid(
                "listen_http",
                "needs [tls] when access.tokens_file is set: tokens are not sent in the clear"
                    .into(),
            ));
        }
        if !cfg.state_dir.is_absolute() {
            return Err(invalid("state_dir", "must be an absolute path".into()));
        }
        if cfg.pools.is_empty() {
            return Err(invalid(
                "pools",
                "at least one [pools.NAME] is needed".into(),
            ));
        }
        for (name, p) in &cfg.pools {
            if p.max_vms == 0 {
                return Err(invalid(
                    &format!("pools.{name}.max_vms"),
                    "must be ≥ 1".into(),
                ));
            }
            if p.min_ready > p.max_vms {
                return Err(invalid(
                    &format!("pools.{name}.min_ready"),
                    format!(
                        "{} is more than max_vms ({}): parked VMs count against max_vms",
                        p.min_ready, p.max_vms
                    ),
                ));
            }
            if p.vcpus == 0 {
                return Err(invalid(
                    &format!("pools.{name}.vcpus"),
                    "must be ≥ 1".into(),
                ));
            }
            if p.memory_mib < 64 {
                return Err(invalid(
                    &format!("pools.{name}.memory_mib"),
                    "must be ≥ 64".into(),
                ));
            }
            if p.packages.as_ref().is_some_and(|d| !d.is_absolute()) {
                return Err(invalid(
                    &format!("pools.{name}.packages"),
                    "must be an absolute path".into(),
                ));
            }
            if p.hosts.is_empty() && minion_provisioning::hypervisor::is_remote(&p.libvirt_uri) {
                return Err(invalid(
                    &format!("pools.{name}.libvirt_uri"),
                    format!(
                        "`{}` is another machine: a pool's own libvirt_uri keeps its VMs' files on this one; \
                         put the host in [hosts.NAME] and list it in pools.{name}.hosts",
                        p.libvirt_uri
                    ),
                ));
            }
            for h in &p.hosts {
                if !cfg.hosts.contains_key(h) {
                    return Err(invalid(
                        &format!("pools.{name}.hosts"),
                        format!("`{h}` is not a [hosts.NAME] of this file"),
                    ));
                }
            }
            if p.default_timeout_seconds == 0 {
                return Err(invalid(
                    &format!("pools.{name}.default_timeout_seconds"),
                    "must be ≥ 1".into(),
                ));
            }
        }
        for (name, h) in &cfg.hosts {
            if h.max_vms == 0 {
                return Err(invalid(
                    &format!("hosts.{name}.max_vms"),
                    "must be ≥ 1".into(),
                ));
            }
            if !h.uri.contains("://") {
                return Err(invalid(
                    &format!("hosts.{name}.uri"),
                    format!("`{}` is not a libvirt URI (qemu+tls://HOST/system)", h.uri),
                ));
            }
            if let Some(why) = minion_provisioning::hypervisor::refused_transport(&h.uri) {
                return Err(invalid(&format!("hosts.{name}.uri"), why));
            }
            if !minion_provisioning::domain::is_token(&h.storage_pool) {
                return Err(invalid(
                    &format!("hosts.{name}.storage_pool"),
                    format!("`{}`: use [A-Za-z0-9._-]", h.storage_pool),
                ));
            }
        }
        if !minion_provisioning::domain::is_token(&cfg.local.storage_pool) {
            return Err(invalid(
                "local.storage_pool",
                format!("`{}`: use [A-Za-z0-9._-]", cfg.local.storage_pool),
            ));
        }
        if !cfg.local.storage_dir.is_absolute() {
            return Err(invalid(
                "local.storage_dir",
                "must be an absolute path".into(),
            ));
        }
        cfg.place_on_local_host()
            .map_err(|(field, message)| invalid(&field, message))?;
        if let Some(r) = &cfg.reporting {
            for (field, url) in [
                ("reporting.resultsdb_url", &r.resultsdb_url),
                ("reporting.artifacts_base_url", &r.artifacts_base_url),
            ] {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(field, format!("`{url}` is not an http(s) URL")));
                }
            }
        }
        if let Some(r) = cfg
            .submissions
            .local_repo_roots
            .iter()
            .find(|r| !r.is_absolute())
        {
            return Err(invalid(
                "submissions.local_repo_roots",
                format!("`{}` must be an absolute path", r.display()),
            ));
        }
        if let Some(d) = &cfg.default_pool {
            if !cfg.pools.contains_key(d) {
                return Err(invalid("default_pool", format!("no pool named `{d}`")));
            }
        }
        Ok(cfg)
    }

    /// The pool a submission without one goes to.
    pub fn default_pool_name(&self) -> Option<&str> {
        if let Some(d) = &self.default_pool {
            return Some(d);
        }
        if self.pools.len() == 1 {
            return self.pools.keys().next().map(String::as_str);
        }
        self.pools.get_key_value("default").map(|(k, _)| k.as_str())
    }
}

impl Config {
    /// Puts every pool without `hosts` (and the instances) on [`LOCAL_HOST`]: a `[hosts]` entry
    /// for this machine's libvirtd on their `libvirt_uri`, one per URI (`local`, `local-2`, …),
    /// with as many VM slots as its pools have together (plus the instances' and one validation
    /// boot), so that only the pools' own limits apply.
    fn place_on_local_host(&mut self) -> Result<(), (String, String)> {
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        let mut slots: BTreeMap<String, u32> = BTreeMap::new();
        let mut host_of = |uri: &str, vms: u32, taken: &BTreeMap<String, HostConfig>| {
            let next = names.len() + 1;
            let name = names
                .entry(uri.to_string())
                .or_insert_with(|| match next {
                    1 => LOCAL_HOST.to_string(),
                    n => format!("{LOCAL_HOST}-{n}"),
                })
                .clone();
            if taken.contains_key(&name) {
                return Err((
                    format!("hosts.{name}"),
                    format!(
                        "`{name}` is the name of this machine's libvirtd (pools without hosts run there): name that host otherwise"
                    ),
                ));
            }
            *slots.entry(name.clone()).or_default() += vms;
            Ok(name)
        };
        for p in self.pools.values_mut().filter(|p| p.hosts.is_empty()) {
            p.hosts = vec![host_of(&p.libvirt_uri, p.max_vms, &self.hosts)?];
        }
        let i = &mut self.instances;
        // Each instance, and one template at a time.
        i.hosts = vec![host_of(
            &i.libvirt_uri,
            i.max.saturating_add(1),
            &self.hosts,
        )?];
        for (uri, name) in names {
            self.hosts.insert(
                name.clone(),
                HostConfig {
                    uri,
                    storage_pool: self.local.storage_pool.clone(),
                    // And an image's validation boot.
                    max_vms: slots.get(&name).copied().unwrap_or(0).saturating_add(1),
                    drained: false,
                    local: Some(self.local.storage_dir.clone()),
                },
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply() {
        let c = Config::parse(Path::new("m.toml"), "[pools.p]\nimage = \"minimal\"\n").expect("ok");
        assert_eq!(c.listen, PathBuf::from("/run/minion/miniond.sock"));
        assert_eq!(c.retry_budget, 1);
        assert_eq!(c.log_format, LogFormat::Human);
        assert_eq!(
            (c.socket_group.as_str(), c.socket_mode_bits()),
            ("minion", Some(0o660))
        );
        let p = &c.pools["p"];
        assert_eq!((p.max_vms, p.vcpus, p.memory_mib), (2, 1, 512));
        assert_eq!(p.min_ready, 0, "no pre-booted VMs unless asked");
        assert_eq!(p.libvirt_uri, "qemu:///system");
        assert_eq!(
            (p.network, p.packages.as_ref()),
            (GuestNetwork::None, None),
            "isolated by default"
        );
        assert_eq!(c.default_pool_name(), Some("p"));
        let c = Config::parse(
            Path::new("m.toml"),
            "[pools.p]\nimage = \"minimal\"\nnetwork = \"user\"\npackages = \"/srv/debs\"\n",
        )
        .expect("ok");
        assert_eq!(c.pools["p"].network, GuestNetwork::User);
        assert_eq!(c.pools["p"].packages, Some(PathBuf::from("/srv/debs")));
    }

    #[test]
    fn pools_without_hosts_run_on_this_machine_as_host_local() {
        let parse = |t: &str| Config::parse(Path::new("m.toml"), t);
        let c = parse(
            "[pools.a]\nimage = \"x\"\nmax_vms = 3\n[pools.b]\nimage = \"x\"\n\
             [pools.c]\nimage = \"x\"\nlibvirt_uri = \"qemu:///session\"\n\
             [pools.r]\nimage = \"x\"\nhosts = [\"kvm1\"]\n\
             [hosts.kvm1]\nuri = \"qemu+tls://kvm1/system\"\n",
        )
        .expect("ok");
        assert_eq!(c.pools["a"].hosts, ["local"]);
        assert_eq!(c.pools["b"].hosts, ["local"]);
        assert_eq!(c.pools["c"].hosts, ["local-2"]);
        assert_eq!(c.pools["r"].hosts, ["kvm1"]);
        assert_eq!(c.instances.hosts, ["local"]);
        let local = &c.hosts["local"];
        assert_eq!(local.uri, "qemu:///system");
        assert_eq!(local.storage_pool, "minion");
        assert_eq!(local.local, Some(PathBuf::from("/var/lib/minion/volumes")));
        // a's 3, b's 2, the instances' 4 + 1, one validation boot.
        assert_eq!(local.max_vms, 3 + 2 + 5 + 1);
        assert_eq!(c.hosts["local-2"].uri, "qemu:///session");
        assert_eq!(c.hosts["kvm1"].local, None);

        let c = parse(
            "[local]\nstorage_pool = \"mine\"\nstorage_dir = \"/srv/vols\"\n[pools.a]\nimage = \"x\"\n",
        )
        .expect("ok");
        assert_eq!(c.hosts["local"].storage_pool, "mine");
        assert_eq!(c.hosts["local"].local, Some(PathBuf::from("/srv/vols")));

        let e = parse("[pools.a]\nimage = \"x\"\n[hosts.local]\nuri = \"qemu+tls://h/system\"\n")
            .expect_err("a [hosts.local]");
        assert!(
            e.to_string()
                .starts_with("m.toml: hosts.local: `local` is the name of this machine's libvirtd"),
            "{e}"
        );
        let e = parse("[local]\nstorage_dir = \"vols\"\n[pools.a]\nimage = \"x\"\n")
            .expect_err("relative");
        assert_eq!(
            e.to_string(),
            "m.toml: local.storage_dir: must be an absolute path"
        );
        let e = parse("[local]\nstorage_pool = \"a b\"\n[pools.a]\nimage = \"x\"\n")
            .expect_err("bad name");
        assert!(
            e.to_string().starts_with("m.toml: local.storage_pool:"),
            "{e}"
        );
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../miniond.example.toml");
        let c = Config::parse(Path::new("example"), text).expect("example is valid");
        assert!(c.pools.contains_key("minimal"));
    }

    #[test]
    fn hosts_are_checked_and_a_pool_s_own_uri_is_this_machine() {
        let parse = |t: &str| Config::parse(Path::new("m.toml"), t);
        let e = parse("[pools.p]\nimage = \"x\"\nlibvirt_uri = \"qemu+ssh://kvm1/system\"\n")
            .expect_err("remote libvirt_uri");
        assert!(
            e.to_string().starts_with(
                "m.toml: pools.p.libvirt_uri: `qemu+ssh://kvm1/system` is another machine"
            ),
            "{e}"
        );
        let e = parse("[pools.p]\nimage = \"x\"\nhosts = [\"kvm9\"]\n").expect_err("unknown host");
        assert_eq!(
            e.to_string(),
            "m.toml: pools.p.hosts: `kvm9` is not a [hosts.NAME] of this file"
        );
        let e = parse(
            "[pools.p]\nimage = \"x\"\n[hosts.h]\nuri = \"qemu+tls://h/system\"\nmax_vms = 0\n",
        )
        .expect_err("no slots");
        assert_eq!(e.to_string(), "m.toml: hosts.h.max_vms: must be ≥ 1");
        let e = parse("[pools.p]\nimage = \"x\"\n[hosts.h]\nuri = \"h\"\n").expect_err("not a uri");
        assert!(e.to_string().starts_with("m.toml: hosts.h.uri:"), "{e}");
        let e =
            parse("[pools.p]\nimage = \"x\"\n[hosts.h]\nuri = \"qemu+libssh://root@h/system\"\n")
                .expect_err("libssh");
        assert!(
            e.to_string().starts_with(
                "m.toml: hosts.h.uri: the libssh transport crashes a multi-threaded libvirt client"
            ),
            "{e}"
        );
        let e = parse("[pools.p]\nimage = \"x\"\n[hosts.h]\nuri = \"qemu+tls://h/system\"\nstorage_pool = \"a b\"\n")
            .expect_err("bad pool name");
        assert!(
            e.to_string().starts_with("m.toml: hosts.h.storage_pool:"),
            "{e}"
        );
        let ok = parse(
            "[pools.p]\nimage = \"x\"\nhosts = [\"h\"]\n[hosts.h]\nuri = \"qemu+tls://h/system\"\n",
        )
        .expect("a pool over a host");
        assert_eq!(ok.hosts["h"].storage_pool, "minion");
        assert_eq!(ok.hosts["h"].max_vms, 2);
        assert!(ok.pools["p"].snapshots(), "VMs over hosts are restored too");
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = Config::parse(
            Path::new("m.toml"),
            "[pools.p]\nimage = \"x\"\nmax_vms = 0\n",
        )
        .expect_err("bad");
        assert_eq!(e.to_string(), "m.toml: pools.p.max_vms: must be ≥ 1");
        for bad in ["0999", "1777", "rw", ""] {
            let e = Config::parse(
                Path::new("m.toml"),
                &format!("socket_mode = \"{bad}\"\n[pools.p]\nimage = \"x\"\n"),
            )
            .expect_err(bad);
            assert_eq!(
                e.to_string(),
                format!("m.toml: socket_mode: `{bad}` is not an octal mode up to 0777")
            );
        }
        let e = Config::parse(
            Path::new("m.toml"),
            "[pools.p]\nimage = \"x\"\nmax_vms = 2\nmin_ready = 3\n",
        )
        .expect_err("bad");
        assert_eq!(
            e.to_string(),
            "m.toml: pools.p.min_ready: 3 is more than max_vms (2): parked VMs count against max_vms"
        );
        let ok = Config::parse(
            Path::new("m.toml"),
            "[pools.p]\nimage = \"x\"\nmax_vms = 2\nmin_ready = 2\n",
        )
        .expect("min_ready = max_vms is fine");
        assert_eq!(ok.pools["p"].min_ready, 2);
        let e = Config::parse(Path::new("m.toml"), "pools = {}\n").expect_err("no pools");
        assert!(e.to_string().contains("pools"), "{e}");
        let e = Config::parse(Path::new("m.toml"), "bogus = 1\n[pools.p]\nimage='x'\n")
            .expect_err("unknown key");
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = Config::parse(
            Path::new("m.toml"),
            "state_dir = \"rel\"\n[pools.p]\nimage='x'\n",
        )
        .expect_err("relative");
        assert!(e.to_string().contains("state_dir"), "{e}");
        let e = Config::parse(
            Path::new("m.toml"),
            "[pools.p]\nimage='x'\npackages = \"debs\"\n",
        )
        .expect_err("relative");
        assert_eq!(
            e.to_string(),
            "m.toml: pools.p.packages: must be an absolute path"
        );
        let e = Config::parse(
            Path::new("m.toml"),
            "[pools.p]\nimage='x'\nnetwork = \"bridge\"\n",
        )
        .expect_err("unknown mode");
        assert!(e.to_string().contains("unknown variant `bridge`"), "{e}");
    }

    #[test]
    fn tcp_needs_tls_and_tokens() {
        let base = "listen_tcp = \"127.0.0.1:7700\"\n";
        let pools = "[pools.p]\nimage='x'\n";
        let e = Config::parse(Path::new("m.toml"), &format!("{base}{pools}")).expect_err("no tls");
        assert_eq!(
            e.to_string(),
            "m.toml: listen_tcp: needs [tls] cert and key: TCP is served only over TLS"
        );
        let tls = "[tls]\ncert = \"/etc/minion/tls/cert.pem\"\nkey = \"/etc/minion/tls/key.pem\"\n";
        let e = Config::parse(Path::new("m.toml"), &format!("{base}{pools}{tls}"))
            .expect_err("no tokens");
        assert!(e.to_string().contains("access.tokens_file"), "{e}");
        let access =
            "[access]\ntokens_file = \"/etc/minion/tokens.toml\"\nsocket_admins = [\"alice\"]\n";
        let c = Config::parse(Path::new("m.toml"), &format!("{base}{pools}{tls}{access}"))
            .expect("complete");
        assert_eq!(c.access.socket_admins, ["alice"]);
        assert_eq!(c.tls.map(|t| t.key), Some("/etc/minion/tls/key.pem".into()));
    }
}
