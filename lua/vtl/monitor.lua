-- vtl.monitor: has the data the model sees in production drifted from what it was built on?
-- A reference profile of a dataset (pixel statistics per channel, the model's embeddings,
-- predicted classes and confidences) and scores of new data against it: population stability
-- index per feature, MMD of embeddings with a permutation p-value, KL divergence of the
-- predicted-class distribution, each with a threshold.
--
--   local prof = vtl.monitor.fit_profile(valid_ds, {model = model})
--   local s = prof:score(new_ds)
--   if s.drift then print(s.text) end
local vtl = require "vtl"
local core = require "vtl.core"
local F = require "vtl.nn.functional"

local M = {}

local function fail(msg, level) error(msg, (level or 1) + 1) end
local function is_module(m) return type(m) == "table" and type(m.parameters) == "function" end

M.thresholds = {psi = 0.2, mmd_p = 0.05, kl = 0.1}
local EPS = 1e-4

local function as_list(fn, v, what)
  if core.is_tensor(v) then return v:reshape({-1}):double():totable() end
  if type(v) == "table" then
    for i, x in ipairs(v) do
      if type(x) ~= "number" then fail(("%s: %s[%d] is not a number"):format(fn, what, i), 3) end
    end
    return v
  end
  fail(fn .. ": " .. what .. " must be a list of numbers or a tensor", 3)
end

---Population stability index of two histograms given as counts (or fractions) over the same
---bins: sum_i (a_i - e_i) * ln(a_i / e_i) with the fractions floored at 1e-4 (empty bins).
---Below 0.1 is usually read as stable, 0.1-0.25 as a moderate shift, above 0.25 as a major one.
---@param expected number[]|vtl.Tensor reference counts
---@param actual number[]|vtl.Tensor new counts
function M.psi_counts(expected, actual)
  local e, a = as_list("psi_counts", expected, "expected"), as_list("psi_counts", actual, "actual")
  if #e ~= #a or #e == 0 then fail("psi_counts: expected and actual must have the same, non-zero number of bins", 2) end
  local se, sa = 0, 0
  for i = 1, #e do
    if e[i] < 0 or a[i] < 0 then fail("psi_counts: counts must be non-negative", 2) end
    se, sa = se + e[i], sa + a[i]
  end
  if se <= 0 or sa <= 0 then fail("psi_counts: a histogram is empty", 2) end
  local psi = 0
  for i = 1, #e do
    local pe, pa = math.max(e[i] / se, EPS), math.max(a[i] / sa, EPS)
    psi = psi + (pa - pe) * math.log(pa / pe)
  end
  return psi
end

