-- Batch-level mixing with soft targets: MixUp, CutMix, and a per-batch switch between them,
-- with timm's Mixup semantics (mode "batch"):
--   λ ~ Beta(α, α) once per batch; each sample i is mixed with sample N+1-i (the batch
--   flipped); MixUp: x = λ·x + (1-λ)·x_flipped; CutMix: a box of (1-λ) of the area, centred
--   at a uniformly drawn pixel and clipped to the image, is pasted from x_flipped, and λ is
--   corrected to the area actually kept; targets: λ·onehot(y) + (1-λ)·onehot(y_flipped), with
--   label smoothing (off = s/K, on = 1 - s + s/K).
--
--   local mix = vtl.transforms.MixUpCutMix{mixup_alpha = 0.8, cutmix_alpha = 1.0, num_classes = 10}
--   for batch in loader:iter(epoch) do
--     local b = mix(batch, gen)      -- b.input mixed, b.target N×K f32 (rows sum to 1)
--     local loss = F.cross_entropy(model(b.input), b.target)
--   end
local vtl = require "vtl"

local M = {}

-- ---- random draws ----

local function uniform(gen)
  return vtl.rand({1}, {generator = gen, dtype = "f64"}):item()
end

local function normal(gen)
  return vtl.randn({1}, {generator = gen, dtype = "f64"}):item()
end

-- log of a Gamma(a, 1) draw (Marsaglia and Tsang; for a < 1 the boost Gamma(a+1)·U^(1/a), kept
-- in logs so that tiny shapes do not underflow)
local function log_gamma_draw(a, gen)
  local boost = 0
  if a < 1 then
    local u = uniform(gen)
    boost = math.log(u > 0 and u or 1e-300) / a
    a = a + 1
  end
  local d = a - 1 / 3
  local c = 1 / math.sqrt(9 * d)
  while true do
    local x = normal(gen)
    local v = 1 + c * x
    if v > 0 then
      v = v * v * v
      local u = uniform(gen)
      if u < 1 - 0.0331 * x ^ 4 or math.log(u) < 0.5 * x * x + d * (1 - v + math.log(v)) then
        return math.log(d * v) + boost
      end
    end
  end
end

