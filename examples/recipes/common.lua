-- Shared by the recipes in this folder: settings and data. Each recipe is
--   vtl examples/recipes/<name>.lua [--set data=path/to/imagefolder] [--set key=value ...]
-- With no data folder, a Fashion-MNIST subset (per_class images per class) stands in.
local vtl = require "vtl"
local data, T = vtl.data, vtl.transforms

local M = {}

M.defaults = {data = "", valid_fraction = 0.2, model = "efficientnet_lite0", pretrained = true, size = 96,
              per_class = 50, epochs = 3, batch_size = 32, lr = 2e-3, workers = 2, seed = 1}

---Starts the run (settings from the command line) and returns run, train, valid, the model.
function M.setup(name, extra)
  local defaults = {}
  for k, v in pairs(M.defaults) do defaults[k] = v end
  for k, v in pairs(extra or {}) do defaults[k] = v end
  local run = vtl.recipe.start {name = name, defaults = defaults}
  local cfg = run.config
  local probe = vtl.models.create(cfg.model, {pretrained = cfg.pretrained, num_classes = 10})
  local pcfg = {}
  for k, v in pairs(probe.pretrained_cfg) do pcfg[k] = v end
  pcfg.input_size = {3, cfg.size, cfg.size}
  local train_tf = T.train_transform(pcfg, {scale = {0.5, 1.0}})
  local eval_tf = T.eval_transform(pcfg)
  local train, valid
  if cfg.data ~= "" then
    local all = data.ImageFolder(cfg.data, {transform = train_tf})
    local parts = data.split(all, {1 - cfg.valid_fraction, cfg.valid_fraction}, {stratify = true, seed = cfg.seed})
    train = parts[1]
    valid = data.Subset(data.ImageFolder(cfg.data, {transform = eval_tf}), parts[2].indices)
  else
    local to_rgb = function(img) return img:expand({img.shape[1], img.shape[2], 3}):contiguous() end
    local fm = data.FashionMNIST {split = "train", transform = T.Compose {to_rgb, train_tf}}
    local picked = data.sample_per_class(fm, cfg.per_class, {seed = cfg.seed})
    train = picked
    local test = data.FashionMNIST {split = "test", transform = T.Compose {to_rgb, eval_tf}}
    valid = data.sample_per_class(test, math.max(2, cfg.per_class // 4), {seed = cfg.seed})
  end
  run.num_classes = train.classes and #train.classes or 10
  local model = vtl.models.create(cfg.model, {pretrained = cfg.pretrained, num_classes = run.num_classes})
  run:fingerprint("train", train)
  return run, train, valid, model
end

---A Learner over the recipe's data with its usual settings (extra options merged in).
function M.learner(run, train, valid, model, extra)
  local cfg = run.config
  local opts = {model = model, train = train, valid = valid, batch_size = cfg.batch_size, num_workers = cfg.workers,
                seed = cfg.seed, metrics = {"accuracy", "f1_macro"}, quiet = true}
  for k, v in pairs(extra or {}) do opts[k] = v end
  return vtl.train.Learner(opts)
end

---Evaluates, writes the report and metrics into the run directory, prints a summary line.
function M.finish(run, learn)
  local r = learn:evaluate()
  learn:report(run:path("report"))
  local acc = r.accuracy or 0
  print(string.format("%s: validation accuracy %.4f, macro-F1 %.4f; run directory %s", run.name, acc, r.f1_macro or 0, run.dir))
  run:finish {accuracy = acc, f1_macro = r.f1_macro, loss = r.loss}
end

return M
