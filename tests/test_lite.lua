-- EfficientNet-Lite against the PyTorch port it shares weights with (tests/ref/gen_lite.py):
-- state_dict layout of lite0/1/2, eval logits and one SGD training step with random weights,
-- TensorFlow "SAME" padding on odd and non-square sizes, and the real packaged ImageNet
-- weights on scikit-image's sample photos. Then the model API shared by the zoo.
local T = require "testlib"
local vtl = require "vtl"
local nn = vtl.nn
local F = nn.functional

local lite = require "vtl.models.efficientnet_lite"
local registry = require "vtl.models.registry"

local dir = (os.getenv("VTL_FIXTURES") or "build/fixtures") .. "/lite"
local ok_ref, ref = pcall(dofile, dir .. "/lite_ref.lua")
local verbose = os.getenv("VTL_TEST_VERBOSE")
-- Under ASan + UBSan (about 30x slower here) the 224x224 parity runs are left to the regular
-- build; the smaller cases still run the same code paths.
local SAN = os.getenv("VTL_SAN") == "1"
local function skip_san(what)
  if SAN then print("  skip: VTL_SAN=1 (" .. what .. " runs in the regular build)") end
  return SAN
end

-- vtl.models.create where it exists, else the registry entry's builder
local function create(name, opts)
  local ok, models = pcall(require, "vtl.models")
  if ok and type(models) == "table" and models.create then return models.create(name, opts) end
  local entry = assert(registry.get(name), "not registered: " .. name)
  local model = entry.build(opts or {})
  if opts and opts.pretrained then
    local path = registry.weights_dir() .. "/" .. entry.weights.file
    local f = io.open(path, "rb")
    if not f then error("no weight file " .. path .. " (tools/fetch_weights.sh writes it; run make setup)") end
    f:close()
    model:load_state_dict((vtl.load(path)))
  end
  return model
end

