//! The host's answer to a guest's FetchRequest: a [`FetchHandler`] (the daemon's, over its
//! configured sources) finds the files on the host, and [`serve`] streams them to the guest as
//! FetchFile/FetchChunk frames and a closing FetchEnd.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use minion_formula::{FetchRequest, FetchedKind};
use minion_proto::guest::{host_frame, FetchChunk, FetchEnd, FetchFile, HostFrame};
use tokio::io::{AsyncReadExt, AsyncWrite};

use crate::async_frame::write_frame_async;
use crate::ChannelError;

/// A file on the host to stream into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFile {
    /// Its plain file name in the guest's target directory.
    pub name: String,
    pub kind: FetchedKind,
    pub path: PathBuf,
    pub size: u64,
}

/// Answers a guest's (already checked) fetch request with files on the host, or says why not.
pub trait FetchHandler: Send + Sync {
    fn fetch(
        &self,
        request: FetchRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<HostFile>, String>> + Send + '_>>;
}

impl fmt::Debug for dyn FetchHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FetchHandler")
    }
}

fn frame(kind: host_frame::Kind) -> HostFrame {
    HostFrame { kind: Some(kind) }
}

/// Answers request `id`: the handler's files, streamed in `chunk`-sized pieces, then FetchEnd. A
/// refused or failed request is a FetchEnd with its error (the guest's step fails with it); only a
/// broken channel is an error here.
pub(crate) async fn serve<W: AsyncWrite + Unpin>(
    wr: &mut W,
    id: u32,
    request: Result<FetchRequest, String>,
    handler: Option<&dyn FetchHandler>,
    chunk: usize,
    max_frame: usize,
) -> Result<(), ChannelError> {
    let files = match (request, handler) {
        (Err(e), _) => Err(format!("refused: {e}")),
        (Ok(r), None) => Err(format!(
            "this host has no sources to fetch {} from (miniond: [koji], [bodhi], [distgit] in its config)",
            r.describe()
        )),
        (Ok(r), Some(h)) => h.fetch(r).await,
    };
    let error = match files {
        Err(e) => e,
        Ok(files) => match send_files(wr, id, &files, chunk, max_frame).await {
            Ok(()) => String::new(),
            Err(SendError::Channel(e)) => return Err(e),
            Err(SendError::File(e)) => e,
        },
    };
    let end = frame(host_frame::Kind::FetchEnd(FetchEnd { id, error }));
    write_frame_async(wr, &end, max_frame).await?;
    Ok(())
}

enum SendError {
    Channel(ChannelError),
    /// A host file could not be read: the guest is told, the session goes on.
    File(String),
}

async fn send_files<W: AsyncWrite + Unpin>(
    wr: &mut W,
    id: u32,
    files: &[HostFile],
    chunk: usize,
    max_frame: usize,
) -> Result<(), SendError> {
    let mut buf = vec![0u8; chunk];
    for f in files {
        let mut file = tokio::fs::File::open(&f.path)
            .await
            .map_err(|e| SendError::File(format!("{}: {e}", f.path.display())))?;
        let announce = frame(host_frame::Kind::FetchFile(FetchFile {
            id,
            name: f.name.clone(),
            size: f.size,
            kind: f.kind.as_str().to_string(),
        }));
        write_frame_async(wr, &announce, max_frame)
            .await
            .map_err(|e| SendError::Channel(e.into()))?;
        let mut left = f.size;
        while left > 0 {
            let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            let n = file
                .read(&mut buf[..want])
                .await
                .map_err(|e| SendError::File(format!("{}: {e}", f.path.display())))?;
            if n == 0 {
                // The guest counts bytes against the announced size and fails the step.
                return Err(SendError::File(format!(
                    "{} is shorter than its {} bytes",
                    f.path.display(),
                    f.size
                )));
            }
            left -= n as u64;
            let data = frame(host_frame::Kind::FetchChunk(FetchChunk {
                id,
                data: buf[..n].to_vec(),
            }));
            write_frame_async(wr, &data, max_frame)
                .await
                .map_err(|e| SendError::Channel(e.into()))?;
        }
    }
    Ok(())
}
