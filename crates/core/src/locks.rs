//! Per-session locks with preemption.
//!
//! One writer per session at a time on this node, so two chunks never
//! write the same staged bytes at once (the CAS in the session store then
//! serializes nodes). A lock is taken *before* the body is read, and a
//! client retrying a chunk after a network stall must not wait for the
//! server to notice that the stalled connection is dead: a request whose
//! offset is the committed one *preempts* the holder, whose body read then
//! fails with [`crate::CoreError::Superseded`] (tusd does the same with its
//! lock-release requests). A holder past its body read finishes normally.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Slot {
    lock: Arc<tokio::sync::Mutex<()>>,
    holder: Mutex<Option<CancellationToken>>,
}

/// The lock table of one node.
#[derive(Default)]
pub struct SessionLocks {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

/// Held while a request owns a session; released on drop.
pub struct SessionGuard<'a> {
    locks: &'a SessionLocks,
    ctx: String,
    slot: Arc<Slot>,
    /// Cancelled when a newer request preempts this one.
    pub cancel: CancellationToken,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl SessionLocks {
    /// Waits for the session's lock; with `preempt`, first asks the
    /// current holder to give up its body read.
    pub async fn acquire(&self, ctx: &str, preempt: bool) -> SessionGuard<'_> {
        let slot = self.slot(ctx);
        if preempt && let Some(holder) = slot.holder.lock().expect("slot poisoned").as_ref() {
            holder.cancel();
        }
        let held = slot.lock.clone().lock_owned().await;
        self.guard(ctx, slot, held)
    }

    /// The session's lock if nobody holds it now. This is the common case
    /// (one client, one chunk at a time), and it spares the caller the
    /// session read that decides whether to preempt.
    pub fn try_acquire(&self, ctx: &str) -> Option<SessionGuard<'_>> {
        let slot = self.slot(ctx);
        match slot.lock.clone().try_lock_owned() {
            Ok(held) => Some(self.guard(ctx, slot, held)),
            Err(_) => {
                // The holder may have let go between its own clean-up and
                // our try: then nobody else has the slot and it is ours to
                // remove, as a guard's drop would.
                let mut slots = self.slots.lock().expect("lock table poisoned");
                if Arc::strong_count(&slot) == 2 {
                    slots.remove(ctx);
                }
                None
            }
        }
    }

    fn slot(&self, ctx: &str) -> Arc<Slot> {
        self.slots
            .lock()
            .expect("lock table poisoned")
            .entry(ctx.to_owned())
            .or_default()
            .clone()
    }

    fn guard(
        &self,
        ctx: &str,
        slot: Arc<Slot>,
        held: tokio::sync::OwnedMutexGuard<()>,
    ) -> SessionGuard<'_> {
        let cancel = CancellationToken::new();
        *slot.holder.lock().expect("slot poisoned") = Some(cancel.clone());
        SessionGuard {
            locks: self,
            ctx: ctx.to_owned(),
            slot,
            cancel,
            _held: held,
        }
    }

    /// Sessions with a lock entry (held or awaited).
    pub fn len(&self) -> usize {
        self.slots.lock().expect("lock table poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        *self.slot.holder.lock().expect("slot poisoned") = None;
        let mut slots = self.locks.slots.lock().expect("lock table poisoned");
        // The table and this guard are the only owners: nobody waits.
        if Arc::strong_count(&self.slot) == 2 {
            slots.remove(&self.ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn second_waits_then_table_empties() {
        let locks = SessionLocks::default();
        let g1 = locks.acquire("a", false).await;
        let waiting = tokio::time::timeout(Duration::from_millis(50), locks.acquire("a", false)).await;
        assert!(waiting.is_err(), "second acquire must wait");
        let other = locks.acquire("b", false).await;
        drop(other);
        drop(g1);
        drop(locks.acquire("a", false).await);
        assert!(locks.is_empty());
    }

    #[tokio::test]
    async fn try_acquire_takes_a_free_lock_only() {
        let locks = SessionLocks::default();
        let g1 = locks.try_acquire("a").expect("a free lock is taken");
        assert!(locks.try_acquire("a").is_none(), "a held lock is not");
        let waiting = tokio::time::timeout(Duration::from_millis(50), locks.acquire("a", false)).await;
        assert!(waiting.is_err(), "try_acquire's guard holds the lock");
        drop(g1);
        assert!(locks.is_empty(), "a failed try leaves no entry behind");
        drop(locks.try_acquire("a").expect("free again"));
        assert!(locks.is_empty());
    }

    #[tokio::test]
    async fn preemption_cancels_the_holder() {
        let locks = Arc::new(SessionLocks::default());
        let g1 = locks.acquire("a", false).await;
        let token = g1.cancel.clone();
        let l2 = locks.clone();
        let second = tokio::spawn(async move {
            let g = l2.acquire("a", true).await;
            g.cancel.is_cancelled()
        });
        tokio::time::timeout(Duration::from_secs(5), token.cancelled())
            .await
            .unwrap();
        drop(g1);
        assert!(!second.await.unwrap(), "the new holder has a fresh token");
        assert!(locks.is_empty());
    }
}
