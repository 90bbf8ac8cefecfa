-- vtl: tensors for fine-tuning vision models. The C core is vtl.core; this module adds the
-- pure-Lua parts on top and is what `require "vtl"` returns. Submodules load on first use,
-- so starting the host stays fast.
local core = require "vtl.core"
local vtl = {}
for k, v in pairs(core) do
  -- vtl.nn and vtl.plot are the Lua libraries (lua/vtl/nn, lua/vtl/plot.lua), built on core.nn
  -- and core.plot
  if k ~= "nn" and k ~= "plot" then vtl[k] = v end
end

local lazy = {autograd = "vtl.autograd", nn = "vtl.nn", optim = "vtl.optim", transforms = "vtl.transforms", data = "vtl.data",
              models = "vtl.models", hub = "vtl.hub", train = "vtl.train", json = "vtl.json", recipe = "vtl.recipe",
              metrics = "vtl.metrics", plot = "vtl.plot", display = "vtl.display", doc = "vtl.doc",
              distill = "vtl.distill", fewshot = "vtl.fewshot", adapt = "vtl.adapt", explain = "vtl.explain",
              deploy = "vtl.deploy", monitor = "vtl.monitor", amp = "vtl.amp",
              profiler = "vtl.profiler"}
return setmetatable(vtl, {
  __index = function(t, k)
    local name = lazy[k]
    if not name then return nil end
    local m = require(name)
    rawset(t, k, m)
    return m
  end,
})
