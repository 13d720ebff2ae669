//! The chunk body on its way to storage: a byte limit, preemption, and an
//! MD5 tap that is only installed when a client sent `Content-MD5`.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use fast_md5::Md5;
use futures_util::StreamExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use upline_storage::ByteStream;

/// Why the guarded body stopped; carried inside an `io::Error` through the
/// store and recovered with [`BodyStop::of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyStop {
    #[error("body passes the {0}-byte limit")]
    TooLarge(u64),
    #[error("superseded")]
    Superseded,
}

impl BodyStop {
    /// The stop inside an error produced by [`guard`], if it is one.
    pub fn of(e: &io::Error) -> Option<BodyStop> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<BodyStop>())
            .copied()
    }
}

/// What one upload's tap may hold of frames received but not yet hashed
/// (the body waits beyond it). Per upload, with the hash as fast as
/// openssl's: 128 / 256 / 512 KiB / 1 MiB ran 457 / 471 / 485 / 508 MiB/s
/// (BENCHMARKS.md).
const RUN_AHEAD: usize = 1024 * 1024;
/// What the taps of all uploads of a node may hold together, so that many
/// uploads with `Content-MD5` at once stay within a fixed memory bound
/// (each waits for room; hashing always frees it).
pub const TAPS_BUDGET: usize = 16 * 1024 * 1024;

/// A running MD5 of the bytes that went through a guarded body, computed
/// off the async worker: frames are queued (by reference, no copy) and
/// hashed on the blocking pool by one task at a time, which takes the next
/// frame as soon as it is done with one and ends when none is queued.
///
/// Why so: hashing inline stalled the connection's receive for the whole
/// hash (MD5 runs at about a fifth of the loopback's speed). Hashing each
/// 256 KiB batch in its own blocking task, started once the previous one
/// was awaited, left the hash idle for a thread hand-off per batch: a
/// 4 MiB chunk's body took 7.3 ms to arrive for 5.8 ms of hashing. A task
/// that starts only when frames wait and stops when none do keeps the hash
/// busy through a fast body, and never holds a blocking thread while a
/// slow client trickles its bytes in.
#[derive(Clone)]
pub struct Md5Tap(Arc<Tap>);

/// The room all taps of a node share ([`TAPS_BUDGET`] bytes).
#[derive(Clone)]
pub struct TapsBudget {
    room: Arc<Semaphore>,
    bytes: usize,
}

impl Default for TapsBudget {
    fn default() -> Self {
        Self::new(TAPS_BUDGET)
    }
}

impl TapsBudget {
    pub fn new(bytes: usize) -> Self {
        Self {
            room: Arc::new(Semaphore::new(bytes)),
            bytes,
        }
    }
}

struct Tap {
    queue: std::sync::Mutex<Queue>,
    /// [`RUN_AHEAD`] bytes of room for this upload's queued frames.
    room: Arc<Semaphore>,
    /// The node's room for all uploads' queued frames.
    shared: TapsBudget,
    /// Told when a hashing task ends.
    idle: Notify,
}

/// A frame waiting to be hashed, with the room it takes (its upload's and
/// the node's).
type Queued = (Bytes, OwnedSemaphorePermit, OwnedSemaphorePermit);

#[derive(Default)]
struct Queue {
    frames: VecDeque<Queued>,
    /// A task is hashing; it holds `hasher` meanwhile.
    running: bool,
    hasher: Option<Md5>,
}

impl Default for Md5Tap {
    fn default() -> Self {
        Self::new(TapsBudget::default())
    }
}

impl Md5Tap {
    /// A tap whose queued frames count against `shared` too.
    pub fn new(shared: TapsBudget) -> Self {
        Md5Tap(Arc::new(Tap {
            queue: Default::default(),
            room: Arc::new(Semaphore::new(RUN_AHEAD)),
            shared,
            idle: Notify::new(),
        }))
    }

