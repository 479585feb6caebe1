//! The jobs database (sled): one JSON record per job UUID. Every write is flushed before the
//! caller acts on it, so a crash never loses a transition that already had effects.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::lifecycle::{IllegalTransition, State};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("jobs database: {0}")]
    Db(#[from] sled::Error),
    #[error("job record {id}: {source}")]
    Corrupt {
        id: String,
        source: serde_json::Error,
    },
    #[error("no job {0}")]
    NotFound(String),
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecStatus {
    Ok,
    NotOk,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub state: State,
    pub at_ms: i64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TaskResult {
    pub item: String,
    pub item_type: String,
    pub checkname: String,
    pub outcome: String,
    pub note: String,
}

/// What made a job, when a trigger did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Provenance {
    pub message_id: String,
    pub topic: String,
    pub rule_index: u32,
    pub task_name: String,
}

/// What a submission asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct JobRequest {
    pub pool: String,
    pub repo: String,
    pub git_ref: String,
    /// Relative to the task tree.
    pub formula: String,
    /// The formula's `namespace` (its results' testcases are `namespace.checkname`).
    #[serde(default)]
    pub namespace: String,
    pub item: String,
    pub item_type: String,
    pub arch: String,
    pub timeout_seconds: u64,
    pub args: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    /// Submission order (FIFO and paging).
    pub seq: u64,
    pub request: JobRequest,
    pub state: State,
    pub events: Vec<EventRecord>,
    pub execution_status: Option<ExecStatus>,
    pub status_message: String,
    pub exit_code: i32,
    pub failure_reason: String,
    /// Restarts survived (requeues used).
    pub attempt: u32,
    pub results: Vec<TaskResult>,
    pub results_yaml: String,
    pub tap: String,
    pub created_ms: i64,
    /// The VM the current attempt runs on (its id: the job's UUID, or a pre-booted VM's own).
    #[serde(default)]
    pub vm_id: String,
    /// When the current attempt's domain was started (BOOTING is libvirt's start + the guest's
    /// boot; this splits them).
    #[serde(default)]
    pub domain_started_ms: Option<i64>,
    /// The submission's idempotency key (empty: none).
    #[serde(default)]
    pub idempotency_key: String,
    #[serde(default)]
    pub provenance: Option<Provenance>,
    /// Reporting to ResultsDB, once the job has results to report.
    #[serde(default)]
    pub reporting: Option<ReportingStatus>,
}

/// Where a job's results are on their way to ResultsDB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReportingStatus {
    pub posted: u32,
    /// In the outbox, not posted yet.
    pub pending: u32,
    pub refused: Vec<Refusal>,
}

/// A result ResultsDB (or the namespace policy) refused, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub testcase: String,
    pub reason: String,
}

/// One result waiting to be posted (the outbox survives restarts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub job: String,
    pub index: u32,
    pub testcase: String,
    /// The `POST /results` body.
    pub body: serde_json::Value,
    /// A POST was started: before posting again, ask ResultsDB whether it arrived.
    #[serde(default)]
    pub sent: bool,
}

impl OutboxEntry {
    fn key(&self) -> String {
        format!("{}/{:06}", self.job, self.index)
    }
}

/// What became of an outbox entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Posted,
    Refused(String),
}

/// What [`Store::create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    New(JobRecord),
    /// The idempotency key was taken: the job that took it.
    Existing(JobRecord),
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Filter and page for [`Store::list`].
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    pub state: Option<State>,
    pub pool: Option<String>,
    pub item: Option<String>,
    pub after_seq: Option<u64>,
    pub limit: usize,
}

