//! `/{bucket}/{object}` decoding against a hand-written decoder,
//! decode(encode(x)) == x, and token scope per decoded path.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: upline_fuzz::PathInput| upline_fuzz::path(&input));
