-- ResNet-18/34/50/101 (He et al.), torchvision's architecture and module names (conv1, bn1,
-- layer1.0.conv1, layer2.0.downsample.0, fc), so torchvision state dicts load as they are.
-- Bottleneck blocks stride in the 3x3 convolution (ResNet v1.5). timm's options on top:
-- drop_rate (dropout before fc) and drop_path_rate (stochastic depth on the residual branches).
local nn = require "vtl.nn"
local registry = require "vtl.models.registry"
local F = nn.functional
local init = nn.init

local M = {}

local function zoo() return require "vtl.models" end

local function shape_str(t) return "{" .. table.concat(t.shape, ",") .. "}" end

local function conv3x3(cin, cout, stride)
  return nn.Conv2d(cin, cout, 3, {stride = stride or 1, padding = 1, bias = false})
end

local function conv1x1(cin, cout, stride)
  return nn.Conv2d(cin, cout, 1, {stride = stride or 1, bias = false})
end

-- ---- blocks ----

---Two 3x3 convolutions with a residual connection (ResNet-18/34).
local BasicBlock = nn.Module:extend("BasicBlock")
M.BasicBlock = BasicBlock
BasicBlock.expansion = 1
BasicBlock._fuse_pairs = {{"conv1", "bn1"}, {"conv2", "bn2"}}

function BasicBlock:init(inplanes, planes, stride, downsample, drop_path)
  self.conv1 = conv3x3(inplanes, planes, stride)
  self.bn1 = nn.BatchNorm2d(planes)
  self.relu = nn.ReLU()
  self.conv2 = conv3x3(planes, planes)
  self.bn2 = nn.BatchNorm2d(planes)
  if downsample then self.downsample = downsample end
  self.stride = stride or 1
  self.drop_path_rate = drop_path or 0
end

-- vtl.models.fuse_for_inference: the ReLUs and the residual sum run inside the convolutions
function BasicBlock:_fuse_inference(fuse)
  if not fuse.folded(self, "bn1", "bn2") then return end
  fuse.act(self.conv1, "relu")
  fuse.act(self.conv2, "relu")
  rawset(self, "_fused", true)
end

function BasicBlock:forward(x)
  local identity = self.downsample and self.downsample(x) or x
  if rawget(self, "_fused") then return self.conv2(self.conv1(x), identity) end
  local out = nn.norm_act(self.bn1, self.relu, self.conv1(x))
  out = self.conv2(out)
  if self.drop_path_rate > 0 and self.training then
    return self.relu(F.drop_path(self.bn2(out), self.drop_path_rate, true) + identity)
  end
  return nn.norm_act(self.bn2, self.relu, out, identity)
end

---1x1 reduce, 3x3 (strided), 1x1 expand (x4) with a residual connection (ResNet-50/101).
local Bottleneck = nn.Module:extend("Bottleneck")
M.Bottleneck = Bottleneck
Bottleneck.expansion = 4
Bottleneck._fuse_pairs = {{"conv1", "bn1"}, {"conv2", "bn2"}, {"conv3", "bn3"}}

function Bottleneck:init(inplanes, planes, stride, downsample, drop_path)
  self.conv1 = conv1x1(inplanes, planes)
  self.bn1 = nn.BatchNorm2d(planes)
  self.conv2 = conv3x3(planes, planes, stride)
  self.bn2 = nn.BatchNorm2d(planes)
  self.conv3 = conv1x1(planes, planes * 4)
  self.bn3 = nn.BatchNorm2d(planes * 4)
  self.relu = nn.ReLU()
  if downsample then self.downsample = downsample end
  self.stride = stride or 1
  self.drop_path_rate = drop_path or 0
end

function Bottleneck:_fuse_inference(fuse)
  if not fuse.folded(self, "bn1", "bn2", "bn3") then return end
  for _, c in ipairs({self.conv1, self.conv2, self.conv3}) do fuse.act(c, "relu") end
  rawset(self, "_fused", true)
