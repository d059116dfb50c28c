//! The one clock of the key service. In debug builds (what the test suite
//! builds) `KMSFS_TEST_NOW` (RFC 3339, e.g. `2030-01-01T00:00:00Z`) overrides
//! it: a testing aid for waiting periods, rotation and expiry, read here and
//! nowhere else. A release build always uses the real clock, so that nobody
//! can pass a deletion waiting period early by setting a variable; it warns
//! once when the variable is set.
#![forbid(unsafe_code)]

use super::KmsError;

/// Name of the environment variable that overrides the clock (debug builds).
pub const TEST_NOW_ENV: &str = "KMSFS_TEST_NOW";

/// True when this build honours `KMSFS_TEST_NOW` (debug builds only).
pub const HONOURS_TEST_NOW: bool = cfg!(debug_assertions);

/// Seconds since the Unix epoch: the real clock, or in debug builds
/// `KMSFS_TEST_NOW` when set.
pub fn now() -> Result<i64, KmsError> {
    now_with(std::env::var(TEST_NOW_ENV).ok())
}

/// `now` given the value of `KMSFS_TEST_NOW` (None: unset).
fn now_with(test_now: Option<String>) -> Result<i64, KmsError> {
    match test_now {
        Some(s) if HONOURS_TEST_NOW => parse_rfc3339(&s).ok_or_else(|| {
            KmsError::invalid(format!(
                "{TEST_NOW_ENV}={s:?} is not an RFC 3339 time such as 2030-01-01T00:00:00Z"
            ))
        }),
        Some(_) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                log::warn!(
                    "{TEST_NOW_ENV} is set but ignored: only debug builds (tests) honour it; \
                     this release build uses the real clock"
                );
            });
            Ok(real_now())
        }
        None => Ok(real_now()),
    }
}

fn real_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Days from the civil date to 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into epoch seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        rest = &r[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || rb[3] != b':' || !matches!(rb[0], b'+' | b'-') {
                return None;
            }
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let o = oh * 3600 + om * 60;
            if rb[0] == b'-' { -o } else { o }
        }
    };
    Some(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - offset)
}

/// Formats epoch seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(t: i64) -> String {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    // civil_from_days (Howard Hinnant).
    let z = days + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2030-01-01T00:00:00Z"), Some(1_893_456_000));
        assert_eq!(
            parse_rfc3339("2030-01-01T01:00:00+01:00"),
            Some(1_893_456_000)
        );
        assert_eq!(
            parse_rfc3339("2030-01-01T00:00:00.123Z"),
            Some(1_893_456_000)
        );
        assert_eq!(format_rfc3339(1_893_456_000), "2030-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        for t in [0i64, 86_399, 951_782_400, 4_102_444_800, 1_234_567_890] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t));
        }
    }

    /// The test clock in debug builds: `cargo test` (what scripts/test.sh runs).
    #[cfg(debug_assertions)]
    #[test]
    fn debug_builds_honour_the_test_clock() {
        let t = now_with(Some("2001-09-09T01:46:40Z".into())).unwrap();
        assert_eq!(t, 1_000_000_000);
        assert!(now_with(Some("soon".into())).is_err());
        assert!(now_with(None).unwrap() > 1_700_000_000);
    }

    /// A release build ignores it: runs under `cargo test --release --lib clock`.
    #[cfg(not(debug_assertions))]
    #[test]
    fn release_builds_ignore_the_test_clock() {
        for v in ["2001-09-09T01:46:40Z", "2099-01-01T00:00:00Z", "soon"] {
            let t = now_with(Some(v.into())).unwrap();
            assert!(t > 1_700_000_000 && t < 4_000_000_000, "{v}: {t}");
        }
    }

    #[test]
    fn refuses_garbage() {
        for s in [
            "",
            "yesterday",
            "2030-13-01T00:00:00Z",
            "2030-01-01 00:00",
            "2030-01-01T00:00:00",
        ] {
            assert_eq!(parse_rfc3339(s), None, "{s}");
        }
    }
}
