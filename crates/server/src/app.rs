//! Building a node from its configuration and serving it.
//!
//! [`App::build`] opens the stores, recovers them and binds the listener;
//! [`App::run`] serves until a shutdown future resolves. Tests and `main`
//! drive the same two calls (the mini-redis pattern), tests on port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;
use upline_apps::{AppConfig, AppService, Sealer};
use upline_core::{Config, Keyring, Node};
use upline_state::{NodeInfo, NodeRegistry};

use crate::backends::{StateBackend, StorageBackend};

use crate::config::{Role, ServerConfig};
use crate::handlers::{self, ConnInfo};
use crate::render::RequestId;
use crate::routes::Endpoint;

/// Why a node could not start. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot use data directory {path} (pass --data-dir or UPLINE_DATA_DIR with a writable directory)"
    )]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Backend(#[from] crate::backends::BackendUrlError),
    #[error(
        "no credentials configured (set UPLINE_ACCESS_KEY and UPLINE_SECRET_KEY, or [[credentials]] in the config file)"
    )]
    NoCredentials,
    #[error("invalid CORS origin {0:?} (write origins as scheme://host[:port])")]
    CorsOrigin(String),
    #[error("invalid public URL {0:?} (write it as http://host[:port] or https://host[:port])")]
    PublicUrl(String),
    #[error("cannot listen on {addr} (pick another --listen address)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("recovery of the stores failed")]
    Recover(#[source] upline_core::CoreError),
    #[error("cannot build the callback HTTP client")]
    Http(#[source] reqwest::Error),
    #[error(transparent)]
    MasterKey(#[from] crate::secrets::KeyError),
    #[error(transparent)]
    DataDirClaim(#[from] crate::datadir::ClaimError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Threads for blocking file work (writes, fsyncs, SQLite) a node's runtime
/// should allow. Tokio's default, 512, let 256 concurrent uploads grow the
/// pool to 509 threads and the node's RSS by ~120 MiB (thread stacks and
/// allocator arenas); a disk does not get faster past a few dozen
/// outstanding writes, so further work queues instead.
pub const BLOCKING_THREADS: usize = 64;

/// The most a connection buffers of a request before the handler takes it
/// (hyper's default is ~400 KiB): with hundreds of uploads at once this
/// buffer, not the upload path, was most of the node's memory.
const CONN_READ_BUFFER: usize = 64 * 1024;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub node: Arc<Node>,
    pub apps: Arc<AppService>,
    /// The registry the LBS lists upload nodes from.
    pub nodes: Arc<dyn NodeRegistry>,
    /// This process's id in the registry.
    pub node_id: String,
    /// The URL clients reach this node by.
    pub base_url: String,
    /// The LBS's view of the registry, refreshed at most every 250 ms.
    pub live_nodes: Arc<handlers::NodeCache>,
    pub cfg: Arc<ServerConfig>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The resume-point query's rate limits.
    pub throttle: Arc<crate::throttle::QueryThrottle>,
}

/// A built node, bound and ready to serve.
pub struct App {
    listener: TcpListener,
    state: AppState,
    router: Router,
    notifier: Arc<crate::callback::HttpCallbacks>,
    tls: Option<Arc<crate::tls::TlsCerts>>,
    /// Held while the node runs (an upload node only).
    _claim: Option<crate::datadir::DataDirClaim>,
}

/// Unix time in seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl App {
    /// Opens the stores under the data directory, recovers them, binds.
    pub async fn build(cfg: ServerConfig) -> Result<App, StartError> {
        if cfg.credentials.is_empty() {
            return Err(StartError::NoCredentials);
        }
        if let Some(url) = &cfg.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(StartError::PublicUrl(url.clone()));
        }
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: cfg.listen,
                source,
            })?;
        // Links this node hands out (origAddr) need the real port when
        // listening on port 0; set public_url when listening on 0.0.0.0.
        let bound = listener.local_addr().map_err(|source| StartError::Listen {
            addr: cfg.listen,
            source,
        })?;
        let tls = crate::tls::TlsCerts::from_config(&cfg)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base_url = cfg
            .public_url
            .clone()
            .map(|u| u.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("{scheme}://{bound}"));
        let data_err = |source| StartError::DataDir {
            path: cfg.data_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&cfg.data_dir).map_err(data_err)?;
        let claim = match cfg.role {
            Role::Node => Some(crate::datadir::claim(&cfg.data_dir)?),
            Role::Lbs => None,
        };
        let mut metrics = crate::metrics::Metrics::new();
        let blobs = StorageBackend::from_config(&cfg)?
            .open_observed(metrics.sync_observer())
            .await?;
        let stores = StateBackend::from_config(&cfg)?.open().await?;
        let keys = Keyring::new(
            cfg.credentials
                .iter()
                .map(|c| (c.access_key.clone(), c.secret_key.clone())),
        );
        let core_cfg = Config {
            lease_ms: 60_000,
            max_chunk: cfg.max_chunk,
            require_expires: cfg.require_expires,
            session_ttl: cfg.session_ttl_secs as i64,
            callback_timeout: Duration::from_secs(cfg.callback_timeout_secs),
            orphan_grace: Duration::from_secs(cfg.orphan_grace_secs),
        };
        let callbacks = Arc::new(
            crate::callback::HttpCallbacks::new(metrics.callback_outcomes()).map_err(StartError::Http)?,
        );
        let mut node = Node::new(blobs, stores.sessions.clone(), keys, callbacks.clone(), core_cfg);
        if let Some(c) = &claim {
            node = node.with_lease_owner(c.node_name.clone());
        }
        let node = Arc::new(node);
        metrics.watch(node.clone());
        let metrics = Arc::new(metrics);
        let sealer = Sealer::new(&crate::secrets::master_key(&cfg)?);
        let signing = (
            cfg.credentials[0].access_key.clone(),
            cfg.credentials[0].secret_key.clone(),
        );
        let app_cfg = AppConfig {
            token_ttl_secs: cfg.app_token_ttl_secs as i64,
            public_url: base_url.clone(),
            notify_for_secs: cfg.notify_for_secs as i64,
            notify_base_delay_secs: cfg.notify_base_delay_secs as i64,
            ..AppConfig::default()
        };
        let apps = Arc::new(AppService::new(
            stores.apps.clone(),
            stores.sessions.clone(),
            node.clone(),
            sealer,
            signing,
            app_cfg,
        ));
        let fixed = node.recover().await.map_err(StartError::Recover)?;
        if fixed > 0 {
            tracing::info!(fixed, "storage recovered after an unclean stop");
        }
        let cors = cors_layer(&cfg.cors_origins)?;
        let state = AppState {
            node,
            apps,
            nodes: stores.nodes,
            node_id: uuid::Uuid::new_v4().simple().to_string(),
            base_url,
            live_nodes: Arc::new(handlers::NodeCache::new(Duration::from_millis(250))),
            metrics,
            throttle: Arc::new(crate::throttle::QueryThrottle::new(
                cfg.query_rate_per_ip,
                cfg.query_rate_per_token,
            )),
            cfg: Arc::new(cfg),
        };
        let router = Router::new()
            .fallback(dispatch)
            .with_state(state.clone())
            .layer(cors);
        Ok(App {
            listener,
            state,
            router,
            notifier: callbacks,
            tls,
            _claim: claim,
        })
    }

    /// The certificate pair when TLS is on (tests reload it as SIGHUP does).
    pub fn tls(&self) -> Option<Arc<crate::tls::TlsCerts>> {
        self.tls.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// The upload rules behind this app (tests drive housekeeping with it).
    pub fn node(&self) -> Arc<Node> {
        self.state.node.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets
    /// requests in flight finish for at most `shutdown_grace_secs`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let cfg = self.state.cfg.clone();
        let mut background = Vec::new();
        if cfg.role == Role::Node {
            background.push(tokio::spawn(collect_forever(
                self.state.node.clone(),
                cfg.collect_interval_secs,
            )));
            background.push(tokio::spawn(app_worker(
                self.state.apps.clone(),
                self.notifier.clone(),
                cfg.worker_interval_ms,
            )));
            background.push(tokio::spawn(heartbeat_forever(self.state.clone())));
            background.push(tokio::spawn(scrub_once(
                self.state.node.clone(),
                cfg.verify_objects_at_start,
            )));
        }
        background.push(tokio::spawn(crate::throttle::forget_forever(
            self.state.throttle.clone(),
        )));
        if let Some(certs) = &self.tls {
            background.push(tokio::spawn(crate::tls::reload_on_sighup(certs.clone())));
        }
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(cfg.header_timeout_secs))
            .keep_alive(true)
            // No pipeline_flush: with it, hyper holds answers back while
            // pipelined bytes are buffered, and a malformed request among
            // them ends the connection with the held answers unsent (its
            // own 400/431 included). Pipelined answers still come in order.
            .max_buf_size(CONN_READ_BUFFER);
        let acceptor = crate::accept::Acceptor {
            builder,
            router: self.router.clone(),
            limit: crate::limits::ConnLimit::new(cfg.max_connections),
            tls: self.tls.as_ref().map(|c| c.acceptor()),
            handshake_timeout: Duration::from_secs(cfg.header_timeout_secs),
            body_idle: Duration::from_secs(cfg.body_idle_timeout_secs),
        };
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        tracing::info!(addr = %self.local_addr(), "serving");
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            acceptor.take(stream, peer, graceful.watcher());
        }
        drop(self.listener);
        for task in &background {
            task.abort();
        }
        for task in background {
            let _ = task.await;
        }
        if cfg.role == Role::Node
            && let Err(e) = self.state.nodes.remove_node(&self.state.node_id).await
        {
            tracing::warn!(error = %e, "could not leave the node registry");
        }
        let grace = Duration::from_secs(cfg.shutdown_grace_secs);
        tracing::info!(?grace, "shutting down: letting requests in flight finish");
        if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
            tracing::warn!("grace period over; closing the remaining connections");
        }
    }
}

