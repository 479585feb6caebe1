//! `minion formula check FILE...`: validate formulas without running them.

use std::path::PathBuf;

use clap::Subcommand;
use minion_formula::{load_formula, resolve_formula_path, EXIT_BAD_INPUT};

#[derive(Subcommand, Debug)]
pub enum FormulaCommand {
    /// Parse and validate formula files (or task directories); non-zero exit on the first error.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn run(cmd: FormulaCommand) -> i32 {
    let FormulaCommand::Check { files } = cmd;
    let mut code = 0;
    for f in files {
        match resolve_formula_path(&f).and_then(|p| load_formula(&p)) {
            Ok(formula) => println!(
                "{}: OK: {} ({} step(s){})",
                formula.path.display(),
                formula.name,
                formula.actions.len(),
                if formula.input_args.is_empty() {
                    String::new()
                } else {
                    format!(", needs {}", formula.input_args.join(", "))
                }
            ),
            Err(e) => {
                eprintln!("{e}");
                code = EXIT_BAD_INPUT;
            }
        }
    }
    code
}
