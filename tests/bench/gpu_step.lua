-- The GPU training step the benchmarks and diagnostics time: a zoo model with 1000 classes on
-- cuda (channels-last when cl), SGD with momentum, a random 224x224 batch, bf16 autocast.
-- tests/bench/gpu_step.py is the PyTorch twin.
local vtl = require "vtl"
local F = vtl.nn.functional

local M = {}

---The switches both sides run under (tests/bench/gpu_step.py sets PyTorch's alike): no TF32 in
---matmuls or convolutions, cuDNN free to take nondeterministic engines, cuDNN's benchmark mode
---when `benchmark` is true or, when it is nil, VTL_CUDNN_BENCHMARK=1 (for both).
---@param benchmark boolean|nil
function M.settings(benchmark)
  if benchmark == nil then benchmark = os.getenv("VTL_CUDNN_BENCHMARK") == "1" end
  vtl.cuda.allow_tf32(false)
  vtl.cuda.cudnn{allow_tf32 = false, deterministic = false, benchmark = benchmark}
end

---Seconds per call of fn: the best of three batches of `reps` calls, each closed by a synchronize.
---@param fn fun()
---@param reps integer
---@return number
function M.per_call(fn, reps)
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

---The model, optimizer and batch, and the step function (zero_grad, forward and loss under
---bf16 autocast, backward, step); forward() alone returns the loss.
---@param arch string
---@param batch integer
---@param cl boolean
---@param benchmark boolean|nil cuDNN's benchmark mode (nil: M.settings' default)
---@return {model: table, opt: table, x: table, y: table, step: fun(), forward: fun(): table}
function M.setup(arch, batch, cl, benchmark)
  M.settings(benchmark)
  local m = vtl.models.create(arch, {num_classes = 1000}):cuda()
  if cl then m:to_memory_format("channels_last") end
  m:train()
  local o = vtl.optim.SGD(m:parameters(), {lr = 0.01, momentum = 0.9})
  local x = vtl.randn(batch, 3, 224, 224, {device = "cuda"})
  if cl then x = x:contiguous("channels_last") end
  local y = vtl.randint(1, 1001, {batch}, {device = "cuda"})
  local s = {model = m, opt = o, x = x, y = y}
  function s.forward() return vtl.autocast("bf16", function() return F.cross_entropy(m(x), y) end) end
  function s.step()
    o:zero_grad()
    s.forward():backward()
    o:step()
  end
  return s
end

return M
