-- vtl.explain: why did the model say that? Grad-CAM (Selvaraju et al. 2017) for any conv
-- model, vanilla saliency (input gradients, Simonyan et al. 2014) and occlusion sensitivity
-- (Zeiler & Fergus 2014), each a map per image, and a heat-map overlay written as PNG.
--
--   local r = vtl.explain.gradcam(model, x, nil, "features.4", {path = "cam.png", mean = cfg.mean, std = cfg.std})
--   -- r.cam: N×H×W in [0, 1]; r.class: the explained classes
local vtl = require "vtl"
local core = require "vtl.core"
local F = require "vtl.nn.functional"

local M = {}

-- "jet": dark blue through blue, cyan, yellow and red to dark red, nine stops (0..255)
local JET = {{0, 0, 128}, {0, 0, 255}, {0, 128, 255}, {0, 255, 255}, {128, 255, 128}, {255, 255, 0}, {255, 128, 0},
             {255, 0, 0}, {128, 0, 0}}

local function fail(msg, level) error(msg, (level or 1) + 1) end
local function is_module(m) return type(m) == "table" and type(m.parameters) == "function" end

local function check_model_input(fn, model, x)
  if not is_module(model) then fail(fn .. ": model must be an nn.Module", 3) end
  if not core.is_tensor(x) or x.ndim ~= 4 then
    fail(fn .. ": x must be an N×C×H×W tensor" .. (core.is_tensor(x) and (", got " .. x.ndim .. " dims") or ""), 3)
  end
  if x.dtype ~= "f32" and x.dtype ~= "f64" then fail(fn .. ": x must be f32 or f64, got " .. x.dtype, 3) end
end

-- class numbers (i64 N, 1-based) from nil (the prediction), an integer or a tensor / list
local function classes_for(fn, cls, logits)
  local n, k = logits.shape[1], logits.shape[2]
  if cls == nil then return logits:argmax(2) end
  local t
  local on = {dtype = "i64", device = logits.device}
  if math.type(cls) == "integer" then t = core.full({n}, cls, on)
  elseif type(cls) == "table" then t = core.tensor(cls, on)
  elseif core.is_tensor(cls) then t = cls:to(on):view(-1)
  else fail(fn .. ": class must be nil (the predicted class), an integer, a list or a tensor of class numbers", 3) end
  if t:numel() ~= n then fail(("%s: %d class numbers for %d images"):format(fn, t:numel(), n), 3) end
  if t:min():item() < 1 or t:max():item() > k then fail(("%s: class numbers must be in 1..%d"):format(fn, k), 3) end
  return t
end

-- runs fn with every parameter of model frozen and the model in eval mode, then restores both
local function with_frozen(model, fn)
  local saved, was = {}, model.training
  for i, p in ipairs(model:parameters()) do saved[i] = p.requires_grad; p.requires_grad = false end
  model:eval()
  local ok, a, b = pcall(fn)
  for i, p in ipairs(model:parameters()) do p.requires_grad = saved[i] end
  model:train(was)
  if not ok then error(a, 0) end
  return a, b
end

-- the score to differentiate: the sum over the batch of each image's chosen logit
local function score_of(logits, cls)
  local onehot = F.one_hot(cls, logits.shape[2]):to(logits.dtype)
  return (logits * onehot):sum()
end

-- per-image min-max scaling of N×H×W to [0, 1] (a constant map becomes 0)
local function minmax(m)
  local n = m.shape[1]
  local flat = m:reshape({n, -1})
  local lo = flat:min(2, {keepdim = true})
  local hi = flat:max(2, {keepdim = true})
  local span = hi - lo
  span = span:masked_fill(span:le(0), 1)
  return ((flat - lo) / span):view_as(m)
end
M.normalize_map = minmax

