//! FHIR date, dateTime and instant values as half-open ranges of UTC microseconds,
//! which is what date search compares (a date-only value covers its whole day).

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// `[lo, hi)` in microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    pub lo: i64,
    pub hi: i64,
}

/// Whole years from `from` to `to` (microsecond instants, UTC): an age.
pub fn years_between(from: i64, to: i64) -> i32 {
    let date = |m: i64| {
        OffsetDateTime::from_unix_timestamp(m.div_euclid(1_000_000))
            .map(|d| d.date())
            .ok()
    };
    let (Some(a), Some(b)) = (date(from), date(to)) else {
        return 0;
    };
    let birthday_passed = (b.month() as u8, b.day()) >= (a.month() as u8, a.day());
    b.year() - a.year() - i32::from(!birthday_passed)
}

pub fn now_micros() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// `meta.lastUpdated` form: RFC 3339, UTC, microsecond precision. Written digit by
/// digit: list pages format several per row, and `format!` showed in profiles.
pub fn format_instant(micros: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut out = [0u8; 27];
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, t.year().clamp(0, 9999) as u32);
    put(5, 2, t.month() as u32);
    put(8, 2, u32::from(t.day()));
    put(11, 2, u32::from(t.hour()));
    put(14, 2, u32::from(t.minute()));
    put(17, 2, u32::from(t.second()));
    put(20, 6, t.microsecond());
    for (i, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (26, b'Z'),
    ] {
        out[i] = c;
    }
    out.iter().map(|&b| b as char).collect()
}

/// HTTP-date for `Last-Modified` (RFC 9110 IMF-fixdate).
pub fn format_http_date(micros: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(micros.div_euclid(1_000_000))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[t.weekday().number_days_from_monday() as usize],
        t.day(),
        MONTHS[t.month() as usize - 1],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Parses an HTTP-date (IMF-fixdate) into whole-second microseconds.
pub fn parse_http_date(s: &str) -> Option<i64> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let rest = s.trim().split_once(", ")?.1;
    let mut parts = rest.split(' ');
    let day: u8 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => Month::January,
        "Feb" => Month::February,
        "Mar" => Month::March,
        "Apr" => Month::April,
        "May" => Month::May,
        "Jun" => Month::June,
        "Jul" => Month::July,
        "Aug" => Month::August,
        "Sep" => Month::September,
        "Oct" => Month::October,
        "Nov" => Month::November,
        "Dec" => Month::December,
        _ => return None,
    };
    let year: i32 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u8>().ok());
    let time = Time::from_hms(hms.next()??, hms.next()??, hms.next()??).ok()?;
    if parts.next()? != "GMT" {
        return None;
    }
    let date = Date::from_calendar_date(year, month, day).ok()?;
    Some(
        PrimitiveDateTime::new(date, time)
            .assume_utc()
            .unix_timestamp()
            * 1_000_000,
    )
}

/// Parses a FHIR date / dateTime / instant. Values without a time zone are taken as UTC.
pub fn parse_range(s: &str) -> Option<Range> {
    let (date_part, time_part) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut dp = date_part.split('-');
    let year: i32 = dp.next().filter(|y| y.len() == 4)?.parse().ok()?;
    let month: Option<u8> = match dp.next() {
        Some(m) if m.len() == 2 => Some(m.parse().ok()?),
        Some(_) => return None,
        None => None,
    };
    let day: Option<u8> = match dp.next() {
        Some(d) if d.len() == 2 => Some(d.parse().ok()?),
        Some(_) => return None,
        None => None,
    };
    if dp.next().is_some() {
        return None;
    }
    let to_micros = |d: Date| d.midnight().assume_utc().unix_timestamp() * 1_000_000;
    match (month, day, time_part) {
        (None, None, None) => {
            let lo = Date::from_calendar_date(year, Month::January, 1).ok()?;
            let hi = Date::from_calendar_date(year + 1, Month::January, 1).ok()?;
            Some(Range {
                lo: to_micros(lo),
                hi: to_micros(hi),
            })
        }
        (Some(m), None, None) => {
            let month = Month::try_from(m).ok()?;
            let lo = Date::from_calendar_date(year, month, 1).ok()?;
            let (ny, nm) = if m == 12 {
                (year + 1, Month::January)
            } else {
                (year, month.next())
            };
            let hi = Date::from_calendar_date(ny, nm, 1).ok()?;
            Some(Range {
                lo: to_micros(lo),
                hi: to_micros(hi),
            })
        }
        (Some(m), Some(d), None) => {
            let lo = Date::from_calendar_date(year, Month::try_from(m).ok()?, d).ok()?;
            let lo = to_micros(lo);
            Some(Range {
                lo,
                hi: lo + 86_400_000_000,
            })
        }
        (Some(m), Some(d), Some(t)) => {
            let date = Date::from_calendar_date(year, Month::try_from(m).ok()?, d).ok()?;
            parse_time_range(date, t)
        }
        _ => None,
    }
}

