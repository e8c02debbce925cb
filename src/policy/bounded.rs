//! The wall-clock deadline of a policy call, and the library functions
//! that must obey it.
//!
//! The instruction hook stops Lua code; it never fires while a C function
//! of the standard library runs. Most of those finish in time bounded by
//! their input, and their input by the VM's memory limit. These do not:
//! the pattern functions backtrack exponentially (`string.find`, `match`,
//! `gmatch`, `gsub`), and the table functions loop up to a length that a
//! `__len` or `__index` metamethod makes up (`table.insert`, `remove`,
//! `move`, `sort`, `concat`: with `__len` answering 2^40 and `__index` a
//! C function, nothing allocates and nothing returns to Lua). They are
//! replaced here by Rust versions that count their steps and read the
//! clock; `string.rep` refuses results larger than the memory limit
//! before it starts (an empty string repeated 10^12 times allocates
//! nothing and never ends).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Function, Lua, LuaString, MultiValue, Table, Value};

use super::pattern::{self, Capture, Matcher, Meter, PatternError};

/// When the current call must end. Armed at the start of every entry into
/// the policy (load, init, decide); read by the instruction hook and by
/// the functions below.
#[derive(Debug)]
pub struct Deadline {
    base: Instant,
    /// Nanoseconds after `base`.
    until_ns: AtomicU64,
    /// The allowance of the call armed last, for its error.
    armed_ns: AtomicU64,
    passed: AtomicBool,
}

impl Deadline {
    /// Not armed: no call has started.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            until_ns: AtomicU64::new(u64::MAX),
            armed_ns: AtomicU64::new(u64::MAX),
            passed: AtomicBool::new(false),
        }
    }

    /// Starts a call that has `allowance` from now (a decision the
    /// policy timeout, a load `PolicyLimits::load_timeout`).
    pub fn arm_for(&self, allowance: Duration) {
        self.passed.store(false, Ordering::Relaxed);
        let nanos = |d: Duration| d.as_nanos().min(u64::MAX as u128) as u64;
        self.armed_ns.store(nanos(allowance), Ordering::Relaxed);
        self.until_ns
            .store(nanos(self.base.elapsed() + allowance), Ordering::Relaxed);
    }

    pub fn at(&self) -> Instant {
        self.base + Duration::from_nanos(self.until_ns.load(Ordering::Relaxed))
    }

    /// True (and remembered) once the deadline has passed.
    pub fn check(&self) -> bool {
        if self.base.elapsed().as_nanos() as u64 >= self.until_ns.load(Ordering::Relaxed) {
            self.passed.store(true, Ordering::Relaxed);
        }
        self.passed()
    }

    /// Whether the current call ran past its deadline.
    pub fn passed(&self) -> bool {
        self.passed.load(Ordering::Relaxed)
    }

    /// The error that ends a call past its deadline; `place` says where.
    pub fn overrun(&self, place: &str) -> mlua::Error {
        self.passed.store(true, Ordering::Relaxed);
        mlua::Error::runtime(format!(
            "the call ran past its deadline of {:?} ({place})",
            Duration::from_nanos(self.armed_ns.load(Ordering::Relaxed))
        ))
    }

    fn meter(&self) -> Meter {
        Meter::new(self.at())
    }

    fn fail(&self, e: PatternError, function: &str) -> mlua::Error {
        match e {
            PatternError::Deadline => self.overrun(&format!("in {function}")),
            other => mlua::Error::runtime(format!("bad argument to '{function}' ({other})")),
        }
    }
}

