//! A gRPC client of miniond's unix socket (feature `client`): what the CLI and the trigger use.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::controller::controller_client::ControllerClient;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("miniond is not running: no socket at {} (start it with `miniond --config FILE`, or pass --socket / MINION_SOCKET)", .0.display())]
    NoSocket(PathBuf),
    #[error("miniond is not running: {} refuses connections ({message})", path.display())]
    Unreachable { path: PathBuf, message: String },
}

/// Connects to miniond's unix socket. Responses up to 64 MiB are accepted.
pub async fn connect_unix(socket: &Path) -> Result<ControllerClient<Channel>, ConnectError> {
    if !socket.exists() {
        return Err(ConnectError::NoSocket(socket.to_path_buf()));
    }
    let path = socket.to_path_buf();
    // The URI is required by the API but unused: the connector dials the socket. `localhost` is
    // what HTTP/2 peers accept as :authority.
    let endpoint = Endpoint::from_static("http://localhost");
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .map_err(|e| ConnectError::Unreachable {
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
