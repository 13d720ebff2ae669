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
    #[error("cannot read or create {path}")]
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
        Ok(text) => {
            keep_private(&path);
            parse(text.trim())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            write_new(&path, &hex::encode(key)).map_err(err)?;
            Ok(key)
        }
        Err(e) => Err(err(e)),
    }
}

/// Secrets at rest live only in files of mode 0600: an existing secret
/// file that group or others may read (copied in by hand, restored from a
/// backup) is made private again, with a warning on stderr (and a louder
/// one if that is not allowed: the secret is exposed, but refusing to
/// start would not hide it again).
pub fn keep_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return;
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        Ok(()) => eprintln!(
            "upline: warning: {} was readable by others (mode {mode:o}); it is now 0600",
            path.display()
        ),
        Err(e) => eprintln!(
            "upline: warning: {} is readable by others (mode {mode:o}) and could not be made 0600: {e}",
            path.display()
        ),
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