/// Replaces the unbounded library functions of `lua` by bounded ones.
pub fn install(lua: &Lua, deadline: &Arc<Deadline>, memory_bytes: usize) -> mlua::Result<()> {
    let string: Table = lua.globals().get("string")?;
    let d = deadline.clone();
    string.set(
        "find",
        lua.create_function(
            move |lua, (s, p, init, plain): (LuaString, LuaString, Option<i64>, Option<Value>)| {
                let plain = plain.is_some_and(|v| !matches!(v, Value::Nil | Value::Boolean(false)));
                let (sb, pb) = (s.as_bytes(), p.as_bytes());
                let found = pattern::find(&sb, &pb, init.unwrap_or(1), plain, true, &mut d.meter())
                    .map_err(|e| d.fail(e, "find"))?;
                let Some((a, b, caps)) = found else {
                    return Ok(MultiValue::from_vec(vec![Value::Nil]));
                };
                let mut out = vec![Value::Integer(a as i64 + 1), Value::Integer(b as i64)];
                out.extend(values(lua, &sb, &caps)?);
                Ok(MultiValue::from_vec(out))
            },
        )?,
    )?;
    let d = deadline.clone();
    string.set(
        "match",
        lua.create_function(
            move |lua, (s, p, init): (LuaString, LuaString, Option<i64>)| {
                let (sb, pb) = (s.as_bytes(), p.as_bytes());
                let found =
                    pattern::find(&sb, &pb, init.unwrap_or(1), false, false, &mut d.meter())
                        .map_err(|e| d.fail(e, "match"))?;
                Ok(match found {
                    None => MultiValue::from_vec(vec![Value::Nil]),
                    Some((_, _, caps)) => MultiValue::from_vec(values(lua, &sb, &caps)?),
                })
            },
        )?,
    )?;
    let d = deadline.clone();
    string.set(
        "gmatch",
        lua.create_function(
            move |lua, (s, p, init): (LuaString, LuaString, Option<i64>)| {
                let len = s.as_bytes().len();
                let start = (pattern::start_index(init.unwrap_or(1), len) - 1).min(len + 1);
                let pos = std::sync::Mutex::new((start, None::<usize>));
                let d = d.clone();
                lua.create_function(move |lua, ()| {
                    let (sb, pb) = (s.as_bytes(), p.as_bytes());
                    let mut meter = d.meter();
                    let mut m = Matcher::new(&sb, &pb, &mut meter);
                    let mut state = pos.lock().unwrap_or_else(|e| e.into_inner());
                    let (from, last) = *state;
                    for src in from..=sb.len() {
                        let e = m.match_at(src).map_err(|e| d.fail(e, "gmatch"))?;
                        if let Some(e) = e.filter(|&e| Some(e) != last) {
                            *state = (e, Some(e));
                            let caps = m.captures(src, e, true).map_err(|e| d.fail(e, "gmatch"))?;
                            return Ok(MultiValue::from_vec(values(lua, &sb, &caps)?));
                        }
                    }
                    *state = (sb.len() + 1, last);
                    Ok(MultiValue::new())
                })
            },
        )?,
    )?;
    let d = deadline.clone();
    string.set(
        "gsub",
        lua.create_function(
            move |lua, (s, p, repl, n): (LuaString, LuaString, Value, Option<i64>)| {
                gsub(lua, &d, memory_bytes, &s, &p, repl, n)
            },
        )?,
    )?;
    let rep: Function = string.get("rep")?;
    string.set(
        "rep",
        lua.create_function(
            move |lua, (s, n, sep): (LuaString, i64, Option<LuaString>)| {
                let l = s.as_bytes().len() as u128;
                let ls = sep.as_ref().map_or(0, |x| x.as_bytes().len()) as u128;
                if n <= 0 || l + ls == 0 {
                    return lua.create_string("");
                }
                let total = l * n as u128 + ls * (n as u128 - 1);
                if total > memory_bytes as u128 {
                    return Err(mlua::Error::runtime(format!(
                    "not enough memory: string.rep would make {total} bytes, over the policy's \
                     memory limit of {memory_bytes}"
                )));
                }
                rep.call((s, n, sep))
            },
        )?,
    )?;

    let table: Table = lua.globals().get("table")?;
    let d = deadline.clone();
    table.set(
        "insert",
        lua.create_function(move |_, (t, args): (Table, MultiValue)| {
            let e = t.len()? + 1;
            let (pos, v) = match args.len() {
                1 => (e, args[0].clone()),
                2 => {
                    let pos = match &args[0] {
                        Value::Integer(i) => *i,
                        Value::Number(n) if n.fract() == 0.0 => *n as i64,
                        other => {
                            return Err(mlua::Error::runtime(format!(
                                "bad argument #2 to 'insert' (number expected, got {})",
                                other.type_name()
                            )))
                        }
                    };
                    if (pos as u64).wrapping_sub(1) >= e as u64 {
                        return Err(mlua::Error::runtime(
                            "bad argument #2 to 'insert' (position out of bounds)",
                        ));
                    }
                    let mut meter = d.meter();
                    let mut i = e;
                    while i > pos {
                        step(&d, &mut meter, "table.insert")?;
                        t.set(i, t.get::<Value>(i - 1)?)?;
                        i -= 1;
                    }
                    (pos, args[1].clone())
                }
                _ => {
                    return Err(mlua::Error::runtime(
                        "wrong number of arguments to 'insert'",
                    ))
                }
            };
            t.set(pos, v)
        })?,
    )?;
    let d = deadline.clone();
    table.set(
        "remove",
        lua.create_function(move |_, (t, pos): (Table, Option<i64>)| {
            let size = t.len()?;
            let mut pos = pos.unwrap_or(size);
            if pos != size && (pos as u64).wrapping_sub(1) > size as u64 {
                return Err(mlua::Error::runtime(
                    "bad argument #2 to 'remove' (position out of bounds)",
                ));
            }
            let removed: Value = t.get(pos)?;
            let mut meter = d.meter();
            while pos < size {
                step(&d, &mut meter, "table.remove")?;
                t.set(pos, t.get::<Value>(pos + 1)?)?;
                pos += 1;
            }
            t.set(pos, Value::Nil)?;
            Ok(removed)
        })?,
    )?;
    let d = deadline.clone();
    table.set(
        "move",
        lua.create_function(
            move |_, (a1, f, e, t, a2): (Table, i64, i64, i64, Option<Table>)| {
                let a2 = a2.unwrap_or_else(|| a1.clone());
                if e >= f {
                    if !(f > 0 || e < i64::MAX + f) {
                        return Err(mlua::Error::runtime(
                            "bad argument #3 to 'move' (too many elements to move)",
                        ));
                    }
                    let n = e - f;
                    if t > i64::MAX - n {
                        return Err(mlua::Error::runtime(
                            "bad argument #4 to 'move' (destination wrap around)",
                        ));
                    }
                    let mut meter = d.meter();
                    let forward = t > e || t <= f || a1 != a2;
                    for k in 0..=n {
                        step(&d, &mut meter, "table.move")?;
                        let i = if forward { k } else { n - k };
                        a2.set(t + i, a1.get::<Value>(f + i)?)?;
                    }
                }
                Ok(a2)
            },
        )?,
    )?;
    let d = deadline.clone();
    table.set(
        "concat",
        lua.create_function(
            move |lua, (t, sep, i, j): (Table, Option<LuaString>, Option<i64>, Option<i64>)| {
                let sep = sep.map(|s| s.as_bytes().to_vec()).unwrap_or_default();
                let i = i.unwrap_or(1);
                let j = match j {
                    Some(j) => j,
                    None => t.len()?,
                };
                let mut out = Vec::new();
                let mut meter = d.meter();
                let mut k = i;
                while k <= j {
                    step(&d, &mut meter, "table.concat")?;
                    match t.get::<Value>(k)? {
                        v @ (Value::String(_) | Value::Integer(_) | Value::Number(_)) => {
                            let s = lua.coerce_string(v)?.expect("strings and numbers coerce");
                            out.extend_from_slice(&s.as_bytes());
                        }
                        other => {
                            return Err(mlua::Error::runtime(format!(
                                "invalid value (at index {k}) in table for 'concat' (a {} value)",
                                other.type_name()
                            )))
                        }
                    }
                    if k < j {
                        out.extend_from_slice(&sep);
                    }
                    if out.len() > memory_bytes {
                        return Err(too_big("table.concat", memory_bytes));
                    }
                    if k == i64::MAX {
                        break;
                    }
                    k += 1;
                }
                lua.create_string(out)
            },
        )?,
    )?;
    let d = deadline.clone();
    let less: Function = lua
        .load("return function(a, b) return a < b end")
        .set_name("=sort")
        .call(())?;
    table.set(
        "sort",
        lua.create_function(move |_, (t, comp): (Table, Option<Function>)| {
            let n = t.len()?;
            if n < 2 {
                return Ok(());
            }
            if n as u64 > (memory_bytes / 16) as u64 {
                return Err(too_big("table.sort", memory_bytes));
            }
            let mut meter = d.meter();
            let mut items = Vec::with_capacity(n as usize);
            for i in 1..=n {
                step(&d, &mut meter, "table.sort")?;
                items.push(t.get::<Value>(i)?);
            }
            let mut lt = |a: &Value, b: &Value| -> mlua::Result<bool> {
                step(&d, &mut meter, "table.sort")?;
                match (&comp, a, b) {
                    (Some(f), _, _) => f.call((a.clone(), b.clone())),
                    (None, Value::Integer(x), Value::Integer(y)) => Ok(x < y),
                    (None, Value::Number(x), Value::Number(y)) => Ok(x < y),
                    (None, Value::String(x), Value::String(y)) => Ok(*x.as_bytes() < *y.as_bytes()),
                    (None, _, _) => less.call((a.clone(), b.clone())),
                }
            };
            let sorted = merge_sort(items, &mut lt)?;
            for (i, v) in sorted.into_iter().enumerate() {
                t.set(i as i64 + 1, v)?;
            }
            Ok(())
        })?,
    )?;
    Ok(())
}

