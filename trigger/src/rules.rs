//! `trigger_rules.yml`, as the original wrote it: a list of rules, each `when` (a query over the
//! JobTrigger dict) and `do` (what to schedule).
//!
//! `when` operators: plain equality, `$in`, `$nin`, `$regex` (`/…/` with optional `i`), `$and`,
//! `$not`; a field whose dict value is a list matches when any element does. `${var}` in a value
//! is filled from the dict first (a value that is exactly `${var}` keeps the dict value's type, so
//! `$in: ${critpath_pkgs}` is a list); `$$` is a literal `$`, and a `$` that starts no
//! placeholder (the `$` of `…pending$/`) stays as it is. `do` entries: `tasks: [NAME…]`,
//! `discover: {repo, branch, fallback_branch, recursive}`, each with optional `arches: [...]`.
//!
//! Every error names the file, line, column and field, and the trigger refuses to start on one.

use std::path::{Path, PathBuf};

use minion_formula::yaml::{self, Kind, Mark, Node};
use regex::Regex;
use serde_json::Value;

use crate::config::Config;
use crate::message::JobTrigger;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {field}: {message}", file = file.display(), line = mark.line, column = mark.column)]
pub struct RulesError {
    pub file: PathBuf,
    pub mark: Mark,
    pub field: String,
    pub message: String,
}

/// A rules file, checked.
#[derive(Debug, Clone)]
pub struct Rules {
    pub path: PathBuf,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// 0-based position in the file (what a job's provenance records).
    pub index: usize,
    pub when: Query,
    pub actions: Vec<Action>,
}

/// A `when` query.
#[derive(Debug, Clone)]
pub enum Query {
    /// Every part holds (a mapping of several keys, or `$and`).
    All(Vec<Query>),
    Not(Box<Query>),
    Field {
        key: String,
        cond: Cond,
    },
}

/// A condition on one field.
#[derive(Debug, Clone)]
pub enum Cond {
    Eq(Template),
    In(Template),
    Nin(Template),
    Regex(Pattern),
    Not(Box<Cond>),
    All(Vec<Cond>),
}

/// A value from the rules, with `${var}` filled from the dict when it is used.
#[derive(Debug, Clone)]
pub struct Template {
    pub value: Value,
    pub mark: Mark,
}

#[derive(Debug, Clone)]
pub enum Pattern {
    Fixed(Regex),
    /// Has `${…}`: compiled once filled.
    Template {
        text: String,
        mark: Mark,
    },
}

/// One `do` entry.
#[derive(Debug, Clone)]
pub enum Action {
    Tasks {
        names: Vec<String>,
        arches: Option<Vec<String>>,
    },
    Discover {
        repo: Template,
        branch: Template,
        fallback_branch: Option<Template>,
        recursive: bool,
        arches: Option<Vec<String>>,
    },
}

/// Filling a template failed: the rule does not apply to this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}", line = mark.line)]
pub struct EvalError {
    pub mark: Mark,
    pub message: String,
}

struct Ctx<'a> {
    file: &'a Path,
    cfg: Option<&'a Config>,
}

impl Ctx<'_> {
    fn err(&self, mark: Mark, field: &str, message: impl Into<String>) -> RulesError {
        RulesError {
            file: self.file.to_path_buf(),
            mark,
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl Rules {
    pub fn load(path: &Path, cfg: Option<&Config>) -> Result<Rules, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|e| RulesError {
            file: path.to_path_buf(),
            mark: Mark::default(),
            field: "(file)".into(),
            message: e.to_string(),
        })?;
        Rules::parse(path, &text, cfg)
    }

    /// Parses and checks a rules file. With `cfg`, every task name must have a repository and
    /// every arch must be one the config knows (or `noarch`).
    pub fn parse(path: &Path, text: &str, cfg: Option<&Config>) -> Result<Rules, RulesError> {
        let cx = Ctx { file: path, cfg };
        let root = yaml::parse(text).map_err(|e| cx.err(e.mark, "(yaml)", e.message))?;
        let items = match &root.kind {
            Kind::Seq(items) => items,
            Kind::Null => return Err(cx.err(root.mark, "rules", "the file has no rules")),
            _ => {
                return Err(cx.err(
                    root.mark,
                    "rules",
                    format!("must be a list of rules, found {}", root.type_name()),
                ))
            }
        };
        let mut rules = Vec::new();
        for (index, item) in items.iter().enumerate() {
            rules.push(rule(&cx, index, item)?);
        }
        Ok(Rules {
            path: path.to_path_buf(),
            rules,
        })
    }

    /// The rules whose `when` holds for `t`, with why the others that could not be evaluated
    /// did not apply.
    pub fn matching<'a>(&'a self, t: &JobTrigger) -> (Vec<&'a Rule>, Vec<(usize, EvalError)>) {
        let mut hits = Vec::new();
        let mut errors = Vec::new();
        for r in &self.rules {
            match r.when.eval(t) {
                Ok(true) => hits.push(r),
                Ok(false) => {}
                Err(e) => errors.push((r.index, e)),
            }
        }
        (hits, errors)
    }
}

