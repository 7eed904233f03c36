--- spec.support.take_fault: how the fakes (fake E2B, fake exe.dev) consume faults: first those
-- a spec asked for (fake:fail), then, with fake:chaos on, seeded draws among its faults.
local M = {}

--- take(fake, applies) -> the first fault f in fake.faults for which applies(f) is true, with
-- one of its uses consumed (f.times, default 1; at the last one it leaves the list); when none
-- applies and fake:chaos is on, a seeded draw among the chaos faults that apply (counted in
-- fake.chaos_counts by name), or nil.
function M.take(fake, applies)
  for i, f in ipairs(fake.faults) do
    if applies(f) then
      f.times = (f.times or 1) - 1
      if f.times <= 0 then
        table.remove(fake.faults, i)
      end
      return f
    end
  end
  if fake.chaos_pick then
    return fake.chaos_pick(applies, fake.chaos_counts)
  end
end

--- chaos(fake [, spec]) (each fake's fake:chaos): from now on a seeded share of the requests
-- that no fault of fake:fail matched gets a fault drawn from spec.faults (spec nil: no more).
-- spec: seed (an integer, default 1), rate (the share, 0 to 1), faults (as fake:fail takes
-- them, each with a name, an optional weight (default 1), and what limits where it may fall:
-- kind, method, path for the fake E2B, command for the fake exe.dev). The draws follow the
-- seed (spec.support.load_faults.picker). fake.chaos_counts: name -> how many requests got it.
function M.chaos(fake, spec)
  fake.chaos_pick = spec and require("spec.support.load_faults").picker(spec) or nil
  fake.chaos_counts = {}
end

return M
