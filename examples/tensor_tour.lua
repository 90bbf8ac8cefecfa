-- A short tour of vtl tensors: run with `vtl examples/tensor_tour.lua`.
local vtl = require "vtl"

vtl.seed(42)
local x = vtl.randn(4, 3)
print("x =", x)
print("shape:", table.concat(x.shape, "x"), "dtype:", x.dtype)

-- 1-based indexing, ranges are inclusive, negative indices count from the end
print("first row:", x[1])
print("last column:", x[{{}, -1}])
print("rows 2..3:", x[{{2, 3}}])

-- broadcasting and elementwise math
local centred = x - x:mean(1, true)
print("column means after centring:", centred:mean(1))

-- reductions return 1-based indices
local values, idx = x:max(2)
print("row max:", values, "at column", idx)

-- matrix products and views
local w = vtl.randn(3, 2)
local y = x:matmul(w):relu()
print("relu(x @ w) =", y)
print("as a flat view:", y:view(-1))

-- masks and in-place updates
x[x:lt(0)] = 0
print("negatives zeroed:", x)

-- save and load safetensors, readable by PyTorch's safetensors library
local path = os.tmpname() .. ".safetensors"
vtl.save(path, {x = x, w = w}, {note = "tensor tour"})
local t, meta = vtl.load(path)
print("loaded:", t.w:eq(w):all():item(), meta.note)
os.remove(path)

-- timing
local a, b = vtl.randn(512, 512), vtl.randn(512, 512)
local t0 = vtl.clock()
for _ = 1, 10 do local _ = a:matmul(b) end
print(string.format("512x512 matmul: %.2f ms on %d threads", (vtl.clock() - t0) * 100, vtl.get_num_threads()))
