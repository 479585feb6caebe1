//! `xunit`: JUnit XML → ResultYAML, as the original did. `aggregation: allpass` (default) gives
//! one result named CHECKNAME that passes when every test case passed, its note counting the
//! cases by outcome (`2 PASSED, 1 FAILED`); `none` gives one result per test case, named
//! `CHECKNAME.NAME` with the `<testcase name=…>` alone. Every result's artifact is the XML file.
//! A skipped case is not a failure (PASSED), as unittest counts it.

use super::{str_param, Directive, Params, Run, Spec, StepContext, StepError, Ty};
use crate::results::{results_to_yaml, CheckResult, Outcome};
use crate::yaml::Node;

pub(super) const DIRECTIVE: Directive = Directive {
    name: "xunit",
    params: Params::Spec(Spec {
        required: &[
            ("item", Ty::Str),
            ("type", Ty::Str),
            ("checkname", Ty::Str),
            ("file", Ty::Str),
        ],
        optional: &[("aggregation", Ty::Str)],
        one_of: &[],
        choices: &[("aggregation", &["allpass", "none"])],
        extra_allowed: false,
    }),
    run: Run::Here(run),
};

/// JUnit files above this are refused rather than loaded.
const MAX_XML: u64 = 64 * 1024 * 1024;

pub(super) fn run(
    params: &Node,
    ctx: &mut StepContext<'_>,
) -> Result<serde_json::Value, StepError> {
    let p = |k: &str| str_param(params, k).unwrap_or_default();
    let (item, item_type, checkname, file) = (p("item"), p("type"), p("checkname"), p("file"));
    let aggregation = str_param(params, "aggregation").unwrap_or_else(|| "allpass".into());
    let path = ctx.resolve(&file);
    let file_err = |message: String| StepError {
        mark: params.get("file").map(|n| n.mark),
        field: Some(format!("{}.file", ctx.action.field())),
        message,
    };
    let size = std::fs::metadata(&path)
        .map_err(|e| file_err(format!("cannot read {}: {e}", path.display())))?
        .len();
    if size > MAX_XML {
        return Err(file_err(format!(
            "{} is {size} bytes, more than {MAX_XML}",
            path.display()
        )));
    }
    let xml = std::fs::read_to_string(&path)
        .map_err(|e| file_err(format!("cannot read {}: {e}", path.display())))?;
    let cases = parse_junit(&xml).map_err(|e| file_err(format!("{}: {e}", path.display())))?;
    let artifact = path.to_string_lossy().into_owned();
    let result = |checkname: String, outcome: Outcome, output: Vec<String>| CheckResult {
        item: item.clone(),
        item_type: item_type.clone(),
        checkname,
        outcome: Some(outcome),
        note: None,
        artifact: Some(artifact.clone()),
        details: (!output.is_empty()).then(|| serde_json::json!({ "output": output })),
        extra: Vec::new(),
    };
    let results: Vec<CheckResult> = if aggregation == "none" {
        cases
            .iter()
            .map(|c| {
                result(
                    format!("{checkname}.{}", c.name),
                    c.outcome(),
                    c.messages.clone(),
                )
            })
            .collect()
    } else {
        let failed: Vec<&Case> = cases.iter().filter(|c| c.failed).collect();
        let mut r = result(
            checkname.clone(),
            if failed.is_empty() {
                Outcome::Passed
            } else {
                Outcome::Failed
            },
            failed
                .iter()
                .map(|c| format!("{}: {}", c.name, c.messages.join("; ")))
                .collect(),
        );
        r.note = Some(count_note(&cases));
        vec![r]
    };
    ctx.say(&format!("xunit: {} test case(s) from {file}", cases.len()));
    Ok(serde_json::Value::String(results_to_yaml(&results)))
}

#[derive(Debug, Clone, PartialEq)]
struct Case {
    name: String,
    failed: bool,
    messages: Vec<String>,
}

impl Case {
    fn outcome(&self) -> Outcome {
        if self.failed {
            Outcome::Failed
        } else {
            Outcome::Passed
        }
    }
}

/// `3 PASSED` or `2 PASSED, 1 FAILED`: the cases counted by outcome, best first.
fn count_note(cases: &[Case]) -> String {
    let failed = cases.iter().filter(|c| c.failed).count();
    let passed = cases.len() - failed;
    [(passed, "PASSED"), (failed, "FAILED")]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, o)| format!("{n} {o}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_junit(xml: &str) -> Result<Vec<Case>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("invalid JUnit XML: {e}"))?;
    let cases: Vec<Case> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .map(|n| {
            // The original named a case by its `name` alone, without the classname.
            let name = n.attribute("name").unwrap_or("unnamed").to_string();
            let problems: Vec<String> = n
                .children()
                .filter(|c| c.has_tag_name("failure") || c.has_tag_name("error"))
                .map(|c| {
                    c.attribute("message")
                        .map(str::to_string)
                        .or_else(|| c.text().map(|t| t.trim().to_string()))
                        .unwrap_or_else(|| c.tag_name().name().to_string())
                })
                .collect();
            Case {
                name,
                failed: !problems.is_empty(),
                messages: problems,
            }
        })
        .collect();
    if cases.is_empty() {
        return Err("no <testcase> elements".into());
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cases_and_failures() {
        let xml = r#"<testsuites><testsuite name="s"><testcase classname="a" name="ok"/><testcase name="bad"><failure message="boom"/></testcase></testsuite></testsuites>"#;
        let cases = parse_junit(xml).unwrap();
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[0].name, "ok");
        assert!(!cases[0].failed);
        assert_eq!(cases[1].messages, ["boom"]);
        assert_eq!(count_note(&cases), "1 PASSED, 1 FAILED");
        assert_eq!(count_note(&cases[..1]), "1 PASSED");
        assert_eq!(count_note(&cases[1..]), "1 FAILED");
        assert!(parse_junit("<testsuite/>").is_err());
        assert!(parse_junit("<nope").is_err());
    }
}
