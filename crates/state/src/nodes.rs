//! The registry of upload nodes the LBS lists: each node upserts a
//! heartbeat (with its load) every second or so; a node whose heartbeat
//! stops is no longer listed.

use rusqlite::params;

use crate::StateError;
use crate::embedded::{EmbeddedStore, backend};
use crate::postgres::PgStore;

pub(crate) const SQLITE_MIGRATIONS: &[&str] = &[
    "CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    priority INTEGER NOT NULL,
    load INTEGER NOT NULL,
    heartbeat_ms INTEGER NOT NULL
);",
    "ALTER TABLE sessions ADD COLUMN lease_owner TEXT; ALTER TABLE sessions ADD COLUMN lease_until INTEGER;",
];

pub(crate) const PG_LEASE_MIGRATION: &str =
    "ALTER TABLE sessions ADD COLUMN lease_owner TEXT; ALTER TABLE sessions ADD COLUMN lease_until BIGINT;";

pub(crate) const PG_MIGRATION: &str = "CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    priority INT NOT NULL,
    load BIGINT NOT NULL,
    heartbeat_ms BIGINT NOT NULL
);";

/// One upload node as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    /// The base URL clients upload to.
    pub url: String,
    /// Smaller is preferred.
    pub priority: i32,
    /// Chunk uploads in flight at the last heartbeat.
    pub load: u64,
    /// Unix milliseconds of the last heartbeat.
    pub heartbeat_ms: i64,
}

/// The node registry contract.
#[async_trait::async_trait]
pub trait NodeRegistry: Send + Sync + 'static {
    /// Records (or refreshes) a node.
    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), StateError>;
    /// Nodes whose heartbeat is at or after `since_ms`, best first:
    /// by priority, then load, then id.
    async fn live_nodes(&self, since_ms: i64) -> Result<Vec<NodeInfo>, StateError>;
    /// Forgets a node (a graceful shutdown).
    async fn remove_node(&self, id: &str) -> Result<(), StateError>;
}

#[async_trait::async_trait]
impl NodeRegistry for EmbeddedStore {
    async fn heartbeat(&self, n: &NodeInfo) -> Result<(), StateError> {
        let n = n.clone();
        self.blocking(move |c| {
            c.execute(
                "INSERT INTO nodes (id, url, priority, load, heartbeat_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET url = excluded.url, priority = excluded.priority,
                 load = excluded.load, heartbeat_ms = excluded.heartbeat_ms",
                params![n.id, n.url, n.priority, n.load as i64, n.heartbeat_ms],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn live_nodes(&self, since_ms: i64) -> Result<Vec<NodeInfo>, StateError> {
        self.blocking(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT id, url, priority, load, heartbeat_ms FROM nodes WHERE heartbeat_ms >= ?1
                     ORDER BY priority, load, id",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([since_ms], |r| {
                    Ok(NodeInfo {
                        id: r.get(0)?,
                        url: r.get(1)?,
                        priority: r.get(2)?,
                        load: r.get::<_, i64>(3)? as u64,
                        heartbeat_ms: r.get(4)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)
        })
        .await
    }

    async fn remove_node(&self, id: &str) -> Result<(), StateError> {
        let id = id.to_owned();
        self.blocking(move |c| {
            c.execute("DELETE FROM nodes WHERE id = ?1", [id])
                .map_err(backend)?;
            Ok(())
        })
        .await
    }
}

#[async_trait::async_trait]
impl NodeRegistry for PgStore {
    async fn heartbeat(&self, n: &NodeInfo) -> Result<(), StateError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO nodes (id, url, priority, load, heartbeat_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, priority = EXCLUDED.priority,
             load = EXCLUDED.load, heartbeat_ms = EXCLUDED.heartbeat_ms",
            &[&n.id, &n.url, &n.priority, &(n.load as i64), &n.heartbeat_ms],
        )
        .await
        .map_err(crate::postgres::backend)?;
        Ok(())
    }

    async fn live_nodes(&self, since_ms: i64) -> Result<Vec<NodeInfo>, StateError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id, url, priority, load, heartbeat_ms FROM nodes WHERE heartbeat_ms >= $1
                 ORDER BY priority, load, id",
                &[&since_ms],
            )
            .await
            .map_err(crate::postgres::backend)?;
        Ok(rows
            .iter()
            .map(|r| NodeInfo {
                id: r.get(0),
                url: r.get(1),
                priority: r.get(2),
                load: r.get::<_, i64>(3) as u64,
                heartbeat_ms: r.get(4),
            })
            .collect())
    }

    async fn remove_node(&self, id: &str) -> Result<(), StateError> {
        let c = self.client().await?;
        c.execute("DELETE FROM nodes WHERE id = $1", &[&id])
            .await
            .map_err(crate::postgres::backend)?;
        Ok(())
    }
}
