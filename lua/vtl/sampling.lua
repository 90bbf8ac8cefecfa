-- vtl.data's class-aware sampling: per-class counts, k-shot subsets, and a weighted sampler
-- for imbalanced data. vtl.data merges these functions into itself.
--
-- A sampler is an object with `sampler:indices(epoch)` (a list of 1-based dataset indices,
-- a function of the sampler's seed and the epoch only) and `#sampler` (how many per epoch).
local vtl = require "vtl"

local M = {}

-- splitmix64-style mix of a few integers (the same as vtl.data.mix_seed)
local function mix(...)
  local h = 0x9E3779B97F4A7C15
  for _, v in ipairs {...} do
    h = h ~ v
    h = h + 0x9E3779B97F4A7C15
    h = (h ~ (h >> 30)) * -4658895280553007687
    h = (h ~ (h >> 27)) * -7723592293110705685
    h = h ~ (h >> 31)
  end
  return h
end

local function targets_of(fn, ds)
  if type(ds) ~= "table" then error(fn .. ": expected a dataset, got " .. type(ds), 3) end
  local t = ds.targets
  if type(t) ~= "table" then error(fn .. ": the dataset has no targets (a list of class numbers)", 3) end
  return t
end

local function num_classes_of(fn, ds, targets)
  local k = ds.classes and #ds.classes or 0
  for i, t in ipairs(targets) do
    if math.type(t) ~= "integer" or t < 1 then
      error(string.format("%s: targets[%d] = %s is not a class number (1..K)", fn, i, tostring(t)), 3)
    end
    if t > k then k = t end
  end
  return k
end

---Number of samples of each class: a list of K counts (K = #ds.classes, or the largest target).
---@return integer[]
function M.class_counts(ds)
  local targets = targets_of("class_counts", ds)
  local k = num_classes_of("class_counts", ds, targets)
  local counts = {}
  for c = 1, k do counts[c] = 0 end
  for _, t in ipairs(targets) do counts[t] = counts[t] + 1 end
  return counts
end

---A Subset with k samples of each class, chosen at random (seeded) within each class; the
---indices are in dataset order. opts: seed (0); allow_fewer (false: a class with fewer than k
---samples is an error; true: all of its samples are taken).
---@param k integer
---@param opts? {seed: integer, allow_fewer: boolean}
function M.sample_per_class(ds, k, opts)
  local fn = "sample_per_class"
  opts = opts or {}
  if math.type(k) ~= "integer" or k < 1 then error(fn .. ": k must be a positive integer, got " .. tostring(k), 2) end
  if type(opts) ~= "table" then error(fn .. ": opts must be a table", 2) end
  local seed = opts.seed or 0
  if math.type(seed) ~= "integer" then error(fn .. ": seed must be an integer", 2) end
  local targets = targets_of(fn, ds)
  local nk = num_classes_of(fn, ds, targets)
  local by_class = {}
  for c = 1, nk do by_class[c] = {} end
  for i, t in ipairs(targets) do local g = by_class[t]; g[#g + 1] = i end
  local chosen = {}
  for c = 1, nk do
    local g = by_class[c]
    if #g < k and not opts.allow_fewer then
      local name = ds.classes and ds.classes[c] and (" (" .. tostring(ds.classes[c]) .. ")") or ""
      error(string.format("%s: class %d%s has %d samples, fewer than k = %d (pass allow_fewer = true to take them all)",
        fn, c, name, #g, k), 2)
    end
    if #g > 0 then
      local perm = vtl.rand({#g}, {generator = vtl.Generator(mix(seed, c, 0x6b73))}):argsort():totable()
      for j = 1, math.min(k, #g) do chosen[#chosen + 1] = g[perm[j]] end
    end
  end
  table.sort(chosen)
  return require("vtl.data").Subset(ds, chosen)
end

---Per-sample weights that balance the classes: 1 / (count of the sample's class), so that each
---class has the same total weight (for WeightedRandomSampler).
---@return number[]
function M.class_balanced_weights(ds)
  local counts = M.class_counts(ds)
  local w = {}
  for i, t in ipairs(ds.targets) do w[i] = 1 / counts[t] end
  return w
end

local WeightedRandomSampler = {}
WeightedRandomSampler.__index = WeightedRandomSampler
WeightedRandomSampler.__len = function(self) return self.num_samples end
WeightedRandomSampler.__name = "vtl.data.WeightedRandomSampler"

---Draws num_samples indices i in 1..#weights with probability weights[i] / Σ weights (as
---torch.utils.data.WeightedRandomSampler). opts: replacement (true), seed (0). Without
---replacement, num_samples must not exceed the number of positive weights.
---@param weights number[]|vtl.Tensor
---@param num_samples integer
---@param opts? {replacement: boolean, seed: integer}
function M.WeightedRandomSampler(weights, num_samples, opts)
  local fn = "WeightedRandomSampler"
  opts = opts or {}
  if type(opts) ~= "table" then error(fn .. ": opts must be a table", 2) end
  if vtl.is_tensor(weights) then
    if weights.ndim ~= 1 then error(fn .. ": weights must be a 1-D tensor or a list of numbers", 2) end
    weights = weights:to("f64"):totable()
  end
  if type(weights) ~= "table" or #weights == 0 then error(fn .. ": weights must be a non-empty list of numbers", 2) end
  local cum, total, positive = {}, 0, 0
  for i, w in ipairs(weights) do
    if type(w) ~= "number" or w ~= w or w < 0 or w == math.huge then
      error(string.format("%s: weights[%d] = %s must be a finite non-negative number", fn, i, tostring(w)), 2)
    end
    total = total + w
    cum[i] = total
    if w > 0 then positive = positive + 1 end
  end
  if total <= 0 then error(fn .. ": the weights sum to 0", 2) end
  if math.type(num_samples) ~= "integer" or num_samples < 1 then
    error(fn .. ": num_samples must be a positive integer, got " .. tostring(num_samples), 2)
  end
  local replacement = opts.replacement
  if replacement == nil then replacement = true end
  if not replacement and num_samples > positive then
    error(string.format("%s: cannot draw %d samples without replacement from %d positive weights", fn, num_samples,
      positive), 2)
  end
  local seed = opts.seed or 0
  if math.type(seed) ~= "integer" then error(fn .. ": seed must be an integer", 2) end
  return setmetatable({weights = {table.unpack(weights)}, cum = cum, total = total, num_samples = num_samples,
                       replacement = replacement, seed = seed}, WeightedRandomSampler)
end

---The indices of an epoch (default 1): a function of (seed, epoch) only.
---@param epoch? integer
---@return integer[]
function WeightedRandomSampler:indices(epoch)
  epoch = epoch or 1
  if math.type(epoch) ~= "integer" then error("WeightedRandomSampler:indices: epoch must be an integer", 2) end
  local gen = vtl.Generator(mix(self.seed, epoch, 0x7773))
  local n, cum, out = #self.cum, self.cum, {}
  if self.replacement then
    -- inverse CDF: the first i with cum[i] > u * total
    local u = vtl.rand({self.num_samples}, {generator = gen, dtype = "f64"}):totable()
    for k = 1, self.num_samples do
      local x = u[k] * self.total
      local lo, hi = 1, n
      while lo < hi do
        local mid = (lo + hi) // 2
        if cum[mid] > x then hi = mid else lo = mid + 1 end
      end
      while self.weights[lo] == 0 and lo < n do lo = lo + 1 end -- never a zero-weight index
      out[k] = lo
    end
  else
    -- Efraimidis-Spirakis: the num_samples largest keys log(u) / w
    local u = vtl.rand({n}, {generator = gen, dtype = "f64"}):totable()
    local keys = {}
    for i = 1, n do
      local w = self.weights[i]
      keys[i] = w > 0 and math.log(u[i] > 0 and u[i] or 1e-300) / w or -math.huge
    end
    local order = vtl.tensor(keys, {dtype = "f64"}):argsort({descending = true}):totable()
    for k = 1, self.num_samples do out[k] = order[k] end
  end
  return out
end

return M
