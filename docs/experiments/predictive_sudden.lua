-- EXPERIMENT, not a shipped policy (docs/PREDICTIVE.md, "The split, and
-- what was tried", last row). A variant of predictive.lua:
--   - headroom z * sigma, sigma from the one-step interval (z = 2);
--   - anchored on the mean of the measured rate and the forecast's level
--     (params.anchor = "mix"), or the rate alone, or their max ("max");
--   - a look-ahead over params.peak_window seconds (1800) for rises that
--     are sudden: where the slot's one-step spread lies between
--     sudden_lo (0.15) and sudden_hi (0.4 in the measurement) of the rise;
--   - scale-down tolerance 10%.
-- Measured with:
--   tidewatch simulate --policy policies/hpa.lua --policy docs/experiments/predictive_sudden.lua \
--     --corpus <dir with the crane-*.csv> --generate 3 --seed 0 --days 21 \
--     --sweep target_utilization=0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.5 --quiet \
--     --param z=2.0 --param anchor=mix --param peak_window=1800 --param sudden_hi=0.4
-- (held out: the nab-*.csv and --generate 2 --seed 100).
local P = {}
function P.decide(ctx)
  local p = ctx.params
  local t = tw.per_replica_target(p, 1.0)
  local now, metric = tw.load_reading(ctx)
  if not now then return nil end
  local period = p.period or 15
  local lead = (p.startup or 60) + period
  local base = ctx.forecast(metric, 0)
  local z = p.z or 1.5
  local cap = p.max_headroom or 0.5
  local margin = p.rise_margin or 0.15
  local discount = p.rise_discount or 0.3
  local sigma = 0
  local anchor = now
  if base then
    local f1 = ctx.forecast(metric, 60)
    sigma = (f1.upper - f1.value) / 1.645
    if p.anchor == "mix" then anchor = 0.5 * (now + base.value) end
    if p.anchor == "max" then anchor = math.max(now, base.value) end
  end
  local function ahead(h, zz, disc)
    local f = ctx.forecast(metric, h)
    local rise = f.value - base.value
    if rise > 0 then
      rise = math.max(0, (1 + margin) * rise - (disc or discount) * (f.value - f.lower))
    end
    local room = math.min(zz * sigma, cap * math.max(anchor, f.value))
    return anchor + rise + room
  end
  local plan = now
  if base then
    for _, h in ipairs({ lead / 2, lead, lead + period }) do
      plan = math.max(plan, ahead(h, z))
    end
    local W = p.peak_window or 0
    local h = lead + 300
    local lo, hi = p.sudden_lo or 0.15, p.sudden_hi or 0.6
    while h <= lead + W do
      local f = ctx.forecast(metric, h)
      local rise = f.value - base.value
      local s = (f.upper - f.value) / (1.645 * math.sqrt(h / 60))
      if rise > 0 and s > lo * rise and s < hi * rise then
        plan = math.max(plan, ahead(h, z, p.far_discount or 0.3))
      end
      h = h + 300
    end
  end
  local want = math.ceil(plan / t)
  local current = ctx.replicas
  if want < current then
    if base then
      for _, h in ipairs({ 2 * lead, 3 * lead, p.down_horizon or 600 }) do
        want = math.max(want, math.ceil(ahead(h, p.down_z or 0) / t))
      end
    end
    if want > current * (1 - (p.down_tolerance or 0.1)) then want = current end
  end
  return { replicas = want, reason = "" }
end
return P
