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
    many_sessions_advance_at_once(Arc::new(fresh().await)).await;
    tagged_completions_are_logged(&fresh().await).await;
    leases_admit_one_owner_at_a_time(&fresh().await).await;
    a_fenced_advance_needs_the_lease(&fresh().await).await;
    administration_lists_and_deletes(&fresh().await).await;
}

async fn tagged_completions_are_logged(s: &dyn SessionStore) {
    let tagged = |tag: Option<&str>| Advance {
        start: Start::New {
            bucket: "doc".into(),
            object: "obj".into(),
            content_type: "video/mp4".into(),
            tag: tag.map(str::to_owned),
        },
        complete: Some(Completion { md5: None }),
        ..new(3, 1)
    };
    s.advance("plain", tagged(None)).await.unwrap();
    s.advance("t1", tagged(Some("app-a"))).await.unwrap();
    s.advance(
        "t2",
        Advance {
            complete: None,
            ..tagged(Some("app-b"))
        },
    )
    .await
    .unwrap();
    let log = s.completions(10).await.unwrap();
    assert_eq!(log.len(), 1, "only completed, tagged sessions: {log:?}");
    assert_eq!(
        (log[0].1.ctx.as_str(), log[0].1.tag.as_deref()),
        ("t1", Some("app-a"))
    );
    s.delete_session("t1").await.unwrap();
    assert!(
        s.get("t1").await.unwrap().is_some(),
        "a pending completion keeps its session"
    );
    let idle = |ctx: &str, list: Vec<crate::Session>| list.iter().any(|x| x.ctx == ctx);
    assert!(
        !idle("t1", s.idle_sessions(i64::MAX, 100).await.unwrap()),
        "a session its completion keeps is not offered for collection"
    );
    s.ack_completion(log[0].0).await.unwrap();
    assert!(idle("t1", s.idle_sessions(i64::MAX, 100).await.unwrap()));
    assert!(s.completions(10).await.unwrap().is_empty());
    s.advance(
        "t2",
        Advance {
            complete: Some(Completion { md5: None }),
            ..at(3, 0, 2)
        },
    )
    .await
    .unwrap();
    assert_eq!(s.completions(10).await.unwrap()[0].1.ctx, "t2");
    s.delete_session("t1").await.unwrap();
    assert!(s.get("t1").await.unwrap().is_none());
}

async fn leases_admit_one_owner_at_a_time(s: &dyn SessionStore) {
    s.advance("c", new(1, 1)).await.unwrap();
    assert!(s.lease("c", "node-a", 1000, 2000).await.unwrap());
    assert!(!s.lease("c", "node-b", 1500, 2500).await.unwrap(), "held by a");
    assert!(s.lease("c", "node-a", 1500, 3000).await.unwrap(), "a renews");
    assert!(!s.lease("c", "node-b", 2999, 4000).await.unwrap());
    assert!(
        s.lease("c", "node-b", 3001, 4000).await.unwrap(),
        "expired: b takes over"
    );
    s.release("c", "node-a").await.unwrap();
    assert!(
        !s.lease("c", "node-a", 3500, 5000).await.unwrap(),
        "a cannot release b's lease"
    );
    s.release("c", "node-b").await.unwrap();
    assert!(s.lease("c", "node-a", 3500, 5000).await.unwrap());
    assert!(matches!(
        s.lease("missing", "node-a", 0, 1).await,
        Err(StateError::NotFound)
    ));
    let committed = s.advance("c", at(1, 1, 2)).await.unwrap();
    assert_eq!(
        committed.session.offset, 2,
        "a lease does not block the offset's own CAS"
    );
}

