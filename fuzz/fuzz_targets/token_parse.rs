//! Raw `x-nos-token` values: split, round-trip, verification and
//! Content-MD5 decoding against the reference.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        // A fixed "now" between common Expires values.
        upline_fuzz::token_raw(s, 1_700_000_000);
    }
});
