-- Diagnostic for a GPU machine: one training step of ResNet-18 (64x64, batch 16) on the CPU and on
-- cuda (planar or channels-last) with probes around each op of layer2's second block; prints the
-- largest relative difference of each intermediate's value and gradient, then re-runs that
-- block's second convolution and its ReLU alone on the captured GPU tensors.
--   vtl tests/gpu/block_diag.lua [channels_last|planar]
local vtl = require "vtl"
if vtl.cuda.is_available() then vtl.cuda.cudnn{allow_tf32 = false} end -- exact f32 against the CPU
local F = vtl.nn.functional
local AG = require "vtl.autograd"
local fmt = arg[1] or "channels_last"
local DEV = os.getenv("BLOCK_DIAG_DEVICE") or "cuda"
local function rel(g, c)
  return (g:detach():to("cpu"):double() - c:detach():to("cpu"):double()):abs():max():item() /
    math.max(c:detach():abs():max():item(), 1e-30)
end
local function instrument(model, store)
  local P = function(k, t)
    store.fwd[k] = t:detach():clone()
    return AG.Function {
      forward = function(_, v) return v:clone() end,
      backward = function(_, g) store.bwd[k] = g:detach():clone(); return g end,
    }(t)
  end
  model.layer2[2].forward = function(self, x)
    x = P("x", x)
    local c1 = P("c1", self.conv1(x))
    local b1 = P("b1", self.bn1(c1))
    local r1 = P("r1", self.relu(b1))
    local c2 = P("c2", self.conv2(r1))
    local b2 = P("b2", self.bn2(c2))
    local s = P("s", b2 + x)
    return self.relu(s)
  end
end
vtl.seed(3)
local cpu = vtl.models.create("resnet18", {num_classes = 10})
local gpu = vtl.models.create("resnet18", {num_classes = 10})
gpu:load_state_dict(cpu:state_dict())
gpu:to(DEV)
if fmt == "channels_last" then gpu:to_memory_format("channels_last") end
cpu:train()
gpu:train()
local sc, sg = {fwd = {}, bwd = {}}, {fwd = {}, bwd = {}}
instrument(cpu, sc)
instrument(gpu, sg)
local x, y = vtl.randn(16, 3, 64, 64), vtl.randint(1, 11, {16})
F.cross_entropy(cpu(x), y):backward()
local xg = x:to(DEV)
if fmt == "channels_last" then xg = xg:contiguous("channels_last") end
F.cross_entropy(gpu(xg), y:to(DEV)):backward()
for _, k in ipairs({"s", "b2", "c2", "r1", "b1", "c1", "x"}) do
  print(("%-3s value %.2e  grad %.2e  (gpu grad channels-last: %s)"):format(k, rel(sg.fwd[k], sc.fwd[k]),
    rel(sg.bwd[k], sc.bwd[k]), tostring(sg.bwd[k]:is_contiguous("channels_last"))))
end
local blk, blkc = gpu.layer2[2], cpu.layer2[2]
print(("conv2 weight: channels-last %s, contiguous %s"):format(tostring(blk.conv2.weight:is_contiguous("channels_last")),
  tostring(blk.conv2.weight:is_contiguous())))
-- conv2 alone on the captured tensors: its input gradient against the probe's and the CPU's
for _, wl in ipairs({"as held", "planar"}) do
  local r1 = sg.fwd.r1:clone():requires_grad_()
  local w = blk.conv2.weight:detach()
  if wl == "planar" then w = w:contiguous() end
  F.conv2d(r1, w, nil, {padding = 1}):backward(sg.bwd.c2)
  local r1c = sc.fwd.r1:clone():requires_grad_()
  F.conv2d(r1c, blkc.conv2.weight:detach(), nil, {padding = 1}):backward(sg.bwd.c2:to("cpu"))
  print(("conv2 alone (weight %s): input grad vs probe %.2e, vs cpu on the same gradient %.2e"):format(wl,
    rel(r1.grad, sg.bwd.r1), rel(r1.grad, r1c.grad)))
end
-- relu alone: the gradient into b1 from the probe's r1 gradient
local b1 = sg.fwd.b1:clone():requires_grad_()
F.relu(b1):backward(sg.bwd.r1)
local b1c = sg.fwd.b1:to("cpu"):clone():requires_grad_()
F.relu(b1c):backward(sg.bwd.r1:to("cpu"))
print(("relu alone: grad vs probe %.2e, vs cpu on the same tensors %.2e"):format(rel(b1.grad, sg.bwd.b1), rel(b1.grad, b1c.grad)))
-- bn2 alone (training batch statistics): its input gradient from the probe's b2 gradient
local bn = vtl.nn.BatchNorm2d(128)
bn:load_state_dict(blk.bn2:state_dict())
bn:to(DEV)
bn:train()
local c2 = sg.fwd.c2:clone():requires_grad_()
bn(c2):backward(sg.bwd.b2)
local bnc = vtl.nn.BatchNorm2d(128)
bnc:load_state_dict(blkc.bn2:state_dict())
bnc:train()
local c2c = sg.fwd.c2:to("cpu"):clone():requires_grad_()
bnc(c2c):backward(sg.bwd.b2:to("cpu"))
print(("bn2 alone: input grad vs probe %.2e, vs cpu on the same tensors %.2e"):format(rel(c2.grad, sg.bwd.c2), rel(c2.grad, c2c.grad)))
