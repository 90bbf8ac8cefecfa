-- Diagnostic for a GPU machine: vtl.profiler's table of one training step (bf16 autocast,
-- channels-last for convolution nets, SGD with momentum), the calls synchronized so each op's
-- time is its own GPU work; tests/gpu/profile_step.py prints PyTorch's profiler table of the same.
--   vtl tests/gpu/profile_step.lua [model] [batch]
local vtl = require "vtl"
local F = vtl.nn.functional
local name, batch = arg[1] or "resnet50", tonumber(arg[2] or "256")
local cl = name ~= "vit_small_patch16_224"
local m = vtl.models.create(name, {num_classes = 1000}):cuda()
if cl then m:to_memory_format("channels_last") end
m:train()
local o = vtl.optim.SGD(m:parameters(), {lr = 0.01, momentum = 0.9})
local x = vtl.randn(batch, 3, 224, 224, {device = "cuda"})
if cl then x = x:contiguous("channels_last") end
local y = vtl.randint(1, 1001, {batch}, {device = "cuda"})
local function step()
  o:zero_grad()
  vtl.autocast("bf16", function() return F.cross_entropy(m(x), y) end):backward()
  o:step()
end
step()
vtl.cuda.synchronize()
local prof = vtl.profiler.profile(step, {sync = true})
print(("== vtl %s batch %d: one step, profiled"):format(name, batch))
print(prof:table({limit = 30}))
