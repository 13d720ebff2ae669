//! Requests parsed into typed endpoints before any handler runs.
//!
//! Routing is by hand rather than by a router's path patterns because the
//! object name is everything after the bucket, decoded by the protocol's
//! own rules (`+` is a space, `%2F` a slash), which no router does.

use axum::http::{Method, Uri};
use upline_proto::{LbsParams, ObjectPath, QueryError, ResumeParams, UploadParams};

/// The calls of the app backend's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppCall {
    Init,
    Query,
    SetCallback,
}

/// What a request asks for.
#[derive(Debug)]
pub enum Endpoint {
    Health,
    /// `GET /metrics`: Prometheus text exposition.
    Metrics,
    /// `OPTIONS` that is not a CORS preflight (those never get here).
    Options,
    Lbs(Result<LbsParams, QueryError>),
    Stat,
    Upload(ObjectPath, UploadParams),
    Resume(ObjectPath, ResumeParams),
    /// `GET`/`HEAD` of a published object (`head` for HEAD).
    Download {
        path: ObjectPath,
        head: bool,
    },
    /// The app backend's API (`POST /app/vod/...`).
    AppApi(AppCall),
    /// The demo page and its token endpoint (served only while the demo is on).
    Demo(crate::demo::DemoCall),
    /// A request the protocol knows but refuses (400, with this message).
    Refused(String),
    NotFound,
    /// A path and query longer than `limits::MAX_URI` (414).
    UriTooLong,
}

impl Endpoint {
    pub fn parse(method: &Method, uri: &Uri) -> Endpoint {
        let path = uri.path();
        let query = uri.query().unwrap_or("");
        let has_offset = || query.split('&').any(|p| p.starts_with("offset="));
        if let Some(call) = crate::demo::DemoCall::parse(method, path, has_offset()) {
            return Endpoint::Demo(call);
        }
        match (method, path) {
            (&Method::GET | &Method::HEAD, "/healthz") => Endpoint::Health,
            (&Method::GET, "/metrics") => Endpoint::Metrics,
            (&Method::OPTIONS, _) => Endpoint::Options,
            (&Method::GET, "/lbs") => Endpoint::Lbs(LbsParams::parse(query)),
            // The mobile SDKs' statistics; "stat/sdk" is then no upload path.
            (&Method::POST, "/stat/sdk") if !has_offset() => Endpoint::Stat,
            // The app API shares the path space with bucket "app"; a chunk
            // upload always has an offset, an API call never.
            (&Method::POST, "/app/vod/upload/init") if !has_offset() => Endpoint::AppApi(AppCall::Init),
            (&Method::POST, "/app/vod/video/query") if !has_offset() => Endpoint::AppApi(AppCall::Query),
            (&Method::POST, "/app/vod/callback/setUrl") if !has_offset() => {
                Endpoint::AppApi(AppCall::SetCallback)
            }
            (&Method::POST, _) => Self::object(path, |p| {
                UploadParams::parse(query).map(|q| Endpoint::Upload(p, q))
            }),
            (&Method::GET, _) if is_resume(query) => Self::object(path, |p| {
                ResumeParams::parse(query).map(|q| Endpoint::Resume(p, q))
            }),
            (&Method::GET | &Method::HEAD, _) if path.matches('/').count() >= 2 => {
                match ObjectPath::parse(path) {
                    Ok(p) => Endpoint::Download {
                        path: p,
                        head: method == Method::HEAD,
                    },
                    Err(e) => Endpoint::Refused(e.to_string()),
                }
            }
            _ => Endpoint::NotFound,
        }
    }

    /// The endpoint's name in metrics (a fixed set: never a path).
    pub fn label(&self) -> &'static str {
        match self {
            Endpoint::Health => "health",
            Endpoint::Metrics => "metrics",
            Endpoint::Options => "options",
            Endpoint::Lbs(_) => "lbs",
            Endpoint::Stat => "stat",
            Endpoint::Upload(..) => "upload",
            Endpoint::Resume(..) => "query",
            Endpoint::Download { .. } => "download",
            Endpoint::AppApi(_) => "app_api",
            Endpoint::Demo(_) => "demo",
            Endpoint::Refused(_) | Endpoint::UriTooLong => "refused",
            Endpoint::NotFound => "not_found",
        }
    }

    /// Parses the query first (rule 1), then the path.
    fn object(path: &str, with: impl FnOnce(ObjectPath) -> Result<Endpoint, QueryError>) -> Endpoint {
        match ObjectPath::parse(path) {
            Ok(p) => with(p).unwrap_or_else(|e| Endpoint::Refused(e.to_string())),
            Err(e) => Endpoint::Refused(e.to_string()),
        }
    }
}

fn is_resume(query: &str) -> bool {
    query
        .split('&')
        .any(|p| p == "uploadContext" || p.starts_with("uploadContext="))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(m: Method, uri: &str) -> Endpoint {
        Endpoint::parse(&m, &uri.parse().unwrap())
    }

    #[test]
    fn endpoints() {
        assert!(matches!(parse(Method::GET, "/healthz"), Endpoint::Health));
        assert!(matches!(
            parse(Method::GET, "/lbs?version=1.0&bucketname=doc"),
            Endpoint::Lbs(Ok(_))
        ));
        assert!(matches!(parse(Method::GET, "/lbs"), Endpoint::Lbs(Err(_))));
        assert!(matches!(
            parse(Method::POST, "/stat/sdk?version=1.0"),
            Endpoint::Stat
        ));
        assert!(matches!(
            parse(Method::POST, "/stat/sdk?offset=0&complete=true&version=1.0"),
            Endpoint::Upload(..)
        ));
        assert!(matches!(
            parse(Method::POST, "/doc/a%2Fb+c?version=1.0&complete=false&offset=0"),
            Endpoint::Upload(p, _) if p.object.as_str() == "a/b c"
        ));
        assert!(matches!(
            parse(Method::GET, "/doc/x?uploadContext&context=c&version=1.0"),
            Endpoint::Resume(..)
        ));
        assert!(matches!(
            parse(Method::GET, "/doc/x"),
            Endpoint::Download { head: false, .. }
        ));
        assert!(matches!(
            parse(Method::HEAD, "/doc/x?AccessKey=a"),
            Endpoint::Download { head: true, .. }
        ));
        assert!(matches!(parse(Method::GET, "/doc/%zz"), Endpoint::Refused(_)));
        assert!(matches!(
            parse(Method::POST, "/app/vod/upload/init"),
            Endpoint::AppApi(AppCall::Init)
        ));
        assert!(matches!(
            parse(Method::POST, "/app/vod/video/query"),
            Endpoint::AppApi(AppCall::Query)
        ));
        assert!(matches!(
            parse(Method::POST, "/app/vod/callback/setUrl"),
            Endpoint::AppApi(AppCall::SetCallback)
        ));
        assert!(matches!(
            parse(
                Method::POST,
                "/app/vod/upload/init?offset=0&complete=true&version=1.0"
            ),
            Endpoint::Upload(..)
        ));
        assert!(matches!(
            parse(Method::POST, "/doc/x?offset=0"),
            Endpoint::Refused(_)
        ));
        assert!(matches!(
            parse(Method::POST, "/doc/a%zz?offset=0&complete=true&version=1.0"),
            Endpoint::Refused(_)
        ));
        assert!(matches!(parse(Method::DELETE, "/doc/x"), Endpoint::NotFound));
        assert!(matches!(parse(Method::GET, "/"), Endpoint::NotFound));
    }
}
