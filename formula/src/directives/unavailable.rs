//! Directives that need outside services (Koji, Bodhi, dist-git, …): validated at load time, and a
//! clear error if a formula actually runs one where the service is not available.

use super::{Directive, Params, Run, Spec, StepError, Ty, NONE};

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
    run: Run::NotHere {
        needs: "a Koji build system",
    },
};

pub(super) const BODHI: Directive = Directive {
    name: "bodhi",
    params: Params::Spec(Spec {
        required: &[("action", Ty::Str), ("bodhi_id", Ty::Str)],
        optional: &[
            ("arch", Ty::StrOrList),
            ("src", Ty::Bool),
            ("target_dir", Ty::Str),
        ],
        one_of: &[],
        choices: &[("action", &["download"])],
        extra_allowed: false,
    }),
    run: Run::NotHere {
        needs: "a Bodhi update service",
    },
};

pub(super) const DISTGIT: Directive = Directive {
    name: "distgit",
    params: Params::Spec(Spec {
        required: &[("action", Ty::Str), ("package", Ty::Str)],
        optional: &[
            ("path", Ty::StrOrList),
            ("gitref", Ty::Str),
            ("namespace", Ty::Str),
            ("baseurl", Ty::Str),
            ("target_dir", Ty::Str),
            ("ignore_missing", Ty::Bool),
        ],
        one_of: &[],
        choices: &[("action", &["download"])],
        extra_allowed: false,
    }),
    run: Run::NotHere {
        needs: "a dist-git server",
    },
};

pub(super) const CREATEREPO: Directive = Directive {
    name: "createrepo",
    params: Params::Spec(Spec {
        required: &[("repodir", Ty::Str)],
        optional: NONE,
        one_of: &[],
        choices: &[],
        extra_allowed: false,
    }),
    run: Run::NotHere {
        needs: "the createrepo_c tool and downloaded packages",
    },
};

pub(super) const MASH: Directive = Directive {
    name: "mash",
    params: Params::Spec(Spec {
        required: &[("rpmdir", Ty::Str)],
        optional: &[
            ("arch", Ty::StrOrList),
            ("outdir", Ty::Str),
            ("dodelta", Ty::Bool),
        ],
        one_of: &[],
        choices: &[],
        extra_allowed: false,
    }),
    run: Run::NotHere {
        needs: "the mash tool and downloaded packages",
    },
};

pub(super) const YUMREPOINFO: Directive = Directive {
    name: "yumrepoinfo",
    params: Params::Spec(Spec {
        required: &[("koji_tag", Ty::Str)],
        optional: &[("arch", Ty::StrOrList)],
        one_of: &[],
        choices: &[],
        extra_allowed: false,
    }),
    run: Run::NotHere {
        needs: "a Koji build system",
    },
};

pub(super) const CREATE_REPORT: Directive = Directive {
    name: "create_report",
    params: Params::Spec(Spec {
        required: NONE,
        optional: &[
            ("results", Ty::Any),
            ("template", Ty::Str),
            ("path", Ty::Str),
        ],
        one_of: &[],
        choices: &[],
        extra_allowed: false,
    }),
    run: Run::NotHere {
        needs: "support that this runner does not have yet",
    },
};

/// The error a step gets when it runs a directive this runner cannot run.
pub(super) fn error(directive: &str, needs: &str) -> StepError {
    StepError::msg(format!(
        "directive `{directive}` is not available here: it needs {needs}, and this runner has no network services configured"
    ))
}
