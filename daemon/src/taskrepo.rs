//! Fetching a submission's task repo into the job's own directory, and checking what it names
//! before anything else is created: on any error the directory is removed again. A submission is
//! bounded ([`RepoLimits`]): local directories (and `file://` URLs) only under the configured
//! roots, the formula validated before a local copy starts, and every copy or clone within a
//! size, file-count and time budget.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::process::Command;

/// How often a running clone's size is checked against the budget.
const CLONE_POLL: Duration = Duration::from_millis(250);

/// What a submission may bring (the `[submissions]` config table).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RepoLimits {
    /// Local task repos (directories, `file://` URLs) are accepted only under these absolute
    /// directories, symlinks resolved. Default none: git URLs only.
    pub local_repo_roots: Vec<PathBuf>,
    /// Bytes a task repo may hold, in MiB. Default 256.
    pub max_repo_mib: u64,
    /// Files (and directories) a task repo may hold. Default 20000.
    pub max_repo_files: u64,
    /// Seconds a copy or clone may take. Default 120.
    pub max_fetch_secs: u64,
}

impl Default for RepoLimits {
    fn default() -> Self {
        Self {
            local_repo_roots: Vec::new(),
            max_repo_mib: 256,
            max_repo_files: 20_000,
            max_fetch_secs: 120,
        }
    }
}

impl RepoLimits {
    fn max_bytes(&self) -> u64 {
        self.max_repo_mib.saturating_mul(1024 * 1024)
    }

    fn max_time(&self) -> Duration {
        Duration::from_secs(self.max_fetch_secs)
    }

    /// `path` with symlinks resolved, if it lies under one of the roots (also resolved).
    fn local(&self, repo: &str, path: &Path) -> Result<PathBuf, RepoError> {
        let refused = || RepoError::NotUnderRoots {
            repo: repo.to_string(),
            roots: if self.local_repo_roots.is_empty() {
                "none are configured: submit a git URL, or set submissions.local_repo_roots".into()
            } else {
                let shown: Vec<String> = self
                    .local_repo_roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect();
                format!("submissions.local_repo_roots: {}", shown.join(", "))
            },
        };
        if !path.is_absolute() {
            return Err(RepoError::NoSuchDir {
                repo: repo.to_string(),
            });
        }
        // Refused before it is even looked at when no root could hold it.
        if self.local_repo_roots.is_empty() {
            return Err(refused());
        }
        let real = path.canonicalize().map_err(|_| RepoError::NoSuchDir {
            repo: repo.to_string(),
        })?;
        if !real.is_dir() {
            return Err(RepoError::NoSuchDir {
                repo: repo.to_string(),
            });
        }
        let inside = self
            .local_repo_roots
            .iter()
            .filter_map(|r| r.canonicalize().ok())
            .any(|root| real.starts_with(&root));
        if inside {
            Ok(real)
        } else {
            Err(refused())
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("repo: must not be empty")]
    Empty,
    #[error("repo {repo}: no such directory on the daemon's host")]
    NoSuchDir { repo: String },
    #[error("repo {repo}: cannot fetch: {message}")]
    Fetch { repo: String, message: String },
    #[error(
        "repo {repo}: local task repos are accepted only under the configured roots ({roots})"
    )]
    NotUnderRoots { repo: String, roots: String },
    #[error("repo {repo}: over the submission limit of {limit} (submissions.{field})")]
    TooLarge {
        repo: String,
        limit: String,
        field: &'static str,
    },
    #[error("formula: `{0}` must be a relative path inside the repo")]
    FormulaEscapes(String),
    #[error("formula: `{formula}` not found in repo {repo}")]
    FormulaMissing { formula: String, repo: String },
    #[error("{0}")]
    FormulaInvalid(String),
    #[error("item_type: `{0}` is not one of {list}", list = minion_formula::ITEM_TYPES.join(", "))]
    ItemType(String),
    #[error("item: must not be empty")]
    Item,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub fn check_item(item: &str, item_type: &str) -> Result<(), RepoError> {
    if item.trim().is_empty() {
        return Err(RepoError::Item);
    }
    if !minion_formula::is_item_type(item_type) {
        return Err(RepoError::ItemType(item_type.to_string()));
    }
    Ok(())
}

