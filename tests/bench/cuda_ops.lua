-- Times tensor ops and a training step on the GPU in vtl; prints "name seconds" lines (seconds per call) read by
-- tests/bench/cuda.sh. Each timing is a batch of calls closed by a synchronize, the best of
-- three batches; tests/bench/cuda_ops.py times the same ops in PyTorch.
package.path = "tests/bench/?.lua;" .. package.path
local vtl = require "vtl"
local B = require "benchlib"

if not vtl.cuda.is_available() then
  io.stderr:write("cuda_ops: no CUDA device; nothing to time\n")
  os.exit(0)
end

local per_call = require("gpu_step").per_call

require("gpu_step").settings()
vtl.seed(0)
local n = 4096
local a, b = vtl.randn(n, n, {device = "cuda"}), vtl.randn(n, n, {device = "cuda"})
B.report("add_4096", per_call(function() local _ = a + b end, 50))
B.report("mul_4096", per_call(function() local _ = a * b end, 50))
B.report("sum_4096", per_call(function() local _ = a:sum() end, 50))
B.report("sum_dim1_4096", per_call(function() local _ = a:sum(1) end, 50))
B.report("sum_dim2_4096", per_call(function() local _ = a:sum(2) end, 50))
B.report("mean_dim2_4096", per_call(function() local _ = a:mean(2) end, 50))
B.report("max_dim2_4096", per_call(function() local _, _ = a:max(2) end, 50))
local row = vtl.randn(n, {device = "cuda"})
B.report("add_bcast_4096", per_call(function() local _ = a + row end, 50))
local c = vtl.randn(64, 1024, 1024, {device = "cuda"})
B.report("sum_dim2_64x1024", per_call(function() local _ = c:sum(2) end, 50))
c = nil -- luacheck: ignore
collectgarbage()
B.report("matmul_f32_4096", per_call(function() local _ = a:matmul(b) end, 10))
local ah, bh = a:bfloat16(), b:bfloat16()
B.report("matmul_bf16_4096", per_call(function() local _ = ah:matmul(bh) end, 20))

-- nn: a 3x3 64->64 convolution at batch 64, 56x56 (ResNet's first stage), and a ResNet-18
-- training step (batch 64, 224x224, SGD with momentum, f32 NCHW, no TF32)
local F = vtl.nn.functional
local cx = vtl.randn(64, 64, 56, 56, {device = "cuda"})
local cw = vtl.randn(64, 64, 3, 3, {device = "cuda"}) * 0.05
B.report("conv3x3_64c_56_fwd", per_call(function() local _ = F.conv2d(cx, cw, nil, {padding = 1}) end, 20))
cx, cw = nil, nil
local model = vtl.models.create("resnet18", {num_classes = 1000}):cuda()
model:train()
local opt = vtl.optim.SGD(model:parameters(), {lr = 0.01, momentum = 0.9})
local xb = vtl.randn(64, 3, 224, 224, {device = "cuda"})
local yb = vtl.randint(1, 1001, {64}, {device = "cuda"})
B.report("resnet18_train_b64", per_call(function()
  opt:zero_grad()
  local loss = F.cross_entropy(model(xb), yb)
  loss:backward()
  opt:step()
end, 3))
model, opt, xb, yb = nil, nil, nil, nil -- luacheck: ignore
collectgarbage()

-- Training steps with bf16 autocast (and channels-last for the convolution nets), SGD with
-- momentum, 224x224; the peak GPU memory of each (MiB, from the start of the case); then
-- ResNet-50 inference at batch 1 (f32) and 256 (bf16, channels-last).
local function fresh()
  collectgarbage()
  collectgarbage()
  vtl.cuda.empty_cache()
  vtl.cuda.reset_peak_memory_stats()
end

local function train_case(name, arch, batch, cl, reps, benchmark)
  fresh()
  B.report(name, per_call(require("gpu_step").setup(arch, batch, cl, benchmark).step, reps))
  B.report(name .. "_peakMiB", vtl.cuda.memory_stats().peak / 2 ^ 20)
end

train_case("resnet50_train_b256_bf16_cl", "resnet50", 256, true, 3)
train_case("lite0_train_b256_bf16_cl", "efficientnet_lite0", 256, true, 3)
train_case("vit_s_train_b128_bf16", "vit_small_patch16_224", 128, false, 3)
-- the same ResNet-50 step with cuDNN's benchmark mode on both sides (cudnn.benchmark = True)
train_case("resnet50_train_b256_bf16_cl_cudnn_benchmark", "resnet50", 256, true, 3, true)
require("gpu_step").settings()

fresh()
local r50 = vtl.models.create("resnet50", {num_classes = 1000}):cuda()
r50:eval()
local x1 = vtl.randn(1, 3, 224, 224, {device = "cuda"})
B.report("resnet50_infer_b1", per_call(function() vtl.no_grad(function() return r50(x1) end) end, 20))
r50:to_memory_format("channels_last")
local x256 = vtl.randn(256, 3, 224, 224, {device = "cuda"}):contiguous("channels_last")
B.report("resnet50_infer_b256_bf16_cl", per_call(function()
  vtl.no_grad(function() return vtl.autocast("bf16", function() return r50(x256) end) end)
end, 5))
B.report("resnet50_infer_b256_bf16_cl_peakMiB", vtl.cuda.memory_stats().peak / 2 ^ 20)
