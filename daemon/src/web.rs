//! miniond's read-only HTTP side (`listen_http`): each job's artifacts by URL, which is what the
//! results' `ref_url`s in ResultsDB point to, and a plain page per job.
//!
//! ```text
//! GET /metrics                         Prometheus metrics (OpenMetrics text, metrics.rs)
//! GET /jobs/<uuid>                     the job: state, steps, results (text/plain)
//! GET /jobs/<uuid>/artifacts/          the listing (HTML, links only)
//! GET /jobs/<uuid>/artifacts/<path>    one artifact, streamed
//! ```
//!
//! Artifacts come from a hostile guest: every response is `Content-Security-Policy: sandbox`
//! and `X-Content-Type-Options: nosniff`, text is served as `text/plain`, anything else as
//! `application/octet-stream`, and a path that leaves the job's artifacts or passes through a
//! symlink is not found.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::artifacts::{self, ArtifactError};
use crate::jobs::Jobs;
use crate::metrics::{self, Metrics};

type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("listen_http {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

fn reply(status: StatusCode, content_type: &str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    let set = |h: &mut hyper::HeaderMap, k: &'static str, v: &str| {
        if let Ok(v) = hyper::header::HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(h, "content-type", content_type);
    // Hostile content: no scripts, no plugins, no same-origin, no sniffing.
    set(h, "content-security-policy", "sandbox");
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    r
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    reply(status, "text/plain; charset=utf-8", full(msg.into() + "\n"))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// `%XX` decoding of a URL path (a path with a bad escape is not found).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A path for a URL: each component percent-encoded as needed.
fn percent_encode(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether any component of `rel` under `root` is a symlink (artifacts are served only as the
/// guest's plain files).
fn through_symlink(root: &Path, rel: &Path) -> bool {
    let mut p = root.to_path_buf();
    for c in rel.components() {
        p.push(c);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            return true;
        }
    }
    false
}

/// Text (valid UTF-8 without NULs in its first 8 KiB) or not.
async fn is_text(path: &Path) -> bool {
    let Ok(mut f) = tokio::fs::File::open(path).await else {
        return false;
    };
    let mut buf = vec![0u8; 8192];
    let Ok(n) = f.read(&mut buf).await else {
        return false;
    };
    let head = &buf[..n];
    if head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        // A multi-byte character cut at the end of the sample is still text.
        Err(e) => e.error_len().is_none() && n - e.valid_up_to() < 4,
    }
}

async fn artifact(jobs: &Jobs, id: &str, rel: &str) -> Response<Body> {
    let root = jobs.artifacts_dir(id);
    if rel.is_empty() {
        return listing(id, &root).await;
    }
    let not_found = || text(StatusCode::NOT_FOUND, format!("no artifact `{rel}`"));
    let real = match artifacts::confined(&root, rel) {
        Ok(p) => p,
        Err(ArtifactError::BadPath(_)) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("`{rel}` is not a path inside the job's artifacts"),
            )
        }
        Err(_) => return not_found(),
    };
    if through_symlink(&root, Path::new(rel)) {
        return not_found();
    }
    let ct = if is_text(&real).await {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    match tokio::fs::File::open(&real).await {
        Ok(f) => {
            let len = f.metadata().await.map(|m| m.len()).ok();
            let stream = tokio_util::io::ReaderStream::new(f).map_ok(Frame::data);
            let mut r = reply(StatusCode::OK, ct, StreamBody::new(stream).boxed());
            if let Some(len) = len {
                r.headers_mut()
                    .insert(hyper::header::CONTENT_LENGTH, len.into());
            }
            r
        }
        Err(_) => not_found(),
    }
}

async fn listing(id: &str, root: &Path) -> Response<Body> {
    let root: PathBuf = root.to_path_buf();
    let listed = match tokio::task::spawn_blocking(move || artifacts::list(&root)).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut page = format!(
        "<!doctype html>\n<meta charset=utf-8>\n<title>artifacts of job {id}</title>\n<h1>Artifacts of job {id}</h1>\n<ul>\n"
    );
    for a in listed {
        page.push_str(&format!(
            "<li><a href=\"{}\">{}</a> ({} bytes)</li>\n",
            html_escape(&percent_encode(&a.path)),
            html_escape(&a.path),
            a.size
        ));
    }
    page.push_str("</ul>\n");
    reply(StatusCode::OK, "text/html; charset=utf-8", full(page))
}

fn job_page(jobs: &Jobs, id: &str) -> Response<Body> {
    let Ok(r) = jobs.get(id) else {
        return text(StatusCode::NOT_FOUND, format!("no job {id}"));
    };
    let mut t = format!(
        "job {}\nstate {}\nitem {} ({}) arch {}\nrepo {} {}\nformula {}\n\nsteps:\n",
        r.id,
        r.state,
        r.request.item,
        r.request.item_type,
        r.request.arch,
        r.request.repo,
        r.request.git_ref,
        r.request.formula
    );
    for e in &r.events {
        t.push_str(&format!("  {} at {} ms {}\n", e.state, e.at_ms, e.message));
    }
    if !r.results.is_empty() {
        t.push_str("\nresults:\n");
        for res in &r.results {
            t.push_str(&format!(
                "  {} {} {}\n",
                res.checkname, res.outcome, res.note
            ));
        }
    }
    t.push_str(&format!("\nartifacts: /jobs/{}/artifacts/\n", r.id));
    text(StatusCode::OK, t)
}

async fn route(
    jobs: Arc<Jobs>,
    metrics: Arc<Metrics>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "read-only: GET only"));
    }
    let Some(path) = percent_decode(req.uri().path()) else {
        return Ok(text(StatusCode::NOT_FOUND, "not found"));
    };
    if path == "/metrics" {
        let accept = req
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = tokio::task::spawn_blocking(move || metrics.render())
            .await
            .unwrap_or_default();
        let (content_type, text) = metrics::negotiate(accept.as_deref(), text);
        return Ok(reply(StatusCode::OK, content_type, full(text)));
    }
    let Some(rest) = path.strip_prefix("/jobs/") else {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "not found (/jobs/<uuid>/artifacts/…)",
        ));
    };
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if uuid::Uuid::parse_str(id).is_err() {
        return Ok(text(
            StatusCode::NOT_FOUND,
            format!("`{id}` is not a job UUID"),
        ));
    }
    if jobs.get(id).is_err() {
        return Ok(text(StatusCode::NOT_FOUND, format!("no job {id}")));
    }
    let resp = match tail {
        "" => job_page(&jobs, id),
        "artifacts" => {
            let mut r = text(StatusCode::MOVED_PERMANENTLY, "see artifacts/");
            if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("/jobs/{id}/artifacts/")) {
                r.headers_mut().insert("location", v);
            }
            r
        }
        t => match t.strip_prefix("artifacts/") {
            Some(rel) => artifact(&jobs, id, rel).await,
            None => text(StatusCode::NOT_FOUND, "not found"),
        },
    };
    Ok(resp)
}

