//! Times in the trail: RFC 3339 in UTC as CloudTrail writes them (through
//! `kms::clock`), and the looser forms `audit show --since/--until` take.
#![forbid(unsafe_code)]

use crate::kms::clock;

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format(epoch: i64) -> String {
    clock::format_rfc3339(epoch)
}

/// Parses RFC 3339, or `YYYY-MM-DD` (midnight UTC), or `YYYY-MM-DD HH:MM`
/// / `YYYY-MM-DDTHH:MM[:SS]` (UTC), or seconds since the epoch.
pub fn parse(s: &str) -> Option<i64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    let full = match s.len() {
        10 => format!("{s}T00:00:00Z"),
        16 => format!("{s}:00Z"),
        19 => format!("{s}Z"),
        _ => s.to_string(),
    };
    clock::parse_rfc3339(&full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_accepted_and_refused() {
        assert_eq!(format(1_796_172_177), "2026-12-02T00:42:57Z");
        assert_eq!(parse("2026-12-02T00:42:57Z"), Some(1_796_172_177));
        assert_eq!(parse("2026-12-02"), Some(1_796_169_600));
        assert_eq!(parse("2026-12-02T01:42:57+01:00"), Some(1_796_172_177));
        assert_eq!(parse("2026-12-02 00:42"), Some(1_796_172_120));
        assert_eq!(parse("2026-12-02T00:42:57"), Some(1_796_172_177));
        assert_eq!(parse("1796172177"), Some(1_796_172_177));
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-12-02T25:00",
            "2026-12-02Tx",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
