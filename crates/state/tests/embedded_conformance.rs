//! The shared SessionStore suite against the embedded redb store.

use upline_state::{EmbeddedStore, SessionStore, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_conforms() {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::run_all(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("state.redb")).unwrap();
        dirs.lock().unwrap().push(dir);
        async move { store }
    })
    .await;
}

#[tokio::test]
async fn commits_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let s = EmbeddedStore::open(&path).unwrap();
        s.advance("c", conformance::new(42, 1)).await.unwrap();
    }
    let s = EmbeddedStore::open(&path).unwrap();
    assert_eq!(s.get("c").await.unwrap().unwrap().offset, 42);
}
