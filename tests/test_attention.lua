-- The attention op (F.scaled_dot_product_attention without a mask or dropout, nn.MultiheadAttention
-- with need_weights = false, the ViT blocks): one call forward, the probabilities recomputed from
-- the saved log-sum-exp in the backward pass. Checked against the composition written out here
-- (matmul, softmax, matmul) in f64, then f32, the half types, autocast, errors and the memory the
-- backward keeps. PyTorch parity of F.scaled_dot_product_attention itself is in test_nn.
local T = require "testlib"
local vtl = require "vtl"
local nn = vtl.nn
local F = nn.functional
local core = require "vtl.core"

-- softmax(scale q kᵀ) v written out, with the causal mask (query i sees keys 1..i)
local function composed(q, k, v, scale, causal)
  local s = q:matmul(k:transpose(-2, -1)) * scale
  if causal then
    local L, S = q.shape[q.ndim - 1], k.shape[k.ndim - 1]
    s = s:masked_fill(vtl.arange(S):view(1, S):gt(vtl.arange(L):view(L, 1)), -math.huge)
  end
  return F.softmax(s, -1):matmul(v)
end

local function leaves(dtype, ...)
  local out = {}
  for i, shape in ipairs({...}) do out[i] = vtl.randn(shape, {dtype = dtype}):requires_grad_() end
  return out
end

local function maxdiff(a, b) return (a:double() - b:double()):abs():max():item() end

-- output and the three gradients of the op and of the composition, from the same inputs
local function both(dtype, qs, ks, vs, scale, causal)
  local a = leaves(dtype, qs, ks, vs)
  local b = {}
  for i = 1, 3 do b[i] = a[i]:detach():clone():requires_grad_() end
  local y = F.scaled_dot_product_attention(a[1], a[2], a[3], {scale = scale, is_causal = causal})
  local r = composed(b[1], b[2], b[3], scale, causal)
  local g = vtl.randn(y.shape, {dtype = dtype})
  y:backward(g)
  r:backward(g)
  return y, r, a, b
end

local CASES = {
  {"4-D, L < S, E ~= Ev", {2, 3, 5, 4}, {2, 3, 7, 4}, {2, 3, 7, 6}, 0.5, false},
  {"4-D causal, L < S", {2, 3, 5, 4}, {2, 3, 7, 4}, {2, 3, 7, 6}, 0.3, true},
  {"3-D causal, L > S", {3, 7, 8}, {3, 5, 8}, {3, 5, 2}, 1 / math.sqrt(8), true},
  {"2-D (unbatched)", {6, 4}, {9, 4}, {9, 5}, 0.7, false},
  {"one key", {2, 4, 3}, {2, 1, 3}, {2, 1, 3}, 1.0, false},
  {"5-D, long rows", {2, 1, 2, 33, 16}, {2, 1, 2, 70, 16}, {2, 1, 2, 70, 8}, 0.25, false},
}

T.test("attention: output and gradients equal the composition in f64", function()
  vtl.seed(1)
  for _, c in ipairs(CASES) do
    local y, r, a, b = both("f64", c[2], c[3], c[4], c[5], c[6])
    T.eq(table.concat(y.shape, ","), table.concat(r.shape, ","), c[1] .. ": shape")
    T.truthy(maxdiff(y, r) < 1e-12, c[1] .. ": output differs by " .. maxdiff(y, r))
    for i, name in ipairs({"q", "k", "v"}) do
      local d = maxdiff(a[i].grad, b[i].grad)
      T.truthy(d < 1e-12, ("%s: grad %s differs by %g"):format(c[1], name, d))
    end
  end
end)

