//! Lua decision policies (mlua, Lua 5.4) in a sandbox: only string, table,
//! math, utf8 and os.time/os.clock; a memory limit per VM and an instruction
//! budget per call. Targets that run one file share a VM (up to
//! `engine.targets_per_vm`), each with globals, `ctx` and `state` of its
//! own; the memory limit is per call.

mod bounded;
mod call;
mod examples;
mod layout;
pub mod pattern;
pub mod state;
mod watchdog;

pub use examples::{run_examples, ExampleOutcome};
pub use state::Plain;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bounded::Deadline;
use call::Current;
use mlua::chunk::ChunkMode;
use mlua::state::{GcGenParams, GcMode};
use mlua::{Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};
use sha2::{Digest, Sha256};

use crate::event::Metric;
use crate::forecast::recurring::{Reach, Recurring};
use crate::forecast::ForecastValue;
use crate::window::{SpanTooLong, WindowStats, STAT_NAMES};

const PRELUDE: &str = include_str!("prelude.lua");
/// `ctx.window`, `ctx.forecast`, `ctx.age` and `ctx.recurring` over the
/// raw Rust lookups: made once per VM, the same functions in every
/// target's `ctx`, reading the data of the target whose call is running.
const BINDER: &str = r#"
local raw_window, raw_forecast, raw_age, raw_recurring, raw_key, codes, raw_stat, stats, stat_names,
  fast_stat, fast_forecast = ...
-- the metric's index and the span's ms for the raw reads; a name or span
-- not seen yet goes through raw_key, which raises the errors that name it
local spans, known = {}, 0
local function key(metric, span)
  local m, ms = codes[metric], spans[span]
  if m and ms then return m, ms end
  m, ms = raw_key(metric, span)
  if known < 64 then spans[span] = ms; known = known + 1 end
  return m, ms
end
local function age(metric)
  return raw_age(codes[metric] or raw_key(metric, 1))
end
local function window(metric, span, stat)
  if stat ~= nil then
    local i = stats[stat]
    if not i then
      error("ctx.window: unknown statistic " .. tostring(stat) .. " (one of " .. stat_names .. ")", 2)
    end
    -- key's fast path inline: a Lua call fewer a read
    local m, ms = codes[metric], spans[span]
    if not (m and ms) then m, ms = key(metric, span) end
    -- a C function for the number; `nil, true` for what only raw_stat
    -- does (its errors)
    local v, other = fast_stat(m, ms, i)
    if other then return raw_stat(m, ms, i) end
    return v
  end
  local count, sum, mean, min, max, last, p50, p90, p95, p99, rate, slope = raw_window(key(metric, span))
  if count == nil then return nil end
  return { count = count, sum = sum, mean = mean, min = min, max = max, last = last,
           p50 = p50, p90 = p90, p95 = p95, p99 = p99, rate = rate, slope = slope }
end
local fields = { value = 1, lower = 2, upper = 3, source = 4 }
local function forecast(metric, horizon, field)
  if field ~= nil then
    local i = fields[field]
    if not i then
      error("ctx.forecast: unknown field " .. tostring(field) .. " (one of value, lower, upper, source)", 2)
    end
    -- the one field asked for, nil without a forecast: a C function for
    -- a number, raw_forecast for the source and the errors
    local m = codes[metric] or raw_key(metric, 1)
    local v, other = fast_forecast(m, horizon, i)
    if other then return (raw_forecast(m, horizon, i)) end
    return v
  end
  local value, lower, upper, source = raw_forecast(codes[metric] or raw_key(metric, 1), horizon)
  if value == nil then return nil end
  return { value = value, lower = lower, upper = upper, source = source }
end
local function recurring(metric, from, to, days, week_to, align, near)
  local rise, low, high, level, n, week, nearby, sharp = raw_recurring(metric, from, to, days, week_to, align, near)
  if rise == nil then return nil end
  return { rise = rise, low = low, high = high, level = level, days = n, week = week, near = nearby, sharp = sharp }