fn parse_time_range(date: Date, t: &str) -> Option<Range> {
    let (clock, offset) = if let Some(c) = t.strip_suffix('Z') {
        (c, UtcOffset::UTC)
    } else if let Some(i) = t.rfind(['+', '-']) {
        let (c, off) = t.split_at(i);
        let sign: i8 = if off.starts_with('-') { -1 } else { 1 };
        let (h, m) = off[1..].split_once(':')?;
        let h: i8 = h.parse().ok()?;
        let m: i8 = m.parse().ok()?;
        (c, UtcOffset::from_hms(sign * h, sign * m, 0).ok()?)
    } else {
        (t, UtcOffset::UTC)
    };
    let mut parts = clock.split(':');
    let hour: u8 = parts.next()?.parse().ok()?;
    let minute: u8 = parts.next()?.parse().ok()?;
    let (second, frac, width) = match parts.next() {
        None => (0u8, 0u32, 60_000_000i64),
        Some(s) => match s.split_once('.') {
            Some((s, f))
                if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) =>
            {
                let digits = f.len().min(6);
                let micros: u32 = f[..digits].parse::<u32>().ok()? * 10u32.pow(6 - digits as u32);
                (s.parse().ok()?, micros, 10i64.pow(6 - digits as u32))
            }
            Some(_) => return None,
            None => (s.parse().ok()?, 0, 1_000_000),
        },
    };
    if parts.next().is_some() {
        return None;
    }
    let time = Time::from_hms_micro(hour, minute, second, frac).ok()?;
    let dt = PrimitiveDateTime::new(date, time).assume_offset(offset);
    let lo = (dt.unix_timestamp_nanos() / 1000) as i64;
    Some(Range { lo, hi: lo + width })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_only_covers_the_whole_day() {
        let r = parse_range("2026-11-23").unwrap();
        assert_eq!(r.hi - r.lo, 86_400_000_000);
        assert_eq!(format_instant(r.lo), "2026-11-23T00:00:00.000000Z");
    }

    #[test]
    fn offsets_are_honoured() {
        let a = parse_range("2026-11-23T10:00:00+02:00").unwrap();
        let b = parse_range("2026-11-23T08:00:00Z").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn partial_precision_widens_the_range() {
        let y = parse_range("2026").unwrap();
        let m = parse_range("2026-02").unwrap();
        assert_eq!(format_instant(y.hi), "2027-01-01T00:00:00.000000Z");
        assert_eq!(format_instant(m.hi), "2026-03-01T00:00:00.000000Z");
        let ms = parse_range("2026-02-01T00:00:00.123Z").unwrap();
        assert_eq!(ms.hi - ms.lo, 1000);
    }

    #[test]
    fn garbage_is_refused() {
        for s in [
            "",
            "26-01-01",
            "2026-1-01",
            "2026-01-01T",
            "2026-13-01",
            "2026-01-01T25:00:00Z",
            "x",
        ] {
            assert_eq!(parse_range(s), None, "{s}");
        }
    }

    #[test]
    fn http_dates_round_trip_to_the_second() {
        let t = parse_range("2026-11-23T07:52:29.5Z").unwrap().lo;
        let s = format_http_date(t);
        assert_eq!(s, "Mon, 23 Nov 2026 07:52:29 GMT");
        assert_eq!(parse_http_date(&s), Some(t - 500_000));
    }
}
