-- Convolution and pooling: forward, raw backward and autograd gradients against PyTorch
-- (tests/ref/gen_nn_conv.py writes $VTL_FIXTURES/nn_conv_ref.lua), finite-difference checks
-- of the backward functions in f64, consistency of the f32 (oneDNN) and f64 (im2col + GEMM)
-- paths on network-sized layers, and bad input.
--
-- Tolerances: |got - want| <= tol * (1 + |want|); f32 1e-4 for convolutions (sums of up to a
-- few hundred products), 1e-5 for pooling, f64 1e-10 / 1e-12; finite differences 1e-6.
local T = require "testlib"
local vtl = require "vtl"
local R = require "reflib"
local F = vtl.nn.functional

local check, shape_str = R.check, R.shape_str

-- ---- PyTorch reference cases ----

local function run_expr(c, src, args) return R.run(c.name, src, "F", F, args) end

local function run_case(c)
  local ins = R.tensors(c.inputs)
  -- forward
  check(run_expr(c, c.call, ins), c.want.out, c.tol, c.name .. " output")
  if c.icall then
    local y, idx = run_expr(c, c.icall, ins)
    check(y, c.want.out, c.tol, c.name .. " output (with indices)")
    check(idx, c.want.indices, 0, c.name .. " indices")
  end
  -- raw backward functions, and autograd: out:backward(gout)
  R.check_grads(c, F)
end

R.cases("nn_conv_ref", 80, run_case)

-- ---- finite differences (f64) ----

local EPS, FD_TOL = 1e-6, 1e-6

-- d/dt of sum(f() * gout) for every element of t, by central differences.
local function numeric_grad(f, t, gout) return R.numeric_grad(f, t, gout, EPS) end

local function randn64(...) return vtl.randn({...}, {dtype = "f64"}) end

local function conv_fd(name, xs, ws, with_bias, opts)
  T.test("finite differences: conv2d " .. name, function()
    vtl.seed(7)
    local x, w = randn64(table.unpack(xs)), randn64(table.unpack(ws))
    local b = with_bias and randn64(ws[1]) or nil
    local y = F.conv2d(x, w, b, opts)
    local gout = randn64(table.unpack(y.shape))
    local gx, gw, gb = F._conv2d_backward(gout, x, w, opts)
    local f = function() return F.conv2d(x, w, b, opts) end
    check(gx, numeric_grad(f, x, gout), FD_TOL, "grad x")
    check(gw, numeric_grad(f, w, gout), FD_TOL, "grad w")
    if b then check(gb, numeric_grad(f, b, gout), FD_TOL, "grad b") end
  end)
end

conv_fd("stride 2, padding {1,0}", {2, 3, 6, 5}, {4, 3, 3, 2}, true, {stride = 2, padding = {1, 0}})
conv_fd("dilation 2, groups 2", {1, 4, 7, 7}, {4, 2, 3, 3}, true, {padding = 2, dilation = 2, groups = 2})
conv_fd("depthwise", {2, 3, 5, 5}, {3, 1, 3, 3}, false, {padding = 1, groups = 3})
conv_fd("same, even kernel", {1, 2, 5, 6}, {3, 2, 2, 4}, true, {padding = "same"})
conv_fd("pointwise", {2, 4, 3, 3}, {5, 4, 1, 1}, true, {})

local function pool_fd(name, shape, fwd, bwd)
  T.test("finite differences: " .. name, function()
    vtl.seed(11)
    local x = randn64(table.unpack(shape))
    local y = fwd(x)
    local gout = randn64(table.unpack(y.shape))
    check(bwd(gout, x), numeric_grad(function() return fwd(x) end, x, gout), FD_TOL, "grad x")
  end)
end

pool_fd("max_pool2d ceil, padding", {2, 2, 7, 6}, function(x) return F.max_pool2d(x, 3, {stride = 2, padding = 1, ceil_mode = true}) end,
  function(g, x)
    local _, idx = F.max_pool2d(x, 3, {stride = 2, padding = 1, ceil_mode = true, return_indices = true})
    return F._max_pool2d_backward(g, x, idx)
  end)