---A Beta(a, b) draw from the generator (nil: vtl's default generator).
---@param a number
---@param b number
---@param gen? vtl.Generator
---@return number
function M.beta(a, b, gen)
  local lx, ly = log_gamma_draw(a, gen), log_gamma_draw(b, gen)
  return 1 / (1 + math.exp(ly - lx))
end

-- ---- the deterministic part ----

---The CutMix box for an h×w image, mixing ratio lam and centre (cy, cx) (1-based pixel), as
---timm's rand_bbox: cut size (floor(h·√(1-λ)), floor(w·√(1-λ))), half-sizes floored, clipped to
---the image. Returns the box {top, left, height, width} (top/left 1-based) and λ corrected to
---1 - box area / image area.
---@return table box, number lam
function M.cutmix_box(h, w, lam, cy, cx)
  local ratio = math.sqrt(1 - lam)
  local cut_h, cut_w = math.floor(h * ratio), math.floor(w * ratio)
  local y0, x0 = cy - 1, cx - 1
  local yl = math.max(0, math.min(h, y0 - cut_h // 2))
  local yh = math.max(0, math.min(h, y0 + cut_h // 2))
  local xl = math.max(0, math.min(w, x0 - cut_w // 2))
  local xh = math.max(0, math.min(w, x0 + cut_w // 2))
  local box = {top = yl + 1, left = xl + 1, height = yh - yl, width = xh - xl}
  return box, 1 - (box.height * box.width) / (h * w)
end

local function check_batch(fn, batch, num_classes)
  if type(batch) ~= "table" then error(fn .. ": expected a batch table {input =, target =}, got " .. type(batch), 3) end
  local x, y = batch.input, batch.target
  if not vtl.is_tensor(x) or x.ndim ~= 4 or (x.dtype ~= "f32" and x.dtype ~= "f64") then
    error(fn .. ": batch.input must be a float N×C×H×W tensor" ..
      (vtl.is_tensor(x) and string.format(", got %s {%s}", x.dtype, table.concat(x.shape, ",")) or ", got " .. type(x)), 3)
  end
  local n = x.shape[1]
  if not vtl.is_tensor(y) then error(fn .. ": batch.target must be a tensor, got " .. type(y), 3) end
  if y.ndim == 1 then
    if y.dtype ~= "i64" and y.dtype ~= "i32" then error(fn .. ": batch.target must hold class numbers (i64), got " .. y.dtype, 3) end
    if y.shape[1] ~= n then error(string.format("%s: batch.input has %d samples but batch.target has %d", fn, n, y.shape[1]), 3) end
    local t = y:totable()
    for i, v in ipairs(t) do
      if v < 1 or v > num_classes then
        error(string.format("%s: batch.target[%d] = %d is outside the classes 1..%d", fn, i, v, num_classes), 3)
      end
    end
    return x, t, nil
  end
  if y.ndim == 2 and (y.dtype == "f32" or y.dtype == "f64") and y.shape[1] == n and y.shape[2] == num_classes then
    return x, nil, y
  end
  error(string.format("%s: batch.target must be class numbers (N) or soft targets (N×%d), got %s {%s}", fn, num_classes,
    y.dtype, table.concat(y.shape, ",")), 3)
end

local Mixer = {}
Mixer.__index = Mixer
Mixer.__call = function(self, batch, gen) return self:mix(batch, gen) end

---Mixes a batch with given parameters (no randomness): p.lam (the sampled λ), p.cutmix (bool),
---and for CutMix the box centre p.cy, p.cx (1-based). Returns a new batch (other fields kept)
---with the mixed input and f32 soft targets N×K, and an info table {lam (as used for the
---targets, corrected for CutMix), lam_sampled, cutmix, box (CutMix: {top, left, height,
---width}), cy, cx}.
---@return table batch, table info
function Mixer:apply(batch, p)
  local fn = self.name
  local x, hard, soft = check_batch(fn, batch, self.num_classes)
  local n, h, w = x.shape[1], x.shape[3], x.shape[4]
  local lam = p.lam
  local info = {lam_sampled = lam, cutmix = p.cutmix or false}
  local out = x
  local rev = {}
  for i = 1, n do rev[i] = n + 1 - i end
  local rev_t = vtl.tensor(rev, {dtype = "i64", device = x.device})
  if lam ~= 1 then
    local flipped = x:index_select(1, rev_t)
    if p.cutmix then
      local box
      box, lam = M.cutmix_box(h, w, lam, p.cy, p.cx)
      if not self.correct_lam then lam = p.lam end
      info.box, info.cy, info.cx = box, p.cy, p.cx
      out = x:clone()
      if box.height > 0 and box.width > 0 then
        out:narrow(3, box.top, box.height):narrow(4, box.left, box.width)
          :copy_(flipped:narrow(3, box.top, box.height):narrow(4, box.left, box.width))
      end
    else
      out = x * lam + flipped * (1 - lam)
    end
  end
  info.lam = lam
  local target
  if hard then
    local k, s = self.num_classes, self.label_smoothing
    local off = s / k
    local on = 1 - s + off
    local rows = {}
    for i = 1, n do
      local r = {}
      for c = 1, k do r[c] = off end
      r[hard[i]] = on * lam + off * (1 - lam)
      if hard[rev[i]] == hard[i] then r[hard[i]] = on
      else r[hard[rev[i]]] = off * lam + on * (1 - lam) end
      rows[i] = r
    end
    target = vtl.tensor(rows, {dtype = "f32", device = x.device})
  else
    target = soft * lam + soft:index_select(1, rev_t) * (1 - lam)
  end
  local nb = {}
  for key, v in pairs(batch) do nb[key] = v end
  nb.input, nb.target = out, target
  return nb, info
end

---Draws this batch's parameters from gen (nil: vtl's default generator), in a fixed order:
---u < prob (else λ = 1), then, when both are enabled, u < switch_prob (CutMix), then λ, then
---for CutMix the centre row and column.
---@return table  {lam, cutmix, cy, cx}
function Mixer:draw(h, w, gen)
  local p = {lam = 1, cutmix = false}
  if self.prob < 1 and uniform(gen) >= self.prob then return p end
  if self.prob <= 0 then return p end
  local ma, ca = self.mixup_alpha, self.cutmix_alpha
  if ma > 0 and ca > 0 then p.cutmix = uniform(gen) < self.switch_prob
  else p.cutmix = ca > 0 end
  local a = p.cutmix and ca or ma
  p.lam = M.beta(a, a, gen)
  if p.cutmix then
    p.cy = math.min(h, math.floor(uniform(gen) * h) + 1)
    p.cx = math.min(w, math.floor(uniform(gen) * w) + 1)
  end
  return p
end

---Mixes a batch {input = N×C×H×W, target = class numbers N (1-based) or soft N×K}: returns
---a new batch with mixed input and soft f32 targets N×K, and the info table of Mixer:apply.
---@param batch table
---@param gen? vtl.Generator
---@return table batch, table info
function Mixer:mix(batch, gen)
  local x = check_batch(self.name, batch, self.num_classes)
  return self:apply(batch, self:draw(x.shape[3], x.shape[4], gen))
end

local function number_opt(fn, opts, key, default, lo, hi)
  local v = opts[key]
  if v == nil then v = default end
  if type(v) ~= "number" or v ~= v or v < lo or (hi and v > hi) then
    error(string.format("%s: %s must be a number in [%s, %s], got %s", fn, key, tostring(lo), hi and tostring(hi) or "inf",
      tostring(v)), 3)
  end
  return v
end

local function make(fn, opts, mixup_alpha, cutmix_alpha)
  local k = opts.num_classes
  if math.type(k) ~= "integer" or k < 1 then error(fn .. ": num_classes must be a positive integer, got " .. tostring(k), 3) end
  local self = {
    name = fn, num_classes = k,
    mixup_alpha = mixup_alpha, cutmix_alpha = cutmix_alpha,
    label_smoothing = number_opt(fn, opts, "label_smoothing", 0, 0, 1),
    switch_prob = number_opt(fn, opts, "switch_prob", 0.5, 0, 1),
    prob = number_opt(fn, opts, "prob", 1, 0, 1),
    correct_lam = opts.correct_lam ~= false,
  }
  return setmetatable(self, Mixer)
end

local function check_opts(fn, opts)
  if type(opts) ~= "table" then error(fn .. ": expected an options table {alpha =, num_classes =}, got " .. type(opts), 3) end
  return opts
end

---MixUp: x = λ·x + (1-λ)·x_flipped with λ ~ Beta(alpha, alpha) per batch.
---opts: alpha (1.0, > 0), num_classes (required), label_smoothing (0), prob (1).
---@param opts table
function M.MixUp(opts)
  check_opts("MixUp", opts)
  local a = number_opt("MixUp", opts, "alpha", 1, 0)
  if a <= 0 then error("MixUp: alpha must be positive, got " .. a, 2) end
  return make("MixUp", opts, a, 0)
end

---CutMix: a box of the flipped batch pasted in, λ ~ Beta(alpha, alpha) and corrected to the box
---actually pasted. opts: alpha (1.0, > 0), num_classes (required), label_smoothing (0),
---prob (1), correct_lam (true).
---@param opts table
function M.CutMix(opts)
  check_opts("CutMix", opts)
  local a = number_opt("CutMix", opts, "alpha", 1, 0)
  if a <= 0 then error("CutMix: alpha must be positive, got " .. a, 2) end
  return make("CutMix", opts, 0, a)
end

---MixUp or CutMix per batch (timm's Mixup): with probability prob the batch is mixed; when
---both alphas are positive, CutMix is chosen with probability switch_prob.
---opts: mixup_alpha (1.0), cutmix_alpha (0), switch_prob (0.5), prob (1), num_classes
---(required), label_smoothing (0), correct_lam (true).
---@param opts table
function M.MixUpCutMix(opts)
  check_opts("MixUpCutMix", opts)
  local ma = number_opt("MixUpCutMix", opts, "mixup_alpha", 1, 0)
  local ca = number_opt("MixUpCutMix", opts, "cutmix_alpha", 0, 0)
  if ma <= 0 and ca <= 0 then error("MixUpCutMix: mixup_alpha or cutmix_alpha must be positive", 2) end
  return make("MixUpCutMix", opts, ma, ca)
end

return M
