-- The flagship fine-tuning setting timed in vtl (tests/bench/finetune.sh runs it and the PyTorch
-- twin finetune.py): EfficientNet-Lite0 with its ImageNet weights, `per_class` Fashion-MNIST
-- training images per class at `size` px, fine_tune(epochs) with one frozen epoch, AdamW,
-- label smoothing 0.1, batch 32. Writes the sample indices to <out>.indices.json (the twin uses
-- the same ones) and prints one JSON line: epoch_times, accuracy on the first test_n test images.
--   vtl tests/bench/finetune.lua <out> <seed> <epochs> <per_class> <size> <threads> <workers> <test_n>
local vtl = require "vtl"
local data, T = vtl.data, vtl.transforms
local out, seed, epochs, per_class, size, threads, workers, test_n = arg[1], tonumber(arg[2]), tonumber(arg[3]),
  tonumber(arg[4]), tonumber(arg[5]), tonumber(arg[6]), tonumber(arg[7]), tonumber(arg[8])
vtl.set_num_threads(threads)
vtl.seed(seed)
local model = vtl.models.create("efficientnet_lite0", {pretrained = true, num_classes = 10, drop_rate = 0.2})
local cfg = model.pretrained_cfg
local function to_rgb(img) return img:expand({img.shape[1], img.shape[2], 3}):contiguous() end
local train_tf = T.Compose {to_rgb, T.RandomResizedCrop(size, {scale = {0.6, 1.0}}), T.RandomHorizontalFlip(),
                            T.ToTensor(), T.Normalize(cfg.mean, cfg.std)}
local eval_tf = T.Compose {to_rgb, T.Resize({size, size}), T.ToTensor(), T.Normalize(cfg.mean, cfg.std)}
local train_ds = data.sample_per_class(data.FashionMNIST {split = "train", transform = train_tf}, per_class, {seed = seed})
local test_idx = {}
for i = 1, test_n do test_idx[i] = i end
local test_ds = data.Subset(data.FashionMNIST {split = "test", transform = eval_tf}, test_idx)
local f = assert(io.open(out .. ".indices.json", "w"))
f:write(vtl.json.encode {train = train_ds.indices, test = test_idx}, "\n")
f:close()
local learn = vtl.train.Learner {model = model, train = train_ds, batch_size = 32, num_workers = workers, seed = seed,
                                 label_smoothing = 0.1, quiet = true}
learn:fine_tune(epochs, {freeze_epochs = 1, base_lr = 2e-3})
local times = {}
for i, row in ipairs(learn.history) do times[i] = row.time end
local r = learn:evaluate(test_ds)
local acc = r.pred:argmax(2):eq(r.target):to("f32"):mean():item()
print(vtl.json.encode {epoch_times = times, accuracy = acc})
