-- The Kubernetes HPA target-tracking rule for an average-value target:
-- desired = ceil(current * (metric / current) / target_per_replica), no
-- change while that ratio is within `tolerance` (10%) of 1.
-- params: target_per_replica, metric (default "queue_depth"), stat (a field
--         of the window: "mean", "last", "p95", "rate"...; default "mean"),
--         window (default "60s"), tolerance (default 0.1).
local P = {}

function P.decide(ctx)
  local p = ctx.params
  local metric = p.metric or "queue_depth"
  local w = ctx.window(metric, p.window or "60s")
  if not w then return nil end
  local value = w[p.stat or "mean"]
  if value == nil then error("window of " .. metric .. " has no field " .. tostring(p.stat)) end
  local current = ctx.replicas
  local per_replica = current > 0 and value / current or value
  local want = tw.target_tracking(current, per_replica, p.target_per_replica, p.tolerance or 0.1)
  return { replicas = want,
           reason = string.format("%s %s %.1f, %.1f per replica, target %.1f", metric, p.stat or "mean",
             value, per_replica, p.target_per_replica) }
end

P.examples = {
  { name = "50% over target", replicas = 4, params = { target_per_replica = 100 },
    windows = { queue_depth = { ["60s"] = { mean = 600 } } }, expect = 6 },
  { name = "within the 10% tolerance", replicas = 4, params = { target_per_replica = 100 },
    windows = { queue_depth = { ["60s"] = { mean = 420 } } }, expect = 4 },
  { name = "under target scales down", replicas = 8, params = { target_per_replica = 100 },
    windows = { queue_depth = { ["60s"] = { mean = 200 } } }, expect = 2 },
  { name = "request rate target", replicas = 2,
    params = { target_per_replica = 50, metric = "requests", stat = "rate", window = "30s" },
    windows = { requests = { ["30s"] = { rate = 260 } } }, expect = 6 },
  { name = "from zero with load", replicas = 0, params = { target_per_replica = 100 },
    windows = { queue_depth = { ["60s"] = { mean = 5 } } }, expect = 1 },
}

return P
