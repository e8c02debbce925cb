//! A JSON value that borrows strings where it can: used instead of typed
//! structs so that a wrong type is reported with the field it is in.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// The scalar visits every `Any` visitor shares (objects and arrays are
/// where they differ).
macro_rules! scalar_visits {
    () => {
        fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Any::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Any::Num(v as f64))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Any::Num(v as f64))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Any::Num(v))
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Any::Str(Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Any::Str(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Any::Str(Cow::Owned(v)))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Any::Null)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(Any::Null)
        }
    };
}

/// Any JSON value, borrowing strings where it can. Used instead of typed
/// structs so that a wrong type is reported with the field it is in.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) enum Any<'a> {
    #[default]
    Missing,
    Null,
    Bool(bool),
    Num(f64),
    Str(Cow<'a, str>),
    Array(Vec<Any<'a>>),
    Object(Vec<(Cow<'a, str>, Any<'a>)>),
}

impl<'a> Any<'a> {
    pub(super) fn type_name(&self) -> &'static str {
        match self {
            Any::Missing => "missing",
            Any::Null => "null",
            Any::Bool(_) => "a boolean",
            Any::Num(_) => "a number",
            Any::Str(_) => "a string",
            Any::Array(_) => "an array",
            Any::Object(_) => "an object",
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Any<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Any<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            scalar_visits!();
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(item) = seq.next_element::<Any<'de>>()? {
                    items.push(item);
                }
                Ok(Any::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(8);
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let value = map.next_value::<Any<'de>>()?;
                    // The first occurrence of a key wins; serde_json allows duplicates.
                    if !fields.iter().any(|(k, _): &(Cow<str>, Any)| *k == key) {
                        fields.push((key, value));
                    }
                }
                Ok(Any::Object(fields))
            }
        }
        d.deserialize_any(V)
            .map_err(|e: D::Error| de::Error::custom(e))
    }
}

/// An object key, borrowed from the input when it has no escapes (serde's
/// own `Cow<str>` always copies: one allocation per key of every message).
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The parts of a record a mapping reads: a trie of JSON Pointer tokens.
/// Everything else is skipped while parsing, never built.
#[derive(Debug, Clone, Default)]
pub(super) struct Needed {
    children: Vec<(String, Needed)>,
    /// The whole value here is read.
    whole: bool,
}

impl Needed {
    pub(super) fn add(&mut self, tokens: &[String]) {
        match tokens.split_first() {
            None => self.whole = true,
            Some((first, rest)) => {
                let i = match self.children.iter().position(|(k, _)| k == first) {
                    Some(i) => i,
                    None => {
                        self.children.push((first.clone(), Needed::default()));
                        self.children.len() - 1
                    }
                };
                self.children[i].1.add(rest);
            }
        }
    }

    fn child(&self, key: &str) -> Option<&Needed> {
        self.children.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }
}

/// Parses one record keeping only what `Needed` names.
pub(super) struct Select<'n>(pub(super) &'n Needed);

impl<'de, 'n> de::DeserializeSeed<'de> for Select<'n> {
    type Value = Any<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Any<'de>, D::Error> {
        if self.0.whole {
            return Any::deserialize(d);
        }
        d.deserialize_any(SelectVisitor(self.0))
    }
}

struct SelectVisitor<'n>(&'n Needed);

impl<'de, 'n> Visitor<'de> for SelectVisitor<'n> {
    type Value = Any<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    scalar_visits!();
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // elements keep their places; the ones not read are Missing
        let mut items = Vec::new();
        let mut i = 0usize;
        loop {
            let got = match self.0.child(&i.to_string()) {
                Some(n) => seq.next_element_seed(Select(n))?,
                None => seq.next_element::<de::IgnoredAny>()?.map(|_| Any::Missing),
            };
            match got {
                Some(v) => items.push(v),
                None => break,
            }
            i += 1;
        }
        Ok(Any::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields: Vec<(Cow<'de, str>, Any<'de>)> = Vec::new();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match self.0.child(&key) {
                // the first occurrence of a key wins, as in `Any`
                Some(n) if !fields.iter().any(|(k, _)| *k == key) => {
                    let v = map.next_value_seed(Select(n))?;
                    fields.push((key, v));
                }
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(Any::Object(fields))
    }
}

/// A message of records (one object, or an array of them), each parsed
/// with [`Select`].
pub(super) struct Records<'n>(pub(super) &'n Needed);

impl<'de, 'n> de::DeserializeSeed<'de> for Records<'n> {
    type Value = Any<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Any<'de>, D::Error> {
        struct V<'n>(&'n Needed);
        impl<'de, 'n> Visitor<'de> for V<'n> {
            type Value = Any<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object or an array of objects")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(v) = seq.next_element_seed(Select(self.0))? {
                    items.push(v);
                }
                Ok(Any::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                SelectVisitor(self.0).visit_map(map)
            }
            // anything else is kept for the error message's type name
            scalar_visits!();
        }
        d.deserialize_any(V(self.0))
    }
}
