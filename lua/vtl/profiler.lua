-- vtl.profiler: where the time of a piece of code goes, per operation.
--   local prof = vtl.profiler.profile(function() ... end)
--   print(prof:table{limit = 20})
-- While fn runs, every tensor method and operator, every function of vtl (and vtl.core.nn and
-- vtl.nn.functional), every module call and every optimizer step and zero_grad is timed, and
-- the autograd engine times each backward node. Times are inclusive (total) and exclusive (self: minus the timed calls made
-- inside). With sync (the default when a GPU is present) the profiler waits for the devices'
-- queued work before and after each timed call, so a GPU op's time is its own work; the code
-- runs slower, and the table shows where the time goes rather than how long the code takes
-- without it.
local core = require "vtl.core"

local M = {}

local mark, nodes, set = core._profile_mark, core._profile_nodes, core._profile
local SKIP = {clock = true, is_tensor = true, _profile = true, _profile_mark = true, _profile_nodes = true}
local OPERATORS = {"__add", "__sub", "__mul", "__div", "__unm", "__pow", "__mod", "__idiv"}
local running = false

local Report = {}
Report.__index = Report

---The entries as a text table, largest first.
---@param opts {sort: "self"|"total"|"calls", limit: integer}|nil  defaults: self, 30
---@return string
function Report:table(opts)
  opts = opts or {}
  local key = opts.sort or "self"
  if key ~= "self" and key ~= "total" and key ~= "calls" then
    error("profiler: sort must be \"self\", \"total\" or \"calls\", got " .. tostring(key), 2)
  end
  local rows = {}
  for _, e in ipairs(self.entries) do rows[#rows + 1] = e end
  table.sort(rows, function(a, b) if a[key] ~= b[key] then return a[key] > b[key] end return a.name < b.name end)
  local width = 4
  local limit = math.min(opts.limit or 30, #rows)
  for i = 1, limit do width = math.max(width, #rows[i].name) end
  local lines = {("%-" .. width .. "s %8s %12s %12s %7s"):format("name", "calls", "total ms", "self ms", "self %")}
  for i = 1, limit do
    local e = rows[i]
    lines[#lines + 1] = ("%-" .. width .. "s %8d %12.3f %12.3f %6.1f%%"):format(e.name, e.calls, e.total * 1e3, e.self * 1e3,
      self.wall > 0 and 100 * e.self / self.wall or 0)
  end
  lines[#lines + 1] = ("%d entries; %.3f ms in all (synchronized: %s)"):format(#rows, self.wall * 1e3, tostring(self.sync))
  return table.concat(lines, "\n")
end
Report.__tostring = Report.table

---Runs fn(...) with every operation timed; returns the report, then fn's results. The report
---has entries {name, calls, total, self} (seconds; backward nodes as "backward: <node>"), wall
---(the whole call) and :table(opts).
---@param fn function
---@param opts {sync: boolean}|nil  sync: wait for the GPUs around each call (default: whether one is present)
---@return table report, ...
function M.profile(fn, opts, ...)
  if type(fn) ~= "function" then error("profiler.profile: expected a function, got " .. type(fn), 2) end
  if opts ~= nil and type(opts) ~= "table" then error("profiler.profile: options must be a table, got " .. type(opts), 2) end
  if running then error("profiler.profile: a profile is already running", 2) end
  local sync = opts and opts.sync
  if sync == nil then sync = core.cuda.is_available() end
  local stats, order = {}, {}
  -- frames of the timed calls in progress: time and node time spent in their timed callees
  local child, childnode, depth = {}, {}, 0
  local function account(name, el, self_t)
    local s = stats[name]
    if not s then
      s = {name = name, calls = 0, total = 0, self = 0}
      stats[name] = s
      order[#order + 1] = s
    end
    s.calls, s.total, s.self = s.calls + 1, s.total + el, s.self + self_t
  end
  local function timed(name, f)
    return function(...)
      local t0, n0 = mark()
      depth = depth + 1
      child[depth], childnode[depth] = 0, 0
      local r = table.pack(f(...))
      local t1, n1 = mark()
      local el, nd = t1 - t0, n1 - n0
      local self_t = el - child[depth] - (nd - childnode[depth])
      depth = depth - 1
      if depth > 0 then child[depth], childnode[depth] = child[depth] + el, childnode[depth] + nd end
      account(name, el, self_t)
      return table.unpack(r, 1, r.n)
    end
  end
  -- the functions to time: {table, key, original}
  local patched = {}
  local function patch(t, k, name)
    local f = rawget(t, k)
    if type(f) ~= "function" or SKIP[k] then return end
    patched[#patched + 1] = {t, k, f}
    rawset(t, k, timed(name, f))
  end
  local mt = getmetatable(core.zeros(1))
  for k in pairs(mt.__methods) do patch(mt.__methods, k, "x:" .. k) end
  for _, k in ipairs(OPERATORS) do patch(mt, k, "x " .. k:sub(3)) end
  local vtl = require "vtl"
  for k in pairs(core) do patch(core, k, "vtl." .. k) end
  for k in pairs(vtl) do patch(vtl, k, "vtl." .. k) end
  for k in pairs(core.nn) do patch(core.nn, k, "core.nn." .. k) end
  local F = require "vtl.nn.functional"
  for k in pairs(F) do patch(F, k, "F." .. k) end
  local Optimizer = require "vtl.optim.optimizer"
  patch(Optimizer, "step", "optimizer:step")
  patch(Optimizer, "zero_grad", "optimizer:zero_grad")
  local Module = require("vtl.nn.module").Module
  local module_timers = {}
  Module._set_profile_hook(function(m, call, ...)
    local name = (rawget(getmetatable(m), "__name") or "Module") .. " (module)"
    local f = module_timers[name]
    if not f then
      f = timed(name, call)
      module_timers[name] = f
    end
    return f(m, ...)
  end)
  running = true
  set(true, sync)
  local t0 = mark()
  local res = table.pack(pcall(fn, ...))
  local wall = mark() - t0
  set(false, false)
  Module._set_profile_hook(nil)
  for i = #patched, 1, -1 do rawset(patched[i][1], patched[i][2], patched[i][3]) end
  running = false
  if not res[1] then error(res[2], 0) end
  local node_list = nodes()
  for _, e in ipairs(node_list) do
    local s = {name = "backward: " .. e[1], calls = e[2], total = e[3], self = e[3]}
    order[#order + 1] = s
  end
  local report = setmetatable({entries = order, wall = wall, sync = sync}, Report)
  return report, table.unpack(res, 2, res.n)
end

return M
