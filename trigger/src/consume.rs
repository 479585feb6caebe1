//! `minion-trigger run`: consume the bus and submit jobs to miniond.
//!
//! A durable queue bound to `amq.topic` with the configured routing keys; manual acks. A message
//! is acked only after miniond has durably queued every job it makes (each submission carries the
//! idempotency key `MESSAGE_ID/TASK/ARCH`, so a message redelivered after a crash makes no second
//! job). Malformed messages are logged and acked (never requeued forever); ignored ones likewise.
//! While miniond is unreachable the submission is retried with backoff and nothing is acked. Tag
//! messages pass through a fuse: the first one for a tag holds its delivery for `fuse_seconds`,
//! later ones for the same tag are held with it, then one set of jobs is submitted and all are
//! acked (a crash meanwhile redelivers them all, and the fuse starts again).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Acker;
use lapin::{Connection, ConnectionProperties};
use minion_proto::controller as pb;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::discover::Mirrors;
use crate::message::{decide, BusMessage, Decision, JobTrigger};
use crate::plan::{plan, PlannedJob};
use crate::rules::Rules;

/// Messages handled at once (each may wait on discover and on miniond).
const IN_FLIGHT: usize = 32;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

fn cfg_addr(l: &tokio::net::TcpListener) -> String {
    l.local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("AMQP {url}: {source}")]
    Amqp {
        url: String,
        #[source]
        source: lapin::Error,
    },
}

/// What happened to messages so far (logged; `/metrics` on `metrics_listen` exports them).
#[derive(Default)]
pub struct Counters {
    pub triggered: AtomicU64,
    pub ignored: AtomicU64,
    pub malformed: AtomicU64,
    pub jobs_queued: AtomicU64,
    pub jobs_existing: AtomicU64,
    pub jobs_refused: AtomicU64,
    pub discover_misses: AtomicU64,
}

struct Held {
    ackers: Vec<Acker>,
}

/// The consumer's shared state.
struct Consumer {
    cfg: Config,
    rules: Rules,
    mirrors: Mirrors,
    counters: Arc<Counters>,
    /// Tags whose fuse is burning, with the deliveries it holds.
    fuses: Mutex<HashMap<String, Held>>,
    /// One gRPC connection to miniond, shared by every submission (HTTP/2 multiplexes them);
    /// dropped and made again when it fails.
    client: tokio::sync::Mutex<Option<Client>>,
}

type Client = minion_proto::client::Client;

/// AMQP header values as JSON (Fedora Messaging headers are strings and numbers).
fn to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => (*i).into(),
        AMQPValue::ShortShortUInt(i) => (*i).into(),
        AMQPValue::ShortInt(i) => (*i).into(),
        AMQPValue::ShortUInt(i) => (*i).into(),
        AMQPValue::LongInt(i) => (*i).into(),
        AMQPValue::LongUInt(i) => (*i).into(),
        AMQPValue::LongLongInt(i) => (*i).into(),
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::Float(f) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number)
        }
        AMQPValue::Double(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => d.value.into(),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(to_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(table(t)),
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
        AMQPValue::Void => Value::Null,
    }
}

fn table(t: &FieldTable) -> Map<String, Value> {
    t.inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), to_json(v)))
        .collect()
}

