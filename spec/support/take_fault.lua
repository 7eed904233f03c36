--- spec.support.take_fault: how the fakes consume the faults a spec asked for (fake:fail).
-- take_fault(faults, applies) -> the first fault f in the list for which applies(f) is true,
-- with one of its uses consumed (f.times, default 1; at the last one it leaves the list), or
-- nil when none applies.
return function(faults, applies)
  for i, f in ipairs(faults) do
    if applies(f) then
      f.times = (f.times or 1) - 1
      if f.times <= 0 then
        table.remove(faults, i)
      end
      return f
    end
  end
end
