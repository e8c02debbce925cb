-- Keep the p95 gateway latency under an SLO: scale up in proportion to how
-- far p95 is above it (at most doubling per decision), scale down by one
-- while p95 is well below it, hold in between or with too few samples.
-- params: latency_slo_ms, window (default "60s"), min_samples (default 20),
--         scale_down_below (fraction of the SLO, default 0.5).
local P = {}

function P.decide(ctx)
  local p = ctx.params
  local lat = ctx.window("latency_ms", p.window or "60s")
  if not lat or lat.count < (p.min_samples or 20) then return nil end
  local ratio = lat.p95 / p.latency_slo_ms
  local current = math.max(ctx.replicas, 1)
  if ratio > 1 then
    local want = math.ceil(current * math.min(ratio, 2))
    return want, "p95 %.0f ms is %.2fx the SLO", lat.p95, ratio
  end
  if ratio < (p.scale_down_below or 0.5) and ctx.replicas > ctx.min then
    return ctx.replicas - 1, "p95 %.0f ms is %.2fx the SLO", lat.p95, ratio
  end
  return nil, "p95 %.0f ms within the SLO band", lat.p95
end

P.examples = {
  { name = "twice the SLO doubles", replicas = 4, params = { latency_slo_ms = 250 },
    windows = { latency_ms = { ["60s"] = { p95 = 500, count = 1000 } } }, expect = 8 },
  { name = "far over the SLO is capped at doubling", replicas = 3, params = { latency_slo_ms = 100 },
    windows = { latency_ms = { ["60s"] = { p95 = 900, count = 1000 } } }, expect = 6 },
  { name = "well under scales down by one", replicas = 4, params = { latency_slo_ms = 250 },
    windows = { latency_ms = { ["60s"] = { p95 = 100, count = 1000 } } }, expect = 3 },
  { name = "inside the band holds", replicas = 4, params = { latency_slo_ms = 250 },
    windows = { latency_ms = { ["60s"] = { p95 = 200, count = 1000 } } }, expect = "hold" },
  { name = "too few samples holds", replicas = 4, params = { latency_slo_ms = 250 },
    windows = { latency_ms = { ["60s"] = { p95 = 900, count = 3 } } }, expect = "hold" },
}

return P
