//! `minion token new`: a fresh bearer token for miniond's TCP listener, and the tokens-file
//! entry that admits it (the file keeps only the token's SHA-256).

use std::io::Read;

use clap::{Subcommand, ValueEnum};
use sha2::{Digest, Sha256};

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token: prints it once, and the `[[token]]` entry for miniond's tokens_file.
    New {
        /// Who the token is for (a job records `token:NAME` as its submitter).
        name: String,
        #[arg(long, value_enum, default_value_t = Role::Submit)]
        role: Role,
        /// JSON (`token`, `entry`) instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Role {
    /// List, show, logs, artifacts.
    Read,
    /// Also submit jobs and cancel one's own.
    Submit,
    /// Also cancel anyone's jobs; pools, images.
    Admin,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn run(cmd: TokenCommand) -> i32 {
    let TokenCommand::New { name, role, json } = cmd;
    let mut raw = [0u8; 32];
    if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut raw)) {
        eprintln!("minion: /dev/urandom: {e}");
        return 1;
    }
    let token = format!("minion_{}", hex(&raw));
    let role = format!("{role:?}").to_lowercase();
    let entry = format!(
        "[[token]]\nname = {}\nrole = \"{role}\"\nsha256 = \"{}\"\n",
        toml::Value::String(name),
        hex(&Sha256::digest(token.as_bytes()))
    );
    if json {
        println!("{}", serde_json::json!({ "token": token, "entry": entry }));
    } else {
        println!("token (shown once; give it to its user as MINION_TOKEN): {token}\n");
        print!("add to miniond's access.tokens_file, then restart miniond:\n\n{entry}");
    }
    0
}