/// An advance that carries a [`Fence`](crate::Fence) commits only while its
/// writer holds the lease: not once it has lapsed, nor once another owner
/// took it; the refusal changes nothing.
async fn a_fenced_advance_needs_the_lease(s: &dyn SessionStore) {
    let fenced = |at_offset: u64, owner: &str, now_ms: i64| Advance {
        lease: Some(crate::Fence {
            owner: owner.into(),
            now_ms,
        }),
        ..at(at_offset, 1, 2)
    };
    s.advance("c", new(1, 1)).await.unwrap();
    assert!(
        matches!(
            s.advance("c", fenced(1, "node-a", 1000)).await,
            Err(StateError::LeaseLost)
        ),
        "no lease taken"
    );
    assert!(s.lease("c", "node-a", 1000, 2000).await.unwrap());
    assert_eq!(
        s.advance("c", fenced(1, "node-a", 1500))
            .await
            .unwrap()
            .session
            .offset,
        2
    );
    assert!(
        matches!(
            s.advance("c", fenced(2, "node-b", 1500)).await,
            Err(StateError::LeaseLost)
        ),
        "held by another owner"
    );
    assert!(
        matches!(
            s.advance("c", fenced(2, "node-a", 2001)).await,
            Err(StateError::LeaseLost)
        ),
        "lapsed"
    );
    assert!(s.lease("c", "node-b", 2001, 3000).await.unwrap());
    assert!(
        matches!(
            s.advance("c", fenced(2, "node-a", 2500)).await,
            Err(StateError::LeaseLost)
        ),
        "taken over"
    );
    assert_eq!(
        s.get("c").await.unwrap().unwrap().offset,
        2,
        "refusals change nothing"
    );
    assert_eq!(
        s.advance("c", fenced(2, "node-b", 2500))
            .await
            .unwrap()
            .session
            .offset,
        3
    );
}

async fn administration_lists_and_deletes(s: &dyn SessionStore) {
    let named = |object: &str| Advance {
        start: Start::New {
            bucket: "doc".into(),
            object: object.into(),
            content_type: "a/b".into(),
            tag: None,
        },
        ..new(1, 1)
    };
    s.advance("open1", named("x")).await.unwrap();
    s.advance("open2", Advance { now: 2, ..named("y") })
        .await
        .unwrap();
    s.advance(
        "done",
        Advance {
            complete: Some(Completion { md5: None }),
            ..named("z")
        },
    )
    .await
    .unwrap();
    let open: Vec<String> = s
        .open_sessions(10)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.ctx)
        .collect();
    assert_eq!(open, ["open1", "open2"]);
    assert_eq!(s.count_open().await.unwrap(), 2);
    let other = Advance {
        start: Start::New {
            bucket: "pics".into(),
            object: "p".into(),
            content_type: "a/b".into(),
            tag: None,
        },
        complete: Some(Completion { md5: None }),
        ..new(1, 1)
    };
    s.advance("other", other).await.unwrap();
    assert_eq!(s.list_objects(None, 10).await.unwrap().len(), 2);
    let docs = s.list_objects(Some("doc"), 10).await.unwrap();
    assert_eq!(docs.iter().map(|o| o.object.as_str()).collect::<Vec<_>>(), ["z"]);
    let gone = s.delete_object("doc", "z").await.unwrap().unwrap();
    assert_eq!(gone.blob, "done");
    assert!(s.get_object("doc", "z").await.unwrap().is_none());
    assert!(s.delete_object("doc", "z").await.unwrap().is_none());
}

/// Runs every check of the app API's store on the stores `fresh` makes.
pub async fn run_apps<S, F, Fut>(mut fresh: F)
where
    S: crate::AppStore,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    apps_and_callbacks(&fresh().await).await;
    nonces_are_single_use_within_the_window(&fresh().await).await;
    videos_are_recorded_once_with_their_notification(&fresh().await).await;
}

fn app_record(key: &str) -> crate::AppRecord {
    crate::AppRecord {
        app_key: key.into(),
        name: format!("app {key}"),
        secret_sealed: vec![1, 2, 3],
        bucket: "vodabc".into(),
        callback_url: None,
        sign_key_sealed: None,
        created_at: 5,
    }
}

