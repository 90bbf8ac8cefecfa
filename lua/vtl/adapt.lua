-- vtl.adapt: unsupervised domain adaptation. Labelled source batches and unlabelled target
-- batches train together so that the features stop telling the domains apart: DANN (Ganin et
-- al. 2016: a domain discriminator behind a gradient-reversal layer) or a multi-kernel Gaussian
-- MMD penalty (Long et al. 2015). Both are Learner callbacks; the Learner trains on the source.
--
--   local learn = vtl.train.Learner {model = model, train = source_ds, ...}
--   learn:add_callback(vtl.adapt.DANN {target = target_ds})      -- or vtl.adapt.MMDAlign {...}
--   learn:fit_one_cycle(5, 3e-3)
local vtl = require "vtl"
local core = require "vtl.core"
local F = require "vtl.nn.functional"
local autograd = require "vtl.autograd"

local M = {}

local function fail(msg, level) error(msg, (level or 1) + 1) end
local function is_module(m) return type(m) == "table" and type(m.parameters) == "function" end
local function is_loader(x) return type(x) == "table" and type(x.iter) == "function" and x.dataset ~= nil end
local function is_dataset(x) return type(x) == "table" and type(x.get) == "function" end
local function pooled(model, f) return model:forward_head(f, true) end

---Gradient reversal: identity forward; backward multiplies the gradient by -coeff.
---@param x vtl.Tensor
---@param coeff? number (1)
---@return vtl.Tensor
M.grad_reverse = autograd.grad_reverse

---DANN's schedule of the reversal coefficient: 2 / (1 + exp(-gamma * p)) - 1 for training
---progress p in [0, 1]; gamma defaults to 10.
---@param p number
---@param gamma? number
function M.grl_coeff(p, gamma)
  if type(p) ~= "number" or p ~= p then fail("grl_coeff: p must be a number in [0, 1]", 2) end
  gamma = gamma or 10
  if type(gamma) ~= "number" or gamma <= 0 then fail("grl_coeff: gamma must be a positive number", 2) end
  p = math.max(0, math.min(1, p))
  return 2 / (1 + math.exp(-gamma * p)) - 1
end

-- ---- a domain discriminator ----

local Discriminator = vtl.nn.Module:extend("DomainDiscriminator")
M.DomainDiscriminator = Discriminator

