//! Running the few external tools provisioning needs (`qemu-img`, `genisoimage`) with their stderr
//! kept for the error: "it failed" without the tool's own words is useless to an operator.

use std::ffi::OsStr;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::error::ProvisionError;

/// Longest stderr kept in an error; tools can be chatty, errors end up in logs and gRPC statuses.
const MAX_STDERR: usize = 4096;

/// Runs `program args…` to completion with stdin closed; Ok when it exits 0.
pub fn run<I, S>(program: &str, args: I) -> Result<(), ProvisionError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    output(program, args).map(|_| ())
}

/// [`run`], returning what the program wrote to stdout.
pub fn output<I, S>(program: &str, args: I) -> Result<Vec<u8>, ProvisionError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let started = Instant::now();
    let output = minion_children::die_with_parent(&mut Command::new(program))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| ProvisionError::Spawn {
            program: program.to_string(),
            source,
        })?;
    tracing::debug!(
        program,
        elapsed_ms = started.elapsed().as_millis() as u64,
        status = %output.status,
        "ran external tool"
    );
    if output.status.success() {
        return Ok(output.stdout);
    }
    let command = std::iter::once(program.to_string())
        .chain(args.iter().map(|a| shell_quote(&a.to_string_lossy())))
        .collect::<Vec<_>>()
        .join(" ");
    let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&output.stdout).trim().to_string();
    }
    if stderr.len() > MAX_STDERR {
        let mut cut = stderr.len() - MAX_STDERR;
        while !stderr.is_char_boundary(cut) {
            cut += 1;
        }
        stderr = format!("…{}", &stderr[cut..]);
    }
    if stderr.is_empty() {
        stderr = "(no output)".to_string();
    }
    Err(ProvisionError::Command {
        command,
        status: output.status.to_string(),
        stderr,
    })
}

/// Quotes an argument for display only (the command is never run through a shell).
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_stderr_and_command() {
        let err = run("sh", ["-c", "echo 'it broke' >&2; exit 3"]).expect_err("exit 3 must fail");
        match err {
            ProvisionError::Command {
                command,
                status,
                stderr,
            } => {
                assert_eq!(stderr, "it broke");
                assert!(status.contains('3'), "{status}");
                assert!(command.starts_with("sh -c 'echo"), "{command}");
            }
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run("minion-no-such-tool", ["x"]).expect_err("must fail");
        assert!(matches!(err, ProvisionError::Spawn { .. }), "{err:?}");
        assert!(err.to_string().contains("minion-no-such-tool"));
    }

    #[test]
    fn long_stderr_is_bounded() {
        let err = run(
            "sh",
            ["-c", "head -c 100000 /dev/zero | tr '\\0' x >&2; exit 1"],
        )
        .expect_err("must fail");
        let ProvisionError::Command { stderr, .. } = err else {
            panic!("{err:?}")
        };
        assert!(stderr.len() <= MAX_STDERR + 4, "{}", stderr.len());
    }

    #[test]
    fn success_is_ok() {
        run("true", std::iter::empty::<&str>()).expect("true succeeds");
    }
}
