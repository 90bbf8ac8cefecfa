-- MobileNetV2 (Sandler et al.) and MobileNetV3-Small/Large (Howard et al.), torchvision's
-- architectures and module names (features.N..., classifier.N), so torchvision state dicts
-- load as they are. Also the blocks EfficientNet shares with them: Conv2dNormActivation,
-- SqueezeExcitation and make_divisible.
local nn = require "vtl.nn"
local registry = require "vtl.models.registry"
local F = nn.functional
local init = nn.init

local M = {}

local function zoo() return require "vtl.models" end

local function shape_str(t) return "{" .. table.concat(t.shape, ",") .. "}" end

---Rounds v to a multiple of divisor (at least min_value), never more than 10% below v.
---@param v number
---@param divisor integer
---@param min_value integer|nil
---@return integer
function M.make_divisible(v, divisor, min_value)
  min_value = min_value or divisor
  local new = math.max(min_value, math.floor(v + divisor / 2) // divisor * divisor)
  if new < 0.9 * v then new = new + divisor end
  return math.tointeger(new) or math.floor(new)
end
local make_divisible = M.make_divisible

-- ---- shared blocks ----

---Conv2dNormActivation(cin, cout, k, {stride, groups, dilation, norm = function(c) -> module | false,
---activation = module class | false}): a Sequential conv (no bias when normalised), norm, activation;
---padding (k - 1) // 2 * dilation. Children "0", "1", "2" as in torchvision.
-- (Module.extend: Sequential's own `extend` appends modules, as Python's list.extend)
local Conv2dNormActivation = nn.Module.extend(nn.Sequential, "Conv2dNormActivation")
M.Conv2dNormActivation = Conv2dNormActivation

function Conv2dNormActivation:init(cin, cout, k, opts)
  opts = opts or {}
  local dilation = opts.dilation or 1
  local norm = opts.norm
  if norm == nil then norm = function(c) return nn.BatchNorm2d(c) end end
  local act = opts.activation
  if act == nil then act = nn.ReLU end
  local layers = {nn.Conv2d(cin, cout, k, {stride = opts.stride or 1, padding = (k - 1) // 2 * dilation,
    dilation = dilation, groups = opts.groups or 1, bias = not norm})}
  if norm then layers[#layers + 1] = norm(cout) end
  if act then layers[#layers + 1] = act() end
  nn.Sequential.init(self, layers)
  self.out_channels = cout
end

-- conv, norm and activation: the norm and a relu/relu6 in one pass (nn.norm_act)
function Conv2dNormActivation:forward(x)
  local names = self._module_names
  if #names ~= 3 then return nn.Sequential.forward(self, x) end
  local m = self._modules
  return nn.norm_act(m[names[2]], m[names[3]], m[names[1]](x))
end

---SqueezeExcitation(channels, squeeze, {activation = nn.ReLU, scale_activation = nn.Sigmoid}):
---x * scale_activation(fc2(activation(fc1(avgpool(x))))), fc1/fc2 1x1 convolutions.
local SqueezeExcitation = nn.Module:extend("SqueezeExcitation")
M.SqueezeExcitation = SqueezeExcitation

function SqueezeExcitation:init(channels, squeeze, opts)
  opts = opts or {}
  self.avgpool = nn.AdaptiveAvgPool2d(1)
  self.fc1 = nn.Conv2d(channels, squeeze, 1)
  self.fc2 = nn.Conv2d(squeeze, channels, 1)
  self.activation = (opts.activation or nn.ReLU)()
  self.scale_activation = (opts.scale_activation or nn.Sigmoid)()
end

-- vtl.models.fuse_for_inference: both activations run inside the 1x1 convolutions
function SqueezeExcitation:_fuse_inference(fuse)
  fuse.move_act(self, "fc1", "activation")
  fuse.move_act(self, "fc2", "scale_activation")
end

---vtl.models.fuse_for_inference hook of a block whose Sequential `seq` ends in a convolution:
---with a residual connection, the sum moves into that convolution (see M.forward_residual).
function M.fuse_residual(block, fuse, seq)
  if block.use_res_connect and fuse.tail_conv(block[seq]) then rawset(block, "_fused_res", true) end
end

---seq(x) + x, the sum done by seq's last convolution when M.fuse_residual set it up; nil when
---it did not.
function M.forward_residual(block, seq, x)
  if rawget(block, "_fused_res") then return require("vtl.models").fuse.forward_add(block[seq], x, x) end
end

-- m(x) + add with the sum inside m's last batch norm (nn.norm_act) when m is one or a chain of
-- Sequentials ending with one; otherwise (or with forward hooks on a container, or the profiler
-- on, which time each module's call) the sum after m
local function sum_in_tail(m, x, add)
  local norm = require "vtl.nn.norm"
  local hooks = rawget(m, "_forward_hooks")
  if getmetatable(m) and m.forward == norm._BatchNorm.forward then return nn.norm_act(m, nil, x, add) end
  local names = rawget(m, "_module_names")
  local chain = m.forward == nn.Sequential.forward or m.forward == Conv2dNormActivation.forward
  if not chain or not names or #names == 0 or (hooks and hooks[1]) or nn.Module._profiling() then
    return m(x) + add
  end
  for i = 1, #names - 1 do x = m._modules[names[i]](x) end
  return sum_in_tail(m._modules[names[#names]], x, add)
end

---seq(x) + x, the residual connection of an inverted-residual block: the sum is done by the
---last convolution when M.fuse_residual set it up, else inside the block's last batch norm.
function M.residual(block, seq, x)
  local fused = M.forward_residual(block, seq, x)
  if fused then return fused end
  return sum_in_tail(block[seq], x, x)
end

function SqueezeExcitation:forward(x)
  local s = self.avgpool(x)
  s = self.scale_activation(self.fc2(self.activation(self.fc1(s))))
  return s * x
end

-- torchvision's initialisation of the mobile networks: He-normal (fan_out) convolutions with zero
-- bias, unit batch norms, and Linear layers by `linear(m)`
function M.init_weights(model, linear)
  for _, m in ipairs(model:modules()) do
    if m.__name == "Conv2d" then
      init.kaiming_normal_(m.weight, {mode = "fan_out"})
      if m.bias then init.zeros_(m.bias) end
    elseif m.__name == "Linear" then
      linear(m)
    end
  end
end

-- layer groups of a features Sequential: "stem" (features.0), one "stageK" per run of blocks
-- with the same output channels, "final_conv" (the last features entry), then "head"
function M.feature_groups(model, classifier)
  local g = zoo().group
  local feats = model.features
  local n = #feats
  local groups = {g(model, "stem", {feats[1]})}
  local cur, cur_c = nil, nil
  for i = 2, n - 1 do
    local b = feats[i]
    local c = b.out_channels
    if c ~= cur_c then
      cur = {}
      groups[#groups + 1] = {name = "stage" .. (#groups), modules = cur}
      cur_c = c
    end
    cur[#cur + 1] = b
  end
  for i = 2, #groups do groups[i] = g(model, groups[i].name, groups[i].modules) end
  groups[#groups + 1] = g(model, "final_conv", {feats[n]})
  groups[#groups + 1] = g(model, "head", {classifier})
  return groups
end

-- ---- MobileNetV2 ----

local InvertedResidual = nn.Module:extend("InvertedResidual")
M.InvertedResidualV2 = InvertedResidual

function InvertedResidual:init(inp, oup, stride, expand_ratio)
  local hidden = math.floor(inp * expand_ratio + 0.5)
  self.use_res_connect = stride == 1 and inp == oup
  local layers = {}
  if expand_ratio ~= 1 then
    layers[#layers + 1] = Conv2dNormActivation(inp, hidden, 1, {activation = nn.ReLU6})
  end
  layers[#layers + 1] = Conv2dNormActivation(hidden, hidden, 3, {stride = stride, groups = hidden, activation = nn.ReLU6})
  layers[#layers + 1] = nn.Conv2d(hidden, oup, 1, {bias = false})
  layers[#layers + 1] = nn.BatchNorm2d(oup)
  self.conv = nn.Sequential(layers)
  self.out_channels = oup
  self.stride = stride
end

function InvertedResidual:_fuse_inference(fuse) M.fuse_residual(self, fuse, "conv") end

function InvertedResidual:forward(x)
  if self.use_res_connect then return M.residual(self, "conv", x) end
  return self.conv(x)
end

---Installs the methods of a model made of `features`, `avgpool` and `classifier` =
---Sequential(Dropout, Linear): forward_features (pre-pool features), forward_head (pooling,
---dropout, classifier; pre_logits: the pooled features after dropout), forward,
---get_classifier (classifier.1) and reset_classifier(n) (a new Linear; 0: an Identity).
---@param Class table
function M.features_head_methods(Class)
  function Class:forward_features(x)
    if x.ndim ~= 4 then self:raise("expected a 4-D (N,C,H,W) input, got shape %s", shape_str(x)) end
    return self.features(x)
  end
  function Class:forward_head(x, pre_logits)
    x = self.avgpool(x):flatten(2)
    if pre_logits then return self.classifier[1](x) end
    return self.classifier(x)
  end
  function Class:forward(x) return self:forward_head(self:forward_features(x)) end
  function Class:get_classifier() return self.classifier[2] end
  function Class:reset_classifier(num_classes)
    self.classifier[2] = registry.classifier(self.num_features, num_classes)
    self.num_classes = num_classes
  end
end


---@class vtl.models.MobileNetV2: vtl.nn.Module
local MobileNetV2 = nn.Module:extend("MobileNetV2")
M.MobileNetV2 = MobileNetV2

---MobileNetV2({num_classes = 1000, in_chans = 3, drop_rate = 0.2, width_mult = 1}).
function MobileNetV2:init(opts)
  opts = opts or {}
  local num_classes = opts.num_classes or 1000
  local width = opts.width_mult or 1
  local setting = {{1, 16, 1, 1}, {6, 24, 2, 2}, {6, 32, 3, 2}, {6, 64, 4, 2}, {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}}
  local input_channel = make_divisible(32 * width, 8)
  local last = make_divisible(1280 * math.max(1, width), 8)
  local layers = {Conv2dNormActivation(opts.in_chans or 3, input_channel, 3, {stride = 2, activation = nn.ReLU6})}
  for _, s in ipairs(setting) do
    local t, c, n, st = s[1], s[2], s[3], s[4]
    local out = make_divisible(c * width, 8)
    for i = 1, n do
      layers[#layers + 1] = InvertedResidual(input_channel, out, i == 1 and st or 1, t)
      input_channel = out
    end
  end
  layers[#layers + 1] = Conv2dNormActivation(input_channel, last, 1, {activation = nn.ReLU6})
  self.features = nn.Sequential(layers)
  self.avgpool = nn.AdaptiveAvgPool2d(1)
  self.num_features, self.num_classes = last, num_classes
  self.classifier = nn.Sequential(nn.Dropout(opts.drop_rate or 0.2),
    num_classes > 0 and nn.Linear(last, num_classes) or nn.Identity())
  M.init_weights(self, function(m) init.normal_(m.weight, 0, 0.01); init.zeros_(m.bias) end)
end

M.features_head_methods(MobileNetV2)

---Layer groups: "stem", "stage1".. (blocks by output channels), "final_conv", "head" (classifier).
function MobileNetV2:layer_groups() return M.feature_groups(self, self.classifier) end

function MobileNetV2:summary(input_shape, opts) return zoo().summary(self, input_shape, opts) end

-- ---- MobileNetV3 ----

local InvertedResidualV3 = nn.Module:extend("InvertedResidual")
M.InvertedResidualV3 = InvertedResidualV3

-- cnf: {input, kernel, expanded, out, use_se, "RE"|"HS", stride, dilation}
function InvertedResidualV3:init(cnf, norm)
  local cin, k, exp, cout, use_se, act_name, stride, dilation = table.unpack(cnf)
  self.use_res_connect = stride == 1 and cin == cout
  local act = act_name == "HS" and nn.Hardswish or nn.ReLU
  local layers = {}
  if exp ~= cin then layers[#layers + 1] = Conv2dNormActivation(cin, exp, 1, {norm = norm, activation = act}) end
  layers[#layers + 1] = Conv2dNormActivation(exp, exp, k, {stride = dilation > 1 and 1 or stride, dilation = dilation,
    groups = exp, norm = norm, activation = act})
  if use_se then
    layers[#layers + 1] = SqueezeExcitation(exp, make_divisible(exp // 4, 8), {scale_activation = nn.Hardsigmoid})
  end
  layers[#layers + 1] = Conv2dNormActivation(exp, cout, 1, {norm = norm, activation = false})
  self.block = nn.Sequential(layers)
  self.out_channels = cout
  self.stride = stride
end

function InvertedResidualV3:_fuse_inference(fuse) M.fuse_residual(self, fuse, "block") end

function InvertedResidualV3:forward(x)
  if self.use_res_connect then return M.residual(self, "block", x) end
  return self.block(x)
end

local V3_SETTINGS = {
  mobilenet_v3_large = {
    blocks = {
      {16, 3, 16, 16, false, "RE", 1, 1}, {16, 3, 64, 24, false, "RE", 2, 1}, {24, 3, 72, 24, false, "RE", 1, 1},
      {24, 5, 72, 40, true, "RE", 2, 1}, {40, 5, 120, 40, true, "RE", 1, 1}, {40, 5, 120, 40, true, "RE", 1, 1},
      {40, 3, 240, 80, false, "HS", 2, 1}, {80, 3, 200, 80, false, "HS", 1, 1}, {80, 3, 184, 80, false, "HS", 1, 1},
      {80, 3, 184, 80, false, "HS", 1, 1}, {80, 3, 480, 112, true, "HS", 1, 1}, {112, 3, 672, 112, true, "HS", 1, 1},
      {112, 5, 672, 160, true, "HS", 2, 1}, {160, 5, 960, 160, true, "HS", 1, 1}, {160, 5, 960, 160, true, "HS", 1, 1},
    },
    last_channel = 1280,
  },
  mobilenet_v3_small = {
    blocks = {
      {16, 3, 16, 16, true, "RE", 2, 1}, {16, 3, 72, 24, false, "RE", 2, 1}, {24, 3, 88, 24, false, "RE", 1, 1},
      {24, 5, 96, 40, true, "HS", 2, 1}, {40, 5, 240, 40, true, "HS", 1, 1}, {40, 5, 240, 40, true, "HS", 1, 1},
      {40, 5, 120, 48, true, "HS", 1, 1}, {48, 5, 144, 48, true, "HS", 1, 1}, {48, 5, 288, 96, true, "HS", 2, 1},
      {96, 5, 576, 96, true, "HS", 1, 1}, {96, 5, 576, 96, true, "HS", 1, 1},
    },
    last_channel = 1024,
  },
}

---@class vtl.models.MobileNetV3: vtl.nn.Module
local MobileNetV3 = nn.Module:extend("MobileNetV3")
M.MobileNetV3 = MobileNetV3

---MobileNetV3(arch, {num_classes = 1000, in_chans = 3, drop_rate = 0.2}); arch
---"mobilenet_v3_large" or "mobilenet_v3_small". Batch norms use eps 1e-3 and momentum 0.01.
function MobileNetV3:init(arch, opts)
  opts = opts or {}
  local s = V3_SETTINGS[arch]
  if not s then error("MobileNetV3: unknown architecture '" .. tostring(arch) .. "'", 3) end
  local num_classes = opts.num_classes or 1000
  local norm = function(c) return nn.BatchNorm2d(c, {eps = 0.001, momentum = 0.01}) end
  local layers = {Conv2dNormActivation(opts.in_chans or 3, s.blocks[1][1], 3, {stride = 2, norm = norm, activation = nn.Hardswish})}
  for _, cnf in ipairs(s.blocks) do layers[#layers + 1] = InvertedResidualV3(cnf, norm) end
  local last_in = s.blocks[#s.blocks][4]
  local last_out = 6 * last_in
  layers[#layers + 1] = Conv2dNormActivation(last_in, last_out, 1, {norm = norm, activation = nn.Hardswish})
  self.features = nn.Sequential(layers)
  self.avgpool = nn.AdaptiveAvgPool2d(1)
  self.num_features, self.head_hidden_size, self.num_classes = last_out, s.last_channel, num_classes
  self.classifier = nn.Sequential(nn.Linear(last_out, s.last_channel), nn.Hardswish(), nn.Dropout(opts.drop_rate or 0.2),
    num_classes > 0 and nn.Linear(s.last_channel, num_classes) or nn.Identity())
  M.init_weights(self, function(m) init.normal_(m.weight, 0, 0.01); init.zeros_(m.bias) end)
end

---Features before pooling: (N, 960 | 576, H/32, W/32).
function MobileNetV3:forward_features(x)
  if x.ndim ~= 4 then self:raise("expected a 4-D (N,C,H,W) input, got shape %s", shape_str(x)) end
  return self.features(x)
end

---Pooling and the classifier; pre_logits: stop before the last Linear (after classifier.0-2).
function MobileNetV3:forward_head(x, pre_logits)
  x = self.avgpool(x):flatten(2)
  if pre_logits then
    for i = 1, 3 do x = self.classifier[i](x) end
    return x
  end
  return self.classifier(x)
end

function MobileNetV3:forward(x) return self:forward_head(self:forward_features(x)) end

---The final Linear (classifier.3).
function MobileNetV3:get_classifier() return self.classifier[4] end

---Replaces classifier.3 with a new Linear(1280 | 1024, num_classes) (0: an Identity).
---@param num_classes integer
function MobileNetV3:reset_classifier(num_classes)
  self.classifier[4] = registry.classifier(self.head_hidden_size, num_classes)
  self.num_classes = num_classes
end

---Layer groups: "stem", "stage1".. (blocks by output channels), "final_conv", "head" (classifier).
function MobileNetV3:layer_groups() return M.feature_groups(self, self.classifier) end

function MobileNetV3:summary(input_shape, opts) return zoo().summary(self, input_shape, opts) end

-- ---- registration ----

local IMAGENET_MEAN, IMAGENET_STD = {0.485, 0.456, 0.406}, {0.229, 0.224, 0.225}

local function register(name, build, classifier, file, description)
  local cfg = {mean = IMAGENET_MEAN, std = IMAGENET_STD, input_size = {3, 224, 224}, crop_pct = 0.875,
               interpolation = "bilinear", num_classes = 1000, first_conv = "features.0.0", classifier = classifier,
               architecture = name}
  registry.register(name, {
    build = function(opts)
      local model = build(opts or {})
      model.pretrained_cfg = zoo().cfg_for(cfg, opts and opts.in_chans)
      return model
    end,
    cfg = cfg,
    weights = {file = file, how = ("torchvision's IMAGENET1K_V1 weights: torchvision.models.%s(weights='IMAGENET1K_V1') "
      .. "downloads %s to ~/.cache/torch/hub/checkpoints; copy it here, or save its state_dict as %s"):format(name, file,
      (file:gsub("%.pth$", ".safetensors")))},
    description = description,
  })
end

register("mobilenet_v2", function(opts) return MobileNetV2(opts) end, "classifier.1", "mobilenet_v2-b0353104.pth",
  "MobileNetV2 (torchvision), ImageNet-1k")
register("mobilenet_v3_large", function(opts) return MobileNetV3("mobilenet_v3_large", opts) end, "classifier.3",
  "mobilenet_v3_large-8738ca79.pth", "MobileNetV3-Large (torchvision), ImageNet-1k")
register("mobilenet_v3_small", function(opts) return MobileNetV3("mobilenet_v3_small", opts) end, "classifier.3",
  "mobilenet_v3_small-047dcff4.pth", "MobileNetV3-Small (torchvision), ImageNet-1k")

return M