fn rule(cx: &Ctx<'_>, index: usize, node: &Node) -> Result<Rule, RulesError> {
    let field = format!("[{index}]");
    let entries = node.as_map().ok_or_else(|| {
        cx.err(
            node.mark,
            &field,
            format!(
                "a rule is a mapping with `when` and `do`, found {}",
                node.type_name()
            ),
        )
    })?;
    for (k, _) in entries {
        let key = k.scalar_text().unwrap_or_default();
        if key != "when" && key != "do" {
            return Err(cx.err(
                k.mark,
                &format!("{field}.{key}"),
                "unknown key (a rule has `when` and `do`)",
            ));
        }
    }
    let when = node
        .get("when")
        .ok_or_else(|| cx.err(node.mark, &format!("{field}.when"), "missing"))?;
    let when_field = format!("{field}.when");
    if when.as_map().is_none() {
        return Err(cx.err(
            when.mark,
            &when_field,
            format!("must be a mapping, found {}", when.type_name()),
        ));
    }
    let when = query(cx, when, &when_field)?;
    let do_field = format!("{field}.do");
    let actions_node = node
        .get("do")
        .ok_or_else(|| cx.err(node.mark, &do_field, "missing"))?;
    let list = actions_node.as_seq().ok_or_else(|| {
        cx.err(
            actions_node.mark,
            &do_field,
            format!("must be a list, found {}", actions_node.type_name()),
        )
    })?;
    if list.is_empty() {
        return Err(cx.err(actions_node.mark, &do_field, "must not be empty"));
    }
    let mut actions = Vec::new();
    for (i, a) in list.iter().enumerate() {
        actions.push(action(cx, a, &format!("{do_field}[{i}]"))?);
    }
    Ok(Rule {
        index,
        when,
        actions,
    })
}

fn query(cx: &Ctx<'_>, node: &Node, field: &str) -> Result<Query, RulesError> {
    let entries = node.as_map().ok_or_else(|| {
        cx.err(
            node.mark,
            field,
            format!("a query is a mapping, found {}", node.type_name()),
        )
    })?;
    if entries.is_empty() {
        return Err(cx.err(
            node.mark,
            field,
            "an empty query matches everything: say what to match",
        ));
    }
    let mut parts = Vec::new();
    for (k, v) in entries {
        let key = k.scalar_text().unwrap_or_default();
        let kf = format!("{field}.{key}");
        let part = match key.as_str() {
            "$and" => {
                let list = v
                    .as_seq()
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| cx.err(v.mark, &kf, "must be a non-empty list of queries"))?;
                let mut all = Vec::new();
                for (i, q) in list.iter().enumerate() {
                    all.push(query(cx, q, &format!("{kf}[{i}]"))?);
                }
                Query::All(all)
            }
            "$not" => Query::Not(Box::new(query(cx, v, &kf)?)),
            k if k.starts_with('$') => {
                return Err(cx.err(
                    k_mark(entries, k),
                    &kf,
                    format!(
                        "unknown operator `{k}` here (a query takes field names, `$and`, `$not`)"
                    ),
                ))
            }
            "" => return Err(cx.err(k.mark, &kf, "a field name must not be empty")),
            _ => Query::Field {
                key: key.clone(),
                cond: cond(cx, v, &kf)?,
            },
        };
        parts.push(part);
    }
    Ok(if parts.len() == 1 {
        parts.remove(0)
    } else {
        Query::All(parts)
    })
}

