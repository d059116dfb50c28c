//! The encryption-context parser (EncryptionContext::parse) and its canonical encoding.
//! Properties: tests/fuzz_support/mod.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_support/mod.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::context(data));
