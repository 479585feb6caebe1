//! minion: the command line.

mod remote;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "minion", version, about = "Minion: disposable-VM task runner")]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// miniond client commands (submit, job, pool, image).
    #[command(flatten)]
    Remote(remote::RemoteCommand),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Command::Remote(c) => remote::run(c),
    };
    std::process::exit(code);
}
