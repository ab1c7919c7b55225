//! Validators and ranges for file answers: weak ETag, HTTP dates, `If-None-Match`,
//! `If-Modified-Since`, `Range`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];

/// Weak ETag from size and modification time (nanoseconds too, so a rewrite within the same
/// second with the same size still changes it on file systems that keep them).
pub fn etag(size: u64, mtime: SystemTime) -> String {
    let d = mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("W/\"{size:x}-{:x}-{:x}\"", d.as_secs(), d.subsec_nanos())
}

/// `If-None-Match` (a list of tags or `*`) against `tag`, by weak comparison (RFC 9110 13.1.2).
pub fn none_match(header: &str, tag: &str) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let want = opaque(tag);
    header
        .split(',')
        .any(|t| t.trim() == "*" || opaque(t) == want)
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (IMF-fixdate).
pub fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    // Indexes in 0..7 and 0..12 (a weekday, a month): nothing to truncate.
    #[allow(clippy::cast_possible_truncation)]
    let (weekday, month) = (days.rem_euclid(7) as usize, (m - 1) as usize);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[weekday],
        MONTHS[month],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses IMF-fixdate only (what every current client sends); anything else is ignored by
/// the caller, which then answers in full, the safe choice.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let mut it = s.trim().split_ascii_whitespace();
    let _weekday = it.next()?.strip_suffix(',')?;
    let day: u32 = it.next()?.parse().ok()?;
    let month = it.next()?;
    let month = u32::try_from(MONTHS.iter().position(|m| *m == month)?).ok()? + 1;
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, mi, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if it.next()? != "GMT" || it.next().is_some() || day == 0 || day > 31 || h > 23 || mi > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days.checked_mul(86_400)? + i64::try_from(h * 3600 + mi * 60 + sec.min(60)).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Whether a file modified at `mtime` is unchanged since `header` (compared in whole
/// seconds, the resolution of an HTTP date).
pub fn not_modified_since(header: &str, mtime: SystemTime) -> bool {
    let Some(since) = parse_http_date(header) else {
        return false;
    };
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    secs(mtime) <= secs(since)
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// No usable single range (absent, multiple ranges, another unit, malformed): answer 200
    /// with the whole file, which RFC 9110 allows.
    Whole,
    /// Bytes `start..=end`: 206.
    Part { start: u64, end: u64 },
    /// A valid range entirely past the end: 416.
    Unsatisfiable,
}

pub fn range(header: Option<&str>, size: u64) -> RangeAsk {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let num = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.trim().is_empty(), num(first), num(last)) {
        // `-N`: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Part {
                    start: size.saturating_sub(n),
                    end: size - 1,
                }
            }
        }
        (false, Some(start), end) if last.trim().is_empty() || end.is_some() => {
            if end.is_some_and(|e| e < start) {
                return RangeAsk::Whole;
            }
            if start >= size {
                return RangeAsk::Unsatisfiable;
            }
            let end = end.map_or(size - 1, |e| e.min(size - 1));
            RangeAsk::Part { start, end }
        }
        _ => RangeAsk::Whole,
    }
}

// Howard Hinnant's civil calendar algorithms (also the access log's and OCSP responses' dates).
/// (year, month, day) of a count of days since 1970-01-01.
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (m, d) = (i64::from(month), i64::from(day));
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(t));
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let leap = UNIX_EPOCH + Duration::from_secs(1_709_164_800);
        assert_eq!(http_date(leap), "Thu, 29 Feb 2024 00:00:00 GMT");
        assert_eq!(parse_http_date(&http_date(leap)), Some(leap));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("garbage"), None);
    }

    #[test]
    fn conditionals() {
        let mtime = UNIX_EPOCH + Duration::new(1000, 500);
        let tag = etag(42, mtime);
        assert_eq!(tag, "W/\"2a-3e8-1f4\"");
        assert!(none_match(&tag, &tag));
        assert!(none_match("\"2a-3e8-1f4\"", &tag), "weak comparison");
        assert!(none_match("\"x\", W/\"2a-3e8-1f4\"", &tag));
        assert!(none_match("*", &tag));
        assert!(!none_match("W/\"2a-3e8-1f5\"", &tag));
        let same = http_date(mtime);
        assert!(not_modified_since(&same, mtime));
        let before = http_date(UNIX_EPOCH + Duration::from_secs(999));
        assert!(!not_modified_since(&before, mtime));
        assert!(!not_modified_since("yesterday", mtime));
    }

    #[test]
    fn ranges() {
        use RangeAsk::*;
        assert_eq!(range(None, 10), Whole);
        assert_eq!(range(Some("bytes=0-3"), 10), Part { start: 0, end: 3 });
        assert_eq!(range(Some("bytes=5-"), 10), Part { start: 5, end: 9 });
        assert_eq!(range(Some("bytes=5-100"), 10), Part { start: 5, end: 9 });
        assert_eq!(range(Some("bytes=-3"), 10), Part { start: 7, end: 9 });
        assert_eq!(range(Some("bytes=-30"), 10), Part { start: 0, end: 9 });
        assert_eq!(range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(range(Some("bytes=0-0"), 0), Unsatisfiable);
        assert_eq!(range(Some("bytes=0-1,4-5"), 10), Whole);
        assert_eq!(range(Some("bytes=5-2"), 10), Whole);
        assert_eq!(range(Some("items=0-1"), 10), Whole);
        assert_eq!(range(Some("bytes=a-b"), 10), Whole);
        assert_eq!(range(Some("bytes=-"), 10), Whole);
    }
}
