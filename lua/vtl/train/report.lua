-- Plots and the written report of a Learner (methods added to vtl.train.Learner):
-- loss/metric/lr curves, the confusion matrix, the top losses, and learn:report(dir).
local vtl = require "vtl"

local M = {}

local function fail(msg) error(msg, 3) end

local function plot() return require "vtl.plot" end

local function column(rows, key)
  local xs, ys = {}, {}
  for _, r in ipairs(rows) do
    if type(r[key]) == "number" then xs[#xs + 1] = r.epoch; ys[#ys + 1] = r[key] end
  end
  return xs, ys
end

-- the metric names recorded in the history, sorted
local function metric_names(learn)
  local seen, names = {}, {}
  for _, r in ipairs(learn.history) do
    for k, v in pairs(r) do
      if type(v) == "number" and not seen[k] and k ~= "epoch" and k ~= "time" and k ~= "lr" and not k:find("loss") then
        seen[k] = true
        names[#names + 1] = k
      end
    end
  end
  table.sort(names)
  return names
end

---Training loss per optimizer step (thin) and train/valid loss per epoch, as a PNG.
---@param path string
function M.plot_losses(learn, path)
  if #learn.history == 0 and #(learn.step_losses or {}) == 0 then fail("plot_losses: nothing trained yet") end
  local series = {}
  local n = learn.n_batches or 1
  if learn.step_losses and #learn.step_losses > 0 then
    local xs = {}
    for i, e in ipairs(learn.step_epochs) do xs[i] = e end
    series[#series + 1] = {x = xs, y = learn.step_losses, label = "train (per step)"}
  end
  for _, key in ipairs {"train_loss", "valid_loss"} do
    local xs, ys = column(learn.history, key)
    if #ys > 0 then series[#series + 1] = {x = xs, y = ys, label = key .. " (per epoch)", style = "both"} end
  end
  local _ = n
  return plot().lines(series, {path = path, title = "loss", xlabel = "epoch", ylabel = "loss"})
end

---Each validation metric per epoch, as a PNG.
---@param path string
function M.plot_metrics(learn, path)
  local series = {}
  for _, name in ipairs(metric_names(learn)) do
    local xs, ys = column(learn.history, name)
    series[#series + 1] = {x = xs, y = ys, label = name, style = "both"}
  end
  if #series == 0 then fail("plot_metrics: no metrics recorded (give the Learner metrics and validation data)") end
  return plot().lines(series, {path = path, title = "validation metrics", xlabel = "epoch"})
end

---The learning rate of the first and last layer groups per optimizer step, as a PNG.
---@param path string
function M.plot_lr(learn, path)
  if not learn.step_lrs or #learn.step_lrs == 0 then fail("plot_lr: nothing trained yet") end
  local first, last, xs = {}, {}, {}
  for i, l in ipairs(learn.step_lrs) do first[i], last[i], xs[i] = l[1], l[#l], i end
  local series = {{x = xs, y = last, label = "last group (head)"}}
  if #learn.step_lrs[1] > 1 then series[2] = {x = xs, y = first, label = "first group"} end
  return plot().lines(series, {path = path, title = "learning rate", xlabel = "optimizer step", ylabel = "lr", logy = true})
end

local function class_names(learn, ds, k)
  local names = ds and ds.classes or (learn.valid_dl and learn.valid_dl.dataset.classes)
  if names then return names end
  local out = {}
  for i = 1, k do out[i] = tostring(i) end
  return out
end

---Confusion matrix of the model on ds (default: the validation data), as a PNG heatmap.
---opts: ds, normalize (nil | "true" | "pred" | "all").
---@param path string
function M.plot_confusion_matrix(learn, path, opts)
  opts = opts or {}
  local r = learn:evaluate(opts.ds)
  if not r.target then fail("plot_confusion_matrix: the data has no targets") end
  local k = r.pred.shape[2]
  local cm = require("vtl.metrics").confusion_matrix(r.pred, r.target, {num_classes = k})
  return plot().confusion_matrix(cm, {path = path, class_names = class_names(learn, opts.ds, k),
                                      normalize = opts.normalize, title = "confusion matrix"})
end

-- mean/std of the last Normalize in a dataset's transform chain (looking through Subsets)
local function find_normalize(ds)
  local d = ds
  while d do
    local tf = d.transform
    local found
    local function walk(t)
      if type(t) ~= "table" then return end
      if t.name == "Normalize" and t.mean then found = t end
      for _, s in ipairs(t.transforms or {}) do walk(s) end
    end
    walk(tf)
    if found then return found.mean, found.std end
    d = d.dataset
  end
end

---The k samples of ds (default: the validation data) with the highest loss, as an image grid
---captioned "predicted / true / probability of the prediction" (red when wrong). Returns the
---path and the list of {index, loss, pred, target, prob}.
---@param k integer
---@param path string
function M.plot_top_losses(learn, k, path, opts)
  opts = opts or {}
  if math.type(k) ~= "integer" or k < 1 then fail("plot_top_losses: k must be a positive integer") end
  local dl = opts.ds and vtl.data.DataLoader(opts.ds, {batch_size = 2 * learn.batch_size}) or learn.valid_dl
  if not dl then fail("plot_top_losses: give opts.ds (the Learner has no validation data)") end
  local ds = dl.dataset
  local r = learn:evaluate(dl)
  if not r.target or r.target.ndim ~= 1 then fail("plot_top_losses: needs class targets") end
  local F = vtl.nn.functional
  local losses = F.cross_entropy(r.pred, r.target, {reduction = "none"})
  local probs = F.softmax(r.pred, 2)
  local n = math.min(k, losses.shape[1])
  local vals, idx = losses:topk(n)
  local names = class_names(learn, ds, r.pred.shape[2])
  local images, captions, list = {}, {}, {}
  local pred = r.pred:argmax(2)
  for j = 1, n do
    local i = idx[j]:item()
    local x = ds:get(i, vtl.Generator(0))
    local p, t = pred[i]:item(), r.target[i]:item()
    images[j] = x
    captions[j] = {text = string.format("%s / %s / %.2f", names[p] or tostring(p), names[t] or tostring(t), probs[i][p]:item()),
                   color = p == t and "green" or "red"}
    list[j] = {index = i, loss = vals[j]:item(), pred = p, target = t, prob = probs[i][p]:item()}
  end
  local mean, std = opts.mean, opts.std
  if not mean then mean, std = find_normalize(ds) end
  local out = plot().image_grid(images, {path = path, captions = captions, mean = mean, std = std,
                                          title = "top losses: predicted / true / probability"})
  return out, list
end

---Writes the run's figures and a markdown summary into dir: losses.png, metrics.png, lr.png,
---confusion_matrix.png and top_losses.png (with validation data), report.md (settings, the
---history table, the validation metrics, per-class precision/recall/F1, timings). Returns the
---path of report.md.
---@param dir string
function M.report(learn, dir, opts)
  opts = opts or {}
  if type(dir) ~= "string" then fail("report: expected a directory path") end
  os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "'")
  local md = {"# Training report", ""}
  local model = learn.model
  md[#md + 1] = "## Settings"
  md[#md + 1] = ""
  md[#md + 1] = string.format("- model: %s (%d parameters, %d trainable)", model.__name or "?",
    model:num_parameters(), model:num_parameters {trainable_only = true})
  md[#md + 1] = string.format("- optimizer: %s; batch size %d; accumulate %d; seed %d", learn.opt.name or "?", learn.batch_size,
    learn.accumulate, learn.seed)
  local groups = {}
  for i, g in ipairs(learn.groups) do groups[i] = g.name end
  md[#md + 1] = "- layer groups: " .. table.concat(groups, ", ")
  md[#md + 1] = string.format("- epochs trained: %d; optimizer steps: %d", learn.epoch, learn.iteration)
  md[#md + 1] = ""
  local figures = {}
  local function try(name, fn)
    local ok, err = pcall(fn)
    if ok then figures[#figures + 1] = name else md[#md + 1] = "- (" .. name .. " not drawn: " .. tostring(err) .. ")" end
  end
  if #learn.history > 0 then
    try("losses.png", function() M.plot_losses(learn, dir .. "/losses.png") end)
    if #metric_names(learn) > 0 then try("metrics.png", function() M.plot_metrics(learn, dir .. "/metrics.png") end) end
    if learn.step_lrs and #learn.step_lrs > 0 then try("lr.png", function() M.plot_lr(learn, dir .. "/lr.png") end) end
  end
  local ev
  if learn.valid_dl or opts.ds then
    ev = learn:evaluate(opts.ds)
  end
  if ev and ev.target and ev.target.ndim == 1 then
    try("confusion_matrix.png", function() M.plot_confusion_matrix(learn, dir .. "/confusion_matrix.png", {ds = opts.ds}) end)
    try("top_losses.png", function() M.plot_top_losses(learn, opts.top_losses or 16, dir .. "/top_losses.png", {ds = opts.ds}) end)
  end
  md[#md + 1] = "## History"
  md[#md + 1] = ""
  if #learn.history > 0 then
    local keys = {"epoch", "train_loss", "valid_loss"}
    for _, n in ipairs(metric_names(learn)) do keys[#keys + 1] = n end
    keys[#keys + 1] = "lr"
    keys[#keys + 1] = "time"
    md[#md + 1] = "| " .. table.concat(keys, " | ") .. " |"
    md[#md + 1] = "|" .. string.rep("---|", #keys)
    for _, r in ipairs(learn.history) do
      local cells = {}
      for i, k in ipairs(keys) do
        local v = r[k]
        cells[i] = v == nil and "" or (math.type(v) == "integer" and tostring(v) or string.format("%.5g", v))
      end
      md[#md + 1] = "| " .. table.concat(cells, " | ") .. " |"
    end
  else
    md[#md + 1] = "(no epochs trained)"
  end
  md[#md + 1] = ""
  if ev and ev.target and ev.target.ndim == 1 then
    local metrics = require "vtl.metrics"
    local k = ev.pred.shape[2]
    local rep = metrics.classification_report(ev.pred, ev.target, {class_names = class_names(learn, opts.ds, k), num_classes = k})
    md[#md + 1] = "## Validation"
    md[#md + 1] = ""
    md[#md + 1] = string.format("- loss: %.5g", ev.loss or 0 / 0)
    for _, m in ipairs(learn.metrics) do
      if type(ev[m[1]]) == "number" then md[#md + 1] = string.format("- %s: %.5g", m[1], ev[m[1]]) end
    end
    md[#md + 1] = ""
    md[#md + 1] = "```"
    md[#md + 1] = rep.text
    md[#md + 1] = "```"
    md[#md + 1] = ""
  end
  if #figures > 0 then
    md[#md + 1] = "## Figures"
    md[#md + 1] = ""
    for _, f in ipairs(figures) do md[#md + 1] = "![" .. f .. "](" .. f .. ")" end
    md[#md + 1] = ""
  end
  local path = dir .. "/report.md"
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "w")
  if not f then error("report: cannot write " .. path .. ": " .. tostring(err), 0) end
  f:write(table.concat(md, "\n"), "\n")
  f:close()
  os.rename(tmp, path)
  return path
end

return M
