//! The PostgreSQL [`SessionStore`] and [`AppStore`], shared by many nodes.
//!
//! Same contracts as the embedded store, same shape of SQL. The offset
//! compare-and-swap locks the session's row (`SELECT ... FOR UPDATE`) in a
//! transaction, so two nodes racing on one session are serialized exactly
//! like two requests on one node. Schema migrations run at start under an
//! advisory lock, so nodes starting together do not race. Connections come
//! from a deadpool pool. Database errors become [`StateError::Backend`] —
//! rendered as a bare 500 by the server, never shown to a client.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{NoTls, Row};

use crate::apps::{AppRecord, AppStore, NewVideo, Notification, Video};
use crate::{Advance, Advanced, ObjectRecord, Session, SessionStore, Start, StateError, holds};

const MIGRATIONS: &[&str] = &[
    r#"CREATE TABLE sessions (
        ctx TEXT PRIMARY KEY,
        bucket TEXT NOT NULL,
        object TEXT NOT NULL,
        content_type TEXT NOT NULL,
        "offset" BIGINT NOT NULL,
        last_chunk_len BIGINT,
        md5_claim TEXT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        completed_at BIGINT,
        tag TEXT
    );
    CREATE INDEX sessions_updated ON sessions (updated_at);
    CREATE TABLE objects (
        bucket TEXT NOT NULL,
        object TEXT NOT NULL,
        blob TEXT NOT NULL,
        size BIGINT NOT NULL,
        content_type TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        md5 TEXT,
        PRIMARY KEY (bucket, object)
    );
    CREATE TABLE completions (seq BIGSERIAL PRIMARY KEY, ctx TEXT NOT NULL);"#,
    r#"CREATE TABLE apps (
        app_key TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_sealed BYTEA NOT NULL,
        bucket TEXT NOT NULL,
        callback_url TEXT,
        sign_key_sealed BYTEA,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE nonces (app_key TEXT NOT NULL, nonce TEXT NOT NULL, seen_at BIGINT NOT NULL,
        PRIMARY KEY (app_key, nonce));
    CREATE INDEX nonces_seen ON nonces (seen_at);
    CREATE TABLE videos (
        vid BIGSERIAL PRIMARY KEY,
        ctx TEXT NOT NULL UNIQUE,
        app_key TEXT NOT NULL,
        bucket TEXT NOT NULL,
        object TEXT NOT NULL,
        size BIGINT NOT NULL,
        md5 TEXT NOT NULL,
        content_type TEXT NOT NULL,
        orig_name TEXT NOT NULL,
        user_defined TEXT,
        initiated_at BIGINT NOT NULL,
        completed_at BIGINT NOT NULL
    );
    CREATE INDEX videos_object ON videos (app_key, object);
    CREATE TABLE outbox (
        id BIGSERIAL PRIMARY KEY,
        vid BIGINT NOT NULL,
        url TEXT NOT NULL,
        attempts INT NOT NULL DEFAULT 0,
        next_at BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        last_error TEXT,
        dead BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE INDEX outbox_due ON outbox (dead, next_at);"#,
];

/// A [`SessionStore`] and [`AppStore`] in PostgreSQL.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

pub(crate) fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StateError {
    StateError::Backend(e.into())
}

const SESSION_COLUMNS: &str = r#"ctx, bucket, object, content_type, "offset", last_chunk_len, md5_claim, created_at, updated_at, completed_at, tag"#;
const OBJECT_COLUMNS: &str = "bucket, object, blob, size, content_type, created_at, md5";
const APP_COLUMNS: &str = "app_key, name, secret_sealed, bucket, callback_url, sign_key_sealed, created_at";
const VIDEO_COLUMNS: &str = "vid, ctx, app_key, bucket, object, size, md5, content_type, orig_name, user_defined, initiated_at, completed_at";

fn session_at(r: &Row, b: usize) -> Session {
    Session {
        ctx: r.get(b),
        bucket: r.get(b + 1),
        object: r.get(b + 2),
        content_type: r.get(b + 3),
        offset: r.get::<_, i64>(b + 4) as u64,
        last_chunk_len: r.get::<_, Option<i64>>(b + 5).map(|n| n as u64),
        md5_claim: r.get(b + 6),
        created_at: r.get(b + 7),
        updated_at: r.get(b + 8),
        completed_at: r.get(b + 9),
        tag: r.get(b + 10),
    }
}

