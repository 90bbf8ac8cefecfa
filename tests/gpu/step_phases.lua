-- Diagnostic for a GPU machine: where a training step's time goes. For a zoo model at a batch
-- size (bf16 autocast, channels-last for convolution nets, SGD with momentum) it times, each
-- closed by a synchronize and the best of several: the forward pass, forward + backward, and
-- the whole step; then single layers at the model's shapes. Prints "name milliseconds" lines;
-- tests/gpu/step_phases.py prints the same for PyTorch.
--   vtl tests/gpu/step_phases.lua [model] [batch]
local vtl = require "vtl"
local F = vtl.nn.functional
local name, batch = arg[1] or "resnet50", tonumber(arg[2] or "256")
local cl = name ~= "vit_small_patch16_224"

local function best(fn, reps)
  fn()
  vtl.cuda.synchronize()
  local b = math.huge
  for _ = 1, reps do
    local t0 = vtl.clock()
    fn()
    vtl.cuda.synchronize()
    b = math.min(b, vtl.clock() - t0)
  end
  return b
end
local function report(what, t) print(("%s_%s %.3f"):format(name, what, t * 1e3)); io.stdout:flush() end

package.path = "tests/bench/?.lua;" .. package.path
local s = require("gpu_step").setup(name, batch, cl)
local o = s.opt
report("forward", best(function() s.forward() end, 3))
report("forward_backward", best(function() o:zero_grad(); s.forward():backward() end, 3))
report("step", best(s.step, 3))
report("optimizer_step", best(function() o:step() end, 5))
report("zero_grad", best(function() o:zero_grad() end, 5))

if cl then
  -- ResNet-50's third stage: 3x3 256->256 at 14x14 and 1x1 1024->256, bf16 channels-last
  local function conv_case(tag, c_in, c_out, k, hw)
    local xi = vtl.randn(batch, c_in, hw, hw, {device = "cuda"}):bfloat16():contiguous("channels_last"):requires_grad_()
    local w = (vtl.randn(c_out, c_in, k, k, {device = "cuda"}) * 0.05):bfloat16():contiguous("channels_last"):requires_grad_()
    local g
    report(tag .. "_fwd", best(function() g = F.conv2d(xi, w, nil, {padding = k // 2}) end, 5))
    local gy = vtl.randn(g.shape, {device = "cuda"}):bfloat16():contiguous("channels_last")
    report(tag .. "_fwd_bwd", best(function() xi.grad, w.grad = nil, nil; F.conv2d(xi, w, nil, {padding = k // 2}):backward(gy) end, 5))
  end
  conv_case("conv3x3_256_14", 256, 256, 3, 14)
  conv_case("conv1x1_1024_256_14", 1024, 256, 1, 14)
  local xb = vtl.randn(batch, 256, 56, 56, {device = "cuda"}):bfloat16():contiguous("channels_last"):requires_grad_()
  local bn = vtl.nn.BatchNorm2d(256):cuda()
  bn:train()
  local gy = vtl.randn(batch, 256, 56, 56, {device = "cuda"}):bfloat16():contiguous("channels_last")
  report("bn_relu_256_56_fwd", best(function() F.relu(bn(xb)) end, 5))
  report("bn_relu_256_56_fwd_bwd", best(function() xb.grad = nil; F.relu(bn(xb)):backward(gy) end, 5))
  report("add_256_56", best(function() local _ = xb:detach() + gy end, 5))
end
