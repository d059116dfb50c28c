//! Key policy JSON (KeyPolicy::parse), its evaluation compared with an independent reading.
//! Properties: tests/fuzz_support/mod.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_support/mod.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::policy(data));
