//! Fetching a submission's task repo into the job's own directory, and checking what it names
//! before anything else is created: on any error the directory is removed again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

/// How long a clone may take before the repo counts as unreachable.
const CLONE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("repo: must not be empty")]
    Empty,
    #[error("repo {repo}: no such directory on the daemon's host")]
    NoSuchDir { repo: String },
    #[error("repo {repo}: cannot fetch: {message}")]
    Fetch { repo: String, message: String },
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

/// Copies a local directory or shallow-clones a git URL into `dest` (which must not exist).
pub async fn fetch(repo: &str, git_ref: &str, dest: &Path) -> Result<(), RepoError> {
    if repo.trim().is_empty() {
        return Err(RepoError::Empty);
    }
    let result = if is_git_url(repo) {
        clone(repo, git_ref, dest).await
    } else {
        copy_dir(repo, dest).await
    };
    if result.is_err() {
        let _ = tokio::fs::remove_dir_all(dest).await;
    }
    result
}

async fn clone(repo: &str, git_ref: &str, dest: &Path) -> Result<(), RepoError> {
    let mut cmd = Command::new("git");
    cmd.args(["clone", "--quiet", "--depth", "1"]);
    if !git_ref.is_empty() {
        cmd.args(["--branch", git_ref]);
    }
    cmd.arg("--").arg(repo).arg(dest);
    // Never prompt for credentials: a daemon has no terminal.
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        .kill_on_drop(true);
    let out = tokio::time::timeout(CLONE_TIMEOUT, cmd.output())
        .await
        .map_err(|_| RepoError::Fetch {
            repo: repo.to_string(),
            message: format!("git clone took longer than {CLONE_TIMEOUT:?}"),
        })?
        .map_err(|e| RepoError::Fetch {
            repo: repo.to_string(),
            message: format!("git: {e}"),
        })?;
    fetch_status(repo, &out)
}

/// A fetch tool's exit status as a result, its stderr as the message.
fn fetch_status(repo: &str, out: &std::process::Output) -> Result<(), RepoError> {
    if out.status.success() {
        return Ok(());
    }
    Err(RepoError::Fetch {
        repo: repo.to_string(),
        message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

async fn copy_dir(repo: &str, dest: &Path) -> Result<(), RepoError> {
    let src = Path::new(repo);
    if !src.is_absolute() || !src.is_dir() {
        return Err(RepoError::NoSuchDir {
            repo: repo.to_string(),
        });
    }
    // In process (no `cp` child per submission): contents with modes, symlinks copied as
    // symlinks (never followed), special files skipped.
    let (src, dest, name) = (src.to_path_buf(), dest.to_path_buf(), repo.to_string());
    tokio::task::spawn_blocking(move || copy_tree(&src, &dest))
        .await
        .map_err(|e| RepoError::Fetch {
            repo: name.clone(),
            message: format!("copy task: {e}"),
        })?
        .map_err(|e| RepoError::Fetch {
            repo: name,
            message: format!("copy: {e}"),
        })
}

fn copy_tree(src: &Path, dest: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dest)?;
    let mode = std::fs::metadata(src)?.permissions().mode();
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode & 0o7777))?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let (from, to) = (e.path(), dest.join(e.file_name()));
        let ft = e.file_type()?;
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if ft.is_dir() {
            copy_tree(&from, &to)?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to)?;
        }
    }
    Ok(())
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

    #[tokio::test]
    async fn local_copy_and_missing_dir() {
        let src = tempfile::tempdir().expect("src");
        std::fs::write(src.path().join("runtask.yml"), "x").expect("write");
        let dst = tempfile::tempdir().expect("dst");
        let dest = dst.path().join("task");
        fetch(src.path().to_str().expect("utf8"), "", &dest)
            .await
            .expect("copy");
        assert!(dest.join("runtask.yml").is_file());
        let e = fetch("/nonexistent/minion-repo", "", &dst.path().join("t2"))
            .await
            .expect_err("missing");
        assert!(matches!(e, RepoError::NoSuchDir { .. }), "{e}");
        assert!(!dst.path().join("t2").exists());
    }

    #[tokio::test]
    async fn unreachable_git_repo_is_a_fetch_error_and_leaves_nothing() {
        let dst = tempfile::tempdir().expect("dst");
        let dest = dst.path().join("task");
        let e = fetch("file:///nonexistent/minion.git", "main", &dest)
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
