-- Learner callbacks. A callback is a table with any of the hooks
--   before_fit, before_epoch, before_batch(batch), after_loss(loss), after_backward, after_step,
--   after_batch, before_validate, after_validate(result), after_epoch(row), after_fit
-- each called as hook(cb, learn, ...). In after_loss, learn.pred holds the model's output and
-- learn.batch the batch; a callback may set learn.loss to a new loss tensor, which is then the
-- one backward runs on and the one recorded. Setting learn.stop_training = true ends the fit after the
-- current batch (or epoch). A callback with state to keep across a checkpoint has
-- state_dict(learn) -> state (plain values), tensors (a name -> tensor map or nil) and
-- load_state_dict(learn, state, tensors).
local vtl = require "vtl"
local core = require "vtl.core"
local json = require "vtl.json"

local M = {}

local function fail(msg) error(msg, 3) end

local function new(name, fields)
  fields.name = name
  return fields
end

-- min for losses and errors, max for everything else
local function infer_mode(monitor, mode)
  if mode == "min" or mode == "max" then return mode end
  if mode ~= nil and mode ~= "auto" then fail("mode must be \"min\", \"max\" or \"auto\", got " .. tostring(mode)) end
  local m = monitor:lower()
  if m:find("loss") or m:find("error") or m:find("ece") or m:find("calibration") then return "min" end
  return "max"
end

local function improved(mode, v, best, min_delta)
  if best == nil then return true end
  if mode == "min" then return v < best - min_delta end
  return v > best + min_delta
end

local function monitored(learn, row, monitor)
  local v = row and row[monitor]
  if v == nil and learn.valid_result then v = learn.valid_result[monitor] end
  if type(v) ~= "number" then
    error(("callback: the monitored value '%s' is not among this epoch's results (train_loss, valid_loss and the metrics)"):format(monitor), 0)
  end
  return v
end

local function clone_state(model)
  local out = {}
  for k, t in pairs(model:state_dict()) do out[k] = t:clone() end
  return out
end

---Stops training when `monitor` (default "valid_loss") has not improved by more than min_delta
---for `patience` epochs; mode "min"/"max" inferred from the name ("loss" -> min) unless given;
---restore_best (default true) loads the best epoch's weights at the end.
---@param opts? {monitor: string|nil, mode: string|nil, patience: integer|nil, min_delta: number|nil, restore_best: boolean|nil}
function M.EarlyStopping(opts)
  opts = opts or {}
  local monitor = opts.monitor or "valid_loss"
  local cb = new("EarlyStopping", {monitor = monitor, mode = infer_mode(monitor, opts.mode), patience = opts.patience or 3,
                                   min_delta = opts.min_delta or 0, restore_best = opts.restore_best ~= false, wait = 0})
  if math.type(cb.patience) ~= "integer" or cb.patience < 0 then fail("EarlyStopping: patience must be a non-negative integer") end
  function cb:after_epoch(learn, row)
    local v = monitored(learn, row, self.monitor)
    if improved(self.mode, v, self.best, self.min_delta) then
      self.best, self.best_epoch, self.wait = v, learn.epoch, 0
      if self.restore_best then self.best_state = clone_state(learn.model) end
    else
      self.wait = self.wait + 1
      if self.wait >= self.patience then
        learn.stop_training = true
        self.stopped_epoch = learn.epoch
      end
    end
  end
  function cb:after_fit(learn)
    if self.stopped_epoch and self.restore_best and self.best_state then
      learn.model:load_state_dict(self.best_state)
      if not learn.quiet then
        io.write(string.format("EarlyStopping: no improvement of %s for %d epochs; restored epoch %d (%s = %.6g)\n",
          self.monitor, self.patience, self.best_epoch, self.monitor, self.best))
      end
    end
  end
  function cb:state_dict()
    return {best = self.best, best_epoch = self.best_epoch, wait = self.wait, stopped_epoch = self.stopped_epoch}, self.best_state
  end
  function cb:load_state_dict(_, s, tensors)
    self.best, self.best_epoch, self.wait, self.stopped_epoch = s.best, s.best_epoch, s.wait or 0, s.stopped_epoch
    if tensors and next(tensors) then self.best_state = tensors end
  end
  return cb
end

---Saves the model's weights (safetensors, atomically) to `path` whenever `monitor` improves.
---@param opts {path: string, monitor: string|nil, mode: string|nil}
function M.SaveBest(opts)
  opts = opts or {}
  if type(opts.path) ~= "string" then fail("SaveBest: path (a .safetensors file) is required") end
  local monitor = opts.monitor or "valid_loss"
  local cb = new("SaveBest", {path = opts.path, monitor = monitor, mode = infer_mode(monitor, opts.mode)})
  function cb:after_epoch(learn, row)
    local v = monitored(learn, row, self.monitor)
    if improved(self.mode, v, self.best, 0) then
      self.best, self.best_epoch = v, learn.epoch
      vtl.save(self.path, learn.model:state_dict(), {epoch = tostring(learn.epoch), [self.monitor] = string.format("%.17g", v)})
    end
  end
  function cb:state_dict() return {best = self.best, best_epoch = self.best_epoch} end
  function cb:load_state_dict(_, s) self.best, self.best_epoch = s.best, s.best_epoch end
  return cb
