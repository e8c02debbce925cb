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
--   weekly: the median across 14 days is the working days' rise, also
--         on a weekend. So no more of it is added than the same day of
--         the week had: times ctx.recurring's `week` (the level the same
--         weekday reached, 7 and 14 days ago, over the median day's; at
--         most 1), read over the window widened by `widen` seconds so
--         that the hour it came matters less. weekly = 0: off.
-- It never plans below the load now, and a fall on the previous days is
-- not anticipated (scale-down is the HPA rule's and the guard's
-- stabilization). With fewer than 3 days of history it is hpa.lua.
--   proof: the rise is added only once it has paid on this target's own
--         load, better than the same replicas spent as uniform headroom;
--         until then it is hpa.lua. Every period, whatever it decided, it
--         scores two plans on the load it sees: the HPA rule on the load
--         now (B) and with the rise, its hold included (A), each held at
--         its highest over `stab` seconds (the guard's scale-down
--         stabilization) and ready `startup` seconds later. A check is short for a plan when the
--         load now is above its ready replicas times `capacity`.
--           saved = checks where B is short and A is not, per replica-
--                   second A holds above B;
--           uniform = checks where B is short and `margin` (5%) more of
--                   B would not have been, per replica-second of that 5%.
--         Both fade over `memory` (7 days). The rise is added while saved
--         is above `edge` (1) times uniform and at least `proof` (4)
--         checks were saved. proof = 0: from the third day, unproven.
--         A rise that only shortens a shortfall (an opening larger than
--         k times the rise plus the headroom) saves no check: it is not
--         proven, and the HPA rule handles that opening alone.
-- params: as hpa.lua (target_per_replica, or capacity * target_utilization
--         (0.8); metric ("requests"), stat, window ("60s"), tolerance
--         (0.1), period (15)); startup (seconds, default 60), ahead (2400),
--         k (0.4), days (14, at most 14), hold (1200; 0: none), weekly
--         (1; 0: off), widen (3600), proof (4), edge (1), margin (0.05),
--         memory (604800), stab (300), capacity (else target / 0.8).
-- The defaults were chosen on the tuning half of the corpus and scored on
-- the other half (docs/PREDICTIVE.md); tune them with `tidewatch simulate
-- --sweep` on your own load.
local P = {}

-- The highest counts of plans A and B decided in (at - stab, at]: what
-- each has ready at `at` + startup. `ring` holds a slot a period (of
-- `size`): the time of the decision (t) and each plan's count (a, b).
local function held_at(ring, size, at, stab, period)
  local best_a, best_b = 0, 0
  for k = math.floor((at - stab) / period), math.floor(at / period) do
    local i = k % size + 1
    local t = ring.t[i]
    if t and t <= at and t > at - stab then
      if ring.a[i] > best_a then best_a = ring.a[i] end
      if ring.b[i] > best_b then best_b = ring.b[i] end
    end
  end
  return best_a, best_b
end

-- Scores plan A (the load `plan`: with the rise, held or not) against B
-- (the load now) on the load now, and tells whether A has paid for
-- itself (see `proof` above).
local function proven(ctx, now, plan, period, target)
  local p, s = ctx.params, ctx.state
  period = math.max(period, 1)
  local proof = p.proof or 4
  if proof <= 0 then return true end
  local startup, stab = p.startup or 60, p.stab or 300
  local cap = p.capacity or target / 0.8
  local ring = s.plans or { t = {}, a = {}, b = {} }
  s.plans = ring
  -- a slot a period, enough for startup + stab
  local size = math.floor((startup + stab) / period) + 2
  local i = math.floor(ctx.now / period) % size + 1
  ring.t[i], ring.a[i], ring.b[i] = ctx.now, math.ceil(plan / target), math.ceil(now / target)
  local na, nb = held_at(ring, size, ctx.now - startup, stab, period)
  local fade = math.exp(-period / (p.memory or 604800))
  local margin = p.margin or 0.05
  local saved, extra = (s.saved or 0) * fade, (s.extra or 0) * fade
  local usaved, ucost = (s.usaved or 0) * fade, (s.ucost or 0) * fade
  if nb > 0 then
    local short_b = now > nb * cap
    if short_b and now <= na * cap then saved = saved + 1 end
    if short_b and now <= nb * cap * (1 + margin) then usaved = usaved + 1 end
    extra = extra + (na - nb) * period
    ucost = ucost + margin * nb * period
  end
  s.saved, s.extra, s.usaved, s.ucost = saved, extra, usaved, ucost
  local rate = extra > 0 and saved / extra or 0
  local uniform = ucost > 0 and usaved / ucost or 0
  return saved >= proof and rate > (p.edge or 1) * uniform
