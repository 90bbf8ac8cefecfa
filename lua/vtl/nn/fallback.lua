-- Lua forms of the C neural-network ops (vtl.core.nn), built from differentiable tensor ops.
-- vtl.nn.functional uses one only where the C op is absent from the build; same signatures,
-- same PyTorch semantics (1-based dims and class targets), slower.
local core = require "vtl.core"

local M = {}

local function opt(o, k, default)
  if o == nil or o[k] == nil then return default end
  return o[k]
end

local function pair(v, what, fn)
  if type(v) == "number" then return v, v end
  if type(v) == "table" and #v == 2 then return v[1], v[2] end
  error(("%s: %s must be a number or {h, w}, got %s"):format(fn, what, type(v)), 3)
end

local function shape_str(t) return "{" .. table.concat(t.shape, ",") .. "}" end

local function with_shape(shape, ...)
  local out = {}
  for i, s in ipairs(shape) do out[i] = s end
  for _, s in ipairs({...}) do out[#out + 1] = s end
  return out
end

-- dims 1..n except `skip`
local function other_dims(n, skip)
  local d = {}
  for i = 1, n do if i ~= skip then d[#d + 1] = i end end
  return d
end

local function reduce(loss, reduction, fn)
  reduction = reduction or "mean"
  if reduction == "mean" then return loss:mean() end
  if reduction == "sum" then return loss:sum() end
  if reduction == "none" then return loss end
  error(("%s: reduction must be 'mean', 'sum' or 'none', got '%s'"):format(fn, tostring(reduction)), 3)
end

-- ---- activations ----

function M.relu(x) return x:relu() end
function M.sigmoid(x) return x:sigmoid() end
function M.tanh(x) return x:tanh() end
function M.relu6(x) return x:clamp(0, 6) end

function M.leaky_relu(x, o)
  local slope = opt(o, "negative_slope", 0.01)
  return core.where(x:gt(0), x, x * slope)
end

function M.gelu(x, o)
  local approx = opt(o, "approximate", "none")
  if approx == "tanh" then
    local inner = (x + x:pow(3) * 0.044715) * math.sqrt(2 / math.pi)
    return x * 0.5 * (inner:tanh() + 1)
  elseif approx ~= "none" then
    error("gelu: approximate must be 'none' or 'tanh', got '" .. tostring(approx) .. "'", 2)
  end
  return x * 0.5 * ((x * (1 / math.sqrt(2))):erf() + 1)
end

function M.elu(x, o)
  local alpha = opt(o, "alpha", 1)
  return core.where(x:gt(0), x, (x:clamp(nil, 0)):expm1() * alpha)
end

function M.silu(x) return x * x:sigmoid() end
function M.hardsigmoid(x) return (x + 3):clamp(0, 6) / 6 end
function M.hardswish(x) return x * ((x + 3):clamp(0, 6) / 6) end

function M.softplus(x, o)
  local beta, threshold = opt(o, "beta", 1), opt(o, "threshold", 20)
  local bx = x * beta
  local soft = ((bx:clamp(nil, threshold)):exp():log1p()) / beta
  return core.where(bx:gt(threshold), x, soft)
end

function M.softmax(x, dim)
  if dim == nil then error("softmax: dim is required", 2) end
  local m = x:detach():max(dim, true)
  local e = (x - m):exp()
  return e / e:sum(dim, true)
end

function M.log_softmax(x, dim)
  if dim == nil then error("log_softmax: dim is required", 2) end
  return x - x:logsumexp(dim, true)
end

-- ---- dropout ----

function M.dropout(x, o)
  local p, training = opt(o, "p", 0.5), opt(o, "training", true)
  if p < 0 or p > 1 then error("dropout: p must be in [0, 1], got " .. p, 2) end
  if not training or p == 0 then return x end
  if p == 1 then return x * 0 end
  local keep = core.rand(x.shape, {dtype = x.dtype, device = x.device, generator = opt(o, "generator", nil)}):lt(1 - p)
  return x * keep:to(x.dtype) * (1 / (1 - p))
end

-- ---- normalisation ----

local function channel_view(t, ndim)
  local shape = {1, t:numel()}
  for _ = 3, ndim do shape[#shape + 1] = 1 end
  return t:view(shape)
end

function M.batch_norm(x, rm, rv, w, b, o)
  local training, momentum, eps = opt(o, "training", false), opt(o, "momentum", 0.1), opt(o, "eps", 1e-5)
  if x.ndim < 2 then error("batch_norm: input must be (N, C, *), got shape " .. shape_str(x), 2) end
  local C = x.shape[2]
  for what, t in pairs({running_mean = rm, running_var = rv, weight = w, bias = b}) do
    if t and t:numel() ~= C then
      error(("batch_norm: %s has %d elements, expected %d (input channels)"):format(what, t:numel(), C), 2)
    end
  end
  local nd = x.ndim
  local mean, var
  if training then
    local dims = other_dims(nd, 2)
    local n = x:numel() // C
    if n <= 1 then error(("batch_norm: expected more than 1 value per channel when training, got input of shape %s"):format(shape_str(x)), 2) end
    mean = x:mean(dims, true)
    var = ((x - mean):square()):mean(dims, true)
    if rm or rv then
      core.no_grad(function()
        if rm then rm:copy_(rm * (1 - momentum) + mean:detach():view(C) * momentum) end
        if rv then rv:copy_(rv * (1 - momentum) + var:detach():view(C) * (momentum * n / (n - 1))) end
      end)
    end
  else
    if not rm or not rv then error("batch_norm: running_mean and running_var are required when not training", 2) end
    mean, var = channel_view(rm, nd), channel_view(rv, nd)
  end
  local y = (x - mean) * (var + eps):rsqrt()
  if w then y = y * channel_view(w, nd) end
  if b then y = y + channel_view(b, nd) end
  return y
end

function M.layer_norm(x, normalized_shape, w, b, o)
  local eps = opt(o, "eps", 1e-5)
  local ns = type(normalized_shape) == "number" and {normalized_shape} or normalized_shape
  local k = #ns
  for i = 1, k do
    if x.shape[x.ndim - k + i] ~= ns[i] then
      error(("layer_norm: input of shape %s does not end in normalized_shape {%s}"):format(shape_str(x), table.concat(ns, ",")), 2)
    end
  end
  local dims = {}
  for i = x.ndim - k + 1, x.ndim do dims[#dims + 1] = i end
  local mean = x:mean(dims, true)
  local xc = x - mean
  local y = xc * (xc:square():mean(dims, true) + eps):rsqrt()
  if w then y = y * w end
  if b then y = y + b end
  return y
end

function M.group_norm(x, G, w, b, o)
  local eps = opt(o, "eps", 1e-5)
  local N, C = x.shape[1], x.shape[2]
  if C % G ~= 0 then error(("group_norm: %d channels are not divisible into %d groups"):format(C, G), 2) end
  local g = x:reshape(N, G, -1)
  local mean = g:mean(3, true)
  local gc = g - mean
  local y = (gc * (gc:square():mean(3, true) + eps):rsqrt()):view(x.shape)
  if w then y = y * channel_view(w, x.ndim) end
  if b then y = y + channel_view(b, x.ndim) end
  return y
end

-- ---- convolution and pooling ----

-- x padded with `value` by (top, bottom, left, right), through cat so it stays differentiable
local function pad2d(x, t, btm, l, r, value)
  local N, C, H, W = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
  local opts = {dtype = x.dtype, device = x.device}
  if l > 0 or r > 0 then
    local parts = {}
    if l > 0 then parts[#parts + 1] = core.full({N, C, H, l}, value, opts) end
    parts[#parts + 1] = x
    if r > 0 then parts[#parts + 1] = core.full({N, C, H, r}, value, opts) end
    x = core.cat(parts, 4)
    W = W + l + r
  end
  if t > 0 or btm > 0 then
    local parts = {}
    if t > 0 then parts[#parts + 1] = core.full({N, C, t, W}, value, opts) end
    parts[#parts + 1] = x
    if btm > 0 then parts[#parts + 1] = core.full({N, C, btm, W}, value, opts) end
    x = core.cat(parts, 3)
  end
  return x
end

-- windows of a padded (N,C,H,W) tensor stacked along a new dim 3: (N, C, R*S, OH, OW)
local function windows(x, R, S, OH, OW, sh, sw, dh, dw)
  local ws = {}
  for r = 0, R - 1 do
    for s = 0, S - 1 do
      local h0, w0 = r * dh + 1, s * dw + 1
      ws[#ws + 1] = x[{{}, {}, {h0, h0 + (OH - 1) * sh, sh}, {w0, w0 + (OW - 1) * sw, sw}}]
    end
  end
  return core.stack(ws, 3)
end

local function unbatched(x, fn, name)
  if x.ndim == 3 then return true end
  if x.ndim ~= 4 then error(("%s: input must be 3-D (C,H,W) or 4-D (N,C,H,W), got shape %s"):format(name, shape_str(x)), 3) end
  return false
end

function M.conv2d(x, w, b, o)
  if x.ndim ~= 4 then error("conv2d: input must be 4-D (N,C,H,W), got shape " .. shape_str(x), 2) end
  if w.ndim ~= 4 then error("conv2d: weight must be 4-D (K,C/groups,R,S), got shape " .. shape_str(w), 2) end
  local groups = opt(o, "groups", 1)
  local N, C, H, W = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
  local K, Cg, R, S = w.shape[1], w.shape[2], w.shape[3], w.shape[4]
  if C ~= Cg * groups then
    error(("conv2d: expected input with %d channels, got %d"):format(Cg * groups, C), 2)
  end
  if K % groups ~= 0 then error(("conv2d: %d output channels are not divisible by groups=%d"):format(K, groups), 2) end
  local sh, sw = pair(opt(o, "stride", 1), "stride", "conv2d")
  local dh, dw = pair(opt(o, "dilation", 1), "dilation", "conv2d")
  local padding = opt(o, "padding", 0)
  local pt, pb, pl, pr
  if padding == "valid" then pt, pb, pl, pr = 0, 0, 0, 0
  elseif padding == "same" then
    local th, tw = dh * (R - 1), dw * (S - 1)
    pt, pl = th // 2, tw // 2
    pb, pr = th - pt, tw - pl
  else
    local ph, pw = pair(padding, "padding", "conv2d")
    pt, pb, pl, pr = ph, ph, pw, pw
  end
  local OH = (H + pt + pb - dh * (R - 1) - 1) // sh + 1
  local OW = (W + pl + pr - dw * (S - 1) - 1) // sw + 1
  if OH < 1 or OW < 1 then error(("conv2d: kernel {%d,%d} is larger than the padded input {%d,%d}"):format(R, S, H + pt + pb, W + pl + pr), 2) end
  local cols = windows(pad2d(x, pt, pb, pl, pr, 0), R, S, OH, OW, sh, sw, dh, dw) -- (N,C,RS,OH,OW)
  local outs = {}
  local Kg = K // groups
  for g = 1, groups do
    local cg = groups == 1 and cols or cols:narrow(2, (g - 1) * Cg + 1, Cg)
    local wg = groups == 1 and w or w:narrow(1, (g - 1) * Kg + 1, Kg)
    outs[g] = wg:reshape(Kg, Cg * R * S):matmul(cg:reshape(N, Cg * R * S, OH * OW))
  end
  local y = (groups == 1 and outs[1] or core.cat(outs, 2)):view(N, K, OH, OW)
  if b then y = y + b:view(1, K, 1, 1) end
  return y
end

-- PyTorch's pooling output size (with ceil_mode's rule that the last window starts inside)
local function pool_out(size, k, s, p, d, ceil)
  local span = size + 2 * p - d * (k - 1) - 1
  local out = (ceil and -((-span) // s) or span // s) + 1
  if ceil and (out - 1) * s >= size + p then out = out - 1 end
  return out
end

local function pool_params(x, k, o, name)
  local kh, kw = pair(k, "kernel_size", name)
  local st = opt(o, "stride", nil)
  local sh, sw
  if st == nil or (type(st) == "table" and #st == 0) then sh, sw = kh, kw else sh, sw = pair(st, "stride", name) end
  local ph, pw = pair(opt(o, "padding", 0), "padding", name)
  local dh, dw = pair(opt(o, "dilation", 1), "dilation", name)
  if ph > kh // 2 or pw > kw // 2 then error(name .. ": padding should be at most half of the kernel size", 3) end
  local ceil = opt(o, "ceil_mode", false)
  local H, W = x.shape[3], x.shape[4]
  local OH, OW = pool_out(H, kh, sh, ph, dh, ceil), pool_out(W, kw, sw, pw, dw, ceil)
  if OH < 1 or OW < 1 then error(("%s: output size would be %dx%d for input %dx%d"):format(name, OH, OW, H, W), 3) end
  return {kh = kh, kw = kw, sh = sh, sw = sw, ph = ph, pw = pw, dh = dh, dw = dw, OH = OH, OW = OW, H = H, W = W}
end

-- extra rows/cols at the end so every (ceil-mode) window fits
local function pool_pad(x, p, value)
  local eh = math.max(0, (p.OH - 1) * p.sh + (p.kh - 1) * p.dh + 1 - (p.H + 2 * p.ph))
  local ew = math.max(0, (p.OW - 1) * p.sw + (p.kw - 1) * p.dw + 1 - (p.W + 2 * p.pw))
  return pad2d(x, p.ph, p.ph + eh, p.pw, p.pw + ew, value)
end

function M.max_pool2d(x, k, o)
  local squeeze = unbatched(x, "max_pool2d", "max_pool2d")
  if squeeze then x = x:unsqueeze(1) end
  local p = pool_params(x, k, o, "max_pool2d")
  local win = windows(pool_pad(x, p, -math.huge), p.kh, p.kw, p.OH, p.OW, p.sh, p.sw, p.dh, p.dw)
  local y, arg = win:max(3)
  local idx
  if opt(o, "return_indices", false) then
    -- flat (h*W + w) position of each window element, 1-based
    local pos = {}
    for r = 0, p.kh - 1 do
      for s = 0, p.kw - 1 do
        local hh = core.arange(p.OH):mul(p.sh):add(r * p.dh - p.ph):view(p.OH, 1)
        local ww = core.arange(p.OW):mul(p.sw):add(s * p.dw - p.pw):view(1, p.OW)
        pos[#pos + 1] = hh * p.W + ww + 1
      end
    end
    local table_ = core.stack(pos, 1) -- (RS, OH, OW)
    local N, C = x.shape[1], x.shape[2]
    idx = table_:view(1, 1, p.kh * p.kw, p.OH, p.OW):expand(N, C, p.kh * p.kw, p.OH, p.OW)
      :gather(3, arg:unsqueeze(3)):squeeze(3)
    if squeeze then idx = idx:squeeze(1) end
  end
  if squeeze then y = y:squeeze(1) end
  return y, idx
end

function M.avg_pool2d(x, k, o)
  local squeeze = unbatched(x, "avg_pool2d", "avg_pool2d")
  if squeeze then x = x:unsqueeze(1) end
  local p = pool_params(x, k, o, "avg_pool2d")
  p.dh, p.dw = 1, 1
  local win = windows(pool_pad(x, p, 0), p.kh, p.kw, p.OH, p.OW, p.sh, p.sw, 1, 1)
  local sum = win:sum(3)
  local div = opt(o, "divisor_override", nil)
  local y
  if div then
    y = sum / div
  else
    local include = opt(o, "count_include_pad", true)
    local d = {}
    for i = 0, p.OH - 1 do
      local row = {}
      local h0 = i * p.sh - p.ph
      local h1 = math.min(h0 + p.kh, p.H + p.ph)
      local ch = include and (h1 - h0) or (math.min(h1, p.H) - math.max(h0, 0))
      for j = 0, p.OW - 1 do
        local w0 = j * p.sw - p.pw
        local w1 = math.min(w0 + p.kw, p.W + p.pw)
        local cw = include and (w1 - w0) or (math.min(w1, p.W) - math.max(w0, 0))
        row[j + 1] = ch * cw
      end
      d[i + 1] = row
    end
    y = sum / core.tensor(d, {dtype = x.dtype, device = x.device})
  end
  if squeeze then y = y:squeeze(1) end
  return y
end

local function adaptive(x, size, name, pick)
  local squeeze = unbatched(x, name, name)
  if squeeze then x = x:unsqueeze(1) end
  local OH, OW
  if type(size) == "number" then OH, OW = size, size else OH, OW = size[1], size[2] end
  local H, W = x.shape[3], x.shape[4]
  OH, OW = OH or H, OW or W
  local rows = {}
  for i = 0, OH - 1 do
    local h0, h1 = (i * H) // OH, -((-(i + 1) * H) // OH)
    local cells = {}
    for j = 0, OW - 1 do
      local w0, w1 = (j * W) // OW, -((-(j + 1) * W) // OW)
      cells[j + 1] = pick(x:narrow(3, h0 + 1, h1 - h0):narrow(4, w0 + 1, w1 - w0))
    end
    rows[i + 1] = core.stack(cells, 3)
  end
  local y = core.stack(rows, 3)
  if squeeze then y = y:squeeze(1) end
  return y
end

function M.adaptive_avg_pool2d(x, size)
  return adaptive(x, size, "adaptive_avg_pool2d", function(c) return c:mean({3, 4}) end)
end

function M.adaptive_max_pool2d(x, size)
  return adaptive(x, size, "adaptive_max_pool2d", function(c) return (c:flatten(3):max(3)) end)
end

-- ---- losses ----

-- (N, C, d1, ...) -> (N*d1*..., C); target (N, d1, ...) -> (N*d1*...)
local function classes_last(x)
  if x.ndim <= 2 then return x end
  local perm = {1}
  for i = 3, x.ndim do perm[#perm + 1] = i end
  perm[#perm + 1] = 2
  return x:permute(perm):reshape(-1, x.shape[2])
end

local function check_target(input, target, fn)
  local n = input.ndim == 1 and 1 or input.shape[1]
  local tn = target.ndim == 0 and 1 or target.shape[1]
  if tn ~= n then error(("%s: target of shape %s does not match input batch %d"):format(fn, shape_str(target), n), 3) end
end

-- weighted NLL of log-probabilities lp (M, C) at 1-based targets t (M)
local function nll(lp, t, o, fn, out_shape)
  local C = lp.shape[2]
  local ignore = opt(o, "ignore_index", -100)
  local w = opt(o, "weight", nil)
  local valid = t:ne(ignore)
  local safe = core.where(valid, t, 1)
  local bad = safe:lt(1):logical_or(safe:gt(C))
  if bad:any():item() then
    local v = safe[bad]:view(-1)[1]:item()
    error(("%s: target %d out of range for %d classes"):format(fn, v, C), 3)
  end
  local picked = -lp:gather(2, safe:view(-1, 1)):view(-1)
  local wt = w and w:index_select(1, safe) or core.ones(safe.shape, {dtype = lp.dtype, device = lp.device})
  wt = wt * valid:to(lp.dtype)
  local loss = picked * wt
  local red = opt(o, "reduction", "mean")
  if red == "mean" then return loss:sum() / wt:sum(), wt end
  if red == "none" then return loss:view(out_shape), wt end
  return reduce(loss, red, fn), wt
end

function M.nll_loss(input, target, o)
  check_target(input, target, "nll_loss")
  local out_shape = target.shape
  local lp = input.ndim == 1 and input:view(1, -1) or classes_last(input)
  return (nll(lp, target:reshape(-1), o, "nll_loss", out_shape))
end

function M.cross_entropy(input, target, o)
  local ls = opt(o, "label_smoothing", 0)
  local w = opt(o, "weight", nil)
  local red = opt(o, "reduction", "mean")
  local C = input.ndim == 1 and input.shape[1] or input.shape[2]
  local lp = input.ndim == 1 and input:view(1, -1) or classes_last(input)
  lp = M.log_softmax(lp, 2)
  if target.dtype ~= "i64" and target.dtype ~= "i32" and target.dtype ~= "u8" then
    -- class probabilities (mixup / cutmix targets), same shape as input
    if shape_str(target) ~= shape_str(input) then
      error(("cross_entropy: probability target of shape %s does not match input %s"):format(shape_str(target), shape_str(input)), 2)
    end
    local tp = input.ndim == 1 and target:view(1, -1) or classes_last(target)
    if ls > 0 then tp = tp * (1 - ls) + ls / C end
    local terms = lp * tp
    if w then terms = terms * w end
    local loss = -terms:sum(2)
    if red == "none" then
      local shape = {}
      for i, s in ipairs(input.shape) do if i ~= 2 or input.ndim == 1 then shape[#shape + 1] = s end end
      if input.ndim == 1 then return loss:view({}) end
      return loss:view(shape)
    end
    return reduce(loss, red, "cross_entropy")
  end
  check_target(input, target, "cross_entropy")
  local t = target:reshape(-1):long()
  local out_shape = target.shape
  local loss, wt = nll(lp, t, o, "cross_entropy", out_shape)
  if ls == 0 then return loss end
  local valid = t:ne(opt(o, "ignore_index", -100)):to(lp.dtype)
  local smooth = -(w and (lp * w) or lp):sum(2) * valid
  local s
  if red == "mean" then s = smooth:sum() / (w and wt:sum() or valid:sum())
  elseif red == "sum" then s = smooth:sum()
  else s = smooth:view(out_shape) end
  return loss * (1 - ls) + s * (ls / C)
end

function M.binary_cross_entropy_with_logits(x, y, o)
  if shape_str(x) ~= shape_str(y) then
    error(("binary_cross_entropy_with_logits: target of shape %s does not match input %s"):format(shape_str(y), shape_str(x)), 2)
  end
  local pw, w = opt(o, "pos_weight", nil), opt(o, "weight", nil)
  local sp = (-x:abs()):exp():log1p() + (-x):clamp(0, nil)
  local loss
  if pw then loss = (1 - y) * x + ((pw - 1) * y + 1) * sp
  else loss = (1 - y) * x + sp end
  if w then loss = loss * w end
  return reduce(loss, opt(o, "reduction", "mean"), "binary_cross_entropy_with_logits")
end

local function same_shape(a, b, fn)
  if shape_str(a) ~= shape_str(b) then
    error(("%s: target of shape %s does not match input %s"):format(fn, shape_str(b), shape_str(a)), 3)
  end
end

function M.mse_loss(x, y, o)
  same_shape(x, y, "mse_loss")
  return reduce((x - y):square(), opt(o, "reduction", "mean"), "mse_loss")
end

function M.l1_loss(x, y, o)
  same_shape(x, y, "l1_loss")
  return reduce((x - y):abs(), opt(o, "reduction", "mean"), "l1_loss")
end

function M.smooth_l1_loss(x, y, o)
  same_shape(x, y, "smooth_l1_loss")
  local beta = opt(o, "beta", 1)
  local d = (x - y):abs()
  local loss
  if beta == 0 then loss = d
  else loss = core.where(d:lt(beta), d:square() * (0.5 / beta), d - 0.5 * beta) end
  return reduce(loss, opt(o, "reduction", "mean"), "smooth_l1_loss")
end

function M.kl_div(input, target, o)
  same_shape(input, target, "kl_div")
  local loss
  if opt(o, "log_target", false) then
    loss = target:exp() * (target - input)
  else
    local pos = target:gt(0)
    local logt = core.where(pos, target, 1):log()
    loss = core.where(pos, target * (logt - input), -target * input)
  end
  local red = opt(o, "reduction", "mean")
  if red == "batchmean" then return loss:sum() / (input.ndim > 0 and input.shape[1] or 1) end
  return reduce(loss, red, "kl_div")
end

return M
