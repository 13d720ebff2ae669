//! MD5s of completed objects, hashed where they cannot slow an upload: on
//! one thread of the kernel's idle scheduling class, one object at a time.
//!
//! Why: every completed object is hashed once, in the background, so that
//! downloads and callbacks find its MD5 ready. That hash ran on the async
//! workers (one on a 2-core node), and 256 uploads completing together
//! hashed 4 GiB there while the next uploads waited: the concurrent
//! benchmark moved from 531 to 719 MiB/s (1.0 CPU-s per GiB less) with the
//! background hash off (BENCHMARKS.md). `SCHED_IDLE` gives the thread the
//! CPU only when nothing else wants it, so under load the hashes wait and
//! catch up when the node is quiet; an MD5 needed at once (a callback, a
//! download's first request) is computed on demand as before.

use std::sync::mpsc;

use bytes::Bytes;
use fast_md5::Md5;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc as tmpsc, oneshot};

/// Frames of one object queued for the hasher (what a reader may run
/// ahead of it).
const QUEUED_FRAMES: usize = 16;

/// Objects that may wait for their turn: past it, a completed object's MD5
/// is left to be computed on demand, so that a node whose CPU never idles
/// does not pile up waiting tasks without bound.
pub(crate) const MAX_WAITING: usize = 4096;

/// One object to hash: its frames, in order, then its digest back.
struct Job {
    frames: tmpsc::Receiver<Bytes>,
    done: oneshot::Sender<[u8; 16]>,
}

/// The idle-priority hasher; its thread starts on first use and ends when
/// this is dropped.
pub(crate) struct IdleHasher {
    jobs: std::sync::OnceLock<mpsc::Sender<Job>>,
    /// One object at a time: objects completed together wait here, not
    /// with their files open and their frames read ahead.
    turn: std::sync::Arc<Semaphore>,
    /// Places for objects waiting or being hashed ([`MAX_WAITING`]).
    places: std::sync::Arc<Semaphore>,
}

impl Default for IdleHasher {
    fn default() -> Self {
        Self {
            jobs: Default::default(),
            turn: std::sync::Arc::new(Semaphore::new(1)),
            places: std::sync::Arc::new(Semaphore::new(MAX_WAITING)),
        }
    }
}

/// An object's place in the hasher's backlog, held until it is hashed.
pub(crate) struct Place {
    _permit: OwnedSemaphorePermit,
}

/// Feeds one object's frames to the idle hasher.
pub(crate) struct Feed {
    frames: tmpsc::Sender<Bytes>,
    done: oneshot::Receiver<[u8; 16]>,
    _turn: OwnedSemaphorePermit,
}

impl IdleHasher {
    /// A place in the backlog, or `None` when [`MAX_WAITING`] objects
    /// already wait.
    pub(crate) fn reserve(&self) -> Option<Place> {
        let permit = self.places.clone().try_acquire_owned().ok()?;
        Some(Place { _permit: permit })
    }

    /// A new object to hash, once the one before it is done; `None` if the
    /// thread could not start.
    pub(crate) async fn begin(&self) -> Option<Feed> {
        let turn = self.turn.clone().acquire_owned().await.ok()?;
        let jobs = self.jobs.get_or_init(start);
        let (tx, rx) = tmpsc::channel(QUEUED_FRAMES);
        let (done_tx, done_rx) = oneshot::channel();
        let job = Job {
            frames: rx,
            done: done_tx,
        };
        jobs.send(job).ok()?;
        Some(Feed {
            frames: tx,
            done: done_rx,
            _turn: turn,
        })
    }
}

impl Feed {
    /// Hands the next frame over (waits while the hasher is behind).
    pub(crate) async fn update(&self, frame: Bytes) -> Option<()> {
        self.frames.send(frame).await.ok()
    }

    /// The digest of every frame handed over.
    pub(crate) async fn finish(self) -> Option<[u8; 16]> {
        drop(self.frames);
        self.done.await.ok()
    }
}

/// Starts the thread; a job sent after a failed start is refused.
fn start() -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel::<Job>();
    let spawned = std::thread::Builder::new()
        .name("upline-idle-md5".into())
        .spawn(move || {
            lower_priority();
            for mut job in rx {
                let mut hasher = Md5::new();
                while let Some(frame) = job.frames.blocking_recv() {
                    hasher.update(&frame);
                }
                let _ = job.done.send(hasher.finalize());
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the idle MD5 thread; object MD5s are computed on demand");
    }
    tx
}

/// Moves the calling thread to the idle scheduling class. Best effort: on
/// failure (or off Linux) the thread runs at normal priority.
#[cfg(target_os = "linux")]
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0
    // is the calling thread.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "SCHED_IDLE refused");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference_md5;

    #[tokio::test]
    async fn digests_match_and_objects_do_not_mix() {
        let h = std::sync::Arc::new(IdleHasher::default());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let a = h.begin().await.unwrap();
        // The second object waits for the first's turn; frames stay apart.
        let second = tokio::spawn({
            let h = h.clone();
            async move {
                let b = h.begin().await.unwrap();
                b.update(Bytes::from_static(b"other")).await.unwrap();
                b.finish().await.unwrap()
            }
        });
        for c in data.chunks(7_000) {
            a.update(Bytes::copy_from_slice(c)).await.unwrap();
        }
        assert_eq!(a.finish().await.unwrap(), reference_md5(&data));
        assert_eq!(second.await.unwrap(), reference_md5(b"other"));
    }

    /// An abandoned feed (its task dropped mid-object) does not stall the
    /// objects after it.
    #[tokio::test]
    async fn an_abandoned_feed_does_not_block_the_next() {
        let h = IdleHasher::default();
        let a = h.begin().await.unwrap();
        a.update(Bytes::from_static(b"half")).await.unwrap();
        drop(a);
        let b = h.begin().await.unwrap();
        b.update(Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(b.finish().await.unwrap(), reference_md5(b"x"));
    }

    #[test]
    fn the_backlog_is_bounded() {
        let h = IdleHasher::default();
        let places: Vec<Place> = (0..MAX_WAITING).map(|_| h.reserve().unwrap()).collect();
        assert!(h.reserve().is_none(), "no place past MAX_WAITING");
        drop(places);
        assert!(h.reserve().is_some(), "places come back when objects are done");
    }

    /// The hasher's own thread, found by name, is in the idle class
    /// (policy, field 41 of its `stat`, is 5: SCHED_IDLE).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_thread_runs_in_the_idle_class() {
        let h = IdleHasher::default();
        let feed = h.begin().await.unwrap();
        feed.update(Bytes::from_static(b"x")).await.unwrap();
        // Once an object is hashed, the thread has named itself and moved
        // to its class (both happen in the thread, after its spawn
        // returns); it then waits for the next object while `h` lives.
        feed.finish().await.unwrap();
        // Other tests' threads come and go meanwhile: a task gone between
        // the listing and the read is skipped.
        let policies: Vec<i32> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| {
                let t = t.ok()?.path();
                let comm = std::fs::read_to_string(t.join("comm")).ok()?;
                (comm.trim() == "upline-idle-md5").then_some(())?;
                let stat = std::fs::read_to_string(t.join("stat")).ok()?;
                // Fields after the command name, which ends with ')'.
                let rest = &stat[stat.rfind(')')? + 2..];
                rest.split(' ').nth(41 - 3)?.parse::<i32>().ok()
            })
            .collect();
        assert!(!policies.is_empty(), "the hasher thread runs");
        assert!(policies.iter().all(|&p| p == libc::SCHED_IDLE), "{policies:?}");
    }
}
