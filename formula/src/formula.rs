//! The formula file: reading it, and validating its shape before anything runs.

use std::path::{Path, PathBuf};

use crate::directives::{self, directive_names, is_directive};
use crate::error::FormulaError;
use crate::yaml::{self, Kind, Mark, Node};

/// File names a task directory's formula may have, in the order they are looked for.
pub const FORMULA_NAMES: &[&str] = &["runtask.yml", "runtask.yaml", "task.yml", "task.yaml"];

const TOP_LEVEL_KEYS: &[&str] = &[
    "name",
    "namespace",
    "desc",
    "maintainer",
    "input",
    "environment",
    "scheduling",
    "actions",
    "task",
];

/// A parsed and validated formula. Parameters keep their YAML positions so errors found while
/// running (an unknown variable, a wrong type after substitution) still name line and column.
#[derive(Debug, Clone)]
pub struct Formula {
    pub path: PathBuf,
    pub name: String,
    pub namespace: Option<String>,
    pub desc: Option<String>,
    pub maintainer: Vec<String>,
    pub input_args: Vec<String>,
    /// `environment.rpm`: packages the runner should install first.
    pub environment_rpms: Vec<String>,
    /// `scheduling.run` (default true).
    pub scheduled: bool,
    pub actions: Vec<Action>,
    input_marks: Vec<Mark>,
}

/// One step of `actions`.
#[derive(Debug, Clone)]
pub struct Action {
    pub index: usize,
    pub name: Option<String>,
    pub directive: String,
    pub params: Node,
    pub export: Option<String>,
    pub mark: Mark,
}

impl Action {
    /// `actions[3].shell`: the field path used in errors.
    pub fn field(&self) -> String {
        format!("actions[{}].{}", self.index, self.directive)
    }

    /// A name for logs: the step's own, or its directive.
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("{} #{}", self.directive, self.index),
        }
    }
}

impl Formula {
    /// The directory the formula lives in: `python` files and relative paths resolve against it.
    pub fn taskdir(&self) -> &Path {
        self.path.parent().unwrap_or_else(|| Path::new("."))
    }

