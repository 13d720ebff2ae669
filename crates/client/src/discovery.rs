//! Finding upload nodes: the LBS answer (best first), remembered, with the
//! LBS's own by-IP address kept for the next query — or a fixed list.

use std::sync::Mutex;
use std::time::Duration;

use crate::UploadError;
use crate::wire::{self, Reply};

/// Where upload nodes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// An LBS endpoint, e.g. `http://upload.example.com/lbs`.
    Lbs(String),
    /// Upload nodes tried in this order, no LBS.
    Nodes(Vec<String>),
}

/// The node list of one uploader, shared by its uploads.
pub(crate) struct Nodes {
    discovery: Discovery,
    /// The LBS address to ask next: the one the last answer gave, by IP.
    next_lbs: Mutex<Option<String>>,
    list: Mutex<Vec<String>>,
}

impl Nodes {
    pub(crate) fn new(discovery: Discovery) -> Self {
        let list = match &discovery {
            Discovery::Nodes(n) => n.clone(),
            Discovery::Lbs(_) => Vec::new(),
        };
        Self {
            discovery,
            next_lbs: Mutex::new(None),
            list: Mutex::new(list),
        }
    }

    /// The current list, asking the LBS first if there is none yet.
    pub(crate) async fn get(&self, http: &reqwest::Client, bucket: &str) -> Result<Vec<String>, UploadError> {
        let list = self.list.lock().expect("nodes poisoned").clone();
        if list.is_empty() {
            self.refresh(http, bucket).await
        } else {
            Ok(list)
        }
    }

    /// Asks the LBS again (a no-op for a fixed list): the remembered
    /// address first, then the configured one.
    pub(crate) async fn refresh(
        &self,
        http: &reqwest::Client,
        bucket: &str,
    ) -> Result<Vec<String>, UploadError> {
        let Discovery::Lbs(configured) = &self.discovery else {
            return Ok(self.list.lock().expect("nodes poisoned").clone());
        };
        let remembered = self.next_lbs.lock().expect("nodes poisoned").clone();
        let mut last = String::new();
        for url in remembered.iter().chain(std::iter::once(configured)) {
            match wire::lbs(http, url, bucket, Duration::from_secs(10)).await {
                Reply::Ok(answer) if !answer.upload.is_empty() => {
                    let nodes: Vec<String> = answer.upload.iter().map(|u| with_scheme(u)).collect();
                    *self.list.lock().expect("nodes poisoned") = nodes.clone();
                    if !answer.lbs.is_empty() {
                        *self.next_lbs.lock().expect("nodes poisoned") = Some(with_scheme(&answer.lbs));
                    }
                    return Ok(nodes);
                }
                Reply::Ok(_) => last = format!("{url} listed no upload node"),
                Reply::Status { status, message } => last = format!("{url} answered {status}: {message}"),
                Reply::Network { message, .. } => last = format!("{url}: {message}"),
            }
        }
        Err(UploadError::Discovery(last))
    }
}

/// Some LBS answers carry addresses without `http://`.
fn with_scheme(u: &str) -> String {
    let u = u.trim_end_matches('/');
    if u.starts_with("http://") || u.starts_with("https://") {
        u.to_owned()
    } else {
        format!("http://{u}")
    }
}