/// Whether `repo` names a git remote rather than a local directory.
pub fn is_git_url(repo: &str) -> bool {
    ["https://", "http://", "git://", "ssh://", "file://", "git@"]
        .iter()
        .any(|p| repo.starts_with(p))
        || (repo.ends_with(".git") && !Path::new(repo).is_dir())
}

/// Copies a local directory or shallow-clones a git URL into `dest` (which must not exist),
/// within `limits`. A local directory's formula is found and validated before anything is copied.
pub async fn fetch(
    repo: &str,
    git_ref: &str,
    formula: &str,
    dest: &Path,
    limits: &RepoLimits,
) -> Result<(), RepoError> {
    if repo.trim().is_empty() {
        return Err(RepoError::Empty);
    }
    let result = if is_git_url(repo) {
        if let Some(path) = repo.strip_prefix("file://") {
            limits.local(repo, Path::new(path))?;
        }
        clone(repo, git_ref, dest, limits).await
    } else {
        let src = limits.local(repo, Path::new(repo))?;
        let (tree, f, r) = (src.clone(), formula.to_string(), repo.to_string());
        tokio::task::spawn_blocking(move || resolve_and_validate(&tree, &f, &r))
            .await
            .map_err(|e| RepoError::FormulaInvalid(format!("validator: {e}")))??;
        copy_dir(repo, &src, dest, limits).await
    };
    if result.is_err() {
        let _ = tokio::fs::remove_dir_all(dest).await;
    }
    result
}

async fn clone(
    repo: &str,
    git_ref: &str,
    dest: &Path,
    limits: &RepoLimits,
) -> Result<(), RepoError> {
    // In a process group that dies with the daemon: git's transport helpers
    // (git-remote-https) go with it.
    let mut cmd = Command::from(minion_children::group_dying_with_parent("git"));
    // No hooks (not the repo's, not a template's), no submodules, no credential prompts.
    cmd.args([
        "-c",
        "core.hooksPath=/dev/null",
        "clone",
        "--quiet",
        "--depth",
        "1",
    ])
    .args(["--template=", "--no-recurse-submodules"]);
    if !git_ref.is_empty() {
        cmd.args(["--branch", git_ref]);
    }
    cmd.arg("--").arg(repo).arg(dest);
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let fetch_err = |message: String| RepoError::Fetch {
        repo: repo.to_string(),
        message,
    };
    let mut child = cmd.spawn().map_err(|e| fetch_err(format!("git: {e}")))?;
    // The request ends (done, refused, cancelled): nothing of the clone lives on.
    let _group = child.id().map(minion_children::KillGroup);
    // Read while git runs: a full pipe would stall it until the deadline.
    let stderr = child.stderr.take().map(|mut e| {
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = Vec::new();
            let _ = e.read_to_end(&mut buf).await;
            buf
        })
    });
    let deadline = Instant::now() + limits.max_time();
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(|e| fetch_err(format!("git: {e}")))?,
            _ = tokio::time::sleep(CLONE_POLL) => {
                if Instant::now() > deadline {
                    return Err(fetch_err(format!(
                        "git clone took longer than {}s (submissions.max_fetch_secs)",
                        limits.max_fetch_secs
                    )));
                }
                check_usage(repo, usage_of(dest).await, limits)?;
            }
        }
    };
    if !status.success() {
        let said = match stderr {
            Some(t) => t.await.unwrap_or_default(),
            None => Vec::new(),
        };
        return Err(fetch_err(String::from_utf8_lossy(&said).trim().to_string()));
    }
    check_usage(repo, usage_of(dest).await, limits)
}

/// [`tree_usage`] off the runtime.
async fn usage_of(dir: &Path) -> Usage {
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || tree_usage(&d))
        .await
        .unwrap_or_default()
}

/// Bytes and entries under `dir` (symlinks not followed); what cannot be read counts as nothing.
fn tree_usage(dir: &Path) -> Usage {
    let mut u = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            u.files += 1;
            u.bytes += m.len();
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    u
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    bytes: u64,
    files: u64,
}

