//! The directives a step can use: their parameter shapes (checked at load and again after
//! substitution) and their implementations, one module each.

mod createrepo;
mod dummy;
mod exitcode;
mod process;
mod python;
mod resultsdb;
mod shell;
mod sources;
mod unavailable;
mod xunit;

use crate::subst;
use crate::yaml::{Kind, Mark, Node};

pub(crate) use crate::context::StepContext;

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

/// A parameter's expected type.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Str,
    StrOrList,
    Bool,
    Any,
}

/// A directive's parameter shape, checked by [`validate`].
pub(crate) struct Spec {
    pub required: &'static [(&'static str, Ty)],
    pub optional: &'static [(&'static str, Ty)],
    /// Exactly one of these keys must be present.
    pub one_of: &'static [&'static str],
    /// Keys whose string value must be one of a fixed set.
    pub choices: &'static [(&'static str, &'static [&'static str])],
    /// Keys not listed are passed through (python's keyword arguments).
    pub extra_allowed: bool,
}

pub(crate) const NONE: &[(&str, Ty)] = &[];

/// How a directive's parameters are checked.
pub(crate) enum Params {
    /// A mapping of known keys.
    Spec(Spec),
    /// Its own shape (`shell` takes a list).
    Custom(fn(&Node, &str) -> Result<(), ParamError>),
}

/// What a directive does when a step runs it.
pub(crate) enum Run {
    Here(fn(&Node, &mut StepContext<'_>) -> Result<serde_json::Value, StepError>),
    /// Validated, but this runner cannot run it; the text says what it needs.
    NotHere {
        needs: &'static str,
    },
}

/// One directive: its name, its parameters, what running it does. Adding a directive is one
/// module with one of these, and one line in [`REGISTRY`].
pub(crate) struct Directive {
    pub name: &'static str,
    pub params: Params,
    pub run: Run,
}

/// Every directive the runner knows, in the order error messages list them.
static REGISTRY: &[Directive] = &[
    shell::DIRECTIVE,
    python::DIRECTIVE,
    resultsdb::DIRECTIVE,
    exitcode::DIRECTIVE,
    xunit::DIRECTIVE,
    dummy::DIRECTIVE,
    sources::KOJI,
    sources::BODHI,
    sources::DISTGIT,
    createrepo::DIRECTIVE,
    unavailable::MASH,
    unavailable::YUMREPOINFO,
    unavailable::CREATE_REPORT,
];

fn lookup(name: &str) -> Option<&'static Directive> {
    REGISTRY.iter().find(|d| d.name == name)
}

/// Every directive name the runner knows, in the order error messages list them.
pub fn directive_names() -> Vec<&'static str> {
    REGISTRY.iter().map(|d| d.name).collect()
}

/// Whether `name` is a known directive.
pub fn is_directive(name: &str) -> bool {
    lookup(name).is_some()
}

/// Checks a directive's parameters. Called on the formula as written (a parameter that is exactly
/// one `${var}` may stand for any type then) and again after substitution.
pub fn validate(directive: &str, params: &Node, field: &str) -> Result<(), ParamError> {
    let Some(d) = lookup(directive) else {
        return Err(ParamError::new(
            params.mark,
            field,
            format!("unknown directive `{directive}`"),
        ));
    };
    let spec = match &d.params {
        Params::Custom(check) => return check(params, field),
        Params::Spec(spec) => spec,
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
    match lookup(directive).map(|d| &d.run) {
        Some(Run::Here(run)) => run(params, ctx),
        Some(Run::NotHere { needs }) => Err(unavailable::error(directive, needs)),
        // Validation refuses unknown names before anything runs; this is the backstop.
        None => Err(StepError::msg(format!("unknown directive `{directive}`"))),
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

    #[test]
    fn registry_names_are_unique_and_every_known_name_runs_or_says_why_not() {
        let names = directive_names();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "duplicate names: {names:?}");
        assert!(is_directive("koji") && !is_directive("kojii"));
        let e = validate("kojii", &parse("{}\n").unwrap(), "p").unwrap_err();
        assert_eq!(e.message, "unknown directive `kojii`");
    }

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
