-- vtl.deploy: is the model ready for the device? Size, compute, measured speed and memory of a
-- model, and how much accuracy half precision costs.
--
--   local r = vtl.deploy.report(model, {3, 224, 224})
--   print(r.text)
--   local h = vtl.deploy.half_check(model, test_ds, {dtype = "f16"})
local vtl = require "vtl"
local core = require "vtl.core"

local M = {}

local function fail(msg, level) error(msg, (level or 1) + 1) end
local function is_module(m) return type(m) == "table" and type(m.parameters) == "function" end

local function human_bytes(n)
  if n >= 1024 * 1024 then return ("%.2f MiB"):format(n / 1024 / 1024) end
  if n >= 1024 then return ("%.1f KiB"):format(n / 1024) end
  return ("%d B"):format(n)
end

local function file_size(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local n = f:seek("end")
  f:close()
  return n
end

-- the process's peak resident set (VmHWM) in bytes, where /proc says it
local function rss_peak()
  local f = io.open("/proc/self/status", "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  local kb = s:match("VmHWM:%s*(%d+)%s*kB")
  return kb and tonumber(kb) * 1024 or nil
end

local function median(xs)
  table.sort(xs)
  local n = #xs
  return n % 2 == 1 and xs[(n + 1) // 2] or (xs[n // 2] + xs[n // 2 + 1]) / 2
end

-- the state dict in dtype (floating tensors only), written as safetensors; its size in bytes
local function size_on_disk(model, dtype)
  local sd = {}
  for k, t in pairs(model:state_dict()) do
    local f = t.dtype == "f32" or t.dtype == "f64" or t.dtype == "f16" or t.dtype == "bf16"
    sd[k] = f and t:to(dtype):contiguous() or t
  end
  local path = os.tmpname()
  vtl.save(path, sd)
  local n = file_size(path)
  os.remove(path)
  return n
end

---Deployment report of a model for inputs of shape input_shape ({C, H, W} or {N, C, H, W}):
---parameters, size on disk as f32 and f16 safetensors, MACs and FLOPs (2 per MAC) per image,
---median latency at batch 1 and throughput at batch 32 (eval mode, no gradients, after warm-up
---runs), peak tensor memory of one batch-1 forward pass (sampled after every module), and the
---process's peak resident memory. opts: runs (20 timed runs at batch 1), throughput_runs (5),
---batch (32), print (false). Returns a table with these fields and a text rendering.
---@param model vtl.nn.Module
---@param input_shape integer[]
---@param opts? {runs: integer|nil, throughput_runs: integer|nil, batch: integer|nil, print: boolean|nil}
function M.report(model, input_shape, opts)
  local fn = "deploy.report"
  if not is_module(model) then fail(fn .. ": model must be an nn.Module", 2) end
  if type(input_shape) ~= "table" or (#input_shape ~= 3 and #input_shape ~= 4) then
    fail(fn .. ": input_shape must be {C, H, W} or {N, C, H, W}", 2)
  end
  for i, d in ipairs(input_shape) do
    if math.type(d) ~= "integer" or d < 1 then fail(("%s: input_shape[%d] must be a positive integer"):format(fn, i), 2) end
  end
  opts = opts or {}
  local runs, truns, batch = opts.runs or 20, opts.throughput_runs or 5, opts.batch or 32
  for k, v in pairs {runs = runs, throughput_runs = truns, batch = batch} do
    if math.type(v) ~= "integer" or v < 1 then fail(fn .. ": " .. k .. " must be a positive integer", 2) end
  end
  local chw = #input_shape == 4 and {input_shape[2], input_shape[3], input_shape[4]} or input_shape
  local models = require "vtl.models"
  local total = models.count_parameters(model)
  local buffers = 0
  for _, e in ipairs(model:named_buffers()) do buffers = buffers + e[2]:numel() end
  local summary = models.summary(model, {1, chw[1], chw[2], chw[3]}, {print = false})
  local was = model.training
  model:eval()
  local guard <close> = core.no_grad()
  local x1 = core.randn({1, chw[1], chw[2], chw[3]}, {generator = core.Generator(1)})
  local xb = core.randn({batch, chw[1], chw[2], chw[3]}, {generator = core.Generator(2)})
  -- peak tensor memory during one forward pass
  local handles = {}
  collectgarbage("collect")
  collectgarbage("collect")
  local before = core.memory_allocated()
  local peak = before
  for _, m in ipairs(model:modules()) do
    handles[#handles + 1] = m:register_forward_hook(function()
      local a = core.memory_allocated()
      if a > peak then peak = a end
    end)
  end
  local ok, err = pcall(model, x1)
  for _, h in ipairs(handles) do h.remove() end
  if not ok then model:train(was); error(fn .. ": the forward pass failed: " .. tostring(err), 2) end
  -- latency at batch 1
  for _ = 1, 3 do model(x1) end
  local times = {}
  for r = 1, runs do
    local t0 = core.clock()
    model(x1)
    times[r] = core.clock() - t0
  end
  local latency = median(times)
  -- throughput at batch `batch`
  model(xb)
  local t0 = core.clock()
  for _ = 1, truns do model(xb) end
  local tput = batch * truns / (core.clock() - t0)
  model:train(was)
  local r = {
    params = total, buffers = buffers,
    size_f32 = size_on_disk(model, "f32"), size_f16 = size_on_disk(model, "f16"),
    macs = summary.macs, flops = 2 * summary.macs, input_shape = chw,
    latency_ms = latency * 1000, latency_runs = runs, throughput = tput, throughput_batch = batch,
    peak_tensor_bytes = peak - before, peak_rss_bytes = rss_peak(),
    threads = core.get_num_threads and core.get_num_threads() or nil,
  }
  local lines = {
    ("parameters        %d (%.2f M)"):format(r.params, r.params / 1e6),
    ("size on disk      %s (f32), %s (f16)"):format(human_bytes(r.size_f32), human_bytes(r.size_f16)),
    ("compute           %.1f M MACs, %.1f M FLOPs per %dx%dx%d image"):format(r.macs / 1e6, r.flops / 1e6, chw[1], chw[2], chw[3]),
    ("latency (batch 1) %.2f ms (median of %d)"):format(r.latency_ms, runs),
    ("throughput        %.1f images/s at batch %d"):format(r.throughput, batch),
    ("peak memory       %s of tensors in a batch-1 forward%s"):format(human_bytes(r.peak_tensor_bytes),
      r.peak_rss_bytes and (", process peak RSS " .. human_bytes(r.peak_rss_bytes)) or ""),
  }
  r.text = table.concat(lines, "\n")
  if opts.print then print(r.text) end
  return r
end

-- accuracy and predictions of model over a dataset or loader
local function predictions(model, dl, hook_round)
  local correct, n, preds = 0, 0, {}
  for b in dl:iter(1) do
    local logits = model(hook_round and hook_round(b.input) or b.input)
    local p = logits:argmax(2)
    preds[#preds + 1] = p
    if b.target ~= nil then correct = correct + p:eq(b.target):sum():item() end
    n = n + b.input.shape[1]
  end
  return correct / math.max(n, 1), core.cat(preds, 1), n
end

---Post-training half-precision check: accuracy on a dataset of the model as it is (f32) and as
---it would be with weights and activations held in opts.dtype ("f16" (default) or "bf16"). The
---CPU conv kernels are f32, so the check emulates it: every weight, the input and every module's
---output are rounded to that dtype between f32 computations (accumulation stays f32, as in
---half-precision kernels). The weights are put back afterwards. Also counts activations the
---rounding made infinite (f16 overflows above 65504). Returns {accuracy_f32, accuracy_half,
---agreement (same prediction), drop, overflow, dtype, samples, mode = "emulated"}.
---@param model vtl.nn.Module
---@param ds table a dataset or DataLoader
---@param opts? {dtype: string|nil, batch_size: integer|nil}
function M.half_check(model, ds, opts)
  local fn = "deploy.half_check"
  if not is_module(model) then fail(fn .. ": model must be an nn.Module", 2) end
  opts = opts or {}
  local dtype = opts.dtype or "f16"
  if dtype ~= "f16" and dtype ~= "bf16" then fail(fn .. ": dtype must be \"f16\" or \"bf16\", got " .. tostring(dtype), 2) end
  local dl
  if type(ds) == "table" and type(ds.iter) == "function" then dl = ds
  elseif type(ds) == "table" and type(ds.get) == "function" then dl = vtl.data.DataLoader(ds, {batch_size = opts.batch_size or 64})
  else fail(fn .. ": expected a dataset or a DataLoader", 2) end
  local was = model.training
  model:eval()
  local guard <close> = core.no_grad()
  local acc32, pred32, n = predictions(model, dl)
  -- a rounded copy of the weights, put back afterwards
  local saved = {}
  local sd = model:state_dict()
  for k, t in pairs(sd) do
    if t.dtype == "f32" then saved[k] = t:clone(); t:copy_(t:to(dtype):float()) end
  end
  local overflow = 0
  local function round(t)
    if not core.is_tensor(t) or t.dtype ~= "f32" then return nil end
    local r = t:to(dtype):float()
    overflow = overflow + (r:isinf():sum():item() - t:isinf():sum():item())
    return r
  end
  local handles = {}
  for _, m in ipairs(model:modules()) do
    handles[#handles + 1] = m:register_forward_hook(function(_, _, out) return round(out) end)
  end
  local ok, acc16, pred16 = pcall(predictions, model, dl, round)
  for _, h in ipairs(handles) do h.remove() end
  for k, t in pairs(saved) do sd[k]:copy_(t) end
  model:train(was)
  if not ok then error(fn .. ": " .. tostring(acc16), 2) end
  local agree = pred32:eq(pred16):float():mean():item()
  return {accuracy_f32 = acc32, accuracy_half = acc16, drop = acc32 - acc16, agreement = agree,
          overflow = overflow, dtype = dtype, samples = n, mode = "emulated"}
end

return M
