-- Knowledge distillation on Fashion-MNIST with few labels: a larger teacher is trained on the
-- labelled images first; then the same small student is trained alone on those images, and with
-- the teacher's softened outputs (vtl.distill.Distiller, T = 4, alpha = 0.5) on the labelled
-- images plus a transfer set of unlabelled ones, whose only labels are the teacher's outputs
-- (cross-entropy ignores them: label -100). Prints accuracy, parameters, size on disk and
-- batch-1 latency of each.
--
--   vtl examples/recipes/distill.lua            -- 200 images per class, 3 seeds
--   vtl examples/recipes/distill.lua --quick    -- a one-minute version
--   vtl examples/recipes/distill.lua --set teacher=efficientnet_lite0 --set teacher_epochs=3
--       -- the teacher: EfficientNet-Lite0 with its ImageNet weights, fine-tuned at 64 px
package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local vtl = require "vtl"
local fashion = require "fashion"

local quick = false
for _, a in ipairs(arg or {}) do if a == "--quick" then quick = true end end
local run = vtl.recipe.start {name = "distill", defaults = {
  per_class = quick and 50 or 200, test_per_class = quick and 50 or 200,
  teacher_per_class = 0,             -- images per class the teacher learns from (0: the student's)
  unlabelled_per_class = quick and 200 or 800, -- unlabelled images per class the student + KD also
                                     -- sees, with the teacher's outputs as their only labels
  teacher = "small_cnn",             -- or "efficientnet_lite0": ImageNet weights, fine-tuned at teacher_size px
  teacher_size = 64,
  teacher_width = 1.0, student_width = 0.25, teacher_epochs = 20, epochs = 15,
  lr = 3e-3, temperature = 4, alpha = 0.5, seeds = quick and "1" or "1,2,3",
}}
local cfg = run.config

-- a model with 3-channel inputs of its own normalisation, fed the recipe's 1×28×28 images:
-- undone normalisation, bilinear resize to size px, grey copied to RGB, the model's normalisation
local Resized = vtl.nn.Module:extend("Resized")
function Resized:init(net, size)
  self.net, self.size = net, size
  local c = net.pretrained_cfg
  self.mean, self.std = c.mean, c.std
end
function Resized:forward(x)
  local p = x * fashion.STD + fashion.MEAN
  p = vtl.nn.functional.interpolate(p, {size = {self.size, self.size}, mode = "bilinear", align_corners = false})
  p = p:expand({p.shape[1], 3, self.size, self.size})
  local m = vtl.tensor(self.mean):view(1, 3, 1, 1)
  local sd = vtl.tensor(self.std):view(1, 3, 1, 1)
  return self.net((p - m) / sd)
end
function Resized:layer_groups() return self.net:layer_groups() end

local function mean(t) local s = 0 for _, v in ipairs(t) do s = s + v end return s / #t end
local acc = {teacher = {}, student = {}, kd = {}}
local models = {}
for _, seed in ipairs(fashion.ints(cfg.seeds)) do
  local x, y = fashion.load("train", cfg.per_class, seed)
  local xt, yt = fashion.load("test", cfg.test_per_class, seed)
  local tx, ty = x, y
  if cfg.teacher_per_class > 0 then tx, ty = fashion.load("train", cfg.teacher_per_class, seed + 500) end
  local teacher
  if cfg.teacher == "small_cnn" then
    teacher = fashion.model(10, cfg.teacher_width, seed)
    fashion.learner(teacher, tx, ty, seed):fit_one_cycle(cfg.teacher_epochs, cfg.lr)
  else -- a pretrained zoo model that sees the same batches resized to RGB teacher_size px
    vtl.seed(seed)
    teacher = Resized(vtl.models.create(cfg.teacher, {pretrained = true, num_classes = 10}), cfg.teacher_size)
    fashion.learner(teacher, tx, ty, seed):fine_tune(cfg.teacher_epochs, {freeze_epochs = 1})
  end
  local student = fashion.model(10, cfg.student_width, seed + 100)
  fashion.learner(student, x, y, seed):fit_one_cycle(cfg.epochs, cfg.lr)
  local kd = fashion.model(10, cfg.student_width, seed + 100)
  local kx, ky = x, y
  if cfg.unlabelled_per_class > 0 then -- a transfer set: the teacher's outputs are its only labels
    local ux = fashion.load("train", cfg.unlabelled_per_class, seed + 2000)
    kx, ky = vtl.cat({x, ux}, 1), vtl.cat({y, vtl.full({ux.shape[1]}, -100, {dtype = "i64"})})
  end
  fashion.learner(kd, kx, ky, seed, {callbacks = {vtl.distill.Distiller {teacher = teacher, temperature = cfg.temperature,
    alpha = cfg.alpha}}}):fit_one_cycle(cfg.epochs, cfg.lr)
  for k, m in pairs {teacher = teacher, student = student, kd = kd} do
    acc[k][#acc[k] + 1] = fashion.accuracy(m, xt, yt)
    models[k] = m
  end
  print(string.format("seed %d: teacher %.4f  student alone %.4f  student + KD %.4f", seed, acc.teacher[#acc.teacher],
    acc.student[#acc.student], acc.kd[#acc.kd]))
end

print(string.format("\n%-24s %9s %10s %11s %12s", "model (" .. #acc.kd .. " seed" .. (#acc.kd > 1 and "s" or "") .. ")",
  "accuracy", "params", "size f32", "latency b1"))
local out = {}
for _, row in ipairs {{"teacher", "teacher"}, {"student", "student alone"}, {"kd", "student + KD"}} do
  local r = vtl.deploy.report(models[row[1]], {1, 28, 28}, {runs = 10, throughput_runs = 1})
  print(string.format("%-24s %9.4f %10d %9.1f KB %9.2f ms", row[2], mean(acc[row[1]]), r.params, r.size_f32 / 1024, r.latency_ms))
  out[row[1]] = {accuracy = mean(acc[row[1]]), per_seed = acc[row[1]], params = r.params, size_f32 = r.size_f32,
                 latency_ms = r.latency_ms}
end
run:finish(out)
print("run directory: " .. run.dir)
