-- vtl.data: ImageFolder, TensorDataset, Subset, split, DataLoader.
local T = require "testlib"
local vtl = require "vtl"
local data = require "vtl.data"
local TF = require "vtl.transforms"
local test = T.test

local ROOT = os.tmpname()
os.remove(ROOT)

-- root/<class>/<file>: 3 classes (sorted: "ant", "bee", "cat"), 4, 2 and 3 images of distinct
-- sizes and colours; "cat" has a nested folder, and stray files that are not images.
local counts = {cat = 3, ant = 4, bee = 2}
local function make_tree()
  os.execute("mkdir -p '" .. ROOT .. "/cat/sub' '" .. ROOT .. "/ant' '" .. ROOT .. "/bee'")
  local k = 0
  for _, cls in ipairs {"ant", "bee", "cat"} do
    for j = 1, counts[cls] do
      k = k + 1
      local img = vtl.full({8 + j, 10 + j, 3}, k * 10, {dtype = "u8"})
      local dir = ROOT .. "/" .. cls .. ((cls == "cat" and j == 3) and "/sub" or "")
      vtl.image.save(string.format("%s/img%d.%s", dir, j, j % 2 == 0 and "jpg" or "png"), img)
    end
  end
  T.writefile(ROOT .. "/ant/notes.txt", "not an image")
  T.writefile(ROOT .. "/README", "top-level file")
end
make_tree()

