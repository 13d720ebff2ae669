//! `POST /app/vod/...`: the app backend's API. Answers are always HTTP 200
//! with the outcome in the body, `{"code":200,"msg":"","ret":...}` or
//! `{"code":403|414|500,"msg":"..."}`, as the original service's server API
//! does — a backend written for it reads `code`, not the status line.

use axum::Json;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use upline_apps::{ApiError, AuthHeaders, InitRequest};

use crate::app::{AppState, unix_now};
use crate::routes::AppCall;

/// Bodies of the app API are small JSON documents.
const MAX_BODY: usize = 64 * 1024;

#[derive(Deserialize)]
struct QueryBody {
    #[serde(rename = "objectNames")]
    object_names: Vec<String>,
}

#[derive(Deserialize)]
struct SetCallbackBody {
    #[serde(rename = "callbackUrl")]
    callback_url: String,
    #[serde(rename = "signKey")]
    sign_key: Option<String>,
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::Param(format!("invalid JSON body: {e}")))
}

pub async fn handle(app: &AppState, call: AppCall, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let auth = AuthHeaders {
        app_key: header(&parts.headers, "appkey"),
        nonce: header(&parts.headers, "nonce"),
        cur_time: header(&parts.headers, "curtime"),
        check_sum: header(&parts.headers, "checksum"),
    };
    let result = async {
        let body = axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|_| ApiError::Param(format!("the body must be JSON of at most {MAX_BODY} bytes")))?;
        let now = unix_now();
        let caller = app.apps.authenticate(&auth, now).await?;
        let ret = match call {
            AppCall::Init => {
                serde_json::to_value(app.apps.init(&caller, &parse::<InitRequest>(&body)?, now)?)
            }
            AppCall::Query => {
                let q: QueryBody = parse(&body)?;
                let list: Vec<_> = app
                    .apps
                    .query(&caller, &q.object_names)
                    .await?
                    .into_iter()
                    .map(|(object, vid)| serde_json::json!({"objectName": object, "vid": vid}))
                    .collect();
                Ok(serde_json::json!({ "list": list }))
            }
            AppCall::SetCallback => {
                let b: SetCallbackBody = parse(&body)?;
                app.apps
                    .set_callback(&caller, &b.callback_url, b.sign_key.as_deref())
                    .await?;
                Ok(serde_json::json!({}))
            }
        };
        ret.map_err(ApiError::internal)
    }
    .await;
    match result {
        Ok(ret) => Json(serde_json::json!({"code": 200, "msg": "", "ret": ret})).into_response(),
        Err(e) => {
            if e.code() >= 500 {
                tracing::error!(error = %crate::render::chain(&e), "app API call failed");
            } else {
                tracing::info!(code = e.code(), reason = %e, "app API call refused");
            }
            Json(serde_json::json!({"code": e.code(), "msg": e.to_string()})).into_response()
        }
    }
}
