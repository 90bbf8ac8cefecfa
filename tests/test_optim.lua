-- vtl.optim against torch.optim: tests/ref/gen_optim.py writes initial parameters, 20 steps of
-- gradients and, per case, the parameters after every step ($VTL_FIXTURES/optim_ref.lua).
-- Each case replays the gradients (p.grad = g) and requires every element to match PyTorch to
-- 1e-6 relative (|got - want| <= 1e-6 * |want|, elements with |want| < 1e-3 compared to 1e-9
-- absolute). Then: state dict round trips, parameter groups, skipped parameters, bad input.
-- VTL_OPTIM_REPORT=1 prints the largest relative error per optimizer.
local T = require "testlib"
local vtl = require "vtl"
local optim = vtl.optim

local RTOL, ATOL_NEAR_ZERO, NEAR_ZERO = 1e-6, 1e-9, 1e-3
local fixtures = os.getenv("VTL_FIXTURES") or "build/fixtures"
local ok_ref, ref = pcall(dofile, fixtures .. "/optim_ref.lua")
if not ok_ref then
  T.test("optim reference fixtures", function() error("missing " .. fixtures .. "/optim_ref.lua (run tests/ref/gen_optim.py): " .. tostring(ref)) end)
  ref = {params = {}, grads = {}, cases = {}, steps = 0}
end

local function f32(data, shape) return vtl.tensor(data, {dtype = "f32"}):view(shape) end

local function fresh_params()
  local ps = {}
  for i, spec in ipairs(ref.params) do ps[i] = f32(spec.data, spec.shape):requires_grad_() end
  return ps
end

local function case_named(name)
  for _, c in ipairs(ref.cases) do if c.name == name then return c end end
  error("no reference case " .. name)
end

-- a fixture group {params = {indices}, <options>} as an optimizer group (a fresh table)
local function group_of(spec, params)
  local g = {}
  for k, v in pairs(spec) do
    if k == "params" then
      g.params = {}
      for j, i in ipairs(v) do g.params[j] = params[i] end
    elseif type(v) == "table" then
      g[k] = {table.unpack(v)}
    else
      g[k] = v
    end
  end
  return g
end

local function make_opt(case, params)
  local groups = {}
  for gi, spec in ipairs(case.groups) do groups[gi] = group_of(spec, params) end
  return optim[case.optim](groups)
end

local function missing_set(case)
  local s = {}
  for _, m in ipairs(case.missing) do s[m[1] .. ":" .. m[2]] = true end
  return s
end

-- events due before step t, then gradients for step t
local function prepare_step(case, opt, params, t, missing)
  for _, ev in ipairs(case.events) do
    if ev.before == t then
      if ev.kind == "add_group" then opt:add_param_group(group_of(ev.group, params))
      elseif ev.kind == "set_lr" then opt.param_groups[ev.group].lr = ev.lr end
    end
  end
  for i, p in ipairs(params) do
    p.grad = (not missing[t .. ":" .. i]) and f32(ref.grads[t][i], ref.params[i].shape) or nil
  end
end

local max_rel = {} -- optimizer name -> largest relative error seen (elements with |want| >= NEAR_ZERO)

local function compare(case, params, t)
  for i, p in ipairs(params) do
    local got, want = p:detach():contiguous():view(-1):totable(), case.want[t][i]
    for k = 1, #want do
      local d, w = math.abs(got[k] - want[k]), math.abs(want[k])
      local rel = w >= NEAR_ZERO and d / w or 0
      if rel > (max_rel[case.optim] or 0) then max_rel[case.optim] = rel end
      if (w >= NEAR_ZERO and d > RTOL * w) or (w < NEAR_ZERO and d > ATOL_NEAR_ZERO) then
        error(("%s: step %d, parameter %d, element %d: got %.9g, want %.9g (relative error %.3g)"):format(
          case.name, t, i, k, got[k], want[k], d / math.max(w, 1e-30)), 2)
      end
    end
  end
end

-- steps first..last of case on (opt, params); returns a copy of the parameters after each step
local function replay(case, opt, params, first, last)
  local missing, traj = missing_set(case), {}
  for t = first, last do
    prepare_step(case, opt, params, t, missing)
    opt:step()
    compare(case, params, t)
    local snap = {}
    for i, p in ipairs(params) do snap[i] = p:detach():clone() end
    traj[t] = snap
  end
  return traj
end

for _, case in ipairs(ref.cases) do
  T.test("matches torch.optim: " .. case.name, function()
    local params = fresh_params()
    replay(case, make_opt(case, params), params, 1, ref.steps)
  end)
end

local function same_trajectory(a, b, from, to, what)
  for t = from, to do
    for i = 1, #a[t] do T.truthy(a[t][i]:eq(b[t][i]):all():item(), ("%s: step %d parameter %d differs"):format(what, t, i)) end
  end
