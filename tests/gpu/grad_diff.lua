-- Diagnostic for a GPU machine: one training-mode forward and backward of a zoo model on the CPU
-- and on the GPU from the same weights and batch; prints, per parameter, the largest relative
-- difference of the gradients (and of the outputs), largest first.
--   vtl tests/gpu/grad_diff.lua [model] [batch] [size] [channels_last]
local vtl = require "vtl"
if vtl.cuda.is_available() then vtl.cuda.cudnn{allow_tf32 = false} end -- exact f32 against the CPU
local F = vtl.nn.functional
local name, batch, size = arg[1] or "resnet18", tonumber(arg[2] or "16"), tonumber(arg[3] or "64")
vtl.seed(3)
local cpu = vtl.models.create(name, {num_classes = 10})
local gpu = vtl.models.create(name, {num_classes = 10})
gpu:load_state_dict(cpu:state_dict())
gpu:cuda()
cpu:train(); gpu:train()
local x = vtl.randn(batch, 3, size, size)
local y = vtl.randint(1, 11, {batch})
local function run(m, xx, yy)
  local out = m(xx)
  local loss = F.cross_entropy(out, yy)
  loss:backward()
  return out, loss
end
if arg[4] == "channels_last" then gpu:to_memory_format("channels_last") end
vtl.seed(5) -- the same dropout masks on both devices
local oc, lc = run(cpu, x, y)
vtl.seed(5)
local og, lg = run(gpu, x:cuda(), y:cuda())
local function rel(a, b)
  local d = (a - b):abs():max():item()
  return d / math.max(b:abs():max():item(), 1e-12), d
end
print(("loss cpu %.9g gpu %.9g; logits max rel diff %.3g"):format(lc:item(), lg:item(), (rel(og:detach():cpu(), oc:detach()))))
local rows = {}
local pc, pg = cpu:named_parameters(), gpu:named_parameters()
for i, e in ipairs(pc) do
  local gc, gg = e[2].grad, pg[i][2].grad
  if gc and gg then
    local r, d = rel(gg:cpu(), gc)
    rows[#rows + 1] = {e[1], r, d}
  end
end
table.sort(rows, function(a, b) return a[2] > b[2] end)
for i = 1, math.min(tonumber(os.getenv("GRAD_DIFF_ROWS") or "15"), #rows) do print(("%-40s grad max rel diff %.3g (abs %.3g)"):format(rows[i][1], rows[i][2], rows[i][3])) end