/// Binds `addr` (so a taken port fails the daemon's start with its error).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, WebError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| WebError::Bind { addr, source })
}

/// Serves on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    jobs: Arc<Jobs>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("serving artifacts on http://{addr}/jobs/<uuid>/artifacts/");
    }
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("listen_http accept: {e}");
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let (jobs, metrics) = (jobs.clone(), metrics.clone());
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| route(jobs.clone(), metrics.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!("http connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::JobRequest;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read");
        let out = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, head.to_ascii_lowercase(), body.to_string())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn artifacts_are_served_sandboxed_and_confined() {
        let t = tempfile::tempdir().expect("tmp");
        let jobs = Arc::new(Jobs::open(t.path(), 1).expect("jobs"));
        let id = "0b9c0c3e-1d7a-4d5e-9f00-123456789abc";
        jobs.create(id, JobRequest::default(), "", None)
            .expect("job");
        let out = jobs.artifacts_dir(id).join("task_output");
        std::fs::create_dir_all(&out).expect("mkdir");
        std::fs::write(out.join("log.txt"), "hello <script>alert(1)</script>\n").expect("w");
        std::fs::write(out.join("page.html"), "<html><script>x()</script></html>").expect("w");
        std::fs::write(out.join("blob.bin"), [0u8, 1, 2, 255]).expect("w");
        std::fs::write(out.join("a b.txt"), "spaced").expect("w");
        std::os::unix::fs::symlink("/etc/passwd", out.join("passwd")).expect("ln");
        std::fs::write(t.path().join("secret"), "secret").expect("w");

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        let stop = CancellationToken::new();
        let listener = bind(port).await.expect("bind");
        let metrics = Metrics::new(
            jobs.clone(),
            crate::guestvm::LiveVms::default(),
            crate::recorder::Recorder::default(),
            Vec::new(),
        );
        tokio::spawn(serve(listener, jobs.clone(), metrics, stop.clone()));
        let id2 = id.to_string();
        let checks = tokio::task::spawn_blocking(move || {
            // The metrics sit beside the artifacts, in the classic text format unless the
            // scraper asks for OpenMetrics (the metrics e2e test asks).
            let (st, head, body) = get(port, "/metrics");
            assert_eq!(st, 200);
            assert!(
                head.contains("content-type: text/plain; version=0.0.4"),
                "{head}"
            );
            assert!(
                body.contains("minion_jobs{state=\"QUEUED\",pool=\"\"} 1"),
                "{body}"
            );
            let a = |p: &str| get(port, &format!("/jobs/{id2}/artifacts/{p}"));
            let (st, head, body) = a("task_output/log.txt");
            assert_eq!(st, 200);
            assert_eq!(body, "hello <script>alert(1)</script>\n");
            assert!(
                head.contains("content-type: text/plain; charset=utf-8"),
                "{head}"
            );
            assert!(head.contains("content-security-policy: sandbox"), "{head}");
            assert!(head.contains("x-content-type-options: nosniff"), "{head}");
            let (_, head, _) = a("task_output/page.html");
            assert!(
                head.contains("content-type: text/plain"),
                "HTML is served as text: {head}"
            );
            let (_, head, _) = a("task_output/blob.bin");
            assert!(head.contains("application/octet-stream"), "{head}");
            assert_eq!(a("task_output/a%20b.txt").2, "spaced");
            assert_eq!(a("task_output/passwd").0, 404, "no symlinks");
            assert_eq!(a("../../secret").0, 400);
            assert_eq!(a("task_output/..%2F..%2F..%2Fsecret").0, 400);
            assert_eq!(a("task_output/nope").0, 404);
            let (st, head, page) = a("");
            assert_eq!(st, 200);
            assert!(head.contains("content-security-policy: sandbox"));
            assert!(
                page.contains("<a href=\"task_output/a%20b.txt\">task_output/a b.txt</a>"),
                "{page}"
            );
            assert!(!page.contains("passwd"), "symlinks are not listed: {page}");
            assert_eq!(get(port, &format!("/jobs/{id2}")).0, 200);
            assert_eq!(
                get(
                    port,
                    "/jobs/0b9c0c3e-1d7a-4d5e-9f00-000000000000/artifacts/"
                )
                .0,
                404
            );
            assert_eq!(get(port, "/jobs/not-a-uuid/artifacts/").0, 404);
            assert_eq!(get(port, "/").0, 404);
        })
        .await;
        stop.cancel();
        checks.expect("checks");
    }
}
