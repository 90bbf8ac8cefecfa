-- Pick the learning rate: the range test, its plot, then one-cycle training at the suggestion.
package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local common = require "common"
local run, train, valid, model = common.setup("lr_find")
local learn = common.learner(run, train, valid, model)
learn:freeze()
local r = learn:lr_find {plot = run:path("lr_find.png"), num_it = 60}
print(string.format("lr_find: suggestion %.3g (plot %s)", r.suggestion, run:path("lr_find.png")))
learn:fit_one_cycle(run.config.epochs, r.suggestion)
common.finish(run, learn)
