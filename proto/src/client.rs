//! A gRPC client of miniond (feature `client`): what the CLI and the trigger use. Over the unix
//! socket (the kernel tells miniond who we are) or over TLS to `https://host:port` with a bearer
//! token.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Uri};

use crate::controller::controller_client::ControllerClient;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("miniond is not running: no socket at {} (start it with `miniond --config FILE`, or pass --socket / MINION_SOCKET)", .0.display())]
    NoSocket(PathBuf),
    #[error("miniond is not running: {} refuses connections ({message})", path.display())]
    Unreachable { path: PathBuf, message: String },
    #[error("--connect `{url}`: {message}")]
    BadUrl { url: String, message: String },
    #[error("the token is not usable in a header (printable ASCII only)")]
    BadToken,
    #[error("{url}: {message}")]
    Tcp { url: String, message: String },
}

/// Adds `authorization: Bearer TOKEN` to every call when there is a token.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Client = ControllerClient<InterceptedService<Channel, Bearer>>;

fn client(channel: Channel, bearer: Bearer) -> Client {
    // Responses up to 64 MiB (a job's results and log).
    ControllerClient::with_interceptor(channel, bearer).max_decoding_message_size(64 * 1024 * 1024)
}

/// Connects to miniond's unix socket.
pub async fn connect_unix(socket: &Path) -> Result<Client, ConnectError> {
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
    Ok(client(channel, Bearer::default()))
}

/// Connects to `https://host:port`, checking the server's certificate against `ca_pem` (the
/// system's roots when none), sending `token` with every call.
pub async fn connect_tls(
    url: &str,
    ca_pem: Option<&[u8]>,
    token: &str,
) -> Result<Client, ConnectError> {
    let bad = |message: &str| ConnectError::BadUrl {
        url: url.to_string(),
        message: message.to_string(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad(
            "must be https://HOST:PORT (TCP is served only over TLS)",
        ));
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?.to_string();
    let tls = match ca_pem {
        Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
        None => ClientTlsConfig::new().with_native_roots(),
    }
    .domain_name(host.trim_start_matches('[').trim_end_matches(']'));
    let tcp = |message: String| ConnectError::Tcp {
        url: url.to_string(),
        message,
    };
    let channel = Endpoint::from(uri)
        .tls_config(tls)
        .map_err(|e| tcp(source_chain(&e)))?
        .connect()
        .await
        .map_err(|e| tcp(source_chain(&e)))?;
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| ConnectError::BadToken)?;
    Ok(client(channel, Bearer(Some(value))))
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
