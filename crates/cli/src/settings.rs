//! Where the node's configuration comes from: defaults, then the TOML file
//! (`--config` / `UPLINE_CONFIG`), then `UPLINE_*` variables, then flags.
//! And where credentials come from: `UPLINE_ACCESS_KEY` +
//! `UPLINE_SECRET_KEY`, else the config file's `[[credentials]]`, else a
//! pair generated once and kept (mode 0600) in the data directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use upline_server::{Credential, ServerConfig};

/// Options shared by every command that needs the node's configuration.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct CommonArgs {
    /// TOML configuration file.
    #[arg(long, env = "UPLINE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Data directory (embedded database, blobs, generated credentials).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

/// Where the credentials in use came from, for the start-up message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    Environment,
    ConfigFile,
    Generated(PathBuf),
}

/// Loads the configuration; `flags` are serialized over everything else
/// (fields left `None` are skipped so they do not mask the file or env).
pub fn load<T: Serialize>(common: &CommonArgs, flags: &T) -> anyhow::Result<ServerConfig> {
    let mut fig = Figment::from(Serialized::defaults(ServerConfig::default()));
    if let Some(path) = &common.config {
        if !path.is_file() {
            bail!(
                "config file {} does not exist (check --config or UPLINE_CONFIG)",
                path.display()
            );
        }
        fig = fig.merge(Toml::file(path));
    }
    // Only variables that name an option are configuration: UPLINE_ACCESS_KEY,
    // UPLINE_CONFIG or a test harness's UPLINE_TEST_* must not be taken
    // for unknown options (the config file stays strict).
    let known = config_keys();
    fig = fig
        .merge(
            Env::prefixed("UPLINE_")
                .filter(move |k| known.iter().any(|f| k.as_str().eq_ignore_ascii_case(f))),
        )
        .merge(Serialized::defaults(common))
        .merge(Serialized::defaults(flags));
    fig.extract()
        .context("invalid configuration (see the README's configuration table)")
}

/// The option names of [`ServerConfig`], from its own serialization.
fn config_keys() -> Vec<String> {
    match serde_json::to_value(ServerConfig::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().filter(|k| *k != "credentials").cloned().collect(),
        _ => Vec::new(),
    }
}

/// Fills `cfg.credentials` by the precedence above. With `generate`
/// false (a client), a missing credentials file is an error rather than
/// a new pair no server knows.
pub fn resolve_credentials(cfg: &mut ServerConfig, generate: bool) -> anyhow::Result<CredentialSource> {
    let ak = std::env::var("UPLINE_ACCESS_KEY").ok().filter(|s| !s.is_empty());
    let sk = std::env::var("UPLINE_SECRET_KEY").ok().filter(|s| !s.is_empty());
    match (ak, sk) {
        (Some(access_key), Some(secret_key)) => {
            cfg.credentials = vec![Credential {
                access_key,
                secret_key,
            }];
            return Ok(CredentialSource::Environment);
        }
        (None, None) => {}
        _ => bail!("set both UPLINE_ACCESS_KEY and UPLINE_SECRET_KEY, or neither"),
    }
    if !cfg.credentials.is_empty() {
        return Ok(CredentialSource::ConfigFile);
    }
    let path = cfg.data_dir.join("credentials.toml");
    if !generate && !path.is_file() {
        bail!(
            "no credentials: pass --token, set UPLINE_ACCESS_KEY and UPLINE_SECRET_KEY, or point --data-dir at the node's data directory"
        );
    }
    cfg.credentials = vec![generated(&path)?];
    Ok(CredentialSource::Generated(path))
}

#[derive(Serialize, Deserialize)]
struct CredentialsFile {
    credentials: Vec<Credential>,
}

/// Reads the generated pair, or makes one: 128-bit access key, 256-bit
/// secret, written to a new 0600 file, fsync'ed.
fn generated(path: &Path) -> anyhow::Result<Credential> {
    if let Ok(text) = std::fs::read_to_string(path) {
        upline_server::secrets::keep_private(path);
        let file: CredentialsFile = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid credentials file", path.display()))?;
        return file
            .credentials
            .into_iter()
            .next()
            .with_context(|| format!("{} lists no credentials", path.display()));
    }
    let cred = Credential {
        access_key: hex::encode(rand::random::<[u8; 16]>()),
        secret_key: hex::encode(rand::random::<[u8; 32]>()),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = toml::to_string(&CredentialsFile {
        credentials: vec![cred.clone()],
    })?;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(cred)
}
