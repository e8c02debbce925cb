use super::*;
use std::path::Path;

struct NoData;
impl SignalView for NoData {
    fn window(&self, _: Metric, _: i64) -> Result<Option<WindowStats>, SpanTooLong> {
        Ok(None)
    }
    fn forecast(&self, _: Metric, _: i64) -> Option<ForecastValue> {
        None
    }
}

struct Fixed(WindowStats);
impl SignalView for Fixed {
    fn window(&self, m: Metric, span_ms: i64) -> Result<Option<WindowStats>, SpanTooLong> {
        match (m, span_ms) {
            (Metric::QueueDepth, 60_000) => Ok(Some(self.0)),
            (m, s) if s > 300_000 => Err(SpanTooLong {
                span_ms: s,
                metric: m,
                longest_ms: 300_000,
            }),
            _ => Ok(None),
        }
    }
    fn forecast(&self, m: Metric, h: i64) -> Option<ForecastValue> {
        (m == Metric::QueueDepth && h == 300_000).then(|| ForecastValue {
            value: 42.0,
            lower: 40.0,
            upper: 44.0,
            source: "test".into(),
        })
    }
    fn recurring(&self, m: Metric, reach: Reach, days: usize, align: i64) -> Option<Recurring> {
        (m == Metric::QueueDepth).then_some(Recurring {
            rise: reach.from_ms as f64,
            // the end of the first part asked for, in ms
            near: Some(reach.near_ms as f64),
            // the same, negated: a field of its own
            sharp: Some(-(reach.near_ms as f64)),
            low: reach.to_ms as f64,
            high: days as f64,
            // the shift asked for, in ms, where the test can see it
            level: if align > 0 { align as f64 } else { -1.0 },
            days,
            week: (days >= 7).then_some(0.5),
        })
    }
}

fn input() -> CallInput<'static> {
    CallInput {
        target: "t",
        now_ms: 1_764_000_000_500,
        replicas: 3,
        min: 1,
        max: 10,
        schedule: None,
    }
}

fn small_limits() -> PolicyLimits {
    PolicyLimits {
        memory_bytes: 4 << 20,
        instruction_budget: 200_000,
        timeout: std::time::Duration::from_secs(5),
        load_timeout: std::time::Duration::from_secs(5),
    }
}

/// The policy file `name` holding `text`.
fn source(name: &str, text: &str) -> PolicySource {
    PolicySource::from_text(Path::new(name), text.to_owned())
}

fn policy(body: &str) -> Result<LuaPolicy, PolicyError> {
    let src = source("test.lua", body);
    let mut p = LuaPolicy::load(
        &src,
        &serde_json::json!({"k": 7, "list": [1, 2]}),
        small_limits(),
    )?;
    p.bind(Arc::new(Mutex::new(NoData)))?;
    Ok(p)
}

fn decide(body: &str) -> Result<Proposal, PolicyError> {
    let decide_body = format!("local P = {{}}\nfunction P.decide(ctx)\n{body}\nend\nreturn P");
    let mut p = policy(&decide_body).unwrap();
    p.decide(&input())
}

fn kind(body: &str) -> PolicyErrorKind {
    match decide(body) {
        Ok(p) => panic!("accepted: {body} -> {p:?}"),
        Err(e) => e.kind,
    }
}

#[test]
fn returns_numbers_tables_and_nil() {
    assert_eq!(decide("return 4").unwrap().replicas, Some(4));
    assert_eq!(
        decide("return 3.2").unwrap().replicas,
        Some(4),
        "fractions round up"
    );
    assert_eq!(decide("return nil").unwrap().replicas, None);
    let p = decide("return { replicas = ctx.replicas + ctx.params.k, reason = 'why' }").unwrap();
    assert_eq!(
        p,
        Proposal {
            replicas: Some(10),
            reason: Some("why".into()),
            format: None,
        }
    );
    assert_eq!(decide("return { reason = 'hold' }").unwrap().replicas, None);
    assert_eq!(
        decide("return ctx.params.list[2] + ctx.max + ctx.min")
            .unwrap()
            .replicas,
        Some(13)
    );
    assert_eq!(
        decide("return math.floor(ctx.now)").unwrap().replicas,
        Some(1_764_000_000)
    );
}

#[test]
fn invalid_returns_are_rejected() {
    for body in [
        "return 0/0",
        "return -1",
        "return 1/0",
        "return 'five'",
        "return true",
        "return { replicas = 'x' }",
        "return { replicas = 0/0 }",
        "return { replicas = 2, reason = {} }",
        "return function() end",
    ] {
        assert_eq!(kind(body), PolicyErrorKind::InvalidReturn, "{body}");
    }
}

#[test]
fn runtime_errors_are_contained() {
    assert_eq!(kind("error('boom')"), PolicyErrorKind::Runtime);
    assert_eq!(kind("return nil + 1"), PolicyErrorKind::Runtime);
    assert_eq!(
        kind("return ctx.window('cpu', '60s')"),
        PolicyErrorKind::Runtime
    );
    assert_eq!(
        kind("return ctx.window('queue_depth', {})"),
        PolicyErrorKind::Runtime
    );
}

#[test]
fn endless_loops_hit_the_instruction_budget() {
    assert_eq!(kind("while true do end"), PolicyErrorKind::Budget);
    // Catching the budget error must not let a script run on.
    assert_eq!(
        kind("while true do pcall(function() while true do end end) end"),
        PolicyErrorKind::Budget
    );
    assert_eq!(
        kind("local function f() return xpcall(function() while true do end end, function(e) return e end) end while true do f() end"),
        PolicyErrorKind::Budget
    );
}

#[test]
fn unbounded_allocation_hits_the_memory_limit() {
    assert_eq!(
        kind("local t = {} local s = string.rep('x', 1024) for i = 1, 1e9 do t[i] = s .. i end"),
        // Either limit may stop it first depending on speed; both contain it.
        {
            let k = kind(
                "local t = {} local s = string.rep('x', 1024) for i = 1, 1e9 do t[i] = s .. i end",
            );
            assert!(matches!(
                k,
                PolicyErrorKind::Memory | PolicyErrorKind::Budget
            ));
            k
        }
    );
    assert_eq!(
        kind("return #string.rep('x', 1 << 30)"),
        PolicyErrorKind::Memory
    );
}

#[test]
fn vm_stays_usable_after_failures() {
    let src = "local P = {} local n = 0
      function P.decide(ctx)
        n = n + 1
        if n == 1 then while true do end end
        if n == 2 then return #string.rep('x', 1 << 30) end
        if n == 3 then error('x') end
        return n
      end
      return P";
    let mut p = policy(src).unwrap();
    assert_eq!(
        p.decide(&input()).unwrap_err().kind,
        PolicyErrorKind::Budget
    );
    assert_eq!(
        p.decide(&input()).unwrap_err().kind,
        PolicyErrorKind::Memory
    );
    assert_eq!(
        p.decide(&input()).unwrap_err().kind,
        PolicyErrorKind::Runtime
    );
    assert_eq!(p.decide(&input()).unwrap().replicas, Some(4));
}

#[test]
fn sandbox_has_no_escape_hatches() {
    for expr in [
        "io",
        "debug",
        "require",
        "dofile",
        "loadfile",
        "package",
        "collectgarbage",
        "os.execute",
        "os.getenv",
        "os.remove",
        "os.exit",
        "string.dump",
        "coroutine",
    ] {
        let p = decide(&format!("return {expr} == nil and 1 or 2")).unwrap();
        assert_eq!(p.replicas, Some(1), "{expr} is reachable");
    }
    assert_eq!(
        decide("return os.time() > 0 and os.clock() >= 0 and 1 or 2")
            .unwrap()
            .replicas,
        Some(1)
    );
    // Text chunks load; binary chunks do not.
    assert_eq!(
        decide("return load('return 5')()").unwrap().replicas,
        Some(5)
    );
    let bin = "\x1bLua";
    assert_eq!(
        decide(&format!(
            "local f = load({bin:?}) return f == nil and 1 or 2"
        ))
        .unwrap()
        .replicas,
        Some(1)
    );
}

#[test]
fn state_persists_between_calls() {
    let mut p = policy(
        "local P = {}
         function P.init(ctx) ctx.state.n = 10 end
         function P.decide(ctx) ctx.state.n = ctx.state.n + 1 return ctx.state.n end
         return P",
    )
    .unwrap();
    p.init(&input()).unwrap();
    assert_eq!(p.decide(&input()).unwrap().replicas, Some(11));
    assert_eq!(p.decide(&input()).unwrap().replicas, Some(12));
    // A reload keeps the plain state.
    let q = policy("local P = {} function P.decide(ctx) return ctx.state.n end return P").unwrap();
    q.adopt_state(&p).unwrap();
    let mut q = q;
    assert_eq!(q.decide(&input()).unwrap().replicas, Some(12));
}

#[test]
fn load_errors() {
    for (src, what) in [
        ("return {", "syntax"),
        ("return 5", "table"),
        ("return {}", "decide"),
        ("error('at load')", "at load"),
        ("while true do end", "budget"),
    ] {
        let e = policy(src).unwrap_err();
        assert!(e.to_string().contains(what), "{src}: {e}");
    }
    let src = source("dir/x.lua", "return {decide=function() end}");
    assert!(src.version.starts_with("x.lua@") && src.version.len() == "x.lua@".len() + 7);
}

