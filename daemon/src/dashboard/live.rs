//! `/jobs/<id>/events`: a job's lifecycle, log and end as server-sent events, from the same
//! stream `WatchJob` sends (replayed from the start, then live). Each event's data is one JSON
//! object: `log` {stream, text}, `lifecycle` {state, at_ms, message}, `finished` {state}.

use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use minion_proto::controller as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::jobs::convert::state_from_pb;
use crate::jobs::{JobRecord, Jobs};
use crate::watch;

fn state_name(v: i32) -> &'static str {
    state_from_pb(v).map_or("UNKNOWN", |s| s.as_str())
}

fn sse(event: &str, data: serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// One watch event as SSE text; action events are not shown.
fn encode(ev: pb::WatchEvent) -> Option<Bytes> {
    use pb::watch_event::Event;
    Some(match ev.event? {
        Event::Log(l) => sse(
            "log",
            serde_json::json!({
                "stream": pb::LogStream::try_from(l.stream).map_or("STDOUT", |s| s.as_str_name()),
                "text": String::from_utf8_lossy(&l.data),
            }),
        ),
        Event::Lifecycle(e) => sse(
            "lifecycle",
            serde_json::json!({
                "state": state_name(e.state),
                "at_ms": e.at_unix_ms,
                "message": e.message,
            }),
        ),
        Event::Finished(j) => sse(
            "finished",
            serde_json::json!({ "state": state_name(j.state) }),
        ),
        Event::Action(_) => return None,
    })
}

/// The SSE stream of `rec`; it ends after the `finished` event, or when the client goes (the
/// watcher notices its receiver is gone and leaves nothing behind).
pub fn events(
    jobs: Arc<Jobs>,
    rec: JobRecord,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move { watch::watch(&jobs, rec, true, tx).await });
    // A retry hint first: a dropped connection is retried by the browser after 2 s.
    let hello = tokio_stream::once(Ok(Bytes::from_static(b"retry: 2000\n\n")));
    hello.chain(ReceiverStream::new(rx).filter_map(|ev| match ev {
        Ok(ev) => encode(ev).map(Ok),
        Err(status) => Some(Ok(sse(
            "error",
            serde_json::json!({ "message": status.message() }),
        ))),
    }))
}
