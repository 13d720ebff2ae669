//! Administration on the node's own stores: apps, signed URLs, uploads in
//! progress and published objects. The embedded database is shared safely
//! with a running node (SQLite), so none of this needs the node stopped.

use anyhow::{Context, bail};
use std::sync::Arc;
use upline_proto::{Bucket, ObjectKey, ObjectPath};

use upline_server::backends::{StateBackend, StateStores, StorageBackend};
use upline_storage::{BlobId, BlobStore};

use crate::settings::{self, CommonArgs};

#[derive(clap::Subcommand)]
pub enum AppCmd {
    /// Create an app of the backend API; prints its AppKey and AppSecret.
    Create {
        name: String,
        /// The app's bucket [default: vod + the start of the AppKey].
        #[arg(long)]
        bucket: Option<String>,
        /// One line {"appKey":"...","appSecret":"..."}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// List apps (never their secrets).
    List {
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(clap::Args)]
pub struct UrlArgs {
    #[arg(long)]
    bucket: String,
    #[arg(long)]
    object: String,
    /// Lifetime of the URL in seconds.
    #[arg(long, default_value_t = 3600)]
    expires_in: u64,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(clap::Subcommand)]
pub enum UploadsCmd {
    /// Uploads in progress: context, bucket, object, offset, age.
    List {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Abort an upload in progress: its session and bytes are deleted.
    Abort {
        /// The upload's context. Contexts are URL-safe base64 and may
        /// start with `-`, which must not be read as an option.
        #[arg(allow_hyphen_values = true)]
        context: String,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum ObjectsCmd {
    /// Published objects.
    List {
        #[arg(long)]
        bucket: Option<String>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Delete a published object.
    Rm {
        bucket: String,
        object: String,
        #[command(flatten)]
        common: CommonArgs,
    },
}

struct Stores {
    state: StateStores,
    blobs: Arc<dyn BlobStore>,
}

/// The node's own stores, by its configuration (the embedded database in
/// the data directory, or PostgreSQL; local disk or S3).
async fn open(common: &CommonArgs) -> anyhow::Result<Stores> {
    let cfg = settings::load(common, &crate::NoFlags {})?;
    let backend = StateBackend::from_config(&cfg)?;
    if let StateBackend::Embedded { path } = &backend
        && !path.is_file()
    {
        bail!(
            "no upline database at {} (pass --data-dir, or start `upline serve` once)",
            path.display()
        );
    }
    let state = backend.open().await?;
    let blobs = StorageBackend::from_config(&cfg)?
        .open()
        .await
        .context("cannot open the blob store")?;
    Ok(Stores { state, blobs })
}

fn now() -> i64 {
    upline_server::unix_now()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub fn app(cmd: AppCmd) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match cmd {
            AppCmd::Create {
                name,
                bucket,
                json,
                common,
            } => {
                let cfg = settings::load(&common, &crate::NoFlags {})?;
                std::fs::create_dir_all(&cfg.data_dir)?;
                let state = StateBackend::from_config(&cfg)?.open().await?;
                let sealer = upline_apps::Sealer::new(&upline_server::secrets::master_key(&cfg)?);
                let created =
                    upline_apps::create_app(state.apps.as_ref(), &sealer, &name, bucket.as_deref(), now())
                        .await?;
                if json {
                    let line =
                        serde_json::json!({"appKey": created.record.app_key, "appSecret": created.secret});
                    println!("{line}");
                } else {
                    println!("AppKey:    {}", created.record.app_key);
                    println!("AppSecret: {}", created.secret);
                    println!("Bucket:    {}", created.record.bucket);
                    eprintln!("upline: keep the AppSecret now; it is stored sealed and never shown again");
                }
                Ok(())
            }
            AppCmd::List { common } => {
                let s = open(&common).await?;
                println!("{:<34} {:<22} {:<24} callback", "app key", "name", "bucket");
                for a in s.state.apps.list_apps().await? {
                    let cb = a.callback_url.unwrap_or_else(|| "-".into());
                    println!("{:<34} {:<22} {:<24} {cb}", a.app_key, a.name, a.bucket);
                }
                Ok(())
            }
        }
    })
}

pub fn url(args: UrlArgs) -> anyhow::Result<()> {
    let mut cfg = settings::load(&args.common, &crate::NoFlags {})?;
    settings::resolve_credentials(&mut cfg, false)?;
    let path = ObjectPath {
        bucket: Bucket::parse(&args.bucket)?,
        object: ObjectKey::parse(&args.object)?,
    };
    let c = &cfg.credentials[0];
    let expires = now() + args.expires_in as i64;
    let query = upline_proto::signed_url::sign(
        &c.access_key,
        c.secret_key.as_bytes(),
        &args.bucket,
        &args.object,
        expires,
    );
    println!("{}{}?{query}", cfg.base_url(), path.render());
    Ok(())
}

pub fn uploads(cmd: UploadsCmd) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match cmd {
            UploadsCmd::List { common } => {
                let s = open(&common).await?;
                println!(
                    "{:<34} {:<20} {:>14} {:>8}  object",
                    "context", "bucket", "offset", "age"
                );
                for u in s.state.sessions.open_sessions(10_000).await? {
                    let age = human_age(now() - u.created_at);
                    println!(
                        "{:<34} {:<20} {:>14} {:>8}  {}",
                        u.ctx, u.bucket, u.offset, age, u.object
                    );
                }
                Ok(())
            }
            UploadsCmd::Abort { context, common } => {
                let s = open(&common).await?;
                let Some(session) = s.state.sessions.get(&context).await? else {
                    bail!("no upload with context {context}")
                };
                if session.completed_at.is_some() {
                    bail!("upload {context} is complete; delete its object with `upline objects rm`");
                }
                if let Some(id) = BlobId::new(&context) {
                    s.blobs.delete(&id).await?;
                }
                s.state.sessions.delete_session(&context).await?;
                eprintln!(
                    "upline: aborted {context} ({}/{}, {} bytes)",
                    session.bucket, session.object, session.offset
                );
                Ok(())
            }
        }
    })
}

pub fn objects(cmd: ObjectsCmd) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match cmd {
            ObjectsCmd::List { bucket, common } => {
                let s = open(&common).await?;
                println!(
                    "{:<20} {:>14} {:<32} {:>8}  object",
                    "bucket", "size", "md5", "age"
                );
                for o in s.state.sessions.list_objects(bucket.as_deref(), 100_000).await? {
                    let md5 = o.md5.unwrap_or_else(|| "-".into());
                    println!(
                        "{:<20} {:>14} {:<32} {:>8}  {}",
                        o.bucket,
                        o.size,
                        md5,
                        human_age(now() - o.created_at),
                        o.object
                    );
                }
                Ok(())
            }
            ObjectsCmd::Rm {
                bucket,
                object,
                common,
            } => {
                let s = open(&common).await?;
                let Some(rec) = s.state.sessions.delete_object(&bucket, &object).await? else {
                    bail!("no object {bucket}/{object}")
                };
                if let Some(id) = BlobId::new(&rec.blob) {
                    s.blobs.delete(&id).await?;
                }
                eprintln!("upline: deleted {bucket}/{object} ({} bytes)", rec.size);
                Ok(())
            }
        }
    })
}

fn human_age(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