pool_fd("max_pool2d dilation", {1, 2, 8, 8}, function(x) return F.max_pool2d(x, 2, {stride = 1, dilation = 2}) end,
  function(g, x)
    local _, idx = F.max_pool2d(x, 2, {stride = 1, dilation = 2, return_indices = true})
    return F._max_pool2d_backward(g, x, idx)
  end)
local avg_opts = {stride = 2, padding = 1, ceil_mode = true, count_include_pad = false}
pool_fd("avg_pool2d ceil, exclude padding", {2, 2, 7, 6}, function(x) return F.avg_pool2d(x, 3, avg_opts) end,
  function(g, x) return F._avg_pool2d_backward(g, x, 3, avg_opts) end)
pool_fd("avg_pool2d divisor_override", {1, 2, 6, 6}, function(x) return F.avg_pool2d(x, {2, 3}, {divisor_override = 4}) end,
  function(g, x) return F._avg_pool2d_backward(g, x, {2, 3}, {divisor_override = 4}) end)
pool_fd("adaptive_avg_pool2d", {2, 2, 7, 9}, function(x) return F.adaptive_avg_pool2d(x, {3, 4}) end,
  function(g, x) return F._adaptive_avg_pool2d_backward(g, x) end)
pool_fd("adaptive_avg_pool2d global", {2, 3, 4, 5}, function(x) return F.adaptive_avg_pool2d(x, 1) end,
  function(g, x) return F._adaptive_avg_pool2d_backward(g, x) end)
pool_fd("adaptive_max_pool2d", {2, 2, 7, 9}, function(x) return F.adaptive_max_pool2d(x, {3, 4}) end,
  function(g, x)
    local _, idx = F.adaptive_max_pool2d(x, {3, 4}, {return_indices = true})
    return F._adaptive_max_pool2d_backward(g, x, idx)
  end)

T.test("finite differences: conv -> max_pool -> conv through autograd", function()
  vtl.seed(3)
  local x, w1, w2 = randn64(2, 2, 8, 8), randn64(3, 2, 3, 3), randn64(2, 3, 2, 2)
  local function f() return F.conv2d(F.max_pool2d(F.conv2d(x, w1, nil, {padding = 1}), 2), w2) end
  local gout = randn64(table.unpack(f().shape))
  local nx, nw1, nw2 = numeric_grad(f, x, gout), numeric_grad(f, w1, gout), numeric_grad(f, w2, gout)
  x:requires_grad_(); w1:requires_grad_(); w2:requires_grad_()
  f():backward(gout)
  check(x.grad, nx, FD_TOL, "grad x")
  check(w1.grad, nw1, FD_TOL, "grad w1")
  check(w2.grad, nw2, FD_TOL, "grad w2")
end)

-- ---- f32 (oneDNN) against f64 (im2col + GEMM) on network-sized layers ----

local function conv_consistency(name, xs, ws, opts)
  T.test("f32 matches f64: conv2d " .. name, function()
    vtl.seed(5)
    local x, w, b = randn64(table.unpack(xs)), randn64(table.unpack(ws)), randn64(ws[1])
    local y = F.conv2d(x, w, b, opts)
    local gout = randn64(table.unpack(y.shape))
    local gx, gw, gb = F._conv2d_backward(gout, x, w, opts)
    local y32 = F.conv2d(x:float(), w:float(), b:float(), opts)
    local gx32, gw32, gb32 = F._conv2d_backward(gout:float(), x:float(), w:float(), opts)
    -- sums of up to a few thousand f32 products: compare relative to the result's scale
    local function rel(a, want, what)
      local err = (a:double() - want):abs():max():item()
      local scale = want:abs():max():item()
      T.truthy(err <= 1e-5 * scale, string.format("%s: max error %.3g for values up to %.3g", what, err, scale))
    end
    rel(y32, y, "output")
    rel(gx32, gx, "grad x")
    rel(gw32, gw, "grad w")
    rel(gb32, gb, "grad b")
  end)
