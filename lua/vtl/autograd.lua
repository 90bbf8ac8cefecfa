-- vtl.autograd: custom differentiable functions, gradient checking, gradient reversal.
local core = require "vtl.core"

local M = {}

---Makes a differentiable function from a forward and a backward written in Lua.
---forward(ctx, ...) runs without recording and returns one tensor; backward(ctx, grad_out)
---returns one gradient (or nil) per argument of forward, in order.
---@param def {forward: fun(ctx: table, ...): vtl.Tensor, backward: fun(ctx: table, g: vtl.Tensor): ...}
---@return fun(...): vtl.Tensor
function M.Function(def)
  assert(type(def) == "table" and type(def.forward) == "function" and type(def.backward) == "function",
    "autograd.Function: expected {forward = function, backward = function}")
  local name = def.name or "FunctionBackward"
  return function(...)
    local args = table.pack(...)
    local ctx = {needs_input_grad = {}}
    for i = 1, args.n do
      ctx.needs_input_grad[i] = core.is_tensor(args[i]) and args[i].requires_grad or false
    end
    function ctx.save_for_backward(self, ...)
      self.saved_tensors = table.pack(...)
    end
    local out = core.no_grad(def.forward, ctx, ...)
    if not core.is_tensor(out) then error("autograd.Function: forward must return a tensor, got " .. type(out), 2) end
    return core._record_function(out, args, args.n, function(g) return def.backward(ctx, g) end, name)
  end
end

---Gradient reversal: identity forward, gradient multiplied by -coeff backward (DANN).
---@param x vtl.Tensor
---@param coeff number|nil
---@return vtl.Tensor
M.grad_reverse = M.Function {
  name = "GradReverseBackward",
  forward = function(ctx, x, coeff)
    ctx.coeff = coeff or 1
    return x:clone()
  end,
  backward = function(ctx, g) return g * (-ctx.coeff) end,
}

local function flat(t) return t:contiguous():view(-1) end

---Checks fn's gradients against central finite differences in f64: for a random weighting v
---of fn's output, compares the vector-Jacobian product from backward with the numerical one,
---element by element of every input that requires grad. Raises on a mismatch, else true.
---@param fn fun(...): vtl.Tensor
---@param inputs vtl.Tensor[]
---@param opts {eps: number, atol: number, rtol: number}|nil
function M.gradcheck(fn, inputs, opts)
  opts = opts or {}
  local eps, atol, rtol = opts.eps or 1e-6, opts.atol or 1e-5, opts.rtol or 1e-3
  for i, x in ipairs(inputs) do
    if core.is_tensor(x) and x.requires_grad and x.dtype ~= "f64" then
      error(("gradcheck: input %d is %s; use f64 inputs"):format(i, x.dtype), 2)
    end
  end
  local out = fn(table.unpack(inputs))
  local v = core.randn(out.shape, {dtype = "f64", generator = core.Generator(1234)})
  for _, x in ipairs(inputs) do if core.is_tensor(x) then x.grad = nil end end
  out:backward(v:to(out.dtype))
  local function objective()
    return core.no_grad(function() return (fn(table.unpack(inputs)):double() * v):sum():item() end)
  end
  for i, x in ipairs(inputs) do
    if core.is_tensor(x) and x.requires_grad then
      local analytic = x.grad and flat(x.grad) or core.zeros(x:numel(), {dtype = "f64"})
      local data = flat(x:detach())
      if data:numel() > 0 and x:detach():is_contiguous() == false then
        error("gradcheck: inputs must be contiguous", 2)
      end
      for k = 1, data:numel() do
        local orig = data[k]:item()
        core.no_grad(function() data[k] = orig + eps end)
        local up = objective()
        core.no_grad(function() data[k] = orig - eps end)
        local down = objective()
        core.no_grad(function() data[k] = orig end)
        local numeric = (up - down) / (2 * eps)
        local a = analytic[k]:item()
        if math.abs(a - numeric) > atol + rtol * math.abs(numeric) then
          error(("gradcheck: input %d, element %d: backward gives %.10g, finite differences %.10g"):format(i, k, a, numeric), 2)
        end
      end
    end
  end
  return true
end

return M
