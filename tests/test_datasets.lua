-- vtl.io.load_idx, FashionMNIST/IDXDataset, CSVDataset, class-aware sampling, MixUp/CutMix
-- and the preview grid, against NumPy, Python's csv module, timm and scipy (fixtures by
-- tests/ref/gen_datasets.py).
local T = require "testlib"
local vtl = require "vtl"
local data = require "vtl.data"
local mixing = require "vtl.mixing"
local test = T.test

local FIX = os.getenv("VTL_FIXTURES") or "build/fixtures"
local DIR = FIX .. "/datasets/"
local ok_ref, ref = pcall(dofile, FIX .. "/datasets_ref.lua")
if not ok_ref then
  test("datasets fixtures", function()
    error("cannot load " .. FIX .. "/datasets_ref.lua; run .venv/bin/python tests/ref/gen_datasets.py " .. FIX, 0)
  end)
  return
end

local function maxdiff(a, b)
  T.eq(table.concat(a.shape, ","), table.concat(b.shape, ","), "shape")
  if a:numel() == 0 then return 0 end
  return (a:to("f64") - b:to("f64")):abs():max():item()
end

local function joined(t) return table.concat(t, ",") end

-- ---- IDX ----

test("load_idx: every element type, plain and gzip, as NumPy reads it", function()
  local want_dtype = {u8 = "u8", i8 = "i32", i16 = "i32", i32 = "i32", f32 = "f32", f64 = "f64", empty = "u8"}
  for _, c in ipairs(ref.idx) do
    local want = vtl.load(DIR .. c.npy)
    for _, suffix in ipairs {"", ".gz"} do
      local got = vtl.io.load_idx(DIR .. c.file .. suffix)
      local stem = c.npy:sub(1, -5)
      T.eq(got.dtype, want_dtype[stem], c.file .. suffix .. " dtype")
      T.eq(joined(got.shape), joined(c.shape), c.file .. suffix .. " shape")
      T.eq(maxdiff(got, want), 0, c.file .. suffix .. " values")
    end
  end
end)

test("load_idx: malformed files give an error naming the file, never a crash", function()
  for _, c in ipairs(ref.idx_bad) do
    local path = DIR .. c.file
    local ok, err = pcall(vtl.io.load_idx, path)
    T.truthy(not ok, c.file .. " should fail")
    T.truthy(tostring(err):find("load_idx: " .. path, 1, true), c.file .. ": error does not name the file: " .. tostring(err))
    T.truthy(tostring(err):find(c.err, 1, true), c.file .. ": expected '" .. c.err .. "' in: " .. tostring(err))
  end
  T.raises(function() vtl.io.load_idx(DIR .. "no_such_file.idx") end, "cannot open")
  T.raises(function() vtl.io.load_idx(DIR) end, "not a regular file")
  T.raises(function() vtl.io.load_idx() end, "load_idx: path (argument 1) must be a string, got no value")
  T.raises(function() vtl.io.load_idx(3) end, "must be a string, got number")
end)

-- ---- Fashion-MNIST ----

