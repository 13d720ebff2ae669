//! State of the app backend's API: apps, seen nonces, completed videos and
//! the notification outbox. Secrets arrive here already sealed (encrypted
//! by the caller); this layer never sees them in clear.

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::StateError;
use crate::embedded::{EmbeddedStore, backend};

/// Tables of the app API, after the session tables.
pub(crate) const MIGRATIONS: &[&str] = &["CREATE TABLE apps (
        app_key TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_sealed BLOB NOT NULL,
        bucket TEXT NOT NULL,
        callback_url TEXT,
        sign_key_sealed BLOB,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE nonces (app_key TEXT NOT NULL, nonce TEXT NOT NULL, seen_at INTEGER NOT NULL,
        PRIMARY KEY (app_key, nonce));
    CREATE INDEX nonces_seen ON nonces (seen_at);
    CREATE TABLE videos (
        vid INTEGER PRIMARY KEY AUTOINCREMENT,
        ctx TEXT NOT NULL UNIQUE,
        app_key TEXT NOT NULL,
        bucket TEXT NOT NULL,
        object TEXT NOT NULL,
        size INTEGER NOT NULL,
        md5 TEXT NOT NULL,
        content_type TEXT NOT NULL,
        orig_name TEXT NOT NULL,
        user_defined TEXT,
        initiated_at INTEGER NOT NULL,
        completed_at INTEGER NOT NULL
    );
    CREATE INDEX videos_object ON videos (app_key, object);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        vid INTEGER NOT NULL,
        url TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        last_error TEXT,
        dead INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX outbox_due ON outbox (dead, next_at);"];

/// An app of the backend API.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    pub app_key: String,
    pub name: String,
    pub secret_sealed: Vec<u8>,
    pub bucket: String,
    pub callback_url: Option<String>,
    pub sign_key_sealed: Option<Vec<u8>>,
    pub created_at: i64,
}

impl std::fmt::Debug for AppRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppRecord")
            .field("app_key", &self.app_key)
            .field("name", &self.name)
            .field("bucket", &self.bucket)
            .field("callback_url", &self.callback_url)
            .finish_non_exhaustive()
    }
}

/// A completed upload of an app, as it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVideo {
    /// The upload session; recording the same one twice returns the first.
    pub ctx: String,
    pub app_key: String,
    pub bucket: String,
    pub object: String,
    pub size: u64,
    pub md5: String,
    pub content_type: String,
    pub orig_name: String,
    pub user_defined: Option<String>,
    pub initiated_at: i64,
    pub completed_at: i64,
}

/// A recorded video with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Video {
    pub vid: i64,
    pub info: NewVideo,
}

/// A notification waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub id: i64,
    pub vid: i64,
    pub url: String,
    pub attempts: u32,
    pub created_at: i64,
}

/// The app API's state contract.
#[async_trait::async_trait]
pub trait AppStore: Send + Sync + 'static {
    /// Adds an app; [`StateError::Exists`] if the key is taken.
    async fn create_app(&self, app: &AppRecord) -> Result<(), StateError>;
    async fn get_app(&self, app_key: &str) -> Result<Option<AppRecord>, StateError>;
    async fn list_apps(&self) -> Result<Vec<AppRecord>, StateError>;
    /// Sets the app's notification URL and sealed sign key; false if no such app.
    async fn set_app_callback(
        &self,
        app_key: &str,
        url: &str,
        sign_key_sealed: Option<Vec<u8>>,
    ) -> Result<bool, StateError>;

    /// Records `nonce` at `now`; false if it was already recorded at or
    /// after `since` (a replay). Forgets nonces older than `since`.
    async fn use_nonce(&self, app_key: &str, nonce: &str, now: i64, since: i64) -> Result<bool, StateError>;

    /// Records a completed upload under a new vid and, with `notify`,
    /// queues its notification — in one transaction. Idempotent on
    /// `video.ctx`: a second call returns the first video and queues nothing.
    async fn record_video(&self, video: NewVideo, notify: Option<(String, i64)>)
    -> Result<Video, StateError>;
    async fn get_video(&self, vid: i64) -> Result<Option<Video>, StateError>;
    /// `(object, vid)` of the app's videos with these object names.
    async fn videos_by_objects(
        &self,
        app_key: &str,
        objects: &[String],
    ) -> Result<Vec<(String, i64)>, StateError>;

    /// Claims the notifications due at `now`, oldest first: they are not
    /// due again, for this node or any other, until `claim_until` (when a
    /// node that died delivering them has left them to the others). Every
    /// node of a cluster runs the delivery; a plain read of the due rows
    /// sent each notification once per node (found in review).
    async fn claim_due_notifications(
        &self,
        now: i64,
        claim_until: i64,
        limit: usize,
    ) -> Result<Vec<Notification>, StateError>;
    /// A notification was delivered: it leaves the outbox.
    async fn notification_delivered(&self, id: i64) -> Result<(), StateError>;
    /// A delivery failed: try again at `next_at`, or, with `give_up`, keep it
    /// as dead (for an operator) and stop trying.
    async fn notification_failed(
        &self,
        id: i64,
        next_at: i64,
        error: &str,
        give_up: bool,
    ) -> Result<(), StateError>;
}

