//! The directives a step can use: their parameter shapes (checked at load and again after
//! substitution) and their implementations, one module each.

mod dummy;
mod exitcode;
mod process;
mod python;
mod resultsdb;
mod shell;
mod unavailable;
mod xunit;

use crate::subst;
use crate::yaml::{Kind, Mark, Node};

pub(crate) use crate::runner::StepContext;

/// Every directive name the runner knows, in the order error messages list them.
pub const DIRECTIVES: &[&str] = &[
    "shell",
    "python",
    "resultsdb",
    "exitcode",
    "xunit",
    "dummy",
    "koji",
    "bodhi",
    "distgit",
    "createrepo",
    "mash",
    "yumrepoinfo",
    "create_report",
];

/// A parameter problem; the caller adds the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    pub mark: Mark,
    pub field: String,
    pub message: String,
}

impl ParamError {
    pub fn new(mark: Mark, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            mark,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What a step failure says; `field`/`mark` point into the formula when the failure is about a
/// parameter, otherwise at the step.
#[derive(Debug, Clone)]
pub struct StepError {
    pub mark: Option<Mark>,
    pub field: Option<String>,
    pub message: String,
}

impl StepError {
    pub fn msg(message: impl Into<String>) -> Self {
        Self {
            mark: None,
            field: None,
            message: message.into(),
        }
    }
}

impl From<ParamError> for StepError {
    fn from(e: ParamError) -> Self {
        Self {
            mark: Some(e.mark),
            field: Some(e.field),
            message: e.message,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ty {
    Str,
    StrOrList,
    Bool,
    Any,
}

struct Spec {
    required: &'static [(&'static str, Ty)],
    optional: &'static [(&'static str, Ty)],
    /// Exactly one of these keys must be present.
    one_of: &'static [&'static str],
    /// Keys whose string value must be one of a fixed set.
    choices: &'static [(&'static str, &'static [&'static str])],
    /// Keys not listed are passed through (python's keyword arguments).
    extra_allowed: bool,
}

const NONE: &[(&str, Ty)] = &[];

fn spec(directive: &str) -> Option<Spec> {
    use Ty::*;
    let s = match directive {
        "python" => Spec {
            required: &[("file", Str), ("callable", Str)],
            optional: NONE,
            one_of: &[],
            choices: &[],
            extra_allowed: true,
        },
        "resultsdb" => Spec {
            required: NONE,
            optional: &[("results", Any), ("file", Str)],
            one_of: &["results", "file"],
            choices: &[],
            extra_allowed: false,
        },
        "exitcode" => Spec {
            required: NONE,
            optional: &[("result_last", Any), ("result_worst", Any)],
            one_of: &["result_last", "result_worst"],
            choices: &[],
            extra_allowed: false,
        },
        "xunit" => Spec {
            required: &[
                ("item", Str),
                ("type", Str),
                ("checkname", Str),
                ("file", Str),
            ],
            optional: &[("aggregation", Str)],
            one_of: &[],
            choices: &[("aggregation", &["allpass", "none"])],
            extra_allowed: false,
        },
        "dummy" => Spec {
            required: &[("result", Str)],
            optional: &[("msg", Str)],
            one_of: &[],
            choices: &[],
            extra_allowed: false,
        },
        "koji" => Spec {
            required: &[("action", Str)],
            optional: &[
                ("koji_build", Str),
                ("koji_tag", Str),
                ("arch", StrOrList),
                ("arch_exclude", StrOrList),
                ("src", Bool),
                ("debuginfo", Bool),
                ("build_log", Bool),
                ("target_dir", Str),
            ],
            one_of: &[],
            choices: &[(
                "action",
                &["download", "download_tag", "download_latest_stable"],
            )],
            extra_allowed: false,
        },
        "bodhi" => Spec {
            required: &[("action", Str), ("bodhi_id", Str)],
            optional: &[("arch", StrOrList), ("src", Bool), ("target_dir", Str)],
            one_of: &[],
            choices: &[("action", &["download"])],
            extra_allowed: false,
        },
        "distgit" => Spec {
            required: &[("action", Str), ("package", Str)],
            optional: &[
                ("path", StrOrList),
                ("gitref", Str),
                ("namespace", Str),
                ("baseurl", Str),
                ("target_dir", Str),
                ("ignore_missing", Bool),
            ],
            one_of: &[],
            choices: &[("action", &["download"])],
            extra_allowed: false,
        },
        "createrepo" => Spec {
            required: &[("repodir", Str)],
            optional: NONE,
            one_of: &[],
            choices: &[],
            extra_allowed: false,
        },
        "mash" => Spec {
            required: &[("rpmdir", Str)],
            optional: &[("arch", StrOrList), ("outdir", Str), ("dodelta", Bool)],
            one_of: &[],
            choices: &[],
            extra_allowed: false,
        },
        "yumrepoinfo" => Spec {
            required: &[("koji_tag", Str)],
            optional: &[("arch", StrOrList)],
            one_of: &[],
            choices: &[],
            extra_allowed: false,
        },
        "create_report" => Spec {
            required: NONE,
            optional: &[("results", Any), ("template", Str), ("path", Str)],
            one_of: &[],
            choices: &[],
            extra_allowed: false,
        },
        _ => return None,
    };
    Some(s)
}

