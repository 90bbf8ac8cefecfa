-- vtl.data: datasets and a batch loader.
--
-- A dataset is a table with `#ds` (its length) and `ds:get(i [, generator])` returning
-- input, target for sample i (1-based); `ds.targets` (a list of 1-based class numbers) when
-- it has labels. Transforms receive the generator, so a sample's random augmentation is a
-- function of (seed, epoch, index) only.
--
--   local ds = data.ImageFolder("data/train", {transform = T.Compose{...}})
--   local loader = data.DataLoader(ds, {batch_size = 32, shuffle = true, seed = 1})
--   for batch in loader:iter(epoch) do ... batch.input, batch.target, batch.index ... end
local vtl = require "vtl"

local data = {}

-- file-backed datasets (IDXDataset, FashionMNIST, CSVDataset, parse_csv) and class-aware
-- sampling (class_counts, sample_per_class, class_balanced_weights, WeightedRandomSampler)
for _, m in ipairs {"vtl.datasets", "vtl.sampling"} do
  for k, v in pairs(require(m)) do data[k] = v end
end

local function len_of(ds) return #ds end

-- ---- ImageFolder ----

local ImageFolder = {}
ImageFolder.__index = ImageFolder
ImageFolder.__len = function(self) return #self.samples end
ImageFolder.__name = "vtl.data.ImageFolder"

local DEFAULT_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tga", ".ppm", ".pgm"}

