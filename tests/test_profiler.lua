-- vtl.profiler: per-operation times of a piece of code, restored afterwards.
local T = require "testlib"
local vtl = require "vtl"
local F = vtl.nn.functional
local nn = vtl.nn

local function by_name(prof)
  local t = {}
  for _, e in ipairs(prof.entries) do t[e.name] = e end
  return t
end

local function small_net()
  vtl.seed(1)
  return nn.Sequential(nn.Conv2d(3, 4, 3, {padding = 1}), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3),
    nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
end

T.test("profile: counts each module, function, method and backward node, and returns fn's results", function()
  local m = small_net()
  local x, y = vtl.randn(2, 3, 6, 6), vtl.tensor({1, 3})
  local opt = vtl.optim.SGD(m:parameters(), {lr = 0.1, momentum = 0.9})
  local prof, a, b = vtl.profiler.profile(function(k)
    for _ = 1, 3 do
      opt:zero_grad()
      F.cross_entropy(m(x), y):backward()
      opt:step()
    end
    return k, "done"
  end, nil, 7)
  T.eq(a, 7)
  T.eq(b, "done")
  local e = by_name(prof)
  T.eq(e["Conv2d (module)"].calls, 6)
  T.eq(e["Sequential (module)"].calls, 3)
  T.eq(e["F.conv2d"].calls, 6)
  T.eq(e["F.cross_entropy"].calls, 3)
  T.eq(e["x:backward"].calls, 3)
  T.eq(e["optimizer:step"].calls, 3)
  T.eq(e["optimizer:zero_grad"].calls, 3)
  T.truthy(e["backward: Conv2dBackward"], "the engine's conv nodes are listed")
  T.eq(e["backward: Conv2dBackward"].calls, 6)
  local sum_self = 0
  for _, v in ipairs(prof.entries) do
    T.truthy(v.calls >= 1, v.name .. " calls")
    T.truthy(v.total >= 0 and v.self <= v.total + 1e-9, v.name .. ": self within total")
    sum_self = sum_self + v.self
  end
  -- self times partition the timed work: together no more than the whole call
  T.truthy(sum_self <= prof.wall + 1e-6, ("self times %.6f within the call %.6f"):format(sum_self, prof.wall))
  -- a module's total holds its callees' totals
  T.truthy(e["Sequential (module)"].total >= e["Conv2d (module)"].total, "Sequential's time holds its convolutions'")
end)

T.test("profile: the timed functions are restored afterwards, also when fn fails", function()
  local mt = getmetatable(vtl.zeros(1))
  local add, op_add, conv, randn, F_relu = mt.__methods.add, mt.__add, require("vtl.core").nn.conv2d, vtl.randn, F.relu
  local opt_step = require("vtl.optim.optimizer").step
  vtl.profiler.profile(function() local _ = vtl.ones(2) + vtl.ones(2) end)
  T.truthy(rawequal(mt.__methods.add, add) and rawequal(mt.__add, op_add), "tensor methods and operators")
  T.truthy(rawequal(require("vtl.core").nn.conv2d, conv) and rawequal(vtl.randn, randn) and rawequal(F.relu, F_relu)
    and rawequal(require("vtl.optim.optimizer").step, opt_step), "library functions and optimizer methods")
  T.raises(function()
    vtl.profiler.profile(function() local _ = vtl.ones(2) * 3; error("inside the profiled code") end)
  end, "inside the profiled code")
  T.truthy(rawequal(mt.__methods.add, add) and rawequal(F.relu, F_relu), "restored after an error")
  -- the next profile counts only its own calls; module calls outside a profile are not timed
  local m = nn.Linear(2, 2)
  m(vtl.ones(1, 2))
  local prof = vtl.profiler.profile(function() return m(vtl.ones(1, 2)) end)
  T.eq(by_name(prof)["Linear (module)"].calls, 1)
  T.eq(by_name(prof)["x:backward"], nil)
end)

T.test("profile: the table, its sort keys and limit; argument errors are named", function()
  local prof = vtl.profiler.profile(function()
    for _ = 1, 4 do local _ = vtl.ones(8, 8):matmul(vtl.ones(8, 8)) end
  end, {sync = true})
  T.eq(prof.sync, true)
  local text = prof:table({sort = "calls", limit = 2})
  local lines = {}
  for l in text:gmatch("[^\n]+") do lines[#lines + 1] = l end
  T.eq(#lines, 4) -- header, two rows, summary
  T.truthy(lines[1]:find("self ms", 1, true), "header")
  T.truthy(lines[2]:find("x:matmul", 1, true) or lines[2]:find("vtl.ones", 1, true), "the most called first: " .. lines[2])
  T.truthy(tostring(prof):find("entries;", 1, true), "tostring is the table")
  T.raises(function() prof:table({sort = "speed"}) end, 'sort must be "self", "total" or "calls"')
  T.raises(function() vtl.profiler.profile(42) end, "profiler.profile: expected a function, got number")
  T.raises(function() vtl.profiler.profile(function() end, 3) end, "options must be a table")
  T.raises(function()
    vtl.profiler.profile(function() vtl.profiler.profile(function() end) end)
  end, "a profile is already running")
  -- and a profile runs again after the refused nested one
  T.eq(vtl.profiler.profile(function() return 1 end).wall >= 0, true)
end)