end

conv_consistency("64->64 3x3 (ResNet layer1)", {4, 64, 16, 16}, {64, 64, 3, 3}, {padding = 1})
conv_consistency("3->64 7x7 s2 (ResNet stem)", {2, 3, 32, 32}, {64, 3, 7, 7}, {stride = 2, padding = 3})
conv_consistency("64->128 3x3 s2", {2, 64, 8, 8}, {128, 64, 3, 3}, {stride = 2, padding = 1})
conv_consistency("64->128 1x1 s2 (downsample)", {2, 64, 8, 8}, {128, 64, 1, 1}, {stride = 2})
conv_consistency("depthwise 32 3x3", {4, 32, 16, 16}, {32, 1, 3, 3}, {padding = 1, groups = 32})
conv_consistency("depthwise 144 3x3 s2", {2, 144, 8, 8}, {144, 1, 3, 3}, {stride = 2, padding = 1, groups = 144})
conv_consistency("24 channels (not a multiple of 16)", {3, 24, 9, 9}, {40, 24, 3, 3}, {padding = 1})
conv_consistency("groups 4 of 24", {2, 96, 8, 8}, {48, 24, 3, 3}, {padding = 1, groups = 4})
-- f64 column buffers over 8 MB: output rows in several bands
conv_consistency("banded im2col, 3 bands", {1, 64, 64, 64}, {8, 64, 3, 3}, {padding = 1})
conv_consistency("banded im2col, stride, dilation", {2, 64, 66, 64}, {8, 64, 3, 3}, {stride = {1, 2}, padding = {2, 1}, dilation = 2})

-- ---- behaviour ----

T.test("conv2d: the primitive cache survives eviction and reuse", function()
  vtl.seed(9)
  local w = vtl.randn(4, 3, 3, 3)
  local x0 = vtl.randn(1, 3, 5, 5)
  local first = F.conv2d(x0, w)
  for s = 6, 6 + 260 do F.conv2d(vtl.randn(1, 3, s, 5), w) end -- more shapes than the cache holds
  check(F.conv2d(x0, w), first, 0, "same input, same output")
  check(F.conv2d(x0, w), F.conv2d(x0:double(), w:double()):float(), 1e-5, "against f64")
end)

for _, dt in ipairs({"f64", "f32"}) do
  T.test("conv2d: results do not depend on the thread count, " .. dt, function()
    local n = vtl.get_num_threads()
    local tol = dt == "f64" and 1e-12 or 1e-5
    vtl.seed(2)
    local x, w = vtl.randn(4, 32, 10, 10, {dtype = dt}), vtl.randn(32, 32, 3, 3, {dtype = dt})
    local y = F.conv2d(x, w, nil, {padding = 1})
    local gout = vtl.randn(y.shape, {dtype = dt})
    local gx, gw = F._conv2d_backward(gout, x, w, {padding = 1})
    vtl.set_num_threads(n == 1 and 2 or 1)
    local ok, err = pcall(function()
      check(F.conv2d(x, w, nil, {padding = 1}), y, tol, "output")
      local gx1, gw1 = F._conv2d_backward(gout, x, w, {padding = 1})
      check(gx1, gx, tol, "grad x")
      check(gw1, gw, tol, "grad w")
    end)
    vtl.set_num_threads(n)
    if not ok then error(err, 0) end
  end)
end

T.test("conv2d: empty batch", function()
  local y = F.conv2d(vtl.zeros(0, 3, 5, 5), vtl.ones(2, 3, 3, 3), vtl.ones(2))
  T.eq(shape_str(y.shape), "{0,2,3,3}")
  local gx, gw, gb = F._conv2d_backward(vtl.zeros(0, 2, 3, 3), vtl.zeros(0, 3, 5, 5), vtl.ones(2, 3, 3, 3))
  T.eq(shape_str(gx.shape), "{0,3,5,5}")
  check(gw, vtl.zeros(2, 3, 3, 3), 0, "grad w")
  check(gb, vtl.zeros(2), 0, "grad b")
end)

