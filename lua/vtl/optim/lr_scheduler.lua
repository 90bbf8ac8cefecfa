-- vtl.optim.lr_scheduler: learning-rate schedules with PyTorch's formulas and step conventions.
--
-- A scheduler changes `lr` of each of an optimizer's parameter groups (and, for OneCycleLR, the
-- momentum or Adam's beta1). Creating one sets the lrs for step 0; each `sched:step()` moves one
-- step (an epoch or a batch — the caller decides). Each group keeps its own base lr (its
-- `initial_lr`, recorded at creation), so groups with different learning rates (discriminative
-- fine-tuning) are all scaled by the same schedule.
--
--   local sched = vtl.optim.lr_scheduler.CosineAnnealingLR(opt, {T_max = epochs})
--   for epoch = 1, epochs do train_one_epoch(); sched:step() end
--   local warm = lr_scheduler.warmup(lr_scheduler.CosineAnnealingLR(opt, {T_max = 90}), 5)
local M = {}

local pi, cos, floor = math.pi, math.cos, math.floor

local function fail(msg) error(msg, 3) end

local function check_number(name, opts, key, lo, hi, default)
  local v = opts[key]
  if v == nil then
    if default == nil then fail(("%s: option '%s' is required"):format(name, key)) end
    return default
  end
  if type(v) ~= "number" or v ~= v or (lo and v < lo) or (hi and v > hi) then
    local range = lo and hi and (" in [" .. lo .. ", " .. hi .. "]") or lo and (" >= " .. lo) or ""
    fail(("%s: option '%s' must be a number%s, got %s"):format(name, key, range, tostring(v)))
  end
  return v
end

local function check_int(name, opts, key, lo, default)
  local v = check_number(name, opts, key, lo, nil, default)
  if math.type(v) ~= "integer" then fail(("%s: option '%s' must be an integer, got %s"):format(name, key, tostring(v))) end
  return v
end

local function check_optimizer(name, opt)
  if type(opt) ~= "table" or type(opt.param_groups) ~= "table" then
    fail(name .. ": expected an optimizer (a table with param_groups)")
  end
end

local Scheduler = {}
Scheduler.__index = Scheduler

-- A scheduler over opt whose lr at step e for a group with base lr b is factor(self, e, b, k)
-- (k the group number).
local function new(cls, name, opt, fields)
  check_optimizer(name, opt)
  local self = setmetatable(fields or {}, cls)
  self.name, self.optimizer, self.last_epoch = name, opt, 0
  self.base_lrs = {}
  for k, g in ipairs(opt.param_groups) do
    if g.initial_lr == nil then g.initial_lr = g.lr end
    self.base_lrs[k] = g.initial_lr
  end
  return self
end

local function class(parent)
  local c = setmetatable({}, {__index = parent})
  c.__index = c
  return c
end

function Scheduler:_apply()
  local lrs = {}
  for k, g in ipairs(self.optimizer.param_groups) do
    local b = self.base_lrs[k]
    if b == nil then
      b = g.initial_lr or g.lr -- a group added after the scheduler was made
      self.base_lrs[k] = b
    end
    g.lr = self:lr_at(self.last_epoch, b, k)
    lrs[k] = g.lr
  end
  self._last_lr = lrs
end

---Moves one step (or to step `epoch` when given) and sets the groups' lrs.
---@param epoch? integer
function Scheduler:step(epoch)
  if epoch ~= nil then
    if type(epoch) ~= "number" then fail(self.name .. ":step: epoch must be a number, got " .. type(epoch)) end
    self.last_epoch = epoch
  else
    self.last_epoch = self.last_epoch + 1
  end
  self:_apply()
end

---The lr of each group after the last step (a list).
---@return number[]
function Scheduler:get_last_lr()
  local out = {}
  for k, v in ipairs(self._last_lr or {}) do out[k] = v end
  return out
end

-- fields saved by state_dict: plain numbers, strings, booleans and lists of numbers
local function plain(v)
  local t = type(v)
  if t == "number" or t == "string" or t == "boolean" then return true end
  if t == "table" then
    for k, x in pairs(v) do if math.type(k) ~= "integer" or type(x) ~= "number" then return false end end
    return getmetatable(v) == nil
  end
  return false
end

---The schedule's state (step count, base lrs and its own counters), for checkpoints.
---@return table
function Scheduler:state_dict()
  local s = {}
  for k, v in pairs(self) do
    if k ~= "optimizer" and k ~= "inner" and k:sub(1, 1) ~= "_" and plain(v) then
      s[k] = type(v) == "table" and {table.unpack(v)} or v
    end
  end
  if self.inner then s.inner = self.inner:state_dict() end
  return s
