//! A job's artifacts as clients see them: the listing and a confined open. Artifacts come from a
//! hostile guest: a requested path is held to minion-safepath's rules (no escape, no symlink out).

use std::path::{Path, PathBuf};

use minion_safepath::PathError;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("path: `{0}` must be a relative path inside the job's artifacts")]
    BadPath(String),
    #[error("no artifact `{0}`")]
    NotFound(String),
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One listed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub path: String,
    pub size: u64,
}

/// The real path of artifact `rel` under `root`: inside it once resolved, a regular file.
pub fn confined(root: &Path, rel: &str) -> Result<PathBuf, ArtifactError> {
    match minion_safepath::resolve_file_beneath(root, Path::new(rel)) {
        Ok(p) => Ok(p),
        Err(PathError::Empty { .. } | PathError::Absolute { .. } | PathError::Parent { .. }) => {
            Err(ArtifactError::BadPath(rel.to_string()))
        }
        Err(_) => Err(ArtifactError::NotFound(rel.to_string())),
    }
}

/// Files under `root`, relative, sorted; symlinks are not listed (nor followed). A missing
/// `root` is an empty list.
pub fn list(root: &Path) -> Result<Vec<Listed>, ArtifactError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArtifactError::Io { path, source }
    };
    let mut out = Vec::new();
    if !root.exists() {
        return Ok(out);
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            let ft = e.file_type().map_err(io(&e.path()))?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let size = e.metadata().map_err(io(&e.path()))?.len();
                out.push(Listed { path: rel, size });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_paths_are_confined() {
        let root = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(root.path().join("task_output")).expect("mkdir");
        std::fs::write(root.path().join("task_output/a.txt"), b"a").expect("w");
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("evil")).expect("ln");
        assert!(confined(root.path(), "task_output/a.txt").is_ok());
        assert!(confined(root.path(), "./task_output/a.txt").is_ok());
        for bad in ["../x", "/etc/passwd", "", "task_output/../../x"] {
            let e = confined(root.path(), bad).expect_err(bad);
            assert!(matches!(e, ArtifactError::BadPath(_)), "{bad}: {e}");
        }
        for missing in ["evil", "./a", "task_output"] {
            let e = confined(root.path(), missing).expect_err(missing);
            assert!(matches!(e, ArtifactError::NotFound(_)), "{missing}: {e}");
        }
        let listed = list(root.path()).expect("list");
        assert_eq!(
            listed,
            [Listed {
                path: "task_output/a.txt".into(),
                size: 1
            }],
            "symlinks are not listed"
        );
        assert!(list(&root.path().join("none")).expect("missing").is_empty());
    }
}