fn k_mark(entries: &[(Node, Node)], key: &str) -> Mark {
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(k, _)| k.mark)
        .unwrap_or_default()
}

/// Whether a template text is exactly one `${var}`.
fn whole_reference(s: &str) -> bool {
    s.starts_with("${")
        && s.ends_with('}')
        && s[2..s.len() - 1]
            .chars()
            .all(|c| c == '_' || c.is_ascii_alphanumeric())
        && s.len() > 3
}

fn cond(cx: &Ctx<'_>, node: &Node, field: &str) -> Result<Cond, RulesError> {
    let Some(entries) = node.as_map() else {
        return match &node.kind {
            Kind::Seq(_) => Err(cx.err(
                node.mark,
                field,
                "a list is not a value to compare with (use `$in: [...]`)",
            )),
            _ => Ok(Cond::Eq(template(node))),
        };
    };
    let ops: Vec<&str> = entries.iter().filter_map(|(k, _)| k.as_str()).collect();
    if !ops.iter().all(|k| k.starts_with('$')) {
        return Err(cx.err(
            node.mark,
            field,
            "a mapping here holds operators (`$in`, `$nin`, `$regex`, `$not`)",
        ));
    }
    let mut all = Vec::new();
    for (k, v) in entries {
        let op = k.scalar_text().unwrap_or_default();
        let of = format!("{field}.{op}");
        let c = match op.as_str() {
            "$in" | "$nin" => {
                let ok = match &v.kind {
                    Kind::Seq(items) => items
                        .iter()
                        .all(|i| i.as_map().is_none() && i.as_seq().is_none()),
                    Kind::Str(s) => whole_reference(s),
                    _ => false,
                };
                if !ok {
                    return Err(cx.err(
                        v.mark,
                        &of,
                        format!(
                            "must be a list of values or one `${{var}}` naming a list, found {}",
                            v.type_name()
                        ),
                    ));
                }
                if op == "$in" {
                    Cond::In(template(v))
                } else {
                    Cond::Nin(template(v))
                }
            }
            "$regex" => {
                let text = v.as_str().ok_or_else(|| {
                    cx.err(
                        v.mark,
                        &of,
                        format!("must be a string `/…/`, found {}", v.type_name()),
                    )
                })?;
                if text.contains("${") {
                    Cond::Regex(Pattern::Template {
                        text: text.to_string(),
                        mark: v.mark,
                    })
                } else {
                    Cond::Regex(Pattern::Fixed(
                        compile(&unescape_dollars(text)).map_err(|m| cx.err(v.mark, &of, m))?,
                    ))
                }
            }
            "$not" => Cond::Not(Box::new(cond(cx, v, &of)?)),
            other => {
                return Err(cx.err(
                    k.mark,
                    &of,
                    format!("unknown operator `{other}` (known: $in, $nin, $regex, $not)"),
                ))
            }
        };
        all.push(c);
    }
    Ok(if all.len() == 1 {
        all.remove(0)
    } else {
        Cond::All(all)
    })
}

fn template(node: &Node) -> Template {
    Template {
        value: node.to_json(),
        mark: node.mark,
    }
}

/// `/pattern/` or `/pattern/i` into a regex.
fn compile(text: &str) -> Result<Regex, String> {
    let body = text
        .strip_prefix('/')
        .and_then(|t| t.rfind('/').map(|end| (&t[..end], &t[end + 1..])));
    let Some((pattern, flags)) = body else {
        return Err(format!(
            "`{text}` must be written `/pattern/` (optionally `/pattern/i`)"
        ));
    };
    let mut b = regex::RegexBuilder::new(pattern);
    for f in flags.chars() {
        match f {
            'i' => {
                b.case_insensitive(true);
            }
            other => return Err(format!("unknown regex flag `{other}` (known: i)")),
        }
    }
    b.size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid regex: {e}"))
}

/// `$$` → `$` in text that holds no `${…}` (a regex used as written).
fn unescape_dollars(s: &str) -> String {
    s.replace("$$", "$")
}