test("FashionMNIST: the Debian package's files as NumPy reads them", function()
  for _, split in ipairs {"train", "test"} do
    local r = ref.fmnist[split]
    T.truthy(r, "no reference for the " .. split .. " split (is dataset-fashion-mnist installed?)")
    local ds = data.FashionMNIST {split = split}
    T.eq(#ds, r.n)
    T.eq(#ds.classes, 10)
    T.eq(ds.classes[1], "T-shirt/top"); T.eq(ds.classes[10], "Ankle boot")
    T.eq(ds.class_to_idx["Sneaker"], 8)
    T.eq(joined(data.class_counts(ds)), joined(r.counts))
    for k = 1, 16 do
      T.eq(ds.targets[k], r.first_labels[k] + 1, split .. " first labels")
      T.eq(ds.targets[r.n - 16 + k], r.last_labels[k] + 1, split .. " last labels")
    end
    T.eq(ds.images:to("i64"):sum():item(), r.total, split .. " pixel sum")
    local k = 0
    for i = 1, r.n, r.step do
      k = k + 1
      local img = ds:get(i)
      T.eq(img:to("i64"):sum():item(), r.sums[k], split .. " image " .. i .. " sum")
    end
    local first, y = ds:get(1)
    T.eq(first.dtype, "u8"); T.eq(joined(first.shape), "28,28,1")
    T.eq(y, r.first_labels[1] + 1)
    T.eq(maxdiff(first:view(28, 28), vtl.load(DIR .. "fmnist_" .. split .. "_first.npy")), 0)
    T.eq(maxdiff(ds:get(r.n):view(28, 28), vtl.load(DIR .. "fmnist_" .. split .. "_last.npy")), 0)
  end
end)

test("FashionMNIST/IDXDataset: transforms, options and errors", function()
  local TF = require "vtl.transforms"
  local ds = data.FashionMNIST {split = "test", transform = TF.Compose {TF.Resize({32, 32}), TF.ToTensor()}}
  local x = ds:get(3)
  T.eq(x.dtype, "f32"); T.eq(joined(x.shape), "1,32,32")
  local loader = data.DataLoader(ds, {batch_size = 16})
  local b = loader:iter(1)()
  T.eq(joined(b.input.shape), "16,1,32,32")
  T.eq(b.target[1]:item(), ref.fmnist.test.first_labels[1] + 1)
  T.raises(function() data.FashionMNIST {split = "val"} end, "split must be \"train\" or \"test\", got val")
  T.raises(function() data.FashionMNIST {root = DIR .. "nowhere"} end, "train-images-idx3-ubyte(.gz) not found")
  T.raises(function() ds:get(0) end, "index 0 out of range 1..10000")
  T.raises(function() ds:get(10001) end, "out of range")
  -- generic pair, labels counted from 1, no labels
  local idx = DIR .. "u8.idx"
  local plain = data.IDXDataset(idx)
  T.eq(#plain, 4); T.eq(plain.targets, nil)
  T.eq(joined(plain:get(2).shape), "5,3,1")
  T.raises(function() data.IDXDataset(idx, DIR .. "i8.idx") end, "has 4 images but")
  T.raises(function() data.IDXDataset(DIR .. "f32.idx") end, "expected u8 images")
  T.raises(function() data.IDXDataset(DIR .. "bad_magic.idx") end, "IDXDataset: load_idx: " .. DIR .. "bad_magic.idx")
  T.raises(function() data.IDXDataset(idx, nil, {label_base = 0.5}) end, "label_base must be an integer")
  T.raises(function() data.IDXDataset(5) end, "images_path must be a path string, got number")
  T.raises(function() data.IDXDataset(idx, nil, {transform = 3}) end, "transform must be callable")
end)

-- ---- CSV ----

test("parse_csv: the rows Python's csv module wrote and reads back", function()
  local text = T.readfile(DIR .. "csvimg/labels.csv")
  local rows = data.parse_csv(text, ",", "labels.csv")
  T.eq(#rows, #ref.csv_rows)
  for r, want in ipairs(ref.csv_rows) do
    T.eq(#rows[r], #want, "row " .. r .. " field count")
    for c = 1, #want do T.eq(rows[r][c], want[c], string.format("row %d field %d", r, c)) end
  end
  -- line numbers count the newlines inside quoted fields
  T.eq(rows[1].line, 1); T.eq(rows[2].line, 2); T.eq(rows[4].line, 4); T.eq(rows[5].line, 6); T.eq(rows[6].line, 8)
  local semi = data.parse_csv(T.readfile(DIR .. "ints.csv"), ";")
  for r, want in ipairs(ref.csv_ints_rows) do T.eq(joined(semi[r]), joined(want)) end
  -- small cases: CR line ends, a missing last newline, blank lines, an empty quoted field, a BOM
  local rs = data.parse_csv("\239\187\191a,b\r1,\"\"\r\r\n2,3")
  T.eq(#rs, 3); T.eq(rs[1][1], "a"); T.eq(rs[2][2], ""); T.eq(rs[3][2], "3"); T.eq(rs[3].line, 4)
  T.eq(#data.parse_csv(""), 0)
  T.eq(joined(data.parse_csv("x,\n")[1]), "x,")
  T.eq(#data.parse_csv("x,\n")[1], 2)
  T.raises(function() data.parse_csv('a,b\n1,"2\n3,4', ",", "t.csv") end, "t.csv: line 2, column 3: unterminated quoted field")
  T.raises(function() data.parse_csv('a,b\n1,"2"x\n', ",", "t.csv") end, "line 2, column 6: unexpected character 'x'")
  T.raises(function() data.parse_csv('a,b\n"x\ny",2\n3,4"\n', ",", "t.csv") end, "line 4, column 4: quote inside an unquoted field")
  T.raises(function() data.parse_csv("a", "ab") end, "delimiter must be one character")
  T.raises(function() data.parse_csv(nil) end, "text must be a string")
end)

test("CSVDataset: names as labels, groups, images relative to the file", function()
  local csv = DIR .. "csvimg/labels.csv"
  local ds = data.CSVDataset(csv, {group_cols = {"site", "note, with comma"}})
  T.eq(#ds, 6)
  T.eq(joined(ds.classes), "bird,cat,dog")
  T.eq(joined(ds.targets), "2,3,2,1,3,1")
  T.eq(joined(data.class_counts(ds)), "2,2,2")
  for i = 1, 6 do
    local img, y, g = ds:get(i)
    T.eq(maxdiff(img, vtl.load(DIR .. "csvimg_" .. i .. ".npy")), 0, "image " .. i)
    T.eq(y, ds.targets[i])
    T.eq(g.site, ref.csv_rows[i + 1][3]); T.eq(g["note, with comma"], ref.csv_rows[i + 1][4])
    T.truthy(g == ds.groups[i])
  end
  T.eq(ds.groups[3].site, "north, east")
  local given = data.CSVDataset(csv, {classes = {"dog", "cat", "bird", "fish"}})
  T.eq(joined(given.targets), "2,1,2,3,1,3")
  T.eq(#given.classes, 4)
  T.eq(select(3, given:get(1)), nil)
  local sub = data.Subset(ds, {3, 1})
  T.eq(sub.groups[1].site, "north, east")
  local _, _, g = sub:get(1)
  T.eq(g.site, "north, east")
  local unlabelled = data.CSVDataset(csv, {label_col = false})
  T.eq(unlabelled.targets, nil)
  T.eq(select(2, unlabelled:get(1)), nil)
  local by_number = data.CSVDataset(csv, {path_col = 1, label_col = 2})
  T.eq(joined(by_number.targets), joined(ds.targets))
  T.raises(function() data.CSVDataset(csv, {label_col = 3}) end,
    "CSVDataset: " .. csv .. ": line 6, column 3 (site): empty label")
end)

test("CSVDataset: integer labels, label_base, delimiter, absolute paths", function()
  local csv = DIR .. "ints.csv"
  local ds = data.CSVDataset(csv, {path_col = "file", label_col = "y", group_cols = {"scanner"}, delimiter = ";"})
  local want = {}
  for i, v in ipairs(ref.csv_ints) do want[i] = v + 1 end
  T.eq(joined(ds.targets), joined(want))
  T.eq(joined(ds.classes), "0,1,2")
  T.eq(ds.groups[2].scanner, "s1")
  T.eq(maxdiff(ds:get(3), vtl.load(DIR .. "csvimg_3.npy")), 0)
  local one = data.CSVDataset(csv, {path_col = "file", label_col = "y", delimiter = ";", label_base = -1})
  T.eq(one.targets[1], ref.csv_ints[1] + 2)
  local names = data.CSVDataset(csv, {path_col = "file", label_col = "y", delimiter = ";", label_type = "names"})
  T.eq(joined(names.classes), "0,1,2")
  T.raises(function() data.CSVDataset(csv, {path_col = "file", label_col = "y", delimiter = ";", label_base = 1}) end,
    "line 3, column 2 (y): label 0 is outside 1.. (label_base 1)")
  T.raises(function() data.CSVDataset(csv, {path_col = "file", label_col = "y", delimiter = ";", classes = {"a", "b"}}) end,
    "label 2 is outside 0..1")
end)

test("CSVDataset: bad files and options give errors naming the file, line and column", function()
  local tmp = os.tmpname()
  local function with(text, opts)
    T.writefile(tmp, text)
    return data.CSVDataset(tmp, opts)
  end
  T.raises(function() with("") end, "CSVDataset: " .. tmp .. ": empty file (a header row is required)")
  T.raises(function() with("path,label\n") end, "no rows after the header")
  T.raises(function() with("path,label\na.png,1,extra\n") end, tmp .. ": line 2: 3 fields, the header has 2")
  T.raises(function() with("file,label\na.png,1\n") end, 'path_col "path" is not a column (header: file, label)')
  T.raises(function() with("path,label\na.png,1\n", {label_col = 5}) end, "label_col 5 is outside the 2 columns")
  T.raises(function() with("path,label\n,1\n") end, "line 2, column 1 (path): empty path")
  T.raises(function() with('path,label\n"a.png,1\n') end, tmp .. ": line 2, column 1: unterminated quoted field")
  T.raises(function() with("path,label\na.png,cat\n", {classes = {"dog"}}) end,
    'line 2, column 2 (label): label "cat" is not one of the given classes')
  T.raises(function() with("path,label\na.png,x\n", {label_type = "integers"}) end, 'label "x" is not an integer')
  T.raises(function() with("path,label\na.png,x\n", {label_type = "int"}) end, "label_type must be")
  T.raises(function() with("path,label\na.png,x\n", {group_cols = {"site"}}) end, 'group_cols[1] "site" is not a column')
  T.raises(function() with("path,label\na.png,x\n", {on_error = "ignore"}) end, "on_error must be")
  T.raises(function() data.CSVDataset(tmp .. ".missing") end, "CSVDataset: cannot open " .. tmp .. ".missing")
  T.raises(function() data.CSVDataset(42) end, "csv must be a path string, got number")
  -- an unreadable image: raise naming it, or skip and count
  local ds = with("path,label\nmissing.png,a\n" .. DIR .. "csvimg/a.png,b\n")
  T.raises(function() ds:get(1) end, "CSVDataset: sample 1: image.load:")
  T.raises(function() ds:get(3) end, "index 3 out of range 1..2")
  local skip = with("path,label\nmissing.png,a\n" .. DIR .. "csvimg/a.png,b\n", {on_error = "skip"})
  T.eq(skip:get(1), nil); T.eq(skip.skipped, 1)
  T.eq(select(2, skip:get(2)), 2)
  os.remove(tmp)
end)

-- ---- sampling ----

local function labelled(labels)
  local n = #labels
  return data.TensorDataset(vtl.arange(1, n + 1):float(), vtl.tensor(labels, {dtype = "i64"}))
end

test("class_counts and sample_per_class: k per class, seeded, uniform within a class", function()
  local labels = {}
  for i = 1, 200 do labels[i] = (i * 7) % 5 + 1 end
  for i = 201, 230 do labels[i] = 3 end
  local ds = labelled(labels)
  local counts = data.class_counts(ds)
  T.eq(joined(counts), "40,40,70,40,40")
  local sub = data.sample_per_class(ds, 6, {seed = 3})
  T.eq(#sub, 30)
  T.eq(joined(data.class_counts(sub)), "6,6,6,6,6")
  local seen = {}
  for k, i in ipairs(sub.indices) do
    T.truthy(not seen[i], "index twice"); seen[i] = true
    T.eq(sub.targets[k], labels[i])
    if k > 1 then T.truthy(i > sub.indices[k - 1], "indices in dataset order") end
  end
  T.eq(joined(data.sample_per_class(ds, 6, {seed = 3}).indices), joined(sub.indices))
  T.truthy(joined(data.sample_per_class(ds, 6, {seed = 4}).indices) ~= joined(sub.indices), "seeds differ")
  -- every sample of a class is equally likely: over seeds, the picks cover class 1 evenly
  local hits, class1 = {}, 0
  for i = 1, 200 do if labels[i] == 1 then hits[i] = 0; class1 = class1 + 1 end end
  for seed = 1, 200 do
    for _, i in ipairs(data.sample_per_class(ds, 4, {seed = seed}).indices) do
      if hits[i] then hits[i] = hits[i] + 1 end
    end
  end
  -- each class-1 sample is picked with probability 4/40 per seed: 20 expected of 200, sd 4.2
  for i, h in pairs(hits) do T.truthy(h >= 5 and h <= 38, "sample " .. i .. " picked " .. h .. " times of 200") end
  T.raises(function() data.sample_per_class(ds, 41) end, "class 1 has 40 samples, fewer than k = 41")
  T.eq(#data.sample_per_class(ds, 41, {allow_fewer = true}), 4 * 40 + 41)
  T.raises(function() data.sample_per_class(ds, 0) end, "k must be a positive integer")
  T.raises(function() data.sample_per_class(data.TensorDataset(vtl.zeros(3)), 1) end, "has no targets")
  T.raises(function() data.class_counts(5) end, "class_counts: expected a dataset, got number")
  local fm = data.sample_per_class(data.FashionMNIST {split = "test"}, 10, {seed = 1})
  T.eq(#fm, 100)
  T.eq(joined(data.class_counts(fm)), "10,10,10,10,10,10,10,10,10,10")
  T.eq(fm.classes[1], "T-shirt/top")
end)

test("WeightedRandomSampler: frequencies follow the weights (chi-squared), seeded per epoch", function()
  local w = {1, 0, 3, 0.5, 2.5, 1}
  local total = 8
  local s = data.WeightedRandomSampler(w, 20000, {seed = 7})
  T.eq(#s, 20000)
  local idx = s:indices(1)
  T.eq(#idx, 20000)
  local cnt = {0, 0, 0, 0, 0, 0}
  for _, i in ipairs(idx) do cnt[i] = cnt[i] + 1 end
  T.eq(cnt[2], 0, "a zero weight is never drawn")
  local chi2 = 0
  for i, wi in ipairs(w) do
    if wi > 0 then
      local e = 20000 * wi / total
      chi2 = chi2 + (cnt[i] - e) ^ 2 / e
    end
  end
  -- 4 degrees of freedom: P(chi2 > 18.47) = 0.001
  T.truthy(chi2 < 18.47, "chi-squared " .. chi2 .. " for counts " .. joined(cnt))
  T.eq(joined(s:indices(1)), joined(idx), "same epoch, same indices")
  T.truthy(joined(s:indices(2)) ~= joined(idx), "epochs differ")
  T.truthy(joined(data.WeightedRandomSampler(w, 20000, {seed = 8}):indices(1)) ~= joined(idx), "seeds differ")
  -- without replacement: distinct indices, the heavy ones first more often
  local nr = data.WeightedRandomSampler({1, 1, 1, 10, 0}, 4, {replacement = false, seed = 1})
  local first4 = 0
  for e = 1, 400 do
    local ix = nr:indices(e)
    T.eq(#ix, 4)
    local seen = {}
    for _, i in ipairs(ix) do T.truthy(not seen[i] and i ~= 5, "distinct, positive weight"); seen[i] = true end
    if ix[1] == 4 then first4 = first4 + 1 end
  end
  -- P(first draw = 4) = 10/13 = 0.77; 400 trials: sd 8.4
  T.truthy(first4 > 270 and first4 < 345, "index 4 first in " .. first4 .. " of 400 epochs")
  -- class-balanced weights on an imbalanced set: classes drawn about equally
  local labels = {}
  for i = 1, 300 do labels[i] = i <= 250 and 1 or (i <= 290 and 2 or 3) end
  local ds = labelled(labels)
  local bw = data.class_balanced_weights(ds)
  T.close(bw[1], 1 / 250, 1e-12); T.close(bw[300], 1 / 10, 1e-12)
  local per = {0, 0, 0}
  for _, i in ipairs(data.WeightedRandomSampler(bw, 9000, {seed = 2}):indices(1)) do per[labels[i]] = per[labels[i]] + 1 end
  local chi = 0
  for c = 1, 3 do chi = chi + (per[c] - 3000) ^ 2 / 3000 end
  T.truthy(chi < 13.8, "balanced classes: chi-squared " .. chi .. " for " .. joined(per)) -- 2 dof, p = 0.001
  T.raises(function() data.WeightedRandomSampler({}, 3) end, "weights must be a non-empty list")
  T.raises(function() data.WeightedRandomSampler({1, -1}, 3) end, "weights[2] = -1 must be a finite non-negative number")
  T.raises(function() data.WeightedRandomSampler({0, 0}, 3) end, "sum to 0")
  T.raises(function() data.WeightedRandomSampler({1, 2}, 0) end, "num_samples must be a positive integer")
  T.raises(function() data.WeightedRandomSampler({1, 0, 2}, 3, {replacement = false}) end,
    "cannot draw 3 samples without replacement from 2 positive weights")
  T.raises(function() s:indices(1.5) end, "epoch must be an integer")
  local tw = data.WeightedRandomSampler(vtl.tensor({0, 1}), 5)
  T.eq(joined(tw:indices(3)), "2,2,2,2,2")
end)

-- ---- MixUp / CutMix ----

test("MixUp/CutMix: timm's Mixup on the same batch, λ and box centre", function()
  local F = vtl.nn.functional
  T.eq(#ref.mix, 6)
  for _, c in ipairs(ref.mix) do
    local x = vtl.load(DIR .. "mix" .. c.k .. "_x.npy")
    local batch = {input = x, target = vtl.tensor(c.target, {dtype = "i64"}), index = vtl.arange(1, x.shape[1] + 1)}
    local m = mixing.MixUpCutMix {mixup_alpha = 1, cutmix_alpha = 1, num_classes = c.num_classes,
                                  label_smoothing = c.smoothing}
    local out, info = m:apply(batch, {lam = c.lam, cutmix = c.cutmix, cy = c.cy, cx = c.cx})
    local what = "case " .. c.k .. (c.cutmix and " (cutmix)" or " (mixup)")
    T.truthy(maxdiff(out.input, vtl.load(DIR .. "mix" .. c.k .. "_xm.npy")) <= 1e-6, what .. ": input")
    local ym = vtl.load(DIR .. "mix" .. c.k .. "_ym.npy")
    T.eq(out.target.dtype, "f32")
    T.truthy(maxdiff(out.target, ym) <= 1e-6, what .. ": soft targets")
    T.truthy(maxdiff(out.target:sum(2), vtl.ones({x.shape[1]})) <= 1e-6, what .. ": rows sum to 1")
    T.truthy(out.index == batch.index, "other fields kept")
    T.eq(info.lam_sampled, c.lam)
    if c.cutmix then
      local b = info.box
      T.close(info.lam, 1 - b.height * b.width / (x.shape[3] * x.shape[4]), 1e-12, what .. ": corrected λ")
      T.truthy(info.lam ~= c.lam or b.height * b.width == 0, what .. ": λ corrected")
    else
      T.eq(info.lam, c.lam)
    end
    -- soft targets go through cross_entropy as torch computes it
    local ce = F.cross_entropy(vtl.load(DIR .. "mix" .. c.k .. "_logits.npy"), out.target):item()
    T.close(ce, c.ce, 1e-5, what .. ": cross_entropy with probability targets")
  end
end)

test("CutMix box: clipped at the borders, λ from the area kept", function()
  -- centre at the corner: the box is cut by the image edges
  local box, lam = mixing.cutmix_box(10, 20, 0.75, 1, 1)
  -- cut 5×10 (√0.25 = 0.5), half sizes 2 and 5, centre (0, 0) 0-based: rows 0..2, cols 0..5
  T.eq(box.top, 1); T.eq(box.left, 1); T.eq(box.height, 2); T.eq(box.width, 5)
  T.close(lam, 1 - 10 / 200, 1e-15)
  box, lam = mixing.cutmix_box(10, 20, 0.75, 6, 11)
  T.eq(box.top, 4); T.eq(box.left, 6); T.eq(box.height, 4); T.eq(box.width, 10)
  T.close(lam, 0.8, 1e-15)
  box, lam = mixing.cutmix_box(10, 20, 1, 5, 5)
  T.eq(box.height * box.width, 0); T.eq(lam, 1)
end)

test("MixUp/CutMix sampling: λ ~ Beta(α, α) (scipy's CDF), switch and prob rates, seeded", function()
  for _, a in ipairs {0.2, 1.0, 2.0} do
    local gen = vtl.Generator(100 + math.floor(a * 10))
    local n, draws = 4000, {}
    for i = 1, n do draws[i] = mixing.beta(a, a, gen) end
    table.sort(draws)
    local want = ref.beta_cdf[a]
    local worst = 0
    for j, q in ipairs(ref.beta_grid) do
      local below = 0
      for _, v in ipairs(draws) do if v <= q then below = below + 1 else break end end
      worst = math.max(worst, math.abs(below / n - want[j]))
    end
    -- Kolmogorov-Smirnov at the grid points: 1.95 / √n is the 0.1% level
    T.truthy(worst < 1.95 / math.sqrt(n), string.format("alpha %g: max CDF difference %.4f", a, worst))
    T.truthy(draws[1] >= 0 and draws[n] <= 1)
  end
  local x = vtl.rand({4, 3, 8, 8})
  local batch = {input = x, target = vtl.tensor({1, 2, 3, 1}, {dtype = "i64"})}
  local m = mixing.MixUpCutMix {mixup_alpha = 0.8, cutmix_alpha = 1.0, switch_prob = 0.3, prob = 0.6, num_classes = 3}
  local gen = vtl.Generator(9)
  local mixed, cut, centres = 0, 0, {}
  for _ = 1, 2000 do
    local _, info = m(batch, gen)
    if info.lam_sampled ~= 1 then
      mixed = mixed + 1
      if info.cutmix then
        cut = cut + 1
        centres[#centres + 1] = info.cy
        T.truthy(info.cy >= 1 and info.cy <= 8 and info.cx >= 1 and info.cx <= 8)
      end
    end
  end
  -- mixed: Binomial(2000, 0.6), sd 22; cutmix among mixed: p = 0.3
  T.truthy(math.abs(mixed - 1200) < 90, "mixed " .. mixed .. " of 2000")
  T.truthy(math.abs(cut / mixed - 0.3) < 0.05, "cutmix share " .. cut / mixed)
  local rows = {0, 0, 0, 0, 0, 0, 0, 0}
  for _, cy in ipairs(centres) do rows[cy] = rows[cy] + 1 end
  for r = 1, 8 do T.truthy(rows[r] > #centres / 8 * 0.6, "centre row " .. r .. " drawn " .. rows[r] .. " times") end
  -- same generator state, same batch; unmixed batches still get (smoothed) soft targets
  local a1, i1 = m(batch, vtl.Generator(5))
  local a2, i2 = m(batch, vtl.Generator(5))
  T.eq(maxdiff(a1.input, a2.input), 0); T.eq(i1.lam_sampled, i2.lam_sampled)
  local never = mixing.MixUp {alpha = 1, num_classes = 3, prob = 0, label_smoothing = 0.3}
  local nb, ni = never(batch)
  T.truthy(nb.input == x); T.eq(ni.lam, 1)
  T.close(nb.target[1][1]:item(), 0.8, 1e-6); T.close(nb.target[1][2]:item(), 0.1, 1e-6)
  -- CutMix alone always cuts; MixUp alone never does; an odd batch works (the middle sample mixes with itself)
  local odd = {input = vtl.rand({3, 1, 6, 6}), target = vtl.tensor({1, 2, 3}, {dtype = "i64"})}
  local cb, ci = mixing.CutMix {alpha = 1, num_classes = 3}(odd, vtl.Generator(1))
  T.truthy(ci.cutmix)
  T.eq(maxdiff(cb.input[2], odd.input[2]), 0)
  T.close(cb.target[2][2]:item(), 1, 1e-6)
  local mb, mi = mixing.MixUp {alpha = 0.5, num_classes = 3}(odd, vtl.Generator(1))
  T.truthy(not mi.cutmix)
  T.truthy(maxdiff(mb.input[1], odd.input[1] * mi.lam + odd.input[3] * (1 - mi.lam)) < 1e-6)
  -- soft targets in: mixed as probabilities
  local soft = {input = odd.input, target = cb.target}
  local sb, si = mixing.MixUp {alpha = 1, num_classes = 3}(soft, vtl.Generator(2))
  T.truthy(maxdiff(sb.target[1], cb.target[1] * si.lam + cb.target[3] * (1 - si.lam)) < 1e-6)
end)

test("MixUp/CutMix: bad options and batches are clear errors", function()
  T.raises(function() mixing.MixUp {alpha = 1} end, "MixUp: num_classes must be a positive integer, got nil")
  T.raises(function() mixing.MixUp {alpha = 0, num_classes = 3} end, "MixUp: alpha must be positive")
  T.raises(function() mixing.CutMix {alpha = -1, num_classes = 3} end, "CutMix: alpha must be a number in [0, inf], got -1")
  T.raises(function() mixing.MixUpCutMix {mixup_alpha = 0, cutmix_alpha = 0, num_classes = 3} end, "must be positive")
  T.raises(function() mixing.MixUpCutMix {num_classes = 3, switch_prob = 2} end, "switch_prob must be a number in [0, 1]")
  T.raises(function() mixing.MixUp {num_classes = 3, label_smoothing = "x"} end, "label_smoothing must be a number")
  T.raises(function() mixing.MixUp(3) end, "MixUp: expected an options table")
  local m = mixing.MixUp {num_classes = 3}
  T.raises(function() m(5) end, "MixUp: expected a batch table")
  T.raises(function() m({input = vtl.rand({2, 3, 4})}) end, "batch.input must be a float N×C×H×W tensor, got f32 {2,3,4}")
  T.raises(function() m({input = vtl.rand({2, 1, 4, 4})}) end, "batch.target must be a tensor, got nil")
  T.raises(function() m({input = vtl.rand({2, 1, 4, 4}), target = vtl.tensor({1, 4}, {dtype = "i64"})}) end,
    "batch.target[2] = 4 is outside the classes 1..3")
  T.raises(function() m({input = vtl.rand({2, 1, 4, 4}), target = vtl.tensor({1, 2, 3}, {dtype = "i64"})}) end,
    "batch.input has 2 samples but batch.target has 3")
  T.raises(function() m({input = vtl.rand({2, 1, 4, 4}), target = vtl.rand({2, 4})}) end,
    "batch.target must be class numbers (N) or soft targets (N×3), got f32 {2,4}")
end)

-- ---- preview ----

test("preview: font table, text rendering", function()
  local P = require "vtl.preview"
  local n = 0
  for code = 32, 126 do
    local g = P.FONT[string.char(code)]
    T.truthy(g, "no glyph for " .. string.char(code))
    T.eq(#g, 7)
    for _, row in ipairs(g) do T.truthy(#row == 5 and not row:find("[^.#]"), "glyph " .. string.char(code)) end
    n = n + 1
  end
  T.eq(n, 95)
  T.eq(P.glyph("\200"), P.FONT["?"])
  -- ink pixels: the glyph's '#' count times scale², placed after the margin
  for _, s in ipairs {1, 3} do
    local img = P.render_text("A1", 40, {scale = s, pad = 2})
    T.eq(joined(img.shape), (7 * s + 4) .. ",40,3")
    local ink = 0
    for _, ch in ipairs {"A", "1"} do
      for _, row in ipairs(P.FONT[ch]) do for _ in row:gmatch("#") do ink = ink + 1 end end
    end
    T.eq((img:narrow(3, 1, 1):eq(0)):to("i64"):sum():item(), ink * s * s)
    T.eq(img:narrow(1, 1, 2):min():item(), 255, "top margin blank")
    -- top-left pixel of 'A' (row ".###.") is blank, the next one ink
    T.eq(img[3][3][1]:item(), 255); T.eq(img[3][3 + s][1]:item(), 0)
  end
  T.eq(P.render_text("WWWWWWWW", 20):eq(0):to("i64"):sum():item() // 3,
    P.render_text("WWW", 20):eq(0):to("i64"):sum():item() // 3, "text that does not fit is cut")
end)

test("preview: the grid's tiles are the samples, labelled, un-normalized", function()
  local P = require "vtl.preview"
  local TF = require "vtl.transforms"
  local path = os.tmpname() .. ".png"
  local ds = data.FashionMNIST {split = "test"}
  local grid, layout = P.preview(ds, 10, path, {cols = 4})
  local png = vtl.image.load(path)
  T.eq(joined(png.shape), joined(grid.shape))
  T.eq(maxdiff(png, grid), 0)
  -- 3 rows × 4 columns of 84×84 tiles (zoom 3) with an 11-pixel label strip, 2-pixel gaps
  T.eq(joined(png.shape), (3 * (84 + 11 + 2) + 2) .. "," .. (4 * (84 + 2) + 2) .. ",3")
  for k = 1, 10 do
    local e = layout[k]
    T.eq(e.index, k); T.eq(e.label, ds.classes[ds.targets[k]])
    local tile = png:narrow(1, e.top, e.height):narrow(2, e.left, e.width)
    local img = ds:get(k)
    for _, at in ipairs {{1, 1}, {14, 14}, {28, 28}, {5, 20}} do
      local want = img[at[1]][at[2]][1]:item()
      for dy = 0, 2 do
        T.eq(tile[(at[1] - 1) * 3 + 1 + dy][(at[2] - 1) * 3 + 1][2]:item(), want, "tile " .. k)
      end
    end
    local strip = png:narrow(1, e.label_top, 11):narrow(2, e.label_left, e.label_width)
    T.eq(maxdiff(strip, P.render_text(e.label, e.label_width)), 0, "label " .. k)
  end
  -- a normalized float chain: the tiles are the original pixels again (within rounding)
  local mean, std = {0.28}, {0.35}
  local fds = data.FashionMNIST {split = "test", transform = TF.Compose {TF.ToTensor(), TF.Normalize(mean, std)}}
  local sub = data.Subset(fds, {7, 3})
  local g2, l2 = P.preview(sub, 2, path, {zoom = 1})
  for k, i in ipairs {7, 3} do
    local e = l2[k]
    local tile = g2:narrow(1, e.top, e.height):narrow(2, e.left, e.width)
    T.truthy(maxdiff(tile:narrow(3, 1, 1), ds:get(i)) <= 1, "un-normalized tile " .. k)
  end
  local g3 = P.preview(sub, 2, path, {zoom = 1, mean = {0}, std = {1}})
  T.truthy(maxdiff(g3, g2) > 50, "explicit mean/std are used")
  -- random augmentation follows (seed, epoch, index) like the loader; repeats show later epochs
  local flip = data.FashionMNIST {split = "test", transform = TF.Compose {TF.RandomHorizontalFlip(0.5), TF.ToTensor()}}
  local _, l4 = P.preview(flip, 6, path, {indices = {1, 1, 1, 1, 1, 1}, zoom = 1, seed = 3, epoch = 2})
  local g4 = vtl.image.load(path)
  local mix = data.mix_seed
  for k = 1, 6 do
    local e = l4[k]
    local want = vtl.image.to_u8(flip:get(1, vtl.Generator(mix(3, 1 + k, 1))))
    T.eq(maxdiff(g4:narrow(1, e.top, 28):narrow(2, e.left, 28):narrow(3, 1, 1), want), 0, "epoch " .. (1 + k))
  end
  T.raises(function() P.preview(ds, 0, path) end, "preview: n must be a positive integer, got 0")
  T.raises(function() P.preview({}, 2, path) end, "preview: expected a dataset")
  T.raises(function() P.preview(ds, 2, 5) end, "preview: path must be a string, got number")
  T.raises(function() P.preview(sub, 3, path) end, "n = 3 but the dataset has 2 samples")
  T.raises(function() P.preview(ds, 2, path, {indices = {1, 0}}) end, "indices[2] = 0 out of range 1..10000")
  T.raises(function() P.preview(ds, 2, path, {mean = {0.5}}) end, "give both mean and std")
  T.raises(function() P.preview(data.TensorDataset(vtl.zeros(3, 4)), 1, path) end, "a float image must be C×H×W, got {4}")
  os.remove(path)
end)
