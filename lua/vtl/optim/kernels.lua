-- In-place update primitives shared by the optimizers, rounded the way PyTorch's CPU kernels
-- round: `y + a * x` (add with alpha) and addcmul's `y + (value * a) * b` end in one fused
-- multiply-add there, and the C kernels behind y:add_(x, a) and y:addcmul_ do the same (the
-- scalar rounded to the tensor's dtype first), so parameters that nearly cancel with their
-- update agree with PyTorch's to the last bit.
local M = {}

---y += a * x, in place on y (PyTorch's y.add_(x, alpha = a)).
---@param y vtl.Tensor
---@param x vtl.Tensor
---@param a number
---@return vtl.Tensor y
function M.add_scaled_(y, x, a)
  if a == 1 then return y:add_(x) end
  return y:add_(x, a)
end

---y += value * a * b, in place on y (PyTorch's addcmul_).
---@return vtl.Tensor y
function M.addcmul_(y, a, b, value) return y:addcmul_(a, b, value) end

---y += value * a / b, in place on y (PyTorch's addcdiv_).
---@return vtl.Tensor y
function M.addcdiv_(y, a, b, value) return y:addcdiv_(a, b, value) end

return M
