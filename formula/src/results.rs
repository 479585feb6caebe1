//! ResultYAML (what checks return) and TAP13 (what `runtask` prints at the end).

use std::fmt;
use std::str::FromStr;

use crate::item_types::item_type_words;
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

    /// What the original runner counted as success: exit code 0 from `exitcode`, `ok` in TAP.
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Passed | Outcome::Info)
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

/// One result of a check. ResultYAML is read leniently, as the original runner did: every key
/// of a result is optional (`item`, `type`, `checkname` are empty when absent; `resultsdb` insists
/// on them, see [`CheckResult::missing_identity`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub item: String,
    pub item_type: String,
    /// May be dotted (`rpmlint.subcheck`).
    pub checkname: String,
    /// `None` when the result gives none: it then counts as NEEDS_INSPECTION.
    pub outcome: Option<Outcome>,
    pub note: Option<String>,
    pub artifact: Option<String>,
    /// `details` as given (usually `{output: ...}`).
    pub details: Option<serde_json::Value>,
    /// Any other keys, kept in order.
    pub extra: Vec<(String, serde_json::Value)>,
}

impl CheckResult {
    /// The outcome wherever outcomes are compared or reported: a missing one is NEEDS_INSPECTION.
    pub fn effective_outcome(&self) -> Outcome {
        self.outcome.unwrap_or(Outcome::NeedsInspection)
    }

    /// The first of `item`, `type`, `checkname` this result lacks (ResultsDB needs all three).
    pub fn missing_identity(&self) -> Option<&'static str> {
        [
            ("item", &self.item),
            ("type", &self.item_type),
            ("checkname", &self.checkname),
        ]
        .into_iter()
        .find(|(_, v)| v.trim().is_empty())
        .map(|(k, _)| k)
    }
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

/// Keys a result may have besides its extra data.
const KNOWN_KEYS: &[&str] = &[
    "item",
    "type",
    "checkname",
    "outcome",
    "note",
    "artifact",
    "details",
];

/// Parses ResultYAML text. Only a top-level `results` list is required (`results: null` is an
/// empty list); a present `outcome` must be one of [`OUTCOMES`], written in upper case.
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
    let text = |key: &str| -> Result<Option<String>, ResultsError> {
        match n.get(key) {
            None
            | Some(Node {
                kind: Kind::Null, ..
            }) => Ok(None),
            Some(v) => v.scalar_text().map(Some).ok_or_else(|| {
                ResultsError::new(
                    v.mark,
                    format!("{field}.{key}"),
                    format!("must be a string, found {}", v.type_name()),
                )
            }),
        }
    };
    let outcome = match text("outcome")? {
        None => None,
        Some(word) => Some(Outcome::from_str(&word).map_err(|m| {
            let mark = n.get("outcome").map(|o| o.mark).unwrap_or(n.mark);
            ResultsError::new(mark, format!("{field}.outcome"), m)
        })?),
    };
    let extra = entries
        .iter()
        .filter_map(|(k, v)| {
            let key = k.scalar_text().unwrap_or_default();
            (!KNOWN_KEYS.contains(&key.as_str())).then(|| (key, v.to_json()))
        })
        .collect();
    Ok(CheckResult {
        item: text("item")?.unwrap_or_default(),
        item_type: text("type")?.unwrap_or_default(),
        checkname: text("checkname")?.unwrap_or_default(),
        outcome,
        note: text("note")?,
        artifact: text("artifact")?,
        details: n.get("details").map(Node::to_json),
        extra,
    })
}

