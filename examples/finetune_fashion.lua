-- Fine-tuning EfficientNet-Lite0 (real ImageNet weights) on a small Fashion-MNIST subset, the
-- seven-step way, and comparing it with the alternatives on the full test set.
--
--   vtl examples/finetune_fashion.lua                      -- 100 images per class, 10,000 test images
--   vtl examples/finetune_fashion.lua --quick              -- a 2-minute version
--   vtl examples/finetune_fashion.lua --set per_class=50 --set size=96 --set epochs=4
--   vtl examples/finetune_fashion.lua --set precision=bf16 --set memory_format=channels_last
--                                                          -- on a GPU machine: --set device=cuda
--
-- Prints one table: accuracy, macro-F1 and wall time of (a) training from scratch, (b) the head
-- only on the frozen pretrained base, (c) fine_tune (head first, then everything with
-- discriminative learning rates), (d) progressive unfreezing. The run directory (runs/...) keeps
-- the settings, the data fingerprint, per-strategy logs, the metrics and a confusion matrix.
local vtl = require "vtl"
local data, T, metrics = vtl.data, vtl.transforms, vtl.metrics

local quick = false
for _, a in ipairs(arg or {}) do if a == "--quick" then quick = true end end

local run = vtl.recipe.start {name = "finetune_fashion", defaults = {
  per_class = quick and 20 or 100,  -- labelled training images per class
  valid_per_class = quick and 5 or 20, -- held out from the training split for early stopping
  test_limit = quick and 1000 or 0, -- test images used (0: all 10,000)
  size = quick and 64 or 96,        -- input size fed to the network
  epochs = quick and 1 or 3,        -- epochs after the frozen phase
  freeze_epochs = 1,                -- epochs training only the head
  base_lr = 2e-3,
  batch_size = 32,
  workers = 2,
  seed = 1,
  model = "efficientnet_lite0",
  device = "auto",                  -- "cpu", "cuda" (or "cuda:N"); "auto": cuda when a GPU is present
  precision = "f32",                -- "bf16" or "f16": mixed precision (vtl.autocast)
  memory_format = "contiguous",     -- "channels_last": (N,H,W,C) activations
}}
local cfg = run.config
local device = cfg.device == "auto" and (vtl.cuda.is_available() and "cuda" or "cpu") or cfg.device
vtl.set_num_threads(#(os.getenv("VTL_THREADS") or "") > 0 and tonumber(os.getenv("VTL_THREADS")) or vtl.get_num_threads())

-- 1. the pretrained model's preprocessing; Fashion-MNIST is grey, the network wants RGB
local probe = vtl.models.create(cfg.model, {pretrained = true, num_classes = 10})
local pcfg = probe.pretrained_cfg
local function to_rgb(img) -- u8 H×W×1 -> H×W×3
  return img:expand({img.shape[1], img.shape[2], 3}):contiguous()
end
local train_tf = T.Compose {
  to_rgb,
  T.RandomResizedCrop(cfg.size, {scale = {0.6, 1.0}}),
  T.RandomHorizontalFlip(),
  T.ToTensor(), T.Normalize(pcfg.mean, pcfg.std)}
local eval_tf = T.Compose {to_rgb, T.Resize({cfg.size, cfg.size}), T.ToTensor(), T.Normalize(pcfg.mean, pcfg.std)}

-- 2. the data: k labelled images per class (the small-data case), the official test set
local full_train = data.FashionMNIST {split = "train", transform = train_tf}
local picked = data.sample_per_class(full_train, cfg.per_class + cfg.valid_per_class, {seed = cfg.seed})
local parts = data.split(picked, {cfg.per_class / (cfg.per_class + cfg.valid_per_class),
                                  cfg.valid_per_class / (cfg.per_class + cfg.valid_per_class)},
                         {stratify = true, seed = cfg.seed})
local train_ds = parts[1]
local valid_view = data.FashionMNIST {split = "train", transform = eval_tf}
local valid_ds = data.Subset(valid_view, (function()
  local idx = {}
  for k, i in ipairs(parts[2].indices) do idx[k] = picked.indices[i] end
  return idx
end)())
local test_ds = data.FashionMNIST {split = "test", transform = eval_tf}
if cfg.test_limit > 0 then
  local idx = {}
  for i = 1, math.min(cfg.test_limit, #test_ds) do idx[i] = i end
  test_ds = data.Subset(test_ds, idx)
end
run:fingerprint("train", train_ds)
run:fingerprint("test", test_ds)
print(string.format("Fashion-MNIST: %d training, %d validation, %d test images at %d px; %s on %s (%s, %s) with %d threads",
  #train_ds, #valid_ds, #test_ds, cfg.size, cfg.model, device, cfg.precision, cfg.memory_format, vtl.get_num_threads()))

local f1 = metrics.get("f1_macro")
local function evaluate(learn)
  local r = learn:evaluate(test_ds)
  return r, metrics.accuracy(r.pred, r.target), f1(r.pred, r.target)
end

-- one strategy: a fresh model, a Learner with early stopping, the training, the test metrics
local results = {}
local function strategy(key, label, pretrained, train)
  vtl.seed(cfg.seed)
  local model = vtl.models.create(cfg.model, {pretrained = pretrained, num_classes = 10, drop_rate = 0.2})
  model:to_memory_format(cfg.memory_format)
  local learn = vtl.train.Learner {model = model, train = train_ds, valid = valid_ds, batch_size = cfg.batch_size,
    num_workers = cfg.workers, seed = cfg.seed, metrics = {"accuracy", "f1_macro"}, label_smoothing = 0.1,
    device = device, precision = cfg.precision,
    callbacks = {vtl.train.EarlyStopping {monitor = "valid_loss", patience = 2},
                 vtl.train.CSVLogger(run:path(key .. "_log.csv"))}}
  local t0 = vtl.clock()
  print(string.format("\n(%s) %s", key, label))
  train(learn)
  local r, acc, mf1 = evaluate(learn)
  local secs = vtl.clock() - t0
  results[#results + 1] = {key = key, label = label, accuracy = acc, f1_macro = mf1, seconds = secs}
  return learn, r
end

local total = cfg.freeze_epochs + cfg.epochs
-- 3.-6. freeze the base, train the head, unfreeze, discriminative rates, early stopping
strategy("a", "from scratch (no pretrained weights)", false, function(l) l:fit_one_cycle(total, 3e-3) end)
strategy("b", "head only, frozen pretrained base", true, function(l) l:freeze(); l:fit_one_cycle(total, cfg.base_lr * 5) end)
local best, best_r = strategy("c", "fine_tune: head, then all layers with discriminative rates", true, function(l)
  l:fine_tune(cfg.epochs, {freeze_epochs = cfg.freeze_epochs, base_lr = cfg.base_lr}) end)
strategy("d", "progressive unfreezing from the top", true, function(l)
  l:fine_tune(cfg.epochs, {freeze_epochs = cfg.freeze_epochs, base_lr = cfg.base_lr, progressive = true}) end)

-- 7. evaluate: the comparison table, the fine-tuned model's per-class report and confusion matrix
print(string.format("\n%-62s %9s %9s %9s", "strategy (test set of " .. #test_ds .. ")", "accuracy", "macro-F1", "time"))
local out = {}
for _, r in ipairs(results) do
  print(string.format("%-62s %9.4f %9.4f %8.1fs", "(" .. r.key .. ") " .. r.label, r.accuracy, r.f1_macro, r.seconds))
  out[r.key] = {label = r.label, accuracy = r.accuracy, f1_macro = r.f1_macro, seconds = r.seconds}
end
local report = metrics.classification_report(best_r.pred, best_r.target, {class_names = test_ds.classes or full_train.classes})
print("\n(c) per class:\n" .. report.text)
local cm = metrics.confusion_matrix(best_r.pred, best_r.target, {num_classes = 10})
out.confusion_matrix = cm:totable()
vtl.save(run:path("finetuned.safetensors"), best.model:state_dict())
best:report(run:path("report"))  -- curves, confusion matrix and top losses on the validation images
run:finish(out)
print("run directory: " .. run.dir)
