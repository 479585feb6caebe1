//! `discover` (the dist-git convention): the tasks a package's repository carries. The branch
//! (else the fallback branch) is fetched shallowly into a local mirror (one bare repository per
//! URL under the cache dir), so N tasks of one repo, and later messages for it, cost one small
//! fetch each. Every directory holding `runtask.yml` (the top level, or any depth with
//! `recursive`) whose formula has `scheduling.run` not false and whose `input.args` names the
//! item's type is a task. A repo or branch that does not exist is a miss, not an error of the
//! trigger.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::plan::{DiscoverRequest, Discovered};

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("{repo}: no branch `{branch}`{fallback}", fallback = fallback.as_ref().map(|f| format!(" nor `{f}`")).unwrap_or_default())]
    NoBranch {
        repo: String,
        branch: String,
        fallback: Option<String>,
    },
    #[error("{repo}: cannot fetch: {message}")]
    Fetch { repo: String, message: String },
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What one discovery found: the tasks, and the formulas it passed over with why.
#[derive(Debug, Default)]
pub struct Found {
    pub tasks: Vec<Discovered>,
    pub passed_over: Vec<String>,
}

/// The mirror cache.
pub struct Mirrors {
    dir: PathBuf,
}

/// FNV-1a, for a stable directory name per URL.
fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A branch name git accepts as a plain ref (no options, no ref expressions).
fn plain_branch(b: &str) -> bool {
    !b.is_empty()
        && !b.starts_with('-')
        && !b.contains("..")
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'/'))
}

impl Mirrors {
    pub fn new(dir: &Path) -> Mirrors {
        Mirrors {
            dir: dir.to_path_buf(),
        }
    }

    fn path_of(&self, repo: &str) -> PathBuf {
        self.dir.join(format!("{:016x}.git", fnv64(repo)))
    }

    /// `git` with no hooks, no prompts, no submodules, and the repo's config ignored.
    fn git(&self, mirror: &Path) -> Command {
        let mut c = Command::new("git");
        c.arg("-C")
            .arg(mirror)
            .args([
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "protocol.file.allow=always",
            ])
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1");
        c
    }

    /// The mirror of `repo`, created if new.
    fn mirror(&self, repo: &str) -> Result<PathBuf, DiscoverError> {
        let m = self.path_of(repo);
        if !m.join("HEAD").is_file() {
            std::fs::create_dir_all(&m).map_err(|source| DiscoverError::Io {
                path: m.clone(),
                source,
            })?;
            run(self.git(&m).args(["init", "--quiet", "--bare"]), repo)?;
        }
        Ok(m)
    }