-- bin edges at the reference quantiles (deciles for 10 bins), duplicates removed
local function quantile_edges(ref, bins)
  local s = {table.unpack(ref)}
  table.sort(s)
  local edges = {}
  for b = 1, bins - 1 do
    local q = s[math.max(1, math.min(#s, math.floor(b * #s / bins + 0.5)))]
    if #edges == 0 or q > edges[#edges] then edges[#edges + 1] = q end
  end
  return edges
end

-- counts of values in the bins (-inf, e1], (e1, e2], ..., (ek, inf)
local function bin_counts(values, edges)
  local c = {}
  for i = 1, #edges + 1 do c[i] = 0 end
  for _, v in ipairs(values) do
    local lo, hi = 1, #edges + 1
    while lo < hi do -- first edge >= v
      local mid = (lo + hi) // 2
      if edges[mid] >= v then hi = mid else lo = mid + 1 end
    end
    c[lo] = c[lo] + 1
  end
  return c
end
M._bin_counts, M._quantile_edges = bin_counts, quantile_edges

---PSI of new values against reference values of one feature, binned at the reference's
---quantiles (opts.bins, 10).
---@param ref number[]|vtl.Tensor
---@param new number[]|vtl.Tensor
---@param opts? {bins: integer|nil}
function M.psi(ref, new, opts)
  local r, n = as_list("psi", ref, "ref"), as_list("psi", new, "new")
  local bins = opts and opts.bins or 10
  if math.type(bins) ~= "integer" or bins < 2 then fail("psi: bins must be an integer >= 2", 2) end
  if #r == 0 or #n == 0 then fail("psi: ref and new must not be empty", 2) end
  local edges = quantile_edges(r, bins)
  return M.psi_counts(bin_counts(r, edges), bin_counts(n, edges))
end

---KL divergence KL(p || q) = sum p_i ln(p_i / q_i) of two distributions (counts or fractions,
---normalized here; both floored at 1e-4 before renormalizing so that empty classes stay finite).
---@param p number[]|vtl.Tensor
---@param q number[]|vtl.Tensor
function M.kl(p, q)
  local a, b = as_list("kl", p, "p"), as_list("kl", q, "q")
  if #a ~= #b or #a == 0 then fail("kl: p and q must have the same, non-zero length", 2) end
  local function norm(v)
    local s = 0
    for _, x in ipairs(v) do
      if x < 0 then fail("kl: values must be non-negative", 3) end
      s = s + x
    end
    if s <= 0 then fail("kl: a distribution sums to 0", 3) end
    local out, t = {}, 0
    for i, x in ipairs(v) do out[i] = math.max(x / s, EPS); t = t + out[i] end
    for i = 1, #out do out[i] = out[i] / t end
    return out
  end
  a, b = norm(a), norm(b)
  local kl = 0
  for i = 1, #a do kl = kl + a[i] * math.log(a[i] / b[i]) end
  return kl
end

---MMD two-sample test on x (M×D) and y (N×D): the squared MMD of vtl.adapt.mmd (multi-kernel
---Gaussian, median bandwidth) and its permutation p-value (1 + #{permuted >= observed}) / (1 +
---permutations). opts: permutations (200), seed (0), kernels (5).
---@return number mmd2, number p
function M.mmd_test(x, y, opts)
  local fn = "mmd_test"
  if not core.is_tensor(x) or x.ndim ~= 2 or not core.is_tensor(y) or y.ndim ~= 2 then
    fail(fn .. ": x and y must be M×D and N×D tensors", 2)
  end
  if x.shape[2] ~= y.shape[2] then fail(fn .. ": x and y differ in feature count", 2) end
  opts = opts or {}
  local B, seed, nk = opts.permutations or 200, opts.seed or 0, opts.kernels or 5
  if math.type(B) ~= "integer" or B < 1 then fail(fn .. ": permutations must be a positive integer", 2) end
  if math.type(seed) ~= "integer" then fail(fn .. ": seed must be an integer", 2) end
  if math.type(nk) ~= "integer" or nk < 1 then fail(fn .. ": kernels must be a positive integer", 2) end
  local adapt = require "vtl.adapt"
  local m, n = x.shape[1], y.shape[1]
  if m < 2 or n < 2 then fail(fn .. ": need at least 2 samples on each side", 2) end
  local guard <close> = core.no_grad()
  local z = core.cat({x, y}, 1):double()
  local d = adapt.sqdist(z, z)
  local N = m + n
  local mask = core.eye(N, {dtype = "bool"}):logical_not()
  local v = d:masked_select(mask):sort()
  local base = v[(v:numel() - 1) // 2 + 1]:item()
  if base <= 0 then base = 1 end
  local k
  for j = 0, nk - 1 do
    local kj = (d / -(base * 2 ^ (j - nk // 2))):exp()
    k = k and k + kj or kj
  end
  -- MMD^2 = a' K a with a = 1/m on the first sample, -1/n on the second; one column per permutation
  local g = core.Generator(seed)
  local cols = {}
  local w = {}
  for i = 1, N do w[i] = i <= m and 1 / m or -1 / n end
  cols[1] = w
  for b = 1, B do
    local p = core.rand({N}, {generator = g}):argsort(1):totable()
    local c = {}
    for i = 1, N do c[p[i]] = w[i] end
    cols[b + 1] = c
  end
  local A = core.tensor(cols, {dtype = "f64"}):t()                   -- N×(B+1)
  local stats = (k:matmul(A) * A):sum(1):totable()
  local obs, ge = stats[1], 0
  for b = 2, B + 1 do if stats[b] >= obs - 1e-12 then ge = ge + 1 end end
  return obs, (1 + ge) / (1 + B)
end

-- ---- profiles ----

local Profile = {}
Profile.__index = Profile
Profile.__name = "vtl.monitor.Profile"

local function loader_of(fn, ds, bs)
  if core.is_tensor(ds) then
    if ds.ndim ~= 4 then fail(fn .. ": a batch tensor must be N×C×H×W", 3) end
    ds = vtl.data.TensorDataset(ds)
  end
  if type(ds) == "table" and type(ds.iter) == "function" then return ds end
  if type(ds) ~= "table" or type(ds.get) ~= "function" then fail(fn .. ": expected a dataset, a DataLoader or an N×C×H×W tensor", 3) end
  return vtl.data.DataLoader(ds, {batch_size = bs})
end

-- per-image features, embeddings, predicted classes and confidences of up to `limit` samples
local function observe(model, dl, limit, num_classes)
  local feats, names, embs, counts, conf = {}, nil, {}, {}, {}
  for c = 1, num_classes or 0 do counts[c] = 0 end
  local n = 0
  local was = model and model.training
  if model then model:eval() end
  local guard <close> = core.no_grad()
  for b in dl:iter(1) do
    local x = b.input
    if x.ndim ~= 4 then error("monitor: inputs must be C×H×W images", 0) end
    local take = math.min(x.shape[1], limit - n)
    if take <= 0 then break end
    x = x:narrow(1, 1, take):float()
    local C = x.shape[2]
    if not names then
      names = {}
      for c = 1, C do names[#names + 1] = "mean_c" .. c end
      for c = 1, C do names[#names + 1] = "std_c" .. c end
      if model then names[#names + 1] = "confidence" end
    end
    local flat = x:reshape({take, C, -1})
    local mean, std = flat:mean(3):totable(), flat:std(3):totable()
    local cf
    if model then
      local fe = require("vtl.fewshot").embed(model, x)
      embs[#embs + 1] = fe
      local logits = (type(model.forward_head) == "function" and type(model.forward_features) == "function")
        and model(x) or fe
      local probs = F.softmax(logits, 2)
      local top = probs:max(2)
      cf = top:totable()
      local pred = probs:argmax(2):totable()
      for _, p in ipairs(pred) do counts[p] = (counts[p] or 0) + 1 end
    end
    for i = 1, take do
      local row = {}
      for c = 1, C do row[c] = mean[i][c] end
      for c = 1, C do row[C + c] = std[i][c] end
      if cf then row[2 * C + 1] = cf[i]; conf[#conf + 1] = cf[i] end
      feats[#feats + 1] = row
    end
    n = n + take
  end
  if model then model:train(was) end
  if n == 0 then error("monitor: the data gives no samples", 0) end
  return {features = feats, names = names, emb = #embs > 0 and core.cat(embs, 1) or nil, counts = counts,
          confidence = conf, n = n}
end

local function column(rows, j)
  local out = {}
  for i, r in ipairs(rows) do out[i] = r[j] end
  return out
end

---Fits a reference profile of a dataset (or loader, or N×C×H×W tensor): per-image pixel mean and
---standard deviation of each channel (bin edges at their deciles), and with opts.model its
---max-softmax confidence, the embeddings (pooled pre-logits features: mean, covariance and a
---sample for MMD), the predicted-class distribution and a confidence histogram. opts:
---model, max_samples (2000), mmd_samples (200), bins (10), batch_size (64), num_classes
---(the model's), thresholds ({psi = 0.2, mmd_p = 0.05, kl = 0.1}).
---@param ds table|vtl.Tensor
---@param opts? table
function M.fit_profile(ds, opts)
  local fn = "fit_profile"
  opts = opts or {}
  if type(opts) ~= "table" then fail(fn .. ": opts must be a table", 2) end
  if opts.model ~= nil and not is_module(opts.model) then fail(fn .. ": model must be an nn.Module", 2) end
  local maxn, ms, bins = opts.max_samples or 2000, opts.mmd_samples or 200, opts.bins or 10
  for k, v in pairs {max_samples = maxn, mmd_samples = ms} do
    if math.type(v) ~= "integer" or v < 2 then fail(fn .. ": " .. k .. " must be an integer >= 2", 2) end
  end
  if math.type(bins) ~= "integer" or bins < 2 then fail(fn .. ": bins must be an integer >= 2", 2) end
  local dl = loader_of(fn, ds, opts.batch_size or 64)
  local nc = opts.num_classes or (opts.model and opts.model.num_classes) or nil
  local ok, obs = pcall(observe, opts.model, dl, maxn, nc)
  if not ok then fail(fn .. ": " .. tostring(obs), 2) end
  local th = {}
  for k, v in pairs(M.thresholds) do th[k] = (opts.thresholds and opts.thresholds[k]) or v end
  local prof = setmetatable({model = opts.model, names = obs.names, bins = bins, n = obs.n, thresholds = th,
                             edges = {}, ref_counts = {}, mmd_samples = ms, batch_size = opts.batch_size or 64,
                             num_classes = nc}, Profile)
  for j, name in ipairs(obs.names) do
    local col = column(obs.features, j)
    local edges = quantile_edges(col, bins)
    prof.edges[name] = edges
    prof.ref_counts[name] = bin_counts(col, edges)
  end
  local fsum = {}
  for j = 1, #obs.names do
    local s = 0
    for _, r in ipairs(obs.features) do s = s + r[j] end
    fsum[obs.names[j]] = s / obs.n
  end
  prof.feature_means = fsum
  if obs.emb then
    local e = obs.emb
    prof.emb_mean = e:mean(1)
    local c = e - prof.emb_mean
    prof.emb_cov = c:t():matmul(c) / math.max(1, e.shape[1] - 1)
    prof.emb_sample = e:narrow(1, 1, math.min(ms, e.shape[1])):clone()
    prof.class_counts = obs.counts
    local hist = {}
    for i = 1, 10 do hist[i] = 0 end
    for _, v in ipairs(obs.confidence) do local b = math.min(10, math.floor(v * 10) + 1); hist[b] = hist[b] + 1 end
    prof.confidence_hist = hist
  end
  return prof
end

---Scores new data (a dataset, loader or N×C×H×W tensor) against the profile: {psi = {feature =
---PSI}, psi_max, psi_feature (the worst), mmd, mmd_p (permutation test of embedding samples),
---kl_class (KL(new || reference) of predicted classes), mean_confidence, flags = {psi, mmd, kl},
---drift (any flag), n, text}. A flag is raised when psi_max > thresholds.psi, mmd_p <
---thresholds.mmd_p or kl_class > thresholds.kl. opts: max_samples (2000), permutations (200), seed (0).
function Profile:score(ds, opts)
  local fn = "Profile:score"
  opts = opts or {}
  local dl = loader_of(fn, ds, self.batch_size)
  local maxn = opts.max_samples or 2000
  if math.type(maxn) ~= "integer" or maxn < 2 then fail(fn .. ": max_samples must be an integer >= 2", 2) end
  local ok, obs = pcall(observe, self.model, dl, maxn, self.num_classes)
  if not ok then fail(fn .. ": " .. tostring(obs), 2) end
  if #obs.names ~= #self.names then fail(fn .. ": the new data has a different number of channels than the reference", 2) end
  local res = {psi = {}, psi_max = 0, n = obs.n, flags = {}}
  for j, name in ipairs(self.names) do
    local p = M.psi_counts(self.ref_counts[name], bin_counts(column(obs.features, j), self.edges[name]))
    res.psi[name] = p
    if p > res.psi_max then res.psi_max, res.psi_feature = p, name end
  end
  res.flags.psi = res.psi_max > self.thresholds.psi
  if self.emb_sample and obs.emb then
    local y = obs.emb:narrow(1, 1, math.min(self.mmd_samples, obs.emb.shape[1]))
    if y.shape[1] >= 2 then
      res.mmd, res.mmd_p = M.mmd_test(self.emb_sample, y, {permutations = opts.permutations or 200, seed = opts.seed or 0})
      res.flags.mmd = res.mmd_p < self.thresholds.mmd_p
    end
    res.kl_class = M.kl(obs.counts, self.class_counts)
    res.flags.kl = res.kl_class > self.thresholds.kl
    local s = 0
    for _, v in ipairs(obs.confidence) do s = s + v end
    res.mean_confidence = s / #obs.confidence
  end
  res.drift = res.flags.psi or res.flags.mmd or res.flags.kl or false
  local lines = {("%d samples: PSI max %.3f (%s)%s"):format(res.n, res.psi_max, res.psi_feature or "-", res.flags.psi and " DRIFT" or "")}
  if res.mmd then
    lines[#lines + 1] = ("MMD^2 %.4f, permutation p = %.3f%s"):format(res.mmd, res.mmd_p, res.flags.mmd and " DRIFT" or "")
    lines[#lines + 1] = ("KL of predicted classes %.3f%s; mean confidence %.3f"):format(res.kl_class,
      res.flags.kl and " DRIFT" or "", res.mean_confidence)
  end
  res.text = table.concat(lines, "\n")
  return res
end

return M
