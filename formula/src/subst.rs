//! `${var}` substitution with Python `string.Template` rules: `$name` and `${name}` substitute,
//! `$$` is a literal `$`, any other `$` is an error. A parameter that is exactly one reference
//! takes the variable's value with its type (a list stays a list).

use std::collections::BTreeMap;

use crate::directives::ParamError;
use crate::yaml::{Kind, Node};

/// Variables visible to a step: built-ins, `--arg`s and earlier `export`s.
pub type Vars = BTreeMap<String, serde_json::Value>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpandError {
    Unknown(String),
    /// A `$` at this byte offset that starts no valid placeholder.
    Invalid(usize),
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

/// The variable name when `s` is exactly `${name}` or `$name`.
fn whole_reference(s: &str) -> Option<&str> {
    let name = if let Some(inner) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        inner
    } else {
        s.strip_prefix('$')?
    };
    let mut chars = name.chars();
    (chars.next().is_some_and(is_ident_start) && chars.all(is_ident_char)).then_some(name)
}

/// Whether a node is a string that is exactly one variable reference.
pub fn is_whole_reference(node: &Node) -> bool {
    node.as_str().and_then(whole_reference).is_some()
}

/// How a variable reads inside a larger string.
fn as_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Expands every placeholder in `s`.
pub fn expand(s: &str, vars: &Vars) -> Result<String, ExpandError> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut offset = 0;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (name, consumed) = if let Some(a) = after.strip_prefix('$') {
            let _ = a;
            out.push('$');
            (None, 1)
        } else if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').ok_or(ExpandError::Invalid(offset + pos))?;
            let name = &braced[..end];
            let mut chars = name.chars();
            if !(chars.next().is_some_and(is_ident_start) && chars.all(is_ident_char)) {
                return Err(ExpandError::Invalid(offset + pos));
            }
            (Some(name), end + 2)
        } else if after.chars().next().is_some_and(is_ident_start) {
            let len = after
                .find(|c: char| !is_ident_char(c))
                .unwrap_or(after.len());
            (Some(&after[..len]), len)
        } else {
            return Err(ExpandError::Invalid(offset + pos));
        };
        if let Some(name) = name {
            let v = vars
                .get(name)
                .ok_or_else(|| ExpandError::Unknown(name.to_string()))?;
            out.push_str(&as_text(v));
        }
        let skip = pos + 1 + consumed;
        offset += skip;
        rest = &rest[skip..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Substitutes every string in a parameter tree; `field` names the parameter for errors.
pub fn substitute(node: &Node, vars: &Vars, field: &str) -> Result<Node, ParamError> {
    match &node.kind {
        Kind::Str(s) => {
            if let Some(name) = whole_reference(s) {
                return match vars.get(name) {
                    Some(v) => Ok(Node::from_json(v, node.mark)),
                    None => Err(unknown(node, field, name, vars)),
                };
            }
            match expand(s, vars) {
                Ok(text) => Ok(Node::new(Kind::Str(text), node.mark)),
                Err(ExpandError::Unknown(name)) => Err(unknown(node, field, &name, vars)),
                Err(ExpandError::Invalid(at)) => Err(ParamError::new(
                    node.mark,
                    field,
                    format!(
                        "invalid placeholder at character {} of {s:?} (use $name, ${{name}}, or $$ for a literal $)",
                        s[..at].chars().count() + 1
                    ),
                )),
            }
        }
        Kind::Seq(items) => Ok(Node::new(
            Kind::Seq(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, n)| substitute(n, vars, &format!("{field}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            node.mark,
        )),
        Kind::Map(entries) => Ok(Node::new(
            Kind::Map(
                entries
                    .iter()
                    .map(|(k, v)| {
                        let key = k.scalar_text().unwrap_or_default();
                        Ok((k.clone(), substitute(v, vars, &format!("{field}.{key}"))?))
                    })
                    .collect::<Result<_, ParamError>>()?,
            ),
            node.mark,
        )),
        _ => Ok(node.clone()),
    }
}

fn unknown(node: &Node, field: &str, name: &str, vars: &Vars) -> ParamError {
    let known: Vec<&str> = vars.keys().map(String::as_str).collect();
    ParamError::new(
        node.mark,
        field,
        format!(
            "unknown variable `{name}` (defined here: {})",
            known.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse;
    use serde_json::json;

    fn vars() -> Vars {
        let mut v = Vars::new();
        v.insert("item".into(), json!("foo-1.0-1.fc40"));
        v.insert("arch".into(), json!("x86_64"));
        v.insert("list".into(), json!(["a", "b"]));
        v.insert("n".into(), json!(3));
        v
    }

    #[test]
    fn template_rules_match_python() {
        let v = vars();
        assert_eq!(
            expand("${item}.$arch", &v).unwrap(),
            "foo-1.0-1.fc40.x86_64"
        );
        assert_eq!(
            expand("cost: $$5, $n items", &v).unwrap(),
            "cost: $5, 3 items"
        );
        assert_eq!(expand("$item-x", &v).unwrap(), "foo-1.0-1.fc40-x");
        assert_eq!(expand("no vars", &v).unwrap(), "no vars");
        assert_eq!(
            expand("$nope", &v),
            Err(ExpandError::Unknown("nope".into()))
        );
        assert_eq!(expand("a $ b", &v), Err(ExpandError::Invalid(2)));
        assert_eq!(expand("${1x}", &v), Err(ExpandError::Invalid(0)));
        assert_eq!(expand("${item", &v), Err(ExpandError::Invalid(0)));
    }

    #[test]
    fn a_whole_reference_keeps_its_type() {
        let n = parse("arches: ${list}\nlabel: 'x-${list}'\n").unwrap();
        let out = substitute(&n, &vars(), "p").unwrap();
        assert_eq!(
            out.to_json(),
            json!({"arches": ["a", "b"], "label": "x-[\"a\",\"b\"]"})
        );
    }

    #[test]
    fn nested_strings_are_substituted_and_errors_name_the_parameter() {
        let n = parse("cmds:\n  - echo $item\n  - echo ${missing}\n").unwrap();
        let e = substitute(&n, &vars(), "actions[0].shell").unwrap_err();
        assert_eq!(e.field, "actions[0].shell.cmds[1]");
        assert_eq!(e.mark.line, 3);
        assert!(e.message.contains("unknown variable `missing`"));
    }

    #[test]
    fn substituted_values_are_not_expanded_again() {
        let mut v = vars();
        v.insert("tricky".into(), json!("$item"));
        assert_eq!(expand("${tricky}", &v).unwrap(), "$item");
    }
}
