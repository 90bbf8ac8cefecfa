-- vtl.nn.utils: gradient clipping (PyTorch's clip_grad_norm_ / clip_grad_value_).
local core = require "vtl.core"

local M = {}

-- a tensor or a list of tensors -> the tensors that have a gradient
local function with_grads(params, fn)
  if core.is_tensor(params) then params = {params} end
  if type(params) ~= "table" then error(fn .. ": expected a tensor or a list of tensors, got " .. type(params), 3) end
  local out = {}
  for i, p in ipairs(params) do
    if not core.is_tensor(p) then error(("%s: element %d is a %s, expected a tensor"):format(fn, i, type(p)), 3) end
    local g = p.grad
    if g then out[#out + 1] = g end
  end
  return out
end

---Scales the gradients in place so that their total norm is at most max_norm; returns the
---total norm before clipping (a number). norm_type: a number or "inf".
---@param params vtl.Tensor|vtl.Tensor[]
---@param max_norm number
---@param opts {norm_type: number|string, error_if_nonfinite: boolean}|nil
---@return number
function M.clip_grad_norm(params, max_norm, opts)
  local grads = with_grads(params, "clip_grad_norm")
  local norm_type = opts and opts.norm_type or 2
  if norm_type == "inf" then norm_type = math.huge end
  if type(norm_type) ~= "number" then error("clip_grad_norm: norm_type must be a number or 'inf'", 2) end
  if type(max_norm) ~= "number" then error("clip_grad_norm: max_norm must be a number", 2) end
  if #grads == 0 then return 0.0 end
  local total
  core.no_grad(function()
    if norm_type == math.huge then
      total = 0.0
      for _, g in ipairs(grads) do total = math.max(total, g:abs():max():double():item()) end
    else
      local acc = 0.0
      for _, g in ipairs(grads) do acc = acc + g:double():norm(norm_type):item() ^ norm_type end
      total = acc ^ (1 / norm_type)
    end
  end)
  if total ~= total or total == math.huge then
    if opts and opts.error_if_nonfinite then
      error(("clip_grad_norm: the total norm of order %s of the gradients is non-finite"):format(tostring(norm_type)), 2)
    end
  end
  local coef = max_norm / (total + 1e-6)
  if coef < 1 then
    core.no_grad(function()
      for _, g in ipairs(grads) do g:mul_(coef) end
    end)
  end
  return total
end
M.clip_grad_norm_ = M.clip_grad_norm

---Clamps every gradient element into [-clip_value, clip_value] in place.
---@param params vtl.Tensor|vtl.Tensor[]
---@param clip_value number
function M.clip_grad_value(params, clip_value)
  local grads = with_grads(params, "clip_grad_value")
  if type(clip_value) ~= "number" then error("clip_grad_value: clip_value must be a number", 2) end
  core.no_grad(function()
    for _, g in ipairs(grads) do g:clamp_(-clip_value, clip_value) end
  end)
end
M.clip_grad_value_ = M.clip_grad_value

return M
