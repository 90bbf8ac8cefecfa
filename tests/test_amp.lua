-- Mixed precision (vtl.autocast): training and eval passes of a small CNN and a transformer
-- block against PyTorch's CPU autocast (bf16), the fused inference path, f16, the region's
-- rules (nesting, disabling, errors, the weight-cast cache) and half-precision layers.
local T = require "testlib"
local vtl = require "vtl"
local nn, F = vtl.nn, vtl.nn.functional
local FIX = os.getenv("VTL_FIXTURES") or "build/fixtures"

local SmallCNN = require "smallcnn"

local Block = nn.Module:extend("Block")
function Block:init()
  local c = 32
  self.heads = 4
  self.norm1 = nn.LayerNorm(c)
  self.qkv = nn.Linear(c, 3 * c)
  self.proj = nn.Linear(c, c)
  self.norm2 = nn.LayerNorm(c)
  self.fc1 = nn.Linear(c, 2 * c)
  self.fc2 = nn.Linear(2 * c, c)
  self.head = nn.Linear(c, 5)
end
function Block:forward(x)
  local B, N, C = x.shape[1], x.shape[2], x.shape[3]
  local h = self.heads
  local d = C // h
  local qkv = self.qkv(self.norm1(x)):reshape(B, N, 3, h, d):permute(3, 1, 4, 2, 5)
  local q, k, v = qkv[1], qkv[2], qkv[3]
  local a = F.softmax(q:matmul(k:transpose(-2, -1)) * d ^ -0.5, -1)
  x = x + self.proj(a:matmul(v):transpose(2, 3):reshape(B, N, C))
  x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
  return self.head(x:mean(2))
end

-- |a - b| / max |b|, both as f64
local function rel(a, b)
  a, b = a:double(), b:double()
  return (a - b):abs():max():item() / math.max(b:abs():max():item(), 1e-12)
end
-- ||a - b|| / ||b||
local function rel_norm(a, b)
  a, b = a:double(), b:double()
  return ((a - b) ^ 2):sum():sqrt():item() / math.max((b ^ 2):sum():sqrt():item(), 1e-12)
end

-- a reference case: the model with PyTorch's initial weights, and PyTorch's results
local function load_case(name, class, train)
  local model = class()
  model:load_state_dict(vtl.load(FIX .. "/amp_" .. name .. "_init.safetensors"))
  model:train(train)
  return model, vtl.load(FIX .. "/amp_" .. name .. "_ref.safetensors")
end

