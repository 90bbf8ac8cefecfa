-- Long runs: best weights kept as they improve, a checkpoint every epoch, and a rerun of the
-- same command continues where the last one stopped (Ctrl-C also saves and stops cleanly).
package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local vtl = require "vtl"
local common = require "common"
local run, train, valid, model = common.setup("resume", {checkpoint = "runs/resume-checkpoint"})
local cfg = run.config
local every_epoch = {name = "Checkpoint", after_epoch = function(_, l) l:save(cfg.checkpoint) end}
local learn = common.learner(run, train, valid, model, {checkpoint_dir = cfg.checkpoint,
  callbacks = {vtl.train.SaveBest {path = run:path("best.safetensors"), monitor = "accuracy"}, every_epoch}})
local f = io.open(cfg.checkpoint .. "/checkpoint.safetensors")
if f then
  f:close()
  print("resuming from " .. cfg.checkpoint)
  learn:resume(cfg.checkpoint)
else
  learn:fine_tune(cfg.epochs, {freeze_epochs = 1, base_lr = cfg.lr})
end
common.finish(run, learn)
