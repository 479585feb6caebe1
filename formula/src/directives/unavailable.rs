//! Directives this runner does not run (`mash`, `yumrepoinfo`, `create_report`): validated at load
//! time, and a clear error naming what they would need if a formula runs one.

use super::{Directive, Params, Run, Spec, StepError, Ty, NONE};

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
        needs: "the mash tool, which Fedora retired (a `createrepo` step makes a repository of downloaded RPMs)",
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
        needs: "the Fedora release metadata of yumrepoinfo.conf, which Minion does not carry",
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
        needs: "the HTML report templates of libtaskotron, which Minion does not carry (the results are in results.yaml and results.tap)",
    },
};

/// The error a step gets when it runs a directive this runner cannot run.
pub(super) fn error(directive: &str, needs: &str) -> StepError {
    StepError::msg(format!(
        "directive `{directive}` is not available in Minion: it needs {needs}"
    ))
}
