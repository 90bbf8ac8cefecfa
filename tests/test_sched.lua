-- vtl.optim.lr_scheduler against torch.optim.lr_scheduler (tests/ref/gen_sched.py).
local T = require "testlib"
local vtl = require "vtl"
local optim = require "vtl.optim"
local S = optim.lr_scheduler
local test = T.test

local fixtures = os.getenv("VTL_FIXTURES") or "build/fixtures"
local ok_ref, ref = pcall(dofile, fixtures .. "/sched_ref.lua")

local function make_opt(kind, lrs)
  local groups = {}
  for k, lr in ipairs(lrs) do groups[k] = {params = {vtl.zeros({2}):requires_grad_()}, lr = lr} end
  if kind == "SGD" then return optim.SGD(groups, {lr = lrs[1], momentum = 0.9}) end
  return optim.Adam(groups, {lr = lrs[1]})
end

local function build(case, opt)
  if case.sched == "warmup" then
    local inner = S[case.opts.inner](opt, case.opts.inner_opts)
    return S.warmup(inner, case.opts.steps, {start_factor = case.opts.start_factor})
  end
  return S[case.sched](opt, case.opts)
end

local function moms(opt, kind)
  local out = {}
  for k, g in ipairs(opt.param_groups) do out[k] = kind == "SGD" and g.momentum or g.betas[1] end
  return out
end

if not ok_ref then
  test("scheduler reference fixtures", function() error("missing " .. fixtures .. "/sched_ref.lua (run tests/ref/gen_sched.py): " .. tostring(ref)) end)
else
  for _, case in ipairs(ref) do
    test("lr_scheduler " .. case.sched .. " (" .. case.name .. ") matches PyTorch", function()
      local opt = make_opt(case.optim, case.lrs)
      local s = build(case, opt)
      local lrs, ms = {s:get_last_lr()}, {moms(opt, case.optim)}
      for t = 1, case.steps do
        if case.sched == "ReduceLROnPlateau" then s:step(case.metrics[t]) else s:step() end
        lrs[t + 1] = s:get_last_lr()
        for k, g in ipairs(opt.param_groups) do T.eq(g.lr, lrs[t + 1][k], "get_last_lr agrees with the group") end
        ms[t + 1] = moms(opt, case.optim)
      end
      T.close(lrs, case.want_lr, 1e-12, case.name .. " lr")
      T.close(ms, case.want_mom, 1e-12, case.name .. " momentum")
    end)
  end
end

test("a scheduler resumed from state_dict continues the same sequence", function()
  for _, mk in ipairs {
    function(o) return S.CosineAnnealingWarmRestarts(o, {T_0 = 3, T_mult = 2}) end,
    function(o) return S.OneCycleLR(o, {max_lr = 0.3, total_steps = 30}) end,
    function(o) return S.warmup(S.StepLR(o, {step_size = 4}), 3) end,
    function(o) return S.ReduceLROnPlateau(o, {patience = 1}) end,
  } do
    local a_opt, b_opt = make_opt("SGD", {0.1}), make_opt("SGD", {0.1})
    local a = mk(a_opt)
    local plateau = a.name == "ReduceLROnPlateau"
    local function step(s, t) if plateau then s:step(1 / (1 + t % 3)) else s:step() end end
    for t = 1, 11 do step(a, t) end
    local saved = a:state_dict()
    local b = mk(b_opt)
    b_opt.param_groups[1].lr = a_opt.param_groups[1].lr
    b:load_state_dict(saved)
    for t = 12, 25 do
      step(a, t); step(b, t)
      T.eq(b:get_last_lr()[1], a:get_last_lr()[1], a.name .. " step " .. t)
    end
  end
end)

test("schedulers scale each group from its own base lr", function()
  local opt = make_opt("SGD", {1.0, 0.01})
  local s = S.CosineAnnealingLR(opt, {T_max = 4})
  s:step(); s:step()
  T.close(s:get_last_lr(), {0.5, 0.005}, 1e-12)
end)

