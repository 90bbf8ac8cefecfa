-- Adam (L2 weight decay added to the gradient) and AdamW (decoupled weight decay), as
-- torch.optim.Adam / AdamW; amsgrad keeps the running maximum of the second moment.
local Optimizer = require "vtl.optim.optimizer"
local K = require "vtl.optim.kernels"

local core = require "vtl.core"
local check = Optimizer.check

local function update(group, p, grad, st, decoupled)
  local lr, wd, eps = group.lr, group.weight_decay, group.eps
  local beta1, beta2 = group.betas[1], group.betas[2]
  if not st.step then
    st.step, st.exp_avg, st.exp_avg_sq = 0, core.zeros_like(p), core.zeros_like(p)
  end
  if group.amsgrad and not st.max_exp_avg_sq then st.max_exp_avg_sq = core.zeros_like(p) end
  local step = st.step + 1
  st.step = step
  if core._adam_step_(p, grad, st.exp_avg, st.exp_avg_sq, group.amsgrad and st.max_exp_avg_sq or nil,
      {lr = lr, beta1 = beta1, beta2 = beta2, eps = eps, weight_decay = wd, decoupled = decoupled, step = step,
       maximize = group.maximize}) then
    return
  end
  local neg <close> = group.maximize and grad:neg() or nil
  local g = neg or grad
  if decoupled and wd ~= 0 then p:mul_(1 - lr * wd) end
  local decayed <close> = not decoupled and wd ~= 0 and g:clone() or nil
  if decayed then g = K.add_scaled_(decayed, p, wd) end
  local m, v = st.exp_avg, st.exp_avg_sq
  K.add_scaled_(m:mul_(beta1), g, 1 - beta1)
  K.addcmul_(v:mul_(beta2), g, g, 1 - beta2)
  local step_size = lr / (1 - beta1 ^ step)
  local bias_correction2_sqrt = math.sqrt(1 - beta2 ^ step)
  local second = v
  if group.amsgrad then second = st.max_exp_avg_sq:maximum_(v) end
  local denom <close> = second:sqrt()
  denom:div_(bias_correction2_sqrt):add_(eps)
  K.addcdiv_(p, m, denom, -step_size)
end

-- the group's parameters on a GPU in a few fused launches; returns the items left to `update`
local function update_many(group, items, decoupled)
  if #items == 0 or items[1].p.device == "cpu" then return items end
  local recs = {}
  for i, it in ipairs(items) do
    local st = it.st
    if not st.step then st.step, st.exp_avg, st.exp_avg_sq = 0, core.zeros_like(it.p), core.zeros_like(it.p) end
    if group.amsgrad and not st.max_exp_avg_sq then st.max_exp_avg_sq = core.zeros_like(it.p) end
    recs[i] = {p = it.p, g = it.grad, a = st.exp_avg, b = st.exp_avg_sq, c = group.amsgrad and st.max_exp_avg_sq or nil,
               step = st.step + 1}
  end
  if not core._optim_multi("adam", recs, {lr = group.lr, beta1 = group.betas[1], beta2 = group.betas[2], eps = group.eps,
      weight_decay = group.weight_decay, decoupled = decoupled, maximize = group.maximize}) then
    return items
  end
  for _, it in ipairs(items) do it.st.step = it.st.step + 1 end
  return {}
end

local function validate(group, bad)
  check.number(group, bad, "lr", "learning rate", 0)
  check.number(group, bad, "eps", "epsilon value", 0)
  check.betas(group, bad, "betas")
  check.number(group, bad, "weight_decay", "weight_decay value", 0)
  check.boolean(group, bad, "amsgrad")
  check.boolean(group, bad, "maximize")
end

local M = {}

---Adam(params, {lr = 1e-3, betas = {0.9, 0.999}, eps = 1e-8, weight_decay = 0, amsgrad = false, maximize = false});
---state per parameter: step, exp_avg, exp_avg_sq (and max_exp_avg_sq with amsgrad).
M.Adam = Optimizer.define {
  name = "Adam",
  defaults = {lr = 1e-3, betas = {0.9, 0.999}, eps = 1e-8, weight_decay = 0, amsgrad = false, maximize = false},
  check = validate,
  update = function(group, p, grad, st) return update(group, p, grad, st, false) end,
  update_many = function(group, items) return update_many(group, items, false) end,
}

---AdamW(params, {lr = 1e-3, betas = {0.9, 0.999}, eps = 1e-8, weight_decay = 1e-2, amsgrad = false, maximize = false}):
---Adam whose weight decay shrinks the parameters directly (p *= 1 - lr * weight_decay).
M.AdamW = Optimizer.define {
  name = "AdamW",
  defaults = {lr = 1e-3, betas = {0.9, 0.999}, eps = 1e-8, weight_decay = 1e-2, amsgrad = false, maximize = false},
  check = validate,
  update = function(group, p, grad, st) return update(group, p, grad, st, true) end,
  update_many = function(group, items) return update_many(group, items, true) end,
}

return M
