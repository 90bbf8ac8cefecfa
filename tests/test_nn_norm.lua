-- Normalisation, activations, softmax, losses and dropout: forward, raw backward and autograd
-- gradients against PyTorch (tests/ref/gen_nn_norm.py writes $VTL_FIXTURES/nn_norm_ref.lua),
-- finite-difference checks of the backward functions in f64, network-sized shapes (the
-- parallel paths) against compositions of tensor ops, dropout statistics and mask reuse, and
-- bad input.
--
-- Tolerances: |got - want| <= tol * (1 + |want|); f32 1e-4 for normalisation and losses with
-- reductions, 1e-5 for pointwise ops and softmax, f64 1e-10; finite differences 1e-6.
local T = require "testlib"
local vtl = require "vtl"
local R = require "reflib"

-- vtl.nn.functional once the Lua library exposes it; the C functions themselves otherwise
local F = (function()
  local ok, nn = pcall(function() return vtl.nn end)
  if ok and type(nn) == "table" and type(nn.functional) == "table" and nn.functional.batch_norm then
    return nn.functional
  end
  local core = require "vtl.core"
  return type(core.nn) == "table" and core.nn or nil
end)()

if not F or not F.batch_norm then
  T.test("nn_norm functions present", function()
    error("vtl.nn.functional.batch_norm not found: lvtl_open_nn_norm is not opened by vtl.core", 0)
  end)
  return
end

local check = R.check

local has_autograd = vtl.is_tensor(vtl.zeros(1)) and type(vtl.zeros(1).requires_grad_) == "function"

-- ---- PyTorch reference cases ----

local function run_expr(c, src, args) return R.run(c.name, src, "F", F, args) end