fn step(d: &Deadline, meter: &mut Meter, function: &str) -> mlua::Result<()> {
    meter
        .tick()
        .map_err(|_| d.overrun(&format!("in {function}")))
}

fn too_big(function: &str, memory_bytes: usize) -> mlua::Error {
    mlua::Error::runtime(format!(
        "not enough memory: {function} would go over the policy's memory limit of {memory_bytes} bytes"
    ))
}

/// A stable merge sort whose comparison may fail (Lua code runs in it).
fn merge_sort(
    mut v: Vec<Value>,
    lt: &mut impl FnMut(&Value, &Value) -> mlua::Result<bool>,
) -> mlua::Result<Vec<Value>> {
    if v.len() < 2 {
        return Ok(v);
    }
    let right = v.split_off(v.len() / 2);
    let (a, b) = (merge_sort(v, lt)?, merge_sort(right, lt)?);
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
        if lt(y, x)? {
            out.push(b.next().expect("peeked"));
        } else {
            out.push(a.next().expect("peeked"));
        }
    }
    out.extend(a);
    out.extend(b);
    Ok(out)
}

fn values(lua: &Lua, src: &[u8], caps: &[Capture]) -> mlua::Result<Vec<Value>> {
    caps.iter()
        .map(|c| match *c {
            Capture::Str(a, b) => lua.create_string(&src[a..b]).map(Value::String),
            Capture::Pos(n) => Ok(Value::Integer(n as i64)),
        })
        .collect()
}

