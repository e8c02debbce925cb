-- EXPERIMENT, not a shipped policy (docs/PREDICTIVE.md, "A reactive
-- rule that does not chase noise"). The HPA rule on a level without its
-- noise: keeps the logarithm of the load, one point per `sample` (60) s,
-- for the last `n` (10) points; level = their mean, sigma = one point's
-- spread about it (the median absolute difference of neighbours over
-- 0.6745 * sqrt 2). It provisions for exp(level + z * sigma), z 1; when
-- the load now is above level + `jump` (2.5) sigma the level has moved:
-- it starts again from the load now, plus `g` times the jump (g learned:
-- `gk` times how far past jumps went on within `cont` (2) samples, a
-- running mean; gk 1; or `g` fixed). want = ceil(that / (capacity *
-- target_utilization)), no tolerance band (`hpa` = 1: the HPA rule's
-- band and limit on that load). Measured on the tuning set:
--   tidewatch simulate --policy policies/hpa.lua --policy docs/experiments/steady.lua \
--     --corpus <dir with the crane-*.csv> --generate 20 --seed 0 --days 21 --quiet \
--     --sweep target_utilization=0.6,0.7,0.75,0.8,0.85,0.9,0.95,1.0,1.05,1.1,1.2,1.5 --param z=0.5
local P = {}

function P.decide(ctx)
  local p = ctx.params
  if not tw.every(ctx, p.period or 15) then return nil end
  local value = tw.load_reading(ctx)
  if not value then return nil end
  local s = ctx.state
  local n = p.n or 10
  local sample = p.sample or 60
  local ring = s.ring
  if not ring then ring = {}; s.ring = ring; s.head = 0 end
  local x = math.log(math.max(value, 1e-9))
  -- a new point each `sample`; between, the latest reading replaces it
  if not s.last or ctx.now - s.last >= sample then
    s.last = ctx.now
    s.head = s.head % n + 1
  end
  ring[s.head] = x
  local m = #ring
  local want_load
  local z, jump = p.z or 1.0, p.jump or 2.5
  if m < 4 then
    want_load = value
  else
    local sum = 0
    for i = 1, m do sum = sum + ring[i] end
    local level = sum / m
    -- neighbours in time order
    local d = {}
    for k = 1, m - 1 do
      local i = (s.head - k - 1) % m + 1
      local j = (s.head - k) % m + 1
      d[#d + 1] = math.abs(ring[j] - ring[i])
    end
    table.sort(d)
    local mad = d[math.floor((#d + 1) / 2)]
    local sigma = mad / (0.6745 * math.sqrt(2))
    -- continuation of past jumps: how much further the load went in the
    -- next `cont` samples, over the jump's size
    local pend = s.pend
    if pend and ctx.now - pend.t >= (p.cont or 2) * sample then
      local c = math.max(0, (pend.hi - pend.x) / pend.d)
      local a = p.alpha or 0.2
      s.cg = (s.cg or 0) * (1 - a) + a * math.min(c, 3)
      s.pend = nil
    elseif pend and ctx.now > pend.t and x > pend.hi then
      pend.hi = x
    end
    if x > level + jump * sigma then
      -- a rise, not noise: start again from here
      local g = p.g or math.min(p.gmax or 2, (s.cg or 0) * (p.gk or 1))
      if not s.pend then s.pend = { t = ctx.now, x = x, d = x - level, hi = x } end
      for i = 1, m do ring[i] = x end
      want_load = math.exp(x + g * (x - level) + z * sigma)
      level = x
    else
      want_load = math.exp(level + z * sigma)
    end
  end
  if (p.hpa or 0) ~= 0 then return (tw.hpa_desired(ctx, want_load)) end
  local target = p.target_per_replica or (p.capacity * (p.target_utilization or 0.8))
  local want = math.ceil(want_load / target)
  if want < 1 and value > 0 then want = 1 end
  return want
end

return P
