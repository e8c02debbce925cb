//! The serializable part of a policy's `ctx.state` table, for state
//! snapshots: numbers, strings, booleans and tables of them. A function,
//! userdata or thread in it cannot outlive the VM; it is left out and
//! reported, and the rest is kept.

use mlua::{Lua, Table, Value};
use serde::{Deserialize, Serialize};

/// Table nesting kept at most (as a reload's copy keeps).
pub const MAX_DEPTH: usize = 16;
/// Values kept at most in one state table, all levels together.
pub const MAX_ENTRIES: usize = 100_000;

/// One plain Lua value, tagged so integer and float keys, and text and
/// binary strings, survive a round trip through JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Plain {
    #[serde(rename = "b")]
    Bool(bool),
    #[serde(rename = "i")]
    Int(i64),
    #[serde(rename = "n")]
    Num(f64),
    /// "nan", "inf" or "-inf" (JSON has no such numbers).
    #[serde(rename = "x")]
    Special(String),
    #[serde(rename = "s")]
    Str(String),
    /// A string that is not UTF-8, as its bytes.
    #[serde(rename = "y")]
    Bytes(Vec<u8>),
    #[serde(rename = "t")]
    Table(Vec<(Plain, Plain)>),
}

/// What could not be kept, by path (`state.cache.fn`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("ctx.state holds values a snapshot cannot keep: {}", .0.join(", "))]
pub struct NotPlain(pub Vec<String>);

/// The plain part of `state`, and what was left out.
pub fn export(state: &Table) -> (Plain, Vec<String>) {
    let mut dropped = Vec::new();
    let mut budget = MAX_ENTRIES;
    let v = table(state, "state", 0, &mut budget, &mut dropped);
    (v, dropped)
}

fn table(
    t: &Table,
    path: &str,
    depth: usize,
    budget: &mut usize,
    dropped: &mut Vec<String>,
) -> Plain {
    let mut out = Vec::new();
    for pair in t.pairs::<Value, Value>() {
        let Ok((k, v)) = pair else { continue };
        if *budget == 0 {
            dropped.push(format!("{path}: more than {MAX_ENTRIES} values"));
            break;
        }
        *budget -= 1;
        let name = key_name(&k);
        let Some(key) = scalar(&k) else {
            dropped.push(format!("{path}[{name}] (a {} key)", k.type_name()));
            continue;
        };
        let here = format!("{path}.{name}");
        let value = match &v {
            Value::Table(inner) if depth + 1 < MAX_DEPTH => {
                Some(table(inner, &here, depth + 1, budget, dropped))
            }
            Value::Table(_) => {
                dropped.push(format!("{here} (nested deeper than {MAX_DEPTH})"));
                None
            }
            other => {
                let s = scalar(other);
                if s.is_none() {
                    dropped.push(format!("{here} (a {})", other.type_name()));
                }
                s
            }
        };
        if let Some(value) = value {
            out.push((key, value));
        }
    }
    Plain::Table(out)
}

fn key_name(k: &Value) -> String {
    match k {
        Value::String(s) => s.to_string_lossy().to_string(),
        Value::Integer(i) => i.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.type_name().to_owned(),
    }
}

fn scalar(v: &Value) -> Option<Plain> {
    Some(match v {
        Value::Boolean(b) => Plain::Bool(*b),
        Value::Integer(i) => Plain::Int(*i),
        Value::Number(n) if n.is_finite() => Plain::Num(*n),
        Value::Number(n) => Plain::Special(
            if n.is_nan() {
                "nan"
            } else if *n > 0.0 {
                "inf"
            } else {
                "-inf"
            }
            .into(),
        ),
        Value::String(s) => match std::str::from_utf8(&s.as_bytes()) {
            Ok(t) => Plain::Str(t.to_owned()),
            Err(_) => Plain::Bytes(s.as_bytes().to_vec()),
        },
        _ => return None,
    })
}