fn app(row: &rusqlite::Row<'_>) -> rusqlite::Result<AppRecord> {
    Ok(AppRecord {
        app_key: row.get(0)?,
        name: row.get(1)?,
        secret_sealed: row.get(2)?,
        bucket: row.get(3)?,
        callback_url: row.get(4)?,
        sign_key_sealed: row.get(5)?,
        created_at: row.get(6)?,
    })
}

const APP_COLUMNS: &str = "app_key, name, secret_sealed, bucket, callback_url, sign_key_sealed, created_at";
const VIDEO_COLUMNS: &str = "vid, ctx, app_key, bucket, object, size, md5, content_type, orig_name, user_defined, initiated_at, completed_at";

fn video(row: &rusqlite::Row<'_>) -> rusqlite::Result<Video> {
    Ok(Video {
        vid: row.get(0)?,
        info: NewVideo {
            ctx: row.get(1)?,
            app_key: row.get(2)?,
            bucket: row.get(3)?,
            object: row.get(4)?,
            size: row.get::<_, i64>(5)? as u64,
            md5: row.get(6)?,
            content_type: row.get(7)?,
            orig_name: row.get(8)?,
            user_defined: row.get(9)?,
            initiated_at: row.get(10)?,
            completed_at: row.get(11)?,
        },
    })
}

#[async_trait::async_trait]
impl AppStore for EmbeddedStore {
    async fn create_app(&self, a: &AppRecord) -> Result<(), StateError> {
        let a = a.clone();
        self.blocking(move |c| {
            let r = c.execute(
                &format!("INSERT INTO apps ({APP_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
                params![
                    a.app_key,
                    a.name,
                    a.secret_sealed,
                    a.bucket,
                    a.callback_url,
                    a.sign_key_sealed,
                    a.created_at
                ],
            );
            match r {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(StateError::Exists)
                }
                Err(e) => Err(backend(e)),
            }
        })
        .await
    }

    async fn get_app(&self, app_key: &str) -> Result<Option<AppRecord>, StateError> {
        let k = app_key.to_owned();
        self.blocking(move |c| {
            c.query_row(
                &format!("SELECT {APP_COLUMNS} FROM apps WHERE app_key = ?1"),
                [k],
                app,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn list_apps(&self) -> Result<Vec<AppRecord>, StateError> {
        self.blocking(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {APP_COLUMNS} FROM apps ORDER BY created_at, app_key"
                ))
                .map_err(backend)?;
            let rows = stmt.query_map([], app).map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)
        })
        .await
    }

