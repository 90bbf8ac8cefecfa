-- Diagnostic for a GPU machine: vtl.profiler's table of one training step (bf16 autocast,
-- channels-last for convolution nets, SGD with momentum), the calls synchronized so each op's
-- time is its own GPU work; tests/gpu/profile_step.py prints PyTorch's profiler table of the same.
--   vtl tests/gpu/profile_step.lua [model] [batch]
package.path = "tests/bench/?.lua;" .. package.path
local vtl = require "vtl"
local name, batch = arg[1] or "resnet50", tonumber(arg[2] or "256")
local s = require("gpu_step").setup(name, batch, name ~= "vit_small_patch16_224")
s.step()
vtl.cuda.synchronize()
local prof = vtl.profiler.profile(s.step, {sync = true})
print(("== vtl %s batch %d: one step, profiled"):format(name, batch))
print(prof:table({limit = 30}))
