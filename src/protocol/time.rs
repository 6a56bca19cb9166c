//! Times as Celery writes them: ISO 8601 with an offset (`2026-11-23T08:16:21.135393+00:00`),
//! microseconds omitted when zero; naive values are UTC (Celery's `maybe_make_aware`).

use chrono::{DateTime, FixedOffset, NaiveDateTime, SecondsFormat, Utc};

/// Parses an ISO 8601 timestamp with or without an offset.
pub fn parse_iso(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::<FixedOffset>::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f%:z",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z")
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Formats a UTC time like Python's `datetime.isoformat()` on an aware datetime.
pub fn format_iso(t: DateTime<Utc>) -> String {
    let fmt = if t.timestamp_subsec_micros() == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Micros
    };
    t.to_rfc3339_opts(fmt, false)
}

pub fn now_iso() -> String {
    format_iso(Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_celery_forms() {
        let a = parse_iso("2026-11-23T08:16:21.135393+00:00").unwrap();
        let b = parse_iso("2026-11-23T09:16:21.135393+01:00").unwrap();
        assert_eq!(a, b);
        let naive = parse_iso("2026-11-23T08:16:21.135393").unwrap();
        assert_eq!(a, naive);
        assert!(parse_iso("2030-01-02T03:04:05+00:00").is_some());
        assert!(parse_iso("2030-01-02 03:04:05").is_some());
        assert!(parse_iso("yesterday").is_none());
    }

    #[test]
    fn formats_like_python() {
        let t = parse_iso("2030-01-02T03:04:05+00:00").unwrap();
        assert_eq!(format_iso(t), "2030-01-02T03:04:05+00:00");
        let t = parse_iso("2026-11-23T08:16:21.135393+00:00").unwrap();
        assert_eq!(format_iso(t), "2026-11-23T08:16:21.135393+00:00");
    }
}
