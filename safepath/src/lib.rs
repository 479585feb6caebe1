//! Path confinement: one set of rules for every path Minion is handed from outside (a submitted
//! formula path, an artifact the guest sends, a python step's file, a file an image manifest
//! names, an artifact a client asks for).
//!
//! The rules, in two layers:
//! 1. **Lexical** ([`relative`]): a path is relative, not empty, and made of plain names; `.`
//!    components are dropped; `..`, a root or a prefix is refused. This alone is what a path
//!    that does not exist yet needs (an artifact about to be written).
//! 2. **On disk** ([`resolve_beneath`]): the lexically checked path joined to a root is resolved
//!    (symlinks followed) and must still be under the resolved root; a symlink that points out is
//!    refused like `..`. [`resolve_file_beneath`] also requires a regular file.
//!
//! Names that become one path component (a job id, an image name) use [`plain_name`].

use std::path::{Component, Path, PathBuf};

/// Why a path was refused. The `path` is as it was given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("`{path}`: empty path")]
    Empty { path: String },
    #[error("`{path}`: absolute path")]
    Absolute { path: String },
    #[error("`{path}`: path contains `..`")]
    Parent { path: String },
    #[error("`{path}`: not a plain name (letters, digits, `.`, `_`, `-`; not starting with `.`)")]
    NotPlain { path: String },
    #[error("`{path}`: leaves {root} (through a symlink)")]
    Escapes { path: String, root: String },
    #[error("`{path}`: does not exist under {root}")]
    Missing { path: String, root: String },
    #[error("`{path}`: not a regular file")]
    NotAFile { path: String },
}

fn shown(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The lexical rule: `path` as a relative path of plain components (`.` dropped).
pub fn relative(path: &Path) -> Result<PathBuf, PathError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(PathError::Parent { path: shown(path) }),
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::Absolute { path: shown(path) })
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(PathError::Empty { path: shown(path) });
    }
    Ok(out)
}

/// `rel` under `root`, resolved on disk (symlinks followed) and still under `root` once resolved.
/// Returns the resolved path. Both must exist.
pub fn resolve_beneath(root: &Path, rel: &Path) -> Result<PathBuf, PathError> {
    let clean = relative(rel)?;
    let missing = || PathError::Missing {
        path: shown(rel),
        root: shown(root),
    };
    let real_root = root.canonicalize().map_err(|_| missing())?;
    let real = real_root
        .join(&clean)
        .canonicalize()
        .map_err(|_| missing())?;
    if !real.starts_with(&real_root) {
        return Err(PathError::Escapes {
            path: shown(rel),
            root: shown(root),
        });
    }
    Ok(real)
}

/// Like [`resolve_beneath`], and the result must be a regular file.
pub fn resolve_file_beneath(root: &Path, rel: &Path) -> Result<PathBuf, PathError> {
    let real = resolve_beneath(root, rel)?;
    if !real.is_file() {
        return Err(PathError::NotAFile { path: shown(rel) });
    }
    Ok(real)
}

/// A name that is used as one path component: non-empty, at most 128 bytes, ASCII letters,
/// digits, `.`, `_`, `-`, not starting with `.` (so never `.` or `..`, never hidden).
pub fn plain_name(name: &str) -> Result<&str, PathError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(name)
    } else {
        Err(PathError::NotPlain {
            path: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_rule_keeps_plain_paths_and_drops_dots() {
        assert_eq!(relative(Path::new("a/b.txt")), Ok(PathBuf::from("a/b.txt")));
        assert_eq!(relative(Path::new("./a/./b")), Ok(PathBuf::from("a/b")));
        assert_eq!(relative(Path::new("a//b/")), Ok(PathBuf::from("a/b")));
    }

    #[test]
    fn lexical_rule_refuses_what_could_leave_the_root() {
        let cases = [
            ("", "empty path"),
            (".", "empty path"),
            ("./", "empty path"),
            ("/etc/passwd", "absolute path"),
            ("../x", "path contains `..`"),
            ("a/../../x", "path contains `..`"),
            ("a/..", "path contains `..`"),
        ];
        for (p, want) in cases {
            let e = relative(Path::new(p)).expect_err(p);
            assert_eq!(e.to_string(), format!("`{p}`: {want}"), "{p}");
        }
    }

    #[test]
    fn on_disk_rule_follows_symlinks_only_inside() {
        let t = tempfile::tempdir().expect("tmp");
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("d")).expect("mkdir");
        std::fs::write(root.join("d/f"), b"x").expect("write");
        std::fs::write(t.path().join("outside"), b"secret").expect("write");
        std::os::unix::fs::symlink("d/f", root.join("inside-link")).expect("ln");
        std::os::unix::fs::symlink("../outside", root.join("out-link")).expect("ln");
        std::os::unix::fs::symlink("/", root.join("root-link")).expect("ln");

        let real_root = root.canonicalize().expect("canon");
        assert_eq!(
            resolve_file_beneath(&root, Path::new("d/f")),
            Ok(real_root.join("d/f"))
        );
        assert_eq!(
            resolve_file_beneath(&root, Path::new("inside-link")),
            Ok(real_root.join("d/f"))
        );
        for p in ["out-link", "root-link/etc/passwd"] {
            assert!(
                matches!(
                    resolve_beneath(&root, Path::new(p)),
                    Err(PathError::Escapes { .. })
                ),
                "{p}"
            );
        }
        assert!(matches!(
            resolve_beneath(&root, Path::new("nope")),
            Err(PathError::Missing { .. })
        ));
        assert!(matches!(
            resolve_file_beneath(&root, Path::new("d")),
            Err(PathError::NotAFile { .. })
        ));
        assert!(matches!(
            resolve_beneath(&root, Path::new("../outside")),
            Err(PathError::Parent { .. })
        ));
    }

    #[test]
    fn plain_names() {
        for ok in ["minimal", "f40-cloud_1.2", "0b9c0c3e-1d7a"] {
            assert_eq!(plain_name(ok), Ok(ok));
        }
        let long = "a".repeat(129);
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "ü", long.as_str()] {
            assert!(plain_name(bad).is_err(), "{bad:?}");
        }
    }
}
