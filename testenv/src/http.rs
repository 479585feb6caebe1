//! The HTTP/1.1 both stand-ins speak: a listener on a free loopback port whose every connection
//! is one request, read here, and answered by the stand-in.

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};

/// Largest request body read.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// One request as a stand-in sees it.
pub struct Request {
    pub method: String,
    /// The path with its query.
    pub target: String,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
}

impl Request {
    /// The target without its query, and the query.
    pub fn path_and_query(&self) -> (&str, &str) {
        self.target
            .split_once('?')
            .unwrap_or((self.target.as_str(), ""))
    }
}

fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut len = 0usize;
    let mut authorization = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("authorization:") {
            authorization = Some(h["authorization:".len()..].trim().to_string());
        }
    }
    let mut body = vec![0; len.min(MAX_BODY)];
    reader.read_exact(&mut body)?;
    Ok(Request {
        method,
        target,
        authorization,
        body,
    })
}

/// Serves on a free loopback port, each connection on its own thread, for the life of the
/// process; `answer` writes the response. Returns `http://127.0.0.1:PORT`.
pub fn serve<F>(what: &str, answer: F) -> String
where
    F: Fn(Request, TcpStream) -> std::io::Result<()> + Send + Sync + 'static,
{
    let listener =
        TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind the {what}: {e}"));
    let url = format!(
        "http://{}",
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("the {what}'s address: {e}"))
    );
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || {
                if let Ok(req) = read_request(&stream) {
                    let _ = answer(req, stream);
                }
            });
        }
    });
    url
}
