//! Bus messages and the JobTrigger dict. A Fedora Messaging message (topic, headers, JSON body)
//! becomes a flat dict the rules match against and fill `${…}` from, is ignored (a message kind
//! that starts no job, another environment, a secondary Koji), or is malformed (no headers, a body
//! that is not JSON, a missing field): malformed messages are logged and acked, never retried.

use serde_json::{Map, Value};

use crate::config::Config;

/// One message as the bus delivered it.
#[derive(Debug, Clone, PartialEq)]
pub struct BusMessage {
    pub id: String,
    pub topic: String,
    /// AMQP headers (`fedora_messaging_schema`, `sent-at`, …); `None` when there were none.
    pub headers: Option<Map<String, Value>>,
    /// The raw body bytes.
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("no headers (not a Fedora Messaging publisher)")]
    NoHeaders,
    #[error("no message id")]
    NoId,
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is not a JSON object")]
    NotObject,
    #[error("body.{0}: missing")]
    Missing(String),
    #[error("body.{field}: must be {want}")]
    Type { field: String, want: &'static str },
    #[error("{0}")]
    File(String),
}

/// What a message means for the trigger.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Trigger(JobTrigger),
    /// Not a message that starts jobs, with why (logged at debug).
    Ignore(String),
    Malformed(MessageError),
}

/// The flat dict of one triggering message: `message_type`, `item`, `item_type`, and the fields
/// of its kind (`name`, `version`, `release`, `tag`, `distgit_branch`, …), plus `_msg` (the body).
#[derive(Debug, Clone, PartialEq)]
pub struct JobTrigger {
    pub fields: Map<String, Value>,
}

impl JobTrigger {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    pub fn str(&self, key: &str) -> &str {
        self.fields.get(key).and_then(Value::as_str).unwrap_or("")
    }
}

impl BusMessage {
    /// A message as `fedora-messaging` dumps it (`{"id", "topic", "headers", "body"}`, the body a
    /// JSON value), e.g. the file `minion-trigger dry-run` reads.
    pub fn from_dump(text: &str) -> Result<BusMessage, MessageError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| MessageError::File(format!("not JSON: {e}")))?;
        let o = v
            .as_object()
            .ok_or_else(|| MessageError::File("not a JSON object".into()))?;
        let s = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
        let topic = s("topic").ok_or_else(|| MessageError::File("topic: missing".into()))?;
        let headers = match o.get("headers") {
            None | Some(Value::Null) => None,
            Some(Value::Object(h)) => Some(h.clone()),
            Some(_) => return Err(MessageError::File("headers: must be an object".into())),
        };
        let body = match o.get("body") {
            None => return Err(MessageError::File("body: missing".into())),
            // A string body is the raw bytes (what a misbehaving publisher might send).
            Some(Value::String(raw)) => raw.clone().into_bytes(),
            Some(b) => serde_json::to_vec(b).map_err(|e| MessageError::File(e.to_string()))?,
        };
        Ok(BusMessage {
            id: s("id").unwrap_or_default(),
            topic,
            headers,
            body,
        })
    }
}

/// The part of the topic after `<prefix>.<environment>.`, or why the message does not count.
fn topic_suffix<'a>(topic: &'a str, cfg: &Config) -> Result<&'a str, String> {
    let rest = topic
        .strip_prefix(&cfg.topic_prefix)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(|| format!("topic {topic} is not under {}", cfg.topic_prefix))?;
    let (env, suffix) = rest
        .split_once('.')
        .ok_or_else(|| format!("topic {topic} has no environment"))?;
    if env != cfg.environment {
        return Err(format!(
            "topic {topic} is of environment `{env}`, not `{}`",
            cfg.environment
        ));
    }
    Ok(suffix)
}

fn field<'a>(body: &'a Map<String, Value>, path: &str) -> Result<&'a Value, MessageError> {
    let mut cur: Option<&Value> = None;
    let mut obj = body;
    for (i, part) in path.split('.').enumerate() {
        let v = obj
            .get(part)
            .ok_or_else(|| MessageError::Missing(path.to_string()))?;
        if i + 1 < path.split('.').count() {
            obj = v.as_object().ok_or_else(|| MessageError::Type {
                field: path.split('.').take(i + 1).collect::<Vec<_>>().join("."),
                want: "an object",
            })?;
        }
        cur = Some(v);
    }
    cur.ok_or_else(|| MessageError::Missing(path.to_string()))
}

fn string(body: &Map<String, Value>, path: &str) -> Result<String, MessageError> {
    match field(body, path)? {
        Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
        Value::String(_) => Err(MessageError::Type {
            field: path.into(),
            want: "a non-empty string",
        }),
        // Koji sends numbers for versions at times; they are still the text.
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(MessageError::Type {
            field: path.into(),
            want: "a string",
        }),
    }
}

/// A Koji message's `name`, `version`, `release`.
fn nvr(b: &Map<String, Value>) -> Result<(String, String, String), MessageError> {
    Ok((
        string(b, "name")?,
        string(b, "version")?,
        string(b, "release")?,
    ))
}

fn int(body: &Map<String, Value>, path: &str) -> Result<i64, MessageError> {
    field(body, path)?.as_i64().ok_or(MessageError::Type {
        field: path.into(),
        want: "an integer",
    })
}

/// The dist-git branch a release's dist tag names: `1.fc40` → `f40`, `2.el9` → `epel9`.
pub fn distgit_branch(release: &str) -> String {
    let Some(tag) = release.rsplit('.').next() else {
        return String::new();
    };
    let num = |p: &str| {
        tag.strip_prefix(p)
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_string)
    };
    if let Some(n) = num("fc") {
        format!("f{n}")
    } else if let Some(n) = num("el") {
        format!("epel{n}")
    } else {
        String::new()
    }
}

