-- The predictive baseline of the open-source Predictive Horizontal Pod
-- Autoscaler: the HPA's replica count, and the same rule applied to a
-- Holt-Winters forecast of the metric `lookahead` seconds ahead; the
-- larger wins. Otherwise HPA behaviour: `period`, `tolerance`, scale-up
-- limit, and the guard's scale-down stabilization.
-- params: as hpa.lua, plus lookahead (default: params.startup, else 60).
local P = {}

function P.decide(ctx)
  local p = ctx.params
  if not tw.every(ctx, p.period or 15) then return nil end
  local value, metric = tw.load_reading(ctx)
  if not value then return nil end
  local lookahead = p.lookahead or p.startup or 60
  local f = ctx.forecast(metric, lookahead)
  local predicted = f and f.value or 0
  local current = ctx.replicas
  local t = tw.per_replica_target(p, 0.8)
  local reactive = tw.target_tracking(current, current > 0 and value / current or value, t, p.tolerance or 0.1)
  local ahead = tw.target_tracking(current, current > 0 and predicted / current or predicted, t, p.tolerance or 0.1)
  local want = math.min(math.max(reactive, ahead), tw.hpa_scale_up_limit(current))
  -- the reason as a pattern and its arguments: formatted only when read
  return want, "%s %.1f now, %.1f forecast in %ds (%s), target %.1f per replica",
    metric, value, predicted, lookahead, f and f.source or "none", t
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
