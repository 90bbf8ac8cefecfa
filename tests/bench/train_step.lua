-- One benchmark configuration in vtl: prints "images_per_s peak_rss_mib". Arguments:
-- name batch size steps threads [bf16|f32] [cl|nchw]
package.path = "tests/bench/?.lua;" .. package.path
local vtl = require "vtl"
local models = require "models"
local B = require "benchlib"
local name, batch, size, steps, threads = arg[1], tonumber(arg[2]), tonumber(arg[3]), tonumber(arg[4]), tonumber(arg[5])
local bf16 = arg[6] == "bf16" -- forward and loss in a bf16 autocast region
local cl = arg[7] == "cl" -- channels-last activations
vtl.set_num_threads(threads)
vtl.seed(0)
local model = models[name] and models[name]() or vtl.models.create(name) -- the zoo's ViT
model:train()
if cl then model:to_memory_format("channels_last") end
local opt = vtl.optim.SGD(model:parameters(), {lr = 0.01, momentum = 0.9})
local x = vtl.randn(batch, 3, size, size)
if cl then x = x:contiguous("channels_last") end
local y = vtl.randint(1, 1001, {batch})

local function step()
  opt:zero_grad()
  local loss = vtl.autocast(bf16 and "bf16" or false, function() return vtl.nn.functional.cross_entropy(model(x), y) end)
  loss:backward()
  opt:step()
end

local best = B.best(step, steps)
local rss = 0
for line in io.lines("/proc/self/status") do
  local v = line:match("^VmHWM:%s+(%d+)")
  if v then rss = tonumber(v) / 1024 end
end
print(string.format("%.3f %.1f", batch / best, rss))
