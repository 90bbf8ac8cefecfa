-- Inference fast paths: convolutions with fused post-operations (residual sum, activation),
-- packed weights and channels-last outputs; channels-last pooling; vtl.models.fuse_for_inference
-- over the zoo. Each fused result is checked against the same computation done op by op.
local T = require "testlib"
local vtl = require "vtl"
local models = require "vtl.models"
local F = vtl.nn.functional

local ACTS = {"relu", "relu6", "leaky_relu", "gelu", "gelu_tanh", "silu", "hardswish", "hardsigmoid", "sigmoid",
              "tanh", "elu", "softplus"}

-- F[act](y) with the activation's defaults
local function act_ref(act, y)
  if act == "gelu_tanh" then return F.gelu(y, {approximate = "tanh"}) end
  return F[act](y)
end

local function is_channels_last(t)
  local N, C, H, W = t.shape[1], t.shape[2], t.shape[3], t.shape[4]
  return t:stride(2) == 1 and t:stride(4) == C and t:stride(3) == W * C and t:stride(1) == H * W * C
end

T.test("conv2d post-operations: act(conv + b + add) for every activation, f32 and f64", function()
  vtl.seed(1)
  for _, dt in ipairs({"f32", "f64"}) do
    local x = vtl.randn(2, 8, 7, 7, {dtype = dt})
    local w = vtl.randn(12, 8, 3, 3, {dtype = dt}) * 0.2
    local b = vtl.randn(12, {dtype = dt})
    local r = vtl.randn(2, 12, 4, 4, {dtype = dt})
    local g <close> = vtl.no_grad()
    local plain = F.conv2d(x, w, b, {stride = 2, padding = 1})
    for _, act in ipairs(ACTS) do
      local y = F.conv2d(x, w, b, {stride = 2, padding = 1, act = act, add = r})
      T.close(y, act_ref(act, plain + r), dt == "f32" and 2e-5 or 1e-12, dt .. " " .. act .. " with add")
      local y2 = F.conv2d(x, w, b, {stride = 2, padding = 1, act = act})
      T.close(y2, act_ref(act, plain), dt == "f32" and 2e-5 or 1e-12, dt .. " " .. act)
    end
    T.close(F.conv2d(x, w, b, {stride = 2, padding = 1, add = r}), plain + r, 1e-6, dt .. " add only")
  end
end)

