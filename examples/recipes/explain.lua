-- Interpretability and deployment checks on Fashion-MNIST: a small CNN is trained, then
--   * Grad-CAM (last convolution block), input-gradient saliency and occlusion maps are written
--     as heat-map overlays for a few test images;
--   * each map is scored by a deletion test: the pixels it ranks highest (frac of the image) are
--     set to the dataset mean, and the drop of the predicted class's probability is compared
--     with deleting as many random pixels (a faithful map removes more evidence);
--   * vtl.deploy.report (size, FLOPs, batch-1 latency, throughput, memory) for the model and
--     for its vtl.models.fuse_for_inference copy, and the f16 / bf16 accuracy check.
--
--   vtl examples/recipes/explain.lua            -- 300 images per class, 200 test images scored
--   vtl examples/recipes/explain.lua --quick    -- a one-minute version
package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local vtl = require "vtl"
local fashion = require "fashion"
local explain = vtl.explain

local quick = false
for _, a in ipairs(arg or {}) do if a == "--quick" then quick = true end end
local run = vtl.recipe.start {name = "explain", defaults = {
  per_class = quick and 100 or 300, test_per_class = quick and 10 or 20, epochs = quick and 6 or 10,
  lr = 3e-3, width = 1.0, seed = 1,
  frac = 0.1,          -- fraction of the pixels each deletion removes
  overlays = 4,        -- test images whose maps are written as PNG
}}
local cfg = run.config

local x, y = fashion.load("train", cfg.per_class, cfg.seed)
local xt, yt, names = fashion.load("test", cfg.test_per_class, cfg.seed)
local model = fashion.model(10, cfg.width, cfg.seed)
fashion.learner(model, x, y, cfg.seed):fit_one_cycle(cfg.epochs, cfg.lr)
model:eval()
local acc = fashion.accuracy(model, xt, yt)
print(("test accuracy %.4f on %d images"):format(acc, xt.shape[1]))

-- the three maps of every test image (N×H×W), for the predicted classes
local names_ = model.features._module_names
local layer = "features." .. names_[#names_]
local cam = explain.gradcam(model, xt, nil, layer)
local pred = cam.class
local sal = explain.saliency(model, xt, pred)
local occ = explain.occlusion(model, xt, pred, {window = 6, stride = 3})

-- probability of class c for each image of a batch (eval, no gradients)
local function prob(xb, c)
  return vtl.no_grad(function()
    local p = vtl.nn.functional.softmax(model(xb), 2)
    return p:gather(2, c:view(-1, 1)):view(-1)
  end)
end

-- xb with the k highest-ranked pixels of each image (by score, N×H×W) set to 0, the dataset
-- mean after normalisation
local function delete_top(xb, score, k)
  local N, H, W = score.shape[1], score.shape[2], score.shape[3]
  local _, idx = score:reshape(N, H * W):topk(k, 2)
  local mask = vtl.ones(N, H * W):scatter(2, idx, 0):view(N, 1, H, W)
  return xb * mask
end

local N, H, W = xt.shape[1], xt.shape[3], xt.shape[4]
local k = math.max(1, math.floor(cfg.frac * H * W + 0.5))
local p0 = prob(xt, pred)
local rows = {}
local g = vtl.Generator(cfg.seed + 99)
local random = vtl.rand({N, H, W}, {generator = g})
for _, m in ipairs {{"Grad-CAM", cam.cam}, {"saliency", sal}, {"occlusion", occ}, {"random pixels", random}} do
  local drop = (p0 - prob(delete_top(xt, m[2], k), pred)):mean():item()
  rows[#rows + 1] = {m[1], drop}
end
print(("\n%-16s %s"):format("map", ("probability drop after deleting its top %d%% pixels (%d images)"):format(
  math.floor(cfg.frac * 100 + 0.5), N)))
local out = {accuracy = acc, deletion = {}}
for _, r in ipairs(rows) do
  print(("%-16s %.4f"):format(r[1], r[2]))
  out.deletion[r[1]] = r[2]
end

-- overlays: image | Grad-CAM | saliency | occlusion for the first test images
local mean, std = {fashion.MEAN}, {fashion.STD}
local scale = function(t) return explain.normalize_map(t) end
for i = 1, math.min(cfg.overlays, N) do
  local base = ("%s/overlay_%d_%s"):format(run.dir, i, names[pred[i]:item()]:gsub("[^%w]", "_"))
  explain.overlay(xt[i], cam.cam[i], {mean = mean, std = std, path = base .. "_gradcam.png"})
  explain.overlay(xt[i], scale(sal[i]), {mean = mean, std = std, path = base .. "_saliency.png"})
  explain.overlay(xt[i], scale(occ[i]), {mean = mean, std = std, path = base .. "_occlusion.png"})
end
print(("overlays of %d images in %s"):format(math.min(cfg.overlays, N), run.dir))

-- deployment: the trained model and its inference copy; half precision
local fused = vtl.models.fuse_for_inference(model)
local r32 = vtl.deploy.report(model, {1, 28, 28}, {runs = 30, throughput_runs = 3})
local rf = vtl.deploy.report(fused, {1, 28, 28}, {runs = 30, throughput_runs = 3})
print("\n" .. r32.text)
print(("fused for inference: latency %.3f ms, throughput %.0f images/s (vs %.3f ms, %.0f images/s)"):format(
  rf.latency_ms, rf.throughput, r32.latency_ms, r32.throughput))
local ds = vtl.data.TensorDataset(xt, yt)
out.deploy = {params = r32.params, size_f32 = r32.size_f32, size_f16 = r32.size_f16, flops = r32.flops,
              latency_ms = r32.latency_ms, fused_latency_ms = rf.latency_ms, throughput = r32.throughput,
              fused_throughput = rf.throughput}
for _, dt in ipairs {"f16", "bf16"} do
  local h = vtl.deploy.half_check(model, ds, {dtype = dt})
  print(("%-4s accuracy %.4f vs f32 %.4f (same prediction on %.1f%%, %d overflows)"):format(dt, h.accuracy_half,
    h.accuracy_f32, 100 * h.agreement, h.overflow))
  out[dt] = {accuracy = h.accuracy_half, accuracy_f32 = h.accuracy_f32, agreement = h.agreement}
end
run:finish(out)
print("run directory: " .. run.dir)
