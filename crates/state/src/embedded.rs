//! The embedded [`SessionStore`]: one redb file in the data directory.
//!
//! Why redb rather than SQLite: it is pure Rust (no C build, nothing to
//! install), its write transactions are serialized — which makes the offset
//! compare-and-swap trivially atomic — and a commit with the default
//! `Durability::Immediate` is fsync'ed before it returns, which is what a
//! 200 promises. Records are small JSON values, readable when debugging.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition};

use crate::{Advance, Advanced, ObjectRecord, Session, SessionStore, Start, StateError};

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// Keyed by `bucket/object`: a bucket name never contains '/'.
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");

/// A [`SessionStore`] in a redb file.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StateError {
    StateError::Backend(e.into())
}

fn object_key(bucket: &str, object: &str) -> String {
    format!("{bucket}/{object}")
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StateError> {
    serde_json::from_slice(bytes).map_err(backend)
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("state records always serialize")
}

impl EmbeddedStore {
    /// Opens (creating) the database file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StateError> {
        let db = Database::create(path).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(SESSIONS).map_err(backend)?;
        txn.open_table(OBJECTS).map_err(backend)?;
        txn.commit().map_err(backend)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Runs blocking database work off the async runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(backend)?
    }
}

fn advance_txn(db: &Database, ctx: &str, change: Advance) -> Result<Advanced, StateError> {
    let txn = db.begin_write().map_err(backend)?;
    let outcome = {
        let mut sessions = txn.open_table(SESSIONS).map_err(backend)?;
        let current: Option<Session> = match sessions.get(ctx).map_err(backend)? {
            Some(v) => Some(decode(v.value())?),
            None => None,
        };
        let mut session = match (change.start, current) {
            (Start::New { .. }, Some(_)) => return Err(StateError::Exists),
            (
                Start::New {
                    bucket,
                    object,
                    content_type,
                },
                None,
            ) => Session {
                ctx: ctx.to_owned(),
                bucket,
                object,
                content_type,
                offset: 0,
                last_chunk_len: None,
                md5_claim: None,
                created_at: change.now,
                updated_at: change.now,
                completed_at: None,
            },
            (Start::At(_), None) => return Err(StateError::NotFound),
            (Start::At(_), Some(s)) if s.completed_at.is_some() => return Err(StateError::Completed),
            (Start::At(expected), Some(s)) if s.offset != expected => {
                return Err(StateError::Conflict { committed: s.offset });
            }
            (Start::At(_), Some(s)) => s,
        };
        session.offset += change.chunk_len;
        session.last_chunk_len = Some(change.chunk_len);
        session.updated_at = change.now;
        if change.md5_claim.is_some() {
            session.md5_claim = change.md5_claim;
        }
        let mut replaced = None;
        if let Some(done) = change.complete {
            session.completed_at = Some(change.now);
            let record = ObjectRecord {
                bucket: session.bucket.clone(),
                object: session.object.clone(),
                blob: ctx.to_owned(),
                size: session.offset,
                content_type: session.content_type.clone(),
                created_at: change.now,
                md5: done.md5,
            };
            let mut objects = txn.open_table(OBJECTS).map_err(backend)?;
            let key = object_key(&session.bucket, &session.object);
            if let Some(old) = objects
                .insert(key.as_str(), encode(&record).as_slice())
                .map_err(backend)?
            {
                replaced = Some(decode(old.value())?);
            }
        }
        sessions
            .insert(ctx, encode(&session).as_slice())
            .map_err(backend)?;
        Advanced { session, replaced }
    };
    txn.commit().map_err(backend)?;
    Ok(outcome)
}

#[async_trait::async_trait]
impl SessionStore for EmbeddedStore {
    async fn get(&self, ctx: &str) -> Result<Option<Session>, StateError> {
        let ctx = ctx.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(SESSIONS).map_err(backend)?;
            match table.get(ctx.as_str()).map_err(backend)? {
                Some(v) => Ok(Some(decode(v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn advance(&self, ctx: &str, change: Advance) -> Result<Advanced, StateError> {
        let ctx = ctx.to_owned();
        self.blocking(move |db| advance_txn(db, &ctx, change)).await
    }

    async fn get_object(&self, bucket: &str, object: &str) -> Result<Option<ObjectRecord>, StateError> {
        let key = object_key(bucket, object);
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(OBJECTS).map_err(backend)?;
            match table.get(key.as_str()).map_err(backend)? {
                Some(v) => Ok(Some(decode(v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn set_object_md5(
        &self,
        bucket: &str,
        object: &str,
        blob: &str,
        md5: &str,
    ) -> Result<bool, StateError> {
        let (key, blob, md5) = (object_key(bucket, object), blob.to_owned(), md5.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            let updated = {
                let mut table = txn.open_table(OBJECTS).map_err(backend)?;
                let current: Option<ObjectRecord> = match table.get(key.as_str()).map_err(backend)? {
                    Some(v) => Some(decode(v.value())?),
                    None => None,
                };
                match current {
                    Some(mut rec) if rec.blob == blob => {
                        rec.md5 = Some(md5);
                        table
                            .insert(key.as_str(), encode(&rec).as_slice())
                            .map_err(backend)?;
                        true
                    }
                    _ => false,
                }
            };
            txn.commit().map_err(backend)?;
            Ok(updated)
        })
        .await
    }

    async fn idle_sessions(&self, before: i64, limit: usize) -> Result<Vec<Session>, StateError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(SESSIONS).map_err(backend)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(backend)? {
                let (_, v) = row.map_err(backend)?;
                let s: Session = decode(v.value())?;
                if s.updated_at < before {
                    out.push(s);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn delete_session(&self, ctx: &str) -> Result<(), StateError> {
        let ctx = ctx.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            txn.open_table(SESSIONS)
                .map_err(backend)?
                .remove(ctx.as_str())
                .map_err(backend)?;
            txn.commit().map_err(backend)?;
            Ok(())
        })
        .await
    }
}