end
return window, forecast, age, recurring
"#;
/// Sets the per-call fields of `ctx` and calls a function with it, in one
/// crossing from Rust: one bound to `decide`, one taking the function.
const SETTER: &str = r#"
local ctx, decide = ...
-- written out twice: a call of `decide` is one Lua call, not two (its
-- closure and upvalues are what each of the tick's calls reads first)
return function(now, replicas, min, max)
  ctx.now = now; ctx.replicas = replicas; ctx.min = min; ctx.max = max
  return decide(ctx)
end, function(f, now, replicas, min, max)
  ctx.now = now; ctx.replicas = replicas; ctx.min = min; ctx.max = max
  return f(ctx)
end
"#;
/// About how much garbage a VM makes between two minor collections: a
/// VM of many targets collects more often than Lua's default (20% of its
/// heap), one of a few targets no more often (see [`PolicyVm::tune_gc`]).
const GC_YOUNG_BYTES: usize = 32 * 1024;
/// Instructions between two budget checks.
const HOOK_EVERY: u32 = 1000;
/// The most days `ctx.recurring` looks back (the history's two weeks).
const MAX_RECURRING_DAYS: f64 = 14.0;
const MAX_REASON: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyLimits {
    pub memory_bytes: usize,
    pub instruction_budget: u64,
    /// Wall-clock time of one decision (`decide`).
    pub timeout: std::time::Duration,
    /// Wall-clock time of one load: the file's top level for a target
    /// (for each example too) and its `init` ([`load_allowance`] of `timeout`,
    /// or `timeout` itself on the decision path:
    /// [`PolicyLimits::between_decisions`]).
    pub load_timeout: std::time::Duration,
}

impl PolicyLimits {
    /// The same limits for a load made between decisions (a policy file
    /// a running engine reloads): it holds up the decisions behind it,
    /// so it has a decision's time.
    pub fn between_decisions(self) -> Self {
        Self {
            load_timeout: self.timeout,
            ..self
        }
    }
}

/// The wall-clock allowance of a load off the decision path (at start, a
/// configuration check, `policy check`) for a decision `timeout`:
/// [`LOAD_TIMEOUT_FACTOR`] times it, at least [`MIN_LOAD_TIMEOUT`]. A
/// start on a busy machine, preempted or faulting in fresh memory, must
/// not fail on what a quiet one loads in a millisecond (it once failed a
/// whole scaler of 50,000 targets); the instruction budget and the memory
/// limit bound a load's work as they bound a call's.
pub fn load_allowance(timeout: std::time::Duration) -> std::time::Duration {
    (timeout * LOAD_TIMEOUT_FACTOR).max(MIN_LOAD_TIMEOUT)
}

/// See [`load_allowance`].
pub const LOAD_TIMEOUT_FACTOR: u32 = 20;
/// See [`load_allowance`].
pub const MIN_LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The largest policy file read.
pub const MAX_POLICY_BYTES: usize = 1 << 20;

/// The wall-clock budget of one policy call unless configured.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(50);

impl Default for PolicyLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 16 << 20,
            instruction_budget: 1_000_000,
            timeout: DEFAULT_TIMEOUT,
            load_timeout: load_allowance(DEFAULT_TIMEOUT),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyErrorKind {
    Load,
    Runtime,
    Budget,
    Memory,
    InvalidReturn,
    /// The call ran past its wall-clock deadline.
    Timeout,
    /// `ctx.state` holds a value a state snapshot cannot keep.
    State,
}

impl PolicyErrorKind {
    pub const ALL: [PolicyErrorKind; 7] = [
        PolicyErrorKind::Load,
        PolicyErrorKind::Runtime,
        PolicyErrorKind::Budget,
        PolicyErrorKind::Memory,
        PolicyErrorKind::InvalidReturn,
        PolicyErrorKind::Timeout,
        PolicyErrorKind::State,
    ];

    pub fn code(self) -> &'static str {
        match self {
            PolicyErrorKind::Load => "load",
            PolicyErrorKind::Runtime => "runtime",
            PolicyErrorKind::Budget => "budget",
            PolicyErrorKind::Memory => "memory",
            PolicyErrorKind::InvalidReturn => "invalid_return",
            PolicyErrorKind::Timeout => "timeout",
            PolicyErrorKind::State => "state",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("policy {policy} ({}): {message}", kind.code())]
pub struct PolicyError {
    pub kind: PolicyErrorKind,
    pub policy: String,
    pub message: String,
}

/// What a policy asked for: `replicas: None` means "no change".
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub replicas: Option<u32>,
    pub reason: Option<String>,
    /// A reason returned as a `string.format` pattern and its arguments
    /// (`return n, "depth %d", depth`), formatted only when it is read
    /// ([`LuaPolicy::render`]); `reason` is then None.
    pub format: Option<ReasonFormat>,
}

/// The most arguments of a reason kept unformatted; a reason with more is
/// formatted in the call, as `string.format` would.
pub const LAZY_ARGS: usize = 6;

/// A reason's `string.format` pattern and arguments, kept as plain values
/// until the reason is read: at 50,000 targets a tick formats 50,000
/// reasons and reads a few dozen (issue 21).
#[derive(Debug, Clone, PartialEq)]
pub struct ReasonFormat {
    pattern: Arc<str>,
    args: [FormatArg; LAZY_ARGS],
    len: u8,
}

impl ReasonFormat {
    /// The text of a reason whose pattern its arguments did not fit: the
    /// pattern and the error.
    pub fn failed(&self, e: &PolicyError) -> String {
        clip(format!(
            "{} (the reason's format failed: {})",
            self.pattern,
            e.message.lines().next().unwrap_or("")
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
enum FormatArg {
    #[default]
    Nil,
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(Arc<str>),
}

impl FormatArg {
    /// `v` kept; a string as Rust text from `vm`'s (a metric's or a
    /// source's name repeats, as a pattern does).
    fn from_value(v: &Value, vm: &PolicyVm) -> Result<Self, InvalidReturn> {
        Ok(match v {
            Value::Nil => FormatArg::Nil,
            Value::String(s) => FormatArg::Str(vm.pattern(s)),
            Value::Boolean(b) => FormatArg::Bool(*b),
            Value::Integer(i) => FormatArg::Int(*i),
            Value::Number(n) => FormatArg::Num(*n),
            other => return Err(InvalidReturn::ReasonArg(other.type_name())),
        })
    }

    fn into_lua(self, lua: &Lua) -> mlua::Result<Value> {
        Ok(match self {
            FormatArg::Nil => Value::Nil,
            FormatArg::Bool(b) => Value::Boolean(b),
            FormatArg::Int(i) => Value::Integer(i),
            FormatArg::Num(n) => Value::Number(n),
            FormatArg::Str(s) => Value::String(lua.create_string(&*s)?),
        })
    }
}

/// The data a policy reads through `ctx.window` and `ctx.forecast`.
pub trait SignalView: Send + 'static {
    fn window(&self, metric: Metric, span_ms: i64) -> Result<Option<WindowStats>, SpanTooLong>;
    /// One statistic of [`SignalView::window`], [`STAT_NAMES`]\[`stat`\]
    /// (`ctx.window(metric, span, stat)`); a view may compute it alone.
    fn window_stat(
        &self,
        metric: Metric,
        span_ms: i64,
        stat: usize,
    ) -> Result<Option<f64>, SpanTooLong> {
        Ok(self.window(metric, span_ms)?.and_then(|s| s.at(stat)))
    }
    fn forecast(&self, metric: Metric, horizon_ms: i64) -> Option<ForecastValue>;
    /// What `metric` did within `reach` after this time of day on each of
    /// the last `days` days (`ctx.recurring`).
    fn recurring(
        &self,
        _metric: Metric,
        _reach: Reach,
        _days: usize,
        _align_ms: i64,
    ) -> Option<Recurring> {
        None
    }
    /// How long ago the newest sample of `metric` was taken, in ms
    /// (`ctx.age`); None before any.
    fn age_ms(&self, _metric: Metric) -> Option<i64> {
        None
    }
    /// The policy read `metric` (through `ctx.window` or `ctx.age`): the
    /// metrics a target's staleness is judged on.
    fn note_read(&mut self, _metric: Metric) {}
}

/// Per-call facts for `ctx`.
#[derive(Debug, Clone, Copy)]
pub struct CallInput<'a> {
    pub target: &'a str,
    pub now_ms: i64,
    pub replicas: u32,
    pub min: u32,
    pub max: u32,
    /// The schedule in force, for `ctx.schedule`.
    pub schedule: Option<&'a crate::schedule::Active>,
}

/// A policy's source with its identity (`name@sha7`).
#[derive(Debug, Clone)]
pub struct PolicySource {
    pub path: PathBuf,
    pub text: String,
    pub version: String,
}

impl PolicySource {
    /// Reads a policy file: a regular file of at most [`MAX_POLICY_BYTES`]
    /// (`/dev/zero` or a FIFO would be read until memory runs out).
    pub fn read(path: &Path) -> Result<Self, PolicyError> {
        use std::io::Read;
        let fail = |message: String| PolicyError {
            kind: PolicyErrorKind::Load,
            policy: path.display().to_string(),
            message,
        };
        let cannot = |e: std::io::Error| fail(format!("cannot read {}: {e}", path.display()));
        let file = std::fs::File::open(path).map_err(cannot)?;
        let meta = file.metadata().map_err(cannot)?;
        if !meta.is_file() {
            return Err(fail(format!("{} is not a regular file", path.display())));
        }
        let mut bytes = Vec::new();
        file.take(MAX_POLICY_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(cannot)?;
        if bytes.len() > MAX_POLICY_BYTES {
            return Err(fail(format!(
                "{} is larger than {MAX_POLICY_BYTES} bytes",
                path.display()
            )));
        }
        let text = String::from_utf8(bytes)
            .map_err(|e| fail(format!("{} is not UTF-8: {e}", path.display())))?;
        Ok(Self::from_text(path, text))
    }

    pub fn from_text(path: &Path, text: String) -> Self {
        let hash = Sha256::digest(text.as_bytes());
        let hex: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Self {
            path: path.to_owned(),
            version: format!("{name}@{}", &hex[..7]),
            text,
        }
    }
}

/// A sandboxed VM with one policy file compiled in it, shared by the
/// targets that run that file (up to `engine.targets_per_vm` of them).
/// Each target runs the compiled file afresh with a globals table of its
/// own, so file-level locals, the module table, globals and `ctx` are the
/// target's; only the sandbox's libraries and the prelude are shared.
pub struct PolicyVm {
    lua: Lua,
    /// The file compiled as a function of its `_ENV`.
    factory: Function,
    setter: Function,
    /// `ctx.window`, `ctx.forecast`, `ctx.age`, `ctx.recurring`.
    reads: [Function; 4],
    /// The data of the target whose call is running, for `reads`.
    current: Current,
    /// `{__index = sandbox globals}`, the metatable of each target's globals.
    env_meta: Table,
    /// "replicas" and "reason", made once: a returned table is read with
    /// them instead of a new Lua string per field per call.
    keys: [mlua::LuaString; 2],
    /// `string.format` as the sandbox had it before the file ran.
    format: Function,
    /// The reason patterns and string arguments seen (a policy returns the
    /// same few constants): each kept as Rust text once, not copied out of
    /// Lua every call.
    patterns: Mutex<Vec<(usize, mlua::LuaString, Arc<str>)>>,
    used: Arc<AtomicU64>,
    deadline: Arc<Deadline>,
    /// The count hook as the sandbox set it, which a decision runs
    /// without until the watchdog sets it again (`watchdog`).
    hook: Option<watchdog::Hook>,
    limits: PolicyLimits,
    version: String,
}

impl std::fmt::Debug for PolicyVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyVm")
            .field("version", &self.version)
            .finish()
    }
}

impl PolicyVm {
    /// A fresh sandbox with `source` compiled in it (not run yet).
    pub fn new(source: &PolicySource, limits: PolicyLimits) -> Result<Arc<Self>, PolicyError> {
        let version = source.version.clone();
        let err = |kind, e: mlua::Error| PolicyError {
            kind,
            policy: version.clone(),
            message: e.to_string(),
        };
        let used = Arc::new(AtomicU64::new(0));
        let deadline = Arc::new(Deadline::new());
        let lua = sandbox(limits, used.clone(), deadline.clone())
            .map_err(|e| err(PolicyErrorKind::Load, e))?;
        used.store(0, Ordering::Relaxed);
        deadline.arm_for(limits.load_timeout);
        let hook = watchdog::hook_of(&lua);
        // On the file's first line, so line numbers stay the file's.
        let text = format!("local _ENV = ...; {}", source.text);
        let current = Current::new(&lua);
        type Compiled = (
            Function,
            Function,
            [Function; 4],
            Table,
            [mlua::LuaString; 2],
            Function,
        );
        let compiled = (|| -> mlua::Result<Compiled> {
            let factory = lua
                .load(text)
                .set_name(format!("@{}", source.path.display()))
                .set_mode(ChunkMode::Text)
                .into_function()?;
            let setter = lua.load(SETTER).set_name("=ctx").into_function()?;
            let reads = reads(&lua, &current)?;
            let env_meta = lua.create_table()?;
            env_meta.raw_set("__index", lua.globals())?;
            let keys = [lua.create_string("replicas")?, lua.create_string("reason")?];
            let format = lua.globals().get::<Table>("string")?.get("format")?;
            Ok((factory, setter, reads, env_meta, keys, format))
        })();
        let (factory, setter, reads, env_meta, keys, format) =
            compiled.map_err(|e| err(classify(&e, &used, &deadline, limits), e))?;
        Ok(Arc::new(Self {
            lua,
            factory,
            setter,
            reads,
            current,
            env_meta,
            keys,
            format,
            patterns: Mutex::new(Vec::new()),
            used,
            deadline,
            hook,
            limits,
            version,
        }))
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// `pattern` (or a string argument) as Rust text, from those seen (at
    /// most 32 kept). Found by the Lua string's address: a constant of the
    /// file is one string for every call, and the string kept here cannot
    /// be collected, so its address is not reused for another.
    fn pattern(&self, pattern: &mlua::LuaString) -> Arc<str> {
        let at = pattern.to_pointer() as usize;
        let mut seen = self.patterns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, p)) = seen.iter().find(|(a, _, _)| *a == at) {
            return p.clone();
        }
        let p: Arc<str> = String::from_utf8_lossy(&pattern.as_bytes()).into();
        if seen.len() >= 32 {
            seen.remove(0);
        }
        seen.push((at, pattern.clone(), p.clone()));
        p
    }

    /// A minor collection once about [`GC_YOUNG_BYTES`] of garbage is
    /// made, as a percentage of the heap: 2% for a VM of 256 targets,
    /// Lua's 20% for a VM of a few. At 20% the garbage in flight across
    /// 200 VMs of 256 targets was tens of MB, and every new table landed
    /// on memory long out of the cache (issue 21: 7-11% more evaluations
    /// a second at 50,000 targets); a small VM collecting at 2% only pays
    /// for more collections (12% on one target's `decide`).
    fn tune_gc(&self) {
        let percent = (GC_YOUNG_BYTES * 100 / self.lua.used_memory().max(1)).clamp(2, 20);
        self.lua.gc_set_mode(GcMode::Generational(
            GcGenParams::default().minor_multiplier(percent as std::ffi::c_int),
        ));
    }

    /// Readies the VM for one call: the instruction count, the deadline,
    /// and room for `memory_bytes` more than the VM holds now.
    fn arm(&self) {
        self.arm_within(self.limits.timeout);
    }

    /// [`PolicyVm::arm`] for a load (`PolicyLimits::load_timeout`).
    fn arm_load(&self) {
        self.arm_within(self.limits.load_timeout);
    }

    fn arm_within(&self, allowance: std::time::Duration) {
        self.used.store(0, Ordering::Relaxed);
        self.deadline.arm_for(allowance);
        let room = self.lua.used_memory() + self.limits.memory_bytes;
        let _ = self.lua.set_memory_limit(room);
    }
}

/// Runs one full collection in each VM that `policies` run in, once
/// their targets are built: a VM that just loaded its targets holds
/// only young objects, and its first collection would otherwise traverse
/// all of them inside some target's first call (about 5 ms for a VM of
/// 256 targets, issue 21), in the first tick after a start instead of
/// before the scaler is ready.
pub fn settle<'a>(policies: impl IntoIterator<Item = &'a LuaPolicy>) {
    let mut seen = std::collections::HashSet::new();
    for p in policies {
        if seen.insert(Arc::as_ptr(&p.vm)) {
            let _ = p.vm.lua.gc_collect();
        }
    }
}

