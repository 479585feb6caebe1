//! `minion instance …`: throwaway VMs a developer works in, through their agent (no network, no
//! ssh): create, list, remove, exec, shell, cp, console.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use clap::Subcommand;
use minion_proto::controller as pb;
use pb::exec_request::Kind as Rq;
use pb::exec_response::Kind as Rs;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::{client, json, print_json, render, ClientError, Connection};

/// Bytes of local input per request.
const INPUT_CHUNK: usize = 32 * 1024;

#[derive(Subcommand, Debug)]
pub enum InstanceCommand {
    /// Make an instance from IMAGE; returns once its agent is Ready, with the time it took.
    Create {
        image: String,
        /// Default: `<image>-<6 hex digits>`.
        #[arg(long)]
        name: Option<String>,
        /// Memory in MiB (default: the daemon's `[instances] memory_mib`).
        #[arg(long, value_name = "MIB")]
        ram: Option<u64>,
        #[arg(long)]
        vcpus: Option<u32>,
        /// Grow its disk to this many GiB (a cloud image's cloud-init grows its file system).
        #[arg(long, value_name = "GIB")]
        disk_size: Option<u64>,
        /// `user`: a NAT-out-only NIC (nothing can reach in). Default `none`.
        #[arg(long, default_value = "none", value_parser = ["none", "user"])]
        network: String,
        /// Keep its serial console log after `remove` (on miniond's host; `remove` prints where).
        #[arg(long)]
        keep_console: bool,
    },
    /// List instances (everyone's).
    List,
    /// Power an instance off, keeping its disk.
    Stop { name: String },
    /// Boot a stopped instance again from its disk; returns at the agent's Ready.
    Start { name: String },
    /// Stop and start.
    Reboot { name: String },
    /// Destroy instances and forget them.
    Remove {
        names: Vec<String>,
        /// Every instance you own.
        #[arg(long)]
        all: bool,
    },
    /// Run a command in NAME; its output, then its exit status as yours. Stdin is passed on
    /// when it is not a terminal.
    Exec {
        name: String,
        /// On a pseudo-terminal (then stdin is passed on too, raw).
        #[arg(short, long)]
        tty: bool,
        /// Environment variable for the command, KEY=VALUE (repeatable).
        #[arg(short, long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Working directory in the guest (default /root).
        #[arg(short = 'w', long)]
        workdir: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// An interactive shell in NAME on a pseudo-terminal (resize, Ctrl-C and exit status pass
    /// through); `-- CMD…` runs that instead of a login shell.
    Shell {
        name: String,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Copy a file in or out: `cp LOCAL NAME:PATH` or `cp NAME:PATH LOCAL` (`-` is stdin/stdout).
    Cp { from: String, to: String },
    /// NAME's serial console log; --follow streams it until the instance goes.
    Console {
        name: String,
        #[arg(short, long)]
        follow: bool,
    },
}

fn bad(msg: impl Into<String>) -> ClientError {
    ClientError::Status(tonic::Status::invalid_argument(msg.into()))
}

pub async fn run(conn: &Connection, cmd: InstanceCommand) -> Result<i32, ClientError> {
    let mut c = client::connect(conn).await?;
    match cmd {
        InstanceCommand::Create {
            image,
            name,
            ram,
            vcpus,
            disk_size,
            network,
            keep_console,
        } => {
            let t0 = std::time::Instant::now();
            let i = c
                .create_instance(pb::CreateInstanceRequest {
                    image,
                    name: name.unwrap_or_default(),
                    vcpus: vcpus.unwrap_or(0),
                    memory_mib: ram.unwrap_or(0),
                    network: network == "user",
                    disk_gib: disk_size.unwrap_or(0),
                    keep_console,
                })
                .await?
                .into_inner();
            if conn.json {
                print_json(&json::instance(&i));
            } else {
                println!(
                    "{}: ready in {:.2} s ({}; {} s in miniond)",
                    i.name,
                    t0.elapsed().as_secs_f64(),
                    if i.restored {
                        "restored from a snapshot"
                    } else {
                        "booted"
                    },
                    format_args!("{:.2}", i.ready_ms as f64 / 1000.0),
                );
            }
            Ok(0)
        }
        InstanceCommand::List => {
            let list = c
                .list_instances(pb::ListInstancesRequest {})
                .await?
                .into_inner()
                .instances;
            if conn.json {
                print_json(&serde_json::Value::Array(
                    list.iter().map(json::instance).collect(),
                ));
            } else {
                println!("{}", render::instances_table(&list));
            }
            Ok(0)
        }
        InstanceCommand::Stop { name } => {
            power(&mut c, conn, name, pb::InstanceActionKind::Stop).await
        }
        InstanceCommand::Start { name } => {
            power(&mut c, conn, name, pb::InstanceActionKind::Start).await
        }
        InstanceCommand::Reboot { name } => {
            power(&mut c, conn, name, pb::InstanceActionKind::Reboot).await
        }
        InstanceCommand::Remove { names, all } => {
            if names.is_empty() && !all {
                return Err(bad("instance remove: name instances, or --all"));
            }
            let r = c
                .remove_instances(pb::RemoveInstancesRequest { names, all })
                .await?
                .into_inner();
            if conn.json {
                print_json(&serde_json::json!({
                    "removed": r.removed,
                    "kept_consoles": r.kept_consoles,
                }));
            } else {
                for n in &r.removed {
                    match r.kept_consoles.get(n) {
                        Some(log) => println!("removed {n} (console log kept: {log})"),
                        None => println!("removed {n}"),
                    }
                }
            }
            Ok(0)
        }
        InstanceCommand::Exec {
            name,
            tty,
            env,
            workdir,
            command,
        } => {
            let env = parse_env(&env)?;
            let stdin = if tty || !std::io::stdin().is_terminal() {
                Input::Stdin
            } else {
                Input::None
            };
            let start = pb::ExecStart {
                instance: name,
                argv: command,
                env,
                cwd: workdir.unwrap_or_default(),
                tty,
                size: tty.then(terminal_size).flatten(),
            };
            exec(&mut c, start, stdin, &mut Output::Std).await
        }
        InstanceCommand::Shell { name, command } => {
            let argv = if command.is_empty() {
                // A login shell where there is bash, else sh (minimal images).
                vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "if command -v bash >/dev/null; then exec bash -l; else exec sh -l; fi".into(),
                ]
            } else {
                command
            };
            let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
            let start = pb::ExecStart {
                instance: name,
                argv,
                env: [("TERM".to_string(), term)].into(),
                cwd: String::new(),
                tty: true,
                size: terminal_size(),
            };
            exec(&mut c, start, Input::Stdin, &mut Output::Std).await
        }
        InstanceCommand::Cp { from, to } => cp(&mut c, &from, &to).await,
        InstanceCommand::Console { name, follow } => {
            let mut s = c
                .instance_console(pb::InstanceConsoleRequest { name, follow })
                .await?
                .into_inner();
            let mut out = std::io::stdout();
            while let Some(chunk) = s.next().await {
                let chunk = chunk?;
                out.write_all(&chunk.data)
                    .and_then(|()| out.flush())
                    .map_err(|e| ClientError::Other(format!("stdout: {e}")))?;
            }
            Ok(0)
        }
    }
}

async fn power(
    c: &mut minion_proto::client::Client,
    conn: &Connection,
    name: String,
    action: pb::InstanceActionKind,
) -> Result<i32, ClientError> {
    let t0 = std::time::Instant::now();
    let i = c
        .instance_action(pb::InstanceActionRequest {
            name,
            action: action as i32,
        })
        .await?
        .into_inner();
    if conn.json {
        print_json(&json::instance(&i));
    } else {
        println!(
            "{}: {} ({:.2} s)",
            i.name,
            render::instance_state_name(i.state),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(0)
}

fn parse_env(env: &[String]) -> Result<HashMap<String, String>, ClientError> {
    env.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| bad(format!("--env `{kv}`: expected KEY=VALUE")))
        })
        .collect()
}

