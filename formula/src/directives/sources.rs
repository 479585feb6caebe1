//! `koji`, `bodhi`, `distgit`: the item and its files, fetched by the run's [`Fetcher`] (on the
//! host: the configured services; in a VM: the host, over the guest channel) into `target_dir`
//! (default `${workdir}`). Each returns the original's dict: `{downloaded_rpms: [paths]}` (and
//! `downloaded_logs` with `build_log`), or `{downloaded_files: [paths]}` for dist-git.

use std::path::PathBuf;

use super::{str_param, Directive, Params, Run, Spec, StepContext, StepError, Ty};
use crate::fetch::{FetchRequest, FetchedKind, RpmFilter};
use crate::yaml::{Kind, Node};

pub(super) const KOJI: Directive = Directive {
    name: "koji",
    params: Params::Spec(Spec {
        required: &[("action", Ty::Str)],
        optional: &[
            ("koji_build", Ty::Str),
            ("koji_tag", Ty::Str),
            ("arch", Ty::StrOrList),
            ("arch_exclude", Ty::StrOrList),
            ("src", Ty::Bool),
            ("debuginfo", Ty::Bool),
            ("build_log", Ty::Bool),
            ("target_dir", Ty::Str),
        ],
        one_of: &[],
        choices: &[(
            "action",
            &["download", "download_tag", "download_latest_stable"],
        )],
        extra_allowed: false,
    }),
    run: Run::Here(koji),
};

pub(super) const BODHI: Directive = Directive {
    name: "bodhi",
    params: Params::Spec(Spec {
        required: &[("action", Ty::Str), ("bodhi_id", Ty::Str)],
        optional: &[
            ("arch", Ty::StrOrList),
            ("arch_exclude", Ty::StrOrList),
            ("src", Ty::Bool),
            ("debuginfo", Ty::Bool),
            ("target_dir", Ty::Str),
        ],
        one_of: &[],
        choices: &[("action", &["download"])],
        extra_allowed: false,
    }),
    run: Run::Here(bodhi),
};

pub(super) const DISTGIT: Directive = Directive {
    name: "distgit",
    params: Params::Spec(Spec {
        required: &[("action", Ty::Str), ("package", Ty::Str)],
        optional: &[
            ("path", Ty::StrOrList),
            ("gitref", Ty::Str),
            ("namespace", Ty::Str),
            ("target_dir", Ty::Str),
            ("ignore_missing", Ty::Bool),
        ],
        one_of: &[],
        choices: &[("action", &["download"])],
        extra_allowed: false,
    }),
    run: Run::Here(distgit),
};

/// dist-git's default branch when a step names none (Fedora's main branch).
const DEFAULT_GITREF: &str = "rawhide";

fn koji(params: &Node, ctx: &mut StepContext<'_>) -> Result<serde_json::Value, StepError> {
    let action = str_param(params, "action").unwrap_or_default();
    let rpms = filter(params);
    let request = match action.as_str() {
        "download" => FetchRequest::KojiBuild {
            nvr: required(params, "koji_build", &action, ctx)?,
            rpms,
        },
        "download_latest_stable" => FetchRequest::KojiLatestStable {
            nvr: required(params, "koji_build", &action, ctx)?,
            rpms,
        },
        _ => FetchRequest::KojiTag {
            tag: required(params, "koji_tag", &action, ctx)?,
            rpms,
        },
    };
    fetch(params, ctx, "koji", &request)
}

fn bodhi(params: &Node, ctx: &mut StepContext<'_>) -> Result<serde_json::Value, StepError> {
    let request = FetchRequest::BodhiUpdate {
        id: str_param(params, "bodhi_id").unwrap_or_default(),
        rpms: filter(params),
    };
    fetch(params, ctx, "bodhi", &request)
}

