-- The optimizer base: parameter groups, the step loop, per-parameter state, state dicts.
-- A concrete optimizer is Optimizer.define{name, defaults, check, update, update_many}:
-- `update(group, p, grad, state)` changes one parameter in place and runs in no-grad mode;
-- `update_many(group, items)` (optional) updates a group's {p, grad, st} items at once where it
-- can (fused device kernels) and returns those it left to update; `check(group, bad)` validates a
-- group's options and calls bad(message) on a problem.
local core = require "vtl.core"
local codec = require "vtl.optim.state"

---@class vtl.optim.Optimizer
---@field name string                    "SGD", "Adam", ...
---@field param_groups table[]           {params = {...}, lr = ..., ...}; change options between steps
---@field state table<vtl.Tensor, table> per-parameter state, keyed by the tensors in param_groups
---@field defaults table                 options for groups that leave them unset
local Optimizer = {}
Optimizer.__index = Optimizer

---Marks an option that has no default and must be given (SGD's lr).
Optimizer.REQUIRED = setmetatable({}, {__tostring = function() return "<required>" end})

local function fail(msg) error(msg, 0) end

local function copy_value(v)
  if type(v) ~= "table" or v == Optimizer.REQUIRED then return v end
  local c = {}
  for k, x in pairs(v) do c[k] = copy_value(x) end
  return c
end

-- params as a list: a tensor, a list, or a module (its parameters()).
local function as_list(name, params)
  if core.is_tensor(params) then return {params} end
  if type(params) == "table" and params.params == nil and type(params.parameters) == "function" then
    params = params:parameters()
  end
  if type(params) == "function" then
    local list = {}
    for p in params do list[#list + 1] = p end
    return list
  end
  if type(params) ~= "table" then
    fail(("%s: params must be a list of tensors or of parameter groups, got %s"):format(name, type(params)))
  end
  return params
end

---Defines an optimizer class; calling the class makes an optimizer: Cls(params, opts).
---@param spec {name: string, defaults: table, check: fun(group: table, bad: fun(msg: string)), update: fun(group: table, p: vtl.Tensor, grad: vtl.Tensor, state: table)}
---@return table cls
function Optimizer.define(spec)
  local cls = {name = spec.name, defaults = spec.defaults, _check = spec.check, _update = spec.update,
               _update_many = spec.update_many}
  cls.__index = cls
  cls.__tostring = Optimizer.__tostring
  cls.__name = "vtl.optim." .. spec.name
  return setmetatable(cls, {__index = Optimizer, __call = function(c, params, opts) return c.new(c, params, opts) end})
end

---Makes an optimizer of class cls over params (tensors, or groups {params = {...}, <options>}).
---@param cls table
---@param params vtl.Tensor[]|table[]
---@param opts table|nil  the defaults for every group
---@return table
function Optimizer.new(cls, params, opts)
  local name = cls.name
  opts = opts or {}
  if type(opts) ~= "table" or core.is_tensor(opts) then fail(("%s: options must be a table, got %s"):format(name, type(opts))) end
  local defaults = {}
  for k, v in pairs(cls.defaults) do defaults[k] = v end
  for k, v in pairs(opts) do
    if cls.defaults[k] == nil then fail(("%s: unknown option '%s'"):format(name, tostring(k))) end
    defaults[k] = v
  end
  local self = setmetatable({defaults = defaults, param_groups = {}, state = {}}, cls)
  local list = as_list(name, params)
  if #list == 0 and next(list) == nil then fail(name .. ": got an empty parameter list") end
  if list[1] ~= nil and not core.is_tensor(list[1]) and type(list[1]) == "table" then
    self._grouped = true
    for i, g in ipairs(list) do
      if type(g) ~= "table" or core.is_tensor(g) then
        fail(("%s: param group %d must be a table {params = {...}, ...}, got %s"):format(name, i, type(g)))
      end
      self:add_param_group(g)
    end
  else
    self:add_param_group({params = list})
  end
  return self
end

-- "Adam: " or "Adam: param group 2: " (the latter once groups were given explicitly)
local function where(self, gi)
  if self._grouped or gi > 1 then return ("%s: param group %d: "):format(self.name, gi) end
  return self.name .. ": "
end

function Optimizer:_validate(group, gi)
  local prefix = where(self, gi)
  self._check(group, function(msg) fail(prefix .. msg) end)
end

---Adds a group of parameters (e.g. layers unfrozen mid-training); unset options take the defaults.
---@param group {params: vtl.Tensor|vtl.Tensor[]}|table
function Optimizer:add_param_group(group)
  local gi = #self.param_groups + 1
  local prefix = where(self, gi)
  if type(group) ~= "table" or core.is_tensor(group) then fail(prefix .. "a param group must be a table {params = {...}}") end
  local params = group.params
  if core.is_tensor(params) then params = {params} end
  if type(params) ~= "table" then
    fail(prefix .. "a param group needs params = a list of tensors, got " .. type(params))
  end
  local seen = {}
  for _, g in ipairs(self.param_groups) do
    for _, p in ipairs(g.params) do seen[p] = true end
  end
  local n = 0
  for k in pairs(params) do
    if math.type(k) ~= "integer" or k < 1 then fail(prefix .. "params must be a list (array) of tensors") end
    n = math.max(n, k)
  end
  local list = {}
  for i = 1, n do
    local p = params[i]
    if not core.is_tensor(p) then
      fail(("%sparams[%d] must be a tensor, got %s"):format(prefix, i, p == nil and "nil" or type(p)))
    end
    if not p.is_leaf then fail(("%sparams[%d] is not a leaf tensor (it was computed from others); optimize the tensor it came from"):format(prefix, i)) end
    if not p.dtype:match("^[fb]") or p.dtype == "bool" then
      fail(("%sparams[%d] has dtype %s; only floating-point tensors can be optimized"):format(prefix, i, p.dtype))
    end
    if seen[p] then fail(prefix .. "some parameters appear in more than one parameter group") end
    seen[p] = true
    list[i] = p
  end
  for k, v in pairs(self.defaults) do
    if group[k] == nil then
      if v == Optimizer.REQUIRED then fail(("%s%s is required, e.g. %s(params, {%s = 0.01})"):format(prefix, k, self.name, k)) end
      group[k] = copy_value(v)
    end
  end
  group.params = list
  self:_validate(group, gi)
  self.param_groups[gi] = group
  return group
end

---Updates every parameter that has a gradient; returns closure's result when one is given
---(closure re-evaluates the loss with gradients enabled).
---@param closure fun(): any|nil
---@return any loss
function Optimizer:step(closure)
  local loss
  if closure ~= nil then loss = core.enable_grad(closure) end
  local guard <close> = core.no_grad()
  local update, many, state = self._update, self._update_many, self.state
  for gi, group in ipairs(self.param_groups) do
    self:_validate(group, gi)
    if many then -- the parameters with gradients at once; what update_many leaves goes one by one
      local items = {}
      for _, p in ipairs(group.params) do
        local grad = p.grad
        if grad then
          local st = state[p]
          if not st then st = {}; state[p] = st end
          items[#items + 1] = {p = p, grad = grad, st = st}
        end
      end
      for _, it in ipairs(many(group, items)) do update(group, it.p, it.grad, it.st) end
    else
      for _, p in ipairs(group.params) do
        local grad <close> = p.grad
        if grad then
          local st = state[p]
          if not st then st = {}; state[p] = st end
          update(group, p, grad, st)
        end
      end
    end
  end
  return loss
end

---Clears the gradients of all parameters: sets them to nil (default), or zeroes them in place.
---@param set_to_none boolean|nil  false to zero the existing gradient tensors instead
function Optimizer:zero_grad(set_to_none)
  local guard <close> = core.no_grad()
  for _, group in ipairs(self.param_groups) do
    for _, p in ipairs(group.params) do
      if set_to_none == false then
        local g <close> = p.grad
        if g then g:zero_() end
      else
        p.grad = nil
      end
    end
  end
end

---The optimizer's state as {state = {[i] = {name = tensor|number}}, param_groups = {{<options>,
---params = {i, ...}}}}, parameters numbered 1.. across groups in order. Tensors are the live
---state (as in PyTorch): save or clone them before stepping again.
---@return table
function Optimizer:state_dict()
  local state, groups, index = {}, {}, 0
  for gi, group in ipairs(self.param_groups) do
    local g, ids = {}, {}
    for k, v in pairs(group) do
      if k ~= "params" then g[k] = copy_value(v) end
    end
    for j, p in ipairs(group.params) do
      index = index + 1
      ids[j] = index
      local st = self.state[p]
      if st and next(st) ~= nil then
        local s = {}
        for k, v in pairs(st) do s[k] = v end
        state[index] = s
      end
    end
    g.params = ids
    groups[gi] = g
  end
  return {optimizer = self.name, state = state, param_groups = groups}