fn gsub(
    lua: &Lua,
    d: &Deadline,
    memory_bytes: usize,
    s: &LuaString,
    p: &LuaString,
    repl: Value,
    n: Option<i64>,
) -> mlua::Result<(LuaString, i64)> {
    let (sb, pb) = (s.as_bytes(), p.as_bytes());
    let repl = match repl {
        Value::String(_) | Value::Integer(_) | Value::Number(_) => Repl::Text(
            lua.coerce_string(repl)?
                .expect("strings and numbers coerce")
                .as_bytes()
                .to_vec(),
        ),
        Value::Table(t) => Repl::Table(t),
        Value::Function(f) => Repl::Function(f),
        other => {
            return Err(mlua::Error::runtime(format!(
                "bad argument #3 to 'gsub' (string/function/table expected, got {})",
                other.type_name()
            )))
        }
    };
    let max = n.unwrap_or(sb.len() as i64 + 1);
    let anchor = pb.first() == Some(&b'^');
    let pat = if anchor { &pb[1..] } else { &pb[..] };
    let mut meter = d.meter();
    let mut m = Matcher::new(&sb, pat, &mut meter);
    let mut out: Vec<u8> = Vec::new();
    let (mut src, mut last, mut count) = (0usize, None, 0i64);
    while count < max {
        let e = m.match_at(src).map_err(|e| d.fail(e, "gsub"))?;
        match e.filter(|&e| Some(e) != last) {
            Some(e) => {
                count += 1;
                add_value(lua, d, &m, &sb, src, e, &repl, &mut out)?;
                src = e;
                last = Some(e);
            }
            None if src < sb.len() => {
                out.push(sb[src]);
                src += 1;
            }
            None => break,
        }
        if out.len() > memory_bytes {
            return Err(too_big("string.gsub", memory_bytes));
        }
        if anchor {
            break;
        }
    }
    out.extend_from_slice(&sb[src..]);
    Ok((lua.create_string(out)?, count))
}

