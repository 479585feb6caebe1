//! The store's layout version and the migrations between versions. Every change to what is on
//! disk (a tree, a key format, a record change old code could not read) adds a version here and
//! the migration that takes a store of the previous version to it; a store written by any
//! earlier miniond opens with this one. Fields added to records with `#[serde(default)]` need
//! no migration: old records decode as they are.
//!
//! 1. before the version key: `jobs`, `keys`, `outbox`.
//! 2. + `by_seq`, `active`, `by_item` (built from the records), `quarantine`, `pruned`, `meta`.

use super::{new_record_ops, Store, StoreError};

pub const SCHEMA_VERSION: u32 = 2;

const VERSION_KEY: &[u8] = b"schema_version";

type Migration = fn(&Store) -> Result<(), StoreError>;

/// `(to, migration)`: each takes the store from `to - 1` to `to`. A migration must be safe to
/// run again after a crash part-way: the version is written only after it.
const MIGRATIONS: &[(u32, Migration)] = &[(2, build_indexes)];

/// The store's version as written in it (1: none written, a store older than the key).
pub(super) fn version(s: &Store) -> Result<u32, StoreError> {
    match s.meta.get(VERSION_KEY)? {
        Some(v) => match <[u8; 4]>::try_from(v.as_ref()) {
            Ok(b) => Ok(u32::from_be_bytes(b)),
            Err(_) => Err(StoreError::Migration {
                path: s.path.clone(),
                to: SCHEMA_VERSION,
                reason: format!("the schema version is unreadable ({} bytes)", v.len()),
            }),
        },
        None => Ok(1),
    }
}

/// Brings the store to [`SCHEMA_VERSION`]: a new store is written at it, an older one migrated
/// step by step, a newer one refused (it may hold what this miniond would lose).
pub(super) fn upgrade(s: &Store) -> Result<(), StoreError> {
    if s.meta.get(VERSION_KEY)?.is_none() && !s.db.was_recovered() {
        return write_version(s, SCHEMA_VERSION);
    }
    let found = version(s)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: s.path.clone(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (to, migrate) in MIGRATIONS.iter().filter(|(to, _)| *to > found) {
        tracing::info!(store = %s.path, "migrating the jobs database to schema version {to}");
        migrate(s).map_err(|e| StoreError::Migration {
            path: s.path.clone(),
            to: *to,
            reason: e.to_string(),
        })?;
        write_version(s, *to)?;
    }
    Ok(())
}

fn write_version(s: &Store, v: u32) -> Result<(), StoreError> {
    s.meta.insert(VERSION_KEY, &v.to_be_bytes())?;
    s.db.flush()?;
    Ok(())
}

/// 1 → 2: the creation-order, not-final and item indexes, from every record; a record that
/// does not decode goes to the quarantine.
fn build_indexes(s: &Store) -> Result<(), StoreError> {
    let mut indexed = 0usize;
    for kv in s.jobs.iter() {
        let (k, v) = kv?;
        let id = String::from_utf8_lossy(&k).into_owned();
        let rec: super::JobRecord = match serde_json::from_slice(&v) {
            Ok(r) => r,
            Err(e) => {
                s.quarantine(&id, &v, &e)?;
                continue;
            }
        };
        s.commit(&new_record_ops(&rec, v.to_vec()))?;
        indexed += 1;
    }
    s.db.flush()?;
    tracing::info!(store = %s.path, "indexed {indexed} job record(s)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{ListQuery, Store};
    use super::*;
    use crate::lifecycle::State;

    /// A store written by miniond at schema version 1 (before the version key), by its own
    /// code: four jobs (QUEUED; REPORTING with a key, provenance and an outbox entry; FAILED;
    /// PROVISIONING).
    fn v1_store(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("jobs.db");
        std::fs::create_dir_all(&path).expect("dir");
        std::fs::write(
            path.join("conf"),
            include_bytes!("../fixtures/store-v1/conf"),
        )
        .expect("conf");
        std::fs::write(path.join("db"), include_bytes!("../fixtures/store-v1/db")).expect("db");
        path
    }

    const J: [&str; 4] = [
        "00000000-0000-4000-8000-000000000001",
        "00000000-0000-4000-8000-000000000002",
        "00000000-0000-4000-8000-000000000003",
        "00000000-0000-4000-8000-000000000004",
    ];

    #[test]
    fn a_store_written_at_version_1_opens_migrated_with_nothing_lost() {
        let t = tempfile::tempdir().expect("tmp");
        let path = v1_store(t.path());
        for round in 0..2 {
            // Twice: the second open finds version 2 and migrates nothing.
            let s = Store::open(&path).expect("open");
            assert_eq!(
                version(&s).expect("version"),
                SCHEMA_VERSION,
                "round {round}"
            );
            let all = s
                .list(&ListQuery {
                    limit: 10,
                    ..ListQuery::default()
                })
                .expect("list");
            let ids: Vec<&str> = all.jobs.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(ids, J, "creation order");
            let states: Vec<State> = all.jobs.iter().map(|r| r.state).collect();
            assert_eq!(
                states,
                [
                    State::Queued,
                    State::Reporting,
                    State::Failed,
                    State::Provisioning
                ]
            );
            let active: Vec<String> = s
                .active()
                .expect("active")
                .into_iter()
                .map(|r| r.id)
                .collect();
            assert_eq!(active, [J[0], J[1], J[3]]);
            let foo = s
                .list(&ListQuery {
                    item: Some("foo-1.0-1.fc40".into()),
                    newest_first: true,
                    limit: 10,
                    ..ListQuery::default()
                })
                .expect("by item");
            let ids: Vec<&str> = foo.jobs.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(ids, [J[3], J[0]]);
            let keyed = s
                .by_key("msg-1/rpmlint/x86_64")
                .expect("key")
                .expect("held");
            assert_eq!(keyed.id, J[1]);
            assert_eq!(
                keyed.provenance.map(|p| p.task_name),
                Some("rpmlint".to_string())
            );
            assert_eq!(keyed.results[0].outcome, "PASSED");
            let outbox = s.outbox().expect("outbox");
            assert_eq!(
                (outbox.len(), outbox[0].testcase.as_str()),
                (1, "dist.rpmlint")
            );
            assert_eq!(s.get(J[2]).expect("failed").failure_reason, "libvirt down");
            assert_eq!(s.quarantined(), 0);
            drop(s);
        }
    }

    #[test]
    fn a_new_store_is_written_at_the_current_version_and_a_newer_one_is_refused() {
        let t = tempfile::tempdir().expect("tmp");
        let path = t.path().join("jobs.db");
        {
            let s = Store::open(&path).expect("open");
            assert_eq!(version(&s).expect("version"), SCHEMA_VERSION);
            write_version(&s, SCHEMA_VERSION + 1).expect("write");
        }
        let err = Store::open(&path).err().expect("refused");
        assert!(matches!(err, StoreError::TooNew { found, .. } if found == SCHEMA_VERSION + 1));
        assert!(
            err.to_string().contains(&format!(
                "schema version {} is newer than this miniond knows ({SCHEMA_VERSION})",
                SCHEMA_VERSION + 1
            )),
            "{err}"
        );
    }
}
