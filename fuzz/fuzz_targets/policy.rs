//! Put policies: JSON round-trip and field agreement, MimeLimit and
//! scope checks against the reference.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: upline_fuzz::PolicyInput| upline_fuzz::policy(&input));
