//! Job events and posted results on the message bus, Fedora-Messaging shaped, so that a
//! downstream consumer can react as Bodhi and Greenwave did: `<topic_prefix>.job.finished` when a
//! job reaches its final state, `<topic_prefix>.result.new` when one of its results is in
//! ResultsDB. JSON bodies, `message_id`, and the headers Fedora Messaging sets
//! (`fedora_messaging_schema`, `fedora_messaging_severity`, `sent-at`, `priority`).
//!
//! Publishing is confirmed (publisher confirms) and retried with backoff, reconnecting as
//! needed; a broker outage never fails or delays a job (messages wait in memory, bounded).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::config::BusConfig;
use crate::jobs::{JobRecord, OutboxEntry};

/// Messages kept while the broker is away; the oldest are dropped past this (and logged).
const MAX_QUEUED: usize = 10_000;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One message to publish.
#[derive(Debug, Clone)]
struct Outgoing {
    topic: String,
    schema: &'static str,
    body: Value,
}

pub struct Bus {
    cfg: BusConfig,
    queue: Mutex<VecDeque<Outgoing>>,
    wake: Notify,
}

/// RFC 3339 in UTC with milliseconds (`sent-at`).
fn now_iso() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl Bus {
    pub fn new(cfg: &BusConfig) -> Arc<Bus> {
        Arc::new(Bus {
            cfg: cfg.clone(),
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
        })
    }

    fn push(&self, m: Outgoing) {
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= MAX_QUEUED {
                if let Some(old) = q.pop_front() {
                    tracing::error!(topic = %old.topic, "bus: {MAX_QUEUED} messages waiting for the broker; the oldest is dropped");
                }
            }
            q.push_back(m);
        }
        self.wake.notify_one();
    }

    /// `job.finished` for a job in its final state.
    pub fn job_finished(&self, r: &JobRecord) {
        let exec = match r.execution_status {
            Some(crate::jobs::ExecStatus::Ok) => "OK",
            Some(crate::jobs::ExecStatus::NotOk) => "NOT_OK",
            None => "",
        };
        self.push(Outgoing {
            topic: format!("{}.job.finished", self.cfg.topic_prefix),
            schema: "minion.job.finished.v1",
            body: json!({
                "job": r.id,
                "state": r.state.as_str(),
                "execution_status": exec,
                "failure_reason": r.failure_reason,
                "item": r.request.item,
                "type": r.request.item_type,
                "arch": r.request.arch,
                "repo": r.request.repo,
                "formula": r.request.formula,
                "results": r.results.iter().map(|t| json!({
                    "testcase": minion_formula::report::testcase_name(Some(&r.request.namespace), &t.checkname),
                    "outcome": t.outcome,
                })).collect::<Vec<_>>(),
                "provenance": r.provenance.as_ref().map(|p| json!({
                    "message_id": p.message_id, "topic": p.topic,
                    "rule_index": p.rule_index, "task_name": p.task_name,
                })),
            }),
        });
    }

    /// `result.new` for a result ResultsDB took.
    pub fn result_new(&self, e: &OutboxEntry) {
        let b = &e.body;
        self.push(Outgoing {
            topic: format!("{}.result.new", self.cfg.topic_prefix),
            schema: "minion.result.new.v1",
            body: json!({
                "job": e.job,
                "item": b["data"]["item"],
                "type": b["data"]["type"],
                "arch": b["data"]["arch"],
                "testcase": e.testcase,
                "outcome": b["outcome"],
                "note": b["note"],
                "ref_url": b["ref_url"],
            }),
        });
    }

    /// Publishes what is queued, for ever, reconnecting with backoff.
    pub async fn run(self: Arc<Self>) {
        let mut wait = FIRST_BACKOFF;
        let mut ch: Option<(Connection, Channel)> = None;
        loop {
            let next = self
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .front()
                .cloned();
            let Some(m) = next else {
                self.wake.notified().await;
                continue;
            };
            if ch.as_ref().is_none_or(|(c, _)| !c.status().connected()) {
                match connect(&self.cfg.url).await {
                    Ok(c) => ch = Some(c),
                    Err(e) => {
                        tracing::warn!(
                            retry_in_ms = wait.as_millis() as u64,
                            "bus {}: {e}",
                            self.cfg.url
                        );
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            let Some((_, channel)) = ch.as_ref() else {
                continue;
            };
            match publish(channel, &m).await {
                Ok(()) => {
                    wait = FIRST_BACKOFF;
                    self.queue
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .pop_front();
                    tracing::debug!(topic = %m.topic, "published");
                }
                Err(e) => {
                    tracing::warn!(topic = %m.topic, retry_in_ms = wait.as_millis() as u64, "bus publish: {e}");
                    ch = None;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

async fn connect(url: &str) -> Result<(Connection, Channel), lapin::Error> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok((conn, ch))
}

#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("the broker did not confirm the message (nack)")]
    Nack,
    #[error("{0}")]
    Body(#[from] serde_json::Error),
}

async fn publish(ch: &Channel, m: &Outgoing) -> Result<(), PublishError> {
    let body = serde_json::to_vec(&m.body)?;
    let mut h = FieldTable::default();
    h.insert(
        "fedora_messaging_schema".into(),
        AMQPValue::LongString(m.schema.into()),
    );
    h.insert("fedora_messaging_severity".into(), AMQPValue::LongInt(20));
    h.insert("sent-at".into(), AMQPValue::LongString(now_iso().into()));
    h.insert("priority".into(), AMQPValue::LongInt(0));
    let props = BasicProperties::default()
        .with_message_id(ShortString::from(uuid::Uuid::new_v4().to_string()))
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_headers(h);
    let confirm = ch
        .basic_publish(
            "amq.topic".into(),
            m.topic.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            props,
        )
        .await?
        .await?;
    if confirm.is_ack() {
        Ok(())
    } else {
        Err(PublishError::Nack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_at_is_rfc3339_utc() {
        let s = now_iso();
        assert_eq!(s.len(), "2026-12-01T23:00:00.000Z".len(), "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'), "{s}");
        assert_eq!(&s[10..11], "T");
    }
}