pub struct Store {
    db: sled::Db,
    jobs: sled::Tree,
    /// Idempotency key → job id.
    keys: sled::Tree,
    /// `<job>/<index>` → an [`OutboxEntry`].
    outbox: sled::Tree,
    /// Serialises read-modify-write of records (sled itself is thread-safe, our RMW is not).
    write: Mutex<()>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // A store just closed (a restart in the same process, a test) may still be locked for
        // a moment by sled's flusher thread: wait a little before calling it taken.
        let mut tries = 0;
        let db = loop {
            match sled::open(path) {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if tries < 30 && e.to_string().contains("acquire lock") => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let jobs = db.open_tree("jobs")?;
        let keys = db.open_tree("keys")?;
        let outbox = db.open_tree("outbox")?;
        Ok(Store {
            db,
            jobs,
            keys,
            outbox,
            write: Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock leaves no half-written record (writes are whole), so
        // a poisoned lock is still safe to use.
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, rec: &JobRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec).map_err(|source| StoreError::Corrupt {
            id: rec.id.clone(),
            source,
        })?;
        self.jobs.insert(rec.id.as_bytes(), bytes)?;
        self.db.flush()?;
        Ok(())
    }

    /// Applies `edit` to the record without a state change (durable on return).
    pub(super) fn update(
        &self,
        id: &str,
        edit: impl FnOnce(&mut JobRecord),
    ) -> Result<JobRecord, StoreError> {
        let _g = self.lock();
        let mut rec = self.get(id)?;
        edit(&mut rec);
        self.put(&rec)?;
        Ok(rec)
    }

    /// The job that holds idempotency key `key`, if one does.
    pub fn by_key(&self, key: &str) -> Result<Option<JobRecord>, StoreError> {
        if key.is_empty() {
            return Ok(None);
        }
        match self.keys.get(key.as_bytes())? {
            Some(id) => Ok(Some(self.get(&String::from_utf8_lossy(&id))?)),
            None => Ok(None),
        }
    }

    /// Creates a QUEUED job (durable on return), unless `key` is already taken: then nothing is
    /// written and the job that took it is returned. The record and its key are written in one
    /// transaction, so a crash leaves both or neither.
    pub(super) fn create(
        &self,
        id: &str,
        request: JobRequest,
        key: &str,
        provenance: Option<Provenance>,
    ) -> Result<Created, StoreError> {
        use sled::Transactional;
        let g = self.lock();
        if let Some(existing) = self.by_key(key)? {
            drop(g);
            // It may have been written a moment ago by a create still flushing: durable first.
            self.db.flush()?;
            return Ok(Created::Existing(existing));
        }
        let now = now_ms();
        let rec = JobRecord {
            id: id.to_string(),
            seq: self.db.generate_id()?,
            request,
            state: State::Queued,
            events: vec![EventRecord {
                state: State::Queued,
                at_ms: now,
                message: String::new(),
            }],
            execution_status: None,
            status_message: String::new(),
            exit_code: 0,
            failure_reason: String::new(),
            attempt: 0,
            results: Vec::new(),
            results_yaml: String::new(),
            tap: String::new(),
            created_ms: now,
            vm_id: String::new(),
            domain_started_ms: None,
            idempotency_key: key.to_string(),
            provenance,
            reporting: None,
        };
        let bytes = serde_json::to_vec(&rec).map_err(|source| StoreError::Corrupt {
            id: rec.id.clone(),
            source,
        })?;
        (&self.jobs, &self.keys)
            .transaction(|(jobs, keys)| {
                jobs.insert(rec.id.as_bytes(), bytes.as_slice())?;
                if !key.is_empty() {
                    keys.insert(key.as_bytes(), rec.id.as_bytes())?;
                }
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Db(e),
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::NotFound(format!("{id}: transaction aborted"))
                }
            })?;
        // Flushed outside the lock: concurrent submissions share one fsync (group commit).
        drop(g);
        self.db.flush()?;
        Ok(Created::New(rec))
    }

    pub fn get(&self, id: &str) -> Result<JobRecord, StoreError> {
        match self.jobs.get(id.as_bytes())? {
            Some(v) => decode(id, &v),
            None => Err(StoreError::NotFound(id.to_string())),
        }
    }

    /// Moves the job to `to` (appending a timestamped event) if the state machine allows it, and
    /// applies `edit` to the record in the same durable write.
    pub(super) fn transition_with(
        &self,
        id: &str,
        to: State,
        message: &str,
        edit: impl FnOnce(&mut JobRecord),
    ) -> Result<JobRecord, StoreError> {
        self.transition_with_outbox(id, to, message, edit, &[])
    }

    /// [`Store::transition_with`], writing `entries` into the outbox in the same transaction.
    pub(super) fn transition_with_outbox(
        &self,
        id: &str,
        to: State,
        message: &str,
        edit: impl FnOnce(&mut JobRecord),
        entries: &[OutboxEntry],
    ) -> Result<JobRecord, StoreError> {
        use sled::Transactional;
        let _g = self.lock();
        let mut rec = self.get(id)?;
        if !rec.state.can_go_to(to) {
            return Err(IllegalTransition {
                job: id.to_string(),
                from: rec.state,
                to,
            }
            .into());
        }
        rec.state = to;
        rec.events.push(EventRecord {
            state: to,
            at_ms: now_ms(),
            message: message.to_string(),
        });
        if to == State::Failed {
            rec.failure_reason = message.to_string();
        }
        edit(&mut rec);
        let bytes = encode(&rec)?;
        let mut rows = Vec::new();
        for e in entries {
            rows.push((e.key(), encode_entry(e)?));
        }
        (&self.jobs, &self.outbox)
            .transaction(|(jobs, outbox)| {
                jobs.insert(rec.id.as_bytes(), bytes.as_slice())?;
                for (k, v) in &rows {
                    outbox.insert(k.as_bytes(), v.as_slice())?;
                }
                Ok(())
            })
            .map_err(tx_error)?;
        self.db.flush()?;
        Ok(rec)
    }

    /// Every entry waiting in the outbox, oldest job first.
    pub(super) fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut out = Vec::new();
        for kv in self.outbox.iter() {
            let (k, v) = kv?;
            out.push(
                serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt {
                    id: String::from_utf8_lossy(&k).into_owned(),
                    source,
                })?,
            );
        }
        Ok(out)
    }

    /// Marks an entry as sent (a POST is about to start), durably.
    pub(super) fn outbox_sent(&self, e: &OutboxEntry) -> Result<(), StoreError> {
        let mut e = e.clone();
        e.sent = true;
        self.outbox.insert(e.key().as_bytes(), encode_entry(&e)?)?;
        self.db.flush()?;
        Ok(())
    }

    /// Removes an entry and counts it on its job, in one transaction.
    pub(super) fn outbox_resolve(
        &self,
        e: &OutboxEntry,
        how: &Resolution,
    ) -> Result<JobRecord, StoreError> {
        use sled::Transactional;
        let _g = self.lock();
        let mut rec = self.get(&e.job)?;
        let st = rec.reporting.get_or_insert_with(ReportingStatus::default);
        st.pending = st.pending.saturating_sub(1);
        match how {
            Resolution::Posted => st.posted += 1,
            Resolution::Refused(reason) => st.refused.push(Refusal {
                testcase: e.testcase.clone(),
                reason: reason.clone(),
            }),
        }
        let bytes = encode(&rec)?;
        let key = e.key();
        (&self.jobs, &self.outbox)
            .transaction(|(jobs, outbox)| {
                jobs.insert(rec.id.as_bytes(), bytes.as_slice())?;
                outbox.remove(key.as_bytes())?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.db.flush()?;
        Ok(rec)
    }

    #[cfg(test)]
    pub(super) fn transition(
        &self,
        id: &str,
        to: State,
        message: &str,
    ) -> Result<JobRecord, StoreError> {
        self.transition_with(id, to, message, |_| {})
    }

    /// Every job, in submission order.
    pub fn all(&self) -> Result<Vec<JobRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.jobs.iter() {
            let (k, v) = kv?;
            out.push(decode(&String::from_utf8_lossy(&k), &v)?);
        }
        out.sort_by_key(|r| r.seq);
        Ok(out)
    }

    /// A filtered page in submission order; the second value is the last seq when more remain.
    pub fn list(&self, q: &ListQuery) -> Result<(Vec<JobRecord>, Option<u64>), StoreError> {
        let limit = q.limit.max(1);
        let mut hits: Vec<JobRecord> = self
            .all()?
            .into_iter()
            .filter(|r| q.after_seq.is_none_or(|s| r.seq > s))
            .filter(|r| q.state.is_none_or(|s| r.state == s))
            .filter(|r| q.pool.as_ref().is_none_or(|p| &r.request.pool == p))
            .filter(|r| q.item.as_ref().is_none_or(|i| &r.request.item == i))
            .take(limit + 1)
            .collect();
        let more = hits.len() > limit;
        hits.truncate(limit);
        let next = if more {
            hits.last().map(|r| r.seq)
        } else {
            None
        };
        Ok((hits, next))
    }
}