T.test("conv2d post-operations: act_params, grouped and depthwise convolutions", function()
  vtl.seed(2)
  local x = vtl.randn(1, 6, 9, 9)
  local g <close> = vtl.no_grad()
  for _, groups in ipairs({1, 3, 6}) do
    local w = vtl.randn(6, 6 // groups, 3, 3) * 0.3
    local plain = F.conv2d(x, w, nil, {padding = 1, groups = groups})
    local y = F.conv2d(x, w, nil, {padding = 1, groups = groups, act = "leaky_relu", act_params = {0.2}})
    T.close(y, F.leaky_relu(plain, {negative_slope = 0.2}), 2e-5, "leaky_relu 0.2, groups " .. groups)
    local e = F.conv2d(x, w, nil, {padding = 1, groups = groups, act = "elu", act_params = {0.5}})
    T.close(e, F.elu(plain, {alpha = 0.5}), 2e-5, "elu 0.5, groups " .. groups)
  end
end)

T.test("conv2d post-operations with gradients: composed from differentiable ops", function()
  vtl.seed(3)
  local x = vtl.randn(2, 4, 6, 6):requires_grad_()
  local w = (vtl.randn(5, 4, 3, 3) * 0.3):requires_grad_()
  local b = vtl.randn(5):requires_grad_()
  local r = vtl.randn(2, 5, 6, 6):requires_grad_()
  F.conv2d(x, w, b, {padding = 1, act = "silu", add = r}):sum():backward()
  local gx, gw, gb, gr = x.grad, w.grad, b.grad, r.grad
  local x2, w2, b2, r2 = x:detach():requires_grad_(), w:detach():requires_grad_(), b:detach():requires_grad_(),
    r:detach():requires_grad_()
  F.silu(F.conv2d(x2, w2, b2, {padding = 1}) + r2):sum():backward()
  T.close(gx, x2.grad, 1e-5, "grad x")
  T.close(gw, w2.grad, 1e-5, "grad w")
  T.close(gb, b2.grad, 1e-5, "grad b")
  T.close(gr, r2.grad, 1e-5, "grad add")
end)

T.test("conv2d packs: weights packed once, repacked after an in-place change or for other weights", function()
  vtl.seed(4)
  local x = vtl.randn(1, 16, 8, 8)
  local w = vtl.randn(32, 16, 3, 3) * 0.1
  local pack = F.weight_pack()
  T.eq(F.weight_pack_bytes(pack), 0, "empty pack")
  local g <close> = vtl.no_grad()
  local y = F.conv2d(x, w, nil, {padding = 1, pack = pack})
  T.close(y, F.conv2d(x, w, nil, {padding = 1}), 1e-6, "first call")
  T.truthy(F.weight_pack_bytes(pack) >= 32 * 16 * 9 * 4, "the pack holds the weights")
  T.close(F.conv2d(x, w, nil, {padding = 1, pack = pack}), y, 0, "second call, from the pack")
  w:mul_(2) -- in place: the pack must notice
  T.close(F.conv2d(x, w, nil, {padding = 1, pack = pack}), y * 2, 1e-5, "after w:mul_(2)")
  local w2 = vtl.randn(32, 16, 3, 3)
  T.close(F.conv2d(x, w2, nil, {padding = 1, pack = pack}), F.conv2d(x, w2, nil, {padding = 1}), 1e-6,
    "other weights through the same pack")
  -- a pack outlives its weights without keeping stale results
  for i = 1, 5 do
    local wi = vtl.randn(32, 16, 3, 3)
    T.close(F.conv2d(x, wi, nil, {padding = 1, pack = pack}), F.conv2d(x, wi, nil, {padding = 1}), 1e-6,
      "fresh weights " .. i)
    wi = nil
    collectgarbage()
  end
end)

T.test("conv2d channels_last: the output's memory is (N,H,W,C) and channels-last inputs are read as they are, giving channels-last outputs", function()
  vtl.seed(5)
  local x = vtl.randn(2, 5, 9, 8)
  local w1, w2 = vtl.randn(7, 5, 3, 3) * 0.2, vtl.randn(6, 7, 1, 1) * 0.2
  local r = vtl.randn(2, 6, 9, 8)
  local g <close> = vtl.no_grad()
  local y1 = F.conv2d(x, w1, nil, {padding = 1, act = "relu", channels_last = true})
  T.truthy(is_channels_last(y1), "channels-last output")
  T.close(y1, F.relu(F.conv2d(x, w1, nil, {padding = 1})), 1e-5, "values")
  local y2 = F.conv2d(y1, w2, nil, {add = r, channels_last = true})
  T.truthy(is_channels_last(y2), "channels-last in, channels-last out")
  T.close(y2, F.conv2d(y1:contiguous(), w2) + r, 1e-5, "channels-last input")
  local rc = (r:permute(1, 3, 4, 2):contiguous()):permute(1, 4, 2, 3) -- a channels-last add
  T.close(F.conv2d(y1, w2, nil, {add = rc, channels_last = true}), y2, 0, "channels-last add")
  local y3 = F.conv2d(y1, w2, nil, {add = r})
  T.truthy(is_channels_last(y3), "the output takes a channels-last input's layout (as in PyTorch)")
  T.close(y3, y2, 0, "same values")
  local y4 = F.conv2d(y1:contiguous(), w2, nil, {add = r})
  T.truthy(y4:is_contiguous(), "plain in, plain out")
  T.close(y4, y2, 1e-6, "plain output")
  -- f64 has no oneDNN path: the same layouts through the fallback
  local yd = F.conv2d(x:double(), w1:double(), nil, {padding = 1, act = "relu", channels_last = true})
  T.close(yd, y1:double(), 1e-5, "f64 channels-last output")
end)

T.test("conv2d padding_end: asymmetric padding (TensorFlow SAME)", function()
  vtl.seed(6)
  local x, w = vtl.randn(1, 3, 8, 8), vtl.randn(4, 3, 3, 3)
  local y = F.conv2d(x, w, nil, {stride = 2, padding = 0, padding_end = 1})
  T.close(y, F.conv2d(F.pad(x, {0, 1, 0, 1}), w, nil, {stride = 2}), 1e-6, "pad bottom/right only")
  local y2 = F.conv2d(x, w, nil, {stride = 2, padding = {1, 0}, padding_end = {0, 1}})
  T.close(y2, F.conv2d(F.pad(x, {0, 1, 1, 0}), w, nil, {stride = 2}), 1e-6, "per dim")
  x:requires_grad_()
  F.conv2d(x, w, nil, {stride = 2, padding = 0, padding_end = 1}):sum():backward()
  local gx = x.grad
  local x2 = x:detach():requires_grad_()
  F.conv2d(F.pad(x2, {0, 1, 0, 1}), w, nil, {stride = 2}):sum():backward()
  T.close(gx, x2.grad, 1e-6, "gradient")
end)

local bad_x, bad_w = vtl.randn(1, 3, 5, 5), vtl.randn(4, 3, 3, 3)
local function bad(name, fn, pattern) T.test("bad input: " .. name, function() T.raises(fn, pattern) end) end
bad("unknown activation", function() F.conv2d(bad_x, bad_w, nil, {act = "swoosh"}) end,
  "conv2d: unknown activation 'swoosh'")
bad("act not a string", function() F.conv2d(bad_x, bad_w, nil, {act = 3}) end, "conv2d: act must be an activation's name")
bad("act_params without act", function() F.conv2d(bad_x, bad_w, nil, {act_params = {1}}) end,
  "conv2d: act_params given without act")
bad("act_params not numbers", function() F.conv2d(bad_x, bad_w, nil, {act = "elu", act_params = {"a"}}) end,
  "conv2d: act_params[1] must be a number")
bad("add of the wrong shape", function() F.conv2d(bad_x, bad_w, nil, {add = vtl.zeros(1, 4, 5, 5)}) end,
  "conv2d: the tensor to add must have the output's shape {1,4,3,3}, got {1,4,5,5}")
bad("add of another dtype", function() F.conv2d(bad_x, bad_w, nil, {add = vtl.zeros(1, 4, 3, 3):double()}) end,
  "conv2d: the tensor to add has dtype f64, the input f32")
bad("add not a tensor", function() F.conv2d(bad_x, bad_w, nil, {add = 1}) end, "conv2d: add must be a tensor, got number")
bad("pack of the wrong kind", function() F.conv2d(bad_x, bad_w, nil, {pack = {}}) end,
  "conv2d: pack must come from weight_pack()")
bad("channels_last not a boolean", function() F.conv2d(bad_x, bad_w, nil, {channels_last = 1}) end,
  "conv2d: channels_last must be a boolean")
bad("negative padding_end", function() F.conv2d(bad_x, bad_w, nil, {padding_end = -1}) end,
  "conv2d: padding_end must not be negative")
bad("padding_end with same", function() F.conv2d(bad_x, bad_w, nil, {padding = "same", padding_end = 1}) end,
  "conv2d: padding_end goes with a numeric padding")

T.test("pooling keeps channels-last inputs channels-last, same values", function()
  vtl.seed(7)
  local x = vtl.randn(2, 6, 11, 10)
  x[{1, 2, 3, 4}] = 0 / 0 -- NaN wins a max
  local xl = x:permute(1, 3, 4, 2):contiguous():permute(1, 4, 2, 3)
  T.truthy(is_channels_last(xl), "input layout")
  -- with gradients the planar kernels run (they return the indices backward needs)
  local xg = xl:clone():requires_grad_()
  F.max_pool2d(xg, 2):sum():backward()
  T.eq(table.concat(xg.grad.shape, ","), "2,6,11,10", "gradient shape")
  local g <close> = vtl.no_grad()
  for _, o in ipairs({{3, {stride = 2, padding = 1}}, {2, {}}, {3, {stride = 2, dilation = 2}},
                      {3, {stride = 2, ceil_mode = true}}}) do
    local y = F.max_pool2d(xl, o[1], o[2])
    T.truthy(is_channels_last(y), "max_pool2d output layout")
    T.close(y, F.max_pool2d(x, o[1], o[2]), 0, "max_pool2d")
  end
  for _, size in ipairs({1, 3, {4, 7}}) do
    local y = F.adaptive_avg_pool2d(xl, size)
    T.close(y, F.adaptive_avg_pool2d(x, size), 1e-6, "adaptive_avg_pool2d")
  end
end)

-- ---- vtl.models.fuse_for_inference ----

local function randomize_norms(m)
  local g <close> = vtl.no_grad()
  for _, b in ipairs(m:modules()) do
    if b.running_var then
      b.running_mean:copy_(vtl.randn(b.num_features) * 0.1)
      b.running_var:copy_(vtl.rand(b.num_features) * 0.5 + 0.75)
      if b.weight then b.weight:copy_(vtl.rand(b.num_features) * 0.5 + 0.75) end
    end
  end
end

T.test("fuse_for_inference: activations and residual sums move into the convolutions, same logits", function()
  local want_acts = {resnet18 = 17, mobilenet_v2 = 35, mobilenet_v3_small = 42, efficientnet_b0 = 65,
                     efficientnet_lite0 = 33, small_cnn = 5}
  for name, acts in pairs(want_acts) do
    if models.is_model(name) then
      vtl.seed(11)
      local m = models.create(name, {num_classes = 7})
      randomize_norms(m)
      m:eval()
      local x = vtl.randn(2, 3, 64, 64)
      if name == "small_cnn" then x = vtl.randn(2, m.pretrained_cfg.input_size[1], 28, 28) end
      local ref = vtl.no_grad(function() return m(x) end)
      local fused = models.fuse_for_inference(m)
      local n_act, n_pack = 0, 0
      for _, c in ipairs(fused:modules()) do
        if rawget(c, "_act") then n_act = n_act + 1 end
        if rawget(c, "_pack") then n_pack = n_pack + 1 end
      end
      T.eq(n_act, acts, name .. ": convolutions and Linear layers with a fused activation")
      T.truthy(n_pack > 0, name .. ": packed convolutions")
      local y = vtl.no_grad(function() return fused(x) end)
      T.close(y, ref, 1e-4, name .. " logits")
      T.close(vtl.no_grad(function() return fused(x) end), y, 0, name .. " again (from the packs)")
      local twice = models.fuse_for_inference(fused)
      T.close(vtl.no_grad(function() return twice(x) end), y, 1e-5, name .. " fused twice")
    end
  end
end)

T.test("fuse_for_inference: a clone of a fused model packs its own weights", function()
  vtl.seed(12)
  local m = models.create("resnet18", {num_classes = 3})
  m:eval()
  local x = vtl.randn(1, 3, 32, 32)
  local fused = models.fuse_for_inference(m)
  local y = vtl.no_grad(function() return fused(x) end)
  local c = models.clone(fused)
  T.truthy(rawget(c.conv1, "_pack") ~= rawget(fused.conv1, "_pack"), "distinct packs")
  vtl.no_grad(function() c.fc.weight:mul_(0) end)
  T.close(vtl.no_grad(function() return fused(x) end), y, 0, "the original is unaffected")
end)

-- ---- linear layers and attention ----

T.test("linear post-operations: act(x wᵀ + b + add) for every activation, any leading dims, f32 and f64", function()
  vtl.seed(21)
  for _, dt in ipairs({"f32", "f64"}) do
    local x = vtl.randn(2, 5, 24, {dtype = dt})
    local w = vtl.randn(16, 24, {dtype = dt}) * 0.3
    local b = vtl.randn(16, {dtype = dt})
    local r = vtl.randn(2, 5, 16, {dtype = dt})
    local pack = F.weight_pack()
    local g <close> = vtl.no_grad()
    local plain = F.linear(x, w, b)
    for _, act in ipairs(ACTS) do
      local y = F.linear(x, w, b, {act = act, add = r, pack = pack})
      T.close(y, act_ref(act, plain + r), dt == "f32" and 2e-5 or 1e-12, dt .. " " .. act .. " with add")
    end
    T.close(F.linear(x, w, nil, {pack = pack}), x:matmul(w:t()), 1e-5, dt .. " no bias")
    T.close(F.linear(x[1][1], w, b, {act = "relu"}), F.relu(plain[1][1]), 1e-5, dt .. " 1-D input")
    if dt == "f32" then T.truthy(F.weight_pack_bytes(pack) >= 16 * 24 * 4, "packed weights") end
  end
end)

T.test("linear post-operations with gradients: composed from differentiable ops", function()
  vtl.seed(22)
  local x = vtl.randn(3, 8):requires_grad_()
  local w = vtl.randn(4, 8):requires_grad_()
  local r = vtl.randn(3, 4):requires_grad_()
  F.linear(x, w, nil, {act = "gelu", add = r}):sum():backward()
  local x2, w2, r2 = x:detach():requires_grad_(), w:detach():requires_grad_(), r:detach():requires_grad_()
  F.gelu(x2:matmul(w2:t()) + r2):sum():backward()
  T.close(x.grad, x2.grad, 1e-5, "grad x")
  T.close(w.grad, w2.grad, 1e-5, "grad w")
  T.close(r.grad, r2.grad, 1e-5, "grad add")
end)

bad("linear: input and weight disagree", function() F.linear(vtl.randn(2, 3), vtl.randn(4, 5), nil, {act = "relu"}) end,
  "linear: input of shape {2,3} does not match weight of shape {4,5}")
bad("linear: add of the wrong shape", function() F.linear(vtl.randn(2, 3), vtl.randn(4, 3), nil, {add = vtl.zeros(2, 3)}) end,
  "linear: the tensor to add must have the output's shape {2,4}, got {2,3}")
bad("linear: bias of the wrong size", function() F.linear(vtl.randn(2, 3), vtl.randn(4, 3), vtl.zeros(3), {act = "relu"}) end,
  "linear: bias must be 1-D with 4 elements, got shape {3}")
bad("linear: unknown activation", function() F.linear(vtl.randn(2, 3), vtl.randn(4, 3), nil, {act = "nope"}) end,
  "linear: unknown activation 'nope'")
bad("linear: integer input", function() F.linear(vtl.ones(2, 3, {dtype = "i64"}), vtl.randn(4, 3), nil, {act = "relu"}) end,
  "linear: input dtype i64 not supported")

-- timm's attention, op by op: qkv (B,N,3,H,D) -> softmax(q kᵀ * scale) v -> (B,N,H*D)
local function attention_ref(qkv, H, scale)
  local B, N, C = qkv.shape[1], qkv.shape[2], qkv.shape[3] // 3
  local t = qkv:reshape(B, N, 3, H, C // H):permute(3, 1, 4, 2, 5)
  local q, k, v = t:select(1, 1), t:select(1, 2), t:select(1, 3)
  local a = F.softmax((q * scale):matmul(k:transpose(-2, -1)), -1)
  return a:matmul(v):transpose(2, 3):reshape(B, N, C)
end

T.test("attention_qkv: the heads' outputs from the packed projection, f32 and f64", function()
  vtl.seed(23)
  for _, dt in ipairs({"f32", "f64"}) do
    for _, c in ipairs({{1, 197, 6, 64}, {3, 10, 2, 8}, {2, 1, 4, 4}}) do
      local B, N, H, D = c[1], c[2], c[3], c[4]
      local qkv = vtl.randn(B, N, 3 * H * D, {dtype = dt})
      local g <close> = vtl.no_grad()
      local y = F.attention_qkv(qkv, H, D ^ -0.5)
      T.close(y, attention_ref(qkv, H, D ^ -0.5), dt == "f32" and 1e-5 or 1e-12, dt .. " " .. table.concat(c, "x"))
    end
  end
end)

bad("attention_qkv: not 3-D", function() F.attention_qkv(vtl.randn(4, 12), 2, 1) end,
  "attention_qkv: qkv must be 3-D (B, N, 3*C), got shape {4,12}")
bad("attention_qkv: heads do not divide", function() F.attention_qkv(vtl.randn(1, 4, 12), 3, 1) end,
  "attention_qkv: the last dim (12) must be 3 * heads * head_dim with 3 heads")
bad("attention_qkv: zero heads", function() F.attention_qkv(vtl.randn(1, 4, 12), 0, 1) end,
  "attention_qkv: the last dim (12) must be 3 * heads * head_dim with 0 heads")
T.test("attention_qkv under autograd: the packed projection's gradient equals the composed attention's", function()
  vtl.seed(25)
  for _, dt in ipairs({"f32", "f64"}) do
    for _, c in ipairs({{2, 197, 6, 64}, {3, 10, 2, 8}, {2, 1, 4, 4}}) do
      local B, N, H, D = c[1], c[2], c[3], c[4]
      local base = vtl.randn(B, N, 3 * H * D, {dtype = dt})
      local g = vtl.randn(B, N, H * D, {dtype = dt})
      local a, b = base:clone():requires_grad_(), base:clone():requires_grad_()
      local y = F.attention_qkv(a, H, D ^ -0.5)
      T.eq(y.grad_fn ~= nil, true, "the output records its backward")
      y:backward(g)
      attention_ref(b, H, D ^ -0.5):backward(g)
      local what = dt .. " " .. table.concat(c, "x")
      local tol = dt == "f32" and 1e-5 or 1e-12
      T.close(y, attention_ref(base, H, D ^ -0.5), tol, what .. " output")
      T.close(a.grad, b.grad, tol, what .. " qkv gradient")
    end
  end
  -- a strided qkv (a transposed view) and a qkv that is itself an op's output
  local w = vtl.randn(24, 5):requires_grad_()
  local x = vtl.randn(2, 7, 5)
  local y = F.attention_qkv(x:matmul(w:t()), 2, 0.5)
  local w2 = w:detach():clone():requires_grad_()
  local want = attention_ref(x:matmul(w2:t()), 2, 0.5)
  T.close(y, want, 1e-5, "through a linear layer")
  y:sum():backward()
  want:sum():backward()
  T.close(w.grad, w2.grad, 1e-5, "weight gradient through attention_qkv")
  local p = vtl.randn(2, 24, 7):requires_grad_()
  local q = p:detach():clone():requires_grad_()
  F.attention_qkv(p:transpose(2, 3), 2, 0.5):sum():backward()
  attention_ref(q:transpose(2, 3), 2, 0.5):sum():backward()
  T.close(p.grad, q.grad, 1e-5, "strided qkv")
end)

T.test("fuse_for_inference: ViT with fused GELU, residual sums and attention, same logits; gradients still flow", function()
  vtl.seed(24)
  local m = models.create("vit_tiny_patch16_224", {img_size = 32, num_classes = 5})
  m:eval()
  local x = vtl.randn(2, 3, 32, 32)
  local ref = vtl.no_grad(function() return m(x) end)
  local fused = models.fuse_for_inference(m)
  local n_act = 0
  for _, c in ipairs(fused:modules()) do if rawget(c, "_act") == "gelu" then n_act = n_act + 1 end end
  T.eq(n_act, #fused.blocks._module_names, "one fused GELU per block")
  T.close(vtl.no_grad(function() return fused(x) end), ref, 1e-4, "logits")
  -- saliency through the fused model: the input needs a gradient, so attention runs op by op
  local xg = x:clone():requires_grad_()
  fused(xg):sum():backward()
  local xr = x:clone():requires_grad_()
  m(xr):sum():backward()
  T.close(xg.grad, xr.grad, 1e-3, "input gradient")
end)