/// Checks a directive's parameters. Called on the formula as written (a parameter that is exactly
/// one `${var}` may stand for any type then) and again after substitution.
pub fn validate(directive: &str, params: &Node, field: &str) -> Result<(), ParamError> {
    if directive == "shell" {
        return shell::validate(params, field);
    }
    let Some(spec) = spec(directive) else {
        return Err(ParamError::new(
            params.mark,
            field,
            format!("unknown directive `{directive}`"),
        ));
    };
    if subst::is_whole_reference(params) {
        return Ok(());
    }
    let entries = params.as_map().ok_or_else(|| {
        ParamError::new(
            params.mark,
            field,
            format!(
                "the parameters of `{directive}` are a mapping, found {}",
                params.type_name()
            ),
        )
    })?;
    for (k, v) in entries {
        let key = k.scalar_text().unwrap_or_default();
        let kf = format!("{field}.{key}");
        let ty = spec
            .required
            .iter()
            .chain(spec.optional)
            .find(|(n, _)| *n == key)
            .map(|(_, t)| *t);
        let ty = match ty {
            Some(t) => t,
            None if spec.extra_allowed => Ty::Any,
            None => {
                let known: Vec<&str> = spec
                    .required
                    .iter()
                    .chain(spec.optional)
                    .map(|(n, _)| *n)
                    .collect();
                return Err(ParamError::new(
                    k.mark,
                    kf,
                    format!(
                        "unknown parameter of `{directive}` (known: {})",
                        known.join(", ")
                    ),
                ));
            }
        };
        check_type(v, ty, &kf)?;
        if let Some((_, allowed)) = spec.choices.iter().find(|(n, _)| *n == key) {
            if let Kind::Str(s) = &v.kind {
                if !subst::is_whole_reference(v) && !allowed.contains(&s.as_str()) {
                    return Err(ParamError::new(
                        v.mark,
                        kf,
                        format!("`{s}` is not one of: {}", allowed.join(", ")),
                    ));
                }
            }
        }
    }
    for (key, ty) in spec.required {
        if params.get(key).is_none() {
            return Err(ParamError::new(
                params.mark,
                format!("{field}.{key}"),
                format!("missing required parameter `{key}` of `{directive}`"),
            ));
        }
        let _ = ty;
    }
    if !spec.one_of.is_empty() {
        let present: Vec<&Node> = spec
            .one_of
            .iter()
            .filter_map(|k| params.entry(k).map(|(k, _)| k))
            .collect();
        match present.len() {
            1 => {}
            0 => {
                return Err(ParamError::new(
                    params.mark,
                    field,
                    format!(
                        "`{directive}` needs exactly one of: {}",
                        spec.one_of.join(", ")
                    ),
                ))
            }
            _ => {
                return Err(ParamError::new(
                    present[1].mark,
                    format!("{field}.{}", present[1].scalar_text().unwrap_or_default()),
                    format!(
                        "`{directive}` takes exactly one of: {}",
                        spec.one_of.join(", ")
                    ),
                ))
            }
        }
    }
    Ok(())
}