/// The meaning of `msg` under `cfg`.
pub fn decide(msg: &BusMessage, cfg: &Config) -> Decision {
    match decide_inner(msg, cfg) {
        Ok(Ok(t)) => Decision::Trigger(t),
        Ok(Err(why)) => Decision::Ignore(why),
        Err(e) => Decision::Malformed(e),
    }
}

fn decide_inner(
    msg: &BusMessage,
    cfg: &Config,
) -> Result<Result<JobTrigger, String>, MessageError> {
    let suffix = match topic_suffix(&msg.topic, cfg) {
        Ok(s) => s,
        Err(why) => return Ok(Err(why)),
    };
    if msg.headers.as_ref().is_none_or(|h| h.is_empty()) {
        return Err(MessageError::NoHeaders);
    }
    if msg.id.trim().is_empty() {
        return Err(MessageError::NoId);
    }
    let body: Value =
        serde_json::from_slice(&msg.body).map_err(|e| MessageError::NotJson(e.to_string()))?;
    let Value::Object(b) = &body else {
        return Err(MessageError::NotObject);
    };
    let mut f = Map::new();
    let mut put = |k: &str, v: Value| {
        f.insert(k.to_string(), v);
    };
    let koji_instance = |b: &Map<String, Value>| -> Result<Option<String>, MessageError> {
        let instance = match b.get("instance") {
            None | Some(Value::Null) => "primary".to_string(),
            Some(_) => string(b, "instance")?,
        };
        Ok((instance != cfg.koji_instance)
            .then(|| format!("koji instance `{instance}`, not `{}`", cfg.koji_instance)))
    };
    match suffix {
        "buildsys.build.state.change" => {
            let new = int(b, "new")?;
            let (name, version, release) = nvr(b)?;
            if let Some(why) = koji_instance(b)? {
                return Ok(Err(why));
            }
            if new != 1 {
                return Ok(Err(format!("build state {new}, not COMPLETE (1)")));
            }
            put("message_type", "KojiBuildPackageCompleted".into());
            put("item", format!("{name}-{version}-{release}").into());
            put("item_type", "koji_build".into());
            put("distgit_branch", distgit_branch(&release).into());
            put("name", name.into());
            put("version", version.into());
            put("release", release.into());
        }
        "buildsys.tag" => {
            let tag = string(b, "tag")?;
            let (name, version, release) = nvr(b)?;
            if let Some(why) = koji_instance(b)? {
                return Ok(Err(why));
            }
            put("message_type", "KojiTagChanged".into());
            put("item", tag.clone().into());
            put("item_type", "koji_tag".into());
            let branch = tag.split('-').next().unwrap_or("").to_string();
            put("distgit_branch", branch.into());
            put("tag", tag.into());
            put("name", name.into());
            put("version", version.into());
            put("release", release.into());
        }
        "git.receive" => {
            let repo = string(b, "commit.repo")?;
            let namespace = string(b, "commit.namespace")?;
            let branch = string(b, "commit.branch")?;
            let rev = string(b, "commit.rev")?;
            put("message_type", "DistGitCommit".into());
            put("item", format!("{namespace}/{repo}#{rev}").into());
            put("item_type", "dist_git_commit".into());
            put("distgit_branch", branch.into());
            put("namespace", namespace.into());
            put("repo", repo.clone().into());
            put("name", repo.into());
            put("rev", rev.into());
        }
        "pungi.compose.status.change" => {
            let status = string(b, "status")?;
            let compose_id = string(b, "compose_id")?;
            if status != "FINISHED" && status != "FINISHED_INCOMPLETE" {
                return Ok(Err(format!("compose status {status}, not finished")));
            }
            let location = string(b, "location")?;
            put("message_type", "ComposeCompleted".into());
            put("item", compose_id.clone().into());
            put("item_type", "compose".into());
            put("compose_id", compose_id.into());
            put("location", location.into());
            put("status", status.into());
        }
        s if s.starts_with("bodhi.update.request.") => {
            let alias = string(b, "update.alias")?;
            let builds = match field(b, "update.builds")? {
                Value::Array(v) => v,
                _ => {
                    return Err(MessageError::Type {
                        field: "update.builds".into(),
                        want: "a list",
                    })
                }
            };
            let mut nvrs = Vec::new();
            for (i, build) in builds.iter().enumerate() {
                let nvr =
                    build
                        .get("nvr")
                        .and_then(Value::as_str)
                        .ok_or_else(|| MessageError::Type {
                            field: format!("update.builds[{i}].nvr"),
                            want: "a string",
                        })?;
                nvrs.push(Value::String(nvr.to_string()));
            }
            let release = string(b, "update.release.name")?;
            put("message_type", "BodhiUpdate".into());
            put("item", alias.clone().into());
            put("item_type", "bodhi_update".into());
            put("alias", alias.into());
            put("builds", Value::Array(nvrs));
            put(
                "distgit_branch",
                release.to_ascii_lowercase().replace("fedora", "f").into(),
            );
            put("release", release.into());
        }
        other => return Ok(Err(format!("topic suffix `{other}` starts no jobs"))),
    }
    put("_msg", body.clone());
    Ok(Ok(JobTrigger { fields: f }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dist_tags_name_branches() {
        assert_eq!(distgit_branch("1.fc40"), "f40");
        assert_eq!(distgit_branch("3.el9"), "epel9");
        assert_eq!(distgit_branch("1"), "");
        assert_eq!(distgit_branch("1.fcx"), "");
    }
}