fn encode(rec: &JobRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(rec).map_err(|source| StoreError::Corrupt {
        id: rec.id.clone(),
        source,
    })
}

fn encode_entry(e: &OutboxEntry) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(e).map_err(|source| StoreError::Corrupt {
        id: e.key(),
        source,
    })
}

fn tx_error(e: sled::transaction::TransactionError<()>) -> StoreError {
    match e {
        sled::transaction::TransactionError::Storage(e) => StoreError::Db(e),
        sled::transaction::TransactionError::Abort(()) => {
            StoreError::NotFound("transaction aborted".into())
        }
    }
}

fn decode(id: &str, v: &[u8]) -> Result<JobRecord, StoreError> {
    serde_json::from_slice(v).map_err(|source| StoreError::Corrupt {
        id: id.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pool: &str, item: &str) -> JobRequest {
        JobRequest {
            pool: pool.into(),
            item: item.into(),
            item_type: "koji_build".into(),
            ..JobRequest::default()
        }
    }

    #[test]
    fn transitions_are_checked_timestamped_and_durable() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("db");
        {
            let s = Store::open(&path).expect("open");
            s.create("a", req("p", "x"), "", None).expect("create");
            s.transition("a", State::Provisioning, "").expect("ok");
            let err = s.transition("a", State::Finished, "").expect_err("skip");
            assert!(matches!(err, StoreError::Illegal(_)), "{err}");
            assert_eq!(
                err.to_string(),
                "job a: illegal transition PROVISIONING → FINISHED"
            );
            s.transition("a", State::Failed, "libvirt down")
                .expect("fail");
        }
        // Reopen: what was acknowledged is there.
        let s = Store::open(&path).expect("reopen");
        let r = s.get("a").expect("get");
        assert_eq!(r.state, State::Failed);
        assert_eq!(r.failure_reason, "libvirt down");
        let states: Vec<State> = r.events.iter().map(|e| e.state).collect();
        assert_eq!(states, [State::Queued, State::Provisioning, State::Failed]);
        assert!(r.events.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(matches!(s.get("nope"), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn list_filters_and_pages_in_submission_order() {
        let tmp = tempfile::tempdir().expect("tmp");
        let s = Store::open(&tmp.path().join("db")).expect("open");
        for i in 0..7 {
            let pool = if i % 2 == 0 { "even" } else { "odd" };
            s.create(&format!("j{i}"), req(pool, &format!("item{i}")), "", None)
                .expect("create");
        }
        s.transition("j2", State::Cancelled, "").expect("cancel");
        let (page, next) = s
            .list(&ListQuery {
                pool: Some("even".into()),
                limit: 2,
                ..ListQuery::default()
            })
            .expect("list");
        assert_eq!(ids(&page), ["j0", "j2"]);
        let (page, next) = s
            .list(&ListQuery {
                pool: Some("even".into()),
                limit: 2,
                after_seq: next,
                ..ListQuery::default()
            })
            .expect("list");
        assert_eq!(ids(&page), ["j4", "j6"]);
        assert_eq!(next, None);
        let (page, _) = s
            .list(&ListQuery {
                state: Some(State::Cancelled),
                limit: 10,
                ..ListQuery::default()
            })
            .expect("list");
        assert_eq!(ids(&page), ["j2"]);
        let (page, _) = s
            .list(&ListQuery {
                item: Some("item5".into()),
                limit: 10,
                ..ListQuery::default()
            })
            .expect("list");
        assert_eq!(ids(&page), ["j5"]);
    }

    #[test]
    fn an_idempotency_key_makes_one_job_across_reopens() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("db");
        let prov = Provenance {
            message_id: "m1".into(),
            topic: "org.fedoraproject.prod.buildsys.build.state.change".into(),
            rule_index: 2,
            task_name: "rpmlint".into(),
        };
        {
            let s = Store::open(&path).expect("open");
            let Created::New(a) = s
                .create("a", req("p", "x"), "m1/rpmlint/x86_64", Some(prov.clone()))
                .expect("create")
            else {
                panic!("new");
            };
            assert_eq!(a.provenance.as_ref(), Some(&prov));
        }
        let s = Store::open(&path).expect("reopen");
        match s
            .create("b", req("p", "x"), "m1/rpmlint/x86_64", None)
            .expect("again")
        {
            Created::Existing(r) => assert_eq!(r.id, "a"),
            Created::New(r) => panic!("a second job {}", r.id),
        }
        assert!(matches!(s.get("b"), Err(StoreError::NotFound(_))));
        assert!(matches!(
            s.create("c", req("p", "x"), "", None).expect("no key"),
            Created::New(_)
        ));
        assert!(matches!(
            s.create("d", req("p", "x"), "", None).expect("no key"),
            Created::New(_)
        ));
        assert_eq!(s.all().expect("all").len(), 3);
    }

    #[test]
    fn a_record_of_the_previous_schema_still_opens() {
        // Written before vm_id, domain_started_ms, idempotency_key and provenance existed.
        let old = r#"{"id":"o","seq":1,"request":{"pool":"p","repo":"/r","git_ref":"","formula":"runtask.yml","item":"x","item_type":"koji_build","arch":"x86_64","timeout_seconds":60,"args":{}},"state":"QUEUED","events":[{"state":"QUEUED","at_ms":1,"message":""}],"execution_status":null,"status_message":"","exit_code":0,"failure_reason":"","attempt":0,"results":[],"results_yaml":"","tap":"","created_ms":1}"#;
        let r = decode("o", old.as_bytes()).expect("old record");
        assert_eq!((r.vm_id.as_str(), r.provenance), ("", None));
    }

    fn ids(v: &[JobRecord]) -> Vec<&str> {
        v.iter().map(|r| r.id.as_str()).collect()
    }
}