T.test("conv2d: gradient of sum (expanded upstream gradient) and partial requires_grad", function()
  vtl.seed(4)
  local x, w = vtl.randn(2, 3, 6, 6), vtl.randn(4, 3, 3, 3)
  w:requires_grad_()
  F.conv2d(x, w):sum():backward()
  local _, gw = F._conv2d_backward(vtl.ones(2, 4, 4, 4), x, w:detach())
  check(w.grad, gw, 1e-6, "grad w")
  T.eq(x.grad, nil, "x does not require grad")
end)

T.test("no_grad: conv and pooling record nothing", function()
  local x, w = vtl.randn(1, 2, 5, 5), vtl.randn(2, 2, 3, 3)
  x:requires_grad_(); w:requires_grad_()
  local y = vtl.no_grad(function() return F.max_pool2d(F.conv2d(x, w), 2) end)
  T.eq(y.requires_grad, false)
  T.eq(y.grad_fn, nil)
  T.truthy(F.conv2d(x, w).requires_grad, "conv2d output requires grad with grad mode on")
end)

T.test("max_pool2d: NaN wins and its index is returned", function()
  local x = vtl.tensor({{{{1, 5, 2, 0}, {3, 0 / 0, 4, 9}}}})
  local y, idx = F.max_pool2d(x, 2, {return_indices = true})
  local yt, it = y:totable()[1][1][1], idx:totable()[1][1][1]
  T.truthy(yt[1] ~= yt[1], "first window is NaN")
  T.eq(it[1], 6)
  T.eq(yt[2], 9)
  T.eq(it[2], 8)
  T.eq(idx.dtype, "i64")
end)

T.test("max_pool2d and adaptive pooling keep non-contiguous inputs right", function()
  vtl.seed(6)
  local x = vtl.randn(2, 3, 8, 6)
  local xt = x:transpose(3, 4) -- (2,3,6,8), not contiguous
  check(F.max_pool2d(xt, 2), F.max_pool2d(xt:contiguous(), 2), 0, "max")
  check(F.avg_pool2d(xt, 3, {stride = 2}), F.avg_pool2d(xt:contiguous(), 3, {stride = 2}), 0, "avg")
  check(F.adaptive_avg_pool2d(xt, 1), xt:mean({3, 4}, true), 1e-6, "global average = mean")
  check(F.adaptive_max_pool2d(xt, {2, 3}), F.adaptive_max_pool2d(xt:contiguous(), {2, 3}), 0, "adaptive max")
end)

T.test("max_pool2d: rows wider than the row buffer take the general loop, same results", function()
  vtl.seed(8)
  local x = vtl.randn(1, 2, 1, 4200)
  local y, idx = F.max_pool2d(x, {1, 2}, {return_indices = true}) -- 2100 outputs per row
  local y1, i1 = F.max_pool2d(x[{{}, {}, {}, {1, 2100}}], {1, 2}, {return_indices = true})
  local y2, i2 = F.max_pool2d(x[{{}, {}, {}, {2101, 4200}}], {1, 2}, {return_indices = true})
  check(y, vtl.cat({y1, y2}, 4), 0, "values")
  check(idx, vtl.cat({i1, i2 + 2100}, 4), 0, "indices")
end)

-- ---- bad input: each raises an error naming the function and the problem ----

local function bad(name, fn, pattern) T.test("bad input: " .. name, function() T.raises(fn, pattern) end) end
local x4, w4 = vtl.randn(2, 3, 8, 8), vtl.randn(4, 3, 3, 3)

bad("conv2d 3-D input", function() F.conv2d(vtl.randn(3, 224, 224), w4) end,
  "conv2d: input must be 4-D (N,C,H,W), got shape {3,224,224}")
bad("conv2d 2-D weight", function() F.conv2d(x4, vtl.randn(4, 27)) end,
  "conv2d: weight must be 4-D (K,C/groups,R,S), got shape {4,27}")