fn object(r: &Row) -> ObjectRecord {
    ObjectRecord {
        bucket: r.get(0),
        object: r.get(1),
        blob: r.get(2),
        size: r.get::<_, i64>(3) as u64,
        content_type: r.get(4),
        created_at: r.get(5),
        md5: r.get(6),
    }
}

fn app(r: &Row) -> AppRecord {
    AppRecord {
        app_key: r.get(0),
        name: r.get(1),
        secret_sealed: r.get(2),
        bucket: r.get(3),
        callback_url: r.get(4),
        sign_key_sealed: r.get(5),
        created_at: r.get(6),
    }
}

fn video(r: &Row) -> Video {
    Video {
        vid: r.get(0),
        info: NewVideo {
            ctx: r.get(1),
            app_key: r.get(2),
            bucket: r.get(3),
            object: r.get(4),
            size: r.get::<_, i64>(5) as u64,
            md5: r.get(6),
            content_type: r.get(7),
            orig_name: r.get(8),
            user_defined: r.get(9),
            initiated_at: r.get(10),
            completed_at: r.get(11),
        },
    }
}

impl PgStore {
    /// Connects (`postgres://user@host/db`), and migrates the schema.
    pub async fn connect(url: &str) -> Result<Self, StateError> {
        let pg: tokio_postgres::Config = url.parse().map_err(backend)?;
        let mgr = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr).max_size(8).build().map_err(backend)?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StateError> {
        self.pool.get().await.map_err(backend)
    }

    async fn migrate(&self) -> Result<(), StateError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        tx.execute("SELECT pg_advisory_xact_lock(7263541)", &[])
            .await
            .map_err(backend)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS upline_schema (version INT NOT NULL)")
            .await
            .map_err(backend)?;
        let done: i64 = tx
            .query_one("SELECT COALESCE(MAX(version), 0)::BIGINT FROM upline_schema", &[])
            .await
            .map_err(backend)?
            .get(0);
        let all = MIGRATIONS
            .iter()
            .copied()
            .chain([crate::nodes::PG_MIGRATION, crate::nodes::PG_LEASE_MIGRATION]);
        for (i, sql) in all.enumerate().skip(done as usize) {
            tx.batch_execute(sql).await.map_err(backend)?;
            tx.execute(
                "INSERT INTO upline_schema (version) VALUES ($1)",
                &[&((i + 1) as i32)],
            )
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }
}