T.test("attention: f32 within 1e-5 of f64, gradients too", function()
  vtl.seed(2)
  for _, c in ipairs(CASES) do
    local a = leaves("f64", c[2], c[3], c[4])
    local f = {}
    for i = 1, 3 do f[i] = a[i]:detach():float():requires_grad_() end
    local y64 = F.scaled_dot_product_attention(a[1], a[2], a[3], {scale = c[5], is_causal = c[6]})
    local y32 = F.scaled_dot_product_attention(f[1], f[2], f[3], {scale = c[5], is_causal = c[6]})
    T.eq(y32.dtype, "f32")
    local g = vtl.randn(y64.shape, {dtype = "f64"})
    y64:backward(g)
    y32:backward(g:float())
    T.truthy(maxdiff(y32, y64) < 1e-5, c[1] .. ": f32 output off by " .. maxdiff(y32, y64))
    for i = 1, 3 do
      T.eq(f[i].grad.dtype, "f32")
      local d = maxdiff(f[i].grad, a[i].grad)
      T.truthy(d < 2e-5, ("%s: f32 grad %d off by %g"):format(c[1], i, d))
    end
  end
end)

T.test("attention: f16 and bf16 inputs keep their dtype, computed in f32", function()
  vtl.seed(3)
  for _, dt in ipairs({"bf16", "f16"}) do
    local tol = dt == "bf16" and 2e-2 or 4e-3
    local a = leaves(dt, {2, 2, 9, 8}, {2, 2, 11, 8}, {2, 2, 11, 8})
    local f = {}
    for i = 1, 3 do f[i] = a[i]:detach():float():requires_grad_() end
    local y = F.scaled_dot_product_attention(a[1], a[2], a[3], {is_causal = true})
    local r = F.scaled_dot_product_attention(f[1], f[2], f[3], {is_causal = true})
    T.eq(y.dtype, dt)
    -- one rounding of the f32 result
    T.truthy(maxdiff(y, r:to(dt)) <= tol, dt .. ": output off by " .. maxdiff(y, r))
    local g = vtl.randn(y.shape):to(dt)
    y:backward(g)
    r:backward(g:float())
    for i = 1, 3 do
      T.eq(a[i].grad.dtype, dt)
      local d = maxdiff(a[i].grad, f[i].grad)
      T.truthy(d <= 4 * tol, ("%s: grad %d off by %g"):format(dt, i, d))
    end
  end
end)

T.test("attention: bf16 over several chunks of pairs (300 x 256 x 256 scores) matches f32 on the same inputs", function()
  vtl.seed(7)
  local a = leaves("bf16", {300, 256, 16}, {300, 256, 16}, {300, 256, 16})
  local f = {}
  for i = 1, 3 do f[i] = a[i]:detach():float():requires_grad_() end
  local y = F.scaled_dot_product_attention(a[1], a[2], a[3], {is_causal = true})
  local r = F.scaled_dot_product_attention(f[1], f[2], f[3], {is_causal = true})
  local g = vtl.randn(y.shape):bfloat16()
  y:backward(g)
  r:backward(g:float())
  local function rel(x, ref) return maxdiff(x, ref) / ref:abs():max():item() end
  print(("    bf16 chunked: output %.3g"):format(rel(y, r)))
  T.truthy(rel(y, r) < 1e-2, ("output: %.3g"):format(rel(y, r)))
  for i = 1, 3 do
    T.truthy(rel(a[i].grad, f[i].grad) < 3e-2, ("grad %d: %.3g"):format(i, rel(a[i].grad, f[i].grad)))
  end
end)

T.test("attention: autocast runs it in bf16; the f32 leaves get f32 gradients", function()
  vtl.seed(4)
  local a = leaves("f32", {2, 7, 8}, {2, 7, 8}, {2, 7, 8})
  local y = vtl.autocast("bf16", function() return F.scaled_dot_product_attention(a[1], a[2], a[3]) end)
  T.eq(y.dtype, "bf16")
  local r = composed(a[1]:detach():bfloat16():float(), a[2]:detach():bfloat16():float(),
    a[3]:detach():bfloat16():float(), 1 / math.sqrt(8), false)
  T.truthy(maxdiff(y, r) < 2e-2, "autocast output off by " .. maxdiff(y, r))
  y:float():sum():backward()
  for i = 1, 3 do T.eq(a[i].grad.dtype, "f32") end
end)

