-- Times convolution and pooling in vtl; prints "name seconds" lines (best of several runs), in
-- the format of tests/bench/tensor_ops.lua; tests/bench/conv.py times the same cases in PyTorch.
-- Usage: vtl tests/bench/conv.lua [threads]
package.path = "tests/bench/?.lua;" .. package.path
local vtl = require "vtl"
local B = require "benchlib"
local F = vtl.nn.functional
local threads = tonumber(arg[1]) or vtl.get_num_threads()
vtl.set_num_threads(threads)

local best, report = B.best, B.report

-- ResNet-18 layers at batch 32 on 64x64 images, and MobileNetV2 depthwise layers
local convs = {
  {"conv_stem_3x64_7x7s2", 32, 3, 64, 64, 64, 7, 2, 3, 1},
  {"conv_64x64_3x3", 32, 64, 16, 16, 64, 3, 1, 1, 1},
  {"conv_128x128_3x3", 32, 128, 8, 8, 128, 3, 1, 1, 1},
  {"conv_256x256_3x3", 32, 256, 4, 4, 256, 3, 1, 1, 1},
  {"conv_512x512_3x3", 32, 512, 2, 2, 512, 3, 1, 1, 1},
  {"conv_64x128_1x1s2", 32, 64, 16, 16, 128, 1, 2, 0, 1},
  {"dw_32_3x3", 32, 32, 32, 32, 32, 3, 1, 1, 32},
  {"dw_96_3x3s2", 32, 96, 16, 16, 96, 3, 2, 1, 96},
  {"dw_144_3x3", 32, 144, 16, 16, 144, 3, 1, 1, 144},
}

vtl.seed(0)
for _, c in ipairs(convs) do
  local name, N, C, H, W, K, R, s, p, g = table.unpack(c)
  local x, w, b = vtl.randn(N, C, H, W), vtl.randn(K, C // g, R, R), vtl.randn(K)
  local opts = {stride = s, padding = p, groups = g}
  local y = F.conv2d(x, w, b, opts)
  local gout = vtl.randn(table.unpack(y.shape))
  local reps = 10
  report(name .. "_fwd", best(function() local _ <close> = F.conv2d(x, w, b, opts) end, reps))
  -- results freed at once (as PyTorch's refcounting does), so their memory is reused
  report(name .. "_bwd", best(function()
    local gx, gw, gb = F._conv2d_backward(gout, x, w, opts)
    local close = getmetatable(gx).__close
    close(gx); close(gw); close(gb)
  end, reps))
  local xg, wg, bg = x:clone():requires_grad_(), w:clone():requires_grad_(), b:clone():requires_grad_()
  report(name .. "_train", best(function()
    xg.grad, wg.grad, bg.grad = nil, nil, nil
    F.conv2d(xg, wg, bg, opts):backward(gout)
  end, reps))
end

local pools = {
  {"maxpool_3x3s2_64x32x32", 32, 64, 32, 32, function(x) return F.max_pool2d(x, 3, {stride = 2, padding = 1}) end},
  {"avgpool_2x2_128x16x16", 32, 128, 16, 16, function(x) return F.avg_pool2d(x, 2) end},
  {"gap_512x2x2", 32, 512, 2, 2, function(x) return F.adaptive_avg_pool2d(x, 1) end},
  {"gap_1280x7x7", 32, 1280, 7, 7, function(x) return F.adaptive_avg_pool2d(x, 1) end},
}
for _, c in ipairs(pools) do
  local name, N, C, H, W, fn = table.unpack(c)
  local x = vtl.randn(N, C, H, W)
  local y = fn(x)
  local gout = vtl.randn(table.unpack(y.shape))
  report(name .. "_fwd", best(function() local _ <close> = fn(x) end, 20))
  local xg = x:clone():requires_grad_()
  report(name .. "_train", best(function() xg.grad = nil; fn(xg):backward(gout) end, 20))
end
