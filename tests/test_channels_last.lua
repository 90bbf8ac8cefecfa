-- Channels-last memory format: the tensor API (contiguous/is_contiguous with a format), the
-- layouts ops give a channels-last input (against PyTorch's strides), model:to_memory_format,
-- and training passes of ResNet-18 and MobileNetV3-Small against PyTorch in channels-last
-- (tests/ref/gen_channels_last.py), plus f64 and bf16 agreement with the (N,C,H,W) runs.
local T = require "testlib"
local vtl = require "vtl"
local nn, F = vtl.nn, vtl.nn.functional
local FIX = os.getenv("VTL_FIXTURES") or "build/fixtures"

-- ||a - b|| / ||b||, as f64
local function rel_norm(a, b)
  a, b = a:double(), b:double()
  return ((a - b) ^ 2):sum():sqrt():item() / math.max((b ^ 2):sum():sqrt():item(), 1e-30)
end

local function strides(t) return table.concat(t:stride(), ",") end

T.test("contiguous(\"channels_last\"): PyTorch's strides, the same values, a view when already so", function()
  vtl.seed(1)
  local x = vtl.randn(2, 6, 5, 7)
  local c = x:contiguous("channels_last")
  T.eq(strides(c), "210,1,42,6")
  T.eq(c.shape[2], 6)
  T.close(c, x, 0, "values")
  T.truthy(c:is_contiguous("channels_last") and not c:is_contiguous(), "formats")
  T.truthy(x:is_contiguous("contiguous") and not x:is_contiguous("channels_last"), "plain input")
  c:contiguous("channels_last"):mul_(2) -- already channels-last: the same memory
  T.close(c, x * 2, 0, "a view when already channels-last")
  c:div_(2)
  T.eq(strides(c:contiguous()), "210,35,7,1", "back to contiguous")
  -- (N,C,1,1) and C = 1 are both layouts at once
  T.truthy(vtl.randn(2, 3, 1, 1):is_contiguous("channels_last"), "(N,C,1,1)")
  T.raises(function() return vtl.randn(3, 4, 5):contiguous("channels_last") end, "needs a 4-D (N,C,H,W) tensor, got shape {3,4,5}")
  T.raises(function() return x:contiguous("nhwc") end, "memory format must be \"contiguous\" or \"channels_last\", got \"nhwc\"")
  T.raises(function() return x:is_contiguous(3) end, "memory format must be")
  -- a gradient flows through the conversion
  local xg = x:clone():requires_grad_(true)
  local yg = xg:contiguous("channels_last") * 2
  yg:sum():backward()
  T.close(xg.grad, vtl.full({2, 6, 5, 7}, 2), 0, "gradient")
end)

T.test("ops on a channels-last input lay their outputs out as PyTorch does, with the same values", function()
  local want = vtl.load(FIX .. "/cl_strides.safetensors")
  vtl.seed(2)
  local x = vtl.randn(2, 6, 5, 7)
  local c = x:contiguous("channels_last")
  local w, dw = vtl.randn(8, 6, 3, 3), vtl.randn(6, 1, 3, 3)
  local bias, scale = vtl.randn(1, 6, 1, 1), vtl.randn(2, 6, 1, 1)
  local bn1, bn2 = nn.BatchNorm2d(6), nn.BatchNorm2d(6)
  local cases = {
    contiguous = {c, x},
    conv2d = {F.conv2d(c, w, nil, {padding = 1}), F.conv2d(x, w, nil, {padding = 1})},
    depthwise = {F.conv2d(c, dw, nil, {padding = 1, groups = 6}), F.conv2d(x, dw, nil, {padding = 1, groups = 6})},
    batch_norm = {bn1(c), bn2(x)},
    relu = {F.relu(c), F.relu(x)},
    hardswish = {F.hardswish(c), F.hardswish(x)},
    add = {c + c, x + x},
    add_bias = {c + bias, x + bias},
    mul_scale = {c * scale, x * scale},
    max_pool2d = {F.max_pool2d(c, 3, 2, 1), F.max_pool2d(x, 3, 2, 1)},
    bf16 = {c:to("bf16"), x:to("bf16")},
  }
  for name, pair in pairs(cases) do
    T.eq(strides(pair[1]), table.concat(want[name]:totable(), ","), name .. " strides")
    T.close(pair[1], pair[2], 1e-5, name .. " values")
  end
  T.close(bn1.running_var, bn2.running_var, 1e-6, "running statistics")
  T.truthy(F.conv2d(x, w, nil, {padding = 1, channels_last = true}):is_contiguous("channels_last"),
    "conv2d{channels_last = true} on a plain input")
end)

T.test("model:to_memory_format: convolutions then keep channels-last; parameters and state dict unchanged", function()
  vtl.seed(3)
  local m = vtl.models.create("resnet18", {num_classes = 4})
  local before = m:state_dict()
  T.truthy(rawequal(m:to_memory_format("channels_last"), m), "returns the model")
  T.eq(m.memory_format, "channels_last")
  for k, v in pairs(m:state_dict()) do
    T.truthy(v:is_contiguous(), k .. " stays contiguous")
    T.close(v, before[k], 0, k)
  end
  local feats = m:forward_features(vtl.randn(2, 3, 64, 64))
  T.truthy(feats:is_contiguous("channels_last") and not feats:is_contiguous(), "features are channels-last")
  m:to_memory_format("contiguous")
  T.truthy(m:forward_features(vtl.randn(2, 3, 64, 64)):is_contiguous(), "contiguous again")
  T.raises(function() m:to_memory_format("nhwc") end, "to_memory_format: format must be \"channels_last\" or \"contiguous\", got \"nhwc\"")
  T.raises(function() m:to_memory_format() end, "got nil")
end)

-- Measured here (relative norms): logits 7.5e-6 / 4.2e-6, loss 3.1e-7 / 7.4e-8, worst parameter
-- gradient 1.1e-5 / 9.1e-6 (ResNet-18 / MobileNetV3-S). A gradient whose norm is below 1e-6 (a
-- bias whose effect the next training batch norm removes: its true gradient is zero and both
-- sides hold rounding noise) is only checked to stay near zero.
for _, name in ipairs{"resnet18", "mobilenet_v3_small"} do
  T.test(name .. ": a channels-last training pass matches PyTorch's channels-last one", function()
    local model = vtl.models.create(name, {num_classes = 5, drop_rate = 0})
    model:load_state_dict(vtl.load(FIX .. "/cl_" .. name .. "_init.safetensors"))
    local ref = vtl.load(FIX .. "/cl_" .. name .. "_ref.safetensors")
    model:to_memory_format("channels_last")
    model:train()
    local logits = model(ref.x:contiguous("channels_last"))
    local loss = F.cross_entropy(logits, ref.y)
    loss:backward()
    local el = rel_norm(logits, ref.logits)
    local eloss = math.abs(loss:item() - ref.loss[1]:item()) / math.abs(ref.loss[1]:item())
    T.truthy(el < 1e-4, ("logits: relative error %.2e"):format(el))
    T.truthy(eloss < 1e-5, ("loss: relative error %.2e"):format(eloss))
    local worst, wname, checked = 0, "", 0
    for _, pair in ipairs(model:named_parameters()) do
      local k, p = pair[1], pair[2]
      local g = ref["grad." .. k]
      T.truthy(g ~= nil and p.grad ~= nil, k .. ": both sides have a gradient")
      local gn = g:double():norm():item()
      if gn > 1e-6 then
        local e = rel_norm(p.grad, g)
        checked = checked + 1
        if e > worst then worst, wname = e, k end
      else
        T.truthy(p.grad:double():norm():item() < 1e-5, k .. ": a zero gradient stays near zero")
      end
    end
    print(("  %s: logits %.2e, loss %.2e, worst gradient %.2e (%s) over %d parameters"):format(name, el, eloss,
      worst, wname, checked))
    T.truthy(worst < 1e-3, ("worst gradient %s: relative error %.2e"):format(wname, worst))
  end)
end

T.test("f64: channels-last and (N,C,H,W) training passes agree to rounding (ResNet-18, MobileNetV3-S, EfficientNet-Lite0)", function()
  for _, name in ipairs{"resnet18", "mobilenet_v3_small", "efficientnet_lite0"} do
    vtl.seed(4)
    local a = vtl.models.create(name, {num_classes = 3, drop_rate = 0}):double()
    local b = vtl.models.clone(a):to_memory_format("channels_last")
    local x = vtl.randn(2, 3, 48, 48):double()
    local y = vtl.tensor({1, 3}, "i64")
    a:train(); b:train()
    vtl.seed(6) -- the same stochastic-depth draws on both sides
    local la = F.cross_entropy(a(x), y)
    vtl.seed(6)
    local lb = F.cross_entropy(b(x), y)
    la:backward(); lb:backward()
    T.close(lb, la, 1e-12, name .. " loss")
    local pa, pb = a:parameters(), b:parameters()
    for i = 1, #pa do
      local d = (pa[i].grad - pb[i].grad):abs():max():item()
      T.truthy(d <= 1e-9 * (1 + pa[i].grad:abs():max():item()), ("%s parameter %d: gradient differs by %.2e"):format(name, i, d))
    end
  end
end)

T.test("bf16 autocast in channels-last: logits match the (N,C,H,W) bf16 run; an SGD step trains", function()
  vtl.seed(5)
  local a = vtl.models.create("resnet18", {num_classes = 4})
  local b = vtl.models.clone(a):to_memory_format("channels_last")
  a:eval(); b:eval()
  local x = vtl.randn(2, 3, 32, 32)
  local ya = vtl.autocast("bf16", function() return a(x) end)
  local yb = vtl.autocast("bf16", function() return b(x) end)
  T.truthy(rel_norm(yb:float(), ya:float()) < 2e-2, "bf16 logits")
  b:train()
  local opt = vtl.optim.SGD(b:parameters(), {lr = 0.05})
  local y = vtl.tensor({1, 2}, "i64")
  local first, last
  for i = 1, 5 do
    opt:zero_grad()
    local loss = vtl.autocast("bf16", function() return F.cross_entropy(b(x), y) end)
    loss:backward()
    opt:step()
    first = first or loss:item()
    last = loss:item()
  end
  T.truthy(last < first, ("the loss falls: %.4f -> %.4f"):format(first, last))
end)

T.test("max_pool2d on a channels-last input: values, indices and gradients equal the planar kernel's (ties, NaN, -inf, padding, dilation, ceil mode)", function()
  vtl.seed(7)
  local x = vtl.randn(2, 5, 9, 8):round() -- many ties
  x[1][2][3][4] = 0 / 0
  x[2][1][1][1] = -math.huge
  local c = x:contiguous("channels_last")
  for i, o in ipairs{{3, {stride = 2, padding = 1}}, {2, {}}, {3, {stride = 1, dilation = 2}},
                     {{3, 2}, {stride = {2, 1}, padding = {1, 1}, ceil_mode = true}}} do
    local opts = {return_indices = true}
    for k, v in pairs(o[2]) do opts[k] = v end
    local y1, i1 = F.max_pool2d(x, o[1], opts)
    local y2, i2 = F.max_pool2d(c, o[1], opts)
    T.truthy(y2:is_contiguous("channels_last") and i2:is_contiguous("channels_last"), "case " .. i .. ": layouts")
    T.close(y2, y1, 0, "case " .. i .. " values")
    T.close(i2, i1, 0, "case " .. i .. " indices")
    local x1 = x:clone():requires_grad_(true)
    local x2 = c:clone():requires_grad_(true)
    local g = vtl.randn(y1.shape)
    F.max_pool2d(x1, o[1], o[2]):backward(g)
    F.max_pool2d(x2:contiguous("channels_last"), o[1], o[2]):backward(g:contiguous("channels_last"))
    T.close(x2.grad, x1.grad, 0, "case " .. i .. " gradient")
  end
end)