end

function P.decide(ctx)
  local p = ctx.params
  local period = p.period or 15
  if not tw.every(ctx, period) then return nil end
  local now, metric, stat = tw.load_reading(ctx)
  if not now then return nil end
  local to = (p.startup or 60) + period + (p.ahead or 2400)
  local rise, add = nil, 0
  local r = ctx.recurring(metric, 0, to, p.days or 14)
  local week = 1
  if r then
    rise = r.rise
    -- the weekly season: no more of the rise than the same day of the
    -- week had against the median day (a weekend, a holiday), read over
    -- the window widened by `widen` so that the hour it came matters less
    if rise > 0 and (p.days or 14) >= 7 and (p.weekly or 1) ~= 0 then
      local w = ctx.recurring(metric, 0, math.min(to + (p.widen or 3600), 86400), p.days or 14)
      if w and w.week then week = math.max(0, math.min(1, w.week)) end
    end
    if rise > 0 then add = (p.k or 0.4) * rise * week end
  end
  local target = tw.per_replica_target(p, 0.8)
  -- the plan with the rise, and its hold
  local plan, s, held = now + add, ctx.state, false
  if s.plan and ctx.now - s.plan_at < (p.hold or 1200) and s.plan > plan
      and now < s.plan_from + 0.5 * (s.plan - s.plan_from) and now > 0.9 * s.plan_from then
    plan, held = s.plan, true
  else
    s.plan, s.plan_at, s.plan_from = plan, ctx.now, now
  end
  local use = proven(ctx, now, plan, period, target) and r ~= nil
  local load = use and plan or now
  local want, per_replica = tw.hpa_desired(ctx, load)
  return { replicas = want,
           reason = string.format("%s %s %.1f, recurring rise %s within %ds%s%s, plan %.1f per replica, target %.1f",
             metric, stat, now, rise and string.format("%.1f", rise) or "unknown", to,
             (r and not use) and " (not proven yet)" or "",
             (use and held) and " (plan held)" or "", per_replica, target) }
end

P.examples = {
  { name = "no history yet: the HPA rule", replicas = 2, params = { target_per_replica = 100 },
    windows = { requests = { ["60s"] = { rate = 450 } } }, expect = 5 },
  { name = "period 0: the HPA rule at every call", replicas = 2,
    params = { target_per_replica = 100, period = 0 },
    windows = { requests = { ["60s"] = { rate = 450 } } }, expect = 5 },
  { name = "a rise not proven on this load yet: the HPA rule", replicas = 4,
    params = { target_per_replica = 100 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    recurring = { requests = { rise = 400, low = 300, high = 500, level = 800, days = 14 } },
    expect = 4 },
  { name = "proven (here: proof = 0), 0.4 of the previous days' rise is provisioned ahead", replicas = 4,
    params = { target_per_replica = 100, proof = 0 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    recurring = { requests = { rise = 400, low = 300, high = 500, level = 800, days = 14 } },
    -- 400 + 0.4 * 400 = 560: 140 per replica, 1.4 times the target
    expect = 6 },
  { name = "a weekend at half a working day's level: half of that", replicas = 4,
    params = { target_per_replica = 100, proof = 0 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    recurring = { requests = { rise = 400, low = 300, high = 500, level = 800, days = 14, week = 0.5 } },
    -- 400 + 0.4 * 400 * 0.5 = 480: 120 per replica
    expect = 5 },
  { name = "k = 1 buys all of it, within the scale-up limit", replicas = 4,
    params = { target_per_replica = 100, k = 1, proof = 0 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    recurring = { requests = { rise = 900, low = 800, high = 1000, level = 1300, days = 14 } },
    -- 1300 would be 13; at most max(2 * 4, 4 + 4) = 8
    expect = 8 },
  { name = "a fall on the previous days is not anticipated", replicas = 4,
    params = { target_per_replica = 100, proof = 0 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    recurring = { requests = { rise = -300, low = -350, high = -250, level = 100, days = 14 } },
    expect = 4 },
  { name = "a small rise stays within the tolerance", replicas = 4,
    params = { target_per_replica = 100, proof = 0 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    recurring = { requests = { rise = 60, low = 0, high = 100, level = 460, days = 14 } },
    -- 400 + 0.4 * 60 = 424: 1.06 times the target, within 10%
    expect = 4 },
}

return P
