-- vtl.transforms beyond resize/crop/flip: the functional forms against torchvision on real photos
-- (fixtures by tests/ref/gen_transforms.py), parameter distributions of the random transforms
-- against torchvision's get_params, determinism, plain-data objects and argument errors.
local T = require "testlib"
local vtl = require "vtl"
local TF = require "vtl.transforms"
local image = vtl.image
local test = T.test

local FIX = os.getenv("VTL_FIXTURES") or "build/fixtures"
local DIR = FIX .. "/transforms/"

local ok_cases, cases = pcall(dofile, FIX .. "/transforms_ref.lua")
local ok_stats, stats = pcall(dofile, FIX .. "/transforms_stats.lua")
if not ok_cases or not ok_stats then
  test("transforms fixtures", function()
    error("cannot load " .. FIX .. "/transforms_ref.lua or transforms_stats.lua; run .venv/bin/python tests/ref/gen_transforms.py " .. FIX, 0)
  end)
  cases, stats = {}, {}
else
  test("transforms fixtures", function() T.truthy(#cases >= 200, "expected at least 200 cases, got " .. #cases) end)
end

local photos = {}
local function photo(name, dtype)
  local key = name .. dtype
  if not photos[key] then
    local u = vtl.load(DIR .. name .. ".npy")
    photos[key] = dtype == "u8" and u or image.to_tensor(u)
  end
  return photos[key]
end

-- ---- functional forms vs torchvision ----

-- Tolerances: `max` is the largest allowed |vtl - torchvision| per element, `frac` the largest
-- allowed fraction of elements that differ at all (u8: by 1; f32: by more than 1e-6).
-- u8 ops whose arithmetic is integer (pad, crop, invert, posterize, solarize, equalize, erase) or
-- done in float32 in torchvision's exact order (the blends, hue, grayscale, autocontrast) match
-- exactly; the warp (rotate, affine, the policy ops built on it) and the blur accumulate their
-- products in another order than torch's bmm/conv2d, which moves a value across a rounding edge
-- now and then: at most 1 level, on well under 1% of the pixels (measured: 0.2% for affine).
local TOL = {
  u8 = {default = {max = 0, frac = 0}, rotate = {max = 1, frac = 0.01}, affine = {max = 1, frac = 0.01},
        apply_policy_op = {max = 1, frac = 0.01}, gaussian_blur = {max = 1, frac = 0.001}},
  f32 = {default = {max = 1e-6, frac = 0}, rotate = {max = 1e-4, frac = 0.05}, affine = {max = 1e-4, frac = 0.05},
         gaussian_blur = {max = 2e-6, frac = 0}},
}

local report = {}
for _, c in ipairs(cases) do
  local tol = TOL[c.dtype][c.op] or TOL[c.dtype].default
  test(string.format("%s %s %s vs torchvision (%s)", c.op, c.image, c.dtype, c.name), function()
    local got = TF[c.op](photo(c.image, c.dtype), table.unpack(c.args))
    local want = vtl.load(DIR .. c.want)
    T.eq(got.dtype, want.dtype, "dtype")
    T.eq(table.concat(got.shape, ","), table.concat(want.shape, ","), "shape")
    local d = (got:to("f64") - want:to("f64")):abs()
    local md = d:max():item()
    local frac = d:gt(c.dtype == "u8" and 0.5 or 1e-6):to("f64"):mean():item()
    local r = report[c.op .. " " .. c.dtype] or {max = 0, frac = 0}
    r.max, r.frac = math.max(r.max, md), math.max(r.frac, frac)
    report[c.op .. " " .. c.dtype] = r
    T.truthy(md <= tol.max, string.format("max abs diff %g > %g", md, tol.max))
    T.truthy(frac <= tol.frac, string.format("%.4f%% of values differ (allowed %.4f%%)", frac * 100, tol.frac * 100))
  end)
end
test("parity report", function()
  if os.getenv("VTL_TEST_VERBOSE") then
    local keys = {}
    for k in pairs(report) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do print(string.format("  %-24s max abs diff %-10.3g differing %.4f%%", k, report[k].max, report[k].frac * 100)) end
  end
end)

-- ---- parameter distributions ----

local function by_kind(kind)
  local out = {}
  for _, s in ipairs(stats) do if s.kind == kind then out[#out + 1] = s end end
  return out
end

local function quantile(xs, q)
  local s = {table.unpack(xs)}
  table.sort(s)
  return s[math.max(1, math.floor(q * #s + 0.5))]
end

local function mean(xs)
  local t = 0
  for _, x in ipairs(xs) do t = t + x end
  return t / #xs
end

for _, s in ipairs(by_kind("rrc")) do
  test(string.format("RandomResizedCrop params on %d×%d: bounds and distribution as torchvision's", s.h, s.w), function()
    local g = vtl.Generator(11)
    local n = 6000
    local areas, logr, full = {}, {}, 0
    for i = 1, n do
      local top, left, ch, cw = TF.random_resized_crop_params(g, s.h, s.w, {0.08, 1}, {3 / 4, 4 / 3})
      T.truthy(top >= 1 and left >= 1 and top + ch - 1 <= s.h and left + cw - 1 <= s.w, "crop inside the image")
      local a = ch * cw / (s.h * s.w)
      areas[i], logr[i] = a, math.log(cw / ch)
      if a >= 0.999 then full = full + 1 end
      -- area within scale and aspect within ratio, up to the rounding of the crop's sides
      local slack = 1 / ch + 1 / cw
      T.truthy(a <= 1 and a >= 0.08 * (1 - slack) - 1e-9, "area fraction " .. a)
      if a < 0.999 and (cw < s.w and ch < s.h) then
        T.truthy(math.abs(logr[i]) <= math.log(4 / 3) + slack, string.format("aspect %g (%d×%d)", cw / ch, ch, cw))
      end
    end
    local am, lm = mean(areas), mean(logr)
    T.truthy(math.abs(am - s.area_mean) < 0.015, string.format("mean area %.4f vs torchvision %.4f", am, s.area_mean))
    for k, q in ipairs {0.1, 0.5, 0.9} do
      local v = quantile(areas, q)
      T.truthy(math.abs(v - s.area_q[k]) < 0.03, string.format("area quantile %g: %.4f vs torchvision %.4f", q, v, s.area_q[k]))
    end
    T.truthy(math.abs(lm - s.logratio_mean) < 0.012, string.format("mean log aspect %.4f vs torchvision %.4f", lm, s.logratio_mean))
    local sd = math.sqrt(mean((function() local t = {} for i, v in ipairs(logr) do t[i] = (v - lm) ^ 2 end return t end)()))
    T.truthy(math.abs(sd - s.logratio_std) < 0.01, string.format("log aspect std %.4f vs torchvision %.4f", sd, s.logratio_std))
    T.truthy(math.abs(full / n - s.full) < 0.005, string.format("whole-image fallbacks %.4f vs torchvision %.4f", full / n, s.full))
  end)
end

for _, s in ipairs(by_kind("erase")) do
  test(string.format("RandomErasing on 3×%d×%d: area ratio within scale, distribution as torchvision's", s.h, s.w), function()
    local g = vtl.Generator(5)
    local x = vtl.ones(3, s.h, s.w)
    local tf = TF.RandomErasing {p = 1}
    local areas, n = {}, 600
    for _ = 1, n do
      local y = tf(x, g)
      local zeros = (vtl.ones(3, s.h, s.w) - y):sum():item() / 3
      local a = zeros / (s.h * s.w)
      areas[#areas + 1] = a
      T.truthy(a > 0 and a <= 0.33 * 1.1 + 0.01, "erased fraction " .. a)
    end
    T.truthy(math.abs(mean(areas) - s.area_mean) < 0.012, string.format("mean erased %.4f vs torchvision %.4f", mean(areas), s.area_mean))
    T.truthy(math.abs(quantile(areas, 0.5) - s.area_q[2]) < 0.03, "median erased fraction")
    -- p = 0.25: about a quarter of the images erased
    local tf4, hit = TF.RandomErasing {p = 0.25}, 0
    for _ = 1, 800 do if tf4(x, g):min():item() == 0 then hit = hit + 1 end end
    T.truthy(hit > 150 and hit < 250, "erase rate " .. hit / 800)
  end)
end

test("RandomErasing values: per channel and random noise", function()
  local g = vtl.Generator(2)
  local x = vtl.zeros(3, 40, 50)
  local y = TF.RandomErasing {p = 1, value = {0.25, 0.5, 0.75}}(x, g)
  for c = 1, 3 do
    local m = y[c]:max():item()
    T.truthy(math.abs(m - c * 0.25) < 1e-6, "channel " .. c .. " value " .. m)
  end
  local r = TF.RandomErasing {p = 1, value = "random"}(x, g)
  local nz = r:ne(0):to("f64"):sum():item()
  T.truthy(nz > 0, "noise written")
  T.truthy(math.abs(r:sum():item()) < 4 * math.sqrt(nz) + 1, "noise centred on 0")
end)

test("ColorJitter factor ranges", function()
  local g = vtl.Generator(9)
  local img = vtl.full({16, 16, 3}, 100, {dtype = "u8"})
  local tf = TF.ColorJitter {brightness = 0.4}
  T.eq(tf.brightness[1], 0.6); T.eq(tf.brightness[2], 1.4)
  local lo, hi, sum, n = 255, 0, 0, 800
  for _ = 1, n do
    local v = tf(img, g)[1][1][1]:item() -- trunc(100 * factor)
    lo, hi, sum = math.min(lo, v), math.max(hi, v), sum + v
  end
  T.truthy(lo >= 59 and lo <= 63, "lowest brightness " .. lo)
  T.truthy(hi <= 140 and hi >= 137, "highest brightness " .. hi)
  T.truthy(math.abs(sum / n - 100) < 3, "mean " .. sum / n)
  local cj = TF.ColorJitter {brightness = 0.4, contrast = {0.5, 1.5}, saturation = 1.5, hue = 0.1}
  T.eq(cj.brightness[1], 0.6); T.eq(cj.contrast[2], 1.5); T.eq(cj.saturation[1], 0); T.eq(cj.saturation[2], 2.5)
  T.eq(cj.hue[1], -0.1); T.eq(cj.hue[2], 0.1)
  T.eq(TF.ColorJitter {brightness = 0}.brightness, nil)
  -- hue alone keeps a grey image grey and the value channel unchanged
  local x = image.load(FIX .. "/image/chelsea.png")
  local y = TF.ColorJitter {hue = 0.5}(x, g)
  T.eq(table.concat(y.shape, ","), table.concat(x.shape, ","))
  -- all four in a random order: the result depends on the order, so both orders show up
  local tf4 = TF.ColorJitter {brightness = 0.5, contrast = 0.5, saturation = 0.5, hue = 0.2}
  local seen = {}
  for s = 1, 12 do seen[tostring(tf4(x, vtl.Generator(s)):to("f64"):sum():item())] = true end
  local k = 0
  for _ in pairs(seen) do k = k + 1 end
  T.truthy(k >= 10, "distinct outputs " .. k)
end)

-- orientation (radians, image axes) of the bright pixels' second moments
local function orientation(t)
  local rows = t[1]:totable()
  local sx, sy, sw = 0, 0, 0
  for y, row in ipairs(rows) do for x, v in ipairs(row) do sw, sx, sy = sw + v, sx + v * x, sy + v * y end end
  local mx, my = sx / sw, sy / sw
  local m20, m02, m11 = 0, 0, 0
  for y, row in ipairs(rows) do
    for x, v in ipairs(row) do
      m20, m02, m11 = m20 + v * (x - mx) ^ 2, m02 + v * (y - my) ^ 2, m11 + v * (x - mx) * (y - my)
    end
  end
  return 0.5 * math.atan(2 * m11, m20 - m02)
end

test("RandomRotation angle range and direction", function()
  local bar = vtl.zeros(1, 81, 81)
  bar:narrow(2, 40, 3):narrow(3, 6, 70):fill_(1)
  -- counter-clockwise on screen: the bar's right end moves up (negative image-y)
  local r = orientation(TF.rotate(bar, 20, {interpolation = "bilinear"}))
  T.truthy(math.abs(math.deg(r) + 20) < 1.5, "rotate(20) measured " .. math.deg(r))
  local g = vtl.Generator(4)
  local tf = TF.RandomRotation({-10, 30}, {interpolation = "bilinear"})
  local lo, hi, n = 1e9, -1e9, 150
  for _ = 1, n do
    local a = -math.deg(orientation(tf(bar, g)))
    lo, hi = math.min(lo, a), math.max(hi, a)
  end
  T.truthy(lo >= -11.5 and lo < -7, "smallest angle " .. lo)
  T.truthy(hi <= 31.5 and hi > 27, "largest angle " .. hi)
end)

test("RandomAffine: translate, scale and shear stay within their ranges", function()
  local dot = vtl.zeros(1, 101, 101)
  dot:narrow(2, 49, 5):narrow(3, 49, 5):fill_(1)
  local g = vtl.Generator(8)
  local tf = TF.RandomAffine(0, {translate = {0.2, 0.1}})
  local maxx, maxy = 0, 0
  for _ = 1, 200 do
    local y = tf(dot, g)[1]
    local idx = y:view(-1):argmax():item() - 1
    local dy, dx = idx // 101 - 48, idx % 101 - 48
    maxx, maxy = math.max(maxx, math.abs(dx)), math.max(maxy, math.abs(dy))
  end
  T.truthy(maxx <= 21 and maxx >= 17, "largest x shift " .. maxx)
  T.truthy(maxy <= 11 and maxy >= 8, "largest y shift " .. maxy)
  local sc = TF.RandomAffine(0, {scale = {0.5, 0.5}, interpolation = "bilinear"})
  local area = sc(vtl.ones(1, 100, 100), g):sum():item()
  T.truthy(math.abs(area - 2500) < 150, "scale 0.5 keeps a quarter of the area: " .. area)
end)

test("RandomCrop positions, padding and pad_if_needed", function()
  local img = vtl.arange(0, 20 * 30):view(20, 30, 1):to("f32"):permute(3, 1, 2):contiguous()
  local g = vtl.Generator(3)
  local tf = TF.RandomCrop({5, 7})
  local seen_top, seen_left = {}, {}
  for _ = 1, 600 do
    local v = tf(img, g)[1][1][1]:item()
    seen_top[v // 30 + 1], seen_left[v % 30 + 1] = true, true
  end
  for i = 1, 16 do T.truthy(seen_top[i], "top " .. i .. " never drawn") end
  for j = 1, 24 do T.truthy(seen_left[j], "left " .. j .. " never drawn") end
  T.truthy(not seen_top[17] and not seen_left[25], "crop past the edge")
  local p = TF.RandomCrop(24, {padding = 2, padding_mode = "reflect"})(img, g)
  T.eq(table.concat(p.shape, ","), "1,24,24")
  local q = TF.RandomCrop({40, 50}, {pad_if_needed = true, fill = -1})(img, g)
  T.eq(table.concat(q.shape, ","), "1,40,50")
  T.truthy(q:eq(-1):to("f64"):sum():item() >= 40 * 50 - 600, "fill around the image")
  T.raises(function() TF.RandomCrop({40, 50})(img, g) end, "RandomCrop: crop size 40×50 is larger than the image (20×30)")
end)

test("probabilities: RandomApply, RandomGrayscale, RandomInvert, RandomChoice weights, RandomOrder", function()
  local g = vtl.Generator(21)
  local x = vtl.full({2, 2, 3}, 10, {dtype = "u8"})
  local function rate(tf, changed, n)
    local k = 0
    for _ = 1, n do if changed(tf(x, g)) then k = k + 1 end end
    return k / n
  end
  local inv = function(y) return y[1][1][1]:item() ~= 10 end
  local r = rate(TF.RandomApply(TF.RandomInvert(1), 0.3), inv, 2000)
  T.truthy(math.abs(r - 0.3) < 0.04, "RandomApply rate " .. r)
  r = rate(TF.RandomInvert(0.7), inv, 2000)
  T.truthy(math.abs(r - 0.7) < 0.04, "RandomInvert rate " .. r)
  local col = vtl.zeros(2, 2, 3, {dtype = "u8"})
  col:narrow(3, 1, 1):fill_(200)
  local k = 0
  local gs = TF.RandomGrayscale(0.25)
  for _ = 1, 2000 do if gs(col, g)[1][1][2]:item() ~= 0 then k = k + 1 end end
  T.truthy(math.abs(k / 2000 - 0.25) < 0.04, "RandomGrayscale rate " .. k / 2000)
  T.eq(gs.p, 0.25)
  -- weights
  local counts = {0, 0, 0}
  local ch = TF.RandomChoice({function() return 1 end, function() return 2 end, function() return 3 end}, {p = {1, 2, 7}})
  for _ = 1, 3000 do local v = ch(x, g); counts[v] = counts[v] + 1 end
  T.truthy(math.abs(counts[1] / 3000 - 0.1) < 0.03 and math.abs(counts[3] / 3000 - 0.7) < 0.04,
    string.format("RandomChoice counts %d %d %d", counts[1], counts[2], counts[3]))
  -- every order of three steps shows up
  local seen = {}
  local ord = TF.RandomOrder {function(s) return s .. "a" end, function(s) return s .. "b" end, function(s) return s .. "c" end}
  for _ = 1, 300 do seen[ord("", g)] = true end
  for _, o in ipairs {"abc", "acb", "bac", "bca", "cab", "cba"} do T.truthy(seen[o], "order " .. o .. " never drawn") end
end)

-- ---- determinism and plain data ----

local function random_transforms()
  return {
    TF.RandomCrop(64, {padding = 4, padding_mode = "reflect"}), TF.RandomResizedCrop(48, {interpolation = "bicubic"}),
    TF.RandomRotation(30, {interpolation = "bilinear", fill = {1, 2, 3}}),
    TF.RandomAffine(15, {translate = {0.1, 0.1}, scale = {0.8, 1.2}, shear = {-5, 5, -5, 5}}),
    TF.ColorJitter {brightness = 0.4, contrast = 0.4, saturation = 0.4, hue = 0.1}, TF.RandomGrayscale(0.5),
    TF.GaussianBlur(5), TF.RandomAutocontrast(), TF.RandomEqualize(), TF.RandomPosterize(3), TF.RandomSolarize(128),
    TF.RandomAdjustSharpness(2), TF.RandomInvert(), TF.RandAugment(), TF.RandAugment {magnitude = 5, magnitude_std = 0.5},
    TF.TrivialAugmentWide(), TF.RandomApply({TF.RandomInvert(1)}, 0.5), TF.RandomChoice {TF.RandomInvert(1), TF.GaussianBlur(3)},
    TF.RandomOrder {TF.RandomInvert(), TF.ColorJitter {brightness = 0.5}},
    TF.Compose {TF.RandomResizedCrop(40), TF.RandomHorizontalFlip(), TF.ToTensor(), TF.RandomErasing {value = "random"}},
    TF.train_transform({input_size = {3, 56, 56}, interpolation = "bicubic"}, {auto_augment = "rand-m9-mstd0.5", re_prob = 0.5}),
  }
end

local function same(a, b)
  if table.concat(a.shape, ",") ~= table.concat(b.shape, ",") then return false end
  return (a:to("f64") - b:to("f64")):abs():max():item() == 0
end

test("same generator seed -> identical output; different seeds -> different outputs", function()
  local img = photo("chelsea", "u8")
  for _, tf in ipairs(random_transforms()) do
    local a, b = tf(img, vtl.Generator(123)), tf(img, vtl.Generator(123))
    T.truthy(same(a, b), tf.name .. ": same seed, different outputs")
    local differ = false
    for s = 1, 8 do
      if not same(a, tf(img, vtl.Generator(1000 + s))) then differ = true break end
    end
    T.truthy(differ, tf.name .. ": eight other seeds all gave the same output")
  end
end)

-- a deep copy without metatables, as a loader copying plain tables into another state makes
local function plain_copy(v, seen)
  if type(v) ~= "table" then return v end
  seen = seen or {}
  if seen[v] then return seen[v] end
  local c = {}
  seen[v] = c
  for k, x in pairs(v) do c[k] = plain_copy(x, seen) end
  return c
end

local function only_plain_data(v, path)
  local t = type(v)
  if t == "table" then
    for k, x in pairs(v) do only_plain_data(x, path .. "." .. tostring(k)) end
  elseif t == "function" or t == "userdata" or t == "thread" then
    error(path .. " holds a " .. t, 0)
  end
end

test("transform objects are plain data; a copy restored with T.restore behaves the same", function()
  local img = photo("coffee", "u8")
  for _, tf in ipairs(random_transforms()) do
    local ok, err = pcall(only_plain_data, tf, tf.name)
    T.truthy(ok, tostring(err))
    local c = TF.restore(plain_copy(tf))
    T.truthy(TF.is_transform(c))
    T.truthy(same(tf(img, vtl.Generator(77)), c(img, vtl.Generator(77))), tf.name .. ": restored copy differs")
  end
  local user = TF.Compose {TF.ToTensor(), function(x) return x * 2 end}
  T.eq(type(user.transforms[2]), "function", "a Lua function step is kept as it is")
end)

test("train_transform: timm's training chain from a pretrained_cfg", function()
  local cfg = {input_size = {3, 64, 80}, interpolation = "bicubic", mean = {0.5, 0.5, 0.5}, std = {0.25, 0.25, 0.25}}
  local tf = TF.train_transform(cfg, {color_jitter = 0.4, re_prob = 0.25})
  local names = {}
  for i, s in ipairs(tf.transforms) do names[i] = s.name end
  T.eq(table.concat(names, ","), "RandomResizedCrop,RandomHorizontalFlip,ColorJitter,ToTensor,Normalize,RandomErasing")
  local rrc = tf.transforms[1]
  T.eq(rrc.size[1], 64); T.eq(rrc.size[2], 80); T.eq(rrc.interpolation, "bicubic")
  T.eq(rrc.scale[1], 0.08); T.eq(rrc.ratio[2], 4 / 3)
  T.eq(tf.transforms[3].brightness[2], 1.4)
  local y = tf(photo("chelsea", "u8"), vtl.Generator(1))
  T.eq(y.dtype, "f32"); T.eq(table.concat(y.shape, ","), "3,64,80")
  T.truthy(y:min():item() >= -2 - 1e-6 and y:max():item() <= 2 + 1e-6, "normalised range")
  local ra = TF.train_transform(cfg, {auto_augment = "rand-m7-n3-mstd0.5"}).transforms[3]
  T.eq(ra.name, "RandAugment"); T.eq(ra.magnitude, 7); T.eq(ra.num_ops, 3); T.eq(ra.magnitude_std, 0.5)
  T.eq(ra.num_magnitude_bins, 11)
  T.eq(TF.train_transform(cfg, {randaugment = {num_ops = 1, magnitude = 5}}).transforms[3].num_ops, 1)
  T.eq(TF.train_transform(cfg, {trivial_augment = true}).transforms[3].name, "TrivialAugmentWide")
  T.eq(#TF.train_transform(cfg).transforms, 4)
end)

-- ---- bad arguments ----

test("bad arguments: clear errors naming the transform and the argument", function()
  local img = photo("chelsea", "u8")
  local x = image.to_tensor(img)
  T.raises(function() TF.RandomCrop(0) end, "RandomCrop: size must be a positive integer")
  T.raises(function() TF.RandomCrop(10, {padding_mode = "wrap"}) end, "RandomCrop: padding_mode")
  T.raises(function() TF.RandomCrop(10, {padding = -1}) end, "RandomCrop: padding")
  T.raises(function() TF.RandomCrop(10, {fill = "red"}) end, "RandomCrop: fill must be a number")
  T.raises(function() TF.RandomCrop(10, 5) end, "RandomCrop: options must be a table")
  T.raises(function() TF.RandomResizedCrop(224, {scale = {0.9, 0.1}}) end, "RandomResizedCrop: scale must be {min, max}")
  T.raises(function() TF.RandomResizedCrop(224, {ratio = {0, 1}}) end, "RandomResizedCrop: ratio must be positive")
  T.raises(function() TF.RandomResizedCrop(224, {scale = "big"}) end, "RandomResizedCrop: scale must be a pair")
  T.raises(function() TF.RandomResizedCrop(224, {interpolation = "lanczos"}) end, "RandomResizedCrop: interpolation")
  T.raises(function() TF.RandomRotation(-5) end, "RandomRotation: degrees as a single number must be >= 0")
  T.raises(function() TF.RandomRotation({10, -10}) end, "RandomRotation: degrees must be {min, max}")
  T.raises(function() TF.RandomRotation(10, {interpolation = "bicubic"}) end, "RandomRotation: interpolation")
  T.raises(function() TF.RandomRotation(10, {fill = {1, "x"}}) end, "RandomRotation: fill[2] must be a number")
  T.raises(function() TF.RandomRotation(10, {center = 5}) end, "RandomRotation: center must be {x, y}")
  T.raises(function() TF.RandomAffine(10, {translate = {0.5, 2}}) end, "RandomAffine: translate values must be in [0, 1]")
  T.raises(function() TF.RandomAffine(10, {scale = {-1, 2}}) end, "RandomAffine: scale values must be positive")
  T.raises(function() TF.RandomAffine(10, {shear = {1, 2, 3}}) end, "RandomAffine: shear must be a pair")
  T.raises(function() TF.RandomAffine("ten") end, "RandomAffine: degrees must be a pair")
  T.raises(function() TF.ColorJitter {brightness = -0.1} end, "ColorJitter: brightness as a single number must be >= 0")
  T.raises(function() TF.ColorJitter {hue = 0.7} end, "ColorJitter: hue must be at most 0.5")
  T.raises(function() TF.ColorJitter {hue = {-0.6, 0}} end, "ColorJitter: hue must lie in [-0.5, 0.5]")
  T.raises(function() TF.ColorJitter {contrast = {1.5, 0.5}} end, "ColorJitter: contrast must be {min, max}")
  T.raises(function() TF.ColorJitter {brightnes = 0.1} end, "ColorJitter: unknown option 'brightnes'")
  T.raises(function() TF.RandomGrayscale(1.5) end, "RandomGrayscale: p must be a number in [0, 1]")
  T.raises(function() TF.GaussianBlur(4) end, "GaussianBlur: kernel_size values must be odd positive integers")
  T.raises(function() TF.GaussianBlur(5, {2, 1}) end, "GaussianBlur: sigma must be {min, max}")
  T.raises(function() TF.GaussianBlur(5, 0) end, "GaussianBlur: sigma must be positive")
  T.raises(function() TF.RandomAutocontrast("often") end, "RandomAutocontrast: p must be")
  T.raises(function() TF.RandomEqualize(-1) end, "RandomEqualize: p must be")
  T.raises(function() TF.RandomPosterize(9) end, "RandomPosterize: bits must be an integer in 0..8")
  T.raises(function() TF.RandomSolarize("x") end, "RandomSolarize: threshold must be a number")
  T.raises(function() TF.RandomAdjustSharpness(-1) end, "RandomAdjustSharpness: sharpness_factor must be a number >= 0")
  T.raises(function() TF.RandomInvert(2) end, "RandomInvert: p must be")
  T.raises(function() TF.RandAugment {num_ops = -1} end, "RandAugment: num_ops must be an integer >= 0")
  T.raises(function() TF.RandAugment {magnitude = 31} end, "RandAugment: magnitude must be a number in 0..30")
  T.raises(function() TF.RandAugment {num_magnitude_bins = 1} end, "RandAugment: num_magnitude_bins")
  T.raises(function() TF.RandAugment {interpolation = "bicubic"} end, "RandAugment: interpolation")
  T.raises(function() TF.TrivialAugmentWide {num_magnitude_bins = "many"} end, "TrivialAugmentWide: num_magnitude_bins")
  T.raises(function() TF.RandomErasing {p = 2} end, "RandomErasing: p must be")
  T.raises(function() TF.RandomErasing {scale = {0.1, 2}} end, "RandomErasing: scale must lie in [0, 1]")
  T.raises(function() TF.RandomErasing {value = "noise"} end, "RandomErasing: value as a string must be \"random\"")
  T.raises(function() TF.RandomErasing {p = 1, value = {1, 2}}(x, vtl.Generator(1)) end, "RandomErasing: value has 2 entries for an image of 3 channels")
  T.raises(function() TF.RandomApply({}, 0.5) end, "RandomApply: expected a non-empty list")
  T.raises(function() TF.RandomApply({5}) end, "RandomApply: step 1 is not callable")
  T.raises(function() TF.RandomApply(TF.RandomInvert(), 3) end, "RandomApply: p must be")
  T.raises(function() TF.RandomChoice({TF.RandomInvert()}, {p = {1, 2}}) end, "RandomChoice: p must be a list of 1 weights")
  T.raises(function() TF.RandomChoice({TF.RandomInvert()}, {p = {0}}) end, "RandomChoice: the weights p sum to 0")
  T.raises(function() TF.RandomOrder("abc") end, "RandomOrder: expected a list of transforms")
  T.raises(function() TF.train_transform({}, {auto_augment = "augmix-m5"}) end, "train_transform: auto_augment must look like")
  T.raises(function() TF.train_transform({}, {auto_augment = "rand-m9-x3"}) end, "unsupported auto_augment part \"x3\"")
  T.raises(function() TF.train_transform({}, {re_prob = 2}) end, "train_transform: re_prob must be in [0, 1]")
  T.raises(function() TF.train_transform({}, {color_jitter = {1, 2}}) end, "train_transform: color_jitter")
  -- functional forms
  T.raises(function() TF.adjust_brightness(img, -1) end, "adjust_brightness: factor must be a finite number >= 0")
  T.raises(function() TF.adjust_contrast(img, "x") end, "adjust_contrast: factor must be a number")
  T.raises(function() TF.adjust_hue(img, 0.6) end, "adjust_hue: hue factor must be in [-0.5, 0.5]")
  T.raises(function() TF.adjust_saturation(vtl.zeros(4, 5, 5), 1) end, "adjust_saturation: image must have 1 or 3 channels, got 4")
  T.raises(function() TF.posterize(x, 3) end, "posterize: expected a u8 image")
  T.raises(function() TF.posterize(img, 9) end, "posterize: bits must be in 0..8")
  T.raises(function() TF.equalize(x) end, "equalize: expected a u8 image")
  T.raises(function() TF.solarize(x, 2) end, "solarize: threshold 2 is above the image's maximum value 1")
  T.raises(function() TF.gaussian_blur(img, 4, 1) end, "gaussian_blur: kernel size must be odd")
  T.raises(function() TF.gaussian_blur(img, 5, -1) end, "gaussian_blur: sigma must be positive")
  T.raises(function() TF.pad(img, {1, 2, 3}) end, "pad: padding must have 1, 2 or 4 entries")
  T.raises(function() TF.pad(img, 2, {padding_mode = "wrap"}) end, "pad: option 'mode' must be")
  T.raises(function() TF.pad(img, -200) end, "pad: padding {top -200, left -200, bottom -200, right -200} leaves an empty image")
  T.raises(function() TF.rotate(img, "left") end, "rotate: angle must be a number")
  T.raises(function() TF.rotate(img, 10, {interpolation = "bicubic"}) end, "warp: option 'interpolation' must be")
  T.raises(function() TF.rotate(img, 10, {fill = {1, 2}}) end, "warp: fill has 2 values for an image of 3 channels")
  T.raises(function() TF.affine(img, {scale = 0}) end, "affine: scale must be positive")
  T.raises(function() TF.erase(x, 1, 1, 500, 10, 0) end, "erase: region of 500×10 at (1, 1) is not inside")
  T.raises(function() TF.erase(x, 1, 1, 5, 5, {1, 2}) end, "erase: value has 2 entries for an image of 3 channels")
  T.raises(function() TF.erase(x, 1, 1, 5, 5, vtl.zeros(3, 4, 4)) end, "erase: noise must be an f32 tensor of shape {3, 5, 5}")
  T.raises(function() TF.rgb_to_grayscale(img, 2) end, "rgb_to_grayscale: output channels must be 1 or 3")
  T.raises(function() TF.apply_policy_op(img, "Warp", 1) end, "apply_policy_op: unknown op 'Warp'")
  T.raises(function() TF.ColorJitter {brightness = 0.2}("not an image") end, "ColorJitter: expected an image tensor")
  T.raises(function() TF.adjust_sharpness(vtl.zeros(3, 4, 5, {dtype = "i32"}), 1) end, "u8 (H×W×C) or f32 (C×H×W)")
end)

test("edge cases: tiny images, 1-channel and 2-D images", function()
  local one = vtl.full({1, 1, 3}, 50, {dtype = "u8"})
  T.eq(TF.gaussian_blur(one, 5, 1)[1][1][1]:item(), 50, "reflect padding of a 1-pixel image")
  T.eq(TF.adjust_sharpness(one, 2)[1][1][1]:item(), 50)
  T.eq(TF.autocontrast(one)[1][1][1]:item(), 50, "a constant image is left as it is")
  T.eq(TF.equalize(one)[1][1][1]:item(), 50)
  -- torchvision's expanded size: 1×1 turned by 45° -> 3×3; 7×5 by 33° -> 9×9, by 90° -> 5×7
  T.eq(table.concat(TF.rotate(one, 45, {expand = true}).shape, ","), "3,3,3")
  T.eq(table.concat(TF.rotate(vtl.zeros(3, 7, 5), 33, {expand = true}).shape, ","), "3,9,9")
  T.eq(table.concat(TF.rotate(vtl.zeros(3, 7, 5), 90, {expand = true}).shape, ","), "3,5,7")
  local g = image.load(FIX .. "/image/camera.png") -- 512×512×1
  T.eq(TF.adjust_hue(g, 0.3)[100][100][1]:item(), g[100][100][1]:item(), "hue leaves grey as it is")
  T.eq(TF.rgb_to_grayscale(g, 3).shape[3], 3)
  T.eq(TF.RandomGrayscale(1)(g, vtl.Generator(1)).shape[3], 1)
  local flat = g:select(3, 1) -- H×W
  T.eq(TF.rotate(flat, 10).ndim, 2)
  T.eq(TF.pad(flat, 1, {padding_mode = "edge"}).shape[1], 514)
  -- a reflect pad wider than the image keeps mirroring instead of failing
  local small = vtl.arange(0, 3):to("f32"):view(1, 1, 3)
  local p = TF.pad(small, {5, 0}, {padding_mode = "reflect"})
  T.eq(table.concat(p:view(-1):to("i64"):totable(), ","), "1,0,1,2,1,0,1,2,1,0,1,2,1")
end)