fn result_mapping(r: &CheckResult) -> serde_yaml::Mapping {
    use serde_yaml::Value;
    let mut m = serde_yaml::Mapping::new();
    for (k, v) in [
        ("item", &r.item),
        ("type", &r.item_type),
        ("checkname", &r.checkname),
    ] {
        if !v.is_empty() {
            m.insert(k.into(), v.clone().into());
        }
    }
    if let Some(o) = r.outcome {
        m.insert("outcome".into(), o.as_str().into());
    }
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

/// TAP13 as the original runner printed it: `ok - CHECKNAME for Koji build ITEM` (`not ok - …
/// # FAIL` unless PASSED or INFO), then a YAML block of the result's other keys in sorted order
/// (the original dumped a dict with sorted keys), indented two spaces between `---` and `...`.
pub fn results_to_tap13(results: &[CheckResult]) -> String {
    let mut out = format!("TAP version 13\n1..{}\n", results.len());
    for r in results {
        let passed = r.effective_outcome().is_success();
        let mut title = r.checkname.clone();
        if !r.item.is_empty() {
            let words = item_type_words(&r.item_type);
            title = if words.is_empty() {
                format!("{title} for {}", r.item)
            } else {
                format!("{title} for {words} {}", r.item)
            };
        }
        if passed {
            out.push_str(&format!("ok - {title}\n"));
        } else {
            out.push_str(&format!("not ok - {title} # FAIL\n"));
        }
        let mut m = result_mapping(r);
        m.shift_remove("checkname");
        m.insert("outcome".into(), r.effective_outcome().as_str().into());
        let mut entries: Vec<(serde_yaml::Value, serde_yaml::Value)> = m.into_iter().collect();
        entries.sort_by(|a, b| a.0.as_str().cmp(&b.0.as_str()));
        let sorted: serde_yaml::Mapping = entries.into_iter().collect();
        out.push_str("  ---\n");
        let body = serde_yaml::to_string(&sorted).unwrap_or_default();
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
        assert_eq!(r[0].outcome, Some(Outcome::Passed));
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
        // Outcome words are upper case, as ResultsDB compares them.
        assert!(parse_results("results:\n  - outcome: passed\n").is_err());
        let e = parse_results("results:\n  - item: [a]\n").unwrap_err();
        assert_eq!(e.field, "results[0].item");
        assert!(parse_results("nothing: here\n")
            .unwrap_err()
            .message
            .contains("results"));
        assert!(parse_results("results: 3\n").is_err());
    }

    #[test]
    fn only_the_results_list_is_required() {
        let r = parse_results("results:\n  - note: just a note\n    colour: red\n").unwrap();
        assert_eq!(r[0].item, "");
        assert_eq!(r[0].outcome, None);
        assert_eq!(r[0].effective_outcome(), Outcome::NeedsInspection);
        assert_eq!(r[0].missing_identity(), Some("item"));
        assert_eq!(
            r[0].extra,
            vec![("colour".to_string(), serde_json::json!("red"))]
        );
        assert!(parse_results("results:\n").unwrap().is_empty());
        assert!(parse_results("results: null\n").unwrap().is_empty());
        assert!(parse_results("results: []\n").unwrap().is_empty());
        let full = parse_results(SAMPLE).unwrap();
        assert_eq!(full[0].missing_identity(), None);
        // No outcome is not invented when written back.
        assert!(!results_to_yaml(&r).contains("outcome"));
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
        let ok: Vec<&str> = OUTCOMES
            .iter()
            .filter(|o| Outcome::from_str(o).is_ok_and(Outcome::is_success))
            .copied()
            .collect();
        assert_eq!(ok, ["PASSED", "INFO"]);
    }

    #[test]
    fn tap13_is_printed_as_the_original_did() {
        let tap = results_to_tap13(&parse_results(SAMPLE).unwrap());
        let expected = "TAP version 13
1..2
ok - rpmlint for Koji build xchat-0.5-1.fc20
  ---
  arch: x86_64
  artifact: rpmlint.log
  details:
    output:
    - a
    - b
  item: xchat-0.5-1.fc20
  note: 5 errors
  outcome: PASSED
  type: koji_build
  ...
not ok - rpmlint.sub for Koji build xchat-0.5-1.fc20 # FAIL
  ---
  item: xchat-0.5-1.fc20
  outcome: FAILED
  type: koji_build
  ...
";
        assert_eq!(tap, expected);
    }

    #[test]
    fn tap13_writes_item_types_in_words() {
        let one = |t: &str, outcome: &str| {
            let y = format!("results:\n  - item: X\n    type: {t}\n    checkname: c\n{outcome}");
            results_to_tap13(&parse_results(&y).unwrap())
                .lines()
                .nth(2)
                .unwrap_or_default()
                .to_string()
        };
        let p = "    outcome: PASSED\n";
        assert_eq!(one("bodhi_update", p), "ok - c for Bodhi update X");
        assert_eq!(one("yum_repository", p), "ok - c for Yum repository X");
        assert_eq!(one("dist_git_commit", p), "ok - c for Dist-git commit X");
        assert_eq!(one("module_build", p), "ok - c for Module build X");
        assert_eq!(one("my_thing", p), "ok - c for my_thing X");
        assert_eq!(
            one("koji_tag", "    outcome: INFO\n"),
            "ok - c for Koji tag X"
        );
        assert_eq!(
            one("compose", "    outcome: WAIVED\n"),
            "not ok - c for Compose X # FAIL"
        );
        // No outcome: NEEDS_INSPECTION, which is not ok.
        assert_eq!(one("koji_build", ""), "not ok - c for Koji build X # FAIL");
    }
}
