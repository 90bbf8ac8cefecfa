-- Inference throughput of a zoo model in vtl (eval mode, under no_grad), for tests/bench/infer.sh.
--   vtl tests/bench/infer.lua save <model> <weights.safetensors>
--       seeded random weights (batch-norm statistics included) written for both sides
--   vtl tests/bench/infer.lua run <model> <weights.safetensors> <threads> <batches> <reps> [fused]
--       prints "<batch> <images/s>" for each batch size (best of reps timed runs after one
--       warm-up run), then "rss <peak RSS in MiB>"; fused: vtl.models.fuse_for_inference first;
--       fused-bf16: that model run in a bf16 autocast region
local vtl = require "vtl"
local models = require "vtl.models"

local mode, name, path = arg[1], arg[2], arg[3]

local function peak_rss_mib()
  for line in io.lines("/proc/self/status") do
    local v = line:match("^VmHWM:%s+(%d+)")
    if v then return tonumber(v) / 1024 end
  end
  return 0
end

if mode == "save" then
  vtl.seed(0)
  local model = models.create(name)
  -- batch-norm statistics and affines away from the identity, as trained weights have them
  vtl.no_grad(function()
    for _, m in ipairs(model:modules()) do
      if m.running_var then
        m.running_mean:copy_(vtl.randn(m.num_features) * 0.1)
        m.running_var:copy_(vtl.rand(m.num_features) * 0.5 + 0.75)
        if m.weight then m.weight:copy_(vtl.rand(m.num_features) * 0.5 + 0.75) end
      end
    end
  end)
  vtl.save(path, (model:state_dict()))
  return
end

assert(mode == "run", "usage: infer.lua save|run <model> <weights> ...")
local threads, batches, reps = tonumber(arg[4]), arg[5], tonumber(arg[6])
local fused, bf16 = arg[7] == "fused" or arg[7] == "fused-bf16", arg[7] == "fused-bf16"
vtl.set_num_threads(threads)
local model = models.create(name, {pretrained = path})
model:eval()
if fused then model = models.fuse_for_inference(model) end
local size = model.pretrained_cfg.input_size
local g <close> = vtl.no_grad()
local ac <close> = vtl.autocast(bf16 and "bf16" or false)
for b in batches:gmatch("%d+") do
  local n = tonumber(b)
  local x = vtl.randn(n, size[1], size[2], size[3])
  local function once() local y <close> = model(x) end
  once()
  local best = math.huge
  for _ = 1, (n == 1 and reps * 3 or reps) do
    local t0 = vtl.clock()
    once()
    best = math.min(best, vtl.clock() - t0)
  end
  print(("%d %.3f"):format(n, n / best))
end
print(("rss %.0f"):format(peak_rss_mib()))
