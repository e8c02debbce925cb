//! `tidewatch policy check`: the examples a policy declares in its returned
//! table (`P.examples = {{ name, replicas, params, windows, forecast,
//! recurring, expect }}`) run against the raw policy output, each in a
//! fresh sandbox.

use mlua::{Function, Table, Value};

use super::{CallInput, LuaPolicy, PolicyError, PolicyErrorKind, PolicyLimits, PolicySource};

/// Binds `ctx.window`/`ctx.forecast`/`ctx.recurring` to an example's
/// tables. A span given in seconds is looked up as "<n>s"; one statistic
/// (`ctx.window(metric, span, stat)`) or forecast field is that field of
/// the example's table, and a statistic that does not exist the same error
/// as in `run`; a forecast by its horizon, a recurring answer by the end of its window (`to_s`), when
/// the metric's entry is a table of them rather than one answer.
const BINDER: &str = r#"
local ctx, windows, forecasts, recurring, stats, stat_names = ...
ctx.window = function(metric, span, stat)
  if stat ~= nil and not stats[stat] then
    error("ctx.window: unknown statistic " .. tostring(stat) .. " (one of " .. stat_names .. ")", 2)
  end
  local m = windows[metric]
  if m == nil then return nil end
  if type(span) == "number" then span = string.format("%ds", math.floor(span)) end
  local w = m[span]
  if stat ~= nil and w ~= nil then return w[stat] end
  return w
end
local fields = { value = true, lower = true, upper = true, source = true }
ctx.forecast = function(metric, horizon, field)
  if field ~= nil and not fields[field] then
    error("ctx.forecast: unknown field " .. tostring(field) .. " (one of value, lower, upper, source)", 2)
  end
  local f = forecasts[metric]
  if type(f) == "table" and f.value == nil then f = f[horizon] end
  if field ~= nil and f ~= nil then return f[field] end
  return f
end
ctx.recurring = function(metric, from, to, days)
  local r = recurring[metric]
  if type(r) == "table" and r.rise == nil then r = r[to] end
  return r
end
"#;

#[derive(Debug, Clone)]
pub struct ExampleOutcome {
    pub name: String,
    /// `None` means the example expects "hold" (no change).
    pub expected: Option<u32>,
    pub got: Result<Option<u32>, PolicyError>,
}

impl ExampleOutcome {
    pub fn passed(&self) -> bool {
        matches!(&self.got, Ok(g) if *g == self.expected)
    }

    /// What the policy gave: `hold`, a count, or `error: ...`.
    pub fn got_text(&self) -> String {
        match &self.got {
            Ok(g) => g.map_or("hold".to_string(), |n| n.to_string()),
            Err(e) => format!("error: {e}"),
        }
    }
}

fn err(source: &PolicySource, message: String) -> PolicyError {
    PolicyError {
        kind: PolicyErrorKind::Load,
        policy: source.version.clone(),
        message,
    }
}

fn examples_of(p: &LuaPolicy, source: &PolicySource) -> Result<Option<Table>, PolicyError> {
    match p.module().get::<Value>("examples") {
        Ok(Value::Nil) => Ok(None),
        Ok(Value::Table(t)) => Ok(Some(t)),
        Ok(other) => Err(err(
            source,
            format!("`examples` must be a table, got {}", other.type_name()),
        )),
        Err(e) => Err(err(source, e.to_string())),
    }
}

/// Loads the policy (an error here means it does not pass the sandbox check)
/// and runs its examples; `Ok(vec![])` when it declares none. Each load
/// has `limits.load_timeout`; each example's `decide` the decision's
/// `timeout`, as in `run`, so that `policy check` shows a decision that
/// would time out.
pub fn run_examples(
    source: &PolicySource,
    limits: PolicyLimits,
) -> Result<Vec<ExampleOutcome>, PolicyError> {
    let probe = LuaPolicy::load(source, &serde_json::Value::Null, limits)?;
    let Some(list) = examples_of(&probe, source)? else {
        return Ok(vec![]);
    };
    let n = list.raw_len();
    let mut out = Vec::with_capacity(n);
    for i in 1..=n {
        let mut p = LuaPolicy::load(source, &serde_json::Value::Null, limits)?;
        let ex: Table = examples_of(&p, source)?
            .and_then(|l| l.raw_get::<Table>(i).ok())
            .ok_or_else(|| err(source, format!("examples[{i}] is not a table")))?;
        let name: String = ex
            .get::<Option<String>>("name")
            .ok()
            .flatten()
            .unwrap_or_else(|| format!("example {i}"));
        let expected = match ex.get::<Value>("expect") {
            Ok(Value::Integer(n)) if n >= 0 => Some(n as u32),
            Ok(Value::Number(n)) if n >= 0.0 && n.fract() == 0.0 => Some(n as u32),
            Ok(Value::String(s)) if s.to_str().is_ok_and(|s| &*s == "hold") => None,
            _ => {
                return Err(err(
                    source,
                    format!("examples[{i}] ({name}): `expect` must be a whole number or \"hold\""),
                ))
            }
        };
        let num = |key: &str, default: f64| -> f64 {
            ex.get::<Option<f64>>(key).ok().flatten().unwrap_or(default)
        };
        let target: String = ex
            .get::<Option<String>>("target")
            .ok()
            .flatten()
            .unwrap_or_else(|| "example".into());
        let input = CallInput {
            target: &target,
            now_ms: (num("now", 1_764_000_000.0) * 1000.0) as i64,
            replicas: num("replicas", 1.0) as u32,
            min: num("min", 1.0) as u32,
            max: num("max", 100.0) as u32,
            schedule: None,
        };
        let setup = (|| -> mlua::Result<()> {
            let lua = p.lua();
            let or_empty = |v: Value| -> mlua::Result<Value> {
                Ok(if v.is_nil() {
                    Value::Table(lua.create_table()?)
                } else {
                    v
                })
            };
            p.ctx().raw_set("params", or_empty(ex.get("params")?)?)?;
            let binder: Function = lua.load(BINDER).set_name("=examples").into_function()?;
            binder.call::<()>((
                p.ctx().clone(),
                or_empty(ex.get("windows")?)?,
                or_empty(ex.get("forecast")?)?,
                or_empty(ex.get("recurring")?)?,
                super::stat_codes(lua)?,
                crate::window::STAT_NAMES.join(", "),
            ))
        })();
        let got = match setup {
            Err(e) => Err(err(source, format!("setting up the example: {e}"))),
            Ok(()) => p
                .init(&input)
                .and_then(|_| p.decide(&input))
                .and_then(|prop| match &prop.format {
                    // a reason kept as a pattern is formatted here, so
                    // that a pattern its arguments do not fit fails
                    Some(f) => p.try_render(f).map(|_| prop.replicas),
                    None => Ok(prop.replicas),
                }),
        };
        out.push(ExampleOutcome {
            name,
            expected,
            got,
        });
    }
    Ok(out)
}
