-- vtl.transforms: image transforms composed in Lua, executed in C (vtl.image kernels).
--
-- An image is a u8 tensor H×W×C (as vtl.image.load returns) or an f32 tensor C×H×W (after
-- ToTensor). Every transform is callable on one image, `tf(img [, generator])`, and returns a new
-- image; random transforms draw from the generator passed at the call (datasets pass one per
-- sample, derived from seed, epoch and index), else from their own `generator` option, else
-- from vtl's default generator.
--
--   local T = vtl.transforms
--   local tf = T.Compose{T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(mean, std)}
--   local x = tf(vtl.image.load("cat.jpg", {channels = 3}))   -- f32 3×224×224
local vtl = require "vtl"
local image = vtl.image

local T = {}

local Transform = {}
Transform.__index = Transform
Transform.__call = function(self, img, gen) return self.fn(img, gen) end
Transform.__tostring = function(self) return "vtl.transforms." .. self.name end

-- A transform object named `name` running fn(img, gen).
local function make(name, fn, fields)
  local t = fields or {}
  t.name, t.fn = name, fn
  return setmetatable(t, Transform)
end
T.Transform = make

local function check_image(fn, img)
  if not vtl.is_tensor(img) then error(fn .. ": expected an image tensor, got " .. type(img), 3) end
end

---Height and width of an image (u8 H×W×C or H×W; float C×H×W or H×W).
---@param img vtl.Tensor
---@return integer, integer
function T.size_of(img)
  local s = img.shape
  if #s == 2 then return s[1], s[2] end
  if img.dtype == "u8" then return s[1], s[2] end
  return s[2], s[3]
end

