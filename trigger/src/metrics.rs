//! The trigger's Prometheus metrics at `GET /metrics` on `metrics_listen`, in the classic text
//! format: what became of each bus message and of each job it asked for.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::consume::Counters;

/// A request head larger than this is not a scrape.
const MAX_HEAD: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics_listen {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// The counters as Prometheus text (0.0.4).
pub fn render(c: &Counters) -> String {
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::new();
    out.push_str(
        "# HELP minion_trigger_messages_total Bus messages by outcome: triggered (a rule may \
         make jobs), ignored (no job wanted), malformed (acked and dropped).\n\
         # TYPE minion_trigger_messages_total counter\n",
    );
    for (outcome, v) in [
        ("triggered", n(&c.triggered)),
        ("ignored", n(&c.ignored)),
        ("malformed", n(&c.malformed)),
    ] {
        out.push_str(&format!(
            "minion_trigger_messages_total{{outcome=\"{outcome}\"}} {v}\n"
        ));
    }
    out.push_str(
        "# HELP minion_trigger_jobs_total Jobs the trigger asked miniond for, by outcome: \
         queued, existing (an earlier delivery made it), refused.\n\
         # TYPE minion_trigger_jobs_total counter\n",
    );
    for (outcome, v) in [
        ("queued", n(&c.jobs_queued)),
        ("existing", n(&c.jobs_existing)),
        ("refused", n(&c.jobs_refused)),
    ] {
        out.push_str(&format!(
            "minion_trigger_jobs_total{{outcome=\"{outcome}\"}} {v}\n"
        ));
    }
    out.push_str(
        "# HELP minion_trigger_discover_misses_total Discover requests that found no task repo.\n\
         # TYPE minion_trigger_discover_misses_total counter\n",
    );
    out.push_str(&format!(
        "minion_trigger_discover_misses_total {}\n",
        n(&c.discover_misses)
    ));
    out
}

pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Serves `GET /metrics` (one request per connection) until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, counters: Arc<Counters>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&head);
            let first = line.lines().next().unwrap_or("");
            let reply = if first.starts_with("GET /metrics ") {
                let body = render(&counters);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n"
                    .to_string()
            };
            let _ = stream.write_all(reply.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_is_a_labelled_counter() {
        let c = Counters::default();
        c.triggered.fetch_add(3, Ordering::Relaxed);
        c.jobs_refused.fetch_add(1, Ordering::Relaxed);
        let text = render(&c);
        assert!(text.contains("minion_trigger_messages_total{outcome=\"triggered\"} 3\n"));
        assert!(text.contains("minion_trigger_messages_total{outcome=\"malformed\"} 0\n"));
        assert!(text.contains("minion_trigger_jobs_total{outcome=\"refused\"} 1\n"));
        assert!(text.contains("# TYPE minion_trigger_discover_misses_total counter\n"));
    }
}
