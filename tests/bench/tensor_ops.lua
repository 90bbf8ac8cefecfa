-- Times tensor ops in vtl; prints "name seconds" lines read by tests/bench/run.sh.
local vtl = require "vtl"
local threads = tonumber(arg[1]) or vtl.get_num_threads()
vtl.set_num_threads(threads)

local function best(fn, reps)
  fn() -- warm up
  local b = math.huge
  for _ = 1, reps do
    local t0 = vtl.clock()
    fn()
    b = math.min(b, vtl.clock() - t0)
  end
  return b
end

vtl.seed(0)
for _, n in ipairs({1024, 2048}) do
  local a, b = vtl.randn(n, n), vtl.randn(n, n)
  local out = vtl.empty(n, n)
  print(string.format("add_%d %.9f", n, best(function() local _ = a + b end, 50)))
  print(string.format("add_out_%d %.9f", n, best(function() out:copy_(a):add_(b) end, 50)))
  print(string.format("sum_%d %.9f", n, best(function() local _ = a:sum() end, 50)))
  print(string.format("sum_dim_%d %.9f", n, best(function() local _ = a:sum(2) end, 50)))
  print(string.format("matmul_%d %.9f", n, best(function() local _ = a:matmul(b) end, n == 1024 and 20 or 5)))
end
