-- Everything trainable at once, with per-group learning rates: geometric from lr/100 (stem) to
-- lr (head) and timm-style layer-wise decay on top, a cosine schedule with warm-up, early stopping.
package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local vtl = require "vtl"
local common = require "common"
local S = vtl.optim.lr_scheduler
local run, train, valid, model = common.setup("discriminative_lr", {layer_decay = 0.9})
local cfg = run.config
local learn = common.learner(run, train, valid, model, {opt = "adamw", opt_opts = {weight_decay = 0.05},
  callbacks = {vtl.train.EarlyStopping {monitor = "valid_loss", patience = 2}}})
learn:fit(cfg.epochs, {cfg.lr / 100, cfg.lr}, {layer_decay = cfg.layer_decay, interval = "batch",
  sched = function(opt, t) return S.warmup(S.CosineAnnealingLR(opt, {T_max = t.epochs * t.steps_per_epoch}), t.steps_per_epoch // 2 + 1) end})
common.finish(run, learn)
