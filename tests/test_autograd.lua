-- Autograd: gradients of every differentiable op against PyTorch (tests/ref/gen_autograd.py
-- writes inputs, upstream gradients and PyTorch's input gradients to
-- $VTL_FIXTURES/autograd_ref.lua), finite-difference gradcheck in f64, and the autograd API
-- (accumulation, retain_graph, grad mode, detach, in-place checks, custom functions, memory).
local T = require "testlib"
local vtl = require "vtl"
local R = require "reflib"

-- Checks tensor got against tensor want (same dtype and shape, values within tol).
local close = R.check

-- ---- reference cases ----

local function run_case(c)
  local names = R.sorted_keys(c.inputs)
  local fn, err = R.compile(c.name, c.expr, {"vtl", table.unpack(names)})
  if not fn then error(string.format("case '%s': bad expression: %s", c.name, err), 0) end
  local req = {}
  for _, k in ipairs(c.requires) do req[k] = true end
  local args, byname = {}, {}
  for i, k in ipairs(names) do
    local t = R.tensor(c.inputs[k])
    if req[k] then t:requires_grad_() end
    args[i], byname[k] = t, t
  end
  local function fail(msg) error(string.format("case '%s' (%s): %s", c.name, c.expr, msg), 0) end
  local ok, out = xpcall(function() return fn(vtl, table.unpack(args, 1, #names)) end, debug.traceback)
  if not ok then fail("forward raised: " .. tostring(out)) end
  local msg = R.compare(out, c.want, c.tol, "forward")
  if msg then fail(msg) end
  if not out.requires_grad then fail("the result does not require grad") end
  local bok, berr = pcall(out.backward, out, R.tensor(c.g))
  if not bok then fail("backward raised: " .. tostring(berr)) end
  for _, k in ipairs(c.requires) do
    local gr = byname[k].grad
    if gr == nil then fail(string.format("input %s has no .grad after backward", k)) end
    msg = R.compare(gr, c.grads[k], c.tol, "grad of " .. k)
    if msg then fail(msg) end
  end
  for _, k in ipairs(names) do
    if not req[k] and byname[k].grad ~= nil then fail("input " .. k .. " does not require grad but got a .grad") end
  end
end

R.cases("autograd_ref", 250, run_case)

-- ---- gradcheck (f64, central differences) ----

local gen = vtl.Generator(2024)
local function r64(...) return vtl.randn({...}, {dtype = "f64", generator = gen}) end
-- positive values in [lo, hi)
local function p64(lo, hi, ...) return vtl.rand({...}, {dtype = "f64", generator = gen}) * (hi - lo) + lo end
-- distinct values, shuffled (no ties for max/min/sort/topk/norm inf)
local function spread64(...)
  local n = R.numel({...})
  local v = vtl.rand({n}, {dtype = "f64", generator = gen}):sort() -- (values)
  local perm = vtl.rand({n}, {dtype = "f64", generator = gen}):argsort()
  local t = vtl.arange(n, {dtype = "f64"}):index_select(1, perm) * 0.3 + v * 0.1
  return t:view(...)
end
local function leaf(t) return t:contiguous():requires_grad_() end

local function gc(name, fn, inputs)
  T.test("gradcheck: " .. name, function()
    local ins = {}
    for i, x in ipairs(inputs()) do ins[i] = vtl.is_tensor(x) and x.dtype == "f64" and leaf(x) or x end
    T.truthy(vtl.autograd.gradcheck(fn, ins, {eps = 1e-6, atol = 1e-6, rtol = 1e-4}))
  end)
end

gc("add broadcast", function(a, b) return a + b end, function() return {r64(3, 1), r64(4)} end)
gc("sub broadcast", function(a, b) return a - b end, function() return {r64(2, 3), r64(1, 3)} end)
gc("mul broadcast", function(a, b) return a * b end, function() return {r64(3, 1), r64(1, 4)} end)
gc("div broadcast", function(a, b) return a / b end, function() return {r64(2, 3), p64(0.5, 2, 3)} end)
gc("pow tensor^tensor", function(a, b) return a ^ b end, function() return {p64(0.5, 2, 2, 3), r64(3)} end)
gc("pow tensor^number", function(a) return a ^ 3 end, function() return {r64(2, 3)} end)
gc("pow number^tensor", function(a) return 1.7 ^ a end, function() return {r64(2, 3)} end)
gc("maximum/minimum", function(a, b) return a:maximum(b) + a:minimum(b * 0.5) end,
   function() return {spread64(2, 3), spread64(2, 3) + 0.05} end)
gc("atan2", function(a, b) return a:atan2(b) end, function() return {r64(2, 3), p64(0.5, 2, 2, 3)} end)
gc("remainder", function(a, b) return a:remainder(b) end,
   function()
     return {vtl.tensor({0.35, 1.7, -2.2, 4.45}, {dtype = "f64"}), vtl.tensor({1.5, -1.0, 0.9, 2.0}, {dtype = "f64"})}
   end)
gc("exp log sqrt", function(a) return a:exp() + a:log() + a:sqrt() + a:rsqrt() + a:log2() end,
   function() return {p64(0.5, 2, 2, 3)} end)
gc("tanh sigmoid erf sin cos", function(a) return a:tanh() * a:sigmoid() + a:erf() + a:sin() * a:cos() end,
   function() return {r64(2, 3)} end)
gc("log1p expm1 reciprocal square abs neg",
   function(a) return a:log1p() + a:expm1() + a:reciprocal() + a:square() + a:abs() - a end,
   function() return {p64(0.5, 2, 2, 3)} end)
gc("relu clamp", function(a) return a:relu() + a:clamp(-0.5, 0.5) + a:clamp(0.2) + a:clamp(nil, -0.3) end,
   function() return {vtl.tensor({-1.2, -0.41, -0.1, 0.13, 0.37, 0.9}, {dtype = "f64"})} end)
gc("where lerp masked_fill", function(a, b, w)
  local m = vtl.tensor({{true, false, true}, {false, false, true}})
  return vtl.where(m, a, b) + a:lerp(b, w) + a:masked_fill(m, 2)
end, function() return {r64(2, 3), r64(3), p64(0, 1, 2, 1)} end)
gc("views", function(a)
  return a:permute(3, 1, 2):reshape(4, 6):t():narrow(1, 2, 4):select(2, 3):unsqueeze(1):expand(2, 4)
end, function() return {r64(2, 3, 4)} end)
gc("indexing", function(a)
  local m = a:detach():gt(0)
  return a[2]:sum() + a[{ {1, 2}, {2, 3} }]:sum() * 2 + a[m]:sum() + a[vtl.tensor({3, 1, 3})]:sum() * 3
end, function() return {r64(3, 4)} end)
gc("repeat tile flatten", function(a) return a["repeat"](a, 2, 1, 2):flatten() * a:tile(2, 1, 2):flatten():square() end,
   function() return {r64(2, 3)} end)
gc("sum mean prod", function(a) return a:sum(2):square() + a:mean(2) + a:prod(2) end,
   function() return {p64(0.5, 1.5, 3, 4)} end)
gc("logsumexp var std", function(a) return a:logsumexp(1) + a:var(1) + a:std(1, false) end,
   function() return {r64(4, 3)} end)
gc("norm 2 1 3 inf", function(a) return a:norm(2, 2) + a:norm(1, 2) + a:norm(3, 2) + a:norm("inf", 2) end,
   function() return {spread64(3, 5) - 2} end)
gc("max min with dim, global", function(a) return (a:max(2)) + (a:min(2)) + a:max() - a:min() end,
   function() return {spread64(3, 5)} end)
gc("cumsum topk sort",
   function(a) return a:cumsum(2):sum(1) + (a:topk(2, 1)):sum(1) + (a:sort(1, true)):square():sum(1) end,
   function() return {spread64(4, 3)} end)
gc("topk values", function(a) return (a:topk(2)) end, function() return {spread64(3, 5)} end)
gc("matmul forms", function(a, b, v)
  return a:matmul(b):sum() + v:matmul(b):sum() + a:matmul(v:view(3, 1)):sum() + v:dot(v) + a:mm(b):sum()
end, function() return {r64(2, 3), r64(3, 4), r64(3)} end)
gc("matmul batched broadcast", function(a, b) return a:matmul(b) end,
   function() return {r64(2, 1, 2, 3), r64(3, 3, 2)} end)
gc("bmm", function(a, b) return a:bmm(b) end, function() return {r64(2, 2, 3), r64(2, 3, 2)} end)
gc("index_select gather masked_select", function(a)
  return a:index_select(2, vtl.tensor({3, 1, 3})):sum(2) + a:gather(2, vtl.tensor({{1, 1}, {4, 2}, {3, 3}})):sum(2) +
         a:masked_select(vtl.tensor({true, false, true, true})):sum()
end, function() return {r64(3, 4)} end)
gc("cat", function(a, b, c) return vtl.cat({a, b, a, c}, 2) end,
   function() return {r64(2, 3), r64(2, 1), r64(2, 3)} end)
gc("stack", function(a, b) return vtl.stack({a, b, a}, 2) end, function() return {r64(2, 3), r64(2, 3)} end)
gc("cat of 10", function(...)
  local xs = {...}
  return vtl.cat(xs, 1) * vtl.arange(1, 11, {dtype = "f64"}):view(10, 1)
end, function()
  local xs = {}
  for k = 1, 10 do xs[k] = r64(1, 2) end
  return xs
end)
gc("custom Function", function(a, b)
  local F = vtl.autograd.Function {
    forward = function(ctx, x, y) ctx:save_for_backward(x, y); return x * y:exp() end,
    backward = function(ctx, g)
      local x, y = ctx.saved_tensors[1], ctx.saved_tensors[2]
      return g * y:exp(), g * x * y:exp()
    end,
  }
  return F(a, b)
end, function() return {r64(2, 3), r64(2, 3)} end)

T.test("gradcheck: detects a wrong gradient", function()
  local Bad = vtl.autograd.Function {
    forward = function(ctx, x) return x * x end,
    backward = function(ctx, g) return g end, -- should be 2 x g
  }
  T.raises(function() vtl.autograd.gradcheck(Bad, {leaf(p64(1, 2, 3))}) end, "gradcheck")
end)

T.test("gradcheck: refuses f32 inputs", function()
  T.raises(function() vtl.autograd.gradcheck(function(a) return a * 2 end, {vtl.randn(3):requires_grad_()}) end, "f64")
end)

-- ---- API ----

local function randn(...) return vtl.randn({...}, {generator = gen}) end

T.test("requires_grad, is_leaf, grad_fn", function()
  local x = randn(3)
  T.eq(x.requires_grad, false)
  T.eq(x.is_leaf, true)
  T.eq(x.grad, nil)
  T.eq(x.grad_fn, nil)
  T.truthy(rawequal(x:requires_grad_(), x), "requires_grad_ returns self")
  T.eq(x.requires_grad, true)
  local y = x * 2
  T.eq(y.requires_grad, true)
  T.eq(y.is_leaf, false)
  T.truthy(y.grad_fn ~= nil, "y has a grad_fn")
  T.eq(type(y.grad_fn.name), "string")
  T.truthy(tostring(y.grad_fn):find(y.grad_fn.name, 1, true), "grad_fn prints its name")
  local z = randn(2)
  z.requires_grad = true
  T.eq(z.requires_grad, true)
  z.requires_grad = false
  T.eq(z.requires_grad, false)
  x:requires_grad_(false)
  T.eq(x.requires_grad, false)
  -- y was recorded before: still differentiable
  T.eq(y.requires_grad, true)
  T.raises(function() y.requires_grad = false end, "detach")
end)

T.test("gradient accumulates over two backward calls", function()
  local x = randn(3, 4):requires_grad_()
  ;(x * x):sum():backward()
  local g1 = x.grad:clone()
  close(g1, x:detach() * 2, 1e-6, "first")
  ;(x * 3):sum():backward()
  close(x.grad, x:detach() * 2 + 3, 1e-6, "accumulated")
end)

T.test("gradient zeroed by setting .grad = nil", function()
  local x = randn(4):requires_grad_()
  ;(x * 5):sum():backward()
  close(x.grad, vtl.full({4}, 5.0), 1e-6)
  x.grad = nil
  T.eq(x.grad, nil)
  ;(x * 2):sum():backward()
  close(x.grad, vtl.full({4}, 2.0), 1e-6, "after zeroing")
end)

T.test(".grad can be set to a tensor of the same shape; other shapes raise", function()
  local x = randn(2, 3):requires_grad_()
  x.grad = vtl.ones(2, 3)
  ;(x * 2):sum():backward()
  close(x.grad, vtl.full({2, 3}, 3.0), 1e-6)
  T.raises(function() x.grad = vtl.ones(3, 2) end, "shape")
end)

T.test("accumulation is right while a reference to .grad is held", function()
  local x = randn(3):requires_grad_()
  ;(x * 2):sum():backward()
  local held = x.grad
  ;(x * 2):sum():backward()
  close(x.grad, vtl.full({3}, 4.0), 1e-6, "accumulated")
  T.eq(table.concat(held.shape, ","), "3")
end)

T.test("backward twice without retain_graph raises; with retain_graph doubles the grad", function()
  local x = randn(3):requires_grad_()
  local y = (x * x):sum()
  y:backward()
  T.raises(function() y:backward() end, "retain_graph")
  local x2 = randn(3):requires_grad_()
  local y2 = (x2 * x2):exp():sum()
  y2:backward({retain_graph = true})
  local once = x2.grad:clone()
  y2:backward(nil, {retain_graph = true})
  close(x2.grad, once * 2, 1e-6, "twice")
  y2:backward()
  close(x2.grad, once * 3, 1e-6, "three times")
  T.raises(function() y2:backward() end, "retain_graph")
end)

T.test("backward through a shared subgraph freed by an earlier backward raises", function()
  local x = randn(3):requires_grad_()
  local h = x:exp()
  h:sum():backward()
  T.raises(function() (h * 2):sum():backward() end, "retain_graph")
end)

T.test("backward on a non-scalar without a gradient names the shape", function()
  local x = randn(3, 4):requires_grad_()
  local y = x * 2
  local err = T.raises(function() y:backward() end, "{3,4}")
  T.truthy(err:find("backward", 1, true), "names backward: " .. err)
  -- a one-element non-0-d output is fine
  local z = (x * 2):sum(2, true):sum(1, true)
  z:backward()
  close(x.grad, vtl.full({3, 4}, 2.0), 1e-6)
end)

T.test("backward with a gradient of the wrong shape raises", function()
  local x = randn(3, 4):requires_grad_()
  local y = x * 2
  T.raises(function() y:backward(vtl.ones(4, 3)) end, "{4,3}")
  T.raises(function() y:backward(vtl.ones(12)) end, "shape")
  T.raises(function() y:backward("nope") end, "gradient tensor")
  -- an f64 gradient for an f32 output is converted
  y:backward(vtl.ones(3, 4, {dtype = "f64"}))
  T.eq(x.grad.dtype, "f32")
  close(x.grad, vtl.full({3, 4}, 2.0), 1e-6)
end)

T.test("backward on a tensor that does not require grad raises", function()
  local x = randn(3)
  T.raises(function() x:sum():backward() end, "grad")
end)

T.test("backward on a leaf gives the seed", function()
  local x = randn(2, 2):requires_grad_()
  local g = randn(2, 2)
  x:backward(g)
  close(x.grad, g, 0)
  local before = x.grad:clone()
  g:mul_(2) -- .grad is not an alias of the gradient passed in
  close(x.grad, before, 0)
end)

T.test("no_grad: function form returns fn's results without grad_fn", function()
  local x = randn(3):requires_grad_()
  local a, b, c = vtl.no_grad(function(p, q) return p * 2, q + 1, "extra" end, x, x)
  T.eq(a.grad_fn, nil)
  T.eq(a.requires_grad, false)
  T.eq(b.requires_grad, false)
  T.eq(c, "extra")
  T.eq(vtl.is_grad_enabled(), true)
  local n = select("#", vtl.no_grad(function() return 1, nil, 3 end))
  T.eq(n, 3)
end)

T.test("no_grad: <close> form, nested, restored", function()
  local x = randn(3):requires_grad_()
  do
    local g <close> = vtl.no_grad()
    T.eq(vtl.is_grad_enabled(), false)
    T.eq((x * 2).grad_fn, nil)
    do
      local g2 <close> = vtl.no_grad()
      T.eq(vtl.is_grad_enabled(), false)
    end
    T.eq(vtl.is_grad_enabled(), false, "inner guard restores the outer no_grad")
    vtl.no_grad(function() T.eq(vtl.is_grad_enabled(), false) end)
    T.eq(vtl.is_grad_enabled(), false)
  end
  T.eq(vtl.is_grad_enabled(), true)
  T.truthy((x * 2).grad_fn ~= nil, "grad recorded again")
end)

T.test("no_grad: restored after an error inside fn or inside a <close> block", function()
  local ok, err = pcall(vtl.no_grad, function() error("boom inside") end)
  T.eq(ok, false)
  T.truthy(tostring(err):find("boom inside", 1, true), "error passes through: " .. tostring(err))
  T.eq(vtl.is_grad_enabled(), true)
  ok = pcall(function()
    local g <close> = vtl.no_grad()
    error("boom in block")
  end)
  T.eq(ok, false)
  T.eq(vtl.is_grad_enabled(), true)
  -- nested: the error unwinds through both
  ok = pcall(vtl.no_grad, function() vtl.no_grad(function() error("deep") end) end)
  T.eq(ok, false)
  T.eq(vtl.is_grad_enabled(), true)
end)

T.test("enable_grad inside no_grad; set_grad_enabled", function()
  local x = randn(3):requires_grad_()
  local y = vtl.no_grad(function()
    local inner = vtl.enable_grad(function() return x * 2 end)
    T.eq(vtl.is_grad_enabled(), false, "no_grad restored after enable_grad")
    return inner
  end)
  T.truthy(y.grad_fn ~= nil, "enable_grad records")
  vtl.no_grad(function()
    local g <close> = vtl.enable_grad()
    T.eq(vtl.is_grad_enabled(), true)
    T.truthy((x * 2).grad_fn ~= nil)
  end)
  vtl.set_grad_enabled(false)
  local ok, z = pcall(function() return x * 3 end)
  vtl.set_grad_enabled(true)
  T.truthy(ok)
  T.eq(z.grad_fn, nil)
  T.eq(vtl.is_grad_enabled(), true)
  y:sum():backward()
  close(x.grad, vtl.full({3}, 2.0), 1e-6)
end)

T.test("detach shares data but has no grad", function()
  local x = randn(4):requires_grad_()
  local d = x:detach()
  T.eq(d.requires_grad, false)
  T.eq(d.grad_fn, nil)
  T.eq(d.is_leaf, true)
  d[2] = 7.5 -- allowed: d does not require grad
  T.eq(x[2]:item(), 7.5)
  local y = (x * 2):detach()
  T.eq(y.requires_grad, false)
  T.eq(y.grad_fn, nil)
  -- a graph through detach does not reach x
  local w = randn(4):requires_grad_()
  ;(x:detach() * w):sum():backward()
  T.eq(x.grad, nil)
  close(w.grad, x:detach(), 0)
end)

T.test("requires_grad on an integer or bool tensor raises", function()
  T.raises(function() vtl.tensor({1, 2, 3}):requires_grad_() end, "float")
  T.raises(function() local t = vtl.tensor({1, 2}, {dtype = "i32"}); t.requires_grad = true end, "float")
  T.raises(function() vtl.tensor({true, false}):requires_grad_() end, "float")
end)

T.test("integer results of differentiable inputs do not require grad", function()
  local x = randn(3, 4):requires_grad_()
  local _, idx = x:max(2)
  T.eq(idx.requires_grad, false)
  T.eq(x:gt(0).requires_grad, false)
  T.eq(x:argmax().requires_grad, false)
  local _, ti = x:topk(2)
  T.eq(ti.requires_grad, false)
end)

T.test("in-place op on a leaf that requires grad raises", function()
  local x = randn(3):requires_grad_()
  T.raises(function() x:add_(1) end, "in-place")
  T.raises(function() x:mul_(x) end, "in-place")
  T.raises(function() x:exp_() end, "in-place")
  T.raises(function() x:zero_() end, "in-place")
  T.raises(function() x:fill_(1) end, "in-place")
  T.raises(function() x:copy_(vtl.ones(3)) end, "in-place")
  T.raises(function() x:clamp_(0, 1) end, "in-place")
  T.raises(function() x[1] = 0 end, "in-place")
  T.raises(function() x:masked_fill_(vtl.tensor({true, false, true}), 0) end, "in-place")
  -- a view of x requires grad too
  T.raises(function() x:narrow(1, 1, 2):add_(1) end, "in-place")
  -- and a non-leaf that requires grad
  T.raises(function() (x * 2):mul_(3) end, "in-place")
end)

T.test("a tensor saved for backward then modified in place makes backward raise", function()
  local x = randn(3):requires_grad_()
  local a = randn(3)
  local y = (x * a):sum() -- saves a
  a:mul_(2)
  T.raises(function() y:backward() end, "in-place")
  -- a view of the saved tensor sharing its storage
  local b = randn(4)
  local y2 = (x * b:narrow(1, 1, 3)):sum()
  b:narrow(1, 4, 1):fill_(0)
  T.raises(function() y2:backward() end, "in-place")
  -- a saved output changed under no_grad
  local e = x:exp()
  local y3 = e:sum()
  vtl.no_grad(function() e:mul_(2) end)
  T.raises(function() y3:backward() end, "in-place")
  -- a leaf changed through detach()
  local x5 = randn(3):requires_grad_()
  local y5 = (x5 * x5):sum()
  x5:detach():mul_(2)
  T.raises(function() y5:backward() end, "in-place")
  -- an unrelated in-place change does not
  local c = randn(3)
  local y4 = (x * c):sum()
  randn(3):mul_(2)
  y4:backward()
  close(x.grad, c, 1e-6)
end)

T.test("in-place ops allowed inside no_grad: an SGD-style update", function()
  local p = randn(3, 2):requires_grad_()
  local p0 = p:detach():clone()
  local lr = 0.1
  ;(p * p):sum():backward()
  vtl.no_grad(function() p:sub_(p.grad * lr) end)
  close(p:detach(), p0 * (1 - 2 * lr), 1e-6, "updated")
  T.eq(p.requires_grad, true)
  T.eq(p.is_leaf, true)
  p.grad = nil
  do
    local g <close> = vtl.no_grad()
    p:mul_(2)
    p[1][1] = 0
  end
  ;(p * 3):sum():backward()
  close(p.grad, vtl.full({3, 2}, 3.0), 1e-6, "graph after the updates")
end)

local MulAdd = vtl.autograd.Function {
  name = "MulAddBackward",
  forward = function(ctx, a, b, k)
    ctx:save_for_backward(a, b)
    ctx.k = k
    return a * b + a * k
  end,
  backward = function(ctx, g)
    local a, b = ctx.saved_tensors[1], ctx.saved_tensors[2]
    return g * (b + ctx.k), g * a, nil
  end,
}

T.test("custom Function: two tensor inputs and a number, against the built-in expression", function()
  local a, b, g = randn(3, 4), randn(4), randn(3, 4)
  local a1, b1 = a:clone():requires_grad_(), b:clone():requires_grad_()
  local y = MulAdd(a1, b1, 2.5)
  T.truthy(y.grad_fn ~= nil, "records a node")
  local a2, b2 = a:clone():requires_grad_(), b:clone():requires_grad_()
  local y2 = a2 * b2 + a2 * 2.5
  close(y, y2:detach(), 1e-6, "forward")
  y:backward(g)
  y2:backward(g)
  close(a1.grad, a2.grad, 1e-6, "grad of a")
  close(b1.grad, b2.grad, 1e-5, "grad of b (broadcast, summed by the engine)")
  -- only one input requiring grad
  local a3 = a:clone():requires_grad_()
  MulAdd(a3, b, 1):sum():backward()
  close(a3.grad, (b + 1):expand(3, 4), 1e-6)
  -- no input requiring grad: no node
  T.eq(MulAdd(a, b, 1).grad_fn, nil)
  -- composes with built-in ops on both sides
  local a4 = a:clone():requires_grad_()
  MulAdd(a4:exp(), b, 0):tanh():sum():backward()
  local a5 = a:clone():requires_grad_()
  ;(a5:exp() * b):tanh():sum():backward()
  close(a4.grad, a5.grad, 1e-5)
end)

T.test("custom Function: grad_fn carries the given name", function()
  local y = MulAdd(randn(2):requires_grad_(), randn(2), 1)
  T.eq(y.grad_fn.name, "MulAddBackward")
end)

T.test("custom Function: needs_input_grad and forward without recording", function()
  local seen
  local F = vtl.autograd.Function {
    forward = function(ctx, a, b, k)
      seen = {ctx.needs_input_grad[1], ctx.needs_input_grad[2], ctx.needs_input_grad[3], vtl.is_grad_enabled()}
      return a * b
    end,
    backward = function(ctx, g) return g, g end,
  }
  F(randn(2):requires_grad_(), randn(2), 3)
  T.eq(seen[1], true)
  T.eq(seen[2], false)
  T.eq(seen[3], false)
  T.eq(seen[4], false, "forward runs with grad off")
end)

T.test("custom Function: an error in backward surfaces from backward()", function()
  local F = vtl.autograd.Function {
    forward = function(ctx, x) return x * 2 end,
    backward = function(ctx, g) error("custom backward failure") end,
  }
  local x = randn(3):requires_grad_()
  local y = F(x):sum()
  T.raises(function() y:backward() end, "custom backward failure")
  T.eq(vtl.is_grad_enabled(), true, "grad mode restored after a failed backward")
  T.eq(x.grad, nil)
  local Wrong = vtl.autograd.Function {
    forward = function(ctx, x) return x * 2 end,
    backward = function(ctx, g) return 42 end,
  }
  local x2 = randn(3):requires_grad_()
  T.raises(function() Wrong(x2):sum():backward() end, "tensor")
  T.raises(function() vtl.autograd.Function {forward = function(ctx, x) return 1 end, backward = function() end}(x) end,
           "forward must return a tensor")
  -- the process is intact: ordinary backward still works
  local z = randn(2):requires_grad_()
  ;(z * z):sum():backward()
  close(z.grad, z:detach() * 2, 1e-6)
end)

T.test("custom Function: a gradient of the wrong shape from backward raises", function()
  local x = randn(3, 2):requires_grad_()
  local Flat = vtl.autograd.Function {
    forward = function(ctx, a) return a * 2 end,
    backward = function(ctx, g) return g:reshape(6) end,
  }
  T.raises(function() Flat(x):backward(randn(3, 2)) end, "gradient")
  T.eq(x.grad, nil)
  local Transposed = vtl.autograd.Function {
    forward = function(ctx, a) return a * 2 end,
    backward = function(ctx, g) return g:t():contiguous() end, -- {2,3} for a {3,2} input
  }
  T.raises(function() Transposed(x):backward(randn(3, 2)) end, "shape")
  T.eq(x.grad, nil)
end)

T.test("custom Function: a non-string error object from backward is reported", function()
  local F = vtl.autograd.Function {
    forward = function(ctx, x) return x * 2 end,
    backward = function(ctx, g) error(setmetatable({}, {__tostring = function() return "table error 42" end})) end,
  }
  local err = T.raises(function() F(randn(2):requires_grad_()):sum():backward() end, "backward")
  T.truthy(not err:find("(null)", 1, true), "message has no (null): " .. err)
end)

-- Runs a Lua script in a fresh vtl process; returns its output and exit status.
local function run_script(src)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  local vtlbin = os.getenv("VTL") or "./vtl"
  local p = assert(io.popen(vtlbin .. " " .. path .. " 2>&1; echo \"exit=$?\""))
  local out = p:read("a")
  p:close()
  os.remove(path)
  return out, tonumber(out:match("exit=(%d+)%s*$"))
end

T.test("custom Function recorded inside a coroutine, backward after the coroutine is gone", function()
  local out, status = run_script([[
local vtl = require "vtl"
local F = vtl.autograd.Function {
  forward = function(ctx, a) return a * 2 end,
  backward = function(ctx, g) return g * 2 end,
}
local x = vtl.ones(3):requires_grad_()
local ys = {}
for k = 1, 50 do ys[k] = coroutine.wrap(function() return F(x) end)() end
for _ = 1, 5 do collectgarbage() end
local junk = {}
for i = 1, 200000 do junk[i] = string.rep(string.char(65 + i % 26), 150 + i % 100) end
for k = 1, 50 do ys[k]:sum():backward() end
print("grad", x.grad[1]:item())
]])
  T.eq(status, 0, "exit status (output: " .. out .. ")")
  T.truthy(out:find("grad\t100", 1, true), "gradient 50 * 2: " .. out)
end)

T.test("grad_reverse multiplies gradients by -coeff", function()
  local x, w = randn(3, 2):requires_grad_(), randn(3, 2)
  local y = vtl.autograd.grad_reverse(x, 0.5)
  close(y, x:detach(), 0, "identity forward")
  ;(y * w):sum():backward()
  close(x.grad, w * -0.5, 1e-6)
  local x2 = randn(4):requires_grad_()
  ;(vtl.autograd.grad_reverse(x2) * 3):sum():backward()
  close(x2.grad, vtl.full({4}, -3.0), 1e-6, "default coeff 1")
  -- inside a larger graph: features feed a head normally and a reversed branch
  local f = randn(5):requires_grad_()
  local loss = (f * 2):sum() + (vtl.autograd.grad_reverse(f, 2) * 1):sum()
  loss:backward()
  close(f.grad, vtl.full({5}, 0.0), 1e-6, "2 - 2")
end)

T.test("a chain of 10000 ops backpropagates without stack overflow", function()
  local x = vtl.ones(3):requires_grad_()
  local y = x
  for i = 1, 10000 do
    if i % 2 == 0 then y = y * 1.0001 else y = y + 0.5 end
  end
  y:sum():backward()
  local want = 1.0001 ^ 5000
  close(x.grad, vtl.full({3}, want), 1e-4)
  -- a second deep graph dropped without backward is freed without overflow
  local z = x
  for _ = 1, 20000 do z = z:neg() end
  z = nil
  collectgarbage()
  collectgarbage()
end)

local function settle()
  for _ = 1, 3 do collectgarbage() end
  return vtl.memory_allocated()
end

T.test("memory: returns to the baseline after backward and dropping references", function()
  local base = settle()
  local function run(f) f() end -- locals die with the call frame
  run(function()
    local w = randn(64, 32):requires_grad_()
    local x = randn(16, 64)
    local loss = x:matmul(w):tanh():square():mean()
    loss:backward()
    T.truthy(w.grad ~= nil)
  end)
  T.eq(settle(), base, "bytes after backward")
  run(function() -- a retained graph dropped without a second backward
    local w = randn(32, 8):requires_grad_()
    local loss = (randn(4, 32):matmul(w):exp()):sum()
    loss:backward({retain_graph = true})
  end)
  T.eq(settle(), base, "bytes after a retained graph")
  run(function() -- a graph never run backward
    local w = randn(32, 8):requires_grad_()
    local _ = (randn(4, 32):matmul(w):sigmoid() * 2):sum()
  end)
  T.eq(settle(), base, "bytes after an unused graph")
  run(function() -- a custom Function's graph, unused and run
    local w = randn(32, 8):requires_grad_()
    local _ = MulAdd(w, randn(8), 2):sum()
    local v = randn(8):requires_grad_()
    MulAdd(v, randn(8), 2):sum():backward()
  end)
  T.eq(settle(), base, "bytes after custom Function graphs")
end)

T.test("memory: 200 training-like steps keep memory_allocated flat", function()
  local w1 = (randn(8, 16) * 0.3):requires_grad_()
  local b1 = vtl.zeros(16):requires_grad_()
  local w2 = (randn(16, 3) * 0.3):requires_grad_()
  local params = {w1, b1, w2}
  local x, t = randn(32, 8), randn(32, 3)
  local lr = 0.05
  local function step()
    local h = (x:matmul(w1) + b1):relu()
    local loss = (h:matmul(w2) - t):square():mean()
    loss:backward()
    vtl.no_grad(function()
      for _, p in ipairs(params) do p:sub_(p.grad * lr) end
    end)
    for _, p in ipairs(params) do p.grad = nil end
    return loss:item()
  end
  local first_loss, last_loss, at20
  for s = 1, 200 do
    last_loss = step()
    first_loss = first_loss or last_loss
    if s == 20 then at20 = settle() end
  end
  local at200 = settle()
  T.eq(at200, at20, "bytes after step 200 vs step 20")
  T.truthy(last_loss < first_loss, string.format("loss decreases: %g -> %g", first_loss, last_loss))
end)

T.test("to() and float()/double() with nothing to change return the tensor itself, as PyTorch", function()
  local x = vtl.randn(3):requires_grad_()
  T.truthy(rawequal(x:to("f32"), x), "to(its own dtype)")
  T.truthy(rawequal(x:to("cpu"), x), "to(its own device)")
  T.truthy(rawequal(x:to(vtl.zeros(1)), x), "to(a tensor of its dtype and device)")
  T.truthy(rawequal(x:float(), x), "float() of a f32 tensor")
  local y = x:float()
  T.eq(y.is_leaf, true)
  local s = (y * 2):sum()
  s:backward()
  T.close(x.grad, vtl.full({3}, 2), 0, "the gradient reaches the leaf itself")
  local d = vtl.randn(2, {dtype = "f64"})
  T.truthy(rawequal(d:double(), d), "double() of a f64 tensor")
  T.truthy(not rawequal(d:float(), d), "a conversion is a new tensor")
  T.eq(d:float().dtype, "f32")
end)
