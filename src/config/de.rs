//! The YAML scalar deserializers behind the schema's `deserialize_with`: each validates its
//! value *inside* the visitor, so serde_yaml_ng reports an error at the value's own key and
//! line.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Deserializer};

use super::schema::Listener;

// The messages here stay `String`s: they only ever feed serde's `de::Error::custom`.

/// A YAML scalar as the deserializer saw it.
pub(super) enum Scalar<'a> {
    Str(&'a str),
    Int(i64),
    Float(f64),
}

impl Scalar<'_> {
    pub(super) fn int(&self) -> Result<i64, String> {
        match self {
            Scalar::Int(i) => Ok(*i),
            Scalar::Float(f) => Err(format!("expected a whole number, got {f}")),
            Scalar::Str(s) => Err(format!("expected a whole number, got `{s}`")),
        }
    }

    pub(super) fn float(&self) -> Result<f64, String> {
        match self {
            Scalar::Int(i) => Ok(*i as f64),
            Scalar::Float(f) => Ok(*f),
            Scalar::Str(s) => Err(format!("expected a number, got `{s}`")),
        }
    }

    pub(super) fn str(&self) -> Result<&str, String> {
        match self {
            Scalar::Str(s) => Ok(s),
            Scalar::Int(i) => Err(format!("expected text, got {i}")),
            Scalar::Float(f) => Err(format!("expected text, got {f}")),
        }
    }
}

/// Deserialize a scalar and validate it *inside* the visitor: serde_yaml_ng then reports the
/// error at the value's own key and line, not at the enclosing map's.
pub(super) fn checked<'de, D, T>(
    d: D,
    check: fn(Scalar) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct Checked<T>(fn(Scalar) -> Result<T, String>);
    impl<'de, T> serde::de::Visitor<'de> for Checked<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a scalar value")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(Scalar::Str(v)).map_err(E::custom)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
            (self.0)(Scalar::Int(v)).map_err(E::custom)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
            let v = i64::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))?;
            (self.0)(Scalar::Int(v)).map_err(E::custom)
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<T, E> {
            (self.0)(Scalar::Float(v)).map_err(E::custom)
        }
    }
    d.deserialize_any(Checked(check))
}

pub(super) fn int_in(v: Scalar, lo: i64, hi: i64) -> Result<i64, String> {
    let n = v.int()?;
    if (lo..=hi).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be {lo}..={hi}, got {n}"))
    }
}

pub(super) fn parse_listen(v: Scalar) -> Result<SocketAddr, String> {
    let s = v.str()?;
    s.parse()
        .map_err(|_| format!("`{s}` is not an ip:port address"))
}

pub(super) fn de_listen_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    checked(d, parse_listen)
}

/// `listen:` as one entry or a list; an entry is `"ip:port"` or a [`Listener`] map. Maps are
/// read through serde's `MapAccessDeserializer`, so their errors keep their key and line.
pub(super) fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Listener>, D::Error> {
    struct One(Listener);
    struct OneVisitor;
    impl<'de> serde::de::Visitor<'de> for OneVisitor {
        type Value = One;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(
                "an ip:port address or a listener map { addr, tls, h2c, redirect_to_https }",
            )
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<One, E> {
            parse_listen(Scalar::Str(v))
                .map(|a| One(Listener::plain(a)))
                .map_err(E::custom)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<One, A::Error> {
            Listener::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(One)
        }
    }
    impl<'de> Deserialize<'de> for One {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(OneVisitor)
        }
    }

    struct ListenVisitor;
    impl<'de> serde::de::Visitor<'de> for ListenVisitor {
        type Value = Vec<Listener>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an ip:port address, a listener map, or a list of them")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            OneVisitor.visit_str(v).map(|One(l)| vec![l])
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            OneVisitor.visit_map(map).map(|One(l)| vec![l])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(One(l)) = seq.next_element()? {
                out.push(l);
            }
            Ok(out)
        }
    }
    d.deserialize_any(ListenVisitor)
}