end

---Restores a state dict from state_dict() (or from load_state_tensors' decoding): options per
---group and per-parameter state, matched by position. Tensors are copied.
---@param sd table
function Optimizer:load_state_dict(sd)
  local name = self.name .. ": load_state_dict: "
  if type(sd) ~= "table" or type(sd.param_groups) ~= "table" then fail(name .. "expected a table with param_groups and state") end
  if sd.optimizer and sd.optimizer ~= self.name then
    fail(("%sthe state dict is from %s, not %s"):format(name, tostring(sd.optimizer), self.name))
  end
  local saved, state = sd.param_groups, sd.state or {}
  if #saved ~= #self.param_groups then
    fail(("%sthe state dict has %d parameter groups, the optimizer has %d"):format(name, #saved, #self.param_groups))
  end
  for gi, g in ipairs(saved) do
    local ns, nc = #(g.params or {}), #self.param_groups[gi].params
    if ns ~= nc then
      fail(("%sparam group %d has %d parameters in the state dict, %d in the optimizer"):format(name, gi, ns, nc))
    end
  end
  local new_groups, new_state = {}, {}
  for gi, g in ipairs(saved) do
    local cur = self.param_groups[gi]
    local ng = {}
    for k, v in pairs(g) do
      if k ~= "params" then ng[k] = copy_value(v) end
    end
    for k, v in pairs(self.defaults) do
      if ng[k] == nil and v ~= Optimizer.REQUIRED then ng[k] = copy_value(v) end
    end
    ng.params = cur.params
    self:_validate(ng, gi)
    new_groups[gi] = ng
    for j, id in ipairs(g.params or {}) do
      local p, s = cur.params[j], state[id]
      if s ~= nil then
        if type(s) ~= "table" then fail(("%sstate[%s] must be a table"):format(name, tostring(id))) end
        local st = {}
        for k, v in pairs(s) do
          if core.is_tensor(v) then
            if k == "step" then
              st[k] = v:item()
            else
              if table.concat(v.shape, ",") ~= table.concat(p.shape, ",") then
                fail(("%sstate[%s].%s has shape {%s}, the parameter has shape {%s}"):format(
                  name, tostring(id), k, table.concat(v.shape, ","), table.concat(p.shape, ",")))
              end
              st[k] = v:to(p.dtype):to(p.device):clone()
            end
          else
            st[k] = copy_value(v)
          end
        end
        new_state[p] = st
      end
    end
  end
  self.param_groups, self.state = new_groups, new_state
end

---The state dict flattened for vtl.save: tensors by dotted name ("state.3.exp_avg") and the
---numbers and options as metadata strings. vtl.save(path, opt:state_tensors()) writes it.
---@param prefix string|nil  prepended to every name, e.g. "optimizer." to share a file with weights
---@return table<string, vtl.Tensor> tensors
---@return table<string, string> metadata
function Optimizer:state_tensors(prefix)
  return codec.flatten(self:state_dict(), prefix)
end

---Loads what state_tensors() wrote: opt:load_state_tensors(vtl.load(path)).
---@param tensors table<string, vtl.Tensor>
---@param metadata table<string, string>
---@param prefix string|nil
function Optimizer:load_state_tensors(tensors, metadata, prefix)
  self:load_state_dict(codec.unflatten(tensors, metadata, prefix))
end

function Optimizer:__tostring()
  local lines = {self.name .. " ("}
  for gi, group in ipairs(self.param_groups) do
    lines[#lines + 1] = "Parameter Group " .. gi
    local keys = {}
    for k in pairs(group) do
      if k ~= "params" then keys[#keys + 1] = tostring(k) end
    end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local v = group[k]
      if type(v) == "table" then
        local parts = {}
        for i, x in ipairs(v) do parts[i] = tostring(x) end
        v = "{" .. table.concat(parts, ", ") .. "}"
      end
      lines[#lines + 1] = ("    %s: %s"):format(k, tostring(v))
    end
    lines[#lines + 1] = ("    params: %d tensors"):format(#group.params)
  end
  lines[#lines + 1] = ")"
  return table.concat(lines, "\n")
end

-- ---- option checks for concrete optimizers ----

local check = {}
Optimizer.check = check

---Requires group[key] to be a number >= min (and < max when given).
function check.number(group, bad, key, what, min, max)
  local v = group[key]
  if type(v) ~= "number" then return bad(("%s must be a number, got %s"):format(key, type(v))) end
  if v ~= v or v < min or (max and v >= max) then
    bad(("invalid %s %s (must be %s)"):format(what, tostring(v), max and ("in [" .. min .. ", " .. max .. ")") or (">= " .. min)))
  end
end

---Requires group[key] to be a boolean.
function check.boolean(group, bad, key)
  if type(group[key]) ~= "boolean" then bad(("%s must be true or false, got %s"):format(key, type(group[key]))) end
end

---Requires group[key] to be two numbers in [0, 1).
function check.betas(group, bad, key)
  local b = group[key]
  if type(b) ~= "table" or #b ~= 2 then return bad(key .. " must be a table of two numbers {beta1, beta2}") end
  for i = 1, 2 do
    if type(b[i]) ~= "number" or b[i] ~= b[i] or b[i] < 0 or b[i] >= 1 then
      bad(("invalid beta parameter at index %d: %s (must be in [0, 1))"):format(i, tostring(b[i])))
    end
  end
end

return Optimizer
