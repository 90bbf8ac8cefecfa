-- Loader throughput of vtl: ImageFolder of JPEGs + RandomResizedCrop(224) + flip + ColorJitter +
-- ToTensor + Normalize, batches of 32 from `workers` worker threads; prints "images/s N".
-- Also (mode "fmnist") Fashion-MNIST's training set with a light chain.
--   vtl tests/bench/loader.lua jpeg <root> <workers> <epochs>
--   vtl tests/bench/loader.lua fmnist - <workers> <epochs>
local vtl = require "vtl"
local data, T = vtl.data, vtl.transforms
local mode, root, workers, epochs = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4] or "2")
vtl.set_num_threads(1)
local ds
if mode == "jpeg" then
  ds = data.ImageFolder(root, {transform = T.Compose {
    T.RandomResizedCrop(224), T.RandomHorizontalFlip(),
    T.ColorJitter {brightness = 0.4, contrast = 0.4, saturation = 0.4},
    T.ToTensor(), T.Normalize({0.485, 0.456, 0.406}, {0.229, 0.224, 0.225})}})
else
  ds = data.FashionMNIST {split = "train", transform = T.Compose {
    T.RandomCrop(28, {padding = 2}), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize({0.286}, {0.353})}}
end
local loader = data.DataLoader(ds, {batch_size = mode == "jpeg" and 32 or 256, shuffle = true, seed = 1, num_workers = workers})
local best = 0
for e = 1, epochs do
  local t0, n = vtl.clock(), 0
  for b in loader:iter(e) do n = n + b.input.shape[1] end
  best = math.max(best, n / (vtl.clock() - t0))
end
print(string.format("images/s %.1f", best))
