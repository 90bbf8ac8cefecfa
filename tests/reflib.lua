-- Reference-test plumbing shared by the tests against PyTorch: loading the case files that
-- tests/ref/gen_*.py write to $VTL_FIXTURES, rebuilding tensors from their flat specs
-- {dtype, shape, data (row-major)}, comparing results with a tolerance and naming the first
-- mismatching elements, and finite-difference gradients.
--
-- Values match when |got - want| <= tol * (1 + |want|), or both are NaN; booleans count as 0/1.
local T = require "testlib"
local vtl = require "vtl"

local R = {}

local MAX_REPORTED = 5 -- mismatching elements listed per failure

---@param shape integer[]
---@return integer
function R.numel(shape)
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  return n
end

---"{2,3}" for shape {2, 3}.
---@param shape integer[]
---@return string
function R.shape_str(shape) return "{" .. table.concat(shape, ",") .. "}" end

---A tensor from a fixture spec {dtype, shape, data (flat)}.
---@return vtl.Tensor
function R.tensor(spec)
  if R.numel(spec.shape) == 0 then return vtl.zeros(spec.shape, {dtype = spec.dtype}) end
  local t = vtl.tensor(spec.data, {dtype = spec.dtype})
  if #spec.shape == 0 then return t:reshape({}) end
  return t:view(spec.shape)
end

---A table of specs (name -> spec) as a table of fresh tensors (name -> tensor).
function R.tensors(specs)
  local out = {}
  for k, spec in pairs(specs) do out[k] = R.tensor(spec) end
  return out
end

