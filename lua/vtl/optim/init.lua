-- vtl.optim: optimizers (SGD, Adam, AdamW, RMSprop) with PyTorch's update rules, options and
-- state names, parameter groups, and state dicts that vtl.save can write.
--
--   local opt = vtl.optim.AdamW(vtl.optim.param_groups_no_decay(model, {weight_decay = 0.05}), {lr = 1e-3})
--   loss:backward(); opt:step(); opt:zero_grad()
--   opt.param_groups[1].lr = 1e-4                        -- schedulers change lr between steps
--   vtl.save("opt.safetensors", opt:state_tensors())     -- opt:load_state_tensors(vtl.load(...))
local Optimizer = require "vtl.optim.optimizer"
local adam = require "vtl.optim.adam"
local state = require "vtl.optim.state"

return {
  Optimizer = Optimizer,
  SGD = require "vtl.optim.sgd",
  Adam = adam.Adam,
  AdamW = adam.AdamW,
  RMSprop = require "vtl.optim.rmsprop",
  param_groups_no_decay = require("vtl.optim.groups").param_groups_no_decay,
  lr_scheduler = require "vtl.optim.lr_scheduler",
  flatten_state_dict = state.flatten,
  unflatten_state_dict = state.unflatten,
}
