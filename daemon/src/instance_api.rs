//! The instance RPCs' mapping: requests to [`Instances`], records and errors to protobuf and
//! statuses, and the two streams (a command's input and output; the console log).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use minion_channel::{ExecControl, ExecError, ExecEvent, ExecSpec, ExecStream};
use minion_proto::controller as pb;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::access::Caller;
use crate::instances::{CreateRequest, InstanceError, InstanceRecord, InstanceState, Instances};

pub type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// How often a followed console log is read for what it added.
const CONSOLE_POLL: Duration = Duration::from_millis(200);
const CONSOLE_CHUNK: usize = 64 * 1024;

pub fn status(e: InstanceError) -> Status {
    let msg = e.to_string();
    match e {
        InstanceError::Disabled | InstanceError::NotReady { .. } => {
            Status::failed_precondition(msg)
        }
        InstanceError::BadName(_) | InstanceError::Shape { .. } => Status::invalid_argument(msg),
        InstanceError::Exists(_) => Status::already_exists(msg),
        InstanceError::Image { .. } | InstanceError::NotFound(_) => Status::not_found(msg),
        InstanceError::Limit { .. }
        | InstanceError::OwnerLimit { .. }
        | InstanceError::Exec(ExecError::TooMany) => Status::resource_exhausted(msg),
        InstanceError::NotYours { .. } => Status::permission_denied(msg),
        InstanceError::Exec(ExecError::NoCommand) => Status::invalid_argument(msg),
        InstanceError::Exec(ExecError::Closed) | InstanceError::ShuttingDown => {
            Status::unavailable(msg)
        }
        InstanceError::Boot(_)
        | InstanceError::Attach(_)
        | InstanceError::Store(_)
        | InstanceError::Corrupt { .. }
        | InstanceError::Task(_) => Status::internal(msg),
    }
}

pub fn to_pb(r: InstanceRecord, running: u32) -> pb::Instance {
    pb::Instance {
        name: r.name,
        owner: r.owner,
        image: r.image,
        state: match r.state {
            InstanceState::Creating => pb::InstanceState::Creating,
            InstanceState::Ready => pb::InstanceState::Ready,
            InstanceState::Failed => pb::InstanceState::Failed,
            InstanceState::Lost => pb::InstanceState::Lost,
            InstanceState::Stopped => pb::InstanceState::Stopped,
        } as i32,
        reason: r.reason,
        vcpus: r.vcpus,
        memory_mib: r.memory_mib,
        network: r.network,
        created_at_ms: r.created_at_ms,
        ready_ms: r.ready_ms,
        restored: r.restored,
        domain: r.domain,
        agent_version: r.agent_version,
        running,
        keep_console: r.keep_console,
    }
}

pub async fn create(
    instances: &Arc<Instances>,
    caller: &Caller,
    r: pb::CreateInstanceRequest,
) -> Result<pb::Instance, Status> {
    let rec = instances
        .create(
            caller,
            CreateRequest {
                image: r.image,
                name: r.name,
                vcpus: r.vcpus,
                memory_mib: r.memory_mib,
                network: r.network,
                disk_gib: (r.disk_gib > 0).then_some(r.disk_gib),
                keep_console: r.keep_console,
            },
        )
        .await
        .map_err(status)?;
    Ok(to_pb(rec, 0))
}

/// Stop, start or reboot.
pub async fn action(
    instances: &Arc<Instances>,
    caller: &Caller,
    r: pb::InstanceActionRequest,
) -> Result<pb::Instance, Status> {
    use pb::InstanceActionKind as A;
    let rec = match A::try_from(r.action) {
        Ok(A::Stop) => instances.stop_instance(caller, &r.name).await,
        Ok(A::Start) => instances.start_instance(caller, &r.name).await,
        Ok(A::Reboot) => match instances.stop_instance(caller, &r.name).await {
            Ok(_) => instances.start_instance(caller, &r.name).await,
            Err(e) => Err(e),
        },
        _ => {
            return Err(Status::invalid_argument(
                "action: one of STOP, START, REBOOT",
            ))
        }
    }
    .map_err(status)?;
    Ok(to_pb(rec, 0))
}

