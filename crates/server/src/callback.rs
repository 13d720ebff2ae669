//! Completion callbacks over HTTP(S), with reqwest (rustls, no redirects).

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use upline_proto::callback::CallbackBody;

use crate::metrics::CallbackOutcomes;

/// The largest callback answer kept for `callbackRetMsg`.
const MAX_ANSWER: usize = 64 * 1024;

/// A [`upline_core::CallbackSender`] over reqwest.
#[derive(Clone)]
pub struct HttpCallbacks {
    client: reqwest::Client,
    outcomes: CallbackOutcomes,
}

impl HttpCallbacks {
    pub fn new(outcomes: CallbackOutcomes) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("upline/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, outcomes })
    }
}

#[async_trait::async_trait]
impl upline_core::CallbackSender for HttpCallbacks {
    async fn post(&self, url: &str, body: &CallbackBody, timeout: Duration) -> Result<Bytes, String> {
        let call = async {
            let resp = self
                .client
                .post(url)
                .header(http::header::CONTENT_TYPE, body.content_type)
                .body(body.body.clone())
                .send()
                .await
                .map_err(|e| format!("callback request failed: {}", e.without_url()))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(format!("callback answered {status}"));
            }
            let mut answer = Vec::new();
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| format!("callback answer failed: {}", e.without_url()))?;
                if answer.len() + chunk.len() > MAX_ANSWER {
                    return Err(format!("callback answer larger than {MAX_ANSWER} bytes"));
                }
                answer.extend_from_slice(&chunk);
            }
            Ok(Bytes::from(answer))
        };
        let result = tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(format!("callback timed out after {timeout:?}")));
        self.outcomes.record("upload", result.is_ok());
        result
    }
}

#[async_trait::async_trait]
impl upline_apps::Notifier for HttpCallbacks {
    async fn notify(&self, url: &str, body: &str, sign: &str, timeout: Duration) -> Result<(), String> {
        let result = self.send_notification(url, body, sign, timeout).await;
        self.outcomes.record("notify", result.is_ok());
        result
    }
}

impl HttpCallbacks {
    async fn send_notification(
        &self,
        url: &str,
        body: &str,
        sign: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let resp = self
            .client
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("sign", sign)
            .body(body.to_owned())
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("notification request failed: {}", e.without_url()))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("notification answered {}", resp.status()))
        }
    }
}
