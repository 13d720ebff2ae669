//! The figures of a run, and the violations it found (a correct node has
//! none).

use serde::Serialize;

/// What a run did and found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub backend: String,
    pub seed: u64,
    pub rounds: usize,
    pub seconds: f64,
    /// SIGKILLs of the serving node (one per round, and one at the end).
    pub node_kills: u64,
    /// SIGKILLs of a node still starting (opening stores, recovering).
    pub early_kills: u64,
    pub s3_kills: u64,
    pub db_cuts: u64,
    pub db_connections_cut: u64,
    pub uploads_started: u64,
    pub uploads_completed: u64,
    /// Uploads that replaced an object of the same name.
    pub overwrites: u64,
    /// First chunks whose answer was lost: the client started a new
    /// session (the lost one, if it exists, is left for collection).
    pub first_chunks_unanswered: u64,
    pub chunks_sent: u64,
    pub chunks_acked: u64,
    pub answers_lost: u64,
    pub answers_5xx: u64,
    pub answers_400: u64,
    pub bytes_acked: u64,
    pub objects_verified: u64,
    pub bytes_verified: u64,
    /// Sessions whose resume point was checked after a restart.
    pub sessions_checked: u64,
    /// Chunks in flight at a kill that the node had committed (the
    /// client learned it from the query) or had not.
    pub in_flight_committed: u64,
    pub in_flight_not_committed: u64,
    /// Sessions continued right after a restart.
    pub sessions_continued: u64,
    /// Files or objects in staging and published storage checked against
    /// the session store after a restart.
    pub stored_items_checked: u64,
    /// What recovery logged at the restarts.
    pub publications_finished_at_start: u64,
    pub orphans_deleted_at_start: u64,
    /// Multipart uploads no record named, aborted by recovery (S3).
    pub uploads_aborted_at_start: u64,
    /// Published bytes of replaced objects that a crash kept from being
    /// deleted, deleted by the scrub after start.
    pub unreferenced_deleted_at_start: u64,
    /// Node starts on S3 by the layout their new sessions got.
    pub starts_in_parts_layout: u64,
    pub starts_in_chunks_layout: u64,
    pub violations: Vec<String>,
}

impl Report {
    pub fn violation(&mut self, v: impl Into<String>) {
        let v = v.into();
        eprintln!("torture: VIOLATION: {v}");
        self.violations.push(v);
    }

    /// One paragraph for people.
    pub fn summary(&self) -> String {
        format!(
            "{backend}: {rounds} rounds in {secs:.0} s (seed {seed}); kills: {nk} node + {ek} during start, {sk} S3, {dc} database cuts ({dcc} connections); \
             uploads: {us} started, {uc} completed ({ow} overwrites); chunks: {cs} sent, {ca} acknowledged, {al} answers lost, {a5} 5xx, {a4} 400; \
             {ba} bytes acknowledged; verified {ov} objects, {bv} bytes; {sc} resume points checked ({ic} in-flight chunks found committed, {inc} not), \
             {sco} sessions continued after restarts, {sic} stored items checked for leaks; recovery finished {pf} publications and deleted {od} orphans and aborted {ua} unnamed multipart uploads, the scrub {ud} unreferenced objects; \
             S3 layouts: {lp} starts in parts, {lc} in chunks; violations: {v}",
            backend = self.backend,
            rounds = self.rounds,
            secs = self.seconds,
            seed = self.seed,
            nk = self.node_kills,
            ek = self.early_kills,
            sk = self.s3_kills,
            dc = self.db_cuts,
            dcc = self.db_connections_cut,
            us = self.uploads_started,
            uc = self.uploads_completed,
            ow = self.overwrites,
            cs = self.chunks_sent,
            ca = self.chunks_acked,
            al = self.answers_lost,
            a5 = self.answers_5xx,
            a4 = self.answers_400,
            ba = self.bytes_acked,
            ov = self.objects_verified,
            bv = self.bytes_verified,
            sc = self.sessions_checked,
            ic = self.in_flight_committed,
            inc = self.in_flight_not_committed,
            sco = self.sessions_continued,
            sic = self.stored_items_checked,
            pf = self.publications_finished_at_start,
            od = self.orphans_deleted_at_start,
            ua = self.uploads_aborted_at_start,
            ud = self.unreferenced_deleted_at_start,
            lp = self.starts_in_parts_layout,
            lc = self.starts_in_chunks_layout,
            v = self.violations.len(),
        )
    }
}