T.test("attention: NaN stays in its row; leading dims that broadcast take the composition", function()
  local q, k, v = vtl.randn(1, 4, 3), vtl.randn(1, 5, 3), vtl.randn(1, 5, 2)
  q[{1, 2, 1}] = 0 / 0
  local y = F.scaled_dot_product_attention(q, k, v)
  T.truthy(y[{1, 2}]:isnan():all():item(), "the NaN query's row is NaN")
  T.truthy(not y[{1, 1}]:isnan():any():item() and not y[{1, 3}]:isnan():any():item(), "other rows are finite")
  -- k and v shared by all heads: (2, 1, S, E) against q (2, 3, L, E)
  local qb, kb, vb = vtl.randn(2, 3, 4, 5, {dtype = "f64"}), vtl.randn(2, 1, 6, 5, {dtype = "f64"}), vtl.randn(2, 1, 6, 5, {dtype = "f64"})
  T.truthy(maxdiff(F.scaled_dot_product_attention(qb, kb, vb), composed(qb, kb, vb, 1 / math.sqrt(5), false)) < 1e-12)
end)

T.test("attention: the op's argument errors name what is wrong", function()
  local A = core.nn.attention
  local q, k, v = vtl.randn(2, 4, 3), vtl.randn(2, 5, 3), vtl.randn(2, 5, 6)
  T.raises(function() A(vtl.randn(4, 3), k, v, 1, false) end, "attention: query must be 3-D (batch*heads, length, dim), got shape {4,3}")
  T.raises(function() A(q, k:double(), v, 1, false) end, "attention: query and key must have the same dtype, got f32 and f64")
  T.raises(function() A(q, vtl.randn(2, 5, 4), v, 1, false) end, "attention: shapes do not match: query {2,4,3}, key {2,5,4}, value {2,5,6}")
  T.raises(function() A(q, k, vtl.randn(2, 4, 6), 1, false) end, "attention: shapes do not match")
  T.raises(function() A(q:long(), k:long(), v:long(), 1, false) end, "attention: query dtype i64 not supported")
  T.raises(function() A(q, k, v, "x", false) end, "number expected")
end)

T.test("attention: the backward pass keeps q, k, v, the output and the log-sum-exp, not the probabilities", function()
  -- 4 pairs of 512 x 512 probabilities would be 8 MiB in f64; the inputs and output are 1 MiB
  vtl.seed(5)
  local q, k, v = table.unpack(leaves("f64", {4, 512, 16}, {4, 512, 16}, {4, 512, 16}))
  collectgarbage()
  collectgarbage()
  local base = vtl.memory_allocated()
  local y = F.scaled_dot_product_attention(q, k, v)
  collectgarbage()
  collectgarbage()
  local kept = vtl.memory_allocated() - base
  T.truthy(kept < 2 * 2 ^ 20, ("%.2f MiB kept for the backward pass"):format(kept / 2 ^ 20))
  y:sum():backward()
  T.eq(q.grad.shape[2], 512)
end)

T.test("MultiheadAttention: need_weights = false (the attention op) gives the weighted path's output", function()
  vtl.seed(6)
  for _, causal in ipairs({false, true}) do
    local mha = nn.MultiheadAttention(12, 3, {batch_first = true}):double():eval()
    local x = vtl.randn(2, 5, 12, {dtype = "f64"})
    local fast = mha(x, x, x, {need_weights = false, is_causal = causal})
    local slow, w = mha(x, x, x, {is_causal = causal})
    T.truthy(w ~= nil)
    T.truthy(maxdiff(fast, slow) < 1e-12, "outputs differ by " .. maxdiff(fast, slow))
  end
end)

-- The CUDA backend's fused half-precision kernels (kernels/cuda/flash_kernels.cuh) run on the
-- host by tests/gpu/flash_emu.cpp, one host thread per CUDA thread: forward (output and
-- log-sum-exp) and the three gradients against a double-precision reference, f16 and bf16, head
-- dims 32/64/128, causal or not, lengths that are not multiples of the 64-row tiles.
T.test("fused GPU attention kernels, run on the host, match a double-precision reference", function()
  T.emulation_passes("flash_emu", "all cases within tolerance", 10)
end)
