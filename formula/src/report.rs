//! ResultsDB v2.0 as both reporters use it: `minion runtask --report` on the host, and miniond
//! reporting a job's results from its outbox. One body builder, one URL rule.

use crate::results::CheckResult;

/// The API root of a ResultsDB given by its server root (`http://rdb/`) or by its API URL
/// (`http://rdb/api/v2.0/`): `http://rdb/api/v2.0`.
pub fn resultsdb_api(url: &str) -> String {
    let base = url.trim_end_matches('/');
    let base = base.strip_suffix("/api/v2.0").unwrap_or(base);
    format!("{base}/api/v2.0")
}

/// The testcase name of a result: `namespace.checkname` (or the checkname without a namespace).
pub fn testcase_name(namespace: Option<&str>, checkname: &str) -> String {
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}.{checkname}"),
        _ => checkname.to_string(),
    }
}

/// The `POST /results` body for one result: the testcase by name (ResultsDB creates it when
/// missing), outcome, note, `ref_url`, `data` (item, type, arch and the result's extra keys,
/// `:` replaced since ResultsDB refuses it in keys) and the job's group.
pub fn result_body(
    r: &CheckResult,
    namespace: Option<&str>,
    arch: &str,
    group: &serde_json::Value,
    ref_url: Option<&str>,
) -> serde_json::Value {
    let mut data = serde_json::Map::new();
    data.insert("item".into(), r.item.clone().into());
    data.insert("type".into(), r.item_type.clone().into());
    if !arch.is_empty() {
        data.insert("arch".into(), arch.into());
    }
    for (k, v) in &r.extra {
        data.insert(k.replace(':', "_"), v.clone());
    }
    serde_json::json!({
        "testcase": {"name": testcase_name(namespace, &r.checkname)},
        "outcome": r.effective_outcome().as_str(),
        "note": r.note.clone().unwrap_or_default(),
        "ref_url": ref_url,
        "data": data,
        "groups": [group],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_root_is_found_from_either_url() {
        for url in [
            "http://rdb.example",
            "http://rdb.example/",
            "http://rdb.example/api/v2.0",
            "http://rdb.example/api/v2.0/",
        ] {
            assert_eq!(resultsdb_api(url), "http://rdb.example/api/v2.0", "{url}");
        }
    }

    #[test]
    fn a_body_carries_the_testcase_data_and_group() {
        let r = crate::parse_results(
            "results:\n  - item: foo-1.0-1.fc40\n    type: koji_build\n    checkname: rpmlint\n    outcome: FAILED\n    note: 2 errors\n    a:b: c\n",
        )
        .expect("results")
        .remove(0);
        let b = result_body(&r, Some("dist"), "x86_64", &"G".into(), Some("http://a/x"));
        assert_eq!(b["testcase"]["name"], "dist.rpmlint");
        assert_eq!(b["outcome"], "FAILED");
        assert_eq!(b["note"], "2 errors");
        assert_eq!(b["ref_url"], "http://a/x");
        assert_eq!(b["data"]["item"], "foo-1.0-1.fc40");
        assert_eq!(b["data"]["arch"], "x86_64");
        assert_eq!(b["data"]["a_b"], "c");
        assert_eq!(b["groups"][0], "G");
    }
}