    async fn feed(&self, bytes: Bytes) {
        // Never more than either semaphore holds, so a large frame waits
        // for room instead of forever.
        let want = bytes.len().min(RUN_AHEAD).min(self.0.shared.bytes) as u32;
        let acquire = |s: &Arc<Semaphore>| s.clone().acquire_many_owned(want);
        let own = acquire(&self.0.room)
            .await
            .expect("the semaphore is never closed");
        let shared = acquire(&self.0.shared.room)
            .await
            .expect("the semaphore is never closed");
        let start = {
            let mut q = self.0.queue.lock().expect("md5 queue poisoned");
            q.frames.push_back((bytes, own, shared));
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            let tap = self.0.clone();
            tokio::task::spawn_blocking(move || tap.hash_queued());
        }
    }

    /// The MD5 of everything fed (call once, after the body has ended).
    pub async fn digest(&self) -> [u8; 16] {
        loop {
            let ended = self.0.idle.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            {
                let mut q = self.0.queue.lock().expect("md5 queue poisoned");
                if !q.running {
                    // Nothing is queued when no task runs: a feed starts one.
                    return q.hasher.take().unwrap_or_else(Md5::new).finalize();
                }
            }
            ended.await;
        }
    }
}

impl Tap {
    fn hash_queued(&self) {
        let mut hasher = {
            let mut q = self.queue.lock().expect("md5 queue poisoned");
            q.hasher.take().unwrap_or_else(Md5::new)
        };
        loop {
            let next = {
                let mut q = self.queue.lock().expect("md5 queue poisoned");
                match q.frames.pop_front() {
                    Some(frame) => frame,
                    None => {
                        q.hasher = Some(hasher);
                        q.running = false;
                        break;
                    }
                }
            };
            // The frame's room is given back once it is hashed.
            hasher.update(&next.0);
        }
        self.idle.notify_waiters();
    }
}

/// Wraps `body`: refuses more than `limit` bytes, stops when `cancel`
/// fires, feeds `tap` when there is one, and counts every byte received
/// into `received`.
pub fn guard(
    body: ByteStream,
    limit: u64,
    cancel: CancellationToken,
    tap: Option<Md5Tap>,
    received: Arc<AtomicU64>,
) -> ByteStream {
    let state = (body, 0u64);
    Box::pin(futures_util::stream::unfold(Some(state), move |state| {
        let cancel = cancel.clone();
        let tap = tap.clone();
        let received = received.clone();
        async move {
            let (mut body, seen) = state?;
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Some((Err(stop(BodyStop::Superseded)), None)),
                next = body.next() => next,
            };
            match next {
                // A body cancelled as it ended is still stopped: a store
                // that holds the chunk until its end (S3) writes nothing.
                None if cancel.is_cancelled() => Some((Err(stop(BodyStop::Superseded)), None)),
                None => None,
                Some(Err(e)) => Some((Err(e), None)),
                Some(Ok(bytes)) => {
                    received.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    let seen = seen + bytes.len() as u64;
                    if seen > limit {
                        return Some((Err(stop(BodyStop::TooLarge(limit))), None));
                    }
                    if let Some(tap) = &tap {
                        tap.feed(bytes.clone()).await;
                    }
                    Some((Ok::<Bytes, io::Error>(bytes), Some((body, seen))))
                }
            }
        }
    }))
}

fn stop(s: BodyStop) -> io::Error {
    io::Error::other(s)
}

