//! The shared BlobStore suite against the local-disk store, plus what only
//! a file system can show.

use upline_storage::{BlobId, BlobStore, FsStore, conformance};

#[tokio::test]
async fn fs_store_conforms() {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::run_all(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        dirs.lock().unwrap().push(dir);
        async move { store }
    })
    .await;
}

#[tokio::test]
async fn object_names_never_reach_the_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    assert!(BlobId::new("../etc").is_none());
    assert!(BlobId::new("a/b").is_none());
    let id = BlobId::new("abcdef").unwrap();
    store
        .write_at(&id, 0, conformance::body(vec![b"x".to_vec()]))
        .await
        .unwrap();
    store.publish(&id, 1).await.unwrap();
    assert!(dir.path().join("objects/ab/abcdef").is_file());
}
