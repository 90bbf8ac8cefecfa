-- vtl.distill: knowledge distillation. A small student learns from a large frozen teacher's
-- softened outputs (Hinton et al. 2015) and, optionally, from its feature maps through a learned
-- 1x1 projection (FitNets-style hints).
--
--   local kd = vtl.distill.KDLoss {temperature = 4, alpha = 0.5}
--   local loss = kd(student_logits, teacher_logits, target)
--   learn:add_callback(vtl.distill.Distiller {teacher = teacher, temperature = 4, alpha = 0.5})
local vtl = require "vtl"
local core = require "vtl.core"
local F = require "vtl.nn.functional"

local M = {}

local function is_module(m) return type(m) == "table" and type(m.parameters) == "function" end

local function check_kd_opts(fn, opts)
  if opts ~= nil and type(opts) ~= "table" then error(fn .. ": options must be a table", 3) end
  opts = opts or {}
  local T, a = opts.temperature or 4, opts.alpha or 0.5
  if type(T) ~= "number" or T <= 0 then error(fn .. ": temperature must be a positive number, got " .. tostring(T), 3) end
  if type(a) ~= "number" or a < 0 or a > 1 then error(fn .. ": alpha must be a number in [0, 1], got " .. tostring(a), 3) end
  return T, a
end

---The soft-target term T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch.
---@param student vtl.Tensor N×K logits
---@param teacher vtl.Tensor N×K logits (no gradient flows into them)
---@param temperature number
---@return vtl.Tensor
function M.soft_loss(student, teacher, temperature)
  local fn = "distill.soft_loss"
  if not core.is_tensor(student) or student.ndim ~= 2 then error(fn .. ": student must be N×K logits", 2) end
  if not core.is_tensor(teacher) or teacher.ndim ~= 2 then error(fn .. ": teacher must be N×K logits", 2) end
  if student.shape[1] ~= teacher.shape[1] or student.shape[2] ~= teacher.shape[2] then
    error(("%s: student logits %dx%d and teacher logits %dx%d differ in shape"):format(fn, student.shape[1],
      student.shape[2], teacher.shape[1], teacher.shape[2]), 2)
  end
  local T = temperature
  if type(T) ~= "number" or T <= 0 then error(fn .. ": temperature must be a positive number", 2) end
  local log_ps = F.log_softmax(student / T, 2)
  local log_pt = F.log_softmax(teacher:detach() / T, 2)
  return F.kl_div(log_ps, log_pt, {reduction = "batchmean", log_target = true}) * (T * T)
end

---Knowledge-distillation loss: alpha * CE(student, target) + (1 - alpha) * T^2 *
---KL(softmax(teacher/T) || softmax(student/T)), batch mean. Call it as kd(student, teacher,
---target); target holds 1-based class numbers. opts: temperature (4), alpha (0.5).
---@param opts? {temperature: number|nil, alpha: number|nil}
function M.KDLoss(opts)
  local T, a = check_kd_opts("KDLoss", opts)
  return setmetatable({temperature = T, alpha = a}, {
    __name = "vtl.distill.KDLoss",
    __call = function(self, student, teacher, target)
      if not core.is_tensor(target) then error("KDLoss: target must be a tensor of class numbers", 2) end
      local soft = M.soft_loss(student, teacher, self.temperature)
      if self.alpha == 0 then return soft end
      return F.cross_entropy(student, target) * self.alpha + soft * (1 - self.alpha)
    end,
    __tostring = function(self) return ("KDLoss(temperature=%g, alpha=%g)"):format(self.temperature, self.alpha) end,
  })
end

-- output of forward_features for a model, recorded while the model runs as usual
local function capture_features(model)
  local cls_ff = model.forward_features
  if type(cls_ff) ~= "function" then return nil end
  local slot = {}
  rawset(model, "forward_features", function(self, x)
    local f = cls_ff(self, x)
    slot.value = f
    return f
  end)
  slot.release = function() rawset(model, "forward_features", nil) end
  return slot
