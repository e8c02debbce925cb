-- The sandbox prelude: runs once per policy VM before the policy file.
-- Its first argument tells whether the instruction budget of the current
-- call is spent; the second is the raw `load`.
local exhausted, raw_load, log = ...
local raw_pcall, raw_xpcall, select, error = pcall, xpcall, select, error

-- A script must not be able to catch the end of its own budget and go on.
local function rethrow(ok, ...)
  if not ok and exhausted() then error((...), 0) end
  return ok, ...
end
pcall = function(f, ...) return rethrow(raw_pcall(f, ...)) end
xpcall = function(f, handler, ...) return rethrow(raw_xpcall(f, handler, ...)) end

-- Text chunks only, never binary ones.
load = function(chunk, name, _mode, env)
  return raw_load(chunk, name, "t", env or _ENV)
end

print = function(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[#parts + 1] = tostring((select(i, ...))) end
  log(table.concat(parts, "\t"))
end

-- Helpers every policy needs.
tw = {}

-- The Kubernetes HPA rule: desired = ceil(current * metric / target),
-- unchanged while the ratio is within `tolerance` (default 0.1) of 1.
function tw.target_tracking(current, metric, target, tolerance)
  tolerance = tolerance or 0.1
  if target <= 0 then error("tw.target_tracking: target must be positive, got " .. tostring(target), 2) end
  if current <= 0 then return metric > 0 and 1 or 0 end
  local ratio = metric / target
  if math.abs(ratio - 1) <= tolerance then return current end
  return math.ceil(current * ratio)
end

-- The HPA's default scale-up limit per period: the larger of doubling and
-- four more.
function tw.hpa_scale_up_limit(current)
  return math.max(2 * current, current + 4)
end

-- What the HPA asks for when the load is `load`: target tracking of the
-- load per replica against tw.per_replica_target(ctx.params, 0.8), within
-- ctx.params.tolerance (0.1), and its default scale-up limit unless the
-- guard applies a behavior (ctx.behavior). Returns the replicas, the load
-- per replica and the target.
function tw.hpa_desired(ctx, load)
  local p, current = ctx.params, ctx.replicas
  local per_replica = current > 0 and load / current or load
  local target = tw.per_replica_target(p, 0.8)
  local want = tw.target_tracking(current, per_replica, target, p.tolerance or 0.1)
  if not ctx.behavior then
    want = math.min(want, tw.hpa_scale_up_limit(current))
  end
  return want, per_replica, target
end

-- The load one replica should carry: params.target_per_replica, or
-- params.capacity * (params.target_utilization or `utilization`).
function tw.per_replica_target(params, utilization)
  if params.target_per_replica then return params.target_per_replica end
  if params.capacity then return params.capacity * (params.target_utilization or utilization) end
  error("set params.target_per_replica, or params.capacity (and target_utilization)", 2)
end

-- True at most once per `period` seconds of ctx.now (kept in ctx.state).
function tw.every(ctx, period)
  local last = ctx.state.tw_every_last
  if last and ctx.now - last < period - 1e-6 then return false end
  ctx.state.tw_every_last = ctx.now
  return true
end

-- The statistic a load reading uses: the rate of counters (requests,
-- errors), the mean of levels.
function tw.load_stat(metric)
  return (metric == "requests" or metric == "errors") and "rate" or "mean"
end

-- What a load policy scales on: `params.metric` (default "requests"), its
-- `params.stat` (default tw.load_stat) over `params.window` (default
-- "60s"). Returns value, metric, stat; nil while the window is empty.
function tw.load_reading(ctx)
  local p = ctx.params
  local metric = p.metric or "requests"
  local stat = p.stat or tw.load_stat(metric)
  local w = ctx.window(metric, p.window or "60s")
  if not w then return nil end
  local value = w[stat]
  if value == nil then error("window of " .. metric .. " has no field " .. tostring(stat), 2) end
  return value, metric, stat
end

function tw.ceil_div(a, b)
  if b <= 0 then error("tw.ceil_div: divisor must be positive, got " .. tostring(b), 2) end
  return math.ceil(a / b)
end

function tw.clamp(x, lo, hi)
  if x < lo then return lo end
  if x > hi then return hi end
  return x
end

-- The largest of the arguments that are not nil, or nil.
function tw.max_of(...)
  local best
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if v ~= nil and (best == nil or v > best) then best = v end
  end
  return best
end

-- Exponentially weighted moving average kept in `state[key]`.
function tw.ewma(state, key, value, alpha)
  local prev = state[key]
  local next = prev == nil and value or prev + (alpha or 0.3) * (value - prev)
  state[key] = next
  return next
end
