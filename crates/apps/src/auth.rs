//! The original service's server-API authentication: headers `AppKey`,
//! `Nonce`, `CurTime` (unix seconds) and `CheckSum` = lowercase hex
//! SHA1(AppSecret + Nonce + CurTime).

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// How far `CurTime` may be from the server's clock, and how long a Nonce
/// is remembered: a request replayed later than this is refused by time.
pub const WINDOW_SECS: i64 = 300;

/// The four authentication headers of one request.
#[derive(Debug, Clone, Default)]
pub struct AuthHeaders {
    pub app_key: Option<String>,
    pub nonce: Option<String>,
    pub cur_time: Option<String>,
    pub check_sum: Option<String>,
}

/// `hex(sha1(secret + nonce + cur_time))`, as the app computes it.
pub fn check_sum(secret: &str, nonce: &str, cur_time: &str) -> String {
    let mut h = Sha1::new();
    h.update(secret.as_bytes());
    h.update(nonce.as_bytes());
    h.update(cur_time.as_bytes());
    hex::encode(h.finalize())
}

/// Whether `given` is the CheckSum, compared in constant time (case-insensitive hex).
pub fn check_sum_matches(secret: &str, nonce: &str, cur_time: &str, given: &str) -> bool {
    let want = check_sum(secret, nonce, cur_time);
    let given = given.trim().to_ascii_lowercase();
    want.as_bytes().ct_eq(given.as_bytes()).into()
}

/// Parses `CurTime` and checks it is within the window of `now`.
pub fn fresh_time(cur_time: &str, now: i64) -> Option<i64> {
    let t: i64 = cur_time.trim().parse().ok()?;
    ((t - now).abs() <= WINDOW_SECS).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector_and_comparison() {
        // sha1("secret" + "nonce" + "1700000000")
        let sum = check_sum("secret", "nonce", "1700000000");
        assert_eq!(sum.len(), 40);
        let mut h = Sha1::new();
        h.update(b"secretnonce1700000000");
        assert_eq!(sum, hex::encode(h.finalize()));
        assert!(check_sum_matches(
            "secret",
            "nonce",
            "1700000000",
            &sum.to_uppercase()
        ));
        assert!(!check_sum_matches("secret", "nonce", "1700000001", &sum));
        assert!(!check_sum_matches("secret", "nonce", "1700000000", ""));
    }

    #[test]
    fn time_window() {
        assert_eq!(fresh_time("1000", 1300), Some(1000));
        assert_eq!(fresh_time("1000", 1301), None);
        assert_eq!(fresh_time("1301", 1000), None);
        assert_eq!(fresh_time("abc", 1000), None);
    }
}