end

---A Learner callback that distils a frozen teacher into the Learner's model (the student). Each
---training batch runs the teacher in eval mode without gradients and replaces the Learner's loss
---L (its own loss, cross-entropy by default) by alpha * L + (1 - alpha) * T^2 * KL(teacher ||
---student). opts: teacher (an nn.Module giving logits of the same classes), temperature (4),
---alpha (0.5), feature_weight (0: off; > 0 adds feature_weight * MSE(proj(student features),
---teacher features) on forward_features, proj a learned 1x1 convolution, the student's map
---average-pooled to the teacher's size), feature_lr (1e-3, Adam for the projection).
---@param opts {teacher: vtl.nn.Module, temperature: number|nil, alpha: number|nil, feature_weight: number|nil, feature_lr: number|nil}
function M.Distiller(opts)
  local fn = "Distiller"
  if type(opts) ~= "table" then error(fn .. ": expected an options table {teacher = model, ...}", 2) end
  if not is_module(opts.teacher) then error(fn .. ": teacher must be an nn.Module", 2) end
  local T, a = check_kd_opts(fn, opts)
  local fw = opts.feature_weight or 0
  if type(fw) ~= "number" or fw < 0 then error(fn .. ": feature_weight must be a non-negative number", 2) end
  local flr = opts.feature_lr or 1e-3
  if type(flr) ~= "number" or flr <= 0 then error(fn .. ": feature_lr must be a positive number", 2) end
  if fw > 0 and type(opts.teacher.forward_features) ~= "function" then
    error(fn .. ": feature distillation needs a teacher with forward_features", 2)
  end
  local cb = {name = "Distiller", teacher = opts.teacher, temperature = T, alpha = a, feature_weight = fw,
              feature_lr = flr}

  function cb:before_fit(learn)
    self.teacher:eval()
    if learn.device then self.teacher:to(learn.device) end -- where the Learner's batches are
    for _, p in ipairs(self.teacher:parameters()) do p.requires_grad = false end
    if self.feature_weight > 0 then
      if type(learn.model.forward_features) ~= "function" then
        error("Distiller: feature distillation needs a student with forward_features", 0)
      end
      self.slot = capture_features(learn.model)
    end
  end

  function cb:after_fit()
    if self.slot then self.slot.release(); self.slot = nil end
  end

  function cb:after_loss(learn)
    local x = learn.batch.input
    local t_logits, t_feat
    do
      local guard <close> = vtl.no_grad()
      if self.feature_weight > 0 then
        t_feat = self.teacher:forward_features(x)
        t_logits = self.teacher:forward_head(t_feat)
      else
        t_logits = self.teacher(x)
      end
    end
    local loss = M.soft_loss(learn.pred, t_logits, self.temperature) * (1 - self.alpha)
    if self.alpha > 0 then loss = loss + learn.loss * self.alpha end
    if self.feature_weight > 0 then
      local s_feat = self.slot.value
      if not self.proj then
        self.proj = vtl.nn.Conv2d(s_feat.shape[2], t_feat.shape[2], 1, {bias = false}):to(s_feat.device)
        self.proj_opt = vtl.optim.Adam(self.proj:parameters(), {lr = self.feature_lr})
      end
      local s = self.proj(s_feat)
      if s.shape[3] ~= t_feat.shape[3] or s.shape[4] ~= t_feat.shape[4] then
        s = F.adaptive_avg_pool2d(s, {t_feat.shape[3], t_feat.shape[4]})
      end
      local fl = F.mse_loss(s, t_feat)
      self.last_feature_loss = fl:item()
      loss = loss + fl * self.feature_weight
    end
    learn.loss = loss
  end

  function cb:after_step()
    if self.proj_opt then
      self.proj_opt:step()
      self.proj_opt:zero_grad()
    end
  end

  return cb
end

return M