#[test]
fn window_and_forecast_reach_the_script() {
    let src = source(
        "w.lua",
        "local P = {}
         function P.decide(ctx)
           local w = ctx.window('queue_depth', '60s')
           local w2 = ctx.window('queue_depth', 60)
           local none = ctx.window('latency_ms', '10s')
           local f = ctx.forecast('queue_depth', 300)
           assert(none == nil and ctx.forecast('queue_depth', 10) == nil)
           assert(w.p95 == 9 and w.p50 == 6 and w.slope == -1 and w.rate == 2)
           return { replicas = w.mean + w2.count + f.value, reason = f.source }
         end
         return P",
    );
    let mut p = LuaPolicy::load(&src, &serde_json::Value::Null, small_limits()).unwrap();
    let stats = WindowStats {
        count: 3,
        sum: 15.0,
        mean: 5.0,
        min: 1.0,
        max: 9.0,
        last: 9.0,
        quantiles: Some([6.0, 8.0, 9.0, 9.0]),
        rate: 2.0,
        slope: -1.0,
    };
    p.bind(Arc::new(Mutex::new(Fixed(stats)))).unwrap();
    let out = p.decide(&input()).unwrap();
    assert_eq!(
        out,
        Proposal {
            replicas: Some(50),
            reason: Some("test".into()),
            format: None,
        }
    );
    // A span longer than the longest window is an error the script sees.
    let src = source(
        "w.lua",
        "return { decide = function(ctx) return ctx.window('queue_depth', '10m') end }",
    );
    let mut p = LuaPolicy::load(&src, &serde_json::Value::Null, small_limits()).unwrap();
    p.bind(Arc::new(Mutex::new(Fixed(stats)))).unwrap();
    let mut p = p;
    let e = p.decide(&input()).unwrap_err();
    assert_eq!(e.kind, PolicyErrorKind::Runtime);
    assert!(
        e.message.contains("is longer than the longest window"),
        "{e}"
    );
}

