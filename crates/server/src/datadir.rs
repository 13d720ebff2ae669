//! Who owns a data directory: one node process at a time serves from it
//! (an exclusive lock, held while the process lives and released by the
//! kernel when it dies, however it dies), and the node's name in session
//! leases is kept there. A node restarted after a crash therefore takes
//! back at once the leases its dead process held — nobody can be writing
//! under them — instead of leaving those sessions refused ("another node
//! is writing this session") until the leases expire.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The claim on a data directory; the lock is let go when it is dropped.
#[derive(Debug)]
pub struct DataDirClaim {
    _lock: File,
    /// This node's name in session leases (stable across restarts).
    pub node_name: String,
}

/// Why a data directory could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "data directory {0} is in use by another upline node (one node per data directory: give each node its own --data-dir)"
    )]
    InUse(PathBuf),
    #[error("cannot claim data directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Locks `dir` for this process and reads (or makes, once) the node's name.
pub fn claim(dir: &Path) -> Result<DataDirClaim, ClaimError> {
    let io = |source| ClaimError::Io {
        path: dir.to_owned(),
        source,
    };
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("node.lock"))
        .map_err(io)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(ClaimError::InUse(dir.to_owned())),
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    let path = dir.join("node.id");
    let node_name = match std::fs::read_to_string(&path) {
        Ok(text) if valid(text.trim()) => text.trim().to_owned(),
        _ => {
            let name = format!("node-{:032x}", rand::random::<u128>());
            let tmp = dir.join("node.id.tmp");
            let mut f = File::create(&tmp).map_err(io)?;
            f.write_all(name.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            name
        }
    };
    Ok(DataDirClaim {
        _lock: lock,
        node_name,
    })
}

fn valid(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_claim_at_a_time_and_the_name_stays() {
        let dir = tempfile::tempdir().unwrap();
        let first = claim(dir.path()).unwrap();
        assert!(matches!(claim(dir.path()), Err(ClaimError::InUse(_))));
        let name = first.node_name.clone();
        drop(first);
        let again = claim(dir.path()).unwrap();
        assert_eq!(again.node_name, name, "a restart keeps its lease name");
    }
}
