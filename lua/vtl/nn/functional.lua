-- vtl.nn.functional: the neural-network ops as functions. The C ops of vtl.core.nn (conv,
-- pooling, normalisation, activations, losses, dropout) are re-exported as they are; where the
-- build lacks one, a Lua form from vtl.nn.fallback stands in. Below them, compositions of
-- differentiable tensor ops: linear, embedding, pad, interpolate, attention, drop_path.
-- Dims, indices and class targets are 1-based.
local core = require "vtl.core"
local fallback = require "vtl.nn.fallback"

local F = {}

local cnn = type(core.nn) == "table" and core.nn or {}
for k, v in pairs(cnn) do F[k] = v end
for k, v in pairs(fallback) do
  if F[k] == nil then F[k] = v end
end

-- C ops whose kernels run on the CPU only: on another device (a GPU) their Lua forms run, built
-- from tensor ops that device has (same results and gradients, more launches)
local HOST_ONLY = {"binary_cross_entropy_with_logits", "mse_loss", "l1_loss", "smooth_l1_loss", "kl_div"}
for _, k in ipairs(HOST_ONLY) do
  local c, l = cnn[k], fallback[k]
  if c and l then
    F[k] = function(x, ...)
      if core.is_tensor(x) and x.device ~= "cpu" then return l(x, ...) end
      return c(x, ...)
    end
  end
end