for _, case in ipairs{{"cnn", SmallCNN}, {"block", Block}} do
  local name, class = case[1], case[2]
  T.test(name .. ": a bf16 autocast training pass matches PyTorch's CPU autocast", function()
    local model, ref = load_case(name, class, true)
    local logits, loss = vtl.autocast("bf16", function()
      local l = model(ref.x)
      return l, F.cross_entropy(l, ref.y)
    end)
    T.eq(logits.dtype, "bf16", "logits from a Linear in the region are bf16")
    T.eq(ref.logits_dtype_bf16:item(), 1, "PyTorch's are too")
    T.eq(loss.dtype, "f32", "cross-entropy runs in f32")
    T.truthy(vtl.autocast_dtype() == nil, "the region is left")
    loss:backward()
    local e_logits = rel(logits, ref.logits)
    local e_loss = math.abs(loss:item() - ref.loss:item())
    T.truthy(e_logits < 2e-2, ("logits: relative error %.3g"):format(e_logits))
    T.truthy(e_loss < 1e-2, ("loss %.5f, PyTorch %.5f"):format(loss:item(), ref.loss:item()))
    local worst, wname = 0, ""
    for _, e in ipairs(model:named_parameters()) do
      local pname, p = e[1], e[2]
      T.eq(p.grad.dtype, "f32", pname .. ": the gradient of an f32 weight is f32")
      local want = ref["grad." .. pname]
      if name == "cnn" and pname:match("^conv%d%.bias$") then
        -- a bias before a training-mode batch norm has a zero gradient in exact arithmetic:
        -- both sides hold rounding noise, bounded against the layer's weight gradient
        local scale = ref["grad." .. pname:gsub("bias", "weight")]:abs():max():item()
        local e = (p.grad - want):abs():max():item() / scale
        T.truthy(e < 1e-2, ("%s: noise %.3g of the weight gradient"):format(pname, e))
      else
        local e = rel_norm(p.grad, want)
        if e > worst then worst, wname = e, pname end
      end
    end
    T.truthy(worst < 5e-2, ("worst gradient %s: relative error %.3g"):format(wname, worst))
    print(("  %s: logits %.2e, loss %.2e, worst gradient (%s) %.2e vs PyTorch autocast"):format(name, e_logits,
      e_loss, wname, worst))
  end)

  T.test(name .. ": bf16 autocast eval logits match PyTorch's", function()
    local model, ref = load_case(name, class, false)
    local y = vtl.no_grad(function() return vtl.autocast("bf16", function() return model(ref.x) end) end)
    local e = rel(y, ref.eval_logits)
    local e32 = rel(y, ref.eval_logits_f32)
    T.truthy(e < 2e-2, ("relative error %.3g against PyTorch autocast"):format(e))
    T.truthy(e32 < 3e-2, ("relative error %.3g against f32"):format(e32))
    T.eq(table.concat(y:argmax(2):tolist(), ","), table.concat(ref.eval_logits:argmax(2):tolist(), ","),
      "same predicted classes")
  end)
end

T.test("fused inference models under bf16 autocast agree with their f32 logits", function()
  vtl.seed(3)
  for _, arch in ipairs{"resnet18", "mobilenet_v3_small", "vit_tiny_patch16_224"} do
    local size = arch:find("vit") and 224 or 64
    local m = vtl.models.create(arch, {num_classes = 7})
    m:eval()
    local f = vtl.models.fuse_for_inference(m)
    local x = vtl.randn(2, 3, size, size)
    local y32 = vtl.no_grad(function() return f(x) end)
    local y16, yplain = vtl.no_grad(function()
      return vtl.autocast("bf16", function() return f(x), m(x) end)
    end)
    T.eq(y16.dtype, "bf16", arch)
    local e, ep = rel(y16, y32), rel(yplain, y32)
    T.truthy(e < 4e-2, ("%s fused: relative error %.3g"):format(arch, e))
    T.truthy(ep < 4e-2, ("%s plain: relative error %.3g"):format(arch, ep))
    -- the weights stay f32: the kernel converts them as it packs them
    for _, p in ipairs(f:parameters()) do T.eq(p.dtype, "f32", arch .. " parameter") end
  end
end)

T.test("fuse_for_inference{precision = \"bf16\"}: a bf16 model that returns f32 logits", function()
  vtl.seed(4)
  local m = vtl.models.create("resnet18", {num_classes = 5})
  m:eval()
  local x = vtl.randn(2, 3, 64, 64)
  local want = vtl.no_grad(function() return m(x) end)
  local f = vtl.models.fuse_for_inference(m, {precision = "bf16"})
  T.eq(f.inference_precision, "bf16")
  local y = vtl.no_grad(function() return f(x) end)
  T.eq(y.dtype, "f32", "outputs come back in f32")
  T.truthy(vtl.autocast_dtype() == nil, "no region is left open")
  T.truthy(rel(y, want) < 4e-2, ("relative error %.3g"):format(rel(y, want)))
  local plain = vtl.models.fuse_for_inference(m, {precision = "f32"})
  T.truthy(rel(vtl.no_grad(function() return plain(x) end), want) < 1e-5, "f32: the usual fused model")
  T.raises(function() vtl.models.fuse_for_inference(m, {precision = "int8"}) end, "precision must be")
  T.raises(function() vtl.models.fuse_for_inference(m, "bf16") end, "options must be a table")
end)

