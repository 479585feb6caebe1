//! `minion image build VARIANT…`: runs the image recipes (`images/build.sh`) and shows their
//! stages instead of their build logs: on a terminal one line per stage, the running one redrawn
//! with its time and what it does now; otherwise plain lines as stages end. The build's own logs
//! stay in its work directory (and its last lines come out when it fails).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::ClientError;

/// How often the running stage's line is redrawn.
const REDRAW: Duration = Duration::from_millis(200);
/// Width of the running stage's bar.
const BAR: usize = 20;

/// One line of build.sh: `[  12.3s] VARIANT: TEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A new stage of a variant.
    Stage { variant: String, text: String },
    /// What a long stage does now (`debootstrap: I: Unpacking …`).
    Detail { variant: String, text: String },
    /// The variant was built before with this recipe.
    Cached { variant: String },
    /// Anything else (the summary at the end).
    Other(String),
}

/// Reads one line of build.sh's output.
pub fn parse(line: &str) -> Line {
    let Some(rest) = line.strip_prefix('[').and_then(|l| l.split_once("s] ")) else {
        return Line::Other(line.to_string());
    };
    let (_, body) = rest;
    if let Some(c) = body.strip_prefix("cached: ") {
        let variant = c.split_whitespace().next().unwrap_or_default().to_string();
        return Line::Cached { variant };
    }
    let Some((variant, text)) = body.split_once(": ") else {
        return Line::Other(line.to_string());
    };
    // A detail is `TOOL: …` under a stage (run_logged's progress lines).
    let is_detail = text.split_once(": ").is_some_and(|(w, _)| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    let (variant, text) = (variant.to_string(), text.to_string());
    if is_detail {
        Line::Detail { variant, text }
    } else {
        Line::Stage { variant, text }
    }
}

/// Where build.sh is: `--recipes DIR`, the installed copy beside this binary
/// (`<prefix>/share/minion/images`), or `images/` of the checkout in the current directory.
pub fn find_recipes(given: Option<&Path>) -> Result<PathBuf, ClientError> {
    let mut candidates = Vec::new();
    if let Some(g) = given {
        candidates.push(g.to_path_buf());
    } else {
        if let Ok(exe) = std::env::current_exe() {
            if let Some(prefix) = exe.parent().and_then(Path::parent) {
                candidates.push(prefix.join("share/minion/images"));
            }
        }
        candidates.push(PathBuf::from("images"));
    }
    candidates
        .iter()
        .find(|d| d.join("build.sh").is_file())
        .cloned()
        .ok_or_else(|| {
            ClientError::Other(format!(
                "no image recipes (build.sh) in {}: pass --recipes DIR",
                candidates
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ))
        })
}

struct Running {
    variant: String,
    text: String,
    started: Instant,
    detail: String,
}

/// Runs build.sh for `variants`, showing its stages; Ok with each variant when it succeeded.
pub fn build(recipes: &Path, variants: &[String]) -> Result<(), ClientError> {
    let mut child = Command::new(recipes.join("build.sh"))
        .args(variants)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ClientError::Other(format!("{}: {e}", recipes.join("build.sh").display())))?;
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    let mut readers = Vec::new();
    for (is_err, pipe) in [
        (
            false,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ),
        (
            true,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ),
    ] {
        let Some(pipe) = pipe else { continue };
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send((is_err, line)).is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);
    let tty = std::io::stderr().is_terminal();
    let mut err = std::io::stderr();
    let mut running: Option<Running> = None;
    let mut errors: Vec<String> = Vec::new();
    let mut summary: Vec<String> = Vec::new();
    let finish = |r: &Running, err: &mut std::io::Stderr, tty: bool| {
        let secs = r.started.elapsed().as_secs_f64();
        if tty {
            let _ = writeln!(err, "\r\x1b[2K  ✓ {}: {} ({secs:.1} s)", r.variant, r.text);
        } else {
            let _ = writeln!(err, "{}: {} ({secs:.1} s)", r.variant, r.text);
        }
    };
    let mut frame = 0usize;
    loop {
        match rx.recv_timeout(REDRAW) {
            Ok((true, line)) => {
                // A failing build says why on stderr (the tail of its log).
                errors.push(line);
                if errors.len() > 60 {
                    errors.remove(0);
                }
            }
            Ok((false, line)) => match parse(&line) {
                Line::Stage { variant, text } => {
                    if let Some(r) = running.take() {
                        finish(&r, &mut err, tty);
                    }
                    running = Some(Running {
                        variant,
                        text,
                        started: Instant::now(),
                        detail: String::new(),
                    });
                }
                Line::Detail { text, .. } => {
                    if let Some(r) = running.as_mut() {
                        r.detail = text;
                    }
                }
                Line::Cached { variant } => {
                    if let Some(r) = running.take() {
                        finish(&r, &mut err, tty);
                    }
                    let _ = writeln!(err, "  ✓ {variant}: cached (this recipe was built before)");
                }
                Line::Other(l) if !l.trim().is_empty() => summary.push(l),
                Line::Other(_) => {}
            },
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if tty {
            if let Some(r) = &running {
                frame += 1;
                // An indeterminate bar: a stage's length is not known in advance.
                let pos = frame % (2 * BAR);
                let at = if pos < BAR { pos } else { 2 * BAR - pos };
                let bar: String = (0..BAR)
                    .map(|i| if i.abs_diff(at) <= 1 { '█' } else { '·' })
                    .collect();
                let mut detail = r.detail.clone();
                detail.truncate(50);
                let _ = write!(
                    err,
                    "\r\x1b[2K  {bar} {}: {} {:.0} s  {detail}",
                    r.variant,
                    r.text,
                    r.started.elapsed().as_secs_f64()
                );
                let _ = err.flush();
            }
        }
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child
        .wait()
        .map_err(|e| ClientError::Other(format!("build.sh: {e}")))?;
    if let Some(r) = running.take() {
        if status.success() {
            finish(&r, &mut err, tty);
        } else if tty {
            let _ = writeln!(err);
        }
    }
    if !status.success() {
        for l in &errors {
            let _ = writeln!(err, "{l}");
        }
        return Err(ClientError::Other(format!(
            "the image build failed ({status})"
        )));
    }
    for l in summary {
        let _ = writeln!(err, "{l}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_lines_are_stages_details_and_cached_variants() {
        assert_eq!(
            parse("[   0.0s] cloud: root filesystem (debootstrap bookworm; debs cached in /x)"),
            Line::Stage {
                variant: "cloud".into(),
                text: "root filesystem (debootstrap bookworm; debs cached in /x)".into()
            }
        );
        assert_eq!(
            parse("[  20.1s] cloud: debootstrap: I: Unpacking the base system..."),
            Line::Detail {
                variant: "cloud".into(),
                text: "debootstrap: I: Unpacking the base system...".into()
            }
        );
        assert_eq!(
            parse("[   0.0s] cached: minimal → /var/cache/minion/images/minimal-1234"),
            Line::Cached {
                variant: "minimal".into()
            }
        );
        assert_eq!(
            parse("[  87.0s] cloud: done → /var/cache/minion/images/cloud-1 (87s)"),
            Line::Stage {
                variant: "cloud".into(),
                text: "done → /var/cache/minion/images/cloud-1 (87s)".into()
            }
        );
        assert!(matches!(
            parse("images in /var/cache/minion/images:"),
            Line::Other(_)
        ));
        assert!(matches!(parse("  cloud     built  87s"), Line::Other(_)));
    }

    #[test]
    fn recipes_are_found_where_given_or_refused_with_where_they_were_looked_for() {
        let d = tempfile::tempdir().expect("tempdir");
        let e = find_recipes(Some(d.path())).expect_err("no build.sh");
        assert!(
            e.to_string().contains(&d.path().display().to_string()),
            "{e}"
        );
        std::fs::write(d.path().join("build.sh"), "#!/bin/sh\n").expect("write");
        assert_eq!(find_recipes(Some(d.path())).expect("found"), d.path());
    }

    #[test]
    fn a_build_shows_its_stages_and_a_failure_its_reason() {
        let d = tempfile::tempdir().expect("tempdir");
        let script = d.path().join("build.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\necho '[ 0.0s] toy: first stage'\necho '[ 0.1s] toy: tool: busy'\n\
             echo '[ 0.2s] toy: done'\n[ \"$1\" = bad ] && { echo 'it broke' >&2; exit 3; }\nexit 0\n",
        )
        .expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        build(d.path(), &["good".into()]).expect("built");
        let e = build(d.path(), &["bad".into()]).expect_err("failed");
        assert!(e.to_string().contains("failed"), "{e}");
    }
}