/// Text sent on the wire in a health check's request line or Host header: visible ASCII only
/// (no spaces, no control bytes), so Pingora's request builder cannot refuse it at run time.
fn wire_text(v: Scalar, what: &str, max: usize) -> Result<String, String> {
    let s = v.str()?;
    if s.is_empty() || s.len() > max {
        return Err(format!("{what} must be 1..={max} bytes, got {}", s.len()));
    }
    if let Some(b) = s.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
        return Err(format!(
            "{what} `{}` has byte 0x{b:02x}; only visible ASCII is allowed",
            s.escape_debug()
        ));
    }
    Ok(s.to_string())
}

pub(super) fn de_check_host<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |v| wire_text(v, "a Host header", 255))
}

pub(super) fn de_check_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |v| {
        let path = wire_text(v, "a request path", 2048)?;
        if path.starts_with('/') {
            Ok(path)
        } else {
            Err(format!("a request path must start with `/`, got `{path}`"))
        }
    })
}

pub(super) fn de_threads<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    checked(d, |v| int_in(v, 1, 256).map(|n| n as usize))
}

pub(super) fn de_threshold<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    checked(d, |v| int_in(v, 1, 100).map(|n| n as usize))
}

pub(super) fn de_threshold_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    checked(d, |v| int_in(v, 1, 100).map(|n| n as u32))
}

pub(super) fn de_head_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    checked(d, |v| int_in(v, 1024, 1024 * 1024).map(|n| n as usize))
}

pub(super) fn de_max_headers<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    checked(d, |v| int_in(v, 8, 256).map(|n| n as usize))
}

pub(super) fn de_max_connections<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    checked(d, |v| int_in(v, 1, 1_000_000).map(|n| n as usize))
}

pub(super) fn de_ejection_percent<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    checked(d, |v| int_in(v, 0, 100).map(|n| n as u32))
}

pub(super) fn de_error_min_requests<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    checked(d, |v| int_in(v, 1, 1_000_000).map(|n| n as u32))
}

pub(super) fn de_tries<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    checked(d, |v| {
        int_in(v, 1, super::MAX_TRIES as i64).map(|n| n as usize)
    })
}

pub(super) fn de_status_range<'de, D: Deserializer<'de>>(d: D) -> Result<(u16, u16), D::Error> {
    checked(d, |v| {
        let (lo, hi) = match v {
            Scalar::Int(c) => (c, c),
            Scalar::Str(s) => {
                let (a, b) = s.split_once('-').unwrap_or((s, s));
                match (a.trim().parse::<i64>(), b.trim().parse::<i64>()) {
                    (Ok(a), Ok(b)) => (a, b),
                    _ => return Err(format!("`{s}` is not a status or a range like 200-399")),
                }
            }
            Scalar::Float(f) => return Err(format!("{f} is not a status code")),
        };
        if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
            return Err(format!("status range {lo}-{hi} must lie within 100-599"));
        }
        Ok((lo as u16, hi as u16))
    })
}

pub(super) mod humantime_serde {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        super::checked(d, |v| match v {
            super::Scalar::Str(s) => parse(s),
            super::Scalar::Int(n) => Err(no_unit(&n.to_string())),
            super::Scalar::Float(f) => Err(no_unit(&f.to_string())),
        })
    }

    /// A duration as written in the file or on the command line: a number and its unit.
    /// The errors say what is missing, not what the parser expected at which byte.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let s = text.trim();
        if !s.is_empty() && s.parse::<f64>().is_ok() {
            return Err(no_unit(s));
        }
        humantime::parse_duration(s).map_err(|e| match e {
            humantime::DurationError::InvalidCharacter(_)
            | humantime::DurationError::NumberExpected(_)
            | humantime::DurationError::Empty => {
                format!("`{s}` is not a duration: write a number and a unit, like 500ms, 10s or 1m")
            }
            humantime::DurationError::UnknownUnit { unit, .. } => {
                format!("`{s}`: unknown unit `{unit}`; use ms, s, m or h (e.g. 500ms, 10s, 1m)")
            }
            other => format!("`{s}` is not a duration like 500ms, 10s or 1m: {other}"),
        })
    }

    fn no_unit(n: &str) -> String {
        format!("{n} has no unit; write {n}s or {n}ms")
    }

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }
}