    /// Fetches `branch` of `repo` shallowly into its mirror; `false` if the branch does not exist.
    fn fetch(&self, mirror: &Path, repo: &str, branch: &str) -> Result<bool, DiscoverError> {
        if !plain_branch(branch) {
            return Ok(false);
        }
        let refspec = format!("+refs/heads/{branch}:refs/heads/{branch}");
        let out = self
            .git(mirror)
            .args([
                "fetch",
                "--quiet",
                "--depth",
                "1",
                "--no-tags",
                "--no-recurse-submodules",
                "--",
                repo,
            ])
            .arg(&refspec)
            .output()
            .map_err(|e| DiscoverError::Fetch {
                repo: repo.to_string(),
                message: format!("git: {e}"),
            })?;
        if out.status.success() {
            return Ok(true);
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("couldn't find remote ref") || err.contains("not our ref") {
            return Ok(false);
        }
        Err(DiscoverError::Fetch {
            repo: repo.to_string(),
            message: err.trim().to_string(),
        })
    }

    /// The tasks `req` finds for an item of `item_type`.
    pub fn discover(&self, req: &DiscoverRequest, item_type: &str) -> Result<Found, DiscoverError> {
        let m = self.mirror(&req.repo)?;
        let mut branch = req.branch.clone();
        if !self.fetch(&m, &req.repo, &branch)? {
            match &req.fallback_branch {
                Some(f) if self.fetch(&m, &req.repo, f)? => branch = f.clone(),
                _ => {
                    return Err(DiscoverError::NoBranch {
                        repo: req.repo.clone(),
                        branch: req.branch.clone(),
                        fallback: req.fallback_branch.clone(),
                    })
                }
            }
        }
        let rev = format!("refs/heads/{branch}");
        let listing = self
            .git(&m)
            .args(["ls-tree", "-r", "--name-only", "-z", &rev])
            .output()
            .map_err(|e| DiscoverError::Fetch {
                repo: req.repo.clone(),
                message: format!("git ls-tree: {e}"),
            })?;
        if !listing.status.success() {
            return Err(DiscoverError::Fetch {
                repo: req.repo.clone(),
                message: String::from_utf8_lossy(&listing.stderr).trim().to_string(),
            });
        }
        let mut found = Found::default();
        for path in listing.stdout.split(|b| *b == 0) {
            let Ok(path) = std::str::from_utf8(path) else {
                continue;
            };
            let dir = match path.strip_suffix("runtask.yml") {
                Some("") => "",
                Some(d) if d.ends_with('/') => &d[..d.len() - 1],
                _ => continue,
            };
            if !req.recursive && !dir.is_empty() {
                continue;
            }
            let shown = format!("{}#{path}", req.repo);
            let blob = self
                .git(&m)
                .args(["show", &format!("{rev}:{path}")])
                .output()
                .map_err(|e| DiscoverError::Fetch {
                    repo: req.repo.clone(),
                    message: format!("git show: {e}"),
                })?;
            // Formulas are small; a huge blob is not one.
            if !blob.status.success() || blob.stdout.len() > 1024 * 1024 {
                found.passed_over.push(format!("{shown}: unreadable"));
                continue;
            }
            let text = String::from_utf8_lossy(&blob.stdout);
            match minion_formula::parse_formula(Path::new(path), &text) {
                Ok(f) if !f.scheduled => found
                    .passed_over
                    .push(format!("{shown}: scheduling.run is false")),
                Ok(f) if !f.input_args.iter().any(|a| a == item_type) => found
                    .passed_over
                    .push(format!("{shown}: input.args does not name `{item_type}`")),
                Ok(_) => found.tasks.push(Discovered {
                    dir: dir.to_string(),
                    git_ref: branch.clone(),
                }),
                Err(e) => found.passed_over.push(format!("{}: {e}", req.repo)),
            }
        }
        Ok(found)
    }
}

fn run(cmd: &mut Command, repo: &str) -> Result<(), DiscoverError> {
    let out = cmd.output().map_err(|e| DiscoverError::Fetch {
        repo: repo.to_string(),
        message: format!("git: {e}"),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DiscoverError::Fetch {
            repo: repo.to_string(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minion_testenv::git;

    fn formula(args: &str, run: bool) -> String {
        format!(
            "name: t\ninput:\n  args: [{args}]\nscheduling:\n  run: {run}\nactions:\n  - dummy: {{result: PASSED}}\n"
        )
    }

    /// A dist-git style repo: a top-level task, nested ones, one not scheduled, one for another
    /// item type; branches main and f40.
    fn distgit() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("repo");
        let p = d.path();
        git(p, &["init", "--quiet"]);
        std::fs::write(p.join("foo.spec"), "Name: foo\n").expect("spec");
        std::fs::write(p.join("runtask.yml"), formula("koji_build", true)).expect("f");
        for (dir, text) in [
            ("tests/smoke", formula("koji_build", true)),
            ("tests/off", formula("koji_build", false)),
            ("tests/other", formula("bodhi_update", true)),
        ] {
            std::fs::create_dir_all(p.join(dir)).expect("mkdir");
            std::fs::write(p.join(dir).join("runtask.yml"), text).expect("f");
        }
        git(p, &["add", "."]);
        git(p, &["commit", "--quiet", "-m", "tasks"]);
        git(p, &["branch", "f40"]);
        d
    }

    fn req(repo: &str, branch: &str, fallback: Option<&str>, recursive: bool) -> DiscoverRequest {
        DiscoverRequest {
            repo: repo.into(),
            branch: branch.into(),
            fallback_branch: fallback.map(String::from),
            recursive,
            arches: vec!["x86_64".into()],
            rule: 0,
        }
    }

    #[test]
    fn finds_scheduled_tasks_for_the_item_type() {
        let repo = distgit();
        let cache = tempfile::tempdir().expect("cache");
        let m = Mirrors::new(cache.path());
        let url = format!("file://{}", repo.path().display());
        let top = m
            .discover(&req(&url, "f40", None, false), "koji_build")
            .expect("top");
        assert_eq!(
            top.tasks,
            [Discovered {
                dir: String::new(),
                git_ref: "f40".into()
            }]
        );
        let all = m
            .discover(&req(&url, "f41", Some("main"), true), "koji_build")
            .expect("all");
        let dirs: Vec<&str> = all.tasks.iter().map(|t| t.dir.as_str()).collect();
        assert_eq!(dirs, ["", "tests/smoke"]);
        assert!(
            all.tasks.iter().all(|t| t.git_ref == "main"),
            "the fallback branch"
        );
        assert_eq!(all.passed_over.len(), 2, "{:?}", all.passed_over);
        // One mirror per URL, reused.
        assert_eq!(std::fs::read_dir(cache.path()).expect("cache").count(), 1);
    }

    #[test]
    fn missing_repos_and_branches_are_misses_not_crashes() {
        let repo = distgit();
        let cache = tempfile::tempdir().expect("cache");
        let m = Mirrors::new(cache.path());
        let url = format!("file://{}", repo.path().display());
        let e = m
            .discover(&req(&url, "f39", Some("f38"), false), "koji_build")
            .expect_err("no branch");
        assert!(matches!(e, DiscoverError::NoBranch { .. }), "{e}");
        assert!(e.to_string().ends_with("no branch `f39` nor `f38`"), "{e}");
        let e = m
            .discover(
                &req("file:///nonexistent/repo.git", "main", None, false),
                "koji_build",
            )
            .expect_err("no repo");
        assert!(matches!(e, DiscoverError::Fetch { .. }), "{e}");
        let e = m
            .discover(&req(&url, "--upload-pack=x", None, false), "koji_build")
            .expect_err("option");
        assert!(
            matches!(e, DiscoverError::NoBranch { .. }),
            "an option is never passed to git: {e}"
        );
    }
}
