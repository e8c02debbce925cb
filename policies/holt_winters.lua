-- The predictive baseline of the open-source Predictive Horizontal Pod
-- Autoscaler: the HPA's replica count, and the same rule applied to a
-- Holt-Winters forecast of the metric `lookahead` seconds ahead; the
-- larger wins. Otherwise HPA behaviour: `period`, `tolerance`, scale-up
-- limit, and the guard's scale-down stabilization.
-- params: as hpa.lua, plus lookahead (default: params.startup, else 60).
local P = {}

local function target(p)
  if p.target_per_replica then return p.target_per_replica end
  if p.capacity then return p.capacity * (p.target_utilization or 0.8) end
  error("set params.target_per_replica, or params.capacity (and target_utilization)")
end

function P.decide(ctx)
  local p = ctx.params
  local period = p.period or 15
  local last = ctx.state.last
  if last and ctx.now - last < period - 1e-6 then return nil end
  ctx.state.last = ctx.now
  local metric = p.metric or "requests"
  local stat = p.stat or ((metric == "requests" or metric == "errors") and "rate" or "mean")
  local w = ctx.window(metric, p.window or "60s")
  if not w then return nil end
  local value = w[stat]
  local lookahead = p.lookahead or p.startup or 60
  local f = ctx.forecast(metric, lookahead)
  local predicted = f and f.value or 0
  local current = ctx.replicas
  local t = target(p)
  local reactive = tw.target_tracking(current, current > 0 and value / current or value, t, p.tolerance or 0.1)
  local ahead = tw.target_tracking(current, current > 0 and predicted / current or predicted, t, p.tolerance or 0.1)
  local want = math.min(math.max(reactive, ahead), tw.hpa_scale_up_limit(current))
  return { replicas = want,
           reason = string.format("%s %.1f now, %.1f forecast in %ds (%s), target %.1f per replica",
             metric, value, predicted, lookahead, f and f.source or "none", t) }
end

P.examples = {
  { name = "the forecast is higher", replicas = 4, params = { target_per_replica = 100, lookahead = 120 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    forecast = { requests = { value = 700 } }, expect = 7 },
  { name = "the current load is higher", replicas = 4, params = { target_per_replica = 100 },
    windows = { requests = { ["60s"] = { rate = 600 } } },
    forecast = { requests = { value = 300 } }, expect = 6 },
  { name = "no forecast yet: the HPA alone", replicas = 4, params = { target_per_replica = 100 },
    windows = { requests = { ["60s"] = { rate = 600 } } }, expect = 6 },
}

return P
