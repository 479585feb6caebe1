//! miniond's HTTP side (`listen_http`; TLS when `[tls]` is set): the dashboard, each job's
//! artifacts by URL (what the results' `ref_url`s in ResultsDB point to), metrics.
//!
//! ```text
//! GET  /                                 jobs, newest first (?state= &pool= &item= &task= &submitter= &after=)
//! GET  /jobs/<uuid>                      a job: timeline, live log, results, artifacts, provenance, reporting
//! GET  /jobs/<uuid>/events               its lifecycle and log as server-sent events (live)
//! GET  /jobs/<uuid>/artifacts/           the listing
//! GET  /jobs/<uuid>/artifacts/<path>     one artifact, streamed
//! GET  /items/<item>                     every job and result on one item
//! GET  /pools                            pools and images
//! GET  /metrics                          Prometheus metrics (metrics.rs)
//! GET  /login, POST /login, POST /logout the sign-in cookie (when tokens are configured)
//! ```
//!
//! With `access.tokens_file`, every request but sign-in and the static files needs a token
//! (`Authorization: Bearer`, or the cookie `POST /login` sets), unless `http_anonymous_read`.
//! Artifacts come from a hostile guest: every artifact response is `Content-Security-Policy:
//! sandbox` (an opaque origin: no script, no access to the dashboard or its cookie) and
//! `X-Content-Type-Options: nosniff`, text is served as `text/plain`, anything else as
//! `application/octet-stream`, and a path that leaves the job's artifacts or passes through a
//! symlink is not found. Only the dashboard's own pages run script, its own only.

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

use crate::access::Tokens;
use crate::artifacts::{self, ArtifactError};
use crate::dashboard::{self, Dashboard, DashboardError, Filters};
use crate::jobs::Jobs;
use crate::metrics::{self, Metrics};
use crate::service::PoolStatus;
use crate::urlpath;

type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("listen_http {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("tls: {path}: {message}")]
    Tls { path: PathBuf, message: String },
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
            html_escape(&urlpath::encode(&a.path)),
            html_escape(&a.path),
            a.size
        ));
    }
    page.push_str("</ul>\n");
    reply(StatusCode::OK, "text/html; charset=utf-8", full(page))
}

/// What the HTTP side serves from, shared by every connection.
pub struct Site {
    pub jobs: Arc<Jobs>,
    pub metrics: Arc<Metrics>,
    /// Each pool's status now (the service's view).
    pub pools: Box<dyn Fn() -> Vec<PoolStatus> + Send + Sync>,
    pub images_dir: PathBuf,
    pub dashboard: Dashboard,
    pub gate: HttpGate,
    /// Served over TLS: the sign-in cookie is `Secure`.
    pub tls: bool,
}

/// Who may read over HTTP.
pub enum HttpGate {
    /// No tokens configured: anyone who reaches the listener (bind it to loopback).
    Open,
    /// A read token (or more) as `Authorization: Bearer` or the sign-in cookie; with
    /// `anonymous_read`, callers without one read too (results' links for everyone).
    Tokens {
        tokens: Arc<Tokens>,
        anonymous_read: bool,
    },
}

const COOKIE: &str = "minion_token";
/// A sign-in form is small; anything bigger is refused unread.
const MAX_FORM: usize = 4096;
/// The dashboard's own pages: its script and style only, no framing, no other origins.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                        connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn set(h: &mut hyper::HeaderMap, k: &'static str, v: &str) {
    if let Ok(v) = hyper::header::HeaderValue::from_str(v) {
        h.insert(k, v);
    }
}

/// A dashboard page (the only responses that run script).
fn page(status: StatusCode, html: String) -> Response<Body> {
    let mut r = Response::new(full(html));
    *r.status_mut() = status;
    let h = r.headers_mut();
    set(h, "content-type", "text/html; charset=utf-8");
    set(h, "content-security-policy", PAGE_CSP);
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(h, "referrer-policy", "same-origin");
    set(h, "cache-control", "no-store");
    r
}

fn redirect(to: &str) -> Response<Body> {
    let mut r = text(StatusCode::SEE_OTHER, format!("see {to}"));
    set(r.headers_mut(), "location", to);
    r
}

