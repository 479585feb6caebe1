//! `minion submit | job | pool | instance | image`: the miniond client commands.

mod client;
mod host;
mod image;
mod image_build;
mod instance;
mod json;
mod render;
pub mod runtask;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use minion_proto::controller as pb;
use tokio_stream::StreamExt;

pub use client::ClientError;

/// Where miniond listens and how to print.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// miniond's unix socket.
    #[arg(
        long,
        global = true,
        env = "MINION_SOCKET",
        default_value = "/run/minion/miniond.sock"
    )]
    pub socket: PathBuf,
    /// miniond over TCP instead: `https://HOST:PORT` (TLS; a token is needed).
    #[arg(long, global = true, env = "MINION_CONNECT")]
    pub connect: Option<String>,
    /// The CA certificate (PEM) the server's certificate must chain to, with --connect. Default:
    /// the system's roots.
    #[arg(long, global = true, env = "MINION_CA")]
    pub ca: Option<PathBuf>,
    /// A file holding the bearer token for --connect. Default: $MINION_TOKEN.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum RemoteCommand {
    /// Submit a job to miniond (runs the task in a fresh VM).
    Submit(SubmitArgs),
    /// Jobs: list, show, cancel, logs, artifacts.
    Job {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: JobCommand,
    },
    /// Pools: list; drain, undrain, set (admin).
    Pool {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: PoolCommand,
    },
    /// Instances: throwaway VMs to work in (create, list, remove, exec, shell, cp, console).
    Instance {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: instance::InstanceCommand,
    },
    /// libvirt hosts (`[hosts]`): list; drain, undrain (admin).
    Host {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: host::HostCommand,
    },
    /// Images in the daemon's catalog: list; import, remove, push (admin).
    Image {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: image::ImageCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum PoolCommand {
    /// List them.
    List,
    /// Start no job on POOL (queued jobs wait in order, running ones finish, parked VMs go).
    Drain { name: String },
    /// Start jobs on POOL again.
    Undrain { name: String },
    /// Change POOL's limits while it runs (until the next start, which reads the config file).
    Set {
        name: String,
        #[arg(long)]
        max_vms: Option<u32>,
        #[arg(long)]
        min_ready: Option<u32>,
    },
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    conn: Connection,
    /// Task repo: a local directory (on the daemon's host) or a git URL.
    #[arg(default_value = ".")]
    repo: String,
    /// Branch or tag for a git URL.
    #[arg(long = "ref")]
    git_ref: Option<String>,
    /// Formula file or directory inside the repo (default: its runtask.yml).
    #[arg(short, long)]
    formula: Option<String>,
    /// The item to check (e.g. an NVR).
    #[arg(short, long)]
    item: String,
    /// The item's type (koji_build, bodhi_update, koji_tag, compose, docker_image, dist_git_commit, pull_request).
    #[arg(short = 't', long = "type")]
    item_type: String,
    #[arg(short, long)]
    arch: Option<String>,
    /// Pool (default: the daemon's default pool).
    #[arg(short, long)]
    pool: Option<String>,
    /// Timeout in seconds (default: the pool's).
    #[arg(long)]
    timeout: Option<u64>,
    /// Extra formula variable, KEY=VALUE (repeatable).
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    args: Vec<String>,
    /// Stream the job's log and exit with its result.
    #[arg(long)]
    follow: bool,
    /// A second submission with the same key makes no new job (the first one's id is printed).
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// List jobs (newest last).
    List {
        /// Only this state (QUEUED, RUNNING, FINISHED, FAILED, …).
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        item: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// A job's details and each lifecycle step with its duration.
    Show { id: String },
    /// Cancel a job in any state.
    Cancel { id: String },
    /// A job's log (minion.log); --follow streams it live until the job ends.
    Logs {
        id: String,
        #[arg(short, long)]
        follow: bool,
    },
    /// List a job's artifacts, or fetch one with --get.
    Artifacts {
        id: String,
        /// Fetch this artifact (path as listed).
        #[arg(long)]
        get: Option<String>,
        /// Write the fetched artifact here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

/// Runs a remote command; returns the process exit status.
pub fn run(cmd: RemoteCommand) -> i32 {
    block_on(dispatch(cmd))
}

/// Runs a client command to its exit status on a runtime of its own; an error is printed.
pub fn block_on(command: impl std::future::Future<Output = Result<i32, ClientError>>) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("minion: tokio runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("minion: {e}");
            e.exit_code()
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

async fn dispatch(cmd: RemoteCommand) -> Result<i32, ClientError> {
    match cmd {
        RemoteCommand::Submit(a) => submit(a).await,
        RemoteCommand::Job { conn, cmd } => job(&conn, cmd).await,
        RemoteCommand::Instance { conn, cmd } => instance::run(&conn, cmd).await,
        RemoteCommand::Pool { conn, cmd } => {
            let mut c = client::connect(&conn).await?;
            let pools = match cmd {
                PoolCommand::List => {
                    c.list_pools(pb::ListPoolsRequest {})
                        .await?
                        .into_inner()
                        .pools
                }
                PoolCommand::Drain { name } => vec![c
                    .drain_pool(pb::DrainPoolRequest { name, drain: true })
                    .await?
                    .into_inner()],
                PoolCommand::Undrain { name } => vec![c
                    .drain_pool(pb::DrainPoolRequest { name, drain: false })
                    .await?
                    .into_inner()],
                PoolCommand::Set {
                    name,
                    max_vms,
                    min_ready,
                } => {
                    if max_vms.is_none() && min_ready.is_none() {
                        return Err(ClientError::Status(tonic::Status::invalid_argument(
                            "pool set: give --max-vms and/or --min-ready",
                        )));
                    }
                    vec![c
                        .set_pool(pb::SetPoolRequest {
                            name,
                            max_vms,
                            min_ready,
                        })
                        .await?
                        .into_inner()]
                }
            };
            if conn.json {
                print_json(&serde_json::Value::Array(
                    pools.iter().map(json::pool).collect(),
                ));
            } else {
                println!("{}", render::pools_table(&pools));
            }
            Ok(0)
        }
        RemoteCommand::Image { conn, cmd } => image::run(&conn, cmd).await,
        RemoteCommand::Host { conn, cmd } => host::run(&conn, cmd).await,
    }
}

fn parse_args(args: &[String]) -> Result<HashMap<String, String>, ClientError> {
    let mut out = HashMap::new();
    for a in args {
        let (k, v) = a.split_once('=').ok_or_else(|| {
            ClientError::Status(tonic::Status::invalid_argument(format!(
                "--arg `{a}`: expected KEY=VALUE"
            )))
        })?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// A local repo path is sent absolute (the daemon resolves nothing relative to the client).
fn repo_arg(repo: &str) -> String {
    let p = Path::new(repo);
    if p.is_dir() {
        if let Ok(abs) = p.canonicalize() {
            return abs.to_string_lossy().into_owned();
        }
    }
    repo.to_string()
}

async fn submit(a: SubmitArgs) -> Result<i32, ClientError> {
    let args = parse_args(&a.args)?;
    let mut c = client::connect(&a.conn).await?;
    let req = pb::SubmitJobRequest {
        repo: repo_arg(&a.repo),
        git_ref: a.git_ref.unwrap_or_default(),
        formula: a.formula.unwrap_or_default(),
        item: a.item,
        item_type: a.item_type,
        arch: a.arch.unwrap_or_default(),
        pool: a.pool.unwrap_or_default(),
        timeout_seconds: a.timeout.unwrap_or(0),
        args,
        idempotency_key: a.idempotency_key.unwrap_or_default(),
        ..pb::SubmitJobRequest::default()
    };
    let resp = c.submit_job(req).await?.into_inner();
    let job = resp
        .job
        .ok_or_else(|| ClientError::Other("miniond returned no job".into()))?;
    if resp.existing && !a.conn.json {
        eprintln!(
            "idempotency key already used: job {} (nothing new queued)",
            job.id
        );
    }
    if !a.follow {
        if a.conn.json {
            print_json(&json::job(&job));
        } else {
            println!("{}", job.id);
        }
        return Ok(0);
    }
    if !a.conn.json {
        eprintln!("job {} queued in pool {}", job.id, job.pool);
    }
    let fin = follow(&mut c, &job.id, true, !a.conn.json).await?;
    if a.conn.json {
        print_json(&json::job(&fin));
    } else {
        eprintln!(
            "job {}: {} (execution {}, exit code {}){}",
            fin.id,
            render::state_name(fin.state),
            render::exec_name(fin.execution_status),
            fin.exit_code,
            if fin.failure_reason.is_empty() {
                String::new()
            } else {
                format!(": {}", fin.failure_reason)
            }
        );
        if !fin.tap.is_empty() {
            print!("{}", fin.tap);
        }
    }
    Ok(job_exit_code(&fin))
}

/// As `minion runtask`: 0 OK, the task's own code (100) when it says failure, 1 when execution
/// failed or the job did not finish.
fn job_exit_code(j: &pb::Job) -> i32 {
    if j.state != pb::JobState::Finished as i32 {
        return 1;
    }
    if j.execution_status != pb::ExecutionStatus::Ok as i32 {
        return if j.exit_code != 0 { j.exit_code } else { 1 };
    }
    j.exit_code
}

/// Streams a job's events until it ends; log data to stdout, lifecycle to stderr.
async fn follow(
    c: &mut minion_proto::client::Client,
    id: &str,
    from_start: bool,
    human: bool,
) -> Result<pb::Job, ClientError> {
    follow_to(c, id, from_start, human, &mut std::io::stdout()).await
}

/// [`follow`] with the log going to `out`.
async fn follow_to(
    c: &mut minion_proto::client::Client,
    id: &str,
    from_start: bool,
    human: bool,
    out: &mut dyn Write,
) -> Result<pb::Job, ClientError> {
    let mut s = c
        .watch_job(pb::WatchJobRequest {
            id: id.to_string(),
            from_start,
        })
        .await?
        .into_inner();
    while let Some(ev) = s.next().await {
        match ev?.event {
            Some(pb::watch_event::Event::Lifecycle(l)) if human => {
                eprintln!(
                    "[{}] {}{}",
                    render::utc(l.at_unix_ms),
                    render::state_name(l.state),
                    if l.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", l.message)
                    }
                );
            }
            Some(pb::watch_event::Event::Log(l)) if human => {
                let _ = out.write_all(&l.data);
                let _ = out.flush();
            }
            Some(pb::watch_event::Event::Finished(j)) => return Ok(j),
            _ => {}
        }
    }
    // The stream ended without the final event (daemon stopped): report what is known.
    Ok(c.get_job(pb::GetJobRequest { id: id.to_string() })
        .await?
        .into_inner())
}

fn parse_state(s: &str) -> Result<i32, ClientError> {
    pb::JobState::from_str_name(&s.to_ascii_uppercase())
        .filter(|s| *s != pb::JobState::Unspecified)
        .map(|s| s as i32)
        .ok_or_else(|| {
            ClientError::Status(tonic::Status::invalid_argument(format!(
                "--state `{s}`: one of QUEUED, PROVISIONING, BOOTING, RUNNING, COLLECTING, REPORTING, FINISHED, FAILED, CANCELLED, TIMED_OUT"
            )))
        })
}

async fn job(conn: &Connection, cmd: JobCommand) -> Result<i32, ClientError> {
    let mut c = client::connect(conn).await?;
    match cmd {
        JobCommand::List {
            state,
            pool,
            item,
            limit,
        } => {
            let state = state.as_deref().map(parse_state).transpose()?.unwrap_or(0);
            // The newest `limit`, asked for newest first: it costs what it shows.
            let mut jobs = Vec::new();
            let mut token = String::new();
            let mut quarantined = 0;
            while jobs.len() < limit as usize {
                let page = c
                    .list_jobs(pb::ListJobsRequest {
                        state,
                        pool: pool.clone().unwrap_or_default(),
                        item: item.clone().unwrap_or_default(),
                        page_size: (limit as usize - jobs.len()).min(1000) as u32,
                        page_token: token,
                        newest_first: true,
                    })
                    .await?
                    .into_inner();
                jobs.extend(page.jobs);
                quarantined = page.quarantined;
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            if quarantined > 0 {
                eprintln!(
                    "warning: {quarantined} job record(s) could not be read and were moved aside (see the daemon's log)"
                );
            }
            // Shown newest last.
            jobs.reverse();
            let jobs = &jobs[..];
            if conn.json {
                print_json(&serde_json::Value::Array(
                    jobs.iter().map(json::job).collect(),
                ));
            } else {
                println!("{}", render::jobs_table(jobs));
            }
            Ok(0)
        }
        JobCommand::Show { id } => {
            let j = c.get_job(pb::GetJobRequest { id }).await?.into_inner();
            if conn.json {
                print_json(&json::job(&j));
            } else {
                println!("{}", render::job_details(&j, now_ms()));
            }
            Ok(0)
        }
        JobCommand::Cancel { id } => {
            let j = c
                .cancel_job(pb::CancelJobRequest { id })
                .await?
                .into_inner();
            if conn.json {
                print_json(&json::job(&j));
            } else {
                println!(
                    "cancel requested: job {} was {}",
                    j.id,
                    render::state_name(j.state)
                );
            }
            Ok(0)
        }
        JobCommand::Logs { id, follow: true } => {
            let fin = follow(&mut c, &id, true, true).await?;
            Ok(job_exit_code(&fin))
        }
        JobCommand::Logs { id, follow: false } => {
            fetch(&mut c, &id, "minion.log", &mut std::io::stdout()).await?;
            Ok(0)
        }
        JobCommand::Artifacts {
            id,
            get: Some(path),
            output,
        } => {
            match output {
                Some(o) => {
                    let mut f = std::fs::File::create(&o)
                        .map_err(|e| ClientError::Other(format!("{}: {e}", o.display())))?;
                    fetch(&mut c, &id, &path, &mut f).await?;
                }
                None => fetch(&mut c, &id, &path, &mut std::io::stdout()).await?,
            }
            Ok(0)
        }
        JobCommand::Artifacts { id, get: None, .. } => {
            let a = c
                .list_artifacts(pb::ListArtifactsRequest { id })
                .await?
                .into_inner()
                .artifacts;
            if conn.json {
                print_json(&serde_json::Value::Array(
                    a.iter().map(json::artifact).collect(),
                ));
            } else {
                println!("{}", render::artifacts_table(&a));
            }
            Ok(0)
        }
    }
}

async fn fetch(
    c: &mut minion_proto::client::Client,
    id: &str,
    path: &str,
    out: &mut dyn Write,
) -> Result<(), ClientError> {
    let mut s = c
        .get_artifact(pb::GetArtifactRequest {
            id: id.to_string(),
            path: path.to_string(),
        })
        .await?
        .into_inner();
    while let Some(chunk) = s.next().await {
        out.write_all(&chunk?.data)
            .map_err(|e| ClientError::Other(format!("writing {path}: {e}")))?;
    }
    out.flush()
        .map_err(|e| ClientError::Other(format!("writing {path}: {e}")))?;
    Ok(())
}
