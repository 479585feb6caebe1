//! miniond: the controller daemon. Loads the config, reconciles what a previous run left, then
//! serves gRPC (with health and reflection) on a unix socket and optionally TCP.

mod access;
mod api;
mod artifacts;
mod bus;
mod catalog;
mod config;
mod dashboard;
mod fetching;
mod guestvm;
mod hosts;
mod instance_api;
mod instances;
mod jobs;
mod lifecycle;
mod metrics;
mod pool;
mod prebooted;
mod reaper;
mod recorder;
mod reporting;
mod retention;
mod runner;
mod service;
mod snapshots;
mod taskrepo;
#[cfg(test)]
mod tests;
mod urlpath;
mod validations;
mod watch;
mod web;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use minion_h2authority::AuthorityFixed;
use minion_proto::controller::controller_server::ControllerServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;

use crate::config::{Config, LogFormat};

#[derive(Parser, Debug)]
#[command(name = "miniond", version, about = "Minion controller daemon")]
struct Args {
    /// Config file (TOML; see daemon/miniond.example.toml).
    #[arg(
        short,
        long,
        env = "MINIOND_CONFIG",
        default_value = "/etc/minion/miniond.toml"
    )]
    config: PathBuf,
}

/// The socket belongs to `group` with `mode`: only root and the group's members may connect.
fn restrict_socket(path: &std::path::Path, group: &str, mode: u32) -> anyhow::Result<()> {
    let name = std::ffi::CString::new(group)
        .map_err(|_| anyhow::anyhow!("socket_group `{group}`: not a group name"))?;
    // SAFETY: `name` is a valid C string; getgrnam's result is read at once, before any other
    // call that could reuse its static buffer.
    let gid = unsafe {
        let g = libc::getgrnam(name.as_ptr());
        if g.is_null() {
            anyhow::bail!(
                "socket_group `{group}`: no such group (create it: groupadd --system {group}; or set socket_group)"
            );
        }
        (*g).gr_gid
    };
    std::os::unix::fs::chown(path, None, Some(gid))
        .with_context(|| format!("{}: chown to group {group}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("{}: chmod {mode:o}", path.display()))?;
    tracing::info!("socket {} is group {group}, mode {mode:o}", path.display());
    Ok(())
}

/// What the HTTP side needs from the access config.
struct HttpAccess {
    tls: Option<config::TlsConfig>,
    tokens: Option<std::sync::Arc<access::Tokens>>,
    anonymous_read: bool,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

/// How long the runtime waits at exit for blocking calls still running (a libvirt call that
/// never returns must not keep a stopped daemon alive).
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("the tokio runtime")?;
    let result = rt.block_on(run());
    rt.shutdown_timeout(EXIT_WAIT);
    result
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = Config::load(&args.config)?;
    init_tracing(cfg.log_format);

    for d in [&cfg.state_dir, &cfg.state_dir.join("artifacts")] {
        std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
    }
    // qemu runs as its own user and must reach <state_dir>/vms/<job>/.
    std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| cfg.state_dir.display().to_string())?;
    if !cfg.agent_binary.is_file() {
        tracing::warn!(
            "agent binary {} is missing: jobs will fail until it exists (scripts/build-agent.sh)",
            cfg.agent_binary.display()
        );
    }
    let accel = minion_provisioning::accel::detect();
    let listen = cfg.listen.clone();
    let (socket_group, socket_mode) = (cfg.socket_group.clone(), cfg.socket_mode_bits());
    let listen_tcp = cfg.listen_tcp.clone();
    let socket_gate = access::Gate::Socket {
        admins: std::sync::Arc::new(access::socket_admins(&cfg.access.socket_admins)?),
    };
    let tokens = match &cfg.access.tokens_file {
        Some(path) => {
            let t = access::Tokens::load(path)?;
            tracing::info!("{} tokens from {}", t.len(), path.display());
            Some(std::sync::Arc::new(t))
        }
        None => None,
    };
    // Config::parse made sure TCP comes with TLS and tokens.
    let tcp_access = match (&cfg.listen_tcp, &cfg.tls, &tokens) {
        (Some(_), Some(tls), Some(tokens)) => {
            let read = |p: &std::path::Path| {
                std::fs::read(p).with_context(|| format!("tls: {}", p.display()))
            };
            let identity = tonic::transport::Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
            Some((
                access::Gate::Tokens(tokens.clone()),
                tonic::transport::ServerTlsConfig::new().identity(identity),
            ))
        }
        _ => None,
    };
    let listen_http = match &cfg.listen_http {
        Some(a) => Some(
            a.parse::<std::net::SocketAddr>()
                .with_context(|| format!("listen_http `{a}`"))?,
        ),
        None => None,
    };
    let http = HttpAccess {
        tls: cfg.tls.clone(),
        tokens,
        anonymous_read: cfg.access.http_anonymous_read,
    };

    let (svc, rxs) = service::Service::open(cfg, accel)
        .context("opening the jobs database and the fetch cache")?;
    svc.start(rxs).await.context("reconciling at start")?;

    let web_stop = tokio_util::sync::CancellationToken::new();
    if let Some(addr) = listen_http {
        let listener = web::bind(addr).await?;
        let tls = match &http.tls {
            Some(t) => Some(web::tls_acceptor(&t.cert, &t.key)?),
            None => None,
        };
        let gate = match &http.tokens {
            Some(tokens) => web::HttpGate::Tokens {
                tokens: tokens.clone(),
                anonymous_read: http.anonymous_read,
            },
            None => web::HttpGate::Open,
        };
        let pools_of = svc.clone();
        let site = std::sync::Arc::new(web::Site {
            jobs: svc.jobs().clone(),
            metrics: svc.metrics().clone(),
            pools: Box::new(move || pools_of.pools()),
            images_dir: svc.images_dir().to_path_buf(),
            dashboard: dashboard::Dashboard::new().context("dashboard templates")?,
            gate,
            tls: tls.is_some(),
        });
        tokio::spawn(web::serve(listener, site, tls, web_stop.clone()));
    }

    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<ControllerServer<api::Api>>().await;
    // Both reflection versions: grpcurl speaks v1, Python's grpcio-reflection v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(minion_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .context("reflection service")?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .context("reflection service (v1alpha)")?;
    let grpc = ControllerServer::from_arc(std::sync::Arc::new(api::Api { svc: svc.clone() }));
    let gated = |gate: access::Gate| InterceptedService::new(grpc.clone(), gate);

    if let Some(parent) = listen.parent() {
        std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    }
    // A socket file left by a previous (killed) daemon would make bind fail.
    match std::fs::remove_file(&listen) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| listen.display().to_string()),
    }
    let uds = UnixListener::bind(&listen).with_context(|| listen.display().to_string())?;
    restrict_socket(&listen, &socket_group, socket_mode.unwrap_or(0o660))?;
    tracing::info!("listening on {}", listen.display());

    // SIGHUP: the config file is read again; its pools apply, a bad file changes nothing.
    {
        let (svc, path) = (svc.clone(), args.config.clone());
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing a SIGHUP handler")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match Config::load(&path) {
                    Err(e) => tracing::error!("reload refused, the running config stays: {e}"),
                    Ok(cfg) => match svc.reload(&cfg) {
                        Err(e) => tracing::error!(
                            "reload refused, the running config stays: {}: {e}",
                            path.display()
                        ),
                        Ok(changes) if changes.is_empty() => {
                            tracing::info!("reloaded {}: no pool changed", path.display())
                        }
                        Ok(changes) => {
                            for c in &changes {
                                tracing::info!("reloaded {}: {c}", path.display());
                            }
                        }
                    },
                }
            }
        });
    }

    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail at start-up");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
    };

    let unix_server = tonic::transport::Server::builder()
        .add_service(health_svc.clone())
        .add_service(reflection.clone())
        .add_service(reflection_v1alpha.clone())
        .add_service(gated(socket_gate))
        .serve_with_incoming_shutdown(
            // gRPC core clients send the socket's path as :authority, which h2 refuses.
            UnixListenerStream::new(uds).map(|conn| conn.map(AuthorityFixed::new)),
            shutdown,
        );

    match listen_tcp.zip(tcp_access) {
        Some((addr, (gate, tls))) => {
            let addr: std::net::SocketAddr = addr
                .parse()
                .with_context(|| format!("listen_tcp `{addr}`"))?;
            tracing::info!("listening on tcp {addr} (TLS, bearer tokens)");
            let tcp_server = tonic::transport::Server::builder()
                .tls_config(tls)
                .context("tls: the certificate and key")?
                .add_service(health_svc)
                .add_service(reflection)
                .add_service(reflection_v1alpha)
                .add_service(gated(gate))
                .serve(addr);
            tokio::select! {
                r = unix_server => r?,
                r = tcp_server => r?,
            }
        }
        None => unix_server.await?,
    }
    let _ = std::fs::remove_file(&listen);
    web_stop.cancel();
    svc.shutdown().await;
    Ok(())
}