fn distgit(params: &Node, ctx: &mut StepContext<'_>) -> Result<serde_json::Value, StepError> {
    let package = str_param(params, "package").unwrap_or_default();
    let mut paths = list(params, "path");
    if paths.is_empty() {
        paths.push(format!("{package}.spec"));
    }
    let request = FetchRequest::DistGit {
        namespace: str_param(params, "namespace").unwrap_or_else(|| "rpms".into()),
        gitref: str_param(params, "gitref").unwrap_or_else(|| DEFAULT_GITREF.into()),
        package,
        paths,
        ignore_missing: bool_param(params, "ignore_missing"),
    };
    fetch(params, ctx, "distgit", &request)
}

/// Runs the fetch into the step's target dir and builds the returned dict.
fn fetch(
    params: &Node,
    ctx: &mut StepContext<'_>,
    directive: &str,
    request: &FetchRequest,
) -> Result<serde_json::Value, StepError> {
    request.check().map_err(|e| StepError {
        mark: Some(params.mark),
        field: Some(ctx.action.field()),
        message: e,
    })?;
    let Some(fetcher) = ctx.config.fetcher.clone() else {
        return Err(StepError::msg(format!(
            "directive `{directive}` is not available here: nothing is configured to fetch {} \
             (miniond: [koji], [bodhi], [distgit] in its config; minion runtask: --koji-hub and \
             --koji-packages, --bodhi-url, --distgit-url, or a --sources file)",
            request.describe()
        )));
    };
    let target = target_dir(params, ctx);
    std::fs::create_dir_all(&target)
        .map_err(|e| StepError::msg(format!("cannot create {}: {e}", target.display())))?;
    ctx.say(&format!("{directive}: fetching {}", request.describe()));
    let started = std::time::Instant::now();
    let files = fetcher
        .fetch(request, &target)
        .map_err(|e| StepError::msg(format!("{directive}: {}: {e}", request.describe())))?;
    let mut value = serde_json::Map::new();
    let keys: &[FetchedKind] = match request.rpm_filter() {
        None => &[FetchedKind::File],
        Some(rpms) if rpms.build_log => &[FetchedKind::Rpm, FetchedKind::Log],
        Some(_) => &[FetchedKind::Rpm],
    };
    for kind in keys {
        let paths: Vec<serde_json::Value> = files
            .iter()
            .filter(|f| f.kind == *kind)
            .map(|f| f.path.to_string_lossy().into_owned().into())
            .collect();
        value.insert(kind.key().into(), paths.into());
    }
    ctx.say(&format!(
        "{directive}: {} file(s) in {} ({:.2}s)",
        files.len(),
        target.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(serde_json::Value::Object(value))
}

fn target_dir(params: &Node, ctx: &StepContext<'_>) -> PathBuf {
    match str_param(params, "target_dir") {
        Some(dir) => ctx.resolve(&dir),
        None => ctx.config.workdir.clone(),
    }
}

fn required(
    params: &Node,
    key: &str,
    action: &str,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    str_param(params, key)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| StepError {
            mark: Some(params.mark),
            field: Some(format!("{}.{key}", ctx.action.field())),
            message: format!("`action: {action}` needs `{key}`"),
        })
}

fn filter(params: &Node) -> RpmFilter {
    let mut arches = list(params, "arch");
    // `all` (alone or in the list) means every arch, as in the original.
    if arches.iter().any(|a| a == "all") {
        arches.clear();
    }
    RpmFilter {
        arches,
        exclude: list(params, "arch_exclude"),
        src: bool_param(params, "src"),
        debuginfo: bool_param(params, "debuginfo"),
        build_log: bool_param(params, "build_log"),
    }
}

fn list(params: &Node, key: &str) -> Vec<String> {
    match params.get(key).map(|n| &n.kind) {
        Some(Kind::Seq(items)) => items.iter().filter_map(Node::scalar_text).collect(),
        Some(_) => str_param(params, key).into_iter().collect(),
        None => Vec::new(),
    }
}

fn bool_param(params: &Node, key: &str) -> bool {
    matches!(params.get(key).map(|n| &n.kind), Some(Kind::Bool(true)))
}
