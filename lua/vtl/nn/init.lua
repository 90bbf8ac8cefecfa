-- vtl.nn: modules (nn.Module and its subclasses), containers, layers and losses; the
-- functional ops as nn.functional, initialisers as nn.init, gradient clipping as nn.utils.
local module = require "vtl.nn.module"

local nn = {
  Module = module.Module,
  Parameter = module.Parameter,
  is_parameter = module.is_parameter,
  is_module = module.is_module,
  functional = require "vtl.nn.functional",
  init = require "vtl.nn.initializers",
  utils = require "vtl.nn.utils",
}

for _, name in ipairs({"vtl.nn.containers", "vtl.nn.layers", "vtl.nn.norm", "vtl.nn.attention", "vtl.nn.loss"}) do
  for k, v in pairs(require(name)) do
    if type(v) == "table" and k:sub(1, 1) ~= "_" then nn[k] = v end
  end
end

nn.norm_act = require("vtl.nn.norm").norm_act -- act(norm(x) + add), one pass for batch norms

return nn
