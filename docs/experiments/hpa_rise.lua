-- EXPERIMENT, not a shipped policy (docs/PREDICTIVE.md, "The split, and
-- what was tried", the rows on `hpa_rise.lua`). `hpa.lua`'s target
-- tracking (0.8, tolerance 10%, its scale-up limit) on the load expected
-- when a replica started now is ready: now plus the forecast's rise at
-- lead/2, lead and lead + period (lead = startup + period), counted only
-- beyond k times the forecast's lower half-interval; and, every 5 minutes
-- out to `far` seconds, the rise there (less kf times its lower
-- half-interval) when it is sudden: the slot's one-step spread between
-- lo and hi of the rise. With no forecast it is hpa.lua exactly.
-- Measured with (tuning set; held out: the nab-*.csv, --generate 2 --seed 100):
--   tidewatch simulate --policy policies/hpa.lua --policy docs/experiments/hpa_rise.lua \
--     --corpus <dir with the crane-*.csv> --generate 3 --seed 0 --days 21 \
--     --sweep target_utilization=0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.5 --quiet \
--     --param k=1 --param far=1800 --param kf=0 --param lo=0.15 --param hi=0.4
-- Without --param far it is the first row (no far look-ahead).
local P = {}
function P.decide(ctx)
  local p = ctx.params
  if not tw.every(ctx, p.period or 15) then return nil end
  local value, metric = tw.load_reading(ctx)
  if not value then return nil end
  local lead = (p.startup or 60) + (p.period or 15)
  local load = value
  local base = ctx.forecast(metric, 0)
  if base then
    local function consider(h, k)
      local f = ctx.forecast(metric, h)
      if not f then return end
      local rise = (f.value - base.value) - k * (f.value - f.lower)
      if rise > 0 then load = math.max(load, value + rise) end
    end
    for _, h in ipairs({ lead / 2, lead, lead + (p.period or 15) }) do
      consider(h, p.k or 0)
    end
    -- far horizons: only for a sudden rise (the slot's one-step spread
    -- between lo and hi of the rise), as predictive_sudden.lua gates it
    local h = lead + 300
    while h <= (p.far or 0) do
      local f = ctx.forecast(metric, h)
      if not f then break end
      local rise = f.value - base.value
      local spread = (f.upper - f.value) / (1.645 * math.sqrt(h / 60))
      if rise > 0 and spread > (p.lo or 0.15) * rise and spread < (p.hi or 0.4) * rise then
        load = math.max(load, value + rise - (p.kf or 0) * (f.value - f.lower))
      end
      h = h + 300
    end
  end
  return { replicas = (tw.hpa_desired(ctx, load)), reason = "" }
end
return P