/// Runs until the process is stopped; reconnects to the broker with backoff.
pub async fn run(cfg: Config, rules: Rules) -> Result<(), ConsumeError> {
    let metrics = match &cfg.metrics_listen {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    let c = Arc::new(Consumer {
        mirrors: Mirrors::new(&cfg.cache_dir),
        cfg,
        rules,
        counters: Arc::new(Counters::default()),
        fuses: Mutex::new(HashMap::new()),
        client: tokio::sync::Mutex::new(None),
    });
    if let Some(listener) = metrics {
        tracing::info!("metrics on http://{}/metrics", cfg_addr(&listener));
        tokio::spawn(crate::metrics::serve(listener, c.counters.clone()));
    }
    let mut wait = FIRST_BACKOFF;
    loop {
        match consume(&c).await {
            Ok(()) => {
                tracing::warn!("the broker closed the consumer; reconnecting");
                wait = FIRST_BACKOFF;
            }
            Err(e) => {
                tracing::warn!(retry_in_ms = wait.as_millis() as u64, "{e}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn consume(c: &Arc<Consumer>) -> Result<(), ConsumeError> {
    let url = c.cfg.amqp.url.clone();
    let amqp = |source| ConsumeError::Amqp {
        url: url.clone(),
        source,
    };
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .map_err(amqp)?;
    let ch = conn.create_channel().await.map_err(amqp)?;
    // Enough unacked deliveries for the fuses' held messages and the in-flight ones.
    ch.basic_qos(c.cfg.amqp.prefetch, BasicQosOptions::default())
        .await
        .map_err(amqp)?;
    let queue = c.cfg.amqp.queue.as_str();
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .map_err(amqp)?;
    for key in c.cfg.routing_keys() {
        ch.queue_bind(
            queue.into(),
            "amq.topic".into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp)?;
    }
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "minion-trigger".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp)?;
    tracing::info!(%url, queue, keys = ?c.cfg.routing_keys(), "consuming");
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(amqp)?;
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let msg = BusMessage {
            id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            topic: delivery.routing_key.as_str().to_string(),
            headers: delivery.properties.headers().as_ref().map(table),
            body: delivery.data.clone(),
        };
        let c = c.clone();
        tokio::spawn(async move {
            c.handle(msg, delivery.acker).await;
            drop(permit);
        });
    }
    Ok(())
}

async fn ack(acker: &Acker, id: &str) {
    // A lost ack (connection gone) means a redelivery, which the idempotency keys make harmless.
    if let Err(e) = acker.ack(BasicAckOptions::default()).await {
        tracing::warn!(message = %id, "ack: {e}");
    }
}

impl Consumer {
    async fn handle(self: Arc<Self>, msg: BusMessage, acker: Acker) {
        let t = match decide(&msg, &self.cfg) {
            Decision::Malformed(e) => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(message = %msg.id, topic = %msg.topic, "malformed message, acked: {e}");
                return ack(&acker, &msg.id).await;
            }
            Decision::Ignore(why) => {
                self.counters.ignored.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(message = %msg.id, topic = %msg.topic, "ignored: {why}");
                return ack(&acker, &msg.id).await;
            }
            Decision::Trigger(t) => t,
        };
        self.counters.triggered.fetch_add(1, Ordering::Relaxed);
        if t.str("message_type") == "KojiTagChanged" && self.cfg.fuse_seconds > 0 {
            let tag = t.str("tag").to_string();
            {
                let mut fuses = self.fuses.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(held) = fuses.get_mut(&tag) {
                    tracing::info!(message = %msg.id, %tag, "tag message joins the burning fuse");
                    held.ackers.push(acker);
                    return;
                }
                fuses.insert(
                    tag.clone(),
                    Held {
                        ackers: vec![acker],
                    },
                );
            }
            tracing::info!(message = %msg.id, %tag, fuse_s = self.cfg.fuse_seconds, "fuse lit");
            tokio::time::sleep(Duration::from_secs(self.cfg.fuse_seconds)).await;
            let held = self
                .fuses
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&tag)
                .map(|h| h.ackers)
                .unwrap_or_default();
            self.submit_all(&msg, &t).await;
            for a in &held {
                ack(a, &msg.id).await;
            }
            return;
        }
        self.submit_all(&msg, &t).await;
        if std::env::var_os("MINION_TRIGGER_FAULT").is_some_and(|v| v == "exit-before-ack") {
            // Fault injection for the tests: die between the submissions and the ack.
            tracing::error!(message = %msg.id, "MINION_TRIGGER_FAULT=exit-before-ack: exiting");
            std::process::exit(86);
        }
        ack(&acker, &msg.id).await;
    }

    /// Plans (with discover) and submits every job of `t`; returns once each is queued or refused.
    async fn submit_all(self: &Arc<Self>, msg: &BusMessage, t: &JobTrigger) {
        let mut p = plan(t, &self.rules, &self.cfg);
        for s in &p.skipped {
            tracing::warn!(message = %msg.id, "{s}");
        }
        for req in p.discover.clone() {
            let (me, r, item_type) = (self.clone(), req.clone(), t.str("item_type").to_string());
            let found =
                tokio::task::spawn_blocking(move || me.mirrors.discover(&r, &item_type)).await;
            match found {
                Ok(Ok(found)) => {
                    for why in &found.passed_over {
                        tracing::debug!(message = %msg.id, "discover passed over {why}");
                    }
                    p.add_discovered(&req, t, &found.tasks);
                }
                Ok(Err(e)) => {
                    self.counters
                        .discover_misses
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(message = %msg.id, rule = req.rule, "discover miss: {e}");
                }
                Err(e) => tracing::error!(message = %msg.id, "discover task: {e}"),
            }
        }
        tracing::info!(
            message = %msg.id,
            topic = %msg.topic,
            item = %t.str("item"),
            rules = ?p.matched,
            jobs = p.jobs.len(),
            "message → jobs"
        );
        for job in &p.jobs {
            self.submit(msg, job).await;
        }
    }

    /// The shared client, connected if there is none.
    async fn client(&self) -> Result<Client, minion_proto::client::ConnectError> {
        let mut g = self.client.lock().await;
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let c = minion_proto::client::connect_unix(&self.cfg.miniond.socket).await?;
        *g = Some(c.clone());
        Ok(c)
    }

    /// Submits one job, retrying with backoff while miniond cannot take it.
    async fn submit(&self, msg: &BusMessage, job: &PlannedJob) {
        let req = pb::SubmitJobRequest {
            repo: job.repo.clone(),
            git_ref: job.git_ref.clone(),
            formula: job.formula.clone(),
            item: job.item.clone(),
            item_type: job.item_type.clone(),
            arch: job.arch.clone(),
            pool: self.cfg.miniond.pool.clone(),
            timeout_seconds: 0,
            args: Default::default(),
            idempotency_key: job.idempotency_key(&msg.id),
            provenance: Some(pb::Provenance {
                message_id: msg.id.clone(),
                topic: msg.topic.clone(),
                rule_index: job.rule as u32,
                task_name: job.task.clone(),
            }),
            ..pb::SubmitJobRequest::default()
        };
        let mut wait = FIRST_BACKOFF;
        loop {
            let outcome = async {
                let mut client = self.client().await.map_err(|e| (true, e.to_string()))?;
                client
                    .submit_job(req.clone())
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| {
                        let retry = matches!(
                            s.code(),
                            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
                        );
                        (retry, format!("{:?}: {}", s.code(), s.message()))
                    })
            }
            .await;
            match outcome {
                Ok(r) => {
                    let id = r.job.map(|j| j.id).unwrap_or_default();
                    if r.existing {
                        self.counters.jobs_existing.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(message = %msg.id, task = %job.task, arch = %job.arch, job = %id, "already queued (redelivery)");
                    } else {
                        self.counters.jobs_queued.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(message = %msg.id, task = %job.task, arch = %job.arch, job = %id, "queued");
                    }
                    return;
                }
                Err((false, why)) => {
                    self.counters.jobs_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(message = %msg.id, task = %job.task, arch = %job.arch, "miniond refused the job: {why}");
                    return;
                }
                Err((true, why)) => {
                    *self.client.lock().await = None;
                    tracing::warn!(message = %msg.id, retry_in_ms = wait.as_millis() as u64, "miniond cannot take the job now: {why}");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
