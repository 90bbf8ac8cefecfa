-- The model zoo against torchvision and timm: tests/ref/gen_models.py writes seeded reference
-- models (weights as safetensors and .pth, inputs, eval logits, features, one SGD step); each
-- vtl model must load them by PyTorch's key names, reproduce logits and the training step,
-- count parameters and MACs as torch and fvcore do, and save weights that torchvision/timm load
-- with strict=True. Then create() options, classifier surgery, layer groups, summary and
-- batch-norm folding.
local T = require "testlib"
local vtl = require "vtl"
local models = require "vtl.models"
local registry = require "vtl.models.registry"
local F = vtl.nn.functional

local FIX = os.getenv("VTL_FIXTURES") or "build/fixtures"
local DIR = FIX .. "/models"
local PY = os.getenv("VTL_PYTHON") or ".venv/bin/python"
local GEN = "tests/ref/gen_models.py"
local TOL = 1e-4

local MINE = {"efficientnet_b0", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "resnet101", "resnet18",
              "resnet34", "resnet50", "small_cnn", "vit_base_patch16_224", "vit_small_patch16_224", "vit_tiny_patch16_224"}

-- the models of gen_models.py's FIXTURES, with their create() options
local FIXTURES = {
  {"small_cnn", {}},
  {"resnet18", {}},
  {"mobilenet_v2", {}},
  {"mobilenet_v3_small", {}},
  {"mobilenet_v3_large", {}},
  {"efficientnet_b0", {}},
  {"vit_tiny_patch16_224", {img_size = 64}},
}

local function shape_str(s) return "{" .. table.concat(s, ",") .. "}" end

local function with(t, extra)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  for k, v in pairs(extra or {}) do out[k] = v end
  return out
end

-- max |got - want| and that over max |want|
local function errors(got, want)
  if shape_str(got.shape) ~= shape_str(want.shape) then
    error(("shape %s, want %s"):format(shape_str(got.shape), shape_str(want.shape)), 2)
  end
  local e = (got:double() - want:double()):abs():max():item()
  local scale = want:double():abs():max():item()
  return e, scale > 0 and e / scale or e
end

-- got == want within tol relative to want's largest magnitude; prints the error
local function check_close(got, want, tol, what)
  local e, rel = errors(got, want)
  print(("  %s: max abs error %.3g (relative %.3g)"):format(what, e, rel))
  T.truthy(rel <= tol, ("%s: relative error %.3g > %g"):format(what, rel, tol))
  return e, rel
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function fixture(name)
  local path = DIR .. "/" .. name .. ".safetensors"
  if not exists(path) then error(("missing fixture %s; run: %s %s %s"):format(path, PY, GEN, FIX), 0) end
  local _, meta = vtl.load(path)
  return path, meta, vtl.load(DIR .. "/" .. name .. "_io.safetensors")
end

-- "[[64, 3, 7, 7], [64], []]" -> {{64, 3, 7, 7}, {64}, {}}
local function parse_shapes(json)
  return assert(load("return " .. json:gsub("%[", "{"):gsub("%]", "}"), "=shapes", "t", {}))()
end

