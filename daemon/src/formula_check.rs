//! Formula validation at submit time. Stand-in with minion-formula's signatures
//! (`resolve_formula_path`, `load_formula`) until that crate lands on main; it checks only what the
//! daemon must refuse up front: the file exists, is YAML, is a mapping with `actions` (or `task`)
//! as a non-empty list. Swap the `use` in taskrepo.rs for `minion_formula` when it exists.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {field}: {message}")]
pub struct FormulaError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

fn err(path: &Path, line: usize, column: usize, field: &str, message: String) -> FormulaError {
    FormulaError {
        file: path.display().to_string(),
        line,
        column,
        field: field.to_string(),
        message,
    }
}

/// A directory means its `runtask.yml` (or `runtask.yaml`, `task.yml`, `task.yaml`).
pub fn resolve_formula_path(path: &Path) -> Result<PathBuf, FormulaError> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    for name in ["runtask.yml", "runtask.yaml", "task.yml", "task.yaml"] {
        let p = path.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(err(
        path,
        0,
        0,
        "formula",
        "no runtask.yml or task.yml here".into(),
    ))
}

pub fn load_formula(path: &Path) -> Result<(), FormulaError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| err(path, 0, 0, "formula", e.to_string()))?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        err(path, line, column, "yaml", e.to_string())
    })?;
    let map = doc.as_mapping().ok_or_else(|| {
        err(
            path,
            1,
            1,
            "formula",
            "must be a mapping with `actions`".into(),
        )
    })?;
    let actions = map.get("actions").or_else(|| map.get("task"));
    match actions {
        None => Err(err(path, 1, 1, "actions", "missing".into())),
        Some(serde_yaml::Value::Sequence(s)) if !s.is_empty() => Ok(()),
        Some(_) => Err(err(
            path,
            1,
            1,
            "actions",
            "must be a non-empty list of steps".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_shape_and_names_the_file() {
        let d = tempfile::tempdir().expect("tmp");
        let f = d.path().join("runtask.yml");
        std::fs::write(&f, "name: x\nactions:\n  - dummy: {result: PASSED}\n").expect("w");
        assert_eq!(resolve_formula_path(d.path()).expect("dir"), f);
        load_formula(&f).expect("valid");
        std::fs::write(&f, "name: x\n").expect("w");
        let e = load_formula(&f).expect_err("no actions");
        assert!(e.to_string().ends_with(":1:1: actions: missing"), "{e}");
        std::fs::write(&f, "name: [x\n").expect("w");
        let e = load_formula(&f).expect_err("bad yaml");
        assert!(e.to_string().contains(": yaml: "), "{e}");
    }
}
