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
    }
}

fn policy(body: &str) -> Result<LuaPolicy, PolicyError> {
    let src = PolicySource::from_text(Path::new("test.lua"), body.to_owned());
    let p = LuaPolicy::load(
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
            reason: Some("why".into())
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
    let src = PolicySource::from_text(
        Path::new("dir/x.lua"),
        "return {decide=function() end}".into(),
    );
    assert!(src.version.starts_with("x.lua@") && src.version.len() == "x.lua@".len() + 7);
}

#[test]
fn window_and_forecast_reach_the_script() {
    let src = PolicySource::from_text(
        Path::new("w.lua"),
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
         return P"
            .into(),
    );
    let p = LuaPolicy::load(&src, &serde_json::Value::Null, small_limits()).unwrap();
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
    let mut p = p;
    let out = p.decide(&input()).unwrap();
    assert_eq!(
        out,
        Proposal {
            replicas: Some(50),
            reason: Some("test".into())
        }
    );
    // A span longer than the longest window is an error the script sees.
    let src = PolicySource::from_text(
        Path::new("w.lua"),
        "return { decide = function(ctx) return ctx.window('queue_depth', '10m') end }".into(),
    );
    let p = LuaPolicy::load(&src, &serde_json::Value::Null, small_limits()).unwrap();
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
    let src = PolicySource::from_text(
        Path::new("ex.lua"),
        "local P = {}
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
         return P"
            .into(),
    );
    let out = run_examples(&src, PolicyLimits::default()).unwrap();
    assert_eq!(out.len(), 3);
    assert!(out[0].passed() && out[1].passed());
    assert!(!out[2].passed());
    assert_eq!(out[2].got, Ok(Some(3)));
}