/// Builds the Lua table of a snapshot's state (at most `MAX_DEPTH` deep
/// and `MAX_ENTRIES` values, whatever the snapshot says).
pub fn import(lua: &Lua, v: &Plain) -> mlua::Result<Value> {
    let mut budget = MAX_ENTRIES;
    to_lua(lua, v, 0, &mut budget)
}

fn to_lua(lua: &Lua, v: &Plain, depth: usize, budget: &mut usize) -> mlua::Result<Value> {
    Ok(match v {
        Plain::Bool(b) => Value::Boolean(*b),
        Plain::Int(i) => Value::Integer(*i),
        Plain::Num(n) => Value::Number(*n),
        Plain::Special(s) => Value::Number(match s.as_str() {
            "inf" => f64::INFINITY,
            "-inf" => f64::NEG_INFINITY,
            _ => f64::NAN,
        }),
        Plain::Str(s) => Value::String(lua.create_string(s)?),
        Plain::Bytes(b) => Value::String(lua.create_string(b)?),
        Plain::Table(pairs) => {
            if depth >= MAX_DEPTH {
                return Ok(Value::Nil);
            }
            let t = lua.create_table()?;
            for (k, val) in pairs {
                if *budget == 0 {
                    break;
                }
                *budget -= 1;
                let k = to_lua(lua, k, MAX_DEPTH, budget)?;
                let val = to_lua(lua, val, depth + 1, budget)?;
                // NaN keys and nil values cannot be set
                if matches!(k, Value::Nil) || matches!(k, Value::Number(n) if n.is_nan()) {
                    continue;
                }
                t.raw_set(k, val)?;
            }
            Value::Table(t)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_round_trip_and_functions_are_named() {
        let lua = Lua::new();
        let t: Table = lua
            .load(
                r#"return { peak = 12, ratio = 0.5, name = "x", on = true, big = math.huge,
                   [3] = "three", nested = { deeper = { 1, 2, 3 } }, fn = print,
                   raw = "\255\0" }"#,
            )
            .eval()
            .unwrap();
        let (plain, dropped) = export(&t);
        assert_eq!(dropped, vec!["state.fn (a function)".to_string()]);
        let json = serde_json::to_string(&plain).unwrap();
        let back: Plain = serde_json::from_str(&json).unwrap();
        assert_eq!(back, plain);
        let Value::Table(t2) = import(&lua, &back).unwrap() else {
            panic!("a table")
        };
        assert_eq!(t2.get::<i64>("peak").unwrap(), 12);
        assert!(matches!(
            t2.get::<Value>("peak").unwrap(),
            Value::Integer(_)
        ));
        assert_eq!(t2.get::<f64>("ratio").unwrap(), 0.5);
        assert_eq!(t2.get::<f64>("big").unwrap(), f64::INFINITY);
        assert_eq!(t2.get::<String>(3).unwrap(), "three");
        assert_eq!(
            t2.get::<mlua::LuaString>("raw")
                .unwrap()
                .as_bytes()
                .to_vec(),
            b"\xff\0"
        );
        let deeper: Table = t2.get::<Table>("nested").unwrap().get("deeper").unwrap();
        assert_eq!(deeper.raw_len(), 3);
        assert!(t2.get::<Value>("fn").unwrap().is_nil());
    }

    #[test]
    fn a_hostile_snapshot_is_bounded() {
        let lua = Lua::new();
        // nested far deeper than allowed
        let mut v = Plain::Int(1);
        for _ in 0..100 {
            v = Plain::Table(vec![(Plain::Str("a".into()), v)]);
        }
        let Value::Table(t) = import(&lua, &v).unwrap() else {
            panic!("a table")
        };
        let mut depth = 0;
        let mut cur = Value::Table(t);
        while let Value::Table(t) = cur {
            depth += 1;
            cur = t.get("a").unwrap();
        }
        assert!(depth <= MAX_DEPTH, "{depth}");
    }
}
