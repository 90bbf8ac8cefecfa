-- Timing shared by the vtl benchmarks: best of several runs after a warm-up, printed as the
-- "name seconds" lines tests/bench/run.sh reads (tests/bench/benchlib.py is the PyTorch twin).
local vtl = require "vtl"

local B = {}

---The shortest of `reps` timed calls of fn, in seconds, after one untimed warm-up call (which
---also builds and caches whatever the first call sets up).
---@param fn fun()
---@param reps integer
---@return number
function B.best(fn, reps)
  fn()
  local b = math.huge
  for _ = 1, reps do
    local t0 = vtl.clock()
    fn()
    b = math.min(b, vtl.clock() - t0)
  end
  return b
end

---Prints "name seconds".
---@param name string
---@param t number
function B.report(name, t) print(string.format("%s %.9f", name, t)); io.stdout:flush() end

return B
