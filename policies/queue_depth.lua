-- Replicas from queue depth: ceil(load / per_replica_depth), where load is
-- the larger of the 60 s mean depth, the 10 s mean (so a surge is seen in
-- seconds) and the forecast five minutes ahead; one more replica while the
-- 10 s p95 latency breaks the SLO and the queue is not already shrinking.
-- params: per_replica_depth (messages one replica should have queued),
--         latency_slo_ms (optional), lookahead_s (default 300).
local P = {}
local max, floor, ceil_div = math.max, math.floor, tw.ceil_div

function P.decide(ctx)
  -- one number per read (the third argument of ctx.window and
  -- ctx.forecast): no table, no quantiles merged that are not read
  local mean = ctx.window("queue_depth", "60s", "mean")
  if not mean then return nil end
  local short = ctx.window("queue_depth", "10s", "mean") or 0
  local future = ctx.forecast("queue_depth", ctx.params.lookahead_s or 300, "value") or 0
  local want = ceil_div(max(mean, short, future), ctx.params.per_replica_depth)
  local slo = ctx.params.latency_slo_ms
  local p95 = slo and ctx.window("latency_ms", "10s", "p95")
  -- the reason as a pattern and its arguments: formatted only when read
  -- (a command, the status), not in each of the tick's calls
  if p95 and p95 > slo and want <= ctx.replicas
    and not ((ctx.window("queue_depth", "10s", "slope") or 0) < 0) then
    return ctx.replicas + 1, "depth 60s mean %d, 10s mean %d, ahead %d -> %d; p95 %d ms > SLO %d ms, +1",
      floor(mean + 0.5), floor(short + 0.5), floor(future + 0.5), want, floor(p95 + 0.5), slo
  end
  return want, "depth 60s mean %d, 10s mean %d, ahead %d -> %d",
    floor(mean + 0.5), floor(short + 0.5), floor(future + 0.5), want
end

P.examples = {
  { name = "depth over capacity", replicas = 2, params = { per_replica_depth = 300 },
    windows = { queue_depth = { ["60s"] = { mean = 900 }, ["10s"] = { mean = 800 } } },
    expect = 3 },
  { name = "a surge shows in the 10 s mean first", replicas = 2, params = { per_replica_depth = 300 },
    windows = { queue_depth = { ["60s"] = { mean = 400 }, ["10s"] = { mean = 2400 } } },
    expect = 8 },
  { name = "no data yet", replicas = 2, params = { per_replica_depth = 300 }, expect = "hold" },
  { name = "latency over the SLO adds one", replicas = 5,
    params = { per_replica_depth = 300, latency_slo_ms = 250 },
    windows = { queue_depth = { ["60s"] = { mean = 600 } }, latency_ms = { ["10s"] = { p95 = 400 } } },
    expect = 6 },
  { name = "no extra replica while the queue drains", replicas = 5,
    params = { per_replica_depth = 300, latency_slo_ms = 250 },
    windows = { queue_depth = { ["60s"] = { mean = 600 }, ["10s"] = { mean = 500, slope = -20 } },
                latency_ms = { ["10s"] = { p95 = 400 } } },
    expect = 2 },
  { name = "a forecast scales ahead", replicas = 2, params = { per_replica_depth = 300 },
    windows = { queue_depth = { ["60s"] = { mean = 300 } } },
    forecast = { queue_depth = { value = 3000, lower = 2500, upper = 3500, source = "test" } },
    expect = 10 },
}

return P
