//! Rate limits of the resume-point query, per client IP and per token.
//!
//! The query is the one call a client makes with nothing but a guess (a
//! context) and answers whether the guess exists, so it is where guessing
//! would happen. Contexts carry 192 random bits; the limits make a guess
//! cost time as well (see RELIABILITY.md for the arithmetic). A client
//! resumes with one query, so honest clients never meet the limits.
//!
//! GCRA limiters from `governor`, keyed by the TCP peer's address (an IPv6
//! client by its /64: one machine gets a whole /64) and by a hash of the
//! `x-nos-token` text, with a random per-process key (so no one can aim
//! two tokens at one bucket). The IP is checked first, before the token is
//! even hashed; refused queries get `429` with `Retry-After`. Idle keys are
//! dropped every minute.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use upline_proto::ErrorBody;

use crate::render::RequestId;

/// The query limits of one node.
pub struct QueryThrottle {
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_token: Option<DefaultKeyedRateLimiter<u64>>,
    hasher: RandomState,
    clock: DefaultClock,
}

/// Which limit refused a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Ip,
    Token,
}

impl QueryThrottle {
    /// Limits of `per_ip` and `per_token` queries a second (each also the
    /// burst); 0 turns one off.
    pub fn new(per_ip: u32, per_token: u32) -> Self {
        Self {
            per_ip: NonZeroU32::new(per_ip).map(|n| DefaultKeyedRateLimiter::dashmap(Quota::per_second(n))),
            per_token: NonZeroU32::new(per_token)
                .map(|n| DefaultKeyedRateLimiter::dashmap(Quota::per_second(n))),
            hasher: RandomState::new(),
            clock: DefaultClock::default(),
        }
    }

    /// Counts one query; `Err` says which limit refused it and when the
    /// next one would pass.
    pub fn check(&self, ip: Option<IpAddr>, token: Option<&[u8]>) -> Result<(), (Limit, Duration)> {
        if let (Some(l), Some(ip)) = (&self.per_ip, ip) {
            l.check_key(&client_key(ip))
                .map_err(|n| (Limit::Ip, n.wait_time_from(self.clock.now())))?;
        }
        if let (Some(l), Some(t)) = (&self.per_token, token) {
            l.check_key(&self.hasher.hash_one(t))
                .map_err(|n| (Limit::Token, n.wait_time_from(self.clock.now())))?;
        }
        Ok(())
    }

    /// Forgets keys whose limits are full again (memory stays bounded by
    /// the clients of the last second or so).
    pub fn forget_idle(&self) {
        for l in self.per_ip.iter() {
            l.retain_recent();
            l.shrink_to_fit();
        }
        for l in self.per_token.iter() {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Checks a query; the `429` to send when it is over a limit.
    pub fn refuse(&self, rid: &RequestId, ip: Option<IpAddr>, h: &HeaderMap) -> Option<Response> {
        let token = h.get(upline_proto::TOKEN_HEADER).map(HeaderValue::as_bytes);
        let (limit, wait) = self.check(ip, token).err()?;
        let who = match limit {
            Limit::Ip => "this address",
            Limit::Token => "this token",
        };
        tracing::info!(status = 429, ?limit, "query refused: rate limit");
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut resp = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(ErrorBody::new(
                &rid.0,
                format!("too many resume-point queries from {who}; retry in {secs} s"),
            )),
        )
            .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        Some(resp)
    }
}

/// The key of a client address: IPv4 as is, IPv6 by its /64 (an IPv4
/// address mapped into IPv6 counts as the IPv4 one).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Drops idle keys every minute, for as long as the node runs.
pub async fn forget_forever(t: std::sync::Arc<QueryThrottle>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        t.forget_idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_counts_its_own_key() {
        let t = QueryThrottle::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(t.check(Some(a), Some(b"t1")).is_ok());
        assert!(t.check(Some(a), Some(b"t1")).is_ok());
        assert_eq!(t.check(Some(a), Some(b"t1")).unwrap_err().0, Limit::Token);
        // The IP's third query was counted before the token refused it.
        assert_eq!(t.check(Some(a), Some(b"t2")).unwrap_err().0, Limit::Ip);
        assert!(t.check(Some(b), Some(b"t2")).is_ok());
        let (_, wait) = t.check(Some(b), Some(b"t1")).unwrap_err();
        assert!(wait <= Duration::from_secs(1));
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let t = QueryThrottle::new(1, 0);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(t.check(Some(a), None).is_ok());
        assert!(t.check(Some(b), None).is_err());
        assert!(t.check(Some(c), None).is_ok());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(t.check(Some(mapped), None).is_ok());
        assert!(t.check(Some("10.0.0.1".parse().unwrap()), None).is_err());
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let t = QueryThrottle::new(0, 0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..1000 {
            assert!(t.check(Some(a), Some(b"t")).is_ok());
        }
    }
}