---DomainDiscriminator(in_features, {hidden = 256, layers = 2}): an MLP (Linear-ReLU x layers,
---then Linear to one logit) saying whether a feature vector comes from the target domain.
function Discriminator:init(in_features, opts)
  if math.type(in_features) ~= "integer" or in_features < 1 then
    error("DomainDiscriminator: in_features must be a positive integer", 3)
  end
  opts = opts or {}
  local hidden, layers = opts.hidden or 256, opts.layers or 2
  if math.type(hidden) ~= "integer" or hidden < 1 then error("DomainDiscriminator: hidden must be a positive integer", 3) end
  if math.type(layers) ~= "integer" or layers < 0 then error("DomainDiscriminator: layers must be a non-negative integer", 3) end
  local mods, cin = {}, in_features
  for _ = 1, layers do
    mods[#mods + 1] = vtl.nn.Linear(cin, hidden)
    mods[#mods + 1] = vtl.nn.ReLU()
    cin = hidden
  end
  mods[#mods + 1] = vtl.nn.Linear(cin, 1)
  self.net = vtl.nn.Sequential(mods)
end

function Discriminator:forward(x)
  if x.ndim ~= 2 then self:raise("expected N×features, got %d dims", x.ndim) end
  return self.net(x):view(-1)
end

-- ---- MMD ----

-- squared Euclidean distances between the rows of a (M×D) and b (N×D), M×N, clamped at 0
local function sqdist(a, b)
  local aa = (a * a):sum(2, {keepdim = true})
  local bb = (b * b):sum(2):unsqueeze(1)
  return (aa + bb - a:matmul(b:t()) * 2):clamp(0)
end
M.sqdist = sqdist

-- the lower median of the off-diagonal entries of a square distance matrix (no gradient)
local function offdiag_median(d)
  local n = d.shape[1]
  local mask = core.eye(n, {dtype = "bool", device = d.device}):logical_not()
  local v = d:detach():masked_select(mask):sort()
  return v[(v:numel() - 1) // 2 + 1]:item()
end

---Squared maximum mean discrepancy between samples x (M×D) and y (N×D) under a sum of Gaussian
---kernels exp(-|a - b|^2 / h_k), biased estimate mean(Kxx) + mean(Kyy) - 2 mean(Kxy). The
---bandwidths h_k = median * mul^(k - kernels // 2), k = 0..kernels-1, from the median squared
---distance of the pooled sample (opts.bandwidth: a fixed base instead); opts: kernels (5), mul (2).
---@param x vtl.Tensor
---@param y vtl.Tensor
---@param opts? {kernels: integer|nil, mul: number|nil, bandwidth: number|nil}
---@return vtl.Tensor
function M.mmd(x, y, opts)
  local fn = "mmd"
  if not core.is_tensor(x) or x.ndim ~= 2 then fail(fn .. ": x must be M×D", 2) end
  if not core.is_tensor(y) or y.ndim ~= 2 then fail(fn .. ": y must be N×D", 2) end
  if x.shape[2] ~= y.shape[2] then fail(("%s: x has %d features, y %d"):format(fn, x.shape[2], y.shape[2]), 2) end
  if x.shape[1] < 1 or y.shape[1] < 1 or x.shape[1] + y.shape[1] < 3 then fail(fn .. ": need at least 3 samples in all", 2) end
  opts = opts or {}
  local nk, mul = opts.kernels or 5, opts.mul or 2
  if math.type(nk) ~= "integer" or nk < 1 then fail(fn .. ": kernels must be a positive integer", 2) end
  if type(mul) ~= "number" or mul <= 0 then fail(fn .. ": mul must be a positive number", 2) end
  local m = x.shape[1]
  local z = core.cat({x, y}, 1)
  local d = sqdist(z, z)
  local base = opts.bandwidth
  if base ~= nil and (type(base) ~= "number" or base <= 0) then fail(fn .. ": bandwidth must be a positive number", 2) end
  base = base or offdiag_median(d)
  if base <= 0 then base = 1 end
  local k
  for j = 0, nk - 1 do
    local h = base * mul ^ (j - nk // 2)
    local kj = (d / -h):exp()
    k = k and k + kj or kj
  end
  local n = y.shape[1]
  local kxx = k:narrow(1, 1, m):narrow(2, 1, m):mean()
  local kyy = k:narrow(1, m + 1, n):narrow(2, m + 1, n):mean()
  local kxy = k:narrow(1, 1, m):narrow(2, m + 1, n):mean()
  return kxx + kyy - kxy * 2
end

-- ---- target batches alongside the source ----

local Stream = {}
Stream.__index = Stream

-- An endless supply of batches from a loader, epoch after epoch.
local function stream(loader)
  return setmetatable({loader = loader, epoch = 0}, Stream)
end

function Stream:next()
  for _ = 1, 2 do
    if self.it then
      local b = self.it()
      if b then return b end
    end
    self.epoch = self.epoch + 1
    self.it = self.loader:iter(self.epoch)
  end
  error("adapt: the target data gives no batches", 0)
end

local function as_loader(fn, x, batch_size, seed)
  if is_loader(x) then return x end
  if is_dataset(x) then return vtl.data.DataLoader(x, {batch_size = batch_size, shuffle = true, seed = seed}) end
  fail(fn .. ": target must be a dataset or a DataLoader", 3)
end

local Paired = {}
Paired.__index = Paired
Paired.__name = "vtl.adapt.PairedLoader"
Paired.__len = function(self) return #self.source end

---Source and target batches together: iter(epoch) yields source_batch, target_batch for each
---source batch of the epoch; the target loader restarts (next epoch) whenever it runs out.
---Datasets are wrapped in shuffling DataLoaders of opts.batch_size (32), opts.seed (0).
---@param source table a dataset or DataLoader
---@param target table a dataset or DataLoader
function M.PairedLoader(source, target, opts)
  opts = opts or {}
  local bs, seed = opts.batch_size or 32, opts.seed or 0
  if math.type(bs) ~= "integer" or bs < 1 then fail("PairedLoader: batch_size must be a positive integer", 2) end
  if math.type(seed) ~= "integer" then fail("PairedLoader: seed must be an integer", 2) end
  if not (is_loader(source) or is_dataset(source)) then fail("PairedLoader: source must be a dataset or a DataLoader", 2) end
  local src = as_loader("PairedLoader", source, bs, seed)
  local tgt = as_loader("PairedLoader", target, bs, seed + 7919)
  return setmetatable({source = src, target = tgt, dataset = src.dataset, tstream = stream(tgt)}, Paired)
end

function Paired:iter(epoch)
  local it = self.source:iter(epoch)
  return function()
    local b = it()
    if b == nil then return nil end
    return b, self.tstream:next()
  end
end

-- ---- the callbacks ----

-- The callbacks append a target batch to each source batch (before_batch), so that one forward
-- pass sees both and batch norm normalizes (and keeps running statistics of) the mixture, the
-- same at training and evaluation time; the Learner's loss sees only the source rows, and the
-- features of forward_features are recorded to align the two halves.
local function install(cb, learn, fn)
  local model = learn.model
  if type(model.forward_features) ~= "function" or type(model.forward_head) ~= "function" then
    error(fn .. ": the model needs forward_features and forward_head (every zoo model has them)", 0)
  end
  if not cb.tstream then
    cb.tstream = stream(as_loader(fn, cb.target, cb.batch_size or learn.batch_size, learn.seed + 7919))
  end
  local cls_ff = getmetatable(model).forward_features
  rawset(model, "forward_features", function(self, x)
    local f = cls_ff(self, x)
    cb.captured = f
    return f
  end)
  local loss_fn = learn.loss_fn
  cb.saved_loss_fn = loss_fn
  learn.loss_fn = function(out, y)
    if cb.ns and learn.model.training then out = out:narrow(1, 1, cb.ns) end
    return loss_fn(out, y)
  end
  if not cb.total then
    local total = 0
    for _, ph in ipairs(learn.phases or {{epochs = 1}}) do total = total + ph.epochs * learn.n_batches end
    cb.total, cb.seen = math.max(total, 1), 0
  end
end

local function uninstall(cb, learn)
  rawset(learn.model, "forward_features", nil)
  if cb.saved_loss_fn then learn.loss_fn = cb.saved_loss_fn end
  cb.captured, cb.ns, cb.saved_loss_fn = nil, nil, nil
end

local function append_target(cb, batch)
  local tb = cb.tstream:next()
  cb.ns = batch.input.shape[1]
  local ti = tb.input
  if ti.device ~= batch.input.device then ti = ti:to(batch.input.device) end -- the Learner's device
  batch.input = core.cat({batch.input, ti}, 1)
end

-- source and target features of the current (combined) batch; learn.pred keeps the source rows
local function features(cb, learn)
  local f = pooled(learn.model, cb.captured)
  local ns = cb.ns
  learn.pred = learn.pred:narrow(1, 1, ns)
  local fs, ft = f:narrow(1, 1, ns), f:narrow(1, ns + 1, f.shape[1] - ns)
  cb.ns = nil
  return fs, ft
end

local function check_common(fn, opts)
  if type(opts) ~= "table" then fail(fn .. ": expected an options table {target = dataset, ...}", 3) end
  if not (is_loader(opts.target) or is_dataset(opts.target)) then fail(fn .. ": target must be a dataset or a DataLoader", 3) end
  local w = opts.weight or 1
  if type(w) ~= "number" or w < 0 then fail(fn .. ": weight must be a non-negative number", 3) end
  if opts.batch_size ~= nil and (math.type(opts.batch_size) ~= "integer" or opts.batch_size < 1) then
    fail(fn .. ": batch_size must be a positive integer", 3)
  end
  return w
end

---DANN as a Learner callback: each training batch also draws a batch of opts.target (a dataset or
---loader; its labels, if any, are ignored), and adds weight (1) * BCE of a domain discriminator
---on the pooled features of both, seen through a gradient-reversal layer whose coefficient rises
---as grl_coeff(progress, gamma (10)). The discriminator (opts.discriminator, else a
---DomainDiscriminator{hidden = opts.hidden or 256}) trains with its own Adam at opts.lr (1e-3).
---@param opts {target: table, weight: number|nil, gamma: number|nil, discriminator: vtl.nn.Module|nil, hidden: integer|nil, lr: number|nil, batch_size: integer|nil}
function M.DANN(opts)
  local w = check_common("DANN", opts)
  local gamma = opts.gamma or 10
  if type(gamma) ~= "number" or gamma <= 0 then fail("DANN: gamma must be a positive number", 2) end
  if opts.discriminator ~= nil and not is_module(opts.discriminator) then fail("DANN: discriminator must be an nn.Module", 2) end
  local lr = opts.lr or 1e-3
  if type(lr) ~= "number" or lr <= 0 then fail("DANN: lr must be a positive number", 2) end
  local cb = {name = "DANN", target = opts.target, weight = w, gamma = gamma, disc = opts.discriminator,
              hidden = opts.hidden or 256, lr = lr, batch_size = opts.batch_size}
  function cb:before_fit(learn) install(self, learn, "DANN") end
  function cb:before_batch(_, batch) append_target(self, batch) end
  function cb:after_fit(learn) uninstall(self, learn) end
  function cb:after_loss(learn)
    local fs, ft = features(self, learn)
    if not self.disc then self.disc = M.DomainDiscriminator(fs.shape[2], {hidden = self.hidden}) end
    if self.disc:parameters()[1].device ~= fs.device then self.disc:to(fs.device) end
    if not self.opt then self.opt = vtl.optim.Adam(self.disc:parameters(), {lr = self.lr}) end
    self.disc:train()
    self.coeff = M.grl_coeff(self.seen / self.total, self.gamma)
    self.seen = self.seen + 1
    local z = M.grad_reverse(core.cat({fs, ft}, 1), self.coeff)
    local logits = self.disc(z)
    local lo = {device = logits.device}
    local labels = core.cat({core.zeros({fs.shape[1]}, lo), core.ones({ft.shape[1]}, lo)})
    local dl = F.binary_cross_entropy_with_logits(logits, labels)
    self.domain_loss = dl:item()
    self.domain_acc = logits:gt(0):float():eq(labels):float():mean():item()
    learn.loss = learn.loss + dl * self.weight
  end
  function cb:after_step()
    if self.opt then
      self.opt:step()
      self.opt:zero_grad()
    end
  end
  return cb
end

---MMD alignment as a Learner callback: each training batch also draws a batch of opts.target and
---adds weight (1) * mmd(source features, target features, {kernels = opts.kernels or 5}) on the
---pooled features.
---@param opts {target: table, weight: number|nil, kernels: integer|nil, batch_size: integer|nil}
function M.MMDAlign(opts)
  local w = check_common("MMDAlign", opts)
  local nk = opts.kernels or 5
  if math.type(nk) ~= "integer" or nk < 1 then fail("MMDAlign: kernels must be a positive integer", 2) end
  local cb = {name = "MMDAlign", target = opts.target, weight = w, kernels = nk, batch_size = opts.batch_size}
  function cb:before_fit(learn) install(self, learn, "MMDAlign") end
  function cb:before_batch(_, batch) append_target(self, batch) end
  function cb:after_fit(learn) uninstall(self, learn) end
  function cb:after_loss(learn)
    local fs, ft = features(self, learn)
    self.seen = self.seen + 1
    local l = M.mmd(fs, ft, {kernels = self.kernels})
    self.mmd = l:item()
    learn.loss = learn.loss + l * self.weight
  end
  return cb
end

return M