local function size_pair(fn, size)
  if type(size) == "number" then
    if math.type(size) ~= "integer" or size < 1 then error(fn .. ": size must be a positive integer, got " .. tostring(size), 3) end
    return size, size
  end
  if type(size) == "table" and (#size == 1 or #size == 2) then
    local h, w = size[1], size[#size]
    for _, v in ipairs {h, w} do
      if math.type(v) ~= "integer" or v < 1 then error(fn .. ": size entries must be positive integers", 3) end
    end
    return h, w
  end
  error(fn .. ": size must be an integer or {h, w}, got " .. type(size), 3)
end

-- Python's round(): half to even.
local function round_even(x)
  local f = math.floor(x)
  local d = x - f
  if d > 0.5 or (d == 0.5 and f % 2 == 1) then f = f + 1 end
  return math.tointeger(f) or f
end

local function generator_of(gen, opts_gen)
  return gen or opts_gen
end

local function uniform(gen)
  return vtl.rand({1}, gen and {generator = gen} or {}):item()
end
T.uniform = uniform

-- ---- functional forms ----

---Output size (h, w) of resizing an h×w image to `size` as torchvision does: a number (or {n})
---sets the short side, keeping the aspect ratio (long side truncated); {h, w} is exact.
---@return integer, integer
function T.resized_size(h, w, size, max_size)
  if type(size) == "table" and #size == 2 then return size[1], size[2] end
  local s = type(size) == "table" and size[1] or size
  local short, long = w, h
  if w > h then short, long = h, w end
  local new_short, new_long = s, math.floor(s * long / short)
  if max_size then
    if max_size <= s then error("Resize: max_size (" .. max_size .. ") must be larger than the size (" .. s .. ")", 3) end
    if new_long > max_size then new_short, new_long = math.floor(max_size * new_short / new_long), max_size end
  end
  if w <= h then return new_long, new_short end
  return new_short, new_long
end

---Resizes an image (see T.Resize).
---@param img vtl.Tensor
---@return vtl.Tensor
function T.resize(img, size, opts)
  check_image("resize", img)
  opts = opts or {}
  local h, w = T.size_of(img)
  local oh, ow = T.resized_size(h, w, size, opts.max_size)
  local aa = opts.antialias
  if aa == nil then aa = true end
  return image.resize(img, oh, ow, {interpolation = opts.interpolation or "bilinear", antialias = aa})
end

---The centre region of size {h, w} (a number: square), padded with zeros where it is larger
---than the image; placement as torchvision's center_crop.
---@param img vtl.Tensor
---@return vtl.Tensor
function T.center_crop(img, size)
  check_image("center_crop", img)
  local ch, cw = size_pair("CenterCrop", size)
  local h, w = T.size_of(img)
  local top = ch > h and -((ch - h) // 2) or round_even((h - ch) / 2)
  local left = cw > w and -((cw - w) // 2) or round_even((w - cw) / 2)
  return image.crop(img, top + 1, left + 1, ch, cw)
end

-- ---- transforms ----

---u8 H×W×C in [0, 255] -> f32 C×H×W in [0, 1].
function T.ToTensor()
  return make("ToTensor", function(img)
    check_image("ToTensor", img)
    return image.to_tensor(img)
  end)
end

---(x - mean[c]) / std[c] on an f32 C×H×W tensor.
---@param mean number[]
---@param std number[]
function T.Normalize(mean, std)
  if type(mean) ~= "table" and type(mean) ~= "number" then error("Normalize: mean must be a list of numbers", 2) end
  if type(std) ~= "table" and type(std) ~= "number" then error("Normalize: std must be a list of numbers", 2) end
  if type(std) == "table" then
    for i, s in ipairs(std) do if s == 0 then error("Normalize: std[" .. i .. "] is 0", 2) end end
  end
  return make("Normalize", function(img)
    check_image("Normalize", img)
    return image.normalize(img, mean, std)
  end, {mean = mean, std = std})
end

---Resize to `size`: a number sets the short side (aspect kept), {h, w} is exact.
---opts: interpolation "bilinear" (default) | "nearest" | "bicubic"; antialias (default true,
---as torchvision's tensor resize with antialias=True); max_size (long-side cap).
---@param size integer|integer[]
function T.Resize(size, opts)
  opts = opts or {}
  size_pair("Resize", size)
  local interp = opts.interpolation or "bilinear"
  if interp ~= "bilinear" and interp ~= "nearest" and interp ~= "bicubic" then
    error("Resize: interpolation must be \"nearest\", \"bilinear\" or \"bicubic\", got " .. tostring(interp), 2)
  end
  return make("Resize", function(img) return T.resize(img, size, opts) end, {size = size, interpolation = interp})
end

---The centre crop of size {h, w} (a number: square).
function T.CenterCrop(size)
  size_pair("CenterCrop", size)
  return make("CenterCrop", function(img) return T.center_crop(img, size) end, {size = size})
end

local function random_flip(name, flip, p, opts)
  p = p or 0.5
  if type(p) ~= "number" or p < 0 or p > 1 then error(name .. ": p must be a number in [0, 1]", 3) end
  opts = opts or {}
  return make(name, function(img, gen)
    check_image(name, img)
    if uniform(generator_of(gen, opts.generator)) < p then return flip(img) end
    return img
  end, {p = p})
end

---Mirrors left-right with probability p (default 0.5).
---@param p? number
---@param opts? {generator: vtl.Generator}
function T.RandomHorizontalFlip(p, opts) return random_flip("RandomHorizontalFlip", image.hflip, p, opts) end

---Mirrors top-bottom with probability p (default 0.5).
---@param p? number
---@param opts? {generator: vtl.Generator}
function T.RandomVerticalFlip(p, opts) return random_flip("RandomVerticalFlip", image.vflip, p, opts) end

---Runs the transforms in order; callable as tf(img [, generator]).
---@param list table
function T.Compose(list)
  if type(list) ~= "table" then error("Compose: expected a list of transforms", 2) end
  for i, f in ipairs(list) do
    local ok = type(f) == "function" or (type(f) == "table" and getmetatable(f) and getmetatable(f).__call)
    if not ok then error("Compose: step " .. i .. " is not callable (got " .. type(f) .. ")", 2) end
  end
  local steps = {table.unpack(list)}
  return make("Compose", function(img, gen)
    for _, f in ipairs(steps) do img = f(img, gen) end
    return img
  end, {transforms = steps})
end

local IMAGENET_MEAN, IMAGENET_STD = {0.485, 0.456, 0.406}, {0.229, 0.224, 0.225}

---timm's evaluation preset from a pretrained_cfg: resize the short side to
---floor(size / crop_pct), center crop to size, ToTensor, Normalize(mean, std).
---cfg fields: input_size ({3, h, w} or a number), crop_pct (0.875), interpolation ("bilinear"),
---mean, std (ImageNet's).
---@param cfg table
function T.eval_transform(cfg)
  cfg = cfg or {}
  local size = cfg.input_size or 224
  local h, w
  if type(size) == "table" then h, w = size[#size - 1], size[#size] else h, w = size, size end
  local crop_pct = cfg.crop_pct or 0.875
  if type(crop_pct) ~= "number" or crop_pct <= 0 then error("eval_transform: crop_pct must be a positive number", 2) end
  local scale
  if h == w then scale = math.floor(h / crop_pct)
  else scale = {math.floor(h / crop_pct), math.floor(w / crop_pct)} end
  return T.Compose {
    T.Resize(scale, {interpolation = cfg.interpolation or "bilinear"}),
    T.CenterCrop({h, w}),
    T.ToTensor(),
    T.Normalize(cfg.mean or IMAGENET_MEAN, cfg.std or IMAGENET_STD),
  }
end

return T
