//! The node's master key, which seals app secrets at rest.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::ServerConfig;

/// Why the master key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("master_key must be 64 hex digits")]
    Format,
    #[error("cannot read or create {path}: {source}")]
    File { path: String, source: std::io::Error },
}

/// The configured key, or the one kept in `DATA_DIR/master.key`
/// (generated on first use, mode 0600, fsync'ed).
pub fn master_key(cfg: &ServerConfig) -> Result<[u8; 32], KeyError> {
    if let Some(hex_key) = &cfg.master_key {
        return parse(hex_key.0.trim());
    }
    let path = cfg.data_dir.join("master.key");
    let err = |source| KeyError::File {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(text.trim()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            write_new(&path, &hex::encode(key)).map_err(err)?;
            Ok(key)
        }
        Err(e) => Err(err(e)),
    }
}

fn parse(s: &str) -> Result<[u8; 32], KeyError> {
    hex::decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(KeyError::Format)
}

fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}