#[async_trait::async_trait]
impl SessionStore for PgStore {
    async fn get(&self, ctx: &str) -> Result<Option<Session>, StateError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE ctx = $1"),
                &[&ctx],
            )
            .await
            .map_err(backend)?;
        Ok(row.map(|r| session_at(&r, 0)))
    }

    async fn advance(&self, ctx: &str, change: Advance) -> Result<Advanced, StateError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        let current = tx
            .query_opt(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE ctx = $1 FOR UPDATE"),
                &[&ctx],
            )
            .await
            .map_err(backend)?
            .map(|r| session_at(&r, 0));
        let mut s = match (change.start, current) {
            (Start::New { .. }, Some(_)) => return Err(StateError::Exists),
            (
                Start::New {
                    bucket,
                    object,
                    content_type,
                    tag,
                },
                None,
            ) => {
                let inserted = tx
                    .execute(
                        &format!(
                            "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, 0, NULL, NULL, $5, $5, NULL, $6)
                             ON CONFLICT (ctx) DO NOTHING"
                        ),
                        &[&ctx, &bucket, &object, &content_type, &change.now, &tag],
                    )
                    .await
                    .map_err(backend)?;
                if inserted == 0 {
                    return Err(StateError::Exists);
                }
                Session {
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
                    tag,
                }
            }
            (Start::At(_), None) => return Err(StateError::NotFound),
            (Start::At(_), Some(s)) if s.completed_at.is_some() => return Err(StateError::Completed),
            (Start::At(expected), Some(s)) if s.offset != expected => {
                return Err(StateError::Conflict { committed: s.offset });
            }
            (Start::At(_), Some(s)) => s,
        };
        if let Some(fence) = &change.lease {
            // The row is locked (FOR UPDATE): no lease can change under us.
            let row = tx
                .query_one(
                    "SELECT lease_owner, lease_until FROM sessions WHERE ctx = $1",
                    &[&ctx],
                )
                .await
                .map_err(backend)?;
            let (owner, until): (Option<String>, Option<i64>) = (row.get(0), row.get(1));
            if !holds(fence, owner.as_deref(), until) {
                return Err(StateError::LeaseLost);
            }
        }
        s.offset += change.chunk_len;
        s.last_chunk_len = Some(change.chunk_len);
        s.updated_at = change.now;
        if change.md5_claim.is_some() {
            s.md5_claim = change.md5_claim;
        }
        let mut replaced = None;
        if let Some(done) = change.complete {
            s.completed_at = Some(change.now);
            replaced = tx
                .query_opt(
                    &format!(
                        "SELECT {OBJECT_COLUMNS} FROM objects WHERE bucket = $1 AND object = $2 FOR UPDATE"
                    ),
                    &[&s.bucket, &s.object],
                )
                .await
                .map_err(backend)?
                .map(|r| object(&r));
            tx.execute(
                &format!(
                    "INSERT INTO objects ({OBJECT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (bucket, object) DO UPDATE SET blob = EXCLUDED.blob, size = EXCLUDED.size,
                     content_type = EXCLUDED.content_type, created_at = EXCLUDED.created_at, md5 = EXCLUDED.md5"
                ),
                &[&s.bucket, &s.object, &ctx, &(s.offset as i64), &s.content_type, &change.now, &done.md5],
            )
            .await
            .map_err(backend)?;
            if s.tag.is_some() {
                tx.execute("INSERT INTO completions (ctx) VALUES ($1)", &[&ctx])
                    .await
                    .map_err(backend)?;
            }
        }
        tx.execute(
            r#"UPDATE sessions SET "offset" = $1, last_chunk_len = $2, md5_claim = $3, updated_at = $4, completed_at = $5
               WHERE ctx = $6"#,
            &[&(s.offset as i64), &s.last_chunk_len.map(|n| n as i64), &s.md5_claim, &s.updated_at, &s.completed_at, &ctx],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(Advanced { session: s, replaced })
    }

    async fn get_object(&self, bucket: &str, object_name: &str) -> Result<Option<ObjectRecord>, StateError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!("SELECT {OBJECT_COLUMNS} FROM objects WHERE bucket = $1 AND object = $2"),
                &[&bucket, &object_name],
            )
            .await
            .map_err(backend)?;
        Ok(row.map(|r| object(&r)))
    }

    async fn set_object_md5(
        &self,
        bucket: &str,
        object: &str,
        blob: &str,
        md5: &str,
    ) -> Result<bool, StateError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE objects SET md5 = $4 WHERE bucket = $1 AND object = $2 AND blob = $3",
                &[&bucket, &object, &blob, &md5],
            )
            .await
            .map_err(backend)?;
        Ok(n == 1)
    }

    async fn idle_sessions(&self, before: i64, limit: usize) -> Result<Vec<Session>, StateError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE updated_at < $1 AND ctx NOT IN (SELECT ctx FROM completions) ORDER BY updated_at LIMIT $2"),
                &[&before, &(limit as i64)],
            )
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(|r| session_at(r, 0)).collect())
    }

    async fn delete_session(&self, ctx: &str) -> Result<(), StateError> {
        let c = self.client().await?;
        c.execute(
            "DELETE FROM sessions WHERE ctx = $1 AND ctx NOT IN (SELECT ctx FROM completions)",
            &[&ctx],
        )
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn count_open(&self) -> Result<u64, StateError> {
        let c = self.client().await?;
        let row = c
            .query_one("SELECT COUNT(*) FROM sessions WHERE completed_at IS NULL", &[])
            .await
            .map_err(backend)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn open_sessions(&self, limit: usize) -> Result<Vec<Session>, StateError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE completed_at IS NULL ORDER BY created_at, ctx LIMIT $1"),
                &[&(limit as i64)],
            )
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(|r| session_at(r, 0)).collect())
    }

    async fn list_objects(
        &self,
        bucket: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectRecord>, StateError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {OBJECT_COLUMNS} FROM objects WHERE $1::TEXT IS NULL OR bucket = $1 ORDER BY bucket, object LIMIT $2"
                ),
                &[&bucket, &(limit as i64)],
            )
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(object).collect())
    }

    async fn delete_object(
        &self,
        bucket: &str,
        object_name: &str,
    ) -> Result<Option<ObjectRecord>, StateError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!("DELETE FROM objects WHERE bucket = $1 AND object = $2 RETURNING {OBJECT_COLUMNS}"),
                &[&bucket, &object_name],
            )
            .await
            .map_err(backend)?;
        Ok(row.map(|r| object(&r)))
    }

    async fn completions(&self, limit: usize) -> Result<Vec<(i64, Session)>, StateError> {
        let c = self.client().await?;
        let cols = SESSION_COLUMNS
            .split(", ")
            .map(|col| format!("s.{col}"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = c
            .query(
                &format!("SELECT c.seq, {cols} FROM completions c JOIN sessions s ON s.ctx = c.ctx ORDER BY c.seq LIMIT $1"),
                &[&(limit as i64)],
            )
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(|r| (r.get(0), session_at(r, 1))).collect())
    }

    async fn ack_completion(&self, seq: i64) -> Result<(), StateError> {
        let c = self.client().await?;
        c.execute("DELETE FROM completions WHERE seq = $1", &[&seq])
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn lease(&self, ctx: &str, owner: &str, now_ms: i64, until_ms: i64) -> Result<bool, StateError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE sessions SET lease_owner = $2, lease_until = $4
                 WHERE ctx = $1 AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < $3)",
                &[&ctx, &owner, &now_ms, &until_ms],
            )
            .await
            .map_err(backend)?;
        if n == 1 {
            return Ok(true);
        }
        let exists = c
            .query_opt("SELECT 1 FROM sessions WHERE ctx = $1", &[&ctx])
            .await
            .map_err(backend)?;
        if exists.is_some() {
            Ok(false)
        } else {
            Err(StateError::NotFound)
        }
    }

    async fn release(&self, ctx: &str, owner: &str) -> Result<(), StateError> {
        let c = self.client().await?;
        c.execute(
            "UPDATE sessions SET lease_owner = NULL, lease_until = NULL WHERE ctx = $1 AND lease_owner = $2",
            &[&ctx, &owner],
        )
        .await
        .map_err(backend)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl AppStore for PgStore {
    async fn create_app(&self, a: &AppRecord) -> Result<(), StateError> {
        let c = self.client().await?;
        let n = c
            .execute(
                &format!("INSERT INTO apps ({APP_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (app_key) DO NOTHING"),
                &[&a.app_key, &a.name, &a.secret_sealed, &a.bucket, &a.callback_url, &a.sign_key_sealed, &a.created_at],
            )
            .await
            .map_err(backend)?;
        if n == 0 { Err(StateError::Exists) } else { Ok(()) }
    }

    async fn get_app(&self, app_key: &str) -> Result<Option<AppRecord>, StateError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!("SELECT {APP_COLUMNS} FROM apps WHERE app_key = $1"),
                &[&app_key],
            )
            .await
            .map_err(backend)?;
        Ok(row.map(|r| app(&r)))
    }

    async fn list_apps(&self) -> Result<Vec<AppRecord>, StateError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!("SELECT {APP_COLUMNS} FROM apps ORDER BY created_at, app_key"),
                &[],
            )
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(app).collect())
    }

    async fn set_app_callback(
        &self,
        app_key: &str,
        url: &str,
        sign_key_sealed: Option<Vec<u8>>,
    ) -> Result<bool, StateError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE apps SET callback_url = $2, sign_key_sealed = $3 WHERE app_key = $1",
                &[&app_key, &url, &sign_key_sealed],
            )
            .await
            .map_err(backend)?;
        Ok(n == 1)
    }

    async fn use_nonce(&self, app_key: &str, nonce: &str, now: i64, since: i64) -> Result<bool, StateError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        tx.execute("DELETE FROM nonces WHERE seen_at < $1", &[&since])
            .await
            .map_err(backend)?;
        let n = tx
            .execute(
                "INSERT INTO nonces (app_key, nonce, seen_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&app_key, &nonce, &now],
            )
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(n == 1)
    }

    async fn record_video(&self, v: NewVideo, notify: Option<(String, i64)>) -> Result<Video, StateError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        let inserted = tx
            .query_opt(
                "INSERT INTO videos (ctx, app_key, bucket, object, size, md5, content_type, orig_name, user_defined,
                    initiated_at, completed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (ctx) DO NOTHING RETURNING vid",
                &[
                    &v.ctx,
                    &v.app_key,
                    &v.bucket,
                    &v.object,
                    &(v.size as i64),
                    &v.md5,
                    &v.content_type,
                    &v.orig_name,
                    &v.user_defined,
                    &v.initiated_at,
                    &v.completed_at,
                ],
            )
            .await
            .map_err(backend)?;
        let Some(row) = inserted else {
            let r = tx
                .query_one(
                    &format!("SELECT {VIDEO_COLUMNS} FROM videos WHERE ctx = $1"),
                    &[&v.ctx],
                )
                .await
                .map_err(backend)?;
            return Ok(video(&r));
        };
        let vid: i64 = row.get(0);
        if let Some((url, now)) = notify {
            tx.execute(
                "INSERT INTO outbox (vid, url, next_at, created_at) VALUES ($1, $2, $3, $3)",
                &[&vid, &url, &now],
            )
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(Video { vid, info: v })
    }

    async fn get_video(&self, vid: i64) -> Result<Option<Video>, StateError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!("SELECT {VIDEO_COLUMNS} FROM videos WHERE vid = $1"),
                &[&vid],
            )
            .await
            .map_err(backend)?;
        Ok(row.map(|r| video(&r)))
    }

    async fn videos_by_objects(
        &self,
        app_key: &str,
        objects: &[String],
    ) -> Result<Vec<(String, i64)>, StateError> {
        let c = self.client().await?;
        let mut out = Vec::new();
        for o in objects {
            let row = c
                .query_opt(
                    "SELECT vid FROM videos WHERE app_key = $1 AND object = $2 ORDER BY vid DESC LIMIT 1",
                    &[&app_key, o],
                )
                .await
                .map_err(backend)?;
            if let Some(r) = row {
                out.push((o.clone(), r.get(0)));
            }
        }
        Ok(out)
    }

    async fn claim_due_notifications(
        &self,
        now: i64,
        claim_until: i64,
        limit: usize,
    ) -> Result<Vec<Notification>, StateError> {
        let c = self.client().await?;
        // SKIP LOCKED: nodes claiming at once take different rows.
        let mut rows = c
            .query(
                "UPDATE outbox SET next_at = $3 WHERE id IN (
                     SELECT id FROM outbox WHERE NOT dead AND next_at <= $1
                     ORDER BY next_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING id, vid, url, attempts, created_at",
                &[&now, &(limit as i64), &claim_until],
            )
            .await
            .map_err(backend)?;
        rows.sort_by_key(|r| r.get::<_, i64>(0));
        Ok(rows
            .iter()
            .map(|r| Notification {
                id: r.get(0),
                vid: r.get(1),
                url: r.get(2),
                attempts: r.get::<_, i32>(3) as u32,
                created_at: r.get(4),
            })
            .collect())
    }

    async fn notification_delivered(&self, id: i64) -> Result<(), StateError> {
        let c = self.client().await?;
        c.execute("DELETE FROM outbox WHERE id = $1", &[&id])
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn notification_failed(
        &self,
        id: i64,
        next_at: i64,
        error: &str,
        give_up: bool,
    ) -> Result<(), StateError> {
        let c = self.client().await?;
        c.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_at = $2, last_error = $3, dead = $4 WHERE id = $1",
            &[&id, &next_at, &error, &give_up],
        )
        .await
        .map_err(backend)?;
        Ok(())
    }
}
