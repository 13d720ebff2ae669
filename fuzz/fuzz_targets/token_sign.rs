//! sign(policy) → verify agreement, accepted re-spellings, one-byte
//! mutations that must not verify; the same for signed download URLs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: upline_fuzz::SignInput| upline_fuzz::token_sign(&input));
