-- Layers: Linear, Conv2d, Embedding, pooling, dropout, activations, reshaping. Parameter
-- names, shapes and default initialisation follow PyTorch.
local core = require "vtl.core"
local Module = require("vtl.nn.module").Module
local F = require "vtl.nn.functional"
local init = require "vtl.nn.initializers"

local M = {}

local function opt(o, k, default)
  if o == nil or o[k] == nil then return default end
  return o[k]
end

local function pair(v) if type(v) == "number" then return {v, v} end return {v[1], v[2]} end
local function tuple(v) return "{" .. table.concat(v, ", ") .. "}" end
local function shape_str(t) return "{" .. table.concat(t.shape, ",") .. "}" end
-- a number or pair as PyTorch prints it in a module summary (tuples as Lua tables)
local function show(v) return type(v) == "table" and tuple(v) or tostring(v) end

-- PyTorch's default for Linear and Conv: kaiming_uniform(a = sqrt(5)) on the weight, which is
-- U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias.
local function reset_linear_like(w, b)
  init.kaiming_uniform_(w, math.sqrt(5))
  if b then
    local fan_in = init.calculate_fan_in_and_fan_out(w)
    local bound = fan_in > 0 and 1 / math.sqrt(fan_in) or 0
    init.uniform_(b, -bound, bound)
  end
end
M.reset_linear_like = reset_linear_like

-- ---- Linear ----

---nn.Linear(in_features, out_features, {bias = true}): y = x wᵀ + b on the last dim.
local Linear = Module:extend("Linear")
M.Linear = Linear

function Linear:init(in_features, out_features, opts)
  self.in_features, self.out_features = in_features, out_features
  self:register_parameter("weight", core.empty({out_features, in_features}))
  if opt(opts, "bias", true) then self:register_parameter("bias", core.empty({out_features})) end
  self:reset_parameters()
end

function Linear:reset_parameters() reset_linear_like(self.weight, self.bias) end

---x: (*, in_features); add (optional): a tensor of the output's shape added to it.
function Linear:forward(x, add)
  if x:dim() == 0 or x:size(-1) ~= self.in_features then
    self:raise("expected input with %d features in the last dim, got shape %s", self.in_features, shape_str(x))
  end
  -- vtl.models.fuse_for_inference's fused activation (_act, _act_params) and weight pack
  local pack = rawget(self, "_pack")
  if pack then
    return F.linear(x, self.weight, self.bias,
      {pack = pack, act = rawget(self, "_act"), act_params = rawget(self, "_act_params"), add = add})
  end
  local y = F.linear(x, self.weight, self.bias)
  if add then y = y + add end
  return y
end

function Linear:extra_repr()
  return ("in_features=%d, out_features=%d, bias=%s"):format(self.in_features, self.out_features, tostring(self.bias ~= nil))
end

-- ---- Conv2d ----

---nn.Conv2d(in, out, kernel_size, {stride = 1, padding = 0 (number, {h, w}, "same", "valid"),
---dilation = 1, groups = 1, bias = true, padding_mode = "zeros"|"reflect"|"replicate"|"circular"}).
local Conv2d = Module:extend("Conv2d")
M.Conv2d = Conv2d

