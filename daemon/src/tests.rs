//! The daemon's shape, checked on its own sources: no module imports a module that imports it
//! back, only `jobs` writes job state or publishes to watchers, and no function of the daemon
//! returns a bare `String` error. A change that breaks the shape fails here, naming the culprit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its top-level module name (`jobs/store.rs` → `jobs`).
fn sources(dir: &Path) -> Vec<(String, PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read src").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(dir).expect("under src");
                let first = rel
                    .components()
                    .next()
                    .and_then(|c| c.as_os_str().to_str())
                    .unwrap_or_default()
                    .trim_end_matches(".rs")
                    .to_string();
                let text = std::fs::read_to_string(&p).expect("read file");
                out.push((first, p, text));
            }
        }
    }
    out
}

/// The module a file's code, before its `#[cfg(test)] mod tests`, refers to as `crate::NAME`.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let mut refs = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if rest.starts_with('{') {
            // `use crate::{a, b::c}`: every first segment inside the braces.
            let inner = &rest[1..rest.find('}').unwrap_or(rest.len())];
            for part in inner.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    refs.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                refs.insert(name);
            }
        }
    }
    refs
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, _, text) in sources(&src_dir()) {
        if module == "main" || module == "tests" {
            continue;
        }
        let refs = crate_refs(&text);
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(refs.into_iter().filter(|r| *r != module));
    }
    graph
}

/// A cycle in `graph`, if there is one, as the path that closes it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut cycle = path[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let graph = module_graph();
    assert!(
        graph.contains_key("jobs") && graph.contains_key("runner"),
        "{graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle in daemon/src: {}", cycle.join(" → "));
    }
    // The lower layers never reach up.
    for low in ["jobs", "pool", "guestvm", "prebooted"] {
        for high in ["service", "api", "runner", "watch"] {
            assert!(
                !graph[low].contains(high),
                "{low} imports {high}: {:?}",
                graph[low]
            );
        }
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default();
    assert_eq!(find_cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        crate_refs(
            "use crate::{a::X, b};\nuse crate::c::D;\n#[cfg(test)]\nmod tests {\nuse crate::e;\n}"
        ),
        ["a", "b", "c"].into_iter().map(String::from).collect()
    );
}

#[test]
fn only_jobs_writes_job_state_or_publishes() {
    let forbidden = [
        ".transition(",
        ".transition_with(",
        ".publish(",
        ".publish_after(",
        "store.create(",
        "store.update(",
    ];
    for (module, path, text) in sources(&src_dir()) {
        if module == "jobs" || module == "tests" {
            continue;
        }
        for f in forbidden {
            assert!(
                !text.contains(f),
                "{} calls `{f}`: job state and watchers belong to jobs/",
                path.display()
            );
        }
    }
}

#[test]
fn no_string_errors_on_the_run_path() {
    for (_, path, text) in sources(&src_dir()) {
        let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for bad in [", String>", ",String>"] {
            for (i, _) in flat.match_indices(bad) {
                let before = &flat[..i];
                let opened = before.rfind("Result<").unwrap_or(0);
                let closed = before.rfind('>').unwrap_or(0);
                assert!(
                    opened == 0 || closed > opened,
                    "{}: a Result with a String error: …{}…",
                    path.display(),
                    &flat[opened..(i + bad.len()).min(flat.len())]
                );
            }
        }
    }
}
