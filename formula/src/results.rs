//! ResultYAML (what checks return) and TAP13 (what `runtask` prints at the end).

use std::fmt;
use std::str::FromStr;

use crate::yaml::{self, Kind, Mark, Node};

/// A check's outcome. `Ord` is "best to worst" for `result_worst`:
/// PASSED < INFO < FAILED < NEEDS_INSPECTION < ABORTED < CRASHED (ERROR ranks with CRASHED, WAIVED with INFO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Passed,
    Info,
    Failed,
    NeedsInspection,
    Aborted,
    Crashed,
    Error,
    Waived,
}

pub const OUTCOMES: &[&str] = &[
    "PASSED",
    "INFO",
    "FAILED",
    "NEEDS_INSPECTION",
    "ABORTED",
    "CRASHED",
    "ERROR",
    "WAIVED",
];

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "PASSED",
            Outcome::Info => "INFO",
            Outcome::Failed => "FAILED",
            Outcome::NeedsInspection => "NEEDS_INSPECTION",
            Outcome::Aborted => "ABORTED",
            Outcome::Crashed => "CRASHED",
            Outcome::Error => "ERROR",
            Outcome::Waived => "WAIVED",
        }
    }

    /// Position in the best-to-worst order.
    pub fn rank(self) -> u8 {
        match self {
            Outcome::Passed => 0,
            Outcome::Info | Outcome::Waived => 1,
            Outcome::Failed => 2,
            Outcome::NeedsInspection => 3,
            Outcome::Aborted => 4,
            Outcome::Crashed | Outcome::Error => 5,
        }
    }

    /// What the original runner counted as success (exit code 0).
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Passed | Outcome::Info | Outcome::Waived)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "PASSED" => Outcome::Passed,
            "INFO" => Outcome::Info,
            "FAILED" => Outcome::Failed,
            "NEEDS_INSPECTION" => Outcome::NeedsInspection,
            "ABORTED" => Outcome::Aborted,
            "CRASHED" => Outcome::Crashed,
            "ERROR" => Outcome::Error,
            "WAIVED" => Outcome::Waived,
            other => {
                return Err(format!(
                    "`{other}` is not an outcome (one of: {})",
                    OUTCOMES.join(", ")
                ))
            }
        })
    }
}

/// One result of a check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub item: String,
    pub item_type: String,
    /// May be dotted (`rpmlint.subcheck`).
    pub checkname: String,
    pub outcome: Outcome,
    pub note: Option<String>,
    pub artifact: Option<String>,
    /// `details` as given (usually `{output: ...}`).
    pub details: Option<serde_json::Value>,
    /// Any other keys, kept in order.
    pub extra: Vec<(String, serde_json::Value)>,
}

