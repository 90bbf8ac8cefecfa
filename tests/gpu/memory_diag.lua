-- Diagnostic for a GPU machine: where ResNet-50's bf16 channels-last inference at batch 256
-- reaches its peak GPU memory. After each module call it reads the bytes held by tensors and the
-- peak so far; prints the baseline (weights and input), the largest output and the modules after
-- which the peak rose by more than 16 MiB. Run it again with VTL_CUDNN_GRAPH=0 to see the legacy
-- API's workspaces; PyTorch's peak for the same inference is in tests/bench/cuda.sh.
--   vtl tests/gpu/memory_diag.lua [batch]
local vtl = require "vtl"
local batch = tonumber(arg[1] or "256")
local MiB = 2 ^ 20
local m = vtl.models.create("resnet50", {num_classes = 1000}):cuda()
m:eval()
m:to_memory_format("channels_last")
local x = vtl.randn(batch, 3, 224, 224, {device = "cuda"}):contiguous("channels_last")
local function run() return vtl.no_grad(function() return vtl.autocast("bf16", function() return m(x) end) end) end
run()
collectgarbage()
collectgarbage()
vtl.cuda.synchronize()
vtl.cuda.reset_peak_memory_stats()
local base = vtl.cuda.memory_stats().allocated
local largest, last_peak, rises = 0, base, {}
local BYTES = {f32 = 4, f64 = 8, bf16 = 2, f16 = 2}
for _, mod in ipairs(m:modules()) do
  mod:register_forward_hook(function(me, _, out)
    local st = vtl.cuda.memory_stats()
    if vtl.is_tensor(out) then largest = math.max(largest, out:numel() * (BYTES[out.dtype] or 8)) end
    if st.peak > last_peak + 16 * MiB then
      rises[#rises + 1] = ("%-14s peak %.0f MiB (held now %.0f MiB)"):format(rawget(getmetatable(me), "__name") or "?",
        st.peak / MiB, st.allocated / MiB)
      last_peak = st.peak
    end
  end)
end
run()
vtl.cuda.synchronize()
local st = vtl.cuda.memory_stats()
print(("batch %d: held before the call %.0f MiB, peak %.0f MiB, largest output %.0f MiB, cached %.0f MiB"):format(batch,
  base / MiB, st.peak / MiB, largest / MiB, st.cached / MiB))
for _, r in ipairs(rises) do print("  " .. r) end
