//! Config value syntax shared by both daemons: durations (`90s`, `5m`, `2h`, `7d`, or bare
//! seconds) and free-space thresholds (`5%` or a size such as `10G`).

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Parse a duration: a bare integer is seconds; otherwise a number with one unit of
/// `ms`, `s`, `m`, `h`, `d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (use e.g. 90s, 5m, 2h, 7d)"))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{text:?} is too long"))
    };
    match unit.trim() {
        "" | "s" => secs(1),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(format!(
            "{text:?} has an unknown unit (use ms, s, m, h or d)"
        )),
    }
}

/// Serde helper for a duration field that accepts a string or a bare integer. A visitor
/// rather than an untagged enum, so that a YAML error keeps its key path (`fetch.timeout`).
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration such as 90s, 5m, 2h, 7d, or a number of seconds")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("{v} is negative")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// `Option<Duration>` variant of [`de_duration`].
pub fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// A free-space threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FreeSpace {
    Percent(f64),
    Bytes(u64),
}

impl FreeSpace {
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{text:?} is not a percentage"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("{text:?} must be between 0% and 100%"));
            }
            return Ok(Self::Percent(v));
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{text:?} is not a size or percentage"))?;
        let mult: u64 = match unit.trim().trim_end_matches(['B', 'b', 'i']) {
            "" => 1,
            "K" | "k" => 1 << 10,
            "M" | "m" => 1 << 20,
            "G" | "g" => 1 << 30,
            "T" | "t" => 1 << 40,
            _ => {
                return Err(format!(
                    "{text:?} has an unknown unit (use K, M, G, T or %)"
                ));
            }
        };
        n.checked_mul(mult)
            .map(Self::Bytes)
            .ok_or_else(|| format!("{text:?} is too large"))
    }

    /// Whether `free` bytes out of `total` is below this threshold.
    pub fn is_below(&self, free: u64, total: u64) -> bool {
        match *self {
            Self::Percent(p) => total > 0 && (free as f64) < (total as f64) * p / 100.0,
            Self::Bytes(b) => free < b,
        }
    }

    /// The threshold in bytes on a file system of `total` bytes.
    pub fn bytes_of(&self, total: u64) -> u64 {
        match *self {
            Self::Percent(p) => ((total as f64) * p / 100.0).ceil() as u64,
            Self::Bytes(b) => b,
        }
    }
}

impl<'de> Deserialize<'de> for FreeSpace {
    /// A visitor, like [`de_duration`], so errors keep their key path.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = FreeSpace;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a percentage such as 5% or a size such as 10G")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<FreeSpace, E> {
                Ok(FreeSpace::Bytes(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FreeSpace, E> {
                FreeSpace::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn free_space() {
        assert_eq!(FreeSpace::parse("5%"), Ok(FreeSpace::Percent(5.0)));
        assert_eq!(FreeSpace::parse("10G"), Ok(FreeSpace::Bytes(10 << 30)));
        assert_eq!(FreeSpace::parse("512MiB"), Ok(FreeSpace::Bytes(512 << 20)));
        assert!(FreeSpace::parse("150%").is_err());
        assert!(FreeSpace::parse("lots").is_err());
        assert!(FreeSpace::Percent(5.0).is_below(4, 100));
        assert!(!FreeSpace::Percent(5.0).is_below(5, 100));
        assert!(FreeSpace::Bytes(10).is_below(9, 0));
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(deserialize_with = "de_duration")]
        timeout: Duration,
        min_free: FreeSpace,
    }

    #[derive(Deserialize, Debug)]
    struct Outer {
        fetch: Inner,
    }

    #[test]
    fn yaml_errors_keep_the_key_path() {
        let ok: Outer = serde_yaml::from_str("fetch: {timeout: 90, min_free: 5%}").unwrap();
        assert_eq!(ok.fetch.timeout, Duration::from_secs(90));
        assert_eq!(ok.fetch.min_free, FreeSpace::Percent(5.0));
        let e = serde_yaml::from_str::<Outer>("fetch: {timeout: 5 parsecs, min_free: 5%}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fetch.timeout"), "{e}");
        let e = serde_yaml::from_str::<Outer>("fetch: {timeout: 5s, min_free: lots}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fetch.min_free"), "{e}");
    }
}
