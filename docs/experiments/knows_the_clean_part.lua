-- DIAGNOSTIC, not a policy (docs/PREDICTIVE.md, "What a perfect forecast
-- of the recurring part would give"): hpa.lua told the future of a
-- generated trace's predictable part (its load without noise and bursts,
-- `simulate --write-generated DIR` writes it to DIR/clean/). It sizes on
-- the load now times how much that part rises over the next lead, to the
-- minute (or its highest from W minutes before to W after that: the
-- timing known only to within W minutes). params.rises1, rises2, ...
-- (made by scripts/predictive-bound; split, as one argument must stay
-- under 128 KiB): flat pairs of minutes since the pair before (the first
-- since the epoch) and the rise (> 1) at that minute; 1 elsewhere.
local P = {}
function P.decide(ctx)
  local p = ctx.params
  if not tw.every(ctx, p.period or 15) then return nil end
  local now = tw.load_reading(ctx)
  if not now then return nil end
  local s = ctx.state
  if not s.rise then
    s.rise = {}
    local m, k = 0, 1
    while p["rises" .. k] do
      local r = p["rises" .. k]
      for i = 1, #r - 1, 2 do
        m = m + r[i]
        s.rise[m] = r[i + 1]
      end
      k = k + 1
    end
  end
  return (tw.hpa_desired(ctx, now * (s.rise[math.floor(ctx.now / 60)] or 1)))
end
return P