local function prefixed(tensors, prefix)
  local out = {}
  for k, v in pairs(tensors) do
    if k:sub(1, #prefix) == prefix then out[k:sub(#prefix + 1)] = v end
  end
  return out
end

local function shape_str(shape) return "{" .. table.concat(shape, ",") .. "}" end

-- max |got - want| must be within tol * max |want|; returns the error and the scale
local function close_rel(got, want, tol, what)
  T.eq(shape_str(got.shape), shape_str(want.shape), what .. ": shape")
  local err = (got:double() - want:double()):abs():max():item()
  local scale = want:double():abs():max():item()
  if verbose then print(("    %s: max abs error %.3g (max |ref| %.3g)"):format(what, err, scale)) end
  T.truthy(err <= tol * math.max(scale, 1e-30),
    ("%s: max abs error %.3g exceeds %g relative to max |ref| %.3g"):format(what, err, tol, scale))
  return err, scale
end

local function needs_ref()
  if not ok_ref then error("cannot read " .. dir .. "/lite_ref.lua (run tests/ref/gen_lite.py): " .. tostring(ref)) end
end

-- ---- layout ----

for _, name in ipairs({"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}) do
  T.test(name .. ": state_dict keys, order and shapes are the reference's", function()
    needs_ref()
    local m = lite.build(name)
    local sd, order = m:state_dict()
    local got, want = {}, {}
    for _, k in ipairs(order) do got[#got + 1] = k .. shape_str(sd[k].shape) end
    for _, e in ipairs(ref.keys[name]) do want[#want + 1] = e[1] .. shape_str(e[2]) end
    T.eq(#got, #want, "number of keys")
    for i = 1, #want do T.eq(got[i], want[i], "key " .. i) end
  end)
end

-- ---- random weights ----

T.test("lite0 random weights: eval logits match the reference", function()
  if skip_san("lite0 at 224x224") then return end
  needs_ref()
  local files = vtl.load(dir .. "/lite0_rand.safetensors")
  local m = lite.build("efficientnet_lite0", {drop_rate = 0, drop_path_rate = 0})
  local missing, unexpected = m:load_state_dict(prefixed(files, "param/"))
  T.eq(#missing + #unexpected, 0, "missing/unexpected keys")
  m:eval()
  local y = vtl.no_grad(function() return m(files["input/x"]) end)
  close_rel(y, files["output/logits"], 1e-4, "lite0 logits")
end)

T.test("lite0 random weights: one train-mode SGD step matches the reference", function()
  if skip_san("lite0 at 224x224") then return end
  needs_ref()
  local files = vtl.load(dir .. "/lite0_rand.safetensors")
  local m = lite.build("efficientnet_lite0", {drop_rate = 0, drop_path_rate = 0})
  m:load_state_dict(prefixed(files, "param/"))
  m:train()
  local opt = vtl.optim.SGD(m:parameters(), {lr = ref.lr})
  local loss = F.cross_entropy(m(files["input/x"]), files["train/target"])
  opt:zero_grad()
  loss:backward()
  -- gradients: ||g - g_ref|| / ||g_ref|| per parameter (the biases of the norms that feed a
  -- 1x1 convolution and a batch-statistics norm have a true gradient of 0: rounding only)
  local worst_g, worst_gk = 0, nil
  for name, p in m:named_parameters() do
    local want = files["grad/" .. name]
    T.truthy(want and p.grad, "no gradient for " .. name)
    local d = (p.grad:double() - want:double()):norm():item()
    local scale = want:double():norm():item()
    if not name:match("_bn2%.bias$") then
      if d > 1e-3 * scale then error(("gradient of %s: relative error %.3g (norm %.3g)"):format(name, d / scale, scale)) end
      if d / scale > worst_g then worst_g, worst_gk = d / scale, name end
    end
  end
  if verbose then print(("    gradients: worst relative error %.3g (%s)"):format(worst_g, worst_gk)) end
  opt:step()
  local want = files["train/loss"]:item()
  if verbose then print(("    loss %.7g, reference %.7g"):format(loss:item(), want)) end
  T.truthy(math.abs(loss:item() - want) <= 1e-4 * math.abs(want), ("loss %.9g, reference %.9g"):format(loss:item(), want))
  local after = prefixed(files, "after/")
  local sd, order = m:state_dict()
  local worst, worst_key = 0, nil
  for _, k in ipairs(order) do
    T.truthy(after[k], "the reference has no " .. k)
    local d = (sd[k]:double() - after[k]:double()):abs()
    local err = d:max():item()
    -- elementwise |got - want| <= 1e-4 (1 + |want|)
    local bad = d:gt(after[k]:double():abs() * 1e-4 + 1e-4):sum():item()
    if bad > 0 then
      error(("%s after the step: %d elements off by more than 1e-4 relative (max abs error %.3g)"):format(k, bad, err))
    end
    if err > worst then worst, worst_key = err, k end
  end
  if verbose then print(("    weights and statistics after the step: max abs error %.3g (%s)"):format(worst, worst_key)) end
end)

T.test("lite2 random weights: small non-square input (TF SAME padding, odd sizes)", function()
  needs_ref()
  local files = vtl.load(dir .. "/lite2_small.safetensors")
  local m = lite.build("efficientnet_lite2")
  m:load_state_dict(prefixed(files, "param/"))
  m:eval()
  local y = vtl.no_grad(function() return m(files["input/x"]) end)
  close_rel(y, files["output/logits"], 1e-4, "lite2 logits")
end)

-- ---- the real weights ----

T.test("lite0 ImageNet weights: logits and top-5 on sample photos match the reference", function()
  if skip_san("lite0 at 224x224") then return end
  needs_ref()
  if not ref.real then error("no reference for the packaged weights: " .. tostring(ref.why)) end
  local files = vtl.load(dir .. "/real.safetensors")
  local m = create("efficientnet_lite0", {pretrained = true})
  m:eval()
  local y = vtl.no_grad(function() return m(files["input/x"]) end)
  local err = close_rel(y, files["output/logits"], 1e-4, "lite0 ImageNet logits")
  T.close(y, files["output/logits"], 1e-4, "lite0 ImageNet logits, elementwise")
  local _, top5 = y:topk(5, 2)
  local want5 = files["output/top5"]
  local probs = F.softmax(y, 2)
  for i, photo in ipairs(ref.photos) do
    local got, want = top5[i]:totable(), want5[i]:totable()
    T.eq(table.concat(got, ","), table.concat(want, ","), photo .. ": top-5 classes (1-based)")
    if verbose then
      print(("    %-9s top-1 ImageNet class %d (0-based), p = %.2f; max abs logit error %.3g"):format(
        photo, got[1] - 1, probs[i][got[1]]:item(), err))
    end
  end
  -- the cat photo is a cat (ImageNet 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat);
  -- the coffee cup an espresso or cup (967, 968); the rocket a missile/projectile/space shuttle
  local top1, line = {}, {}
  for i, photo in ipairs(ref.photos) do
    top1[photo] = top5[i][1]:item() - 1
    line[i] = ("%s %d"):format(photo, top1[photo])
  end
  print(("  lite0 ImageNet top-1 (0-based class): %s; max abs logit error %.2g"):format(table.concat(line, ", "), err))
  T.truthy(top1.chelsea >= 281 and top1.chelsea <= 285, "chelsea: top-1 is not a cat class: " .. top1.chelsea)
  T.truthy(top1.coffee == 967 or top1.coffee == 968, "coffee: top-1 is not espresso or cup: " .. top1.coffee)
  T.truthy(top1.rocket == 657 or top1.rocket == 744 or top1.rocket == 812, "rocket: top-1 " .. top1.rocket)
end)

T.test("lite0 ImageNet weights with a new classifier and one input channel", function()
  local ok, models = pcall(require, "vtl.models")
  if not (ok and models.create) then return end
  local m = models.create("efficientnet_lite0", {pretrained = true, num_classes = 10, in_chans = 1})
  local sd = vtl.load(registry.weights_dir() .. "/efficientnet_lite0.safetensors")
  T.eq(shape_str(m._fc.weight.shape), "{10,1280}", "new classifier")
  T.close(m._conv_stem.weight, sd["_conv_stem.weight"]:sum(2, true), 1e-6, "stem: the sum over RGB")
  T.close(m._blocks[5]._depthwise_conv.weight, sd["_blocks.4._depthwise_conv.weight"], 0, "body loaded")
  T.eq(shape_str(vtl.no_grad(function() return m:eval()(vtl.randn(1, 1, 64, 64)) end).shape), "{1,10}")
end)

T.test("lite1 and lite2 ImageNet weights load strictly", function()
  for _, name in ipairs({"efficientnet_lite1", "efficientnet_lite2"}) do
    local m = create(name, {pretrained = true})
    T.eq(m._fc.weight.shape[1], 1000, name .. ": classes")
    T.truthy(m._bn1.running_var:min():item() > 0, name .. ": running statistics loaded")
  end
end)

-- ---- the model API ----

T.test("registry entries: weights, cfg and build options", function()
  for n, size in pairs({efficientnet_lite0 = 224, efficientnet_lite1 = 240, efficientnet_lite2 = 260}) do
    local e = registry.get(n)
    T.truthy(e, n .. " is registered")
    T.eq(e.weights.file, n .. ".safetensors")
    T.eq(e.weights.package, n .. "_pytorch_model")
    T.eq(e.cfg.input_size[2], size, n .. ": input size")
    T.eq(e.cfg.input_size[3], size, n .. ": input size")
    T.eq(#e.cfg.mean, 3); T.eq(#e.cfg.std, 3)
    T.truthy(e.cfg.crop_pct > 0.8 and e.cfg.crop_pct < 1, n .. ": crop_pct")
  end
  local m = lite.build("efficientnet_lite0", {num_classes = 7, in_chans = 1, drop_rate = 0.25, drop_path_rate = 0.1})
  T.eq(shape_str(m._conv_stem.weight.shape), "{32,1,3,3}", "in_chans")
  T.eq(shape_str(m._fc.weight.shape), "{7,1280}", "num_classes")
  T.eq(m.drop_rate, 0.25, "drop_rate")
  T.close(m._blocks[16].drop_path_rate, 0.1 * 15 / 16, 1e-12, "drop path of the last block")
  T.eq(m._blocks[1].drop_path_rate, 0, "drop path of the first block")
  T.eq(m.pretrained_cfg.input_size[2], 224)
  T.eq(shape_str(m.pretrained_cfg.input_size), "{1,224,224}", "input_size follows in_chans")
  T.eq(#m.pretrained_cfg.mean, 1, "mean follows in_chans")
  T.eq(m.pretrained_cfg.classifier, "_fc")
  m.pretrained_cfg.mean[1] = 0
  T.truthy(registry.get("efficientnet_lite0").cfg.mean[1] > 0, "a model's pretrained_cfg is its own copy")
  local y = m(vtl.randn(2, 1, 64, 48)) -- training mode: dropout and stochastic depth run
  T.eq(shape_str(y.shape), "{2,7}")
  local opt = vtl.optim.SGD(m:parameters(), {lr = 0.01, momentum = 0.9})
  F.cross_entropy(y, vtl.tensor({1, 7}, {dtype = "i64"})):backward()
  opt:step()
  for name, p in m:named_parameters() do T.truthy(p.grad, "no gradient for " .. name) end
end)

T.test("forward_features, forward_head, reset_classifier", function()
  local m = lite.build("efficientnet_lite0"):eval()
  local x = vtl.randn(1, 3, 64, 64)
  local f = vtl.no_grad(function() return m:forward_features(x) end)
  T.eq(shape_str(f.shape), "{1,1280,2,2}", "features")
  local y = vtl.no_grad(function() return m(x) end)
  T.close(vtl.no_grad(function() return m:forward_head(f) end), y, 1e-6, "forward = head(features)")
  T.eq(shape_str(m:forward_head(f, true).shape), "{1,1280}", "pre_logits")
  m:reset_classifier(5)
  T.eq(m.num_classes, 5)
  T.eq(shape_str(vtl.no_grad(function() return m(x) end).shape), "{1,5}")
  T.truthy(m:get_classifier() == m._fc)
  local _, order = m:state_dict()
  T.eq(order[#order], "_fc.bias", "the new classifier keeps the name _fc")
  m:reset_classifier(0)
  T.eq(shape_str(vtl.no_grad(function() return m(x) end).shape), "{1,1280}", "no classifier: pooled features")
  T.raises(function() m:reset_classifier(-1) end, "reset_classifier")
  T.raises(function() m(vtl.randn(3, 64, 64)) end, "4-D")
end)

T.test("layer_groups: stem, seven stages, head; every parameter once, in order", function()
  for _, name in ipairs({"efficientnet_lite0", "efficientnet_lite2"}) do
    local m = lite.build(name)
    local groups = m:layer_groups()
    T.eq(#groups, 9, name .. ": number of groups")
    T.eq(groups[1].name, "stem"); T.eq(groups[2].name, "stage1"); T.eq(groups[9].name, "head")
    local all = m:named_parameters()
    local i = 0
    for _, g in ipairs(groups) do
      T.eq(#g.params, #g.names, g.name)
      for j, p in ipairs(g.params) do
        i = i + 1
        T.eq(g.names[j], all[i][1], name .. ": parameter " .. i)
        T.truthy(p == all[i][2], name .. ": " .. g.names[j] .. " is the model's tensor")
      end
    end
    T.eq(i, #all, name .. ": every parameter is in a group")
  end
  -- freezing all but the head leaves only the head trainable, batch norm included
  local m = lite.build("efficientnet_lite0")
  local groups = m:layer_groups()
  for g = 1, #groups - 1 do for _, mod in ipairs(groups[g].modules) do mod:freeze() end end
  local trainable = m:num_parameters({trainable_only = true})
  local head = 0
  for _, p in ipairs(groups[#groups].params) do head = head + p:numel() end
  T.eq(trainable, head, "trainable parameters after freezing the body")
  T.eq(m._blocks[3]._bn1.mode, "frozen")
end)

T.test("fuse_for_inference folds every norm into its convolution", function()
  local models = require "vtl.models"
  local m = lite.build("efficientnet_lite0"):eval()
  -- non-trivial statistics so that folding changes the weights
  vtl.no_grad(function()
    for _, mod in ipairs(m:modules()) do
      if mod.running_var then
        local c = mod.num_features
        mod.running_var:copy_(vtl.rand(c) + 0.5)
        mod.running_mean:copy_(vtl.randn(c) * 0.1)
      end
    end
  end)
  local fused, n = models.fuse_for_inference(m)
  T.eq(n, 49, "conv -> norm pairs (stem, head, 2 in the first block, 3 in the 15 others)")
  local x = vtl.randn(1, 3, 64, 64)
  local want = vtl.no_grad(function() return m(x) end)
  close_rel(vtl.no_grad(function() return fused(x) end), want, 1e-4, "fused logits")
end)

T.test("TF SAME padding: asymmetric on even sizes with stride 2", function()
  local conv = lite.Conv2dSame(2, 3, 3, {stride = 2, bias = false})
  local x = vtl.randn(1, 2, 6, 7)
  local y = conv(x)
  T.eq(shape_str(y.shape), "{1,3,3,4}", "ceil(n / stride)")
  -- rows: total padding 1 (all at the bottom); columns: 2 (one each side)
  local want = F.conv2d(F.pad(x, {1, 1, 0, 1}), conv.weight, nil, {stride = 2})
  T.close(y, want, 1e-5)
end)
