-- Batch-norm cases shared by the CPU tests (test_nn_norm.lua) and the GPU tests (test_cuda.lua).
local T = require "testlib"
local vtl = require "vtl"
local F = vtl.nn.functional

local M = {}

---The fused backward's mask at its edges on `device`, in rows and planes and in f32/bf16: the
---output exactly on the clamp's bounds stops the gradient, +inf passes relu's and stops relu6's,
---NaN passes (as PyTorch's relu and relu6 backward). A weight gradient makes the masked sums
---pass run in eval mode.
---@param device string
function M.mask_edges(device)
  local vals = {-1, 0, 3, 6, 8, math.huge, 0 / 0}
  local want = {relu = {0, 0, 1, 1, 1, 1, 1}, relu6 = {0, 0, 1, 0, 0, 0, 1}}
  for _, dt in ipairs({"f32", "bf16"}) do
    for _, shape in ipairs({{7, 1}, {1, 1, 7}}) do -- rows of one channel; one plane of 7
      for act, mask in pairs(want) do
        local x = vtl.tensor(vals):view(table.unpack(shape)):to(dt):to(device):requires_grad_()
        local w = vtl.ones(1, {device = device}):requires_grad_()
        local y = F.batch_norm(x, vtl.zeros(1, {device = device}), vtl.ones(1, {device = device}), w, nil,
                               {act = act, eps = 0})
        y:backward(vtl.ones(y.shape, {device = device}):to(dt))
        local g = x.grad:cpu():float():view(7)
        for i = 1, 7 do
          T.eq(g[i]:item(), mask[i], ("%s %s %s %s: gradient at %s"):format(device, dt, table.concat(shape, "x"), act,
                                                                           tostring(vals[i])))
        end
      end
    end
  end
end

return M
