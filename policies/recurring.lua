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
--   load  = now + k * week * max(0, rise), k the largest share in `ks`
--           that has paid (below; none: the load now);
--   want  = the HPA rule on load: target tracking within `tolerance`, at
--           most max(+100%, +4) a period unless the guard applies a
--           [targets.behavior].
-- lead = startup + period. The rise is provisioned up to `ahead` seconds
-- before the median day had it, because the hour varies from day to day;
-- k < 1 buys part of it that early and the HPA rule the rest once it
-- comes; k > 1 more than the median day's, for days that rise more.
--   near: a rise that comes at the same minute every day (a batch job by
--         the clock) needs no window that wide. So the ladder below
--         starts with rungs of its own: near_ks times the same median
--         rise over the window's first part alone, the start-up lead and
--         `near` seconds: ctx.recurring's seventh argument, read from the
--         history's own points (`sharp`), so that a step at 11:03 shows
--         whole at 11:03. A rise whose hour varies shows little there and
--         those rungs do not pay. sharp = 0: from the 5-minute means
--         (`near`), which show a step whole only 5 minutes after it, so
--         that `near` must reach further (600 s before 2026-12-07).
--   hold: a day that opens later than most: by the time of day when most
--         of the previous days had risen, their rise is behind them and
--         the median shows none left. So a plan is kept for `hold`
--         seconds while the load stays where it was when it was made
--         (below halfway to the plan, above 90% of that load): the rise
--         may still come. Once the load has risen, or fallen, the plan
--         is made afresh.
--   align: a day that runs late (or early) all day shows it in the hours
--         before its rise. So each previous day is read from where its
--         own last three hours matched today's last three best (the shape
--         of the load, its level aside), up to `align` seconds earlier or
--         later, and only where that shift fits clearly better than none
--         and the hours have a shape to match (not a flat, noisy night):
--         ctx.recurring's sixth argument. 0: each day at today's time of
--         day.
--   weekly: the median across 14 days is the working days' rise, also
--         on a weekend. So no more of it is added than the same day of
--         the week had: times ctx.recurring's `week` (the level the same
--         weekday reached, 7 and 14 days ago, over the median day's; at
--         most 1), read over the window widened by `widen` seconds so
--         that the hour it came matters less. weekly = 0: off.
-- It never plans below the load now, and a fall on the previous days is
-- not anticipated (scale-down is the HPA rule's and the guard's
-- stabilization). With fewer than 3 days of history it is hpa.lua.
--   proof: a share of the rise is added only once it has paid on this
--         target's own load, better than the same replicas spent as
--         uniform headroom; until one has, it is hpa.lua. Every period,
--         whatever it decided, it scores a plan per rung on the load it
--         sees: the HPA rule on the load now (B) and with each share of
--         the near rise (`near_ks`), then of the rise, the hold included
--         (A_k), each held at its highest
--         over `stab` seconds (the guard's scale-down stabilization) and
--         ready `startup` seconds later. A check is short for a plan when
--         the load now is above its ready replicas times `capacity`.
--           saved_k = checks where B is short and A_k is not;
--           extra_k = replica-seconds A_k holds above B;
--           uniform(m) = checks where B is short and uniform headroom
--                   costing a share m of B's replica-seconds would not
--                   have been: three uniform plans, the HPA rule on 5%,
--                   20% and 50% more load (whole replicas, like every
--                   plan), scored like the rungs, give its points; linear
--                   between them from 0 at 0, and on the last segment's
--                   slope beyond;
--           below_k(m) = checks where B is not short and B with a share m
--                   of its replica-seconds taken away would have been,
--                   counted only where A_k has no more ready than B
--                   (elsewhere A_k stands in for the headroom taken):
--                   three plans, the HPA rule on 5%, 10% and 20% less
--                   load, give its points, as above.
--         All fade over `memory` (7 days). Going up the rungs from none, a
--         share is taken when what it saves beyond the share taken so far
--         is at least `proof` (4) checks and above `edge` (1) times both
--         what uniform headroom saves between their two costs
--         (uniform(m_k) - uniform(m_taken), m = extra_k over B's
--         replica-seconds) and below_k(m_k) - below_taken(m_taken): each
--         step up beats the same replicas spent as headroom, and pays for
--         the headroom it takes away at equal cost. Before 2026-12-06
--         the gate compared a rung with a 5% probe of B per
--         replica-second, a margin whole replicas cannot buy, and took
--         rungs that cost a third more (docs/PREDICTIVE.md, "Real series
--         nobody tuned on"); then with uniform headroom above B alone,
--         which let rungs pass past a knee where the headroom they
--         displace loses more ("Headroom taken away, too"). A share that
--         does not is skipped, not an end: on openings to three times the
--         load, 0.4 of the rise saves no check (it only shortens the
--         shortfall) and the whole rise does.
--         proof = 0: the first share of `ks` from the third day, unproven.
--   daily_min: the rise is added, and the square-root rule (`shape`)
--         and the level (`steady`) used, only where the days are alike: the load's hourly means
--         over the last `days` days (as this policy saw them, kept in
--         ctx.state) correlate with themselves a day later by at least
--         `daily_min` (0.5; 0: always). The same test `simulate
--         --corpus` sorts traces by. On bursty load with a weak daily
--         cycle, a rise that came on most days at this hour but not
--         today costs replicas, and the gate above proves it on a few
--         lucky checks; the square-root rule, proven on quiet hours, is
--         spent in bursts of another size (three real counts of tweets,
--         docs/PREDICTIVE.md). There it is hpa.lua. The means need 3
--         days of its own calls: a policy new on a target with a
--         restored history is hpa.lua for those days.
--   shape: the HPA rule's headroom is a share of the load (a quarter at
--         0.8), right for noise that grows with the load and too little
--         at one or two replicas for noise that does not (counts of
--         requests, a service's idle chatter). So beside the rungs the
--         gate scores a plan sized by the square-root rule: L + (cap /
--         target - 1) * sqrt(L) * scale replicas, L = load / capacity,
--         scale = the faded mean of L over that of sqrt(L) on this load
--         (so that its headroom costs about what the HPA rule's does),
--         never below L / 2. At B's cost its advantage is what it saves
--         less what it loses against B, less what uniform headroom of its
--         extra cost saves, or plus what B loses with its saving taken
--         away (the plans below B); where that is at least
--         `shape_proof` (16) checks, four minutes at the default period,
--         the final sizing uses the square-root rule's utilization for
--         the load planned, where the days are alike (`daily_min`). 0: off.
--   steady: the HPA rule sizes on the last minute's reading, and the
--         guard keeps the highest of five minutes of such sizings, so its
--         headroom swings with the noise it has just seen, and at equal
--         cost a swinging headroom is short more often. So beside the
--         square-root rule the gate scores the HPA rule on the load's
--         level without its noise: a straight line fitted to the
--         logarithm of the last `steady` minutes' readings (6 is the
--         value tried; off by default, below), read at
--         now; a reading more than `jump` (2.5) spreads above the line is
--         a step or a burst, and the line starts again from it. Its
--         advantage at B's cost is counted as the square-root rule's;
--         where it is at least `steady_proof` (8) checks and the days are
--         alike (`daily_min`), the final sizing uses the level in place of
--         the load now (what a rung adds stays on top). 0 (the
--         default): off. Off since 2026-12-07's twelfth session: with
--         its guards it moved no median and made each worst trace seen
--         (−15.7%, −22.3%; docs/PREDICTIVE.md, "The level read nearer
--         the middle").
--         And only where that advantage is also at least `steady_sure`
--         times its spread (the square root of the checks saved, lost and
--         credited, as for counts that come by chance): an advantage of 8
--         out of 60 checks either way is a coin's, and it lost a trace
--         15.7% (docs/PREDICTIVE.md). 0: no such test. Default 2.
--         The level is the line read at the window's middle plus
--         `steady_slope` times its rise from there to now (1: at now;
--         0: the window's mean, which shows a rise n/2 minutes late).
--         0.5 (about half the noise), used unless it had lost
--         (`steady_proof` 0, `steady_sure` 0), was tried and not kept:
--         it raised the tuning set's mean and lost up to 92.6% on fresh
--         seeds (docs/PREDICTIVE.md, "The level read nearer the middle").
-- params: as hpa.lua (target_per_replica, or capacity * target_utilization
--         (0.8); metric ("requests"), stat, window ("60s"), tolerance
--         (0.1), period (15)); startup (seconds, default 60), ahead (2400),
--         ks ({0.4, 0.7, 1, 1.5}, increasing; k = x: {x} alone), near
--         (180), sharp (1), near_ks ({1, 1.5}, increasing; {}: none), days
--         (14, at most 14), hold (1200; 0: none), align (3600; 0: none), weekly
--         (1; 0: off), widen (3600), proof (4), edge (1),
--         memory (604800), stab (300), daily_min (0.5), shape (1),
--         shape_proof (16), steady (0: off; or minutes, 3 or more), jump
--         (2.5), steady_proof (8), steady_sure (2), steady_slope (1), capacity
--         (else target / 0.8). A numeric param out of its bounds
--         (check_params) makes each decision an error naming it and its
--         value.
-- The defaults were chosen on the tuning half of the corpus and scored on
-- the other half (docs/PREDICTIVE.md); tune them with `tidewatch simulate
-- --sweep` on your own load.
local P = {}

-- the shares of the rise tried, unless params.ks or params.k
local DEFAULT_KS = { 0.4, 0.7, 1.0, 1.5 }
-- the shares of the near rise tried first, unless params.near_ks
local DEFAULT_NEAR_KS = { 1.0, 1.5 }
-- the uniform plans the rungs are compared with: the HPA rule on this
-- much more load
local UNIFORM = { 0.05, 0.2, 0.5 }
-- and on this much less: the headroom a rung's cost takes away at equal
-- cost
local UNDER = { 0.05, 0.1, 0.2 }

-- The replicas the square-root rule gives load `load`: L = load / cap
-- replicas of work and headroom (1 / u - 1) * sqrt(L) * scale, u = target
-- / cap, where scale (the faded mean of L over that of sqrt(L) on this
-- target's load) makes its headroom cost what the HPA rule's, (1 / u - 1)
-- * L, costs on that load. Never below L / 2 (a utilization above 2).
local function sqrt_replicas(s, load, target, cap)
  local L = load / cap
  if L <= 0 then return 0 end
  local scale = (s.sq_l and s.sq_r and s.sq_r > 0) and s.sq_l / s.sq_r or math.sqrt(L)
  return math.max(L + (cap / target - 1) * math.sqrt(L) * scale, L / 2)
end

-- The load's level without its noise (`steady`): a straight line fitted
-- to the logarithm of the last `n` minutes' readings (one a minute, the
-- latest replacing the minute's earlier ones), read at the window's
-- middle plus `slope` times the line's rise from there to now (1: read at
-- now, 0: the window's mean; a line read at its end has the noise of
-- most of a reading, at its middle a sixth of it). A reading more
-- than `jump` spreads above the line (the spread: the median absolute
-- difference of neighbouring minutes, over 0.6745 * sqrt 2) is a step
-- or a burst, not noise: the line starts again from it. The load now
-- until `n` minutes are kept. No load is its own level, and is not put
-- in the ring (it has no logarithm: read as 1e-9 before, it held one
-- replica where the HPA rule holds none).
local function level_of(s, at, now, n, jump, slope_share)
  if now <= 0 then return now end
  local x = math.log(now)
  local ring = s.lv
  if not ring or #ring > n then
    ring = {}
    s.lv, s.lv_at = ring, 0
  end
  local minute = math.floor(at / 60)
  if s.lv_minute ~= minute then
    s.lv_minute, s.lv_at = minute, s.lv_at % n + 1
  end
  ring[s.lv_at] = x
  if #ring < n then return now end
  local sx, sy, sxx, sxy = 0, 0, 0, 0
  local d, prev = {}, nil
  for k = 1, n do
    local y = ring[(s.lv_at + k - 1) % n + 1]
    sx, sy, sxx, sxy = sx + k, sy + y, sxx + k * k, sxy + k * y
    if prev then d[#d + 1] = math.abs(y - prev) end
    prev = y
  end
  local slope = (n * sxy - sx * sy) / (n * sxx - sx * sx)
  local fit = (sy - slope * sx) / n + slope * n - (1 - slope_share) * slope * (n - 1) / 2
  table.sort(d)
  local spread = d[math.floor((#d + 1) / 2)] / (0.6745 * math.sqrt(2))
  if x > fit + jump * spread then
    for k = 1, n do ring[k] = x end
    return now
  end
  return math.exp(fit)
end

-- The highest counts of plans B and A_j decided in (at - stab, at]: what
-- each has ready at `at` + startup.
local function held_at(ring, size, at, stab, period, n)
  local best_b, best = 0, {}
  for j = 1, n do best[j] = 0 end
  for k = math.floor((at - stab) / period), math.floor(at / period) do
    local i = k % size + 1
    local t = ring.t[i]
    if t and t <= at and t > at - stab then
      if ring.b[i] > best_b then best_b = ring.b[i] end
      for j = 1, n do
        local v = ring.a[j][i]
        if v and v > best[j] then best[j] = v end
      end
    end
  end
  return best_b, best
end

-- Scores plans A_j (`plans[j]`: the near rungs, then ks[j] of the rise,
-- held or not) against B (the load now) on the load now; returns the j
-- of the last rung that has paid, each step up better than uniform
-- headroom of its cost and than the headroom it takes away (see `proof`
-- above; 0: none), or `first` unproven with proof = 0; beside it whether
-- the square-root rule and the level (`level`, nil where it is off: not
-- scored) have paid.
local function proven(ctx, now, plans, period, target, first, level)
  local p, s = ctx.params, ctx.state
  period = math.max(period, 1)
  local proof = p.proof or 4
  local n = #plans
  if proof <= 0 then return math.min(n, first), false, false end
  local startup, stab = p.startup or 60, p.stab or 300
  local cap = p.capacity or target / 0.8
  local ring = s.plans
  -- beside the rungs, the uniform plans: the HPA rule on UNIFORM[q]
  -- more load (whole replicas, as every plan), scored the same way
  local nu, nd = #UNIFORM, #UNDER
  local total = n + nu + nd
  -- the square-root rule's plan, after them (`shape`)
  local sq = total + 1
  -- and the HPA rule on the level without its noise (`steady`)
  local st = sq + 1
  -- a state from before the near rungs (a reload, a snapshot): its rungs
  -- are the last ones now, and keep what they proved
  local fresh = first - 1
  if ring and fresh > 0 and #ring.a == n - fresh then
    for _ = 1, fresh do
      table.insert(ring.a, 1, {})
      table.insert(s.saved, 1, 0)
      table.insert(s.extra, 1, 0)
    end
  end
  -- and from before the uniform plans (above B, then below): they start
  -- from nothing, and the 5% probe's tallies of before are dropped
  if ring and (#ring.a == n or #ring.a == n + nu) then
    for q = #ring.a + 1, total do
      ring.a[q], s.saved[q], s.extra[q] = {}, 0, 0
    end
    s.usaved, s.ucost = nil, nil
  end
  -- and from before the square-root plan: it starts from nothing
  if ring and #ring.a == total then
    ring.a[sq], s.saved[sq], s.extra[sq], s.sq_lost = {}, 0, 0, 0
  end
  -- and from before the level's plan: it starts from nothing
  if ring and #ring.a == sq then
    ring.a[st], s.saved[st], s.extra[st], s.st_lost = {}, 0, 0, 0
  end
  if not ring or #ring.a ~= st then
    ring = { t = {}, b = {}, a = {} }
    for j = 1, st do ring.a[j] = {} end
    s.plans = ring
    s.saved, s.extra, s.lost = {}, {}, {}
    s.saved[sq], s.extra[sq], s.sq_lost = 0, 0, 0
    s.saved[st], s.extra[st], s.st_lost = 0, 0, 0
  end
  -- each rung's losses below B, per plan below (from nothing where the
  -- state has none, or of another ladder)
  local lost = s.lost
  if not lost or #lost ~= n * nd then
    lost = {}
    for q = 1, n * nd do lost[q] = 0 end
    s.lost = lost
  end
  local size = math.floor((startup + stab) / period) + 2
  local i = math.floor(ctx.now / period) % size + 1
  ring.t[i], ring.b[i] = ctx.now, math.ceil(now / target)
  for j = 1, n do ring.a[j][i] = math.ceil(plans[j] / target) end
  for q = 1, nu do ring.a[n + q][i] = math.ceil(now * (1 + UNIFORM[q]) / target) end
  for q = 1, nd do ring.a[n + nu + q][i] = math.ceil(now * (1 - UNDER[q]) / target) end
  local fade = math.exp(-period / (p.memory or 604800))
  -- the square-root rule's scale: faded sums of L and sqrt(L)
  local L = now / cap
  s.sq_l = (s.sq_l or 0) * fade + L
  s.sq_r = (s.sq_r or 0) * fade + math.sqrt(math.max(L, 0))
  ring.a[sq][i] = math.ceil(sqrt_replicas(s, now, target, cap))
  -- the level's plan where the level is on (`level` nil: off)
  if level then ring.a[st][i] = math.ceil(level / target) end
  local nb, na = held_at(ring, size, ctx.now - startup, stab, period, st)
  local short_b = nb > 0 and now > nb * cap
  -- the plans below B keep the converse: checks lost (short where B is
  -- not) and replica-seconds cut; a loss is charged to each rung that
  -- has no more ready than B then (where it cannot stand in for the
  -- headroom taken away)
  for q = 1, n * nd do lost[q] = lost[q] * fade end
  for j = 1, total do
    local sv, ex = (s.saved[j] or 0) * fade, (s.extra[j] or 0) * fade
    if nb > 0 then
      if j <= n + nu then
        if short_b and now <= na[j] * cap then sv = sv + 1 end
        ex = ex + (na[j] - nb) * period
      else
        if not short_b and now > na[j] * cap then
          sv = sv + 1
          local q = j - n - nu
          for k = 1, n do
            local at = (k - 1) * nd + q
            if na[k] <= nb then lost[at] = lost[at] + 1 end
          end
        end
        ex = ex + (nb - na[j]) * period
      end
    end
    s.saved[j], s.extra[j] = sv, ex
  end
  -- the square-root plan's and the level's tallies against B: checks
  -- it saves and loses, replica-seconds beyond B (`lost` names the
  -- loss tally in the state)
  local function against_b(q, lost)
    local sv, ex, ls = s.saved[q] * fade, s.extra[q] * fade, (s[lost] or 0) * fade
    if nb > 0 then
      local short_q = now > na[q] * cap
      if short_b and not short_q then sv = sv + 1 end
      if short_q and not short_b then ls = ls + 1 end
      ex = ex + (na[q] - nb) * period
    end
    s.saved[q], s.extra[q], s[lost] = sv, ex, ls
  end
  against_b(sq, "sq_lost")
  if level then against_b(st, "st_lost") end
  local bcost = (s.bcost or 0) * fade + nb * period
  s.bcost = bcost
  local edge = p.edge or 1
  local best, sv0, ex0 = 0, 0, 0
  -- what uniform headroom saves at a share m of B's replica-seconds
  -- (ys = nil: the plans above B), or, below B, what taking it away
  -- loses where rung j cannot stand in (ys = lost, at = its first
  -- tally): those plans' (share, checks) points, linear between them
  -- from (0, 0), on the last segment's slope beyond the last
  local function curve_at(m, ys, at)
    if m <= 0 or bcost <= 0 then return 0 end
    local from, count = ys and n + nu or n, ys and nd or nu
    local x0, y0, slope = 0, 0, 0
    for q = 1, count do
      local x = s.extra[from + q] / bcost
      local y = ys and ys[at + q] or s.saved[from + q]
      if x > x0 then
        slope = (y - y0) / (x - x0)
        if m <= x then return y0 + slope * (m - x0) end
        x0, y0 = x, y
      elseif y > y0 then
        y0 = y
      end
    end
    return y0 + slope * (m - x0)
  end
  local u0, d0 = 0, 0
  for j = 1, n do
    local dsv, dex = s.saved[j] - sv0, s.extra[j] - ex0
    if dsv >= proof and dex > 0 then
      local m = s.extra[j] / math.max(bcost, 1e-9)
      local u, d = curve_at(m), curve_at(m, lost, (j - 1) * nd)
      if dsv > edge * math.max(u - u0, d - d0) then
        best, sv0, ex0, u0, d0 = j, s.saved[j], s.extra[j], u, d
      end
    end
  end
  -- the square-root rule, against B at its cost: what it saved less what
  -- it lost against B, less what uniform headroom of what it costs beyond
  -- B saves, or plus what B loses with what it costs less taken away;
  -- taken where that is at least `shape_proof` checks (four at `proof`'s
  -- 4 opened it on a minute of luck: docs/PREDICTIVE.md)
  local function advantage(q, lost_q)
    local net = s.saved[q] - lost_q
    local m = s.extra[q] / math.max(bcost, 1e-9)
    local credit = m >= 0 and -edge * curve_at(m) or curve_at(-m, s.saved, n + nu) / edge
    return net + credit, math.sqrt(s.saved[q] + lost_q + math.abs(credit))
  end
  local shape = (p.shape or 1) ~= 0 and advantage(sq, s.sq_lost) >= (p.shape_proof or 16)
  -- the level's plan, the same way (`steady`)
  -- and its advantage beyond the noise of its own tallies: at least
  -- `steady_sure` times their spread (the square root of the checks
  -- saved, lost and credited, as of counts that come by chance)
  local steady = false
  if level then
    local adv, spread = advantage(st, s.st_lost)
    steady = adv >= (p.steady_proof or 8) and adv >= (p.steady_sure or 2) * spread
  end
  return best, shape, steady
end

-- Hours of means kept: two weeks.
local HOURS = 336

-- The daily autocorrelation of the load's hourly means over the last
-- `span_days` days (at most 14), as this policy has seen the load
-- (kept only while the gate is on, daily_min > 0): `now` is added to
-- the current hour's mean at each call (an hour's slot is reset at its
-- first call, so a slot of the hour has a count of 1 or more), and the
-- coefficient is computed once an hour from the hours before it (an hour
-- without calls takes the mean before it). nil with fewer than 72 hours
-- seen.
local function daily_acf(ctx, now, span_days)
  local s = ctx.state
  local hour = math.floor(ctx.now / 3600)
  if not s.hsum then
    s.hsum, s.hn, s.hat = {}, {}, {}
    for i = 1, HOURS do s.hsum[i], s.hn[i], s.hat[i] = 0, 0, -1 end
  end
  local i = hour % HOURS + 1
  if s.hat[i] ~= hour then s.hat[i], s.hsum[i], s.hn[i] = hour, 0, 0 end
  s.hsum[i], s.hn[i] = s.hsum[i] + now, s.hn[i] + 1
  if s.acf_hour == hour then return s.acf end
  s.acf_hour = hour
  local n = math.min(HOURS, math.floor(span_days * 24))
  local xs, last, seen = {}, nil, 0
  for h = hour - n, hour - 1 do
    local j = h % HOURS + 1
    if s.hat[j] == h then
      last, seen = s.hsum[j] / s.hn[j], seen + 1
    end
    if last then xs[#xs + 1] = last end
  end
  if seen < 72 then
    s.acf = nil
    return nil
  end
  local mean = 0
  for k = 1, #xs do mean = mean + xs[k] end
  mean = mean / #xs
  local var, cov = 0, 0
  for k = 1, #xs do var = var + (xs[k] - mean) ^ 2 end
  for k = 1, #xs - 24 do cov = cov + (xs[k] - mean) * (xs[k + 24] - mean) end
  s.acf = var > 0 and cov / var or 0
  return s.acf
end

-- `list` when it is increasing shares of 0 or more; else an error naming
-- the bad value
local function shares(list, name)
  for j = 1, #list do
    if type(list[j]) ~= "number" or list[j] < 0 or (j > 1 and list[j] <= list[j - 1]) then
      error("params." .. name .. " must be increasing shares of 0 or more, got "
        .. tostring(list[j]) .. " at " .. j, 0)
    end
  end
  return list
end

-- The numeric params and their bounds: name, lowest, highest (nil: no
-- bound), whether the lowest itself is refused, whether a whole number
-- is asked for. Any of them may be left out (its default). `steady`
-- (0, or 3 or more) is checked beside them.
local BOUNDS = {
  { "period", 0 }, { "startup", 0 }, { "ahead", 0 }, { "near", 0 },
  { "days", 1, 14, false, true }, { "steady_slope", 0, 1 },
  { "hold", 0 }, { "align", 0, 7200 }, { "weekly" }, { "widen", 0 }, { "sharp" },
  { "proof", 0 }, { "edge", 0 }, { "memory", 0, nil, true }, { "stab", 0 },
  { "daily_min", 0, 1 }, { "shape" }, { "shape_proof", 0 }, { "jump", 0, nil, true },
  { "steady_proof", 0 }, { "steady_sure", 0 }, { "capacity", 0, nil, true },
  { "tolerance", 0 },
}

-- An error naming the first param out of its bounds, if any: a bad
-- value stops every decision of its target (each counted as the policy's
-- error) with its name and value, instead of an arithmetic error deep in
-- the gate or a string coerced to a number.
local function check_params(p)
  -- the error naming param `name`, what it must be, and its value `v`
  local function refuse(name, what, v)
    error(string.format("params.%s must be %s, got %s", name, what,
      type(v) == "string" and string.format("%q", v) or tostring(v)), 0)
  end
  for _, b in ipairs(BOUNDS) do
    local name, lo, hi, open, whole = b[1], b[2], b[3], b[4], b[5]
    local v = p[name]
    if v ~= nil then
      local bad = type(v) ~= "number" or v ~= v
        or (lo and (v < lo or (open and v == lo))) or (hi and v > hi)
        or (whole and v ~= math.floor(v))
      if bad then
        refuse(name, (whole and "a whole number" or "a number")
          .. ((lo and hi) and string.format(" from %s to %s", lo, hi)
            or (lo and (open and string.format(" above %s", lo) or string.format(" of %s or more", lo)))
            or ""), v)
      end
    end
  end
  local nlv = p.steady
  if nlv ~= nil and (type(nlv) ~= "number" or nlv ~= nlv or nlv < 0 or (nlv > 0 and nlv < 3)) then
    refuse("steady", "0 or minutes of 3 or more", nlv)
  end
end

-- the params table last checked (ctx.params is built once a load)
local checked

function P.decide(ctx)
  local p = ctx.params
  if p ~= checked then
    check_params(p)
    checked = p
  end
  local period = p.period or 15
  if not tw.every(ctx, period) then return nil end
  local now, metric, stat = tw.load_reading(ctx)
  if not now then return nil end
  local to = (p.startup or 60) + period + (p.ahead or 2400)
  local rise, add = nil, 0
  -- the weekly season is read over the window widened by `widen`, in
  -- the same call
  local weekly = (p.weekly or 1) ~= 0 and (p.days or 14) >= 7
  -- the first part of the window, for the near rungs
  local near_s = p.near or 180
  local near_to = math.min(to, (p.startup or 60) + period + near_s)
  local r = ctx.recurring(metric, 0, to, p.days or 14,
    weekly and math.min(to + (p.widen or 3600), 86400) or to, p.align or 3600, near_to)
  local week = 1
  local ks = shares(p.ks or (p.k and { p.k }) or DEFAULT_KS, "ks")
  local k1 = ks[1] or 0
  if r then
    rise = r.rise
    if rise > 0 and weekly and r.week then week = math.max(0, math.min(1, r.week)) end
    if rise > 0 then add = k1 * rise * week end
  end
  local target = tw.per_replica_target(p, 0.8)
  local plan, s, held = now + add, ctx.state, false
  if s.plan and ctx.now - s.plan_at < (p.hold or 1200) and s.plan > plan
      and now < s.plan_from + 0.5 * (s.plan - s.plan_from) and now > 0.9 * s.plan_from then
    plan, held = s.plan, true
  else
    s.plan, s.plan_at, s.plan_from = plan, ctx.now, now
  end
  -- a plan per share: the first share's addition times ks[j] / ks[1]
  local plans, base = {}, held and s.plan_from or now
  -- the ladder: first the near rungs (shares of the rise within the
  -- window's first part), then the shares of the whole window's
  -- (as many rungs with no answer as with one, so the tallies keep their
  -- places; the gate is overruled below then)
  local nks = shares(p.near_ks or DEFAULT_NEAR_KS, "near_ks")
  local nn = #nks
  -- the near rise from the history's own points (`sharp`) or from its
  -- 5-minute means
  local near_rise = r and ((p.sharp or 1) ~= 0 and r.sharp or r.near)
  local near = near_rise and near_rise > 0 and near_rise * week or 0
  for q = 1, nn do plans[q] = now + nks[q] * near end
  for j = 1, #ks do plans[nn + j] = k1 > 0 and base + (plan - base) * ks[j] / k1 or base end
  local nlv = p.steady or 0
  local lean = p.steady_slope or 1
  local level = nlv > 0 and level_of(s, ctx.now, now, math.floor(nlv), p.jump or 2.5, lean) or nil
  local j, shape, steady = proven(ctx, now, plans, period, target, nn + 1, level)
  if r == nil then j = 0 end
  -- the rise only where the days are alike (daily_min)
  local alike = p.daily_min or 0.5
  local acf = alike > 0 and daily_acf(ctx, now, p.days or 14) or nil
  local unlike = alike > 0 and (acf == nil or acf < alike)
  if unlike then j, shape, steady = 0, false, false end
  local load = j > 0 and plans[j] or now
  -- the level in place of the load now, what the plan adds on top
  if steady then load = load - now + level end
  local want, per_replica
  if shape then
    -- the HPA rule's target tracking, at the utilization the square-root
    -- rule gives this load
    local cap = p.capacity or target / 0.8
    local need = sqrt_replicas(ctx.state, load, target, cap)
    local current = ctx.replicas
    per_replica = current > 0 and load / current or load
    if need > 0 then target = load / need end
    want = tw.target_tracking(current, current > 0 and load / current or load, target, p.tolerance or 0.1)
    if not ctx.behavior then want = math.min(want, tw.hpa_scale_up_limit(current)) end
  else
    want, per_replica = tw.hpa_desired(ctx, load)
  end
  return { replicas = want,
           reason = string.format("%s %s %.1f, recurring rise %s within %ds%s%s, plan %.1f per replica, target %.1f",
             metric, stat, now, rise and string.format("%.1f", rise) or "unknown", to,
             r == nil and "" or (j > 0 and (", k " .. tostring(j > nn and ks[j - nn] or nks[j]) .. (j > nn and "" or " near"))
               or (unlike and string.format(" (days not alike: daily autocorrelation %s)",
                 acf and string.format("%.2f", acf) or "unknown") or " (not proven yet)")),
             (j > 0 and held) and " (plan held)" or "", per_replica, target)
             .. (shape and ", square-root headroom" or "")
             .. (steady and string.format(", on the level %.1f", level) or "") }
end

P.examples = {
  { name = "no history yet: the HPA rule", replicas = 2, params = { target_per_replica = 100 },
    windows = { requests = { ["60s"] = { rate = 450 } } }, expect = 5 },
  { name = "period 0: the HPA rule at every call", replicas = 2,
    params = { target_per_replica = 100, period = 0 },
    windows = { requests = { ["60s"] = { rate = 450 } } }, expect = 5 },
  { name = "a rise proven, but the days not seen alike yet (daily_min): the HPA rule", replicas = 4,
    params = { target_per_replica = 100, proof = 0 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    recurring = { requests = { rise = 400, low = 300, high = 500, level = 800, days = 14 } },
    expect = 4 },
  { name = "a rise not proven on this load yet: the HPA rule", replicas = 4,
    params = { target_per_replica = 100 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    recurring = { requests = { rise = 400, low = 300, high = 500, level = 800, days = 14 } },
    expect = 4 },
  { name = "proven (here: proof = 0; daily_min = 0, as an example has no days seen), 0.4 of the previous days' rise is provisioned ahead", replicas = 4,
    params = { target_per_replica = 100, proof = 0, daily_min = 0 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    recurring = { requests = { rise = 400, low = 300, high = 500, level = 800, days = 14 } },
    -- 400 + 0.4 * 400 = 560: 140 per replica, 1.4 times the target
    expect = 6 },
  { name = "a weekend at half a working day's level: half of that", replicas = 4,
    params = { target_per_replica = 100, proof = 0, daily_min = 0 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    recurring = { requests = { rise = 400, low = 300, high = 500, level = 800, days = 14, week = 0.5 } },
    -- 400 + 0.4 * 400 * 0.5 = 480: 120 per replica
    expect = 5 },
  { name = "k = 1 buys all of it, within the scale-up limit", replicas = 4,
    params = { target_per_replica = 100, k = 1, proof = 0, daily_min = 0 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    recurring = { requests = { rise = 900, low = 800, high = 1000, level = 1300, days = 14 } },
    -- 1300 would be 13; at most max(2 * 4, 4 + 4) = 8
    expect = 8 },
  { name = "a fall on the previous days is not anticipated", replicas = 4,
    params = { target_per_replica = 100, proof = 0, daily_min = 0 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    recurring = { requests = { rise = -300, low = -350, high = -250, level = 100, days = 14 } },
    expect = 4 },
  { name = "a small rise stays within the tolerance", replicas = 4,
    params = { target_per_replica = 100, proof = 0, daily_min = 0 },
    windows = { requests = { ["60s"] = { rate = 400 } } },
    recurring = { requests = { rise = 60, low = 0, high = 100, level = 460, days = 14 } },
    -- 400 + 0.4 * 60 = 424: 1.06 times the target, within 10%
    expect = 4 },
}

return P