end

-- interrupted after `at` steps, rebuilt from a state dict (through `transport`), continued
local function resume_case(name, at, transport)
  local case = case_named(name)
  local params = fresh_params()
  local whole = replay(case, make_opt(case, params), params, 1, ref.steps)

  local p1 = fresh_params()
  local o1 = make_opt(case, p1)
  replay(case, o1, p1, 1, at)
  local sd = transport(o1)
  local p2 = {}
  for i, p in ipairs(p1) do p2[i] = p:detach():clone():requires_grad_() end
  local o2 = make_opt(case, p2)
  -- groups added by events before `at` exist in o1 only: add them the same way
  for _, ev in ipairs(case.events) do
    if ev.kind == "add_group" and ev.before <= at then o2:add_param_group(group_of(ev.group, p2)) end
  end
  o2:load_state_dict(sd)
  local rest = replay(case, o2, p2, at + 1, ref.steps)
  same_trajectory(whole, rest, at + 1, ref.steps, name)
end

local in_memory = function(o) return o:state_dict() end
local through_file = function(o)
  local path = os.tmpname() .. ".safetensors"
  vtl.save(path, o:state_tensors("optimizer."))
  local tensors, meta = vtl.load(path)
  os.remove(path)
  return optim.unflatten_state_dict(tensors, meta, "optimizer.")
end

for _, name in ipairs({"sgd_nesterov_wd", "adam_amsgrad_wd_maximize", "adamw_groups", "rmsprop_centered_momentum_wd",
                       "adam_missing_grads", "sgd_add_group_set_lr", "rmsprop_set_lr"}) do
  T.test("state_dict round trip mid-run: " .. name, function() resume_case(name, 10, in_memory) end)
  T.test("state_tensors through vtl.save/vtl.load: " .. name, function() resume_case(name, 13, through_file) end)
end

T.test("state_dict restores options and names the state", function()
  local params = fresh_params()
  local opt = optim.Adam({params[1], params[2]}, {lr = 0.01, amsgrad = true})
  params[1].grad = vtl.ones_like(params[1])
  opt:step()
  opt.param_groups[1].lr = 0.005
  local sd = opt:state_dict()
  T.eq(sd.state[1].step, 1)
  T.truthy(vtl.is_tensor(sd.state[1].exp_avg) and vtl.is_tensor(sd.state[1].max_exp_avg_sq))
  T.eq(sd.state[2], nil, "a parameter without a gradient has no state")
  T.eq(table.concat(sd.param_groups[1].params, ","), "1,2")
  local tensors, meta = opt:state_tensors()
  T.truthy(tensors["state.1.exp_avg_sq"])
  T.eq(meta["param_groups.1.lr"], "0.0050000000000000001")
  T.eq(meta["param_groups.1.amsgrad"], "true")
  T.eq(meta["state.1.step"], "1")
  local again = fresh_params()
  local other = optim.Adam({again[1], again[2]})
  other:load_state_tensors(tensors, meta)
  T.eq(other.param_groups[1].lr, 0.005)
  T.eq(other.param_groups[1].amsgrad, true)
  T.eq(other.param_groups[1].betas[2], 0.999)
  T.eq(other.param_groups[1].params[1], again[1])
  T.truthy(other.state[again[1]].exp_avg:eq(sd.state[1].exp_avg):all():item())
  T.raises(function() optim.Adam({params[1]}):load_state_dict(sd) end, "param group 1 has 2 parameters in the state dict, 1 in the optimizer")
  T.raises(function() optim.SGD({params[1], params[2]}, {lr = 1}):load_state_dict(sd) end, "the state dict is from Adam, not SGD")
end)

T.test("parameters whose grad is nil are untouched", function()
  local params = fresh_params()
  local frozen = params[2]:detach():clone()
  for _, Opt in ipairs({optim.SGD, optim.Adam, optim.AdamW, optim.RMSprop}) do
    local opt = Opt(params, {lr = 0.1, weight_decay = 0.1})
    for _ = 1, 3 do
      for i, p in ipairs(params) do p.grad = i ~= 2 and vtl.ones_like(p) or nil end
      opt:step()
    end
    T.truthy(params[2]:detach():eq(frozen):all():item(), Opt.name .. " changed a parameter without a gradient")
    T.eq(opt.state[params[2]], nil)
    T.truthy(opt.state[params[1]])
  end
end)