/// Hands out VMs: the targets that run the same file (same path, same
/// content, same limits) share one VM, up to `per_vm` targets each.
#[derive(Debug)]
pub struct VmPool {
    per_vm: usize,
    open: std::collections::HashMap<(PathBuf, String), (std::sync::Weak<PolicyVm>, usize)>,
    /// While building many targets at once: each file read once.
    sources: Option<std::collections::HashMap<PathBuf, PolicySource>>,
}

impl VmPool {
    pub fn new(per_vm: usize) -> Self {
        Self {
            per_vm: per_vm.max(1),
            open: Default::default(),
            sources: None,
        }
    }

    /// Reads each policy file once until [`VmPool::fresh_reads`]: for
    /// building a configuration's targets, not for noticing changes.
    pub fn reading_once(mut self) -> Self {
        self.sources = Some(Default::default());
        self
    }

    /// Every read reads the file again (a running engine's reloads).
    pub fn fresh_reads(&mut self) {
        self.sources = None;
    }

    /// The policy file at `path`.
    pub fn read(&mut self, path: &Path) -> Result<PolicySource, PolicyError> {
        let Some(cache) = &mut self.sources else {
            return PolicySource::read(path);
        };
        if let Some(src) = cache.get(path) {
            return Ok(src.clone());
        }
        let src = PolicySource::read(path)?;
        cache.insert(path.to_owned(), src.clone());
        Ok(src)
    }

