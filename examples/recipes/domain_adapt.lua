-- Unsupervised domain adaptation: train on labelled Fashion-MNIST (source), test on a visibly
-- shifted version (target: blurred, then Gaussian noise of sigma 0.4) whose labels are used only
-- for evaluation. Compares source-only training, target batches through batch norm without an
-- alignment loss, DANN and MMD alignment over several seeds.
--
--   vtl examples/recipes/domain_adapt.lua            -- 200 images per class, 3 seeds
--   vtl examples/recipes/domain_adapt.lua --quick    -- a one-minute version
package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local vtl = require "vtl"
local fashion = require "fashion"

local quick = false
for _, a in ipairs(arg or {}) do if a == "--quick" then quick = true end end
local run = vtl.recipe.start {name = "domain_adapt", defaults = {
  per_class = quick and 60 or 200,   -- labelled source images per class (and unlabelled target images)
  test_per_class = quick and 30 or 100,
  epochs = quick and 10 or 12,
  lr = 3e-3, width = 0.5, seeds = quick and "1" or "1,2,3",
  shift = "blur,noise=0.4",          -- the target: these shifts of fashion.shift, in order
  dann_weight = 1.0, mmd_weight = 1.0,
}}
local cfg = run.config
local shift = {}
for item in tostring(cfg.shift):gmatch("[^,]+") do
  local kind, amount = item:match("^%s*([%a_]+)%s*=?%s*([%d.]*)%s*$")
  if not kind then error("shift: cannot read '" .. item .. "' (expected kind or kind=amount)", 0) end
  shift[#shift + 1] = {kind, tonumber(amount)}
end

local methods = {
  {key = "source_only", label = "source only"},
  -- target batches pass through the network (and its batch norm) beside the source batches,
  -- with no alignment loss: what DANN and MMD gain beyond this comes from the alignment itself
  {key = "mixed_bn", label = "target through batch norm", cb = function(t) return vtl.adapt.MMDAlign {target = t, weight = 0} end},
  {key = "dann", label = "DANN (gradient reversal)", cb = function(t) return vtl.adapt.DANN {target = t, weight = cfg.dann_weight} end},
  {key = "mmd", label = "MMD (multi-kernel)", cb = function(t) return vtl.adapt.MMDAlign {target = t, weight = cfg.mmd_weight} end},
}
local res = {}
for _, seed in ipairs(fashion.ints(cfg.seeds)) do
  local xs, ys = fashion.load("train", cfg.per_class, seed)
  -- the target's training images are other images than the source's (their labels unused)
  local xt_train = fashion.shifts(fashion.load("train", cfg.per_class, seed + 1000), shift, seed)
  local xt_test, yt_test = fashion.load("test", cfg.test_per_class, seed)
  local xs_test = xt_test
  xt_test = fashion.shifts(xt_test, shift, seed + 7)
  for _, m in ipairs(methods) do
    local model = fashion.model(10, cfg.width, seed)
    local learn = fashion.learner(model, xs, ys, seed, {callbacks = m.cb and {m.cb(vtl.data.TensorDataset(xt_train))} or nil})
    learn:fit_one_cycle(cfg.epochs, cfg.lr)
    local r = res[m.key] or {target = {}, source = {}}
    res[m.key] = r
    r.target[#r.target + 1] = fashion.accuracy(model, xt_test, yt_test)
    r.source[#r.source + 1] = fashion.accuracy(model, xs_test, yt_test)
    print(string.format("seed %d  %-26s target %.4f  source %.4f", seed, m.label, r.target[#r.target], r.source[#r.source]))
  end
end

local function mean(t) local s = 0 for _, v in ipairs(t) do s = s + v end return s / #t end
print(string.format("\n%-28s %16s %16s   (%d seed%s; target = %s)", "method", "target accuracy",
  "source accuracy", #res.source_only.target, #res.source_only.target == 1 and "" or "s", cfg.shift))
local out = {}
for _, m in ipairs(methods) do
  local r = res[m.key]
  print(string.format("%-28s %16.4f %16.4f", m.label, mean(r.target), mean(r.source)))
  out[m.key] = {target = mean(r.target), source = mean(r.source), target_per_seed = r.target}
end
run:finish(out)
print("run directory: " .. run.dir)
