-- vtl.transforms.batch (whole-batch resize, crops, flips, normalisation on the batch's device)
-- against the per-image transforms and F.interpolate that the other suites check against
-- torchvision, their random draws against the same generator, argument errors, and the
-- Learner's device_transform / valid_device_transform hooks. test_cuda runs them on a GPU.
local T = require "testlib"
local vtl = require "vtl"
local TF = vtl.transforms
local B = TF.batch
local F = vtl.nn.functional

local function batch(n, c, h, w, seed) return vtl.randn({n, c, h, w}, {generator = vtl.Generator(seed or 1)}) end

T.test("batch.normalize: (x - mean[c]) / std[c]; errors name the argument", function()
  local x = batch(2, 3, 4, 5)
  local y = B.normalize(x, {0.5, -1, 2}, {2, 0.5, 4})
  local want = vtl.stack({(x:select(2, 1) - 0.5) / 2, (x:select(2, 2) + 1) / 0.5, (x:select(2, 3) - 2) / 4}, 2)
  T.close(y, want, 1e-6)
  T.raises(function() B.normalize(x, {0, 0}, {1, 1}) end, "batch.normalize: mean and std must list one number per channel (3)")
  T.raises(function() B.normalize(x, {0, 0, 0}, {1, 0, 1}) end, "batch.normalize: std must be positive, got 0")
  T.raises(function() B.normalize(x:select(1, 1), {0, 0, 0}, {1, 1, 1}) end, "batch.normalize: expected an (N,C,H,W) tensor, got shape {3,4,5}")
  T.raises(function() B.normalize(x:long(), {0, 0, 0}, {1, 1, 1}) end, "batch.normalize: expected a float tensor, got i64")
end)

T.test("batch.resize: F.interpolate's bilinear (or nearest) resampling of every image", function()
  local x = batch(3, 2, 17, 23)
  T.close(B.resize(x, {9, 31}), F.interpolate(x, {size = {9, 31}, mode = "bilinear", align_corners = false}), 0)
  T.close(B.resize(x, 8, {mode = "nearest"}), F.interpolate(x, {size = {8, 8}, mode = "nearest"}), 0)
  T.truthy(rawequal(B.resize(x, {17, 23}), x), "same size: the batch itself")
  T.raises(function() B.resize(x, {0, 3}) end, "batch.resize: size must be a positive integer or a pair {h, w} of them")
  T.raises(function() B.resize(x, 8, {mode = "bicubic"}) end, "batch.resize: mode must be 'bilinear' or 'nearest', got bicubic")
end)

T.test("batch.center_crop: the per-image CenterCrop's window (Python's rounding of odd margins)", function()
  for _, c in ipairs({{9, 12, 4, 5}, {8, 8, 3, 3}, {10, 7, 10, 2}, {11, 13, 6, 8}}) do
    local x = batch(2, 3, c[1], c[2], c[1])
    local y = B.center_crop(x, {c[3], c[4]})
    for i = 1, 2 do T.close(y:select(1, i), TF.center_crop(x:select(1, i), {c[3], c[4]}), 0, table.concat(c, "x")) end
  end
  T.raises(function() B.center_crop(batch(1, 1, 4, 4), 5) end, "batch.center_crop: crop 5x5 is larger than the images (4x4)")
end)

T.test("batch.random_horizontal_flip: each image by its own draw from the generator", function()
  local x = batch(16, 2, 3, 5)
  local mirror = x:index_select(4, vtl.arange(5, 0, -1))
  T.close(B.random_horizontal_flip(x, 0, vtl.Generator(3)), x, 0)
  T.close(B.random_horizontal_flip(x, 1, vtl.Generator(3)), mirror, 0)
  local y = B.random_horizontal_flip(x, 0.5, vtl.Generator(3))
  local draws = vtl.rand({16}, {generator = vtl.Generator(3)}):lt(0.5):totable()
  local flipped = 0
  for i = 1, 16 do
    T.close(y:select(1, i), (draws[i] and mirror or x):select(1, i), 0, "image " .. i)
    if draws[i] then flipped = flipped + 1 end
  end
  T.truthy(flipped > 0 and flipped < 16, "both outcomes drawn")
  T.raises(function() B.random_horizontal_flip(x, 1.5) end, "batch.random_horizontal_flip: p must be in [0, 1]")
end)

T.test("batch.random_resized_crop: torchvision's window per image from the generator, resized bilinearly", function()
  local x = batch(6, 3, 40, 30)
  local y = B.random_resized_crop(x, {16, 12}, {generator = vtl.Generator(9)})
  T.eq(table.concat(y.shape, ","), "6,3,16,12")
  local g = vtl.Generator(9)
  local windows = {}
  for i = 1, 6 do
    local top, left, ch, cw = TF.random_resized_crop_params(g, 40, 30, {0.08, 1}, {3 / 4, 4 / 3})
    windows[("%d,%d,%d,%d"):format(top, left, ch, cw)] = true
    local crop = x:narrow(1, i, 1):narrow(3, top, ch):narrow(4, left, cw)
    T.close(y:narrow(1, i, 1), F.interpolate(crop, {size = {16, 12}, mode = "bilinear", align_corners = false}), 0, "image " .. i)
  end
  local n = 0
  for _ in pairs(windows) do n = n + 1 end
  T.truthy(n > 1, "images get their own windows")
  -- the whole image at its own aspect ratio: a plain resize
  T.close(B.random_resized_crop(x, {20, 15}, {scale = {1, 1}, ratio = {0.75, 0.75}, generator = vtl.Generator(1)}),
    B.resize(x, {20, 15}), 1e-6)
  T.raises(function() B.random_resized_crop(x, 8, {scale = {0.9, 0.1}}) end, "batch.random_resized_crop: scale must be a pair {lo, hi} with lo <= hi")
end)

T.test("batch.Compose: steps in order, each given the generator", function()
  local seen = {}
  local f = B.Compose {
    function(x, g) seen[#seen + 1] = g; return x + 1 end,
    function(x, g) seen[#seen + 1] = g; return x * 2 end,
  }
  local g = vtl.Generator(0)
  T.close(f(vtl.zeros(1, 1, 1, 1), g), {{{{2}}}}, 0)
  T.truthy(rawequal(seen[1], g) and rawequal(seen[2], g))
  T.raises(function() B.Compose {} end, "batch.Compose: expected a non-empty list of functions")
  T.raises(function() B.Compose {function() end, 3} end, "batch.Compose: step 2 is not callable")
end)

T.test("Learner: device_transform on training batches (seeded per batch), valid_device_transform on validation and predict", function()
  local toydata = require "toydata"
  local calls = {train = 0, valid = 0, draws = {}}
  local function make()
    vtl.seed(0)
    local model = vtl.nn.Sequential(vtl.nn.Flatten(), vtl.nn.Linear(3 * 12 * 12, 4))
    return vtl.train.Learner {
      model = model, train = toydata(32, 5), valid = toydata(16, 6), batch_size = 8, progress = false,
      device_transform = function(x, g)
        calls.train = calls.train + 1
        calls.draws[#calls.draws + 1] = vtl.rand({1}, {generator = g}):item()
        return B.random_horizontal_flip(x, 0.5, g)
      end,
      valid_device_transform = function(x, g)
        T.eq(g, nil, "validation gets no generator")
        calls.valid = calls.valid + 1
        return B.normalize(x, {0, 0, 0}, {1, 1, 1})
      end,
    }
  end
  local learn = make()
  learn:fit(1, 1e-2)
  T.eq(calls.train, 4, "four training batches")
  T.truthy(calls.valid >= 1, "validation batches")
  local first = {table.unpack(calls.draws)}
  local v = calls.valid
  learn:predict(vtl.randn(4, 3, 12, 12))
  T.eq(calls.valid, v + 1, "predict runs the validation transform")
  -- the same seed draws the same augmentations
  calls.draws = {}
  make():fit(1, 1e-2)
  T.close(calls.draws, first, 0)
  T.raises(function() vtl.train.Learner {model = vtl.nn.Linear(2, 2), device_transform = 3} end,
    "Learner: device_transform must be a function(input, generator), got number")
end)
