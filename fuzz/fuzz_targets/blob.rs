//! The ciphertext blob (kms::blob): BlobHeader::parse and Decrypt by a real keystore.
//! Input layout and properties: tests/fuzz_support/mod.rs.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_support/mod.rs"]
mod checks;

static FIXTURE: OnceLock<checks::Fixture> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    checks::blob(FIXTURE.get_or_init(checks::Fixture::new), data);
});