T.test("f16 autocast: logits within f16 rounding of the f32 model", function()
  local model, ref = load_case("block", Block, false)
  local y = vtl.no_grad(function() return vtl.autocast("f16", function() return model(ref.x) end) end)
  T.eq(y.dtype, "f16")
  local e = rel(y, ref.eval_logits_f32)
  T.truthy(e < 5e-3, ("relative error %.3g"):format(e))
  model:train()
  local loss = vtl.autocast("f16", function() return F.cross_entropy(model(ref.x), ref.y) end)
  loss:backward()
  T.truthy(rel_norm(model.fc1.weight.grad, ref["grad.fc1.weight"]) < 3e-2, "fc1 gradient")
end)

T.test("autocast regions: nesting, switching off, guards, errors and bad arguments", function()
  T.truthy(vtl.autocast_dtype() == nil)
  vtl.autocast("bf16", function()
    T.eq(vtl.autocast_dtype(), "bf16")
    vtl.autocast(false, function()
      T.truthy(vtl.autocast_dtype() == nil, "off inside")
      local y = F.linear(vtl.randn(2, 3), vtl.randn(4, 3))
      T.eq(y.dtype, "f32", "no cast with autocast off")
    end)
    vtl.autocast("f16", function() T.eq(vtl.autocast_dtype(), "f16") end)
    T.eq(vtl.autocast_dtype(), "bf16", "restored after a nested region")
  end)
  do
    local g <close> = vtl.autocast("bf16")
    T.eq(vtl.autocast_dtype(), "bf16", "guard form")
    T.eq(vtl.randn(2, 3):matmul(vtl.randn(3, 2)).dtype, "bf16", "matmul in the region")
  end
  T.truthy(vtl.autocast_dtype() == nil, "guard closed")
  local ok, err = pcall(vtl.autocast, "bf16", function() error("boom") end)
  T.truthy(not ok)
  T.truthy(tostring(err):find("boom"), err)
  T.truthy(vtl.autocast_dtype() == nil, "left after an error")
  T.raises(function() vtl.autocast("i64", function() end) end, "dtype must be")
  T.raises(function() vtl.autocast("bogus", function() end) end, "dtype must be")
  T.raises(function() vtl.autocast("bf16", 42) end, "function")
  -- f64 is never cast; integer operands are left alone
  vtl.autocast("bf16", function()
    T.eq(vtl.randn(2, 3):double():matmul(vtl.randn(3, 2):double()).dtype, "f64")
    T.eq(F.softmax(vtl.randn(2, 3):to("bf16"), -1).dtype, "f32", "softmax runs in f32")
    T.eq(F.layer_norm(vtl.randn(2, 4):to("bf16"), {4}).dtype, "f32", "layer norm runs in f32")
  end)
end)