fn string_list(cx: &Ctx<'_>, node: &Node, field: &str) -> Result<Vec<String>, RulesError> {
    let items = node.as_seq().filter(|l| !l.is_empty()).ok_or_else(|| {
        cx.err(
            node.mark,
            field,
            format!(
                "must be a non-empty list of names, found {}",
                node.type_name()
            ),
        )
    })?;
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        match it.as_str() {
            Some(s) if !s.trim().is_empty() => out.push(s.to_string()),
            _ => {
                return Err(cx.err(
                    it.mark,
                    &format!("{field}[{i}]"),
                    format!("must be a non-empty string, found {}", it.type_name()),
                ))
            }
        }
    }
    Ok(out)
}

fn action(cx: &Ctx<'_>, node: &Node, field: &str) -> Result<Action, RulesError> {
    let entries = node.as_map().ok_or_else(|| {
        cx.err(
            node.mark,
            field,
            format!(
                "a `do` entry is a mapping (`tasks:` or `discover:`), found {}",
                node.type_name()
            ),
        )
    })?;
    for (k, _) in entries {
        let key = k.scalar_text().unwrap_or_default();
        if !matches!(key.as_str(), "tasks" | "discover" | "arches") {
            return Err(cx.err(
                k.mark,
                &format!("{field}.{key}"),
                "unknown key (a `do` entry has `tasks` or `discover`, and optionally `arches`)",
            ));
        }
    }
    let arches = match node.get("arches") {
        None => None,
        Some(a) => {
            let af = format!("{field}.arches");
            let list = string_list(cx, a, &af)?;
            if let Some(cfg) = cx.cfg {
                for (i, arch) in list.iter().enumerate() {
                    if arch != "noarch" && !cfg.valid_arches.contains(arch) {
                        let mark = a.as_seq().map(|s| s[i].mark).unwrap_or(a.mark);
                        return Err(cx.err(
                            mark,
                            &format!("{af}[{i}]"),
                            format!(
                                "`{arch}` is not a valid arch (valid_arches: {}, or noarch)",
                                cfg.valid_arches.join(", ")
                            ),
                        ));
                    }
                }
            }
            Some(list)
        }
    };
    match (node.get("tasks"), node.get("discover")) {
        (Some(_), Some(d)) => Err(cx.err(
            d.mark,
            &format!("{field}.discover"),
            "a `do` entry has `tasks` or `discover`, not both",
        )),
        (None, None) => Err(cx.err(node.mark, field, "needs `tasks` or `discover`")),
        (Some(t), None) => {
            let tf = format!("{field}.tasks");
            let names = string_list(cx, t, &tf)?;
            if let Some(cfg) = cx.cfg {
                for (i, name) in names.iter().enumerate() {
                    if cfg.task_repo(name).is_none() {
                        let mark = t.as_seq().map(|s| s[i].mark).unwrap_or(t.mark);
                        return Err(cx.err(
                            mark,
                            &format!("{tf}[{i}]"),
                            format!("task `{name}` has no repository in the config ([tasks] or task_repo_template)"),
                        ));
                    }
                }
            }
            Ok(Action::Tasks { names, arches })
        }
        (None, Some(d)) => {
            let df = format!("{field}.discover");
            let entries = d.as_map().ok_or_else(|| {
                cx.err(
                    d.mark,
                    &df,
                    format!("must be a mapping, found {}", d.type_name()),
                )
            })?;
            for (k, _) in entries {
                let key = k.scalar_text().unwrap_or_default();
                if !matches!(
                    key.as_str(),
                    "repo" | "branch" | "fallback_branch" | "recursive"
                ) {
                    return Err(cx.err(
                        k.mark,
                        &format!("{df}.{key}"),
                        "unknown key (known: repo, branch, fallback_branch, recursive)",
                    ));
                }
            }
            let text = |key: &str, required: bool| -> Result<Option<Template>, RulesError> {
                match d.get(key) {
                    None if required => Err(cx.err(d.mark, &format!("{df}.{key}"), "missing")),
                    None => Ok(None),
                    Some(v) => match v.as_str() {
                        Some(s) if !s.trim().is_empty() => Ok(Some(template(v))),
                        _ => Err(cx.err(
                            v.mark,
                            &format!("{df}.{key}"),
                            format!("must be a non-empty string, found {}", v.type_name()),
                        )),
                    },
                }
            };
            let repo = text("repo", true)?.unwrap_or_else(|| template(d));
            let branch = text("branch", true)?.unwrap_or_else(|| template(d));
            let fallback_branch = text("fallback_branch", false)?;
            let recursive = match d.get("recursive") {
                None => false,
                Some(Node {
                    kind: Kind::Bool(b),
                    ..
                }) => *b,
                Some(v) => {
                    return Err(cx.err(
                        v.mark,
                        &format!("{df}.recursive"),
                        format!("must be true or false, found {}", v.type_name()),
                    ))
                }
            };
            Ok(Action::Discover {
                repo,
                branch,
                fallback_branch,
                recursive,
                arches,
            })
        }
    }
}