/// Runs the command the first request starts; the rest of the requests feed it, its events
/// become the responses. The call ending (either side) kills a command still running.
pub async fn exec(
    instances: &Arc<Instances>,
    caller: &Caller,
    mut inbound: Streaming<pb::ExecRequest>,
) -> Result<Streamed<pb::ExecResponse>, Status> {
    use pb::exec_request::Kind as Rq;
    let first = inbound
        .message()
        .await?
        .and_then(|m| m.kind)
        .ok_or_else(|| Status::invalid_argument("exec: the first request must be `start`"))?;
    let Rq::Start(start) = first else {
        return Err(Status::invalid_argument(
            "exec: the first request must be `start`",
        ));
    };
    let size = start.size.unwrap_or_default();
    let spec = ExecSpec {
        argv: start.argv,
        env: start.env.into_iter().collect(),
        cwd: start.cwd,
        tty: start.tty,
        rows: size.rows,
        cols: size.cols,
    };
    let mut exec = instances
        .exec(caller, &start.instance, spec)
        .await
        .map_err(status)?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        use pb::exec_response::Kind as Rs;
        let mut inbound_open = true;
        loop {
            tokio::select! {
                ev = exec.next() => {
                    let kind = match ev {
                        Some(ExecEvent::Output { stream: ExecStream::Stdout, data }) => Rs::Stdout(data),
                        Some(ExecEvent::Output { stream: ExecStream::Stderr, data }) => Rs::Stderr(data),
                        Some(ExecEvent::Exit { error: Some(e), .. }) => {
                            let _ = tx.send(Err(Status::failed_precondition(e))).await;
                            return;
                        }
                        Some(ExecEvent::Exit { code, signal, error: None }) => {
                            let _ = tx.send(Ok(pb::ExecResponse {
                                kind: Some(Rs::Exit(pb::ExecExit { code, signal })),
                            })).await;
                            return;
                        }
                        None => {
                            let _ = tx.send(Err(Status::unavailable(
                                "the instance went away while the command ran",
                            ))).await;
                            return;
                        }
                    };
                    if tx.send(Ok(pb::ExecResponse { kind: Some(kind) })).await.is_err() {
                        return;
                    }
                }
                req = inbound.message(), if inbound_open => {
                    let ctl = match req {
                        Ok(Some(pb::ExecRequest { kind: Some(k) })) => match k {
                            Rq::Input(d) => ExecControl::Input(d),
                            Rq::Eof(_) => ExecControl::Eof,
                            Rq::Resize(s) => ExecControl::Resize { rows: s.rows, cols: s.cols },
                            Rq::Signal(s) => ExecControl::Signal(s),
                            Rq::Start(_) => {
                                let _ = tx.send(Err(Status::invalid_argument(
                                    "exec: `start` only once, first",
                                ))).await;
                                return;
                            }
                        },
                        Ok(Some(pb::ExecRequest { kind: None })) => continue,
                        // The client sent all it will: the command runs on to its exit.
                        Ok(None) => {
                            inbound_open = false;
                            continue;
                        }
                        Err(_) => return,
                    };
                    if exec.send(ctl).await.is_err() {
                        let _ = tx.send(Err(Status::unavailable("the instance went away"))).await;
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// The console log so far; with `follow`, then what it adds until the instance goes.
pub async fn console(
    instances: &Arc<Instances>,
    caller: &Caller,
    r: pb::InstanceConsoleRequest,
) -> Result<Streamed<pb::ConsoleChunk>, Status> {
    let (path, alive) = instances.console(caller, &r.name).map_err(status)?;
    let mut f = tokio::fs::File::open(&path)
        .await
        .map_err(|e| Status::not_found(format!("{}'s console log: {e}", r.name)))?;
    let (tx, rx) = mpsc::channel(8);
    let follow = if r.follow { alive } else { None };
    tokio::spawn(async move {
        let mut buf = vec![0u8; CONSOLE_CHUNK];
        let mut pos = 0u64;
        loop {
            match f.read(&mut buf).await {
                Ok(0) => {
                    let Some(stop) = &follow else { return };
                    if stop.is_cancelled() {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(CONSOLE_POLL) => {}
                        _ = stop.cancelled() => {}
                        _ = tx.closed() => return,
                    }
                    // A log that was truncated under us is read again from its start.
                    if f.metadata().await.is_ok_and(|m| m.len() < pos) {
                        pos = 0;
                        let _ = f.seek(std::io::SeekFrom::Start(0)).await;
                    }
                }
                Ok(n) => {
                    pos += n as u64;
                    let chunk = pb::ConsoleChunk {
                        data: buf[..n].to_vec(),
                    };
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                    return;
                }
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}
