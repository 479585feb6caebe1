//! From a JobTrigger dict to the jobs it makes: every matching rule adds its `do` entries, named
//! tasks map to their repositories through the config, `discover` entries ask for the tasks in a
//! dist-git style repository, and one (task, item, arch) is one job however many rules name it.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::config::Config;
use crate::message::JobTrigger;
use crate::rules::{Action, Rules};

/// One job to submit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedJob {
    /// The task's name (a named task) or `REPO#DIR` (a discovered one).
    pub task: String,
    pub repo: String,
    /// Branch or ref to fetch; empty = the repo's default.
    pub git_ref: String,
    /// The formula inside the repo (empty = its top-level `runtask.yml`).
    pub formula: String,
    pub item: String,
    pub item_type: String,
    pub arch: String,
    /// The first rule (0-based) that asked for it.
    pub rule: usize,
}

impl PlannedJob {
    /// The idempotency key for message `message_id`: a redelivered message makes no second job.
    pub fn idempotency_key(&self, message_id: &str) -> String {
        format!("{message_id}/{}/{}", self.task, self.arch)
    }
}

/// A `discover` entry with its templates filled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiscoverRequest {
    pub repo: String,
    pub branch: String,
    pub fallback_branch: Option<String>,
    pub recursive: bool,
    pub arches: Vec<String>,
    pub rule: usize,
}

/// A task found by discovery: its directory in the repo (`""` = the top level) and the branch
/// it was found on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub dir: String,
    pub git_ref: String,
}

/// What a message asks for: jobs, discoveries still to run, and rules that could not apply.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Plan {
    pub jobs: Vec<PlannedJob>,
    pub discover: Vec<DiscoverRequest>,
    /// `rule N: why` for every rule or entry that could not be evaluated.
    pub skipped: Vec<String>,
    /// The rules that matched.
    pub matched: Vec<usize>,
}

impl Plan {
    /// Adds a job unless the same (task, item, arch) is there already.
    pub fn add(&mut self, job: PlannedJob) {
        let dup = self
            .jobs
            .iter()
            .any(|j| j.task == job.task && j.item == job.item && j.arch == job.arch);
        if !dup {
            self.jobs.push(job);
        }
    }

    /// Adds the jobs of one discovery's tasks.
    pub fn add_discovered(&mut self, req: &DiscoverRequest, t: &JobTrigger, found: &[Discovered]) {
        for d in found {
            for arch in &req.arches {
                self.add(PlannedJob {
                    task: format!("{}#{}", req.repo, d.dir),
                    repo: req.repo.clone(),
                    git_ref: d.git_ref.clone(),
                    formula: d.dir.clone(),
                    item: t.str("item").to_string(),
                    item_type: t.str("item_type").to_string(),
                    arch: arch.clone(),
                    rule: req.rule,
                });
            }
        }
    }
}

/// The dict the rules see: the message's, plus the deployment's (`critpath_pkgs`).
pub fn with_config(t: &JobTrigger, cfg: &Config) -> JobTrigger {
    let mut t = t.clone();
    t.fields
        .entry("critpath_pkgs".to_string())
        .or_insert_with(|| cfg.critpath_pkgs.clone().into());
    t
}

