-- Few-shot learning on Fashion-MNIST: classes 0-5 (1-6 here) for (meta-)training, classes 6-9
-- (7-10) held out. 4-way 1-shot and 5-shot accuracy with 95% confidence intervals over many
-- episodes of the held-out classes for: random-init features + nearest prototype (a floor),
-- supervised-pretrained frozen features + nearest prototype, a ProtoNet-trained backbone, and
-- fine-tuning a new head on each support set.
--
--   vtl examples/recipes/fewshot.lua            -- 600 test episodes
--   vtl examples/recipes/fewshot.lua --quick    -- a one-minute version
package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local vtl = require "vtl"
local fashion = require "fashion"
local fs = vtl.fewshot

local quick = false
for _, a in ipairs(arg or {}) do if a == "--quick" then quick = true end end
local run = vtl.recipe.start {name = "fewshot", defaults = {
  per_class = quick and 60 or 300,       -- images of each training class
  test_per_class = quick and 40 or 200,  -- images of each held-out class the episodes draw from
  episodes = quick and 100 or 600, train_episodes = quick and 150 or 1000,
  pretrain_epochs = quick and 3 or 8, width = 0.5, lr = 3e-3, seed = 1, finetune_steps = 20,
}}
local cfg = run.config
local seed = cfg.seed

local xtr, ytr = fashion.load("train", cfg.per_class, seed, {1, 2, 3, 4, 5, 6}, true)
local xte, yte = fashion.load("test", cfg.test_per_class, seed, {7, 8, 9, 10}, true)
local train_ds, test_ds = vtl.data.TensorDataset(xtr, ytr), vtl.data.TensorDataset(xte, yte)

-- encoders
local random = fashion.model(0, cfg.width, seed)
local pre = fashion.model(6, cfg.width, seed)
fashion.learner(pre, xtr, ytr, seed):fit_one_cycle(cfg.pretrain_epochs, cfg.lr)
local proto_enc = fashion.model(0, cfg.width, seed)
local proto = fs.ProtoNet {encoder = proto_enc}
proto:fit(train_ds, fs.EpisodicSampler(train_ds, {n_way = 4, k_shot = 5, q_query = 10, seed = seed}),
  {episodes = cfg.train_episodes, lr = 1e-3})

-- fine-tuning on the support set: the pretrained backbone frozen, a new 4-way linear head
local function finetune(xs, ys, xq)
  local feats = vtl.no_grad(function()
    pre:eval()
    return fs.embed(pre, vtl.cat({xs, xq}, 1))
  end)
  local fsup, fq = feats:narrow(1, 1, xs.shape[1]), feats:narrow(1, xs.shape[1] + 1, xq.shape[1])
  vtl.seed(seed)
  local head = vtl.nn.Linear(fsup.shape[2], 4)
  local opt = vtl.optim.Adam(head:parameters(), {lr = 1e-2})
  for _ = 1, cfg.finetune_steps do
    opt:zero_grad()
    vtl.nn.functional.cross_entropy(head(fsup), ys):backward()
    opt:step()
  end
  return vtl.no_grad(function() return head(fq):argmax(2) end)
end

local rows = {
  {"random-init features + nearest prototype", function(s) return fs.ProtoNet {encoder = random}:evaluate(test_ds, s, {episodes = cfg.episodes}) end},
  {"pretrained frozen features + nearest prototype", function(s) return fs.ProtoNet {encoder = pre}:evaluate(test_ds, s, {episodes = cfg.episodes}) end},
  {"ProtoNet-trained backbone", function(s) return proto:evaluate(test_ds, s, {episodes = cfg.episodes}) end},
  {"fine-tuning a head on the support set", function(s) return fs.evaluate_episodes(test_ds, s, finetune, {episodes = cfg.episodes}) end},
}
local keys = {"random", "pretrained", "protonet", "finetune"}
print(string.format("\n%-48s %18s %18s   (4-way, %d episodes of held-out classes 7-10)", "method", "1-shot", "5-shot", cfg.episodes))
local out = {}
for i, r in ipairs(rows) do
  local res = {}
  for _, k in ipairs {1, 5} do
    res[k] = r[2](fs.EpisodicSampler(test_ds, {n_way = 4, k_shot = k, q_query = 15, seed = seed + 1000}))
  end
  print(string.format("%-48s %9.4f ± %.4f %9.4f ± %.4f", r[1], res[1].mean, res[1].ci95, res[5].mean, res[5].ci95))
  out[keys[i]] = {shot1 = res[1].mean, shot1_ci = res[1].ci95, shot5 = res[5].mean, shot5_ci = res[5].ci95}
end
run:finish(out)
print("run directory: " .. run.dir)
