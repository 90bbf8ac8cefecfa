-- Drift monitoring: a reference profile of clean validation data (pixel statistics, the model's
-- embeddings, predicted classes, confidences), then scores of the clean test set and of
-- progressively shifted versions of it (more noise, lower contrast), showing the drift scores
-- rising with the shift while the accuracy falls.
--
--   vtl examples/recipes/drift.lua            -- 300 training images per class
--   vtl examples/recipes/drift.lua --quick    -- a one-minute version
package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local vtl = require "vtl"
local fashion = require "fashion"

local quick = false
for _, a in ipairs(arg or {}) do if a == "--quick" then quick = true end end
local run = vtl.recipe.start {name = "drift", defaults = {
  per_class = quick and 40 or 300, ref_per_class = quick and 40 or 100, test_per_class = quick and 40 or 100,
  epochs = quick and 3 or 6, lr = 3e-3, width = 0.5, seed = 1, permutations = 200,
}}
local cfg = run.config
local seed = cfg.seed

local x, y = fashion.load("train", cfg.per_class, seed)
local model = fashion.model(10, cfg.width, seed)
fashion.learner(model, x, y, seed):fit_one_cycle(cfg.epochs, cfg.lr)
-- the reference: held-out clean images (other images than the training ones)
local xr = fashion.load("train", cfg.ref_per_class, seed + 500)
local prof = vtl.monitor.fit_profile(xr, {model = model})
local xt, yt = fashion.load("test", cfg.test_per_class, seed)

local levels = {
  {"clean", {}},
  {"noise 0.05", {{"noise", 0.05}}},
  {"noise 0.15", {{"noise", 0.15}}},
  {"noise 0.30", {{"noise", 0.30}}},
  {"noise 0.30 + contrast -50%", {{"noise", 0.30}, {"contrast", 0.5}}},
}
print(string.format("\n%-28s %9s %9s %8s %9s %9s %9s  %s", "test set (" .. xt.shape[1] .. " images)", "accuracy",
  "PSI max", "MMD^2", "MMD p", "KL class", "mean conf", "flags"))
local out = {levels = {}}
for i, lv in ipairs(levels) do
  local xs = fashion.shifts(xt, lv[2], seed + i)
  local s = prof:score(xs, {permutations = cfg.permutations, seed = seed})
  local acc = fashion.accuracy(model, xs, yt)
  local flags = {}
  for _, k in ipairs {"psi", "mmd", "kl"} do if s.flags[k] then flags[#flags + 1] = k end end
  print(string.format("%-28s %9.4f %9.3f %8.4f %9.3f %9.3f %9.3f  %s", lv[1], acc, s.psi_max, s.mmd, s.mmd_p, s.kl_class,
    s.mean_confidence, s.drift and ("DRIFT (" .. table.concat(flags, ", ") .. ")") or "-"))
  out.levels[i] = {name = lv[1], accuracy = acc, psi_max = s.psi_max, mmd = s.mmd, mmd_p = s.mmd_p, kl_class = s.kl_class,
                   drift = s.drift}
end
run:finish(out)
print("run directory: " .. run.dir)