bad("conv2d channel mismatch", function() F.conv2d(vtl.randn(2, 4, 8, 8), w4) end,
  "conv2d: expected input with 3 channels, got 4")
bad("conv2d groups not dividing the input channels", function() F.conv2d(vtl.randn(1, 6, 8, 8), vtl.randn(4, 1, 3, 3), nil, {groups = 4}) end,
  "conv2d: groups=4 must divide the input channels, got 6 channels")
bad("conv2d groups not dividing the output channels", function() F.conv2d(vtl.randn(1, 6, 8, 8), vtl.randn(4, 2, 3, 3), nil, {groups = 3}) end,
  "conv2d: groups=3 must divide the output channels")
bad("conv2d kernel larger than the padded input", function() F.conv2d(vtl.randn(1, 3, 4, 4), vtl.randn(2, 3, 7, 7)) end,
  "conv2d: kernel size 7x7 (dilated: 7x7) is larger than the padded input 4x4")
bad("conv2d dilated kernel larger than the input", function() F.conv2d(vtl.randn(1, 3, 6, 6), w4, nil, {dilation = 3}) end,
  "is larger than the padded input 6x6")
bad("conv2d input without channels", function() F.conv2d(vtl.zeros(1, 0, 4, 4), vtl.zeros(2, 0, 3, 3)) end,
  "conv2d: input must have non-zero channels, height and width, got shape {1,0,4,4}")
bad("conv2d zero stride", function() F.conv2d(x4, w4, nil, {stride = 0}) end, "conv2d: stride must be positive, got {0,0}")
bad("conv2d negative stride", function() F.conv2d(x4, w4, nil, {stride = {1, -2}}) end, "conv2d: stride must be positive, got {1,-2}")
bad("conv2d negative padding", function() F.conv2d(x4, w4, nil, {padding = -1}) end, "conv2d: padding must be non-negative")
bad("conv2d zero dilation", function() F.conv2d(x4, w4, nil, {dilation = 0}) end, "conv2d: dilation must be positive")
bad("conv2d zero groups", function() F.conv2d(x4, w4, nil, {groups = 0}) end, "conv2d: groups must be positive, got 0")
bad("conv2d dtype mismatch", function() F.conv2d(x4, w4:double()) end,
  "conv2d: input and weight must have the same dtype, got f32 and f64")
bad("conv2d bias dtype mismatch", function() F.conv2d(x4, w4, vtl.zeros(4, {dtype = "f64"})) end,
  "conv2d: input and bias must have the same dtype, got f32 and f64")
bad("conv2d integer input", function() F.conv2d(x4:long(), w4:long()) end, "conv2d: input dtype i64 not supported (expected f32 or f64)")
bad("conv2d bias shape", function() F.conv2d(x4, w4, vtl.zeros(3)) end,
  "conv2d: bias must be 1-D with 4 elements (one per output channel), got shape {3}")
bad("conv2d same padding with stride", function() F.conv2d(x4, w4, nil, {padding = "same", stride = 2}) end,
  "conv2d: padding=\"same\" is not supported for strided convolutions")
bad("conv2d unknown padding mode", function() F.conv2d(x4, w4, nil, {padding = "full"}) end,
  "conv2d: padding must be a number, a table {h, w}, \"same\" or \"valid\", got \"full\"")
bad("conv2d stride of three numbers", function() F.conv2d(x4, w4, nil, {stride = {1, 2, 3}}) end,
  "conv2d: stride must be a number or a table of 2 numbers {h, w}, got a table of 3")
bad("conv2d fractional stride", function() F.conv2d(x4, w4, nil, {stride = 1.5}) end, "conv2d: stride must be an integer, got 1.5")
bad("conv2d weight not a tensor", function() F.conv2d(x4, "w") end, "vtl.Tensor expected")
bad("conv2d freed input", function() local t = vtl.randn(1, 3, 5, 5); getmetatable(t).__close(t); F.conv2d(t, w4) end, "tensor has been freed")
bad("conv2d_backward output gradient shape", function() F._conv2d_backward(vtl.randn(2, 4, 5, 5), x4, w4) end,
  "conv2d_backward: output gradient must have the output's shape {2,4,6,6}, got {2,4,5,5}")
