//! The resume journal: one small JSON file per upload in progress.
//!
//! It is a hint, not the truth: on resume the server's query endpoint says
//! where to continue. What the journal keeps is the context (without it a
//! session cannot be found again) and the identity of the file, so that a
//! file changed since is uploaded anew rather than spliced.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const EDGE: u64 = 1024 * 1024;

/// What identifies a file's content cheaply: size, mtime and a hash of
/// its first and last MiB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: u128,
    pub edges_sha256: String,
}

impl FileIdentity {
    pub fn of(path: &Path) -> io::Result<Self> {
        let path = path.canonicalize()?;
        let mut f = File::open(&path)?;
        let meta = f.metadata()?;
        let size = meta.len();
        let mtime_ns = meta
            .modified()?
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut h = Sha256::new();
        let mut buf = vec![0; EDGE.min(size) as usize];
        f.read_exact(&mut buf)?;
        h.update(&buf);
        if size > EDGE {
            let tail = EDGE.min(size - EDGE);
            f.seek(SeekFrom::Start(size - tail))?;
            let mut buf = vec![0; tail as usize];
            f.read_exact(&mut buf)?;
            h.update(&buf);
        }
        Ok(Self {
            path,
            size,
            mtime_ns,
            edges_sha256: hex::encode(h.finalize()),
        })
    }
}

/// One upload in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub file: FileIdentity,
    pub bucket: String,
    pub object: String,
    pub context: String,
    /// The last acknowledged offset (a hint; the server has the truth).
    pub offset: u64,
}

/// A directory of journal entries.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$XDG_CACHE_HOME/upline/journal` (or the platform's cache dir).
    pub fn default_dir() -> Option<PathBuf> {
        dirs::cache_dir().map(|d| d.join("upline").join("journal"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry file for an upload of `path` to `bucket/object`.
    pub fn path_for(&self, path: &Path, bucket: &str, object: &str) -> PathBuf {
        let mut h = Sha256::new();
        for part in [
            path.as_os_str().as_encoded_bytes(),
            bucket.as_bytes(),
            object.as_bytes(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        self.dir
            .join(format!("{}.json", &hex::encode(h.finalize())[..32]))
    }

    /// The entry at `at`, if it exists and parses.
    pub fn load(&self, at: &Path) -> Option<Entry> {
        let text = fs::read(at).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Saves atomically: temp file, fsync, rename, directory fsync — a
    /// crash leaves the old entry or the new one, never half of one.
    pub fn save(&self, at: &Path, entry: &Entry) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let tmp = at.with_extension(format!("tmp{}", rand::random::<u32>()));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(entry).expect("entries serialize"))?;
            f.sync_all()?;
            fs::rename(&tmp, at)?;
            File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    pub fn remove(&self, at: &Path) {
        let _ = fs::remove_file(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_remove_and_identity() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.bin");
        fs::write(&file, vec![7u8; 3 << 20]).unwrap();
        let id = FileIdentity::of(&file).unwrap();
        assert_eq!(id.size, 3 << 20);
        let j = Journal::new(dir.path().join("journal"));
        let at = j.path_for(&id.path, "doc", "f.bin");
        assert_ne!(at, j.path_for(&id.path, "doc", "other"));
        let e = Entry {
            file: id.clone(),
            bucket: "doc".into(),
            object: "f.bin".into(),
            context: "c".into(),
            offset: 5,
        };
        j.save(&at, &e).unwrap();
        assert_eq!(j.load(&at), Some(e));
        assert_eq!(fs::read_dir(j.dir()).unwrap().count(), 1, "no temp files left");
        j.remove(&at);
        assert_eq!(j.load(&at), None);

        // A change in the last MiB changes the identity even with the same size.
        let mut bytes = vec![7u8; 3 << 20];
        bytes[(3 << 20) - 1] = 8;
        fs::write(&file, bytes).unwrap();
        assert_ne!(FileIdentity::of(&file).unwrap().edges_sha256, id.edges_sha256);
        // Small and empty files have identities too.
        fs::write(&file, b"").unwrap();
        assert_eq!(FileIdentity::of(&file).unwrap().size, 0);
    }
}