fn check_type(v: &Node, ty: Ty, field: &str) -> Result<(), ParamError> {
    if subst::is_whole_reference(v) {
        return Ok(());
    }
    let ok = match ty {
        Ty::Any => true,
        Ty::Str => matches!(v.kind, Kind::Str(_) | Kind::Int(_) | Kind::Float(_)),
        Ty::StrOrList => match &v.kind {
            Kind::Str(_) => true,
            Kind::Seq(items) => items
                .iter()
                .all(|i| matches!(i.kind, Kind::Str(_) | Kind::Int(_))),
            _ => false,
        },
        Ty::Bool => matches!(v.kind, Kind::Bool(_)),
    };
    if ok {
        return Ok(());
    }
    let want = match ty {
        Ty::Str => "a string",
        Ty::StrOrList => "a string or a list of strings",
        Ty::Bool => "true or false",
        Ty::Any => "any value",
    };
    Err(ParamError::new(
        v.mark,
        field,
        format!("must be {want}, found {}", v.type_name()),
    ))
}

/// Runs one step's directive with substituted parameters; its value is what `export` keeps.
pub(crate) fn execute(
    directive: &str,
    params: &Node,
    ctx: &mut StepContext<'_>,
) -> Result<serde_json::Value, StepError> {
    match directive {
        "shell" => shell::run(params, ctx),
        "python" => python::run(params, ctx),
        "resultsdb" => resultsdb::run(params, ctx),
        "exitcode" => exitcode::run(params, ctx),
        "xunit" => xunit::run(params, ctx),
        "dummy" => dummy::run(params, ctx),
        other => unavailable::run(other),
    }
}

/// A string parameter's text (validated to exist and be a scalar beforehand).
pub(crate) fn str_param(params: &Node, key: &str) -> Option<String> {
    params.get(key).and_then(Node::scalar_text)
}

/// A parameter that carries ResultYAML: text, or the structure a python callable returned.
pub(crate) fn results_text(node: &Node) -> Result<String, StepError> {
    match &node.kind {
        Kind::Str(s) => Ok(s.clone()),
        Kind::Map(_) => serde_yaml::to_string(&node.to_json())
            .map_err(|e| StepError::msg(format!("cannot render results: {e}"))),
        _ => Err(StepError::msg(format!(
            "expected ResultYAML text, found {}",
            node.type_name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse;

    fn check(directive: &str, yaml: &str) -> Result<(), ParamError> {
        validate(directive, &parse(yaml).unwrap(), "p")
    }

    #[test]
    fn required_parameters_are_named() {
        let e = check("python", "file: a.py\n").unwrap_err();
        assert_eq!(e.field, "p.callable");
        assert!(e.message.contains("missing required parameter `callable`"));
    }

    #[test]
    fn exactly_one_of_results_or_file() {
        assert!(check("resultsdb", "results: x\n").is_ok());
        assert!(check("resultsdb", "{}\n")
            .unwrap_err()
            .message
            .contains("exactly one of"));
        let e = check("resultsdb", "results: x\nfile: y\n").unwrap_err();
        assert_eq!((e.field.as_str(), e.mark.line), ("p.file", 2));
    }

    #[test]
    fn types_and_choices_are_checked() {
        assert!(check("koji", "action: download\nsrc: 'yes'\n")
            .unwrap_err()
            .message
            .contains("true or false"));
        assert!(check("koji", "action: upload\n")
            .unwrap_err()
            .message
            .contains("not one of"));
        assert!(check(
            "xunit",
            "item: a\ntype: b\ncheckname: c\nfile: d\naggregation: some\n"
        )
        .is_err());
        assert!(check("mash", "rpmdir: x\narch: [x86_64, i686]\n").is_ok());
    }

    #[test]
    fn a_whole_variable_may_stand_for_any_type() {
        assert!(check("koji", "action: download\nsrc: ${want_src}\n").is_ok());
        assert!(check("exitcode", "result_worst: ${out}\n").is_ok());
    }

    #[test]
    fn unknown_parameters_are_refused_except_for_python() {
        assert!(check("dummy", "result: PASSED\ncolour: red\n")
            .unwrap_err()
            .message
            .contains("unknown parameter"));
        assert!(check("python", "file: a.py\ncallable: run\nanything: [1]\n").is_ok());
    }
}
