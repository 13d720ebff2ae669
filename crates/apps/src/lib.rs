//! The app backend's side: apps and their credentials, the upload init API
//! (compatible with the original video service's server API), a numeric
//! `vid` per completed upload, and notifications to the app delivered at
//! least once through a persistent outbox.
//!
//! How completion reaches this layer: tokens minted by [`AppService::init`]
//! carry a tag (`x:upline` in the put policy) describing the upload; the
//! session store logs the completion of every tagged session in the very
//! transaction that completes it, and [`AppService::process_completions`]
//! turns each log entry into a video record and an outbox entry (again one
//! transaction, idempotent). Nothing depends on an HTTP call to ourselves,
//! so no crash can lose a completion.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use upline_core::Node;
use upline_proto::PutPolicy;
use upline_state::{AppRecord, AppStore, NewVideo, Notification, SessionStore};

pub mod auth;
mod error;
pub mod seal;

pub use auth::AuthHeaders;
pub use error::ApiError;
pub use seal::Sealer;

/// Sends a notification (an HTTP client in the server crate).
#[async_trait::async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// POSTs a JSON `body` with the `sign` header; `Ok` for a 2xx answer.
    async fn notify(&self, url: &str, body: &str, sign: &str, timeout: Duration) -> Result<(), String>;
}

/// Tunables of the app API.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Lifetime of the upload tokens `init` returns.
    pub token_ttl_secs: i64,
    /// Base URL of the objects, for `origAddr` in notifications.
    pub public_url: String,
    /// Give up on a notification this long after the upload completed.
    pub notify_for_secs: i64,
    /// First retry delay; doubles per attempt up to `notify_max_delay_secs`.
    pub notify_base_delay_secs: i64,
    pub notify_max_delay_secs: i64,
    pub notify_timeout: Duration,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            token_ttl_secs: 24 * 3600,
            public_url: "http://127.0.0.1:8080".into(),
            notify_for_secs: 24 * 3600,
            notify_base_delay_secs: 5,
            notify_max_delay_secs: 600,
            notify_timeout: Duration::from_secs(10),
        }
    }
}

/// What `init` remembers of an upload, inside the token's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadTag {
    pub app: String,
    pub orig: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub def: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
    pub at: i64,
}

/// The body of `POST /app/vod/upload/init`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    pub origin_file_name: Option<String>,
    pub user_file_name: Option<String>,
    pub type_id: Option<serde_json::Value>,
    pub preset_id: Option<serde_json::Value>,
    pub upload_callback_url: Option<String>,
    /// The original service's transcoding callback; upline does not
    /// transcode, so it is accepted and ignored.
    pub callback_url: Option<String>,
    pub description: Option<String>,
    pub watermark_id: Option<serde_json::Value>,
    pub user_def_info: Option<String>,
}

/// The `ret` of a successful init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitReply {
    pub x_nos_token: String,
    pub bucket: String,
    pub object: String,
}

/// The app API over the stores and the upload rules.
pub struct AppService {
    apps: Arc<dyn AppStore>,
    sessions: Arc<dyn SessionStore>,
    node: Arc<Node>,
    sealer: Sealer,
    /// The node credential init tokens are signed with.
    signing: (String, String),
    cfg: AppConfig,
}

/// A newly created app and its secret (shown once).
#[derive(Debug, Clone)]
pub struct NewApp {
    pub record: AppRecord,
    pub secret: String,
}

/// Creates an app: a random AppKey and AppSecret, the secret sealed.
pub async fn create_app(
    apps: &dyn AppStore,
    sealer: &Sealer,
    name: &str,
    bucket: Option<&str>,
    now: i64,
) -> Result<NewApp, ApiError> {
    let app_key = hex::encode(rand::random::<[u8; 16]>());
    let secret = hex::encode(rand::random::<[u8; 16]>());
    let bucket = match bucket {
        Some(b) => upline_proto::Bucket::parse(b)
            .map_err(|e| ApiError::Param(e.to_string()))?
            .to_string(),
        None => format!("vod{}", &app_key[..12]),
    };
    let record = AppRecord {
        app_key,
        name: name.to_owned(),
        secret_sealed: sealer.seal(secret.as_bytes()),
        bucket,
        callback_url: None,
        sign_key_sealed: None,
        created_at: now,
    };
    apps.create_app(&record).await?;
    Ok(NewApp { record, secret })
}

impl AppService {
    pub fn new(
        apps: Arc<dyn AppStore>,
        sessions: Arc<dyn SessionStore>,
        node: Arc<Node>,
        sealer: Sealer,
        signing: (String, String),
        cfg: AppConfig,
    ) -> Self {
        Self {
            apps,
            sessions,
            node,
            sealer,
            signing,
            cfg,
        }
    }

