//! Reaching the host end of the virtio-serial port: qemu's unix socket (qemu is the server).

use std::{path::Path, time::Duration};

use tokio::net::UnixStream;

use crate::ChannelError;

/// How long to wait between attempts while qemu has not created the socket yet.
const RETRY_EVERY: Duration = Duration::from_millis(20);

/// Connects to the channel socket, retrying while it does not exist or refuses (qemu still starting).
pub async fn connect_unix(path: &Path, timeout: Duration) -> Result<UnixStream, ChannelError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match UnixStream::connect(path).await {
            Ok(stream) => return Ok(stream),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && tokio::time::Instant::now() + RETRY_EVERY < deadline =>
            {
                tokio::time::sleep(RETRY_EVERY).await;
            }
            Err(source) => {
                return Err(ChannelError::Connect {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_the_socket_to_appear() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("channel.sock");
        let p = path.clone();
        let server = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let l = tokio::net::UnixListener::bind(&p).expect("bind");
            l.accept().await.expect("accept");
        });
        connect_unix(&path, Duration::from_secs(5))
            .await
            .expect("connects once the socket exists");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn gives_up_with_the_path_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("never.sock");
        let err = connect_unix(&path, Duration::from_millis(100))
            .await
            .expect_err("no socket");
        assert!(err.to_string().contains("never.sock"), "{err}");
    }
}
