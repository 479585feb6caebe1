//! The in-guest agent: talks to the host over the virtio-serial port `org.minion.agent.0`, runs one
//! job's formula, returns logs, artifacts and the result, then powers the guest off (or, in an
//! instance, runs the host's commands until the host hangs up).

mod args;
mod artifacts;
mod environment;
mod fetch;
mod identity;
mod init;
mod instance;
mod network;
mod outbox;
mod port;
mod runner;
mod serve;
mod settle;
mod sink;

use std::process::ExitCode;

use args::Args;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let pid1 = init::is_pid1();
    if pid1 {
        init::default_env();
        if let Err(e) = init::fork_supervisor() {
            tracing::error!(err = %e, "fork failed; running without a reaper");
        }
    }
    let code = match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    };
    // As PID 1 the supervisor (our parent) powers off once we exit.
    if args.poweroff && !pid1 {
        init::power_off_via_init();
    }
    code
}

fn run(args: &Args) -> anyhow::Result<()> {
    tracing::info!(version = env!("CARGO_PKG_VERSION"), endpoint = ?args.endpoint, "minion-agent starting");
    let (reader, writer) = port::open(&args.endpoint)?;
    let outbox = outbox::Outbox::new(writer);
    let on_host_lost = if args.poweroff {
        serve::OnHostLost::PowerOff
    } else {
        serve::OnHostLost::Exit
    };
    match serve::serve(reader, outbox, &args.workdir, on_host_lost)? {
        serve::Served::Job(outcome) => tracing::info!(
            ok = outcome.execution_ok,
            exit_code = outcome.exit_code,
            "job done"
        ),
        serve::Served::Instance => tracing::info!("instance ended"),
    }
    Ok(())
}
