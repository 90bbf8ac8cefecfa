-- The standard recipe: head first on the frozen base, then everything with learning rates
-- spread over the layer groups (fastai's fine_tune).
package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local common = require "common"
local run, train, valid, model = common.setup("fine_tune", {freeze_epochs = 1, lr_mult = 100})
local learn = common.learner(run, train, valid, model, {label_smoothing = 0.1})
learn:fine_tune(run.config.epochs, {freeze_epochs = run.config.freeze_epochs, base_lr = run.config.lr,
                                    lr_mult = run.config.lr_mult})
common.finish(run, learn)