/// What the command's stdin gets.
enum Input {
    None,
    Stdin,
    File(PathBuf),
}

/// Where the command's stdout goes.
enum Output {
    Std,
    File(std::fs::File),
}

/// The local terminal's size, when stdout is one.
fn terminal_size() -> Option<pb::TerminalSize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some(pb::TerminalSize {
        rows: ws.ws_row.into(),
        cols: ws.ws_col.into(),
    })
}

/// The local terminal in raw mode (every key to the guest, which echoes) until dropped.
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn enter() -> RawTerminal {
        if !std::io::stdin().is_terminal() {
            return RawTerminal(None);
        }
        // SAFETY: tcgetattr fills the termios; cfmakeraw and tcsetattr take it by pointer.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
                return RawTerminal(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) != 0 {
                return RawTerminal(None);
            }
            RawTerminal(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores what tcgetattr returned.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
        }
    }
}

/// Reads `input` on a thread of its own (stdin blocks) into requests; ends with `eof`.
fn feed(input: Input, tx: mpsc::Sender<pb::ExecRequest>) {
    let reader: Box<dyn Read + Send> = match input {
        Input::None => {
            // Called on the runtime's thread: no blocking send (the queue has room).
            let _ = tx.try_send(pb::ExecRequest {
                kind: Some(Rq::Eof(true)),
            });
            return;
        }
        Input::Stdin => Box::new(std::io::stdin()),
        Input::File(p) => match std::fs::File::open(&p) {
            Ok(f) => Box::new(f),
            // Checked before the call; a file gone since then ends the input.
            Err(_) => Box::new(std::io::empty()),
        },
    };
    std::thread::spawn(move || {
        let mut reader = reader;
        let mut buf = vec![0u8; INPUT_CHUNK];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let req = pb::ExecRequest {
                        kind: Some(Rq::Input(buf[..n].to_vec())),
                    };
                    if tx.blocking_send(req).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.blocking_send(pb::ExecRequest {
            kind: Some(Rq::Eof(true)),
        });
    });
}

