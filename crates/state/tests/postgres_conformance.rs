//! The shared suites against a real PostgreSQL: the one the machine runs
//! (`scripts/test.sh` starts it if it is down), or `UPLINE_TEST_POSTGRES`.
//! Each store gets a database of its own.

use upline_state::testing::fresh_database;
use upline_state::{PgStore, SessionStore, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_conforms() {
    conformance::run_all(|| async { PgStore::connect(&fresh_database().await).await.unwrap() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_app_store_conforms() {
    conformance::run_apps(|| async { PgStore::connect(&fresh_database().await).await.unwrap() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_node_registry_conforms() {
    conformance::run_nodes(|| async { PgStore::connect(&fresh_database().await).await.unwrap() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_migrate_at_once_and_race_on_one_session() {
    let url = fresh_database().await;
    let (a, b) = tokio::join!(PgStore::connect(&url), PgStore::connect(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    a.advance("c", conformance::new(10, 1)).await.unwrap();
    for round in 0..10u64 {
        let at = 10 + round * 2;
        let (ra, rb) = tokio::join!(
            a.advance("c", conformance::at(at, 1, 2)),
            b.advance("c", conformance::at(at, 2, 2))
        );
        let winners = [ra.is_ok(), rb.is_ok()].iter().filter(|w| **w).count();
        assert_eq!(winners, 1, "round {round}: one node wins");
        let committed = a.get("c").await.unwrap().unwrap().offset;
        // Realign so the next round starts from a known offset.
        if committed != at + 2 {
            a.advance("c", conformance::at(committed, at + 2 - committed, 3))
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn database_errors_are_backend_errors() {
    let r = PgStore::connect("postgres://nobody@127.0.0.1:1/nothing").await;
    assert!(matches!(r, Err(upline_state::StateError::Backend(_))));
}
