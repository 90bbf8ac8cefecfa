-- Normalisation layers: BatchNorm1d/2d, LayerNorm, GroupNorm (PyTorch names and defaults).
local core = require "vtl.core"
local Module = require("vtl.nn.module").Module
local is_module = require("vtl.nn.module").is_module
local F = require "vtl.nn.functional"

local M = {}

local function opt(o, k, default)
  if o == nil or o[k] == nil then return default end
  return o[k]
end

local function shape_str(t) return "{" .. table.concat(t.shape, ",") .. "}" end

-- whether a and b have the same shape (no strings built: nn.norm_act asks on every call)
local function same_shape(a, b)
  local sa, sb = a.shape, b.shape
  if #sa ~= #sb then return false end
  for i = 1, #sa do if sa[i] ~= sb[i] then return false end end
  return true
end

-- ---- batch norm ----

---Batch normalisation over the channel dim (2) with running statistics. Fine-tuning modes
---(bn:set_mode): "normal" (PyTorch's behaviour), "frozen_stats" (running statistics used and
---kept as they are even in training; weight and bias still train), "frozen" (the same, and
---weight and bias do not train either).
local BatchNorm = Module:extend("_BatchNorm")
M._BatchNorm = BatchNorm

function BatchNorm:init(num_features, opts)
  self.num_features = num_features
  self.eps = opt(opts, "eps", 1e-5)
  self.momentum = opt(opts, "momentum", 0.1)
  if opts and opts.momentum == false then self.momentum = nil end -- cumulative moving average
  self.affine = opt(opts, "affine", true)
  self.track_running_stats = opt(opts, "track_running_stats", true)
  self.mode = "normal"
  if self.affine then
    self:register_parameter("weight", core.ones({num_features}))
    self:register_parameter("bias", core.zeros({num_features}))
  end
  if self.track_running_stats then
    self:register_buffer("running_mean", core.zeros({num_features}))
    self:register_buffer("running_var", core.ones({num_features}))
    self:register_buffer("num_batches_tracked", core.tensor(0, {dtype = "i64"}))
  end
end

---Zeroes the running statistics (mean 0, variance 1, count 0).
function BatchNorm:reset_running_stats()
  if not self.track_running_stats then return end
  core.no_grad(function()
    self.running_mean:zero_()
    self.running_var:fill_(1)
    self.num_batches_tracked:zero_()
  end)
end

---Sets the fine-tuning mode: "normal", "frozen_stats" or "frozen"; returns self.
---@param mode string
function BatchNorm:set_mode(mode)
  if mode ~= "normal" and mode ~= "frozen_stats" and mode ~= "frozen" then
    error(("%s: mode must be 'normal', 'frozen_stats' or 'frozen', got '%s'"):format(self:where(), tostring(mode)), 2)
  end
  self.mode = mode
  for _, name in ipairs(self._param_names) do self._parameters[name].requires_grad = mode ~= "frozen" end
  return self
end

---Keeps the running statistics fixed (and uses them) while weight and bias still train.
function BatchNorm:freeze_stats() return self:set_mode("frozen_stats") end

function BatchNorm:_set_frozen(frozen, opts)
  if frozen and opts.train_bn then return end
  self:set_mode(frozen and "frozen" or "normal")
end

function BatchNorm:_check_input(x)
  local ok = self._dims[x.ndim]
  if not ok then self:raise("expected %s input, got shape %s", self._dims.text, shape_str(x)) end
  if x.shape[2] ~= self.num_features then
    self:raise("expected input with %d channels, got %d", self.num_features, x.shape[2])
  end
end

function BatchNorm:forward(x) return self:_normalize(x) end

-- the forward, with F.batch_norm's post-operation options (add, act) when given
function BatchNorm:_normalize(x, post)
  self:_check_input(x)
  local training = self.training and self.mode == "normal"
  local factor = self.momentum or 0
  if training and self.track_running_stats then
    core.no_grad(function() self.num_batches_tracked:add_(1) end)
    if self.momentum == nil then factor = 1 / self.num_batches_tracked:item() end
  end
  local use_batch = training or not self.track_running_stats
  local track = not training or self.track_running_stats
  return F.batch_norm(x, track and self.running_mean or nil, track and self.running_var or nil,
    self.weight, self.bias, {training = use_batch, momentum = factor, eps = self.eps,
                             add = post and post.add, act = post and post.act})
end

-- VTL_NORM_ACT=0 runs nn.norm_act's modules one by one always (to measure what the fused pass
-- gains)
local FUSE = os.getenv("VTL_NORM_ACT") ~= "0"

-- the activations batch_norm runs in its own pass, by module class and by F's name
local FUSED_ACT = {relu = "relu", relu6 = "relu6"}
local function fused_act_name(act)
  if act == nil then return nil end
  if type(act) == "string" then return FUSED_ACT[act] or false end
  local layers = require "vtl.nn.layers"
  local cls = getmetatable(act)
  if (cls ~= layers.ReLU and cls ~= layers.ReLU6) or rawget(act, "_forward_hooks") and act._forward_hooks[1] then
    return false
  end
  return cls == layers.ReLU and "relu" or "relu6"
end

