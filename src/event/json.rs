//! A JSON value that borrows strings where it can: used instead of typed
//! structs so that a wrong type is reported with the field it is in.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

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
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(item) = seq.next_element::<Any<'de>>()? {
                    items.push(item);
                }
                Ok(Any::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(8);
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
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