bad("max_pool2d 2-D input", function() F.max_pool2d(vtl.randn(8, 8), 2) end,
  "max_pool2d: input must be 3-D (C,H,W) or 4-D (N,C,H,W), got shape {8,8}")
bad("max_pool2d missing kernel", function() F.max_pool2d(x4) end, "max_pool2d: kernel_size is required")
bad("max_pool2d zero kernel", function() F.max_pool2d(x4, 0) end, "max_pool2d: kernel_size must be positive, got {0,0}")
bad("max_pool2d zero stride", function() F.max_pool2d(x4, 2, {stride = 0}) end, "max_pool2d: stride must be positive, got {0,0}")
bad("max_pool2d padding over half the kernel", function() F.max_pool2d(x4, 3, {padding = 2}) end,
  "max_pool2d: padding {2,2} must be at most half the kernel size {3,3}")
bad("max_pool2d kernel larger than the input", function() F.max_pool2d(vtl.randn(1, 1, 2, 2), 3) end,
  "max_pool2d: input of shape {1,1,2,2} is too small for kernel {3,3}")
bad("max_pool2d integer input", function() F.max_pool2d(x4:long(), 2) end, "max_pool2d: input dtype i64 not supported")
bad("max_pool2d return_indices not a boolean", function() F.max_pool2d(x4, 2, {return_indices = 1}) end,
  "max_pool2d: return_indices must be a boolean, got number")
bad("avg_pool2d zero divisor", function() F.avg_pool2d(x4, 2, {divisor_override = 0}) end,
  "avg_pool2d: divisor_override must be positive, got 0")
bad("avg_pool2d empty plane", function() F.avg_pool2d(vtl.zeros(1, 2, 0, 4), 1) end,
  "avg_pool2d: input must have non-zero channels, height and width, got shape {1,2,0,4}")
bad("adaptive_avg_pool2d negative size", function() F.adaptive_avg_pool2d(x4, {2, -1}) end,
  "adaptive_avg_pool2d: output size must be non-negative, got {2,-1}")
bad("adaptive_avg_pool2d missing size", function() F.adaptive_avg_pool2d(x4) end, "adaptive_avg_pool2d: output_size is required")
bad("adaptive_max_pool2d 5-D input", function() F.adaptive_max_pool2d(vtl.randn(1, 1, 1, 4, 4), 2) end,
  "adaptive_max_pool2d: input must be 3-D (C,H,W) or 4-D (N,C,H,W), got shape {1,1,1,4,4}")
bad("max_pool2d_backward index outside the plane", function()
  F._max_pool2d_backward(vtl.ones(1, 1, 1, 1), vtl.ones(1, 1, 2, 2), vtl.tensor({{{{5}}}}))
end, "max_pool2d_backward: index 4 at position 0 is outside the 2x2 input plane")
bad("max_pool2d_backward indices of the wrong shape", function()
  F._max_pool2d_backward(vtl.ones(1, 1, 2, 2), vtl.ones(1, 1, 4, 4), vtl.tensor({{{{1, 2}}}}))
end, "max_pool2d_backward: indices of shape {1,1,1,2} must have the output gradient's shape {1,1,2,2}")
bad("avg_pool2d_backward output gradient shape", function() F._avg_pool2d_backward(vtl.ones(1, 1, 3, 3), vtl.ones(1, 1, 4, 4), 2) end,
  "avg_pool2d_backward: output gradient must have shape {1,1,2,2}, got {1,1,3,3}")

T.test("bad input leaves the process usable", function()
  pcall(F.conv2d, x4, vtl.randn(4, 5, 3, 3))
  check(F.conv2d(x4, w4, nil, {padding = 1}), F.conv2d(x4:double(), w4:double(), nil, {padding = 1}):float(), 1e-5, "conv after an error")
end)
