-- vtl.image (decode/encode, limits, bad files) and vtl.transforms against PIL and torchvision
-- (fixtures by tests/ref/gen_image.py).
local T = require "testlib"
local vtl = require "vtl"
local TF = require "vtl.transforms"
local image = vtl.image
local test = T.test

local FIX = os.getenv("VTL_FIXTURES") or "build/fixtures"
local DIR = FIX .. "/image/"
local TMP = os.tmpname()
os.remove(TMP)
os.execute("mkdir -p '" .. TMP .. "'")
local function tmp(name) return TMP .. "/" .. name end

-- max |a - b| over all elements, both taken as f64
local function maxdiff(a, b)
  T.eq(table.concat(a.shape, ","), table.concat(b.shape, ","), "shape")
  return (a:to("f64") - b:to("f64")):abs():max():item()
end
local function meandiff(a, b) return (a:to("f64") - b:to("f64")):abs():mean():item() end

local ok_cases, cases = pcall(dofile, FIX .. "/image_ref.lua")
if not ok_cases then
  test("image fixtures", function() error("cannot load " .. FIX .. "/image_ref.lua; run .venv/bin/python tests/ref/gen_image.py " .. FIX, 0) end)
  cases = {}
else
  test("image fixtures", function() T.truthy(#cases >= 50, "expected at least 50 cases, got " .. #cases) end)
end

local function by_kind(kind)
  local out = {}
  for _, c in ipairs(cases) do if c.kind == kind then out[#out + 1] = c end end
  return out
end

local loaded = {}
local function load_rgb(name)
  if not loaded[name] then loaded[name] = image.load(DIR .. name) end
  return loaded[name]
end

-- ---- decoding vs PIL ----

local report = {}
for _, c in ipairs(by_kind("decode")) do
  test("decode " .. c.file, function()
    local got = image.load(DIR .. c.file)
    local want = vtl.load(DIR .. c.want)
    T.eq(got.dtype, "u8")
    if c.file:match("%.gif$") then
      -- stb decodes GIF frames as RGBA; PIL's pixels are compared with channels = 3
      T.eq(got.shape[3], 4)
      got, want = image.load(DIR .. c.file, {channels = 3}), vtl.load(DIR .. c.want3)
    end
    T.eq(table.concat(got.shape, ","), table.concat(want.shape, ","), "shape")
    local md, mean = maxdiff(got, want), meandiff(got, want)
    report[#report + 1] = string.format("%s max %d mean %.3f", c.file, md, mean)
    -- JPEGs too: vtl decodes them with libjpeg's defaults, as PIL does
    T.eq(md, 0, c.file .. " vs PIL max diff")
    local rgb = image.load(DIR .. c.file, {channels = 3})
    T.eq(rgb.shape[3], 3)
    T.eq(maxdiff(rgb, vtl.load(DIR .. c.want3)), 0, "channels=3")
    local w, h, ch = image.info(DIR .. c.file)
    T.eq(w, c.shape[2]); T.eq(h, c.shape[1])
    T.truthy(ch >= 1 and ch <= 4, "channels " .. tostring(ch))
  end)
end
-- stb_image's conversions: grey = (77 R + 150 G + 29 B) >> 8, alpha 255
local function stb_grey(rgb)
  local f = rgb:to("i32")
  local r, g, b = f:narrow(3, 1, 1), f:narrow(3, 2, 1), f:narrow(3, 3, 1)
  return ((r * 77 + g * 150 + b * 29) // 256):to("u8")
end

test("JPEG channel conversions follow stb_image's rules", function()
  local rgb = image.load(DIR .. "chelsea_q90.jpg", {channels = 3})
  local grey = image.load(DIR .. "chelsea_q90.jpg", {channels = 1})
  T.eq(table.concat(grey.shape, ","), "300,451,1")
  T.eq(maxdiff(grey, stb_grey(rgb)), 0, "channels=1 from colour")
  local ga = image.load(DIR .. "chelsea_q90.jpg", {channels = 2})
  T.eq(maxdiff(ga:narrow(3, 1, 1), grey), 0, "channels=2 grey")
  T.eq(ga:narrow(3, 2, 1):to("f64"):min():item(), 255, "channels=2 alpha")
  local rgba = image.load(DIR .. "chelsea_q90.jpg", {channels = 4})
  T.eq(maxdiff(rgba:narrow(3, 1, 3), rgb), 0, "channels=4 colour")
  T.eq(rgba:narrow(3, 4, 1):to("f64"):min():item(), 255, "channels=4 alpha")
  local g1 = image.load(DIR .. "chelsea_gray.jpg")
  T.eq(g1.shape[3], 1)
  local g4 = image.load(DIR .. "chelsea_gray.jpg", {channels = 4})
  for c = 1, 3 do T.eq(maxdiff(g4:narrow(3, c, 1), g1), 0, "grey replicated") end
  -- the same pixels as stb's converter applied to PNG pixels
  local png = image.load(DIR .. "chelsea.png", {channels = 3})
  T.eq(maxdiff(image.load(DIR .. "chelsea.png", {channels = 1}), stb_grey(png)), 0, "PNG channels=1")
end)

for _, c in ipairs(by_kind("cmyk")) do
  test("CMYK JPEG decodes (stb) close to the photo", function()
    local got = image.load(DIR .. c.file, {channels = 3})
    local want = vtl.load(DIR .. c.want3)
    T.eq(table.concat(got.shape, ","), table.concat(want.shape, ","))
    T.truthy(meandiff(got, want) < 8, "mean diff " .. meandiff(got, want))
  end)
end

test("decode report", function()
  if os.getenv("VTL_TEST_VERBOSE") then print("  " .. table.concat(report, "\n  ")) end
end)

test("load channels option converts", function()
  local g = image.load(DIR .. "camera.png")
  T.eq(g.shape[3], 1)
  local g3 = image.load(DIR .. "camera.png", {channels = 3})
  T.eq(g3.shape[3], 3)
  T.eq(maxdiff(g3:narrow(3, 2, 1), g), 0, "grey expanded")
  local a = image.load(DIR .. "logo.png", {channels = 4})
  T.eq(a.shape[3], 4)
  local a1 = image.load(DIR .. "chelsea.png", {channels = 1})
  T.eq(a1.shape[3], 1)
  T.raises(function() image.load(DIR .. "chelsea.png", {channels = 5}) end, "channels")
  T.raises(function() image.load(DIR .. "chelsea.png", {channels = "rgb"}) end, "channels")
end)

-- ---- save ----

test("save png roundtrip exact (u8 HWC, f32 CHW, grey)", function()
  local img = load_rgb("chelsea.png")
  image.save(tmp("a.png"), img)
  T.eq(maxdiff(image.load(tmp("a.png")), img), 0)
  local x = image.to_tensor(img)
  image.save(tmp("b.png"), x)
  T.eq(maxdiff(image.load(tmp("b.png")), img), 0, "f32 CHW in [0,1]")
  local g = image.load(DIR .. "camera.png")
  image.save(tmp("g.PNG"), g:select(3, 1))
  local back = image.load(tmp("g.PNG"))
  T.eq(back.shape[3], 1)
  T.eq(maxdiff(back, g), 0)
  image.save(tmp("c.bmp"), img)
  T.eq(maxdiff(image.load(tmp("c.bmp")), img), 0)
end)

test("save jpeg: close to the original, quality matters", function()
  local img = load_rgb("chelsea.png")
  image.save(tmp("a.jpg"), img)
  image.save(tmp("low.jpeg"), img, {quality = 10})
  local hi, lo = image.load(tmp("a.jpg")), image.load(tmp("low.jpeg"))
  T.truthy(meandiff(hi, img) < 3, "q95 mean diff " .. meandiff(hi, img))
  T.truthy(meandiff(lo, img) > meandiff(hi, img))
  T.truthy(#T.readfile(tmp("low.jpeg")) < #T.readfile(tmp("a.jpg")))
end)

test("save is atomic and checks its arguments", function()
  local img = load_rgb("chelsea.png")
  image.save(tmp("keep.png"), img)
  local before = T.readfile(tmp("keep.png"))
  T.raises(function() image.save(tmp("keep.png"), vtl.zeros(5, 5, 7, {dtype = "u8"})) end, "channels")
  T.eq(T.readfile(tmp("keep.png")), before, "file untouched after a failed save")
  T.raises(function() image.save(tmp("x.gif"), img) end, "unknown image extension")
  T.raises(function() image.save(tmp("x.png"), vtl.zeros(2, 3, 4, {dtype = "i64"})) end, "u8")
  T.raises(function() image.save(tmp("x.png"), vtl.zeros(4)) end, "2-D or 3-D")
  T.raises(function() image.save(tmp("x.jpg"), img, {quality = 0}) end, "quality")
  T.raises(function() image.save(TMP .. "/no/such/dir/x.png", img) end, "no/such/dir/x.png")
  T.raises(function() image.save(tmp("x.png"), 42) end, "vtl.Tensor expected")
  local p = io.popen("ls '" .. TMP .. "'")
  for f in p:lines() do T.truthy(not f:find("%.tmp%."), "temporary file left: " .. f) end
  p:close()
end)

-- ---- bad files ----

test("bad files: clear errors naming the file", function()
  local jpg = T.readfile(DIR .. "chelsea_q90.jpg")
  T.writefile(tmp("trunc.jpg"), jpg:sub(1, #jpg // 2))
  T.raises(function() image.load(tmp("trunc.jpg")) end, tmp("trunc.jpg") .. ": truncated JPEG")
  T.writefile(tmp("head.jpg"), jpg:sub(1, 100))
  T.raises(function() image.load(tmp("head.jpg")) end, tmp("head.jpg") .. ":")
  T.writefile(tmp("empty.png"), "")
  T.raises(function() image.load(tmp("empty.png")) end, tmp("empty.png") .. ": empty file (0 bytes)")
  T.writefile(tmp("text.jpg"), "this is not a picture\n just some text\n")
  T.raises(function() image.load(tmp("text.jpg")) end, tmp("text.jpg") .. ": not a recognised image file")
  T.raises(function() image.load(tmp("missing.png")) end, tmp("missing.png") .. ": cannot open (No such file or directory)")
  T.raises(function() image.load(TMP) end, "is a directory")
  local png = T.readfile(DIR .. "chelsea.png")
  T.writefile(tmp("trunc.png"), png:sub(1, #png // 2))
  T.raises(function() image.load(tmp("trunc.png")) end, tmp("trunc.png") .. ": corrupt or truncated PNG")
  -- garbage in the middle of a JPEG's entropy data decodes to something, never crashes
  local mid = #jpg // 2
  T.writefile(tmp("noise.jpg"), jpg:sub(1, mid) .. string.rep("\x55", 64) .. jpg:sub(mid + 65))
  pcall(image.load, tmp("noise.jpg"))
  -- a broken Huffman table: the JPEG decoder's own error, naming the file
  local dht = jpg:find("\xFF\xC4", 1, true)
  T.writefile(tmp("huff.jpg"), jpg:sub(1, dht + 4) .. string.rep("\xFF", 16) .. jpg:sub(dht + 21))
  T.raises(function() image.load(tmp("huff.jpg")) end, tmp("huff.jpg") .. ": corrupt or truncated JPEG data (Bogus Huffman table")
  T.raises(function() image.load(tmp("huff.jpg"), {channels = 1}) end, tmp("huff.jpg") .. ": corrupt or truncated JPEG data")
  T.raises(function() image.info(tmp("text.jpg")) end, "not a recognised image file")
end)

-- A PNG header (signature + IHDR with a valid CRC) claiming w×h, followed by nothing useful.
local function crc32(s)
  local crc = 0xFFFFFFFF
  for i = 1, #s do
    crc = crc ~ s:byte(i)
    for _ = 1, 8 do
      if crc & 1 == 1 then crc = (crc >> 1) ~ 0xEDB88320 else crc = crc >> 1 end
    end
  end
  return crc ~ 0xFFFFFFFF
end
local function png_claiming(w, h)
  local ihdr = "IHDR" .. string.pack(">I4I4BBBBB", w, h, 8, 2, 0, 0, 0)
  local idat = "IDAT" .. "\120\156\1\0\0\255\255"
  return "\137PNG\r\n\26\n" .. string.pack(">I4", 13) .. ihdr .. string.pack(">I4", crc32(ihdr))
    .. string.pack(">I4", #idat - 4) .. idat .. string.pack(">I4", crc32(idat))
end

test("pixel limit: a PNG claiming 100000×100000 is refused from its header", function()
  T.writefile(tmp("huge.png"), png_claiming(100000, 100000))
  local before = vtl.memory_allocated and vtl.memory_allocated() or 0
  T.raises(function() image.load(tmp("huge.png")) end, tmp("huge.png") .. ": image of 100000×100000 pixels exceeds the limit")
  if vtl.memory_allocated then T.truthy(vtl.memory_allocated() - before < (1 << 20)) end
  local w, h = image.info(tmp("huge.png"))
  T.eq(w, 100000); T.eq(h, 100000)
  -- configurable
  local old = image.set_limits {max_pixels = 1000}
  T.eq(old.max_pixels, 1 << 28)
  T.eq(image.get_limits().max_pixels, 1000)
  T.raises(function() image.load(DIR .. "chelsea.png") end, "exceeds the limit of 1000 pixels")
  image.set_limits(old)
  T.eq(image.load(DIR .. "chelsea.png").shape[1], 300)
  T.raises(function() image.set_limits {max_pixels = 0} end, "max_pixels")
  -- a small PNG whose data is missing: decode error, not a crash
  T.writefile(tmp("small.png"), png_claiming(10, 10))
  T.raises(function() image.load(tmp("small.png")) end, tmp("small.png") .. ":")
end)

-- ---- transforms vs torchvision ----

local resize_max = {bilinear = 0, bicubic = 0, nearest = 0}
for _, c in ipairs(by_kind("resize")) do
  local sz = type(c.size) == "table" and table.concat(c.size, "x") or tostring(c.size)
  test(string.format("Resize %s %s %s aa=%s", c.image, sz, c.interpolation, tostring(c.antialias)), function()
    local img = load_rgb(c.image)
    local got = TF.Resize(c.size, {interpolation = c.interpolation, antialias = c.antialias})(img)
    local md = maxdiff(got, vtl.load(DIR .. c.want))
    resize_max[c.interpolation] = math.max(resize_max[c.interpolation], md)
    T.truthy(md <= 1, "max abs diff " .. md .. " (u8) > 1")
  end)
end
for _, c in ipairs(by_kind("resize_f32")) do
  test("Resize f32 CHW " .. c.interpolation, function()
    local x = image.to_tensor(load_rgb(c.image))
    local got = TF.Resize(c.size, {interpolation = c.interpolation})(x)
    local md = maxdiff(got, vtl.load(DIR .. c.want))
    T.truthy(md <= 1e-5, "max abs diff " .. md)
  end)
end
test("resize report", function()
  if os.getenv("VTL_TEST_VERBOSE") then
    print(string.format("  resize u8 max abs diff vs torchvision: bilinear %d, bicubic %d, nearest %d",
      resize_max.bilinear, resize_max.bicubic, resize_max.nearest))
  end
end)

for _, c in ipairs(by_kind("center_crop")) do
  local sz = type(c.size) == "table" and table.concat(c.size, "x") or tostring(c.size)
  test("CenterCrop " .. sz, function()
    T.eq(maxdiff(TF.CenterCrop(c.size)(load_rgb(c.image)), vtl.load(DIR .. c.want)), 0)
  end)
end

for _, c in ipairs(by_kind("flip")) do
  test("flips (p=1) exact, p=0 identity", function()
    local img = load_rgb(c.image)
    T.eq(maxdiff(TF.RandomHorizontalFlip(1)(img), vtl.load(DIR .. c.hflip)), 0)
    T.eq(maxdiff(TF.RandomVerticalFlip(1)(img), vtl.load(DIR .. c.vflip)), 0)
    T.eq(maxdiff(TF.RandomHorizontalFlip(0)(img), img), 0)
    local x = image.to_tensor(img)
    T.eq(maxdiff(image.hflip(x), image.to_tensor(vtl.load(DIR .. c.hflip))), 0, "f32 CHW hflip")
  end)
end

for _, c in ipairs(by_kind("to_tensor")) do
  test("ToTensor and Normalize", function()
    local x = TF.ToTensor()(load_rgb(c.image))
    T.eq(x.dtype, "f32")
    T.eq(maxdiff(x, vtl.load(DIR .. c.to_tensor)), 0)
    local n = TF.Normalize(c.mean, c.std)(x)
    T.truthy(maxdiff(n, vtl.load(DIR .. c.normalize)) <= 1e-6)
    T.raises(function() TF.Normalize(c.mean, c.std)(load_rgb(c.image)) end, "f32 C×H×W")
    T.raises(function() TF.Normalize({0.5, 0.5}, {0.5, 0.5})(x) end, "2 entries for an image of 3 channels")
    T.raises(function() TF.Normalize({0.5}, {0})(x) end, "std[1] is 0")
    T.raises(function() TF.ToTensor()(x) end, "expected a u8")
  end)
end

for _, c in ipairs(by_kind("eval")) do
  test(string.format("eval_transform %s crop_pct=%g %s", c.image, c.cfg.crop_pct, c.cfg.interpolation), function()
    local got = TF.eval_transform(c.cfg)(load_rgb(c.image))
    local md = maxdiff(got, vtl.load(DIR .. c.want))
    -- one u8 level of resize rounding, divided by the smallest std
    T.truthy(md <= 1 / 255 / 0.224 + 1e-5, "max abs diff " .. md)
  end)
end

-- ---- transform behaviour ----

test("Compose chains and is callable; short-side sizes", function()
  local img = load_rgb("chelsea.png") -- 300×451
  local tf = TF.Compose {TF.Resize(100), TF.CenterCrop(64), TF.ToTensor(), function(x) return x * 2 end}
  local y = tf(img)
  T.eq(table.concat(y.shape, ","), "3,64,64")
  T.eq(select(2, TF.resized_size(300, 451, 100)), 150)
  T.eq(TF.resized_size(451, 300, 100), 150)
  local a, b = TF.resized_size(300, 451, 100, 120)
  T.eq(a, 80); T.eq(b, 120)
  T.raises(function() TF.Compose {TF.ToTensor(), 5} end, "step 2 is not callable")
  T.raises(function() TF.Resize(0) end, "positive integer")
  T.raises(function() TF.Resize(10, {interpolation = "lanczos"}) end, "interpolation")
  T.raises(function() TF.CenterCrop({1, 2, 3}) end, "size")
  T.raises(function() TF.RandomHorizontalFlip(2) end, "p must be")
  T.raises(function() image.resize(img, 0, 5) end, "height must be at least 1")
  T.raises(function() image.resize(vtl.zeros(3, 4, 5, {dtype = "i32"}), 2, 2) end, "u8 (H×W×C) or f32 (C×H×W)")
  T.raises(function() image.resize(vtl.zeros(4, 5, 6, {dtype = "u8"}), 2, 2) end, "1 to 4 channels")
  T.eq(tostring(TF.ToTensor()), "vtl.transforms.ToTensor")
end)

test("resize and crop accept non-contiguous views", function()
  local img = load_rgb("chelsea.png")
  local v = img:narrow(1, 11, 200):narrow(2, 21, 300)
  local a = image.resize(v, 50, 70)
  local b = image.resize(v:contiguous(), 50, 70)
  T.eq(maxdiff(a, b), 0)
  local x = image.to_tensor(img):permute(1, 3, 2) -- a C×W×H view
  T.eq(maxdiff(image.crop(x, 2, 3, 10, 12), x:contiguous():narrow(2, 2, 10):narrow(3, 3, 12)), 0)
  -- crop past the borders fills
  local c = image.crop(img, -1, -1, 4, 4, {fill = 7})
  T.eq(c[1][1][1]:item(), 7)
  T.eq(c[3][3][1]:item(), img[1][1][1]:item())
end)

-- ---- u8 fast paths against the general kernels ----
-- A u8 H×W×C view whose channels are not adjacent in memory (channel stride H*W) takes the
-- general per-element kernels; a contiguous image takes the interleaved u8 paths.
local function planar_view(img) return img:permute(3, 1, 2):contiguous():permute(2, 3, 1) end

-- a photo crop with 1..4 channels
local function photo_channels(c)
  local rgb = load_rgb("astronaut.png"):narrow(1, 101, 160):narrow(2, 141, 190)
  if c == 3 then return rgb:contiguous() end
  if c == 1 then return rgb:narrow(3, 2, 1):contiguous() end
  if c == 2 then return rgb:narrow(3, 1, 2):contiguous() end
  return vtl.cat({rgb, rgb:narrow(3, 3, 1)}, 3):contiguous()
end

test("u8 resize fast path agrees with the general kernel (1..4 channels, each filter)", function()
  for c = 1, 4 do
    local img = photo_channels(c)
    local pv = planar_view(img)
    for _, mode in ipairs {"bilinear", "bicubic", "nearest"} do
      for _, aa in ipairs {true, false} do
        for _, size in ipairs {{97, 131}, {224, 224}, {160, 301}, {300, 190}} do
          local a = image.resize(img, size[1], size[2], {interpolation = mode, antialias = aa})
          local b = image.resize(pv, size[1], size[2], {interpolation = mode, antialias = aa})
          local d = (a:to("f64") - b:to("f64")):abs()
          local what = string.format("%d ch %s aa=%s %dx%d", c, mode, tostring(aa), size[1], size[2])
          -- the same float products, summed in another order now and then
          T.truthy(d:max():item() <= 1, what .. ": max diff " .. d:max():item())
          T.truthy(d:gt(0.5):to("f64"):mean():item() < 0.002, what .. ": too many values differ")
        end
      end
    end
  end
end)

test("resized_crop reads an in-bounds box through a view: equal to crop then resize", function()
  local img = load_rgb("chelsea.png")
  for _, box in ipairs {{1, 1, 300, 451}, {11, 23, 150, 201}, {200, 300, 101, 152}, {5, 7, 40, 30}} do
    local got = TF.resized_crop(img, box[1], box[2], box[3], box[4], {224, 224})
    local want = image.resize(image.crop(img, box[1], box[2], box[3], box[4]), 224, 224)
    T.eq(maxdiff(got, want), 0, table.concat(box, ","))
    local x = image.to_tensor(img)
    local gf = TF.resized_crop(x, box[1], box[2], box[3], box[4], {64, 80})
    T.eq(maxdiff(gf, image.resize(image.crop(x, box[1], box[2], box[3], box[4]), 64, 80)), 0, "f32 " .. table.concat(box, ","))
  end
  -- a box reaching past the image is filled with zeros, as before
  local got = TF.resized_crop(img, -9, 401, 60, 80, {30, 40})
  T.eq(maxdiff(got, image.resize(image.crop(img, -9, 401, 60, 80), 30, 40)), 0)
end)

test("u8 flips and colour blends: interleaved paths equal the general kernels", function()
  for c = 1, 4 do
    local img = photo_channels(c)
    local pv = planar_view(img)
    T.eq(maxdiff(image.hflip(img), image.hflip(pv)), 0, "hflip " .. c)
    T.eq(maxdiff(image.vflip(img), image.vflip(pv)), 0, "vflip " .. c)
    -- and equal to the f32 kernel's flip of the same pixels
    T.eq(maxdiff(image.to_tensor(image.hflip(img)), image.hflip(image.to_tensor(img))), 0, "hflip f32 " .. c)
    if c == 1 or c == 3 then
      for _, f in ipairs {0, 0.37, 1, 1.6} do
        for _, op in ipairs {"adjust_brightness", "adjust_contrast", "adjust_saturation"} do
          T.eq(maxdiff(image[op](img, f), image[op](pv, f)), 0, op .. " " .. c .. " " .. f)
        end
      end
    end
  end
end)

test("to_tensor with mean and std equals to_tensor then normalize; Compose fuses them", function()
  local mean, std = {0.485, 0.456, 0.406}, {0.229, 0.224, 0.225}
  for c = 1, 4 do
    local img = photo_channels(c)
    local m, s = {}, {}
    for i = 1, c do m[i], s[i] = mean[(i - 1) % 3 + 1], std[(i - 1) % 3 + 1] end
    local want = image.normalize(image.to_tensor(img), m, s)
    T.eq(maxdiff(image.to_tensor(img, m, s), want), 0, "channels " .. c)
    T.eq(maxdiff(image.to_tensor(planar_view(img), m, s), want), 0, "planar view " .. c)
    T.eq(maxdiff(image.to_tensor(img, 0.5, 0.25), image.normalize(image.to_tensor(img), 0.5, 0.25)), 0, "scalar")
  end
  local img = load_rgb("chelsea.png")
  local fused = TF.Compose {TF.ToTensor(), TF.Normalize(mean, std)}
  local steps = TF.Normalize(mean, std)(TF.ToTensor()(img))
  T.eq(maxdiff(fused(img), steps), 0, "Compose")
  -- the steps' own errors when the fused call cannot run
  T.raises(function() fused(image.to_tensor(img)) end, "to_tensor: expected a u8 H×W×C image, got f32")
  T.raises(function() TF.Compose {TF.ToTensor(), TF.Normalize({0.5, 0.5}, {0.2, 0.2})}(img) end,
    "normalize: mean and std have 2 entries for an image of 3 channels")
  T.raises(function() image.to_tensor(img, {0.5, 0.5}, {0.2}) end, "to_tensor: mean has 2 entries but std has 1")
  T.raises(function() image.to_tensor(img, {0.5, "x", 0.5}, {1, 1, 1}) end, "to_tensor: mean[2] must be a number")
  T.raises(function() image.to_tensor(img, {0.5, 0.5, 0.5}, {1, 0, 1}) end, "to_tensor: std[2] is 0")
  T.raises(function() image.to_tensor(img, {0.5, 0.5, 0.5}) end, "to_tensor")
  T.raises(function() image.to_tensor(img, 0.5, {}) end, "to_tensor: std must have 1 to 64 entries")
end)

test("random flips: rate and generator determinism", function()
  local img = vtl.arange(0, 12):to("u8"):view(2, 2, 3)
  local tf = TF.RandomHorizontalFlip(0.3)
  local g = vtl.Generator(7)
  local flips = 0
  for _ = 1, 2000 do
    if tf(img, g)[1][1][1]:item() ~= img[1][1][1]:item() then flips = flips + 1 end
  end
  T.truthy(flips > 520 and flips < 680, "flip rate " .. flips / 2000)
  local function seq(seed)
    local gg, s = vtl.Generator(seed), {}
    for i = 1, 20 do s[i] = tf(img, gg)[1][1][1]:item() end
    return table.concat(s, ",")
  end
  T.eq(seq(3), seq(3))
  T.truthy(seq(3) ~= seq(4))
end)

test("cleanup", function() os.execute("rm -rf '" .. TMP .. "'") end)
