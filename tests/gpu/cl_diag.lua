-- Diagnostic for a GPU machine: ResNet-18's layers at 64x64, batch 16, f32, on cuda against the
-- CPU in (N,C,H,W) and channels-last: the largest relative difference (max |gpu - cpu| over
-- max |cpu|) of each convolution's output, input gradient and weight gradient, and of batch norm
-- (training) and max pooling; then timings of bf16 channels-last layers.
--   vtl tests/gpu/cl_diag.lua
local vtl = require "vtl"
if vtl.cuda.is_available() then vtl.cuda.cudnn{allow_tf32 = false} end -- exact f32 against the CPU
local F = vtl.nn.functional
vtl.seed(11)
local function rel(g, c)
  return (g:detach():cpu():double() - c:detach():double()):abs():max():item() / math.max(c:abs():max():item(), 1e-30)
end
local convs = { -- C, K, k, stride, H
  {3, 64, 7, 2, 64}, {64, 64, 3, 1, 16}, {64, 128, 3, 2, 16}, {128, 128, 3, 1, 8}, {64, 128, 1, 2, 16},
  {128, 256, 3, 2, 8}, {256, 256, 3, 1, 4}, {256, 512, 3, 2, 4}, {512, 512, 3, 1, 2},
}
for _, fmt in ipairs({"planar", "channels_last"}) do
  for _, c in ipairs(convs) do
    local C, K, k, st, H = table.unpack(c)
    local x = vtl.randn(16, C, H, H)
    local w = vtl.randn(K, C, k, k) / math.sqrt(C * k * k)
    local o = {stride = st, padding = k // 2}
    local xc, wc = x:clone():requires_grad_(), w:clone():requires_grad_()
    local yc = F.conv2d(xc, wc, nil, o)
    local gy = vtl.randn(yc.shape)
    yc:backward(gy)
    local xg = x:cuda()
    if fmt == "channels_last" then xg = xg:contiguous("channels_last") end
    xg:requires_grad_()
    local wg = w:cuda():requires_grad_()
    local yg = F.conv2d(xg, wg, nil, o)
    local gg = gy:cuda()
    if fmt == "channels_last" then gg = gg:contiguous("channels_last") end
    yg:backward(gg)
    print(("conv %-13s C%-3d K%-3d k%d s%d %2dx%-2d  out %.2e  dgrad %.2e  wgrad %.2e"):format(fmt, C, K, k, st, H, H,
      rel(yg, yc), rel(xg.grad, xc.grad), rel(wg.grad, wc.grad)))
  end
  for _, c in ipairs({{64, 16}, {128, 8}, {256, 4}, {512, 2}}) do
    local C, H = c[1], c[2]
    local x = vtl.randn(16, C, H, H) * 2 + 1
    local bc, bg = vtl.nn.BatchNorm2d(C), vtl.nn.BatchNorm2d(C)
    bc.weight.data = vtl.randn(C)
    bg:load_state_dict(bc:state_dict())
    bg:cuda()
    local xc = x:clone():requires_grad_()
    local xg = x:cuda()
    if fmt == "channels_last" then xg = xg:contiguous("channels_last") end
    xg:requires_grad_()
    local yc, yg = F.relu(bc(xc)), F.relu(bg(xg))
    local gy = vtl.randn(yc.shape)
    local gg = gy:cuda()
    if fmt == "channels_last" then gg = gg:contiguous("channels_last") end
    yc:backward(gy)
    yg:backward(gg)
    print(("bn+relu %-13s C%-3d %2dx%-2d  out %.2e  dgrad %.2e  wgrad %.2e  bgrad %.2e"):format(fmt, C, H, H, rel(yg, yc),
      rel(xg.grad, xc.grad), rel(bg.weight.grad, bc.weight.grad), rel(bg.bias.grad, bc.bias.grad)))
    -- the residual join: relu(bn(x) + identity) with the identity in the other layout
    local xc2, xg2 = x:detach():clone():requires_grad_(), x:detach():cuda():requires_grad_()
    local zc = F.relu(bc(xc) + xc2)
    local zg = F.relu(bg(xg) + xg2)
    zc:backward(gy)
    zg:backward(gg)
    print(("add+relu %-13s C%-3d %2dx%-2d  out %.2e  grad(identity, planar) %.2e"):format(fmt, C, H, H, rel(zg, zc),
      rel(xg2.grad, xc2.grad)))
  end
  local x = vtl.randn(16, 64, 32, 32)
  local xc = x:clone():requires_grad_()
  local xg = x:cuda()
  if fmt == "channels_last" then xg = xg:contiguous("channels_last") end
  xg:requires_grad_()
  local yc = F.max_pool2d(xc, 3, {stride = 2, padding = 1})
  local yg = F.max_pool2d(xg, 3, {stride = 2, padding = 1})
  local gy = vtl.randn(yc.shape)
  yc:backward(gy)
  yg:backward(fmt == "channels_last" and gy:cuda():contiguous("channels_last") or gy:cuda())
  print(("maxpool %-13s out %.2e  dgrad %.2e"):format(fmt, rel(yg, yc), rel(xg.grad, xc.grad)))
end

-- timings (ms, best of 5, synchronized) of bf16 layers at ResNet-50 batch 256 shapes
local function best(fn)
  fn()
  vtl.cuda.synchronize()
  local b = math.huge
  for _ = 1, 5 do
    local t0 = vtl.clock()
    fn()
    vtl.cuda.synchronize()
    b = math.min(b, vtl.clock() - t0)
  end
  return b * 1e3
end
local a = vtl.randn(256, 256, 56, 56, {device = "cuda"}):bfloat16()
local b = vtl.randn(256, 256, 56, 56, {device = "cuda"}):bfloat16()
local acl, bcl = a:contiguous("channels_last"), b:contiguous("channels_last")
print(("add bf16 planar %.3f ms, channels-last %.3f ms, mixed %.3f ms, relu channels-last %.3f ms"):format(
  best(function() local _ = a + b end), best(function() local _ = acl + bcl end), best(function() local _ = acl + b end),
  best(function() local _ = F.relu(acl) end)))
a, b, acl, bcl = nil, nil, nil, nil -- luacheck: ignore
collectgarbage()
for _, c in ipairs({{256, 256, 3, 14}, {1024, 256, 1, 14}, {64, 64, 3, 56}}) do
  local C, K, k, H = table.unpack(c)
  for _, cl in ipairs({false, true}) do
    local x = vtl.randn(256, C, H, H, {device = "cuda"}):bfloat16()
    local w = (vtl.randn(K, C, k, k, {device = "cuda"}) * 0.05):bfloat16()
    if cl then x, w = x:contiguous("channels_last"), w:contiguous("channels_last") end
    print(("conv bf16 %s C%d K%d k%d %dx%d fwd %.3f ms"):format(cl and "nhwc" or "nchw", C, K, k, H, H,
      best(function() local _ = F.conv2d(x, w, nil, {padding = k // 2}) end)))
  end
end