T.test("bf16 matmul (oneDNN, operands read in place): every layout within one rounding of the f32 product", function()
  vtl.seed(31)
  local cases = {
    {"2-D", {64, 48}, {48, 32}},
    {"both transposed", {48, 64}, {32, 48}, true, true},
    {"batched, b broadcast", {4, 64, 48}, {48, 32}},
    {"batched, a broadcast", {64, 48}, {4, 48, 32}},
    {"4-D", {2, 3, 64, 48}, {2, 3, 48, 32}},
    {"mat-vec", {5, 48}, {48}},
    {"vec-mat", {48}, {48, 7}},
    {"a weight gradient (xᵀ g)", {197, 384}, {197, 96}, true},
  }
  for _, c in ipairs(cases) do
    local a, b = vtl.randn(c[2]):bfloat16(), vtl.randn(c[3]):bfloat16()
    if c[4] then a = a:t() end
    if c[5] then b = b:t() end
    local y = a:matmul(b)
    local r = a:float():matmul(b:float())
    T.eq(y.dtype, "bf16", c[1])
    T.eq(table.concat(y.shape, ","), table.concat(r.shape, ","), c[1])
    -- a product summed in another order rounds to the same bf16 value or a neighbour
    local e = (y:float() - r):abs():max():item() / r:abs():max():item()
    T.truthy(e < 2 ^ -7, ("%s: %.3g off the f32 product"):format(c[1], e))
  end
  -- permuted batch dims that do not merge, and f16: the f32 path, one rounding of the f32 product
  local a = vtl.randn(3, 2, 16, 8):bfloat16():transpose(1, 2)
  local b = vtl.randn(2, 3, 8, 4):bfloat16()
  T.close(a:matmul(b):float(), a:float():matmul(b:float()), 2 ^ -7)
  local h1, h2 = vtl.randn(16, 8):half(), vtl.randn(8, 4):half()
  T.close(h1:matmul(h2):float(), h1:float():matmul(h2:float()):half():float(), 0)
  -- and under autograd: bf16 gradients of a bf16 product
  local x, w = vtl.randn(6, 5):bfloat16():requires_grad_(), vtl.randn(5, 3):bfloat16():requires_grad_()
  x:matmul(w):float():sum():backward()
  T.eq(x.grad.dtype, "bf16")
  T.close(x.grad:float(), vtl.ones(6, 3):matmul(w:float():t()), 2 ^ -7)
end)

T.test("bf16 attention from a packed projection matches the f32 kernel", function()
  vtl.seed(9)
  for _, c in ipairs{{2, 5, 3, 4}, {1, 197, 6, 64}, {3, 17, 2, 8}} do
    local B, N, H, D = c[1], c[2], c[3], c[4]
    local qkv = vtl.randn(B, N, 3 * H * D)
    local want = F.attention_qkv(qkv, H, D ^ -0.5)
    local got = F.attention_qkv(qkv:to("bf16"), H, D ^ -0.5)
    T.eq(got.dtype, "bf16")
    local e = rel(got, want)
    T.truthy(e < 2e-2, ("B=%d N=%d H=%d D=%d: relative error %.3g"):format(B, N, H, D, e))
  end
end)

T.test("vtl.cuda.allow_tf32 is a process-wide switch, off by default", function()
  T.eq(vtl.cuda.allow_tf32(), false)
  T.eq(vtl.cuda.allow_tf32(true), false, "returns the previous setting")
  T.eq(vtl.cuda.allow_tf32(false), true)
  T.raises(function() vtl.cuda.allow_tf32(1) end, "boolean expected")
end)

T.test("vtl.cuda.cudnn sets cuDNN's switches, returns the previous ones, and refuses bad options", function()
  local KEYS = {"benchmark", "deterministic", "allow_tf32"}
  local function flags_eq(got, want, msg)
    for _, k in ipairs(KEYS) do T.eq(got[k], want[k], (msg or "switches") .. ": " .. k) end
  end
  local prev = vtl.cuda.cudnn()
  for _, k in ipairs(KEYS) do T.eq(type(prev[k]), "boolean", k) end
  if not (os.getenv("VTL_CUDNN_BENCHMARK") or os.getenv("VTL_CUDNN_DETERMINISTIC") or os.getenv("VTL_CUDNN_TF32")) then
    flags_eq(prev, {benchmark = false, deterministic = false, allow_tf32 = true}, "PyTorch's defaults")
  end
  flags_eq(vtl.cuda.cudnn{deterministic = not prev.deterministic, benchmark = true}, prev, "returns the settings before")
  local now = vtl.cuda.cudnn()
  flags_eq(now, {benchmark = true, deterministic = not prev.deterministic, allow_tf32 = prev.allow_tf32}, "set")
  flags_eq(vtl.cuda.cudnn(prev), now, "returns the settings before")
  flags_eq(vtl.cuda.cudnn(), prev, "restored")
  T.raises(function() vtl.cuda.cudnn{determinstic = true} end, "unknown option determinstic")
  T.raises(function() vtl.cuda.cudnn{[1] = true} end, "unknown option 1")
  T.raises(function() vtl.cuda.cudnn{benchmark = 1} end, "benchmark must be a boolean, got number")
  T.raises(function() vtl.cuda.cudnn("fast") end, "table expected")
  T.raises(function() vtl.cuda.cudnn{allow_tf32 = true, bogus = false} end, "unknown option bogus")
  flags_eq(vtl.cuda.cudnn(), prev, "a refused call changes nothing")
end)

