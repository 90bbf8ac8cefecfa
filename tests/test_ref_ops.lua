-- Tensor ops against PyTorch: tests/ref/gen_ops.py writes inputs and expected results to
-- $VTL_FIXTURES/ops_ref.lua; each case rebuilds its inputs, runs its Lua expression and
-- compares dtype, shape and values (|got - want| <= tol * (1 + |want|), NaN equals NaN).
local vtl = require "vtl"
local R = require "reflib"

-- Returns nil when got matches want (a tensor, number or list of tensors), or a message naming
-- what differs.
local function compare(got, want, tol, what)
  if want.kind == "tensor" then return R.compare(got, want, tol, what) end
  if want.kind == "number" then
    if type(got) ~= "number" then return string.format("%s: expected a number, got %s", what, type(got)) end
    if got == want.value or math.abs(got - want.value) <= tol * (1 + math.abs(want.value)) then return nil end
    return string.format("%s: got %s want %s", what, R.fmt(got), R.fmt(want.value))
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
  local names = R.sorted_keys(c.inputs)
  local fn, err = R.compile(c.name, c.expr, {"vtl", table.unpack(names)})
  if not fn then error(string.format("case '%s': bad expression: %s", c.name, err), 0) end
  local args = {}
  for i, k in ipairs(names) do args[i] = R.tensor(c.inputs[k]) end
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

R.cases("ops_ref", 150, run_case)