/// Tells the registry this node is alive, with its load, every
/// `heartbeat_ms`; the LBS lists nodes by it.
async fn heartbeat_forever(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_millis(state.cfg.heartbeat_ms.max(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let me = NodeInfo {
            id: state.node_id.clone(),
            url: state.base_url.clone(),
            priority: state.cfg.priority,
            load: state.node.in_flight() as u64,
            heartbeat_ms: unix_now_ms(),
        };
        if let Err(e) = state.nodes.heartbeat(&me).await {
            tracing::warn!(error = %crate::render::chain(&e), "heartbeat failed");
        }
    }
}

/// Unix time in milliseconds.
pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Checks the published objects once, in the background after start (it
/// reads the whole object index; with `verify_md5`, every object's bytes).
async fn scrub_once(node: Arc<Node>, verify_md5: bool) {
    match node.scrub(verify_md5).await {
        Ok(s) => tracing::info!(
            objects = s.objects,
            md5_checked = s.md5_checked,
            quarantined = s.quarantined,
            missing = s.missing,
            unreferenced = s.unreferenced,
            "scrub of published objects done"
        ),
        Err(e) => tracing::error!(error = %crate::render::chain(&e), "scrub of published objects failed"),
    }
}

async fn collect_forever(node: Arc<Node>, every_secs: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(every_secs.max(1)));
    loop {
        tick.tick().await;
        match node.collect(unix_now()).await {
            Ok(c) if c.abandoned + c.finished + c.orphan_uploads > 0 => {
                tracing::info!(
                    abandoned = c.abandoned,
                    finished = c.finished,
                    orphan_uploads = c.orphan_uploads,
                    "idle sessions collected"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "collection failed"),
        }
    }
}

/// Notifications being sent at once by one node.
const DELIVERIES: usize = 16;

/// Turns logged completions into videos and sends due notifications, each
/// on its own task (at most [`DELIVERIES`] at once). They used to go one
/// after another in the worker's loop: an app whose endpoint hung held
/// every other app's notifications, and the completions, for its timeout
/// each (found in review).
async fn app_worker(apps: Arc<AppService>, notifier: Arc<crate::callback::HttpCallbacks>, every_ms: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(every_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sending = Arc::new(tokio::sync::Semaphore::new(DELIVERIES));
    loop {
        tick.tick().await;
        if let Err(e) = apps.process_completions(unix_now()).await {
            tracing::error!(error = %crate::render::chain(&e), "processing completions failed");
        }
        let free = sending.available_permits();
        if free == 0 {
            continue;
        }
        let due = match apps.claim_due(unix_now(), free).await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %crate::render::chain(&e), "claiming notifications failed");
                continue;
            }
        };
        for n in due {
            let Ok(permit) = sending.clone().try_acquire_owned() else {
                break; // not reached: as many claimed as permits were free
            };
            let (apps, notifier) = (apps.clone(), notifier.clone());
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = apps.deliver(&n, notifier.as_ref()).await {
                    tracing::error!(vid = n.vid, error = %crate::render::chain(&e), "delivering a notification failed");
                }
            });
        }
    }
}

