-- vtl.train: the Learner — a model, its data, loss, optimizer and metrics, and the fine-tuning
-- steps around them: freezing by layer group, discriminative learning rates, one-cycle and other
-- schedules, callbacks, checkpoints that resume bit-identically, and evaluation.
--
--   local learn = vtl.train.Learner{model = model, train = train_ds, valid = valid_ds,
--                                   batch_size = 32, metrics = {"accuracy", "f1_macro"}}
--   learn:fine_tune(5, {freeze_epochs = 1, base_lr = 2e-3})
--   print(learn:evaluate().accuracy)
--   learn:save("runs/exp1")            -- later: Learner{...same...}:resume("runs/exp1")
local vtl = require "vtl"
local core = require "vtl.core"
local json = require "vtl.json"
local data = require "vtl.data"
local optim = require "vtl.optim"
local S = require "vtl.optim.lr_scheduler"
local cbs = require "vtl.train.callbacks"

local M = {}
for k, v in pairs(cbs) do M[k] = v end

local Learner = {}
Learner.__index = Learner
Learner.__name = "vtl.train.Learner"

local function fail(msg, level) error(msg, (level or 1) + 1) end

local OPTIMIZERS = {sgd = "SGD", adam = "Adam", adamw = "AdamW", rmsprop = "RMSprop"}

local function is_loader(x) return type(x) == "table" and type(x.iter) == "function" and x.dataset ~= nil end
local function is_dataset(x) return type(x) == "table" and type(x.get) == "function" end

-- the groups {name, params, modules} the optimizer and freezing work on
local function groups_of(model)
  if type(model.layer_groups) == "function" then
    local gs = model:layer_groups()
    if type(gs) == "table" and #gs > 0 then return gs end
  end
  return {{name = "all", modules = {model}, params = model:parameters(), names = {}}}
end