enum Repl {
    Text(Vec<u8>),
    Table(Table),
    Function(Function),
}

#[allow(clippy::too_many_arguments)]
fn add_value(
    lua: &Lua,
    d: &Deadline,
    m: &Matcher<'_>,
    src: &[u8],
    s: usize,
    e: usize,
    repl: &Repl,
    out: &mut Vec<u8>,
) -> mlua::Result<()> {
    let capture = |i: usize| -> mlua::Result<Vec<u8>> {
        match m.capture(i, s, e).map_err(|x| d.fail(x, "gsub"))? {
            Capture::Str(a, b) => Ok(src[a..b].to_vec()),
            Capture::Pos(n) => Ok(n.to_string().into_bytes()),
        }
    };
    let value: Value = match repl {
        Repl::Text(r) => {
            let mut i = 0;
            while i < r.len() {
                if r[i] != b'%' {
                    out.push(r[i]);
                } else {
                    i += 1;
                    match r.get(i) {
                        Some(b'%') => out.push(b'%'),
                        Some(b'0') => out.extend_from_slice(&src[s..e]),
                        Some(c) if c.is_ascii_digit() => {
                            out.extend_from_slice(&capture(usize::from(c - b'1'))?)
                        }
                        _ => return Err(d.fail(PatternError::Replacement, "gsub")),
                    }
                }
                i += 1;
            }
            return Ok(());
        }
        Repl::Table(t) => {
            let caps = m.captures(s, e, true).map_err(|x| d.fail(x, "gsub"))?;
            let key = values(lua, src, &caps[..1])?.remove(0);
            t.get(key)?
        }
        Repl::Function(f) => {
            let caps = m.captures(s, e, true).map_err(|x| d.fail(x, "gsub"))?;
            f.call::<MultiValue>(MultiValue::from_vec(values(lua, src, &caps)?))?
                .into_iter()
                .next()
                .unwrap_or(Value::Nil)
        }
    };
    match value {
        Value::Nil | Value::Boolean(false) => out.extend_from_slice(&src[s..e]),
        v @ (Value::String(_) | Value::Integer(_) | Value::Number(_)) => {
            let s = lua.coerce_string(v)?.expect("strings and numbers coerce");
            out.extend_from_slice(&s.as_bytes());
        }
        other => {
            return Err(mlua::Error::runtime(format!(
                "invalid replacement value (a {})",
                other.type_name()
            )))
        }
    }
    Ok(())
}
