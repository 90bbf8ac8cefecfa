-- End-to-end training: a small CNN trained with SGD-momentum from PyTorch's initial weights on
-- PyTorch's batches follows PyTorch's loss curve, and long training keeps memory flat.
local T = require "testlib"
local vtl = require "vtl"
local nn, F = vtl.nn, vtl.nn.functional
local FIX = os.getenv("VTL_FIXTURES") or "build/fixtures"

local SmallCNN = require "smallcnn"

T.test("small CNN: 50 SGD-momentum steps follow PyTorch's loss curve within 1e-4", function()
  local init = vtl.load(FIX .. "/train_init.safetensors")
  local data = vtl.load(FIX .. "/train_data.safetensors")
  local final = vtl.load(FIX .. "/train_final.safetensors")
  local model = SmallCNN()
  model:load_state_dict(init)
  model:train()
  local opt = vtl.optim.SGD(model:parameters(), {lr = 0.05, momentum = 0.9})
  local worst = 0
  for i = 1, 50 do
    opt:zero_grad()
    local loss = F.cross_entropy(model(data.x[i]), data.y[i])
    loss:backward()
    opt:step()
    local want = data.loss[i]:item()
    local err = math.abs(loss:item() - want)
    worst = math.max(worst, err)
    T.truthy(err <= 1e-4, string.format("step %d: loss %.7f, PyTorch %.7f", i, loss:item(), want))
  end
  print(string.format("  small CNN: max |loss - PyTorch| over 50 steps = %.2e", worst))
  local sd = model:state_dict()
  for name, want in pairs(final) do
    local got = sd[name]
    T.truthy(got ~= nil, "missing " .. name)
    T.close(got:double(), want:double(), 1e-3, name)
  end
end)

local function rss_kib()
  for line in io.lines("/proc/self/status") do
    local v = line:match("^VmRSS:%s+(%d+)")
    if v then return tonumber(v) end
  end
end

T.test("memory: 2000 training steps keep RSS flat (within 5%)", function()
  if not io.open("/proc/self/status") then return end
  if os.getenv("VTL_SAN") then -- ASan holds freed memory in quarantine: RSS says nothing there
    print("  skip: RSS under the sanitizer build (leaks are LeakSanitizer's job there)")
    return
  end
  vtl.seed(1)
  local model = SmallCNN()
  model:train()
  local opt = vtl.optim.SGD(model:parameters(), {lr = 0.01, momentum = 0.9})
  local x, y = vtl.randn(8, 1, 28, 28), vtl.randint(1, 11, {8})
  local steps = tonumber(os.getenv("VTL_RSS_STEPS")) or 2000
  local curve = {}
  for i = 1, steps do
    opt:zero_grad()
    local loss = F.cross_entropy(model(x), y)
    loss:backward()
    opt:step()
    if i % 200 == 0 then curve[#curve + 1] = rss_kib() end
  end
  local lo, hi = math.huge, 0
  for k = 2, #curve do lo = math.min(lo, curve[k]); hi = math.max(hi, curve[k]) end
  local parts = {}
  for k, v in ipairs(curve) do parts[k] = string.format("%d:%.1fMiB", k * 200, v / 1024) end
  print("  RSS every 200 steps: " .. table.concat(parts, " "))
  T.truthy(hi <= lo * 1.05, string.format("RSS grew from %.1f to %.1f MiB after warm-up", lo / 1024, hi / 1024))
end)