T.test("VTL_CUDNN_TF32 sets allow_tf32's starting value (on when unset, as PyTorch's)", function()
  local function start(env)
    return T.run_fresh("env -u VTL_CUDNN_TF32 " .. env, 'io.write(tostring(require("vtl").cuda.cudnn().allow_tf32))')
  end
  T.eq(start(""), "true", "unset")
  T.eq(start("VTL_CUDNN_TF32=0"), "false", "0")
  T.eq(start("VTL_CUDNN_TF32=1"), "true", "1")
end)

T.test("vtl.cuda.flash_attention is a process-wide switch, off by default", function()
  if not os.getenv("VTL_FLASH_ATTENTION") then T.eq(vtl.cuda.flash_attention(), false) end
  local prev = vtl.cuda.flash_attention()
  T.eq(vtl.cuda.flash_attention(true), prev, "returns the previous setting")
  T.eq(vtl.cuda.flash_attention(prev), true)
  T.eq(vtl.cuda.flash_attention(), prev)
  T.raises(function() vtl.cuda.flash_attention("yes") end, "boolean expected")
end)

T.test("autocast casts each weight once per region and sees in-place updates", function()
  local lin = nn.Linear(6, 3)
  local x = vtl.randn(4, 6)
  vtl.autocast("bf16", function()
    local a = lin(x)
    lin(x)
    T.eq(vtl._autocast_cache_size(), 2, "weight and bias cached once")
    vtl.no_grad(function() lin.weight:mul_(2) end)
    local b = lin(x)
    local want = (F.linear(x, lin.weight, lin.bias)):float()
    T.truthy(rel(b, want) < 1e-2, "the doubled weights are used")
    T.truthy(rel(a, want) > 0.1, "and differ from the first result")
  end)
  T.eq(vtl._autocast_cache_size(), 0, "the cache goes with the outermost region")
end)

T.test("half-precision layers outside autocast: conv2d, linear, pooling and their gradients", function()
  vtl.seed(5)
  local x, w, b = vtl.randn(2, 4, 9, 9), vtl.randn(6, 4, 3, 3), vtl.randn(6)
  for _, dt in ipairs{"bf16", "f16"} do
    local xh, wh, bh = x:to(dt), w:to(dt), b:to(dt)
    local want = F.conv2d(xh:float(), wh:float(), bh:float(), {padding = 1})
    local y = F.conv2d(xh, wh, bh, {padding = 1})
    T.eq(y.dtype, dt)
    T.truthy(rel(y, want) < 1e-2, dt .. " conv2d")
    local yl = F.linear(xh:flatten(2), vtl.randn(5, 324):to(dt), nil, {act = "relu"})
    T.eq(yl.dtype, dt, "linear")
    T.eq(F.max_pool2d(y, 2).dtype, dt, "max pool")
    local xg = xh:clone():requires_grad_(true)
    local wg = wh:clone():requires_grad_(true)
    local out = F.conv2d(xg, wg, nil, {padding = 1})
    out:float():sum():backward()
    T.eq(xg.grad.dtype, dt)
    local xf, wf = xh:float():requires_grad_(true), wh:float():requires_grad_(true)
    F.conv2d(xf, wf, nil, {padding = 1}):sum():backward()
    T.truthy(rel(xg.grad, xf.grad) < 1e-2, dt .. " input gradient")
    T.truthy(rel(wg.grad, wf.grad) < 1e-2, dt .. " weight gradient")
  end
  T.raises(function() F.conv2d(x:to("bf16"), w, b) end, "same dtype")
end)