end

---Stops training as soon as the loss is NaN or infinite (learn.terminated = "nan").
function M.TerminateOnNaN()
  local cb = new("TerminateOnNaN", {})
  function cb:after_loss(learn)
    local l = learn.last_loss
    if l ~= l or l == math.huge or l == -math.huge then
      learn.stop_training = true
      learn.terminated = "nan"
      io.stderr:write(string.format("TerminateOnNaN: loss is %s at epoch %d, batch %d; stopping\n", tostring(l),
        learn.epoch + 1, learn.batch_in_epoch or 0))
    end
  end
  return cb
end

local function columns(row)
  local keys = {}
  for k in pairs(row) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    local order = {epoch = 1, train_loss = 2, valid_loss = 3}
    local oa, ob = order[a] or 4, order[b] or 4
    if oa ~= ob then return oa < ob end
    return a < b
  end)
  return keys
end

local function fmt(v)
  if type(v) == "number" then
    if math.type(v) == "integer" then return tostring(v) end
    return string.format("%.6g", v)
  end
  return tostring(v)
end

---Appends one CSV row per epoch (epoch, losses, metrics, lr, time) to path; the header is
---written when the file is new. append = false starts a new file at the first epoch.
---@param opts {path: string, append: boolean|nil}
function M.CSVLogger(opts)
  opts = type(opts) == "string" and {path = opts} or opts or {}
  if type(opts.path) ~= "string" then fail("CSVLogger: path is required") end
  local cb = new("CSVLogger", {path = opts.path, append = opts.append ~= false})
  function cb:after_epoch(_, row)
    local exists = io.open(self.path, "r")
    if exists then exists:close() end
    local mode = (exists and (self.append or self.started)) and "a" or "w"
    local f, err = io.open(self.path, mode)
    if not f then error("CSVLogger: cannot write " .. self.path .. ": " .. tostring(err), 0) end
    local keys = self.keys or columns(row)
    self.keys = keys
    if mode == "w" then f:write(table.concat(keys, ","), "\n") end
    local vals = {}
    for i, k in ipairs(keys) do vals[i] = row[k] == nil and "" or fmt(row[k]) end
    f:write(table.concat(vals, ","), "\n")
    f:close()
    self.started = true
  end
  return cb
end

---Appends one JSON object per epoch to path (JSON Lines).
---@param opts {path: string}
function M.JSONLLogger(opts)
  opts = type(opts) == "string" and {path = opts} or opts or {}
  if type(opts.path) ~= "string" then fail("JSONLLogger: path is required") end
  local cb = new("JSONLLogger", {path = opts.path})
  function cb:after_epoch(_, row)
    local f, err = io.open(self.path, "a")
    if not f then error("JSONLLogger: cannot write " .. self.path .. ": " .. tostring(err), 0) end
    f:write(json.encode(row), "\n")
    f:close()
  end
  return cb
end

---An exponential moving average of the weights (and a copy of the buffers), updated after each
---optimizer step: ema = decay * ema + (1 - decay) * w. Validation runs with the averaged weights
---(use_for_eval, default true); learn:ema_state() gives them for saving.
---@param opts {decay: number, use_for_eval: boolean|nil}
function M.ModelEMA(opts)
  opts = opts or {}
  local d = opts.decay or 0.999
  if type(d) ~= "number" or d <= 0 or d >= 1 then fail("ModelEMA: decay must be a number in (0, 1)") end
  local cb = new("ModelEMA", {decay = d, use_for_eval = opts.use_for_eval ~= false})
  local function init(self, learn)
    if self.shadow then return end
    self.shadow = {}
    for k, t in pairs(learn.model:state_dict()) do self.shadow[k] = t:clone() end
  end
  function cb:before_fit(learn) init(self, learn) end
  function cb:after_step(learn)
    local guard <close> = vtl.no_grad()
    for k, t in pairs(learn.model:state_dict()) do
      local s = self.shadow[k]
      if s.dtype:match("^[fb]") and s.dtype ~= "bool" then s:mul_(self.decay):add_(t * (1 - self.decay)) else s:copy_(t) end
    end
  end
  local function swap(self, learn)
    local guard <close> = vtl.no_grad()
    for k, t in pairs(learn.model:state_dict()) do
      local tmp = t:clone()
      t:copy_(self.shadow[k])
      self.shadow[k]:copy_(tmp)
    end
  end
  function cb:before_validate(learn) if self.use_for_eval and self.shadow then swap(self, learn) end end
  function cb:after_validate(learn) if self.use_for_eval and self.shadow then swap(self, learn) end end
  function cb:state_dict() return {decay = self.decay}, self.shadow end
  function cb:load_state_dict(_, _, tensors) if tensors and next(tensors) then self.shadow = tensors end end
  return cb
