-- Times tensor ops in vtl; prints "name seconds" lines read by tests/bench/run.sh.
package.path = "tests/bench/?.lua;" .. package.path
local vtl = require "vtl"
local B = require "benchlib"
local threads = tonumber(arg[1]) or vtl.get_num_threads()
vtl.set_num_threads(threads)

local best, report = B.best, B.report

vtl.seed(0)
for _, n in ipairs({1024, 2048}) do
  local a, b = vtl.randn(n, n), vtl.randn(n, n)
  local out = vtl.empty(n, n)
  report("add_" .. n, best(function() local _ = a + b end, 50))
  report("add_out_" .. n, best(function() out:copy_(a):add_(b) end, 50))
  report("sum_" .. n, best(function() local _ = a:sum() end, 50))
  report("sum_dim_" .. n, best(function() local _ = a:sum(2) end, 50))
  report("matmul_" .. n, best(function() local _ = a:matmul(b) end, n == 1024 and 20 or 5))
end

-- attention at ViT-S/16's shape (batch 8, 6 heads, 197 tokens, 64 dims): vtl's attention op;
-- PyTorch 1.13 has no fused CPU attention, so its side is the matmul-softmax-matmul a timm
-- ViT runs there
do
  local F = vtl.nn.functional
  local q, k, v = vtl.randn(8, 6, 197, 64), vtl.randn(8, 6, 197, 64), vtl.randn(8, 6, 197, 64)
  report("attn_fwd", best(function() local _ = F.scaled_dot_product_attention(q, k, v) end, 10))
  local ql, kl, vl = q:requires_grad_(), k:requires_grad_(), v:requires_grad_()
  local g = vtl.randn(8, 6, 197, 64)
  report("attn_fwd_bwd", best(function()
    ql.grad, kl.grad, vl.grad = nil, nil, nil
    F.scaled_dot_product_attention(ql, kl, vl):backward(g)
  end, 10))
end
