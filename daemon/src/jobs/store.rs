//! The jobs database (sled). Every write is one transaction, flushed before the caller acts on
//! it, so a crash never loses a transition that already had effects, and never leaves a record
//! without its index entries.
//!
//! ```text
//! meta        "schema_version" → u32 BE (schema.rs: the version and its migrations)
//! jobs        id → JobRecord (JSON)
//! by_seq      seq → id        creation order: listing and paging cost what they return
//! active      seq → id        jobs not final: what the dispatcher and a restart scan
//! by_item     item, seq → id  an item's history
//! keys        idempotency key → id
//! outbox      <job>/<index> → OutboxEntry
//! quarantine  id → the bytes of a record that did not decode, moved aside
//! pruned      id → Tombstone  what the retention pruner removed
//! ```
//!
//! An index entry whose record is gone is skipped and removed where it is met; a record that
//! does not decode is moved to `quarantine` where it is met, so one bad record never stops a
//! listing or the daemon.

mod schema;

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

pub use super::record::{
    EventRecord, ExecStatus, JobRecord, JobRequest, OutboxEntry, Provenance, Pruned, Refusal,
    ReportingStatus, Resolution, TaskResult, Tombstone,
};
use crate::lifecycle::{IllegalTransition, State};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("jobs database: {0}")]
    Db(#[from] sled::Error),
    #[error("job record {id} does not decode ({source}): moved aside to the quarantine")]
    Corrupt {
        id: String,
        source: serde_json::Error,
    },
    #[error("job record {id}: cannot encode: {source}")]
    Encode {
        id: String,
        source: serde_json::Error,
    },
    #[error("no job {0}")]
    NotFound(String),
    #[error("job {} was pruned {}", .0.id, .0.pruned)]
    Pruned(Box<Tombstone>),
    #[error(
        "jobs database {path}: schema version {found} is newer than this miniond knows ({known}); \
         run the miniond that wrote it, or a newer one"
    )]
    TooNew {
        path: String,
        found: u32,
        known: u32,
    },
    #[error("jobs database {path}: migration to schema version {to}: {reason}")]
    Migration {
        path: String,
        to: u32,
        reason: String,
    },
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
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
    /// The previous page's `next`: this page starts after it (in the listing's direction).
    pub after_seq: Option<u64>,
    /// Newest first (else oldest first).
    pub newest_first: bool,
    pub limit: usize,
}

/// One page of [`Store::list`].
#[derive(Debug, Default)]
pub struct Page {
    pub jobs: Vec<JobRecord>,
    /// Where the next page starts when more remain.
    pub next: Option<u64>,
}

/// The trees one transaction may touch.
#[derive(Debug, Clone, Copy)]
enum T {
    Jobs,
    BySeq,
    Active,
    ByItem,
    Keys,
    Outbox,
    Quarantine,
    Pruned,
}

enum Op {
    Put(T, Vec<u8>, Vec<u8>),
    Del(T, Vec<u8>),
}

pub struct Store {
    db: sled::Db,
    path: String,
    jobs: sled::Tree,
    by_seq: sled::Tree,
    active: sled::Tree,
    by_item: sled::Tree,
    keys: sled::Tree,
    outbox: sled::Tree,
    quarantine: sled::Tree,
    pruned: sled::Tree,
    meta: sled::Tree,
    /// Serialises read-modify-write of records (sled itself is thread-safe, our RMW is not).
    write: Mutex<()>,
}

fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// `by_item` key: the item's length, the item, the seq (length-prefixed: any bytes may be in an
/// item, and one item's keys never interleave with another's).
fn item_prefix(item: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + item.len() + 8);
    k.extend_from_slice(&(item.len() as u32).to_be_bytes());
    k.extend_from_slice(item.as_bytes());
    k
}

fn item_key(item: &str, seq: u64) -> Vec<u8> {
    let mut k = item_prefix(item);
    k.extend_from_slice(&seq_key(seq));
    k
}

/// The ops that write `rec` and keep `active` in step with its state.
fn record_ops(rec: &JobRecord, bytes: Vec<u8>) -> Vec<Op> {
    let active = if rec.state.is_final() {
        Op::Del(T::Active, seq_key(rec.seq).to_vec())
    } else {
        Op::Put(
            T::Active,
            seq_key(rec.seq).to_vec(),
            rec.id.as_bytes().to_vec(),
        )
    };
    vec![Op::Put(T::Jobs, rec.id.as_bytes().to_vec(), bytes), active]
}

