-- Gradual unfreezing: the head, then one more layer group per stage from the top.
package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local common = require "common"
local run, train, valid, model = common.setup("progressive_unfreezing", {epochs = 4})
local learn = common.learner(run, train, valid, model)
learn:fine_tune(run.config.epochs, {freeze_epochs = 1, base_lr = run.config.lr, progressive = true})
common.finish(run, learn)