fn check_usage(repo: &str, used: Usage, limits: &RepoLimits) -> Result<(), RepoError> {
    if used.bytes > limits.max_bytes() {
        return Err(RepoError::TooLarge {
            repo: repo.to_string(),
            limit: format!("{} MiB", limits.max_repo_mib),
            field: "max_repo_mib",
        });
    }
    if used.files > limits.max_repo_files {
        return Err(RepoError::TooLarge {
            repo: repo.to_string(),
            limit: format!("{} files", limits.max_repo_files),
            field: "max_repo_files",
        });
    }
    Ok(())
}

async fn copy_dir(
    repo: &str,
    src: &Path,
    dest: &Path,
    limits: &RepoLimits,
) -> Result<(), RepoError> {
    // In process (no `cp` child per submission): contents with modes, symlinks copied as
    // symlinks (never followed), special files skipped; stops as soon as a budget is spent.
    let (src, dest, name, limits) = (
        src.to_path_buf(),
        dest.to_path_buf(),
        repo.to_string(),
        limits.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let mut copy = Copy {
            repo: &name,
            limits: &limits,
            used: Usage::default(),
            deadline: Instant::now() + limits.max_time(),
        };
        copy.tree(&src, &dest)
    })
    .await
    .map_err(|e| RepoError::Fetch {
        repo: repo.to_string(),
        message: format!("copy task: {e}"),
    })?
}

/// One bounded copy of a local tree.
struct Copy<'a> {
    repo: &'a str,
    limits: &'a RepoLimits,
    used: Usage,
    deadline: Instant,
}

impl Copy<'_> {
    fn io(&self, e: std::io::Error) -> RepoError {
        RepoError::Fetch {
            repo: self.repo.to_string(),
            message: format!("copy: {e}"),
        }
    }

    /// Counts one entry of `bytes` before it is copied.
    fn charge(&mut self, bytes: u64) -> Result<(), RepoError> {
        self.used.bytes = self.used.bytes.saturating_add(bytes);
        self.used.files += 1;
        check_usage(self.repo, self.used, self.limits)?;
        if Instant::now() > self.deadline {
            return Err(RepoError::Fetch {
                repo: self.repo.to_string(),
                message: format!(
                    "the copy took longer than {}s (submissions.max_fetch_secs)",
                    self.limits.max_fetch_secs
                ),
            });
        }
        Ok(())
    }

    fn tree(&mut self, src: &Path, dest: &Path) -> Result<(), RepoError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dest).map_err(|e| self.io(e))?;
        let mode = std::fs::metadata(src)
            .map_err(|e| self.io(e))?
            .permissions()
            .mode();
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| self.io(e))?;
        for e in std::fs::read_dir(src).map_err(|e| self.io(e))? {
            let e = e.map_err(|e| self.io(e))?;
            let (from, to) = (e.path(), dest.join(e.file_name()));
            let ft = e.file_type().map_err(|e| self.io(e))?;
            if ft.is_symlink() {
                self.charge(0)?;
                let target = std::fs::read_link(&from).map_err(|e| self.io(e))?;
                std::os::unix::fs::symlink(target, &to).map_err(|e| self.io(e))?;
            } else if ft.is_dir() {
                self.charge(0)?;
                self.tree(&from, &to)?;
            } else if ft.is_file() {
                let len = e.metadata().map_err(|e| self.io(e))?.len();
                self.charge(len)?;
                std::fs::copy(&from, &to).map_err(|e| self.io(e))?;
            }
        }
        Ok(())
    }
}

/// Unpacks a task tree sent with the submission (`task_tar`) into `dest` (which must not
/// exist), within `limits`: regular files and directories only, every path confined under
/// `dest`, modes kept to their permission bits. On error nothing is left.
pub async fn unpack_upload(
    label: &str,
    tar_bytes: Vec<u8>,
    dest: &Path,
    limits: &RepoLimits,
) -> Result<(), RepoError> {
    let (label, dest_dir, limits) = (label.to_string(), dest.to_path_buf(), limits.clone());
    let result = tokio::task::spawn_blocking(move || {
        let mut copy = Copy {
            repo: &label,
            limits: &limits,
            used: Usage::default(),
            deadline: Instant::now() + limits.max_time(),
        };
        copy.untar(&tar_bytes, &dest_dir)
    })
    .await
    .map_err(|e| RepoError::Fetch {
        repo: "task_tar".into(),
        message: format!("unpack task: {e}"),
    })?;
    if result.is_err() {
        let _ = tokio::fs::remove_dir_all(dest).await;
    }
    result
}