/// [`record_ops`] for a record not in the store yet: also its entries in the indexes that never
/// change for a job (creation order, item).
fn new_record_ops(rec: &JobRecord, bytes: Vec<u8>) -> Vec<Op> {
    let mut ops = record_ops(rec, bytes);
    ops.push(Op::Put(
        T::BySeq,
        seq_key(rec.seq).to_vec(),
        rec.id.as_bytes().to_vec(),
    ));
    ops.push(Op::Put(
        T::ByItem,
        item_key(&rec.request.item, rec.seq),
        rec.id.as_bytes().to_vec(),
    ));
    ops
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
        let s = Store {
            path: path.display().to_string(),
            jobs: db.open_tree("jobs")?,
            by_seq: db.open_tree("by_seq")?,
            active: db.open_tree("active")?,
            by_item: db.open_tree("by_item")?,
            keys: db.open_tree("keys")?,
            outbox: db.open_tree("outbox")?,
            quarantine: db.open_tree("quarantine")?,
            pruned: db.open_tree("pruned")?,
            meta: db.open_tree("meta")?,
            db,
            write: Mutex::new(()),
        };
        schema::upgrade(&s)?;
        Ok(s)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock leaves no half-written record (writes are whole), so
        // a poisoned lock is still safe to use.
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tree(&self, t: T) -> &sled::Tree {
        match t {
            T::Jobs => &self.jobs,
            T::BySeq => &self.by_seq,
            T::Active => &self.active,
            T::ByItem => &self.by_item,
            T::Keys => &self.keys,
            T::Outbox => &self.outbox,
            T::Quarantine => &self.quarantine,
            T::Pruned => &self.pruned,
        }
    }

    /// Applies `ops` in one transaction (not flushed: the caller flushes).
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        use sled::Transactional;
        (
            &self.jobs,
            &self.by_seq,
            &self.active,
            &self.by_item,
            &self.keys,
            &self.outbox,
            &self.quarantine,
            &self.pruned,
        )
            .transaction(
                |(jobs, by_seq, active, by_item, keys, outbox, quarantine, pruned)| {
                    for op in ops {
                        let (t, k) = match op {
                            Op::Put(t, k, _) | Op::Del(t, k) => (*t, k),
                        };
                        let tree = match t {
                            T::Jobs => jobs,
                            T::BySeq => by_seq,
                            T::Active => active,
                            T::ByItem => by_item,
                            T::Keys => keys,
                            T::Outbox => outbox,
                            T::Quarantine => quarantine,
                            T::Pruned => pruned,
                        };
                        match op {
                            Op::Put(_, _, v) => {
                                tree.insert(k.as_slice(), v.as_slice())?;
                            }
                            Op::Del(..) => {
                                tree.remove(k.as_slice())?;
                            }
                        }
                    }
                    Ok(())
                },
            )
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Db(e),
                // The closure never aborts.
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::Db(sled::Error::Unsupported("transaction aborted".into()))
                }
            })
    }

    fn commit_flushed(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.commit(ops)?;
        self.durable()
    }

    /// Returns once every write committed before the call is on disk. Writers commit under
    /// the record lock and call this after releasing it: sled's flush waits until its log is
    /// stable up to now, so writers that commit while one flush runs share the next (group
    /// commit), instead of an fsync each under the lock.
    /// Another module's tree in the same database (instances keep their records there).
    pub fn tree_named(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    fn durable(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Applies `edit` to the record without a state change (durable on return).
    pub(super) fn update(
        &self,
        id: &str,
        edit: impl FnOnce(&mut JobRecord),
    ) -> Result<JobRecord, StoreError> {
        let g = self.lock();
        let mut rec = self.get(id)?;
        edit(&mut rec);
        let bytes = encode(&rec)?;
        self.commit(&record_ops(&rec, bytes))?;
        drop(g);
        self.durable()?;
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
    /// written and the job that took it is returned. The record, its index entries and its key
    /// are one transaction.
    pub(super) fn create(
        &self,
        id: &str,
        request: JobRequest,
        key: &str,
        provenance: Option<Provenance>,
    ) -> Result<Created, StoreError> {
        let g = self.lock();
        if let Some(existing) = self.by_key(key)? {
            drop(g);
            // It may have been written a moment ago by a create still flushing: durable first.
            self.durable()?;
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
            artifact_bytes: 0,
            artifacts_pruned: None,
        };
        let mut ops = new_record_ops(&rec, encode(&rec)?);
        if !key.is_empty() {
            ops.push(Op::Put(
                T::Keys,
                key.as_bytes().to_vec(),
                id.as_bytes().to_vec(),
            ));
        }
        self.commit(&ops)?;
        drop(g);
        self.durable()?;
        Ok(Created::New(rec))
    }

    /// The record, or why there is none: never there, pruned, or moved aside as corrupt.
    pub fn get(&self, id: &str) -> Result<JobRecord, StoreError> {
        match self.load(id)? {
            Some(r) => Ok(r),
            None => match self.pruned.get(id.as_bytes())? {
                Some(t) => match serde_json::from_slice::<Tombstone>(&t) {
                    Ok(t) => Err(StoreError::Pruned(Box::new(t))),
                    Err(_) => Err(StoreError::NotFound(id.to_string())),
                },
                None => Err(StoreError::NotFound(id.to_string())),
            },
        }
    }

    /// The record if it is there; one that does not decode is moved aside (and is an error).
    fn load(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let Some(v) = self.jobs.get(id.as_bytes())? else {
            return Ok(None);
        };
        match serde_json::from_slice(&v) {
            Ok(r) => Ok(Some(r)),
            Err(source) => {
                self.quarantine(id, &v, &source)?;
                Err(StoreError::Corrupt {
                    id: id.to_string(),
                    source,
                })
            }
        }
    }

    /// Moves a record that does not decode out of `jobs` (its index entries go where they
    /// are met), keeping its bytes for whoever investigates.
    fn quarantine(&self, id: &str, raw: &[u8], why: &serde_json::Error) -> Result<(), StoreError> {
        tracing::error!(job = %id, "job record does not decode ({why}): moved aside to the quarantine");
        self.commit_flushed(&[
            Op::Put(T::Quarantine, id.as_bytes().to_vec(), raw.to_vec()),
            Op::Del(T::Jobs, id.as_bytes().to_vec()),
        ])?;
        Ok(())
    }

    /// How many records are in the quarantine (moved aside because they did not decode).
    pub fn quarantined(&self) -> usize {
        self.quarantine.len()
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
        let g = self.lock();
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
        let mut ops = record_ops(&rec, encode(&rec)?);
        for e in entries {
            ops.push(Op::Put(T::Outbox, e.key().into_bytes(), encode_entry(e)?));
        }
        self.commit(&ops)?;
        drop(g);
        self.durable()?;
        Ok(rec)
    }

    /// Every entry waiting in the outbox, oldest job first. An entry that does not decode is
    /// dropped with an error logged (its job's count of pending results stays as it was).
    pub(super) fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut out = Vec::new();
        for kv in self.outbox.iter() {
            let (k, v) = kv?;
            match serde_json::from_slice(&v) {
                Ok(e) => out.push(e),
                Err(e) => {
                    tracing::error!(
                        entry = %String::from_utf8_lossy(&k),
                        "outbox entry does not decode ({e}): dropped"
                    );
                    self.outbox.remove(&k)?;
                }
            }
        }
        Ok(out)
    }

    /// Whether any of the job's results still wait in the outbox.
    fn has_outbox(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .outbox
            .scan_prefix(format!("{id}/").as_bytes())
            .next()
            .transpose()?
            .is_some())
    }

    /// Marks an entry as sent (a POST is about to start), durably.
    pub(super) fn outbox_sent(&self, e: &OutboxEntry) -> Result<(), StoreError> {
        let mut e = e.clone();
        e.sent = true;
        self.outbox.insert(e.key().as_bytes(), encode_entry(&e)?)?;
        self.durable()?;
        Ok(())
    }

    /// Removes an entry and counts it on its job, in one transaction.
    pub(super) fn outbox_resolve(
        &self,
        e: &OutboxEntry,
        how: &Resolution,
    ) -> Result<JobRecord, StoreError> {
        let g = self.lock();
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
        let mut ops = record_ops(&rec, encode(&rec)?);
        ops.push(Op::Del(T::Outbox, e.key().into_bytes()));
        self.commit(&ops)?;
        drop(g);
        self.durable()?;
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

    /// Every job that is not final (queued, in flight, reporting), in submission order.
    pub fn active(&self) -> Result<Vec<JobRecord>, StoreError> {
        let all = ListQuery {
            limit: usize::MAX - 1,
            ..ListQuery::default()
        };
        Ok(self.scan(T::Active, Vec::new(), &all)?.jobs)
    }

    /// A filtered page, oldest or newest first. It walks the narrowest index the filter allows
    /// (an item's entries, the jobs not final, or all in creation order), so an unfiltered
    /// page costs what it returns.
    pub fn list(&self, q: &ListQuery) -> Result<Page, StoreError> {
        match (&q.item, q.state) {
            (Some(item), _) => self.scan(T::ByItem, item_prefix(item), q),
            (None, Some(s)) if !s.is_final() => self.scan(T::Active, Vec::new(), q),
            _ => self.scan(T::BySeq, Vec::new(), q),
        }
    }

    /// Walks index `tree` (its keys: `prefix` then a seq) from the query's cursor and keeps
    /// what the query's filters match.
    fn scan(&self, tree: T, prefix: Vec<u8>, q: &ListQuery) -> Result<Page, StoreError> {
        let limit = q.limit.max(1);
        let at = |seq: u64| {
            let mut k = prefix.clone();
            k.extend_from_slice(&seq_key(seq));
            k
        };
        let (start, end) = (at(0), at(u64::MAX));
        let index = self.tree(tree);
        let range: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            match (q.newest_first, q.after_seq) {
                (false, None) => Box::new(index.range(start..=end)),
                (false, Some(s)) => Box::new(index.range(at(s.saturating_add(1))..=end)),
                (true, None) => Box::new(index.range(start..=end).rev()),
                (true, Some(s)) => Box::new(index.range(start..at(s)).rev()),
            };
        let mut jobs = Vec::new();
        let mut more = false;
        for kv in range {
            let (k, v) = kv?;
            let id = String::from_utf8_lossy(&v).into_owned();
            let rec = match self.load(&id) {
                Ok(Some(r)) => r,
                // Its record was pruned or moved aside: the entry goes too.
                Ok(None) | Err(StoreError::Corrupt { .. }) => {
                    index.remove(&k)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if q.state.is_some_and(|s| rec.state != s)
                || q.pool.as_ref().is_some_and(|p| &rec.request.pool != p)
                || q.item.as_ref().is_some_and(|i| &rec.request.item != i)
            {
                continue;
            }
            if jobs.len() == limit {
                more = true;
                break;
            }
            jobs.push(rec);
        }
        let next = if more {
            jobs.last().map(|r| r.seq)
        } else {
            None
        };
        Ok(Page { jobs, next })
    }

    /// Whether retention may remove the job: final, and nothing of it left in the outbox.
    pub(super) fn prunable(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.prunable_record(id)?.is_some())
    }

    /// The job's record if retention may remove it (see [`Store::prunable`]).
    fn prunable_record(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        match self.load(id) {
            Ok(Some(r)) if r.state.is_final() && !self.has_outbox(id)? => Ok(Some(r)),
            Ok(_) | Err(StoreError::Corrupt { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes a final job's record (and its index entries and idempotency key), leaving a
    /// tombstone; a job not final, or with results still to post, is kept (false).
    pub(super) fn prune(&self, id: &str, pruned: Pruned) -> Result<bool, StoreError> {
        let g = self.lock();
        let Some(rec) = self.prunable_record(id)? else {
            return Ok(false);
        };
        let tomb = Tombstone {
            id: rec.id.clone(),
            created_ms: rec.created_ms,
            state: rec.state,
            pruned,
        };
        let tomb = serde_json::to_vec(&tomb).map_err(|source| StoreError::Encode {
            id: id.to_string(),
            source,
        })?;
        let mut ops = vec![
            Op::Del(T::Jobs, id.as_bytes().to_vec()),
            Op::Del(T::BySeq, seq_key(rec.seq).to_vec()),
            Op::Del(T::Active, seq_key(rec.seq).to_vec()),
            Op::Del(T::ByItem, item_key(&rec.request.item, rec.seq)),
            Op::Put(T::Pruned, id.as_bytes().to_vec(), tomb),
        ];
        let key = rec.idempotency_key.as_bytes();
        if !key.is_empty() && self.keys.get(key)?.is_some_and(|v| v == id.as_bytes()) {
            ops.push(Op::Del(T::Keys, key.to_vec()));
        }
        self.commit(&ops)?;
        drop(g);
        self.durable()?;
        Ok(true)
    }

    /// Drops tombstones of jobs pruned before `before_ms`; returns how many.
    pub(super) fn forget_pruned(&self, before_ms: i64) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.pruned.iter() {
            let (k, v) = kv?;
            let old = serde_json::from_slice::<Tombstone>(&v)
                .map(|t| t.pruned.at_ms < before_ms)
                .unwrap_or(true);
            if old {
                self.pruned.remove(&k)?;
                n += 1;
            }
        }
        if n > 0 {
            self.durable()?;
        }
        Ok(n)
    }

    #[cfg(test)]
    fn put_raw(&self, id: &str, seq: u64, bytes: &[u8]) {
        self.jobs.insert(id.as_bytes(), bytes).expect("raw");
        self.by_seq
            .insert(seq_key(seq), id.as_bytes())
            .expect("raw");
        self.active
            .insert(seq_key(seq), id.as_bytes())
            .expect("raw");
    }
}

fn encode(rec: &JobRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(rec).map_err(|source| StoreError::Encode {
        id: rec.id.clone(),
        source,
    })
}

fn encode_entry(e: &OutboxEntry) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(e).map_err(|source| StoreError::Encode {
        id: e.key(),
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
        let page = s
            .list(&ListQuery {
                pool: Some("even".into()),
                limit: 2,
                ..ListQuery::default()
            })
            .expect("list");
        assert_eq!(ids(&page.jobs), ["j0", "j2"]);
        let page = s
            .list(&ListQuery {
                pool: Some("even".into()),
                limit: 2,
                after_seq: page.next,
                ..ListQuery::default()
            })
            .expect("list");
        assert_eq!(ids(&page.jobs), ["j4", "j6"]);
        assert_eq!(page.next, None);
        let page = s
            .list(&ListQuery {
                state: Some(State::Cancelled),
                limit: 10,
                ..ListQuery::default()
            })
            .expect("list");
        assert_eq!(ids(&page.jobs), ["j2"]);
        let page = s
            .list(&ListQuery {
                state: Some(State::Queued),
                limit: 10,
                ..ListQuery::default()
            })
            .expect("list");
        assert_eq!(ids(&page.jobs), ["j0", "j1", "j3", "j4", "j5", "j6"]);
        let page = s
            .list(&ListQuery {
                item: Some("item5".into()),
                limit: 10,
                ..ListQuery::default()
            })
            .expect("list");
        assert_eq!(ids(&page.jobs), ["j5"]);
        // Newest first, paged: the cursor walks back.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = s
                .list(&ListQuery {
                    newest_first: true,
                    after_seq: after,
                    limit: 3,
                    ..ListQuery::default()
                })
                .expect("list");
            seen.extend(page.jobs.into_iter().map(|r| r.id));
            after = page.next;
            if after.is_none() {
                break;
            }
        }
        assert_eq!(seen, ["j6", "j5", "j4", "j3", "j2", "j1", "j0"]);
    }

    #[test]
    fn a_record_that_does_not_decode_is_moved_aside_and_stops_nothing() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("db");
        {
            let s = Store::open(&path).expect("open");
            s.create("a", req("p", "x"), "", None).expect("create");
            s.put_raw("bad", 1_000_000, b"{\"id\": \"bad\", \"seq\": tru");
            s.create("c", req("p", "x"), "", None).expect("create");
        }
        let s = Store::open(&path).expect("a corrupt record does not stop the open");
        let page = s
            .list(&ListQuery {
                limit: 10,
                ..ListQuery::default()
            })
            .expect("the listing goes on");
        assert_eq!(ids(&page.jobs), ["a", "c"]);
        assert_eq!(s.quarantined(), 1);
        assert_eq!(
            ids(&s.active().expect("active")),
            ["a", "c"],
            "its index entries are gone"
        );
        assert!(matches!(s.get("bad"), Err(StoreError::NotFound(_))));
        assert_eq!(
            s.quarantine.get("bad").expect("q").as_deref(),
            Some(&b"{\"id\": \"bad\", \"seq\": tru"[..]),
            "its bytes are kept"
        );
        // Met by a get first: the same.
        s.put_raw("bad2", 1_000_001, b"\xff\xfe");
        let e = s.get("bad2").expect_err("corrupt");
        assert!(
            e.to_string().starts_with("job record bad2 does not decode"),
            "{e}"
        );
        assert_eq!(s.quarantined(), 2);
    }

    #[test]
    fn a_pruned_job_leaves_a_tombstone_and_frees_its_key() {
        let tmp = tempfile::tempdir().expect("tmp");
        let s = Store::open(&tmp.path().join("db")).expect("open");
        s.create("a", req("p", "x"), "k1", None).expect("create");
        let why = || Pruned {
            at_ms: 1_700_000_000_000,
            reason: "retention: older than 30 days".into(),
        };
        assert!(!s.prune("a", why()).expect("prune"), "a queued job is kept");
        s.transition("a", State::Cancelled, "").expect("cancel");
        assert!(s.prune("a", why()).expect("prune"));
        let e = s.get("a").expect_err("pruned");
        assert!(matches!(e, StoreError::Pruned(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "job a was pruned 2023-11-14T22:13:20Z (retention: older than 30 days)"
        );
        assert!(s.by_key("k1").expect("key").is_none());
        let page = s
            .list(&ListQuery {
                item: Some("x".into()),
                limit: 10,
                ..ListQuery::default()
            })
            .expect("list");
        assert!(page.jobs.is_empty());
        assert_eq!(s.forget_pruned(1_700_000_000_001).expect("forget"), 1);
        assert!(matches!(s.get("a"), Err(StoreError::NotFound(_))));
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
        assert_eq!(s.active().expect("all").len(), 3);
    }

    #[test]
    fn a_record_of_the_previous_schema_still_opens() {
        // Written before vm_id, domain_started_ms, idempotency_key and provenance existed.
        let old = r#"{"id":"o","seq":1,"request":{"pool":"p","repo":"/r","git_ref":"","formula":"runtask.yml","item":"x","item_type":"koji_build","arch":"x86_64","timeout_seconds":60,"args":{}},"state":"QUEUED","events":[{"state":"QUEUED","at_ms":1,"message":""}],"execution_status":null,"status_message":"","exit_code":0,"failure_reason":"","attempt":0,"results":[],"results_yaml":"","tap":"","created_ms":1}"#;
        let r: JobRecord = serde_json::from_str(old).expect("old record");
        assert_eq!((r.vm_id.as_str(), r.provenance), ("", None));
    }

    fn ids(v: &[JobRecord]) -> Vec<&str> {
        v.iter().map(|r| r.id.as_str()).collect()
    }

    /// `cargo test --release -p miniond -- --ignored --nocapture store_bench` (scripts/bench-store.sh):
    /// submit throughput into the store (durable creates from 8 threads), then a first page of
    /// `ListJobs` and of `minion job list --limit 50` with N jobs (default 100,000) in the store,
    /// beside the full scan every listing did before the indexes (the baseline). With
    /// `BENCH_STORE_DIR` the store is left there for the CLI's turn.
    #[test]
    #[ignore = "a benchmark: run by scripts/bench-store.sh"]
    fn store_bench() {
        let n: usize = std::env::var("N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let tmp = tempfile::tempdir().expect("tmp");
        let path = match std::env::var("BENCH_STORE_DIR") {
            Ok(d) => std::path::PathBuf::from(d).join("jobs.db"),
            Err(_) => tmp.path().join("jobs.db"),
        };
        let _ = std::fs::remove_dir_all(&path);
        let s = std::sync::Arc::new(Store::open(&path).expect("open"));
        let threads: usize = std::env::var("THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(8);
        let t0 = std::time::Instant::now();
        std::thread::scope(|sc| {
            for t in 0..threads {
                let s = s.clone();
                sc.spawn(move || {
                    for i in (t..n).step_by(threads) {
                        let mut r = req("bench", &format!("pkg-{}-1.fc40", i % 5000));
                        r.repo = "https://src.fedoraproject.org/rpms/rpmlint.git".into();
                        r.formula = "runtask.yml".into();
                        s.create(&format!("{i:08}-0000-4000-8000-000000000000"), r, "", None)
                            .expect("create");
                    }
                });
            }
        });
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "store bench: submit {n} jobs (durable, {threads} threads): {:.1} s, {:.0} jobs/s",
            secs,
            n as f64 / secs
        );
        // The baseline in the same run: what a submission did before the indexes (one
        // transaction over the record and its key, no index entries), a fifth as many jobs.
        {
            let db = sled::open(tmp.path().join("baseline.db")).expect("baseline");
            let (jobs, keys) = (
                db.open_tree("jobs").expect("t"),
                db.open_tree("keys").expect("t"),
            );
            let lock = Mutex::new(());
            let sample = s
                .get("00000000-0000-4000-8000-000000000000")
                .expect("a job");
            let sample = &sample;
            let m = n / 5;
            let t0 = std::time::Instant::now();
            std::thread::scope(|sc| {
                for t in 0..threads {
                    let (db, jobs, keys, lock) = (&db, &jobs, &keys, &lock);
                    sc.spawn(move || {
                        use sled::Transactional;
                        for i in (t..m).step_by(threads) {
                            let _g = lock.lock().expect("lock");
                            let bytes = encode(sample).expect("encode");
                            (jobs, keys)
                                .transaction(|(j, _k)| {
                                    j.insert(format!("{i:08}").as_bytes(), bytes.as_slice())?;
                                    Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                                })
                                .expect("tx");
                            drop(_g);
                            db.flush().expect("flush");
                        }
                    });
                }
            });
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "store bench: baseline (submission without the indexes, as before) {m} jobs, {threads} threads: {:.0} jobs/s",
                m as f64 / secs
            );
        }
        // All but the newest 1% end, as in a store that has run for a while.
        let keep = n / 100;
        std::thread::scope(|sc| {
            for t in 0..threads {
                let s = s.clone();
                sc.spawn(move || {
                    for i in (t..n - keep).step_by(threads) {
                        s.transition(
                            &format!("{i:08}-0000-4000-8000-000000000000"),
                            State::Cancelled,
                            "bench",
                        )
                        .expect("cancel");
                    }
                });
            }
        });
        let time = |f: &dyn Fn() -> usize| {
            let mut ms: Vec<f64> = (0..200)
                .map(|_| {
                    let t = std::time::Instant::now();
                    assert!(f() > 0);
                    t.elapsed().as_secs_f64() * 1000.0
                })
                .collect();
            ms.sort_by(f64::total_cmp);
            (ms[ms.len() / 2], ms[ms.len() * 99 / 100])
        };
        let st = &s;
        let page = |newest_first: bool, limit: usize| {
            let s = st;
            move || {
                s.list(&ListQuery {
                    newest_first,
                    limit,
                    ..ListQuery::default()
                })
                .expect("list")
                .jobs
                .len()
            }
        };
        // What every listing did before the indexes: decode all, sort, filter, page.
        let full_scan = || {
            let mut all: Vec<JobRecord> = s
                .jobs
                .iter()
                .map(|kv| serde_json::from_slice(&kv.expect("kv").1).expect("decode"))
                .collect();
            all.sort_by_key(|r| r.seq);
            all.into_iter().take(101).count()
        };
        for (what, f) in [
            (
                "ListJobs first page (100, oldest first)",
                &page(false, 100) as &dyn Fn() -> usize,
            ),
            ("ListJobs first page (100, newest first)", &page(true, 100)),
            ("job list --limit 50 (50, newest first)", &page(true, 50)),
            ("queued/in-flight scan (the dispatcher's)", &|| {
                s.active().expect("active").len()
            }),
        ] {
            let (p50, p99) = time(f);
            println!("store bench: {what} with {n} jobs: p50 {p50:.2} ms, p99 {p99:.2} ms");
        }
        let mut ms: Vec<f64> = (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                full_scan();
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "store bench: baseline (full scan, as before the indexes) first page with {n} jobs: median {:.1} ms of 5",
            ms[2]
        );
    }
}