test("ImageFolder: classes, class_to_idx, samples", function()
  local ds = data.ImageFolder(ROOT)
  T.eq(table.concat(ds.classes, ","), "ant,bee,cat")
  T.eq(ds.class_to_idx.ant, 1); T.eq(ds.class_to_idx.cat, 3)
  T.eq(#ds, 9)
  T.eq(ds.samples[1][1], ROOT .. "/ant/img1.png")
  T.eq(ds.samples[1][2], 1)
  T.eq(ds.samples[9][1], ROOT .. "/cat/sub/img3.png")
  T.eq(table.concat(ds.targets, ","), "1,1,1,1,2,2,3,3,3")
  local img, y = ds:get(5)
  T.eq(y, 2)
  T.eq(table.concat(img.shape, ","), "9,11,3")
  T.eq(img[1][1][1]:item(), 50)
  local only_png = data.ImageFolder(ROOT, {extensions = {".PNG"}})
  T.eq(#only_png, 5)
  T.raises(function() ds:get(10) end, "index 10 out of range 1..9")
  T.raises(function() data.ImageFolder(ROOT .. "/nope") end, "cannot list")
  T.raises(function() data.ImageFolder(ROOT .. "/ant") end, "no class folders")
  T.raises(function() data.ImageFolder(ROOT, {on_error = "ignore"}) end, "on_error")
end)

test("ImageFolder with a transform gives tensors the loader batches", function()
  local ds = data.ImageFolder(ROOT, {transform = TF.Compose {TF.Resize({8, 8}), TF.ToTensor()}})
  local loader = data.DataLoader(ds, {batch_size = 4})
  T.eq(#loader, 3)
  local sizes, targets, idx = {}, {}, {}
  for b in loader:iter(1) do
    sizes[#sizes + 1] = b.input.shape[1]
    T.eq(table.concat(b.input.shape, ",", 2), "3,8,8")
    T.eq(b.input.dtype, "f32"); T.eq(b.target.dtype, "i64"); T.eq(b.index.dtype, "i64")
    for _, v in ipairs(b.target:totable()) do targets[#targets + 1] = v end
    for _, v in ipairs(b.index:totable()) do idx[#idx + 1] = v end
  end
  T.eq(table.concat(sizes, ","), "4,4,1")
  T.eq(table.concat(targets, ","), "1,1,1,1,2,2,3,3,3")
  T.eq(table.concat(idx, ","), "1,2,3,4,5,6,7,8,9")
  local n = 0
  for _ in data.DataLoader(ds, {batch_size = 4, drop_last = true}):iter() do n = n + 1 end
  T.eq(n, 2)
end)

test("corrupt files: raise naming the file, or skip and count", function()
  local bad = ROOT .. "/bee/zz_broken.jpg"
  local good = T.readfile(ROOT .. "/bee/img2.jpg")
  T.writefile(bad, good:sub(1, #good // 2))
  local ok, err = pcall(function()
    local ds = data.ImageFolder(ROOT)
    T.eq(#ds, 10)
    T.raises(function() ds:get(7) end, "sample 7: image.load: " .. bad .. ": truncated JPEG")
    local tf = TF.Compose {TF.Resize({8, 8}), TF.ToTensor()}
    local skip = data.ImageFolder(ROOT, {on_error = "skip", transform = tf})
    T.eq(skip:get(7), nil)
    T.eq(skip.skipped, 1)
    local loader = data.DataLoader(skip, {batch_size = 3})
    local total = 0
    for b in loader:iter(1) do total = total + b.input.shape[1] end
    T.eq(total, 9)
    T.eq(loader.skipped, 1)
    local raising = data.ImageFolder(ROOT, {transform = tf})
    T.raises(function() for _ in data.DataLoader(raising, {batch_size = 3}):iter(1) do end end, bad)
    T.raises(function() for _ in data.DataLoader(ds, {batch_size = 3}):iter(1) do end end, "samples of different shapes")
  end)
  os.remove(bad)
  if not ok then error(err, 0) end
end)

test("TensorDataset and Subset", function()
  local x = vtl.arange(1, 21):view(10, 2):float()
  local y = vtl.tensor({1, 2, 1, 2, 1, 2, 1, 2, 3, 3}, {dtype = "i64"})
  local ds = data.TensorDataset(x, y)
  T.eq(#ds, 10)
  local xi, yi = ds:get(3)
  T.eq(table.concat(xi:totable(), ","), "5.0,6.0")
  T.eq(yi, 1)
  local sub = data.Subset(ds, {10, 2, 5})
  T.eq(#sub, 3)
  T.eq(table.concat(sub.targets, ","), "3,2,1")
  local xs = sub:get(1)
  T.eq(xs[1]:item(), 19)
  T.raises(function() data.TensorDataset(x, vtl.zeros(3)) end, "x has 10 samples but y has 3")
  T.raises(function() data.Subset(ds, {0}) end, "indices[1] = 0 out of range 1..10")
  T.raises(function() ds:get(11) end, "out of range")
  local b = data.DataLoader(ds, {batch_size = 4})
  local it = b:iter()
  local first = it()
  T.eq(table.concat(first.input.shape, ","), "4,2")
  T.eq(table.concat(first.target:totable(), ","), "1,2,1,2")
  local xonly = data.DataLoader(data.TensorDataset(x), {batch_size = 5}):iter()()
  T.eq(xonly.target, nil)
end)

test("split: sizes, disjoint, seeded, stratified", function()
  local n = 103
  local labels = {}
  for i = 1, n do labels[i] = (i % 3) + 1 end
  local ds = data.TensorDataset(vtl.arange(1, n + 1):float(), vtl.tensor(labels, {dtype = "i64"}))
  local a, b, c = table.unpack(data.split(ds, {0.7, 0.2, 0.1}, {seed = 1}))
  T.eq(#a + #b + #c, n)
  T.eq(#a, 73); T.eq(#b, 20); T.eq(#c, 10) -- floors 72, 20, 10; the remainder goes to the first
  local seen = {}
  for _, s in ipairs {a, b, c} do
    for _, i in ipairs(s.indices) do T.truthy(not seen[i], "index in two splits"); seen[i] = true end
  end
  local a2 = data.split(ds, {0.7, 0.2, 0.1}, {seed = 1})[1]
  T.eq(table.concat(a.indices, ","), table.concat(a2.indices, ","))
  local a3 = data.split(ds, {0.7, 0.2, 0.1}, {seed = 2})[1]
  T.truthy(table.concat(a.indices, ",") ~= table.concat(a3.indices, ","))
  local tr, va = table.unpack(data.split(ds, {0.8, 0.2}, {seed = 3, stratify = true}))
  local function counts_of(s)
    local cnt = {0, 0, 0}
    for _, t in ipairs(s.targets) do cnt[t] = cnt[t] + 1 end
    return cnt
  end
  local cv = counts_of(va)
  for k = 1, 3 do T.truthy(cv[k] >= 6 and cv[k] <= 7, "class " .. k .. " in val: " .. cv[k]) end
  T.eq(#tr + #va, n)
  local part = data.split(ds, {0.5}, {seed = 1})[1]
  T.eq(#part, 51)
  T.raises(function() data.split(ds, {0.8, 0.4}) end, "more than 1")
  T.raises(function() data.split(data.TensorDataset(vtl.zeros(4)), {0.5, 0.5}, {stratify = true}) end, "targets")
end)

test("DataLoader: shuffle is a permutation fixed by seed and epoch", function()
  local ds = data.TensorDataset(vtl.arange(1, 51):float(), vtl.arange(1, 51))
  local function order(seed, epoch)
    local o = {}
    for b in data.DataLoader(ds, {batch_size = 8, shuffle = true, seed = seed}):iter(epoch) do
      for _, v in ipairs(b.index:totable()) do o[#o + 1] = v end
      T.eq(table.concat(b.target:totable(), ","), table.concat(b.index:totable(), ","))
    end
    return o
  end
  local o = order(5, 1)
  T.eq(#o, 50)
  local seen = {}
  for _, v in ipairs(o) do seen[v] = true end
  for i = 1, 50 do T.truthy(seen[i], "missing " .. i) end
  T.eq(table.concat(order(5, 1), ","), table.concat(o, ","))
  T.truthy(table.concat(order(5, 2), ",") ~= table.concat(o, ","), "epochs differ")
  T.truthy(table.concat(order(6, 1), ",") ~= table.concat(o, ","), "seeds differ")
  T.raises(function() data.DataLoader(ds, {batch_size = 0}) end, "batch_size")
end)

test("DataLoader: per-sample random transforms are deterministic", function()
  local img = vtl.arange(0, 48):to("u8"):view(4, 4, 3)
  local x = vtl.stack({img, img, img, img, img, img, img, img})
  local ds = data.TensorDataset(x, nil, {transform = TF.Compose {TF.RandomHorizontalFlip(0.5), TF.ToTensor()}})
  local function run(bs)
    local out = {}
    for b in data.DataLoader(ds, {batch_size = bs, seed = 9}):iter(3) do
      for i = 1, b.input.shape[1] do out[#out + 1] = b.input[i][1][1][1]:item() end
    end
    return table.concat(out, ",")
  end
  T.eq(run(3), run(8), "same samples whatever the batch size")
  T.truthy(run(3):find("0.0", 1, true) and run(3):find(string.format("%.1f", 9 / 255):sub(1, 3), 1, true) ~= nil)
end)

test("cleanup", function() os.execute("rm -rf '" .. ROOT .. "'") end)
