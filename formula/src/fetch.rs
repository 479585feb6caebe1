//! What a formula may ask to have fetched (a Koji build, a Bodhi update, files from dist-git),
//! and the seam that does it. The runner never opens a URL itself: on the host a [`Fetcher`] talks
//! to the configured services; in a VM the agent's fetcher asks the host over the guest channel.
//! A request names things (an NVR, an update id, a package), never a URL, so whoever answers it
//! decides where to go; [`FetchRequest::check`] bounds every field before anyone acts on it.

use std::fmt;
use std::path::{Path, PathBuf};

/// Longest NVR, tag, update id, package name, git ref or path accepted.
pub const MAX_NAME: usize = 255;
/// Most arches or dist-git paths in one request.
pub const MAX_LIST: usize = 64;

/// The file name of a pool's package index, as the host sends it (apt's name in a flat repo).
pub const PACKAGE_INDEX: &str = "Packages";

/// One fetch a step asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchRequest {
    /// `koji: {action: download}`: the RPMs of one build.
    KojiBuild { nvr: String, rpms: RpmFilter },
    /// `koji: {action: download_tag}`: the RPMs of the latest builds in a tag.
    KojiTag { tag: String, rpms: RpmFilter },
    /// `koji: {action: download_latest_stable}`: the RPMs of the newest build of the same package
    /// in the release's stable tags (`fNN-updates`, then `fNN`); none is not an error.
    KojiLatestStable { nvr: String, rpms: RpmFilter },
    /// `bodhi: {action: download}`: the RPMs of every build in an update.
    BodhiUpdate { id: String, rpms: RpmFilter },
    /// `distgit: {action: download}`: files of a package's dist-git repository.
    DistGit {
        namespace: String,
        package: String,
        gitref: String,
        paths: Vec<String>,
        ignore_missing: bool,
    },
    /// The pool's package index (a Debian `Packages` file), for the formula's `environment`.
    PackageIndex,
    /// Files of the pool's package source, by the names its index gives (`Filename`).
    Packages { files: Vec<String> },
}

/// Which RPMs of a build are wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpmFilter {
    /// Empty = every arch (`arch: all`); otherwise these plus `noarch` (and `src` with `src`).
    pub arches: Vec<String>,
    /// Arches never wanted (`arch_exclude`).
    pub exclude: Vec<String>,
    pub src: bool,
    pub debuginfo: bool,
    /// Also the build's logs (`build_log: true`).
    pub build_log: bool,
}

impl RpmFilter {
    /// Whether an RPM with this name and arch is wanted.
    pub fn wants(&self, name: &str, arch: &str) -> bool {
        let debug = name.ends_with("-debuginfo") || name.ends_with("-debugsource");
        if (debug && !self.debuginfo) || self.exclude.iter().any(|x| x == arch) {
            return false;
        }
        match arch {
            "src" => self.src,
            _ if self.arches.is_empty() => true,
            "noarch" => true,
            a => self.arches.iter().any(|x| x == a),
        }
    }
}

/// What a fetched file is, which decides the key of the step's returned dict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchedKind {
    Rpm,
    Log,
    File,
}

impl FetchedKind {
    /// The key the original's directives returned these files under.
    pub fn key(self) -> &'static str {
        match self {
            FetchedKind::Rpm => "downloaded_rpms",
            FetchedKind::Log => "downloaded_logs",
            FetchedKind::File => "downloaded_files",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FetchedKind::Rpm => "rpm",
            FetchedKind::Log => "log",
            FetchedKind::File => "file",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "rpm" => Some(FetchedKind::Rpm),
            "log" => Some(FetchedKind::Log),
            "file" => Some(FetchedKind::File),
            _ => None,
        }
    }
}

/// One file a fetch placed in the step's target directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub path: PathBuf,
    pub kind: FetchedKind,
}

/// Does fetches for a run. Blocking; called from the step that needs the files.
pub trait Fetcher: Send + Sync {
    /// Fetches what `request` names into `target_dir` (which exists). The error says what was
    /// asked and why it failed; the step adds which step it was.
    fn fetch(&self, request: &FetchRequest, target_dir: &Path) -> Result<Vec<Fetched>, String>;
}