---act(norm(x) + add): a normalisation module, then (add, optional) a tensor added, then (act,
---optional) an activation module or one of F's activation names. When norm is a BatchNorm, act
---relu or relu6 (nn.ReLU, nn.ReLU6, "relu", "relu6"), add has the output's shape and dtype, no
---forward hook is on either module and the profiler is off, the three run as one batch-norm pass
---(F.batch_norm's add and act); otherwise (or with VTL_NORM_ACT=0 in the environment) one after
---the other. The residual blocks of the zoo models call it.
---@param norm vtl.nn.Module
---@param act vtl.nn.Module|string|nil
---@param x vtl.Tensor
---@param add vtl.Tensor|nil
---@return vtl.Tensor
function M.norm_act(norm, act, x, add)
  if not is_module(norm) then error("norm_act: norm must be a module, got " .. type(norm), 2) end
  if not core.is_tensor(x) then error("norm_act: x must be a tensor, got " .. type(x), 2) end
  if add ~= nil and not core.is_tensor(add) then error("norm_act: add must be a tensor or nil, got " .. type(add), 2) end
  if type(act) == "string" then
    if type(F[act]) ~= "function" then error(("norm_act: unknown activation '%s'"):format(act), 2) end
  elseif act ~= nil and not is_module(act) then
    error("norm_act: act must be a module, an activation's name or nil, got " .. type(act), 2)
  end
  local name = fused_act_name(act)
  local bn_hooks = rawget(norm, "_forward_hooks")
  if FUSE and name ~= false and getmetatable(norm) and norm.forward == BatchNorm.forward and not (bn_hooks and bn_hooks[1])
     and not Module._profiling() and (add == nil or (add.dtype == x.dtype and same_shape(add, x))) then
    return norm:_normalize(x, {add = add, act = name})
  end
  local y = norm(x)
  if add ~= nil then y = y + add end
  if act == nil then return y end
  if type(act) == "string" then return F[act](y) end
  return act(y)
end

function BatchNorm:extra_repr()
  return ("%d, eps=%s, momentum=%s, affine=%s, track_running_stats=%s"):format(self.num_features, tostring(self.eps),
    tostring(self.momentum), tostring(self.affine), tostring(self.track_running_stats))
end

---nn.BatchNorm1d(num_features, {eps = 1e-5, momentum = 0.1, affine = true, track_running_stats = true}): (N,C) or (N,C,L).
---momentum = false keeps a cumulative average of the batch statistics (PyTorch's momentum=None).
local BatchNorm1d = BatchNorm:extend("BatchNorm1d")
M.BatchNorm1d = BatchNorm1d
BatchNorm1d._dims = {[2] = true, [3] = true, text = "2-D (N,C) or 3-D (N,C,L)"}

---nn.BatchNorm2d(num_features, {...}): (N,C,H,W).
local BatchNorm2d = BatchNorm:extend("BatchNorm2d")
M.BatchNorm2d = BatchNorm2d
BatchNorm2d._dims = {[4] = true, text = "4-D (N,C,H,W)"}

-- ---- layer norm ----

---nn.LayerNorm(normalized_shape, {eps = 1e-5, elementwise_affine = true, bias = true}): over the last dims.
local LayerNorm = Module:extend("LayerNorm")
M.LayerNorm = LayerNorm

function LayerNorm:init(normalized_shape, opts)
  local ns = type(normalized_shape) == "number" and {normalized_shape} or normalized_shape
  self.normalized_shape = ns
  self.eps = opt(opts, "eps", 1e-5)
  self.elementwise_affine = opt(opts, "elementwise_affine", true)
  if self.elementwise_affine then
    self:register_parameter("weight", core.ones(ns))
    if opt(opts, "bias", true) then self:register_parameter("bias", core.zeros(ns)) end
  end
end

function LayerNorm:forward(x)
  local ns = self.normalized_shape
  local k = #ns
  local ok = x.ndim >= k
  for i = 1, k do ok = ok and x.shape[x.ndim - k + i] == ns[i] end
  if not ok then
    self:raise("expected input whose last dims are {%s}, got shape %s", table.concat(ns, ","), shape_str(x))
  end
  return F.layer_norm(x, ns, self.weight, self.bias, {eps = self.eps})
end

function LayerNorm:extra_repr()
  return ("{%s}, eps=%s, elementwise_affine=%s"):format(table.concat(self.normalized_shape, ", "), tostring(self.eps),
    tostring(self.elementwise_affine))
end

-- ---- group norm ----

---nn.GroupNorm(num_groups, num_channels, {eps = 1e-5, affine = true}).
local GroupNorm = Module:extend("GroupNorm")
M.GroupNorm = GroupNorm

function GroupNorm:init(num_groups, num_channels, opts)
  if num_channels % num_groups ~= 0 then
    error(("GroupNorm: num_channels (%d) must be divisible by num_groups (%d)"):format(num_channels, num_groups), 3)
  end
  self.num_groups, self.num_channels = num_groups, num_channels
  self.eps = opt(opts, "eps", 1e-5)
  self.affine = opt(opts, "affine", true)
  if self.affine then
    self:register_parameter("weight", core.ones({num_channels}))
    self:register_parameter("bias", core.zeros({num_channels}))
  end
end

function GroupNorm:forward(x)
  if x.ndim < 2 then self:raise("expected input of shape (N, C, *), got %s", shape_str(x)) end
  if x.shape[2] ~= self.num_channels then
    self:raise("expected input with %d channels, got %d", self.num_channels, x.shape[2])
  end
  return F.group_norm(x, self.num_groups, self.weight, self.bias, {eps = self.eps})
end

function GroupNorm:extra_repr()
  return ("%d, %d, eps=%s, affine=%s"):format(self.num_groups, self.num_channels, tostring(self.eps), tostring(self.affine))
end

return M
