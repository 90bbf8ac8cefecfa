-- nn.MultiheadAttention with PyTorch's parameters (in_proj_weight, in_proj_bias, out_proj)
-- and semantics (boolean masks mark positions that may NOT be attended).
local core = require "vtl.core"
local Module = require("vtl.nn.module").Module
local F = require "vtl.nn.functional"
local init = require "vtl.nn.initializers"
local Linear = require("vtl.nn.layers").Linear

local M = {}

local function opt(o, k, default)
  if o == nil or o[k] == nil then return default end
  return o[k]
end

local function shape_str(t) return "{" .. table.concat(t.shape, ",") .. "}" end

---nn.MultiheadAttention(embed_dim, num_heads, {dropout = 0, bias = true, batch_first = false, kdim, vdim}).
local MHA = Module:extend("MultiheadAttention")
M.MultiheadAttention = MHA

function MHA:init(embed_dim, num_heads, opts)
  if embed_dim % num_heads ~= 0 then
    error(("MultiheadAttention: embed_dim (%d) must be divisible by num_heads (%d)"):format(embed_dim, num_heads), 3)
  end
  self.embed_dim, self.num_heads = embed_dim, num_heads
  self.head_dim = embed_dim // num_heads
  self.kdim, self.vdim = opt(opts, "kdim", embed_dim), opt(opts, "vdim", embed_dim)
  self.dropout = opt(opts, "dropout", 0)
  self.batch_first = opt(opts, "batch_first", false)
  self._same_dims = self.kdim == embed_dim and self.vdim == embed_dim
  local E = embed_dim
  if self._same_dims then
    self:register_parameter("in_proj_weight", core.empty({3 * E, E}))
  else
    self:register_parameter("q_proj_weight", core.empty({E, E}))
    self:register_parameter("k_proj_weight", core.empty({E, self.kdim}))
    self:register_parameter("v_proj_weight", core.empty({E, self.vdim}))
  end
  local bias = opt(opts, "bias", true)
  if bias then self:register_parameter("in_proj_bias", core.empty({3 * E})) end
  self.out_proj = Linear(E, E, {bias = bias})
  self:reset_parameters()
end

function MHA:reset_parameters()
  if self._same_dims then init.xavier_uniform_(self.in_proj_weight)
  else
    init.xavier_uniform_(self.q_proj_weight)
    init.xavier_uniform_(self.k_proj_weight)
    init.xavier_uniform_(self.v_proj_weight)
  end
  if self.in_proj_bias then
    init.zeros_(self.in_proj_bias)
    init.zeros_(self.out_proj.bias)
  end
end

-- the q, k or v projection weight (i = 1, 2, 3) and bias
function MHA:_proj(i)
  local E = self.embed_dim
  local b = self.in_proj_bias and self.in_proj_bias:narrow(1, (i - 1) * E + 1, E)
  if self._same_dims then return self.in_proj_weight:narrow(1, (i - 1) * E + 1, E), b end
  return self[({"q_proj_weight", "k_proj_weight", "v_proj_weight"})[i]], b
end

-- (N, T, E) -> (N, H, T, Dh)
local function heads(x, H, Dh)
  local N, T = x.shape[1], x.shape[2]
  return x:reshape(N, T, H, Dh):permute(1, 3, 2, 4)
end

local function apply_mask(scores, mask, fn_self, what)
  if mask.dtype == "bool" then return scores:masked_fill(mask, -math.huge) end
  if mask.dtype ~= "f32" and mask.dtype ~= "f64" then
    fn_self:raise("%s must be bool or float, got %s", what, mask.dtype)
  end
  return scores + mask
end

-- the output projection of the heads' outputs (N, L, E), in the caller's layout
function MHA:_output(out, batched)
  out = self.out_proj(out)
  if not self.batch_first or not batched then out = out:transpose(1, 2) end
  if not batched then out = out:squeeze(2) end
  return out
end

---Attention of query over key/value. Shapes (L, N, E) / (S, N, E), or (N, L, E) with
---batch_first, or unbatched (L, E). opts: key_padding_mask (N, S), attn_mask (L, S) or
---(N*num_heads, L, S), need_weights (default true), average_attn_weights (default true),
---is_causal. Returns the output and the attention weights (nil when need_weights = false).
---@return vtl.Tensor, vtl.Tensor|nil
function MHA:forward(query, key, value, opts)
  key, value = key or query, value or key or query
  local batched = query.ndim == 3
  if not batched and query.ndim ~= 2 then self:raise("expected a 3-D or 2-D query, got shape %s", shape_str(query)) end
  if query.shape[query.ndim] ~= self.embed_dim then
    self:raise("expected query with embed_dim %d, got shape %s", self.embed_dim, shape_str(query))
  end
  if key.ndim ~= query.ndim or value.ndim ~= query.ndim then
    self:raise("query, key and value must have the same number of dims, got %s, %s, %s", shape_str(query), shape_str(key), shape_str(value))
  end
  if not batched then
    query, key, value = query:unsqueeze(2), key:unsqueeze(2), value:unsqueeze(2)
  end
  if not self.batch_first or not batched then
    query, key, value = query:transpose(1, 2), key:transpose(1, 2), value:transpose(1, 2)
  end
  local N, L, S = query.shape[1], query.shape[2], key.shape[2]
  local H, Dh = self.num_heads, self.head_dim
  local wq, bq = self:_proj(1)
  local wk, bk = self:_proj(2)
  local wv, bv = self:_proj(3)
  local q = heads(F.linear(query, wq, bq), H, Dh)
  local k = heads(F.linear(key, wk, bk), H, Dh)
  local v = heads(F.linear(value, wv, bv), H, Dh)
  local attn_mask = opt(opts, "attn_mask", nil)
  local kpm = opt(opts, "key_padding_mask", nil)
  local p = self.training and self.dropout or 0
  if not opt(opts, "need_weights", true) and not attn_mask and not kpm and p == 0 then
    -- no weights to return and nothing to mask but the causal pattern: the attention op
    local out = F.scaled_dot_product_attention(q, k, v, {is_causal = opt(opts, "is_causal", false)})
    return self:_output(out:permute(1, 3, 2, 4):reshape(N, L, self.embed_dim), batched), nil
  end
  local scores = (q * (1 / math.sqrt(Dh))):matmul(k:transpose(-2, -1)) -- (N, H, L, S)
  if opt(opts, "is_causal", false) and not attn_mask then
    attn_mask = core.arange(S, {device = q.device}):view(1, S):gt(core.arange(L, {device = q.device}):view(L, 1))
  end
  if attn_mask then
    if attn_mask.ndim == 3 then attn_mask = attn_mask:reshape(N, H, L, S) end
    scores = apply_mask(scores, attn_mask, self, "attn_mask")
  end
  if kpm then
    if not batched then kpm = kpm:unsqueeze(1) end
    if kpm.shape[1] ~= N or kpm.shape[2] ~= S then
      self:raise("key_padding_mask of shape %s does not match batch %d and source length %d", shape_str(kpm), N, S)
    end
    scores = apply_mask(scores, kpm:view(N, 1, 1, S), self, "key_padding_mask")
  end
  local attn = F.softmax(scores, -1)
  if p > 0 then attn = F.dropout(attn, {p = p, training = true}) end
  local out = self:_output(attn:matmul(v):permute(1, 3, 2, 4):reshape(N, L, self.embed_dim), batched)
  local weights
  if opt(opts, "need_weights", true) then
    weights = opt(opts, "average_attn_weights", true) and attn:mean(2) or attn
    if not batched then weights = weights:squeeze(1) end
  end
  return out, weights
end

return M
