//! Timestamps and durations as users and JSON see them: RFC 3339 UTC
//! (`2026-11-23T10:00:00Z`) and human durations (`15m`, `1h30m`, `12h`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A wall-clock instant with second precision, serialized as RFC 3339 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let secs = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        Timestamp(secs)
    }

    /// Seconds since the Unix epoch.
    pub fn unix(self) -> i64 {
        self.0
    }

    /// This instant plus `d` (saturating).
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(d.as_secs().min(i64::MAX as u64) as i64),
        )
    }

    /// Parses RFC 3339 with any offset (`Z`, `+02:00`); fractions are dropped.
    /// The UTC instant must fall in years 0000..=9999, the range RFC 3339
    /// can write back: whatever parses also formats and parses again
    /// (`0000-01-01T00:00:00+01:00` is refused, found by fuzzing).
    pub fn parse(s: &str) -> Result<Self, String> {
        OffsetDateTime::parse(s.trim(), &Rfc3339)
            .ok()
            .map(|t| t.unix_timestamp())
            .filter(|secs| (Self::MIN_UNIX..=Self::MAX_UNIX).contains(secs))
            .map(Timestamp)
            .ok_or_else(|| {
                format!("'{s}' is not an RFC 3339 timestamp (example: 2026-11-23T18:00:00Z)")
            })
    }

    /// 0000-01-01T00:00:00Z.
    const MIN_UNIX: i64 = -62_167_219_200;
    /// 9999-12-31T23:59:59Z.
    const MAX_UNIX: i64 = 253_402_300_799;

    /// RFC 3339 in UTC, e.g. `2026-11-23T10:00:00Z`. An instant outside
    /// years 0000..=9999 is written as the nearest end of that range, so
    /// whatever a peer or a server managed to put in a timestamp, the frame
    /// it travels in always decodes (issue 18: a clock of 2^64 - 1 once made
    /// every `vault list` fail to decode).
    pub fn to_rfc3339(self) -> String {
        let secs = self.0.clamp(Self::MIN_UNIX, Self::MAX_UNIX);
        OffsetDateTime::from_unix_timestamp(secs)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            // Unreachable for the clamped range; still a valid timestamp.
            .unwrap_or_else(|| "9999-12-31T23:59:59Z".to_owned())
    }

    /// Whether the instant can be written as RFC 3339 without clamping.
    pub fn in_range(self) -> bool {
        (Self::MIN_UNIX..=Self::MAX_UNIX).contains(&self.0)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses a human duration such as `15m`, `1h30m`, `90s`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|_| format!("'{s}' is not a duration (examples: 90s, 15m, 1h30m, 7d)"))
}

/// Formats a duration compactly for tables: `3d`, `5h12m`, `42m`, `30s`.
pub fn format_duration_short(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{mins}m")
    } else if mins > 0 {
        format!("{mins}m")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_in_utc() {
        let t = Timestamp::parse("2026-11-23T12:00:00+02:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-23T10:00:00Z");
        assert!(Timestamp::parse("tomorrow").is_err());
    }

    #[test]
    fn what_parses_formats_and_parses_again() {
        // Found by fuzzing: these parsed, but their UTC instant has no RFC
        // 3339 form, so they did not survive serialize + decode.
        for outside in ["0000-01-01T00:00:00+01:00", "9999-12-31T23:59:59-00:01"] {
            assert!(Timestamp::parse(outside).is_err(), "{outside}");
        }
        for edge in ["0000-01-01T00:00:00Z", "9999-12-31T23:59:59Z"] {
            let t = Timestamp::parse(edge).unwrap();
            assert_eq!(t.to_rfc3339(), edge);
            assert_eq!(Timestamp::parse(&t.to_rfc3339()), Ok(t));
        }
    }

    #[test]
    fn every_instant_serializes_to_something_that_decodes() {
        for secs in [
            i64::MIN,
            i64::MIN + 1,
            Timestamp::MIN_UNIX - 1,
            -1,
            0,
            Timestamp::MAX_UNIX + 1,
            // The clock of 2^64 - 1 seen as seconds (issue 18).
            281_474_976_710,
            i64::MAX,
        ] {
            let json = serde_json::to_string(&Timestamp(secs)).unwrap();
            let back: Timestamp = serde_json::from_str(&json).unwrap();
            assert!(back.in_range(), "{secs} -> {json}");
            assert_eq!(back.0, secs.clamp(Timestamp::MIN_UNIX, Timestamp::MAX_UNIX));
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("soon").is_err());
        assert_eq!(format_duration_short(Duration::from_secs(5400)), "1h30m");
    }
}
