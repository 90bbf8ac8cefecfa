-- Shared by the advanced-strategy recipes (distill, fewshot, domain_adapt, drift): Fashion-MNIST
-- subsets as in-memory tensors (N×1×28×28, normalized), shifted versions made with vtl ops, and
-- a small training loop helper.
local vtl = require "vtl"

local M = {}

M.MEAN, M.STD = 0.2860, 0.3530

local cache = {}

---k images per class of a split (classes: the 1-based class numbers to keep, default all),
---drawn with seed: x N×1×28×28 f32 normalized, y i64 N (1..10, or 1..#classes when remap).
function M.load(split, k, seed, classes, remap)
  local ds = cache[split] or vtl.data.FashionMNIST {split = split}
  cache[split] = ds
  local picked = vtl.data.sample_per_class(ds, k, {seed = seed})
  local keep, pos = {}, {}
  for j, c in ipairs(classes or {}) do keep[c] = true; pos[c] = j end
  local xs, ys = {}, {}
  for i = 1, #picked do
    local img, y = picked:get(i)
    if not classes or keep[y] then
      xs[#xs + 1] = img
      ys[#ys + 1] = remap and pos[y] or y
    end
  end
  local x = vtl.stack(xs):permute({1, 4, 2, 3}):float() / 255
  return (x - M.MEAN) / M.STD, vtl.tensor(ys, {dtype = "i64"}), ds.classes
end

---A shifted copy of normalized images: "invert" (1 - pixel), "noise" (Gaussian, sigma in pixel
---units), "rotate" (90 degrees), "blur" (3x3 box), "contrast" (pixels scaled towards grey by
---amount); each computed on the [0, 1] pixels.
function M.shift(x, kind, amount, seed)
  local p = x * M.STD + M.MEAN
  local g = vtl.Generator(seed or 1)
  if kind == "invert" then p = p * -1 + 1
  elseif kind == "noise" then p = (p + vtl.randn(p.shape, {generator = g}) * amount):clamp(0, 1)
  elseif kind == "rotate" then p = p:transpose(3, 4):index_select(4, vtl.arange(p.shape[3], 0, -1)):contiguous()
  elseif kind == "blur" then
    local w = vtl.full({1, 1, 3, 3}, 1 / 9)
    p = vtl.nn.functional.conv2d(p, w, nil, {padding = 1})
  elseif kind == "contrast" then p = (p - 0.5) * (1 - amount) + 0.5
  else error("shift: unknown kind " .. tostring(kind), 2) end
  return (p - M.MEAN) / M.STD
end

---Composes shifts: {{"invert"}, {"noise", 0.2}} applied in order.
function M.shifts(x, list, seed)
  for i, s in ipairs(list) do x = M.shift(x, s[1], s[2], (seed or 1) * 31 + i) end
  return x
end

---small_cnn for one-channel 28×28 images.
function M.model(classes, width, seed)
  vtl.seed(seed)
  return vtl.models.create("small_cnn", {num_classes = classes, in_chans = 1, width = width or 0.5, drop_rate = 0})
end

---Accuracy of model on x, y (eval mode, batches of 256).
function M.accuracy(model, x, y)
  local was = model.training
  model:eval()
  local correct = 0
  vtl.no_grad(function()
    for s = 1, x.shape[1], 256 do
      local n = math.min(256, x.shape[1] - s + 1)
      correct = correct + model(x:narrow(1, s, n)):argmax(2):eq(y:narrow(1, s, n)):sum():item()
    end
  end)
  model:train(was)
  return correct / x.shape[1]
end

---A quiet Learner on tensors x, y.
function M.learner(model, x, y, seed, extra)
  local opts = {model = model, train = vtl.data.TensorDataset(x, y), batch_size = 32, seed = seed, progress = false}
  for k, v in pairs(extra or {}) do opts[k] = v end
  return vtl.train.Learner(opts)
end

---Parses "1,2,3" into {1, 2, 3}.
function M.ints(s)
  local out = {}
  for v in tostring(s):gmatch("[^,]+") do out[#out + 1] = math.tointeger(tonumber(v)) end
  return out
end

return M