-- ---- GradScaler ----


T.test("GradScaler: scaled f16 gradients survive where unscaled ones underflow", function()
  local tiny = 2 ^ -20 -- a loss this small makes the f16 activation gradients underflow
  local model, ref = load_case("block", Block, true)
  F.cross_entropy(model(ref.x), ref.y):mul(tiny):backward()
  local want = model.fc1.weight.grad:clone()
  for _, p in ipairs(model:parameters()) do p.grad = nil end
  vtl.autocast("f16", function() return F.cross_entropy(model(ref.x), ref.y):mul(tiny) end):backward()
  local lost = rel_norm(model.fc1.weight.grad, want)
  for _, p in ipairs(model:parameters()) do p.grad = nil end
  local scaler = vtl.amp.GradScaler()
  local opt = vtl.optim.SGD(model:parameters(), {lr = 0})
  local loss = vtl.autocast("f16", function() return F.cross_entropy(model(ref.x), ref.y):mul(tiny) end)
  scaler:scale(loss):backward()
  scaler:unscale_(opt)
  local kept = rel_norm(model.fc1.weight.grad, want)
  T.truthy(lost > 0.5, ("unscaled: fc1 gradient error %.3g (underflow expected)"):format(lost))
  T.truthy(kept < 1e-2, ("scaled: fc1 gradient error %.3g"):format(kept))
  print(("  f16 gradients of a 2^-20 loss: error %.2f unscaled, %.2e with GradScaler"):format(lost, kept))
end)

T.test("GradScaler: skips overflowing steps, backs off and grows the scale", function()
  local w = vtl.tensor({1.0, 2.0}):requires_grad_(true)
  local opt = vtl.optim.SGD({w}, {lr = 0.1})
  local s = vtl.amp.GradScaler{init_scale = 8, growth_interval = 2}
  local function iter(bad)
    opt:zero_grad()
    local loss = (w * w):sum()
    if bad then loss = loss * math.huge end
    s:scale(loss):backward()
    local took = s:step(opt)
    s:update()
    return took
  end
  T.eq(s:scale(vtl.tensor(3.0)):item(), 24, "scale multiplies")
  local before = w:clone()
  T.eq(iter(true), false, "an inf gradient skips the step")
  T.close(w, before, 0, "the weights did not move")
  T.eq(s:get_scale(), 4, "the scale backs off by half")
  T.eq(iter(false), true)
  -- the step used the unscaled gradient 2w: w - 0.1 * 2w
  T.close(w, before * 0.8, 1e-6, "unscaled gradient")
  T.eq(s:get_scale(), 4, "one clean step: no growth yet")
  iter(false)
  T.eq(s:get_scale(), 8, "growth_interval clean steps: the scale doubles")
  local sd = s:state_dict()
  local s2 = vtl.amp.GradScaler()
  s2:load_state_dict(sd)
  T.eq(s2:get_scale(), 8)
  -- misuse
  opt:zero_grad()
  s:scale((w * w):sum()):backward()
  s:unscale_(opt)
  T.raises(function() s:unscale_(opt) end, "already")
  s:step(opt)
  T.raises(function() s:step(opt) end, "already")
  s:update()
  T.raises(function() s:update() end, "no optimizer")
  T.raises(function() vtl.amp.GradScaler{init_scale = -1} end, "init_scale")
  T.raises(function() vtl.amp.GradScaler{growth_factor = 0.5} end, "growth_factor")
  T.raises(function() vtl.amp.GradScaler{backoff_factor = 2} end, "backoff_factor")
  T.raises(function() vtl.amp.GradScaler{growth_interval = 0} end, "growth_interval")
  T.raises(function() vtl.amp.GradScaler{bogus = 1} end, "unknown option")
  T.raises(function() s:step({}) end, "optimizer")
  local off = vtl.amp.GradScaler{enabled = false}
  T.eq(off:get_scale(), 1)
  local l = vtl.tensor(2.0)
  T.truthy(off:scale(l) == l, "disabled: the loss itself")
end)

