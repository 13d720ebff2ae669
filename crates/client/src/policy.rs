//! How big chunks are and how failures are retried.

use std::time::Duration;

/// How chunk sizes are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkPolicy {
    /// Every chunk this size (clamped to the protocol's 4 MiB).
    Fixed(u64),
    /// Start at `start`, double while a chunk takes less than `target`,
    /// halve when one takes more than twice that or times out — the way
    /// the original service's mobile clients adapt to the network.
    Adaptive {
        start: u64,
        min: u64,
        max: u64,
        target: Duration,
    },
}

impl Default for ChunkPolicy {
    fn default() -> Self {
        ChunkPolicy::Adaptive {
            start: 256 * 1024,
            min: 32 * 1024,
            max: upline_proto::MAX_CHUNK,
            target: Duration::from_secs(2),
        }
    }
}

/// The running chunk size of one upload.
#[derive(Debug, Clone)]
pub(crate) struct Chunker {
    policy: ChunkPolicy,
    size: u64,
}

impl Chunker {
    /// Bounds out of order are put in order, within 1 byte and the
    /// protocol's 4 MiB: `min > max` panicked in `clamp`, and a `min` of 0
    /// let the size halve to 0, sending empty chunks forever (found in
    /// review).
    pub(crate) fn new(policy: ChunkPolicy) -> Self {
        let policy = match policy {
            ChunkPolicy::Fixed(n) => ChunkPolicy::Fixed(n.clamp(1, upline_proto::MAX_CHUNK)),
            ChunkPolicy::Adaptive {
                start,
                min,
                max,
                target,
            } => {
                let min = min.clamp(1, upline_proto::MAX_CHUNK);
                let max = max.clamp(min, upline_proto::MAX_CHUNK);
                ChunkPolicy::Adaptive {
                    start: start.clamp(min, max),
                    min,
                    max,
                    target,
                }
            }
        };
        let size = match policy {
            ChunkPolicy::Fixed(n) => n,
            ChunkPolicy::Adaptive { start, .. } => start,
        };
        Self { policy, size }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// A full-size chunk was acknowledged after `took`.
    pub(crate) fn on_success(&mut self, len: u64, took: Duration) {
        if let ChunkPolicy::Adaptive { min, max, target, .. } = self.policy {
            if len < self.size {
                return; // a short tail says nothing about the network
            }
            if took < target {
                self.size = (self.size * 2).min(max);
            } else if took > target * 2 {
                self.size = (self.size / 2).max(min);
            }
        }
    }

    /// A chunk timed out.
    pub(crate) fn on_timeout(&mut self) {
        if let ChunkPolicy::Adaptive { min, .. } = self.policy {
            self.size = (self.size / 2).max(min);
        }
    }
}

/// How failures that may pass are retried: exponential backoff with
/// jitter, at most `max_attempts` tries of one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (1-based): the exponential
    /// step, capped, then "equal jitter" — between half of it and all of it.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.max_delay);
        let half = capped / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// The timeout of one chunk request: a floor for latency plus time for the
/// body at a slow-but-alive rate (so a 4 MiB chunk on a 100 KB/s phone
/// link is not cut off, and a dead connection is noticed).
pub(crate) fn request_timeout(len: u64, min_rate: u64) -> Duration {
    Duration::from_secs(10) + Duration::from_secs_f64(len as f64 / min_rate.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_out_of_order_are_put_in_order() {
        let mut c = Chunker::new(ChunkPolicy::Adaptive {
            start: 0,
            min: 0,
            max: 64 << 20,
            target: Duration::from_secs(2),
        });
        for _ in 0..40 {
            c.on_timeout();
        }
        assert_eq!(c.size(), 1, "never an empty chunk");
        for _ in 0..40 {
            let s = c.size();
            c.on_success(s, Duration::from_millis(1));
        }
        assert_eq!(c.size(), 4 << 20, "never past the protocol's 4 MiB");
        let c = Chunker::new(ChunkPolicy::Adaptive {
            start: 100,
            min: 1 << 20,
            max: 1024,
            target: Duration::from_secs(2),
        });
        assert_eq!(c.size(), 1 << 20, "min over max does not panic");
    }

    #[test]
    fn adaptive_grows_when_fast_and_shrinks_when_slow() {
        let mut c = Chunker::new(ChunkPolicy::default());
        assert_eq!(c.size(), 256 * 1024);
        for _ in 0..10 {
            let s = c.size();
            c.on_success(s, Duration::from_millis(100));
        }
        assert_eq!(c.size(), 4 << 20, "capped at 4 MiB");
        c.on_success(4 << 20, Duration::from_secs(5));
        assert_eq!(c.size(), 2 << 20);
        c.on_success(100, Duration::from_millis(1));
        assert_eq!(c.size(), 2 << 20, "a short tail changes nothing");
        for _ in 0..20 {
            c.on_timeout();
        }
        assert_eq!(c.size(), 32 * 1024, "floored");
    }

    #[test]
    fn fixed_is_fixed_and_clamped() {
        let mut c = Chunker::new(ChunkPolicy::Fixed(10 << 20));
        assert_eq!(c.size(), 4 << 20);
        c.on_timeout();
        c.on_success(4 << 20, Duration::ZERO);
        assert_eq!(c.size(), 4 << 20);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for attempt in 1..=12 {
            let want =
                Duration::from_millis(100 * (1u64 << (attempt - 1).min(20))).min(Duration::from_secs(1));
            for _ in 0..20 {
                let d = p.delay(attempt);
                assert!(d >= want / 2 && d <= want, "attempt {attempt}: {d:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn timeouts_scale_with_chunk_size() {
        assert!(request_timeout(4 << 20, 100_000) > request_timeout(64 << 10, 100_000));
        assert!(request_timeout(4 << 20, 100_000) > Duration::from_secs(40));
    }
}