end

-- In a notebook (the vtl kernel: vtl.display.live()), the progress line and the table of
-- epochs are two outputs updated in place (update_display_data) instead of printed lines.
local function live_progress(cb, learn, line)
  local disp = cb.display
  local html = string.format('<progress value="%d" max="%d" style="width:30em"></progress> <code>%s</code>',
    learn.batch_in_epoch or 0, math.max(learn.n_batches or 1, 1), disp.html_escape(line))
  local bundle = {html = html, text = line}
  if cb.bar_id then disp.update(cb.bar_id, bundle) else cb.bar_id = disp.display(bundle, {display_id = true}) end
end

local function live_table(cb)
  local disp = cb.display
  local out, text = {"<table><tr>"}, {}
  for i, k in ipairs(cb.header) do
    out[#out + 1] = "<th>" .. disp.html_escape(k) .. "</th>"
    text[i] = string.format("%12s", k)
  end
  out[#out + 1] = "</tr>"
  local lines = {table.concat(text)}
  for _, row in ipairs(cb.rows) do
    local vals = {}
    out[#out + 1] = "<tr>"
    for i, k in ipairs(cb.header) do
      local v = row[k] == nil and "" or fmt(row[k])
      out[#out + 1] = "<td>" .. disp.html_escape(v) .. "</td>"
      vals[i] = string.format("%12s", v)
    end
    out[#out + 1] = "</tr>"
    lines[#lines + 1] = table.concat(vals)
  end
  out[#out + 1] = "</table>"
  local bundle = {html = table.concat(out), text = table.concat(lines, "\n")}
  if cb.table_id then disp.update(cb.table_id, bundle) else cb.table_id = disp.display(bundle, {display_id = true}) end
end

---Progress output: on a terminal, one line redrawn per batch (batch n/N, it/s, ETA, running
---loss) and a table row per epoch; in a notebook the same line and table as outputs updated
---in place; elsewhere (or with opts.lines) only the rows. opts.display = false prints rows in
---a notebook too.
---@param opts? {every: number|nil, lines: boolean|nil, display: boolean|nil}
function M.ProgressBar(opts)
  opts = opts or {}
  local cb = new("ProgressBar", {tty = core.isatty(1) and not opts.lines, every = opts.every or 0.2})
  if opts.display ~= false then
    local disp = require "vtl.display"
    if disp.live() then cb.display, cb.rows = disp, {} end
  end
  function cb:before_epoch(learn)
    -- batch_done is where this epoch starts (0, or the batch a resumed run stopped at);
    -- batch_in_epoch still holds the previous epoch's count here
    self.t0, self.last_draw, self.first = core.clock(), 0, learn.batch_done or 0
  end
  function cb:after_batch(learn)
    if not self.tty and not self.display then return end
    local now = core.clock()
    if now - self.last_draw < self.every and learn.batch_in_epoch < learn.n_batches then return end
    self.last_draw = now
    local done = learn.batch_in_epoch - (self.first or 0)
    local rate = done / math.max(now - self.t0, 1e-9)
    local eta = (learn.n_batches - learn.batch_in_epoch) / math.max(rate, 1e-9)
    local loss = learn.loss_count and learn.loss_count > 0 and learn.loss_sum / learn.loss_count or learn.last_loss
    local line = string.format("epoch %d  batch %d/%d  %.2f it/s  ETA %ds  loss %.4f", learn.epoch + 1,
      learn.batch_in_epoch, learn.n_batches, rate, math.floor(eta + 0.5), loss or 0)
    if self.display then return live_progress(self, learn, line) end
    io.write("\r  ", line, "  ")
    io.flush()
  end
  function cb:after_epoch(_, row)
    if self.display then
      self.header = self.header or columns(row)
      self.rows[#self.rows + 1] = row
      return live_table(self)
    end
    if self.tty then io.write("\r\27[K") end
    local keys = columns(row)
    if not self.header then
      self.header = keys
      local h = {}
      for i, k in ipairs(keys) do h[i] = string.format("%12s", k) end
      io.write(table.concat(h), "\n")
    end
    local vals = {}
    for i, k in ipairs(self.header) do vals[i] = string.format("%12s", row[k] == nil and "" or fmt(row[k])) end
    io.write(table.concat(vals), "\n")
    io.flush()
  end
  return cb
end

return M
