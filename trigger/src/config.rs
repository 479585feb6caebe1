//! `minion-trigger.toml`: which messages count, the default arches, and where named tasks live.
//! Every key has a default except the task map; unknown keys are refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}", path = path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}", path = path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}", path = path.display())]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Topics are `<topic_prefix>.<environment>.<…>`. Default `org.fedoraproject`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// The environment whose messages count (`prod`, `stg`); others are ignored. Default `prod`.
    #[serde(default = "default_environment")]
    pub environment: String,
    /// Koji messages of other instances (secondary kojis) are ignored. Default `primary`.
    #[serde(default = "default_instance")]
    pub koji_instance: String,
    /// Arches a rule schedules when it names none. Default `["x86_64"]`.
    #[serde(default = "default_arches")]
    pub valid_arches: Vec<String>,
    /// A burst of tag messages for one tag within this many seconds makes one job. Default 900.
    #[serde(default = "default_fuse")]
    pub fuse_seconds: u64,
    /// Task name → task repository URL. Names not here use `task_repo_template`.
    #[serde(default)]
    pub tasks: BTreeMap<String, String>,
    /// The repository of a task not in `tasks`: `${task}` is its name. Default: none (a rule
    /// naming an unknown task is an error).
    #[serde(default)]
    pub task_repo_template: Option<String>,
    /// The critical-path packages, `${critpath_pkgs}` in the rules (e.g. `$in`). Default: none.
    #[serde(default)]
    pub critpath_pkgs: Vec<String>,
    /// The rules file `run` uses. Default `/etc/minion/trigger_rules.yml`.
    #[serde(default = "default_rules")]
    pub rules: PathBuf,
    /// Where discover keeps its git mirrors. Default `/var/cache/minion/trigger`.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    #[serde(default)]
    pub amqp: Amqp,
    #[serde(default)]
    pub miniond: Miniond,
    /// Where `GET /metrics` is served (`127.0.0.1:7702`). Default: not served.
    #[serde(default)]
    pub metrics_listen: Option<String>,
}

/// The broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amqp {
    /// Default `amqp://127.0.0.1:5672/%2f`.
    #[serde(default = "default_amqp_url")]
    pub url: String,
    /// The durable queue bound to `amq.topic`. Default `minion-trigger`.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Binding keys. Default: the five message kinds of the configured prefix and environment.
    #[serde(default)]
    pub routing_keys: Option<Vec<String>>,
    /// Unacked deliveries at once (in flight and held by fuses). Default 1000.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
}

impl Default for Amqp {
    fn default() -> Self {
        Amqp {
            url: default_amqp_url(),
            queue: default_queue(),
            routing_keys: None,
            prefetch: default_prefetch(),
        }
    }
}

/// Where jobs go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Miniond {
    /// Default `/run/minion/miniond.sock`.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// The pool jobs go to. Default: the daemon's default pool.
    #[serde(default)]
    pub pool: String,
}

impl Default for Miniond {
    fn default() -> Self {
        Miniond {
            socket: default_socket(),
            pool: String::new(),
        }
    }
}

fn default_rules() -> PathBuf {
    PathBuf::from("/etc/minion/trigger_rules.yml")
}
fn default_cache_dir() -> PathBuf {
    PathBuf::from("/var/cache/minion/trigger")
}
fn default_amqp_url() -> String {
    "amqp://127.0.0.1:5672/%2f".into()
}
fn default_queue() -> String {
    "minion-trigger".into()
}
fn default_prefetch() -> u16 {
    1000
}
fn default_socket() -> PathBuf {
    PathBuf::from("/run/minion/miniond.sock")
}

fn default_prefix() -> String {
    "org.fedoraproject".into()
}
fn default_environment() -> String {
    "prod".into()
}
fn default_instance() -> String {
    "primary".into()
}
fn default_arches() -> Vec<String> {
    vec!["x86_64".into()]
}
fn default_fuse() -> u64 {
    900
}

impl Default for Config {
    fn default() -> Self {
        Config {
            topic_prefix: default_prefix(),
            environment: default_environment(),
            koji_instance: default_instance(),
            valid_arches: default_arches(),
            fuse_seconds: default_fuse(),
            tasks: BTreeMap::new(),
            task_repo_template: None,
            critpath_pkgs: Vec::new(),
            rules: default_rules(),
            cache_dir: default_cache_dir(),
            amqp: Amqp::default(),
            miniond: Miniond::default(),
            metrics_listen: None,
        }
    }
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
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |field: &str, message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.into(),
            message: message.into(),
        };
        if cfg.amqp.prefetch == 0 {
            return Err(invalid("amqp.prefetch", "must be at least 1"));
        }
        if cfg.valid_arches.is_empty() {
            return Err(invalid("valid_arches", "must name at least one arch"));
        }
        if let Some(t) = &cfg.task_repo_template {
            if !t.contains("${task}") {
                return Err(invalid("task_repo_template", "must contain `${task}`"));
            }
        }
        Ok(cfg)
    }

    /// The binding keys of the queue.
    pub fn routing_keys(&self) -> Vec<String> {
        if let Some(keys) = &self.amqp.routing_keys {
            return keys.clone();
        }
        let base = format!("{}.{}", self.topic_prefix, self.environment);
        [
            "buildsys.build.state.change",
            "buildsys.tag",
            "git.receive",
            "pungi.compose.status.change",
            "bodhi.update.request.#",
        ]
        .iter()
        .map(|k| format!("{base}.{k}"))
        .collect()
    }

    /// The repository of task `name`, if the config knows one.
    pub fn task_repo(&self, name: &str) -> Option<String> {
        if let Some(url) = self.tasks.get(name) {
            return Some(url.clone());
        }
        self.task_repo_template
            .as_ref()
            .map(|t| t.replace("${task}", name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_task_repos() {
        let c = Config::parse(
            Path::new("t.toml"),
            "task_repo_template = \"https://git.example/task-${task}.git\"\n[tasks]\nrpmlint = \"file:///srv/rpmlint\"\n",
        )
        .expect("config");
        assert_eq!(c.environment, "prod");
        assert_eq!(c.valid_arches, ["x86_64"]);
        assert_eq!(c.fuse_seconds, 900);
        assert_eq!(
            c.task_repo("rpmlint").as_deref(),
            Some("file:///srv/rpmlint")
        );
        assert_eq!(
            c.task_repo("abicheck").as_deref(),
            Some("https://git.example/task-abicheck.git")
        );
    }

    #[test]
    fn bad_configs_name_the_field() {
        for (text, want) in [
            (
                "valid_arches = []\n",
                "t.toml: valid_arches: must name at least one arch",
            ),
            (
                "task_repo_template = \"x\"\n",
                "t.toml: task_repo_template: must contain `${task}`",
            ),
            ("colour = 1\n", "unknown field `colour`"),
        ] {
            let e = Config::parse(Path::new("t.toml"), text).expect_err(text);
            assert!(e.to_string().contains(want), "{e}");
        }
    }
}