impl Copy<'_> {
    fn untar(&mut self, bytes: &[u8], dest: &Path) -> Result<(), RepoError> {
        use std::os::unix::fs::PermissionsExt;
        let bad = |what: String| RepoError::Fetch {
            repo: self.repo.to_string(),
            message: format!("task_tar: {what}"),
        };
        std::fs::create_dir_all(dest).map_err(|e| self.io(e))?;
        let mut archive = tar::Archive::new(bytes);
        let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(e.to_string()))?;
            let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
            let rel = minion_safepath::relative(&path)
                .map_err(|e| bad(format!("entry {}: {e}", path.display())))?;
            if rel.as_os_str().is_empty() {
                continue;
            }
            let to = dest.join(&rel);
            let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
            match entry.header().entry_type() {
                tar::EntryType::Directory => {
                    self.charge(0)?;
                    std::fs::create_dir_all(&to).map_err(|e| self.io(e))?;
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    self.charge(entry.size())?;
                    if let Some(parent) = to.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| self.io(e))?;
                    }
                    let mut f = std::fs::File::create(&to).map_err(|e| self.io(e))?;
                    std::io::copy(&mut entry, &mut f).map_err(|e| self.io(e))?;
                    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
                        .map_err(|e| self.io(e))?;
                }
                // pax/GNU headers describe the entry that follows; tar reads them itself.
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
                other => {
                    return Err(bad(format!(
                        "entry {}: {other:?} entries are not accepted (regular files and directories only)",
                        path.display()
                    )))
                }
            }
        }
        Ok(())
    }
}

