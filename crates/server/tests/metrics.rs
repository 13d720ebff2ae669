//! `GET /metrics` after real traffic: the figures match what was sent.

mod common;

use common::*;

/// The value of the sample line that starts with `series` (name and
/// labels exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("a number"))
}

#[tokio::test]
async fn metrics_count_what_the_node_did() {
    let n = start().await;
    let t = token("vid", "m.mp4");
    let (s, b) = n
        .send(Chunk::new("/vid/m.mp4", &t, 0, false, None, data(1000, 1)))
        .await;
    assert_eq!(s, 200, "{b}");
    let ctx = b["context"].as_str().unwrap().to_owned();
    let (s, _) = n
        .send(Chunk::new(
            "/vid/m.mp4",
            &t,
            1000,
            false,
            Some(&ctx),
            data(3000, 2),
        ))
        .await;
    assert_eq!(s, 200);
    // A wrong offset (400) and a bad token (403) are counted by status.
    let (s, _) = n
        .send(Chunk::new("/vid/m.mp4", &t, 5, false, Some(&ctx), data(10, 3)))
        .await;
    assert_eq!(s, 400);
    let (s, _) = n
        .send(Chunk::new(
            "/vid/m.mp4",
            "bad",
            4000,
            false,
            Some(&ctx),
            Vec::new(),
        ))
        .await;
    assert_eq!(s, 403);

    let resp = n.http.get(format!("{}/metrics", n.base)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = resp.text().await.unwrap();
    // 1000 + 3000 stored; the refused requests were refused before their
    // bodies were read.
    assert_eq!(
        sample(&text, "upline_bytes_received_total"),
        Some(4000.0),
        "{text}"
    );
    assert_eq!(sample(&text, "upline_chunks_stored_total"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "upline_sessions_open"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "upline_chunk_uploads_in_flight"),
        Some(0.0),
        "{text}"
    );
    let count = |status: u16| {
        sample(
            &text,
            &format!("upline_http_request_duration_seconds_count{{endpoint=\"upload\",status=\"{status}\"}}"),
        )
    };
    assert_eq!(
        (count(200), count(400), count(403)),
        (Some(2.0), Some(1.0), Some(1.0)),
        "{text}"
    );
    assert_eq!(
        sample(&text, "upline_fsync_duration_seconds_count"),
        Some(2.0),
        "{text}"
    );

    // Completing the upload closes the session.
    let (s, _) = n
        .send(Chunk::new("/vid/m.mp4", &t, 4000, true, Some(&ctx), data(1, 4)))
        .await;
    assert_eq!(s, 200);
    let text = n.metrics().await;
    assert_eq!(sample(&text, "upline_sessions_open"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "upline_chunks_stored_total"), Some(3.0), "{text}");
}