fn header(req: &Request<Incoming>, name: hyper::header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The sign-in cookie's token, if the request carries one.
fn cookie_token(req: &Request<Incoming>) -> Option<String> {
    header(req, hyper::header::COOKIE)?
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Only a path on this site: no scheme, no `//host`, no backslash tricks.
fn local_next(next: &str) -> &str {
    let ok = next.starts_with('/') && !next.starts_with("//") && !next.contains('\\');
    if ok {
        next
    } else {
        "/"
    }
}

/// Who is reading: `Ok(name)` ("" when the site is open), or the response that refuses.
fn reader(
    site: &Site,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<String, Box<Response<Body>>> {
    let HttpGate::Tokens {
        tokens,
        anonymous_read,
    } = &site.gate
    else {
        return Ok(String::new());
    };
    let bearer = header(req, hyper::header::AUTHORIZATION)
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let token = bearer.or_else(|| cookie_token(req));
    if let Some(c) = token.as_deref().and_then(|t| tokens.check(t)) {
        return Ok(c.id.clone());
    }
    if *anonymous_read {
        return Ok("anonymous".into());
    }
    if token.is_some() {
        tracing::warn!(%peer, path = %req.uri().path(), "refused a request: unknown token");
    }
    let browser = header(req, hyper::header::ACCEPT).is_some_and(|a| a.contains("text/html"));
    if browser {
        let next = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("next", &next);
        return Err(Box::new(redirect(&format!("/login?{}", q.finish()))));
    }
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        "a token is needed: Authorization: Bearer TOKEN (minion token new)",
    );
    set(
        r.headers_mut(),
        "www-authenticate",
        "Bearer realm=\"minion\"",
    );
    Err(Box::new(r))
}

async fn login(site: Arc<Site>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let HttpGate::Tokens { tokens, .. } = &site.gate else {
        return redirect("/");
    };
    let tokens = tokens.clone();
    let body = match http_body_util::Limited::new(req.into_body(), MAX_FORM)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large"),
    };
    let form = dashboard::form(&body);
    let next = local_next(form.get("next").map_or("/", String::as_str)).to_string();
    let token = form
        .get("token")
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    match tokens.check(&token) {
        Some(c) => {
            tracing::info!(caller = %c.id, %peer, "signed in to the dashboard");
            let mut r = redirect(&next);
            let secure = if site.tls { "; Secure" } else { "" };
            set(
                r.headers_mut(),
                "set-cookie",
                &format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}"),
            );
            r
        }
        None => {
            tracing::warn!(%peer, "refused a dashboard sign-in: unknown token");
            match site
                .dashboard
                .login(&next, Some("That token is not known to this miniond."))
            {
                Ok(html) => page(StatusCode::UNAUTHORIZED, html),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
    }
}

/// Renders off the runtime (pages read the store).
async fn render(
    f: impl FnOnce() -> Result<Option<String>, DashboardError> + Send + 'static,
) -> Response<Body> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(Some(html))) => page(StatusCode::OK, html),
        Ok(Ok(None)) => text(StatusCode::NOT_FOUND, "not found"),
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn route(
    site: Arc<Site>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let Some(path) = urlpath::decode(req.uri().path()) else {
        return Ok(text(StatusCode::NOT_FOUND, "not found"));
    };
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match (path.as_str(), get) {
        ("/static/dashboard.css", true) => {
            return Ok(reply(
                StatusCode::OK,
                "text/css; charset=utf-8",
                full(dashboard::CSS),
            ))
        }
        ("/static/dashboard.js", true) => {
            return Ok(reply(
                StatusCode::OK,
                "text/javascript; charset=utf-8",
                full(dashboard::JS),
            ))
        }
        ("/login", true) => {
            let q = dashboard::form(req.uri().query().unwrap_or("").as_bytes());
            let next = local_next(q.get("next").map_or("/", String::as_str)).to_string();
            let s = site.clone();
            return Ok(render(move || s.dashboard.login(&next, None).map(Some)).await);
        }
        ("/login", false) if req.method() == Method::POST => {
            return Ok(login(site, peer, req).await)
        }
        ("/logout", false) if req.method() == Method::POST => {
            let mut r = redirect("/login");
            set(
                r.headers_mut(),
                "set-cookie",
                &format!("{COOKIE}=; Path=/; Max-Age=0"),
            );
            return Ok(r);
        }
        (_, false) => return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "read-only: GET only")),
        _ => {}
    }
    let who = match reader(&site, &req, peer) {
        Ok(who) => who,
        Err(refusal) => return Ok(*refusal),
    };
    if path == "/metrics" {
        let accept = header(&req, hyper::header::ACCEPT).map(str::to_string);
        let m = site.metrics.clone();
        let text = tokio::task::spawn_blocking(move || m.render())
            .await
            .unwrap_or_default();
        let (content_type, text) = metrics::negotiate(accept.as_deref(), text);
        return Ok(reply(StatusCode::OK, content_type, full(text)));
    }
    if path == "/" {
        let f = Filters::from_query(req.uri().query());
        let s = site.clone();
        return Ok(render(move || {
            let pools: Vec<String> = (s.pools)().into_iter().map(|p| p.name).collect();
            s.dashboard.jobs(&s.jobs, &pools, &f, &who).map(Some)
        })
        .await);
    }
    if path == "/pools" {
        let s = site.clone();
        return Ok(render(move || {
            s.dashboard
                .pools((s.pools)(), &s.images_dir, &who)
                .map(Some)
        })
        .await);
    }
    if let Some(item) = path.strip_prefix("/items/") {
        let (s, item) = (site.clone(), item.to_string());
        return Ok(render(move || s.dashboard.item(&s.jobs, &item, &who).map(Some)).await);
    }
    let Some(rest) = path.strip_prefix("/jobs/") else {
        return Ok(text(StatusCode::NOT_FOUND, "not found"));
    };
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if uuid::Uuid::parse_str(id).is_err() {
        return Ok(text(
            StatusCode::NOT_FOUND,
            format!("`{id}` is not a job UUID"),
        ));
    }
    let Ok(rec) = site.jobs.get(id) else {
        return Ok(text(StatusCode::NOT_FOUND, format!("no job {id}")));
    };
    let resp = match tail {
        "" => {
            let (s, id) = (site.clone(), id.to_string());
            render(move || s.dashboard.job(&s.jobs, &id, &who)).await
        }
        "events" => {
            let stream = dashboard::events(site.jobs.clone(), rec).map_ok(Frame::data);
            let mut r = reply(
                StatusCode::OK,
                "text/event-stream; charset=utf-8",
                StreamBody::new(stream).boxed(),
            );
            set(r.headers_mut(), "cache-control", "no-store");
            r
        }
        "artifacts" => {
            let mut r = text(StatusCode::MOVED_PERMANENTLY, "see artifacts/");
            set(
                r.headers_mut(),
                "location",
                &format!("/jobs/{id}/artifacts/"),
            );
            r
        }
        t => match t.strip_prefix("artifacts/") {
            Some(rel) => artifact(&site.jobs, id, rel).await,
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

/// The TLS acceptor for `cert` and `key` (PEM).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, WebError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &Path, message: String| WebError::Tls {
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(cert, e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key_der)
    .map_err(|e| bad(cert, e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves on `listener` (TLS when `tls` is given) until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    site: Arc<Site>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!("dashboard, artifacts and metrics on {scheme}://{addr}/");
    }
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("listen_http accept: {e}");
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let (site, tls, stop) = (site.clone(), tls.clone(), stop.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| route(site.clone(), peer, req));
            let http = hyper::server::conn::http1::Builder::new();
            let done = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => serve_until(http.serve_connection(TokioIo::new(s), svc), &stop).await,
                    Err(e) => {
                        tracing::debug!(%peer, "TLS handshake: {e}");
                        return;
                    }
                },
                None => serve_until(http.serve_connection(TokioIo::new(stream), svc), &stop).await,
            };
            if let Err(e) = done {
                tracing::debug!(%peer, "http connection: {e}");
            }
        });
    }
}

/// A connection until it ends or the daemon stops (a live log stream would hold it open).
async fn serve_until<F: std::future::Future<Output = Result<(), hyper::Error>>>(
    conn: F,
    stop: &CancellationToken,
) -> Result<(), hyper::Error> {
    tokio::select! {
        r = conn => r,
        _ = stop.cancelled() => Ok(()),
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
            Box::new(Vec::new),
        );
        let site = Arc::new(Site {
            jobs: jobs.clone(),
            metrics,
            pools: Box::new(Vec::new),
            images_dir: t.path().join("images"),
            dashboard: Dashboard::new().expect("templates"),
            gate: HttpGate::Open,
            tls: false,
        });
        tokio::spawn(serve(listener, site, None, stop.clone()));
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
            assert_eq!(get(port, "/").0, 200, "the jobs list");
            assert_eq!(get(port, "/nope").0, 404);
        })
        .await;
        stop.cancel();
        checks.expect("checks");
    }
}
