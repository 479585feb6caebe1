//! `minion-trigger publish`: a message dump onto `amq.topic`, with publisher confirms (what the
//! quick start and the benchmark use to feed the pipeline).

use std::time::Instant;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::Value;

use crate::message::BusMessage;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("AMQP {url}: {source}")]
    Amqp {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("the broker refused message {0} (nack)")]
    Nack(String),
}

fn header(v: &Value) -> AMQPValue {
    match v {
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) if n.is_i64() => AMQPValue::LongLongInt(n.as_i64().unwrap_or(0)),
        Value::Number(n) => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
        other => AMQPValue::LongString(other.to_string().as_str().into()),
    }
}

/// Publishes `count` copies of `msg` (ids `ID-1`… when more than one); the seconds it took.
pub async fn publish(url: &str, msg: &BusMessage, count: u32) -> Result<f64, PublishError> {
    let amqp = |source| PublishError::Amqp {
        url: url.to_string(),
        source,
    };
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(amqp)?;
    let ch = conn.create_channel().await.map_err(amqp)?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp)?;
    let mut headers = FieldTable::default();
    for (k, v) in msg.headers.iter().flatten() {
        headers.insert(k.as_str().into(), header(v));
    }
    let t0 = Instant::now();
    let mut confirms = Vec::new();
    for i in 1..=count {
        let id = if count == 1 {
            msg.id.clone()
        } else {
            format!("{}-{i}", msg.id)
        };
        let mut props = BasicProperties::default()
            .with_message_id(ShortString::from(id.clone()))
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(2);
        if msg.headers.is_some() {
            props = props.with_headers(headers.clone());
        }
        let c = ch
            .basic_publish(
                "amq.topic".into(),
                msg.topic.as_str().into(),
                BasicPublishOptions::default(),
                &msg.body,
                props,
            )
            .await
            .map_err(amqp)?;
        confirms.push((id, c));
    }
    for (id, c) in confirms {
        if !c.await.map_err(amqp)?.is_ack() {
            return Err(PublishError::Nack(id));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let _ = conn.close(0, "done".into()).await;
    Ok(secs)
}
