//! The size and offset arithmetic of the file format.
//! Properties: tests/fuzz_support/mod.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_support/mod.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::offsets(data));
