-- The small labelled set the Learner tests train on: n images 3×size×size whose class (1..4)
-- shifts their mean by 0.5 per class, drawn from vtl.Generator(seed).
local vtl = require "vtl"

---@param n integer
---@param seed integer
---@param size integer|nil  (12)
return function(n, seed, size)
  size = size or 12
  local g = vtl.Generator(seed)
  local y = vtl.randint(1, 5, {n}, {generator = g})
  local x = vtl.randn({n, 3, size, size}, {generator = g}) + y:to("f32"):reshape({n, 1, 1, 1}) * 0.5
  return vtl.data.TensorDataset(x, y)
end