async fn apps_and_callbacks(s: &dyn crate::AppStore) {
    s.create_app(&app_record("k1")).await.unwrap();
    assert!(matches!(
        s.create_app(&app_record("k1")).await,
        Err(StateError::Exists)
    ));
    s.create_app(&app_record("k2")).await.unwrap();
    assert_eq!(s.get_app("k1").await.unwrap().unwrap(), app_record("k1"));
    assert!(s.get_app("nope").await.unwrap().is_none());
    assert_eq!(s.list_apps().await.unwrap().len(), 2);
    assert!(
        s.set_app_callback("k1", "http://cb", Some(vec![9]))
            .await
            .unwrap()
    );
    assert!(!s.set_app_callback("nope", "http://cb", None).await.unwrap());
    let a = s.get_app("k1").await.unwrap().unwrap();
    assert_eq!(
        (a.callback_url.as_deref(), a.sign_key_sealed),
        (Some("http://cb"), Some(vec![9]))
    );
}

async fn nonces_are_single_use_within_the_window(s: &dyn crate::AppStore) {
    assert!(s.use_nonce("k", "n1", 100, 0).await.unwrap());
    assert!(!s.use_nonce("k", "n1", 101, 0).await.unwrap(), "a replay");
    assert!(
        s.use_nonce("other", "n1", 101, 0).await.unwrap(),
        "nonces are per app"
    );
    assert!(
        s.use_nonce("k", "n1", 500, 400).await.unwrap(),
        "forgotten after the window"
    );
}

async fn videos_are_recorded_once_with_their_notification(s: &dyn crate::AppStore) {
    let v = |ctx: &str, object: &str| crate::NewVideo {
        ctx: ctx.into(),
        app_key: "k".into(),
        bucket: "vodabc".into(),
        object: object.into(),
        size: 10,
        md5: "ab".into(),
        content_type: "video/mp4".into(),
        orig_name: "a.mp4".into(),
        user_defined: Some("{\"x\":1}".into()),
        initiated_at: 1,
        completed_at: 2,
    };
    let first = s
        .record_video(v("c1", "o1.mp4"), Some(("http://cb".into(), 50)))
        .await
        .unwrap();
    let again = s
        .record_video(v("c1", "o1.mp4"), Some(("http://cb".into(), 50)))
        .await
        .unwrap();
    assert_eq!(first, again, "idempotent on the session");
    let second = s.record_video(v("c2", "o2.mp4"), None).await.unwrap();
    assert!(second.vid > first.vid);
    assert_eq!(s.get_video(first.vid).await.unwrap().unwrap(), first);
    let found = s
        .videos_by_objects("k", &["o2.mp4".into(), "none".into(), "o1.mp4".into()])
        .await
        .unwrap();
    assert_eq!(
        found,
        vec![
            ("o2.mp4".to_owned(), second.vid),
            ("o1.mp4".to_owned(), first.vid)
        ]
    );
    assert!(
        s.videos_by_objects("other-app", &["o1.mp4".into()])
            .await
            .unwrap()
            .is_empty()
    );

    assert!(claim(s, 49, 10).await.unwrap().is_empty(), "not due yet");
    let due = claim(s, 50, 10).await.unwrap();
    assert_eq!(due.len(), 1, "one notification, not two: {due:?}");
    assert!(
        claim(s, 51, 10).await.unwrap().is_empty(),
        "a claimed notification is not due for another node"
    );
    assert_eq!(
        claim(s, 50 + CLAIM, 10).await.unwrap().len(),
        1,
        "until its claim ends (its node died delivering it)"
    );
    assert_eq!(
        (due[0].vid, due[0].url.as_str(), due[0].attempts),
        (first.vid, "http://cb", 0)
    );
    s.notification_failed(due[0].id, 80, "refused", false)
        .await
        .unwrap();
    assert!(claim(s, 79, 10).await.unwrap().is_empty());
    assert_eq!(claim(s, 80, 10).await.unwrap()[0].attempts, 1);
    s.notification_failed(due[0].id, 90, "refused", true)
        .await
        .unwrap();
    assert!(claim(s, 1000, 10).await.unwrap().is_empty(), "given up");
    let third = s
        .record_video(v("c3", "o3.mp4"), Some(("http://cb".into(), 60)))
        .await
        .unwrap();
    let due = claim(s, 60, 10).await.unwrap();
    assert_eq!(due[0].vid, third.vid);
    s.notification_delivered(due[0].id).await.unwrap();
    assert!(claim(s, 1000, 10).await.unwrap().is_empty());
}

