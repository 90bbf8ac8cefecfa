-- Linear probing: a frozen pretrained base, only the new head trains (plus batch norm).
package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local common = require "common"
local run, train, valid, model = common.setup("head_only")
local learn = common.learner(run, train, valid, model)
learn:freeze()
learn:fit_one_cycle(run.config.epochs, run.config.lr * 5)
common.finish(run, learn)
