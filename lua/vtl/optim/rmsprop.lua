-- RMSprop, optionally centered and with momentum (torch.optim.RMSprop).
local Optimizer = require "vtl.optim.optimizer"
local K = require "vtl.optim.kernels"

local core = require "vtl.core"
local check = Optimizer.check

-- sqrt(square_avg - grad_avg^2) after updating grad_avg: the centered second moment
local function centered(st, g, alpha, square_avg)
  local ga = st.grad_avg
  K.add_scaled_(ga:mul_(alpha), g, 1 - alpha)
  return K.addcmul_(square_avg:clone(), ga, ga, -1):sqrt_()
end

local function update(group, p, grad, st)
  local lr, alpha, eps, wd, momentum = group.lr, group.alpha, group.eps, group.weight_decay, group.momentum
  if not st.step then st.step, st.square_avg = 0, core.zeros_like(p) end
  if momentum > 0 and not st.momentum_buffer then st.momentum_buffer = core.zeros_like(p) end
  if group.centered and not st.grad_avg then st.grad_avg = core.zeros_like(p) end
  st.step = st.step + 1
  local neg <close> = group.maximize and grad:neg() or nil
  local g = neg or grad
  local decayed <close> = wd ~= 0 and g:clone() or nil
  if decayed then g = K.add_scaled_(decayed, p, wd) end
  local square_avg = st.square_avg
  K.addcmul_(square_avg:mul_(alpha), g, g, 1 - alpha)
  local avg <close> = group.centered and centered(st, g, alpha, square_avg) or square_avg:sqrt()
  avg:add_(eps)
  if momentum > 0 then
    local buf = st.momentum_buffer
    K.addcdiv_(buf:mul_(momentum), g, avg, 1)
    K.add_scaled_(p, buf, -lr)
  else
    K.addcdiv_(p, g, avg, -lr)
  end
end

local function validate(group, bad)
  check.number(group, bad, "lr", "learning rate", 0)
  check.number(group, bad, "alpha", "alpha value", 0)
  check.number(group, bad, "eps", "epsilon value", 0)
  check.number(group, bad, "weight_decay", "weight_decay value", 0)
  check.number(group, bad, "momentum", "momentum value", 0)
  check.boolean(group, bad, "centered")
  check.boolean(group, bad, "maximize")
end

---RMSprop(params, {lr = 1e-2, alpha = 0.99, eps = 1e-8, weight_decay = 0, momentum = 0, centered = false, maximize = false});
---state per parameter: step, square_avg (and momentum_buffer, grad_avg when used).
return Optimizer.define {
  name = "RMSprop",
  defaults = {lr = 1e-2, alpha = 0.99, eps = 1e-8, weight_decay = 0, momentum = 0, centered = false, maximize = false},
  check = validate,
  update = update,
}