    /// Every `input.args` entry must be supplied; `supplied` says whether a variable is.
    pub fn check_inputs(&self, supplied: impl Fn(&str) -> bool) -> Result<(), FormulaError> {
        for (i, (arg, mark)) in self.input_args.iter().zip(&self.input_marks).enumerate() {
            if !supplied(arg) {
                return Err(FormulaError::new(
                    &self.path,
                    *mark,
                    format!("input.args[{i}]"),
                    format!(
                        "the task needs `{arg}` but the command line did not supply it \
                         (give it with -t {arg} -i ITEM, or --arg {arg}=VALUE)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A task directory means its formula file; a file is itself.
pub fn resolve_formula_path(path: &Path) -> Result<PathBuf, FormulaError> {
    if path.is_dir() {
        FORMULA_NAMES
            .iter()
            .map(|n| path.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                FormulaError::file(
                    path,
                    format!(
                        "no formula in this directory (looked for {})",
                        FORMULA_NAMES.join(", ")
                    ),
                )
            })
    } else if path.exists() {
        Ok(path.to_path_buf())
    } else {
        Err(FormulaError::file(path, "no such file or directory"))
    }
}

/// Reads, parses and validates a formula; nothing runs.
pub fn load_formula(path: &Path) -> Result<Formula, FormulaError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| FormulaError::file(path, format!("cannot read the formula: {e}")))?;
    parse_formula(path, &text)
}

/// Parses and validates formula text; `path` is only used to name the file in errors.
pub fn parse_formula(path: &Path, text: &str) -> Result<Formula, FormulaError> {
    let err = |mark: Mark, field: &str, msg: String| FormulaError::new(path, mark, field, msg);
    let root = yaml::parse(text)
        .map_err(|e| err(e.mark, "(yaml)", format!("invalid YAML: {}", e.message)))?;
    let top = root.as_map().ok_or_else(|| {
        err(
            root.mark,
            "(top level)",
            format!(
                "a formula is a mapping of keys (name, actions, …), found {}",
                root.type_name()
            ),
        )
    })?;
    for (k, _) in top {
        let key = k.scalar_text().unwrap_or_default();
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            return Err(err(
                k.mark,
                &key,
                format!(
                    "unknown top-level key (known: {})",
                    TOP_LEVEL_KEYS.join(", ")
                ),
            ));
        }
    }

    let name = match root.entry("name") {
        None => return Err(err(root.mark, "name", "missing required key `name`".into())),
        Some((_, v)) => string_field(path, v, "name")?,
    };
    if name.trim().is_empty() {
        return Err(err(root.mark, "name", "must not be empty".into()));
    }
    let namespace = optional_string(path, &root, "namespace")?;
    let desc = optional_string(path, &root, "desc")?;
    let maintainer = match root.get("maintainer") {
        None
        | Some(Node {
            kind: Kind::Null, ..
        }) => Vec::new(),
        Some(
            v @ Node {
                kind: Kind::Str(_), ..
            },
        ) => vec![string_field(path, v, "maintainer")?],
        Some(v) => string_list(path, v, "maintainer")?,
    };

    let (input_args, input_marks) = match root.get("input") {
        None
        | Some(Node {
            kind: Kind::Null, ..
        }) => (Vec::new(), Vec::new()),
        Some(input) => {
            expect_map(path, input, "input")?;
            check_keys(path, input, "input", &["args"])?;
            match input.get("args") {
                None
                | Some(Node {
                    kind: Kind::Null, ..
                }) => (Vec::new(), Vec::new()),
                Some(args) => {
                    let items = args.as_seq().ok_or_else(|| {
                        err(
                            args.mark,
                            "input.args",
                            format!("must be a list of names, found {}", args.type_name()),
                        )
                    })?;
                    let mut names = Vec::new();
                    let mut marks = Vec::new();
                    for (i, a) in items.iter().enumerate() {
                        let n = string_field(path, a, &format!("input.args[{i}]"))?;
                        if !is_identifier(&n) {
                            return Err(err(
                                a.mark,
                                &format!("input.args[{i}]"),
                                format!("`{n}` is not a variable name"),
                            ));
                        }
                        names.push(n);
                        marks.push(a.mark);
                    }
                    (names, marks)
                }
            }
        }
    };

    let environment_rpms = match root.get("environment") {
        None
        | Some(Node {
            kind: Kind::Null, ..
        }) => Vec::new(),
        Some(env) => {
            expect_map(path, env, "environment")?;
            match env.get("rpm") {
                None
                | Some(Node {
                    kind: Kind::Null, ..
                }) => Vec::new(),
                Some(r) => {
                    let names = string_list(path, r, "environment.rpm")?;
                    // Package names go to a package manager's command line in the guest.
                    for (i, (name, item)) in
                        names.iter().zip(r.as_seq().unwrap_or_default()).enumerate()
                    {
                        crate::environment::check_package_name(name).map_err(|m| {
                            FormulaError::new(path, item.mark, format!("environment.rpm[{i}]"), m)
                        })?;
                    }
                    if names.len() > crate::environment::MAX_PACKAGES {
                        return Err(FormulaError::new(
                            path,
                            r.mark,
                            "environment.rpm",
                            format!("at most {} packages", crate::environment::MAX_PACKAGES),
                        ));
                    }
                    names
                }
            }
        }
    };

    let scheduled = match root.get("scheduling") {
        None
        | Some(Node {
            kind: Kind::Null, ..
        }) => true,
        Some(s) => {
            expect_map(path, s, "scheduling")?;
            check_keys(path, s, "scheduling", &["run"])?;
            match s.get("run") {
                None => true,
                Some(Node {
                    kind: Kind::Bool(b),
                    ..
                }) => *b,
                Some(v) => {
                    return Err(err(
                        v.mark,
                        "scheduling.run",
                        format!("must be true or false, found {}", v.type_name()),
                    ))
                }
            }
        }
    };

    let actions_node = match (root.entry("actions"), root.entry("task")) {
        (Some(_), Some((k, _))) => {
            return Err(err(
                k.mark,
                "task",
                "`task` is the old name of `actions`: give one of them, not both".into(),
            ))
        }
        (Some((_, v)), None) | (None, Some((_, v))) => v,
        (None, None) => {
            return Err(err(
                root.mark,
                "actions",
                "missing required key `actions` (the list of steps)".into(),
            ))
        }
    };
    let steps = actions_node.as_seq().ok_or_else(|| {
        err(
            actions_node.mark,
            "actions",
            format!(
                "must be a list of steps, found {}",
                actions_node.type_name()
            ),
        )
    })?;
    if steps.is_empty() {
        return Err(err(actions_node.mark, "actions", "has no steps".into()));
    }
    let actions = steps
        .iter()
        .enumerate()
        .map(|(i, s)| parse_action(path, i, s))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Formula {
        path: path.to_path_buf(),
        name,
        namespace,
        desc,
        maintainer,
        input_args,
        environment_rpms,
        scheduled,
        actions,
        input_marks,
    })
}

fn parse_action(path: &Path, index: usize, step: &Node) -> Result<Action, FormulaError> {
    let field = format!("actions[{index}]");
    let entries = step.as_map().ok_or_else(|| {
        FormulaError::new(
            path,
            step.mark,
            &field,
            format!(
                "a step is a mapping with one directive (e.g. `shell:`), found {}",
                step.type_name()
            ),
        )
    })?;
    let mut name = None;
    let mut export = None;
    let mut directive: Option<(&Node, &Node)> = None;
    for (k, v) in entries {
        let key = k.scalar_text().unwrap_or_default();
        match key.as_str() {
            "name" => name = Some(string_field(path, v, &format!("{field}.name"))?),
            "export" => {
                let e = string_field(path, v, &format!("{field}.export"))?;
                if !is_identifier(&e) {
                    return Err(FormulaError::new(
                        path,
                        v.mark,
                        format!("{field}.export"),
                        format!("`{e}` is not a variable name (letters, digits, `_`)"),
                    ));
                }
                export = Some(e);
            }
            d if is_directive(d) => {
                if let Some((first, _)) = directive {
                    return Err(FormulaError::new(
                        path,
                        k.mark,
                        format!("{field}.{d}"),
                        format!(
                            "a step has exactly one directive; this one already has `{}`",
                            first.scalar_text().unwrap_or_default()
                        ),
                    ));
                }
                directive = Some((k, v));
            }
            other => {
                return Err(FormulaError::new(
                    path,
                    k.mark,
                    format!("{field}.{other}"),
                    format!(
                        "unknown directive `{other}` (known: {}; a step may also have `name` and `export`)",
                        directive_names().join(", ")
                    ),
                ))
            }
        }
    }
    let (dkey, params) = directive.ok_or_else(|| {
        FormulaError::new(
            path,
            step.mark,
            &field,
            format!(
                "the step has no directive (one of: {})",
                directive_names().join(", ")
            ),
        )
    })?;
    let directive = dkey.scalar_text().unwrap_or_default();
    directives::validate(&directive, params, &format!("{field}.{directive}"))
        .map_err(|e| FormulaError::new(path, e.mark, e.field, e.message))?;
    Ok(Action {
        index,
        name,
        directive,
        params: params.clone(),
        export,
        mark: dkey.mark,
    })
}

pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn string_field(path: &Path, v: &Node, field: &str) -> Result<String, FormulaError> {
    match &v.kind {
        Kind::Str(s) => Ok(s.clone()),
        Kind::Int(_) | Kind::Float(_) | Kind::Bool(_) => Ok(v.scalar_text().unwrap_or_default()),
        _ => Err(FormulaError::new(
            path,
            v.mark,
            field,
            format!("must be a string, found {}", v.type_name()),
        )),
    }
}

fn optional_string(path: &Path, root: &Node, key: &str) -> Result<Option<String>, FormulaError> {
    match root.get(key) {
        None
        | Some(Node {
            kind: Kind::Null, ..
        }) => Ok(None),
        Some(v) => string_field(path, v, key).map(Some),
    }
}

fn string_list(path: &Path, v: &Node, field: &str) -> Result<Vec<String>, FormulaError> {
    let items = v.as_seq().ok_or_else(|| {
        FormulaError::new(
            path,
            v.mark,
            field,
            format!("must be a list of strings, found {}", v.type_name()),
        )
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| string_field(path, item, &format!("{field}[{i}]")))
        .collect()
}

fn expect_map(path: &Path, v: &Node, field: &str) -> Result<(), FormulaError> {
    match v.kind {
        Kind::Map(_) => Ok(()),
        _ => Err(FormulaError::new(
            path,
            v.mark,
            field,
            format!("must be a mapping, found {}", v.type_name()),
        )),
    }
}

fn check_keys(path: &Path, v: &Node, field: &str, known: &[&str]) -> Result<(), FormulaError> {
    for (k, _) in v.as_map().unwrap_or_default() {
        let key = k.scalar_text().unwrap_or_default();
        if !known.contains(&key.as_str()) {
            return Err(FormulaError::new(
                path,
                k.mark,
                format!("{field}.{key}"),
                format!("unknown key (known: {})", known.join(", ")),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Formula, FormulaError> {
        parse_formula(Path::new("t.yml"), text)
    }

    #[test]
    fn a_full_formula_parses() {
        let f = parse(
            "name: rpmlint\nnamespace: dist\ndesc: lint\nmaintainer: [a, b]\n\
             input: {args: [koji_build, arch]}\nenvironment: {rpm: [rpmlint]}\nscheduling: {run: false}\n\
             actions:\n  - name: hi\n    shell: [echo hi]\n    export: out\n  - dummy: {result: PASSED}\n",
        )
        .unwrap();
        assert_eq!(f.name, "rpmlint");
        assert_eq!(f.namespace.as_deref(), Some("dist"));
        assert_eq!(f.maintainer, ["a", "b"]);
        assert_eq!(f.input_args, ["koji_build", "arch"]);
        assert_eq!(f.environment_rpms, ["rpmlint"]);
        assert!(!f.scheduled);
        assert_eq!(f.actions.len(), 2);
        assert_eq!(f.actions[0].export.as_deref(), Some("out"));
        assert_eq!(f.actions[1].directive, "dummy");
        assert_eq!(f.actions[1].display_name(), "dummy #1");
    }

    #[test]
    fn task_is_a_synonym_of_actions() {
        let f = parse("name: x\ntask:\n  - shell: [true]\n").unwrap();
        assert_eq!(f.actions.len(), 1);
        assert!(f.scheduled);
    }

    #[test]
    fn missing_input_is_named_with_its_position() {
        let f = parse(
            "name: x\ninput:\n  args:\n    - koji_build\n    - arch\nactions:\n  - shell: [true]\n",
        )
        .unwrap();
        let e = f.check_inputs(|n| n == "koji_build").unwrap_err();
        assert_eq!(e.location(), "5:7: input.args[1]");
        assert!(f.check_inputs(|_| true).is_ok());
    }

    #[test]
    fn a_directory_resolves_to_its_formula() {
        let d = tempfile::tempdir().unwrap();
        assert!(resolve_formula_path(d.path()).is_err());
        std::fs::write(d.path().join("task.yml"), "x").unwrap();
        assert_eq!(
            resolve_formula_path(d.path()).unwrap(),
            d.path().join("task.yml")
        );
        std::fs::write(d.path().join("runtask.yml"), "x").unwrap();
        assert_eq!(
            resolve_formula_path(d.path()).unwrap(),
            d.path().join("runtask.yml")
        );
        assert!(resolve_formula_path(&d.path().join("nope.yml")).is_err());
    }

    #[test]
    fn error_display_has_file_line_column_field() {
        let e = parse("name: x\nactions:\n  - bogus: 1\n").unwrap_err();
        assert_eq!(
            e.to_string().split(": unknown").next().unwrap(),
            "t.yml:3:5: actions[0].bogus"
        );
    }
}
