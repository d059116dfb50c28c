//! The file header parser (format::Header::decode) and, with the ALT flag, whole sealed files read through envelope::EncryptedFile.
//! Input layout and properties: tests/fuzz_support/mod.rs.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_support/mod.rs"]
mod checks;

static FIXTURE: OnceLock<checks::Fixture> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    checks::header(FIXTURE.get_or_init(checks::Fixture::new), data);
});