/// Runs one command to its end; returns its exit status (the remote code).
async fn exec(
    c: &mut minion_proto::client::Client,
    start: pb::ExecStart,
    input: Input,
    out: &mut Output,
) -> Result<i32, ClientError> {
    let tty = start.tty;
    let (tx, rx) = mpsc::channel::<pb::ExecRequest>(16);
    tx.send(pb::ExecRequest {
        kind: Some(Rq::Start(start)),
    })
    .await
    .map_err(|_| ClientError::Other("exec: request stream closed".into()))?;
    let mut responses = c.exec(ReceiverStream::new(rx)).await?.into_inner();
    let _raw = tty.then(RawTerminal::enter);
    feed(input, tx.clone());
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .map_err(|e| ClientError::Other(format!("SIGWINCH: {e}")))?;
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    loop {
        tokio::select! {
            r = responses.next() => {
                let Some(r) = r else {
                    return Err(ClientError::Other("exec: miniond ended the call without an exit status".into()));
                };
                match r?.kind {
                    Some(Rs::Stdout(d)) => {
                        let written = match out {
                            Output::Std => stdout.write_all(&d).and_then(|()| stdout.flush()),
                            Output::File(f) => f.write_all(&d),
                        };
                        written.map_err(|e| ClientError::Other(format!("writing output: {e}")))?;
                    }
                    Some(Rs::Stderr(d)) => {
                        let _ = stderr.write_all(&d);
                    }
                    Some(Rs::Exit(x)) => return Ok(x.code),
                    None => {}
                }
            }
            _ = winch.recv(), if tty => {
                if let Some(size) = terminal_size() {
                    let _ = tx.send(pb::ExecRequest { kind: Some(Rq::Resize(size)) }).await;
                }
            }
        }
    }
}

/// `NAME:PATH` → (NAME, PATH); a local path otherwise (one with a `/` before any `:` is local).
fn remote_side(s: &str) -> Option<(&str, &str)> {
    let (name, path) = s.split_once(':')?;
    if name.is_empty() || name.contains('/') || path.is_empty() {
        return None;
    }
    Some((name, path))
}

async fn cp(
    c: &mut minion_proto::client::Client,
    from: &str,
    to: &str,
) -> Result<i32, ClientError> {
    let start = |name: &str, argv: Vec<String>| pb::ExecStart {
        instance: name.to_string(),
        argv,
        ..pb::ExecStart::default()
    };
    let code = match (remote_side(from), remote_side(to)) {
        (None, Some((name, path))) => {
            let input = if from == "-" {
                Input::Stdin
            } else {
                let p = PathBuf::from(from);
                if !p.is_file() {
                    return Err(bad(format!("cp: {from} is not a file")));
                }
                Input::File(p)
            };
            // The guest writes it with its own `cat`: a path it resolves, as root.
            let argv = vec![
                "/bin/sh".into(),
                "-c".into(),
                "cat > \"$1\"".into(),
                "sh".into(),
                path.into(),
            ];
            exec(c, start(name, argv), input, &mut Output::Std).await?
        }
        (Some((name, path)), None) => {
            let mut out = if to == "-" {
                Output::Std
            } else {
                Output::File(
                    std::fs::File::create(to)
                        .map_err(|e| ClientError::Other(format!("cp: {to}: {e}")))?,
                )
            };
            let argv = vec!["cat".into(), "--".into(), path.into()];
            let code = exec(c, start(name, argv), Input::None, &mut out).await?;
            if code != 0 && to != "-" {
                let _ = std::fs::remove_file(to);
            }
            code
        }
        (Some(_), Some(_)) => return Err(bad("cp: one side must be local")),
        (None, None) => return Err(bad("cp: one side must be NAME:PATH")),
    };
    if code != 0 {
        eprintln!("minion: cp: the copy failed in the guest (exit status {code})");
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_are_name_colon_path() {
        assert_eq!(
            remote_side("dev:/etc/os-release"),
            Some(("dev", "/etc/os-release"))
        );
        assert_eq!(remote_side("dev:notes.txt"), Some(("dev", "notes.txt")));
        assert_eq!(remote_side("./a:b"), None);
        assert_eq!(remote_side("/tmp/x"), None);
        assert_eq!(remote_side(":x"), None);
        assert_eq!(remote_side("dev:"), None);
    }

    #[test]
    fn env_is_key_value() {
        let e = parse_env(&["A=1".into(), "B=x=y".into()]).expect("parsed");
        assert_eq!(e["A"], "1");
        assert_eq!(e["B"], "x=y");
        assert!(parse_env(&["nope".into()]).is_err());
    }
}
