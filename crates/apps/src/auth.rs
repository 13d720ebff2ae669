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

/// Parses `CurTime` and checks it is within the window of `now` (without
/// overflow: `i64::MIN` used to panic in a debug build).
pub fn fresh_time(cur_time: &str, now: i64) -> Option<i64> {
    let t: i64 = cur_time.trim().parse().ok()?;
    (t.abs_diff(now) <= WINDOW_SECS as u64).then_some(t)
}

/// Nonces seen at or after this time are kept. A request accepted at
/// server time `t0` carries a `CurTime` up to the window ahead of `t0`, and
/// stays fresh until that `CurTime` plus the window: up to `t0` plus twice
/// the window. Keeping nonces for one window only let a request whose
/// app's clock ran ahead be replayed (found in review).
pub fn nonces_kept_since(now: i64) -> i64 {
    now - 2 * WINDOW_SECS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_kept_while_its_request_could_be_replayed() {
        let first = 1_700_000_000;
        for skew in [-300, -1, 0, 1, 299, 300] {
            let cur = (first + skew).to_string();
            assert!(fresh_time(&cur, first).is_some());
            for later in first..first + 1000 {
                if fresh_time(&cur, later).is_some() {
                    assert!(
                        nonces_kept_since(later) <= first,
                        "a replay {} s later of a request {skew} s ahead found its nonce gone",
                        later - first
                    );
                }
            }
        }
        assert_eq!(fresh_time(&i64::MIN.to_string(), first), None);
        assert_eq!(fresh_time(&i64::MAX.to_string(), first), None);
    }

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