/// Resolves the formula inside the fetched tree (a directory means its `runtask.yml`/`task.yml`)
/// and validates it with minion-formula. Returns its path relative to the tree and its namespace.
pub fn resolve_and_validate(
    tree: &Path,
    formula: &str,
    repo: &str,
) -> Result<(String, String), RepoError> {
    // minion-safepath's rules: lexically inside the tree, and still inside once symlinks are
    // followed.
    let rel = if formula.is_empty() || formula == "." {
        PathBuf::new()
    } else {
        minion_safepath::relative(Path::new(formula))
            .map_err(|_| RepoError::FormulaEscapes(formula.to_string()))?
    };
    let candidate = tree.join(&rel);
    if !candidate.exists() {
        return Err(RepoError::FormulaMissing {
            formula: formula.to_string(),
            repo: repo.to_string(),
        });
    }
    let file = minion_formula::resolve_formula_path(&candidate).map_err(|_| {
        RepoError::FormulaMissing {
            formula: if formula.is_empty() {
                "runtask.yml".to_string()
            } else {
                formula.to_string()
            },
            repo: repo.to_string(),
        }
    })?;
    let in_tree = file.strip_prefix(tree).unwrap_or(&file).to_path_buf();
    let real_file = match minion_safepath::resolve_file_beneath(tree, &in_tree) {
        Ok(p) => p,
        Err(minion_safepath::PathError::Missing { .. }) => {
            return Err(RepoError::FormulaMissing {
                formula: formula.to_string(),
                repo: repo.to_string(),
            })
        }
        Err(_) => return Err(RepoError::FormulaEscapes(formula.to_string())),
    };
    let real_tree = tree.canonicalize().map_err(|source| RepoError::Io {
        path: tree.to_path_buf(),
        source,
    })?;
    let inside = real_file
        .strip_prefix(&real_tree)
        .map_err(|_| RepoError::FormulaEscapes(formula.to_string()))?
        .to_path_buf();
    let loaded = minion_formula::load_formula(&real_file).map_err(|e| {
        // Name the file as the submitter knows it (repo-relative), not our private copy.
        let msg = e.to_string();
        let shown = msg.replace(
            &real_file.display().to_string(),
            &inside.display().to_string(),
        );
        RepoError::FormulaInvalid(shown)
    })?;
    Ok((
        inside.to_string_lossy().into_owned(),
        loaded.namespace.unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of `(path, kind)`: `None` a directory, `Some(bytes)` a file, a `->` path a symlink.
    fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            if let Some((link, target)) = path.split_once("->") {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, link, target).expect("link");
                continue;
            }
            match data {
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, path, std::io::empty()).expect("dir");
                }
                Some(d) => {
                    h.set_size(d.len() as u64);
                    h.set_mode(0o755);
                    b.append_data(&mut h, path, *d).expect("file");
                }
            }
        }
        b.into_inner().expect("tar")
    }

    /// A tar whose entry names are written raw (`append_data` refuses `..` itself).
    fn raw_tar(name: &str) -> Vec<u8> {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(b"x");
        out.resize(1024, 0);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[tokio::test]
    async fn uploaded_trees_unpack_confined_and_within_budgets() {
        let d = tempfile::tempdir().expect("tempdir");
        let limits = RepoLimits::default();
        let ok = tar_of(&[
            ("sub", None),
            ("runtask.yml", Some(b"name: x")),
            ("sub/check.py", Some(b"print(1)")),
        ]);
        let dest = d.path().join("ok");
        unpack_upload("t", ok, &dest, &limits)
            .await
            .expect("unpacked");
        assert_eq!(
            std::fs::read(dest.join("sub/check.py")).expect("file"),
            b"print(1)"
        );

        let dest = d.path().join("link");
        let e = unpack_upload("t", tar_of(&[("evil->/etc/passwd", None)]), &dest, &limits)
            .await
            .expect_err("symlink refused");
        assert!(
            e.to_string().contains("regular files and directories only"),
            "{e}"
        );
        assert!(!dest.exists(), "nothing left after a refusal");

        let dest = d.path().join("up");
        let e = unpack_upload("t", raw_tar("../escape"), &dest, &limits)
            .await
            .expect_err("escape refused");
        assert!(e.to_string().contains("../escape"), "{e}");
        assert!(!d.path().join("escape").exists());

        let small = RepoLimits {
            max_repo_files: 1,
            ..RepoLimits::default()
        };
        let dest = d.path().join("many");
        let two = tar_of(&[("a", Some(b"1")), ("b", Some(b"2"))]);
        assert!(matches!(
            unpack_upload("t", two, &dest, &small).await,
            Err(RepoError::TooLarge { .. })
        ));
        assert!(!dest.exists());
    }

    #[test]
    fn item_and_type_are_checked() {
        // The one list `minion runtask -t` uses too.
        for t in minion_formula::ITEM_TYPES {
            assert!(check_item("x", t).is_ok(), "{t}");
        }
        assert!(check_item("abc123", "git_commit").is_ok());
        assert!(check_item("mod-1-2", "module_build").is_ok());
        let e = check_item("foo", "kojibuild").expect_err("bad type");
        assert_eq!(
            e.to_string(),
            format!(
                "item_type: `kojibuild` is not one of {}",
                minion_formula::ITEM_TYPES.join(", ")
            )
        );
        assert!(matches!(
            check_item(" ", "koji_build"),
            Err(RepoError::Item)
        ));
    }

    #[test]
    fn urls_and_paths_are_told_apart() {
        assert!(is_git_url("https://example.org/x.git"));
        assert!(is_git_url("file:///srv/repo"));
        assert!(is_git_url("git@host:x/y"));
        assert!(!is_git_url("/srv/tasks/rpmlint"));
    }

    /// Limits allowing local repos under `root`.
    fn under(root: &Path) -> RepoLimits {
        RepoLimits {
            local_repo_roots: vec![root.to_path_buf()],
            ..RepoLimits::default()
        }
    }

    fn repo_with_formula(dir: &Path) {
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(
            dir.join("runtask.yml"),
            "name: t\nactions:\n  - dummy: {result: PASSED}\n",
        )
        .expect("formula");
    }

    #[tokio::test]
    async fn local_copy_and_missing_dir() {
        let root = tempfile::tempdir().expect("root");
        let src = root.path().join("task");
        repo_with_formula(&src);
        std::fs::create_dir_all(src.join("sub")).expect("sub");
        std::fs::write(src.join("sub/x.py"), "x").expect("write");
        let dst = tempfile::tempdir().expect("dst");
        let dest = dst.path().join("task");
        let limits = under(root.path());
        fetch(src.to_str().expect("utf8"), "", "", &dest, &limits)
            .await
            .expect("copy");
        assert!(dest.join("runtask.yml").is_file() && dest.join("sub/x.py").is_file());
        let missing = root.path().join("nonexistent");
        let e = fetch(
            missing.to_str().expect("utf8"),
            "",
            "",
            &dst.path().join("t2"),
            &limits,
        )
        .await
        .expect_err("missing");
        assert!(matches!(e, RepoError::NoSuchDir { .. }), "{e}");
        assert!(!dst.path().join("t2").exists());
    }

    #[tokio::test]
    async fn local_repos_only_under_the_roots() {
        let root = tempfile::tempdir().expect("root");
        let dst = tempfile::tempdir().expect("dst");
        let dest = dst.path().join("task");
        // No roots (the default): git URLs only, and `/` or `/usr` is not even looked at.
        for repo in ["/", "/usr", "/etc"] {
            let e = fetch(repo, "", "", &dest, &RepoLimits::default())
                .await
                .expect_err("no roots");
            assert_eq!(
                e.to_string(),
                format!("repo {repo}: local task repos are accepted only under the configured roots (none are configured: submit a git URL, or set submissions.local_repo_roots)")
            );
            let e = fetch(repo, "", "", &dest, &under(root.path()))
                .await
                .expect_err("outside the root");
            assert!(matches!(e, RepoError::NotUnderRoots { .. }), "{e}");
        }
        // A symlink inside the root that leads out of it is judged by where it leads.
        std::os::unix::fs::symlink("/usr", root.path().join("usr-link")).expect("link");
        let link = root.path().join("usr-link");
        let e = fetch(
            link.to_str().expect("utf8"),
            "",
            "",
            &dest,
            &under(root.path()),
        )
        .await
        .expect_err("symlink out");
        assert!(matches!(e, RepoError::NotUnderRoots { .. }), "{e}");
        let e = fetch("file:///usr", "", "", &dest, &under(root.path()))
            .await
            .expect_err("file:// out");
        assert!(matches!(e, RepoError::NotUnderRoots { .. }), "{e}");
        assert!(!dest.exists(), "nothing was copied");
    }

    #[tokio::test]
    async fn copies_stop_at_the_budget_and_the_formula_is_checked_first() {
        let root = tempfile::tempdir().expect("root");
        let dst = tempfile::tempdir().expect("dst");
        let limits = under(root.path());
        // A 2 GiB tree (sparse: cheap to make, as large as it claims to copy).
        let big = root.path().join("big");
        repo_with_formula(&big);
        std::fs::File::create(big.join("blob"))
            .and_then(|f| f.set_len(2 << 30))
            .expect("sparse file");
        let t0 = Instant::now();
        let dest = dst.path().join("big");
        let e = fetch(big.to_str().expect("utf8"), "", "", &dest, &limits)
            .await
            .expect_err("too big");
        assert_eq!(
            e.to_string(),
            format!(
                "repo {}: over the submission limit of 256 MiB (submissions.max_repo_mib)",
                big.display()
            )
        );
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "refused before copying it"
        );
        assert!(!dest.exists(), "the partial copy is removed");
        // Too many files.
        let many = root.path().join("many");
        repo_with_formula(&many);
        for i in 0..30 {
            std::fs::write(many.join(format!("f{i}")), "x").expect("file");
        }
        let few = RepoLimits {
            max_repo_files: 10,
            ..under(root.path())
        };
        let e = fetch(
            many.to_str().expect("utf8"),
            "",
            "",
            &dst.path().join("m"),
            &few,
        )
        .await
        .expect_err("too many");
        assert!(
            e.to_string()
                .ends_with("over the submission limit of 10 files (submissions.max_repo_files)"),
            "{e}"
        );
        // A tree whose formula is missing or invalid is refused before its blob is read.
        std::fs::write(
            big.join("runtask.yml"),
            "name: t\nactions:\n  - bogus: {}\n",
        )
        .expect("w");
        let e = fetch(big.to_str().expect("utf8"), "", "", &dest, &limits)
            .await
            .expect_err("invalid");
        assert!(matches!(e, RepoError::FormulaInvalid(_)), "{e}");
        assert!(!dest.exists());
    }

    fn git(dir: &Path, args: &[&str]) {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[tokio::test]
    async fn clones_run_no_hooks_and_stop_at_the_budget() {
        let root = tempfile::tempdir().expect("root");
        let repo = root.path().join("repo");
        repo_with_formula(&repo);
        std::fs::write(repo.join("data"), vec![7u8; 3 << 20]).expect("data");
        git(&repo, &["init", "-q", "-b", "main"]);
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", "x"]);
        // A hook in the source repo that would leave a mark if anything ran it.
        let mark = root.path().join("hook-ran");
        let hook = repo.join(".git/hooks/post-checkout");
        std::fs::write(&hook, format!("#!/bin/sh\ntouch {}\n", mark.display())).expect("hook");
        std::fs::set_permissions(
            &hook,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
        )
        .expect("chmod");
        let url = format!("file://{}", repo.display());
        let dst = tempfile::tempdir().expect("dst");
        let dest = dst.path().join("task");
        fetch(&url, "main", "", &dest, &under(root.path()))
            .await
            .expect("clone");
        assert!(dest.join("runtask.yml").is_file());
        assert!(!mark.exists(), "no hook ran");
        assert!(
            !dest.join(".git/hooks/post-checkout").exists(),
            "no hooks came along"
        );
        let small = RepoLimits {
            max_repo_mib: 1,
            ..under(root.path())
        };
        let dest2 = dst.path().join("task2");
        let e = fetch(&url, "main", "", &dest2, &small)
            .await
            .expect_err("too big");
        assert!(
            matches!(
                e,
                RepoError::TooLarge {
                    field: "max_repo_mib",
                    ..
                }
            ),
            "{e}"
        );
        assert!(!dest2.exists());
    }

    #[tokio::test]
    async fn unreachable_git_repo_is_a_fetch_error_and_leaves_nothing() {
        let dst = tempfile::tempdir().expect("dst");
        let dest = dst.path().join("task");
        let e = fetch(
            "https://127.0.0.1:9/minion.git",
            "main",
            "",
            &dest,
            &RepoLimits::default(),
        )
        .await
        .expect_err("unreachable");
        assert!(matches!(e, RepoError::Fetch { .. }), "{e}");
        assert!(!dest.exists());
    }

    #[test]
    fn invalid_formula_is_refused_naming_the_repo_relative_file() {
        let tree = tempfile::tempdir().expect("tree");
        std::fs::write(
            tree.path().join("runtask.yml"),
            "name: t\nactions:\n  - bogus_directive: {}\n",
        )
        .expect("w");
        let e = resolve_and_validate(tree.path(), "", "r").expect_err("invalid");
        let msg = e.to_string();
        assert!(msg.starts_with("runtask.yml:3:"), "{msg}");
        assert!(!msg.contains(&tree.path().display().to_string()), "{msg}");
        std::fs::write(
            tree.path().join("runtask.yml"),
            "name: t\nactions:\n  - dummy: {result: PASSED}\n",
        )
        .expect("w");
        assert_eq!(
            resolve_and_validate(tree.path(), "", "r").expect("valid").0,
            "runtask.yml"
        );
    }

    #[test]
    fn formula_paths_cannot_escape() {
        let tree = tempfile::tempdir().expect("tree");
        for f in ["../x.yml", "/etc/passwd", "a/../../b"] {
            let e = resolve_and_validate(tree.path(), f, "r").expect_err("escape");
            assert!(matches!(e, RepoError::FormulaEscapes(_)), "{f}: {e}");
        }
        let e = resolve_and_validate(tree.path(), "missing.yml", "r").expect_err("missing");
        assert_eq!(e.to_string(), "formula: `missing.yml` not found in repo r");
    }
}