    /// A VM for `source` with room for one more target.
    pub fn vm(
        &mut self,
        source: &PolicySource,
        limits: PolicyLimits,
    ) -> Result<Arc<PolicyVm>, PolicyError> {
        if self.per_vm == 1 {
            return PolicyVm::new(source, limits);
        }
        let key = (source.path.clone(), source.version.clone());
        if let Some((weak, members)) = self.open.get_mut(&key) {
            if let Some(vm) = weak.upgrade().filter(|vm| vm.limits == limits) {
                if *members < self.per_vm {
                    *members += 1;
                    return Ok(vm);
                }
            }
        }
        let vm = PolicyVm::new(source, limits)?;
        self.open.retain(|_, (weak, _)| weak.strong_count() > 0);
        self.open.insert(key, (Arc::downgrade(&vm), 1));
        Ok(vm)
    }

    /// `source` run for one more target, in a shared VM.
    pub fn load(
        &mut self,
        source: &PolicySource,
        params: &serde_json::Value,
        limits: PolicyLimits,
    ) -> Result<LuaPolicy, PolicyError> {
        LuaPolicy::instantiate(self.vm(source, limits)?, params)
    }
}

/// One target's run of a policy: its module table and `ctx` in a VM it may
/// share with other targets running the same file.
pub struct LuaPolicy {
    vm: Arc<PolicyVm>,
    module: Table,
    ctx: Table,
    /// `decide` with the per-call fields set.
    run_decide: Function,
    /// Any function of `ctx` with the per-call fields set.
    run_with: Function,
    target: String,
    /// `ctx.schedule` is set (so it is cleared when none is active).
    has_schedule: bool,
    /// What `ctx.window` and the other reads see during this target's calls.
    view: Option<SharedView>,
    /// The objects a call of `decide` reads first, kept alive here, and
    /// their addresses, to ask for them ahead of the call
    /// ([`LuaPolicy::prefetch_headers`]).
    hot: Hot,
}

/// The Lua objects of one target that every call reads: `ctx`, its
/// `params`, the closure that sets the per-call fields and `decide`.
/// Each is kept alive, so its address holds: `ctx` and the setter by
/// `LuaPolicy`'s own references, `decide` by the setter's upvalue, and
/// `params` (which a policy may take out of `ctx`) by the one here.
struct Hot {
    _params: Option<Table>,
    /// Addresses of `ctx` and `params` (tables), the setter closure and
    /// `decide` when it is a Lua function (0: none).
    tables: [usize; 2],
    closures: [usize; 2],
}

impl std::fmt::Debug for LuaPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuaPolicy")
            .field("version", &self.vm.version)
            .finish()
    }
}

impl LuaPolicy {
    /// Builds a sandboxed VM of its own, runs the policy file in it and
    /// prepares `ctx` with `params`. Does not call `init`.
    pub fn load(
        source: &PolicySource,
        params: &serde_json::Value,
        limits: PolicyLimits,
    ) -> Result<Self, PolicyError> {
        Self::instantiate(PolicyVm::new(source, limits)?, params)
    }

    /// Runs the file compiled in `vm` for one more target: a globals table,
    /// module and `ctx` of its own. Does not call `init`.
    pub fn instantiate(vm: Arc<PolicyVm>, params: &serde_json::Value) -> Result<Self, PolicyError> {
        let err = |kind, e: mlua::Error| PolicyError {
            kind,
            policy: vm.version.clone(),
            message: e.to_string(),
        };
        vm.arm_load();
        let lua = &vm.lua;
        let module = (|| -> mlua::Result<Value> {
            let env = lua.create_table()?;
            env.set_metatable(Some(vm.env_meta.clone()))?;
            env.raw_set("_G", &env)?;
            vm.factory.call::<Value>(env)
        })()
        .map_err(|e| err(classify(&e, &vm.used, &vm.deadline, vm.limits), e))?;
        let Value::Table(module) = module else {
            return Err(PolicyError {
                kind: PolicyErrorKind::Load,
                policy: vm.version.clone(),
                message: format!(
                    "the file must return a table with a decide function, it returned {}",
                    module.type_name()
                ),
            });
        };
        let decide = match module.get::<Value>("decide") {
            Ok(Value::Function(f)) => f,
            _ => {
                return Err(PolicyError {
                    kind: PolicyErrorKind::Load,
                    policy: vm.version.clone(),
                    message: "the returned table has no function `decide`".into(),
                })
            }
        };
        let (ctx, run_decide, run_with, params) =
            (|| -> mlua::Result<(Table, Function, Function, Value)> {
                let ctx = lua.create_table()?;
                let params = json_to_lua(lua, params, 0)?;
                ctx.set("params", &params)?;
                ctx.set("state", lua.create_table()?)?;
                let (run_decide, run_with) = vm
                    .setter
                    .call::<(Function, Function)>((ctx.clone(), decide.clone()))?;
                Ok((ctx, run_decide, run_with, params))
            })()
            .map_err(|e| err(classify(&e, &vm.used, &vm.deadline, vm.limits), e))?;
        let params = match params {
            Value::Table(t) => Some(t),
            _ => None,
        };
        // a C function's object is laid out otherwise: only a Lua
        // function's upvalues are looked for
        let lua_function = |f: &Function| {
            if f.info().what == "Lua" {
                f.to_pointer() as usize
            } else {
                0
            }
        };
        let hot = Hot {
            tables: [
                ctx.to_pointer() as usize,
                params.as_ref().map_or(0, |t| t.to_pointer() as usize),
            ],
            closures: [lua_function(&run_decide), lua_function(&decide)],
            _params: params,
        };
        vm.tune_gc();
        Ok(Self {
            vm,
            module,
            ctx,
            run_decide,
            run_with,
            target: String::new(),
            has_schedule: false,
            view: None,
            hot,
        })
    }

