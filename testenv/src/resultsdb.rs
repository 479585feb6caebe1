//! A **stand-in for ResultsDB** (the real one is a Flask + PostgreSQL service that cannot run
//! here): a local HTTP server answering the v2.0 calls Minion makes, and checking what ResultsDB
//! checks on them.
//!
//! - `POST /api/v2.0/results`: a JSON object; `testcase` is required, a name or an object with a
//!   non-empty `name`; `outcome` is required and one of PASSED, INFO, FAILED, NEEDS_INSPECTION;
//!   `note` and `ref_url` are strings or null; `data` is an object whose values are scalars or
//!   lists of scalars; `groups` is a list of UUID strings or objects with a `uuid`. Anything else
//!   is `400 {"message": …}`; a stored result is `201` with its id. Unknown keys are ignored.
//! - `GET /api/v2.0/results?KEY=VALUE…`: `{"data": [results whose data (or outcome/testcase) match]}`.
//! - `set_down(true)`: every request is answered `503` (ResultsDB unavailable).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

const OUTCOMES: &[&str] = &["PASSED", "INFO", "FAILED", "NEEDS_INSPECTION"];

#[derive(Default)]
struct State {
    results: Mutex<Vec<Value>>,
    down: AtomicBool,
    /// Every request: (method, path, status).
    requests: Mutex<Vec<(String, String, u16)>>,
    auth: Mutex<Vec<Option<String>>>,
}

/// A running stand-in; it lives as long as the process (its thread never ends).
#[derive(Clone)]
pub struct ResultsDbStandIn {
    pub url: String,
    state: Arc<State>,
}

fn validate(body: &Value) -> Result<(), String> {
    let o = body.as_object().ok_or("the body must be a JSON object")?;
    match o.get("testcase") {
        Some(Value::String(s)) if !s.is_empty() => {}
        Some(Value::Object(t)) => match t.get("name") {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => return Err("testcase: `name` must be a non-empty string".into()),
        },
        None => return Err("testcase: missing required field".into()),
        _ => return Err("testcase: must be a name or an object with `name`".into()),
    }
    match o.get("outcome").and_then(Value::as_str) {
        Some(out) if OUTCOMES.contains(&out) => {}
        Some(out) => {
            return Err(format!(
                "outcome: `{out}` is not one of {}",
                OUTCOMES.join(", ")
            ))
        }
        None => return Err("outcome: missing required field".into()),
    }
    for k in ["note", "ref_url"] {
        if !matches!(o.get(k), None | Some(Value::Null) | Some(Value::String(_))) {
            return Err(format!("{k}: must be a string"));
        }
    }
    if let Some(d) = o.get("data") {
        let d = d.as_object().ok_or("data: must be an object")?;
        for (k, v) in d {
            let scalar =
                |v: &Value| matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_));
            let ok = scalar(v) || v.as_array().is_some_and(|a| a.iter().all(scalar));
            if !ok {
                return Err(format!("data.{k}: must be a scalar or a list of scalars"));
            }
        }
    }
    if let Some(g) = o.get("groups") {
        let g = g.as_array().ok_or("groups: must be a list")?;
        for (i, x) in g.iter().enumerate() {
            let ok = match x {
                Value::String(s) => !s.is_empty(),
                Value::Object(m) => m
                    .get("uuid")
                    .and_then(Value::as_str)
                    .is_some_and(|u| !u.is_empty()),
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "groups[{i}]: must be a UUID or an object with `uuid`"
                ));
            }
        }
    }
    Ok(())
}

