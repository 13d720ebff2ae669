//! The shared SessionStore suite against the embedded SQLite store.

use upline_state::{EmbeddedStore, SessionStore, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_conforms() {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::run_all(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("state.db")).unwrap();
        dirs.lock().unwrap().push(dir);
        async move { store }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_app_store_conforms() {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::run_apps(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("state.db")).unwrap();
        dirs.lock().unwrap().push(dir);
        async move { store }
    })
    .await;
}

#[tokio::test]
async fn embedded_node_registry_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run_nodes(|| async { EmbeddedStore::open(dir.path().join("state.db")).unwrap() }).await;
}

#[tokio::test]
async fn two_processes_can_share_the_database() {
    // Two handles stand for the node and `upline app create` at once.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let node = EmbeddedStore::open(&path).unwrap();
    let admin = EmbeddedStore::open(&path).unwrap();
    node.advance("c", conformance::new(42, 1)).await.unwrap();
    assert_eq!(admin.get("c").await.unwrap().unwrap().offset, 42);
    admin.advance("c", conformance::at(42, 1, 2)).await.unwrap();
    assert_eq!(node.get("c").await.unwrap().unwrap().offset, 43);
}

#[tokio::test]
async fn commits_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = EmbeddedStore::open(&path).unwrap();
        s.advance("c", conformance::new(42, 1)).await.unwrap();
    }
    let s = EmbeddedStore::open(&path).unwrap();
    assert_eq!(s.get("c").await.unwrap().unwrap().offset, 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_and_reused_under_a_steady_stream_of_commits() {
    // The writer has SQLite's automatic checkpoint off; the committer
    // checkpoints between commits. Without it this WAL would pass 10 MB
    // (several pages per commit) and every commit would grow the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = EmbeddedStore::open(&path).unwrap();
    store.advance("c", conformance::new(1, 0)).await.unwrap();
    for i in 0..1_200u64 {
        let a = store.advance("c", conformance::at(1 + i, 1, 1)).await.unwrap();
        assert_eq!(a.session.offset, 2 + i);
        // A read right after the commit sees it (readers are other connections).
        assert_eq!(store.get("c").await.unwrap().unwrap().offset, 2 + i);
    }
    let wal = std::fs::metadata(dir.path().join("state.db-wal")).unwrap().len();
    assert!(wal < 2 << 20, "WAL is {wal} bytes after 1,200 commits");
}