local function split_lines(s)
  local out = {}
  for line in (s .. "\n"):gmatch("(.-)\n") do if line ~= "" then out[#out + 1] = line end end
  return out
end

-- keys in order, shapes and parameter count as the torch model has them
local function check_keys(model, meta)
  local sd, order = model:state_dict()
  local keys, shapes = split_lines(meta.keys), parse_shapes(meta.shapes)
  T.eq(#order, #keys, "number of state_dict keys")
  for i, k in ipairs(keys) do
    T.eq(order[i], k, "state_dict key " .. i)
    T.eq(shape_str(sd[k].shape), shape_str(shapes[i]), "shape of " .. k)
  end
  T.eq(models.count_parameters(model), tonumber(meta.num_params), "parameter count")
end

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p '" .. d .. "'"))
  return d
end

local function rmdir(d)
  if d:match("^/tmp/") then os.execute("rm -rf '" .. d .. "'") end
end

-- one temporary directory for the whole file, removed by its last test
local scratch_dir
local function scratch()
  if not scratch_dir then scratch_dir = tmpdir() end
  return scratch_dir
end

-- runs a command, returns its exit code and output
local function run(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local _, _, code = p:close()
  return code, out
end

local function eval_logits(model, x)
  model:eval()
  local g <close> = vtl.no_grad()
  return model(x)
end

local function pretrained_opts(name, path, extra)
  local o = {pretrained = path}
  for _, f in ipairs(FIXTURES) do
    if f[1] == name then o = with(f[2], o) end
  end
  return with(o, extra)
end

local function small_input(name)
  if name == "small_cnn" then return vtl.randn(2, 3, 32, 32) end
  return vtl.randn(2, 3, 64, 64)
end

local function small_opts(name)
  return name:match("^vit") and {img_size = 64} or {}
end

-- ---- registry ----

T.test("list: every architecture registered, sorted", function()
  local names = models.list()
  local have = {}
  for i, n in ipairs(names) do
    have[n] = true
    if i > 1 then T.truthy(names[i - 1] < n, "sorted") end
  end
  for _, n in ipairs(MINE) do T.truthy(have[n], "registered: " .. n) end
  T.raises(function() models.create("resnet19") end, "unknown model 'resnet19'; known models: ")
end)

T.test("pretrained_cfg: the timm fields on every model", function()
  for _, name in ipairs(MINE) do
    local entry = registry.get(name)
    local cfg = entry.cfg
    for _, k in ipairs({"mean", "std", "input_size", "crop_pct", "interpolation", "classifier", "first_conv", "num_classes"}) do
      T.truthy(cfg[k] ~= nil, name .. ": pretrained_cfg." .. k)
    end
    T.eq(#cfg.mean, 3, name .. " mean")
    T.eq(#cfg.input_size, 3, name .. " input_size")
  end
  local m = models.create("small_cnn", {in_chans = 1})
  T.eq(#m.pretrained_cfg.mean, 1, "mean for one channel")
  T.eq(m.pretrained_cfg.input_size[1], 1, "input_size for one channel")
  T.close(m.pretrained_cfg.mean[1], (0.4914 + 0.4822 + 0.4465) / 3, 1e-12)
  T.eq(models.create("vit_tiny_patch16_224", {img_size = 32}).pretrained_cfg.input_size[3], 32, "ViT img_size")
end)

-- ---- parity with torchvision / timm ----

for _, f in ipairs(FIXTURES) do
  local name = f[1]
  T.test(name .. ": torch weights load; keys, shapes, eval logits and features match", function()
    local path, meta, ref = fixture(name)
    local model = models.create(name, pretrained_opts(name, path))
    check_keys(model, meta)
    check_close(eval_logits(model, ref.x), ref.logits, TOL, name .. " eval logits")
    local feats = vtl.no_grad(function() return model:forward_features(ref.x) end)
    check_close(feats, ref.features, TOL, name .. " forward_features " .. shape_str(feats.shape))
  end)

  T.test(name .. ": one SGD step matches PyTorch; vtl.save loads in torch with strict=True", function()
    local path, _, ref = fixture(name)
    local before = vtl.load(path)
    local model = models.create(name, pretrained_opts(name, path, {drop_rate = 0, drop_path_rate = 0}))
    model:train()
    local opt = vtl.optim.SGD(model:parameters(), {lr = 0.1})
    opt:zero_grad()
    local loss = F.cross_entropy(model(ref["train/x"]), ref["train/y"])
    loss:backward()
    opt:step()
    local want_loss = ref["train/loss"]:item()
    print(("  %s train loss %.7f, PyTorch %.7f"):format(name, loss:item(), want_loss))
    T.truthy(math.abs(loss:item() - want_loss) <= TOL * (1 + math.abs(want_loss)), "loss")
    -- every parameter and buffer after the step: within 1e-4 (relative to 1 + |value|); and the
    -- update itself, relative to the largest update of the step
    local worst, worst_key, update_err, max_update = 0, nil, 0, 0
    for k, v in pairs(model:state_dict()) do
      local want = ref["after/" .. k]
      T.truthy(want ~= nil, "reference has " .. k)
      if v.dtype == "i64" then
        T.eq(v:item(), want:item(), k)
      else
        local d = (v:double() - want:double()):abs()
        local rel = (d / (want:double():abs() + 1)):max():item()
        if rel > worst then worst, worst_key = rel, k end
        if not k:match("running_") then
          update_err = math.max(update_err, d:max():item())
          max_update = math.max(max_update, (want:double() - before[k]:double()):abs():max():item())
        end
      end
    end
    print(("  %s weights after the step: max error %.3g (%s); update error %.3g of the largest update %.3g")
      :format(name, worst, worst_key, update_err / max_update, max_update))
    T.truthy(worst <= TOL, ("weights after the step differ by %.3g at %s"):format(worst, worst_key))
    T.truthy(update_err <= 1e-3 * max_update, "update error " .. update_err)

    -- vtl's weights (changed by the step) and its eval logits, for the torch check below
    local d = scratch()
    vtl.save(d .. "/" .. name .. ".safetensors", (model:state_dict()))
    vtl.save(d .. "/" .. name .. "_io.safetensors", {x = ref.x, logits = eval_logits(model, ref.x)})
  end)

  T.test(name .. ": the .pth checkpoint", function()
    local path, _, ref = fixture(name)
    if not vtl.load_state_dict_file then
      print("  skip: " .. name .. ".pth: this build has no .pth reader (vtl.load_state_dict_file)")
      return
    end
    local pth = path:gsub("%.safetensors$", ".pth")
    local model = models.create(name, pretrained_opts(name, pth))
    check_close(eval_logits(model, ref.x), ref.logits, TOL, name .. ".pth eval logits")
  end)

  T.test(name .. ": summary counts torch's parameters and fvcore's MACs", function()
    local path, meta, ref = fixture(name)
    local model = models.create(name, pretrained_opts(name, path))
    model:train()
    local s = model:summary(ref.x.shape, {print = false})
    T.eq(s.total_params, tonumber(meta.num_params), "total params")
    T.eq(s.trainable_params, s.total_params, "trainable params")
    T.eq(s.macs, tonumber(meta.macs), "MACs at " .. shape_str(ref.x.shape))
    T.truthy(model.training, "summary restores training mode")
    T.eq(s.output_shape, shape_str(ref.logits.shape), "output shape")
    T.truthy(#s.layers > 0, "per-layer rows")
  end)
end

T.test("vtl.save'd weights load in torchvision/timm with strict=True and give vtl's logits", function()
  local specs = {}
  for _, f in ipairs(FIXTURES) do
    local name = f[1]
    T.truthy(exists(scratch() .. "/" .. name .. ".safetensors"), "the SGD test saved " .. name)
    specs[#specs + 1] = name .. (name == "small_cnn" and ":10" or name:match("^vit") and ":1000:64" or "")
  end
  local code, out = run(("%s %s check %s %s"):format(PY, GEN, scratch(), table.concat(specs, " ")))
  io.write("  " .. out:gsub("\n(.)", "\n  %1"))
  T.eq(code, 0, "exit status of the torch check")
end)

-- every parameter in exactly one layer group, the head last and holding the classifier
local function check_groups(name, m)
  local groups = m:layer_groups()
  T.truthy(#groups >= 3, name .. ": at least stem, body, head")
  T.eq(groups[#groups].name, "head", name .. ": the last group is the head")
  local seen, n = {}, 0
  for _, g in ipairs(groups) do
    T.truthy(type(g.name) == "string" and #g.modules > 0, name .. ": group fields")
    T.eq(#g.params, #g.names, name .. ": names for " .. g.name)
    for i, p in ipairs(g.params) do
      T.truthy(not seen[p], name .. ": " .. g.names[i] .. " in two groups")
      seen[p] = g.names[i]
      n = n + 1
    end
  end
  local named = m:named_parameters()
  T.eq(n, #named, name .. ": parameters covered")
  for _, e in ipairs(named) do T.eq(seen[e[2]], e[1], name .. ": group name of " .. e[1]) end
  local cls, in_head = m:get_classifier(), false
  for _, mod in ipairs(groups[#groups].modules) do
    for _, sub in ipairs(mod:modules()) do if sub == cls then in_head = true end end
  end
  T.truthy(in_head, name .. ": the classifier is in the head group")
end

-- the large ones at batch 1: references written on demand (one Python run) into a temporary
-- directory, each removed after its test
local LARGE = {{"resnet34", 64}, {"resnet50", 64}, {"resnet101", 64}, {"vit_small_patch16_224", 224},
               {"vit_base_patch16_224", 224}}
local large_dir
local function large_reference(name)
  if not large_dir then
    large_dir = scratch() .. "/large"
    assert(os.execute("mkdir -p '" .. large_dir .. "'"))
    local specs = {}
    for _, c in ipairs(LARGE) do specs[#specs + 1] = c[1] .. ":1:" .. c[2] end
    local code, out = run(("%s %s make %s %s"):format(PY, GEN, large_dir, table.concat(specs, " ")))
    if code ~= 0 then error("reference generator failed: " .. out, 0) end
  end
  local path = large_dir .. "/" .. name .. ".safetensors"
  local _, meta = vtl.load(path)
  local ref = vtl.load(large_dir .. "/" .. name .. "_io.safetensors")
  return path, meta, ref
end

for _, case in ipairs(LARGE) do
  local name = case[1]
  T.test(name .. ": torch weights load; keys, shapes and eval logits at batch 1 match; layer groups", function()
    if os.getenv("VTL_SAN") then -- the same code paths as the small models, at sanitizer speed
      print("  skip: " .. name .. " under the sanitizer build")
      return
    end
    local path, meta, ref = large_reference(name)
    local ok, err = pcall(function()
      local model = models.create(name, {pretrained = path})
      check_keys(model, meta)
      check_close(eval_logits(model, ref.x), ref.logits, TOL, name .. " eval logits at " .. shape_str(ref.x.shape))
      local feats = vtl.no_grad(function() return model:forward_features(ref.x) end)
      local want = name:match("^vit") and {1, 197, model.embed_dim} or {1, model.num_features, 2, 2}
      T.eq(shape_str(feats.shape), shape_str(want), "forward_features shape")
      check_groups(name, model)
    end)
    os.remove(path)
    os.remove(large_dir .. "/" .. name .. "_io.safetensors")
    if not ok then error(err, 0) end
  end)
end

-- ---- summary ----

T.test("summary: ResNet-18 at 224 is 1.82 GMACs (fvcore's count) and 11.69 M parameters", function()
  local f = io.open(DIR .. "/macs_resnet18_224.txt")
  local fv = f and tonumber(f:read("l"))
  if f then f:close() end
  local s = models.create("resnet18"):summary({3, 224, 224}, {print = false})
  T.eq(s.macs, 1819065856, "MACs")
  if fv then T.eq(s.macs, fv, "fvcore's count") end
  T.eq(s.total_params, 11689512, "params")
  T.eq(string.format("%.2f", s.macs / 1e9), "1.82")
end)

T.test("summary: prints the table, counts trainable parameters, honours depth", function()
  local m = models.create("small_cnn")
  m.features:freeze()
  local s = m:summary(nil, {print = false})
  T.eq(s.trainable_params, 1290, "only the classifier trains")
  T.eq(s.total_params, 279466)
  local shallow = m:summary({2, 3, 32, 32}, {print = false, depth = 1})
  T.eq(#shallow.layers, 3, "features, avgpool, classifier")
  T.eq(shallow.layers[1].name, "features")
  T.eq(shallow.layers[1].macs + shallow.layers[2].macs + shallow.layers[3].macs, shallow.macs, "rows add up")
  T.eq(shallow.macs, 2 * s.macs, "MACs scale with the batch")
  models.create("small_cnn"):summary() -- the printed form, for the log
  T.raises(function() m:summary({1, 5, 32, 32}, {print = false}) end, "summary: the forward pass on {1,5,32,32} failed")
end)

-- ---- create() options ----

T.test("create: num_classes replaces only the classifier (fresh weights); 0 removes it", function()
  local path, _, ref = fixture("resnet18")
  local w = vtl.load(path)
  local m = models.create("resnet18", {pretrained = path, num_classes = 10})
  T.eq(shape_str(m.fc.weight.shape), "{10,512}")
  T.eq(m.num_classes, 10)
  T.eq(m.pretrained_cfg.num_classes, 1000, "pretrained_cfg keeps the weights' classes")
  for k, v in pairs(m:state_dict()) do
    if k:sub(1, 3) ~= "fc." then T.eq((v - w[k]):abs():max():item(), 0, k) end
  end
  T.eq(shape_str(eval_logits(m, ref.x).shape), "{2,10}")
  local none = models.create("resnet18", {pretrained = path, num_classes = 0})
  local feats = eval_logits(none, ref.x)
  T.eq(shape_str(feats.shape), "{2,512}")
  T.close(feats, vtl.no_grad(function() return none:forward_head(none:forward_features(ref.x), true) end), 1e-6)
  -- a checkpoint fine-tuned for 10 classes loads with num_classes = 10, classifier included
  local d = tmpdir()
  local ok, err = pcall(function()
    vtl.save(d .. "/ten.safetensors", (m:state_dict()))
    local back = models.create("resnet18", {pretrained = d .. "/ten.safetensors", num_classes = 10})
    T.eq((back.fc.weight - m.fc.weight):abs():max():item(), 0, "fine-tuned classifier kept")
    T.raises(function() models.create("resnet18", {pretrained = d .. "/ten.safetensors"}) end,
      "the weights have 10 classes; pass num_classes = 10")
  end)
  rmdir(d)
  if not ok then error(err, 0) end
  for _, f in ipairs(FIXTURES) do
    local name = f[1]
    local p = DIR .. "/" .. name .. ".safetensors"
    local mm = models.create(name, pretrained_opts(name, p, {num_classes = 7}))
    T.eq(shape_str(eval_logits(mm, small_input(name)).shape), "{2,7}", name .. " with 7 classes")
  end
end)

T.test("create: in_chans adapts the first conv as timm does (sum for 1, repeat for 5)", function()
  local path, _, ref = fixture("resnet18")
  for _, c in ipairs({1, 5}) do
    local m = models.create("resnet18", {pretrained = path, in_chans = c})
    T.eq(m.conv1.weight.shape[2], c, "conv1 input channels")
    check_close(eval_logits(m, ref["in" .. c .. "/x"]), ref["in" .. c .. "/logits"], TOL, "in_chans = " .. c .. " logits")
  end
  local w = vtl.randn(4, 3, 3, 3)
  T.close(models.adapt_input_conv(w, 1), w:sum(2, true), 1e-6)
  local w5 = models.adapt_input_conv(w, 5)
  T.close(w5:narrow(2, 4, 2), w:narrow(2, 1, 2) * 0.6, 1e-6)
  T.raises(function() models.adapt_input_conv(vtl.randn(4, 2, 3, 3), 5) end, "only RGB")
  -- every CNN builds and runs with other channel counts
  for _, name in ipairs({"mobilenet_v3_small", "efficientnet_b0", "vit_tiny_patch16_224", "small_cnn"}) do
    local p = DIR .. "/" .. name .. ".safetensors"
    local m = models.create(name, pretrained_opts(name, p, {in_chans = 1}))
    local y = eval_logits(m, vtl.randn(2, 1, name == "small_cnn" and 32 or 64, name == "small_cnn" and 32 or 64))
    T.eq(y.shape[1], 2, name .. " with one channel")
  end
end)

T.test("create: pretrained = true finds the packaged file, or names it and how to get it", function()
  local path, _, ref = fixture("resnet18")
  local d = tmpdir()
  local saved = registry.weights_dir
  local ok, err = pcall(function()
    registry.weights_dir = function() return d end
    local hub_copy = models.weight_candidates(registry.get("resnet18"))[3]
    if exists(hub_copy) then
      print("  skip the missing-file error: this machine has " .. hub_copy)
    else
      local e = T.raises(function() models.create("resnet18", {pretrained = true}) end, d .. "/resnet18-f37072fd.pth is missing")
      T.truthy(e:find("IMAGENET1K_V1", 1, true), "says how to get the weights: " .. e)
      T.truthy(e:find("VTL_WEIGHTS", 1, true), "names VTL_WEIGHTS")
    end
    T.raises(function() models.create("small_cnn", {pretrained = true}) end, "'small_cnn' has no packaged weights")
    -- the same name as .safetensors is found too
    local src = assert(io.open(path, "rb"))
    local bytes = src:read("a")
    src:close()
    T.writefile(d .. "/resnet18-f37072fd.safetensors", bytes)
    local m = models.create("resnet18", {pretrained = true})
    check_close(eval_logits(m, ref.x), ref.logits, TOL, "packaged resnet18")
  end)
  registry.weights_dir = saved
  rmdir(d)
  if not ok then error(err, 0) end
end)

T.test("create: bad paths, wrong architectures, missing keys and bad options are clear errors", function()
  local path = fixture("resnet18")
  T.raises(function() models.create("resnet18", {pretrained = "/nonexistent/w.safetensors"}) end,
    "cannot open weights file '/nonexistent/w.safetensors'")
  local e = T.raises(function() models.create("resnet34", {pretrained = path}) end, "missing key(s): layer1.2.conv1.weight")
  T.truthy(e:find(path, 1, true), "names the file")
  T.raises(function() models.create("small_cnn", {pretrained = path}) end, "unexpected key(s): bn1.bias")
  local d = tmpdir()
  local ok, err = pcall(function()
    local w = vtl.load(path)
    w["layer3.1.bn2.running_var"] = nil
    w["fc.bias"] = nil
    vtl.save(d .. "/partial.safetensors", w)
    local msg = T.raises(function() models.create("resnet18", {pretrained = d .. "/partial.safetensors", num_classes = 5}) end,
      "missing key(s): layer3.1.bn2.running_var")
    T.truthy(not msg:find("fc.bias", 1, true), "the classifier may be missing: " .. msg)
    vtl.save(d .. "/x.npy", vtl.zeros(3))
    T.raises(function() models.create("resnet18", {pretrained = d .. "/x.npy"}) end, "not a state dict")
  end)
  rmdir(d)
  if not ok then error(err, 0) end
  T.raises(function() models.create("resnet18", {num_classes = -1}) end, "num_classes must be a non-negative integer")
  T.raises(function() models.create("resnet18", {in_chans = 0}) end, "in_chans must be a positive integer")
  T.raises(function() models.create("resnet18", {drop_rate = 1.5}) end, "drop_rate must be a number in [0, 1)")
  T.raises(function() models.create("resnet18", {pretrained = 3}) end, "pretrained must be true/false or a path")
  T.raises(function() models.create(nil) end, "expected a model name")
  local vit = models.create("vit_tiny_patch16_224", {img_size = 32})
  T.raises(function() vit(vtl.zeros(1, 3, 64, 64)) end, "input size 64x64 does not match the model's 32x32")
end)

T.test("create: drop_rate and drop_path_rate reach the layers", function()
  local r = models.create("resnet18", {drop_rate = 0.3, drop_path_rate = 0.1})
  T.eq(r.drop_rate, 0.3)
  T.close(r.layer4[2].drop_path_rate, 0.1, 1e-12)
  T.eq(r.layer1[1].drop_path_rate, 0)
  local e = models.create("efficientnet_b0", {drop_rate = 0.4, drop_path_rate = 0.32})
  T.eq(e.classifier[1].p, 0.4)
  T.close(e.features[8][1].stochastic_depth.p, 0.32 * 15 / 16, 1e-12)
  local m = models.create("mobilenet_v3_small", {drop_rate = 0.25})
  T.eq(m.classifier[3].p, 0.25)
  local v = models.create("vit_tiny_patch16_224", {img_size = 32, drop_path_rate = 0.2, drop_rate = 0.1})
  T.close(v.blocks[12].drop_path_rate, 0.2, 1e-12)
  T.eq(v.drop_rate, 0.1)
  -- in training mode the drops are random, in eval mode not
  vtl.seed(3)
  local x = vtl.randn(4, 3, 32, 32)
  v:train()
  local a = vtl.no_grad(function() return v(x) end)
  local b = vtl.no_grad(function() return v(x) end)
  T.truthy((a - b):abs():max():item() > 0, "training forward is stochastic")
  v:eval()
  a = vtl.no_grad(function() return v(x) end)
  b = vtl.no_grad(function() return v(x) end)
  T.eq((a - b):abs():max():item(), 0, "eval forward is deterministic")
end)

-- ---- classifier, features, groups ----

T.test("reset_classifier and get_classifier on every architecture", function()
  for _, name in ipairs({"small_cnn", "resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "vit_tiny_patch16_224"}) do
    local m = models.create(name, small_opts(name))
    local key = m.pretrained_cfg.classifier
    m:reset_classifier(7)
    T.eq(m:get_classifier().out_features, 7, name)
    local sd = m:state_dict()
    T.eq(sd[key .. ".weight"].shape[1], 7, name .. ": " .. key .. ".weight")
    local x = small_input(name)
    T.eq(shape_str(eval_logits(m, x).shape), "{2,7}", name)
    m:reset_classifier(0)
    T.eq(m:state_dict()[key .. ".weight"], nil, name .. ": no classifier weight")
    local pooled = eval_logits(m, x)
    T.eq(pooled.ndim, 2, name .. " pooled features")
    T.raises(function() m:reset_classifier(-2) end, "expected a number of classes >= 0")
  end
end)

T.test("forward_features: timm's pre-pool shapes", function()
  local want = {
    small_cnn = "{2,128,8,8}", resnet18 = "{2,512,2,2}", mobilenet_v2 = "{2,1280,2,2}",
    mobilenet_v3_small = "{2,576,2,2}", mobilenet_v3_large = "{2,960,2,2}", efficientnet_b0 = "{2,1280,2,2}",
    vit_tiny_patch16_224 = "{2,17,192}",
  }
  for name, shape in pairs(want) do
    local m = models.create(name, small_opts(name))
    m:eval()
    local f = vtl.no_grad(function() return m:forward_features(small_input(name)) end)
    T.eq(shape_str(f.shape), shape, name)
    T.eq(f.shape[name:match("^vit") and 3 or 2], m.num_features, name .. " num_features")
  end
end)

T.test("layer_groups: stem to head, every parameter exactly once", function()
  for _, f in ipairs(FIXTURES) do
    local name = f[1]
    check_groups(name, models.create(name, small_opts(name)))
  end
  T.eq(models.create("resnet18"):layer_groups()[1].names[1], "conv1.weight")
  local vit = models.create("vit_tiny_patch16_224", {img_size = 32})
  local g1 = vit:layer_groups()[1]
  T.eq(g1.name, "embed")
  T.eq(table.concat(vit:no_weight_decay(), ","), "pos_embed,cls_token")
end)

-- ---- inference folding ----

T.test("fuse_for_inference: batch norm folded into the convs, same logits, original untouched", function()
  for _, name in ipairs({"resnet18", "mobilenet_v3_small", "efficientnet_b0", "small_cnn"}) do
    local path, _, ref = fixture(name)
    local m = models.create(name, {pretrained = path})
    local pairs_ = 0
    for _, mod in ipairs(m:modules()) do if mod.__name == "BatchNorm2d" then pairs_ = pairs_ + 1 end end
    local base = eval_logits(m, ref.x)
    m:train()
    local fused, n = models.fuse_for_inference(m)
    T.eq(n, pairs_, name .. ": folded pairs")
    T.truthy(m.training, name .. ": original keeps its mode")
    local bn_left = 0
    for _, mod in ipairs(fused:modules()) do if mod.__name == "BatchNorm2d" then bn_left = bn_left + 1 end end
    T.eq(bn_left, 0, name .. ": no batch norm left")
    T.truthy(not fused.training, name .. ": fused copy in eval mode")
    check_close(vtl.no_grad(function() return fused(ref.x) end), base, TOL, name .. " fused logits")
    check_close(eval_logits(m, ref.x), base, 0, name .. " original logits unchanged")
  end
end)

T.test("temporary files removed", function()
  if scratch_dir then rmdir(scratch_dir) end
  scratch_dir = nil
end)

-- The residual blocks run their batch norms with the following ReLU/ReLU6 and residual sum in
-- one pass (nn.norm_act). A forward hook on every batch norm makes them run one module at a
-- time instead: both give the same logits, gradients and running statistics (f64), in training
-- (with stochastic depth off, and on with the same random draws) and in eval mode.
T.test("fused norm-activation blocks give the module-by-module results (ResNet, EfficientNet-Lite, MobileNet)", function()
  -- the batch norms that fuse: ResNet-18 the stem's and 2 per block (8 blocks), ResNet-50 the
  -- stem's and 3 per block (16); with stochastic depth in training the last of each block runs
  -- alone, but for the first block's (its rate is 0); EfficientNet-Lite0 the stem's, the head's, 2 per block with expansion (15 of 16) and
  -- 1 without, and the projection's sum where a block keeps its shape (9; not in training, where
  -- stochastic depth, 0.2 by default, is on in those blocks); MobileNetV2 the
  -- Conv2dNormActivation triples (stem, 1 + 2 x 16 in the blocks, last) and the 10 residual
  -- sums; MobileNetV3-Small the ReLU triples (1 + 2 + 2) and the 1 + 5 residual sums (its
  -- Hardswish triples run one module at a time)
  for _, case in ipairs({{"resnet18", {}, 17}, {"resnet50", {}, 49}, {"resnet18", {drop_path_rate = 0.2}, 17, 10},
                         {"efficientnet_lite0", {}, 2 + 31 + 9, 2 + 31}, {"mobilenet_v2", {}, 2 + 33 + 10},
                         {"mobilenet_v3_small", {}, 5 + 6}}) do
    local name, opts = case[1], case[2]
    local function run(hooked, training)
      vtl.seed(3)
      local m = models.create(name, {num_classes = 5, drop_path_rate = opts.drop_path_rate, drop_rate = 0})
      local nodes = 0
      if hooked then
        for _, mod in ipairs(m:modules()) do
          if getmetatable(mod) == vtl.nn.BatchNorm2d then mod:register_forward_hook(function() end) end
        end
      end
      m:to("f64")
      if not training then m:eval() end
      local x = vtl.randn(2, 3, 64, 64):double()
      vtl.seed(9)
      -- count the batch norms that ran with a fused sum or activation
      local BN = require("vtl.nn.norm")._BatchNorm
      local normalize = BN._normalize
      BN._normalize = function(self, t, post)
        if post then nodes = nodes + 1 end
        return normalize(self, t, post)
      end
      local ok, y = pcall(m, x)
      BN._normalize = normalize
      if not ok then error(y, 0) end
      y:backward(vtl.ones(y.shape):double())
      local grads = {}
      for _, p in ipairs(m:parameters()) do grads[#grads + 1] = p.grad end
      local bufs = {}
      for _, e in ipairs(m:named_buffers()) do bufs[#bufs + 1] = e[2] end
      return y, grads, bufs, nodes
    end
    for _, training in ipairs({true, false}) do
      local fused_count = training and case[4] or case[3]
      local what = ("%s%s %s"):format(name, opts.drop_path_rate and " drop_path" or "", training and "train" or "eval")
      local yf, gf, bf, nf = run(false, training)
      local yc, gc, bc, nc = run(true, training)
      T.eq(nc, 0, what .. ": hooked batch norms run one module at a time")
      T.eq(nf, fused_count, what .. ": batch norms run with their activation or sum")
      -- f64, where the one rounding of the fused pass and the modules' roundings after each op
      -- agree (in f32 a batch of 2 in training mode amplifies them to ~1e-3 in the gradients)
      T.close(yf, yc, 1e-10, what .. " logits")
      T.eq(#gf, #gc, what .. " gradient count")
      for i = 1, #gf do T.close(gf[i], gc[i], 1e-9, what .. " gradient " .. i) end
      for i = 1, #bf do T.close(bf[i], bc[i], 1e-10, what .. " buffer " .. i) end
    end
  end
end)