    /// Checks the four headers: known app, CurTime within 5 minutes, the
    /// CheckSum (constant time), then the Nonce unused in the window.
    pub async fn authenticate(&self, h: &AuthHeaders, now: i64) -> Result<AppRecord, ApiError> {
        let (Some(key), Some(nonce), Some(cur), Some(sum)) =
            (&h.app_key, &h.nonce, &h.cur_time, &h.check_sum)
        else {
            return Err(ApiError::Auth(
                "AppKey, Nonce, CurTime and CheckSum headers are required".into(),
            ));
        };
        let app = self
            .apps
            .get_app(key)
            .await?
            .ok_or_else(|| ApiError::Auth("unknown AppKey".into()))?;
        auth::fresh_time(cur, now)
            .ok_or_else(|| ApiError::Auth("CurTime is more than 5 minutes off".into()))?;
        let secret = self.open(&app.secret_sealed)?;
        if !auth::check_sum_matches(&secret, nonce, cur, sum) {
            return Err(ApiError::Auth("CheckSum does not match".into()));
        }
        if !self
            .apps
            .use_nonce(key, nonce, now, auth::nonces_kept_since(now))
            .await?
        {
            return Err(ApiError::Auth("Nonce already used".into()));
        }
        Ok(app)
    }

    fn open(&self, sealed: &[u8]) -> Result<String, ApiError> {
        let clear = self
            .sealer
            .open(sealed)
            .ok_or_else(|| ApiError::internal("an app secret does not open with this node's master key"))?;
        String::from_utf8(clear).map_err(ApiError::internal)
    }