end

function Bottleneck:forward(x)
  local identity = self.downsample and self.downsample(x) or x
  if rawget(self, "_fused") then return self.conv3(self.conv2(self.conv1(x)), identity) end
  local out = nn.norm_act(self.bn1, self.relu, self.conv1(x))
  out = nn.norm_act(self.bn2, self.relu, self.conv2(out))
  out = self.conv3(out)
  if self.drop_path_rate > 0 and self.training then
    return self.relu(F.drop_path(self.bn3(out), self.drop_path_rate, true) + identity)
  end
  return nn.norm_act(self.bn3, self.relu, out, identity)
end

-- ---- the network ----

---@class vtl.models.ResNet: vtl.nn.Module
---@field pretrained_cfg table
---@field num_classes integer
---@field num_features integer
local ResNet = nn.Module:extend("ResNet")
M.ResNet = ResNet
ResNet._fuse_pairs = {{"conv1", "bn1"}}

---ResNet(block, layers, {num_classes = 1000, in_chans = 3, drop_rate = 0, drop_path_rate = 0}):
---block is M.BasicBlock or M.Bottleneck, layers the number of blocks per stage ({2, 2, 2, 2}).
function ResNet:init(block, layers, opts)
  opts = opts or {}
  local num_classes = opts.num_classes or 1000
  local in_chans = opts.in_chans or 3
  self.drop_rate = opts.drop_rate or 0
  local dpr = opts.drop_path_rate or 0
  self.conv1 = nn.Conv2d(in_chans, 64, 7, {stride = 2, padding = 3, bias = false})
  self.bn1 = nn.BatchNorm2d(64)
  self.relu = nn.ReLU()
  self.maxpool = nn.MaxPool2d(3, {stride = 2, padding = 1})
  local total, idx = 0, 0
  for _, n in ipairs(layers) do total = total + n end
  local inplanes = 64
  for i, n in ipairs(layers) do
    local planes, stride = 64 << (i - 1), i == 1 and 1 or 2
    local downsample
    if stride ~= 1 or inplanes ~= planes * block.expansion then
      downsample = nn.Sequential(conv1x1(inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion))
    end
    local blocks = {}
    for b = 1, n do
      -- stochastic depth grows linearly from 0 at the first block to drop_path_rate at the last
      local p = total > 1 and dpr * idx / (total - 1) or 0
      blocks[b] = block(inplanes, planes, b == 1 and stride or 1, b == 1 and downsample or nil, p)
      inplanes = planes * block.expansion
      idx = idx + 1
    end
    self["layer" .. i] = nn.Sequential(blocks)
  end
  self.avgpool = nn.AdaptiveAvgPool2d(1)
  self.num_features = 512 * block.expansion
  self.num_classes = num_classes
  self.fc = num_classes > 0 and nn.Linear(self.num_features, num_classes) or nn.Identity()
  -- torchvision's initialisation: He-normal (fan_out) convolutions, unit batch norms
  for _, m in ipairs(self:modules()) do
    if m.__name == "Conv2d" then init.kaiming_normal_(m.weight, {mode = "fan_out", nonlinearity = "relu"}) end
  end
end

