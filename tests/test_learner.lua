-- vtl.train.Learner: freezing, discriminative learning rates, schedules, callbacks, checkpoints
-- and resuming.
local T = require "testlib"
local vtl = require "vtl"
local core = require "vtl.core"
local train = require "vtl.train"
local S = require "vtl.optim.lr_scheduler"
local test = T.test

local TMP = os.tmpname()
os.remove(TMP)
os.execute("mkdir -p '" .. TMP .. "'")

local function accuracy(p, t) return p:argmax(2):eq(t):to("f32"):mean():item() end

-- a small labelled set: 48 images 3×12×12 whose class (1..4) shifts the mean of one channel
local toydata = require "toydata"
local function dataset(n, seed) return toydata(n or 48, seed or 5) end

local function model(seed, opts)
  vtl.seed(seed or 1)
  return vtl.models.create("small_cnn", {num_classes = 4, drop_rate = opts and opts.drop_rate or 0.2})
end

local function learner(opts)
  local o = {model = model(opts.seed), train = opts.train or dataset(), valid = opts.valid or dataset(24, 9), batch_size = 8,
             progress = false, metrics = {{"accuracy", accuracy}}, seed = 3}
  for k, v in pairs(opts) do if k ~= "seed" then o[k] = v end end
  return train.Learner(o)
end

local function params_equal(a, b, what)
  local sa, sb = a:state_dict(), b:state_dict()
  for k, t in pairs(sa) do
    T.truthy(sb[k] ~= nil, what .. ": missing " .. k)
    T.truthy(t:eq(sb[k]):all():item(), what .. ": " .. k .. " differs")
  end
end