test("bad scheduler arguments are refused with the option named", function()
  local opt = make_opt("SGD", {0.1})
  T.raises(function() S.StepLR(opt, {}) end, "StepLR: option 'step_size' is required")
  T.raises(function() S.StepLR(opt, {step_size = 0}) end, "StepLR: option 'step_size' must be a number >= 1")
  T.raises(function() S.StepLR(opt, {step_size = 2.5}) end, "must be an integer")
  T.raises(function() S.StepLR({}, {step_size = 2}) end, "StepLR: expected an optimizer")
  T.raises(function() S.MultiStepLR(opt, {milestones = {1, -2}}) end, "milestones[2]")
  T.raises(function() S.LinearLR(opt, {start_factor = 2}) end, "start_factor' must be a number in [0, 1]")
  T.raises(function() S.OneCycleLR(opt, {max_lr = 1}) end, "give total_steps, or epochs and steps_per_epoch")
  T.raises(function() S.OneCycleLR(opt, {max_lr = {1, 2}, total_steps = 5}) end, "max_lr has 2 entries for 1 parameter groups")
  T.raises(function() S.OneCycleLR(opt, {max_lr = 1, total_steps = 5, anneal_strategy = "exp"}) end, "anneal_strategy")
  local oc = S.OneCycleLR(opt, {max_lr = 1, total_steps = 2})
  oc:step(); oc:step()
  T.raises(function() oc:step() end, "more than total_steps (2)")
  T.raises(function() S.ReduceLROnPlateau(opt, {mode = "up"}) end, "mode must be")
  T.raises(function() S.ReduceLROnPlateau(opt, {factor = 1.5}) end, "factor must be below 1")
  T.raises(function() S.ReduceLROnPlateau(opt):step("x") end, "expected the monitored metric")
  T.raises(function() S.warmup(S.ReduceLROnPlateau(opt), 3) end, "warmup: expected a scheduler")
  T.raises(function() S.warmup(S.StepLR(opt, {step_size = 1}), 0) end, "steps must be a positive integer")
  local plain = {param_groups = {{params = {}, lr = 0.1}}} -- an optimizer with neither momentum nor betas
  T.raises(function() S.OneCycleLR(plain, {max_lr = 1, total_steps = 5}) end, "cycle_momentum needs")
  T.close(S.OneCycleLR(plain, {max_lr = 1, total_steps = 5, cycle_momentum = false}):get_last_lr()[1], 1 / 25, 1e-12)
end)

-- pct_start * total_steps = 1 makes the warm-up phase end at step 0; PyTorch 1.13 divides by
-- zero there. vtl takes the empty phase as complete: the cycle starts at max_lr.
T.test("OneCycleLR: a warm-up of no length starts at max_lr; a one-epoch fit on 4 batches trains", function()
  local w = vtl.nn.Parameter(vtl.zeros(2))
  local opt = vtl.optim.AdamW({w}, {lr = 1e-3})
  local oc = S.OneCycleLR(opt, {max_lr = 1e-3, total_steps = 4, pct_start = 0.25})
  local lrs = {opt.param_groups[1].lr}
  for _ = 1, 3 do opt:step(); oc:step(); lrs[#lrs + 1] = opt.param_groups[1].lr end
  T.close(lrs, {1e-3, 7.5e-4, 2.5e-4, 4e-9}, 1e-5, "the annealing phase alone")
  vtl.seed(3)
  local m = vtl.models.create("small_cnn", {num_classes = 3, in_chans = 1, width = 0.25})
  local ds = vtl.data.TensorDataset(vtl.randn(100, 1, 16, 16), vtl.randint(1, 4, {100}))
  local learn = vtl.train.Learner {model = m, train = ds, batch_size = 32, seed = 1, progress = false}
  learn:fit_one_cycle(1, 1e-3)
  T.eq(learn.iteration, 4, "four steps")
  T.truthy(learn.last_loss == learn.last_loss, "a finite loss")
end)
