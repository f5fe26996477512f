//! Checks on the daemon's log lines.

use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};

/// A JSON value whose objects have no repeated key (serde_json keeps the
/// last of repeated keys silently; log pipelines disagree on which wins).
struct Unique;

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
        d.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Unique;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
        while seq.next_element::<Unique>()?.is_some() {}
        Ok(Unique)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
        let mut keys = std::collections::HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            if !keys.insert(k.clone()) {
                return Err(A::Error::custom(format!("repeated key `{k}`")));
            }
            map.next_value::<Unique>()?;
        }
        Ok(Unique)
    }
}

/// Every line of `log` that starts with `{` is a JSON object with no
/// repeated key; the first offending line otherwise.
pub fn assert_unique_keys(log: &str) {
    for line in log.lines().filter(|l| l.starts_with('{')) {
        if let Err(e) = serde_json::from_str::<Unique>(line) {
            panic!("log line is not JSON with unique keys ({e}): {line}");
        }
    }
}

/// Text logs written to a file: no terminal escape codes, and no line
/// naming the span's rotation id twice (the formatter appends each
/// `record` of a span field instead of replacing it).
pub fn assert_plain_text(log: &str) {
    assert!(
        !log.contains('\u{1b}'),
        "terminal escape codes in a log file: {log}"
    );
    for line in log.lines() {
        assert!(
            line.matches("rotation_id=\"").count() <= 1,
            "the span repeats its rotation id: {line}"
        );
    }
}

#[test]
fn repeated_keys_are_found_at_any_depth() {
    assert!(serde_json::from_str::<Unique>(r#"{"a":1,"b":{"c":[{"d":1}]}}"#).is_ok());
    assert!(serde_json::from_str::<Unique>(r#"{"a":1,"a":2}"#).is_err());
    assert!(serde_json::from_str::<Unique>(r#"{"s":{"r":"x","r":"x"}}"#).is_err());
}