test("lrs_for: a number, {lo, hi} spread geometrically, a list per group, layer decay", function()
  local learn = learner {}
  T.eq(#learn.groups, 4)
  T.close(learn:lrs_for(0.1), {0.1, 0.1, 0.1, 0.1}, 1e-15)
  T.close(learn:lrs_for({1e-4, 1e-1}), {1e-4, 1e-3, 1e-2, 1e-1}, 1e-12)
  T.close(learn:lrs_for({1, 2, 3, 4}), {1, 2, 3, 4}, 0)
  T.close(learn:lrs_for(1, {layer_decay = 0.5}), {0.125, 0.25, 0.5, 1}, 1e-15)
  T.raises(function() learn:lrs_for({1, 2, 3}) end, "one number per layer group (4)")
  T.raises(function() learn:lrs_for({0, 1}) end, "{lo, hi} must be positive")
  T.raises(function() learn:lrs_for("x") end, "lr must be a number")
end)

test("freeze, freeze_to, unfreeze: only trainable groups change, frozen batch norm as chosen", function()
  local learn = learner {train_bn = false}
  local before = {}
  for k, g in ipairs(learn.groups) do before[k] = g.params[1]:clone() end
  learn:freeze()
  for k, g in ipairs(learn.groups) do
    for _, p in ipairs(g.params) do T.eq(p.requires_grad, k == 4, "group " .. k) end
  end
  learn:fit(1, 0.01)
  for k, g in ipairs(learn.groups) do
    T.eq(g.params[1]:eq(before[k]):all():item(), k < 4, "group " .. k .. " changed?")
  end
  -- newly trainable groups get fresh optimizer state on their first step
  T.eq(learn.opt.state[learn.groups[2].params[1]], nil)
  learn:freeze_to(2)
  T.eq(learn.groups[1].params[1].requires_grad, false)
  T.eq(learn.groups[2].params[1].requires_grad, true)
  learn:fit(1, 0.01)
  T.truthy(learn.opt.state[learn.groups[2].params[1]] ~= nil, "state made for an unfrozen group")
  T.truthy(learn.groups[1].params[1]:eq(before[1]):all():item(), "group 1 still frozen")
  learn:unfreeze()
  for _, g in ipairs(learn.groups) do T.eq(g.params[1].requires_grad, true) end
  T.raises(function() learn:freeze_to(5) end, "freeze_to: n must be an integer in 1..4")
  -- train_bn (the default) keeps normalization weights trainable in frozen groups
  local l2 = learner {}
  l2:freeze()
  local norm_trainable, conv_frozen = false, true
  for _, g in ipairs({l2.groups[1], l2.groups[2]}) do
    for i, p in ipairs(g.params) do
      if l2:_is_norm_param(p) then norm_trainable = norm_trainable or p.requires_grad
      else conv_frozen = conv_frozen and not p.requires_grad end
      local _ = i
    end
  end
  T.truthy(norm_trainable, "batch norm trainable with train_bn")
  T.truthy(conv_frozen, "convolutions frozen")
end)

test("fit_one_cycle follows OneCycleLR per optimizer step with per-group maxima", function()
  local learn = learner {opt = "sgd"}
  local seen = {}
  learn:add_callback({after_step = function(_, l)
    seen[#seen + 1] = {l.opt.param_groups[1].lr, l.opt.param_groups[4].lr, l.opt.param_groups[4].momentum}
  end})
  learn:fit_one_cycle(2, {1e-3, 1e-1})
  T.eq(#seen, 12)
  -- the same schedule made directly on a plain optimizer
  local o = vtl.optim.SGD({{params = {vtl.zeros({1}):requires_grad_()}, lr = 1}, {params = {vtl.zeros({1}):requires_grad_()}, lr = 1},
                           {params = {vtl.zeros({1}):requires_grad_()}, lr = 1}, {params = {vtl.zeros({1}):requires_grad_()}, lr = 1}},
                          {lr = 1, momentum = 0.9})
  local s = S.OneCycleLR(o, {max_lr = learn:lrs_for({1e-3, 1e-1}), total_steps = 12, pct_start = 0.25, div_factor = 25,
                             final_div_factor = 1e5})
  for i = 1, 12 do
    s:step()
    T.close(seen[i], {o.param_groups[1].lr, o.param_groups[4].lr, o.param_groups[4].momentum}, 1e-14, "step " .. i)
  end
  T.eq(#learn.history, 2)
  T.truthy(learn.history[2].accuracy ~= nil and learn.history[2].valid_loss ~= nil)
end)

test("fine_tune trains the head first, then everything with spread rates; progressive stages", function()
  local learn = learner {}
  local stages = {}
  learn:add_callback({before_fit = function(_, l)
    local trainable = 0
    for _, g in ipairs(l.groups) do if g.params[1].requires_grad then trainable = trainable + 1 end end
    stages[#stages + 1] = {trainable, l.phase.epochs, l.phase.lrs[1], l.phase.lrs[4]}
  end})
  learn:fine_tune(2, {freeze_epochs = 1, base_lr = 0.004, lr_mult = 100})
  T.eq(#stages, 2)
  T.eq(stages[1][1], 1); T.eq(stages[1][2], 1); T.close(stages[1][4], 0.004, 1e-15)
  T.eq(stages[2][1], 4); T.eq(stages[2][2], 2)
  T.close({stages[2][3], stages[2][4]}, {0.002 / 100, 0.002}, 1e-14)
  T.eq(learn.epoch, 3)
  -- the stages of a progressive fine_tune: "trainable groups:epochs" per phase
  local function stages_of(epochs)
    local l, seen = learner {}, {}
    l:add_callback({before_fit = function(_, lr)
      local trainable = 0
      for _, g in ipairs(lr.groups) do if g.params[1].requires_grad then trainable = trainable + 1 end end
      seen[#seen + 1] = trainable .. ":" .. lr.phase.epochs
    end})
    l:fine_tune(epochs, {freeze_epochs = 1, progressive = true})
    return table.concat(seen, ",")
  end
  T.eq(stages_of(3), "1:1,2:1,3:1,4:1")
  -- fewer epochs than groups: one stage per epoch, the groups spread over them
  T.eq(stages_of(2), "1:1,2:1,4:1")
end)

-- trains `epochs` of one-cycle, optionally stopping with an error in batch `stop_at` of epoch
-- `stop_epoch` (the interrupt the host raises on Ctrl-C)
local function run(opts)
  local cbs = {}
  if opts.early then cbs[#cbs + 1] = train.EarlyStopping {patience = 5, monitor = "accuracy"} end
  local learn = learner {callbacks = cbs, ema = opts.ema, accumulate = opts.accumulate or 1, num_workers = opts.workers or 0,
                         checkpoint_dir = opts.dir}
  if opts.stop_epoch then
    learn:add_callback({
      after_batch = function(_, l)
        if l.epoch + 1 == opts.stop_epoch and l.batch_in_epoch == opts.stop_at then error("interrupted!") end
      end,
      before_validate = function(_, l)
        if opts.stop_at == "validate" and l.epoch + 1 == opts.stop_epoch then error("interrupted!") end
      end})
  end
  if opts.fine_tune then learn:fine_tune(2, {freeze_epochs = 1}) else learn:fit_one_cycle(3, 0.02) end
  return learn
end

test("a run interrupted mid-epoch and resumed is bit-identical to an uninterrupted one", function()
  for _, case in ipairs {
    {stop_epoch = 2, stop_at = 3},
    {stop_epoch = 2, stop_at = 5, accumulate = 2, ema = 0.9, early = true},
    {stop_epoch = 3, stop_at = "validate"},
    {stop_epoch = 2, stop_at = 1, fine_tune = true, workers = 2},
  } do
    local what = "case stop " .. case.stop_epoch .. "/" .. tostring(case.stop_at)
    local full = run(case2 and case2 or {accumulate = case.accumulate, ema = case.ema, early = case.early,
                                         fine_tune = case.fine_tune, workers = case.workers})
    local dir = TMP .. "/ckpt_" .. tostring(case.stop_at)
    local cut = {}
    for k, v in pairs(case) do cut[k] = v end
    cut.dir = dir
    local first = run(cut)
    T.eq(first.interrupted, true, what)
    T.truthy(T.readfile(dir .. "/checkpoint.safetensors") ~= nil, what .. ": checkpoint written")
    -- a fresh Learner (other initial weights) resumes from the checkpoint
    local cbs = {}
    if case.early then cbs[1] = train.EarlyStopping {patience = 5, monitor = "accuracy"} end
    local again = learner {seed = 99, callbacks = cbs, ema = case.ema, accumulate = case.accumulate or 1,
                           num_workers = case.workers or 0}
    again:resume(dir)
    params_equal(full.model, again.model, what)
    T.eq(again.epoch, full.epoch, what .. ": epochs")
    T.eq(#again.history, #full.history, what .. ": history rows")
    for i, row in ipairs(full.history) do
      T.eq(again.history[i].train_loss, row.train_loss, what .. ": train_loss of epoch " .. i)
      T.eq(again.history[i].valid_loss, row.valid_loss, what .. ": valid_loss of epoch " .. i)
    end
  end
end)

test("Ctrl-C (SIGINT) during fit saves a checkpoint and returns; the run resumes to the same weights", function()
  local dir = TMP .. "/sigint"
  local script = TMP .. "/sigint.lua"
  T.writefile(script, string.format([[
package.path = "tests/?.lua;" .. package.path
local vtl = require "vtl"
local f = io.open("/proc/self/stat"); local pid = f:read("a"):match("^(%%d+)"); f:close()
vtl.seed(1)
local g = vtl.Generator(5)
local y = vtl.randint(1, 5, {48}, {generator = g})
local x = vtl.randn({48, 3, 12, 12}, {generator = g}) + y:to("f32"):reshape({48, 1, 1, 1}) * 0.5
local model = vtl.models.create("small_cnn", {num_classes = 4, drop_rate = 0.2})
local learn = vtl.train.Learner{model = model, train = vtl.data.TensorDataset(x, y), batch_size = 8, progress = false,
  seed = 3, checkpoint_dir = %q}
learn:add_callback({after_batch = function(_, l)
  if l.epoch == 1 and l.batch_in_epoch == 2 then
    os.execute("(sleep 0.2; kill -INT " .. pid .. ") &") -- system() itself ignores SIGINT while it runs
    local t0 = vtl.clock()
    while vtl.clock() - t0 < 5 do end -- the interrupt arrives here, in the host's hook
  end
end})
learn:fit_one_cycle(3, 0.02)
print(learn.interrupted and "interrupted" or "finished")
]], dir))
  local p = io.popen((os.getenv("VTL") or "./vtl") .. " " .. script .. " 2>&1")
  local out = p:read("a")
  local ok = p:close()
  T.truthy(ok, "the process ended normally: " .. out)
  T.truthy(out:find("interrupted\n", 1, true), out)
  T.truthy(out:find("checkpoint saved", 1, true), out)
  -- the same run without interruption, and the resumed one
  vtl.seed(1)
  local g = vtl.Generator(5)
  local y = vtl.randint(1, 5, {48}, {generator = g})
  local x = vtl.randn({48, 3, 12, 12}, {generator = g}) + y:to("f32"):reshape({48, 1, 1, 1}) * 0.5
  local ds = vtl.data.TensorDataset(x, y)
  local full = train.Learner {model = vtl.models.create("small_cnn", {num_classes = 4, drop_rate = 0.2}), train = ds,
                              batch_size = 8, progress = false, seed = 3}
  full:fit_one_cycle(3, 0.02)
  local again = train.Learner {model = vtl.models.create("small_cnn", {num_classes = 4, drop_rate = 0.2}), train = ds,
                               batch_size = 8, progress = false, seed = 3}
  again:resume(dir)
  params_equal(full.model, again.model, "after SIGINT")
end)

test("interrupts are held back inside a critical section", function()
  core.defer_interrupts(true)
  core.defer_interrupts(true)
  core.defer_interrupts(false)
  core.defer_interrupts(false) -- nothing pending: no error
  T.eq(core.defer_interrupts(false), nil)
end)

test("EarlyStopping stops after patience and restores the best weights; mode from the name", function()
  local es = train.EarlyStopping {monitor = "valid_loss", patience = 2}
  T.eq(es.mode, "min")
  T.eq(train.EarlyStopping {monitor = "accuracy"}.mode, "max")
  T.eq(train.EarlyStopping {monitor = "f1_macro"}.mode, "max")
  local learn = learner {callbacks = {es}}
  -- a validation loss that improves twice and then gets worse
  local fake = {3, 2, 2.5, 2.6, 2.7, 2.8}
  local snapshot = {}
  learn:add_callback({after_validate = function(_, l, res) res.valid_loss = fake[l.epoch + 1] end,
                      after_epoch = function(_, l) snapshot[l.epoch] = l.model:state_dict()["classifier.1.weight"]:clone() end})
  learn:fit(6, 0.01)
  T.eq(learn.epoch, 4, "stopped after 2 epochs without improvement")
  T.eq(es.best_epoch, 2)
  T.truthy(learn.model:state_dict()["classifier.1.weight"]:eq(snapshot[2]):all():item(), "best weights restored")
  T.raises(function() train.EarlyStopping {mode = "up"} end, "mode must be")
  local bad = learner {callbacks = {train.EarlyStopping {monitor = "nope"}}}
  T.raises(function() bad:fit(1, 0.01) end, "'nope' is not among")
end)

test("TerminateOnNaN stops on a NaN or infinite loss", function()
  local learn = learner {callbacks = {train.TerminateOnNaN()},
                         loss = function(out, y) return vtl.nn.functional.cross_entropy(out, y) * (1 / 0) end}
  learn:fit(3, 0.01)
  T.eq(learn.terminated, "nan")
  T.eq(learn.epoch, 0)
end)

test("CSV and JSONL loggers write one row per epoch", function()
  local csv, jl = TMP .. "/log.csv", TMP .. "/log.jsonl"
  local learn = learner {callbacks = {train.CSVLogger(csv), train.JSONLLogger(jl)}}
  learn:fit(2, 0.01)
  local lines = {}
  for l in T.readfile(csv):gmatch("[^\n]+") do lines[#lines + 1] = l end
  T.eq(#lines, 3)
  T.eq(lines[1]:sub(1, 28), "epoch,train_loss,valid_loss,")
  T.truthy(lines[3]:match("^2,"), lines[3])
  local rows = {}
  for l in T.readfile(jl):gmatch("[^\n]+") do rows[#rows + 1] = vtl.json.decode(l) end
  T.eq(#rows, 2)
  T.eq(rows[2].epoch, 2)
  T.close(rows[2].train_loss, learn.history[2].train_loss, 1e-12)
end)

test("ModelEMA keeps the running average of the weights and validates with it", function()
  local learn = learner {ema = 0.5, opt = "sgd"}
  local ema
  for _, cb in ipairs(learn.callbacks) do if cb.name == "ModelEMA" then ema = cb end end
  local w0 = learn.model:state_dict()["classifier.1.weight"]:clone()
  local ws = {}
  learn:add_callback({after_step = function(_, l) ws[#ws + 1] = l.model:state_dict()["classifier.1.weight"]:clone() end})
  learn:fit(1, 0.05)
  T.eq(#ws, 6)
  local want = w0
  for i = 1, 6 do want = want * 0.5 + ws[i] * 0.5 end
  T.close(ema.shadow["classifier.1.weight"], want, 1e-6)
  T.truthy(learn.model:state_dict()["classifier.1.weight"]:eq(ws[6]):all():item(), "the model keeps its own weights after validation")
end)

test("gradient clipping bounds the update; accumulation averages over batches", function()
  local learn = learner {opt = "sgd", opt_opts = {momentum = 0}, grad_clip = 1e-3}
  learn:freeze()
  local w = learn.model:state_dict()["classifier.1.weight"]:clone()
  local steps = 0
  learn:add_callback({after_step = function(_, l)
    steps = steps + 1
    if steps == 1 then
      local w1 = l.model:state_dict()["classifier.1.weight"]
      local b1 = l.model:state_dict()["classifier.1.bias"]
      local norm = ((w1 - w):pow(2):sum() + (b1 - l._b0):pow(2):sum()):sqrt():item()
      T.truthy(norm <= 1e-3 * 0.1 * 1.0001, "update norm " .. norm)
      l.stop_training = true
    end
  end, before_fit = function(_, l) l._b0 = l.model:state_dict()["classifier.1.bias"]:clone() end})
  learn:fit(1, 0.1)
  T.eq(steps, 1)
  local acc = learner {accumulate = 4}
  local n = 0
  acc:add_callback({after_step = function() n = n + 1 end})
  acc:fit(1, 0.01)
  T.eq(n, 2, "6 batches, a step every 4 batches and one at the end of the epoch")
end)

test("evaluate and predict (with test-time augmentation)", function()
  local learn = learner {}
  learn:fit(1, 0.01)
  local r = learn:evaluate()
  T.eq(r.pred.shape[1], 24)
  T.truthy(r.accuracy >= 0 and r.accuracy <= 1)
  T.close(r.accuracy, accuracy(r.pred, r.target), 1e-12)
  local ds = dataset(10, 4)
  local p = learn:predict(ds)
  T.eq(table.concat(p.shape, ","), "10,4")
  T.close(p:sum(2), vtl.ones({10}), 1e-5)
  local p3 = learn:predict(ds, {tta = 3})
  T.close(p3:sum(2), vtl.ones({10}), 1e-5)
  local xb = ds.x:narrow(1, 1, 4)
  local pt = learn:predict(xb, {tta = 2})
  local want = (learn:predict(xb) + learn:predict(xb:index_select(4, vtl.arange(12, 0, -1)))) / 2
  T.close(pt, want, 1e-6)
  T.raises(function() learn:predict(ds, {tta = 0}) end, "tta must be a positive integer")
end)

test("Learner arguments are checked", function()
  T.raises(function() train.Learner {} end, "model must be an nn.Module")
  T.raises(function() train.Learner {model = model(), train = 5} end, "train must be a dataset or a DataLoader")
  T.raises(function() train.Learner {model = model(), opt = "lamb"} end, "unknown optimizer 'lamb'")
  T.raises(function() train.Learner {model = model(), batch_size = 0} end, "batch_size must be a positive integer")
  T.raises(function() train.Learner {model = model(), metrics = {3}} end, "metrics[1] must be a metric name")
  T.raises(function() train.Learner {model = model(), grad_clip = -1} end, "grad_clip must be a positive number")
  local learn = learner {}
  T.raises(function() learn:fit(0, 0.1) end, "epochs must be a positive integer")
  T.raises(function() learn:fine_tune(1, {lr_mult = 0.5}) end, "lr_mult must be a number >= 1")
  T.raises(function() learn:load(TMP .. "/nothing") end, "load:")
  os.execute("mkdir -p '" .. TMP .. "/bad'")
  vtl.save(TMP .. "/bad/checkpoint.safetensors", {x = vtl.zeros({1})})
  T.raises(function() learn:load(TMP .. "/bad") end, "is not a Learner checkpoint")
  vtl.save(TMP .. "/bad/checkpoint.safetensors", {x = vtl.zeros({1})}, {learner = "{not json"})
  T.raises(function() learn:load(TMP .. "/bad") end, "damaged learner metadata")
end)

test("lr_find sweeps exponentially, suggests the valley and restores the weights", function()
  local learn = learner {opt = "sgd"}
  local before = learn.model:state_dict()["classifier.1.weight"]:clone()
  local g0 = vtl.default_generator:get_state()
  local r = learn:lr_find {num_it = 30, start_lr = 1e-5, end_lr = 100}
  T.truthy(#r.lrs >= 5 and #r.lrs <= 30, "points " .. #r.lrs)
  T.close(r.lrs[1], 1e-5, 1e-12)
  for i = 2, #r.lrs do T.close(r.lrs[i] / r.lrs[i - 1], (1e7) ^ (1 / 29), 1e-9) end
  if #r.lrs < 30 then T.truthy(r.losses[#r.losses] > 4 * math.min(table.unpack(r.losses)) or r.losses[#r.losses] ~= r.losses[#r.losses], "stopped on divergence") end
  T.truthy(r.suggestion >= r.lrs[1] and r.suggestion <= r.lrs[#r.lrs])
  T.eq(r.suggestion, r.lrs[r.index])
  -- the valley on a curve rising for 4 points, falling over points 5..20, then rising: the
  -- longest decreasing sequence has 17 points (one of 1..4, then 5..20); counted from the point
  -- before it (3) as fastai does: 3 + floor(17/3) + floor(17/3/2) = 10
  local curve = {}
  for i = 1, 4 do curve[i] = 3 + 0.01 * i end
  for i = 5, 20 do curve[i] = 3 - 0.1 * (i - 5) end
  for i = 21, 30 do curve[i] = 1.5 + 0.3 * (i - 20) end
  T.eq(train._valley(curve), 10)
  T.truthy(learn.model:state_dict()["classifier.1.weight"]:eq(before):all():item(), "weights restored")
  T.eq(next(learn.opt.state), nil, "optimizer state restored (none before)")
  local g1 = vtl.default_generator:get_state()
  T.eq(g1.offset, g0.offset)
  T.raises(function() learn:lr_find {start_lr = 1, end_lr = 0.1} end, "0 < start_lr < end_lr")
end)

test("report: curves, confusion matrix, top losses and a markdown summary", function()
  local dir = TMP .. "/report"
  local learn = learner {}
  learn:fit_one_cycle(2, 0.01)
  T.eq(#learn.step_losses, 12)
  T.close(learn.step_epochs[6], 1.0, 1e-12)
  local md = learn:report(dir)
  local text = T.readfile(md)
  T.truthy(text:find("## History", 1, true) and text:find("| epoch | train_loss | valid_loss | accuracy", 1, true), text)
  T.truthy(text:find("precision    recall  f1-score   support", 1, true), "per-class table")
  for _, f in ipairs {"losses.png", "metrics.png", "lr.png", "confusion_matrix.png", "top_losses.png"} do
    local img = vtl.image.load(dir .. "/" .. f)
    T.truthy(img.shape[1] > 100 and img.shape[2] > 100, f)
    T.truthy(text:find("](" .. f .. ")", 1, true), f .. " linked")
  end
  -- the top losses are the largest per-sample losses, in order
  local _, list = learn:plot_top_losses(5, dir .. "/top5.png")
  local r = learn:evaluate()
  local per = vtl.nn.functional.cross_entropy(r.pred, r.target, {reduction = "none"}):totable()
  table.sort(per, function(a, b) return a > b end)
  for j = 1, 5 do T.close(list[j].loss, per[j], 1e-5) end
  T.raises(function() learn:plot_top_losses(0, dir .. "/x.png") end, "k must be a positive integer")
end)

test("device: the Learner runs where the model is, or moves it; a bad device is named", function()
  local a = learner {}
  T.eq(a.device, "cpu")
  local b = learner {device = "cpu"}
  T.eq(b.device, "cpu")
  b:fit(1, 1e-2)
  T.truthy(b:evaluate().accuracy ~= nil, "evaluate on the device")
  T.eq(b:predict(dataset(6, 11)).device, "cpu")
  T.raises(function() learner {device = 3} end, "Learner: device must be \"cpu\", \"cuda\" or \"cuda:N\", got number")
  T.raises(function() learner {device = "tpu"} end, "'tpu' is neither a dtype")
  if not vtl.cuda.is_available() then
    T.raises(function() learner {device = "cuda"} end, "cuda: ")
  end
end)