    async fn set_app_callback(
        &self,
        app_key: &str,
        url: &str,
        sign_key_sealed: Option<Vec<u8>>,
    ) -> Result<bool, StateError> {
        let (k, u) = (app_key.to_owned(), url.to_owned());
        self.blocking(move |c| {
            let n = c
                .execute(
                    "UPDATE apps SET callback_url = ?2, sign_key_sealed = ?3 WHERE app_key = ?1",
                    params![k, u, sign_key_sealed],
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn use_nonce(&self, app_key: &str, nonce: &str, now: i64, since: i64) -> Result<bool, StateError> {
        let (k, n) = (app_key.to_owned(), nonce.to_owned());
        self.blocking(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            tx.execute("DELETE FROM nonces WHERE seen_at < ?1", [since])
                .map_err(backend)?;
            let fresh = tx
                .execute(
                    "INSERT OR IGNORE INTO nonces (app_key, nonce, seen_at) VALUES (?1, ?2, ?3)",
                    params![k, n, now],
                )
                .map_err(backend)?
                == 1;
            tx.commit().map_err(backend)?;
            Ok(fresh)
        })
        .await
    }

    async fn record_video(&self, v: NewVideo, notify: Option<(String, i64)>) -> Result<Video, StateError> {
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let existing = tx
                .query_row(&format!("SELECT {VIDEO_COLUMNS} FROM videos WHERE ctx = ?1"), [&v.ctx], video)
                .optional()
                .map_err(backend)?;
            if let Some(found) = existing {
                return Ok(found);
            }
            tx.execute(
                "INSERT INTO videos (ctx, app_key, bucket, object, size, md5, content_type, orig_name, user_defined,
                    initiated_at, completed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    v.ctx,
                    v.app_key,
                    v.bucket,
                    v.object,
                    v.size as i64,
                    v.md5,
                    v.content_type,
                    v.orig_name,
                    v.user_defined,
                    v.initiated_at,
                    v.completed_at
                ],
            )
            .map_err(backend)?;
            let vid = tx.last_insert_rowid();
            if let Some((url, now)) = notify {
                tx.execute("INSERT INTO outbox (vid, url, next_at, created_at) VALUES (?1, ?2, ?3, ?3)", params![vid, url, now])
                    .map_err(backend)?;
            }
            tx.commit().map_err(backend)?;
            Ok(Video { vid, info: v })
        })
        .await
    }

    async fn get_video(&self, vid: i64) -> Result<Option<Video>, StateError> {
        self.blocking(move |c| {
            c.query_row(
                &format!("SELECT {VIDEO_COLUMNS} FROM videos WHERE vid = ?1"),
                [vid],
                video,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn videos_by_objects(
        &self,
        app_key: &str,
        objects: &[String],
    ) -> Result<Vec<(String, i64)>, StateError> {
        let (k, objects) = (app_key.to_owned(), objects.to_vec());
        self.blocking(move |c| {
            let mut stmt = c
                .prepare("SELECT object, vid FROM videos WHERE app_key = ?1 AND object = ?2 ORDER BY vid DESC LIMIT 1")
                .map_err(backend)?;
            let mut out = Vec::new();
            for o in objects {
                if let Some(vid) = stmt.query_row(params![k, o], |r| r.get::<_, i64>(1)).optional().map_err(backend)? {
                    out.push((o, vid));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn claim_due_notifications(
        &self,
        now: i64,
        claim_until: i64,
        limit: usize,
    ) -> Result<Vec<Notification>, StateError> {
        self.blocking(move |c| {
            let mut stmt = c
                .prepare(
                    "UPDATE outbox SET next_at = ?3 WHERE id IN (
                         SELECT id FROM outbox WHERE dead = 0 AND next_at <= ?1 ORDER BY next_at, id LIMIT ?2)
                     RETURNING id, vid, url, attempts, created_at",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![now, limit as i64, claim_until], |r| {
                    Ok(Notification {
                        id: r.get(0)?,
                        vid: r.get(1)?,
                        url: r.get(2)?,
                        attempts: r.get::<_, i64>(3)? as u32,
                        created_at: r.get(4)?,
                    })
                })
                .map_err(backend)?;
            let mut due: Vec<Notification> = rows.collect::<Result<_, _>>().map_err(backend)?;
            due.sort_by_key(|n| n.id);
            Ok(due)
        })
        .await
    }

    async fn notification_delivered(&self, id: i64) -> Result<(), StateError> {
        self.blocking(move |c| {
            c.execute("DELETE FROM outbox WHERE id = ?1", [id])
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn notification_failed(
        &self,
        id: i64,
        next_at: i64,
        error: &str,
        give_up: bool,
    ) -> Result<(), StateError> {
        let error = error.to_owned();
        self.blocking(move |c| {
            c.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_at = ?2, last_error = ?3, dead = ?4 WHERE id = ?1",
                params![id, next_at, error, give_up as i64],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }
}
