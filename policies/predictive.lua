-- tidewatch's predictive policy: plan for the load when a replica started
-- now would be ready, with headroom from the forecast's interval, and never
-- below what the load needs now.
--
--   now     = the metric's rate over `window`;
--   rise h  = forecast(h) - forecast(0), the forecast's change (the
--             forecaster sees whole history steps only, so its level lags
--             by up to a step: the change is anchored on the measured now);
--             a rise counts as
--               (1 + rise_margin) * rise - rise_discount * (value(h) - lower(h)),
--             at least 0: a rise the forecast is sure of (a narrow
--             interval, as for a jump that comes every day) is provisioned
--             with a margin for its size, which varies from day to day; an
--             unsure one (a wide interval, as for bursts whose hour varies)
--             is discounted, and the reactive floor handles it if it comes;
--   ahead h = now + rise(h) + room(h)
--   room h  = min(headroom * (upper(h) - value(h)),
--                 max_headroom * max(now, value(h)))
--   plan    = max(now, ahead(h)) over h in lead/2, lead, lead + period,
--             lead = startup + period;
--   want    = ceil(plan / target_per_replica).
-- Scale-down needs the forecast out to `down_horizon` to agree (no
-- scale-down just before a predicted rise) and a drop of more than
-- `down_tolerance`; the guard's stabilization applies on top. Without a
-- forecast (no history yet) it is a reactive target tracker.
-- params: target_per_replica, or capacity * target_utilization (default
--         1.0: the headroom comes from the forecast interval); startup
--         (seconds, default 60); metric ("requests"), window ("60s"),
--         period (15), headroom (0.6 of the 90% half-interval),
--         max_headroom (0.3 of the load: a wide interval, as in the hours
--         of spiky bursts, buys at most this much), rise_margin (0.15),
--         rise_discount (0.3 of the lower half-interval), down_horizon
--         (600), down_tolerance (0.3).
-- The defaults were chosen with `tidewatch simulate` on the shared traces
-- (docs/PREDICTIVE.md); tune them with it on your own.
local P = {}

function P.decide(ctx)
  local p = ctx.params
  local t = tw.per_replica_target(p, 1.0)
  local now, metric = tw.load_reading(ctx)
  if not now then return nil end
  local period = p.period or 15
  local lead = (p.startup or 60) + period
  local base = ctx.forecast(metric, 0)
  local src = base and base.source or "none"
  local cap = p.max_headroom or 0.3
  local margin = p.rise_margin or 0.15
  local discount = p.rise_discount or 0.3
  local function ahead(h, band)
    local f = ctx.forecast(metric, h)
    local rise = f.value - base.value
    if rise > 0 then
      rise = math.max(0, (1 + margin) * rise - discount * (f.value - f.lower))
    end
    local room = band * (f.upper - f.value)
    room = math.min(room, cap * math.max(now, f.value))
    return now + rise + room
  end
  local plan = now
  if base then
    for _, h in ipairs({ lead / 2, lead, lead + period }) do
      plan = math.max(plan, ahead(h, p.headroom or 0.6))
    end
  end
  local want = math.ceil(plan / t)
  local current = ctx.replicas
  if want < current then
    if base then
      for _, h in ipairs({ 2 * lead, 3 * lead, p.down_horizon or 600 }) do
        want = math.max(want, math.ceil(ahead(h, 0) / t))
      end
    end
    if want > current * (1 - (p.down_tolerance or 0.3)) then want = current end
  end
  -- the reason as a pattern and its arguments: formatted only when read
  return want, "%s %.1f now, plan %.1f (%s), target %.1f per replica",
    metric, now, plan, src, t
end

P.examples = {
  { name = "a forecast rise is provisioned before it arrives", replicas = 4,
    params = { target_per_replica = 100, startup = 105 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    forecast = { requests = {
      [0] = { value = 400, lower = 400, upper = 400 },
      [60] = { value = 500, lower = 450, upper = 550 },
      [120] = { value = 700, lower = 600, upper = 800 },
      [135] = { value = 700, lower = 600, upper = 800 } } },
    -- 400 + 1.15 * 300 - 0.3 * 100 + 0.6 * 100 = 775
    expect = 8 },
  { name = "a rise the forecast is sure of gets a margin for its size", replicas = 1,
    params = { target_per_replica = 100, startup = 105 },
    windows = { requests = { ["60s"] = { rate = 100 } } },
    forecast = { requests = {
      [0] = { value = 100, lower = 100, upper = 100 },
      [60] = { value = 1100, lower = 1050, upper = 1150 },
      [120] = { value = 1100, lower = 1050, upper = 1150 },
      [135] = { value = 1100, lower = 1050, upper = 1150 } } },
    -- 100 + 1.15 * 1000 - 0.3 * 50 + 0.6 * 50 = 1265 (1115 without the margin)
    expect = 13 },
  { name = "an unsure rise is discounted", replicas = 1,
    params = { target_per_replica = 100, startup = 105 },
    windows = { requests = { ["60s"] = { rate = 100 } } },
    forecast = { requests = {
      [0] = { value = 100, lower = 100, upper = 100 },
      [60] = { value = 300, lower = 0, upper = 600 },
      [120] = { value = 300, lower = 0, upper = 600 },
      [135] = { value = 300, lower = 0, upper = 600 } } },
    -- 100 + 1.15 * 200 - 0.3 * 300 + min(0.6 * 300, 0.3 * 300) = 330
    -- (420 without the discount)
    expect = 4 },
  { name = "a wide interval buys at most max_headroom", replicas = 4,
    params = { target_per_replica = 100, startup = 105 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    forecast = { requests = {
      [0] = { value = 400, lower = 400, upper = 400 },
      [60] = { value = 400, lower = 0, upper = 2400 },
      [120] = { value = 400, lower = 0, upper = 2400 },
      [135] = { value = 400, lower = 0, upper = 2400 } } },
    -- 400 + 0.3 * 400 = 520 (1600 from the interval alone)
    expect = 6 },
  { name = "no forecast yet: reactive", replicas = 2, params = { target_per_replica = 100 },
    windows = { requests = { ["60s"] = { rate = 450 } } }, expect = 5 },
  { name = "no scale-down ahead of a predicted rise", replicas = 8,
    params = { target_per_replica = 100, startup = 45, down_horizon = 600 },
    windows = { requests = { ["60s"] = { rate = 300 } } },
    forecast = { requests = {
      [0] = { value = 300, lower = 300, upper = 300 }, [30] = { value = 300, lower = 300, upper = 300 },
      [60] = { value = 300, lower = 300, upper = 300 }, [75] = { value = 300, lower = 300, upper = 300 },
      [120] = { value = 300, lower = 300, upper = 300 }, [180] = { value = 300, lower = 300, upper = 300 },
      [600] = { value = 800, lower = 700, upper = 900 } } },
    expect = 8 },
  { name = "a small drop is held", replicas = 10, params = { target_per_replica = 100 },
    windows = { requests = { ["60s"] = { rate = 800 } } }, expect = 10 },
}

return P