impl fmt::Debug for dyn Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fetcher")
    }
}

impl FetchRequest {
    /// The RPM filter of a request for RPMs (every kind but dist-git files).
    pub fn rpm_filter(&self) -> Option<&RpmFilter> {
        match self {
            FetchRequest::KojiBuild { rpms, .. }
            | FetchRequest::KojiTag { rpms, .. }
            | FetchRequest::KojiLatestStable { rpms, .. }
            | FetchRequest::BodhiUpdate { rpms, .. } => Some(rpms),
            FetchRequest::DistGit { .. }
            | FetchRequest::PackageIndex
            | FetchRequest::Packages { .. } => None,
        }
    }

    /// Whether a pool's package source answers this (not Koji, Bodhi or dist-git).
    pub fn is_package_request(&self) -> bool {
        matches!(
            self,
            FetchRequest::PackageIndex | FetchRequest::Packages { .. }
        )
    }

    /// What is asked, in words (error messages and logs).
    pub fn describe(&self) -> String {
        match self {
            FetchRequest::KojiBuild { nvr, .. } => format!("Koji build {nvr}"),
            FetchRequest::KojiTag { tag, .. } => format!("Koji tag {tag}"),
            FetchRequest::KojiLatestStable { nvr, .. } => {
                format!("the latest stable build of {nvr}'s package")
            }
            FetchRequest::BodhiUpdate { id, .. } => format!("Bodhi update {id}"),
            FetchRequest::DistGit {
                namespace,
                package,
                gitref,
                ..
            } => format!("dist-git {namespace}/{package} at {gitref}"),
            FetchRequest::PackageIndex => "the pool's package index".into(),
            FetchRequest::Packages { files } => match files.as_slice() {
                [one] => format!("package file {one}"),
                _ => format!("{} package files", files.len()),
            },
        }
    }

    /// Checks every field: names are plain (no `/` or `..`, printable ASCII, bounded), lists are
    /// bounded, dist-git paths are relative and stay inside the repository. Both ends call it: the
    /// host before it acts on a guest's request.
    pub fn check(&self) -> Result<(), String> {
        match self {
            FetchRequest::KojiBuild { nvr, rpms }
            | FetchRequest::KojiLatestStable { nvr, rpms } => {
                check_nvr(nvr)?;
                check_filter(rpms)
            }
            FetchRequest::KojiTag { tag, rpms } => {
                check_name("koji_tag", tag)?;
                check_filter(rpms)
            }
            FetchRequest::BodhiUpdate { id, rpms } => {
                check_name("bodhi_id", id)?;
                check_filter(rpms)
            }
            FetchRequest::DistGit {
                namespace,
                package,
                gitref,
                paths,
                ..
            } => {
                check_name("namespace", namespace)?;
                check_name("package", package)?;
                check_name("gitref", gitref)?;
                if paths.is_empty() || paths.len() > MAX_LIST {
                    return Err(format!("path: between 1 and {MAX_LIST} paths"));
                }
                for p in paths {
                    check_repo_path(p)?;
                }
                Ok(())
            }
            FetchRequest::PackageIndex => Ok(()),
            FetchRequest::Packages { files } => {
                if files.is_empty() || files.len() > MAX_LIST {
                    return Err(format!("files: between 1 and {MAX_LIST} package files"));
                }
                files.iter().try_for_each(|f| check_name("file", f))
            }
        }
    }
}

/// A plain name: printable ASCII without `/`, `\`, whitespace or a leading `.`/`-`.
pub fn check_name(field: &str, s: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._+~^-:".contains(c);
    if s.is_empty() || s.len() > MAX_NAME {
        return Err(format!("{field}: must be 1 to {MAX_NAME} characters"));
    }
    if s.starts_with('.') || s.starts_with('-') || !s.chars().all(ok_char) {
        return Err(format!(
            "{field}: `{}` is not a plain name (letters, digits and ._+~^-: only)",
            s.escape_debug()
        ));
    }
    Ok(())
}

