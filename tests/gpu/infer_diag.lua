-- Diagnostic for a GPU machine: ResNet-50 inference the two ways vtl offers, eager eval and
-- vtl.models.fuse_for_inference (batch norms folded, activations and residual sums done in
-- place after each convolution): f32 at batch 1, and bf16 channels-last at batch [batch]; the
-- time per call (best of three batches of calls) and the peak GPU memory. PyTorch eager's
-- figures for the same cases are in tests/bench/cuda.sh.
--   vtl tests/gpu/infer_diag.lua [batch]
local vtl = require "vtl"
local batch = tonumber(arg[1] or "256")
package.path = "tests/bench/?.lua;" .. package.path
local gs = require("gpu_step")
gs.settings()
local per_call = gs.per_call

local function case(name, model, x, reps)
  collectgarbage()
  collectgarbage()
  vtl.cuda.reset_peak_memory_stats()
  local m0 = vtl.cuda.memory_stats().mallocs
  local t = per_call(function() vtl.no_grad(function() return model(x) end) end, reps)
  local st = vtl.cuda.memory_stats()
  -- mallocs: blocks the caching allocator had to get from the device during the timed calls
  print(("%-40s %9.3f ms  peak %6.0f MiB  cached %6.0f MiB  device allocations %d"):format(name, t * 1e3,
    st.peak / 2 ^ 20, st.cached / 2 ^ 20, st.mallocs - m0))
  io.stdout:flush()
end

local m = vtl.models.create("resnet50", {num_classes = 1000}):cuda()
m:eval()
local x1 = vtl.randn(1, 3, 224, 224, {device = "cuda"})
case("resnet50_infer_b1 eager", m, x1, 20)
case("resnet50_infer_b1 fused", vtl.models.fuse_for_inference(m), x1, 20)
m:to_memory_format("channels_last")
local xb = vtl.randn(batch, 3, 224, 224, {device = "cuda"}):contiguous("channels_last")
local eager = {forward = function(_, x) return vtl.autocast("bf16", function() return m(x) end) end}
setmetatable(eager, {__call = function(self, x) return self:forward(x) end})
case(("resnet50_infer_b%d_bf16_cl eager"):format(batch), eager, xb, 5)
case(("resnet50_infer_b%d_bf16_cl fused"):format(batch), vtl.models.fuse_for_inference(m, {precision = "bf16"}), xb, 5)
