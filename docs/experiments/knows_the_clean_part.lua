-- DIAGNOSTIC, not a policy (docs/PREDICTIVE.md, "What a perfect forecast
-- of the recurring part would give"): hpa.lua told the future of a
-- generated trace's predictable part (its load without noise and bursts,
-- `simulate --write-generated DIR` writes it to DIR/clean/). It sizes on
-- the load now times how much that part rises over the next lead, to the
-- minute. params.rises (made by scripts/predictive-bound): flat pairs of
-- minutes since the pair before (the first since the epoch) and the rise
-- (> 1) at that minute; 1 elsewhere.
local P = {}
function P.decide(ctx)
  local p = ctx.params
  if not tw.every(ctx, p.period or 15) then return nil end
  local now = tw.load_reading(ctx)
  if not now then return nil end
  local s = ctx.state
  if not s.rise then
    s.rise = {}
    local m, r = 0, p.rises or {}
    for i = 1, #r - 1, 2 do
      m = m + r[i]
      s.rise[m] = r[i + 1]
    end
  end
  return (tw.hpa_desired(ctx, now * (s.rise[math.floor(ctx.now / 60)] or 1)))
end
return P
