//! Where a key is in the config text, for the errors and warnings found after serde has
//! finished (`Config::validate`, the certificate files, `check`'s warnings), so they name the
//! line as serde's own errors do.
//!
//! The idea: serde_yaml_ng attaches the position of the value being visited to any error a
//! visitor returns. So the text is deserialized once more with a seed that walks the key path
//! (`listen[0].tls.cert`) and refuses the value it arrives at; the refusal's location is the
//! value's line and column. One parser, no second YAML reader that could disagree with it.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A line and column, 1-based, as serde_yaml_ng's messages show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} column {}", self.line, self.column)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// `listen[0].tls.sni[1].cert` -> `listen`, 0, `tls`, `sni`, 1, `cert`; `None` for a key that
/// is not a path (`CANARY_LB_*`).
fn segments(key: &str) -> Option<Vec<Segment>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if name.is_empty() {
            return None;
        }
        out.push(Segment::Key(name.to_string()));
        while !rest.is_empty() {
            let (index, after) = rest.split_once(']')?;
            out.push(Segment::Index(index.parse().ok()?));
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    Some(out)
}

/// The position of the value at `key` in `text` (the `nth` time the last key appears in its
/// map, counting from 1: a duplicate key is found at its second appearance); `None` when the
/// key is not in the text (it took its default). Call it on text that parsed.
pub fn locate(text: &str, key: &str, nth: usize) -> Option<Position> {
    let path = segments(key)?;
    let de = serde_yaml_ng::Deserializer::from_str(text);
    match (Find { path: &path, nth }).deserialize(de) {
        Err(e) if e.to_string().contains(HERE) => e.location().map(|l| Position {
            line: l.line(),
            column: l.column(),
        }),
        _ => None,
    }
}

/// The position of `key`, else of the nearest enclosing key that is in the text
/// (`listen[1].addr` of `listen: ["a:1", "a:1"]` is at `listen[1]`).
pub fn locate_nearest(text: &str, key: &str) -> Option<Position> {
    let mut key = key;
    loop {
        if let Some(at) = locate(text, key, 1) {
            return Some(at);
        }
        let cut = key.rfind(['.', '['])?;
        key = &key[..cut];
    }
}

/// The refusal that marks the place; never shown.
const HERE: &str = "canary-lb locate: here";

struct Find<'p> {
    path: &'p [Segment],
    nth: usize,
}

impl<'de> DeserializeSeed<'de> for Find<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A map key as text (YAML keys may be numbers or booleans; they never match a path).
struct KeyText(Option<String>);

impl<'de> serde::Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(Some(v.to_string())))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<KeyText, E> {
                Ok(KeyText(None))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<KeyText, E> {
                Ok(KeyText(None))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<KeyText, E> {
                Ok(KeyText(None))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<KeyText, E> {
                Ok(KeyText(None))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText(None))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Visitor<'de> for Find<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }

    // Arrived (the path is empty): every visit refuses, which carries the value's position.
    // On the way: a scalar is not where the path goes, so the key is not in the text.
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.scalar()
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(serde::de::Error::custom(HERE));
        };
        let mut seen = 0;
        while let Some(KeyText(key)) = map.next_key::<KeyText>()? {
            let matches = matches!(first, Segment::Key(k) if key.as_deref() == Some(k));
            let nth = if rest.is_empty() { self.nth } else { 1 };
            if matches {
                seen += 1;
            }
            if matches && seen == nth {
                return map.next_value_seed(Find {
                    path: rest,
                    nth: self.nth,
                });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(serde::de::Error::custom(HERE));
        };
        let mut i = 0;
        loop {
            if matches!(first, Segment::Index(n) if *n == i) {
                return seq
                    .next_element_seed(Find {
                        path: rest,
                        nth: self.nth,
                    })
                    .map(|_| ());
            }
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
}

impl Find<'_> {
    fn scalar<E: serde::de::Error>(&self) -> Result<(), E> {
        if self.path.is_empty() {
            Err(E::custom(HERE))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
threads: 1
listen:
  - \"127.0.0.1:8080\"
  - addr: \"127.0.0.1:8443\"
    tls:
      cert: /c.pem
      key: /k.pem
      sni: [{ cert: /a.pem, key: /ak.pem }]
rollout: { steps: [10, 5] }
threads: 2
";

    #[test]
    fn keys_are_found_at_their_value() {
        let at = |key: &str, nth| locate(TEXT, key, nth).map(|p| (p.line, p.column));
        assert_eq!(at("threads", 1), Some((1, 10)));
        assert_eq!(at("threads", 2), Some((10, 10)), "the duplicate");
        assert_eq!(at("listen[0]", 1), Some((3, 5)));
        assert_eq!(at("listen[1].tls.cert", 1), Some((6, 13)));
        assert_eq!(at("listen[1].tls.key", 1), Some((7, 12)));
        assert_eq!(at("listen[1].tls.sni[0].key", 1).map(|p| p.0), Some(8));
        assert_eq!(at("rollout.steps", 1).map(|p| p.0), Some(9));
        assert_eq!(at("listen[1]", 1).map(|p| p.0), Some(4));
        for missing in ["pools", "listen[2]", "threads.x", "CANARY_LB_*", "", "a[x]"] {
            assert_eq!(at(missing, 1), None, "{missing}");
        }
        assert_eq!(
            locate_nearest("listen: [\"a:1\",\n  \"a:1\"]\n", "listen[1].addr").map(|p| p.line),
            Some(2)
        );
        assert_eq!(locate_nearest(TEXT, "pools.production"), None);
    }
}