T.test("Learner: precision = bf16 and f16 train to the f32 accuracy band", function()
  local dataset = require "toydata"
  local accs = {}
  for _, prec in ipairs{"f32", "bf16", "f16"} do
    vtl.seed(1)
    local model = vtl.models.create("small_cnn", {num_classes = 4, drop_rate = 0})
    local learn = vtl.train.Learner{model = model, train = dataset(96, 5), valid = dataset(48, 9), batch_size = 16,
                                    progress = false, seed = 3, precision = prec}
    learn:fit(4, 3e-3)
    local r = learn:evaluate()
    T.eq(r.pred.dtype, "f32", prec .. ": predictions come back in f32")
    T.eq(learn:predict(dataset(8, 4)).dtype, "f32", prec .. ": probabilities too")
    accs[prec] = r.pred:argmax(2):eq(r.target):to("f32"):mean():item()
    if prec == "f16" then T.eq(learn.skipped_steps or 0, 0, "no overflow at the default scale here") end
  end
  print(("  accuracy after 4 epochs: f32 %.3f, bf16 %.3f, f16 %.3f"):format(accs.f32, accs.bf16, accs.f16))
  -- an f16 checkpoint keeps the loss scale
  local dir = os.tmpname()
  os.remove(dir)
  local function f16_learner()
    vtl.seed(1)
    return vtl.train.Learner{model = vtl.models.create("small_cnn", {num_classes = 4, drop_rate = 0}),
                             train = dataset(32, 5), batch_size = 16, progress = false, seed = 3, precision = "f16"}
  end
  local a = f16_learner()
  a:fit(1, 1e-3)
  a.scaler:update(1024) -- as after overflows
  a:save(dir)
  local b = f16_learner()
  T.eq(b.scaler:get_scale(), 65536)
  b:load(dir)
  T.eq(b.scaler:get_scale(), 1024, "the loss scale comes back from the checkpoint")
  os.execute("rm -rf '" .. dir .. "'")
  T.truthy(accs.f32 > 0.5, "the task is learnt")
  T.truthy(math.abs(accs.bf16 - accs.f32) <= 0.1, "bf16 within 0.1 of f32")
  T.truthy(math.abs(accs.f16 - accs.f32) <= 0.1, "f16 within 0.1 of f32")
  T.raises(function() vtl.train.Learner{model = vtl.models.create("small_cnn", {num_classes = 4}), precision = "f8"} end,
    "precision")
end)

T.test("half-precision activations run on half data and equal the f32 computation rounded once", function()
  vtl.seed(12)
  local x = vtl.randn(3, 5, 67, 13) * 4 -- not a multiple of the kernels' block
  x[1][1][1][1], x[1][1][1][2], x[1][1][1][3], x[1][1][1][4] = -math.huge, math.huge, 0 / 0, -0.0
  local g = vtl.randn(3, 5, 67, 13)
  for _, dt in ipairs{"bf16", "f16"} do
    local xh, gh = x:to(dt), g:to(dt)
    for _, f in ipairs{"relu", "relu6", "hardswish", "hardsigmoid", "silu", "gelu", "sigmoid", "tanh", "elu", "leaky_relu"} do
      local xa = xh:clone():requires_grad_(true)
      local y = F[f](xa)
      T.eq(y.dtype, dt, f .. " keeps " .. dt)
      local xf = xh:float():requires_grad_(true)
      local yf = F[f](xf)
      T.close(y:float(), yf:to(dt):float(), 0, dt .. " " .. f .. " forward")
      y:backward(gh)
      -- the gradient: computed in f32 from the half gradient and the saved half tensor, rounded
      -- once; sigmoid, tanh and elu save their (rounded) output, so their f32 reference differs
      -- by that rounding
      local ref = xh:float():requires_grad_(true)
      F[f](ref):backward(gh:float())
      local from_output = f == "sigmoid" or f == "tanh" or f == "elu"
      T.close(xa.grad:float(), ref.grad:to(dt):float(), from_output and 2e-2 or 0, dt .. " " .. f .. " backward")
    end
    -- channels-last half data keeps its layout
    local c = xh:contiguous("channels_last")
    T.truthy(F.relu(c):is_contiguous("channels_last"), dt .. " channels-last relu")
  end
end)

