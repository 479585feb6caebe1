//! Taskotron formulas: parse and validate (`runtask.yml`), substitute `${var}`s, run the
//! directives, and produce ResultYAML and TAP13. Used by `minion runtask` on the host, by the
//! agent inside VMs, and by miniond to validate a job before it makes a VM.

mod context;
mod directives;
mod environment;
mod error;
mod fetch;
mod formula;
mod item_types;
pub mod report;
mod results;
mod runner;
mod subst;
pub mod yaml;

pub use context::{
    ActionState, CancelFlag, EventSink, LogStream, ReportConfig, RunConfig, EXIT_BAD_INPUT,
    EXIT_CHECK_FAILED, EXIT_EXECUTION_FAILED,
};
pub use directives::{directive_names, is_directive};
pub use environment::{
    check_package_name, on_path, package_base, Environment, HostPackages, PackageDb, MAX_PACKAGES,
};
pub use error::FormulaError;
pub use fetch::{
    check_name, check_nvr, split_nvr, FetchRequest, Fetched, FetchedKind, Fetcher, RpmFilter,
    MAX_LIST, MAX_NAME, PACKAGE_INDEX,
};
pub use formula::{
    load_formula, parse_formula, resolve_formula_path, Action, Formula, FORMULA_NAMES,
};
pub use item_types::{is_item_type, item_type_words, ITEM_TYPES};
pub use results::{
    parse_results, results_to_tap13, results_to_yaml, CheckResult, Outcome, ResultsError, OUTCOMES,
};
pub use runner::{run, ExecutionStatus, RunReport};
pub use subst::{expand, ExpandError, Vars};

/// Substitutes and re-validates one step's parameters, as `run` does before executing it.
pub fn substitute_params(action: &Action, vars: &Vars) -> Result<yaml::Node, FormulaError> {
    let field = action.field();
    let to_err = |e: directives::ParamError| FormulaError {
        file: std::path::PathBuf::new(),
        line: e.mark.line,
        column: e.mark.column,
        field: e.field,
        message: e.message,
    };
    let params = subst::substitute(&action.params, vars, &field).map_err(to_err)?;
    directives::validate(&action.directive, &params, &field).map_err(to_err)?;
    Ok(params)
}