fn cors_layer(origins: &[String]) -> Result<CorsLayer, StartError> {
    let allow = if origins.is_empty() {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| HeaderValue::from_str(o).map_err(|_| StartError::CorsOrigin(o.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::HEAD, Method::OPTIONS])
        // `range` and the download headers: a web player reads an object
        // in ranges from another origin (found in review: it could not).
        .allow_headers([
            HeaderName::from_static("x-nos-token"),
            HeaderName::from_static("content-md5"),
            HeaderName::from_static("content-type"),
            header::RANGE,
        ])
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            header::ETAG,
            header::CONTENT_RANGE,
            header::CONTENT_LENGTH,
            header::ACCEPT_RANGES,
            header::LAST_MODIFIED,
        ])
        .max_age(Duration::from_secs(86400)))
}

/// Every request: an id, a span carrying it, then its endpoint's handler.
async fn dispatch(State(app): State<AppState>, req: Request) -> Response {
    let rid = RequestId::new();
    let span = tracing::info_span!("request", id = %rid.0, method = %req.method(), path = %req.uri().path());
    async move {
        tracing::debug!("request received");
        let conn = req.extensions().get::<ConnInfo>().copied();
        let started = std::time::Instant::now();
        let endpoint = match Endpoint::parse(req.method(), req.uri()) {
            _ if crate::limits::uri_too_long(req.uri()) => Endpoint::UriTooLong,
            e @ (Endpoint::Health | Endpoint::Lbs(_) | Endpoint::Options | Endpoint::Metrics) => e,
            _ if app.cfg.role == Role::Lbs => Endpoint::NotFound,
            e => e,
        };
        let label = endpoint.label();
        let mut resp = match endpoint {
            Endpoint::Health => handlers::health(),
            Endpoint::Metrics => handlers::metrics(&app).await,
            Endpoint::Options => StatusCode::NO_CONTENT.into_response(),
            Endpoint::Lbs(params) => handlers::lbs(&app, params, conn).await,
            Endpoint::Stat => handlers::stat(req.into_body()).await,
            Endpoint::Upload(path, params) => handlers::upload(&app, &rid, path, params, req).await,
            Endpoint::Resume(path, params) => {
                let ip = conn.map(|c| c.peer.ip());
                match app.throttle.refuse(&rid, ip, req.headers()) {
                    Some(refusal) => refusal,
                    None => handlers::resume(&app, &rid, path, params, req.headers()).await,
                }
            }
            Endpoint::Download { path, head } => {
                let query = req.uri().query().unwrap_or("").to_owned();
                crate::download::handle(&app, &rid, path, head, &query, req.headers()).await
            }
            Endpoint::AppApi(call) => crate::appapi::handle(&app, call, req).await,
            Endpoint::Demo(call) => crate::demo::handle(&app, &rid, call, req).await,
            Endpoint::Refused(msg) => handlers::refused(&rid, StatusCode::BAD_REQUEST, msg),
            Endpoint::NotFound => handlers::refused(&rid, StatusCode::NOT_FOUND, "no such endpoint".into()),
            Endpoint::UriTooLong => handlers::refused(
                &rid,
                StatusCode::URI_TOO_LONG,
                format!("request line longer than {} bytes", crate::limits::MAX_URI),
            ),
        };
        if let Ok(v) = HeaderValue::from_str(&rid.0) {
            resp.headers_mut().insert("x-request-id", v);
        }
        app.metrics
            .request(label, resp.status().as_u16(), started.elapsed());
        resp
    }
    .instrument(span)
    .await
}