---Features before pooling (timm's forward_features): the output of layer4, (N, C, H/32, W/32).
---@param x vtl.Tensor (N, C, H, W)
---@return vtl.Tensor
function ResNet:forward_features(x)
  if x.ndim ~= 4 then self:raise("expected a 4-D (N,C,H,W) input, got shape %s", shape_str(x)) end
  if rawget(self, "_fused") then x = self.maxpool(self.conv1(x))
  else x = self.maxpool(nn.norm_act(self.bn1, self.relu, self.conv1(x))) end
  x = self.layer1(x)
  x = self.layer2(x)
  x = self.layer3(x)
  return self.layer4(x)
end

---Global average pooling, dropout (drop_rate) and fc; pre_logits: stop before fc.
---@param x vtl.Tensor (N, C, h, w)
---@param pre_logits boolean|nil
---@return vtl.Tensor
function ResNet:forward_head(x, pre_logits)
  x = self.avgpool(x):flatten(2)
  if self.drop_rate > 0 then x = F.dropout(x, {p = self.drop_rate, training = self.training}) end
  if pre_logits then return x end
  return self.fc(x)
end

function ResNet:_fuse_inference(fuse)
  if not fuse.folded(self, "bn1") then return end
  fuse.act(self.conv1, "relu")
  rawset(self, "_fused", true)
end

function ResNet:forward(x) return self:forward_head(self:forward_features(x)) end

---The classifier module (fc).
---@return vtl.nn.Module
function ResNet:get_classifier() return self.fc end

---Replaces fc with a new Linear(num_features, num_classes) (0: an Identity; the model then
---returns pooled features).
---@param num_classes integer
function ResNet:reset_classifier(num_classes)
  self.fc = registry.classifier(self.num_features, num_classes)
  self.num_classes = num_classes
end

---Layer groups from input to output: "stem" (conv1, bn1), "layer1".."layer4", "head" (fc).
---Each is {name, modules, params, names}; together they hold every parameter once.
---@return table[]
function ResNet:layer_groups()
  local g = zoo().group
  return {g(self, "stem", {self.conv1, self.bn1}), g(self, "layer1", {self.layer1}), g(self, "layer2", {self.layer2}),
          g(self, "layer3", {self.layer3}), g(self, "layer4", {self.layer4}), g(self, "head", {self.fc})}
end

---Prints and returns per-layer shapes, parameters and MACs (vtl.models.summary).
function ResNet:summary(input_shape, opts) return zoo().summary(self, input_shape, opts) end

-- ---- registration ----

local IMAGENET_MEAN, IMAGENET_STD = {0.485, 0.456, 0.406}, {0.229, 0.224, 0.225}

local VARIANTS = {
  resnet18 = {BasicBlock, {2, 2, 2, 2}, "resnet18-f37072fd.pth"},
  resnet34 = {BasicBlock, {3, 4, 6, 3}, "resnet34-b627a593.pth"},
  resnet50 = {Bottleneck, {3, 4, 6, 3}, "resnet50-0676ba61.pth"},
  resnet101 = {Bottleneck, {3, 4, 23, 3}, "resnet101-63fe2227.pth"},
}

for name, v in pairs(VARIANTS) do
  local cfg = {mean = IMAGENET_MEAN, std = IMAGENET_STD, input_size = {3, 224, 224}, crop_pct = 0.875,
               interpolation = "bilinear", num_classes = 1000, first_conv = "conv1", classifier = "fc",
               architecture = name}
  registry.register(name, {
    build = function(opts)
      local model = ResNet(v[1], v[2], opts)
      model.pretrained_cfg = zoo().cfg_for(cfg, opts and opts.in_chans)
      return model
    end,
    cfg = cfg,
    weights = {file = v[3], how = ("torchvision's IMAGENET1K_V1 weights: torchvision.models.%s(weights='IMAGENET1K_V1') "
      .. "downloads %s to ~/.cache/torch/hub/checkpoints; copy it here, or save its state_dict as %s"):format(name, v[3],
      (v[3]:gsub("%.pth$", ".safetensors")))},
    description = ("ResNet-%s (torchvision), ImageNet-1k"):format(name:match("%d+")),
  })
end

---Builds a ResNet by name ("resnet18", "resnet34", "resnet50", "resnet101") with random weights.
---@param name string
---@param opts table|nil
---@return vtl.models.ResNet
function M.build(name, opts)
  local entry = VARIANTS[name] and registry.get(name)
  if not entry then error("resnet: unknown variant '" .. tostring(name) .. "'", 2) end
  return entry.build(opts)
end

return M
