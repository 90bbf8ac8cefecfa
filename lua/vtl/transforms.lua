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
--
-- A transform object is plain data: its name and its parameters as fields ({name = "RandomCrop",
-- size = {224, 224}, ...}), with a shared metatable whose __call runs T.apply[name]. A copy of the
-- table (in another Lua state, say) becomes callable again with T.restore(copy). Plain Lua
-- functions are accepted as steps anywhere and are called as fn(img, generator).
--
-- The functional forms (T.rotate, T.adjust_hue, ...) follow torchvision.transforms.functional on
-- tensors, parameters and rounding included; positions (crop's top and left) are 1-based.
local vtl = require "vtl"
local image = vtl.image

local T = {}

---The functions behind each transform, by name: apply[name](self, img, gen).
local apply = {}
T.apply = apply

local Transform = {__name = "vtl.transforms.Transform"}
Transform.__index = Transform
Transform.__call = function(self, img, gen)
  local fn = rawget(self, "fn")
  if fn then return fn(img, gen) end
  return apply[self.name](self, img, gen)
end
Transform.__tostring = function(self) return "vtl.transforms." .. self.name end

-- A transform object named `name` with the given fields (registered in `apply`).
local function make(name, fields)
  local t = fields or {}
  t.name = name
  return setmetatable(t, Transform)
end

---A custom transform named `name` running fn(img, gen); fields are kept on the object.
---@param name string
---@param fn fun(img: vtl.Tensor, gen?: vtl.Generator): vtl.Tensor
---@param fields? table
function T.Transform(name, fn, fields)
  local t = fields or {}
  t.name, t.fn = name, fn
  return setmetatable(t, Transform)
end

---Makes a copied transform table (and the transforms it holds) callable again; returns it.
---@param obj table
function T.restore(obj)
  if type(obj) == "table" and type(obj.name) == "string" and (apply[obj.name] or obj.fn) then
    setmetatable(obj, Transform)
    if type(obj.transforms) == "table" then
      for _, s in ipairs(obj.transforms) do T.restore(s) end
    end
  end
  return obj
end

---True when v is a transform object.
function T.is_transform(v) return getmetatable(v) == Transform end

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

---Channel count of an image (u8 H×W×C, float C×H×W; 2-D: 1).
---@param img vtl.Tensor
---@return integer
function T.channels_of(img)
  local s = img.shape
  if #s == 2 then return 1 end
  return img.dtype == "u8" and s[3] or s[1]
end

-- ---- argument checks (errors name the transform and the argument) ----

local function fail(fn, msg) error(fn .. ": " .. msg, 4) end

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

local function check_p(fn, p, default)
  if p == nil then return default end
  if type(p) ~= "number" or not (p >= 0 and p <= 1) then fail(fn, "p must be a number in [0, 1], got " .. tostring(p)) end
  return p
end

local function check_opts(fn, opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then fail(fn, "options must be a table, got " .. type(opts)) end
  return opts
end

-- {lo, hi} with lo <= hi inside [min, max] (either may be nil), as numbers
local function check_range(fn, what, v, min, max)
  if type(v) ~= "table" or #v ~= 2 or type(v[1]) ~= "number" or type(v[2]) ~= "number" then
    fail(fn, what .. " must be a pair {min, max} of numbers, got " .. (type(v) == "table" and #v .. " entries" or type(v)))
  end
  if not (v[1] <= v[2]) then fail(fn, what .. " must be {min, max} with min <= max, got {" .. v[1] .. ", " .. v[2] .. "}") end
  if (min and v[1] < min) or (max and v[2] > max) then
    fail(fn, string.format("%s must lie in [%s, %s], got {%g, %g}", what, tostring(min or "-inf"), tostring(max or "inf"), v[1], v[2]))
  end
  return {v[1], v[2]}
end

-- a number d >= 0 (-> {-d, d}) or a {min, max} pair (torchvision's _setup_angle)
local function check_degrees(fn, what, v)
  if type(v) == "number" then
    if not (v >= 0) then fail(fn, what .. " as a single number must be >= 0, got " .. tostring(v)) end
    return {-v, v}
  end
  return check_range(fn, what, v)
end

local function check_interp(fn, v, allowed, default)
  if v == nil then return default end
  for _, a in ipairs(allowed) do if v == a then return v end end
  fail(fn, "interpolation must be \"" .. table.concat(allowed, "\", \"") .. "\", got " .. tostring(v))
end

-- fill: nil, a number or a list of numbers
local function check_fill(fn, v)
  if v == nil or type(v) == "number" then return v end
  if type(v) == "table" and #v >= 1 then
    for i, x in ipairs(v) do
      if type(x) ~= "number" then fail(fn, "fill[" .. i .. "] must be a number, got " .. type(x)) end
    end
    return v
  end
  fail(fn, "fill must be a number or a list of numbers, got " .. type(v))
end

local function check_callable(fn, step, i)
  local ok = type(step) == "function" or (type(step) == "table" and getmetatable(step) and getmetatable(step).__call)
  if not ok then fail(fn, "step " .. i .. " is not callable (got " .. type(step) .. ")") end
end

local function check_list(fn, list)
  if type(list) ~= "table" or getmetatable(list) == Transform then fail(fn, "expected a list of transforms, got " .. type(list)) end
  if #list == 0 then fail(fn, "expected a non-empty list of transforms") end
  for i, f in ipairs(list) do check_callable(fn, f, i) end
  return {table.unpack(list)}
end

-- Python's round(): half to even.
local function round_even(x)
  local f = math.floor(x)
  local d = x - f
  if d > 0.5 or (d == 0.5 and f % 2 == 1) then f = f + 1 end
  return math.tointeger(f) or f
end

-- int(): toward zero
local function trunc(x)
  local t = x >= 0 and math.floor(x) or math.ceil(x)
  return math.tointeger(t) or t
end

-- x rounded to float32
local function f32(x) return (string.unpack("f", string.pack("f", x))) end

-- ---- random draws from the call's generator ----

local function draws(gen, n) return vtl.rand({n}, {generator = gen, dtype = "f64"}):totable() end

local function uniform(gen, lo, hi)
  local u = draws(gen, 1)[1]
  if lo == nil then return u end
  return lo + (hi - lo) * u
end
T.uniform = function(gen) return uniform(gen) end

-- an integer in [lo, hi)
local function randint(gen, lo, hi)
  local v = lo + math.floor(uniform(gen) * (hi - lo))
  return v < hi and v or hi - 1
end

-- a random permutation of 1..n
local function randperm(gen, n)
  local u = draws(gen, n)
  local p = {}
  for i = 1, n do p[i] = i end
  for i = n, 2, -1 do
    local j = 1 + math.floor(u[i] * i)
    if j > i then j = i end
    p[i], p[j] = p[j], p[i]
  end
  return p
end

local function gen_of(self, gen) return gen or self.generator end

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

---Rows top..top+h-1 and columns left..left+w-1 (1-based; outside the image: zeros).
---@param img vtl.Tensor
---@return vtl.Tensor
function T.crop(img, top, left, h, w)
  check_image("crop", img)
  return image.crop(img, top, left, h, w)
end

---Pads by `padding` (n: all sides; {left_right, top_bottom}; {left, top, right, bottom}).
---opts: fill (0, for "constant"), padding_mode "constant" | "edge" | "reflect" | "symmetric".
---@param img vtl.Tensor
---@return vtl.Tensor
function T.pad(img, padding, opts)
  check_image("pad", img)
  opts = opts or {}
  return image.pad(img, padding, {mode = opts.padding_mode or "constant", fill = opts.fill or 0})
end

---Crops rows top.., columns left.. (1-based, h×w) and resizes to size ({h, w} or a number:
---square). opts: interpolation ("bilinear"), antialias (true).
---@param img vtl.Tensor
---@return vtl.Tensor
function T.resized_crop(img, top, left, h, w, size, opts)
  check_image("resized_crop", img)
  local oh, ow = size_pair("resized_crop", size)
  opts = opts or {}
  local aa = opts.antialias
  if aa == nil then aa = true end
  local ih, iw = T.size_of(img)
  local c
  if top >= 1 and left >= 1 and h >= 1 and w >= 1 and top + h - 1 <= ih and left + w - 1 <= iw then
    -- a box inside the image: resize reads it through a view, no copy
    local hd = (#img.shape == 3 and img.dtype ~= "u8") and 2 or 1
    c = img:narrow(hd, top, h):narrow(hd + 1, left, w)
  else
    c = image.crop(img, top, left, h, w)
  end
  return image.resize(c, oh, ow, {interpolation = opts.interpolation or "bilinear", antialias = aa})
end

-- torchvision's _get_inverse_affine_matrix (inverted): output -> input, centred coordinates
local function inverse_affine(cx, cy, angle, tx, ty, scale, shx, shy)
  local rot, sx, sy = math.rad(angle), math.rad(shx), math.rad(shy)
  local a = math.cos(rot - sy) / math.cos(sy)
  local b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
  local c = math.sin(rot - sy) / math.cos(sy)
  local d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
  local m = {d / scale, -b / scale, 0.0 / scale, -c / scale, a / scale, 0.0 / scale}
  m[3] = m[3] + (m[1] * (-cx - tx) + m[2] * (-cy - ty))
  m[6] = m[6] + (m[4] * (-cx - tx) + m[5] * (-cy - ty))
  m[3] = m[3] + cx
  m[6] = m[6] + cy
  return m
end
T.inverse_affine_matrix = inverse_affine

-- torchvision's _compute_affine_output_size (float32, 1e-4 truncation): width, height
local function expanded_size(m, w, h)
  local t = {}
  for i = 1, 6 do t[i] = f32(m[i]) end
  local hw, hh = f32(0.5 * w), f32(0.5 * h)
  local pts = {{-hw, -hh}, {-hw, hh}, {hw, hh}, {hw, -hh}}
  local lo, hi = {math.huge, math.huge}, {-math.huge, -math.huge}
  for _, p in ipairs(pts) do
    for k = 1, 2 do
      local o = (k - 1) * 3
      local v = f32(f32(f32(p[1] * t[o + 1]) + f32(p[2] * t[o + 2])) + t[o + 3])
      lo[k], hi[k] = math.min(lo[k], v), math.max(hi[k], v)
    end
  end
  local tol = f32(1e-4)
  local size = {}
  for k, half in ipairs {hw, hh} do
    local mx, mn = f32(hi[k] + half), f32(lo[k] + half)
    local cmax = math.ceil(f32(trunc(f32(mx / tol)) * tol))
    local cmin = math.floor(f32(trunc(f32(mn / tol)) * tol))
    size[k] = math.tointeger(cmax - cmin)
  end
  return size[1], size[2]
end

local function centre_offset(img, center)
  if center == nil then return 0.0, 0.0 end
  local h, w = T.size_of(img)
  return center[1] - w * 0.5, center[2] - h * 0.5
end

---Rotates counter-clockwise by `angle` degrees about the centre (or opts.center = {x, y}, in
---pixels from the top-left corner). opts: interpolation "nearest" (default) | "bilinear",
---expand (false: keep the size), fill (nil: zeros; a number or a list per channel).
---@param img vtl.Tensor
---@param angle number
---@return vtl.Tensor
function T.rotate(img, angle, opts)
  check_image("rotate", img)
  if type(angle) ~= "number" then error("rotate: angle must be a number, got " .. type(angle), 2) end
  opts = opts or {}
  local cx, cy = centre_offset(img, opts.center)
  local m = inverse_affine(cx, cy, -angle, 0.0, 0.0, 1.0, 0.0, 0.0)
  local h, w = T.size_of(img)
  local oh, ow = h, w
  if opts.expand then ow, oh = expanded_size(m, w, h) end
  return image.warp(img, m, {size = {oh, ow}, interpolation = opts.interpolation or "nearest", fill = opts.fill})
end

---Affine map keeping the centre (or opts.center = {x, y}) fixed: opts angle (degrees, clockwise
---as torchvision), translate {tx, ty} (pixels), scale (1), shear (degrees: a number for x, or
---{sx, sy}), interpolation "nearest" | "bilinear", fill (nil: zeros).
---@param img vtl.Tensor
---@param opts table
---@return vtl.Tensor
function T.affine(img, opts)
  check_image("affine", img)
  opts = opts or {}
  local shear = opts.shear or {0.0, 0.0}
  if type(shear) == "number" then shear = {shear, 0.0} end
  if #shear == 1 then shear = {shear[1], shear[1]} end
  local translate = opts.translate or {0, 0}
  local scale = opts.scale or 1.0
  if not (scale > 0) then error("affine: scale must be positive, got " .. tostring(scale), 2) end
  local cx, cy = centre_offset(img, opts.center)
  local m = inverse_affine(cx, cy, opts.angle or 0.0, translate[1] * 1.0, translate[2] * 1.0, scale, shear[1], shear[2])
  return image.warp(img, m, {interpolation = opts.interpolation or "nearest", fill = opts.fill})
end

T.adjust_brightness = image.adjust_brightness
T.adjust_contrast = image.adjust_contrast
T.adjust_saturation = image.adjust_saturation
T.adjust_sharpness = image.adjust_sharpness
T.adjust_hue = image.adjust_hue
T.rgb_to_grayscale = image.rgb_to_grayscale
T.gaussian_blur = image.gaussian_blur
T.autocontrast = image.autocontrast
T.equalize = image.equalize
T.posterize = image.posterize
T.solarize = image.solarize
T.invert = image.invert
T.erase = image.erase
T.hflip = image.hflip
T.vflip = image.vflip

-- ---- basic transforms ----

apply.ToTensor = function(_, img)
  check_image("ToTensor", img)
  return image.to_tensor(img)
end
---u8 H×W×C in [0, 255] -> f32 C×H×W in [0, 1].
function T.ToTensor() return make("ToTensor") end

apply.Normalize = function(self, img)
  check_image("Normalize", img)
  return image.normalize(img, self.mean, self.std)
end
---(x - mean[c]) / std[c] on an f32 C×H×W tensor.
---@param mean number[]
---@param std number[]
function T.Normalize(mean, std)
  if type(mean) ~= "table" and type(mean) ~= "number" then error("Normalize: mean must be a list of numbers", 2) end
  if type(std) ~= "table" and type(std) ~= "number" then error("Normalize: std must be a list of numbers", 2) end
  if type(std) == "table" then
    for i, s in ipairs(std) do if s == 0 then error("Normalize: std[" .. i .. "] is 0", 2) end end
  elseif std == 0 then
    error("Normalize: std is 0", 2)
  end
  return make("Normalize", {mean = mean, std = std})
end

apply.Resize = function(self, img) return T.resize(img, self.size, self) end
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
  return make("Resize", {size = size, interpolation = interp, antialias = opts.antialias, max_size = opts.max_size})
end

apply.CenterCrop = function(self, img) return T.center_crop(img, self.size) end
---The centre crop of size {h, w} (a number: square).
function T.CenterCrop(size)
  size_pair("CenterCrop", size)
  return make("CenterCrop", {size = size})
end

apply.Pad = function(self, img) return T.pad(img, self.padding, self) end
---Pads by `padding` (see T.pad); opts fill, padding_mode.
function T.Pad(padding, opts)
  opts = check_opts("Pad", opts)
  if type(padding) ~= "number" and type(padding) ~= "table" then error("Pad: padding must be an integer or a list", 2) end
  return make("Pad", {padding = padding, fill = opts.fill or 0, padding_mode = opts.padding_mode or "constant"})
end

local function flip_apply(flip)
  return function(self, img, gen)
    check_image(self.name, img)
    if uniform(gen_of(self, gen)) < self.p then return flip(img) end
    return img
  end
end
apply.RandomHorizontalFlip = flip_apply(image.hflip)
apply.RandomVerticalFlip = flip_apply(image.vflip)

---Mirrors left-right with probability p (default 0.5).
---@param p? number
---@param opts? {generator: vtl.Generator}
function T.RandomHorizontalFlip(p, opts)
  return make("RandomHorizontalFlip", {p = check_p("RandomHorizontalFlip", p, 0.5), generator = opts and opts.generator})
end

---Mirrors top-bottom with probability p (default 0.5).
---@param p? number
---@param opts? {generator: vtl.Generator}
function T.RandomVerticalFlip(p, opts)
  return make("RandomVerticalFlip", {p = check_p("RandomVerticalFlip", p, 0.5), generator = opts and opts.generator})
end

-- ---- combinators ----

-- true when f is the library's own transform `name` (not a custom step)
local function is_builtin(f, name)
  return getmetatable(f) == Transform and rawget(f, "fn") == nil and f.name == name
end

apply.Compose = function(self, img, gen)
  local steps = self.transforms
  local i, n = 1, #steps
  while i <= n do
    local f, nxt = steps[i], steps[i + 1]
    local fused
    if nxt and is_builtin(f, "ToTensor") and is_builtin(nxt, "Normalize") and vtl.is_tensor(img) and img.dtype == "u8" then
      -- ToTensor then Normalize in one pass (bit-identical); on a bad argument the two steps
      -- run as they are, so that their own errors are raised
      local ok, x = pcall(image.to_tensor, img, nxt.mean, nxt.std)
      if ok then img, fused, i = x, true, i + 2 end
    end
    if not fused then
      img = f(img, gen)
      i = i + 1
    end
  end
  return img
end
---Runs the transforms in order; callable as tf(img [, generator]).
---@param list table
function T.Compose(list)
  if type(list) ~= "table" then error("Compose: expected a list of transforms", 2) end
  for i, f in ipairs(list) do
    local ok = type(f) == "function" or (type(f) == "table" and getmetatable(f) and getmetatable(f).__call)
    if not ok then error("Compose: step " .. i .. " is not callable (got " .. type(f) .. ")", 2) end
  end
  return make("Compose", {transforms = {table.unpack(list)}})
end

apply.RandomApply = function(self, img, gen)
  gen = gen_of(self, gen)
  if uniform(gen) >= self.p then return img end
  for _, f in ipairs(self.transforms) do img = f(img, gen) end
  return img
end
---Runs the transforms (a list, or one transform) with probability p (default 0.5).
---@param list table|function
---@param p? number
function T.RandomApply(list, p)
  if type(list) == "function" or getmetatable(list) == Transform then list = {list} end
  return make("RandomApply", {transforms = check_list("RandomApply", list), p = check_p("RandomApply", p, 0.5)})
end

apply.RandomChoice = function(self, img, gen)
  gen = gen_of(self, gen)
  local u, k = uniform(gen), #self.transforms
  if self.p then
    local total, acc = 0, 0
    for _, w in ipairs(self.p) do total = total + w end
    for i, w in ipairs(self.p) do
      acc = acc + w
      if u * total < acc then k = i break end
    end
  else
    k = math.min(1 + math.floor(u * k), k)
  end
  return self.transforms[k](img, gen)
end
---Runs one of the transforms, picked uniformly or with weights opts.p (one per transform).
---@param list table
---@param opts? {p: number[]}
function T.RandomChoice(list, opts)
  local steps = check_list("RandomChoice", list)
  opts = check_opts("RandomChoice", opts)
  local p = opts.p
  if p ~= nil then
    if type(p) ~= "table" or #p ~= #steps then
      error("RandomChoice: p must be a list of " .. #steps .. " weights, one per transform", 2)
    end
    local total = 0
    for i, w in ipairs(p) do
      if type(w) ~= "number" or not (w >= 0) then error("RandomChoice: p[" .. i .. "] must be a number >= 0", 2) end
      total = total + w
    end
    if not (total > 0) then error("RandomChoice: the weights p sum to 0", 2) end
    p = {table.unpack(p)}
  end
  return make("RandomChoice", {transforms = steps, p = p})
end

apply.RandomOrder = function(self, img, gen)
  gen = gen_of(self, gen)
  for _, i in ipairs(randperm(gen, #self.transforms)) do img = self.transforms[i](img, gen) end
  return img
end
---Runs all the transforms in a random order.
---@param list table
function T.RandomOrder(list) return make("RandomOrder", {transforms = check_list("RandomOrder", list)}) end

-- ---- random geometry ----

apply.RandomCrop = function(self, img, gen)
  check_image("RandomCrop", img)
  gen = gen_of(self, gen)
  local popts = {padding_mode = self.padding_mode, fill = self.fill}
  if self.padding then img = T.pad(img, self.padding, popts) end
  local th, tw = self.size[1], self.size[2]
  local h, w = T.size_of(img)
  if self.pad_if_needed and w < tw then img = T.pad(img, {tw - w, 0}, popts) end
  h, w = T.size_of(img)
  if self.pad_if_needed and h < th then img = T.pad(img, {0, th - h}, popts) end
  h, w = T.size_of(img)
  if h < th or w < tw then
    error(string.format("RandomCrop: crop size %d×%d is larger than the image (%d×%d); use pad_if_needed = true", th, tw, h, w), 2)
  end
  if h == th and w == tw then return img end
  local i, j = randint(gen, 0, h - th + 1), randint(gen, 0, w - tw + 1)
  return image.crop(img, i + 1, j + 1, th, tw)
end
---A random size×size (or {h, w}) crop. opts: padding (as T.pad) applied first, pad_if_needed
---(pad images smaller than the crop), fill (0), padding_mode "constant" | "edge" | "reflect" |
---"symmetric".
---@param size integer|integer[]
---@param opts? table
function T.RandomCrop(size, opts)
  local h, w = size_pair("RandomCrop", size)
  opts = check_opts("RandomCrop", opts)
  local mode = opts.padding_mode or "constant"
  if mode ~= "constant" and mode ~= "edge" and mode ~= "reflect" and mode ~= "symmetric" then
    error("RandomCrop: padding_mode must be \"constant\", \"edge\", \"reflect\" or \"symmetric\", got " .. tostring(mode), 2)
  end
  local padding = opts.padding
  if padding ~= nil then
    local ok = math.type(padding) == "integer" and padding >= 0
    if type(padding) == "table" and (#padding == 1 or #padding == 2 or #padding == 4) then
      ok = true
      for _, v in ipairs(padding) do if math.type(v) ~= "integer" or v < 0 then ok = false end end
    end
    if not ok then error("RandomCrop: padding must be an integer >= 0 or a list of 1, 2 or 4 of them", 2) end
  end
  if opts.fill ~= nil and type(opts.fill) ~= "number" then error("RandomCrop: fill must be a number, got " .. type(opts.fill), 2) end
  return make("RandomCrop", {size = {h, w}, padding = padding, pad_if_needed = opts.pad_if_needed and true or false,
                             fill = opts.fill or 0, padding_mode = mode, generator = opts.generator})
end

---torchvision's RandomResizedCrop.get_params: 1-based top, left and the crop's h, w for an
---h×w image (10 tries of a random area and log-uniform aspect ratio, then a centre crop).
---@return integer, integer, integer, integer
function T.random_resized_crop_params(gen, h, w, scale, ratio)
  local area = h * w
  local lr1, lr2 = math.log(ratio[1]), math.log(ratio[2])
  for _ = 1, 10 do
    local u = draws(gen, 2)
    local target = area * (scale[1] + (scale[2] - scale[1]) * u[1])
    local aspect = math.exp(lr1 + (lr2 - lr1) * u[2])
    local cw = round_even(math.sqrt(target * aspect))
    local ch = round_even(math.sqrt(target / aspect))
    if cw > 0 and cw <= w and ch > 0 and ch <= h then
      return randint(gen, 0, h - ch + 1) + 1, randint(gen, 0, w - cw + 1) + 1, ch, cw
    end
  end
  local in_ratio, cw, ch = w / h, w, h
  if in_ratio < math.min(ratio[1], ratio[2]) then
    ch = round_even(w / math.min(ratio[1], ratio[2]))
  elseif in_ratio > math.max(ratio[1], ratio[2]) then
    cw = round_even(h * math.max(ratio[1], ratio[2]))
  end
  return (h - ch) // 2 + 1, (w - cw) // 2 + 1, ch, cw
end

apply.RandomResizedCrop = function(self, img, gen)
  check_image("RandomResizedCrop", img)
  local h, w = T.size_of(img)
  local top, left, ch, cw = T.random_resized_crop_params(gen_of(self, gen), h, w, self.scale, self.ratio)
  return T.resized_crop(img, top, left, ch, cw, self.size, self)
end
---A crop of random area (fraction of the image in opts.scale, default {0.08, 1}) and aspect
---ratio (opts.ratio, default {3/4, 4/3}, drawn log-uniformly), resized to size. opts:
---interpolation "bilinear" | "nearest" | "bicubic", antialias (true).
---@param size integer|integer[]
---@param opts? table
function T.RandomResizedCrop(size, opts)
  local h, w = size_pair("RandomResizedCrop", size)
  opts = check_opts("RandomResizedCrop", opts)
  local scale = check_range("RandomResizedCrop", "scale", opts.scale or {0.08, 1.0}, 0)
  if scale[2] <= 0 then error("RandomResizedCrop: scale must allow a positive area", 2) end
  local ratio = check_range("RandomResizedCrop", "ratio", opts.ratio or {3 / 4, 4 / 3})
  if ratio[1] <= 0 then error("RandomResizedCrop: ratio must be positive, got {" .. ratio[1] .. ", " .. ratio[2] .. "}", 2) end
  local interp = check_interp("RandomResizedCrop", opts.interpolation, {"bilinear", "nearest", "bicubic"}, "bilinear")
  local aa = opts.antialias
  if aa == nil then aa = true end
  return make("RandomResizedCrop", {size = {h, w}, scale = scale, ratio = ratio, interpolation = interp, antialias = aa,
                                    generator = opts.generator})
end

-- fill as torchvision's random geometry transforms pass it: one value per channel
local function fill_for(img, fill)
  if type(fill) == "table" then return fill end
  local c, f = T.channels_of(img), {}
  for i = 1, c do f[i] = fill end
  return f
end

apply.RandomRotation = function(self, img, gen)
  check_image("RandomRotation", img)
  local angle = uniform(gen_of(self, gen), self.degrees[1], self.degrees[2])
  return T.rotate(img, angle, {interpolation = self.interpolation, expand = self.expand, center = self.center,
                               fill = fill_for(img, self.fill)})
end
---Rotation by an angle drawn uniformly from degrees ({min, max}, or d: {-d, d}). opts:
---interpolation "nearest" (default) | "bilinear", expand (false), center ({x, y}), fill (0; a
---number or one per channel).
---@param degrees number|number[]
---@param opts? table
function T.RandomRotation(degrees, opts)
  local fn = "RandomRotation"
  local deg = check_degrees(fn, "degrees", degrees)
  opts = check_opts(fn, opts)
  local center = opts.center
  if center ~= nil and (type(center) ~= "table" or #center ~= 2 or type(center[1]) ~= "number" or type(center[2]) ~= "number") then
    error("RandomRotation: center must be {x, y}", 2)
  end
  return make(fn, {degrees = deg, interpolation = check_interp(fn, opts.interpolation, {"nearest", "bilinear"}, "nearest"),
                   expand = opts.expand and true or false, center = center, fill = check_fill(fn, opts.fill) or 0,
                   generator = opts.generator})
end

apply.RandomAffine = function(self, img, gen)
  check_image("RandomAffine", img)
  gen = gen_of(self, gen)
  local h, w = T.size_of(img)
  local angle = uniform(gen, self.degrees[1], self.degrees[2])
  local tx, ty = 0, 0
  if self.translate then
    local mx, my = self.translate[1] * w, self.translate[2] * h
    tx, ty = round_even(uniform(gen, -mx, mx)), round_even(uniform(gen, -my, my))
  end
  local scale = self.scale and uniform(gen, self.scale[1], self.scale[2]) or 1.0
  local sx, sy = 0.0, 0.0
  if self.shear then
    sx = uniform(gen, self.shear[1], self.shear[2])
    if #self.shear == 4 then sy = uniform(gen, self.shear[3], self.shear[4]) end
  end
  return T.affine(img, {angle = angle, translate = {tx, ty}, scale = scale, shear = {sx, sy},
                        interpolation = self.interpolation, fill = fill_for(img, self.fill), center = self.center})
end
---Random affine map: angle from degrees ({min, max} or d: {-d, d}); opts translate {fx, fy}
---(fractions of width and height, 0..1), scale {min, max} (> 0), shear (d: x in {-d, d};
---{min, max}: x; {xmin, xmax, ymin, ymax}), interpolation "nearest" | "bilinear", fill (0),
---center {x, y}.
---@param degrees number|number[]
---@param opts? table
function T.RandomAffine(degrees, opts)
  local fn = "RandomAffine"
  local deg = check_degrees(fn, "degrees", degrees)
  opts = check_opts(fn, opts)
  local translate = opts.translate
  if translate ~= nil then
    if type(translate) ~= "table" or #translate ~= 2 then error("RandomAffine: translate must be {fx, fy}", 2) end
    for _, t in ipairs(translate) do
      if type(t) ~= "number" or t < 0 or t > 1 then error("RandomAffine: translate values must be in [0, 1]", 2) end
    end
  end
  local scale = opts.scale and check_range(fn, "scale", opts.scale)
  if scale and scale[1] <= 0 then error("RandomAffine: scale values must be positive", 2) end
  local shear = opts.shear
  if shear ~= nil then
    if type(shear) == "table" and #shear == 4 then
      local a, b = check_range(fn, "shear", {shear[1], shear[2]}), check_range(fn, "shear", {shear[3], shear[4]})
      shear = {a[1], a[2], b[1], b[2]}
    else
      shear = check_degrees(fn, "shear", shear)
    end
  end
  return make(fn, {degrees = deg, translate = translate, scale = scale, shear = shear,
                   interpolation = check_interp(fn, opts.interpolation, {"nearest", "bilinear"}, "nearest"),
                   fill = check_fill(fn, opts.fill) or 0, center = opts.center, generator = opts.generator})
end

-- ---- colour ----

-- {lo, hi} for a jitter parameter (torchvision's ColorJitter._check_input); nil: no change
local function jitter_range(name, v, center, lo_bound, hi_bound, clip)
  if v == nil or v == 0 then return nil end
  local r
  if type(v) == "number" then
    if v < 0 then fail("ColorJitter", name .. " as a single number must be >= 0, got " .. v) end
    r = {center - v, center + v}
    if clip then r[1] = math.max(r[1], 0) end
    if hi_bound and r[2] > hi_bound then fail("ColorJitter", name .. " must be at most " .. hi_bound .. ", got " .. v) end
  else
    r = check_range("ColorJitter", name, v, lo_bound, hi_bound)
  end
  if r[1] == center and r[2] == center then return nil end
  return r
end

apply.ColorJitter = function(self, img, gen)
  check_image("ColorJitter", img)
  gen = gen_of(self, gen)
  local order = randperm(gen, 4)
  local u = draws(gen, 4)
  local f = {}
  for i, key in ipairs {"brightness", "contrast", "saturation", "hue"} do
    local r = self[key]
    if r then f[i] = r[1] + (r[2] - r[1]) * u[i] end
  end
  for _, i in ipairs(order) do
    if f[i] then
      if i == 1 then img = image.adjust_brightness(img, f[i])
      elseif i == 2 then img = image.adjust_contrast(img, f[i])
      elseif i == 3 then img = image.adjust_saturation(img, f[i])
      else img = image.adjust_hue(img, f[i]) end
    end
  end
  return img
end
---Random brightness, contrast, saturation and hue, applied in a random order. Each option is a
---number v (factor drawn from [max(0, 1 - v), 1 + v]; hue: [-v, v] with v <= 0.5) or a {min, max}
---range.
---@param opts {brightness?: number|number[], contrast?: number|number[], saturation?: number|number[], hue?: number|number[]}
function T.ColorJitter(opts)
  opts = check_opts("ColorJitter", opts)
  for k in pairs(opts) do
    if k ~= "brightness" and k ~= "contrast" and k ~= "saturation" and k ~= "hue" and k ~= "generator" then
      error("ColorJitter: unknown option '" .. tostring(k) .. "'", 2)
    end
  end
  return make("ColorJitter", {
    brightness = jitter_range("brightness", opts.brightness, 1, 0, nil, true),
    contrast = jitter_range("contrast", opts.contrast, 1, 0, nil, true),
    saturation = jitter_range("saturation", opts.saturation, 1, 0, nil, true),
    hue = jitter_range("hue", opts.hue, 0, -0.5, 0.5, false),
    generator = opts.generator})
end

-- a transform applying fn(self, img) with probability self.p
local function random_op(name, fn)
  apply[name] = function(self, img, gen)
    check_image(name, img)
    if uniform(gen_of(self, gen)) < self.p then return fn(self, img) end
    return img
  end
end

random_op("RandomGrayscale", function(_, img) return image.rgb_to_grayscale(img, T.channels_of(img)) end)
---Grayscale (keeping the channel count) with probability p (default 0.1).
function T.RandomGrayscale(p, opts)
  return make("RandomGrayscale", {p = check_p("RandomGrayscale", p, 0.1), generator = opts and opts.generator})
end

random_op("RandomAutocontrast", function(_, img) return image.autocontrast(img) end)
---Autocontrast with probability p (default 0.5).
function T.RandomAutocontrast(p, opts)
  return make("RandomAutocontrast", {p = check_p("RandomAutocontrast", p, 0.5), generator = opts and opts.generator})
end

random_op("RandomEqualize", function(_, img) return image.equalize(img) end)
---Histogram equalisation (u8 images) with probability p (default 0.5).
function T.RandomEqualize(p, opts)
  return make("RandomEqualize", {p = check_p("RandomEqualize", p, 0.5), generator = opts and opts.generator})
end

random_op("RandomInvert", function(_, img) return image.invert(img) end)
---Inverts the colours with probability p (default 0.5).
function T.RandomInvert(p, opts)
  return make("RandomInvert", {p = check_p("RandomInvert", p, 0.5), generator = opts and opts.generator})
end

random_op("RandomPosterize", function(self, img) return image.posterize(img, self.bits) end)
---Keeps the top `bits` bits (0..8) of each u8 channel, with probability p (default 0.5).
---@param bits integer
function T.RandomPosterize(bits, p, opts)
  if math.type(bits) ~= "integer" or bits < 0 or bits > 8 then
    error("RandomPosterize: bits must be an integer in 0..8, got " .. tostring(bits), 2)
  end
  return make("RandomPosterize", {bits = bits, p = check_p("RandomPosterize", p, 0.5), generator = opts and opts.generator})
end

random_op("RandomSolarize", function(self, img) return image.solarize(img, self.threshold) end)
---Inverts values >= threshold (in the image's own range: 0..255 for u8, 0..1 for f32), with
---probability p (default 0.5).
---@param threshold number
function T.RandomSolarize(threshold, p, opts)
  if type(threshold) ~= "number" or threshold ~= threshold then
    error("RandomSolarize: threshold must be a number, got " .. type(threshold), 2)
  end
  return make("RandomSolarize", {threshold = threshold, p = check_p("RandomSolarize", p, 0.5), generator = opts and opts.generator})
end

random_op("RandomAdjustSharpness", function(self, img) return image.adjust_sharpness(img, self.sharpness_factor) end)
---Sharpness by factor (0: smoothed, 1: unchanged, 2: sharper) with probability p (default 0.5).
---@param factor number
function T.RandomAdjustSharpness(factor, p, opts)
  if type(factor) ~= "number" or not (factor >= 0) then
    error("RandomAdjustSharpness: sharpness_factor must be a number >= 0, got " .. tostring(factor), 2)
  end
  return make("RandomAdjustSharpness", {sharpness_factor = factor, p = check_p("RandomAdjustSharpness", p, 0.5),
                                        generator = opts and opts.generator})
end

apply.GaussianBlur = function(self, img, gen)
  check_image("GaussianBlur", img)
  local s = uniform(gen_of(self, gen), self.sigma[1], self.sigma[2])
  return image.gaussian_blur(img, self.kernel_size, {s, s})
end
---Gaussian blur with kernel_size (odd k or {kx, ky}) and a sigma drawn from sigma ({min, max},
---default {0.1, 2}; a number: fixed).
function T.GaussianBlur(kernel_size, sigma)
  local fn = "GaussianBlur"
  local k = type(kernel_size) == "number" and {kernel_size, kernel_size} or kernel_size
  if type(k) ~= "table" or (#k ~= 1 and #k ~= 2) then error("GaussianBlur: kernel_size must be an odd integer or {kx, ky}", 2) end
  k = {k[1], k[#k]}
  for _, v in ipairs(k) do
    if math.type(v) ~= "integer" or v < 1 or v % 2 == 0 then
      error("GaussianBlur: kernel_size values must be odd positive integers, got " .. tostring(v), 2)
    end
  end
  sigma = sigma or {0.1, 2.0}
  if type(sigma) == "number" then
    if not (sigma > 0) then error("GaussianBlur: sigma must be positive, got " .. sigma, 2) end
    sigma = {sigma, sigma}
  else
    sigma = check_range(fn, "sigma", sigma)
    if not (sigma[1] > 0) then error("GaussianBlur: sigma values must be positive", 2) end
  end
  return make(fn, {kernel_size = k, sigma = sigma})
end

-- ---- tensor level ----

apply.RandomErasing = function(self, img, gen)
  check_image("RandomErasing", img)
  gen = gen_of(self, gen)
  if uniform(gen) >= self.p then return img end
  local c, h, w = T.channels_of(img), T.size_of(img)
  local value = self.value
  if type(value) == "table" and #value ~= 1 and #value ~= c then
    error(string.format("RandomErasing: value has %d entries for an image of %d channels", #value, c), 2)
  end
  local area = h * w
  local lr1, lr2 = math.log(self.ratio[1]), math.log(self.ratio[2])
  for _ = 1, 10 do
    local u = draws(gen, 2)
    local ea = area * (self.scale[1] + (self.scale[2] - self.scale[1]) * u[1])
    local aspect = math.exp(lr1 + (lr2 - lr1) * u[2])
    local eh, ew = round_even(math.sqrt(ea * aspect)), round_even(math.sqrt(ea / aspect))
    if eh < h and ew < w then
      local v = value
      if value == "random" then v = vtl.randn({c, eh, ew}, {generator = gen}) end
      local i, j = randint(gen, 0, h - eh + 1), randint(gen, 0, w - ew + 1)
      return image.erase(img, i + 1, j + 1, eh, ew, v)
    end
  end
  return img
end
---Erases a random rectangle with probability p (torchvision's RandomErasing): area fraction
---from scale ({0.02, 0.33}), aspect ratio log-uniform in ratio ({0.3, 3.3}); value 0, a number,
---one per channel, or "random" (standard normal noise). For f32 C×H×W images (after ToTensor).
---@param opts? {p?: number, scale?: number[], ratio?: number[], value?: number|number[]|string}
function T.RandomErasing(opts)
  local fn = "RandomErasing"
  opts = check_opts(fn, opts)
  local value = opts.value or 0
  if type(value) == "string" then
    if value ~= "random" then error("RandomErasing: value as a string must be \"random\", got \"" .. value .. "\"", 2) end
  elseif type(value) == "table" then
    check_fill(fn, value)
    value = {table.unpack(value)}
  elseif type(value) ~= "number" then
    error("RandomErasing: value must be a number, a list of numbers or \"random\", got " .. type(value), 2)
  end
  local scale = check_range(fn, "scale", opts.scale or {0.02, 0.33}, 0, 1)
  local ratio = check_range(fn, "ratio", opts.ratio or {0.3, 3.3})
  if ratio[1] <= 0 then error("RandomErasing: ratio must be positive", 2) end
  return make(fn, {p = check_p(fn, opts.p, 0.5), scale = scale, ratio = ratio, value = value, generator = opts.generator})
end

-- ---- augmentation policies ----

-- The ops of torchvision's RandAugment / TrivialAugmentWide, in its order, with the magnitude at
-- the top bin (ShearX ... Sharpness are signed: drawn with a random sign).
local POLICY_OPS = {"Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                    "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize"}
local SIGNED = {ShearX = true, ShearY = true, TranslateX = true, TranslateY = true, Rotate = true, Brightness = true,
                Color = true, Contrast = true, Sharpness = true}
local POLICY_MAX = {
  rand = {ShearX = 0.3, ShearY = 0.3, TranslateX = 150 / 331, TranslateY = 150 / 331, Rotate = 30, Brightness = 0.9,
          Color = 0.9, Contrast = 0.9, Sharpness = 0.9, posterize_drop = 4},
  wide = {ShearX = 0.99, ShearY = 0.99, TranslateX = 32, TranslateY = 32, Rotate = 135, Brightness = 0.99,
          Color = 0.99, Contrast = 0.99, Sharpness = 0.99, posterize_drop = 6},
}
T.policy_ops = POLICY_OPS

-- the magnitude of op at bin m (0..bins-1, may be fractional) of a policy's table
local function op_magnitude(policy, op, m, bins, h, w)
  local top = POLICY_MAX[policy]
  local frac = m / (bins - 1)
  if op == "Posterize" then return 8 - round_even(m / ((bins - 1) / top.posterize_drop)) end
  if op == "Solarize" then return 255 * (1 - frac) end
  if op == "TranslateX" and policy == "rand" then return top.TranslateX * w * frac end
  if op == "TranslateY" and policy == "rand" then return top.TranslateY * h * frac end
  return (top[op] or 0) * frac
end

-- u8 ops on an f32 image go through u8 and back
local function via_u8(img, fn)
  if img.dtype == "u8" then return fn(img) end
  return image.to_tensor(fn(image.to_u8(img)))
end

---Applies one policy op (torchvision's _apply_op) with magnitude mag.
---@param img vtl.Tensor
---@param op string
---@param mag number
---@param opts? {interpolation?: string, fill?: number|number[]}
---@return vtl.Tensor
function T.apply_policy_op(img, op, mag, opts)
  opts = opts or {}
  local interp, fill = opts.interpolation or "nearest", opts.fill
  if op == "Identity" then return img
  elseif op == "ShearX" or op == "ShearY" then
    local s = math.deg(math.atan(mag))
    return T.affine(img, {shear = op == "ShearX" and {s, 0.0} or {0.0, s}, center = {0, 0}, interpolation = interp, fill = fill})
  elseif op == "TranslateX" then return T.affine(img, {translate = {trunc(mag), 0}, interpolation = interp, fill = fill})
  elseif op == "TranslateY" then return T.affine(img, {translate = {0, trunc(mag)}, interpolation = interp, fill = fill})
  elseif op == "Rotate" then return T.rotate(img, mag, {interpolation = interp, fill = fill})
  elseif op == "Brightness" then return image.adjust_brightness(img, 1 + mag)
  elseif op == "Color" then return image.adjust_saturation(img, 1 + mag)
  elseif op == "Contrast" then return image.adjust_contrast(img, 1 + mag)
  elseif op == "Sharpness" then return image.adjust_sharpness(img, 1 + mag)
  elseif op == "Posterize" then return via_u8(img, function(x) return image.posterize(x, trunc(mag)) end)
  elseif op == "Solarize" then return image.solarize(img, img.dtype == "u8" and mag or mag / 255)
  elseif op == "AutoContrast" then return image.autocontrast(img)
  elseif op == "Equalize" then return via_u8(img, image.equalize)
  end
  error("apply_policy_op: unknown op '" .. tostring(op) .. "'", 2)
end

local function policy_fill(img, fill)
  if fill == nil then return nil end
  return fill_for(img, fill)
end

apply.RandAugment = function(self, img, gen)
  check_image("RandAugment", img)
  gen = gen_of(self, gen)
  local h, w = T.size_of(img)
  local opts = {interpolation = self.interpolation, fill = policy_fill(img, self.fill)}
  local bins = self.num_magnitude_bins
  for _ = 1, self.num_ops do
    local op = POLICY_OPS[randint(gen, 0, #POLICY_OPS) + 1]
    local m = self.magnitude
    if self.magnitude_std > 0 then
      m = m + self.magnitude_std * vtl.randn({1}, {generator = gen, dtype = "f64"}):item()
      m = math.min(math.max(m, 0), bins - 1)
    end
    local mag = op_magnitude("rand", op, m, bins, h, w)
    if SIGNED[op] and randint(gen, 0, 2) == 1 then mag = -mag end
    img = T.apply_policy_op(img, op, mag, opts)
  end
  return img
end
---torchvision's RandAugment: num_ops (2) ops drawn uniformly from T.policy_ops, each at bin
---`magnitude` (9) of num_magnitude_bins (31). magnitude_std > 0 adds normal noise to the bin per
---op, as timm's "mstd". opts interpolation "nearest" | "bilinear", fill (nil: zeros).
---Meant for u8 images (f32 images are handled, the u8-only ops through u8).
---@param opts? {num_ops?: integer, magnitude?: number, num_magnitude_bins?: integer, magnitude_std?: number, interpolation?: string, fill?: number|number[]}
function T.RandAugment(opts)
  local fn = "RandAugment"
  opts = check_opts(fn, opts)
  local num_ops, bins = opts.num_ops or 2, opts.num_magnitude_bins or 31
  local mag, std = opts.magnitude or 9, opts.magnitude_std or 0
  if math.type(num_ops) ~= "integer" or num_ops < 0 then error("RandAugment: num_ops must be an integer >= 0, got " .. tostring(num_ops), 2) end
  if math.type(bins) ~= "integer" or bins < 2 then error("RandAugment: num_magnitude_bins must be an integer >= 2, got " .. tostring(bins), 2) end
  if type(mag) ~= "number" or mag < 0 or mag > bins - 1 then
    error("RandAugment: magnitude must be a number in 0.." .. bins - 1 .. ", got " .. tostring(mag), 2)
  end
  if type(std) ~= "number" or not (std >= 0) then error("RandAugment: magnitude_std must be a number >= 0", 2) end
  return make(fn, {num_ops = num_ops, magnitude = mag, num_magnitude_bins = bins, magnitude_std = std,
                   interpolation = check_interp(fn, opts.interpolation, {"nearest", "bilinear"}, "nearest"),
                   fill = check_fill(fn, opts.fill), generator = opts.generator})
end

apply.TrivialAugmentWide = function(self, img, gen)
  check_image("TrivialAugmentWide", img)
  gen = gen_of(self, gen)
  local h, w = T.size_of(img)
  local bins = self.num_magnitude_bins
  local op = POLICY_OPS[randint(gen, 0, #POLICY_OPS) + 1]
  local mag = op_magnitude("wide", op, randint(gen, 0, bins), bins, h, w)
  if SIGNED[op] and randint(gen, 0, 2) == 1 then mag = -mag end
  return T.apply_policy_op(img, op, mag, {interpolation = self.interpolation, fill = policy_fill(img, self.fill)})
end
---torchvision's TrivialAugmentWide: one op from T.policy_ops at a uniformly drawn bin of
---num_magnitude_bins (31) over the wide ranges. opts interpolation, fill as RandAugment.
---@param opts? {num_magnitude_bins?: integer, interpolation?: string, fill?: number|number[]}
function T.TrivialAugmentWide(opts)
  local fn = "TrivialAugmentWide"
  opts = check_opts(fn, opts)
  local bins = opts.num_magnitude_bins or 31
  if math.type(bins) ~= "integer" or bins < 2 then error("TrivialAugmentWide: num_magnitude_bins must be an integer >= 2", 2) end
  return make(fn, {num_magnitude_bins = bins, interpolation = check_interp(fn, opts.interpolation, {"nearest", "bilinear"}, "nearest"),
                   fill = check_fill(fn, opts.fill), generator = opts.generator})
end

-- ---- presets ----

local IMAGENET_MEAN, IMAGENET_STD = {0.485, 0.456, 0.406}, {0.229, 0.224, 0.225}

local function cfg_size(cfg)
  local size = cfg.input_size or 224
  if type(size) == "table" then return size[#size - 1], size[#size] end
  return size, size
end

---timm's evaluation preset from a pretrained_cfg: resize the short side to
---floor(size / crop_pct), center crop to size, ToTensor, Normalize(mean, std).
---cfg fields: input_size ({3, h, w} or a number), crop_pct (0.875), interpolation ("bilinear"),
---mean, std (ImageNet's).
---@param cfg table
function T.eval_transform(cfg)
  cfg = cfg or {}
  local h, w = cfg_size(cfg)
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

-- "rand-m9-n2-mstd0.5" -> RandAugment options on timm's 0..10 magnitude scale
local function parse_rand(spec)
  local parts = {}
  for p in spec:gmatch("[^-]+") do parts[#parts + 1] = p end
  if parts[1] ~= "rand" then
    error("train_transform: auto_augment must look like \"rand-m9-mstd0.5\" (RandAugment), got \"" .. spec .. "\"", 3)
  end
  local o = {num_ops = 2, magnitude = 9, num_magnitude_bins = 11, magnitude_std = 0}
  for i = 2, #parts do
    local key, val = parts[i]:match("^(%a+)([%d%.]+)$")
    local v = tonumber(val)
    if key == "m" and v then o.magnitude = math.min(v, 10)
    elseif key == "n" and v and math.type(v) == "integer" then o.num_ops = v
    elseif key == "mstd" and v then o.magnitude_std = v
    else error("train_transform: unsupported auto_augment part \"" .. parts[i] .. "\" in \"" .. spec .. "\" (m, n, mstd)", 3) end
  end
  return o
end

---timm's training preset from a pretrained_cfg (transforms_imagenet_train): RandomResizedCrop to
---input_size (scale {0.08, 1}, ratio {3/4, 4/3}, cfg.interpolation), horizontal flip 0.5, then one
---of: opts.auto_augment ("rand-m9-mstd0.5": RandAugment on timm's 0..10 scale),
---opts.randaugment ({num_ops, magnitude} or true), opts.trivial_augment (true) or
---opts.color_jitter (a number for brightness, contrast and saturation, or {b, c, s[, h]}); then
---ToTensor, Normalize(mean, std) and, with opts.re_prob > 0, RandomErasing (opts.re_mode
---"const" zeros or "pixel" noise). opts.scale, opts.ratio, opts.hflip, opts.vflip override.
---@param cfg table
---@param opts? table
function T.train_transform(cfg, opts)
  cfg = cfg or {}
  opts = opts or {}
  if type(cfg) ~= "table" then error("train_transform: cfg must be a table (a model's pretrained_cfg)", 2) end
  if type(opts) ~= "table" then error("train_transform: opts must be a table", 2) end
  local h, w = cfg_size(cfg)
  local steps = {
    T.RandomResizedCrop({h, w}, {scale = opts.scale or {0.08, 1.0}, ratio = opts.ratio or {3 / 4, 4 / 3},
                                 interpolation = cfg.interpolation or "bilinear"}),
  }
  local hflip, vflip = opts.hflip or 0.5, opts.vflip or 0
  if hflip > 0 then steps[#steps + 1] = T.RandomHorizontalFlip(hflip) end
  if vflip > 0 then steps[#steps + 1] = T.RandomVerticalFlip(vflip) end
  if opts.auto_augment then
    if type(opts.auto_augment) ~= "string" then error("train_transform: auto_augment must be a string like \"rand-m9-mstd0.5\"", 2) end
    steps[#steps + 1] = T.RandAugment(parse_rand(opts.auto_augment))
  elseif opts.randaugment then
    local ra = opts.randaugment == true and {} or opts.randaugment
    if type(ra) ~= "table" then error("train_transform: randaugment must be true or {num_ops =, magnitude =}", 2) end
    steps[#steps + 1] = T.RandAugment(ra)
  elseif opts.trivial_augment then
    steps[#steps + 1] = T.TrivialAugmentWide()
  elseif opts.color_jitter then
    local cj = opts.color_jitter
    if type(cj) == "number" then cj = {cj, cj, cj} end
    if type(cj) ~= "table" or (#cj ~= 3 and #cj ~= 4) then
      error("train_transform: color_jitter must be a number or {brightness, contrast, saturation[, hue]}", 2)
    end
    steps[#steps + 1] = T.ColorJitter {brightness = cj[1], contrast = cj[2], saturation = cj[3], hue = cj[4]}
  end
  steps[#steps + 1] = T.ToTensor()
  steps[#steps + 1] = T.Normalize(cfg.mean or IMAGENET_MEAN, cfg.std or IMAGENET_STD)
  local re = opts.re_prob or 0
  if type(re) ~= "number" or re < 0 or re > 1 then error("train_transform: re_prob must be in [0, 1]", 2) end
  if re > 0 then
    local mode = opts.re_mode or "const"
    if mode ~= "const" and mode ~= "pixel" then error("train_transform: re_mode must be \"const\" or \"pixel\"", 2) end
    steps[#steps + 1] = T.RandomErasing {p = re, value = mode == "pixel" and "random" or 0}
  end
  return T.Compose(steps)
end

-- ---- batch-level mixing and previews (their own modules) ----

---MixUp{alpha, num_classes, label_smoothing}, CutMix{...}, MixUpCutMix{...}: called as
---mix(batch, generator) on a batch {input = N×C×H×W, target = N class numbers}; give one as a
---DataLoader's batch_transform. See vtl.mixing.
function T.MixUp(opts) return require("vtl.mixing").MixUp(opts) end
function T.CutMix(opts) return require("vtl.mixing").CutMix(opts) end
function T.MixUpCutMix(opts) return require("vtl.mixing").MixUpCutMix(opts) end

---T.preview(ds, n, "grid.png", opts): a PNG grid of n augmented samples with their labels
---(see vtl.preview).
function T.preview(ds, n, path, opts) return require("vtl.preview").preview(ds, n, path, opts) end

T._round_even = round_even -- for vtl.transforms.batch

---Resize, crops, flips and normalisation of whole batches on their own device (a GPU).
T.batch = require "vtl.transforms_batch"

return T
