-- vtl.nn against PyTorch: tests/ref/gen_nn.py writes, for each case, torch's state_dict keys,
-- its weights (safetensors), inputs, outputs and gradients; each vtl module here is built
-- like its torch twin, loads the torch weights and must reproduce outputs and gradients.
-- Then the parts PyTorch cannot check for us: module mechanics, errors, init statistics.
local T = require "testlib"
local vtl = require "vtl"
local nn = vtl.nn
local F = nn.functional

local dir = (os.getenv("VTL_FIXTURES") or "build/fixtures") .. "/nn"
local ok_ref, ref = pcall(dofile, dir .. "/nn_ref.lua")

local shape_str = require("reflib").shape_str

-- ---- PyTorch parity ----

-- vtl twins of the torch modules in gen_nn.py
local builders = {
  linear = function() return nn.Linear(4, 3) end,
  linear_nobias = function() return nn.Linear(4, 3, {bias = false}) end,
  conv = function() return nn.Conv2d(4, 6, 3, {stride = 2, padding = 1, groups = 2}) end,
  conv_dilated = function() return nn.Conv2d(3, 4, {3, 2}, {padding = {2, 1}, dilation = 2, bias = false}) end,
  conv_same = function() return nn.Conv2d(3, 4, 4, {padding = "same"}) end,
  conv_reflect = function() return nn.Conv2d(2, 3, 3, {padding = 1, padding_mode = "reflect"}) end,
  bn2d_train = function() return nn.BatchNorm2d(4) end,
  bn2d_eval = function() return nn.BatchNorm2d(4) end,
  bn1d_train = function() return nn.BatchNorm1d(4) end,
  bn1d_3d_train = function() return nn.BatchNorm1d(3) end,
  bn1d_cma = function() return nn.BatchNorm1d(3, {momentum = false}) end,
  bn2d_noaffine = function() return nn.BatchNorm2d(3, {affine = false}) end,
  ln = function() return nn.LayerNorm(6) end,
  ln2 = function() return nn.LayerNorm({3, 6}) end,
  gn = function() return nn.GroupNorm(2, 6) end,
  mha = function() return nn.MultiheadAttention(8, 2, {batch_first = true}) end,
  mha_seq = function() return nn.MultiheadAttention(8, 4) end,
  embedding = function() return nn.Embedding(10, 3, {padding_idx = 3}) end,
  cnn = function()
    return nn.Sequential(
      nn.Conv2d(3, 8, 3, {padding = 1}), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(8, 16, 3, {stride = 2, padding = 1, groups = 2, bias = false}), nn.BatchNorm2d(16), nn.Hardswish(),
      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, 5))
  end,
  net = function()
    local Block = nn.Module:extend("Block")
    function Block:init(c)
      self.conv = nn.Conv2d(c, c, 3, {padding = 1, bias = false})
      self.bn = nn.BatchNorm2d(c)
      self.act = nn.SiLU()
    end
    function Block:forward(x) return x + self.act(self.bn(self.conv(x))) end
    local Net = nn.Module:extend("Net")
    function Net:init()
      self.scale = nn.Parameter(vtl.ones(1))
      self:register_buffer("stat", vtl.zeros(2))
      self:register_buffer("tmp", vtl.zeros(2), {persistent = false})
      self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
      self.blocks = nn.ModuleList{Block(4), Block(4)}
      self.heads = nn.ModuleDict{{"cls", nn.Linear(4, 3)}, {"aux", nn.Linear(4, 1)}}
    end
    function Net:forward(x)
      x = self.stem(x)
      for _, b in ipairs(self.blocks) do x = b(x) end
      local f = x:mean({3, 4}) * self.scale
      return self.heads.cls(f), self.heads.aux(f)
    end
    return Net()
  end,
}

local calls = {
  mha = function(m, i) return m(i.q, i.kv, i.kv, {key_padding_mask = i.kpm}) end,
  mha_seq = function(m, i) return m(i.x, i.x, i.x, {attn_mask = i.mask, average_attn_weights = false}) end,
}

local preps = {cnn = function(m) m[10]:eval() end}