local function has_ext(name, exts)
  local lower = name:lower()
  for _, e in ipairs(exts) do
    if lower:sub(-#e) == e:lower() then return true end
  end
  return false
end

local function sorted_entries(dir)
  local entries = vtl.image.listdir(dir)
  table.sort(entries, function(a, b) return a.name < b.name end)
  return entries
end

-- appends the files under dir (recursively, sorted) with an allowed extension
local function walk(dir, exts, out)
  for _, e in ipairs(sorted_entries(dir)) do
    local p = dir .. "/" .. e.name
    if e.dir then walk(p, exts, out)
    elseif has_ext(e.name, exts) then out[#out + 1] = p end
  end
end

---Images in root/<class>/<file> (torchvision's ImageFolder): classes are the sorted folder
---names, class numbers 1-based. opts: transform (called as transform(img, generator)),
---extensions (list, default common image types), channels (default 3), on_error "raise"
---(default) or "skip" (get returns nil and counts ds.skipped).
---@param root string
---@param opts? table
function data.ImageFolder(root, opts)
  opts = opts or {}
  if type(root) ~= "string" then error("ImageFolder: root must be a path string", 2) end
  local on_error = opts.on_error or "raise"
  if on_error ~= "raise" and on_error ~= "skip" then
    error("ImageFolder: on_error must be \"raise\" or \"skip\", got " .. tostring(on_error), 2)
  end
  local exts = opts.extensions or DEFAULT_EXT
  local ok, entries = pcall(sorted_entries, root)
  if not ok then error("ImageFolder: cannot list " .. root .. ": " .. tostring(entries), 2) end
  local classes, class_to_idx, samples, targets = {}, {}, {}, {}
  for _, e in ipairs(entries) do
    if e.dir then
      classes[#classes + 1] = e.name
      class_to_idx[e.name] = #classes
    end
  end
  if #classes == 0 then error("ImageFolder: no class folders found in " .. root, 2) end
  for k, cls in ipairs(classes) do
    local files = {}
    walk(root .. "/" .. cls, exts, files)
    for _, p in ipairs(files) do
      samples[#samples + 1] = {p, k}
      targets[#targets + 1] = k
    end
  end
  if #samples == 0 then
    error("ImageFolder: no images with extensions " .. table.concat(exts, ", ") .. " found under " .. root, 2)
  end
  return setmetatable({root = root, classes = classes, class_to_idx = class_to_idx, samples = samples,
                       targets = targets, transform = opts.transform, channels = opts.channels or 3,
                       on_error = on_error, skipped = 0}, ImageFolder)
end

---Sample i: the (transformed) image and its class number; nil when the file cannot be decoded
---and on_error is "skip".
function ImageFolder:get(i, gen)
  local s = self.samples[i]
  if not s then error(string.format("ImageFolder: index %s out of range 1..%d", tostring(i), #self.samples), 2) end
  local ok, img = pcall(vtl.image.load, s[1], {channels = self.channels})
  if not ok then
    if self.on_error == "skip" then
      self.skipped = self.skipped + 1
      return nil
    end
    error(string.format("ImageFolder: sample %d: %s", i, tostring(img)), 2)
  end
  if self.transform then img = self.transform(img, gen) end
  return img, s[2]
end

-- ---- TensorDataset, Subset ----

local TensorDataset = {}
TensorDataset.__index = TensorDataset
TensorDataset.__len = function(self) return self.n end
TensorDataset.__name = "vtl.data.TensorDataset"

---Samples x[i], y[i] along the first dim of x (and y, when given: 1-based class numbers or any
---values). opts.transform is applied to x[i].
---@param x vtl.Tensor
---@param y? vtl.Tensor
function data.TensorDataset(x, y, opts)
  if not vtl.is_tensor(x) then error("TensorDataset: x must be a tensor", 2) end
  if x.ndim < 1 then error("TensorDataset: x must have at least one dim", 2) end
  local n = x.shape[1]
  local targets
  if y ~= nil then
    if not vtl.is_tensor(y) then error("TensorDataset: y must be a tensor", 2) end
    if y.ndim < 1 or y.shape[1] ~= n then
      error(string.format("TensorDataset: x has %d samples but y has %s", n, y.ndim < 1 and "none" or tostring(y.shape[1])), 2)
    end
    if y.ndim == 1 then targets = y:totable() end
  end
  return setmetatable({x = x, y = y, n = n, targets = targets, transform = opts and opts.transform}, TensorDataset)
end

function TensorDataset:get(i, gen)
  if math.type(i) ~= "integer" or i < 1 or i > self.n then
    error(string.format("TensorDataset: index %s out of range 1..%d", tostring(i), self.n), 2)
  end
  local xi = self.x[i]
  if self.transform then xi = self.transform(xi, gen) end
  if not self.y then return xi, nil end
  if self.targets then return xi, self.targets[i] end
  return xi, self.y[i]
end

local Subset = {}
Subset.__index = Subset
Subset.__len = function(self) return #self.indices end
Subset.__name = "vtl.data.Subset"

---The samples of ds at `indices` (a list of 1-based indices), in that order.
---@param indices integer[]
function data.Subset(ds, indices)
  if type(indices) ~= "table" then error("Subset: indices must be a list of integers", 2) end
  local n = len_of(ds)
  local targets = ds.targets and {} or nil
  for k, i in ipairs(indices) do
    if math.type(i) ~= "integer" or i < 1 or i > n then
      error(string.format("Subset: indices[%d] = %s out of range 1..%d", k, tostring(i), n), 2)
    end
    if targets then targets[k] = ds.targets[i] end
  end
  local groups
  if type(ds.groups) == "table" then
    groups = {}
    for k, i in ipairs(indices) do groups[k] = ds.groups[i] end
  end
  return setmetatable({dataset = ds, indices = {table.unpack(indices)}, targets = targets, classes = ds.classes,
                       groups = groups}, Subset)
end

function Subset:get(i, gen)
  local j = self.indices[i]
  if not j then error(string.format("Subset: index %s out of range 1..%d", tostring(i), #self.indices), 2) end
  return self.dataset:get(j, gen)
end

-- ---- seeds and permutations ----

-- splitmix64 finaliser: a well-mixed 64-bit value from a few integers
local function mix(...)
  local h = 0x9E3779B97F4A7C15
  for _, v in ipairs {...} do
    h = h ~ v
    h = h + 0x9E3779B97F4A7C15
    h = (h ~ (h >> 30)) * -4658895280553007687 -- 0xBF58476D1CE4E5B9
    h = (h ~ (h >> 27)) * -7723592293110705685 -- 0x94D049BB133111EB
    h = h ~ (h >> 31)
  end
  return h
end
data.mix_seed = mix

-- a random permutation of 1..n from a generator
local function permutation(n, gen)
  if n == 0 then return {} end
  return vtl.rand({n}, {generator = gen}):argsort():totable()
end

---Splits ds into Subsets with the given fractions (summing to at most 1; sizes are floors, the
---remainder going to the first splits while the fractions sum to 1, as torch's random_split).
---opts: seed (default 0), stratify (true: split each class separately, keeping class ratios;
---needs ds.targets).
---@param fractions number[]
---@return table[]
function data.split(ds, fractions, opts)
  opts = opts or {}
  if type(fractions) ~= "table" or #fractions == 0 then error("split: fractions must be a non-empty list", 2) end
  local total = 0
  for i, f in ipairs(fractions) do
    if type(f) ~= "number" or f < 0 then error("split: fractions[" .. i .. "] must be a non-negative number", 2) end
    total = total + f
  end
  if total > 1 + 1e-9 then error("split: fractions sum to " .. total .. " (more than 1)", 2) end
  local fill = math.abs(total - 1) < 1e-9
  local gen = vtl.Generator(mix(opts.seed or 0, 0x5317))
  local groups = {}
  if opts.stratify then
    if not ds.targets then error("split: stratify needs a dataset with targets", 2) end
    local by_class, order = {}, {}
    for i, t in ipairs(ds.targets) do
      if not by_class[t] then by_class[t] = {}; order[#order + 1] = t end
      local g = by_class[t]
      g[#g + 1] = i
    end
    table.sort(order)
    for _, t in ipairs(order) do groups[#groups + 1] = by_class[t] end
  else
    local all = {}
    for i = 1, len_of(ds) do all[i] = i end
    groups[1] = all
  end
  local parts = {}
  for k = 1, #fractions do parts[k] = {} end
  for _, g in ipairs(groups) do
    local perm = permutation(#g, gen)
    local n = #g
    local sizes, used = {}, 0
    for k, f in ipairs(fractions) do
      sizes[k] = math.floor(f * n)
      used = used + sizes[k]
    end
    if fill then
      local k = 1
      while used < n do
        sizes[k] = sizes[k] + 1
        used = used + 1
        k = k % #fractions + 1
      end
    end
    local pos = 0
    for k = 1, #fractions do
      local p = parts[k]
      for j = pos + 1, pos + sizes[k] do p[#p + 1] = g[perm[j]] end
      pos = pos + sizes[k]
    end
  end
  local out = {}
  for k = 1, #fractions do out[k] = data.Subset(ds, parts[k]) end
  return out
end

-- ---- DataLoader ----

local core = require "vtl.core"

-- fn(batch) -> batch for pin_memory loaders: with a CUDA device, the batch's tensors copied into
-- page-locked host memory (so that t:cuda{non_blocking = true} only queues the copy); without
-- one, the batch as it is. Replaceable.
function data.pin_memory_hook(batch)
  if not (core.cuda and core.cuda.is_available()) then return batch end
  for k, v in pairs(batch) do
    if core.is_tensor(v) then batch[k] = v:pin_memory() end
  end
  return batch
end

local DataLoader = {}
DataLoader.__index = DataLoader
DataLoader.__name = "vtl.data.DataLoader"
DataLoader.__len = function(self)
  local n = self.sampler and #self.sampler or len_of(self.dataset)
  if self.drop_last then return n // self.batch_size end
  return (n + self.batch_size - 1) // self.batch_size
end

---Batches of a dataset: {input = N×... (stacked inputs), target = i64 N (numbers) or stacked
---tensors, index = i64 N (1-based sample indices), group = list (when the dataset returns a
---third value per sample)}. opts: batch_size (1), shuffle (false), drop_last (false), seed (0),
---sampler (an object with sampler:indices(epoch) and #sampler, instead of shuffle),
---num_workers (0: batches are made in the calling thread; n: n worker threads, each with its
---own Lua state holding a copy of the dataset), prefetch (2: batches each worker may make ahead),
---batch_transform (fn(batch, generator) -> batch, e.g. MixUp; runs in the workers),
---pin_memory (hand each batch to data.pin_memory_hook: with a CUDA device its tensors move into
---page-locked memory, from which t:cuda{non_blocking = true} copies asynchronously).
---Every sample's generator derives from (seed, epoch, index) and a batch_transform's from
---(seed, epoch, batch number), so the batches do not depend on num_workers.
---@param opts? table
function data.DataLoader(ds, opts)
  opts = opts or {}
  local bs = opts.batch_size or 1
  if math.type(bs) ~= "integer" or bs < 1 then error("DataLoader: batch_size must be a positive integer", 2) end
  if type(ds) ~= "table" or type(ds.get) ~= "function" then error("DataLoader: expected a dataset (a table with get)", 2) end
  local nw = opts.num_workers or 0
  if math.type(nw) ~= "integer" or nw < 0 or nw > 256 then
    error("DataLoader: num_workers must be an integer between 0 and 256, got " .. tostring(nw), 2)
  end
  local prefetch = opts.prefetch or 2
  if math.type(prefetch) ~= "integer" or prefetch < 1 then
    error("DataLoader: prefetch must be a positive integer, got " .. tostring(prefetch), 2)
  end
  local seed = opts.seed or 0
  if math.type(seed) ~= "integer" then error("DataLoader: seed must be an integer, got " .. tostring(seed), 2) end
  local sampler = opts.sampler
  if sampler ~= nil and (type(sampler) ~= "table" or type(sampler.indices) ~= "function") then
    error("DataLoader: sampler must be an object with indices(epoch)", 2)
  end
  if sampler and opts.shuffle then error("DataLoader: give either shuffle or a sampler, not both", 2) end
  local bt = opts.batch_transform
  if bt ~= nil and not (type(bt) == "function" or (type(bt) == "table" and getmetatable(bt) and getmetatable(bt).__call)) then
    error("DataLoader: batch_transform must be callable", 2)
  end
  return setmetatable({dataset = ds, batch_size = bs, shuffle = opts.shuffle or false, sampler = sampler,
                       drop_last = opts.drop_last or false, seed = seed, num_workers = nw,
                       prefetch = prefetch, batch_transform = bt, pin_memory = opts.pin_memory or false,
                       skipped = 0}, DataLoader)
end

---The sample order of an epoch (a list of 1-based indices).
function DataLoader:order(epoch)
  epoch = epoch or 1
  if self.sampler then return self.sampler:indices(epoch) end
  local n = len_of(self.dataset)
  if self.shuffle then return permutation(n, vtl.Generator(mix(self.seed, epoch, 0x51))) end
  local o = {}
  for i = 1, n do o[i] = i end
  return o
end

local function collate(inputs, targets, indices, groups)
  local ok, input = pcall(vtl.stack, inputs)
  if not ok then
    error("DataLoader: cannot batch samples of different shapes (add a Resize or crop transform): " .. tostring(input), 3)
  end
  local batch = {input = input, index = vtl.tensor(indices, {dtype = "i64"})}
  if #targets > 0 then
    if #targets ~= #inputs then error("DataLoader: some samples have targets and some do not", 3) end
    if vtl.is_tensor(targets[1]) then batch.target = vtl.stack(targets)
    else batch.target = vtl.tensor(targets, {dtype = math.type(targets[1]) == "integer" and "i64" or "f32"}) end
  end
  if #groups > 0 then batch.group = groups end
  return batch
end

-- Batch k of an epoch plan {dataset, batches, epoch, seed, batch_transform}: the collated
-- batch and the number of samples the dataset skipped, or false when all were skipped. The
-- same function runs in the calling thread and in the workers.
function data._make_batch(plan, k)
  local ds, epoch, seed = plan.dataset, plan.epoch, plan.seed
  local inputs, targets, indices, groups, skipped = {}, {}, {}, {}, 0
  k = k + (plan.offset or 0)
  for _, i in ipairs(plan.batches[k]) do
    local x, y, g = ds:get(i, vtl.Generator(mix(seed, epoch, i)))
    if x == nil then skipped = skipped + 1
    else
      inputs[#inputs + 1] = x
      if y ~= nil then targets[#targets + 1] = y end
      if g ~= nil then groups[#groups + 1] = g end
      indices[#indices + 1] = i
    end
  end
  if #inputs == 0 then return {false, skipped} end
  local batch = collate(inputs, targets, indices, groups)
  if plan.batch_transform then batch = plan.batch_transform(batch, vtl.Generator(mix(seed, epoch, 0xB7, k))) end
  return {batch, skipped}
end

function DataLoader:plan(epoch)
  local order = self:order(epoch)
  local n, bs, batches = #order, self.batch_size, {}
  for pos = 0, n - 1, bs do
    if self.drop_last and n - pos < bs then break end
    local b = {}
    for k = pos + 1, math.min(pos + bs, n) do b[#b + 1] = order[k] end
    batches[#batches + 1] = b
  end
  return {dataset = self.dataset, batches = batches, epoch = epoch, seed = self.seed,
          batch_transform = self.batch_transform}
end

---Iterates the batches of epoch `epoch` (default 1): `for batch in loader:iter(epoch) do`.
---opts.start: the first batch number (default 1; a resumed epoch skips the batches it had
---done, which are the same ones). Samples a dataset skips (get returns nil) are left out and
---counted in loader.skipped, which holds the count of the last finished epoch. Leaving the
---loop early (break, error) stops the workers.
---@param epoch? integer
---@param opts? {start: integer}
function DataLoader:iter(epoch, opts)
  epoch = epoch or 1
  local start = opts and opts.start or 1
  if math.type(start) ~= "integer" or start < 1 then error("DataLoader:iter: start must be a positive integer", 2) end
  local plan = self:plan(epoch)
  plan.offset = math.min(start - 1, #plan.batches)
  local nb, k, skipped, done = #plan.batches - plan.offset, 0, 0, false
  local workers
  if self.num_workers > 0 and nb > 0 then
    workers = core.loader_start(plan, {workers = math.min(self.num_workers, nb), window = self.num_workers * self.prefetch,
                                       batches = nb, module = "vtl.data", fn = "_make_batch"})
  end
  local function finish()
    if done then return end
    done = true
    if workers then workers:close() end
    self.skipped = skipped
    if skipped > 0 then
      io.stderr:write(string.format("DataLoader: epoch %d: skipped %d unreadable sample%s\n", epoch, skipped,
        skipped == 1 and "" or "s"))
    end
  end
  local function step()
    while not done and k < nb do
      k = k + 1
      local r
      if workers then
        local ok, res = pcall(workers.next, workers)
        if not ok then
          workers:close()
          done = true
          error("DataLoader: worker: " .. tostring(res), 2)
        end
        r = res
      else
        r = data._make_batch(plan, k)
      end
      skipped = skipped + r[2]
      if r[1] then
        if self.pin_memory and data.pin_memory_hook then return data.pin_memory_hook(r[1]) end
        return r[1]
      end
    end
    finish()
    return nil
  end
  local closer = setmetatable({}, {__close = function() if workers and not done then done = true; workers:close() end end})
  return step, nil, nil, closer
end

return data