    /// The first of two stages that ask the CPU for what a call of
    /// `decide` reads, a target or two ahead of its call: the headers of
    /// `ctx`, `params`, the setter closure and `decide`, and the target's name.
    pub fn prefetch_headers(&self) {
        for p in self.hot.tables.iter().chain(&self.hot.closures) {
            layout::header(*p as *const std::ffi::c_void);
        }
        // the name `ctx.target` was last set to, compared with the call's
        crate::prefetch::lines(self.target.as_ptr(), self.target.len(), 1);
    }

    /// The second stage, the headers in cache by now: the hash slots of
    /// `ctx` and `params` (where `ctx.window`, `ctx.params.x` are found)
    /// and the closures' upvalues (the file's locals `decide` uses).
    pub fn prefetch_inside(&self) {
        for p in self.hot.tables {
            layout::table_slots(p as *const std::ffi::c_void);
        }
        for p in self.hot.closures {
            layout::closure_upvalues(p as *const std::ffi::c_void);
        }
    }

    pub fn version(&self) -> &str {
        &self.vm.version
    }

    /// The VM it runs in (shared with the other targets of its file).
    pub fn vm(&self) -> &Arc<PolicyVm> {
        &self.vm
    }

    /// The policy's module table (for its declared `examples`).
    pub fn module(&self) -> &Table {
        &self.module
    }

    pub fn lua(&self) -> &Lua {
        &self.vm.lua
    }

    pub fn ctx(&self) -> &Table {
        &self.ctx
    }

    /// Installs `ctx.window`, `ctx.forecast`, `ctx.age` and
    /// `ctx.recurring`, reading from `view` during this target's calls.
    pub fn bind<V: SignalView>(&mut self, view: Arc<Mutex<V>>) -> Result<(), PolicyError> {
        self.view = Some(view);
        let names = ["window", "forecast", "age", "recurring"];
        names
            .iter()
            .zip(&self.vm.reads)
            .try_for_each(|(name, f)| self.ctx.raw_set(*name, f))
            .map_err(|e| self.error(PolicyErrorKind::Load, e))
    }

    fn error(&self, kind: PolicyErrorKind, e: mlua::Error) -> PolicyError {
        PolicyError {
            kind,
            policy: self.vm.version.clone(),
            message: e.to_string(),
        }
    }

    fn set_target(&mut self, input: &CallInput) -> mlua::Result<()> {
        if self.target != input.target {
            self.ctx.raw_set("target", input.target)?;
            self.target = input.target.to_owned();
        }
        match input.schedule {
            Some(a) => {
                let t = self.vm.lua.create_table()?;
                t.raw_set("name", a.name.as_str())?;
                t.raw_set("min", a.min)?;
                t.raw_set("max", a.max)?;
                t.raw_set("started", a.started_ms as f64 / 1000.0)?;
                t.raw_set("ends", a.ends_ms as f64 / 1000.0)?;
                self.ctx.raw_set("schedule", t)?;
                self.has_schedule = true;
            }
            None if self.has_schedule => {
                self.ctx.raw_set("schedule", Value::Nil)?;
                self.has_schedule = false;
            }
            None => {}
        }
        Ok(())
    }

    fn args(input: &CallInput) -> (f64, u32, u32, u32) {
        (
            input.now_ms as f64 / 1000.0,
            input.replicas,
            input.min,
            input.max,
        )
    }

    /// Calls `init(ctx)` when the policy defines it.
    pub fn init(&mut self, input: &CallInput) -> Result<(), PolicyError> {
        let init = match self.module.get::<Value>("init") {
            Ok(Value::Function(f)) => f,
            _ => return Ok(()),
        };
        self.set_target(input)
            .map_err(|e| self.error(PolicyErrorKind::Runtime, e))?;
        self.vm.arm_load();
        let (now, replicas, min, max) = Self::args(input);
        let _reading = self.vm.current.reading(self.view.as_ref());
        self.run_with
            .call::<Value>((init, now, replicas, min, max))
            .map(|_| ())
            .map_err(|e| self.fail(e))
    }

    fn fail(&self, e: mlua::Error) -> PolicyError {
        let kind = classify(&e, &self.vm.used, &self.vm.deadline, self.vm.limits);
        if kind == PolicyErrorKind::Memory {
            // Give the next call the memory the failed one held.
            let _ = self.vm.lua.gc_collect();
        }
        self.error(kind, e)
    }

    /// One decision. Errors are contained: the VM stays usable.
    pub fn decide(&mut self, input: &CallInput) -> Result<Proposal, PolicyError> {
        self.set_target(input).map_err(|e| self.fail(e))?;
        self.vm.arm();
        let reading = self.vm.current.reading(self.view.as_ref());
        let vm = &self.vm;
        let out = watchdog::unhooked(&vm.lua, vm.hook, vm.limits.timeout, || {
            self.run_decide.call::<Returned>(Self::args(input))
        });
        drop(reading);
        let (first, reason, a1, a2, a3, a4, a5, a6, more) = out.map_err(|e| self.fail(e))?;
        let invalid = |e: InvalidReturn| PolicyError {
            kind: PolicyErrorKind::InvalidReturn,
            policy: self.vm.version.clone(),
            message: e.to_string(),
        };
        let mut p = proposal(&first, &self.vm.keys).map_err(invalid)?;
        let pattern = match reason {
            Value::Nil => return Ok(p),
            _ if p.reason.is_some() => return Err(invalid(InvalidReturn::TwoReasons)),
            Value::String(s) => s,
            other => return Err(invalid(InvalidReturn::ReasonType(other.type_name()))),
        };
        let args = [a1, a2, a3, a4, a5, a6];
        let len = args.iter().rposition(|a| !a.is_nil()).map_or(0, |i| i + 1);
        if len == 0 {
            p.reason = Some(clip(pattern.to_string_lossy()));
        } else if more.is_empty() {
            let mut kept: [FormatArg; LAZY_ARGS] = Default::default();
            for (k, a) in kept.iter_mut().zip(&args[..len]) {
                *k = FormatArg::from_value(a, &self.vm).map_err(invalid)?;
            }
            p.format = Some(ReasonFormat {
                pattern: self.vm.pattern(&pattern),
                args: kept,
                len: len as u8,
            });
        } else {
            // more than LAZY_ARGS: formatted now
            let all = args.into_iter().chain(more);
            let text = self
                .vm
                .format
                .call::<mlua::LuaString>((pattern, mlua::Variadic::from_iter(all)))
                .map_err(|e| self.fail(e))?;
            p.reason = Some(clip(text.to_string_lossy()));
        }
        Ok(p)
    }