/// How long the conformance tests claim due notifications for.
const CLAIM: i64 = 300;

/// Claims notifications due at `now` for [`CLAIM`] seconds.
async fn claim(
    s: &dyn crate::AppStore,
    now: i64,
    limit: usize,
) -> Result<Vec<crate::Notification>, StateError> {
    s.claim_due_notifications(now, now + CLAIM, limit).await
}

/// An [`Advance`] that creates a session for `doc/obj`.
pub fn new(len: u64, now: i64) -> Advance {
    Advance {
        start: Start::New {
            bucket: "doc".into(),
            object: "obj".into(),
            content_type: "video/mp4".into(),
            tag: None,
        },
        chunk_len: len,
        md5_claim: None,
        complete: None,
        now,
        lease: None,
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
        lease: None,
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

/// Many sessions advancing at once, some with a stale offset: each advance
/// stands or falls alone (a store that commits them in groups must not let
/// one refusal undo the others), and every offset ends where it should.
async fn many_sessions_advance_at_once<S: SessionStore>(s: Arc<S>) {
    let n = 64u64;
    for i in 0..n {
        s.advance(&format!("many{i}"), new(10, 1)).await.unwrap();
    }
    let tasks: Vec<_> = (0..n)
        .flat_map(|i| {
            let ctx = format!("many{i}");
            // Every session gets a good advance; every third also a stale one.
            let good = (ctx.clone(), at(10, i + 1, 2), true);
            let stale = (i % 3 == 0).then(|| (ctx, at(3, 1, 2), false));
            std::iter::once(good).chain(stale)
        })
        .map(|(ctx, change, good)| {
            let s = s.clone();
            tokio::spawn(async move { (good, s.advance(&ctx, change).await) })
        })
        .collect();
    for t in tasks {
        match t.await.unwrap() {
            (true, Ok(a)) => assert_eq!(a.session.offset, 10 + a.session.last_chunk_len.unwrap()),
            (false, Err(StateError::Conflict { committed })) => assert!(committed >= 10),
            (good, other) => panic!("good={good}: unexpected {:?}", other.map(|a| a.session.offset)),
        }
    }
    for i in 0..n {
        let got = s.get(&format!("many{i}")).await.unwrap().unwrap();
        assert_eq!((got.offset, got.last_chunk_len), (10 + i + 1, Some(i + 1)));
    }
}

/// Runs every check of the node registry on the stores `fresh` makes.
pub async fn run_nodes<S, F, Fut>(mut fresh: F)
where
    S: crate::NodeRegistry,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    let s = fresh().await;
    let node = |id: &str, priority: i32, load: u64, at: i64| crate::NodeInfo {
        id: id.into(),
        url: format!("http://{id}"),
        priority,
        load,
        heartbeat_ms: at,
    };
    s.heartbeat(&node("a", 10, 5, 1000)).await.unwrap();
    s.heartbeat(&node("b", 10, 1, 1000)).await.unwrap();
    s.heartbeat(&node("c", 1, 9, 1000)).await.unwrap();
    s.heartbeat(&node("old", 0, 0, 10)).await.unwrap();
    let ids = |v: Vec<crate::NodeInfo>| v.into_iter().map(|n| n.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.live_nodes(500).await.unwrap()),
        ["c", "b", "a"],
        "priority, then load; stale ones left out"
    );
    s.heartbeat(&node("a", 10, 0, 2000)).await.unwrap();
    assert_eq!(
        ids(s.live_nodes(1500).await.unwrap()),
        ["a"],
        "a heartbeat refreshes"
    );
    s.remove_node("a").await.unwrap();
    assert!(s.live_nodes(0).await.unwrap().iter().all(|n| n.id != "a"));
}