---Grad-CAM of `layer` (a module path such as "features.4", or the module itself) for images x
---(N×C×H×W) and classes (nil: the predicted ones; an integer; one per image): the channel
---weights are the spatial means of d(logit of the class)/d(activation), the map is
---relu(sum_c weight_c * activation_c), upsampled bilinearly to H×W and min-max scaled per image.
---Runs in eval mode; the model's parameters get no gradients. Returns {cam = N×H×W in [0, 1],
---raw = N×h×w before upsampling and scaling, weights = N×C, class = i64 N, logits}.
---opts.path: write the overlay of the first image as PNG (opts.mean / opts.std undo the input
---normalization, opts.alpha the heat map's opacity).
---@param model vtl.nn.Module
---@param x vtl.Tensor
---@param class integer|integer[]|vtl.Tensor|nil
---@param layer string|vtl.nn.Module
---@param opts? table
function M.gradcam(model, x, class, layer, opts)
  local fn = "gradcam"
  check_model_input(fn, model, x)
  local target
  if type(layer) == "string" then
    local ok, m = pcall(model.get_submodule, model, layer)
    if not ok or not is_module(m) then fail(fn .. ": layer '" .. layer .. "' is not a submodule of the model", 2) end
    target = m
  elseif is_module(layer) then
    target = layer
  else
    fail(fn .. ": layer must be a module path (string) or a module", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then fail(fn .. ": opts must be a table", 2) end
  local act
  local handle = target:register_forward_hook(function(_, _, out)
    if not core.is_tensor(out) or out.ndim ~= 4 then
      error("gradcam: the layer's output must be an N×C×h×w tensor", 0)
    end
    -- the rest of the network runs from a leaf, whose gradient is d(score)/d(activation)
    act = out:detach()
    act.requires_grad = true
    return act
  end)
  local ok, res = pcall(with_frozen, model, function()
    local guard <close> = core.enable_grad()
    local logits = model(x)
    if not act then error("gradcam: the layer did not run in the model's forward pass", 0) end
    local cls = classes_for(fn, class, logits)
    score_of(logits, cls):backward()
    local g = act.grad
    local w = g:mean({3, 4})                                        -- N×C
    local raw = (act:detach() * w:unsqueeze(3):unsqueeze(4)):sum(2):relu() -- N×h×w
    local up = F.interpolate(raw:unsqueeze(2), {size = {x.shape[3], x.shape[4]}, mode = "bilinear",
                                                align_corners = false}):squeeze(2)
    return {cam = minmax(up), raw = raw, weights = w, class = cls, logits = logits:detach()}
  end)
  handle.remove()
  if not ok then error(res, 2) end
  if opts and opts.path then M.overlay(x[1], res.cam[1], opts) end
  return res
end

---Saliency: |d(logit of the class)/d(input)|, the maximum over channels, N×H×W (unscaled).
---class as in gradcam. Returns the map and the classes.
---@return vtl.Tensor saliency, vtl.Tensor class
function M.saliency(model, x, class)
  check_model_input("saliency", model, x)
  return with_frozen(model, function()
    local guard <close> = core.enable_grad()
    local xi = x:detach():clone()
    xi.requires_grad = true
    local logits = model(xi)
    local cls = classes_for("saliency", class, logits)
    score_of(logits, cls):backward()
    return xi.grad:abs():max(2), cls
  end)
end

---Occlusion sensitivity: the drop of the class probability when a window (opts.window, 8 px) of
---the input is replaced by opts.fill (0), slid with opts.stride (window // 2); each pixel gets the
---mean drop of the windows covering it. Returns N×H×W and the classes. opts.batch_size (32).
---@param opts? {window: integer|nil, stride: integer|nil, fill: number|nil, batch_size: integer|nil}
function M.occlusion(model, x, class, opts)
  local fn = "occlusion"
  check_model_input(fn, model, x)
  opts = opts or {}
  local H, W = x.shape[3], x.shape[4]
  local win = opts.window or math.max(1, math.min(8, H // 4))
  local stride = opts.stride or math.max(1, win // 2)
  local fill, bs = opts.fill or 0, opts.batch_size or 32
  if math.type(win) ~= "integer" or win < 1 or win > math.min(H, W) then fail(fn .. ": window must be an integer in 1..min(H, W)", 2) end
  if math.type(stride) ~= "integer" or stride < 1 then fail(fn .. ": stride must be a positive integer", 2) end
  if type(fill) ~= "number" then fail(fn .. ": fill must be a number", 2) end
  if math.type(bs) ~= "integer" or bs < 1 then fail(fn .. ": batch_size must be a positive integer", 2) end
  local was = model.training
  model:eval()
  local guard <close> = core.no_grad()
  local ok, res, cls_out = pcall(function()
    local logits = model(x)
    local cls = classes_for(fn, class, logits)
    local base = F.softmax(logits, 2):gather(2, cls:unsqueeze(2)):view(-1)
    local pos = {}
    local function starts(n)
      local s = {}
      for p = 0, n - win, stride do s[#s + 1] = p end
      if s[#s] ~= n - win then s[#s + 1] = n - win end
      return s
    end
    for _, r in ipairs(starts(H)) do for _, c in ipairs(starts(W)) do pos[#pos + 1] = {r, c} end end
    local maps = {}
    for i = 1, x.shape[1] do
      local xi, ci = x[i], cls[i]:item()
      local sum, cnt = core.zeros({H, W}, {dtype = x.dtype}), core.zeros({H, W}, {dtype = x.dtype})
      for s = 1, #pos, bs do
        local batch = {}
        local e = math.min(#pos, s + bs - 1)
        for k = s, e do
          local xo = xi:clone()
          xo:narrow(2, pos[k][1] + 1, win):narrow(3, pos[k][2] + 1, win):fill_(fill)
          batch[#batch + 1] = xo
        end
        local p = F.softmax(model(core.stack(batch)), 2):select(2, ci)
        for k = s, e do
          local drop = base[i]:item() - p[k - s + 1]:item()
          sum:narrow(1, pos[k][1] + 1, win):narrow(2, pos[k][2] + 1, win):add_(drop)
          cnt:narrow(1, pos[k][1] + 1, win):narrow(2, pos[k][2] + 1, win):add_(1)
        end
      end
      maps[i] = sum / cnt:clamp(1)
    end
    return core.stack(maps), cls
  end)
  model:train(was)
  if not ok then error(res, 2) end
  return res, cls_out
end

---Blends a heat map (h×w, values in [0, 1]; resized to the image) over an image (C×H×W float,
---in [0, 1] or normalized with opts.mean / opts.std; or u8 H×W×C) with a "jet" colour map at
---opacity opts.alpha (0.5). Returns u8 H×W×3; opts.path also writes it (PNG).
---@param image vtl.Tensor
---@param heat vtl.Tensor
---@param opts? {alpha: number|nil, mean: number[]|nil, std: number[]|nil, path: string|nil}
function M.overlay(image, heat, opts)
  local fn = "overlay"
  opts = opts or {}
  if not core.is_tensor(image) or image.ndim ~= 3 then fail(fn .. ": image must be C×H×W (float) or H×W×C (u8)", 2) end
  if not core.is_tensor(heat) or heat.ndim ~= 2 then fail(fn .. ": heat must be an h×w tensor", 2) end
  local alpha = opts.alpha or 0.5
  if type(alpha) ~= "number" or alpha < 0 or alpha > 1 then fail(fn .. ": alpha must be in [0, 1]", 2) end
  local img -- H×W×3 float in [0, 1]
  if image.dtype == "u8" then
    img = image:float() / 255
  else
    img = image:detach():float()
    if opts.mean or opts.std then
      local c = img.shape[1]
      local mean = core.tensor(opts.mean or {0, 0, 0}):narrow(1, 1, c):view({c, 1, 1})
      local std = core.tensor(opts.std or {1, 1, 1}):narrow(1, 1, c):view({c, 1, 1})
      img = img * std + mean
    end
    img = img:permute({2, 3, 1})
  end
  if img.shape[3] == 1 then img = img:expand({img.shape[1], img.shape[2], 3}) end
  if img.shape[3] ~= 3 then fail(fn .. ": image must have 1 or 3 channels", 2) end
  local H, W = img.shape[1], img.shape[2]
  local h = heat:detach():float()
  if h.shape[1] ~= H or h.shape[2] ~= W then
    h = F.interpolate(h:view({1, 1, h.shape[1], h.shape[2]}), {size = {H, W}, mode = "bilinear", align_corners = false}):view({H, W})
  end
  -- the colour map as a lookup with linear interpolation between its stops
  local lut = core.tensor(JET, {dtype = "f32"}) / 255                 -- 9×3
  local s = h:clamp(0, 1):reshape({-1}) * 8
  local i0 = s:floor():clamp(0, 7)
  local f = (s - i0):unsqueeze(2)
  local idx = i0:to("i64") + 1
  local a = lut:index_select(1, idx)
  local b = lut:index_select(1, idx + 1)
  local color = (a * (f * -1 + 1) + b * f):view({H, W, 3})
  local out = (img:clamp(0, 1) * (1 - alpha) + color * alpha) * 255
  out = out:round():clamp(0, 255):to("u8"):contiguous()
  if opts.path then
    if type(opts.path) ~= "string" then fail(fn .. ": path must be a string", 2) end
    vtl.image.save(opts.path, out)
  end
  return out
end

return M
