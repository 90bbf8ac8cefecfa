-- vtl: tensors for fine-tuning vision models. The C core is vtl.core; this module adds the
-- pure-Lua parts on top and is what `require "vtl"` returns. Submodules load on first use,
-- so starting the host stays fast.
local core = require "vtl.core"
local vtl = {}
for k, v in pairs(core) do
  if k ~= "nn" then vtl[k] = v end -- vtl.nn is the Lua library (lua/vtl/nn), built on core.nn
end

local lazy = {autograd = "vtl.autograd", nn = "vtl.nn", optim = "vtl.optim", transforms = "vtl.transforms", data = "vtl.data",
              models = "vtl.models", hub = "vtl.hub", train = "vtl.train", json = "vtl.json", recipe = "vtl.recipe",
              metrics = "vtl.metrics"}
return setmetatable(vtl, {
  __index = function(t, k)
    local name = lazy[k]
    if not name then return nil end
    local m = require(name)
    rawset(t, k, m)
    return m
  end,
})
