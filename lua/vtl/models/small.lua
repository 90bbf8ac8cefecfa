-- small_cnn: a small convolutional network (about 0.3 M parameters, 30 M MACs at 32x32) for
-- fast tests and CPU demos: five conv-BN-ReLU layers (two of them strided), global average
-- pooling, dropout and a Linear classifier. Names follow torchvision's style (features.N.M,
-- classifier.1); tests/ref/gen_models.py holds its PyTorch twin.
local nn = require "vtl.nn"
local registry = require "vtl.models.registry"
local mobile = require "vtl.models.mobilenet"
local init = nn.init

local M = {}

local function zoo() return require "vtl.models" end


-- output channels and stride of each conv-BN-ReLU layer
local LAYERS = {{32, 1}, {64, 2}, {64, 1}, {128, 2}, {128, 1}}

---@class vtl.models.SmallCNN: vtl.nn.Module
local SmallCNN = nn.Module:extend("SmallCNN")
M.SmallCNN = SmallCNN

---SmallCNN({num_classes = 10, in_chans = 3, drop_rate = 0.1, width = 1}): width scales the channels.
function SmallCNN:init(opts)
  opts = opts or {}
  local num_classes = opts.num_classes or 10
  local width = opts.width or 1
  local layers, cin = {}, opts.in_chans or 3
  for i, l in ipairs(LAYERS) do
    local cout = math.max(1, math.floor(l[1] * width + 0.5))
    layers[i] = mobile.Conv2dNormActivation(cin, cout, 3, {stride = l[2]})
    cin = cout
  end
  self.features = nn.Sequential(layers)
  self.avgpool = nn.AdaptiveAvgPool2d(1)
  self.num_features, self.num_classes = cin, num_classes
  self.classifier = nn.Sequential(nn.Dropout(opts.drop_rate or 0.1),
    num_classes > 0 and nn.Linear(cin, num_classes) or nn.Identity())
  for _, m in ipairs(self:modules()) do
    if m.__name == "Conv2d" then init.kaiming_normal_(m.weight, {mode = "fan_out", nonlinearity = "relu"}) end
  end
end

mobile.features_head_methods(SmallCNN)

---Layer groups: "stem" (features.0), "stage1" (features.1-2), "stage2" (features.3-4), "head".
function SmallCNN:layer_groups()
  local g = zoo().group
  local f = self.features
  return {g(self, "stem", {f[1]}), g(self, "stage1", {f[2], f[3]}), g(self, "stage2", {f[4], f[5]}),
          g(self, "head", {self.classifier})}
end

function SmallCNN:summary(input_shape, opts) return zoo().summary(self, input_shape, opts) end

local cfg = {mean = {0.4914, 0.4822, 0.4465}, std = {0.2470, 0.2435, 0.2616}, input_size = {3, 32, 32},
             crop_pct = 1.0, interpolation = "bilinear", num_classes = 10, first_conv = "features.0.0",
             classifier = "classifier.1", architecture = "small_cnn"}

registry.register("small_cnn", {
  build = function(opts)
    local model = SmallCNN(opts)
    model.pretrained_cfg = zoo().cfg_for(cfg, opts and opts.in_chans)
    return model
  end,
  cfg = cfg,
  description = "a small CNN (0.3 M parameters) for tests and CPU demos; no packaged weights",
})

return M
