-- tidewatch's policy for load that recurs by time of day: the HPA rule
-- (hpa.lua) on the load now plus a share of the rise the load made on the
-- previous days at this time of day, from now to the start-up lead plus
-- `ahead` seconds.
--
--   now   = the metric's rate (counters) or mean over `window`;
--   rise  = ctx.recurring(metric, 0, lead + ahead, days).rise: per point
--           of that window, the median across the last `days` days of the
--           rise from that day's level at this time of day; the highest
--           over the window. A working day that opens at 9:00 plus or
--           minus 20 minutes rises within the window on most days, so the
--           median sees it whole; a spike on one day does not move it;
--   load  = now + k * max(0, rise);
--   want  = the HPA rule on load: target tracking within `tolerance`, at
--           most max(+100%, +4) a period unless the guard applies a
--           [targets.behavior].
-- lead = startup + period. The rise is provisioned up to `ahead` seconds
-- before the median day had it, because the hour varies from day to day;
-- k < 1 buys part of it that early and the HPA rule the rest once it
-- comes.
--   hold: a day that opens later than most: by the time of day when most
--         of the previous days had risen, their rise is behind them and
--         the median shows none left. So a plan is kept for `hold`
--         seconds while the load stays where it was when it was made
--         (below halfway to the plan, above 90% of that load): the rise
--         may still come. Once the load has risen, or fallen, the plan
--         is made afresh.
-- It never plans below the load now, and a fall on the previous days is
-- not anticipated (scale-down is the HPA rule's and the guard's
-- stabilization). With fewer than 3 days of history it is hpa.lua.
-- params: as hpa.lua (target_per_replica, or capacity * target_utilization
--         (0.8); metric ("requests"), stat, window ("60s"), tolerance
--         (0.1), period (15)); startup (seconds, default 60), ahead (2400),
--         k (0.4), days (14, at most 14), hold (1200; 0: none).
-- The defaults were chosen on the tuning half of the corpus and scored on
-- the other half (docs/PREDICTIVE.md); tune them with `tidewatch simulate
-- --sweep` on your own load.
local P = {}

function P.decide(ctx)
  local p = ctx.params
  local period = p.period or 15
  if not tw.every(ctx, period) then return nil end
  local now, metric, stat = tw.load_reading(ctx)
  if not now then return nil end
  local to = (p.startup or 60) + period + (p.ahead or 2400)
  local load, rise = now, nil
  local r = ctx.recurring(metric, 0, to, p.days or 14)
  if r then
    rise = r.rise
    if rise > 0 then load = now + (p.k or 0.4) * rise end
  end
  local s, held = ctx.state, false
  if s.plan and ctx.now - s.plan_at < (p.hold or 1200) and s.plan > load
      and now < s.plan_from + 0.5 * (s.plan - s.plan_from) and now > 0.9 * s.plan_from then
    load, held = s.plan, true
  else
    s.plan, s.plan_at, s.plan_from = load, ctx.now, now
  end
  local want, per_replica, target = tw.hpa_desired(ctx, load)
  return { replicas = want,
           reason = string.format("%s %s %.1f, recurring rise %s within %ds%s, plan %.1f per replica, target %.1f",
             metric, stat, now, rise and string.format("%.1f", rise) or "unknown", to,
             held and " (plan held)" or "", per_replica, target) }
end

P.examples = {
  { name = "no history yet: the HPA rule", replicas = 2, params = { target_per_replica = 100 },
    windows = { requests = { ["60s"] = { rate = 450 } } }, expect = 5 },
  { name = "0.4 of the previous days' rise is provisioned ahead", replicas = 4,
    params = { target_per_replica = 100 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    recurring = { requests = { rise = 400, low = 300, high = 500, level = 800, days = 14 } },
    -- 400 + 0.4 * 400 = 560: 140 per replica, 1.4 times the target
    expect = 6 },
  { name = "k = 1 buys all of it, within the scale-up limit", replicas = 4,
    params = { target_per_replica = 100, k = 1 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    recurring = { requests = { rise = 900, low = 800, high = 1000, level = 1300, days = 14 } },
    -- 1300 would be 13; at most max(2 * 4, 4 + 4) = 8
    expect = 8 },
  { name = "a fall on the previous days is not anticipated", replicas = 4,
    params = { target_per_replica = 100 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    recurring = { requests = { rise = -300, low = -350, high = -250, level = 100, days = 14 } },
    expect = 4 },
  { name = "a small rise stays within the tolerance", replicas = 4,
    params = { target_per_replica = 100 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    recurring = { requests = { rise = 60, low = 0, high = 100, level = 460, days = 14 } },
    -- 400 + 0.4 * 60 = 424: 1.06 times the target, within 10%
    expect = 4 },
}

return P
