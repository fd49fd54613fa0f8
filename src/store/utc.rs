//! Timestamps as the backend's SQLAlchemy stores a `DateTime`: UTC
//! `YYYY-MM-DD HH:MM:SS.ffffff` text, so rows written by the backend and by the worker compare
//! and sort alike.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The current time in UTC as `YYYY-MM-DD HH:MM:SS.ffffff`, the text SQLAlchemy stores for a
/// `DateTime`, so rows written by the backend and by the worker compare and sort alike.
pub fn utc_now() -> String {
    format_utc(SystemTime::now())
}

/// `t` in UTC as `YYYY-MM-DD HH:MM:SS.ffffff`.
pub(crate) fn format_utc(t: SystemTime) -> String {
    // Before 1970 only with a badly set clock; the epoch is as good an answer as any.
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let in_day = secs % 86_400;
    if year > 9999 {
        // Past what the fixed width holds (a clock set absurdly far ahead): keep every digit.
        return format!(
            "{year}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:06}",
            in_day / 3600,
            in_day % 3600 / 60,
            in_day % 60,
            since.subsec_micros()
        );
    }
    // Digit by digit rather than `format!`: this runs for every write transaction, and the
    // formatting machinery cost ten times as much (measured with callgrind).
    let mut out = String::with_capacity(26);
    for (value, width, then) in [
        (year, 4, '-'),
        (month, 2, '-'),
        (day, 2, ' '),
        (in_day / 3600, 2, ':'),
        (in_day % 3600 / 60, 2, ':'),
        (in_day % 60, 2, '.'),
        (u64::from(since.subsec_micros()), 6, '\0'),
    ] {
        push_digits(&mut out, value, width);
        if then != '\0' {
            out.push(then);
        }
    }
    out
}

/// Appends the last `width` decimal digits of `value`, zero-padded.
fn push_digits(out: &mut String, value: u64, width: u32) {
    for place in (0..width).rev() {
        let digit = value / 10u64.pow(place) % 10;
        // A digit is below 10, so it fits a u8.
        out.push(char::from(b'0' + digit as u8));
    }
}

/// Year, month, day of the `days`-th day after 1970-01-01 in the proleptic Gregorian calendar.
/// Howard Hinnant's `civil_from_days`, restricted to days on or after the epoch so it stays in
/// unsigned arithmetic: shift to an era starting 0000-03-01, so the leap day ends each year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1, [0, 365]
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn utc_now_has_the_sqlalchemy_datetime_shape() {
        let before = format_utc(SystemTime::now());
        let now = utc_now();
        let after = format_utc(SystemTime::now());
        assert!(before <= now && now <= after, "{before} {now} {after}");
        assert_eq!(now.len(), 26, "{now}");
        for (i, c) in now.char_indices() {
            match i {
                4 | 7 => assert_eq!(c, '-', "{now}"),
                10 => assert_eq!(c, ' ', "{now}"),
                13 | 16 => assert_eq!(c, ':', "{now}"),
                19 => assert_eq!(c, '.', "{now}"),
                _ => assert!(c.is_ascii_digit(), "{now}"),
            }
        }
    }

    #[test]
    fn format_utc_matches_known_instants() {
        check_utc(0, 0, "1970-01-01 00:00:00.000000");
        check_utc(951_782_400, 0, "2000-02-29 00:00:00.000000");
        check_utc(951_868_799, 999_999_999, "2000-02-29 23:59:59.999999");
        check_utc(1_000_000_000, 123_456_000, "2001-09-09 01:46:40.123456");
        check_utc(1_709_251_199, 1_000, "2024-02-29 23:59:59.000001");
        check_utc(4_102_444_800, 0, "2100-01-01 00:00:00.000000");
        check_utc(4_107_542_400, 0, "2100-03-01 00:00:00.000000");
        check_utc(253_402_300_799, 0, "9999-12-31 23:59:59.000000");
        let before_epoch = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(format_utc(before_epoch), "1970-01-01 00:00:00.000000");
    }

    proptest! {
        /// `stale_provisioning` compares `updated_at` as text, which must order like time.
        #[test]
        fn format_utc_text_order_is_time_order(
            a in 0..253_402_300_800u64, b in 0..253_402_300_800u64,
            na in 0..1_000_000_000u32, nb in 0..1_000_000_000u32,
        ) {
            let ta = UNIX_EPOCH + Duration::new(a, na);
            let tb = UNIX_EPOCH + Duration::new(b, nb);
            let (fa, fb) = (format_utc(ta), format_utc(tb));
            // Equal at microsecond precision is the only way the texts may tie.
            let (ma, mb) = (u128::from(a) * 1_000_000 + u128::from(na / 1000),
                            u128::from(b) * 1_000_000 + u128::from(nb / 1000));
            prop_assert_eq!(fa.cmp(&fb), ma.cmp(&mb), "{} vs {}", fa, fb);
        }
    }

    fn check_utc(secs: u64, nanos: u32, expected: &str) {
        assert_eq!(
            format_utc(UNIX_EPOCH + Duration::new(secs, nanos)),
            expected,
            "{secs}.{nanos:09}"
        );
    }
}
