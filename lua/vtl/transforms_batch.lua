-- vtl.transforms.batch: resize, crops, flips and normalisation of a whole (N,C,H,W) float batch
-- as tensor ops, on the batch's own device. Augmentation runs per image on the CPU workers by
-- default (vtl.transforms); these move the last steps onto the GPU when decoding and cropping
-- on the CPU cannot keep up, the way fastai's batch transforms do. Each random draw comes from
-- the generator passed in (a Learner passes one per batch, derived from its seed).
--
--   local B = vtl.transforms.batch
--   local gpu_aug = B.Compose {
--     function(x, g) return B.random_resized_crop(x, 224, {generator = g}) end,
--     function(x, g) return B.random_horizontal_flip(x, 0.5, g) end,
--     function(x) return B.normalize(x, {0.485, 0.456, 0.406}, {0.229, 0.224, 0.225}) end,
--   }
--   vtl.train.Learner{..., device = "cuda", device_transform = gpu_aug,
--                     valid_device_transform = function(x) return B.normalize(x, mean, std) end}
local vtl = require "vtl"
local F = vtl.nn.functional

local B = {}

local function fail(fn, msg) error("batch." .. fn .. ": " .. msg, 3) end

local function check_batch(fn, x)
  if not vtl.is_tensor(x) then fail(fn, "expected an (N,C,H,W) tensor, got " .. type(x)) end
  if x.ndim ~= 4 then fail(fn, "expected an (N,C,H,W) tensor, got shape {" .. table.concat(x.shape, ",") .. "}") end
  if x.dtype ~= "f32" and x.dtype ~= "f64" and x.dtype ~= "f16" and x.dtype ~= "bf16" then
    fail(fn, "expected a float tensor, got " .. x.dtype)
  end
end

-- {h, w} from a number or a pair of positive integers
local function size2(fn, size)
  local h, w
  if math.type(size) == "integer" then h, w = size, size
  elseif type(size) == "table" and #size == 2 then h, w = size[1], size[2] end
  if math.type(h) ~= "integer" or math.type(w) ~= "integer" or h < 1 or w < 1 then
    fail(fn, "size must be a positive integer or a pair {h, w} of them")
  end
  return h, w
end

local function pair(fn, what, v, default)
  v = v or default
  if type(v) ~= "table" or type(v[1]) ~= "number" or type(v[2]) ~= "number" or v[1] > v[2] then
    fail(fn, what .. " must be a pair {lo, hi} with lo <= hi")
  end
  return v
end

---(x - mean[c]) / std[c] for each channel c.
---@param x vtl.Tensor (N,C,H,W)
---@param mean number[]
---@param std number[]
---@return vtl.Tensor
function B.normalize(x, mean, std)
  check_batch("normalize", x)
  local C = x.shape[2]
  if type(mean) ~= "table" or type(std) ~= "table" or #mean ~= C or #std ~= C then
    fail("normalize", ("mean and std must list one number per channel (%d)"):format(C))
  end
  for c = 1, C do
    if not (std[c] > 0) then fail("normalize", "std must be positive, got " .. tostring(std[c])) end
  end
  local opts = {dtype = x.dtype, device = x.device}
  return (x - vtl.tensor(mean, opts):view(1, C, 1, 1)) / vtl.tensor(std, opts):view(1, C, 1, 1)
end

---Every image resized to size ({h, w}, or n for n x n): opts.mode "bilinear" (default) or
---"nearest", half-pixel centres as F.interpolate (no antialiasing).
---@param x vtl.Tensor (N,C,H,W)
---@return vtl.Tensor (N,C,h,w)
function B.resize(x, size, opts)
  check_batch("resize", x)
  local h, w = size2("resize", size)
  local mode = opts and opts.mode or "bilinear"
  if mode ~= "bilinear" and mode ~= "nearest" then fail("resize", "mode must be 'bilinear' or 'nearest', got " .. tostring(mode)) end
  if h == x.shape[3] and w == x.shape[4] then return x end
  return F.interpolate(x, {size = {h, w}, mode = mode, align_corners = mode == "bilinear" and false or nil})
end

---The central h x w window of every image (torchvision's offsets: Python's round((H - h) / 2)).
---@return vtl.Tensor (N,C,h,w)
function B.center_crop(x, size)
  check_batch("center_crop", x)
  local h, w = size2("center_crop", size)
  local H, W = x.shape[3], x.shape[4]
  if h > H or w > W then fail("center_crop", ("crop %dx%d is larger than the images (%dx%d)"):format(h, w, H, W)) end
  local round = require("vtl.transforms")._round_even
  local top, left = round((H - h) / 2), round((W - w) / 2)
  return x:narrow(3, top + 1, h):narrow(4, left + 1, w)
end

---Each image flipped left-right with probability p (default 0.5), drawn from generator.
---@return vtl.Tensor
function B.random_horizontal_flip(x, p, generator)
  check_batch("random_horizontal_flip", x)
  p = p or 0.5
  if type(p) ~= "number" or p < 0 or p > 1 then fail("random_horizontal_flip", "p must be in [0, 1]") end
  local N = x.shape[1]
  local flip = vtl.rand({N}, {generator = generator}):lt(p):to(x.device):view(N, 1, 1, 1)
  local W = x.shape[4]
  return vtl.where(flip, x:index_select(4, vtl.arange(W, 0, -1, {device = x.device})), x)
end

---torchvision's RandomResizedCrop on every image, each with its own draw: a window of random
---area (opts.scale of the image, default {0.08, 1}) and aspect ratio (opts.ratio, default
---{3/4, 4/3}, log-uniform), resized to size with bilinear interpolation. opts.generator.
---@return vtl.Tensor (N,C,h,w)
function B.random_resized_crop(x, size, opts)
  check_batch("random_resized_crop", x)
  local h, w = size2("random_resized_crop", size)
  opts = opts or {}
  local scale = pair("random_resized_crop", "scale", opts.scale, {0.08, 1})
  local ratio = pair("random_resized_crop", "ratio", opts.ratio, {3 / 4, 4 / 3})
  local params = require("vtl.transforms").random_resized_crop_params
  local H, W = x.shape[3], x.shape[4]
  local outs = {}
  for i = 1, x.shape[1] do
    local top, left, ch, cw = params(opts.generator, H, W, scale, ratio)
    local crop = x:narrow(1, i, 1):narrow(3, top, ch):narrow(4, left, cw)
    outs[i] = F.interpolate(crop, {size = {h, w}, mode = "bilinear", align_corners = false})
  end
  return vtl.cat(outs, 1)
end

---fn(x, generator) applying steps in order; each step is called as step(x, generator).
---@param steps function[]
---@return function
function B.Compose(steps)
  if type(steps) ~= "table" or #steps == 0 then fail("Compose", "expected a non-empty list of functions") end
  for i, f in ipairs(steps) do
    if type(f) ~= "function" and not (type(f) == "table" and getmetatable(f) and getmetatable(f).__call) then
      fail("Compose", ("step %d is not callable"):format(i))
    end
  end
  return function(x, generator)
    for _, f in ipairs(steps) do x = f(x, generator) end
    return x
  end
end

return B
