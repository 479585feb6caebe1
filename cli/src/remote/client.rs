//! The gRPC connection to miniond (its unix socket, or TLS with a token), with errors people can
//! act on.

use std::path::PathBuf;

use minion_proto::client::{connect_tls, connect_unix, Client, ConnectError};

use super::Connection;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("miniond is not running: no socket at {0} (start it with `miniond --config FILE`, or pass --socket / MINION_SOCKET)")]
    NoSocket(PathBuf),
    #[error("miniond is not running: {path} refuses connections ({message})")]
    Unreachable { path: PathBuf, message: String },
    #[error("{0}")]
    Connect(String),
    #[error("{}", status_text(.0))]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Other(String),
}

fn status_text(s: &tonic::Status) -> String {
    use tonic::Code;
    let what = match s.code() {
        Code::InvalidArgument => "invalid input",
        Code::NotFound => "not found",
        Code::FailedPrecondition | Code::PermissionDenied => "refused",
        Code::Unauthenticated => "not authenticated",
        Code::ResourceExhausted => "over a limit",
        Code::AlreadyExists => "refused",
        Code::Unavailable => "miniond unavailable",
        Code::Internal => "miniond internal error",
        _ => "error",
    };
    format!("{what}: {}", s.message())
}

impl ClientError {
    /// Exit status: 2 for bad input, 3 when the daemon cannot be reached, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::NoSocket(_)
            | ClientError::Unreachable { .. }
            | ClientError::Connect(_) => 3,
            ClientError::Status(s) => match s.code() {
                tonic::Code::InvalidArgument
                | tonic::Code::NotFound
                | tonic::Code::FailedPrecondition
                | tonic::Code::PermissionDenied
                | tonic::Code::Unauthenticated
                | tonic::Code::ResourceExhausted
                | tonic::Code::AlreadyExists => 2,
                tonic::Code::Unavailable => 3,
                _ => 1,
            },
            ClientError::Other(_) => 1,
        }
    }
}

impl From<ConnectError> for ClientError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::NoSocket(p) => ClientError::NoSocket(p),
            ConnectError::Unreachable { path, message } => {
                ClientError::Unreachable { path, message }
            }
            e => ClientError::Connect(e.to_string()),
        }
    }
}

/// The socket, unless `--connect` names a TLS endpoint.
pub async fn connect(conn: &Connection) -> Result<Client, ClientError> {
    let Some(url) = &conn.connect else {
        return Ok(connect_unix(&conn.socket).await?);
    };
    let ca = match &conn.ca {
        Some(p) => Some(
            std::fs::read(p)
                .map_err(|e| ClientError::Connect(format!("--ca {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let token = match &conn.token_file {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| ClientError::Connect(format!("--token-file {}: {e}", p.display())))?,
        None => std::env::var("MINION_TOKEN").map_err(|_| {
            ClientError::Connect(
                "--connect needs a token: set MINION_TOKEN or pass --token-file FILE".into(),
            )
        })?,
    };
    Ok(connect_tls(url, ca.as_deref(), token.trim()).await?)
}
