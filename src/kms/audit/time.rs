//! Times in the trail: RFC 3339 in UTC as CloudTrail writes them (through
//! `kms::clock`), and the looser forms `audit show --since/--until` take.
#![forbid(unsafe_code)]

use crate::kms::clock;

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format(epoch: i64) -> String {
    clock::format_rfc3339(epoch)
}

/// `parse_at` against the clock (`kms::clock`, which tests can set).
pub fn parse(s: &str) -> Option<i64> {
    parse_at(s, clock::now().ok()?)
}

/// Parses RFC 3339, or `YYYY-MM-DD` (midnight UTC), or `YYYY-MM-DD HH:MM`
/// / `YYYY-MM-DDTHH:MM[:SS]` (UTC), or seconds since the epoch, or a time
/// before `now`: a number and a unit, `90s`, `30m`, `1h`, `2d`, `1w`.
pub fn parse_at(s: &str, now: i64) -> Option<i64> {
    let s = s.trim();
    if let Some(unit) = s.chars().last().filter(|c| "smhdw".contains(*c))
        && let Ok(n) = s[..s.len() - 1].parse::<u32>()
    {
        let per: i64 = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            _ => 604_800,
        };
        return now.checked_sub(i64::from(n) * per);
    }
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
        let now = 1_796_172_177;
        assert_eq!(parse_at("1h", now), Some(now - 3_600));
        assert_eq!(parse_at("90s", now), Some(now - 90));
        assert_eq!(parse_at("30m", now), Some(now - 1_800));
        assert_eq!(parse_at("2d", now), Some(now - 172_800));
        assert_eq!(parse_at("1w", now), Some(now - 604_800));
        for bad in ["h", "-1h", "1y", "1.5h", "1 h"] {
            assert_eq!(parse_at(bad, now), None, "{bad}");
        }
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
