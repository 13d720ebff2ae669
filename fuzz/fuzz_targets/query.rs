//! Query strings of the upload, resume and LBS endpoints against a
//! form_urlencoded reference, and render → parse round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: upline_fuzz::QueryInput| upline_fuzz::query(&input));