/// The named jobs and the discoveries `t` asks for under `rules`.
pub fn plan(t: &JobTrigger, rules: &Rules, cfg: &Config) -> Plan {
    let t = with_config(t, cfg);
    let mut p = Plan::default();
    let (hits, errors) = rules.matching(&t);
    for (i, e) in errors {
        p.skipped.push(format!("rule {i}: {e}"));
    }
    let mut seen_discover = BTreeSet::new();
    for rule in hits {
        p.matched.push(rule.index);
        for action in &rule.actions {
            match action {
                Action::Tasks { names, arches } => {
                    let arches = arches.clone().unwrap_or_else(|| cfg.valid_arches.clone());
                    for name in names {
                        let Some(repo) = cfg.task_repo(name) else {
                            p.skipped.push(format!(
                                "rule {}: task `{name}` has no repository",
                                rule.index
                            ));
                            continue;
                        };
                        for arch in &arches {
                            p.add(PlannedJob {
                                task: name.clone(),
                                repo: repo.clone(),
                                git_ref: String::new(),
                                formula: String::new(),
                                item: t.str("item").to_string(),
                                item_type: t.str("item_type").to_string(),
                                arch: arch.clone(),
                                rule: rule.index,
                            });
                        }
                    }
                }
                Action::Discover {
                    repo,
                    branch,
                    fallback_branch,
                    recursive,
                    arches,
                } => {
                    let filled = (|| {
                        Ok::<_, crate::rules::EvalError>(DiscoverRequest {
                            repo: repo.text(&t)?,
                            branch: branch.text(&t)?,
                            fallback_branch: match fallback_branch {
                                Some(f) => Some(f.text(&t)?),
                                None => None,
                            },
                            recursive: *recursive,
                            arches: arches.clone().unwrap_or_else(|| cfg.valid_arches.clone()),
                            rule: rule.index,
                        })
                    })();
                    match filled {
                        Ok(req) => {
                            let key = (req.repo.clone(), req.branch.clone(), req.recursive);
                            if seen_discover.insert(key) {
                                p.discover.push(req);
                            }
                        }
                        Err(e) => p
                            .skipped
                            .push(format!("rule {}: discover: {e}", rule.index)),
                    }
                }
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn cfg() -> Config {
        Config::parse(
            Path::new("t.toml"),
            "valid_arches = [\"x86_64\", \"aarch64\"]\ncritpath_pkgs = [\"foo\"]\n[tasks]\nrpmlint = \"file:///t/rpmlint\"\nabicheck = \"file:///t/abicheck\"\n",
        )
        .expect("config")
    }

    #[test]
    fn one_job_per_task_item_arch_however_many_rules_match() {
        let cfg = cfg();
        let rules = Rules::parse(
            Path::new("r.yml"),
            r#"
- when: {message_type: KojiBuildPackageCompleted}
  do:
    - {tasks: [rpmlint]}
    - {tasks: [abicheck], arches: [noarch]}
- when: {name: {$in: '${critpath_pkgs}'}}
  do:
    - {tasks: [rpmlint, abicheck]}
    - discover: {repo: 'file:///dg/rpms/${name}.git', branch: '${distgit_branch}', fallback_branch: main}
- when: {name: bar}
  do: [{tasks: [rpmlint]}]
"#,
            Some(&cfg),
        )
        .expect("rules");
        let t = JobTrigger {
            fields: json!({
                "message_type": "KojiBuildPackageCompleted",
                "item": "foo-1.0-1.fc40", "item_type": "koji_build",
                "name": "foo", "distgit_branch": "f40"
            })
            .as_object()
            .expect("obj")
            .clone(),
        };
        let p = plan(&t, &rules, &cfg);
        let got: Vec<(&str, &str, usize)> = p
            .jobs
            .iter()
            .map(|j| (j.task.as_str(), j.arch.as_str(), j.rule))
            .collect();
        assert_eq!(
            got,
            [
                ("rpmlint", "x86_64", 0),
                ("rpmlint", "aarch64", 0),
                ("abicheck", "noarch", 0),
                ("abicheck", "x86_64", 1),
                ("abicheck", "aarch64", 1),
            ]
        );
        assert_eq!(p.matched, [0, 1]);
        assert_eq!(
            p.discover,
            [DiscoverRequest {
                repo: "file:///dg/rpms/foo.git".into(),
                branch: "f40".into(),
                fallback_branch: Some("main".into()),
                recursive: false,
                arches: vec!["x86_64".into(), "aarch64".into()],
                rule: 1
            }]
        );
        assert_eq!(
            p.jobs[0].idempotency_key("m1"),
            "m1/rpmlint/x86_64",
            "message id + task + arch"
        );
    }
}
