-- SGD with momentum, dampening, Nesterov momentum and L2 weight decay (torch.optim.SGD).
local Optimizer = require "vtl.optim.optimizer"
local K = require "vtl.optim.kernels"

local check = Optimizer.check

-- the momentum buffer after this step's gradient d (a copy of d on the first step)
local function momentum_buffer(group, st, d)
  local buf = st.momentum_buffer
  if not buf then
    buf = d:clone()
    st.momentum_buffer = buf
  else
    K.add_scaled_(buf:mul_(group.momentum), d, 1 - group.dampening)
  end
  return buf
end

local core = require "vtl.core"

local function update(group, p, grad, st)
  local lr, wd, momentum = group.lr, group.weight_decay, group.momentum
  -- one fused pass for contiguous f32 parameters
  local first = momentum ~= 0 and not st.momentum_buffer
  if first and p.dtype == "f32" and p:is_contiguous() then st.momentum_buffer = core.empty_like(p) end
  if core._sgd_step_(p, grad, st.momentum_buffer, {lr = lr, momentum = momentum, dampening = group.dampening,
      weight_decay = wd, nesterov = group.nesterov, maximize = group.maximize, first = first}) then
    return
  end
  if first then st.momentum_buffer = nil end
  local neg <close> = group.maximize and grad:neg() or nil
  local d = neg or grad
  local decayed <close> = wd ~= 0 and d:clone() or nil
  if decayed then d = K.add_scaled_(decayed, p, wd) end
  if momentum ~= 0 then
    local buf = momentum_buffer(group, st, d)
    if group.nesterov then
      local ahead <close> = d:clone()
      K.add_scaled_(p, K.add_scaled_(ahead, buf, momentum), -lr)
      return
    end
    d = buf
  end
  K.add_scaled_(p, d, -lr)
end

-- the group's parameters on a GPU in a few fused launches; returns the items left to `update`
local function update_many(group, items)
  if #items == 0 or items[1].p.device == "cpu" then return items end
  local momentum, recs = group.momentum, {}
  for i, it in ipairs(items) do
    local first = momentum ~= 0 and not it.st.momentum_buffer
    if first then it.st.momentum_buffer = core.empty_like(it.p) end
    recs[i] = {p = it.p, g = it.grad, a = it.st.momentum_buffer, first = first}
  end
  if core._optim_multi("sgd", recs, {lr = group.lr, momentum = momentum, dampening = group.dampening,
      weight_decay = group.weight_decay, nesterov = group.nesterov, maximize = group.maximize}) then
    return {}
  end
  for i, r in ipairs(recs) do if r.first then items[i].st.momentum_buffer = nil end end
  return items
end

local function validate(group, bad)
  check.number(group, bad, "lr", "learning rate", 0)
  check.number(group, bad, "momentum", "momentum value", 0)
  check.number(group, bad, "dampening", "dampening value", -math.huge)
  check.number(group, bad, "weight_decay", "weight_decay value", 0)
  check.boolean(group, bad, "nesterov")
  check.boolean(group, bad, "maximize")
  if group.nesterov and (group.momentum <= 0 or group.dampening ~= 0) then
    bad("Nesterov momentum requires a momentum and zero dampening")
  end
end

---SGD(params, {lr, momentum = 0, dampening = 0, weight_decay = 0, nesterov = false, maximize = false});
---state per parameter: momentum_buffer (when momentum ~= 0).
return Optimizer.define {
  name = "SGD",
  defaults = {lr = Optimizer.REQUIRED, momentum = 0, dampening = 0, weight_decay = 0, nesterov = false, maximize = false},
  check = validate,
  update = update,
  update_many = update_many,
}