/// Whether `incoming` is byte-for-byte `stored` (both read to their end).
/// An error of `incoming` is returned as such; `stored` errors are wrapped
/// as `Ok(Err(..))` so the caller can tell a client failure from a storage one.
pub async fn same_bytes(
    mut incoming: ByteStream,
    mut stored: ByteStream,
) -> io::Result<Result<bool, io::Error>> {
    let mut pending = Bytes::new();
    let mut equal = true;
    while let Some(frame) = incoming.next().await {
        let mut frame = frame?;
        while !frame.is_empty() {
            if pending.is_empty() {
                match stored.next().await {
                    Some(Ok(b)) => pending = b,
                    Some(Err(e)) => return Ok(Err(e)),
                    None => {
                        equal = false;
                        break;
                    }
                }
                continue;
            }
            let n = frame.len().min(pending.len());
            if frame.split_to(n) != pending.split_to(n) {
                equal = false;
            }
        }
    }
    // The stored range must be exhausted too.
    if pending.is_empty() {
        match stored.next().await {
            Some(Ok(b)) if !b.is_empty() => equal = false,
            Some(Err(e)) => return Ok(Err(e)),
            _ => {}
        }
    } else {
        equal = false;
    }
    Ok(Ok(equal))
}

/// Whether `incoming` has the MD5 `want` (a replay checked against a
/// store that keeps MD5s of what it cannot read back). Hashed as it
/// arrives: at most one chunk, a frame at a time.
pub async fn same_md5(mut incoming: ByteStream, want: [u8; 16]) -> io::Result<bool> {
    let mut hasher = Md5::new();
    while let Some(frame) = incoming.next().await {
        hasher.update(&frame?);
    }
    Ok(hasher.finalize() == want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference_md5;
    use upline_storage::conformance::{body, broken_body};

    /// Uploads sharing a node budget smaller than one upload's run-ahead:
    /// each waits for room the others' hashing frees, none stalls, and
    /// every digest is its own bytes'.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn taps_sharing_a_small_budget_all_finish() {
        let budget = TapsBudget::new(100_000);
        let uploads = (0..6u8).map(|seed| {
            let tap = Md5Tap::new(budget.clone());
            async move {
                let data: Vec<u8> = (0..700_000u32)
                    .map(|i| (i as u8).wrapping_mul(seed | 1))
                    .collect();
                for part in data.chunks(65_536) {
                    tap.feed(Bytes::copy_from_slice(part)).await;
                }
                assert_eq!(tap.digest().await, reference_md5(&data));
            }
        });
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            futures_util::future::join_all(uploads),
        )
        .await
        .expect("taps stalled on their shared budget");
        assert_eq!(budget.room.available_permits(), 100_000, "all room given back");
    }

    /// The node's MD5 (fast-md5's assembly) against the reference, for
    /// every length around the 64-byte block and padding boundaries and
    /// frames that split blocks anywhere.
    #[tokio::test]
    async fn the_tap_matches_the_reference_md5_at_every_boundary() {
        let data: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in (0..200).chain([4095, 4096, 4097, 65_535, 65_536, 70_000]) {
            for frame in [1, 7, 55, 56, 63, 64, 65, 1000] {
                let tap = Md5Tap::default();
                for part in data[..len].chunks(frame) {
                    tap.feed(Bytes::copy_from_slice(part)).await;
                }
                assert_eq!(
                    tap.digest().await,
                    reference_md5(&data[..len]),
                    "len {len} frame {frame}"
                );
            }
        }
    }

    async fn drain(mut s: ByteStream) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(b) = s.next().await {
            out.extend_from_slice(&b?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn limit_and_tap() {
        let tap = Md5Tap::default();
        let received = Arc::new(AtomicU64::new(0));
        let got = drain(guard(
            body(vec![b"ab".to_vec(), b"c".to_vec()]),
            3,
            CancellationToken::new(),
            Some(tap.clone()),
            received.clone(),
        ))
        .await
        .unwrap();
        assert_eq!(got, b"abc");
        assert_eq!(received.load(Ordering::Relaxed), 3);
        assert_eq!(
            hex::encode(tap.digest().await),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        let err = drain(guard(
            body(vec![b"ab".to_vec(), b"cd".to_vec()]),
            3,
            CancellationToken::new(),
            None,
            Arc::default(),
        ))
        .await
        .unwrap_err();
        assert_eq!(BodyStop::of(&err), Some(BodyStop::TooLarge(3)));
    }

    /// Sends `data` through a tapped guard in frames of `frame` bytes and
    /// checks the bytes and the digest.
    async fn tapped(data: Vec<u8>, frame: usize) {
        let tap = Md5Tap::default();
        let frames = data.chunks(frame).map(<[u8]>::to_vec).collect();
        let got = drain(guard(
            body(frames),
            u64::MAX,
            CancellationToken::new(),
            Some(tap.clone()),
            Arc::default(),
        ))
        .await
        .unwrap();
        assert_eq!(got, data);
        assert_eq!(tap.digest().await, reference_md5(&data));
    }

    /// Several batches, frames straddling batch ends: the pipelined digest
    /// is the digest of the bytes in order.
    #[tokio::test]
    async fn tap_digest_spans_batches() {
        let data = (0..RUN_AHEAD * 3 + 12_345).map(|i| (i * 7 % 251) as u8).collect();
        tapped(data, 10_007).await;
    }

    /// Many uploads at once, frames of odd sizes over many batches: each
    /// digest is the digest of its own bytes in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn taps_of_concurrent_uploads_digest_their_own_bytes() {
        let uploads = (0..8u8).map(|seed| {
            let data = (0..RUN_AHEAD * 12 + 777)
                .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
                .collect();
            tokio::spawn(tapped(data, 65_521))
        });
        for u in uploads.collect::<Vec<_>>() {
            u.await.unwrap();
        }
    }

    #[tokio::test]
    async fn cancellation_stops_the_body() {
        let c = CancellationToken::new();
        c.cancel();
        let err = drain(guard(body(vec![b"ab".to_vec()]), 3, c, None, Arc::default()))
            .await
            .unwrap_err();
        assert_eq!(BodyStop::of(&err), Some(BodyStop::Superseded));
    }

    /// A body cancelled after its last frame but before its end is read
    /// ends in an error, not in a clean end: S3 stores a chunk only once
    /// the body has ended, and must not after its lease is lost.
    #[tokio::test]
    async fn cancellation_after_the_last_frame_still_stops_the_body() {
        let c = CancellationToken::new();
        // The cancellation lands while the guard waits for the body's end.
        let cancelling = c.clone();
        let inner: ByteStream = Box::pin(futures_util::stream::unfold(0, move |step| {
            let cancelling = cancelling.clone();
            async move {
                if step == 0 {
                    return Some((Ok(Bytes::from_static(b"ab")), 1));
                }
                cancelling.cancel();
                None
            }
        }));
        let mut b = guard(inner, 3, c, None, Arc::default());
        assert_eq!(&b.next().await.unwrap().unwrap()[..], b"ab");
        let err = b.next().await.unwrap().unwrap_err();
        assert_eq!(BodyStop::of(&err), Some(BodyStop::Superseded));
    }

    #[tokio::test]
    async fn comparing_across_frame_boundaries() {
        let cmp = |a: Vec<&[u8]>, b: Vec<&[u8]>| {
            same_bytes(
                body(a.into_iter().map(<[u8]>::to_vec).collect()),
                body(b.into_iter().map(<[u8]>::to_vec).collect()),
            )
        };
        assert!(
            cmp(vec![b"ab", b"cde"], vec![b"a", b"bcd", b"e"])
                .await
                .unwrap()
                .unwrap()
        );
        assert!(cmp(vec![], vec![]).await.unwrap().unwrap());
        assert!(!cmp(vec![b"abc"], vec![b"abd"]).await.unwrap().unwrap());
        assert!(!cmp(vec![b"abc"], vec![b"ab"]).await.unwrap().unwrap());
        assert!(!cmp(vec![b"ab"], vec![b"abc"]).await.unwrap().unwrap());
        let broken = same_bytes(broken_body(vec![b"ab".to_vec()]), body(vec![b"ab".to_vec()])).await;
        assert!(broken.is_err());
    }
}
