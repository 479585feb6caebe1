//! minion: the command line.

mod formula_check;
mod remote;
mod runtask;
mod token;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "minion", version, about = "Minion: disposable-VM task runner")]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a formula on this host (libtaskotron's `runtask`).
    Runtask(runtask::RuntaskArgs),
    /// Formula tools: check.
    Formula {
        #[command(subcommand)]
        cmd: formula_check::FormulaCommand,
    },
    /// Bearer tokens for miniond's TCP listener: new.
    Token {
        #[command(subcommand)]
        cmd: token::TokenCommand,
    },
    /// miniond client commands (submit, job, pool, image).
    #[command(flatten)]
    Remote(remote::RemoteCommand),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Command::Runtask(a) => runtask::run(a),
        Command::Formula { cmd } => formula_check::run(cmd),
        Command::Token { cmd } => token::run(cmd),
        Command::Remote(c) => remote::run(c),
    };
    std::process::exit(code);
}
