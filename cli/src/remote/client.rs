//! The gRPC connection to miniond over its unix socket, with errors people can act on.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use minion_proto::controller::controller_client::ControllerClient;
use tonic::transport::{Channel, Endpoint, Uri};

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
        Code::FailedPrecondition => "refused",
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
                | tonic::Code::FailedPrecondition => 2,
                tonic::Code::Unavailable => 3,
                _ => 1,
            },
            ClientError::Other(_) => 1,
        }
    }
}

pub async fn connect(socket: &Path) -> Result<ControllerClient<Channel>, ClientError> {
    if !socket.exists() {
        return Err(ClientError::NoSocket(socket.to_path_buf()));
    }
    let path = socket.to_path_buf();
    // The URI is required by the API but unused: the connector below dials the socket.
    let endpoint =
        Endpoint::try_from("http://[::1]:50051").map_err(|e| ClientError::Other(e.to_string()))?;
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .map_err(|e| ClientError::Unreachable {
            path: socket.to_path_buf(),
            message: source_chain(&e),
        })?;
    Ok(ControllerClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