    /// The text of a reason returned as a pattern and arguments, formatted
    /// as `string.format` formats it in this VM; a pattern the arguments do
    /// not fit reads as the pattern and the error.
    pub fn render(&self, f: &ReasonFormat) -> String {
        self.try_render(f).unwrap_or_else(|e| f.failed(&e))
    }

    /// [`LuaPolicy::render`], with the error of a pattern the arguments do
    /// not fit (`policy check` runs every example's reason through it).
    pub fn try_render(&self, f: &ReasonFormat) -> Result<String, PolicyError> {
        // outside a call: a budget and a deadline of its own
        self.vm.arm();
        let lua = &self.vm.lua;
        let text = (|| -> mlua::Result<String> {
            let mut args = Vec::with_capacity(usize::from(f.len) + 1);
            args.push(Value::String(lua.create_string(&*f.pattern)?));
            for a in &f.args[..usize::from(f.len)] {
                args.push(a.clone().into_lua(lua)?);
            }
            let s = self
                .vm
                .format
                .call::<mlua::LuaString>(mlua::MultiValue::from_iter(args))?;
            Ok(s.to_string_lossy())
        })();
        text.map(clip).map_err(|e| PolicyError {
            kind: PolicyErrorKind::InvalidReturn,
            policy: self.vm.version.clone(),
            message: format!("the reason {:?}: {e}", &*f.pattern),
        })
    }

    /// The plain part of `ctx.state` for a snapshot; what had to be left
    /// out (a function, userdata) is a policy error of kind `state`,
    /// returned beside the rest.
    pub fn export_state(&self) -> (state::Plain, Option<PolicyError>) {
        let Ok(Value::Table(t)) = self.ctx.raw_get::<Value>("state") else {
            return (state::Plain::Table(Vec::new()), None);
        };
        let (plain, dropped) = state::export(&t);
        let err = (!dropped.is_empty()).then(|| PolicyError {
            kind: PolicyErrorKind::State,
            policy: self.vm.version.clone(),
            message: state::NotPlain(dropped).to_string(),
        });
        (plain, err)
    }

