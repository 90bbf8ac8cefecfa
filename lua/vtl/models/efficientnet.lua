-- EfficientNet-B0 (Tan & Le), torchvision's architecture and module names
-- (features.N.M.block.K..., features.N.M.stochastic_depth, classifier.1), so torchvision state
-- dicts load as they are: MBConv blocks with squeeze-excitation and SiLU, stochastic depth
-- growing linearly over the blocks (drop_path_rate, default 0.2), dropout 0.2 before the classifier.
local nn = require "vtl.nn"
local registry = require "vtl.models.registry"
local mobile = require "vtl.models.mobilenet"
local init = nn.init

local M = {}

local function zoo() return require "vtl.models" end


local Conv2dNormActivation, SqueezeExcitation = mobile.Conv2dNormActivation, mobile.SqueezeExcitation
local make_divisible = mobile.make_divisible

---StochasticDepth(p, "row"): drops whole samples of the residual branch in training (torchvision's name).
local StochasticDepth = nn.DropPath:extend("StochasticDepth")
M.StochasticDepth = StochasticDepth

function StochasticDepth:init(p, mode)
  nn.DropPath.init(self, p)
  self.p, self.mode = p, mode or "row"
end

function StochasticDepth:extra_repr() return ("p=%s, mode=%s"):format(tostring(self.p), self.mode) end

---MBConv(cin, cout, kernel, stride, expand_ratio, sd_prob): 1x1 expansion (when the ratio is not
---1), depthwise kxk, squeeze-excitation, 1x1 projection; residual with stochastic depth when
---the shape allows.
local MBConv = nn.Module:extend("MBConv")
M.MBConv = MBConv

function MBConv:init(cin, cout, kernel, stride, expand_ratio, sd_prob)
  self.use_res_connect = stride == 1 and cin == cout
  local expanded = make_divisible(cin * expand_ratio, 8)
  local layers = {}
  if expanded ~= cin then layers[#layers + 1] = Conv2dNormActivation(cin, expanded, 1, {activation = nn.SiLU}) end
  layers[#layers + 1] = Conv2dNormActivation(expanded, expanded, kernel, {stride = stride, groups = expanded, activation = nn.SiLU})
  layers[#layers + 1] = SqueezeExcitation(expanded, math.max(1, cin // 4), {activation = nn.SiLU})
  layers[#layers + 1] = Conv2dNormActivation(expanded, cout, 1, {activation = false})
  self.block = nn.Sequential(layers)
  self.stochastic_depth = StochasticDepth(sd_prob, "row")
  self.out_channels = cout
end

function MBConv:_fuse_inference(fuse) mobile.fuse_residual(self, fuse, "block") end

function MBConv:forward(x)
  local fused = mobile.forward_residual(self, "block", x)
  if fused then return fused end
  local r = self.block(x)
  if self.use_res_connect then r = self.stochastic_depth(r) + x end
  return r
end

-- expand ratio, kernel, stride, in, out, layers
local B0 = {{1, 3, 1, 32, 16, 1}, {6, 3, 2, 16, 24, 2}, {6, 5, 2, 24, 40, 2}, {6, 3, 2, 40, 80, 3},
            {6, 5, 1, 80, 112, 3}, {6, 5, 2, 112, 192, 4}, {6, 3, 1, 192, 320, 1}}

---@class vtl.models.EfficientNet: vtl.nn.Module
local EfficientNet = nn.Module:extend("EfficientNet")
M.EfficientNet = EfficientNet

---EfficientNet({num_classes = 1000, in_chans = 3, drop_rate = 0.2, drop_path_rate = 0.2}): B0.
function EfficientNet:init(opts)
  opts = opts or {}
  local num_classes = opts.num_classes or 1000
  local sd = opts.drop_path_rate or 0.2
  local layers = {Conv2dNormActivation(opts.in_chans or 3, B0[1][4], 3, {stride = 2, activation = nn.SiLU})}
  local total = 0
  for _, s in ipairs(B0) do total = total + s[6] end
  local id = 0
  for _, s in ipairs(B0) do
    local stage = {}
    for i = 1, s[6] do
      stage[i] = MBConv(i == 1 and s[4] or s[5], s[5], s[2], i == 1 and s[3] or 1, s[1], sd * id / total)
      id = id + 1
    end
    layers[#layers + 1] = nn.Sequential(stage)
  end
  local last_in = B0[#B0][5]
  local last = 4 * last_in
  layers[#layers + 1] = Conv2dNormActivation(last_in, last, 1, {activation = nn.SiLU})
  self.features = nn.Sequential(layers)
  self.avgpool = nn.AdaptiveAvgPool2d(1)
  self.num_features, self.num_classes = last, num_classes
  self.classifier = nn.Sequential(nn.Dropout(opts.drop_rate or 0.2),
    num_classes > 0 and nn.Linear(last, num_classes) or nn.Identity())
  mobile.init_weights(self, function(m)
    local r = 1 / math.sqrt(m.out_features)
    init.uniform_(m.weight, -r, r)
    init.zeros_(m.bias)
  end)
end

mobile.features_head_methods(EfficientNet)

---Layer groups: "stem", "stage1".."stage7" (features.1-7), "final_conv", "head" (classifier).
function EfficientNet:layer_groups()
  local g = zoo().group
  local f = self.features
  local groups = {g(self, "stem", {f[1]})}
  for i = 2, #f - 1 do groups[#groups + 1] = g(self, "stage" .. (i - 1), {f[i]}) end
  groups[#groups + 1] = g(self, "final_conv", {f[#f]})
  groups[#groups + 1] = g(self, "head", {self.classifier})
  return groups
end

function EfficientNet:summary(input_shape, opts) return zoo().summary(self, input_shape, opts) end

-- ---- registration ----

local cfg = {mean = {0.485, 0.456, 0.406}, std = {0.229, 0.224, 0.225}, input_size = {3, 224, 224},
             crop_pct = 0.875, interpolation = "bicubic", num_classes = 1000, first_conv = "features.0.0",
             classifier = "classifier.1", architecture = "efficientnet_b0"}

local FILE = "efficientnet_b0_rwightman-3dd342df.pth"

registry.register("efficientnet_b0", {
  build = function(opts)
    local model = EfficientNet(opts)
    model.pretrained_cfg = zoo().cfg_for(cfg, opts and opts.in_chans)
    return model
  end,
  cfg = cfg,
  weights = {file = FILE, how = ("torchvision's IMAGENET1K_V1 weights: torchvision.models.efficientnet_b0(weights="
    .. "'IMAGENET1K_V1') downloads %s to ~/.cache/torch/hub/checkpoints; copy it here, or save its state_dict as %s")
    :format(FILE, (FILE:gsub("%.pth$", ".safetensors")))},
  description = "EfficientNet-B0 (torchvision), ImageNet-1k",
})

return M