T.test("add_param_group", function()
  local params = fresh_params()
  local opt = optim.SGD({params[1]}, {lr = 0.1, momentum = 0.9})
  local g = opt:add_param_group({params = {params[2], params[3]}, lr = 0.01})
  T.eq(#opt.param_groups, 2)
  T.eq(g.momentum, 0.9, "unset options take the optimizer's defaults")
  T.eq(opt.param_groups[2].lr, 0.01)
  opt:add_param_group({params = params[4]})
  T.eq(opt.param_groups[3].params[1], params[4])
  T.raises(function() opt:add_param_group({params = {params[1]}}) end, "SGD: param group 4: some parameters appear in more than one parameter group")
  T.raises(function() opt:add_param_group({params = {vtl.zeros(2), 3}}) end, "params[2] must be a tensor, got number")
  T.raises(function() opt:add_param_group({lr = 1}) end, "needs params = a list of tensors")
  T.eq(#opt.param_groups, 3, "a rejected group is not added")
end)

T.test("zero_grad sets gradients to nil or zeroes them", function()
  local params = fresh_params()
  local opt = optim.SGD(params, {lr = 0.1})
  for _, p in ipairs(params) do p.grad = vtl.ones_like(p) end
  opt:zero_grad(false)
  T.eq(params[1].grad:abs():sum():item(), 0)
  opt:zero_grad()
  for _, p in ipairs(params) do T.eq(p.grad, nil) end
end)

T.test("step(closure) evaluates the loss with gradients on", function()
  local w = vtl.tensor({1.0, -2.0}):requires_grad_()
  local opt = optim.SGD({w}, {lr = 0.25})
  local loss = vtl.no_grad(function()
    return opt:step(function()
      opt:zero_grad()
      local l = (w * w):sum()
      l:backward()
      return l
    end)
  end)
  T.close(loss:item(), 5)
  T.close(w:detach(), vtl.tensor({0.5, -1.0}))
  T.eq(vtl.is_grad_enabled(), true)
end)

T.test("updates run under no_grad and keep parameters leaves", function()
  local w = vtl.tensor({1.0, 2.0}):requires_grad_()
  local opt = optim.Adam({w}, {lr = 0.1})
  local loss = (w * 3):sum()
  loss:backward()
  opt:step()
  T.truthy(w.is_leaf and w.requires_grad)
  T.eq(w.grad_fn, nil)
  T.eq(opt.state[w].exp_avg.requires_grad, false)
  T.close(w:detach(), vtl.tensor({0.9, 1.9}), 1e-6)
end)

T.test("bad input names the optimizer and the problem", function()
  local p = vtl.zeros(3):requires_grad_()
  T.raises(function() optim.SGD({p, "w"}, {lr = 0.1}) end, "SGD: params[2] must be a tensor, got string")
  T.raises(function() optim.Adam({p, 3}) end, "Adam: params[2] must be a tensor, got number")
  T.raises(function() optim.Adam(42) end, "Adam: params must be a list of tensors or of parameter groups, got number")
  T.raises(function() optim.Adam({}) end, "Adam: got an empty parameter list")
  T.raises(function() optim.SGD({p}, {lr = -0.1}) end, "SGD: invalid learning rate -0.1 (must be >= 0)")
  T.raises(function() optim.Adam({p}, {lr = -1}) end, "Adam: invalid learning rate -1 (must be >= 0)")
  T.raises(function() optim.AdamW({p}, {lr = "fast"}) end, "AdamW: lr must be a number, got string")
  T.raises(function() optim.RMSprop({p}, {lr = -1e-3}) end, "RMSprop: invalid learning rate")
  T.raises(function() optim.Adam({p}, {betas = {1.0, 0.999}}) end, "Adam: invalid beta parameter at index 1: 1.0 (must be in [0, 1))")
  T.raises(function() optim.AdamW({p}, {betas = {0.9, -0.1}}) end, "AdamW: invalid beta parameter at index 2: -0.1")
  T.raises(function() optim.Adam({p}, {betas = 0.9}) end, "Adam: betas must be a table of two numbers")
  T.raises(function() optim.Adam({p}, {eps = -1}) end, "Adam: invalid epsilon value -1")
  T.raises(function() optim.Adam({p}, {weight_decay = -1}) end, "Adam: invalid weight_decay value -1")
  T.raises(function() optim.RMSprop({p}, {alpha = -0.5}) end, "RMSprop: invalid alpha value -0.5")
  T.raises(function() optim.RMSprop({p}, {momentum = -0.5}) end, "RMSprop: invalid momentum value -0.5")
  T.raises(function() optim.SGD({p}) end, "SGD: lr is required")
  T.raises(function() optim.SGD({p}, {lr = 0.1, nesterov = true}) end, "SGD: Nesterov momentum requires a momentum and zero dampening")
  T.raises(function() optim.SGD({p}, {lr = 0.1, momentun = 0.9}) end, "SGD: unknown option 'momentun'")
  T.raises(function() optim.Adam({p}, {amsgrad = 1}) end, "Adam: amsgrad must be true or false, got number")
  T.raises(function() optim.Adam({{params = {p}}, {params = {vtl.ones(2)}, lr = -2}}) end,
    "Adam: param group 2: invalid learning rate -2")
  T.raises(function() optim.Adam({{params = {p}}, 5}) end, "Adam: param group 2 must be a table")
  T.raises(function() optim.Adam({p, p}) end, "Adam: some parameters appear in more than one parameter group")
  local q = vtl.ones(2):requires_grad_()
  T.raises(function() optim.Adam({q * 2}) end, "Adam: params[1] is not a leaf tensor")
  T.raises(function() optim.Adam({vtl.ones(2, {dtype = "i64"})}) end, "Adam: params[1] has dtype i64")
  -- a learning rate broken between steps is caught at the next step
  local opt = optim.Adam({p})
  opt.param_groups[1].lr = nil
  p.grad = vtl.ones(3)
  T.raises(function() opt:step() end, "Adam: lr must be a number, got nil")
  T.eq(p:detach():abs():sum():item(), 0, "nothing was updated")
end)

T.test("param_groups_no_decay", function()
  local w1, b1 = vtl.randn(4, 3):requires_grad_(), vtl.randn(4):requires_grad_()
  local n1 = vtl.ones(4):requires_grad_()
  local emb = vtl.randn(1, 5, 3):requires_grad_()
  local w2 = vtl.randn(2, 4):requires_grad_()
  local frozen = vtl.randn(2, 2)
  local named = {{"fc1.weight", w1}, {"fc1.bias", b1}, {"norm.weight", n1}, {"pos_embed", emb}, {"head.weight", w2},
                 {"stem.weight", frozen}}
  local groups = optim.param_groups_no_decay(named, {weight_decay = 0.05, lr = 3e-4, skip = {"pos_embed"}})
  T.eq(#groups, 2)
  T.eq(groups[1].weight_decay, 0)
  T.eq(groups[2].weight_decay, 0.05)
  T.eq(groups[1].lr, 3e-4)
  T.eq(#groups[1].params, 3)
  T.eq(groups[1].params[1], b1); T.eq(groups[1].params[2], n1); T.eq(groups[1].params[3], emb)
  T.eq(#groups[2].params, 2, "frozen parameters are left out")
  T.eq(groups[2].params[1], w1); T.eq(groups[2].params[2], w2)
  -- a module: named_parameters() and no_weight_decay()
  local model = {named_parameters = function() return named end, no_weight_decay = function() return {"head.weight"} end}
  local g2 = optim.param_groups_no_decay(model, {include_frozen = true})
  T.eq(#g2[1].params, 3); T.eq(#g2[2].params, 3)
  T.eq(g2[2].weight_decay, nil, "without weight_decay the optimizer's default applies")
  local opt = optim.AdamW(g2, {lr = 1e-3})
  T.eq(opt.param_groups[1].weight_decay, 0)
  T.eq(opt.param_groups[2].weight_decay, 0.01)
  T.raises(function() optim.param_groups_no_decay({{"a", 3}}) end, "param_groups_no_decay: entry 1 must be {name, tensor}")
end)

T.test("tostring lists the groups", function()
  local s = tostring(optim.Adam({vtl.zeros(2):requires_grad_()}, {lr = 0.5}))
  T.truthy(s:find("Adam (", 1, true) and s:find("Parameter Group 1", 1, true) and s:find("lr: 0.5", 1, true)
    and s:find("betas: {0.9, 0.999}", 1, true), s)
end)

if os.getenv("VTL_OPTIM_REPORT") then
  T.test("report", function()
    local names = {"SGD", "Adam", "AdamW", "RMSprop"}
    for _, k in ipairs(names) do print(("  %-8s max relative error vs torch.optim: %.3g"):format(k, max_rel[k] or 0)) end
  end)
end

T.test("_optim_multi: CPU parameters are left to the per-parameter kernels; a bad kind is named", function()
  local core = require "vtl.core"
  local p, g = vtl.randn(4, 3), vtl.randn(4, 3)
  local before = p:clone()
  T.eq(core._optim_multi("sgd", {{p = p, g = g}}, {lr = 0.1}), false, "the CPU has no multi-parameter kernel")
  T.close(p, before, 0, "nothing changed")
  T.eq(core._optim_multi("adam", {}, {lr = 0.1}), true, "nothing to do")
  T.raises(function() core._optim_multi("lion", {{p = p, g = g}}, {}) end, "invalid option 'lion'")
  T.raises(function() core._optim_multi("sgd", {{g = g}}, {}) end, "record 1 has no parameter")
end)
