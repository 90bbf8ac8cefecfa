-- Fine-tune a pretrained model on your own images: a folder with one sub-folder per class.
--
--   vtl examples/finetune_folder.lua path/to/images                 -- 20% held out for validation
--   vtl examples/finetune_folder.lua path/to/train path/to/valid     -- a separate validation folder
--   vtl examples/finetune_folder.lua path/to/images --set model=resnet50 --set epochs=10 --set size=224
--
-- Uses the model's own preprocessing (timm's train and eval presets from its pretrained_cfg),
-- suggests a learning rate with lr_find, fine-tunes (head first, then all layers with
-- discriminative rates, early stopping), and writes curves, a confusion matrix, the top losses,
-- a report and the best weights into the run directory.
local vtl = require "vtl"
local data, T = vtl.data, vtl.transforms

-- the image folder must be given (checked before a run directory is made)
local function first_path(args)
  local i = 1
  while args[i] do
    if args[i] == "--set" or args[i] == "--config" then i = i + 2
    elseif args[i]:sub(1, 2) == "--" then i = i + 1
    else return args[i] end
  end
end
if not first_path(arg or {}) then
  io.stderr:write("usage: vtl examples/finetune_folder.lua <image folder> [<validation folder>] [--set key=value ...]\n")
  os.exit(2)
end

local run = vtl.recipe.start {name = "finetune_folder", defaults = {
  model = "efficientnet_lite0", size = 0, epochs = 5, freeze_epochs = 1, batch_size = 32, workers = 2,
  valid_fraction = 0.2, auto_augment = "rand-m9-mstd0.5", label_smoothing = 0.1, lr = 0.0, seed = 1}}
local cfg = run.config
local train_dir, valid_dir = run.args[1], run.args[2]

-- the model's preprocessing, at the size asked for (0: the model's own)
local probe = vtl.models.create(cfg.model, {pretrained = true})
local pcfg = {}
for k, v in pairs(probe.pretrained_cfg) do pcfg[k] = v end
if cfg.size > 0 then pcfg.input_size = {3, cfg.size, cfg.size} end
local train_tf = T.train_transform(pcfg, {auto_augment = cfg.auto_augment ~= "" and cfg.auto_augment or nil})
local eval_tf = T.eval_transform(pcfg)

local train, valid
if valid_dir then
  train = data.ImageFolder(train_dir, {transform = train_tf, on_error = "skip"})
  valid = data.ImageFolder(valid_dir, {transform = eval_tf, on_error = "skip"})
else
  local all = data.ImageFolder(train_dir, {transform = train_tf, on_error = "skip"})
  local parts = data.split(all, {1 - cfg.valid_fraction, cfg.valid_fraction}, {stratify = true, seed = cfg.seed})
  train = parts[1]
  valid = data.Subset(data.ImageFolder(train_dir, {transform = eval_tf, on_error = "skip"}), parts[2].indices)
end
run:fingerprint("train", train)
print(string.format("%d classes; %d training and %d validation images; %s at %d px",
  #train.classes, #train, #valid, cfg.model, pcfg.input_size[3]))

local model = vtl.models.create(cfg.model, {pretrained = true, num_classes = #train.classes})
local learn = vtl.train.Learner {model = model, train = train, valid = valid, batch_size = cfg.batch_size,
  num_workers = cfg.workers, seed = cfg.seed, label_smoothing = cfg.label_smoothing,
  metrics = {"accuracy", "f1_macro", "balanced_accuracy"},
  callbacks = {vtl.train.EarlyStopping {monitor = "valid_loss", patience = 3},
               vtl.train.SaveBest {path = run:path("best.safetensors"), monitor = "accuracy"},
               vtl.train.CSVLogger(run:path("log.csv"))}}

local lr = cfg.lr
if lr <= 0 then
  learn:freeze()
  lr = learn:lr_find {plot = run:path("lr_find.png")}.suggestion
  print(string.format("lr_find suggests %.3g", lr))
end
learn:fine_tune(cfg.epochs, {freeze_epochs = cfg.freeze_epochs, base_lr = lr})

local r = learn:evaluate()
local report = vtl.metrics.classification_report(r.pred, r.target, {class_names = train.classes})
print(report.text)
learn:report(run:path("report"))
run:finish {accuracy = r.accuracy, f1_macro = r.f1_macro, balanced_accuracy = r.balanced_accuracy}
print("run directory: " .. run.dir)
