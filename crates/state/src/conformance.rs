//! The conformance suite every [`SessionStore`] implementation runs, each
//! check on a fresh, empty store, against the real backend.

use std::sync::Arc;

use crate::{Advance, Completion, SessionStore, Start, StateError};

/// Runs every check on the stores `fresh` makes.
pub async fn run_all<S, F, Fut>(mut fresh: F)
where
    S: SessionStore,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    create_and_advance(&fresh().await).await;
    stale_offsets_conflict(&fresh().await).await;
    contexts_are_unique(&fresh().await).await;
    completion_publishes_and_replaces(&fresh().await).await;
    md5_claims_and_object_md5(&fresh().await).await;
    idle_sessions_and_delete(&fresh().await).await;
    racing_advances_have_one_winner(Arc::new(fresh().await)).await;
}

/// An [`Advance`] that creates a session for `doc/obj`.
pub fn new(len: u64, now: i64) -> Advance {
    Advance {
        start: Start::New {
            bucket: "doc".into(),
            object: "obj".into(),
            content_type: "video/mp4".into(),
        },
        chunk_len: len,
        md5_claim: None,
        complete: None,
        now,
    }
}

/// An [`Advance`] from committed offset `at`.
pub fn at(at: u64, len: u64, now: i64) -> Advance {
    Advance {
        start: Start::At(at),
        chunk_len: len,
        md5_claim: None,
        complete: None,
        now,
    }
}

async fn create_and_advance(s: &dyn SessionStore) {
    assert!(s.get("c1").await.unwrap().is_none());
    let a = s.advance("c1", new(10, 100)).await.unwrap();
    assert_eq!((a.session.offset, a.session.last_chunk_len), (10, Some(10)));
    let a = s.advance("c1", at(10, 5, 101)).await.unwrap();
    assert_eq!((a.session.offset, a.session.last_chunk_len), (15, Some(5)));
    let got = s.get("c1").await.unwrap().unwrap();
    assert_eq!(got, a.session);
    assert_eq!(
        (
            got.bucket.as_str(),
            got.object.as_str(),
            got.content_type.as_str()
        ),
        ("doc", "obj", "video/mp4")
    );
    assert_eq!(
        (got.created_at, got.updated_at, got.completed_at),
        (100, 101, None)
    );
    assert!(matches!(
        s.advance("nope", at(0, 1, 1)).await,
        Err(StateError::NotFound)
    ));
}

async fn stale_offsets_conflict(s: &dyn SessionStore) {
    s.advance("c", new(10, 1)).await.unwrap();
    for stale in [0, 9, 11, 20] {
        match s.advance("c", at(stale, 1, 2)).await {
            Err(StateError::Conflict { committed: 10 }) => {}
            other => panic!("stale offset {stale}: {other:?}"),
        }
    }
    assert_eq!(
        s.get("c").await.unwrap().unwrap().offset,
        10,
        "a refused swap changes nothing"
    );
}

async fn contexts_are_unique(s: &dyn SessionStore) {
    s.advance("c", new(1, 1)).await.unwrap();
    assert!(matches!(s.advance("c", new(1, 1)).await, Err(StateError::Exists)));
    assert_eq!(s.get("c").await.unwrap().unwrap().offset, 1);
}

async fn completion_publishes_and_replaces(s: &dyn SessionStore) {
    s.advance("first", new(3, 1)).await.unwrap();
    let done = Advance {
        complete: Some(Completion { md5: None }),
        ..at(3, 2, 5)
    };
    let a = s.advance("first", done).await.unwrap();
    assert_eq!(a.session.completed_at, Some(5));
    assert_eq!(a.replaced, None);
    let rec = s.get_object("doc", "obj").await.unwrap().unwrap();
    assert_eq!(
        (
            rec.blob.as_str(),
            rec.size,
            rec.content_type.as_str(),
            rec.created_at
        ),
        ("first", 5, "video/mp4", 5)
    );
    assert!(matches!(
        s.advance("first", at(5, 1, 6)).await,
        Err(StateError::Completed)
    ));

    let single = Advance {
        complete: Some(Completion {
            md5: Some("ab".into()),
        }),
        ..new(7, 9)
    };
    let a = s.advance("second", single).await.unwrap();
    assert_eq!(a.replaced.map(|r| r.blob), Some("first".into()));
    let rec = s.get_object("doc", "obj").await.unwrap().unwrap();
    assert_eq!(
        (rec.blob.as_str(), rec.size, rec.md5.as_deref()),
        ("second", 7, Some("ab"))
    );
    assert!(s.get_object("doc", "other").await.unwrap().is_none());
}

async fn md5_claims_and_object_md5(s: &dyn SessionStore) {
    let claim = |c: &str| Some(c.to_owned());
    s.advance(
        "c",
        Advance {
            md5_claim: claim("aa"),
            ..new(1, 1)
        },
    )
    .await
    .unwrap();
    s.advance("c", at(1, 1, 2)).await.unwrap();
    assert_eq!(
        s.get("c").await.unwrap().unwrap().md5_claim,
        claim("aa"),
        "a chunk without a claim keeps it"
    );
    s.advance(
        "c",
        Advance {
            md5_claim: claim("bb"),
            ..at(2, 1, 3)
        },
    )
    .await
    .unwrap();
    assert_eq!(s.get("c").await.unwrap().unwrap().md5_claim, claim("bb"));
    s.advance(
        "c",
        Advance {
            complete: Some(Completion { md5: None }),
            ..at(3, 0, 4)
        },
    )
    .await
    .unwrap();
    assert!(!s.set_object_md5("doc", "obj", "other-blob", "ff").await.unwrap());
    assert!(s.set_object_md5("doc", "obj", "c", "ff").await.unwrap());
    assert_eq!(
        s.get_object("doc", "obj").await.unwrap().unwrap().md5.as_deref(),
        Some("ff")
    );
}

async fn idle_sessions_and_delete(s: &dyn SessionStore) {
    s.advance("old", new(1, 100)).await.unwrap();
    s.advance("young", new(1, 100)).await.unwrap();
    s.advance("young", at(1, 1, 200)).await.unwrap();
    let idle: Vec<String> = s
        .idle_sessions(150, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.ctx)
        .collect();
    assert_eq!(idle, vec!["old".to_owned()]);
    assert_eq!(
        s.idle_sessions(1000, 1).await.unwrap().len(),
        1,
        "limit is honoured"
    );
    s.delete_session("old").await.unwrap();
    s.delete_session("old").await.unwrap();
    assert!(s.get("old").await.unwrap().is_none());
    assert!(s.get("young").await.unwrap().is_some());
}

async fn racing_advances_have_one_winner<S: SessionStore>(s: Arc<S>) {
    s.advance("race", new(10, 1)).await.unwrap();
    let tasks: Vec<_> = (0..16u64)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.advance("race", at(10, i + 1, 2)).await })
        })
        .collect();
    let mut winners = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(a) => winners.push((i as u64 + 1, a.session.offset)),
            Err(StateError::Conflict { committed }) => assert!(committed > 10),
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one racer wins: {winners:?}");
    let (len, offset) = winners[0];
    assert_eq!(offset, 10 + len);
    assert_eq!(s.get("race").await.unwrap().unwrap().offset, 10 + len);
}
