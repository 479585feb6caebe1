//! The gRPC connection to miniond over its unix socket, with errors people can act on.

use std::path::{Path, PathBuf};

use minion_proto::client::{connect_unix, ConnectError};
use minion_proto::controller::controller_client::ControllerClient;
use tonic::transport::Channel;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("miniond is not running: no socket at {0} (start it with `miniond --config FILE`, or pass --socket / MINION_SOCKET)")]
    NoSocket(PathBuf),
    #[error("miniond is not running: {path} refuses connections ({message})")]
    Unreachable { path: PathBuf, message: String },
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
        Code::ResourceExhausted => "over a limit",
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
            ClientError::NoSocket(_) | ClientError::Unreachable { .. } => 3,
            ClientError::Status(s) => match s.code() {
                tonic::Code::InvalidArgument
                | tonic::Code::NotFound
                | tonic::Code::FailedPrecondition
                | tonic::Code::PermissionDenied
                | tonic::Code::ResourceExhausted => 2,
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
        }
    }
}

pub async fn connect(socket: &Path) -> Result<ControllerClient<Channel>, ClientError> {
    Ok(connect_unix(socket).await?)
}
