-- The DataLoader's worker threads and the copying of Lua values between Lua states.
local T = require "testlib"
local vtl = require "vtl"
local core = require "vtl.core"
local data = require "vtl.data"
local TF = require "vtl.transforms"
local test = T.test

local ROOT = os.tmpname()
os.remove(ROOT)

-- root/<class>/<n>.png: 3 classes, 7 images each, of random content and sizes.
local function make_tree()
  local g = vtl.Generator(11)
  for c = 1, 3 do
    local dir = ROOT .. "/class" .. c
    os.execute("mkdir -p '" .. dir .. "'")
    for j = 1, 7 do
      local h, w = 20 + 3 * j, 24 + 2 * c
      local img = vtl.randint(0, 256, {h, w, 3}, {generator = g}):to("u8")
      vtl.image.save(string.format("%s/%02d.png", dir, j), img)
    end
  end
end
make_tree()

local function batches(loader, epoch)
  local out = {}
  for b in loader:iter(epoch) do out[#out + 1] = b end
  return out
end

local function same_batches(a, b, what)
  T.eq(#b, #a, what .. ": batch count")
  for i = 1, #a do
    T.eq(table.concat(b[i].input.shape, ","), table.concat(a[i].input.shape, ","), what .. ": shape of batch " .. i)
    T.truthy(a[i].input:eq(b[i].input):all():item(), what .. ": inputs of batch " .. i .. " differ")
    T.eq(table.concat(b[i].index:totable(), ","), table.concat(a[i].index:totable(), ","), what .. ": indices")
    T.eq(table.concat(b[i].target:totable(), ","), table.concat(a[i].target:totable(), ","), what .. ": targets")
  end
end

-- A random chain with a plain Lua function step that uses the generator and an upvalue.
local function random_chain()
  local scale = 0.5
  return TF.Compose {
    TF.Resize({16, 16}),
    TF.RandomHorizontalFlip(0.5),
    TF.RandomVerticalFlip(0.5),
    TF.ToTensor(),
    function(img, gen) return img * scale + vtl.rand({1}, {generator = gen}):item() end,
  }
end

test("batches are bit-identical with 0, 1 and 4 workers (ImageFolder, random transforms, shuffle)", function()
  local ds = data.ImageFolder(ROOT, {transform = random_chain()})
  local function run(nw, epoch)
    return batches(data.DataLoader(ds, {batch_size = 4, shuffle = true, seed = 7, num_workers = nw}), epoch)
  end
  local a = run(0, 1)
  T.eq(#a, 6)
  T.eq(a[6].input.shape[1], 1)
  same_batches(a, run(1, 1), "1 worker")
  same_batches(a, run(4, 1), "4 workers")
  -- another epoch gives another order and other augmentations, again the same for any worker count
  local e2 = run(0, 2)
  T.truthy(table.concat(e2[1].index:totable(), ",") ~= table.concat(a[1].index:totable(), ","), "epoch 2 has another order")
  same_batches(e2, run(3, 2), "3 workers, epoch 2")
end)

test("worker batches: prefetch window, drop_last, more workers than batches", function()
  local x = vtl.arange(0, 50):to("f32"):reshape({50, 1})
  local ds = data.TensorDataset(x, vtl.arange(1, 51))
  local l = data.DataLoader(ds, {batch_size = 8, drop_last = true, num_workers = 2, prefetch = 1})
  local got = batches(l)
  T.eq(#got, 6)
  T.eq(#l, 6)
  for k, b in ipairs(got) do
    T.eq(b.input[1][1]:item(), (k - 1) * 8)
    T.eq(b.target[8]:item(), k * 8)
  end
  local many = batches(data.DataLoader(ds, {batch_size = 25, num_workers = 8}))
  T.eq(#many, 2)
  T.eq(many[2].index[25]:item(), 50)
end)

test("batch_transform runs in the workers with a generator per (seed, epoch, batch)", function()
  local ds = data.TensorDataset(vtl.zeros({12, 2}), vtl.ones({12}):to("i64"))
  local bt = function(batch, gen)
    batch.input = batch.input + vtl.rand({1}, {generator = gen}):item()
    batch.extra = "mixed"
    return batch
  end
  local a = batches(data.DataLoader(ds, {batch_size = 4, seed = 3, batch_transform = bt}))
  local b = batches(data.DataLoader(ds, {batch_size = 4, seed = 3, batch_transform = bt, num_workers = 2}))
  same_batches(a, b, "batch_transform")
  T.eq(b[2].extra, "mixed")
  T.truthy(a[1].input[1][1]:item() ~= a[2].input[1][1]:item(), "each batch draws its own numbers")
end)

test("a sampler sets the order; groups returned by get are batched", function()
  local ds = {n = 10}
  ds.targets = {}
  for i = 1, 10 do ds.targets[i] = (i - 1) % 2 + 1 end
  function ds:get(i) return vtl.full({2}, i), self.targets[i], {site = i <= 5 and "a" or "b"} end
  setmetatable(ds, {__len = function(s) return s.n end})
  local sampler = setmetatable({}, {__len = function() return 4 end})
  function sampler:indices(epoch) return {10, 1, epoch, 7} end
  for _, nw in ipairs {0, 2} do
    local l = data.DataLoader(ds, {batch_size = 3, sampler = sampler, num_workers = nw})
    T.eq(#l, 2)
    local got = batches(l, 3)
    T.eq(table.concat(got[1].index:totable(), ","), "10,1,3")
    T.eq(table.concat(got[2].index:totable(), ","), "7")
    T.eq(got[1].group[1].site, "b")
    T.eq(got[1].group[2].site, "a")
    T.eq(#got[1].group, 3)
  end
  T.raises(function() data.DataLoader(ds, {sampler = 5}) end, "sampler must be an object with indices")
  T.raises(function() data.DataLoader(ds, {sampler = sampler, shuffle = true}) end, "either shuffle or a sampler")
end)

test("unreadable images are skipped and counted the same with workers", function()
  local dir = ROOT .. "_bad"
  os.execute("mkdir -p '" .. dir .. "/a' '" .. dir .. "/b'")
  vtl.image.save(dir .. "/a/1.png", vtl.zeros({4, 4, 3}, {dtype = "u8"}))
  T.writefile(dir .. "/a/2.jpg", "this is not a jpeg")
  T.writefile(dir .. "/b/3.png", "")
  vtl.image.save(dir .. "/b/4.png", vtl.ones({4, 4, 3}, {dtype = "u8"}))
  local ds = data.ImageFolder(dir, {on_error = "skip", transform = TF.ToTensor()})
  for _, nw in ipairs {0, 2} do
    local l = data.DataLoader(ds, {batch_size = 2, num_workers = nw})
    local got = batches(l)
    T.eq(#got, 2, "workers " .. nw)
    T.eq(got[1].index[1]:item(), 1)
    T.eq(got[2].index[1]:item(), 4)
    T.eq(l.skipped, 2)
  end
  local strict = data.ImageFolder(dir, {transform = TF.ToTensor()})
  T.raises(function() batches(data.DataLoader(strict, {batch_size = 2, num_workers = 2})) end, "2.jpg")
  os.execute("rm -rf '" .. dir .. "'")
end)

test("errors in a worker reach the loop with the sample's message and traceback", function()
  local ds = data.TensorDataset(vtl.zeros({8, 2}), nil, {transform = function(x, gen)
    if x:sum():item() == 0 then error("bad sample content") end
    return x
  end})
  local err = T.raises(function() batches(data.DataLoader(ds, {batch_size = 2, num_workers = 2})) end, "bad sample content")
  T.truthy(err:find("DataLoader: worker", 1, true), err)
  T.truthy(err:find("traceback", 1, true), "the worker's traceback is kept: " .. err)
  -- different shapes cannot be stacked: the collate error comes from the worker
  local ragged = {get = function(_, i) return vtl.zeros({i}), 1 end}
  setmetatable(ragged, {__len = function() return 4 end})
  T.raises(function() batches(data.DataLoader(ragged, {batch_size = 2, num_workers = 1})) end, "different shapes")
end)

test("datasets that cannot be sent to workers are refused with the place named", function()
  local ds = data.TensorDataset(vtl.zeros({4, 2}), nil, {transform = TF.Compose {function(x) return x end}})
  ds.log = io.stderr
  local l = data.DataLoader(ds, {batch_size = 2, num_workers = 2})
  T.raises(function() batches(l) end, "log: a FILE* cannot be sent to a loader worker")
  local co = data.TensorDataset(vtl.zeros({4, 2}))
  co.task = coroutine.create(function() end)
  T.raises(function() batches(data.DataLoader(co, {batch_size = 2, num_workers = 1})) end, "task: a thread cannot be sent")
  -- the same datasets still work without workers
  T.eq(#batches(data.DataLoader(ds, {batch_size = 2})), 2)
end)

test("bad DataLoader options are refused", function()
  local ds = data.TensorDataset(vtl.zeros({4, 2}))
  T.raises(function() data.DataLoader(ds, {num_workers = -1}) end, "num_workers must be an integer between 0 and 256")
  T.raises(function() data.DataLoader(ds, {num_workers = 1.5}) end, "num_workers")
  T.raises(function() data.DataLoader(ds, {prefetch = 0}) end, "prefetch must be a positive integer")
  T.raises(function() data.DataLoader(ds, {seed = "x"}) end, "seed must be an integer")
  T.raises(function() data.DataLoader(ds, {batch_transform = 3}) end, "batch_transform must be callable")
end)

-- threads of this process, from /proc (Linux)
local function thread_count()
  local p = io.open("/proc/self/status")
  if not p then return nil end
  local s = p:read("a")
  p:close()
  return tonumber(s:match("Threads:%s*(%d+)"))
end

test("leaving the loop early stops the workers; a finished epoch leaves no threads", function()
  local ds = data.TensorDataset(vtl.rand({64, 4}))
  local before = thread_count()
  for _ = 1, 3 do
    for b in data.DataLoader(ds, {batch_size = 2, num_workers = 3}):iter() do
      T.eq(b.input.shape[1], 2)
      break
    end
  end
  for _ in data.DataLoader(ds, {batch_size = 8, num_workers = 2}):iter() do end
  if before then T.eq(thread_count(), before, "threads after the loops") end
  -- an error inside the loop body also closes the workers
  local ok = pcall(function()
    for _ in data.DataLoader(ds, {batch_size = 2, num_workers = 2}):iter() do error("stop") end
  end)
  T.eq(ok, false)
  if before then T.eq(thread_count(), before, "threads after an error in the loop") end
end)

test("worker batches own their memory: tensors outlive the loader", function()
  local ds = data.TensorDataset(vtl.arange(0, 40):to("f32"):reshape({10, 4}))
  local kept = {}
  for b in data.DataLoader(ds, {batch_size = 5, num_workers = 2}):iter() do kept[#kept + 1] = b.input end
  collectgarbage(); collectgarbage()
  T.eq(kept[2][5][4]:item(), 39)
  T.eq(kept[1]:sum():item(), (19 * 20) / 2)
end)

-- ---- copying values between states ----

test("ship_copy: plain values, cycles, shared tables, metatables and functions with upvalues", function()
  local shared = {1, 2}
  local v = {a = 1, b = 2.5, c = "s\0x", d = true, e = shared, f = shared, [3] = "three", [2.5] = "float key"}
  v.self = v
  local counter = 10
  v.fn = function(x) return x + counter end
  local M = {}
  M.__index = M
  function M:twice() return 2 * self.n end
  v.obj = setmetatable({n = 21}, M)
  local c = core.ship_copy(v)
  T.truthy(c ~= v)
  T.eq(c.a, 1); T.eq(math.type(c.a), "integer"); T.eq(c.b, 2.5); T.eq(c.c, "s\0x"); T.eq(c.d, true)
  T.eq(c[3], "three"); T.eq(c[2.5], "float key")
  T.truthy(c.self == c, "cycle kept")
  T.truthy(c.e == c.f and c.e ~= shared, "shared table copied once")
  T.eq(c.fn(5), 15)
  T.eq(c.obj:twice(), 42)
  T.truthy(getmetatable(c.obj) ~= M)
end)

test("ship_copy: tensors are shared, not copied; modules and their functions by reference", function()
  local x = vtl.rand({3, 3})
  local c = core.ship_copy({x = x, mod = TF, f = vtl.image.hflip, g = vtl.Generator(5)})
  T.truthy(c.x ~= x)
  x[1][1] = 42
  T.eq(c.x[1][1]:item(), 42, "the copy shares the tensor's storage")
  T.truthy(c.mod == TF, "a loaded module is sent by name")
  T.truthy(c.f == vtl.image.hflip)
  T.eq(c.g:initial_seed(), 5)
  -- a tensor that requires grad travels as a plain view of the same data
  local w = vtl.rand({2}):requires_grad_()
  local cw = core.ship_copy(w)
  T.eq(cw.requires_grad, false)
  T.close(cw, w:detach(), 0)
end)

test("ship_copy: what cannot be sent is named", function()
  T.raises(function() core.ship_copy({a = {b = {io.stdout}}}) end, "a.b[1]: a FILE* cannot be sent")
  T.raises(function() core.ship_copy(coroutine.create(print)) end, "value: a thread cannot be sent")
  local deep = {}
  local cur = deep
  for _ = 1, 300 do cur.n = {}; cur = cur.n end
  T.raises(function() core.ship_copy(deep) end, "nested too deeply")
  local freed
  do
    local t <close> = vtl.zeros({2})
    freed = t
  end
  T.raises(function() core.ship_copy({freed}) end, "freed")
end)

test("MixUp/CutMix as a batch transform: the same soft targets with 0 and 2 workers", function()
  local g = vtl.Generator(2)
  local ds = data.TensorDataset(vtl.rand({24, 3, 8, 8}, {generator = g}), vtl.randint(1, 5, {24}, {generator = g}))
  local mix = TF.MixUpCutMix {mixup_alpha = 0.4, cutmix_alpha = 1.0, num_classes = 4, label_smoothing = 0.1}
  local a = batches(data.DataLoader(ds, {batch_size = 8, shuffle = true, seed = 5, batch_transform = mix}))
  local b = batches(data.DataLoader(ds, {batch_size = 8, shuffle = true, seed = 5, batch_transform = mix, num_workers = 2}))
  T.eq(#a, 3)
  for i = 1, 3 do
    T.eq(table.concat(a[i].target.shape, ","), "8,4")
    T.truthy(a[i].input:eq(b[i].input):all():item(), "inputs of batch " .. i)
    T.truthy(a[i].target:eq(b[i].target):all():item(), "soft targets of batch " .. i)
    T.close(a[i].target:sum(2), vtl.ones({8}), 1e-6)
  end
end)

test("pin_memory hands each batch to the GPU backend's hook (none: batches unchanged)", function()
  local ds = data.TensorDataset(vtl.rand({6, 2}))
  local plain = batches(data.DataLoader(ds, {batch_size = 3, pin_memory = true}))
  T.eq(#plain, 2)
  local seen = 0
  data.pin_memory_hook = function(b) seen = seen + 1; b.pinned = true; return b end
  local ok, got = pcall(batches, data.DataLoader(ds, {batch_size = 3, pin_memory = true, num_workers = 2}))
  data.pin_memory_hook = nil
  T.truthy(ok, tostring(got))
  T.eq(seen, 2)
  T.eq(got[2].pinned, true)
end)