local function prefixed(tensors, prefix)
  local out = {}
  for k, v in pairs(tensors) do
    if k:sub(1, #prefix) == prefix then out[k:sub(#prefix + 1)] = v end
  end
  return out
end

-- sum_i out_i * gout_i, backpropagated
local function backprop(outs, files)
  local loss
  for i = 1, outs.n do
    local g = files["gout/" .. i]
    if g then
      local term = (outs[i] * g):sum()
      loss = loss and loss + term or term
    end
  end
  if loss then loss:backward() end
end

local function check_outputs(outs, files, n, tol, what)
  T.eq(outs.n >= n and n or outs.n, n, what .. ": number of outputs")
  for i = 1, n do
    local want = files["output/" .. i]
    T.truthy(vtl.is_tensor(outs[i]), what .. ": output " .. i .. " is not a tensor")
    T.close(outs[i], want, tol, what .. ": output " .. i)
  end
end

if not ok_ref then
  T.test("nn reference fixtures", function() error("cannot read " .. dir .. "/nn_ref.lua (run tests/ref/gen_nn.py): " .. tostring(ref)) end)
  ref = {models = {}, functional = {}}
end

for _, case in ipairs(ref.models) do
  T.test("torch parity: " .. case.name, function()
    local build = builders[case.name]
    T.truthy(build, "no vtl builder for case " .. case.name)
    local m = build()
    m:train(case.train)
    if preps[case.name] then preps[case.name](m) end
    -- state_dict keys, order and shapes are torch's
    local _, order = m:state_dict()
    local sd = m:state_dict()
    local got, want = {}, {}
    for _, k in ipairs(order) do got[#got + 1] = k .. shape_str(sd[k].shape) end
    for _, e in ipairs(case.keys) do want[#want + 1] = e[1] .. shape_str(e[2]) end
    T.eq(table.concat(got, " "), table.concat(want, " "), "state_dict keys")
    -- torch's weights load strictly
    local files = vtl.load(dir .. "/" .. case.name .. ".safetensors")
    local missing, unexpected = m:load_state_dict(prefixed(files, "param/"))
    T.eq(#missing + #unexpected, 0, "missing/unexpected keys")
    local inputs = {}
    for _, name in ipairs(case.inputs) do
      local x = files["input/" .. name]
      for _, g in ipairs(case.grads) do if g == name then x:requires_grad_() end end
      inputs[name] = x
    end
    local call = calls[case.name] or function(mm, i)
      local args = {}
      for k, name in ipairs(case.inputs) do args[k] = i[name] end
      return mm(table.unpack(args))
    end
    local outs = table.pack(call(m, inputs))
    check_outputs(outs, files, case.nout, case.tol, case.name)
    backprop(outs, files)
    for _, name in ipairs(case.grads) do
      T.truthy(inputs[name].grad, case.name .. ": no gradient for input " .. name)
      T.close(inputs[name].grad, files["grad/" .. name], case.tol, case.name .. ": grad of " .. name)
    end
    local params = {}
    for name, p in m:named_parameters() do params[name] = p end
    for _, key in ipairs(case.pgrads) do
      T.truthy(params[key] and params[key].grad, case.name .. ": no gradient for parameter " .. key)
      T.close(params[key].grad, files["pgrad/" .. key], case.tol, case.name .. ": grad of " .. key)
    end
    local after = m:state_dict()
    for _, key in ipairs(case.after) do
      T.close(after[key], files["after/" .. key], case.tol, case.name .. ": " .. key .. " after the forward")
    end
  end)
end

local function run_functional(case, FF, label)
  local files = vtl.load(dir .. "/f_" .. case.name .. ".safetensors")
  local env = setmetatable({vtl = vtl, F = FF, nn = nn}, {__index = _G})
  local inputs = {}
  for _, name in ipairs(case.inputs) do
    local x = files["input/" .. name]
    for _, g in ipairs(case.grads) do if g == name then x:requires_grad_() end end
    env[name], inputs[name] = x, x
  end
  local chunk = assert(load(case.expr, "=" .. label, "t", env))
  local outs = table.pack(chunk())
  check_outputs(outs, files, case.nout, case.tol, label)
  backprop(outs, files)
  for _, name in ipairs(case.grads) do
    T.truthy(inputs[name].grad, label .. ": no gradient for input " .. name)
    T.close(inputs[name].grad, files["grad/" .. name], case.tol, label .. ": grad of " .. name)
  end
end

-- F with the Lua forms in place of the C ops, so that both are checked when the C ops exist
local fallback = require "vtl.nn.fallback"
local F_lua = setmetatable({}, {__index = function(_, k) return fallback[k] or F[k] end})
local core_nn = require("vtl.core").nn or {}

for _, case in ipairs(ref.functional) do
  T.test("functional: " .. case.name, function() run_functional(case, F, case.name) end)
  local lua_form = false
  for fn in case.expr:gmatch("F%.([%w_]+)") do
    if fallback[fn] and core_nn[fn] then lua_form = true end
  end
  if lua_form then
    T.test("functional (Lua form): " .. case.name, function() run_functional(case, F_lua, case.name .. " (Lua form)") end)
  end
end

-- ---- module mechanics ----

local function small_net()
  local Block = nn.Module:extend("Block")
  function Block:init(cin, cout)
    self.conv = nn.Conv2d(cin, cout, 3, {padding = 1, bias = false})
    self.bn = nn.BatchNorm2d(cout)
  end
  function Block:forward(x) return self.bn(self.conv(x)):relu() end
  local Net = nn.Module:extend("Net")
  function Net:init()
    self.features = nn.Sequential(nn.Conv2d(3, 32, 3, {padding = 1}), nn.ReLU(), Block(32, 64), Block(64, 64))
    self.pool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(64, 10)
  end
  function Net:forward(x) return self.fc(self.pool(self.features(x)):flatten(2)) end
  return Net()
end

T.test("tostring prints the module tree like PyTorch", function()
  local Net = nn.Module:extend("Net")
  function Net:init()
    self.fc = nn.Linear(4, 2)
  end
  T.eq(tostring(Net()), "Net(\n  (fc): Linear(in_features=4, out_features=2, bias=true)\n)")
  T.eq(tostring(nn.Linear(3, 1, {bias = false})), "Linear(in_features=3, out_features=1, bias=false)")
  T.eq(tostring(nn.ReLU()), "ReLU()")
  local seq = nn.Sequential(nn.Conv2d(3, 8, 3, {stride = 2, padding = 1, bias = false}), nn.BatchNorm2d(8),
    nn.Sequential(nn.Dropout(0.1), nn.Flatten()))
  T.eq(tostring(seq), table.concat({
    "Sequential(",
    "  (0): Conv2d(3, 8, kernel_size={3, 3}, stride={2, 2}, padding={1, 1}, bias=false)",
    "  (1): BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=true, track_running_stats=true)",
    "  (2): Sequential(",
    "    (0): Dropout(p=0.1, inplace=false)",
    "    (1): Flatten(start_dim=2, end_dim=-1)",
    "  )",
    ")"}, "\n"))
  T.eq(tostring(nn.LayerNorm(64)), "LayerNorm({64}, eps=1e-05, elementwise_affine=true)")
  T.eq(tostring(nn.GroupNorm(8, 32)), "GroupNorm(8, 32, eps=1e-05, affine=true)")
  T.eq(tostring(nn.GELU()), "GELU(approximate='none')")
  T.eq(tostring(nn.MaxPool2d(3, {stride = 2, padding = 1})), "MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=false)")
  T.eq(tostring(nn.AdaptiveAvgPool2d({7, 7})), "AdaptiveAvgPool2d(output_size={7, 7})")
  T.eq(tostring(nn.Embedding(10, 3, {padding_idx = 1})), "Embedding(10, 3, padding_idx=1)")
  T.eq(tostring(nn.DropPath(0.1)), "DropPath(drop_prob=0.100)")
end)

T.test("children, parameters and buffers are registered by assignment, in order", function()
  local m = small_net()
  local names = {}
  for name, p in m:named_parameters() do names[#names + 1] = name .. shape_str(p.shape) end
  T.eq(table.concat(names, " "), "features.0.weight{32,3,3,3} features.0.bias{32} features.2.conv.weight{64,32,3,3} "
    .. "features.2.bn.weight{64} features.2.bn.bias{64} features.3.conv.weight{64,64,3,3} features.3.bn.weight{64} "
    .. "features.3.bn.bias{64} fc.weight{10,64} fc.bias{10}")
  local list = m:named_parameters()
  T.eq(#list, 10)
  T.eq(list[1][1], "features.0.weight")
  T.eq(#m:parameters(), 10)
  T.eq(#m:buffers(), 6)
  local bnames = {}
  for name in m:named_buffers() do bnames[#bnames + 1] = name end
  T.eq(bnames[1], "features.2.bn.running_mean")
  T.eq(bnames[3], "features.2.bn.num_batches_tracked")
  local mods = {}
  for name, mod in m:named_modules() do mods[#mods + 1] = name .. ":" .. mod.__name end
  T.eq(table.concat(mods, " "), ":Net features:Sequential features.0:Conv2d features.1:ReLU features.2:Block "
    .. "features.2.conv:Conv2d features.2.bn:BatchNorm2d features.3:Block features.3.conv:Conv2d "
    .. "features.3.bn:BatchNorm2d pool:AdaptiveAvgPool2d fc:Linear")
  T.eq(#m:modules(), 12)
  local kids = {}
  for name in m:named_children() do kids[#kids + 1] = name end
  T.eq(table.concat(kids, ","), "features,pool,fc")
  T.eq(#m:children(), 3)
  T.eq(m:num_parameters(), 32 * 27 + 32 + 64 * 32 * 9 + 128 + 64 * 64 * 9 + 128 + 650)
  -- replacing the head keeps its place; removing drops its keys
  m.fc = nn.Linear(64, 3)
  local _, order = m:state_dict()
  T.eq(order[#order - 1], "fc.weight")
  T.eq(m.fc.weight.shape[1], 3)
  T.eq(m:get_submodule("features.2.bn").num_features, 64)
  T.raises(function() m:get_submodule("features.9.bn") end, "no sub-module '9' in 'features.9.bn'")
  m:set_submodule("features.3.bn", nn.Identity())
  T.eq(m.features[4].bn.__name, "Identity")
  m.pool = nil
  T.eq(#m:children(), 2)
  -- a plain tensor attribute is not a parameter; a Parameter is
  m.extra = vtl.ones(2)
  m.gain = nn.Parameter(vtl.ones(1))
  T.eq(#m:parameters(), 9) -- 10, minus the replaced batch norm's 2, plus gain
  T.truthy(m.gain.requires_grad)
  T.raises(function() m.gain = vtl.zeros(1) end, "wrap it with nn.Parameter")
  m:register_parameter("gain", vtl.zeros(1))
  T.eq(m.gain:item(), 0)
end)

T.test("Sequential, ModuleList and ModuleDict", function()
  local a, b, c = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
  local s = nn.Sequential(a, b, c)
  T.eq(#s, 3)
  T.truthy(s[1] == a and s[3] == c and s[-1] == c and s[4] == nil)
  local y = s(vtl.ones(5, 2))
  T.eq(shape_str(y.shape), "{5,1}")
  local s2 = nn.Sequential{a, b}
  T.eq(#s2, 2)
  local named = nn.Sequential{{"fc", nn.Linear(2, 2)}, {"act", nn.Tanh()}}
  local _, order = named:state_dict()
  T.eq(table.concat(order, ","), "fc.weight,fc.bias")
  s:append(nn.Sigmoid())
  T.eq(#s, 4)
  s[4] = nn.Tanh()
  T.eq(s[4].__name, "Tanh")
  s:insert(1, nn.Identity())
  T.eq(s[1].__name, "Identity")
  local _, o2 = s:state_dict()
  T.eq(table.concat(o2, ","), "1.weight,1.bias,3.weight,3.bias")
  T.eq(s:pop(1).__name, "Identity")
  T.eq(#s, 4)
  local l = nn.ModuleList{nn.Linear(2, 2), nn.Linear(2, 2)}
  l:append(nn.Linear(2, 1))
  local n = 0
  for i, m in ipairs(l) do n = n + 1; T.truthy(m == l[i]) end
  T.eq(n, 3)
  local _, o3 = l:state_dict()
  T.eq(o3[5], "2.weight")
  T.raises(function() l(vtl.ones(1)) end, "ModuleList has no forward")
  local d = nn.ModuleDict{{"b", nn.Linear(1, 1)}, {"a", nn.Linear(1, 2)}}
  T.eq(table.concat(d:keys(), ","), "b,a")
  T.eq(d.a.out_features, 2)
  local d2 = nn.ModuleDict{z = nn.ReLU(), y = nn.ReLU()}
  T.eq(table.concat(d2:keys(), ","), "y,z")
end)

T.test("train/eval propagate to every sub-module", function()
  local m = small_net()
  for _, mod in ipairs(m:modules()) do T.eq(mod.training, true) end
  T.truthy(m:eval() == m)
  for _, mod in ipairs(m:modules()) do T.eq(mod.training, false) end
  m.features:train()
  T.eq(m.training, false)
  T.eq(m.features[3].bn.training, true)
  m:train(false)
  T.eq(m.features[3].bn.training, false)
  -- eval: dropout is the identity; train: it drops
  local d = nn.Dropout(0.5)
  local x = vtl.ones(1000)
  T.truthy(d(x):eq(0):sum():item() > 300)
  d:eval()
  T.eq(d(x):eq(0):sum():item(), 0)
  local count = 0
  m:apply(function() count = count + 1 end)
  T.eq(count, 12)
end)

T.test("freeze, unfreeze and zero_grad", function()
  local m = small_net()
  m.features:freeze()
  for name, p in m:named_parameters() do
    T.eq(p.requires_grad, name:sub(1, 3) == "fc.", name)
  end
  T.eq(m.features[3].bn.mode, "frozen")
  T.eq(m:num_parameters{trainable_only = true}, 650)
  local y = m(vtl.randn(2, 3, 8, 8))
  y:sum():backward()
  T.truthy(m.fc.weight.grad ~= nil)
  T.truthy(m.features[1].weight.grad == nil)
  m:zero_grad()
  T.truthy(m.fc.weight.grad == nil)
  m:unfreeze()
  for _, p in ipairs(m:parameters()) do T.truthy(p.requires_grad) end
  T.eq(m.features[3].bn.mode, "normal")
  -- train_bn keeps batch norm trainable
  m.features:freeze{train_bn = true}
  T.truthy(m.features[3].bn.weight.requires_grad)
  T.truthy(not m.features[3].conv.weight.requires_grad)
  T.eq(m.features[3].bn.mode, "normal")
  m:unfreeze()
  T.truthy(m:requires_grad_(false) == m)
  T.truthy(not m.fc.bias.requires_grad)
end)

T.test("batch norm modes: normal, frozen_stats, frozen", function()
  vtl.seed(3)
  local x = vtl.randn(8, 4, 5, 5) * 2 + 1
  local bn = nn.BatchNorm2d(4)
  vtl.no_grad(function()
    bn.running_mean:copy_(vtl.randn(4))
    bn.running_var:copy_(vtl.rand(4) + 0.5)
    bn.weight:copy_(vtl.randn(4))
  end)
  local rm0, rv0 = bn.running_mean:clone(), bn.running_var:clone()
  local eval_out = bn:eval()(x)
  bn:train()
  -- normal training: batch statistics, running stats move
  local y = bn(x)
  T.close(y:mean({1, 3, 4}), bn.bias, 1e-4)
  T.truthy((bn.running_mean - rm0):abs():max():item() > 1e-3)
  T.eq(bn.num_batches_tracked:item(), 1)
  vtl.no_grad(function() bn.running_mean:copy_(rm0); bn.running_var:copy_(rv0) end)
  -- frozen statistics: the eval computation, stats untouched, affine still trains
  bn:freeze_stats()
  local yf = bn(x)
  T.close(yf, eval_out, 1e-5)
  T.close(bn.running_mean, rm0, 0)
  T.eq(bn.num_batches_tracked:item(), 1)
  yf:sum():backward()
  T.truthy(bn.weight.grad ~= nil)
  -- fully frozen: no gradients either
  bn.weight.grad = nil
  bn:set_mode("frozen")
  T.truthy(not bn.weight.requires_grad)
  local xr = x:clone():requires_grad_()
  local yz = bn(xr)
  T.close(yz, eval_out, 1e-5)
  yz:sum():backward()
  T.truthy(bn.weight.grad == nil)
  T.truthy(xr.grad ~= nil)
  T.close(bn.running_var, rv0, 0)
  bn:set_mode("normal")
  T.truthy(bn.weight.requires_grad)
  T.raises(function() bn:set_mode("sleepy") end, "mode must be")
end)

T.test("state_dict round trip through vtl.save / vtl.load", function()
  local m = small_net()
  local sd = m:state_dict()
  local keys = {}
  for k in pairs(sd) do keys[#keys + 1] = k end
  T.eq(keys[1], "features.0.weight")
  T.eq(keys[#keys], "fc.bias")
  T.eq(#keys, 10 + 6)
  sd.extra = vtl.ones(1)
  local n = 0
  for k in pairs(sd) do n = n + 1; T.truthy(k ~= "extra" or n == 17) end
  T.eq(n, 17)
  sd.extra = nil
  local path = os.tmpname() .. ".safetensors"
  vtl.save(path, sd)
  local m2 = small_net()
  local loaded = vtl.load(path)
  os.remove(path)
  m2:load_state_dict(loaded)
  local x = vtl.randn(2, 3, 6, 6)
  m:eval(); m2:eval()
  T.close(m2(x), m(x), 0)
  -- non-persistent buffers stay out
  local B = nn.Module:extend("B")
  function B:init() self:register_buffer("a", vtl.ones(1)); self:register_buffer("b", vtl.ones(1), {persistent = false}) end
  local _, order = B():state_dict()
  T.eq(table.concat(order, ","), "a")
  T.eq(#B():buffers(), 2)
end)

T.test("load_state_dict: missing, unexpected and mismatched keys", function()
  local m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
  local sd = m:state_dict()
  local good = {}
  for k, v in pairs(sd) do good[k] = v:clone() end
  local bad = {}
  for k, v in pairs(good) do bad[k] = v end
  bad["2.bias"] = nil
  bad["3.weight"] = vtl.zeros(1)
  local err = T.raises(function() m:load_state_dict(bad) end, "missing key(s): 2.bias")
  T.truthy(err:find("unexpected key(s): 3.weight", 1, true), err)
  local missing, unexpected = m:load_state_dict(bad, {strict = false})
  T.eq(table.concat(missing, ","), "2.bias")
  T.eq(table.concat(unexpected, ","), "3.weight")
  local wrong = {}
  for k, v in pairs(good) do wrong[k] = v end
  wrong["0.weight"] = vtl.zeros(3, 5)
  vtl.no_grad(function() m[1].weight:fill_(7) end)
  T.raises(function() m:load_state_dict(wrong, {strict = false}) end,
    "size mismatch for 0.weight: the checkpoint has shape {3,5}, the model {3,4}")
  T.eq(m[1].weight[1][1]:item(), 7) -- nothing copied on error
  m:load_state_dict(good)
  T.close(m[1].weight, good["0.weight"], 0)
  -- checkpoints without num_batches_tracked load
  local bn = nn.BatchNorm2d(2)
  bn:load_state_dict({weight = vtl.ones(2), bias = vtl.zeros(2), running_mean = vtl.zeros(2), running_var = vtl.ones(2)})
end)

T.test("errors in a layer name its module path", function()
  local m = small_net()
  T.raises(function() m(vtl.randn(1, 4, 8, 8)) end, "features.0: expected input with 3 channels, got 4")
  -- a deeper one: features.3.conv expects 64 channels
  m.features[3] = nn.Sequential(nn.Conv2d(32, 32, 1), nn.ReLU())
  local err = T.raises(function() m(vtl.randn(1, 3, 8, 8)) end, "features.3.conv: expected input with 64 channels, got 32")
  T.truthy(not err:find("features.3.conv: features", 1, true), err)
  -- a top-level module is named by its class
  T.raises(function() nn.Linear(4, 2)(vtl.ones(3)) end, "Linear: expected input with 4 features")
  -- errors from user code in forward get the path too
  local Bad = nn.Module:extend("Bad")
  function Bad:forward(x) return x + nil end
  local s = nn.Sequential(nn.Identity(), Bad())
  T.raises(function() s(vtl.ones(1)) end, "1: ")
  T.raises(function() nn.Module()(1) end, "forward is not implemented")
  -- and errors from ops inside a layer
  local Lin = nn.Module:extend("Lin")
  function Lin:init() self.w = nn.Parameter(vtl.ones(3, 5)) end
  function Lin:forward(x) return x:matmul(self.w) end
  local holder = nn.Sequential{{"head", Lin()}}
  local merr = T.raises(function() holder(vtl.ones(2, 4)) end, "matmul: shapes {2,4} and {3,5}")
  T.eq(merr:sub(1, 6), "head: ")
  -- a module taken out of its parent is a top-level module again
  local head = holder.head
  holder.head = nil
  T.eq(head:where(), "Lin")
end)

T.test("to(dtype) converts parameters and float buffers", function()
  local m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)):to("f64")
  for _, p in ipairs(m:parameters()) do T.eq(p.dtype, "f64"); T.truthy(p.requires_grad) end
  T.eq(m[2].running_mean.dtype, "f64")
  T.eq(m[2].num_batches_tracked.dtype, "i64")
  T.truthy(nn.is_parameter(m[1].weight))
  local y = m(vtl.randn(3, 2, {dtype = "f64"}))
  T.eq(y.dtype, "f64")
  T.eq(m:float()[1].weight.dtype, "f32")
end)

-- ---- init ----

local function stats(t)
  local f = t:double()
  return f:mean():item(), f:std():item(), f:min():item(), f:max():item()
end

T.test("init: kaiming and xavier statistics", function()
  local g = vtl.Generator(5)
  local w = vtl.empty(256, 128, 3, 3)
  local fan_in, fan_out = 128 * 9, 256 * 9
  nn.init.kaiming_uniform_(w, {nonlinearity = "relu", generator = g})
  local bound = math.sqrt(6 / fan_in)
  local mean, std, lo, hi = stats(w)
  T.truthy(lo >= -bound and hi <= bound and hi > 0.99 * bound, "kaiming_uniform bound")
  T.close(std, bound / math.sqrt(3), 0.01)
  T.truthy(math.abs(mean) < 1e-3)
  nn.init.kaiming_normal_(w, 0, "fan_out", "relu", {generator = g})
  _, std = stats(w)
  T.close(std, math.sqrt(2 / fan_out), 0.01)
  nn.init.xavier_uniform_(w, {gain = 2, generator = g})
  local xb = 2 * math.sqrt(6 / (fan_in + fan_out))
  _, std, lo, hi = stats(w)
  T.truthy(lo >= -xb and hi <= xb and hi > 0.99 * xb, "xavier_uniform bound")
  nn.init.xavier_normal_(w, {generator = g})
  _, std = stats(w)
  T.close(std, math.sqrt(2 / (fan_in + fan_out)), 0.01)
  T.close(nn.init.calculate_gain("leaky_relu", math.sqrt(5)), math.sqrt(1 / 3), 1e-12)
  T.close(nn.init.calculate_gain("tanh"), 5 / 3, 1e-12)
end)

T.test("init: trunc_normal, normal, uniform, constants, generators", function()
  local w = vtl.empty(200000)
  nn.init.trunc_normal_(w, {std = 0.02, a = -0.04, b = 0.04, generator = vtl.Generator(1)})
  local mean, std, lo, hi = stats(w)
  T.truthy(lo >= -0.04 and hi <= 0.04)
  T.truthy(math.abs(mean) < 2e-4)
  T.close(std, 0.02 * 0.879596, 0.01) -- std of N(0,1) truncated to [-2, 2]
  nn.init.trunc_normal_(w, 1, 0.5, 0, 3)
  mean, std, lo, hi = stats(w)
  T.truthy(lo >= 0 and hi <= 3 and lo < 0.01 and hi > 2.8)
  -- mean of N(1, 0.25) truncated to [0, 3]: 1 + 0.5 (phi(-2) - phi(4)) / (Phi(4) - Phi(-2))
  T.close(mean, 1 + 0.5 * (0.05399097 - 0.00013383) / (0.99996833 - 0.02275013), 0.005)
  nn.init.normal_(w, 3, 2)
  mean, std = stats(w)
  T.close(mean, 3, 0.01); T.close(std, 2, 0.01)
  nn.init.uniform_(w, {a = -1, b = 3})
  mean, _, lo, hi = stats(w)
  T.truthy(lo >= -1 and hi <= 3)
  T.close(mean, 1, 0.01)
  nn.init.constant_(w, 0.25); T.eq(w:min():item(), 0.25)
  nn.init.zeros_(w); T.eq(w:abs():max():item(), 0)
  nn.init.ones_(w); T.eq(w:min():item(), 1)
  local a, b = vtl.empty(10), vtl.empty(10)
  nn.init.normal_(a, {generator = vtl.Generator(9)})
  nn.init.normal_(b, {generator = vtl.Generator(9)})
  T.close(a, b, 0)
  -- init on a parameter works (it runs without recording)
  local lin = nn.Linear(3, 3)
  nn.init.zeros_(lin.weight)
  T.eq(lin.weight:abs():max():item(), 0)
  T.truthy(lin.weight.requires_grad)
end)

T.test("layer default init follows PyTorch", function()
  vtl.seed(11)
  local lin = nn.Linear(400, 300)
  local bound = 1 / math.sqrt(400)
  local _, std, lo, hi = stats(lin.weight)
  T.truthy(lo >= -bound and hi <= bound and hi > 0.99 * bound)
  T.close(std, bound / math.sqrt(3), 0.02)
  _, _, lo, hi = stats(lin.bias)
  T.truthy(lo >= -bound and hi <= bound)
  local conv = nn.Conv2d(16, 32, 3, {groups = 4})
  local cb = 1 / math.sqrt(4 * 9)
  _, _, lo, hi = stats(conv.weight)
  T.truthy(lo >= -cb and hi <= cb and hi > 0.95 * cb)
  local bn = nn.BatchNorm2d(3)
  T.eq(bn.weight:min():item(), 1); T.eq(bn.bias:max():item(), 0)
  T.eq(bn.running_var:min():item(), 1)
  local emb = nn.Embedding(1000, 16, {padding_idx = 2})
  T.eq(emb.weight[2]:abs():max():item(), 0)
  _, std = stats(emb.weight)
  T.close(std, 1, 0.02)
  local mha = nn.MultiheadAttention(16, 4)
  T.eq(mha.in_proj_bias:abs():max():item(), 0)
  T.eq(mha.out_proj.bias:abs():max():item(), 0)
end)

-- ---- utils ----

T.test("clip_grad_norm and clip_grad_value", function()
  local a = vtl.tensor({3, 0}, {dtype = "f32"}):requires_grad_()
  local b = vtl.tensor({4}, {dtype = "f32"}):requires_grad_()
  local c = vtl.ones(2):requires_grad_() -- no grad: skipped
  a.grad = vtl.tensor({3, 0}, {dtype = "f32"})
  b.grad = vtl.tensor({4}, {dtype = "f32"})
  local total = nn.utils.clip_grad_norm({a, b, c}, 1)
  T.close(total, 5, 1e-6)
  T.close(a.grad, {3 / 5, 0}, 1e-5)
  T.close(b.grad, {4 / 5}, 1e-5)
  -- under the limit: unchanged
  total = nn.utils.clip_grad_norm({a, b}, 10)
  T.close(total, 1, 1e-5)
  T.close(b.grad, {0.8}, 1e-5)
  a.grad = vtl.tensor({-3, 1}, {dtype = "f32"})
  T.close(nn.utils.clip_grad_norm({a, b}, 100, {norm_type = "inf"}), 3, 1e-6)
  T.close(nn.utils.clip_grad_norm(a, 100, {norm_type = 1}), 4, 1e-6)
  nn.utils.clip_grad_value({a, b}, 0.5)
  T.close(a.grad, {-0.5, 0.5}, 0)
  T.close(b.grad, {0.5}, 0)
  T.raises(function() nn.utils.clip_grad_norm({a, 3}, 1) end, "clip_grad_norm: element 2 is a number")
  a.grad = vtl.tensor({0 / 0, 1})
  T.raises(function() nn.utils.clip_grad_norm(a, 1, {error_if_nonfinite = true}) end, "non-finite")
end)

-- ---- functional extras ----

T.test("dropout and drop_path statistics", function()
  local g = vtl.Generator(2)
  local x = vtl.ones(20000)
  local y = F.dropout(x, {p = 0.3, generator = g})
  local kept = y:ne(0):sum():item() / 20000
  T.close(kept, 0.7, 0.02)
  T.close(y:max():item(), 1 / 0.7, 1e-5)
  T.close(F.dropout(x, {p = 0.3, training = false}), x, 0)
  local xs = vtl.ones(4000, 3, 2)
  local z = F.drop_path(xs, 0.25, true, {generator = g})
  -- whole samples: each one all zero or all 1/(1-p)
  local per = z:sum({2, 3})
  local zero, full = per:eq(0):sum():item(), per:sub(6 / 0.75):abs():lt(1e-4):sum():item()
  T.eq(zero + full, 4000)
  T.close(zero / 4000, 0.25, 0.1)
  T.close(F.drop_path(xs, 0.25, false), xs, 0)
  local dp = nn.DropPath(0.5):eval()
  T.close(dp(xs), xs, 0)
end)

T.test("MultiheadAttention: unbatched input, need_weights = false, shape errors", function()
  local mha = nn.MultiheadAttention(8, 2):eval()
  local x = vtl.randn(5, 8)
  local out, w = mha(x, x, x)
  T.eq(shape_str(out.shape), "{5,8}")
  T.eq(shape_str(w.shape), "{5,5}")
  local xb = x:unsqueeze(2) -- (L, N=1, E)
  local out2 = mha(xb, xb, xb, {need_weights = false})
  T.close(out2:squeeze(2), out, 1e-5)
  T.truthy(select(2, mha(xb, xb, xb, {need_weights = false})) == nil)
  T.raises(function() mha(vtl.randn(5, 2, 6)) end, "MultiheadAttention: expected query with embed_dim 8")
  T.close(select(2, mha(x, x, x)):sum(2), vtl.ones(5), 1e-5)
end)

T.test("losses as modules", function()
  local logits, t = vtl.randn(4, 3), vtl.tensor({1, 3, 2, 3})
  T.close(nn.CrossEntropyLoss{label_smoothing = 0.1}(logits, t), F.cross_entropy(logits, t, {label_smoothing = 0.1}), 1e-6)
  local a, b = vtl.randn(3, 2), vtl.randn(3, 2)
  T.close(nn.MSELoss()(a, b), (a - b):square():mean(), 1e-6)
  T.close(nn.L1Loss{reduction = "sum"}(a, b), (a - b):abs():sum(), 1e-6)
  T.raises(function() F.cross_entropy(logits, vtl.tensor({1, 4, 2, 3})) end, "target 4 out of range for 3 classes")
  T.raises(function() F.cross_entropy(logits, vtl.tensor({1, 2})) end, "does not match input batch 4")
end)

T.test("functional: one_hot, normalize, pad and interpolate errors", function()
  T.close(F.one_hot(vtl.tensor({2, 1, 3})), {{0, 1, 0}, {1, 0, 0}, {0, 0, 1}}, 0)
  local v = F.normalize(vtl.tensor({{3, 4}, {0, 0}}, {dtype = "f32"}))
  T.close(v, {{0.6, 0.8}, {0, 0}}, 1e-6)
  T.raises(function() F.pad(vtl.ones(2, 2), {1, 1, 1}) end, "pad: expected an even number")
  T.raises(function() F.pad(vtl.ones(2, 2), {2, 2}, {mode = "reflect"}) end, "must be smaller than the dim size")
  T.raises(function() F.interpolate(vtl.ones(1, 1, 2, 2), {size = 3, scale_factor = 2}) end, "exactly one of size and scale_factor")
  T.raises(function() F.interpolate(vtl.ones(1, 1, 2, 2), {size = 3, mode = "cubic"}) end, "mode must be")
  T.raises(function() F.embedding(vtl.tensor({0}), vtl.ones(3, 2)) end, "embedding: index 0 out of range")
end)

T.test("vtl.save(path, model:state_dict()) writes the weights (the key list is not metadata)", function()
  local m = vtl.nn.Linear(3, 2)
  local path = os.tmpname() .. ".safetensors"
  vtl.save(path, m:state_dict())
  local t, meta = vtl.load(path)
  os.remove(path)
  T.close(t.weight, m.weight)
  T.eq(next(meta), nil)
  T.raises(function() vtl.save(path, m:state_dict(), {1, 2}) end, "metadata")
end)

T.test("linear: any leading dims; gradients equal the matmul composition; the weight gradient is (out, in) contiguous", function()
  vtl.seed(7)
  for _, shape in ipairs({{5, 4}, {3, 5, 4}, {2, 3, 5, 4}, {4}, {0, 4}}) do
    for _, bias in ipairs({true, false}) do
      local x = vtl.randn(shape, {dtype = "f64"}):requires_grad_()
      local w = vtl.randn(6, 4, {dtype = "f64"}):requires_grad_()
      local b = bias and vtl.randn(6, {dtype = "f64"}):requires_grad_() or nil
      local x2, w2 = x:detach():clone():requires_grad_(), w:detach():clone():requires_grad_()
      local b2 = b and b:detach():clone():requires_grad_()
      local y = F.linear(x, w, b)
      local r = x2:matmul(w2:t())
      if b2 then r = r + b2 end
      local what = ("shape {%s}%s"):format(table.concat(shape, ","), bias and " with bias" or "")
      T.eq(table.concat(y.shape, ","), table.concat(r.shape, ","), what)
      local g = vtl.randn(y.shape, {dtype = "f64"})
      y:backward(g)
      r:backward(g)
      T.close(y, r, 1e-12, what .. ": output")
      T.close(x.grad, x2.grad, 1e-12, what .. ": input gradient")
      T.close(w.grad, w2.grad, 1e-12, what .. ": weight gradient")
      T.truthy(w.grad:is_contiguous(), what .. ": weight gradient contiguous")
      if b then T.close(b.grad, b2.grad, 1e-12, what .. ": bias gradient") end
    end
  end
  -- only the weight needs a gradient (a frozen input), and only the input (a frozen layer)
  local x, w = vtl.randn(2, 3, 4), vtl.randn(5, 4):requires_grad_()
  F.linear(x, w):sum():backward()
  T.close(w.grad, vtl.ones(2 * 3):view(1, 6):matmul(x:reshape(6, 4)):expand(5, 4), 1e-5)
  local xi = vtl.randn(2, 3, 4):requires_grad_()
  F.linear(xi, vtl.ones(5, 4)):sum():backward()
  T.close(xi.grad, vtl.full({2, 3, 4}, 5), 1e-6)
end)

-- ---- nn.norm_act: a batch norm, a residual sum and relu/relu6 in one pass ----

T.test("nn.norm_act fuses a BatchNorm with ReLU/ReLU6 and a sum, and falls back to the modules", function()
  vtl.seed(5)
  local x, a = vtl.randn(4, 6, 3, 3), vtl.randn(4, 6, 3, 3)
  local function node(t) return t.grad_fn and t.grad_fn.name end
  local function xg() return x:clone():requires_grad_() end
  -- the fused form, by module and by name; the same values as the modules one after the other
  for _, act in ipairs({nn.ReLU(), nn.ReLU6(), "relu", "relu6"}) do
    local bn = nn.BatchNorm2d(6)
    local y = nn.norm_act(bn, act, xg(), a)
    T.eq(node(y), "BatchNormActBackward", "fused node")
    local bn2 = nn.BatchNorm2d(6)
    local f = type(act) == "string" and F[act] or act
    T.close(y, f(bn2(x) + a), 1e-6, "values")
    T.close(bn.running_mean, bn2.running_mean, 1e-7, "running mean")
    T.eq(bn.num_batches_tracked:item(), 1, "batches counted")
  end
  T.eq(node(nn.norm_act(nn.BatchNorm2d(6), nil, xg(), a)), "BatchNormActBackward", "sum alone")
  T.eq(node(nn.norm_act(nn.BatchNorm2d(6), nn.ReLU(), xg())), "BatchNormActBackward", "activation alone")
  -- in eval mode and with frozen statistics the module's rules hold
  local bn = nn.BatchNorm2d(6)
  bn.running_mean:fill_(0.5)
  bn:eval()
  T.close(nn.norm_act(bn, "relu", x), F.relu(bn(x)), 1e-6, "eval mode")
  bn:train():freeze_stats()
  T.close(nn.norm_act(bn, "relu", x, a), F.relu(bn(x) + a), 1e-6, "frozen statistics")
  T.close(bn.running_mean, vtl.full({6}, 0.5), 0, "frozen statistics kept")
  -- the modules one after the other: other activations, other norms, hooks, a sum of another
  -- dtype or shape, the profiler
  local function composed(y, what) T.truthy(node(y) ~= "BatchNormActBackward", what .. ": composed, got " .. tostring(node(y))) end
  composed(nn.norm_act(nn.BatchNorm2d(6), nn.SiLU(), xg()), "SiLU")
  composed(nn.norm_act(nn.BatchNorm2d(6), "gelu", xg()), "gelu by name")
  composed(nn.norm_act(nn.GroupNorm(2, 6), nn.ReLU(), xg()), "GroupNorm")
  local hooked_bn, seen = nn.BatchNorm2d(6), nil
  hooked_bn:register_forward_hook(function(_, _, out) seen = out end)
  composed(nn.norm_act(hooked_bn, nn.ReLU(), xg()), "hook on the norm")
  T.truthy(seen and seen:lt(0):sum():item() > 0, "the hook saw the normalised values before the relu")
  local relu = nn.ReLU()
  local calls = 0
  relu:register_forward_hook(function() calls = calls + 1 end)
  composed(nn.norm_act(nn.BatchNorm2d(6), relu, xg()), "hook on the activation")
  T.eq(calls, 1, "the activation's hook ran")
  composed(nn.norm_act(nn.BatchNorm2d(6), "relu", xg(), a:double()), "f64 sum")
  local y = nn.norm_act(nn.BatchNorm2d(6), "relu", xg(), vtl.randn(1, 6, 3, 3))
  composed(y, "broadcast sum")
  T.eq(table.concat(y.shape, ","), "4,6,3,3", "broadcast sum shape")
  local prof_node
  vtl.profiler.profile(function() prof_node = node(nn.norm_act(nn.BatchNorm2d(6), nn.ReLU(), xg())) end)
  T.truthy(prof_node ~= "BatchNormActBackward", "profiler on: composed")
end)

T.test("VTL_NORM_ACT=0 runs nn.norm_act's modules one by one", function()
  local code = 'local vtl = require "vtl"; local x = vtl.randn(2, 3, 4, 4):requires_grad_(); ' ..
               'io.write(vtl.nn.norm_act(vtl.nn.BatchNorm2d(3), "relu", x).grad_fn.name)'
  local function run(env) return T.run_fresh(env, code) end
  T.eq(run("VTL_NORM_ACT=0"), "ReluBackward", "switched off")
  T.eq(run("VTL_NORM_ACT=1"), "BatchNormActBackward", "on")
end)

T.test("nn.norm_act names what is wrong with its arguments", function()
  local bn, x = nn.BatchNorm1d(3), vtl.randn(2, 3)
  T.raises(function() nn.norm_act(nil, "relu", x) end, "norm_act: norm must be a module, got nil")
  T.raises(function() nn.norm_act(bn, 5, x) end, "norm_act: act must be a module, an activation's name or nil, got number")
  T.raises(function() nn.norm_act(bn, "bogus", x) end, "norm_act: unknown activation 'bogus'")
  T.raises(function() nn.norm_act(bn, "relu", 7) end, "norm_act: x must be a tensor, got number")
  T.raises(function() nn.norm_act(bn, "relu", x, 3) end, "norm_act: add must be a tensor or nil, got number")
  -- a module's own check still speaks: a sum that cannot broadcast
  T.raises(function() nn.norm_act(bn, "relu", x, vtl.randn(4, 5)) end, "add: shapes {2,3} and {4,5} cannot be broadcast")
  T.raises(function() nn.norm_act(bn, nn.ReLU(), vtl.randn(2, 4)) end, "expected input with 3 channels, got 4")
end)