/// An NVR: a plain name with a version and a release (`name-version-release`).
pub fn check_nvr(nvr: &str) -> Result<(), String> {
    check_name("koji_build", nvr)?;
    split_nvr(nvr)
        .map(|_| ())
        .ok_or_else(|| format!("koji_build: `{nvr}` is not an NVR (name-version-release)"))
}

/// `foo-bar-1.2-3.fc40` → (`foo-bar`, `1.2`, `3.fc40`).
pub fn split_nvr(nvr: &str) -> Option<(&str, &str, &str)> {
    let (rest, release) = nvr.rsplit_once('-')?;
    let (name, version) = rest.rsplit_once('-')?;
    (!name.is_empty() && !version.is_empty() && !release.is_empty())
        .then_some((name, version, release))
}

fn check_filter(f: &RpmFilter) -> Result<(), String> {
    if f.arches.len() > MAX_LIST || f.exclude.len() > MAX_LIST {
        return Err(format!("arch: at most {MAX_LIST} arches"));
    }
    for a in f.arches.iter().chain(&f.exclude) {
        check_name("arch", a)?;
    }
    Ok(())
}

fn check_repo_path(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > MAX_NAME {
        return Err(format!("path: must be 1 to {MAX_NAME} characters"));
    }
    let plain = p
        .split('/')
        .all(|part| check_name("path", part).is_ok() && part != "..");
    if !plain {
        return Err(format!(
            "path: `{}` must be a relative path of plain names inside the repository",
            p.escape_debug()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> RpmFilter {
        RpmFilter {
            arches: vec![],
            exclude: vec![],
            src: false,
            debuginfo: false,
            build_log: false,
        }
    }

    #[test]
    fn the_filter_follows_the_original() {
        let mut f = all();
        assert!(f.wants("foo", "x86_64") && f.wants("foo", "noarch"));
        assert!(!f.wants("foo", "src") && !f.wants("foo-debuginfo", "x86_64"));
        f.arches = vec!["x86_64".into()];
        f.src = true;
        f.debuginfo = true;
        assert!(f.wants("foo", "noarch") && f.wants("foo", "src"));
        assert!(f.wants("foo-debugsource", "x86_64"));
        assert!(!f.wants("foo", "aarch64"));
        f.exclude = vec!["noarch".into()];
        assert!(!f.wants("foo", "noarch"));
    }

    #[test]
    fn requests_name_things_and_never_escape() {
        let koji = |nvr: &str| FetchRequest::KojiBuild {
            nvr: nvr.into(),
            rpms: all(),
        };
        assert!(koji("python-foo-1.2-3.fc40").check().is_ok());
        assert!(koji("foo-1.0^git1-1.fc40~rc1").check().is_ok());
        for bad in [
            "",
            "foo",
            "../../etc-1-1",
            "http://evil/x-1-1",
            "foo-1-1\n",
            "a/b-1-1",
            "-rf-1-1",
            &"x".repeat(300),
        ] {
            assert!(koji(bad).check().is_err(), "{bad:?}");
        }
        let git = |paths: &[&str]| FetchRequest::DistGit {
            namespace: "rpms".into(),
            package: "foo".into(),
            gitref: "rawhide".into(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
            ignore_missing: false,
        };
        assert!(git(&["foo.spec", "tests/tests.yml"]).check().is_ok());
        for bad in [&["../x"][..], &["/etc/passwd"], &["a//b"], &["a/../b"], &[]] {
            assert!(git(bad).check().is_err(), "{bad:?}");
        }
        let pkgs = |files: &[&str]| FetchRequest::Packages {
            files: files.iter().map(|s| s.to_string()).collect(),
        };
        assert!(pkgs(&["rpmlint_2.4.0-1_all.deb"]).check().is_ok());
        for bad in [&["../x.deb"][..], &["a/b.deb"], &["/etc/shadow"], &[]] {
            assert!(pkgs(bad).check().is_err(), "{bad:?}");
        }
        assert!(pkgs(&vec!["a.deb"; MAX_LIST + 1]).check().is_err());
        assert_eq!(
            split_nvr("foo-bar-1.2-3.fc40"),
            Some(("foo-bar", "1.2", "3.fc40"))
        );
    }
}