#[test]
fn recurring_reaches_the_script_and_rejects_bad_windows() {
    let stats = WindowStats {
        count: 1,
        sum: 1.0,
        mean: 1.0,
        min: 1.0,
        max: 1.0,
        last: 1.0,
        quantiles: None,
        rate: 0.0,
        slope: 0.0,
    };
    let run = |body: &str| {
        let src = source(
            "r.lua",
            &format!("return {{ decide = function(ctx) {body} end }}"),
        );
        let mut p = LuaPolicy::load(&src, &serde_json::Value::Null, small_limits()).unwrap();
        p.bind(Arc::new(Mutex::new(Fixed(stats)))).unwrap();
        let mut p = p;
        p.decide(&input())
    };
    // seconds become ms; days default to 7
    let out = run("local r = ctx.recurring('queue_depth', 60, 1800)
                   assert(ctx.recurring('latency_ms', 0, 60) == nil)
                   local r3 = ctx.recurring('queue_depth', 0, 60, 3)
                   assert(r3.week == nil)
                   assert(ctx.recurring('queue_depth', 0, 60, 7, 60, 1800).level == 1800000)
                   assert(ctx.recurring('queue_depth', 0, 60, 7, nil, 0).level == -1)
                   -- near: the window's end unless given
                   assert(r.near == 1800000, r.near)
                   assert(ctx.recurring('queue_depth', 60, 1800, 7, nil, 0, 300).near == 300000)
                   assert(ctx.recurring('queue_depth', 60, 1800, 7, nil, 0, 300).sharp == -300000)
                   return { replicas = r.days + r3.days,
                            reason = string.format('%d %d %d %d %.1f', r.rise, r.low, r.high, r.level, r.week) }")
    .unwrap();
    assert_eq!(out.replicas, Some(10));
    assert_eq!(out.reason.as_deref(), Some("60000 1800000 7 -1 0.5"));
    for (call, what) in [
        (
            "ctx.recurring('queue_depth', 60, 30)",
            "0 <= from <= to <= 86400, got 60 to 30",
        ),
        ("ctx.recurring('queue_depth', -1, 30)", "got -1 to 30"),
        ("ctx.recurring('queue_depth', 0, 90000)", "got 0 to 90000"),
        ("ctx.recurring('queue_depth', 0, 0/0)", "got 0 to"),
        (
            "ctx.recurring('queue_depth', 0, 60, 0)",
            "days must be 1 to 14, got 0",
        ),
        ("ctx.recurring('queue_depth', 0, 60, 15)", "got 15"),
        (
            "ctx.recurring('queue_depth', 0, 60, 7, 30)",
            "got 30 (to 60)",
        ),
        ("ctx.recurring('queue_depth', 0, 60, 7, 90000)", "got 90000"),
        (
            "ctx.recurring('queue_depth', 0, 60, 7, 60, -1)",
            "align must be seconds from 0 to 7200, got -1",
        ),
        (
            "ctx.recurring('queue_depth', 0, 60, 7, 60, 7201)",
            "got 7201",
        ),
        ("ctx.recurring('queue_depth', 0, 60, 7, 60, 0/0)", "got NaN"),
        ("ctx.recurring('cpu', 0, 60)", "cpu"),
        (
            "ctx.recurring('queue_depth', 60, 600, 7, 600, 0, 30)",
            "near must be seconds with from <= near <= to, got 30 (from 60, to 600)",
        ),
        (
            "ctx.recurring('queue_depth', 60, 600, 7, 600, 0, 601)",
            "got 601",
        ),
    ] {
        let e = run(&format!("return {call}")).unwrap_err();
        assert_eq!(e.kind, PolicyErrorKind::Runtime, "{call}");
        assert!(e.message.contains(what), "{call}: {e}");
    }
}

#[test]
fn prelude_helpers() {
    assert_eq!(
        decide("return tw.target_tracking(4, 150, 100)")
            .unwrap()
            .replicas,
        Some(6)
    );
    assert_eq!(
        decide("return tw.target_tracking(4, 105, 100)")
            .unwrap()
            .replicas,
        Some(4)
    );
    assert_eq!(
        decide("return tw.ceil_div(301, 100)").unwrap().replicas,
        Some(4)
    );
    assert_eq!(
        decide("return tw.clamp(50, 1, 10)").unwrap().replicas,
        Some(10)
    );
    assert_eq!(
        decide("return tw.max_of(nil, 3, nil, 7, 2)")
            .unwrap()
            .replicas,
        Some(7)
    );
    assert_eq!(
        decide("tw.ewma(ctx.state, 'a', 10) return tw.ewma(ctx.state, 'a', 20, 0.5)")
            .unwrap()
            .replicas,
        Some(15)
    );
}

#[test]
fn examples_run_and_report() {
    let src = source("ex.lua", "local P = {}
         function P.decide(ctx)
           local d = ctx.window('queue_depth', '60s')
           if not d then return nil end
           return math.ceil(d.mean / ctx.params.per)
         end
         P.examples = {
           { name = 'ok', params = { per = 100 }, windows = { queue_depth = { ['60s'] = { mean = 250 } } }, expect = 3 },
           { name = 'no data', params = { per = 100 }, expect = 'hold' },
           { name = 'wrong', params = { per = 100 }, windows = { queue_depth = { ['60s'] = { mean = 250 } } }, expect = 9 },
         }
         return P");
    let out = run_examples(&src, PolicyLimits::default()).unwrap();
    assert_eq!(out.len(), 3);
    assert!(out[0].passed() && out[1].passed());
    assert!(!out[2].passed());
    assert_eq!(out[2].got, Ok(Some(3)));
}

/// An example's `recurring` answers `ctx.recurring`: one table per
/// metric, or one per window end; a metric it does not give is `nil`.
#[test]
fn examples_give_recurring_answers() {
    let src = source("ex.lua", "local P = {}
         function P.decide(ctx)
           local r = ctx.recurring('requests', 0, ctx.params.to)
           if not r then return 1 end
           return math.ceil(r.rise / 100)
         end
         P.examples = {
           { name = 'one', params = { to = 60 }, recurring = { requests = { rise = 250 } }, expect = 3 },
           { name = 'by end', params = { to = 600 },
             recurring = { requests = { [60] = { rise = 100 }, [600] = { rise = 700 } } }, expect = 7 },
           { name = 'other metric', params = { to = 60 }, recurring = { queue_depth = { rise = 900 } }, expect = 1 },
         }
         return P");
    let out = run_examples(&src, PolicyLimits::default()).unwrap();
    let got: Vec<_> = out.iter().map(|o| o.got.clone()).collect();
    assert_eq!(got, vec![Ok(Some(3)), Ok(Some(7)), Ok(Some(1))]);
}

/// Runs `chunk` in a plain Lua (the C library) and in the sandbox (the
/// bounded Rust replacements), returning what each gives as text.
fn both(chunk: &str) -> (String, String) {
    let ser = r##"
        local function ser(...)
          local n, out = select("#", ...), {}
          for i = 1, n do
            local v = select(i, ...)
            if type(v) == "table" then
              local parts = {}
              for k = 1, #v do parts[#parts + 1] = tostring(v[k]) end
              out[#out + 1] = "{" .. table.concat(parts, " ") .. "}"
            else
              out[#out + 1] = type(v) .. ":" .. tostring(v)
            end
          end
          return table.concat(out, ",")
        end
        local ok, r = pcall(function() return ser(CHUNK) end)
        return ok and r or "error"
    "##;
    let code = ser.replace("CHUNK", chunk);
    let plain = Lua::new().load(&code).eval::<String>().unwrap();
    let deadline = Arc::new(Deadline::new());
    let lua = sandbox(small_limits(), Arc::default(), deadline.clone()).unwrap();
    deadline.arm_for(std::time::Duration::from_secs(5));
    let sandboxed = lua.load(&code).eval::<String>().unwrap();
    (plain, sandboxed)
}

#[test]
fn the_bounded_library_answers_as_lua_s_own() {
    let cases = [
        r#"string.find("hello world", "o", 5)"#,
        r#"string.find("hello world", "o", -3)"#,
        r#"string.find("hello world", "l+")"#,
        r#"string.find("hello world", "(l)(l)")"#,
        r#"string.find("hello", "xyz")"#,
        r#"string.find("hello", "", 20)"#,
        r#"string.find("hello", "", 6)"#,
        r#"string.find("a.b", ".", 1, true)"#,
        r#"("a+b"):find("+", 1, true)"#,
        r#"string.find("x = 1", "%s")"#,
        r#"string.match("key=val", "(%w+)=(%w+)")"#,
        r#"string.match("  trim me  ", "^%s*(.-)%s*$")"#,
        r#"string.match("2024-01-02", "(%d+)-(%d+)-(%d+)")"#,
        r#"string.match("abc", "()b()")"#,
        r#"string.match("abc", "x")"#,
        r#"string.match("hello", ".", -1)"#,
        r#"string.match("f(a(b)c)d", "%b()")"#,
        r#"string.match("THE (quick) fox", "%f[%a]%a+", 5)"#,
        r#"string.gsub("hello world", "o", "0")"#,
        r#"string.gsub("hello", "", "-")"#,
        r#"string.gsub("abc", "%w", "%0%0")"#,
        r#"string.gsub("hello world", "(%w+)", "<%1>")"#,
        r#"string.gsub("abc", "b", {b = "B"})"#,
        r#"string.gsub("abc", "%w", function(c) return c:upper() end)"#,
        r#"string.gsub("abc", "%w", function() return nil end)"#,
        r#"string.gsub("a,b,c", ",", ";", 1)"#,
        r#"string.gsub("abc", "^a", "X")"#,
        r#"string.gsub("abc", "b", 5)"#,
        r#"string.gsub("abc", "()", "%1")"#,
        r#"string.gsub("abc", "b", "%2")"#,
        r#"string.gsub("abc", "b", "%")"#,
        r#"(function() local t = {} for w in ("one two  three"):gmatch("%a+") do t[#t+1] = w end return t end)()"#,
        r#"(function() local t = {} for k, v in ("k=v, a=b"):gmatch("(%w+)=(%w+)") do t[#t+1] = k .. v end return t end)()"#,
        r#"(function() local t = {} for p in ("abc"):gmatch("()") do t[#t+1] = p end return t end)()"#,
        r#"(function() local t = {} for w in ("hello"):gmatch("l", 4) do t[#t+1] = w end return t end)()"#,
        r#"(function() local t = {} for w in ("abc"):gmatch("x*") do t[#t+1] = "[" .. w .. "]" end return t end)()"#,
        r#"string.rep("ab", 3, ",")"#,
        r#"string.rep("x", 0)"#,
        r#"string.rep("", 5)"#,
        r#"string.rep("ab", 2)"#,
        r#"(function() local t = {1, 2, 3} table.insert(t, 4) table.insert(t, 1, 0) return t end)()"#,
        r#"(function() local t = {1, 2, 3} table.insert(t, 5, 9) return t end)()"#,
        r#"(function() local t = {1, 2, 3} return table.remove(t), t end)()"#,
        r#"(function() local t = {1, 2, 3} return table.remove(t, 1), t end)()"#,
        r#"(function() local t = {} return table.remove(t), #t end)()"#,
        r#"(function() local t = {1, 2} return table.remove(t, 3), t end)()"#,
        r#"(function() local t = {1, 2} return table.remove(t, 4) end)()"#,
        r#"table.move({1, 2, 3, 4, 5}, 2, 4, 1)"#,
        r#"table.move({1, 2, 3, 4, 5}, 1, 3, 3)"#,
        r#"table.move({1, 2, 3}, 1, 3, 2, {9, 9, 9, 9})"#,
        r#"table.move({1, 2, 3}, 3, 1, 1)"#,
        r#"(function() local t = {3, 1, 2} table.sort(t) return t end)()"#,
        r#"(function() local t = {"b", "a", "C"} table.sort(t) return t end)()"#,
        r#"(function() local t = {3, 1, 2, 5, 4} table.sort(t, function(a, b) return a > b end) return t end)()"#,
        r#"(function() local t = {3, 1.5, 2} table.sort(t) return t end)()"#,
        r#"(function() local t = {3, "x"} table.sort(t) return t end)()"#,
        r#"table.concat({1, 2.5, "x"}, "-")"#,
        r#"table.concat({}, ",")"#,
        r#"table.concat({1, 2, 3}, ",", 2, 3)"#,
        r#"table.concat({1, {}, 3})"#,
        r#"table.concat({1, 2, 3}, ", ", 3, 2)"#,
    ];
    for case in cases {
        let (plain, sandboxed) = both(case);
        assert_eq!(plain, sandboxed, "{case}");
    }
}

fn timed_policy(body: &str) -> LuaPolicy {
    let src = source("bomb.lua", body);
    let limits = PolicyLimits {
        memory_bytes: 16 << 20,
        instruction_budget: u64::MAX / 2,
        timeout: std::time::Duration::from_millis(50),
        load_timeout: std::time::Duration::from_millis(50),
    };
    let mut p = LuaPolicy::load(&src, &serde_json::Value::Null, limits).unwrap();
    p.bind(Arc::new(Mutex::new(NoData))).unwrap();
    p
}

#[test]
fn no_call_outlives_its_deadline_in_c_or_in_lua() {
    let bombs = [
        // The pattern of issue 16: hours of backtracking in C.
        r#"("a"):rep(40000):find(".-.-.-.-.-.-.-.-.-.-b")"#,
        r#"for _ in ("a"):rep(40000):gmatch(".-.-.-.-.-.-.-.-.-.-b") do end"#,
        r#"("a"):rep(40000):gsub(".-.-.-.-.-.-.-.-.-.-b", "")"#,
        // A length that a metamethod makes up, elements from a C function:
        // nothing allocates, nothing returns to Lua.
        r#"table.insert(setmetatable({}, {__len = function() return 2^40 end, __index = type}), 1, "x")"#,
        r#"table.remove(setmetatable({}, {__len = function() return 2^40 end, __index = type}), 1)"#,
        r#"table.move(setmetatable({}, {__index = type}), 1, 2^40, 2, {})"#,
        r#"table.concat(setmetatable({}, {__index = function() return "" end}), "", 1, 2^40)"#,
        // Plain Lua: the instruction budget is out of reach here, the clock is not.
        "while true do end",
    ];
    for bomb in bombs {
        let mut p = timed_policy(&format!(
            "local P = {{}}\nfunction P.decide(ctx)\n  if ctx.state.done then return 2 end\n  ctx.state.done = true\n  {bomb}\n  return 1\nend\nreturn P"
        ));
        let started = std::time::Instant::now();
        let e = p.decide(&input()).unwrap_err();
        let took = started.elapsed();
        assert_eq!(e.kind, PolicyErrorKind::Timeout, "{bomb}: {e}");
        assert!(e.message.contains("deadline of 50ms"), "{bomb}: {e}");
        // Past the deadline by at most a few clock checks, never by the
        // hours the bomb would take.
        assert!(took < std::time::Duration::from_secs(2), "{bomb}: {took:?}");
        // The VM is still usable: the next call decides.
        assert_eq!(p.decide(&input()).unwrap().replicas, Some(2), "{bomb}");
    }
}

#[test]
fn unbounded_results_are_refused_before_they_start() {
    // An empty string repeated 10^12 times allocates nothing and, in C,
    // loops 10^12 times.
    assert_eq!(
        decide(r#"return {replicas = 1, reason = "[" .. string.rep("", 1e12) .. "]"}"#)
            .unwrap()
            .reason
            .as_deref(),
        Some("[]")
    );
    assert_eq!(
        decide(r#"return {replicas = #string.rep("", 1e12, "")}"#)
            .unwrap()
            .replicas,
        Some(0)
    );
    assert_eq!(
        kind(r#"return #string.rep("x", 1e9)"#),
        PolicyErrorKind::Memory
    );
    assert_eq!(
        kind(r#"return #string.rep("x", 1e6, ("y"):rep(1000))"#),
        PolicyErrorKind::Memory
    );
    assert_eq!(
        kind(r#"return #(("x"):rep(1e6):gsub(".", ("y"):rep(100)))"#),
        PolicyErrorKind::Memory
    );
}

#[test]
fn a_bomb_at_load_time_is_a_timeout_not_a_hang() {
    let src = source(
        "bomb.lua",
        r#"local x = ("a"):rep(40000):find(".-.-.-.-.-.-.-.-.-.-b")
return { decide = function() return 1 end }"#,
    );
    let started = std::time::Instant::now();
    let e = LuaPolicy::load(&src, &serde_json::Value::Null, PolicyLimits::default()).unwrap_err();
    assert_eq!(e.kind, PolicyErrorKind::Timeout, "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

/// A load (the file's top level, `init`) has `PolicyLimits::load_timeout`,
/// not the decision's timeout: a start on a busy machine, where loading a
/// file can be preempted past 50 ms, once failed the whole scaler. A
/// decision, an example's included, still has its own timeout.
#[test]
fn a_load_has_more_time_than_a_decision() {
    // 50 ms of the process's CPU time: at least 25 ms of wall time on
    // two cores, 25 times the decision's timeout below
    let spin = "local t0 = os.clock(); while os.clock() - t0 < 0.05 do end";
    let src = source(
        "slow.lua",
        &format!(
            "{spin}
             local P = {{}}
             function P.init(ctx) {spin} end
             function P.decide(ctx)
               if ctx.params.spin then {spin} end
               return 1
             end
             P.examples = {{ {{ name = 'quick', expect = 1 }},
                             {{ name = 'slow', params = {{ spin = true }}, expect = 1 }} }}
             return P"
        ),
    );
    let limits = PolicyLimits {
        memory_bytes: 16 << 20,
        instruction_budget: u64::MAX / 2,
        timeout: std::time::Duration::from_millis(1),
        load_timeout: load_allowance(std::time::Duration::from_millis(1)),
    };
    assert_eq!(limits.load_timeout, MIN_LOAD_TIMEOUT);
    let mut p = LuaPolicy::load(&src, &serde_json::json!({ "spin": true }), limits).unwrap();
    p.bind(Arc::new(Mutex::new(NoData))).unwrap();
    p.init(&input()).unwrap();
    // the examples load as a start does, and decide as `run` does
    let out = run_examples(&src, limits).unwrap();
    assert!(out[0].passed(), "{:?}", out[0].got);
    assert!(
        matches!(&out[1].got, Err(e) if e.kind == PolicyErrorKind::Timeout && e.message.contains("deadline of 1ms")),
        "{:?}",
        out[1].got
    );
    let e = p.decide(&input()).unwrap_err();
    assert_eq!(e.kind, PolicyErrorKind::Timeout, "{e}");
    assert!(e.message.contains("deadline of 1ms"), "{e}");
    // a load past its own allowance is still a timeout, naming it
    let endless = source("endless.lua", "while true do end return {}");
    let started = std::time::Instant::now();
    let e = LuaPolicy::load(&endless, &serde_json::Value::Null, limits).unwrap_err();
    assert_eq!(e.kind, PolicyErrorKind::Timeout, "{e}");
    assert!(e.message.contains("deadline of 1s"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}

/// A file with a file-level local, a global and `ctx.state`, each counting
/// the calls they have seen.
const COUNTERS: &str = r#"
local calls = 0
seen = 0
local P = {}
function P.decide(ctx)
  calls = calls + 1
  seen = seen + 1
  _G.also = (_G.also or 0) + 1
  ctx.state.n = (ctx.state.n or 0) + 1
  return { replicas = calls * 100 + seen * 10 + ctx.state.n, reason = tostring(also) }
end
return P
"#;

fn counters() -> PolicySource {
    source("counters.lua", COUNTERS)
}

#[test]
fn targets_sharing_a_vm_keep_their_own_locals_globals_and_state() {
    let vm = PolicyVm::new(&counters(), small_limits()).unwrap();
    let mut a = LuaPolicy::instantiate(vm.clone(), &serde_json::Value::Null).unwrap();
    let mut b = LuaPolicy::instantiate(vm.clone(), &serde_json::Value::Null).unwrap();
    assert!(Arc::ptr_eq(a.vm(), b.vm()));
    for _ in 0..3 {
        a.decide(&input()).unwrap();
    }
    // b has seen one call of its own, whatever a did before it
    let got = b.decide(&input()).unwrap();
    assert_eq!(got.replicas, Some(111), "{got:?}");
    assert_eq!(got.reason.as_deref(), Some("1"));
    let got = a.decide(&input()).unwrap();
    assert_eq!(got.replicas, Some(444), "{got:?}");
    assert_eq!(got.reason.as_deref(), Some("4"));
    // the sandbox's own globals are not the targets'
    let leaked: Value = vm.lua.globals().raw_get("seen").unwrap();
    assert!(leaked.is_nil(), "{leaked:?}");
}

/// `ctx.window(metric, span, stat)` is the table's field alone: every
/// statistic the same number, nil with no data or for a quantile the view
/// has not got, and a statistic that does not exist an error naming it
/// (and the names that do).
#[test]
fn a_window_read_of_one_statistic_is_the_tables_field() {
    let src = source(
        "stat.lua",
        r#"
local P = {}
local names = { "count", "sum", "mean", "min", "max", "last",
                "p50", "p90", "p95", "p99", "rate", "slope" }
function P.decide(ctx)
  local p = ctx.params
  if p.stat then
    local ok, e = pcall(ctx.window, "queue_depth", "60s", p.stat)
    return { replicas = ok and 1 or 0, reason = tostring(e) }
  end
  local w = ctx.window("queue_depth", "60s")
  local same = 0
  for _, n in ipairs(names) do
    local v = ctx.window("queue_depth", "60s", n)
    assert(v == w[n], n .. ": " .. tostring(v) .. " against " .. tostring(w[n]))
    if v ~= nil then same = same + 1 end
  end
  assert(ctx.window("latency_ms", "10s", "p95") == nil)
  return same
end
return P
"#,
    );
    let vm = PolicyVm::new(&src, small_limits()).unwrap();
    let run = |stats: WindowStats, params: serde_json::Value| {
        let mut p = LuaPolicy::instantiate(vm.clone(), &params).unwrap();
        p.bind(Arc::new(Mutex::new(Fixed(stats)))).unwrap();
        p.decide(&input()).unwrap()
    };
    let mut gauge = one_sample(2.0);
    gauge.quantiles = Some([6.0, 8.0, 9.0, 9.5]);
    gauge.slope = -0.25;
    assert_eq!(run(gauge, serde_json::json!({})).replicas, Some(12));
    // no quantiles (a counter): the four are nil in the table and alone
    assert_eq!(
        run(one_sample(2.0), serde_json::json!({})).replicas,
        Some(8)
    );
    for bad in [
        serde_json::json!("p42"),
        serde_json::json!(3),
        serde_json::json!("Mean"),
    ] {
        let out = run(gauge, serde_json::json!({ "stat": bad }));
        let reason = out.reason.unwrap_or_default();
        assert_eq!(out.replicas, Some(0), "{bad} accepted: {reason}");
        let shown = bad.as_str().map_or(bad.to_string(), str::to_owned);
        assert!(
            reason.contains(&format!("unknown statistic {shown}")) && reason.contains("p95"),
            "{bad}: {reason}"
        );
    }
}

/// `ctx.forecast(metric, horizon, field)` is the table's field alone, nil
/// without a forecast, and a field that does not exist an error naming it.
#[test]
fn a_forecast_read_of_one_field_is_the_tables_field() {
    let out = {
        let src = source(
            "fc.lua",
            r#"
local P = {}
function P.decide(ctx)
  local f = ctx.forecast("queue_depth", 300)
  local n = 0
  for _, k in ipairs({ "value", "lower", "upper", "source" }) do
    assert(ctx.forecast("queue_depth", 300, k) == f[k], k)
    -- one value, never the other fields after it
    assert(select('#', ctx.forecast("queue_depth", 300, k)) == 1, k)
    n = n + 1
  end
  assert(ctx.forecast("queue_depth", 10, "value") == nil)
  assert(select('#', ctx.forecast("queue_depth", 10, "value")) == 1)
  local ok, e = pcall(ctx.forecast, "queue_depth", 300, "median")
  assert(not ok)
  return { replicas = n + ctx.forecast("queue_depth", 300, "upper"), reason = e }
end
return P
"#,
        );
        let mut p = LuaPolicy::load(&src, &serde_json::Value::Null, small_limits()).unwrap();
        p.bind(Arc::new(Mutex::new(Fixed(one_sample(1.0)))))
            .unwrap();
        p.decide(&input()).unwrap()
    };
    assert_eq!(out.replicas, Some(48), "four fields and upper 44");
    let reason = out.reason.unwrap_or_default();
    assert!(
        reason.contains("unknown field median") && reason.contains("upper"),
        "{reason}"
    );
}

/// The stats of a window holding one sample `v`.
fn one_sample(v: f64) -> WindowStats {
    WindowStats {
        count: 1,
        sum: v,
        mean: v,
        min: v,
        max: v,
        last: v,
        quantiles: None,
        rate: 0.0,
        slope: 0.0,
    }
}

/// `ctx.window`, `ctx.forecast` and `ctx.age` take names and spans from
/// Lua as before: a bad one is an error that names it, before and after
/// good ones were read (the reads pass the metric's index and the span's
/// ms to Rust, and remember up to 64 spans).
#[test]
fn reads_name_a_bad_metric_or_span_and_take_every_spelling_of_a_span() {
    let src = source(
        "spans.lua",
        r#"
local P = {}
function P.decide(ctx)
  local p = ctx.params
  if p.bad then
    local ok, e = pcall(ctx[p.read], p.metric, p.span)
    return { replicas = 1, reason = tostring(e) }
  end
  local hits = 0
  for _, span in ipairs({ "60s", "1m", 60, 60.0, "60000ms" }) do
    if ctx.window("queue_depth", span) then hits = hits + 1 end
  end
  -- more distinct spans than are remembered: each still read right
  for s = 1, 100 do
    if ctx.window("queue_depth", s) and s ~= 60 then hits = hits + 100 end
    if ctx.window("latency_ms", s) then hits = hits + 100 end
  end
  if ctx.window("queue_depth", 60) then hits = hits + 1 end
  return hits
end
return P
"#,
    );
    let stats = one_sample(2.0);
    let vm = PolicyVm::new(&src, small_limits()).unwrap();
    let mut good = LuaPolicy::instantiate(vm.clone(), &serde_json::json!({})).unwrap();
    good.bind(Arc::new(Mutex::new(Fixed(stats)))).unwrap();
    for _ in 0..2 {
        assert_eq!(good.decide(&input()).unwrap().replicas, Some(6));
    }
    for (read, metric, span, says) in [
        (
            "window",
            "queue_deep",
            "60s",
            "unknown metric \"queue_deep\"",
        ),
        ("window", "queue_depth", "sixty", "window span \"sixty\""),
        ("window", "queue_depth", "", "window span"),
        ("window", "queue_depth", "0s", "out of range"),
        (
            "window",
            "queue_depth",
            "10m",
            "longer than the longest window",
        ),
        ("forecast", "latency", "300", "unknown metric \"latency\""),
        ("age", "depth", "", "unknown metric \"depth\""),
    ] {
        let params = serde_json::json!({"bad": true, "read": read, "metric": metric, "span": span});
        let mut p = LuaPolicy::instantiate(vm.clone(), &params).unwrap();
        p.bind(Arc::new(Mutex::new(Fixed(stats)))).unwrap();
        let reason = p.decide(&input()).unwrap().reason.unwrap_or_default();
        assert!(
            reason.contains(says),
            "{read}({metric:?}, {span:?}): {reason}"
        );
    }
    // and the good target still reads after the bad ones
    assert_eq!(good.decide(&input()).unwrap().replicas, Some(6));
}

/// A VM of many targets collects its young garbage every 32 KB or so, not
/// each time its heap grows 20%: with 200 VMs of 256 targets the garbage
/// in flight at 20% was tens of MB, and every new table landed on memory
/// out of the cache (issue 21).
#[test]
fn a_vm_of_many_targets_collects_its_garbage_every_few_dozen_kb() {
    let src = source(
        "garbage.lua",
        r#"
local P = {}
function P.decide(ctx)
  local t = {}
  for i = 1, 16 do t[i] = { i, tostring(i) } end
  return #t
end
return P
"#,
    );
    let vm = PolicyVm::new(&src, PolicyLimits::default()).unwrap();
    let mut targets: Vec<LuaPolicy> = (0..512)
        .map(|_| LuaPolicy::instantiate(vm.clone(), &serde_json::Value::Null).unwrap())
        .collect();
    let (mut base, mut top) = (usize::MAX, 0);
    for round in 0..12 {
        for p in &mut targets {
            p.decide(&input()).unwrap();
            if round >= 2 {
                base = base.min(vm.lua.used_memory());
                top = top.max(vm.lua.used_memory());
            }
        }
    }
    assert!(
        base > 400 << 10 && top - base < 64 << 10,
        "the heap grew from {base} to {top} bytes before a collection"
    );
}

/// The targets of one VM share its read functions (issue 21: four
/// closures a target were four cold objects a call); each call reads its
/// own target's data, also when the reads are kept from an earlier call.
#[test]
fn targets_sharing_a_vm_read_their_own_data() {
    let src = source(
        "reads.lua",
        r#"
local P = {}
local kept
function P.decide(ctx)
  kept = kept or ctx.window
  local w = kept("queue_depth", "60s")
  local f = ctx.forecast("queue_depth", 300)
  return { replicas = math.floor(w.mean), reason = tostring(f and f.value) }
end
return P
"#,
    );
    let vm = PolicyVm::new(&src, small_limits()).unwrap();
    let mut a = LuaPolicy::instantiate(vm.clone(), &serde_json::Value::Null).unwrap();
    let mut b = LuaPolicy::instantiate(vm.clone(), &serde_json::Value::Null).unwrap();
    a.bind(Arc::new(Mutex::new(Fixed(one_sample(3.0)))))
        .unwrap();
    b.bind(Arc::new(Mutex::new(Fixed(one_sample(7.0)))))
        .unwrap();
    for _ in 0..2 {
        let got = a.decide(&input()).unwrap();
        assert_eq!(
            (got.replicas, got.reason.as_deref()),
            (Some(3), Some("42.0"))
        );
        assert_eq!(b.decide(&input()).unwrap().replicas, Some(7));
    }
    // a target not bound (yet) gets an error naming the read, not another's data
    let mut c = LuaPolicy::instantiate(vm, &serde_json::Value::Null).unwrap();
    c.ctx()
        .raw_set("window", a.ctx().raw_get::<Value>("window").unwrap())
        .unwrap();
    let e = c.decide(&input()).unwrap_err();
    assert!(e.message.contains("only work during a policy call"), "{e}");
}

#[test]
fn one_target_failing_in_a_shared_vm_leaves_the_others_running() {
    let src = source(
        "greedy.lua",
        r#"
local P = {}
function P.decide(ctx)
  if ctx.params.greedy then
    local t = {} local s = string.rep('x', 1024)
    for i = 1, 1e9 do t[i] = s .. i end
  end
  if ctx.params.loop then while true do end end
  if ctx.params.boom then error("boom " .. ctx.target) end
  ctx.state.n = (ctx.state.n or 0) + 1
  return ctx.state.n
end
return P
"#,
    );
    let limits = PolicyLimits {
        instruction_budget: 100_000_000,
        ..small_limits()
    };
    let vm = PolicyVm::new(&src, limits).unwrap();
    let mut good = LuaPolicy::instantiate(vm.clone(), &serde_json::json!({})).unwrap();
    let mut greedy =
        LuaPolicy::instantiate(vm.clone(), &serde_json::json!({"greedy": true})).unwrap();
    let mut boom = LuaPolicy::instantiate(vm.clone(), &serde_json::json!({"boom": true})).unwrap();
    assert_eq!(good.decide(&input()).unwrap().replicas, Some(1));
    for _ in 0..3 {
        // each call may take policy_memory_mb more than the VM holds, no more
        assert_eq!(
            greedy.decide(&input()).unwrap_err().kind,
            PolicyErrorKind::Memory
        );
        assert!(good.decide(&input()).unwrap().replicas.is_some());
    }
    let short = PolicyLimits {
        instruction_budget: 50_000,
        ..limits
    };
    let vm2 = PolicyVm::new(&src, short).unwrap();
    let mut looping2 =
        LuaPolicy::instantiate(vm2.clone(), &serde_json::json!({"loop": true})).unwrap();
    let mut good2 = LuaPolicy::instantiate(vm2, &serde_json::json!({})).unwrap();
    assert_eq!(
        looping2.decide(&input()).unwrap_err().kind,
        PolicyErrorKind::Budget
    );
    assert_eq!(good2.decide(&input()).unwrap().replicas, Some(1));
    let e = boom.decide(&input()).unwrap_err();
    assert_eq!(e.kind, PolicyErrorKind::Runtime);
    assert!(e.message.contains("boom t"), "{e}");
    assert_eq!(good.decide(&input()).unwrap().replicas, Some(5));
    // the VM did not keep what the failed calls allocated
    vm.lua.gc_collect().unwrap();
    assert!(vm.lua.used_memory() < 1 << 20, "{}", vm.lua.used_memory());
}

#[test]
fn the_pool_shares_a_vm_per_file_up_to_its_size() {
    let limits = small_limits();
    let mut pool = VmPool::new(2);
    let a = pool
        .load(&counters(), &serde_json::Value::Null, limits)
        .unwrap();
    let b = pool
        .load(&counters(), &serde_json::Value::Null, limits)
        .unwrap();
    let c = pool
        .load(&counters(), &serde_json::Value::Null, limits)
        .unwrap();
    assert!(Arc::ptr_eq(a.vm(), b.vm()));
    assert!(!Arc::ptr_eq(b.vm(), c.vm()), "a VM holds at most 2 targets");
    // another content, or other limits: another VM
    let other = source("counters.lua", &format!("{COUNTERS}\n-- changed"));
    let d = pool.load(&other, &serde_json::Value::Null, limits).unwrap();
    assert!(!Arc::ptr_eq(c.vm(), d.vm()));
    let e = pool
        .load(
            &counters(),
            &serde_json::Value::Null,
            PolicyLimits {
                instruction_budget: 300_000,
                ..limits
            },
        )
        .unwrap();
    assert!(!Arc::ptr_eq(c.vm(), e.vm()));
    // one VM each when the pool's size is 1
    let mut single = VmPool::new(1);
    let f = single
        .load(&counters(), &serde_json::Value::Null, limits)
        .unwrap();
    let g = single
        .load(&counters(), &serde_json::Value::Null, limits)
        .unwrap();
    assert!(!Arc::ptr_eq(f.vm(), g.vm()));
}

#[test]
fn line_numbers_in_errors_are_the_files_own() {
    let e = policy("local P = {}\nfunction P.decide(ctx)\n  error('here')\nend\nreturn P")
        .unwrap()
        .decide(&input())
        .unwrap_err();
    assert!(e.message.contains("test.lua:3:"), "{}", e.message);
    let e = policy("local P = {}\n\nreturn P +").unwrap_err();
    assert!(e.message.contains("test.lua:3:"), "{}", e.message);
    let e = policy("local P = {}\nfunction P.decide(ctx) return undefined_fn() end\nreturn P")
        .unwrap()
        .decide(&input())
        .unwrap_err();
    assert!(e.message.contains("global 'undefined_fn'"), "{}", e.message);
}

#[test]
fn a_build_reads_each_policy_file_once_and_a_running_pool_reads_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.lua");
    std::fs::write(&path, "return { decide = function() return 1 end }").unwrap();
    let mut pool = VmPool::new(4).reading_once();
    let first = pool.read(&path).unwrap();
    std::fs::write(&path, "return { decide = function() return 2 end }").unwrap();
    assert_eq!(
        pool.read(&path).unwrap().version,
        first.version,
        "read once"
    );
    pool.fresh_reads();
    assert_ne!(
        pool.read(&path).unwrap().version,
        first.version,
        "read again"
    );
    // a missing file is an error that names it, cached or not
    let missing = dir.path().join("gone.lua");
    let e = VmPool::new(4).reading_once().read(&missing).unwrap_err();
    assert!(e.message.contains("gone.lua"), "{e}");
}

/// `settle` collects each VM the policies share, after their loading
/// left garbage behind, so no target's first call does it.
#[test]
fn settling_collects_each_shared_vm_once_its_targets_are_loaded() {
    let src = source(
        "junk.lua",
        r#"
local junk = {}
for i = 1, 2000 do junk[i] = string.rep("x", 8) .. i end
junk = nil
local P = {}
function P.decide(ctx) return { replicas = 1 } end
return P
"#,
    );
    let mut pool = VmPool::new(4);
    let policies: Vec<LuaPolicy> = (0..8)
        .map(|_| {
            pool.load(&src, &serde_json::Value::Null, small_limits())
                .unwrap()
        })
        .collect();
    let vms = [policies[0].vm().clone(), policies[4].vm().clone()];
    assert!(!Arc::ptr_eq(&vms[0], &vms[1]));
    let used = || {
        vms.iter()
            .map(|vm| vm.lua.used_memory())
            .collect::<Vec<_>>()
    };
    let before = used();
    settle(&policies);
    let after = used();
    for (b, a) in before.iter().zip(&after) {
        assert!(a < b, "settled {after:?}, before {before:?}");
    }
    // what is left is live: a second full collection frees next to
    // nothing (Lua halves its string table's slots one step a full
    // collection, so it may give back an array of them, not garbage)
    for vm in &vms {
        vm.lua.gc_collect().unwrap();
    }
    for ((b, a), again) in before.iter().zip(&after).zip(used()) {
        assert!(
            a - again < (b - a) / 10,
            "settled {a} of {b}, a second collection {again}"
        );
    }
}

/// `return n, pattern, args...`: the reason is kept as the pattern and its
/// arguments and formatted, as `string.format` formats it, only when read.
#[test]
fn a_reason_returned_as_a_pattern_is_formatted_when_read() {
    let body = r#"return 3, "depth %d over %.1f (%s, %s)", 42, 2.5, "web", true"#;
    let decide_body = format!("local P = {{}}\nfunction P.decide(ctx)\n{body}\nend\nreturn P");
    let mut p = policy(&decide_body).unwrap();
    let got = p.decide(&input()).unwrap();
    assert_eq!((got.replicas, got.reason.as_deref()), (Some(3), None));
    let f = got.format.expect("kept as a pattern");
    assert_eq!(p.render(&f), "depth 42 over 2.5 (web, true)");
    // a second value alone is the reason as written: no `%` is read
    let got = decide(r#"return 2, "at 50% of capacity""#).unwrap();
    assert_eq!(got.reason.as_deref(), Some("at 50% of capacity"));
    assert!(got.format.is_none());
    // past LAZY_ARGS arguments it is formatted in the call
    let got = decide(r#"return 1, "%d %d %d %d %d %d %d", 1, 2, 3, 4, 5, 6, 7"#).unwrap();
    assert_eq!(got.reason.as_deref(), Some("1 2 3 4 5 6 7"));
    assert!(got.format.is_none());
    // what a table gives and what the second value gives cannot both be
    // the reason; an argument must be plain
    let e = decide(r#"return { replicas = 1, reason = "a" }, "b""#).unwrap_err();
    assert_eq!(e.kind, PolicyErrorKind::InvalidReturn, "{e}");
    let e = decide(r#"return 1, "%s", {}"#).unwrap_err();
    assert_eq!(e.kind, PolicyErrorKind::InvalidReturn);
    assert!(e.message.contains("got table"), "{e}");
    let e = decide(r#"return 1, 5"#).unwrap_err();
    assert!(
        e.message.contains("reason must be a string, got integer"),
        "{e}"
    );
    // patterns and string arguments are kept per VM: each call's own
    let body = r#"
ctx.state.n = (ctx.state.n or 0) + 1
local n = ctx.state.n
if n % 2 == 0 then return n, "even %d (%s)", n, "a" .. n end
return n, "odd %d (%s)", n, "b" .. n"#;
    let decide_body = format!("local P = {{}}\nfunction P.decide(ctx)\n{body}\nend\nreturn P");
    let mut p = policy(&decide_body).unwrap();
    for n in 1..=40 {
        let f = p.decide(&input()).unwrap().format.unwrap();
        let want = match n % 2 {
            0 => format!("even {n} (a{n})"),
            _ => format!("odd {n} (b{n})"),
        };
        assert_eq!(p.render(&f), want);
    }
    // a pattern made anew in each call (garbage once the call is over,
    // and garbage made beside it so that collections run): each call's
    // text is its own, never one kept from a string at the same address
    let body = r#"
ctx.state.n = (ctx.state.n or 0) + 1
local n = ctx.state.n
local junk = {}
for i = 1, 300 do junk[i] = { i, tostring(i) .. n } end
return n, "call " .. n .. " of %d", n * 10"#;
    let decide_body = format!("local P = {{}}\nfunction P.decide(ctx)\n{body}\nend\nreturn P");
    let mut p = policy(&decide_body).unwrap();
    for n in 1..=200 {
        let f = p.decide(&input()).unwrap().format.unwrap();
        assert_eq!(p.render(&f), format!("call {n} of {}", n * 10));
    }
}

/// A pattern its arguments do not fit fails where it is formatted: an
/// error naming the pattern for `policy check`, and the pattern with the
/// error as the text where a decision is read.
#[test]
fn a_reason_pattern_its_arguments_do_not_fit_names_itself() {
    let body = r#"return 2, "depth %d", 1.5"#;
    let decide_body = format!("local P = {{}}\nfunction P.decide(ctx)\n{body}\nend\nreturn P");
    let mut p = policy(&decide_body).unwrap();
    let f = p.decide(&input()).unwrap().format.unwrap();
    let e = p.try_render(&f).unwrap_err();
    assert_eq!(e.kind, PolicyErrorKind::InvalidReturn);
    assert!(e.message.contains("\"depth %d\""), "{e}");
    assert!(e.message.contains("integer representation"), "{e}");
    let text = p.render(&f);
    assert!(
        text.starts_with("depth %d (the reason's format failed:"),
        "{text}"
    );
}

/// The tick asks for a Lua `decide`'s upvalues ahead of its call; a
/// `decide` that is a C function has none to read and is left alone, and
/// asking for either changes no decision.
#[test]
fn only_a_lua_decide_has_its_upvalues_asked_for() {
    let load = |text: &str| {
        let src = PolicySource::from_text(Path::new("p.lua"), text.to_owned());
        LuaPolicy::load(&src, &serde_json::json!({"n": 3}), PolicyLimits::default()).expect("loads")
    };
    let mut lua = load("local n = 3 return { decide = function(ctx) return n + ctx.params.n end }");
    let mut c = load("return { decide = rawlen }");
    assert_ne!(lua.hot.closures[1], 0, "a Lua decide's address is kept");
    assert_eq!(c.hot.closures[1], 0, "a C decide's is not");
    assert!(lua.hot.tables.iter().all(|&p| p != 0), "ctx and params");
    let input = CallInput {
        target: "t",
        now_ms: 0,
        replicas: 1,
        min: 0,
        max: 10,
        schedule: None,
    };
    for p in [&lua, &c] {
        p.prefetch_headers();
        p.prefetch_inside();
    }
    assert_eq!(lua.decide(&input).expect("decides").replicas, Some(6));
    // rawlen(ctx): ctx has no array part
    assert_eq!(c.decide(&input).expect("decides").replicas, Some(0));
}

/// A VM of [`HOOK_PROBE`] whose sandbox has `hookmask()`: the count
/// hook's mask in the state a call runs in (8, `LUA_MASKCOUNT`, when it
/// is set).
fn probe_vm(limits: PolicyLimits) -> Arc<PolicyVm> {
    let vm = PolicyVm::new(&source("probe.lua", HOOK_PROBE), limits).unwrap();
    let probe = vm
        .lua
        .create_function(|lua, ()| Ok(watchdog::mask_now(lua)))
        .unwrap();
    vm.lua.globals().set("hookmask", probe).unwrap();
    vm
}

const HOOK_PROBE: &str = r#"local P = {}
function P.decide(ctx)
  local first = hookmask()
  if ctx.params.spin then
    local t = os.clock()
    while os.clock() - t < 0.05 do end
  end
  return first * 10 + hookmask()
end
return P"#;

/// Issue 21: Lua 5.4's count hook costs every instruction of a call, so a
/// decision starts without it; a call still running when the watchdog
/// looks twice gets it (and with it the budget and the deadline), and
/// the next call starts without it again. Loads and everything else
/// outside a decision keep it.
#[test]
fn a_decision_runs_without_the_count_hook_until_it_runs_long() {
    let limits = PolicyLimits {
        instruction_budget: u64::MAX / 2,
        timeout: std::time::Duration::from_secs(5),
        ..small_limits()
    };
    let vm = probe_vm(limits);
    let mut quick = LuaPolicy::instantiate(vm.clone(), &serde_json::json!({})).unwrap();
    let mut slow = LuaPolicy::instantiate(vm.clone(), &serde_json::json!({"spin": true})).unwrap();
    let mask = |vm: &PolicyVm| watchdog::mask_now(&vm.lua);
    assert_eq!(mask(&vm), mlua::ffi::LUA_MASKCOUNT, "set between calls");
    assert_eq!(quick.decide(&input()).unwrap().replicas, Some(0));
    assert_eq!(
        mask(&vm),
        mlua::ffi::LUA_MASKCOUNT,
        "set again after a call"
    );
    // 50 ms of spinning: the watchdog (every 5 ms) has set the hook
    assert_eq!(slow.decide(&input()).unwrap().replicas, Some(8));
    assert_eq!(quick.decide(&input()).unwrap().replicas, Some(0));
    // a timeout shorter than the watchdog's reach keeps the hook throughout
    let short = PolicyLimits {
        timeout: watchdog::ALWAYS_BELOW / 2,
        ..limits
    };
    let mut hooked = LuaPolicy::instantiate(probe_vm(short), &serde_json::json!({})).unwrap();
    assert_eq!(hooked.decide(&input()).unwrap().replicas, Some(88));
}

/// Issue 21: with the hook set by the watchdog, a runaway decision with
/// no budget to speak of is stopped by the deadline, and the budget
/// counts from there.
#[test]
fn the_watchdog_stops_a_runaway_at_its_deadline_and_budget() {
    let src = source(
        "loop.lua",
        "local P = {} function P.decide(ctx) while true do end end return P",
    );
    let limits = PolicyLimits {
        instruction_budget: u64::MAX / 2,
        timeout: std::time::Duration::from_millis(100),
        ..small_limits()
    };
    // the kind of error that ends the loop, which must end in time
    let stopped = |limits: PolicyLimits| {
        let mut p = LuaPolicy::load(&src, &serde_json::json!({}), limits).unwrap();
        let started = std::time::Instant::now();
        let kind = p.decide(&input()).unwrap_err().kind;
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        kind
    };
    assert_eq!(stopped(limits), PolicyErrorKind::Timeout);
    let budget = PolicyLimits {
        instruction_budget: 100_000,
        timeout: std::time::Duration::from_secs(30),
        ..limits
    };
    assert_eq!(stopped(budget), PolicyErrorKind::Budget);
}

/// `ctx.window(metric, span, stat)` and `ctx.forecast(metric, horizon,
/// field)` read one number through a C function (issue 21); what it does
/// not handle (the source, a bad argument, a span too long, an unknown
/// name) goes through the mlua read and gives the error that names it,
/// as before. One target a case, in one VM.
#[test]
fn one_number_reads_and_their_errors() {
    let src = source(
        "one.lua",
        r#"
local P = {}
local function err(f, ...)
  local ok, e = pcall(f, ...)
  return ok and "no error" or tostring(e):match("^[^\n]*")
end
local cases = {
  function(ctx) return ctx.window("queue_depth", "60s", "mean") end,
  function(ctx) return ctx.window("queue_depth", "60s", "max") end,
  function(ctx) return tostring(ctx.window("latency_ms", "60s", "mean")) end,
  function(ctx) return ctx.forecast("queue_depth", 300, "value") end,
  function(ctx) return ctx.forecast("queue_depth", 300, "lower") end,
  function(ctx) return ctx.forecast("queue_depth", 300, "upper") end,
  function(ctx) return ctx.forecast("queue_depth", 300, "source") end,
  function(ctx) return ctx.forecast("queue_depth", "300", "value") end,
  function(ctx) return tostring(ctx.forecast("queue_depth", 60, "value")) end,
  function(ctx) return err(ctx.window, "queue_depth", "10m", "mean") end,
  function(ctx) return err(ctx.forecast, "queue_depth", -1, "value") end,
  function(ctx) return err(ctx.forecast, "queue_depth", 0/0, "upper") end,
  function(ctx) return err(ctx.forecast, "queue_depth", nil, "value") end,
  function(ctx) return err(ctx.forecast, "queue_depth", 300, "median") end,
  function(ctx) return err(ctx.window, "queue_depth", "60s", "median") end,
  function(ctx) return err(ctx.window, "queue_size", "60s", "mean") end,
}
function P.decide(ctx)
  return 1, tostring(cases[ctx.params.case](ctx))
end
return P
"#,
    );
    let vm = PolicyVm::new(&src, small_limits()).unwrap();
    let read = |case: usize| {
        let params = serde_json::json!({ "case": case });
        let mut p = LuaPolicy::instantiate(vm.clone(), &params).unwrap();
        p.bind(Arc::new(Mutex::new(Fixed(one_sample(3.0)))))
            .unwrap();
        p.decide(&input()).unwrap().reason.unwrap()
    };
    let numbers: Vec<String> = (1..=9).map(read).collect();
    assert_eq!(
        numbers,
        ["3.0", "3.0", "nil", "42.0", "40.0", "44.0", "test", "42.0", "nil"]
    );
    for (case, names) in [
        (
            10,
            "span 600000 ms is longer than the longest window of queue_depth",
        ),
        (11, "forecast horizon must be non-negative seconds, got -1"),
        (12, "forecast horizon must be non-negative seconds, got NaN"),
        (13, "bad argument #2: error converting Lua nil to f64"),
        (14, "unknown field median"),
        (15, "unknown statistic median"),
        (16, "unknown metric \"queue_size\""),
    ] {
        let e = read(case);
        assert!(e.contains(names), "case {case}: {e}");
    }
}

/// The numbers of a plain array (`[1] = x, [2] = y, ...`) kept under
/// `key` in a plain table.
fn plain_numbers(t: &state::Plain, key: &str) -> Vec<f64> {
    let state::Plain::Table(pairs) = t else {
        panic!("not a table: {t:?}")
    };
    let Some((_, state::Plain::Table(items))) = pairs
        .iter()
        .find(|(k, _)| *k == state::Plain::Str(key.into()))
    else {
        panic!("no table {key} in {t:?}")
    };
    let mut out: Vec<(i64, f64)> = items
        .iter()
        .map(|(k, v)| match (k, v) {
            (state::Plain::Int(i), state::Plain::Int(n)) => (*i, *n as f64),
            (state::Plain::Int(i), state::Plain::Num(x)) => (*i, *x),
            other => panic!("not an array of numbers: {other:?}"),
        })
        .collect();
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, x)| x).collect()
}

/// The shipped `recurring.lua` (a load of 250 now) after adopting the
/// state that `before` leaves from one call.
fn recurring_adopting(before: &PolicySource) -> LuaPolicy {
    let params = serde_json::json!({ "metric": "queue_depth", "target_per_replica": 100 });
    let mut old = LuaPolicy::load(before, &params, small_limits()).unwrap();
    old.bind(Arc::new(Mutex::new(NoData))).unwrap();
    old.decide(&input()).unwrap();
    let new = shipped_recurring(&params, 250.0);
    new.adopt_state(&old).unwrap();
    new
}

/// The shipped `recurring.lua` with `params`, reading a load of `load`
/// now.
fn shipped_recurring(params: &serde_json::Value, load: f64) -> LuaPolicy {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/recurring.lua");
    let text = std::fs::read_to_string(path).unwrap();
    let mut p = LuaPolicy::load(&source("recurring.lua", &text), params, small_limits()).unwrap();
    p.bind(Arc::new(Mutex::new(Fixed(one_sample(load)))))
        .unwrap();
    p
}

/// `recurring.lua` with the level on (`steady`) and taken at once (no
/// proof asked): a load that stays at 0 minute after minute decides the
/// target's minimum of 0, as the HPA rule does, not the one replica of a
/// level of about 1e-9 (the logarithm of 0 floored); a load of 250 is
/// decided on its level, 3 replicas.
#[test]
fn recurring_level_of_no_load_is_no_load() {
    let params = serde_json::json!({ "metric": "queue_depth", "target_per_replica": 100,
        "steady": 3, "steady_proof": 0, "steady_sure": 0, "daily_min": 0, "shape": 0 });
    for (load, want) in [(250.0, 3), (0.0, 0)] {
        let mut p = shipped_recurring(&params, load);
        let last = (0..6)
            .map(|k| {
                let mut i = input();
                i.min = 0;
                i.now_ms += k * 60_000;
                p.decide(&i).unwrap()
            })
            .last()
            .unwrap();
        assert_eq!(last.replicas, Some(want), "load {load}: {last:?}");
        assert!(
            last.reason
                .as_deref()
                .unwrap_or("")
                .contains("on the level"),
            "load {load}: {last:?}"
        );
    }
}

/// `recurring.lua` from before its near rungs kept the tallies of its
/// four rungs in `ctx.state`. The policy of now, adopting that state (a
/// reload, or a snapshot restored), keeps them as its four rungs after
/// the near ones and starts only the two near rungs afresh, and the
/// six uniform plans its gate compares them with (three above B since
/// 2026-12-06, three below since its fifth session), instead of proving
/// every rung again from nothing.
#[test]
fn recurring_keeps_what_its_rungs_proved_when_the_near_rungs_come() {
    let before = source(
        "before.lua",
        "return { decide = function(ctx)
           ctx.state.plans = { t = {}, b = {}, a = { {}, {}, {}, {} } }
           ctx.state.saved = { 1, 2, 3, 4 }
           ctx.state.extra = { 10, 20, 30, 40 }
         end }",
    );
    let mut new = recurring_adopting(&before);
    let p = new.decide(&input()).unwrap();
    assert!(p.replicas.is_some(), "{p:?}");
    let (state, dropped) = new.export_state();
    assert!(dropped.is_none(), "{dropped:?}");
    // two near rungs first, then the four of before, faded by one period,
    // then the six uniform plans, the square-root rule's and the level's,
    // new
    let (saved, extra) = (
        plain_numbers(&state, "saved"),
        plain_numbers(&state, "extra"),
    );
    assert_eq!(saved.len(), 14, "{saved:?}");
    assert_eq!(&saved[..2], &[0.0, 0.0]);
    assert_eq!(&saved[6..], &[0.0; 8]);
    for (got, was) in saved[2..].iter().zip([1.0, 2.0, 3.0, 4.0]) {
        assert!(*got > 0.99 * was && *got <= was, "{saved:?}");
    }
    for (got, was) in extra[2..].iter().zip([10.0, 20.0, 30.0, 40.0]) {
        assert!(*got > 0.99 * was && *got <= was, "{extra:?}");
    }
    // a period with no answer from ctx.recurring (a gap in the history)
    // keeps all six in their places
    struct NoHistory(WindowStats);
    impl SignalView for NoHistory {
        fn window(&self, m: Metric, span_ms: i64) -> Result<Option<WindowStats>, SpanTooLong> {
            Ok((m == Metric::QueueDepth && span_ms == 60_000).then_some(self.0))
        }
        fn forecast(&self, _: Metric, _: i64) -> Option<ForecastValue> {
            None
        }
    }
    new.bind(Arc::new(Mutex::new(NoHistory(one_sample(250.0)))))
        .unwrap();
    let later = CallInput {
        now_ms: input().now_ms + 15_000,
        ..input()
    };
    new.decide(&later).unwrap();
    let (state, _) = new.export_state();
    let kept = plain_numbers(&state, "saved");
    assert_eq!(kept.len(), 14, "{kept:?}");
    assert!(kept[5] > 0.99 * 4.0, "{kept:?}");
}

/// `recurring.lua`'s `saved` tallies after adopting a state of an
/// earlier release with `kept` plans (1, 2, ... saved; 10, 20, ... extra):
/// those `kept` are where they were, faded by one period, and the rest
/// of today's 14 start from nothing.
fn recurring_keeps_tallies_of(kept: usize) {
    let before = source(
        "before.lua",
        &format!(
            "return {{ decide = function(ctx)
               local a, saved, extra = {{}}, {{}}, {{}}
               for j = 1, {kept} do a[j], saved[j], extra[j] = {{}}, j, 10 * j end
               ctx.state.plans = {{ t = {{}}, b = {{}}, a = a }}
               ctx.state.saved = saved
               ctx.state.extra = extra
             end }}"
        ),
    );
    let mut new = recurring_adopting(&before);
    new.decide(&input()).unwrap();
    let (state, _) = new.export_state();
    let saved = plain_numbers(&state, "saved");
    assert_eq!(saved.len(), 14, "{saved:?}");
    for (j, got) in saved[..kept].iter().enumerate() {
        let was = (j + 1) as f64;
        assert!(*got > 0.99 * was && *got <= was, "{saved:?}");
    }
    assert!(saved[kept..].iter().all(|x| *x == 0.0), "{saved:?}");
}

/// A state of the release before the plans below B (six rungs and the
/// three plans above B) keeps all nine tallies where they were and
/// starts the three below (and the square-root rule's and the level's)
/// afresh.
#[test]
fn recurring_keeps_its_tallies_when_the_plans_below_b_come() {
    recurring_keeps_tallies_of(9);
}

/// A state of the release before the square-root rule (`shape`: six
/// rungs, three plans above B, three below) keeps all twelve tallies
/// where they were and starts the square-root rule's (and the level's)
/// afresh.
#[test]
fn recurring_keeps_its_tallies_when_the_square_root_rule_comes() {
    recurring_keeps_tallies_of(12);
}

/// A state of the release before the level (`steady`: the twelve and the
/// square-root rule's) keeps all thirteen tallies where they were and
/// starts the level's afresh.
#[test]
fn recurring_keeps_its_tallies_when_the_level_comes() {
    recurring_keeps_tallies_of(13);
}

/// `recurring.lua` with a param out of its bounds: every decision is an
/// error that names the param and the value (a string is not taken for
/// the number it spells, nor a share of a day for days), and the same
/// params in bounds decide.
#[test]
fn recurring_names_a_param_out_of_its_bounds() {
    let decide_with = |extra: serde_json::Value| {
        let mut params = serde_json::json!({ "metric": "queue_depth", "target_per_replica": 100 });
        for (k, v) in extra.as_object().unwrap() {
            params[k] = v.clone();
        }
        shipped_recurring(&params, 250.0).decide(&input())
    };
    for (extra, said) in [
        (
            serde_json::json!({ "jump": "3" }),
            "params.jump must be a number above 0, got \"3\"",
        ),
        (
            serde_json::json!({ "jump": 0 }),
            "params.jump must be a number above 0, got 0",
        ),
        (
            serde_json::json!({ "steady_sure": -1 }),
            "params.steady_sure must be a number of 0 or more, got -1",
        ),
        (
            serde_json::json!({ "days": 15 }),
            "params.days must be a whole number from 1 to 14, got 15",
        ),
        (
            serde_json::json!({ "days": 2.5 }),
            "params.days must be a whole number from 1 to 14, got 2.5",
        ),
        (
            serde_json::json!({ "daily_min": 1.5 }),
            "params.daily_min must be a number from 0 to 1, got 1.5",
        ),
        (
            serde_json::json!({ "memory": 0 }),
            "params.memory must be a number above 0, got 0",
        ),
        (
            serde_json::json!({ "align": 7201 }),
            "params.align must be a number from 0 to 7200, got 7201",
        ),
        (
            serde_json::json!({ "weekly": true }),
            "params.weekly must be a number, got true",
        ),
        (
            serde_json::json!({ "near": -1 }),
            "params.near must be a number of 0 or more, got -1",
        ),
        (
            serde_json::json!({ "steady_slope": 1.5 }),
            "params.steady_slope must be a number from 0 to 1, got 1.5",
        ),
        (
            serde_json::json!({ "steady": 2 }),
            "params.steady must be 0 or minutes of 3 or more, got 2",
        ),
        (
            serde_json::json!({ "steady": "6" }),
            "params.steady must be 0 or minutes of 3 or more, got \"6\"",
        ),
    ] {
        let e = decide_with(extra.clone()).unwrap_err();
        assert!(e.message.contains(said), "{extra}: {}", e.message);
    }
    let fine = serde_json::json!({ "jump": 3, "steady_sure": 0, "days": 14, "daily_min": 0.5,
        "memory": 86400, "align": 7200, "weekly": 0, "near": 0, "steady_slope": 1, "steady": 0 });
    let p = decide_with(fine).unwrap();
    assert_eq!(p.replicas, Some(3), "{p:?}");
}
