-- vtl.amp: mixed-precision training. vtl.autocast (also vtl.amp.autocast) runs the matrix ops of
-- a region in bf16 or f16; GradScaler keeps f16 gradients from underflowing by scaling the loss
-- up before backward and the gradients down before the step, skipping steps whose gradients
-- overflowed and adapting the scale, with PyTorch's GradScaler rules and defaults:
--
--   local scaler = vtl.amp.GradScaler()
--   local loss = vtl.autocast("f16", function() return F.cross_entropy(model(x), y) end)
--   scaler:scale(loss):backward()
--   scaler:unscale_(opt)                  -- optional: before clipping gradients
--   scaler:step(opt)                      -- skipped when a gradient is inf or NaN
--   scaler:update()
local vtl = require "vtl"
local core = require "vtl.core"

local M = {autocast = core.autocast, autocast_dtype = core.autocast_dtype}

local GradScaler = {}
GradScaler.__index = GradScaler
GradScaler.__name = "vtl.amp.GradScaler"

local function fail(msg) error("GradScaler: " .. msg, 3) end

local function positive(opts, k, default, above_one)
  local v = opts[k]
  if v == nil then return default end
  if type(v) ~= "number" or v ~= v or v <= 0 or v == math.huge then fail(k .. " must be a positive number, got " .. tostring(v)) end
  if above_one == true and v <= 1 then fail(k .. " must be above 1, got " .. tostring(v)) end
  if above_one == false and v >= 1 then fail(k .. " must be below 1, got " .. tostring(v)) end
  return v
end

---GradScaler{init_scale = 65536, growth_factor = 2, backoff_factor = 0.5, growth_interval = 2000,
---enabled = true}. Disabled, every method passes through (scale 1, steps always taken).
---@param opts table|nil
function M.GradScaler(opts)
  opts = opts or {}
  if type(opts) ~= "table" then fail("options must be a table, got " .. type(opts)) end
  local known = {init_scale = true, growth_factor = true, backoff_factor = true, growth_interval = true, enabled = true}
  for k in pairs(opts) do if not known[k] then fail("unknown option '" .. tostring(k) .. "'") end end
  local gi = opts.growth_interval or 2000
  if math.type(gi) ~= "integer" or gi < 1 then fail("growth_interval must be a positive integer, got " .. tostring(gi)) end
  return setmetatable({
    scale_value = positive(opts, "init_scale", 65536.0),
    growth_factor = positive(opts, "growth_factor", 2.0, true),
    backoff_factor = positive(opts, "backoff_factor", 0.5, false),
    growth_interval = gi,
    growth_tracker = 0,
    enabled = opts.enabled ~= false,
    per_opt = {}, -- optimizer -> {unscaled = bool, found_inf = bool, stepped = bool}
  }, GradScaler)
end

---loss (or a list of losses) multiplied by the scale.
function GradScaler:scale(loss)
  if not self.enabled then return loss end
  if type(loss) == "table" and not core.is_tensor(loss) then
    local out = {}
    for i, l in ipairs(loss) do out[i] = self:scale(l) end
    return out
  end
  if not core.is_tensor(loss) then fail("scale expects a tensor, got " .. type(loss)) end
  return loss * self.scale_value
end

local function state_of(self, opt)
  if type(opt) ~= "table" or type(opt.param_groups) ~= "table" or type(opt.step) ~= "function" then
    fail("expected an optimizer, got " .. type(opt))
  end
  local st = self.per_opt[opt]
  if not st then
    st = {unscaled = false, found_inf = false, stepped = false}
    self.per_opt[opt] = st
  end
  return st
end

---Divides the optimizer's gradients by the scale in place (once per step) and notes whether any
---is inf or NaN.
function GradScaler:unscale_(opt)
  if not self.enabled then return end
  local st = state_of(self, opt)
  if st.unscaled then fail("unscale_ was already called for this optimizer since the last update") end
  if st.stepped then fail("unscale_ after step: call update first") end
  local inv = 1.0 / self.scale_value
  local found = false
  vtl.no_grad(function()
    for _, g in ipairs(opt.param_groups) do
      for _, p in ipairs(g.params) do
        local grad = p.grad
        if grad then
          if not found and (grad:isnan():any():item() or grad:isinf():any():item()) then found = true end
          grad:mul_(inv)
        end
      end
    end
  end)
  st.unscaled, st.found_inf = true, found
end

---Unscales (unless unscale_ ran) and takes the optimizer's step, unless a gradient was inf or
---NaN. Returns true when the step was taken.
function GradScaler:step(opt, ...)
  if not self.enabled then
    opt:step(...)
    return true
  end
  local st = state_of(self, opt)
  if st.stepped then fail("step was already called for this optimizer since the last update") end
  if not st.unscaled then self:unscale_(opt) end
  st.stepped = true
  if st.found_inf then return false end
  opt:step(...)
  return true
end

---Adapts the scale after the iteration's steps: times backoff_factor if any gradient overflowed
---(and the growth count restarts), times growth_factor after growth_interval clean steps in a
---row. new_scale (a number) sets it instead.
function GradScaler:update(new_scale)
  if not self.enabled then return end
  if new_scale ~= nil then
    if type(new_scale) ~= "number" or not (new_scale > 0) or new_scale == math.huge then
      fail("update: new_scale must be a positive number, got " .. tostring(new_scale))
    end
    self.scale_value = new_scale
  else
    local any, found = false, false
    for _, st in pairs(self.per_opt) do
      if st.unscaled or st.stepped then any = true end
      if st.found_inf then found = true end
    end
    if not any then fail("update: no optimizer was unscaled or stepped since the last update") end
    if found then
      self.scale_value = self.scale_value * self.backoff_factor
      self.growth_tracker = 0
    else
      self.growth_tracker = self.growth_tracker + 1
      if self.growth_tracker == self.growth_interval then
        self.scale_value = self.scale_value * self.growth_factor
        self.growth_tracker = 0
      end
    end
  end
  self.per_opt = {}
end

function GradScaler:get_scale() return self.enabled and self.scale_value or 1.0 end
function GradScaler:is_enabled() return self.enabled end

function GradScaler:state_dict()
  return {scale = self.scale_value, growth_factor = self.growth_factor, backoff_factor = self.backoff_factor,
          growth_interval = self.growth_interval, growth_tracker = self.growth_tracker}
end

function GradScaler:load_state_dict(sd)
  if type(sd) ~= "table" or type(sd.scale) ~= "number" or math.type(sd.growth_tracker) ~= "integer" then
    fail("load_state_dict expects a table from state_dict()")
  end
  self.scale_value, self.growth_tracker = sd.scale, sd.growth_tracker
  self.growth_factor = sd.growth_factor or self.growth_factor
  self.backoff_factor = sd.backoff_factor or self.backoff_factor
  self.growth_interval = sd.growth_interval or self.growth_interval
end

function GradScaler:__tostring()
  return ("GradScaler(scale=%g, growth_tracker=%d%s)"):format(self.scale_value, self.growth_tracker,
    self.enabled and "" or ", disabled")
end

return M