    /// `upload/init`: a unique object name keeping the original extension,
    /// and an upload token for it in the app's bucket.
    pub fn init(&self, app: &AppRecord, req: &InitRequest, now: i64) -> Result<InitReply, ApiError> {
        let orig = req
            .origin_file_name
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| ApiError::Param("originFileName is required".into()))?;
        if let Some(url) = &req.upload_callback_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ApiError::Param(
                "uploadCallbackUrl must be an http or https URL".into(),
            ));
        }
        let object = format!("{}{}", uuid::Uuid::new_v4().simple(), extension(orig));
        let tag = UploadTag {
            app: app.app_key.clone(),
            orig: req
                .user_file_name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| orig.to_owned()),
            def: req.user_def_info.clone(),
            notify: req.upload_callback_url.clone(),
            at: now,
        };
        let policy = PutPolicy {
            bucket: app.bucket.clone(),
            object: object.clone(),
            expires: Some(now + self.cfg.token_ttl_secs),
            tag: Some(serde_json::to_string(&tag).expect("tags serialize")),
            ..Default::default()
        };
        let token = policy.sign(&self.signing.0, self.signing.1.as_bytes());
        Ok(InitReply {
            x_nos_token: token,
            bucket: app.bucket.clone(),
            object,
        })
    }

    /// `video/query`: the vids of the app's completed uploads by object name.
    pub async fn query(&self, app: &AppRecord, objects: &[String]) -> Result<Vec<(String, i64)>, ApiError> {
        if objects.is_empty() || objects.len() > 1000 {
            return Err(ApiError::Param("objectNames must list 1 to 1000 names".into()));
        }
        Ok(self.apps.videos_by_objects(&app.app_key, objects).await?)
    }

    /// `callback/setUrl`: where notifications go, and the key they are signed with.
    pub async fn set_callback(
        &self,
        app: &AppRecord,
        url: &str,
        sign_key: Option<&str>,
    ) -> Result<(), ApiError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ApiError::Param("callbackUrl must be an http or https URL".into()));
        }
        let sealed = sign_key
            .filter(|k| !k.is_empty())
            .map(|k| self.sealer.seal(k.as_bytes()));
        self.apps.set_app_callback(&app.app_key, url, sealed).await?;
        Ok(())
    }

    /// Turns logged completions into videos and queued notifications.
    /// Returns how many were handled. Safe to run again after a crash.
    pub async fn process_completions(&self, now: i64) -> Result<usize, ApiError> {
        let log = self.sessions.completions(64).await?;
        for (seq, session) in &log {
            if let Err(e) = self.record(session, now).await {
                tracing::error!(ctx = %session.ctx, error = %e, "recording a completed upload failed; will retry");
                return Err(e);
            }
            self.sessions.ack_completion(*seq).await?;
        }
        Ok(log.len())
    }

    async fn record(&self, session: &upline_state::Session, now: i64) -> Result<(), ApiError> {
        let Some(tag) = session
            .tag
            .as_deref()
            .and_then(|t| serde_json::from_str::<UploadTag>(t).ok())
        else {
            return Ok(()); // tagged by someone else: not ours
        };
        let Some(object) = self.node.object(&session.bucket, &session.object).await? else {
            return Ok(()); // deleted or replaced since; nothing to record
        };
        let md5 = if object.blob == session.ctx {
            self.node.object_md5_of(&object).await?
        } else {
            String::new()
        };
        let app = self.apps.get_app(&tag.app).await?;
        let notify = tag.notify.clone().or_else(|| app.and_then(|a| a.callback_url));
        let video = NewVideo {
            ctx: session.ctx.clone(),
            app_key: tag.app,
            bucket: session.bucket.clone(),
            object: session.object.clone(),
            size: session.offset,
            md5,
            content_type: session.content_type.clone(),
            orig_name: tag.orig,
            user_defined: tag.def,
            initiated_at: tag.at,
            completed_at: session.completed_at.unwrap_or(now),
        };
        let v = self.apps.record_video(video, notify.map(|u| (u, now))).await?;
        tracing::info!(vid = v.vid, object = %v.info.object, "upload recorded");
        Ok(())
    }

    /// The notification body of a video, and its `sign` header value.
    pub async fn notification(&self, vid: i64) -> Result<Option<(String, String)>, ApiError> {
        let Some(v) = self.apps.get_video(vid).await? else {
            return Ok(None);
        };
        let Some(app) = self.apps.get_app(&v.info.app_key).await? else {
            return Ok(None);
        };
        let body = serde_json::json!({
            "name": v.info.orig_name,
            "origAddr": format!("{}/{}/{}", self.cfg.public_url.trim_end_matches('/'), v.info.bucket, v.info.object),
            "type": "upload",
            "vid": v.vid,
            "user_defined": v.info.user_defined.clone().unwrap_or_default(),
            "size": v.info.size,
            "md5": v.info.md5,
        })
        .to_string();
        let key = match &app.sign_key_sealed {
            Some(sealed) => self.open(sealed)?,
            None => self.open(&app.secret_sealed)?,
        };
        Ok(Some((body.clone(), md5_hex(&format!("{body}{key}")))))
    }

    /// Claims up to `limit` notifications due at `now` for this node; each
    /// is then sent with [`Self::deliver`], on its own (see the claim in
    /// [`upline_state::AppStore::claim_due_notifications`]).
    pub async fn claim_due(&self, now: i64, limit: usize) -> Result<Vec<Notification>, ApiError> {
        // Long enough for one delivery to time out.
        let claim_until = now + self.cfg.notify_timeout.as_secs() as i64 + 60;
        Ok(self.apps.claim_due_notifications(now, claim_until, limit).await?)
    }

    /// Sends one claimed notification; a failure is rescheduled with
    /// exponential backoff until `notify_for_secs` after completion.
    /// Whether it was delivered.
    pub async fn deliver(&self, n: &Notification, notifier: &dyn Notifier) -> Result<bool, ApiError> {
        let Some((body, sign)) = self.notification(n.vid).await? else {
            self.apps
                .notification_failed(n.id, now_secs(), "video or app gone", true)
                .await?;
            return Ok(false);
        };
        let outcome = notifier
            .notify(&n.url, &body, &sign, self.cfg.notify_timeout)
            .await;
        // After the attempt, which may have taken the whole timeout.
        let now = now_secs();
        match outcome {
            Ok(()) => {
                self.apps.notification_delivered(n.id).await?;
                Ok(true)
            }
            Err(reason) => {
                let delay = (self.cfg.notify_base_delay_secs << n.attempts.min(30))
                    .min(self.cfg.notify_max_delay_secs);
                let give_up = now + delay > n.created_at + self.cfg.notify_for_secs;
                if give_up {
                    tracing::error!(vid = n.vid, %reason, "notification abandoned after retrying for the configured time");
                } else {
                    tracing::warn!(vid = n.vid, attempt = n.attempts + 1, %reason, "notification failed; will retry");
                }
                self.apps
                    .notification_failed(n.id, now + delay, &reason, give_up)
                    .await?;
                Ok(false)
            }
        }
    }
}

/// Seconds since the epoch.
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `.mp4` of `a.MP4`: the original extension, lower-cased, if it is a plain one.
fn extension(name: &str) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext))
            if !stem.is_empty()
                && (1..=10).contains(&ext.len())
                && ext.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            format!(".{}", ext.to_ascii_lowercase())
        }
        _ => String::new(),
    }
}

fn md5_hex(s: &str) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_kept_when_plain() {
        assert_eq!(extension("a.MP4"), ".mp4");
        assert_eq!(extension("movie.final.mkv"), ".mkv");
        assert_eq!(extension("noext"), "");
        assert_eq!(extension(".hidden"), "");
        assert_eq!(extension("a.b/c"), "");
        assert_eq!(extension("a.toolongextension"), "");
    }
}
