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

---Seconds per call of fn: the best of three batches of `reps` calls, each closed by a synchronize.
---@param fn fun()
---@param reps integer
---@return number
local function per_call(fn, reps)
  fn()
  vtl.cuda.synchronize()
  local b = math.huge
  for _ = 1, 3 do
    local t0 = vtl.clock()
    for _ = 1, reps do fn() end
    vtl.cuda.synchronize()
    b = math.min(b, (vtl.clock() - t0) / reps)
  end
  return b
end

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