/// A ResultYAML problem, with its position in the ResultYAML text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ResultYAML {line}:{column}: {field}: {message}")]
pub struct ResultsError {
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

impl ResultsError {
    fn new(mark: Mark, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            line: mark.line,
            column: mark.column,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parses and validates ResultYAML text.
pub fn parse_results(text: &str) -> Result<Vec<CheckResult>, ResultsError> {
    let root = yaml::parse(text)
        .map_err(|e| ResultsError::new(e.mark, "(yaml)", format!("invalid YAML: {}", e.message)))?;
    let list = root.get("results").ok_or_else(|| {
        ResultsError::new(
            root.mark,
            "results",
            "missing the top-level `results:` list",
        )
    })?;
    let items = match &list.kind {
        Kind::Seq(items) => items.as_slice(),
        Kind::Null => &[],
        _ => {
            return Err(ResultsError::new(
                list.mark,
                "results",
                format!("must be a list, found {}", list.type_name()),
            ))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, n)| parse_one(i, n))
        .collect()
}

fn parse_one(i: usize, n: &Node) -> Result<CheckResult, ResultsError> {
    let field = format!("results[{i}]");
    let entries = n.as_map().ok_or_else(|| {
        ResultsError::new(
            n.mark,
            &field,
            format!("a result is a mapping, found {}", n.type_name()),
        )
    })?;
    let text = |key: &str, required: bool| -> Result<Option<String>, ResultsError> {
        match n.get(key) {
            None
            | Some(Node {
                kind: Kind::Null, ..
            }) if required => Err(ResultsError::new(
                n.mark,
                format!("{field}.{key}"),
                format!("missing required key `{key}`"),
            )),
            None
            | Some(Node {
                kind: Kind::Null, ..
            }) => Ok(None),
            Some(v) => match v.scalar_text() {
                Some(s) if required && s.trim().is_empty() => Err(ResultsError::new(
                    v.mark,
                    format!("{field}.{key}"),
                    "must not be empty",
                )),
                Some(s) => Ok(Some(s)),
                None => Err(ResultsError::new(
                    v.mark,
                    format!("{field}.{key}"),
                    format!("must be a string, found {}", v.type_name()),
                )),
            },
        }
    };
    let item = text("item", true)?.unwrap_or_default();
    let item_type = text("type", true)?.unwrap_or_default();
    let checkname = text("checkname", true)?.unwrap_or_default();
    let outcome_text = text("outcome", true)?.unwrap_or_default();
    let outcome = Outcome::from_str(&outcome_text).map_err(|m| {
        let mark = n.get("outcome").map(|o| o.mark).unwrap_or(n.mark);
        ResultsError::new(mark, format!("{field}.outcome"), m)
    })?;
    let note = text("note", false)?;
    let artifact = text("artifact", false)?;
    let details = n.get("details").map(Node::to_json);
    let extra = entries
        .iter()
        .filter_map(|(k, v)| {
            let key = k.scalar_text().unwrap_or_default();
            (![
                "item",
                "type",
                "checkname",
                "outcome",
                "note",
                "artifact",
                "details",
            ]
            .contains(&key.as_str()))
            .then(|| (key, v.to_json()))
        })
        .collect();
    Ok(CheckResult {
        item,
        item_type,
        checkname,
        outcome,
        note,
        artifact,
        details,
        extra,
    })
}

fn result_mapping(r: &CheckResult) -> serde_yaml::Mapping {
    use serde_yaml::Value;
    let mut m = serde_yaml::Mapping::new();
    m.insert("item".into(), r.item.clone().into());
    m.insert("type".into(), r.item_type.clone().into());
    m.insert("checkname".into(), r.checkname.clone().into());
    m.insert("outcome".into(), r.outcome.as_str().into());
    if let Some(n) = &r.note {
        m.insert("note".into(), n.clone().into());
    }
    if let Some(a) = &r.artifact {
        m.insert("artifact".into(), a.clone().into());
    }
    if let Some(d) = &r.details {
        m.insert(
            "details".into(),
            serde_yaml::to_value(d).unwrap_or(Value::Null),
        );
    }
    for (k, v) in &r.extra {
        m.insert(
            k.clone().into(),
            serde_yaml::to_value(v).unwrap_or(Value::Null),
        );
    }
    m
}

/// Writes ResultYAML.
pub fn results_to_yaml(results: &[CheckResult]) -> String {
    let list: Vec<serde_yaml::Value> = results
        .iter()
        .map(|r| serde_yaml::Value::Mapping(result_mapping(r)))
        .collect();
    let mut top = serde_yaml::Mapping::new();
    top.insert("results".into(), serde_yaml::Value::Sequence(list));
    serde_yaml::to_string(&top).unwrap_or_else(|_| "results: []\n".into())
}

/// TAP13 as the original runner printed it: one entry per result with a YAML block.
pub fn results_to_tap13(results: &[CheckResult]) -> String {
    let mut out = format!("TAP version 13\n1..{}\n", results.len());
    for r in results {
        let status = if r.outcome.is_success() {
            "ok"
        } else {
            "not ok"
        };
        out.push_str(&format!("{status} - {} for {}\n", r.checkname, r.item));
        out.push_str("  ---\n");
        let mut m = result_mapping(r);
        m.shift_remove("checkname");
        let body = serde_yaml::to_string(&m).unwrap_or_default();
        for line in body.lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("  ...\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "results:\n  - item: xchat-0.5-1.fc20\n    type: koji_build\n    checkname: rpmlint\n    outcome: PASSED\n    note: 5 errors\n    artifact: rpmlint.log\n    details:\n      output: [a, b]\n    arch: x86_64\n  - item: xchat-0.5-1.fc20\n    type: koji_build\n    checkname: rpmlint.sub\n    outcome: FAILED\n";

    #[test]
    fn parses_every_field_and_keeps_extras() {
        let r = parse_results(SAMPLE).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].outcome, Outcome::Passed);
        assert_eq!(r[0].note.as_deref(), Some("5 errors"));
        assert_eq!(
            r[0].details,
            Some(serde_json::json!({"output": ["a", "b"]}))
        );
        assert_eq!(
            r[0].extra,
            vec![("arch".to_string(), serde_json::json!("x86_64"))]
        );
        assert_eq!(r[1].checkname, "rpmlint.sub");
    }

    #[test]
    fn round_trips_through_yaml() {
        let r = parse_results(SAMPLE).unwrap();
        assert_eq!(parse_results(&results_to_yaml(&r)).unwrap(), r);
    }

    #[test]
    fn errors_name_position_and_field() {
        let e = parse_results(
            "results:\n  - item: a\n    type: b\n    checkname: c\n    outcome: GREAT\n",
        )
        .unwrap_err();
        assert_eq!(
            (e.line, e.column, e.field.as_str()),
            (5, 14, "results[0].outcome")
        );
        let e = parse_results("results:\n  - item: a\n    outcome: PASSED\n").unwrap_err();
        assert_eq!(e.field, "results[0].type");
        assert!(parse_results("nothing: here\n")
            .unwrap_err()
            .message
            .contains("results"));
    }

    #[test]
    fn worst_order_follows_the_original() {
        let order = [
            Outcome::Passed,
            Outcome::Info,
            Outcome::Failed,
            Outcome::NeedsInspection,
            Outcome::Aborted,
            Outcome::Crashed,
        ];
        assert!(order.windows(2).all(|w| w[0].rank() < w[1].rank()));
    }

    #[test]
    fn tap13_has_ok_lines_and_yaml_blocks() {
        let tap = results_to_tap13(&parse_results(SAMPLE).unwrap());
        assert!(tap.starts_with("TAP version 13\n1..2\nok - rpmlint for xchat-0.5-1.fc20\n  ---\n  item: xchat-0.5-1.fc20\n"));
        assert!(tap.contains("not ok - rpmlint.sub for xchat-0.5-1.fc20\n"));
        assert!(tap.contains("  outcome: FAILED\n  ...\n"));
    }
}
