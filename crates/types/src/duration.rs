//! Durations in `hangar.toml`: one syntax for every section.
//!
//! A duration is a string of numbers with units, as `humantime` reads them:
//! `"90s"`, `"15m"`, `"72h"`, `"7d"`, `"1m 30s"`, `"250ms"`. A bare number
//! is refused, with a message that says how to write it, so no key is in
//! seconds in one section and in minutes in another.
//!
//! ```toml
//! [scheduler]
//! pickup_deadline = "5m"
//! ```
//!
//! Use it as `#[serde(with = "hangar_types::duration")]` on a
//! `std::time::Duration` field, or [`option`] on an `Option<Duration>`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Parses one duration (see the module docs).
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("expected a duration such as \"90s\", \"15m\" or \"72h\": {e}"))
}

/// Writes `d` back in the same syntax (`"1h 30m"`, `"250ms"`).
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

struct DurationVisitor;

impl DurationVisitor {
    /// A bare number was once seconds: say how to write that now.
    fn number<E: de::Error>(shown: impl fmt::Display, written: &str) -> E {
        E::custom(format!(
            "expected a duration such as \"90s\", \"15m\" or \"72h\", got the bare number \
             {shown}: write \"{written}\" for that many seconds"
        ))
    }
}

impl<'de> Visitor<'de> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"90s\", \"15m\" or \"72h\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        Err(Self::number(v, &format!("{v}s")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Err(Self::number(v, &format!("{v}s")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        Err(Self::number(v, &format!("{}ms", (v * 1000.0).round())))
    }
}

/// The same for `Option<Duration>` fields (with `#[serde(default)]`).
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, serde::Serialize, PartialEq)]
    struct S {
        #[serde(with = "super")]
        d: Duration,
    }

    fn de(text: &str) -> Result<Duration, String> {
        serde_json::from_str::<S>(text).map(|s| s.d).map_err(|e| e.to_string())
    }

    #[test]
    fn units_parse_and_round_trip() {
        assert_eq!(de(r#"{"d":"90s"}"#), Ok(Duration::from_secs(90)));
        assert_eq!(de(r#"{"d":"15m"}"#), Ok(Duration::from_secs(900)));
        assert_eq!(de(r#"{"d":"72h"}"#), Ok(Duration::from_secs(72 * 3600)));
        assert_eq!(de(r#"{"d":"7d"}"#), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(de(r#"{"d":"250ms"}"#), Ok(Duration::from_millis(250)));
        assert_eq!(de(r#"{"d":"1m 30s"}"#), Ok(Duration::from_secs(90)));
        let s = S { d: Duration::from_millis(5_250) };
        let text = serde_json::to_string(&s).expect("serializes");
        assert_eq!(serde_json::from_str::<S>(&text).expect("parses back"), s);
    }

    #[test]
    fn bare_numbers_and_nonsense_say_how_to_write_it() {
        let e = de(r#"{"d":300}"#).unwrap_err();
        assert!(e.contains("bare number 300: write \"300s\""), "{e}");
        let e = de(r#"{"d":1.5}"#).unwrap_err();
        assert!(e.contains("write \"1500ms\""), "{e}");
        let e = de(r#"{"d":"soon"}"#).unwrap_err();
        assert!(e.contains("expected a duration such as"), "{e}");
        let e = de(r#"{"d":"every 1h"}"#).unwrap_err();
        assert!(e.contains("expected a duration"), "{e}");
    }
}
