//! Errors that name where in which file the problem is.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::yaml::Mark;

/// A formula problem, located: `FILE:LINE:COL: FIELD: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FormulaError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no position (e.g. the file cannot be read).
    pub line: usize,
    /// 1-based; 0 when unknown.
    pub column: usize,
    /// Dotted path of the offending field, e.g. `actions[2].python.file`.
    pub field: String,
    pub message: String,
}

impl FormulaError {
    pub fn new(
        file: &Path,
        mark: Mark,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_path_buf(),
            line: mark.line,
            column: mark.column,
            field: field.into(),
            message: message.into(),
        }
    }

    /// A problem with the file as a whole (unreadable, not found).
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        Self::new(file, Mark::default(), "", message)
    }

    /// `LINE:COL: FIELD` — what tests assert on.
    pub fn location(&self) -> String {
        format!("{}:{}: {}", self.line, self.column, self.field)
    }
}

impl fmt::Display for FormulaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}