T.test("batch norm on half data: f32 statistics and parameters, half output; the f32 result rounded once", function()
  vtl.seed(13)
  for _, dt in ipairs{"bf16", "f16"} do
    for _, shape in ipairs{{4, 6, 5, 7}, {32, 6}, {4, 6, 5, 7, "cl"}} do
      local cl = shape[5] == "cl"
      local x = (vtl.randn(shape[1], shape[2], shape[3], shape[4]) * 3 + 1):to(dt)
      if cl then x = x:contiguous("channels_last") end
      local g = vtl.randn(x.shape):to(dt)
      local what = ("%s %s%s"):format(dt, table.concat(x.shape, "x"), cl and " channels-last" or "")
      local bh, bf = nn.BatchNorm1d(6), nn.BatchNorm1d(6)
      if #x.shape == 4 then bh, bf = nn.BatchNorm2d(6), nn.BatchNorm2d(6) end
      bh.weight.data = vtl.randn(6); bh.bias.data = vtl.randn(6)
      bf:load_state_dict(bh:state_dict())
      local xh = x:clone():requires_grad_(true)
      local xf = x:float():requires_grad_(true)
      local yh, yf = bh(xh), bf(xf)
      T.eq(yh.dtype, dt, what .. ": output dtype")
      T.eq(bh.running_mean.dtype, "f32", what .. ": running statistics stay f32")
      if cl then T.truthy(yh:is_contiguous("channels_last"), what .. ": layout kept") end
      T.close(yh:float(), yf:to(dt):float(), dt == "bf16" and 8e-3 or 1e-3, what .. ": forward")
      yh:backward(g)
      yf:backward(g:float())
      T.eq(xh.grad.dtype, dt)
      T.eq(bh.weight.grad.dtype, "f32", what .. ": weight gradient f32")
      T.close(xh.grad:float(), xf.grad:to(dt):float(), dt == "bf16" and 8e-3 or 1e-3, what .. ": input gradient")
      T.close(bh.weight.grad, bf.weight.grad, 1e-5, what .. ": weight gradient")
      T.close(bh.bias.grad, bf.bias.grad, 1e-5, what .. ": bias gradient")
      T.close(bh.running_var, bf.running_var, 1e-6, what .. ": running variance")
      bh:eval(); bf:eval()
      T.close(bh(x):float(), bf(x:float()):to(dt):float(), dt == "bf16" and 8e-3 or 1e-3, what .. ": eval")
    end
  end
  -- a model converted to bf16 throughout (parameters and statistics bf16): computed on f32
  -- copies, the running statistics written back
  local b = nn.BatchNorm2d(3):to("bf16")
  local y = b(vtl.randn(2, 3, 4, 4):to("bf16") + 5)
  T.eq(y.dtype, "bf16")
  T.eq(b.running_mean.dtype, "bf16")
  T.truthy(b.running_mean:float():mean():item() > 0.3, "running mean updated")
  -- under autocast batch norm keeps its input's dtype, as PyTorch's
  local conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
  local out = vtl.autocast("bf16", function() return bn(conv(vtl.randn(2, 3, 8, 8))) end)
  T.eq(out.dtype, "bf16", "autocast: batch norm of a bf16 convolution output")
end)