/// Whether stored result `r` matches every `key=value` of a query.
fn matches(r: &Value, query: &BTreeMap<String, String>) -> bool {
    query.iter().all(|(k, want)| {
        let got = match k.as_str() {
            "outcome" => r.get("outcome").cloned(),
            "testcases" => r.pointer("/testcase/name").cloned(),
            _ => r.pointer(&format!("/data/{k}")).cloned(),
        };
        match got {
            Some(Value::String(s)) => s == *want,
            Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(want)),
            Some(other) => want.as_str() == other.to_string().as_str(),
            None => false,
        }
    })
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl ResultsDbStandIn {
    pub fn start() -> ResultsDbStandIn {
        let state = Arc::new(State::default());
        let st = state.clone();
        let url = crate::http::serve("ResultsDB stand-in", move |req, stream| {
            serve(&st, req, stream)
        });
        ResultsDbStandIn { url, state }
    }

    /// Answer 503 to everything (down) or serve again.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// The results stored so far.
    pub fn results(&self) -> Vec<Value> {
        self.state
            .results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every request so far: (method, path, status).
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.state
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The Authorization header of every request so far.
    pub fn auth_headers(&self) -> Vec<Option<String>> {
        self.state
            .auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn serve(
    st: &State,
    req: crate::http::Request,
    stream: std::net::TcpStream,
) -> std::io::Result<()> {
    let (path, query) = req.path_and_query();
    let (method, body, auth) = (req.method.as_str(), &req.body, req.authorization.clone());
    let (status, reply) = if st.down.load(Ordering::SeqCst) {
        (
            503,
            json!({"message": "ResultsDB is unavailable (stand-in set down)"}),
        )
    } else {
        match (method, path) {
            ("POST", "/api/v2.0/results") => match serde_json::from_slice::<Value>(body) {
                Err(e) => (400, json!({"message": format!("Malformed JSON: {e}")})),
                Ok(v) => match validate(&v) {
                    Err(m) => (400, json!({"message": m})),
                    Ok(()) => {
                        let mut results = st.results.lock().unwrap_or_else(|p| p.into_inner());
                        let mut stored = v.clone();
                        stored["id"] = json!(results.len() + 1);
                        if let Some(Value::String(name)) = v.get("testcase") {
                            stored["testcase"] = json!({"name": name});
                        }
                        results.push(stored.clone());
                        (201, stored)
                    }
                },
            },
            ("GET", "/api/v2.0/results") => {
                let q: BTreeMap<String, String> = query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (unescape(k), unescape(v)))
                    .collect();
                let results = st.results.lock().unwrap_or_else(|p| p.into_inner());
                let hits: Vec<Value> = results.iter().filter(|r| matches(r, &q)).cloned().collect();
                (200, json!({"data": hits}))
            }
            _ => (
                404,
                json!({"message": format!("{method} {path}: not found")}),
            ),
        }
    };
    st.requests.lock().unwrap_or_else(|p| p.into_inner()).push((
        method.to_string(),
        path.to_string(),
        status,
    ));
    st.auth.lock().unwrap_or_else(|p| p.into_inner()).push(auth);
    let text = reply.to_string();
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let mut s = stream;
    write!(
        s,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_real_resultsdb_refuses_is_refused() {
        let ok = json!({"testcase": {"name": "dist.rpmlint"}, "outcome": "PASSED",
            "data": {"item": "foo-1.0-1.fc40", "type": "koji_build"}, "groups": ["g"], "ref_url": null});
        assert_eq!(validate(&ok), Ok(()));
        for (bad, want) in [
            (
                json!({"outcome": "PASSED"}),
                "testcase: missing required field",
            ),
            (
                json!({"testcase": {"ref_url": "x"}, "outcome": "PASSED"}),
                "testcase: `name` must be a non-empty string",
            ),
            (
                json!({"testcase": "t", "outcome": "GREAT"}),
                "outcome: `GREAT` is not one of PASSED, INFO, FAILED, NEEDS_INSPECTION",
            ),
            (json!({"testcase": "t"}), "outcome: missing required field"),
            (
                json!({"testcase": "t", "outcome": "INFO", "data": {"x": {"y": 1}}}),
                "data.x: must be a scalar or a list of scalars",
            ),
            (
                json!({"testcase": "t", "outcome": "INFO", "groups": [3]}),
                "groups[0]: must be a UUID or an object with `uuid`",
            ),
            (
                json!({"testcase": "t", "outcome": "INFO", "note": 5}),
                "note: must be a string",
            ),
            (json!([1]), "the body must be a JSON object"),
        ] {
            assert_eq!(validate(&bad), Err(want.to_string()), "{bad}");
        }
        let mut q = BTreeMap::new();
        q.insert("item".to_string(), "foo-1.0-1.fc40".to_string());
        assert!(matches(&ok, &q));
        q.insert("type".to_string(), "bodhi_update".to_string());
        assert!(!matches(&ok, &q));
        assert_eq!(unescape("a%2Fb+c"), "a/b c");
    }
}