local function run_case(c)
  -- forward, and the inputs it updates in place (batch_norm's running statistics)
  local ins = R.tensors(c.inputs)
  check(run_expr(c, c.call, ins), c.want.out, c.tol, c.name .. " output")
  for i, name in ipairs(c.post) do check(ins[name], c.want.post[i], c.tol, c.name .. " " .. name .. " after the call") end
  -- raw backward functions, and autograd: out:backward(gout)
  R.check_grads(c, F, has_autograd)
end

R.cases("nn_norm_ref", 200, run_case)

T.test("autograd is available for end-to-end gradients", function()
  T.truthy(has_autograd, "x:requires_grad_() missing: only raw backward functions were checked")
end)

-- ---- finite differences (f64) ----

local EPS, FD_TOL = 1e-6, 1e-6

-- d/dt of sum(f() * gout) for every element of t, by central differences.
local function numeric_grad(f, t, gout) return R.numeric_grad(f, t, gout, EPS) end

local function randn64(...) return vtl.randn({...}, {dtype = "f64"}) end
local function rand64(...) return vtl.rand({...}, {dtype = "f64"}) end

-- f: forward closure over the tensors in `wrt` (name → tensor); grads: name → analytic
-- gradient from the raw backward for upstream gradient gout.
local function fd_check(name, f, wrt, grads, gout)
  for k, t in pairs(wrt) do
    local num = numeric_grad(f, t, gout)
    check(grads[k], num, FD_TOL, name .. ": d/d" .. k)
  end
end

local function fd_test(name, setup)
  T.test("finite differences: " .. name, function()
    vtl.seed(11)
    setup()
  end)
end

fd_test("batch_norm training", function()
  local x, w, b = randn64(4, 3, 5) * 2 + 1, randn64(3), randn64(3)
  local f = function() return F.batch_norm(x, nil, nil, w, b, {training = true}) end
  local g = randn64(4, 3, 5)
  local gx, gw, gb = F._batch_norm_backward(g, x, nil, nil, w, {training = true})
  fd_check("batch_norm", f, {x = x, w = w, b = b}, {x = gx, w = gw, b = gb}, g)
end)

fd_test("batch_norm training (N, C)", function()
  local x, w = randn64(6, 4), randn64(4)
  local f = function() return F.batch_norm(x, nil, nil, w, nil, {training = true, eps = 1e-3}) end
  local g = randn64(6, 4)
  local gx, gw = F._batch_norm_backward(g, x, nil, nil, w, {training = true, eps = 1e-3})
  fd_check("batch_norm 2d", f, {x = x, w = w}, {x = gx, w = gw}, g)
end)

fd_test("batch_norm eval", function()
  local x, w, b = randn64(3, 4, 2, 2), randn64(4), randn64(4)
  local rm, rv = randn64(4), rand64(4) + 0.5
  local f = function() return F.batch_norm(x, rm, rv, w, b) end
  local g = randn64(3, 4, 2, 2)
  local gx, gw, gb = F._batch_norm_backward(g, x, rm, rv, w)
  fd_check("batch_norm eval", f, {x = x, w = w, b = b}, {x = gx, w = gw, b = gb}, g)
end)

fd_test("layer_norm", function()
  local x, w, b = randn64(3, 2, 4), randn64(2, 4), randn64(2, 4)
  local f = function() return F.layer_norm(x, {2, 4}, w, b) end
  local g = randn64(3, 2, 4)
  local gx, gw, gb = F._layer_norm_backward(g, x, {2, 4}, w)
  fd_check("layer_norm", f, {x = x, w = w, b = b}, {x = gx, w = gw, b = gb}, g)
end)

fd_test("group_norm", function()
  local x, w, b = randn64(2, 6, 3), randn64(6), randn64(6)
  local f = function() return F.group_norm(x, 3, w, b) end
  local g = randn64(2, 6, 3)
  local gx, gw, gb = F._group_norm_backward(g, x, 3, w)
  fd_check("group_norm", f, {x = x, w = w, b = b}, {x = gx, w = gw, b = gb}, g)
end)

-- activations, at points away from the kinks
for _, a in ipairs({{"relu", "y"}, {"relu6", "x"}, {"leaky_relu", "x", {negative_slope = 0.1}}, {"gelu", "x"},
                    {"gelu", "x", {approximate = "tanh"}}, {"silu", "x"}, {"hardswish", "x"}, {"hardsigmoid", "x"},
                    {"softplus", "x", {beta = 1.5, threshold = 3}}, {"elu", "y", {alpha = 0.7}}, {"sigmoid", "y"},
                    {"tanh", "y"}}) do
  local name, saved, opts = a[1], a[2], a[3] or {}
  fd_test(name .. (opts.approximate and " tanh" or ""), function()
    local x = randn64(4, 6) * 4
    -- keep clear of the kinks at 0, +-3 and 6, where the difference quotient straddles them
    local near = x:abs():lt(0.01)
    for _, k in ipairs({3, -3, 6}) do near = near:logical_or((x - k):abs():lt(0.01)) end
    x = vtl.where(near, x + 0.05, x)
    local f = function() return F[name](x, opts) end
    local g = randn64(4, 6)
    local gx = F["_" .. name .. "_backward"](g, saved == "y" and F[name](x, opts) or x, opts)
    fd_check(name, f, {x = x}, {x = gx}, g)
  end)
end

for _, log in ipairs({false, true}) do
  local name = log and "log_softmax" or "softmax"
  for _, d in ipairs({1, 2, -1}) do
    fd_test(name .. " dim " .. d, function()
      local x = randn64(3, 4, 5)
      local f = function() return F[name](x, d) end
      local g = randn64(3, 4, 5)
      local gx = F["_" .. name .. "_backward"](g, F[name](x, d), d)
      fd_check(name, f, {x = x}, {x = gx}, g)
    end)
  end
end

fd_test("cross_entropy with weight, smoothing, ignored targets", function()
  local x, w = randn64(5, 4), rand64(4) + 0.5
  local t = vtl.tensor({1, 4, -100, 2, 4})
  for _, red in ipairs({"mean", "sum", "none"}) do
    local opts = {weight = w, label_smoothing = 0.2, reduction = red}
    local f = function() return F.cross_entropy(x, t, opts) end
    local g = red == "none" and randn64(5) or vtl.tensor(1.7, {dtype = "f64"})
    local gx = F._cross_entropy_backward(g, x, t, opts)
    fd_check("cross_entropy " .. red, f, {x = x}, {x = gx}, g)
  end
end)

fd_test("cross_entropy spatial", function()
  local x = randn64(2, 3, 2, 2)
  local t = vtl.tensor({{{1, 3}, {2, 2}}, {{3, -100}, {1, 1}}})
  local f = function() return F.cross_entropy(x, t, {label_smoothing = 0.1}) end
  local g = vtl.tensor(0.8, {dtype = "f64"})
  fd_check("cross_entropy spatial", f, {x = x}, {x = F._cross_entropy_backward(g, x, t, {label_smoothing = 0.1})}, g)
end)

fd_test("cross_entropy probability targets", function()
  local x, p, w = randn64(4, 5), F.softmax(randn64(4, 5), 2), rand64(5) + 0.5
  local opts = {weight = w, label_smoothing = 0.1}
  local f = function() return F.cross_entropy(x, p, opts) end
  local g = vtl.tensor(1.3, {dtype = "f64"})
  local gx, gp = F._cross_entropy_backward(g, x, p, opts)
  fd_check("cross_entropy prob", f, {x = x, p = p}, {x = gx, p = gp}, g)
end)

fd_test("nll_loss", function()
  local x, w = randn64(5, 4), rand64(4) + 0.5
  local t = vtl.tensor({2, 2, 4, -100, 1})
  local f = function() return F.nll_loss(x, t, {weight = w}) end
  local g = vtl.tensor(0.9, {dtype = "f64"})
  fd_check("nll_loss", f, {x = x}, {x = F._nll_loss_backward(g, x, t, {weight = w})}, g)
end)

fd_test("binary_cross_entropy_with_logits", function()
  local x, y, w, pw = randn64(3, 4) * 3, rand64(3, 4), rand64(4) + 0.5, rand64(4) * 2 + 0.5
  local opts = {weight = w, pos_weight = pw}
  local f = function() return F.binary_cross_entropy_with_logits(x, y, opts) end
  local g = vtl.tensor(1.1, {dtype = "f64"})
  local gx, gy = F._binary_cross_entropy_with_logits_backward(g, x, y, opts)
  fd_check("bce", f, {x = x, y = y}, {x = gx, y = gy}, g)
end)

for _, l in ipairs({{"mse_loss", {}}, {"l1_loss", {}}, {"smooth_l1_loss", {beta = 0.7}},
                    {"kl_div", {reduction = "batchmean"}}, {"kl_div", {reduction = "sum", log_target = true}}}) do
  local name, opts = l[1], l[2]
  fd_test(name .. (opts.log_target and " log_target" or ""), function()
    local x, y = randn64(3, 5), randn64(3, 5)
    if name == "kl_div" then
      x = F.log_softmax(x, 2)
      y = opts.log_target and F.log_softmax(y, 2) or F.softmax(y, 2)
    end
    local f = function() return F[name](x, y, opts) end
    local g = vtl.tensor(1.4, {dtype = "f64"})
    local gx, gy = F["_" .. name .. "_backward"](g, x, y, opts)
    fd_check(name, f, {x = x, y = y}, {x = gx, y = gy}, g)
  end)
end

-- ---- network-sized shapes (the parallel, blocked paths) against tensor-op compositions ----

local function max_rel_err(a, b)
  return ((a:double() - b:double()):abs() / (b:double():abs() + 1)):max():item()
end

T.test("batch_norm on a ResNet-sized batch matches the formula (f32 and f64)", function()
  vtl.seed(3)
  for _, dt in ipairs({"f32", "f64"}) do
    local x = vtl.randn({8, 64, 14, 14}, {dtype = dt}) * 3 + 1
    local w, b = vtl.randn({64}, {dtype = dt}), vtl.randn({64}, {dtype = dt})
    local rm, rv = vtl.zeros({64}, {dtype = dt}), vtl.ones({64}, {dtype = dt})
    local y = F.batch_norm(x, rm, rv, w, b, {training = true, momentum = 0.1})
    local xd = x:double()
    local mean = xd:mean({1, 3, 4}, true)
    local var = xd:var({dim = {1, 3, 4}, correction = 0, keepdim = true})
    local want = (xd - mean) / (var + 1e-5):sqrt() * w:double():view(1, 64, 1, 1) + b:double():view(1, 64, 1, 1)
    T.truthy(max_rel_err(y, want) < (dt == "f32" and 1e-5 or 1e-12), dt .. " forward")
    local n = 8 * 14 * 14
    T.truthy(max_rel_err(rm, mean:view(64) * 0.1) < 1e-6, dt .. " running_mean")
    T.truthy(max_rel_err(rv, var:view(64) * (0.1 * n / (n - 1)) + 0.9) < 1e-6, dt .. " running_var")
    -- backward: the closed form dx = w*invstd*(g - mean(g) - xhat*mean(g*xhat))
    local g = vtl.randn({8, 64, 14, 14}, {dtype = dt})
    local gx, gw, gb = F._batch_norm_backward(g, x, nil, nil, w, {training = true})
    local gd = g:double()
    local invstd = (var + 1e-5):rsqrt()
    local xhat = (xd - mean) * invstd
    local wantx = w:double():view(1, 64, 1, 1) * invstd *
                  (gd - gd:mean({1, 3, 4}, true) - xhat * (gd * xhat):mean({1, 3, 4}, true))
    T.truthy(max_rel_err(gx, wantx) < (dt == "f32" and 1e-4 or 1e-10), dt .. " grad x")
    T.truthy(max_rel_err(gw, (gd * xhat):sum({1, 3, 4})) < (dt == "f32" and 1e-4 or 1e-10), dt .. " grad w")
    T.truthy(max_rel_err(gb, gd:sum({1, 3, 4})) < (dt == "f32" and 1e-4 or 1e-10), dt .. " grad b")
  end
end)

-- channels-last data (rows of channels): the statistics in one pass of sums shifted by the
-- first row, against the two-pass formula in f64, on values far from zero, a constant channel
-- and bf16 data
T.test("batch_norm statistics of channels-last data: shifted values, a constant channel, bf16", function()
  vtl.seed(17)
  for _, dt in ipairs({"f32", "f64", "bf16"}) do
    local x = vtl.randn(8, 6, 7, 7, {dtype = "f64"}) * 0.01 + 100
    x[{{}, 3}]:fill_(2.5) -- a constant channel: variance 0
    x = x:to(dt):contiguous("channels_last")
    local pdt = dt == "f64" and "f64" or "f32"
    local rm, rv = vtl.zeros(6, {dtype = pdt}), vtl.ones(6, {dtype = pdt})
    local y = F.batch_norm(x, rm, rv, nil, nil, {training = true, momentum = 1, eps = 1e-5})
    local xd = x:double()
    local mean = xd:mean({1, 3, 4}, true)
    local var = xd:var({dim = {1, 3, 4}, correction = 0, keepdim = true})
    local want = (xd - mean) / (var + 1e-5):sqrt()
    local n = 8 * 7 * 7
    local tol = dt == "bf16" and 1e-2 or dt == "f32" and 1e-4 or 1e-9
    T.truthy(max_rel_err(y, want) < tol, dt .. " output " .. max_rel_err(y, want))
    T.truthy(max_rel_err(rm, mean:view(6)) < 1e-7, dt .. " running mean")
    T.truthy((rv:double() - var:view(6) * (n / (n - 1))):abs():max():item() < 1e-9, dt .. " running var (unbiased)")
    T.eq(rv[3]:item(), 0, dt .. " the constant channel's variance")
  end
end)

-- act(batch_norm(x) + add) in one pass, against the three ops composed: the output keeps the
-- input's layout. f32/f64: the same values. bf16 and f16 are computed in f32 and rounded once,
-- where the composed ops round after each op: both are compared with the f64 computation on the
-- same inputs, and the fused form must be as close to it as the composed one.
T.test("batch_norm with add and act matches relu(batch_norm(x) + add) in layouts and dtypes", function()
  vtl.seed(21)
  local names = {"output", "grad x", "grad weight", "grad bias", "grad add", "running_mean", "running_var"}
  -- every result of one run: the output, the gradients, the running statistics
  local function run(fused, dt, x, a, w, b, g, act, cl)
    local function leaf(t)
      t = t:to(dt):clone()
      if cl and t.ndim == 4 then t = t:contiguous("channels_last") end
      return t:requires_grad_()
    end
    local pdt = dt == "f64" and "f64" or "f32"
    local xg, ag, wg, bg = leaf(x), leaf(a), w:to(pdt):clone():requires_grad_(), b:to(pdt):clone():requires_grad_()
    local rm, rv = vtl.zeros(16, {dtype = pdt}), vtl.ones(16, {dtype = pdt})
    local y
    if fused then
      y = F.batch_norm(xg, rm, rv, wg, bg, {training = true, add = ag, act = act or nil})
    else
      y = F.batch_norm(xg, rm, rv, wg, bg, {training = true}) + ag
      if act then y = F[act](y) end
    end
    y:backward(g:to(dt))
    return {y, xg.grad, wg.grad, bg.grad, ag.grad, rm, rv}
  end
  local function rel(u, v, whole)
    u, v = u:double(), v:double()
    if whole then return (u - v):norm():item() / v:norm():item() end
    return ((u - v):abs() / (v:abs() + 1)):max():item()
  end
  for _, cl in ipairs({false, true}) do
    for _, act in ipairs({"relu", "relu6", false}) do
      -- inputs exact in bf16, so every dtype starts from the same values
      local x = (vtl.randn(6, 16, 5, 5) * 2 + 0.5):bfloat16():double()
      local a = vtl.randn(6, 16, 5, 5):bfloat16():double()
      local w, b = (vtl.randn(16) * 0.5 + 1):double(), vtl.randn(16):double()
      local g = vtl.randn(6, 16, 5, 5):bfloat16():double()
      local ref = run(false, "f64", x, a, w, b, g, act, cl)
      for _, dt in ipairs({"f64", "f32", "bf16", "f16"}) do
        local f, c = run(true, dt, x, a, w, b, g, act, cl), run(false, dt, x, a, w, b, g, act, cl)
        local what = ("%s%s %s"):format(dt, cl and " channels-last" or "", act or "no act")
        T.eq(f[1]:is_contiguous("channels_last"), cl, what .. ": the output's layout")
        T.eq(f[1].dtype, dt, what .. ": the output's dtype")
        for i = 1, 7 do
          T.truthy(f[i] and c[i], what .. ": " .. names[i] .. " present")
          if dt == "bf16" or dt == "f16" then
            local whole = i >= 2 and i <= 5
            local ef, ec = rel(f[i], ref[i], whole), rel(c[i], ref[i], whole)
            T.truthy(ef <= 1.25 * ec + 2e-3, ("%s: %s %.3g from f64, the composed ops %.3g"):format(what, names[i], ef, ec))
          else
            local err = rel(f[i], c[i])
            T.truthy(err < (dt == "f32" and 1e-5 or 1e-12), ("%s: %s, relative error %.3g"):format(what, names[i], err))
          end
        end
        if act then T.truthy(f[1]:lt(0):sum():item() == 0, what .. ": clamped at 0") end
      end
    end
  end
end)

-- the fused backward's mask at its edges (tests/norm_cases.lua)
T.test("batch_norm with act: the gradient's mask on 0, 6, +inf and NaN outputs", function()
  require("norm_cases").mask_edges("cpu")
end)

-- bf16 weights too (a model converted whole): batch norm runs on f32 copies, the fused sum and
-- activation with it, and the backward takes the activation's gradient first
T.test("batch_norm with add and act on bf16 data and bf16 parameters", function()
  vtl.seed(8)
  local x, a = vtl.randn(4, 6, 3, 3):bfloat16(), vtl.randn(4, 6, 3, 3):bfloat16()
  local w, b = vtl.randn(6):bfloat16(), vtl.randn(6):bfloat16()
  local function run(dt, fused)
    local ts = {}
    for i, t in ipairs({x, a, w, b}) do ts[i] = t:to(dt):clone():requires_grad_() end
    local y
    if fused then y = F.batch_norm(ts[1], nil, nil, ts[3], ts[4], {training = true, add = ts[2], act = "relu6"})
    else y = F.relu6(F.batch_norm(ts[1], nil, nil, ts[3], ts[4], {training = true}) + ts[2]) end
    y:backward(vtl.ones(y.shape):to(dt))
    return {y, ts[1].grad, ts[2].grad, ts[3].grad, ts[4].grad}
  end
  local f, r = run("bf16", true), run("f64", false)
  T.eq(f[1].dtype, "bf16", "output dtype")
  for i, name in ipairs({"output", "grad x", "grad add", "grad weight", "grad bias"}) do
    T.eq(f[i].dtype, "bf16", name .. " dtype")
    local err = (f[i]:double() - r[i]):norm():item() / (r[i]:norm():item() + 1e-12)
    T.truthy(err < 1e-2, ("%s: %.3g from f64"):format(name, err))
  end
end)

T.test("batch_norm with act: the gradient comes from the output, checked against in-place changes", function()
  local x = vtl.randn(4, 3, 2, 2):requires_grad_()
  local y = F.batch_norm(x, nil, nil, nil, nil, {training = true, act = "relu"})
  T.eq(y.grad_fn and y.grad_fn.name or y.grad_fn, "BatchNormActBackward", "node name")
  vtl.no_grad(function() y:mul_(2) end)
  T.raises(function() y:sum():backward() end, "modified")
  -- eval mode with relu6: values above 6 get no gradient, as PyTorch's relu6
  local xe = vtl.tensor({{-1.5, 3, 8}}):view(1, 3, 1):requires_grad_()
  local ye = F.batch_norm(xe, vtl.zeros(3), vtl.ones(3), nil, nil, {act = "relu6", eps = 0})
  T.close(ye:view(3), {0, 3, 6}, 0, "relu6 output")
  ye:sum():backward()
  T.close(xe.grad:view(3), {0, 1, 0}, 0, "relu6 gradient")
end)

T.test("layer_norm and group_norm on large inputs match the formula", function()
  vtl.seed(4)
  local x = vtl.randn({64, 197, 192}) * 2 + 0.5
  local y = F.layer_norm(x, 192)
  local xd = x:double()
  local want = (xd - xd:mean(3, true)) / (xd:var({dim = 3, correction = 0, keepdim = true}) + 1e-5):sqrt()
  T.truthy(max_rel_err(y, want) < 1e-5, "layer_norm")
  local z = vtl.randn({16, 32, 12, 12})
  local gy = F.group_norm(z, 8)
  local zd = z:double():view(16, 8, 4 * 144)
  local gwant = ((zd - zd:mean(3, true)) / (zd:var({dim = 3, correction = 0, keepdim = true}) + 1e-5):sqrt()):view(16, 32, 12, 12)
  T.truthy(max_rel_err(gy, gwant) < 1e-5, "group_norm")
end)

T.test("softmax over a middle dim wider than one block matches exp / sum", function()
  vtl.seed(5)
  for _, d in ipairs({1, 2, 3}) do
    local x = vtl.randn({6, 50, 300}) * 4
    local want = (x:double() - x:double():max(d, true)):exp()
    want = want / want:sum(d, true)
    T.truthy(max_rel_err(F.softmax(x, d), want) < 1e-6, "softmax dim " .. d)
    T.truthy(max_rel_err(F.log_softmax(x, d), want:log()) < 1e-5, "log_softmax dim " .. d)
  end
end)

T.test("cross_entropy on ImageNet-sized logits equals -log_softmax gathered", function()
  vtl.seed(6)
  local x = vtl.randn({256, 1000}) * 3
  local t = vtl.randint(1, 1001, {256})
  local lp = F.log_softmax(x:double(), 2)
  local want = -lp:gather(2, t:view(256, 1)):mean()
  T.truthy(max_rel_err(F.cross_entropy(x, t), want) < 1e-6, "mean loss")
  local gx = F._cross_entropy_backward(vtl.tensor(1.0), x, t)
  local onehot = vtl.zeros({256, 1000}, {dtype = "f64"}):scatter(2, t:view(256, 1), vtl.ones({256, 1}, {dtype = "f64"}))
  T.truthy(max_rel_err(gx, (lp:exp() - onehot) / 256) < 1e-6, "gradient")
end)

T.test("activations on large tensors match the tensor methods (f32 and f64)", function()
  vtl.seed(8)
  for _, dt in ipairs({"f32", "f64"}) do
    local x = vtl.randn({1000, 1000}, {dtype = dt}) * 3
    local tol = dt == "f32" and 1e-6 or 1e-14
    T.truthy(max_rel_err(F.relu(x), x:relu()) == 0, dt .. " relu")
    T.truthy(max_rel_err(F.sigmoid(x), x:sigmoid()) < tol, dt .. " sigmoid")
    T.truthy(max_rel_err(F.tanh(x), x:tanh()) < tol, dt .. " tanh")
    T.truthy(max_rel_err(F.silu(x), x * x:sigmoid()) < tol, dt .. " silu")
    T.truthy(max_rel_err(F.gelu(x), x * ((x / math.sqrt(2)):erf() + 1) / 2) < tol, dt .. " gelu")
    local g = vtl.randn({1000, 1000}, {dtype = dt})
    local sg = x:sigmoid()
    T.truthy(max_rel_err(F._silu_backward(g, x), g * sg * (x * (1 - sg) + 1)) < (dt == "f32" and 1e-5 or 1e-13),
             dt .. " silu backward")
  end
end)

T.test("PyTorch's positional arguments and the options-table forms agree", function()
  vtl.seed(12)
  local x, w, b = vtl.randn({4, 3, 5}), vtl.randn({3}), vtl.randn({3})
  local rm1, rv1, rm2, rv2 = vtl.zeros({3}), vtl.ones({3}), vtl.zeros({3}), vtl.ones({3})
  check(F.batch_norm(x, rm1, rv1, w, b, true, 0.2, 1e-3),
        F.batch_norm(x, rm2, rv2, w, b, {training = true, momentum = 0.2, eps = 1e-3}), 0, "batch_norm")
  check(rm1, rm2, 0, "running_mean with momentum 0.2")
  check(F.layer_norm(x, 5, nil, nil, 1e-3), F.layer_norm(x, 5, nil, nil, {eps = 1e-3}), 0, "layer_norm eps")
  check(F.group_norm(x, 3, w, b, 1e-3), F.group_norm(x, 3, w, b, {eps = 1e-3}), 0, "group_norm eps")
  check(F.softmax(x, {dim = 2}), F.softmax(x, 2), 0, "softmax dim option")
  check(F.leaky_relu(x, 0.2), F.leaky_relu(x, {negative_slope = 0.2}), 0, "leaky_relu slope")
  check(F.dropout(x, 0.5, false), x, 0, "dropout positional training = false")
end)

-- ---- autograd behaviour ----

if has_autograd then
  T.test("gradients flow through a chain of nn ops", function()
    vtl.seed(9)
    local x = randn64(4, 3, 2, 2):requires_grad_()
    local w, b = randn64(3):requires_grad_(), randn64(3):requires_grad_()
    local t = vtl.tensor({1, 3, 2, 3})
    local function loss()
      local h = F.relu(F.batch_norm(x, nil, nil, w, b, {training = true}))
      return F.cross_entropy(h:mean({3, 4}), t, {label_smoothing = 0.1})
    end
    loss():backward()
    local gx, gw = x.grad:clone(), w.grad:clone()
    -- numerical check of the composed gradient for a few coordinates
    for _, k in ipairs({1, 7, 20, 33}) do
      local flat = x:detach():view(-1)
      local orig = flat[k]:item()
      flat[k] = orig + EPS
      local up = vtl.no_grad(function() return loss():item() end)
      flat[k] = orig - EPS
      local down = vtl.no_grad(function() return loss():item() end)
      flat[k] = orig
      local num = (up - down) / (2 * EPS)
      T.truthy(math.abs(gx:view(-1)[k]:item() - num) < 1e-6, "d/dx[" .. k .. "]: " .. gx:view(-1)[k]:item() .. " vs " .. num)
    end
    T.truthy(gw:abs():sum():item() > 0, "weight gradient is non-zero")
  end)

  T.test("no_grad records nothing; running statistics are not differentiable inputs", function()
    local x = vtl.randn({4, 3}):requires_grad_()
    local y = vtl.no_grad(function() return F.gelu(x) end)
    T.eq(y.requires_grad, false, "requires_grad under no_grad")
    local rm, rv = vtl.zeros({3}), vtl.ones({3})
    local z = F.batch_norm(x, rm, rv, nil, nil, {training = true})
    T.truthy(z.requires_grad, "batch_norm output requires grad")
    T.truthy(rm:abs():sum():item() > 0, "running_mean updated")
  end)

  T.test("softmax / sigmoid saving their output survive repeated use", function()
    local x = vtl.randn({3, 4}):requires_grad_()
    local y = F.softmax(x, 2)
    local s = (y * y):sum()
    s:backward()
    local g = x.grad:clone()
    local y64 = y:detach():double()
    local gy = 2 * y64
    local want = y64 * (gy - (gy * y64):sum(2, true))
    check(g:double(), want, 1e-5, "softmax autograd")
  end)
end

-- ---- dropout ----

T.test("dropout: drop rate, scaling, eval and p = 0 identity, p = 1 zeros", function()
  vtl.seed(21)
  local x = vtl.ones({200, 500})
  for _, p in ipairs({0.1, 0.5, 0.8}) do
    local y, mask = F.dropout(x, {p = p})
    local frac = 1 - mask:float():mean():item()
    -- 100000 Bernoulli draws: the standard deviation of the rate is below 0.0016
    T.truthy(math.abs(frac - p) < 0.01, string.format("p = %g: dropped fraction %.4f", p, frac))
    local kept = y:masked_select(mask)
    T.truthy((kept - 1 / (1 - p)):abs():max():item() < 1e-6, "kept values scaled by 1/(1-p)")
    T.eq(y:masked_select(mask:logical_not()):abs():sum():item(), 0, "dropped values are zero")
  end
  local z = vtl.randn({3, 4})
  check(F.dropout(z, {p = 0.5, training = false}), z, 0, "eval is the identity")
  check(F.dropout(z, {p = 0}), z, 0, "p = 0 is the identity")
  check(F.dropout(z, 0.3, false), z, 0, "positional (x, p, training)")
  local y1 = F.dropout(z, {p = 1})
  T.eq(y1:abs():sum():item(), 0, "p = 1 drops everything")
end)

T.test("dropout: reproducible from the seed, different on the next draw, generator option", function()
  local x = vtl.randn({64, 64})
  vtl.seed(5)
  local a, ma = F.dropout(x)
  local b, mb = F.dropout(x)
  vtl.seed(5)
  local a2 = F.dropout(x)
  check(a2, a, 0, "same seed, same output")
  T.truthy(ma:ne(mb):any():item(), "the default generator advances between calls")
  local g1, g2 = vtl.Generator(77), vtl.Generator(77)
  local c1 = F.dropout(x, {p = 0.3, generator = g1})
  local before = vtl.rand({4})
  local c2 = F.dropout(x, {p = 0.3, generator = g2})
  check(c2, c1, 0, "equal generators give equal masks, whatever the default generator did")
  T.truthy(g1:get_state().offset > 0, "the generator's offset advanced")
  T.truthy(before:numel() == 4, "")
end)

T.test("dropout: the mask does not depend on the thread count; f64 and strided inputs", function()
  local nt = vtl.get_num_threads()
  local x = vtl.randn({64, 300})
  local g1 = vtl.Generator(5)
  vtl.set_num_threads(1)
  local a, ma = F.dropout(x, {p = 0.3, generator = g1})
  vtl.set_num_threads(math.max(2, nt))
  local b, mb = F.dropout(x, {p = 0.3, generator = vtl.Generator(5)})
  vtl.set_num_threads(nt)
  check(b, a, 0, "output with 1 and several threads")
  T.eq(ma:ne(mb):any():item(), false, "masks with 1 and several threads")
  local xd = vtl.randn({40, 30}, {dtype = "f64"}):t()
  local y, m = F.dropout(xd, {p = 0.25})
  T.eq(y.dtype, "f64", "dtype kept")
  check(y, xd * m:double() / 0.75, 1e-12, "f64, transposed input")
end)

T.test("relu, sigmoid and tanh of integer and half tensors follow the tensor methods", function()
  local i = vtl.tensor({-2, 0, 3})
  check(F.relu(i), vtl.tensor({0, 0, 3}), 0, "relu of i64 stays i64")
  check(F.sigmoid(i), i:sigmoid(), 0, "sigmoid of i64")
  local h = vtl.tensor({-1.5, 0.5}, {dtype = "bf16"})
  check(F.tanh(h), h:tanh(), 0, "tanh of bf16")
end)

T.test("extreme values: saturating activations, -inf in softmax rows (attention masks)", function()
  local x = vtl.tensor({-100, -20, 0, 20, 100}, {dtype = "f32"})
  check(F.sigmoid(x), vtl.tensor({0, 2.0611536e-09, 0.5, 1, 1}), 1e-6, "sigmoid")
  check(F.tanh(x), vtl.tensor({-1, -1, 0, 1, 1}, {dtype = "f32"}), 1e-7, "tanh")
  check(F.silu(x), vtl.tensor({0, -4.1223072e-08, 0, 20, 100}, {dtype = "f32"}), 1e-6, "silu")
  check(F.gelu(x), vtl.tensor({0, 0, 0, 20, 100}, {dtype = "f32"}), 1e-6, "gelu")
  check(F.softplus(x), vtl.tensor({0, 2.0611537e-09, 0.6931472, 20, 100}), 1e-6, "softplus")
  local inf = math.huge
  local s = vtl.tensor({{0, -inf, 1, -inf}, {-inf, 2, 2, -inf}})
  local e = math.exp(1)
  check(F.softmax(s, 2), vtl.tensor({{1 / (1 + e), 0, e / (1 + e), 0}, {0, 0.5, 0.5, 0}}), 1e-6, "softmax with -inf")
  local ls = F.log_softmax(s, 2):totable()
  T.eq(ls[1][2], -inf, "log_softmax of a masked entry")
  T.truthy(math.abs(ls[2][2] - math.log(0.5)) < 1e-6, "log_softmax of a kept entry")
  local nanrow = F.softmax(vtl.tensor({{0, 0 / 0, 1}}), 2):totable()[1]
  T.truthy(nanrow[1] ~= nanrow[1] and nanrow[3] ~= nanrow[3], "a NaN in a row makes the row NaN, as PyTorch")
  local big = vtl.tensor({{1000, 0, -1000}}, {dtype = "f32"})
  check(F.cross_entropy(big, vtl.tensor({2})), vtl.tensor(1000.0), 1e-6, "cross_entropy with large logits")
end)

T.test("dropout: backward multiplies by the same mask", function()
  local x = vtl.randn({30, 40})
  local g = vtl.randn({30, 40})
  local y, mask = F.dropout(x, {p = 0.4})
  local want = g * mask:float() / 0.6
  check(F._dropout_backward(g, mask, 0.4), want, 1e-6, "raw backward")
  if has_autograd then
    local xr = x:clone():requires_grad_()
    vtl.seed(99)
    local y2, m2 = F.dropout(xr, {p = 0.4})
    y2:backward(g)
    check(xr.grad, g * m2:float() / 0.6, 1e-6, "autograd backward uses the forward's mask")
    check(y2:detach(), xr:detach() * m2:float() / 0.6, 1e-6, "forward used that mask")
  end
end)

-- ---- bad input: a Lua error naming the function and the problem, never a crash ----

local function bad(name, fn, pattern)
  T.test("bad input: " .. name, function() T.raises(fn, pattern) end)
end

local x4 = vtl.randn({2, 3, 4, 4})
bad("batch_norm weight channels", function() F.batch_norm(x4, nil, nil, vtl.ones({4}), nil, {training = true}) end,
    "batch_norm: weight of shape {4} does not match 3 channels")
bad("batch_norm running_var channels",
    function() F.batch_norm(x4, vtl.zeros({3}), vtl.ones({5})) end, "batch_norm: running_var of shape {5} does not match 3 channels")
bad("batch_norm eval without running stats", function() F.batch_norm(x4, nil, nil) end,
    "batch_norm: running_mean and running_var are required in evaluation mode")
bad("batch_norm running stats given alone", function() F.batch_norm(x4, vtl.zeros({3}), nil) end,
    "batch_norm: running_mean and running_var must be given together")
bad("batch_norm one value per channel", function() F.batch_norm(vtl.randn({1, 3}), nil, nil, nil, nil, {training = true}) end,
    "batch_norm: expected more than 1 value per channel when training, got input of shape {1,3}")
bad("batch_norm 1-D input", function() F.batch_norm(vtl.randn({5}), nil, nil, nil, nil, {training = true}) end,
    "batch_norm: input must have at least 2 dims (N, C, ...), got shape {5}")
bad("batch_norm act name", function() F.batch_norm(x4, nil, nil, nil, nil, {training = true, act = "gelu"}) end,
    "batch_norm: act must be 'relu' or 'relu6', got 'gelu'")
bad("batch_norm act type", function() F.batch_norm(x4, nil, nil, nil, nil, {training = true, act = 1}) end,
    "batch_norm: act must be 'relu' or 'relu6', got number")
bad("batch_norm add shape", function() F.batch_norm(x4, nil, nil, nil, nil, {training = true, add = vtl.randn({2, 3, 4, 1})}) end,
    "batch_norm: the added tensor of shape {2,3,4,1} does not match the input of shape {2,3,4,4}")
bad("batch_norm add dtype", function() F.batch_norm(x4, nil, nil, nil, nil, {training = true, add = x4:double()}) end,
    "batch_norm: the added tensor must be f32 like the input, got f64")
bad("batch_norm add not a tensor", function() F.batch_norm(x4, nil, nil, nil, nil, {training = true, add = 2}) end,
    "batch_norm: option 'add' must be a vtl.Tensor, got number")
bad("batch_norm dtype mix", function() F.batch_norm(x4, nil, nil, vtl.ones({3}, {dtype = "f64"}), nil, {training = true}) end,
    "batch_norm: weight must be f32 like the input, got f64")
bad("batch_norm integer input", function() F.batch_norm(vtl.ones({2, 3}, {dtype = "i64"}), nil, nil, nil, nil, {training = true}) end,
    "batch_norm: input must be f32 or f64, got i64")
bad("batch_norm option typo", function() F.batch_norm(x4, nil, nil, nil, nil, {trainig = true}) end,
    "batch_norm: unknown option 'trainig'")
bad("batch_norm option type", function() F.batch_norm(x4, nil, nil, nil, nil, {training = "yes"}) end,
    "batch_norm: option 'training' must be a boolean, got string")
bad("batch_norm not a tensor", function() F.batch_norm("x") end, "vtl.Tensor expected")
bad("_batch_norm_backward gout shape", function() F._batch_norm_backward(vtl.randn({2, 3}), x4, nil, nil, nil, {training = true}) end,
    "batch_norm_backward: gout of shape {2,3} does not match input of shape {2,3,4,4}")
bad("layer_norm shape", function() F.layer_norm(vtl.randn({2, 3, 5}), {4}) end,
    "layer_norm: normalized_shape {4} does not match the last dims of input of shape {2,3,5}")
bad("layer_norm weight shape", function() F.layer_norm(vtl.randn({2, 5}), 5, vtl.ones({4})) end,
    "layer_norm: weight of shape {4} does not match normalized_shape {5}")
bad("layer_norm normalized_shape type", function() F.layer_norm(vtl.randn({2, 5}), "5") end,
    "layer_norm: normalized_shape must be an integer or a table of integers, got string")
bad("group_norm divisibility", function() F.group_norm(vtl.randn({2, 6, 3}), 4) end,
    "group_norm: num_channels 6 of input of shape {2,6,3} is not divisible by num_groups 4")
bad("group_norm groups", function() F.group_norm(vtl.randn({2, 6, 3}), 0) end, "group_norm: num_groups must be positive, got 0")
bad("group_norm bias channels", function() F.group_norm(vtl.randn({2, 6, 3}), 3, nil, vtl.ones({3})) end,
    "group_norm: bias of shape {3} does not match 6 channels")
bad("gelu approximate", function() F.gelu(vtl.randn({3}), {approximate = "fast"}) end,
    "gelu: approximate must be 'none' or 'tanh', got fast")
bad("gelu integer input", function() F.gelu(vtl.ones({3}, {dtype = "i64"})) end, "gelu: input must be f32 or f64, got i64")
bad("leaky_relu option typo", function() F.leaky_relu(vtl.randn({3}), {slope = 0.1}) end,
    "leaky_relu: unknown option 'slope' (valid: negative_slope, inplace)")
bad("softplus beta 0", function() F.softplus(vtl.randn({3}), {beta = 0}) end, "softplus: beta must not be 0")
bad("_silu_backward shape", function() F._silu_backward(vtl.randn({3}), vtl.randn({4})) end,
    "silu_backward: gout of shape {3} does not match input of shape {4}")
bad("softmax dim range", function() F.softmax(vtl.randn({2, 3}), 3) end,
    "softmax: dim 3 out of range for a 2-D tensor (valid: 1..2 or -2..-1)")
bad("softmax missing dim", function() F.log_softmax(vtl.randn({2, 3})) end, "log_softmax: dim is required")
bad("cross_entropy batch", function() F.cross_entropy(vtl.randn({8, 10}), vtl.tensor({1, 2, 3, 4})) end,
    "cross_entropy: target of shape {4} does not match input batch 8")
bad("cross_entropy class range", function() F.cross_entropy(vtl.randn({2, 10}), vtl.tensor({11, 2})) end,
    "cross_entropy: target 11 out of range for 10 classes")
bad("cross_entropy class 0 (1-based targets)", function() F.cross_entropy(vtl.randn({2, 10}), vtl.tensor({0, 2})) end,
    "cross_entropy: target 0 out of range for 10 classes (valid: 1..10, or ignore_index -100)")
bad("cross_entropy spatial target", function() F.cross_entropy(vtl.randn({2, 3, 4, 4}), vtl.ones({2, 4, 5}, {dtype = "i64"})) end,
    "cross_entropy: target of shape {2,4,5} does not match input of shape {2,3,4,4} (expected target shape {2,4,4})")
bad("cross_entropy probability shape", function() F.cross_entropy(vtl.randn({2, 3}), vtl.rand({2, 4})) end,
    "cross_entropy: probability target of shape {2,4} does not match input of shape {2,3}")
bad("cross_entropy weight", function() F.cross_entropy(vtl.randn({2, 3}), vtl.tensor({1, 2}), {weight = vtl.ones({4})}) end,
    "cross_entropy: weight of shape {4} does not match 3 classes")
bad("cross_entropy reduction", function() F.cross_entropy(vtl.randn({2, 3}), vtl.tensor({1, 2}), {reduction = "avg"}) end,
    "cross_entropy: reduction must be 'mean', 'sum' or 'none', got 'avg'")
bad("cross_entropy label_smoothing", function() F.cross_entropy(vtl.randn({2, 3}), vtl.tensor({1, 2}), {label_smoothing = 1.5}) end,
    "cross_entropy: label_smoothing must be in [0, 1], got 1.5")
bad("cross_entropy bool target", function() F.cross_entropy(vtl.randn({2, 3}), vtl.tensor({true, false})) end,
    "cross_entropy: target must hold class indices (i64) or probabilities (float), got bool")
bad("cross_entropy weight option type", function() F.cross_entropy(vtl.randn({2, 3}), vtl.tensor({1, 2}), {weight = {1, 2, 3}}) end,
    "cross_entropy: option 'weight' must be a vtl.Tensor, got table")
bad("nll_loss float target", function() F.nll_loss(vtl.randn({2, 3}), vtl.rand({2, 3})) end,
    "nll_loss: target must hold class indices (an integer tensor), got f32")
bad("nll_loss class range", function() F.nll_loss(vtl.randn({2, 3}), vtl.tensor({1, 4})) end,
    "nll_loss: target 4 out of range for 3 classes")
bad("bce shapes", function() F.binary_cross_entropy_with_logits(vtl.randn({4, 3}), vtl.rand({4})) end,
    "binary_cross_entropy_with_logits: target of shape {4} does not match input of shape {4,3}")
bad("bce pos_weight", function() F.binary_cross_entropy_with_logits(vtl.randn({4, 3}), vtl.rand({4, 3}), {pos_weight = vtl.ones({4})}) end,
    "binary_cross_entropy_with_logits: pos_weight of shape {4} does not broadcast to input of shape {4,3}")
bad("mse_loss shapes", function() F.mse_loss(vtl.randn({4, 1}), vtl.randn({4})) end,
    "mse_loss: target of shape {4} does not match input of shape {4,1}")
bad("l1_loss dtypes", function() F.l1_loss(vtl.randn({4}), vtl.randn({4}, {dtype = "f64"})) end,
    "l1_loss: target must be f32 like the input, got f64")
bad("smooth_l1_loss beta", function() F.smooth_l1_loss(vtl.randn({4}), vtl.randn({4}), {beta = -1}) end,
    "smooth_l1_loss: beta must be non-negative, got -1")
bad("mse_loss batchmean", function() F.mse_loss(vtl.randn({4}), vtl.randn({4}), {reduction = "batchmean"}) end,
    "mse_loss: reduction must be 'mean', 'sum' or 'none', got 'batchmean'")
bad("kl_div reduction", function() F.kl_div(vtl.randn({4}), vtl.randn({4}), {reduction = 1}) end,
    "kl_div: reduction must be 'mean', 'sum', 'batchmean' or 'none', got number")
bad("dropout p", function() F.dropout(vtl.randn({4}), {p = 1.5}) end, "dropout: p must be in [0, 1]")
bad("dropout generator", function() F.dropout(vtl.randn({4}), {generator = 3}) end,
    "dropout: option 'generator' must be a vtl.Generator, got number")
bad("_dropout_backward mask", function() F._dropout_backward(vtl.randn({4}), vtl.randn({4}), 0.5) end,
    "dropout_backward: mask must be a bool tensor, got f32")
bad("freed tensor", function()
  local t = vtl.randn({3})
  getmetatable(t).__close(t)
  F.relu(t)
end, "freed")

-- The CUDA backend's batch-norm and layer-norm kernels (kernels/cuda/norm_kernels.cuh) run on the
-- host by tests/gpu/norm_emu.cpp: layer norm one warp per row against a double reference and the
-- block kernel; batch norm's 16-byte steps give the bits of the one-element ones, its fused
-- residual sum and relu/relu6 clamp reach both sides of the clamp, and its gradient sums masked
-- by the clamped output write the masked gradient (channels-last and planar).
T.test("GPU batch-norm and layer-norm kernels, run on the host, pass their checks", function()
  T.emulation_passes("norm_emu", "all checks passed", 72)
end)

-- The CUDA backend's activation kernels (kernels/cuda/act_kernels.cuh) on half data, run on the
-- host by tests/gpu/act_emu.cpp: 16-byte groups, tails, misaligned pointers and in place, every
-- activation forward and backward, the f32 expression rounded once.
T.test("GPU activation kernels on half data, run on the host, give the f32 expression rounded once", function()
  T.emulation_passes("act_emu", "all checks passed", 120)
end)