---Makes a Learner. opts: model (an nn.Module; its layer_groups() give the freezing units and
---the optimizer's parameter groups), train / valid (datasets or DataLoaders), batch_size (32),
---num_workers (0), loss (a module or function(output, target); default cross-entropy with
---opts.label_smoothing), opt ("adamw" (default) | "adam" | "sgd" | "rmsprop" | a function
---(param_groups) -> optimizer), opt_opts (the optimizer's options, e.g. {weight_decay = 0.01}),
---metrics (names for vtl.metrics.get, or {name, fn(pred, target)} pairs), seed (0), grad_clip
---(max gradient norm), accumulate (batches per optimizer step, 1), ema (decay of a model EMA used
---for validation), train_bn (true: batch norm stays trainable in frozen groups), callbacks
---(list), quiet (progress as one line per epoch, no redrawn bar), progress (false: no progress
---output at all), batch_transform (e.g. MixUp, for training batches),
---checkpoint_dir (where Ctrl-C during fit saves; default "runs/interrupted"), precision ("bf16" or
---"f16": forward passes and losses in a vtl.autocast region, f16 with a vtl.amp.GradScaler;
---"f32" or nil: full precision), device ("cpu", "cuda", "cuda:N": the model moves there and each
---batch follows it, from page-locked memory without waiting on a GPU; default: where the
---model's parameters are), device_transform (fn(input, generator) -> input for training
---batches once they are on the device, e.g. vtl.transforms.batch steps on the GPU; the generator
---derives from seed, epoch and batch) and valid_device_transform (fn(input) -> input for
---validation and prediction batches, e.g. the normalisation). Predictions, targets and metrics
---come back on the CPU.
---@param opts table
function M.Learner(opts)
  if type(opts) ~= "table" then fail("Learner: expected an options table", 2) end
  local model = opts.model
  if type(model) ~= "table" or type(model.parameters) ~= "function" then fail("Learner: model must be an nn.Module", 2) end
  local self = setmetatable({model = model, seed = opts.seed or 0, batch_size = opts.batch_size or 32,
                             num_workers = opts.num_workers or 0, grad_clip = opts.grad_clip,
                             accumulate = opts.accumulate or 1, train_bn = opts.train_bn ~= false,
                             quiet = opts.quiet or false, history = {}, epoch = 0, iteration = 0,
                             step_losses = {}, step_epochs = {}, step_lrs = {},
                             checkpoint_dir = opts.checkpoint_dir or "runs/interrupted"}, Learner)
  if math.type(self.seed) ~= "integer" then fail("Learner: seed must be an integer", 2) end
  if math.type(self.batch_size) ~= "integer" or self.batch_size < 1 then fail("Learner: batch_size must be a positive integer", 2) end
  if math.type(self.accumulate) ~= "integer" or self.accumulate < 1 then fail("Learner: accumulate must be a positive integer", 2) end
  if self.grad_clip ~= nil and (type(self.grad_clip) ~= "number" or self.grad_clip <= 0) then
    fail("Learner: grad_clip must be a positive number", 2)
  end
  local prec = opts.precision
  if prec ~= nil and prec ~= "f32" and prec ~= "bf16" and prec ~= "f16" then
    fail("Learner: precision must be \"f32\", \"bf16\" or \"f16\", got " .. tostring(prec), 2)
  end
  if prec == "bf16" or prec == "f16" then self.amp_dtype = prec end
  if prec == "f16" then self.scaler = require("vtl.amp").GradScaler() end
  for _, k in ipairs({"device_transform", "valid_device_transform"}) do
    local f = opts[k]
    if f ~= nil and type(f) ~= "function" and not (type(f) == "table" and getmetatable(f) and getmetatable(f).__call) then
      fail("Learner: " .. k .. " must be a function(input, generator), got " .. type(f), 2)
    end
    self[k] = f
  end
  -- device
  if opts.device ~= nil then
    if type(opts.device) ~= "string" then fail("Learner: device must be \"cpu\", \"cuda\" or \"cuda:N\", got " .. type(opts.device), 2) end
    model:to(opts.device)
  end
  local first = model:parameters()[1]
  self.device = first and first.device or "cpu"
  -- data
  local function loader(ds, train, what)
    if ds == nil then return nil end
    if is_loader(ds) then return ds end
    if not is_dataset(ds) then fail("Learner: " .. what .. " must be a dataset or a DataLoader", 3) end
    return data.DataLoader(ds, {batch_size = train and self.batch_size or 2 * self.batch_size, shuffle = train,
                                seed = self.seed, num_workers = self.num_workers,
                                batch_transform = train and opts.batch_transform or nil,
                                pin_memory = self.device ~= "cpu"})
  end
  self.train_dl = loader(opts.train, true, "train")
  self.valid_dl = loader(opts.valid, false, "valid")
  -- loss
  local loss = opts.loss
  if loss == nil then loss = vtl.nn.CrossEntropyLoss {label_smoothing = opts.label_smoothing or 0} end
  if not (type(loss) == "function" or (type(loss) == "table" and getmetatable(loss) and getmetatable(loss).__call)) then
    fail("Learner: loss must be a module or a function(output, target)", 2)
  end
  self.loss_fn = loss
  -- optimizer: one parameter group per layer group
  self.groups = groups_of(model)
  local pgroups = {}
  for k, g in ipairs(self.groups) do pgroups[k] = {params = g.params, lr = 1e-3, name = g.name} end
  local o = opts.opt or "adamw"
  if type(o) == "string" then
    local cls = OPTIMIZERS[o:lower()]
    if not cls then fail("Learner: unknown optimizer '" .. o .. "' (sgd, adam, adamw, rmsprop, or a function)", 2) end
    local oo = {}
    for k, v in pairs(opts.opt_opts or {}) do oo[k] = v end
    if cls == "SGD" and oo.momentum == nil then oo.momentum = 0.9 end
    oo.lr = oo.lr or 1e-3
    self.opt = optim[cls](pgroups, oo)
  elseif type(o) == "function" then
    self.opt = o(pgroups)
  else
    fail("Learner: opt must be an optimizer name or a function(param_groups)", 2)
  end
  -- metrics
  self.metrics = {}
  for i, m in ipairs(opts.metrics or {}) do
    if type(m) == "string" then
      self.metrics[i] = {m, require("vtl.metrics").get(m)}
    elseif type(m) == "table" and type(m[1]) == "string" and type(m[2]) == "function" then
      self.metrics[i] = {m[1], m[2]}
    else
      fail("Learner: metrics[" .. i .. "] must be a metric name or {name, function(pred, target)}", 2)
    end
  end
  -- callbacks
  self.callbacks = {}
  if opts.progress ~= false then self.callbacks[#self.callbacks + 1] = cbs.ProgressBar {lines = self.quiet} end
  if opts.ema then self.callbacks[#self.callbacks + 1] = cbs.ModelEMA {decay = opts.ema} end
  for i, cb in ipairs(opts.callbacks or {}) do
    if type(cb) ~= "table" then fail("Learner: callbacks[" .. i .. "] must be a callback object", 2) end
    self.callbacks[#self.callbacks + 1] = cb
  end
  self.frozen_to = 1
  return self
end

function Learner:_event(name, ...)
  for _, cb in ipairs(self.callbacks) do
    local f = cb[name]
    if f then f(cb, self, ...) end
  end
end

---Adds a callback (an object with some of the before_/after_ hooks); returns it.
function Learner:add_callback(cb)
  self.callbacks[#self.callbacks + 1] = cb
  return cb
end

-- ---- freezing ----

---Freezes layer groups 1..n-1 and unfreezes n..N (n may count from the end: freeze_to(-1)
---leaves only the last group, the head, trainable). Batch norm in frozen groups keeps training
---unless the Learner was made with train_bn = false.
---@param n integer
function Learner:freeze_to(n)
  local N = #self.groups
  if math.type(n) ~= "integer" or n == 0 or n > N or n < -N then
    fail(("freeze_to: n must be an integer in 1..%d or -%d..-1, got %s"):format(N, N, tostring(n)), 2)
  end
  if n < 0 then n = N + 1 + n end
  for k, g in ipairs(self.groups) do
    local frozen = k < n
    for _, m in ipairs(g.modules or {}) do
      if frozen then m:freeze {train_bn = self.train_bn} else m:unfreeze() end
    end
    for _, p in ipairs(g.params) do
      if not frozen then p.requires_grad = true
      elseif not self.train_bn or not self:_is_norm_param(p) then p.requires_grad = false end
    end
  end
  self.frozen_to = n
end

-- parameters that belong to normalization layers (kept trainable with train_bn)
function Learner:_is_norm_param(p)
  if not self._norm_params then
    local set = {}
    for _, m in ipairs(self.model:modules()) do
      local n = m.__name or ""
      if type(m._param_names) == "table" and (n:find("Norm") or n:find("BatchNorm")) then
        for _, pn in ipairs(m._param_names) do set[m._parameters[pn]] = true end
      end
    end
    self._norm_params = set
  end
  return self._norm_params[p] == true
end

---Freezes every layer group but the last (the head).
function Learner:freeze() self:freeze_to(-1) end

---Makes every layer group trainable.
function Learner:unfreeze() self:freeze_to(1) end

-- ---- learning rates per group ----

---Learning rate of each optimizer group from lr: a number (all groups), {lo, hi} (spread
---geometrically from the first group to the last, as fastai's slice), or one number per group;
---opts.layer_decay d multiplies group k's rate by d^(N-k) (timm's layer-wise decay).
---@return number[]
function Learner:lrs_for(lr, opts)
  local N = #self.opt.param_groups
  local out = {}
  if type(lr) == "number" then
    for k = 1, N do out[k] = lr end
  elseif type(lr) == "table" and #lr == 2 and N ~= 2 then
    local lo, hi = lr[1], lr[2]
    if type(lo) ~= "number" or type(hi) ~= "number" or lo <= 0 or hi <= 0 then fail("lr: {lo, hi} must be positive numbers", 3) end
    for k = 1, N do out[k] = N == 1 and hi or lo * (hi / lo) ^ ((k - 1) / (N - 1)) end
  elseif type(lr) == "table" and #lr == N then
    for k = 1, N do
      if type(lr[k]) ~= "number" or lr[k] < 0 then fail("lr[" .. k .. "] must be a non-negative number", 3) end
      out[k] = lr[k]
    end
  else
    fail(("lr must be a number, {lo, hi} or one number per layer group (%d), got %s"):format(N, type(lr) == "table" and (#lr .. " numbers") or tostring(lr)), 3)
  end
  local d = opts and opts.layer_decay
  if d then
    if type(d) ~= "number" or d <= 0 then fail("layer_decay must be a positive number", 3) end
    for k = 1, N do out[k] = out[k] * d ^ (N - k) end
  end
  return out
end

-- ---- the training loop ----

-- The state a resumed run starts from is the one at the last optimizer step (or epoch end):
-- the generator and the buffers (batch-norm statistics, which every forward pass updates) are
-- copied there, so work done after it (a forward pass, an accumulation) is redone exactly.
function Learner:_mark_position()
  self.rng_at_position = vtl.default_generator:get_state()
  local snap = self.buffers_at_position or {}
  local guard <close> = vtl.no_grad()
  for _, e in ipairs(self.model:named_buffers()) do
    local s = snap[e[1]]
    if s and s.dtype == e[2].dtype and table.concat(s.shape, ",") == table.concat(e[2].shape, ",") then s:copy_(e[2])
    else snap[e[1]] = e[2]:clone() end
  end
  self.buffers_at_position = snap
end

local function item(t) return vtl.is_tensor(t) and t:item() or t end

-- One optimizer step's bookkeeping runs with Ctrl-C held back, so a checkpoint taken after an
-- interrupt never sees half-updated weights.
local function critical(fn, ...)
  core.defer_interrupts(true)
  local ok, err = pcall(fn, ...)
  if not ok then
    core.defer_interrupts(false)
    error(err, 0)
  end
  core.defer_interrupts(false)
end

-- t on the Learner's device (copies from page-locked memory are only queued)
function Learner:_to_device(t)
  if not vtl.is_tensor(t) or t.device == self.device then return t end
  return t:to(self.device, {non_blocking = true})
end

-- a shallow copy of a batch with its input and target on the Learner's device, the input then
-- passed through the device transform of training (train) or validation batches
function Learner:_batch_on_device(batch, train)
  local tf = train and self.device_transform or not train and self.valid_device_transform or nil
  if self.device == "cpu" and not tf then return batch end
  local b = {}
  for k, v in pairs(batch) do b[k] = v end
  b.input, b.target = self:_to_device(batch.input), self:_to_device(batch.target)
  if tf then
    local gen = train and vtl.Generator(self.seed * 1000003 + self.epoch * 10007 + (self.batch_in_epoch or 0)) or nil
    b.input = tf(b.input, gen)
  end
  return b
end

function Learner:_train_batch(batch)
  batch = self:_batch_on_device(batch, true)
  self.batch = batch
  self:_event("before_batch", batch)
  local out, loss
  do
    local ac <close> = self.amp_dtype and core.autocast(self.amp_dtype) or nil
    out = self.model(batch.input)
    self.pred = out
    loss = self.loss_fn(out, batch.target)
  end
  self.loss = loss
  self.last_loss = item(loss)
  self:_event("after_loss", loss)
  if self.stop_training then return end
  -- a callback may replace learn.loss in after_loss (distillation, domain losses): that is the
  -- loss backward runs on and the one recorded
  if self.loss ~= loss then
    loss = self.loss
    self.last_loss = item(loss)
  end
  local l = self.accumulate > 1 and loss / self.accumulate or loss
  if self.scaler then l = self.scaler:scale(l) end
  l:backward()
  self:_event("after_backward")
  self.accum_count = (self.accum_count or 0) + 1
  self.pending_sum, self.pending_count = self.pending_sum + (self.last_loss or 0), self.pending_count + 1
  if self.accum_count >= self.accumulate or self.batch_in_epoch == self.n_batches then
    critical(function()
      if self.scaler then self.scaler:unscale_(self.opt) end
      if self.grad_clip then
        local ps = {}
        for _, p in ipairs(self.model:parameters()) do if p.grad then ps[#ps + 1] = p end end
        if #ps > 0 then vtl.nn.utils.clip_grad_norm(ps, self.grad_clip) end
      end
      if self.scaler then -- skipped when a gradient overflowed; the scale adapts
        self.skipped_steps = (self.skipped_steps or 0) + (self.scaler:step(self.opt) and 0 or 1)
        self.scaler:update()
      else
        self.opt:step()
      end
      self.opt:zero_grad()
      self.accum_count = 0
      self.iteration = self.iteration + 1
      if self.sched and self.sched_interval == "batch" then self.sched:step() end
      -- the position a checkpoint resumes from: the batch after the last optimizer step
      self.loss_sum, self.loss_count = self.loss_sum + self.pending_sum, self.loss_count + self.pending_count
      self.pending_sum, self.pending_count = 0, 0
      self.batch_done = self.batch_in_epoch
      -- per-step curves (for plots)
      local lrs = {}
      for k, g in ipairs(self.opt.param_groups) do lrs[k] = g.lr end
      self.step_losses[#self.step_losses + 1] = self.last_loss
      self.step_epochs[#self.step_epochs + 1] = self.epoch + self.batch_in_epoch / self.n_batches
      self.step_lrs[#self.step_lrs + 1] = lrs
      self:_mark_position()
      self:_event("after_step")
    end)
  end
  self:_event("after_batch")
end

-- predictions (logits) and targets of a loader, in order, without gradients
function Learner:_predict_loader(dl, epoch)
  local outs, targets, losses, n = {}, {}, 0, 0
  local guard <close> = vtl.no_grad()
  for hb in dl:iter(epoch or 1) do
    local b = self:_batch_on_device(hb, false)
    local out
    do
      local ac <close> = self.amp_dtype and core.autocast(self.amp_dtype) or nil
      out = self.model(b.input)
    end
    if out.dtype == "bf16" or out.dtype == "f16" then out = out:float() end
    outs[#outs + 1] = out:cpu()
    if b.target ~= nil then
      targets[#targets + 1] = vtl.is_tensor(hb.target) and hb.target:cpu() or hb.target
      local l = item(self.loss_fn(out, b.target))
      losses = losses + l * b.input.shape[1]
    end
    n = n + b.input.shape[1]
  end
  if #outs == 0 then return nil end
  return vtl.cat(outs, 1), #targets > 0 and vtl.cat(targets, 1) or nil, n > 0 and losses / n or nil
end

function Learner:_validate()
  if not self.valid_dl then return {} end
  self:_event("before_validate")
  local was = self.model.training
  self.model:eval()
  local pred, target, loss = self:_predict_loader(self.valid_dl)
  self.model:train(was)
  local res = {valid_loss = loss}
  if pred and target then
    for _, m in ipairs(self.metrics) do res[m[1]] = item(m[2](pred, target)) end
  end
  self.valid_result = res
  self:_event("after_validate", res)
  return res
end

-- Runs one phase {epochs, lrs, sched = {kind, opts}} from (epoch e0, batch b0) onwards.
function Learner:_run_phase(ph, e0, b0)
  local dl = self.train_dl
  if not dl then fail("fit: the Learner has no training data", 3) end
  self.n_batches = #dl
  if self.n_batches == 0 then fail("fit: the training set gives no batches (fewer samples than batch_size with drop_last?)", 3) end
  self.phase = ph
  for k, g in ipairs(self.opt.param_groups) do
    g.lr = ph.lrs[k]
    g.initial_lr = ph.lrs[k]
  end
  self.sched, self.sched_interval = nil, nil
  local steps_per_epoch = (self.n_batches + self.accumulate - 1) // self.accumulate
  if ph.sched == "one_cycle" then
    local o = ph.sched_opts
    self.sched = S.OneCycleLR(self.opt, {max_lr = ph.lrs, total_steps = ph.epochs * steps_per_epoch,
      pct_start = o.pct_start or 0.25, div_factor = o.div or 25, final_div_factor = o.final_div or 1e5,
      cycle_momentum = o.cycle_momentum ~= false and self:_has_momentum()})
    self.sched_interval = "batch"
  elseif type(ph.sched) == "function" then
    self.sched = ph.sched(self.opt, {epochs = ph.epochs, steps_per_epoch = steps_per_epoch})
    self.sched_interval = ph.sched_opts.interval or "epoch"
  end
  if self.resume_state then
    local rs = self.resume_state
    self.resume_state = nil
    if rs.sched and self.sched then self.sched:load_state_dict(rs.sched) end
    for k, g in ipairs(self.opt.param_groups) do
      if rs.group_lrs and rs.group_lrs[k] then g.lr = rs.group_lrs[k] end
      if rs.group_moms and rs.group_moms[k] then
        if type(g.betas) == "table" then g.betas = {rs.group_moms[k], g.betas[2]} else g.momentum = rs.group_moms[k] end
      end
    end
  end
  self.stop_training = false
  self:_event("before_fit")
  self:_mark_position()
  for e = e0, ph.epochs do
    self.phase_epoch = e
    self.batch_done = b0
    self.model:train()
    self:_event("before_epoch")
    local t0 = core.clock()
    if b0 == 0 then self.loss_sum, self.loss_count = 0, 0 end
    self.accum_count, self.pending_sum, self.pending_count = 0, 0, 0
    self.batch_in_epoch = b0
    for batch in self.train_dl:iter(self.epoch + 1, {start = b0 + 1}) do
      self.batch_in_epoch = self.batch_in_epoch + 1
      self:_train_batch(batch)
      if self.stop_training then break end
    end
    b0 = 0
    self.train_loss = self.loss_count > 0 and self.loss_sum / self.loss_count or nil
    if self.stop_training and self.batch_done < self.n_batches then break end
    -- the epoch's end: validation, history, an epoch schedule's step; until it is complete a
    -- checkpoint points at this epoch's last batch, so a resumed run redoes just this part
    local res = self:_validate()
    local row = {epoch = self.epoch + 1, train_loss = self.train_loss, time = core.clock() - t0}
    for k2, v in pairs(res) do row[k2] = v end
    row.lr = self.opt.param_groups[#self.opt.param_groups].lr
    critical(function()
      if self.sched and self.sched_interval == "epoch" then
        if self.sched.name == "ReduceLROnPlateau" then
          self.sched:step(row[ph.sched_opts.monitor or "valid_loss"] or row.train_loss)
        else
          self.sched:step()
        end
      end
      self.history[#self.history + 1] = row
      self.epoch = self.epoch + 1
      self.phase_epoch, self.batch_done = e + 1, 0
      self:_event("after_epoch", row)
      self:_mark_position()
    end)
    if self.stop_training then break end
  end
  self:_event("after_fit")
end

function Learner:_has_momentum()
  local g = self.opt.param_groups[1]
  return type(g.betas) == "table" or (g.momentum ~= nil and g.momentum > 0)
end

-- Runs the phases (a list) from position pos {phase, epoch, batch}; Ctrl-C saves a checkpoint.
function Learner:_run(phases, pos)
  self.phases = phases
  self.in_fit = true
  local ok, err = pcall(function()
    for i = pos.phase, #phases do
      self.phase_index = i
      local ph = phases[i]
      if ph.freeze_to then self:freeze_to(ph.freeze_to) end
      if i > pos.phase then pos.epoch, pos.batch = 1, 0 end
      self:_run_phase(ph, pos.epoch, pos.batch)
      if self.stop_training and not ph.continue_after_stop then break end
    end
  end)
  if not ok then
    if tostring(err):find("interrupted!", 1, true) then
      self.interrupted = true
      local dir = self.checkpoint_dir
      self:save(dir)
      self.in_fit = false
      io.stderr:write("\nLearner: interrupted; checkpoint saved to " .. dir .. " (resume with learn:resume(\"" .. dir .. "\"))\n")
      return self
    end
    self.in_fit = false
    error(err, 0)
  end
  self.in_fit = false
  return self
end

---Trains for `epochs` epochs at learning rate lr (see lrs_for) with an optional schedule:
---opts.sched = a function(optimizer, {epochs, steps_per_epoch}) -> scheduler, stepped each
---epoch (opts.interval = "batch" to step each optimizer step; a ReduceLROnPlateau is stepped
---with opts.monitor, default "valid_loss"). opts.layer_decay as in lrs_for.
---@param epochs integer
---@param lr number|number[]
---@param opts? table
function Learner:fit(epochs, lr, opts)
  if math.type(epochs) ~= "integer" or epochs < 1 then fail("fit: epochs must be a positive integer", 2) end
  opts = opts or {}
  return self:_run({{epochs = epochs, lrs = self:lrs_for(lr or 1e-3, opts), sched = opts.sched,
                     sched_opts = {interval = opts.interval, monitor = opts.monitor}}}, {phase = 1, epoch = 1, batch = 0})
end

---One-cycle training (fastai's fit_one_cycle): lr rises to lr_max over pct_start (0.25) of the
---steps and anneals to lr_max/(div*final_div); momentum or Adam's beta1 moves inversely
---(0.95 -> 0.85 -> 0.95). lr_max as in lrs_for. opts: pct_start, div (25), final_div (1e5),
---layer_decay.
function Learner:fit_one_cycle(epochs, lr_max, opts)
  if math.type(epochs) ~= "integer" or epochs < 1 then fail("fit_one_cycle: epochs must be a positive integer", 2) end
  opts = opts or {}
  return self:_run({{epochs = epochs, lrs = self:lrs_for(lr_max or 1e-3, opts), sched = "one_cycle", sched_opts = opts}},
                   {phase = 1, epoch = 1, batch = 0})
end

---The fine-tuning recipe: freeze all but the head and train it for freeze_epochs (one-cycle at
---base_lr, pct_start 0.99), then halve base_lr, unfreeze and train `epochs` epochs one-cycle
---with rates spread from base_lr/lr_mult (first group) to base_lr (head). progressive = true
---instead unfreezes groups from the top in stages (one group more per stage when there are at
---least N-1 epochs, else evenly spread over one stage per epoch), sharing the epochs.
---opts: freeze_epochs (1), base_lr (2e-3), lr_mult (100), pct_start (0.3), div (5), progressive.
---@param epochs integer
---@param opts? table
function Learner:fine_tune(epochs, opts)
  opts = opts or {}
  if math.type(epochs) ~= "integer" or epochs < 1 then fail("fine_tune: epochs must be a positive integer", 2) end
  local fe = opts.freeze_epochs or 1
  if math.type(fe) ~= "integer" or fe < 0 then fail("fine_tune: freeze_epochs must be a non-negative integer", 2) end
  local base = opts.base_lr or 2e-3
  local mult = opts.lr_mult or 100
  if type(base) ~= "number" or base <= 0 then fail("fine_tune: base_lr must be a positive number", 2) end
  if type(mult) ~= "number" or mult < 1 then fail("fine_tune: lr_mult must be a number >= 1", 2) end
  local N = #self.groups
  local phases = {}
  if fe > 0 then
    phases[1] = {epochs = fe, lrs = self:lrs_for(base), sched = "one_cycle", sched_opts = {pct_start = 0.99}, freeze_to = N > 1 and -1 or 1}
  end
  base = base / 2
  local spread = self:lrs_for({base / mult, base}, {layer_decay = opts.layer_decay})
  local tail = {pct_start = opts.pct_start or 0.3, div = opts.div or 5}
  if opts.progressive and N > 2 then
    -- up to N-1 stages, each at least one epoch; stage s trains groups from N - floor(s(N-1)/stages)
    local stages = math.min(N - 1, epochs)
    for s = 1, stages do
      local n = epochs * s // stages - epochs * (s - 1) // stages
      phases[#phases + 1] = {epochs = n, lrs = spread, sched = "one_cycle", sched_opts = tail,
                             freeze_to = N - s * (N - 1) // stages}
    end
  else
    phases[#phases + 1] = {epochs = epochs, lrs = spread, sched = "one_cycle", sched_opts = tail, freeze_to = 1}
  end
  return self:_run(phases, {phase = 1, epoch = 1, batch = 0})
end

-- ---- learning-rate finder ----

-- fastai's "valley": the longest run of decreasing losses (by a longest-decreasing-subsequence
-- count), and the point two thirds of the way down it.
local function valley(losses)
  local n = #losses
  local lds, best_end = {}, 1
  for i = 1, n do
    lds[i] = 1
    for j = 1, i - 1 do
      if losses[i] < losses[j] and lds[i] < lds[j] + 1 then lds[i] = lds[j] + 1 end
    end
    if lds[i] > lds[best_end] then best_end = i end
  end
  -- counted from the point before the run, as fastai does
  local best_start = best_end - lds[best_end]
  local sections = (best_end - best_start) / 3
  return math.max(1, math.min(n, best_start + math.floor(sections) + math.floor(sections / 2)))
end

---Learning-rate range test: trains num_it (100) batches with the rate growing exponentially from
---start_lr (1e-7) to end_lr (10), recording the loss smoothed as fastai does (beta 0.98, bias
---corrected); stops when it exceeds 4 times its minimum (stop_div) or is NaN. Weights,
---optimizer state and the random generator are restored afterwards. Returns {lrs, losses,
---suggestion = the "valley" rate, index}; opts.plot = a PNG path draws the curve.
---@param opts? {start_lr: number|nil, end_lr: number|nil, num_it: integer|nil, stop_div: boolean|nil, plot: string|nil}
function Learner:lr_find(opts)
  opts = opts or {}
  local lo, hi, n = opts.start_lr or 1e-7, opts.end_lr or 10, opts.num_it or 100
  if type(lo) ~= "number" or type(hi) ~= "number" or lo <= 0 or hi <= lo then
    fail("lr_find: need 0 < start_lr < end_lr", 2)
  end
  if math.type(n) ~= "integer" or n < 2 then fail("lr_find: num_it must be an integer >= 2", 2) end
  if not self.train_dl then fail("lr_find: the Learner has no training data", 2) end
  -- what the sweep changes, to put back
  local saved_model = {}
  for k, t in pairs(self.model:state_dict()) do saved_model[k] = t:clone() end
  local saved_state, saved_groups = self.opt.state, {}
  for k, g in ipairs(self.opt.param_groups) do
    saved_groups[k] = {lr = g.lr, initial_lr = g.initial_lr, momentum = g.momentum, betas = g.betas}
  end
  local saved_rng = vtl.default_generator:get_state()
  local was = self.model.training
  self.opt.state = {}
  local lrs, losses = {}, {}
  local ok, err = pcall(function()
    self.model:train()
    local avg, best, i, epoch = 0, math.huge, 0, 0
    while i < n do
      epoch = epoch + 1
      local got = false
      for b in self.train_dl:iter(epoch) do
        got = true
        i = i + 1
        local lr = lo * (hi / lo) ^ ((i - 1) / (n - 1))
        for _, g in ipairs(self.opt.param_groups) do g.lr = lr end
        b = self:_batch_on_device(b, true)
        local loss = self.loss_fn(self.model(b.input), b.target)
        local l = item(loss)
        loss:backward()
        self.opt:step()
        self.opt:zero_grad()
        avg = 0.98 * avg + 0.02 * l
        local smooth = avg / (1 - 0.98 ^ i)
        lrs[#lrs + 1], losses[#losses + 1] = lr, smooth
        if smooth ~= smooth or (opts.stop_div ~= false and smooth > 4 * best) then i = n; break end
        best = math.min(best, smooth)
        if i >= n then break end
      end
      if not got then fail("lr_find: the training set gives no batches", 0) end
    end
  end)
  -- put everything back
  self.model:load_state_dict(saved_model)
  self.opt.state = saved_state
  for k, g in ipairs(self.opt.param_groups) do
    for key, v in pairs(saved_groups[k]) do g[key] = v end
  end
  vtl.default_generator:set_state(saved_rng)
  self.model:train(was)
  if not ok then error(err, 0) end
  -- the diverging tail is left out of the suggestion
  local keep = #losses
  while keep > 1 and (losses[keep] ~= losses[keep] or losses[keep] > 4 * math.min(table.unpack(losses, 1, keep - 1))) do keep = keep - 1 end
  local idx = valley({table.unpack(losses, 1, keep)})
  local res = {lrs = lrs, losses = losses, suggestion = lrs[idx], index = idx}
  if opts.plot then
    res.plot = require("vtl.plot").lines({{x = lrs, y = losses, label = "smoothed loss"}},
      {path = opts.plot, logx = true, xlabel = "learning rate", ylabel = "loss", title = "lr_find",
       marker = {x = lrs[idx], label = string.format("valley %.2g", lrs[idx])}})
  end
  self.lr_find_result = res
  return res
end

-- ---- evaluation and prediction ----

---Loss and metrics of the model on a dataset or loader (default: the validation data), in eval
---mode: {loss =, <metric> = ..., pred = logits, target = targets}.
function Learner:evaluate(ds)
  local dl = ds == nil and self.valid_dl or (is_loader(ds) and ds) or (is_dataset(ds) and data.DataLoader(ds,
    {batch_size = 2 * self.batch_size, num_workers = self.num_workers}))
  if not dl then fail("evaluate: give a dataset (the Learner has no validation data)", 2) end
  local was = self.model.training
  self.model:eval()
  local pred, target, loss = self:_predict_loader(dl)
  self.model:train(was)
  local res = {loss = loss, pred = pred, target = target}
  if pred and target then
    for _, m in ipairs(self.metrics) do res[m[1]] = item(m[2](pred, target)) end
  end
  return res
end

---Class probabilities for a batch tensor (N×C×H×W) or a dataset, in eval mode. opts.tta = n
---averages n passes: the plain input, its horizontal mirror, then (for a dataset) n-2 passes
---with the dataset's own random transforms at epochs 2.. .
---@return vtl.Tensor probs N×K
function Learner:predict(x, opts)
  local n = opts and opts.tta or 1
  if math.type(n) ~= "integer" or n < 1 then fail("predict: tta must be a positive integer", 2) end
  local was = self.model.training
  self.model:eval()
  local guard <close> = vtl.no_grad()
  local function probs_of(input) -- in the training precision; softmax gives f32 either way
    local ac <close> = self.amp_dtype and core.autocast(self.amp_dtype) or nil
    input = self:_to_device(input)
    if self.valid_device_transform then input = self.valid_device_transform(input) end
    return vtl.nn.functional.softmax(self.model(input), 2):cpu()
  end
  local function mirror(input) -- left-right, along the last dim
    local w = input.shape[input.ndim]
    return input:index_select(input.ndim, vtl.arange(w, 0, -1):to(input.device))
  end
  local total
  if vtl.is_tensor(x) then
    total = probs_of(x)
    for k = 2, n do total = total + probs_of(k % 2 == 0 and mirror(x) or x) end
  elseif is_dataset(x) or is_loader(x) then
    local dl = is_loader(x) and x or data.DataLoader(x, {batch_size = 2 * self.batch_size, num_workers = self.num_workers})
    for k = 1, n do
      local parts = {}
      for b in dl:iter(k == 2 and 1 or math.max(k - 1, 1)) do
        parts[#parts + 1] = probs_of(k == 2 and mirror(b.input) or b.input)
      end
      local p = vtl.cat(parts, 1)
      total = total and total + p or p
    end
  else
    fail("predict: expected a batch tensor or a dataset", 2)
  end
  self.model:train(was)
  return n > 1 and total / n or total
end

-- ---- checkpoints ----

local CKPT = "checkpoint.safetensors"

local function merge(dst, src, prefix)
  for k, v in pairs(src) do dst[prefix .. k] = v end
end

---Writes a checkpoint into directory dir (created if missing) as one file, atomically: the
---model's weights, the optimizer's state, the schedule, callbacks' state, the training position
---(phase, epoch, batch), the random generator and the history. A previous checkpoint there stays
---valid until the new one is complete.
---@param dir string
function Learner:save(dir)
  if type(dir) ~= "string" or dir == "" then fail("save: expected a directory path", 2) end
  os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "'")
  local tensors, meta = {}, {}
  local sd = self.model:state_dict()
  merge(tensors, sd, "model.")
  if self.in_fit and self.buffers_at_position then
    for name, t in pairs(self.buffers_at_position) do
      if tensors["model." .. name] then tensors["model." .. name] = t end
    end
  end
  local ot, om = self.opt:state_tensors()
  merge(tensors, ot, "opt.")
  merge(meta, om, "opt.")
  local cb_states = {}
  for i, cb in ipairs(self.callbacks) do
    if cb.state_dict then
      local st, ts = cb:state_dict(self)
      cb_states[i] = {name = cb.name or "?", state = st}
      if ts then merge(tensors, ts, "cb" .. i .. ".") end
    end
  end
  -- inside fit, the generator as it was at the position a resumed run starts from
  local g = self.in_fit and self.rng_at_position or vtl.default_generator:get_state()
  local state = {
    version = 1, epoch = self.epoch, iteration = self.iteration, history = self.history,
    phase_index = self.phase_index, phase_epoch = self.phase_epoch, batch = self.batch_done or 0,
    loss_sum = self.loss_sum, loss_count = self.loss_count,
    phases = self.phases and self:_phases_json() or nil, frozen_to = self.frozen_to,
    rng = {tostring(g.seed), tostring(g.offset)}, callbacks = cb_states,
    sched = self.sched and self.sched:state_dict() or nil,
    group_lrs = {}, group_moms = {},
    scaler = self.scaler and self.scaler:state_dict() or nil, -- f16 training's loss scale
  }
  for k, grp in ipairs(self.opt.param_groups) do
    state.group_lrs[k] = grp.lr
    state.group_moms[k] = type(grp.betas) == "table" and grp.betas[1] or grp.momentum
  end
  meta["learner"] = json.encode(state)
  vtl.save(dir .. "/" .. CKPT, tensors, meta)
  return dir
end

function Learner:_phases_json()
  local out = {}
  for i, ph in ipairs(self.phases) do
    if type(ph.sched) == "function" then
      out[i] = {epochs = ph.epochs, lrs = ph.lrs, sched = "function", sched_opts = ph.sched_opts, freeze_to = ph.freeze_to}
    else
      out[i] = {epochs = ph.epochs, lrs = ph.lrs, sched = ph.sched, sched_opts = ph.sched_opts, freeze_to = ph.freeze_to}
    end
  end
  return out
end

---Loads a checkpoint written by save (into a Learner made with the same model and data) and
---finishes the training it was part of, from the batch after the last completed one; on CPU the
---result is bit-identical to an uninterrupted run. opts.sched: the schedule function, when the
---interrupted fit was given one (functions are not stored). Returns self.
---@param dir string
function Learner:resume(dir, opts)
  local state = self:load(dir)
  if not state.phases then return self end
  local phases = state.phases
  for _, ph in ipairs(phases) do
    if ph.sched == "function" then
      if not (opts and opts.sched) then fail("resume: the interrupted fit used a schedule function; pass it as opts.sched", 2) end
      ph.sched = opts.sched
    end
  end
  local pi, pe, b = state.phase_index or 1, state.phase_epoch or 1, state.batch or 0
  self.resume_state = {sched = state.sched, group_lrs = state.group_lrs, group_moms = state.group_moms}
  self.loss_sum, self.loss_count = state.loss_sum or 0, state.loss_count or 0
  if pe > phases[pi].epochs then pi, pe, b = pi + 1, 1, 0 end
  if pi > #phases then return self end
  if pi ~= (state.phase_index or 1) then self.resume_state = nil end
  return self:_run(phases, {phase = pi, epoch = pe, batch = b})
end

---Loads a checkpoint's model, optimizer, callbacks' state, generator and history without
---training; returns the stored Learner state.
---@param dir string
function Learner:load(dir)
  if type(dir) ~= "string" then fail("load: expected a directory path", 2) end
  local path = dir .. "/" .. CKPT
  local ok, tensors, meta = pcall(vtl.load, path)
  if not ok then fail("load: " .. tostring(tensors), 2) end
  if type(meta) ~= "table" or type(meta.learner) ~= "string" then fail("load: " .. path .. " is not a Learner checkpoint (no learner metadata)", 2) end
  local okj, state = pcall(json.decode, meta.learner, path, {numbers = true})
  if not okj or type(state) ~= "table" then fail("load: " .. path .. ": damaged learner metadata: " .. tostring(state), 2) end
  local msd = {}
  local opt_t, opt_m = {}, {}
  for k, t in pairs(tensors) do
    if k:sub(1, 6) == "model." then msd[k:sub(7)] = t
    elseif k:sub(1, 4) == "opt." then opt_t[k:sub(5)] = t end
  end
  for k, v in pairs(meta) do if k:sub(1, 4) == "opt." then opt_m[k:sub(5)] = v end end
  self.model:load_state_dict(msd)
  if state.frozen_to then self:freeze_to(state.frozen_to) end
  self.opt:load_state_tensors(opt_t, opt_m)
  for i, cs in ipairs(state.callbacks or {}) do
    local cb = self.callbacks[i]
    if cb and cb.load_state_dict and cs and (cb.name or "?") == cs.name then
      local ts = {}
      local pre = "cb" .. i .. "."
      for k, t in pairs(tensors) do if k:sub(1, #pre) == pre then ts[k:sub(#pre + 1)] = t end end
      cb:load_state_dict(self, cs.state, ts)
    end
  end
  if state.rng then
    vtl.default_generator:set_state({seed = math.tointeger(tonumber(state.rng[1])), offset = math.tointeger(tonumber(state.rng[2]))})
  end
  if self.scaler and type(state.scaler) == "table" then self.scaler:load_state_dict(state.scaler) end
  self.history = state.history or {}
  self.epoch = state.epoch or 0
  self.iteration = state.iteration or 0
  return state
end

-- plots and the written report
for k, f in pairs(require "vtl.train.report") do Learner[k] = f end

M.Learner_class = Learner
M._valley = valley

---Learner.resume(dir, learner_opts): a Learner made from learner_opts that loads the
---checkpoint in dir and finishes its training.
function M.resume(dir, learner_opts, opts)
  return M.Learner(learner_opts):resume(dir, opts)
end

return M