function Conv2d:init(in_channels, out_channels, kernel_size, opts)
  local groups = opt(opts, "groups", 1)
  if in_channels % groups ~= 0 then error(("Conv2d: in_channels (%d) must be divisible by groups (%d)"):format(in_channels, groups), 3) end
  if out_channels % groups ~= 0 then error(("Conv2d: out_channels (%d) must be divisible by groups (%d)"):format(out_channels, groups), 3) end
  self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
  self.kernel_size = pair(kernel_size)
  self.stride = pair(opt(opts, "stride", 1))
  local padding = opt(opts, "padding", 0)
  self.padding = type(padding) == "string" and padding or pair(padding)
  self.dilation = pair(opt(opts, "dilation", 1))
  self.padding_mode = opt(opts, "padding_mode", "zeros")
  local k = self.kernel_size
  self:register_parameter("weight", core.empty({out_channels, in_channels // groups, k[1], k[2]}))
  if opt(opts, "bias", true) then self:register_parameter("bias", core.empty({out_channels})) end
  self:reset_parameters()
end

function Conv2d:reset_parameters() reset_linear_like(self.weight, self.bias) end

---x: (N,C,H,W) or (C,H,W); add (optional): a tensor of the output's shape added to it.
function Conv2d:forward(x, add)
  if x.ndim ~= 4 and x.ndim ~= 3 then self:raise("expected a 4-D (N,C,H,W) or 3-D (C,H,W) input, got shape %s", shape_str(x)) end
  local c = x.shape[x.ndim - 2]
  if c ~= self.in_channels then self:raise("expected input with %d channels, got %d", self.in_channels, c) end
  local squeeze = x.ndim == 3
  if squeeze then x = x:unsqueeze(1) end
  local padding = self.padding
  if self.padding_mode ~= "zeros" and padding ~= "valid" then
    local p = padding
    if p == "same" then
      local th = self.dilation[1] * (self.kernel_size[1] - 1)
      local tw = self.dilation[2] * (self.kernel_size[2] - 1)
      p = {th // 2, th - th // 2, tw // 2, tw - tw // 2}
      x = F.pad(x, {p[3], p[4], p[1], p[2]}, {mode = self.padding_mode})
    else
      x = F.pad(x, {p[2], p[2], p[1], p[1]}, {mode = self.padding_mode})
    end
    padding = 0
  end
  local y = self:_conv(x, padding, nil, add)
  if squeeze then y = y:squeeze(1) end
  return y
end

-- F.conv2d with the module's settings and, when vtl.models.fuse_for_inference set them, its
-- fused activation (_act, _act_params) and weight pack (_pack); add: a tensor of the output's
-- shape added before the activation
function Conv2d:_conv(x, padding, padding_end, add)
  local o = {stride = self.stride, padding = padding, padding_end = padding_end, dilation = self.dilation,
             groups = self.groups}
  o.channels_last = rawget(self, "_channels_last")
  local pack = rawget(self, "_pack")
  if pack then
    o.pack, o.act, o.act_params, o.add = pack, rawget(self, "_act"), rawget(self, "_act_params"), add
    return F.conv2d(x, self.weight, self.bias, o)
  end
  local y = F.conv2d(x, self.weight, self.bias, o)
  if add then y = y + add end
  return y
end

function Conv2d:extra_repr()
  local s = ("%d, %d, kernel_size=%s, stride=%s"):format(self.in_channels, self.out_channels, tuple(self.kernel_size), tuple(self.stride))
  local p = self.padding
  if type(p) == "string" then s = s .. ", padding=" .. p
  elseif p[1] ~= 0 or p[2] ~= 0 then s = s .. ", padding=" .. tuple(p) end
  if self.dilation[1] ~= 1 or self.dilation[2] ~= 1 then s = s .. ", dilation=" .. tuple(self.dilation) end
  if self.groups ~= 1 then s = s .. ", groups=" .. self.groups end
  if self.bias == nil then s = s .. ", bias=false" end
  if self.padding_mode ~= "zeros" then s = s .. ", padding_mode=" .. self.padding_mode end
  return s
end

-- ---- Embedding ----

---nn.Embedding(num_embeddings, embedding_dim, {padding_idx}): a lookup table indexed 1-based;
---the padding row starts at zero and gets no gradient.
local Embedding = Module:extend("Embedding")
M.Embedding = Embedding

function Embedding:init(num_embeddings, embedding_dim, opts)
  self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
  local pad = opt(opts, "padding_idx", nil)
  if pad and pad < 0 then pad = num_embeddings + 1 + pad end
  if pad and (pad < 1 or pad > num_embeddings) then
    error(("Embedding: padding_idx %d out of range for %d embeddings"):format(pad, num_embeddings), 3)
  end
  self.padding_idx = pad
  self:register_parameter("weight", core.empty({num_embeddings, embedding_dim}))
  self:reset_parameters()
end

function Embedding:reset_parameters()
  init.normal_(self.weight)
  if self.padding_idx then core.no_grad(function() self.weight[self.padding_idx] = 0 end) end
end

function Embedding:forward(idx)
  return F.embedding(idx, self.weight, {padding_idx = self.padding_idx})
end

function Embedding:extra_repr()
  local s = ("%d, %d"):format(self.num_embeddings, self.embedding_dim)
  if self.padding_idx then s = s .. ", padding_idx=" .. self.padding_idx end
  return s
end

-- ---- shape and identity ----

---nn.Identity(): returns its input.
local Identity = Module:extend("Identity")
M.Identity = Identity
function Identity:forward(x) return x end

---nn.Flatten(start_dim = 2, end_dim = -1): flattens dims start..end (1-based; keeps the batch dim).
local Flatten = Module:extend("Flatten")
M.Flatten = Flatten
function Flatten:init(start_dim, end_dim) self.start_dim, self.end_dim = start_dim or 2, end_dim or -1 end
function Flatten:forward(x) return x:flatten(self.start_dim, self.end_dim) end
function Flatten:extra_repr() return ("start_dim=%d, end_dim=%d"):format(self.start_dim, self.end_dim) end

-- ---- dropout ----

---nn.Dropout(p = 0.5): zeroes elements with probability p in training, scaling the rest by 1/(1-p).
local Dropout = Module:extend("Dropout")
M.Dropout = Dropout
function Dropout:init(p, opts)
  p = p or 0.5
  if p < 0 or p > 1 then error("Dropout: p must be in [0, 1], got " .. p, 3) end
  self.p, self.generator = p, opt(opts, "generator", nil)
end
function Dropout:forward(x)
  return F.dropout(x, {p = self.p, training = self.training, generator = self.generator})
end
function Dropout:extra_repr() return ("p=%s, inplace=false"):format(tostring(self.p)) end

---nn.DropPath(p = 0): stochastic depth for residual branches (whole samples dropped in training).
local DropPath = Module:extend("DropPath")
M.DropPath = DropPath
function DropPath:init(p, opts) self.drop_prob, self.generator = p or 0, opt(opts, "generator", nil) end
function DropPath:forward(x) return F.drop_path(x, self.drop_prob, self.training, {generator = self.generator}) end
function DropPath:extra_repr() return ("drop_prob=%.3f"):format(self.drop_prob) end

-- ---- pooling ----

local function check_spatial(self, x)
  if x.ndim ~= 4 and x.ndim ~= 3 then self:raise("expected a 4-D (N,C,H,W) or 3-D (C,H,W) input, got shape %s", shape_str(x)) end
end

---nn.MaxPool2d(kernel_size, {stride = kernel_size, padding = 0, dilation = 1, ceil_mode = false, return_indices = false}).
local MaxPool2d = Module:extend("MaxPool2d")
M.MaxPool2d = MaxPool2d
function MaxPool2d:init(kernel_size, opts)
  self.kernel_size = kernel_size
  self.stride = opt(opts, "stride", kernel_size)
  self.padding, self.dilation = opt(opts, "padding", 0), opt(opts, "dilation", 1)
  self.ceil_mode, self.return_indices = opt(opts, "ceil_mode", false), opt(opts, "return_indices", false)
end
function MaxPool2d:forward(x)
  check_spatial(self, x)
  local y, idx = F.max_pool2d(x, self.kernel_size, {stride = self.stride, padding = self.padding,
    dilation = self.dilation, ceil_mode = self.ceil_mode, return_indices = self.return_indices})
  if self.return_indices then return y, idx end
  return y
end
function MaxPool2d:extra_repr()
  return ("kernel_size=%s, stride=%s, padding=%s, dilation=%s, ceil_mode=%s"):format(show(self.kernel_size),
    show(self.stride), show(self.padding), show(self.dilation), tostring(self.ceil_mode))
end

---nn.AvgPool2d(kernel_size, {stride = kernel_size, padding = 0, ceil_mode = false, count_include_pad = true, divisor_override}).
local AvgPool2d = Module:extend("AvgPool2d")
M.AvgPool2d = AvgPool2d
function AvgPool2d:init(kernel_size, opts)
  self.kernel_size = kernel_size
  self.stride = opt(opts, "stride", kernel_size)
  self.padding, self.ceil_mode = opt(opts, "padding", 0), opt(opts, "ceil_mode", false)
  self.count_include_pad = opt(opts, "count_include_pad", true)
  self.divisor_override = opt(opts, "divisor_override", nil)
end
function AvgPool2d:forward(x)
  check_spatial(self, x)
  return F.avg_pool2d(x, self.kernel_size, {stride = self.stride, padding = self.padding, ceil_mode = self.ceil_mode,
    count_include_pad = self.count_include_pad, divisor_override = self.divisor_override})
end
function AvgPool2d:extra_repr()
  return ("kernel_size=%s, stride=%s, padding=%s"):format(show(self.kernel_size), show(self.stride), show(self.padding))
end

---nn.AdaptiveAvgPool2d(output_size): average pooling to a fixed output size (1 = global).
local AdaptiveAvgPool2d = Module:extend("AdaptiveAvgPool2d")
M.AdaptiveAvgPool2d = AdaptiveAvgPool2d
function AdaptiveAvgPool2d:init(size) self.output_size = size end
function AdaptiveAvgPool2d:forward(x) check_spatial(self, x); return F.adaptive_avg_pool2d(x, self.output_size) end
function AdaptiveAvgPool2d:extra_repr() return "output_size=" .. show(self.output_size) end

---nn.AdaptiveMaxPool2d(output_size): max pooling to a fixed output size.
local AdaptiveMaxPool2d = Module:extend("AdaptiveMaxPool2d")
M.AdaptiveMaxPool2d = AdaptiveMaxPool2d
function AdaptiveMaxPool2d:init(size) self.output_size = size end
function AdaptiveMaxPool2d:forward(x) check_spatial(self, x); return (F.adaptive_max_pool2d(x, self.output_size)) end
function AdaptiveMaxPool2d:extra_repr() return "output_size=" .. show(self.output_size) end

-- ---- activations ----

-- a module class whose forward is F[name](x, opts-from-fields)
local function activation(class, fname, fields, repr)
  local cls = Module:extend(class)
  M[class] = cls
  function cls:init(...)
    local args = {...}
    if type(args[1]) == "table" then
      for _, f in ipairs(fields) do self[f[1]] = opt(args[1], f[1], f[2]) end
    else
      for i, f in ipairs(fields) do if args[i] ~= nil and type(args[i]) ~= "table" then self[f[1]] = args[i] else self[f[1]] = f[2] end end
    end
  end
  function cls:forward(x)
    if #fields == 0 then return F[fname](x) end
    local o = {}
    for _, f in ipairs(fields) do o[f[1]] = self[f[1]] end
    return F[fname](x, o)
  end
  if repr then cls.extra_repr = repr end
  return cls
end

activation("ReLU", "relu", {})
activation("ReLU6", "relu6", {})
activation("SiLU", "silu", {})
activation("Hardswish", "hardswish", {})
activation("Hardsigmoid", "hardsigmoid", {})
activation("Sigmoid", "sigmoid", {})
activation("Tanh", "tanh", {})
activation("LeakyReLU", "leaky_relu", {{"negative_slope", 0.01}},
  function(self) return "negative_slope=" .. tostring(self.negative_slope) end)
activation("ELU", "elu", {{"alpha", 1}},
  function(self) return "alpha=" .. tostring(self.alpha) end)
activation("GELU", "gelu", {{"approximate", "none"}},
  function(self) return "approximate='" .. self.approximate .. "'" end)
activation("Softplus", "softplus", {{"beta", 1}, {"threshold", 20}},
  function(self) return ("beta=%s, threshold=%s"):format(tostring(self.beta), tostring(self.threshold)) end)

---nn.Softmax(dim) / nn.LogSoftmax(dim): along a 1-based dim.
local Softmax = Module:extend("Softmax")
M.Softmax = Softmax
function Softmax:init(dim) self.dim = dim end
function Softmax:forward(x)
  if self.dim == nil then self:raise("Softmax needs a dim, e.g. nn.Softmax(2)") end
  return F.softmax(x, self.dim)
end
function Softmax:extra_repr() return "dim=" .. tostring(self.dim) end

local LogSoftmax = Softmax:extend("LogSoftmax")
M.LogSoftmax = LogSoftmax
function LogSoftmax:forward(x)
  if self.dim == nil then self:raise("LogSoftmax needs a dim, e.g. nn.LogSoftmax(2)") end
  return F.log_softmax(x, self.dim)
end

return M