---Names of the ops that run as Lua compositions because the build lacks the C op.
---@return string[]
function F.lua_fallbacks()
  local out = {}
  for k in pairs(fallback) do if cnn[k] == nil then out[#out + 1] = k end end
  table.sort(out)
  return out
end

local function opt(o, k, default)
  if o == nil or o[k] == nil then return default end
  return o[k]
end

local function shape_str(t) return "{" .. table.concat(t.shape, ",") .. "}" end

local linear_post = cnn.linear

---y = x @ wᵀ + b over the last dim of x (any leading dims). opts (for inference layers): act
---(an activation's name), act_params, add (a tensor of the output's shape added before the
---activation) and pack (F.weight_pack()), as for F.conv2d: one pass on the CPU.
---@param x vtl.Tensor (*, in)
---@param w vtl.Tensor (out, in)
---@param b vtl.Tensor|nil (out)
---@param opts table|nil
---@return vtl.Tensor (*, out)
function F.linear(x, w, b, opts)
  -- the C op: one product forward and one per gradient (any leading dims as rows); in an
  -- autocast region the bias is cast with the weights, so the result stays reduced
  if linear_post then return linear_post(x, w, b, opts) end
  if x:dim() == 0 or x:size(-1) ~= w:size(-1) then
    error(("linear: input of shape %s does not match weight of shape %s"):format(shape_str(x), shape_str(w)), 2)
  end
  local y = x:matmul(w:t())
  if b then y = y + b end
  return y
end

---Rows of weight at 1-based indices; rows at padding_idx get no gradient.
---@param idx vtl.Tensor integer indices, any shape
---@param weight vtl.Tensor (num_embeddings, dim)
---@param opts {padding_idx: integer}|nil
---@return vtl.Tensor (*idx.shape, dim)
function F.embedding(idx, weight, opts)
  local n, d = weight.shape[1], weight.shape[2]
  if idx.dtype ~= "i64" and idx.dtype ~= "i32" and idx.dtype ~= "u8" then
    error("embedding: indices must be an integer tensor, got " .. idx.dtype, 2)
  end
  local flat = idx:reshape(-1)
  if flat:numel() > 0 then
    local lo, hi = flat:min():item(), flat:max():item()
    if lo < 1 or hi > n then
      error(("embedding: index %d out of range for %d embeddings (indices are 1-based)"):format(lo < 1 and lo or hi, n), 2)
    end
  end
  local shape = {}
  for i, s in ipairs(idx.shape) do shape[i] = s end
  shape[#shape + 1] = d
  local out = weight:index_select(1, flat):view(shape)
  local pad = opt(opts, "padding_idx", nil)
  if pad and weight.requires_grad then
    if pad < 0 then pad = n + 1 + pad end
    out = core.where(idx:eq(pad):unsqueeze(-1), out:detach(), out)
  end
  return out
end

-- 0-based source positions for reflect / replicate / circular padding of a dim of size n
local function pad_index(mode, n, l, r, device)
  local out = {}
  for j = -l, n - 1 + r do
    local s
    if mode == "replicate" then s = math.min(math.max(j, 0), n - 1)
    elseif mode == "circular" then s = j % n
    else -- reflect
      s = j
      if n == 1 then s = 0 end
      while s < 0 or s > n - 1 do
        if s < 0 then s = -s end
        if s > n - 1 then s = 2 * (n - 1) - s end
      end
    end
    out[#out + 1] = s + 1
  end
  return core.tensor(out, {dtype = "i64", device = device})
end

---Pads (or, with negative amounts, crops) the last dims: pads = {left, right, top, bottom, ...}
---(last dim first, as PyTorch). mode: "constant" (value), "reflect", "replicate", "circular".
---@param x vtl.Tensor
---@param pads integer[]
---@param opts {mode: string, value: number}|nil
---@return vtl.Tensor
function F.pad(x, pads, opts)
  if #pads % 2 ~= 0 or #pads // 2 > x.ndim then
    error(("pad: expected an even number of pads for at most %d dims, got %d"):format(x.ndim, #pads), 2)
  end
  local mode, value = opt(opts, "mode", "constant"), opt(opts, "value", 0)
  for k = 1, #pads // 2 do
    local dim = x.ndim - k + 1
    local l, r = pads[2 * k - 1], pads[2 * k]
    local n = x.shape[dim]
    if mode == "constant" then
      if l < 0 or r < 0 then
        local a, b = l < 0 and -l or 0, r < 0 and -r or 0
        if a + b > n then error(("pad: cropping %d from a dim of size %d"):format(a + b, n), 2) end
        x = x:narrow(dim, a + 1, n - a - b)
        l, r = math.max(l, 0), math.max(r, 0)
      end
      if l > 0 or r > 0 then
        local parts = {}
        local function block(m)
          local shape = {}
          for i, s in ipairs(x.shape) do shape[i] = s end
          shape[dim] = m
          return core.full(shape, value, {dtype = x.dtype, device = x.device})
        end
        if l > 0 then parts[#parts + 1] = block(l) end
        parts[#parts + 1] = x
        if r > 0 then parts[#parts + 1] = block(r) end
        x = core.cat(parts, dim)
      end
    elseif mode == "reflect" or mode == "replicate" or mode == "circular" then
      if mode == "reflect" and (l >= n or r >= n) then
        error(("pad: reflect padding (%d, %d) must be smaller than the dim size %d"):format(l, r, n), 2)
      end
      if l < 0 or r < 0 then error("pad: negative pads need mode 'constant'", 2) end
      if l > 0 or r > 0 then x = x:index_select(dim, pad_index(mode, n, l, r, x.device)) end
    else
      error("pad: mode must be 'constant', 'reflect', 'replicate' or 'circular', got '" .. tostring(mode) .. "'", 2)
    end
  end
  return x
end

-- rounds to the nearest float32 (PyTorch computes f32 resampling coordinates in f32)
local function f32(v) return (string.unpack("f", string.pack("f", v))) end

local function resample_dims(x, opts)
  local nsp = x.ndim - 2
  local size, sf = opt(opts, "size", nil), opt(opts, "scale_factor", nil)
  if (size == nil) == (sf == nil) then error("interpolate: give exactly one of size and scale_factor", 3) end
  local outs, scales = {}, {}
  for i = 1, nsp do
    local n = x.shape[2 + i]
    if size then
      outs[i] = type(size) == "number" and size or size[i]
    else
      local s = type(sf) == "number" and sf or sf[i]
      outs[i] = math.floor(n * s)
      if not opt(opts, "recompute_scale_factor", false) then scales[i] = s end
    end
    if not outs[i] or outs[i] < 1 then error("interpolate: output size must be positive", 3) end
  end
  return outs, scales
end

-- nearest: src = min(floor(dst * scale), n - 1), scale = 1/scale_factor or n/out (in f32)
local function nearest_index(n, out, scale, exact, device)
  local s = scale and f32(1 / scale) or f32(n / out)
  local idx = {}
  for d = 0, out - 1 do
    local src
    if exact then src = math.floor(f32((d + 0.5) * s))
    elseif out == n then src = d
    elseif out == 2 * n then src = d >> 1
    else src = math.floor(f32(d * s)) end
    idx[d + 1] = math.min(src, n - 1) + 1
  end
  return core.tensor(idx, {dtype = "i64", device = device})
end

-- linear: indices i0, i1 (1-based) and weights l0, l1 of output positions along one dim
local function linear_weights(n, out, scale, align, round)
  local s
  if align then s = out > 1 and round((n - 1) / (out - 1)) or 0
  else s = scale and round(1 / scale) or round(n / out) end
  local i0, i1, l0, l1 = {}, {}, {}, {}
  for d = 0, out - 1 do
    local src = align and round(s * d) or math.max(round(round(s * (d + 0.5)) - 0.5), 0)
    local a = math.floor(src)
    local lam = math.min(round(src - a), 1)
    i0[d + 1], i1[d + 1] = a + 1, (a < n - 1 and a + 1 or a) + 1
    l0[d + 1], l1[d + 1] = round(1 - lam), lam
  end
  return i0, i1, l0, l1
end

local function lerp_dim(x, dim, n, out, scale, align)
  local round = x.dtype == "f32" and f32 or function(v) return v end
  local i0, i1, l0, l1 = linear_weights(n, out, scale, align, round)
  local shape = {}
  for i = 1, x.ndim do shape[i] = 1 end
  shape[dim] = out
  local opts = {dtype = x.dtype, device = x.device}
  local a = x:index_select(dim, core.tensor(i0, {dtype = "i64", device = x.device}))
  local b = x:index_select(dim, core.tensor(i1, {dtype = "i64", device = x.device}))
  return a * core.tensor(l0, opts):view(shape) + b * core.tensor(l1, opts):view(shape)
end

---Resizes (N,C,L) or (N,C,H,W) inputs: mode "nearest" (default), "nearest-exact", "linear"
---(3-D) or "bilinear" (4-D), with PyTorch's coordinate rules (align_corners, half-pixel centres).
---@param x vtl.Tensor
---@param opts {size: integer|integer[], scale_factor: number|number[], mode: string, align_corners: boolean}
---@return vtl.Tensor
function F.interpolate(x, opts)
  if x.ndim < 3 or x.ndim > 4 then error("interpolate: input must be 3-D (N,C,L) or 4-D (N,C,H,W), got shape " .. shape_str(x), 2) end
  local mode = opt(opts, "mode", "nearest")
  local outs, scales = resample_dims(x, opts)
  local align = opt(opts, "align_corners", nil)
  if mode == "nearest" or mode == "nearest-exact" then
    if align ~= nil then error("interpolate: align_corners applies to linear modes only", 2) end
    for i = 1, x.ndim - 2 do
      local n = x.shape[2 + i]
      x = x:index_select(2 + i, nearest_index(n, outs[i], scales[i], mode == "nearest-exact", x.device))
    end
    return x
  elseif mode == "bilinear" or mode == "linear" then
    if (mode == "bilinear") ~= (x.ndim == 4) then
      error(("interpolate: mode '%s' needs a %s input, got shape %s"):format(mode, mode == "bilinear" and "4-D" or "3-D", shape_str(x)), 2)
    end
    for i = 1, x.ndim - 2 do
      x = lerp_dim(x, 2 + i, x.shape[2 + i], outs[i], scales[i], align == true)
    end
    return x
  end
  error("interpolate: mode must be 'nearest', 'nearest-exact', 'linear' or 'bilinear', got '" .. tostring(mode) .. "'", 2)
end

-- the C attention op (one kernel call forward, the scores recomputed in the backward pass) over
-- q (*, L, E), k (*, S, E), v (*, S, Ev) whose leading dims are equal: nil where it does not apply
local FLOAT = {f32 = true, f64 = true, f16 = true, bf16 = true}
local fused_attention = cnn.attention and function(q, k, v, scale, causal)
  local n = q.ndim
  if n < 2 or k.ndim ~= n or v.ndim ~= n or not FLOAT[q.dtype] or q:numel() == 0 or k:numel() == 0 then return nil end
  for d = 1, n - 2 do
    if k.shape[d] ~= q.shape[d] or v.shape[d] ~= q.shape[d] then return nil end
  end
  local lead = {}
  for d = 1, n - 2 do lead[d] = q.shape[d] end
  local function flat(t) return t:reshape(-1, t.shape[n - 1], t.shape[n]) end
  local y = cnn.attention(flat(q), flat(k), flat(v), scale, causal)
  lead[n - 1], lead[n] = y.shape[2], y.shape[3]
  return y:view(lead)
end

---softmax(q kᵀ · scale + mask) v over the last two dims. attn_mask: boolean (true = attend)
---or additive float; is_causal: query i attends to keys 1..i.
---@param q vtl.Tensor (*, L, E)
---@param k vtl.Tensor (*, S, E)
---@param v vtl.Tensor (*, S, Ev)
---@param opts {attn_mask: vtl.Tensor, dropout_p: number, is_causal: boolean, scale: number, generator: any}|nil
---@return vtl.Tensor (*, L, Ev)
function F.scaled_dot_product_attention(q, k, v, opts)
  local E = q.shape[q.ndim]
  local L, S = q.shape[q.ndim - 1], k.shape[k.ndim - 1]
  local scale = opt(opts, "scale", 1 / math.sqrt(E))
  if fused_attention and opt(opts, "attn_mask", nil) == nil and opt(opts, "dropout_p", 0) == 0 then
    local y = fused_attention(q, k, v, scale, opt(opts, "is_causal", false))
    if y then return y end
  end
  local attn = q:matmul(k:transpose(-2, -1)) * scale
  if opt(opts, "is_causal", false) then
    local rows = core.arange(L, {device = q.device}):view(L, 1)
    local cols = core.arange(S, {device = q.device}):view(1, S)
    attn = attn:masked_fill(cols:gt(rows), -math.huge)
  end
  local mask = opt(opts, "attn_mask", nil)
  if mask then
    if mask.dtype == "bool" then attn = attn:masked_fill(mask:logical_not(), -math.huge)
    else attn = attn + mask end
  end
  attn = F.softmax(attn, -1)
  local p = opt(opts, "dropout_p", 0)
  if p > 0 then attn = F.dropout(attn, {p = p, training = true, generator = opt(opts, "generator", nil)}) end
  return attn:matmul(v)
end

---Stochastic depth: zeroes whole samples with probability p and scales the rest by 1/(1-p).
---@param x vtl.Tensor (N, *)
---@param p number
---@param training boolean|nil  default true
---@param opts {generator: any}|nil
---@return vtl.Tensor
function F.drop_path(x, p, training, opts)
  p = p or 0
  if p == 0 or training == false then return x end
  local keep = 1 - p
  local shape = {x.shape[1]}
  for i = 2, x.ndim do shape[i] = 1 end
  local mask = core.rand(shape, {dtype = x.dtype, device = x.device, generator = opt(opts, "generator", nil)}):lt(keep)
  mask = mask:to(x.dtype)
  if keep > 0 then mask = mask / keep end
  return x * mask
end

---One-hot encoding of 1-based class indices: (*) -> (*, num_classes), i64.
---@param idx vtl.Tensor
---@param num_classes integer|nil  default: the largest index
---@return vtl.Tensor
function F.one_hot(idx, num_classes)
  num_classes = num_classes or idx:max():item()
  return idx:unsqueeze(-1):eq(core.arange(1, num_classes + 1, {device = idx.device})):long()
end

---x / max(‖x‖_p, eps) along dim (default 2).
---@param x vtl.Tensor
---@param opts {p: number, dim: integer, eps: number}|nil
---@return vtl.Tensor
function F.normalize(x, opts)
  local p, dim, eps = opt(opts, "p", 2), opt(opts, "dim", 2), opt(opts, "eps", 1e-12)
  return x / x:norm(p, dim, true):clamp(eps)
end

return F