    /// Replaces `ctx.state` with a snapshot's.
    pub fn import_state(&self, plain: &state::Plain) -> Result<(), PolicyError> {
        let v = state::import(&self.vm.lua, plain).map_err(|e| self.fail(e))?;
        if let Value::Table(_) = v {
            self.ctx.raw_set("state", v).map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// Copies plain data (numbers, strings, booleans, tables of them) of
    /// `ctx.state` from `old`, so a reload keeps what the policy learned.
    pub fn adopt_state(&self, old: &LuaPolicy) -> Result<(), PolicyError> {
        let state: Value = old.ctx.raw_get("state").map_err(|e| self.fail(e))?;
        let copied = copy_plain(&self.vm.lua, &state, 0).map_err(|e| self.fail(e))?;
        if let Value::Table(_) = copied {
            self.ctx
                .raw_set("state", copied)
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }
}

/// A target's data, as the reads see it.
type SharedView = Arc<Mutex<dyn SignalView>>;

/// `ctx.recurring`'s arguments: the metric, `from` and `to`, then `days`,
/// `week_to`, `align` and `near`, each optional.
type RecurringArgs = (
    mlua::LuaString,
    f64,
    f64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);

/// The VM's `ctx.window`, `ctx.forecast`, `ctx.age` and `ctx.recurring`:
/// Rust returns plain values and a Lua table constructor packs them (far
/// cheaper than filling a table field by field through the API).
fn reads(lua: &Lua, current: &Current) -> mlua::Result<[Function; 4]> {
    let current = *current;
    // metrics by index and spans in ms (`key` in BINDER): no strings
    // cross into Rust on the hot path
    let raw_window = lua.create_function(move |_, (metric, span_ms): (usize, i64)| {
        let metric = metric_at(metric)?;
        let stats = current.with(|view| {
            view.note_read(metric);
            view.window(metric, span_ms).map_err(mlua::Error::runtime)
        })?;
        Ok(match stats {
            None => (
                None, 0.0, 0.0, 0.0, 0.0, 0.0, None, None, None, None, 0.0, 0.0,
            ),
            Some(s) => {
                let q = s.quantiles;
                (
                    Some(s.count),
                    s.sum,
                    s.mean,
                    s.min,
                    s.max,
                    s.last,
                    q.map(|q| q[0]),
                    q.map(|q| q[1]),
                    q.map(|q| q[2]),
                    q.map(|q| q[3]),
                    s.rate,
                    s.slope,
                )
            }
        })
    })?;
    // the built-in models' names made once, not a new Lua string a read
    let builtin_names = [
        lua.create_string("holt_winters")?,
        lua.create_string("holt")?,
    ];
    // with `field` (1 value, 2 lower, 3 upper, 4 source) that one field
    // first and nothing else: no source string made for a read of the value
    let raw_forecast = lua.create_function(
        move |lua, (metric, horizon, field): (usize, f64, Option<usize>)| {
            let metric = metric_at(metric)?;
            let Some(horizon_ms) = horizon_ms(horizon) else {
                return Err(mlua::Error::runtime(format!(
                    "forecast horizon must be non-negative seconds, got {horizon}"
                )));
            };
            let f = current.with(|view| Ok(view.forecast(metric, horizon_ms)))?;
            let Some(f) = f else {
                return Ok((Value::Nil, Value::Nil, Value::Nil, Value::Nil));
            };
            let source = || -> mlua::Result<Value> {
                Ok(Value::String(match &f.source {
                    std::borrow::Cow::Borrowed("holt_winters") => builtin_names[0].clone(),
                    std::borrow::Cow::Borrowed("holt") => builtin_names[1].clone(),
                    other => lua.create_string(other.as_bytes())?,
                }))
            };
            let (value, lower, upper) = (
                Value::Number(f.value),
                Value::Number(f.lower),
                Value::Number(f.upper),
            );
            Ok(match field {
                Some(1) => (value, Value::Nil, Value::Nil, Value::Nil),
                Some(2) => (lower, Value::Nil, Value::Nil, Value::Nil),
                Some(3) => (upper, Value::Nil, Value::Nil, Value::Nil),
                Some(_) => (source()?, Value::Nil, Value::Nil, Value::Nil),
                None => (value, lower, upper, source()?),
            })
        },
    )?;
    let raw_age = lua.create_function(move |_, metric: usize| {
        let metric = metric_at(metric)?;
        current.with(|view| {
            view.note_read(metric);
            Ok(view.age_ms(metric).map(|ms| ms.max(0) as f64 / 1000.0))
        })
    })?;
    let raw_recurring = lua.create_function(
        move |_, (metric, from, to, days, week_to, align, near): RecurringArgs| {
            let metric = parse_metric(&metric)?;
            let days = days.unwrap_or(7.0);
            if !(from.is_finite() && to.is_finite() && 0.0 <= from && from <= to && to <= 86_400.0) {
                return Err(mlua::Error::runtime(format!(
                    "recurring window must be seconds with 0 <= from <= to <= 86400, got {from} to {to}"
                )));
            }
            let week_to = week_to.unwrap_or(to);
            if !(week_to.is_finite() && to <= week_to && week_to <= 86_400.0) {
                return Err(mlua::Error::runtime(format!(
                    "recurring week_to must be seconds with to <= week_to <= 86400, got {week_to} (to {to})"
                )));
            }
            if !(1.0..=MAX_RECURRING_DAYS).contains(&days) {
                return Err(mlua::Error::runtime(format!(
                    "recurring days must be 1 to {MAX_RECURRING_DAYS}, got {days}"
                )));
            }
            let align = align.unwrap_or(0.0);
            let max_align = crate::forecast::recurring::MAX_ALIGN_MS as f64 / 1000.0;
            if !(0.0..=max_align).contains(&align) {
                return Err(mlua::Error::runtime(format!(
                    "recurring align must be seconds from 0 to {max_align}, got {align}"
                )));
            }
            let near = near.unwrap_or(to);
            if !(near.is_finite() && from <= near && near <= to) {
                return Err(mlua::Error::runtime(format!(
                    "recurring near must be seconds with from <= near <= to, got {near} (from {from}, to {to})"
                )));
            }
            let ms = |s: f64| (s * 1000.0) as i64;
            let reach = Reach {
                from_ms: ms(from),
                to_ms: ms(to),
                near_ms: ms(near),
                week_to_ms: ms(week_to),
            };
            let r = current
                .with(|view| Ok(view.recurring(metric, reach, days as usize, ms(align))))?;
            Ok(match r {
                None => (None, 0.0, 0.0, 0.0, 0, None, None, None),
                Some(r) => (
                    Some(r.rise),
                    r.low,
                    r.high,
                    r.level,
                    r.days,
                    r.week,
                    r.near,
                    r.sharp,
                ),
            })
        },
    )?;
    let raw_stat =
        lua.create_function(move |_, (metric, span_ms, stat): (usize, i64, usize)| {
            let metric = metric_at(metric)?;
            current.with(|view| {
                view.note_read(metric);
                view.window_stat(metric, span_ms, stat)
                    .map_err(mlua::Error::runtime)
            })
        })?;
    let raw_key = lua.create_function(|_, (metric, span): (mlua::LuaString, Value)| {
        Ok((parse_metric(&metric)? as usize, span_ms(&span)?))
    })?;
    let codes = lua.create_table()?;
    for m in Metric::ALL {
        codes.raw_set(m.name(), m as usize)?;
    }
    let binder = lua.load(BINDER).set_name("=bind").into_function()?;
    let (w, f, a, r) = binder.call::<(Function, Function, Function, Function)>((
        raw_window,
        raw_forecast,
        raw_age,
        raw_recurring,
        raw_key,
        codes,
        raw_stat,
        stat_codes(lua)?,
        STAT_NAMES.join(", "),
        call::stat_function(lua)?,
        call::forecast_function(lua)?,
    ))?;
    Ok([w, f, a, r])
}

/// `{count = 0, sum = 1, ...}`: the index in [`STAT_NAMES`] of each name
/// `ctx.window(metric, span, stat)` takes (nil for any other).
pub(super) fn stat_codes(lua: &Lua) -> mlua::Result<Table> {
    let codes = lua.create_table()?;
    for (i, name) in STAT_NAMES.iter().enumerate() {
        codes.raw_set(*name, i)?;
    }
    Ok(codes)
}

/// A fresh VM with only the allowed libraries, the prelude, the memory limit
/// and the instruction hook.
fn sandbox(
    limits: PolicyLimits,
    used: Arc<AtomicU64>,
    deadline: Arc<Deadline>,
) -> mlua::Result<Lua> {
    let lua = Lua::new_with(
        StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8 | StdLib::OS,
        LuaOptions::new(),
    )?;
    let g = lua.globals();
    let os: Table = g.get("os")?;
    let safe_os = lua.create_table()?;
    safe_os.set("time", os.get::<Function>("time")?)?;
    safe_os.set("clock", os.get::<Function>("clock")?)?;
    g.set("os", safe_os)?;
    let string: Table = g.get("string")?;
    string.set("dump", Value::Nil)?;
    let raw_load: Function = g.get("load")?;
    for name in [
        "dofile",
        "loadfile",
        "load",
        "collectgarbage",
        "warn",
        "require",
        "package",
        "debug",
        "io",
    ] {
        g.set(name, Value::Nil)?;
    }
    bounded::install(&lua, &deadline, limits.memory_bytes)?;
    let budget = limits.instruction_budget;
    let spent = used.clone();
    let exhausted = lua.create_function(move |_, ()| Ok(spent.load(Ordering::Relaxed) > budget))?;
    let log = lua.create_function(|_, msg: String| {
        tracing::info!(target: "tidewatch::policy", "{msg}");
        Ok(())
    })?;
    lua.load(PRELUDE)
        .set_name("=prelude")
        .call::<()>((exhausted, raw_load, log))?;
    lua.set_global_hook(
        HookTriggers::new().every_nth_instruction(HOOK_EVERY),
        move |_, debug| {
            let n =
                used.fetch_add(u64::from(HOOK_EVERY), Ordering::Relaxed) + u64::from(HOOK_EVERY);
            if deadline.check() {
                let src = debug.source();
                let place = format!(
                    "at {}:{}",
                    src.short_src.as_deref().unwrap_or("?"),
                    debug.current_line().unwrap_or(0)
                );
                return Err(deadline.overrun(&place));
            }
            if n > budget {
                Err(mlua::Error::runtime(format!(
                    "instruction budget of {budget} exceeded"
                )))
            } else {
                Ok(VmState::Continue)
            }
        },
    )?;
    // Policies make short-lived garbage (window tables, reason strings):
    // the generational collector handles that at a fraction of the cost.
    lua.gc_set_mode(GcMode::Generational(GcGenParams::default()));
    lua.set_memory_limit(limits.memory_bytes)?;
    Ok(lua)
}

fn classify(
    e: &mlua::Error,
    used: &AtomicU64,
    deadline: &Deadline,
    limits: PolicyLimits,
) -> PolicyErrorKind {
    if deadline.passed() {
        return PolicyErrorKind::Timeout;
    }
    if used.load(Ordering::Relaxed) > limits.instruction_budget {
        return PolicyErrorKind::Budget;
    }
    if is_memory(e) {
        return PolicyErrorKind::Memory;
    }
    match e {
        mlua::Error::SyntaxError { .. } => PolicyErrorKind::Load,
        _ => PolicyErrorKind::Runtime,
    }
}

fn is_memory(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory(cause),
        mlua::Error::WithContext { cause, .. } => is_memory(cause),
        other => other.to_string().contains("not enough memory"),
    }
}

/// A forecast's horizon in seconds as ms, None for one that is not a
/// non-negative number.
fn horizon_ms(seconds: f64) -> Option<i64> {
    (seconds.is_finite() && seconds >= 0.0).then_some((seconds * 1000.0) as i64)
}

/// The metric of a `codes` index (BINDER).
fn metric_at(i: usize) -> mlua::Result<Metric> {
    Metric::ALL
        .get(i)
        .copied()
        .ok_or_else(|| mlua::Error::runtime(format!("no metric at index {i}")))
}

fn parse_metric(s: &mlua::LuaString) -> mlua::Result<Metric> {
    let s = s.to_str()?;
    Metric::parse(&s).ok_or_else(|| {
        mlua::Error::runtime(format!(
            "unknown metric {:?}; known: {}",
            &*s,
            Metric::NAMES.join(", ")
        ))
    })
}

/// A span as `"60s"`/`"5m"` or a number of seconds.
fn span_ms(v: &Value) -> mlua::Result<i64> {
    let ms = match v {
        Value::Integer(i) => (*i as f64) * 1000.0,
        Value::Number(n) => n * 1000.0,
        Value::String(s) => {
            let s = s.to_str()?;
            match quick_span_ms(&s) {
                Some(ms) => ms,
                None => humantime::parse_duration(&s)
                    .map_err(|e| mlua::Error::runtime(format!("window span {:?}: {e}", &*s)))?
                    .as_millis() as f64,
            }
        }
        other => {
            return Err(mlua::Error::runtime(format!(
                "window span must be a string like \"60s\" or seconds, got {}",
                other.type_name()
            )))
        }
    };
    if !(1.0..1e13).contains(&ms) {
        return Err(mlua::Error::runtime(format!(
            "window span {ms} ms is out of range"
        )));
    }
    Ok(ms as i64)
}

/// "250ms", "60s", "5m", "1h" without the general parser (the hot path).
fn quick_span_ms(s: &str) -> Option<f64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 9 {
        return None;
    }
    let n: f64 = s[..digits].parse().ok()?;
    let unit = match &s[digits..] {
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(n * unit)
}

/// What is wrong with the value `decide` returned; names the value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidReturn {
    #[error("replicas must be a number, got {0}")]
    ReplicasType(&'static str),
    #[error("replicas is {0}")]
    ReplicasNotFinite(f64),
    #[error("replicas is negative ({0})")]
    ReplicasNegative(f64),
    #[error("reason must be a string, got {0}")]
    ReasonType(&'static str),
    #[error("a reason's format arguments must be numbers, strings, booleans or nil, got {0}")]
    ReasonArg(&'static str),
    #[error("a reason both in the returned table and as the second value")]
    TwoReasons,
    #[error("decide must return nil, a number or a table, it returned {0}")]
    Shape(&'static str),
    #[error("the returned table: {0}")]
    Table(String),
}

/// What `decide` returns: replicas (or a table), a reason, the reason's
/// format arguments (the first [`LAZY_ARGS`], then the rest).
type Returned = (
    Value,
    Value,
    Value,
    Value,
    Value,
    Value,
    Value,
    Value,
    mlua::Variadic<Value>,
);

/// A reason cut to [`MAX_REASON`] characters.
fn clip(s: String) -> String {
    match s.char_indices().nth(MAX_REASON) {
        Some((i, _)) => s[..i].to_owned(),
        None => s,
    }
}

fn replicas_from(v: &Value) -> Result<Option<u32>, InvalidReturn> {
    let n = match v {
        Value::Nil => return Ok(None),
        Value::Integer(i) => *i as f64,
        Value::Number(n) => *n,
        other => return Err(InvalidReturn::ReplicasType(other.type_name())),
    };
    if !n.is_finite() {
        return Err(InvalidReturn::ReplicasNotFinite(n));
    }
    if n < 0.0 {
        return Err(InvalidReturn::ReplicasNegative(n));
    }
    // Fractions round up: 3.2 replicas of work need 4.
    Ok(Some(n.ceil().min(f64::from(u32::MAX)) as u32))
}

/// `nil` (no change), a number, or `{replicas = n|nil, reason = "..."}`
/// (the first value `decide` returns).
fn proposal(v: &Value, keys: &[mlua::LuaString; 2]) -> Result<Proposal, InvalidReturn> {
    let field = |t: &mlua::Table, k: &mlua::LuaString| {
        t.raw_get::<Value>(k)
            .map_err(|e| InvalidReturn::Table(e.to_string()))
    };
    match v {
        Value::Nil | Value::Integer(_) | Value::Number(_) => Ok(Proposal {
            replicas: replicas_from(v)?,
            reason: None,
            format: None,
        }),
        Value::Table(t) => {
            let replicas = replicas_from(&field(t, &keys[0])?)?;
            let reason = match field(t, &keys[1])? {
                Value::Nil => None,
                Value::String(s) => Some(clip(s.to_string_lossy())),
                other => return Err(InvalidReturn::ReasonType(other.type_name())),
            };
            Ok(Proposal {
                replicas,
                reason,
                format: None,
            })
        }
        other => Err(InvalidReturn::Shape(other.type_name())),
    }
}

/// Converts configuration `params` to Lua values.
pub fn json_to_lua(lua: &Lua, v: &serde_json::Value, depth: usize) -> mlua::Result<Value> {
    if depth > 32 {
        return Err(mlua::Error::runtime("params nested deeper than 32 levels"));
    }
    Ok(match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(lua.create_string(s)?),
        serde_json::Value::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, json_to_lua(lua, item, depth + 1)?)?;
            }
            Value::Table(t)
        }
        serde_json::Value::Object(map) => {
            let t = lua.create_table_with_capacity(0, map.len())?;
            for (k, item) in map {
                t.raw_set(k.as_str(), json_to_lua(lua, item, depth + 1)?)?;
            }
            Value::Table(t)
        }
    })
}

fn copy_plain(lua: &Lua, v: &Value, depth: usize) -> mlua::Result<Value> {
    Ok(match v {
        Value::Nil | Value::Boolean(_) | Value::Integer(_) | Value::Number(_) => v.clone(),
        Value::String(s) => Value::String(lua.create_string(s.as_bytes())?),
        Value::Table(t) if depth < 16 => {
            let out = lua.create_table()?;
            for pair in t.pairs::<Value, Value>() {
                let (k, val) = pair?;
                let (k, val) = (
                    copy_plain(lua, &k, depth + 1)?,
                    copy_plain(lua, &val, depth + 1)?,
                );
                if !matches!(k, Value::Nil) && !matches!(val, Value::Nil) {
                    out.raw_set(k, val)?;
                }
            }
            Value::Table(out)
        }
        _ => Value::Nil,
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod span_tests {
    #[test]
    fn quick_spans_agree_with_humantime() {
        for s in ["250ms", "10s", "60s", "5m", "2h", "90s"] {
            let want = humantime::parse_duration(s).unwrap().as_millis() as f64;
            assert_eq!(super::quick_span_ms(s), Some(want), "{s}");
        }
        for s in ["1m30s", "s", "", "10 s", "1d", "-5s"] {
            assert_eq!(super::quick_span_ms(s), None, "{s}");
        }
    }
}