end

---Restores a state from state_dict() and sets the groups' lrs accordingly.
---@param s table
function Scheduler:load_state_dict(s)
  if type(s) ~= "table" then fail(self.name .. ":load_state_dict: expected a table") end
  if s.name ~= nil and s.name ~= self.name then
    fail(("%s:load_state_dict: the state is of a %s"):format(self.name, tostring(s.name)))
  end
  for k, v in pairs(s) do
    if k == "inner" then
      if self.inner then self.inner:load_state_dict(v) end
    else
      self[k] = type(v) == "table" and {table.unpack(v)} or v
    end
  end
  self:_apply()
end

-- ---- fixed schedules ----

local LambdaLR = class(Scheduler)
function LambdaLR:lr_at(e, b, k) return b * self.lr_lambda(e, k) end
---lr = base * lr_lambda(step, group): a function of the step count (and group number).
---@param opt table
---@param lr_lambda fun(step: integer, group: integer): number
function M.LambdaLR(opt, lr_lambda)
  if type(lr_lambda) ~= "function" then fail("LambdaLR: lr_lambda must be a function") end
  local s = new(LambdaLR, "LambdaLR", opt, {})
  s.lr_lambda = lr_lambda
  s:_apply()
  return s
end

local StepLR = class(Scheduler)
function StepLR:lr_at(e, b) return b * self.gamma ^ (e // self.step_size) end
---lr = base * gamma^floor(step / step_size).
---@param opts {step_size: integer, gamma: number|nil}
function M.StepLR(opt, opts)
  opts = opts or {}
  local s = new(StepLR, "StepLR", opt, {step_size = check_int("StepLR", opts, "step_size", 1),
                                        gamma = check_number("StepLR", opts, "gamma", 0, nil, 0.1)})
  s:_apply()
  return s
end

local MultiStepLR = class(Scheduler)
function MultiStepLR:lr_at(e, b)
  local n = 0
  for _, m in ipairs(self.milestones) do if e >= m then n = n + 1 end end
  return b * self.gamma ^ n
end
---lr = base * gamma^(number of milestones reached).
---@param opts {milestones: integer[], gamma: number|nil}
function M.MultiStepLR(opt, opts)
  opts = opts or {}
  local ms = opts.milestones
  if type(ms) ~= "table" then fail("MultiStepLR: option 'milestones' must be a list of step counts") end
  local sorted = {}
  for i, m in ipairs(ms) do
    if math.type(m) ~= "integer" or m < 0 then fail(("MultiStepLR: milestones[%d] must be a non-negative integer"):format(i)) end
    sorted[i] = m
  end
  table.sort(sorted)
  local s = new(MultiStepLR, "MultiStepLR", opt, {milestones = sorted,
                                                  gamma = check_number("MultiStepLR", opts, "gamma", 0, nil, 0.1)})
  s:_apply()
  return s
end

local ExponentialLR = class(Scheduler)
function ExponentialLR:lr_at(e, b) return b * self.gamma ^ e end
---lr = base * gamma^step.
---@param opts {gamma: number}
function M.ExponentialLR(opt, opts)
  opts = opts or {}
  local s = new(ExponentialLR, "ExponentialLR", opt, {gamma = check_number("ExponentialLR", opts, "gamma", 0)})
  s:_apply()
  return s
end

local LinearLR = class(Scheduler)
function LinearLR:lr_at(e, b)
  local t = math.min(e, self.total_iters) / self.total_iters
  return b * (self.start_factor + (self.end_factor - self.start_factor) * t)
end
---lr = base * factor, the factor going linearly from start_factor to end_factor over
---total_iters steps, then staying.
---@param opts {start_factor: number|nil, end_factor: number|nil, total_iters: integer|nil}
function M.LinearLR(opt, opts)
  opts = opts or {}
  local s = new(LinearLR, "LinearLR", opt, {
    start_factor = check_number("LinearLR", opts, "start_factor", 0, 1, 1 / 3),
    end_factor = check_number("LinearLR", opts, "end_factor", 0, 1, 1.0),
    total_iters = check_int("LinearLR", opts, "total_iters", 1, 5)})
  s:_apply()
  return s
end

local CosineAnnealingLR = class(Scheduler)
function CosineAnnealingLR:lr_at(e, b)
  return self.eta_min + (b - self.eta_min) * (1 + cos(pi * e / self.T_max)) / 2
end
---lr = eta_min + (base - eta_min)(1 + cos(pi step / T_max))/2.
---@param opts {T_max: integer, eta_min: number|nil}
function M.CosineAnnealingLR(opt, opts)
  opts = opts or {}
  local s = new(CosineAnnealingLR, "CosineAnnealingLR", opt, {
    T_max = check_number("CosineAnnealingLR", opts, "T_max", 1e-12),
    eta_min = check_number("CosineAnnealingLR", opts, "eta_min", 0, nil, 0)})
  s:_apply()
  return s
end

local WarmRestarts = class(Scheduler)
-- the position (T_cur, T_i) of a (possibly fractional) epoch in the restart cycles
local function restart_cycle(T0, mult, e)
  if e < T0 then return e, T0 end
  if mult == 1 then return e % T0, T0 end
  local n = floor(math.log(e / T0 * (mult - 1) + 1, mult))
  return e - T0 * (mult ^ n - 1) / (mult - 1), T0 * mult ^ n
end
function WarmRestarts:lr_at(e, b)
  local tc, ti = self.T_cur, self.T_i
  if e ~= self.counted_epoch then tc, ti = restart_cycle(self.T_0, self.T_mult, e) end
  return self.eta_min + (b - self.eta_min) * (1 + cos(pi * tc / ti)) / 2
end
-- whole steps are counted (T_cur += 1, restarting at T_i) as PyTorch does; step(epoch) computes
-- the cycle from the epoch
function WarmRestarts:step(epoch)
  if epoch == nil then
    self.last_epoch = self.last_epoch + 1
    self.T_cur = self.T_cur + 1
    if self.T_cur >= self.T_i then self.T_cur, self.T_i = self.T_cur - self.T_i, self.T_i * self.T_mult end
  else
    if type(epoch) ~= "number" or epoch < 0 then fail(self.name .. ":step: epoch must be a non-negative number") end
    self.last_epoch = epoch
    self.T_cur, self.T_i = restart_cycle(self.T_0, self.T_mult, epoch)
  end
  self.counted_epoch = self.last_epoch
  self:_apply()
end
---Cosine annealing restarted every T_i steps, T_0 first and each cycle T_mult times longer.
---step(epoch) accepts fractional epochs (e.g. epoch + batch / batches).
---@param opts {T_0: integer, T_mult: integer|nil, eta_min: number|nil}
function M.CosineAnnealingWarmRestarts(opt, opts)
  opts = opts or {}
  local s = new(WarmRestarts, "CosineAnnealingWarmRestarts", opt, {
    T_0 = check_int("CosineAnnealingWarmRestarts", opts, "T_0", 1),
    T_mult = check_int("CosineAnnealingWarmRestarts", opts, "T_mult", 1, 1),
    eta_min = check_number("CosineAnnealingWarmRestarts", opts, "eta_min", 0, nil, 0)})
  s.T_cur, s.T_i, s.counted_epoch = 0, s.T_0, 0
  s:_apply()
  return s
end

-- ---- warm-up in front of another schedule ----

local Warmup = class(Scheduler)
function Warmup:lr_at(e, b, k)
  if e < self.warmup_steps then
    return b * (self.start_factor + (1 - self.start_factor) * e / self.warmup_steps)
  end
  return self.inner:lr_at(e - self.warmup_steps, b, k)
end
---Linear warm-up for `steps` steps (lr from base * start_factor up to base), then `sched`
---from its own step 0 (PyTorch's SequentialLR of a LinearLR and sched).
---@param sched table  another scheduler on the same optimizer
---@param steps integer
---@param opts? {start_factor: number|nil}
function M.warmup(sched, steps, opts)
  opts = opts or {}
  if type(sched) ~= "table" or type(sched.lr_at) ~= "function" then fail("warmup: expected a scheduler") end
  if sched.name == "ReduceLROnPlateau" or sched.name == "OneCycleLR" then
    fail("warmup: " .. sched.name .. " has its own warm-up or none")
  end
  if math.type(steps) ~= "integer" or steps < 1 then fail("warmup: steps must be a positive integer") end
  local s = new(Warmup, "Warmup", sched.optimizer, {warmup_steps = steps,
    start_factor = check_number("warmup", opts, "start_factor", 0, 1, 1e-3)})
  s.inner = sched
  s.base_lrs = sched.base_lrs
  s:_apply()
  return s
end

-- ---- one-cycle ----

local OneCycleLR = class(Scheduler)

local function anneal(kind, from, to, pct)
  if kind == "cos" then return to + (from - to) / 2 * (1 + cos(pi * pct)) end
  return (to - from) * pct + from
end

-- the phases as PyTorch lays them out: {end_step, lr from, lr to, momentum from, momentum to}
function OneCycleLR:phases()
  local total, pct = self.total_steps, self.pct_start
  if self.three_phase then
    return {
      {pct * total - 1, "initial", "max", "max_m", "base_m"},
      {2 * pct * total - 2, "max", "initial", "base_m", "max_m"},
      {total - 1, "initial", "min", "max_m", "max_m"}}
  end
  return {{pct * total - 1, "initial", "max", "max_m", "base_m"}, {total - 1, "max", "min", "base_m", "max_m"}}
end

function OneCycleLR:point(e, k)
  local g = self.groups[k]
  local start, lr, mom = 0, nil, nil
  for i, ph in ipairs(self:phases()) do
    local stop = ph[1]
    if e <= stop or i == #self:phases() then
      -- a phase of no length (pct_start * total_steps = 1: warm-up ends at step 0) is taken as
      -- complete, where PyTorch divides by zero
      local pct = stop > start and (e - start) / (stop - start) or 1
      lr = anneal(self.anneal_strategy, g[ph[2]], g[ph[3]], pct)
      mom = anneal(self.anneal_strategy, g[ph[4]], g[ph[5]], pct)
      break
    end
    start = stop
  end
  return lr, mom
end

function OneCycleLR:lr_at(e, b, k) return (self:point(e, k)) end

function OneCycleLR:_apply()
  if self.last_epoch > self.total_steps then
    fail(("OneCycleLR: stepped %d times, more than total_steps (%d)"):format(self.last_epoch, self.total_steps))
  end
  local lrs = {}
  for k, grp in ipairs(self.optimizer.param_groups) do
    local lr, mom = self:point(self.last_epoch, k)
    grp.lr = lr
    if self.cycle_momentum then
      if type(grp.betas) == "table" then grp.betas = {mom, grp.betas[2]} else grp.momentum = mom end
    end
    lrs[k] = lr
  end
  self._last_lr = lrs
end

---fastai/Leslie Smith one-cycle: lr rises from max_lr/div_factor to max_lr over pct_start of
---total_steps, then anneals to max_lr/(div_factor*final_div_factor); momentum (or Adam's beta1)
---moves the opposite way between max_momentum and base_momentum. max_lr may be a list per group.
---@param opts {max_lr: number|number[], total_steps: integer|nil, epochs: integer|nil, steps_per_epoch: integer|nil, pct_start: number|nil, anneal_strategy: string|nil, div_factor: number|nil, final_div_factor: number|nil, three_phase: boolean|nil, cycle_momentum: boolean|nil, base_momentum: number|nil, max_momentum: number|nil}
function M.OneCycleLR(opt, opts)
  opts = opts or {}
  local name = "OneCycleLR"
  check_optimizer(name, opt)
  local total = opts.total_steps
  if total == nil then
    local ep, spe = opts.epochs, opts.steps_per_epoch
    if math.type(ep) ~= "integer" or ep < 1 or math.type(spe) ~= "integer" or spe < 1 then
      fail(name .. ": give total_steps, or epochs and steps_per_epoch (positive integers)")
    end
    total = ep * spe
  elseif math.type(total) ~= "integer" or total < 1 then
    fail(name .. ": option 'total_steps' must be a positive integer, got " .. tostring(total))
  end
  local strategy = opts.anneal_strategy or "cos"
  if strategy ~= "cos" and strategy ~= "linear" then fail(name .. ": anneal_strategy must be \"cos\" or \"linear\"") end
  local fields = {
    total_steps = total, anneal_strategy = strategy,
    pct_start = check_number(name, opts, "pct_start", 0, 1, 0.3),
    div_factor = check_number(name, opts, "div_factor", 1e-12, nil, 25),
    final_div_factor = check_number(name, opts, "final_div_factor", 1e-12, nil, 1e4),
    three_phase = opts.three_phase or false,
    cycle_momentum = opts.cycle_momentum ~= false,
    base_momentum = check_number(name, opts, "base_momentum", 0, 1, 0.85),
    max_momentum = check_number(name, opts, "max_momentum", 0, 1, 0.95),
  }
  local max_lr = opts.max_lr
  local groups = {}
  for k, g in ipairs(opt.param_groups) do
    local m = type(max_lr) == "table" and max_lr[k] or max_lr
    if type(m) ~= "number" or m <= 0 then
      fail(name .. ": option 'max_lr' must be a positive number or one per parameter group")
    end
    local initial = m / fields.div_factor
    groups[k] = {initial = initial, max = m, min = initial / fields.final_div_factor,
                 max_m = fields.max_momentum, base_m = fields.base_momentum}
    g.initial_lr, g.max_lr, g.min_lr = initial, m, groups[k].min
    if fields.cycle_momentum and type(g.betas) ~= "table" and g.momentum == nil then
      fail(name .. ": cycle_momentum needs an optimizer with momentum or betas (or cycle_momentum = false)")
    end
  end
  if type(max_lr) == "table" and #max_lr ~= #opt.param_groups then
    fail(("%s: max_lr has %d entries for %d parameter groups"):format(name, #max_lr, #opt.param_groups))
  end
  local s = new(OneCycleLR, name, opt, fields)
  s.groups = groups
  s:_apply()
  return s
end

-- ---- reduce on plateau ----

local Plateau = {}
Plateau.__index = Plateau

---Multiplies the lrs by `factor` when the monitored metric has not improved for `patience`
---steps: sched:step(metric). mode "min" (default) or "max"; threshold_mode "rel" or "abs";
---cooldown steps after a reduction; min_lr (a number or one per group); changes smaller than
---eps are ignored.
---@param opts {mode: string|nil, factor: number|nil, patience: integer|nil, threshold: number|nil, threshold_mode: string|nil, cooldown: integer|nil, min_lr: number|number[]|nil, eps: number|nil}
function M.ReduceLROnPlateau(opt, opts)
  opts = opts or {}
  local name = "ReduceLROnPlateau"
  check_optimizer(name, opt)
  local mode, tmode = opts.mode or "min", opts.threshold_mode or "rel"
  if mode ~= "min" and mode ~= "max" then fail(name .. ": mode must be \"min\" or \"max\"") end
  if tmode ~= "rel" and tmode ~= "abs" then fail(name .. ": threshold_mode must be \"rel\" or \"abs\"") end
  local factor = check_number(name, opts, "factor", 0, nil, 0.1)
  if factor >= 1 then fail(name .. ": factor must be below 1") end
  local min_lrs = {}
  for k in ipairs(opt.param_groups) do
    local m = type(opts.min_lr) == "table" and opts.min_lr[k] or opts.min_lr or 0
    if type(m) ~= "number" or m < 0 then fail(name .. ": min_lr must be a non-negative number or one per group") end
    min_lrs[k] = m
  end
  local s = setmetatable({name = name, optimizer = opt, mode = mode, threshold_mode = tmode, factor = factor,
    patience = check_int(name, opts, "patience", 0, 10), threshold = check_number(name, opts, "threshold", 0, nil, 1e-4),
    cooldown = check_int(name, opts, "cooldown", 0, 0), eps = check_number(name, opts, "eps", 0, nil, 1e-8),
    min_lrs = min_lrs, best = mode == "min" and math.huge or -math.huge, num_bad_epochs = 0,
    cooldown_counter = 0, last_epoch = 0}, Plateau)
  local lrs = {}
  for k, g in ipairs(opt.param_groups) do lrs[k] = g.lr end
  s._last_lr = lrs
  return s
end

function Plateau:is_better(a)
  local best, th = self.best, self.threshold
  if self.mode == "min" then
    return self.threshold_mode == "rel" and a < best * (1 - th) or self.threshold_mode == "abs" and a < best - th
  end
  return self.threshold_mode == "rel" and a > best * (1 + th) or self.threshold_mode == "abs" and a > best + th
end

---One step with the monitored value (e.g. the validation loss).
---@param metric number
function Plateau:step(metric)
  if type(metric) ~= "number" then fail(self.name .. ":step: expected the monitored metric (a number), got " .. type(metric)) end
  self.last_epoch = self.last_epoch + 1
  if self:is_better(metric) then
    self.best, self.num_bad_epochs = metric, 0
  else
    self.num_bad_epochs = self.num_bad_epochs + 1
  end
  if self.cooldown_counter > 0 then
    self.cooldown_counter = self.cooldown_counter - 1
    self.num_bad_epochs = 0
  end
  if self.num_bad_epochs > self.patience then
    for k, g in ipairs(self.optimizer.param_groups) do
      local new_lr = math.max(g.lr * self.factor, self.min_lrs[k])
      if g.lr - new_lr > self.eps then g.lr = new_lr end
    end
    self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
  end
  local lrs = {}
  for k, g in ipairs(self.optimizer.param_groups) do lrs[k] = g.lr end
  self._last_lr = lrs
end

Plateau.get_last_lr = Scheduler.get_last_lr
Plateau.state_dict = Scheduler.state_dict
function Plateau:load_state_dict(s)
  if type(s) ~= "table" then fail(self.name .. ":load_state_dict: expected a table") end
  for k, v in pairs(s) do self[k] = type(v) == "table" and {table.unpack(v)} or v end
end

return M