---Appends the leaves of a nested table (a tensor's totable()) to out, row-major.
function R.flatten(v, out)
  if type(v) == "table" then
    for i = 1, #v do R.flatten(v[i], out) end
  else
    out[#out + 1] = v
  end
  return out
end

---A value for a message: integers and booleans exactly, floats to 9 significant digits.
---@return string
function R.fmt(v)
  if type(v) == "boolean" then return tostring(v) end
  if math.type(v) == "integer" then return tostring(v) end
  return string.format("%.9g", v)
end

-- flat position (1-based) -> "[i,j,k]" (1-based coordinates)
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

---nil when tensor got matches want (a fixture spec or a tensor) in dtype, shape and values
---within tol; else a message starting with `what` that names what differs and the first
---mismatching elements by coordinates.
---@param tol number
---@param what string
---@return string|nil
function R.compare(got, want, tol, what)
  if not vtl.is_tensor(got) then return string.format("%s: expected a tensor, got %s", what, type(got)) end
  if got.dtype ~= want.dtype then return string.format("%s: dtype %s, want %s", what, got.dtype, want.dtype) end
  if R.shape_str(got.shape) ~= R.shape_str(want.shape) then
    return string.format("%s: shape %s, want %s", what, R.shape_str(got.shape), R.shape_str(want.shape))
  end
  local g = R.flatten(got:totable(), {})
  local w = vtl.is_tensor(want) and R.flatten(want:totable(), {}) or want.data
  if #g ~= #w then return string.format("%s: %d values, want %d", what, #g, #w) end
  local bad, lines = 0, {}
  for i = 1, #w do
    local a, b = tonum(g[i]), tonum(w[i])
    if not (a == b or (a ~= a and b ~= b) or math.abs(a - b) <= tol * (1 + math.abs(b))) then
      bad = bad + 1
      if bad <= MAX_REPORTED then
        lines[#lines + 1] = string.format("    at %s got %s want %s", coords(want.shape, i), R.fmt(g[i]), R.fmt(w[i]))
      end
    end
  end
  if bad == 0 then return nil end
  return string.format("%s: %d of %d values differ (tol %g), first:\n%s", what, bad, #w, tol, table.concat(lines, "\n"))
end

---R.compare, raising its message at the caller's line.
---@param tol number
---@param what? string default "tensor"
function R.check(got, want, tol, what)
  local msg = R.compare(got, want, tol, what or "tensor")
  if msg then error(msg, 2) end
end

---The keys of t, sorted.
---@return string[]
function R.sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

---Compiles case source src (chunk name `name`) to a function whose arguments are bound to the
---locals `names`, in order.
---@param names string[]
---@return function|nil, string|nil
function R.compile(name, src, names)
  return load("local " .. table.concat(names, ", ") .. " = ...\n" .. src, "=" .. name, "t")
end

---Runs case source src with the local `first_name` bound to `first` and each entry of args
---bound to its key; returns what src returns.
function R.run(name, src, first_name, first, args)
  local names = R.sorted_keys(args)
  local fn = assert(R.compile(name, src, {first_name, table.unpack(names)}))
  local vals = {first}
  for i, k in ipairs(names) do vals[i + 1] = args[k] end
  return fn(table.unpack(vals, 1, #names + 1))
end

---Checks the gradients of a functional case (fixture fields call, raw, grads, want.grads and the
---upstream gradient input gout) two ways, each on fresh inputs: the raw backward source c.raw
---must return want.grads[i] for each name in c.grads; then, unless autograd is false,
---c.call:backward(gout) with those inputs requiring grad must leave the same in their .grad.
---@param F table the functions the case source sees as F
---@param autograd? boolean
function R.check_grads(c, F, autograd)
  local ins = R.tensors(c.inputs)
  local raw = table.pack(R.run(c.name, c.raw, "F", F, ins))
  T.eq(raw.n, #c.grads, c.name .. ": number of gradients from the raw backward")
  for i, name in ipairs(c.grads) do R.check(raw[i], c.want.grads[i], c.tol, c.name .. " raw grad of " .. name) end
  if autograd == false then return end
  ins = R.tensors(c.inputs)
  for _, name in ipairs(c.grads) do ins[name]:requires_grad_() end
  R.run(c.name, c.call, "F", F, ins):backward(ins.gout)
  for i, name in ipairs(c.grads) do
    R.check(ins[name].grad, c.want.grads[i], c.tol, c.name .. " autograd grad of " .. name)
  end
end

---d/dt of sum(f() * gout) for every element of t (an f64 tensor that f reads), by central
---differences with step eps.
---@param f fun(): vtl.Tensor
---@param t vtl.Tensor
---@param gout vtl.Tensor
---@param eps number
---@return vtl.Tensor
function R.numeric_grad(f, t, gout, eps)
  local flat = t:view(-1)
  local g = vtl.zeros(t.shape, {dtype = "f64"})
  local gflat = g:view(-1)
  local function L() return (f() * gout):sum():item() end
  for k = 1, flat:numel() do
    local orig = flat[k]:item()
    flat[k] = orig + eps
    local up = L()
    flat[k] = orig - eps
    local down = L()
    flat[k] = orig
    gflat[k] = (up - down) / (2 * eps)
  end
  return g
end

---Registers a test "<stem>: <case name>" running run_case(case) for every case in
---$VTL_FIXTURES/<stem>.lua (written by tests/ref/gen_<stem without _ref>.py), and a test
---"<stem> fixtures" that the file loads and holds at least `at_least` cases.
---@param stem string e.g. "ops_ref"
---@param at_least integer
---@param run_case fun(case: table)
function R.cases(stem, at_least, run_case)
  local dir = os.getenv("VTL_FIXTURES") or "build/fixtures"
  local path = dir .. "/" .. stem .. ".lua"
  local chunk, err = loadfile(path, "t")
  if not chunk then
    local gen = "tests/ref/gen_" .. stem:gsub("_ref$", "") .. ".py"
    T.test(stem .. " fixtures", function()
      error("cannot load " .. path .. " (" .. tostring(err) .. "); run: .venv/bin/python " .. gen .. " " .. dir, 0)
    end)
    return
  end
  local cases = chunk()
  T.test(stem .. " fixtures", function()
    T.truthy(#cases >= at_least, "expected at least " .. at_least .. " cases, found " .. #cases)
  end)
  for _, c in ipairs(cases) do T.test(stem .. ": " .. c.name, function() run_case(c) end) end
end

return R
