-- EXPERIMENT, not a shipped policy (docs/PREDICTIVE.md, the rows on
-- ctx.recurring). hpa.lua on now plus k times the rise that the load
-- made on the median day of the last `days` within the next
-- lead + `ahead` seconds after this time of day; with `level`, at least
-- k of the way to the median day's level. Measured with:
--   tidewatch simulate --policy policies/hpa.lua --policy docs/experiments/hpa_recurring.lua \
--     --corpus <dir with the crane-*.csv> --generate 10 --seed 0 --days 21 \
--     --sweep target_utilization=0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.5 --quiet \
--     --param ahead=1800 --param k=0.5
local P = {}
function P.decide(ctx)
  local p = ctx.params
  if not tw.every(ctx, p.period or 15) then return nil end
  local value, metric = tw.load_reading(ctx)
  if not value then return nil end
  local lead = (p.startup or 60) + (p.period or 15)
  local load = value
  local r = ctx.recurring(metric, 0, lead + (p.ahead or 1800), p.days or 7)
  if r then
    local k = p.k or 1
    if r.rise > 0 then load = value + k * r.rise end
    if p.level then load = math.max(load, value + k * (r.level - value)) end
  end
  return { replicas = (tw.hpa_desired(ctx, load)), reason = "" }
end
return P
