//! minion-trigger: `check RULES` validates a rules file, `dry-run MESSAGE.json` prints the jobs a
//! message would make. Exit codes: 0 done (a message that makes no jobs included), 1 the message
//! is malformed, 2 bad input (config, rules, arguments).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use minion_trigger::config::Config;
use minion_trigger::discover::Mirrors;
use minion_trigger::message::{decide, BusMessage, Decision};
use minion_trigger::plan::plan;
use minion_trigger::rules::Rules;

#[derive(Parser, Debug)]
#[command(
    name = "minion-trigger",
    version,
    about = "Bus messages → trigger rules → Minion jobs"
)]
struct Args {
    /// Config file (TOML).
    #[arg(long, env = "MINION_TRIGGER_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Consume the bus and submit jobs to miniond (until stopped). Refuses to start on a bad
    /// config or rules file.
    Run {
        /// The rules file (default: the config's `rules`).
        #[arg(long)]
        rules: Option<PathBuf>,
    },
    /// Publish a message (a fedora-messaging JSON dump) to amq.topic, with publisher confirms:
    /// the small publisher for trying the pipeline out.
    Publish {
        message: PathBuf,
        /// The broker (default: the config's amqp.url).
        #[arg(long)]
        url: Option<String>,
        /// Publish N copies, each with its own message id (`ID-1`, `ID-2`, …).
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Validate a rules file (with --config: task names and arches too).
    Check { rules: PathBuf },
    /// Print the jobs a message (a fedora-messaging JSON dump) would make.
    DryRun {
        message: PathBuf,
        /// The rules file.
        #[arg(long)]
        rules: PathBuf,
        /// Where discover keeps its git mirrors (default: a temporary directory).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// A message dump file (`None`, said on stderr, when it cannot be read or is not one).
fn read_message(path: &std::path::Path) -> Option<BusMessage> {
    let parsed = std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| BusMessage::from_dump(&t).map_err(|e| e.to_string()));
    match parsed {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            None
        }
    }
}

/// The async runtime of `run` and `publish` (`None`, said on stderr, when it cannot start).
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("minion-trigger: {e}");
            None
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(if matches!(args.cmd, Cmd::Run { .. }) {
                    "info"
                } else {
                    "warn"
                })
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = match &args.config {
        Some(p) => match Config::load(p) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("minion-trigger: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    match args.cmd {
        Cmd::Run { rules } => {
            let cfg = cfg.unwrap_or_default();
            let path = rules.unwrap_or_else(|| cfg.rules.clone());
            let rules = match Rules::load(&path, Some(&cfg)) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            tracing::info!(rules = %path.display(), count = rules.rules.len(), "rules loaded");
            let Some(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(minion_trigger::consume::run(cfg, rules)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("minion-trigger: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Publish {
            message,
            url,
            count,
        } => {
            let cfg = cfg.unwrap_or_default();
            let url = url.unwrap_or_else(|| cfg.amqp.url.clone());
            let Some(msg) = read_message(&message) else {
                return ExitCode::from(2);
            };
            let Some(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(minion_trigger::publish::publish(&url, &msg, count)) {
                Ok(secs) => {
                    println!(
                        "published {count} message(s) to {} in {secs:.2} s",
                        msg.topic
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("minion-trigger: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Check { rules } => match Rules::load(&rules, cfg.as_ref()) {
            Ok(r) => {
                println!("{}: {} rules, OK", rules.display(), r.rules.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Cmd::DryRun {
            message,
            rules,
            cache_dir,
            json,
        } => {
            let cfg = cfg.unwrap_or_default();
            let rules = match Rules::load(&rules, Some(&cfg)) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let Some(msg) = read_message(&message) else {
                return ExitCode::from(2);
            };
            let t = match decide(&msg, &cfg) {
                Decision::Trigger(t) => t,
                Decision::Ignore(why) => {
                    println!("ignored: {why}");
                    return ExitCode::SUCCESS;
                }
                Decision::Malformed(e) => {
                    println!("malformed: {e}");
                    return ExitCode::from(1);
                }
            };
            let mut p = plan(&t, &rules, &cfg);
            let tmp;
            let cache = match cache_dir {
                Some(d) => d,
                None => match tempfile::tempdir() {
                    Ok(d) => {
                        tmp = d;
                        tmp.path().to_path_buf()
                    }
                    Err(e) => {
                        eprintln!("minion-trigger: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            let mirrors = Mirrors::new(&cache);
            for req in p.discover.clone() {
                match mirrors.discover(&req, t.str("item_type")) {
                    Ok(found) => {
                        for why in &found.passed_over {
                            eprintln!("discover: passed over {why}");
                        }
                        p.add_discovered(&req, &t, &found.tasks);
                    }
                    Err(e) => p.skipped.push(format!("rule {}: discover: {e}", req.rule)),
                }
            }
            if json {
                match serde_json::to_string_pretty(&p.jobs) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("minion-trigger: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                println!(
                    "{} {} ({}): rules {:?} matched, {} jobs",
                    t.str("message_type"),
                    t.str("item"),
                    t.str("item_type"),
                    p.matched,
                    p.jobs.len()
                );
                for j in &p.jobs {
                    let at = if j.formula.is_empty() {
                        String::new()
                    } else {
                        format!(" formula {}", j.formula)
                    };
                    let r = if j.git_ref.is_empty() {
                        String::new()
                    } else {
                        format!(" ref {}", j.git_ref)
                    };
                    println!(
                        "  {} {} {} [{}]{r}{at} (rule {})",
                        j.task, j.item, j.arch, j.repo, j.rule
                    );
                }
            }
            for s in &p.skipped {
                eprintln!("skipped: {s}");
            }
            ExitCode::SUCCESS
        }
    }
}
