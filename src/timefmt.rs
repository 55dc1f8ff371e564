//! The one textual form of a time twokey stores and exports: UTC, RFC 3339, microseconds,
//! fixed width (`2026-12-03T13:05:09.123456Z`). Fixed width makes text order equal time order
//! on both databases, and gives the audit chain one canonical spelling of every instant.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

/// Format `t` in UTC with exactly six fractional digits.
pub fn fmt(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    ))
    .expect("formatting a UTC time cannot fail")
}

/// RFC 3339 to the second (`2026-12-03T09:00:00Z`), the form Azure request bodies use.
pub fn fmt_seconds(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Parse any RFC 3339 time (as stored, or as a user typed it in a filter).
pub fn parse(s: &str) -> Result<OffsetDateTime, time::error::Parse> {
    OffsetDateTime::parse(s, &Rfc3339)
}

/// Truncate to microseconds: what survives a round trip through storage.
pub fn trunc(t: OffsetDateTime) -> OffsetDateTime {
    let micros = t.microsecond();
    t.replace_nanosecond(micros * 1000).expect("in range")
}

/// serde helpers for `OffsetDateTime` in the canonical form.
pub mod serde_canonical {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::fmt(*t))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let s = String::deserialize(d)?;
        super::parse(&s).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use time::OffsetDateTime;

        pub fn serialize<S: Serializer>(
            t: &Option<OffsetDateTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&super::super::fmt(*t)),
                None => s.serialize_none(),
            }
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<OffsetDateTime>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|s| super::super::parse(&s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn fixed_width_and_round_trip() {
        let t = datetime!(2026-12-03 13:05:09.123456789 +02:00);
        let s = fmt(t);
        assert_eq!(s, "2026-12-03T11:05:09.123456Z");
        assert_eq!(parse(&s).unwrap(), trunc(t));
        assert_eq!(
            fmt(datetime!(2026-01-01 00:00 UTC)),
            "2026-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn text_order_is_time_order() {
        let a = fmt(datetime!(2026-12-03 09:59:59.999999 UTC));
        let b = fmt(datetime!(2026-12-03 10:00:00 UTC));
        assert!(a < b);
    }
}
