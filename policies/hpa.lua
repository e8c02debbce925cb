-- The Kubernetes HPA (autoscaling/v2 with its default behaviour) on one
-- metric: the reactive baseline.
--   desired = ceil(value / target_per_replica), unchanged while
--   value / (current * target_per_replica) is within `tolerance` of 1;
--   evaluated every `period` seconds (the controller's 15 s sync);
--   a scale-up adds at most max(100%, 4 pods) per period, unless the
--   target has a [targets.behavior] block: then the guard applies the
--   HPA's rate policies exactly (ctx.behavior is true) and this policy
--   leaves its own limit out;
--   scale-down stabilization (300 s) is the guard's `stabilization_down`
--   (or behavior.scale_down.stabilization).
-- params: target_per_replica, or capacity * target_utilization (default
--         0.8); metric (default "requests"), stat (default "rate" for the
--         counters requests and errors, else "mean"), window ("60s"),
--         tolerance (0.1), period (15).
local P = {}

function P.decide(ctx)
  local p = ctx.params
  if not tw.every(ctx, p.period or 15) then return nil end
  local value, metric, stat = tw.load_reading(ctx)
  if not value then return nil end
  local want, per_replica, target = tw.hpa_desired(ctx, value)
  -- the reason as a pattern and its arguments: formatted only when read
  return want, "%s %s %.1f, %.1f per replica, target %.1f", metric, stat,
    value, per_replica, target
end

P.examples = {
  { name = "50% over target", replicas = 4, params = { target_per_replica = 100, metric = "queue_depth" },
    windows = { queue_depth = { ["60s"] = { mean = 600 } } }, expect = 6 },
  { name = "within the 10% tolerance", replicas = 4, params = { target_per_replica = 100, metric = "queue_depth" },
    windows = { queue_depth = { ["60s"] = { mean = 420 } } }, expect = 4 },
  { name = "under target scales down", replicas = 8, params = { target_per_replica = 100, metric = "queue_depth" },
    windows = { queue_depth = { ["60s"] = { mean = 200 } } }, expect = 2 },
  { name = "request rate against capacity at 80%", replicas = 2, params = { capacity = 50 },
    windows = { requests = { ["60s"] = { rate = 130 } } }, expect = 4 },
  { name = "scale-up limited to +100% or +4", replicas = 2, params = { target_per_replica = 10 },
    windows = { requests = { ["60s"] = { rate = 500 } } }, expect = 6 },
  { name = "from zero with load", replicas = 0, params = { target_per_replica = 100, metric = "queue_depth" },
    windows = { queue_depth = { ["60s"] = { mean = 5 } } }, expect = 1 },
}

return P
