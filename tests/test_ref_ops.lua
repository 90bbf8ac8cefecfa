-- Tensor ops against PyTorch: tests/ref/gen_ops.py writes inputs and expected results to
-- $VTL_FIXTURES/ops_ref.lua; each case rebuilds its inputs, runs its Lua expression and
-- compares dtype, shape and values (|got - want| <= tol * (1 + |want|), NaN equals NaN).
local T = require "testlib"
local vtl = require "vtl"

local MAX_REPORTED = 5 -- mismatching elements listed per failure

local function numel(shape)
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  return n
end

local function shape_str(shape) return "{" .. table.concat(shape, ",") .. "}" end

-- A tensor from a fixture spec {dtype, shape, data (flat)}.
local function build(spec)
  if numel(spec.shape) == 0 then return vtl.zeros(spec.shape, {dtype = spec.dtype}) end
  local t = vtl.tensor(spec.data, {dtype = spec.dtype})
  if #spec.shape == 0 then return t:reshape({}) end
  return t:view(spec.shape)
end

local function flatten(v, out)
  if type(v) == "table" then
    for i = 1, #v do flatten(v[i], out) end
  else
    out[#out + 1] = v
  end
  return out
end

-- flat position (1-based) → "[i,j,k]" (1-based coordinates)
local function coords(shape, pos)
  if #shape == 0 then return "[]" end
  local c, rem = {}, pos - 1
  for d = #shape, 1, -1 do
    c[d] = rem % shape[d] + 1
    rem = rem // shape[d]
  end
  return "[" .. table.concat(c, ",") .. "]"
end

local function tonum(v)
  if type(v) == "boolean" then return v and 1 or 0 end
  return v
end

local function fmt(v)
  if type(v) == "boolean" then return tostring(v) end
  if math.type(v) == "integer" then return tostring(v) end
  return string.format("%.9g", v)
end

-- Returns nil when got matches the tensor spec want, or a message naming what differs.
local function compare_tensor(got, want, tol, what)
  if not vtl.is_tensor(got) then return string.format("%s: expected a tensor, got %s", what, type(got)) end
  if got.dtype ~= want.dtype then
    return string.format("%s: dtype %s, want %s", what, got.dtype, want.dtype)
  end
  local gs = got.shape
  if shape_str(gs) ~= shape_str(want.shape) then
    return string.format("%s: shape %s, want %s", what, shape_str(gs), shape_str(want.shape))
  end
  local g = flatten(got:totable(), {})
  local w = want.data
  if #g ~= #w then return string.format("%s: %d values, want %d", what, #g, #w) end
  local bad, lines = 0, {}
  for i = 1, #w do
    local a, b = tonum(g[i]), tonum(w[i])
    local ok = a == b or (a ~= a and b ~= b) or math.abs(a - b) <= tol * (1 + math.abs(b))
    if not ok then
      bad = bad + 1
      if bad <= MAX_REPORTED then
        lines[#lines + 1] = string.format("    at %s got %s want %s", coords(want.shape, i), fmt(g[i]), fmt(w[i]))
      end
    end
  end
  if bad == 0 then return nil end
  return string.format("%s: %d of %d values differ (tol %g), first:\n%s", what, bad, #w, tol,
                       table.concat(lines, "\n"))
end

local function compare(got, want, tol, what)
  if want.kind == "tensor" then return compare_tensor(got, want, tol, what) end
  if want.kind == "number" then
    if type(got) ~= "number" then return string.format("%s: expected a number, got %s", what, type(got)) end
    if got == want.value or math.abs(got - want.value) <= tol * (1 + math.abs(want.value)) then return nil end
    return string.format("%s: got %s want %s", what, fmt(got), fmt(want.value))
  end
  -- "list": one table of tensors
  if type(got) ~= "table" or vtl.is_tensor(got) then
    return string.format("%s: expected a table of tensors, got %s", what, vtl.is_tensor(got) and "a tensor" or type(got))
  end
  if #got ~= #want.items then return string.format("%s: %d tensors, want %d", what, #got, #want.items) end
  for i, w in ipairs(want.items) do
    local err = compare(got[i], w, tol, string.format("%s[%d]", what, i))
    if err then return err end
  end
  return nil
end

local function run_case(c)
  local names = {}
  for k in pairs(c.inputs) do names[#names + 1] = k end
  table.sort(names)
  local src = (#names > 0 and ("local vtl, " .. table.concat(names, ", ") .. " = ...\n") or "local vtl = ...\n") .. c.expr
  local fn, err = load(src, "=" .. c.name, "t")
  if not fn then error(string.format("case '%s': bad expression: %s", c.name, err), 0) end
  local args = {}
  for i, k in ipairs(names) do args[i] = build(c.inputs[k]) end
  local ok, r = xpcall(function() return table.pack(fn(vtl, table.unpack(args, 1, #names))) end, debug.traceback)
  if not ok then error(string.format("case '%s' (%s) raised: %s", c.name, c.expr, r), 0) end
  local msg
  if c.want.kind == "multi" then
    if r.n ~= #c.want.items then
      msg = string.format("returned %d values, want %d", r.n, #c.want.items)
    else
      for i, w in ipairs(c.want.items) do
        msg = compare(r[i], w, c.tol, "result " .. i)
        if msg then break end
      end
    end
  else
    msg = compare(r[1], c.want, c.tol, "result")
  end
  if msg then error(string.format("case '%s' (%s): %s", c.name, c.expr, msg), 0) end
end

local dir = os.getenv("VTL_FIXTURES") or "build/fixtures"
local path = dir .. "/ops_ref.lua"
local chunk, lerr = loadfile(path, "t")
if not chunk then
  T.test("ops_ref fixtures", function()
    error("cannot load " .. path .. " (" .. tostring(lerr) .. "); run: .venv/bin/python tests/ref/gen_ops.py " .. dir, 0)
  end)
  return
end

local cases = chunk()
T.test("ops_ref fixtures", function() T.truthy(#cases >= 150, "expected at least 150 cases, found " .. #cases) end)
for _, c in ipairs(cases) do
  T.test("ops_ref: " .. c.name, function() run_case(c) end)
end