/// Fills `${var}`/`$var` in `s` from `t`: `$$` is `$`, a `$` that starts no placeholder stays.
/// A text that is exactly `${var}` becomes the dict's value, whatever its type.
pub fn fill(s: &str, t: &JobTrigger, mark: Mark) -> Result<Value, EvalError> {
    let unknown = |name: &str| EvalError {
        mark,
        message: format!("`${{{name}}}`: the message has no `{name}`"),
    };
    if whole_reference(s) {
        let name = &s[2..s.len() - 1];
        return t.get(name).cloned().ok_or_else(|| unknown(name));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let ident = |x: &str| -> usize {
            x.char_indices()
                .take_while(|(i, c)| {
                    *c == '_' || c.is_ascii_alphabetic() || (*i > 0 && c.is_ascii_digit())
                })
                .count()
        };
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(a) = after.strip_prefix('{') {
            let n = ident(a);
            if n > 0 && a[n..].starts_with('}') {
                out.push_str(&text_of(t.get(&a[..n]).ok_or_else(|| unknown(&a[..n]))?));
                rest = &a[n + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        } else {
            let n = ident(after);
            if n > 0 {
                out.push_str(&text_of(
                    t.get(&after[..n]).ok_or_else(|| unknown(&after[..n]))?,
                ));
                rest = &after[n..];
            } else {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Template {
    /// The value with `${var}`s filled (strings inside lists too).
    pub fn eval(&self, t: &JobTrigger) -> Result<Value, EvalError> {
        fill_value(&self.value, t, self.mark)
    }

    /// The filled value as text (repo URLs, branches).
    pub fn text(&self, t: &JobTrigger) -> Result<String, EvalError> {
        Ok(text_of(&self.eval(t)?))
    }
}

fn fill_value(v: &Value, t: &JobTrigger, mark: Mark) -> Result<Value, EvalError> {
    match v {
        Value::String(s) => fill(s, t, mark),
        Value::Array(items) => items
            .iter()
            .map(|i| fill_value(i, t, mark))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        other => Ok(other.clone()),
    }
}

/// Scalar equality as the rules mean it: the same JSON value, or the same text when one side is a
/// number and the other a string (`version: 1` in YAML against Koji's `"1"`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::Number(n)) | (Value::Number(n), Value::String(x)) => {
            *x == n.to_string()
        }
        _ => a == b,
    }
}

/// The field's values: a list's elements, or the value itself.
fn values(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    }
}

impl Query {
    pub fn eval(&self, t: &JobTrigger) -> Result<bool, EvalError> {
        match self {
            Query::All(parts) => {
                for p in parts {
                    if !p.eval(t)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Query::Not(q) => Ok(!q.eval(t)?),
            Query::Field { key, cond } => cond.eval(t.get(key), t),
        }
    }
}

impl Cond {
    /// Whether the field's value (`None`: the dict has no such field) meets the condition.
    fn eval(&self, field: Option<&Value>, t: &JobTrigger) -> Result<bool, EvalError> {
        Ok(match self {
            Cond::Eq(want) => {
                let want = want.eval(t)?;
                field.is_some_and(|f| values(f).iter().any(|v| same(v, &want)))
            }
            Cond::In(list) | Cond::Nin(list) => {
                let list = list.eval(t)?;
                let choices = values(&list);
                let hit = field
                    .is_some_and(|f| values(f).iter().any(|v| choices.iter().any(|c| same(v, c))));
                if matches!(self, Cond::In(_)) {
                    hit
                } else {
                    !hit
                }
            }
            Cond::Regex(p) => {
                let filled;
                let re = match p {
                    Pattern::Fixed(r) => r,
                    Pattern::Template { text, mark } => {
                        let s = text_of(&fill(text, t, *mark)?);
                        filled = compile(&s).map_err(|message| EvalError {
                            mark: *mark,
                            message,
                        })?;
                        &filled
                    }
                };
                field.is_some_and(|f| {
                    values(f)
                        .iter()
                        .any(|v| v.as_str().is_some_and(|s| re.is_match(s)))
                })
            }
            Cond::Not(c) => !c.eval(field, t)?,
            Cond::All(cs) => {
                for c in cs {
                    if !c.eval(field, t)? {
                        return Ok(false);
                    }
                }
                true
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn trigger(v: Value) -> JobTrigger {
        JobTrigger {
            fields: v.as_object().expect("object").clone(),
        }
    }

    fn rules(text: &str) -> Rules {
        Rules::parse(Path::new("r.yml"), text, None).expect("rules")
    }

    fn hits(text: &str, t: &JobTrigger) -> Vec<usize> {
        rules(text).matching(t).0.iter().map(|r| r.index).collect()
    }

    #[test]
    fn operators_match_as_the_original_did() {
        let t = trigger(json!({
            "message_type": "KojiBuildPackageCompleted",
            "name": "foo",
            "tag": "f40-updates-testing-pending",
            "critpath_pkgs": ["foo", "bar"],
            "builds": ["a-1-1", "b-1-1"],
            "version": "1"
        }));
        let text = r#"
- when: {message_type: KojiBuildPackageCompleted}
  do: [{tasks: [a]}]
- when: {name: {$in: [foo, baz]}}
  do: [{tasks: [a]}]
- when: {name: {$nin: [firefox, kernel]}}
  do: [{tasks: [a]}]
- when: {tag: {$regex: '/^f[0-9]{2}-updates(-testing)?-pending$/'}}
  do: [{tasks: [a]}]
- when: {name: {$in: '${critpath_pkgs}'}}
  do: [{tasks: [a]}]
- when: {$and: [{name: foo}, {name: {$not: {$in: [bar]}}}]}
  do: [{tasks: [a]}]
- when: {$not: {name: foo}}
  do: [{tasks: [a]}]
- when: {builds: b-1-1, version: 1}
  do: [{tasks: [a]}]
- when: {missing: {$nin: [x]}, name: {$regex: '/^FOO$/i'}}
  do: [{tasks: [a]}]
- when: {missing: x}
  do: [{tasks: [a]}]
- when: {name: '${message_type}'}
  do: [{tasks: [a]}]
- when: {price: '$$5'}
  do: [{tasks: [a]}]
"#;
        assert_eq!(hits(text, &t), [0, 1, 2, 3, 4, 5, 7, 8]);
        let dollars = trigger(json!({"price": "$5"}));
        assert_eq!(
            hits("- when: {price: '$$5'}\n  do: [{tasks: [a]}]\n", &dollars),
            [0]
        );
    }

    #[test]
    fn fill_follows_safe_substitution() {
        let t = trigger(json!({"name": "foo", "n": 3, "list": [1, 2]}));
        let f = |s: &str| fill(s, &t, Mark::default());
        assert_eq!(
            f("https://src/rpms/${name}.git"),
            Ok(json!("https://src/rpms/foo.git"))
        );
        assert_eq!(f("$name-$n"), Ok(json!("foo-3")));
        assert_eq!(
            f("${list}"),
            Ok(json!([1, 2])),
            "a whole reference keeps its type"
        );
        assert_eq!(f("a$$b"), Ok(json!("a$b")));
        assert_eq!(f("end$/"), Ok(json!("end$/")), "a lone $ stays");
        assert_eq!(
            f("${nope}").unwrap_err().message,
            "`${nope}`: the message has no `nope`"
        );
    }

    #[test]
    fn a_rule_whose_variable_is_missing_does_not_apply_and_says_why() {
        let t = trigger(json!({"name": "foo"}));
        let r = rules("- when: {name: '${other}'}\n  do: [{tasks: [a]}]\n");
        let (hits, errors) = r.matching(&t);
        assert!(hits.is_empty());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].1.mark.line, 1);
    }
}
