-- EXPERIMENT, not a shipped policy (docs/PREDICTIVE.md, the rows on
-- ctx.recurring). hpa.lua, and once a rise that recurs at this time of
-- day (ctx.recurring over the next lead + `ahead` seconds: the median
-- day's rise R) has begun today (the load is up by more than `onset` of
-- R on its lowest of the last `look` seconds), the rest of R at once
-- instead of in proportion as it comes. `k` of R is held before any
-- sign. Measured as hpa_recurring.lua is, with this file.
local P = {}
function P.decide(ctx)
  local p = ctx.params
  if not tw.every(ctx, p.period or 15) then return nil end
  local value, metric = tw.load_reading(ctx)
  if not value then return nil end
  local st = ctx.state
  st.seen = st.seen or {}
  table.insert(st.seen, value)
  local keep = math.floor((p.look or 300) / (p.period or 15)) + 1
  while #st.seen > keep do table.remove(st.seen, 1) end
  local low = value
  for _, v in ipairs(st.seen) do low = math.min(low, v) end
  local lead = (p.startup or 60) + (p.period or 15)
  local load = value
  local r = ctx.recurring(metric, 0, lead + (p.ahead or 1800), p.days or 7)
  if r and r.rise > 0 then
    local risen = value - low
    if risen > (p.onset or 0.2) * r.rise then
      load = math.max(load, low + r.rise)
    else
      load = value + (p.k or 0) * r.rise
    end
  end
  return { replicas = (tw.hpa_desired(ctx, load)), reason = "" }
end
return P
