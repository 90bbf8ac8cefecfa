-- vtl.distill, vtl.fewshot, vtl.adapt, vtl.explain, vtl.deploy, vtl.monitor and nn.Module's
-- forward hooks. References: tests/ref/gen_advanced.py (KD loss, MMD, Grad-CAM and saliency
-- with PyTorch on the same weights), hand-computed values (ProtoNet logits, PSI, KL) and
-- finite differences (gradient reversal).
local T = require "testlib"
local vtl = require "vtl"
local test = T.test
local F = vtl.nn.functional

local FIX = os.getenv("VTL_FIXTURES") or "build/fixtures"
local ok_ref, ref = pcall(vtl.load, FIX .. "/advanced/advanced.safetensors")
local function R(name)
  if not ok_ref then error("no fixtures: run .venv/bin/python tests/ref/gen_advanced.py " .. FIX .. " (" .. tostring(ref) .. ")", 0) end
  local t = ref[name]
  if not t then error("fixture " .. name .. " missing", 0) end
  return t
end

local function maxdiff(a, b)
  T.eq(table.concat(a.shape, ","), table.concat(b.shape, ","), "shape")
  return (a:double() - b:double()):abs():max():item()
end

local function small_cnn_ref()
  local m = vtl.models.create("small_cnn", {num_classes = 10})
  local sd = {}
  for k, t in pairs(ref) do if k:sub(1, 6) == "model." then sd[k:sub(7)] = t end end
  m:load_state_dict(sd)
  m:eval()
  return m
end

-- ---- forward hooks ----

test("register_forward_hook: sees inputs and output, may replace it, remove() unregisters", function()
  local lin = vtl.nn.Linear(3, 2)
  local x = vtl.randn({4, 3})
  local seen
  local h1 = lin:register_forward_hook(function(m, inputs, out)
    seen = {m = m, n = inputs.n, x = inputs[1], shape = out.shape}
  end)
  local y = lin(x)
  T.truthy(seen.m == lin and seen.n == 1 and seen.x == x, "hook arguments")
  T.eq(seen.shape[2], 2)
  local h2 = lin:register_forward_hook(function(_, _, out) return out * 0 end)
  T.close(lin(x), vtl.zeros({4, 2}), 0, "a hook's result replaces the output")
  h2.remove()
  h2.remove() -- twice is harmless
  T.close(lin(x), y, 1e-6, "removed")
  h1.remove()
  seen = nil
  lin(x)
  T.truthy(seen == nil, "first hook removed")
  -- hooks inside a container run, and an error in one names the module
  local seq = vtl.nn.Sequential(vtl.nn.Linear(3, 3), vtl.nn.ReLU())
  local h = seq[2]:register_forward_hook(function() error("boom") end)
  T.raises(function() seq(x) end, "boom")
  h.remove()
  T.raises(function() lin:register_forward_hook(42) end, "register_forward_hook: expected a function")
  -- hooks do not end up in state_dict
  T.eq(#lin:parameters(), 2)
end)

-- ---- distillation ----

test("KDLoss: value and gradient against PyTorch (T=4, alpha=0.5 and T=2, alpha=0.3)", function()
  local s, t, y = R("kd/s"), R("kd/t"), R("kd/y")
  for _, c in ipairs {{"t4a05", {}}, {"t2a03", {temperature = 2, alpha = 0.3}}} do
    local kd = vtl.distill.KDLoss(c[2])
    local sg = s:clone()
    sg.requires_grad = true
    local loss = kd(sg, t, y)
    loss:backward()
    T.close(loss:item(), R("kd/" .. c[1] .. "/loss")[1]:item(), 1e-5, c[1] .. " loss")
    T.truthy(maxdiff(sg.grad, R("kd/" .. c[1] .. "/grad")) < 1e-5, c[1] .. " gradient")
  end
  local kd = vtl.distill.KDLoss()
  T.eq(kd.temperature, 4)
  T.eq(kd.alpha, 0.5)
  -- identical logits: the soft term vanishes
  T.close(vtl.distill.soft_loss(s, s, 4):item(), 0, 1e-6)
end)

test("KDLoss and Distiller: bad arguments", function()
  T.raises(function() vtl.distill.KDLoss {temperature = 0} end, "KDLoss: temperature must be a positive number")
  T.raises(function() vtl.distill.KDLoss {alpha = 1.5} end, "KDLoss: alpha must be a number in [0, 1]")
  T.raises(function() vtl.distill.KDLoss(3) end, "KDLoss: options must be a table")
  local kd = vtl.distill.KDLoss {}
  T.raises(function() kd(vtl.randn({2, 3}), vtl.randn({2, 4}), vtl.tensor({1, 2})) end, "differ in shape")
  T.raises(function() kd(vtl.randn({2, 3}), vtl.randn({2, 3}), nil) end, "KDLoss: target must be a tensor")
  T.raises(function() vtl.distill.Distiller {} end, "Distiller: teacher must be an nn.Module")
  T.raises(function() vtl.distill.Distiller {teacher = vtl.nn.Linear(2, 2), feature_weight = 1} end,
    "feature distillation needs a teacher with forward_features")
end)

-- a tiny labelled image set for Learner-level tests
local function tiny_ds(n, k, seed)
  local g = vtl.Generator(seed or 1)
  local x = vtl.randn({n, 3, 16, 16}, {generator = g})
  local tg = {}
  for i = 1, n do tg[i] = (i - 1) % k + 1 end
  local y = vtl.tensor(tg, {dtype = "i64"})
  -- class c brightens channel c: learnable
  for i = 1, n do x[i]:select(1, (tg[i] - 1) % 3 + 1):add_(1.5) end
  return vtl.data.TensorDataset(x, y)
end

test("Distiller: the loss backward runs on is alpha*CE + (1-alpha)*T^2*KL from the frozen teacher", function()
  vtl.seed(3)
  local ds = tiny_ds(32, 4)
  local teacher = vtl.models.create("small_cnn", {num_classes = 4, width = 0.5})
  teacher:train()
  local student = vtl.models.create("small_cnn", {num_classes = 4, width = 0.25, drop_rate = 0})
  local cb = vtl.distill.Distiller {teacher = teacher, temperature = 3, alpha = 0.25}
  local check = {name = "check"}
  function check:after_loss(learn)
    -- the Distiller ran before: recompute its loss independently
    local tl = vtl.no_grad(function() teacher:eval(); return teacher(learn.batch.input) end)
    local want = vtl.distill.KDLoss {temperature = 3, alpha = 0.25}(learn.pred, tl, learn.batch.target)
    self.diff = math.max(self.diff or 0, math.abs(learn.loss:item() - want:item()))
  end
  local before = {}
  for k, t in pairs(teacher:state_dict()) do before[k] = t:clone() end
  local learn = vtl.train.Learner {model = student, train = ds, batch_size = 16, progress = false, callbacks = {cb, check}}
  learn:fit(1, 1e-3)
  T.truthy(check.diff ~= nil and check.diff < 1e-5, "replaced loss matches KDLoss: " .. tostring(check.diff))
  T.truthy(not teacher.training, "teacher in eval mode")
  for k, t in pairs(teacher:state_dict()) do T.truthy(maxdiff(t, before[k]) == 0, "teacher unchanged: " .. k) end
  T.close(learn.step_losses[#learn.step_losses], learn.last_loss, 0, "the recorded loss is the replaced one")
  -- feature distillation: a learned 1x1 projection trains too
  local cb2 = vtl.distill.Distiller {teacher = teacher, feature_weight = 1}
  local learn2 = vtl.train.Learner {model = vtl.models.create("small_cnn", {num_classes = 4, width = 0.25}), train = ds,
                                    batch_size = 16, progress = false, callbacks = {cb2}}
  learn2:fit(1, 1e-3)
  T.truthy(cb2.proj ~= nil and cb2.proj.weight.shape[1] == teacher.num_features, "projection to the teacher's channels")
  T.truthy(type(cb2.last_feature_loss) == "number" and cb2.last_feature_loss > 0)
  T.truthy(rawget(learn2.model, "forward_features") == nil, "the capture is removed after fit")
end)

-- ---- few-shot ----

test("EpisodicSampler: N classes, K + Q distinct samples per class, deterministic by seed", function()
  local tg = {}
  for i = 1, 120 do tg[i] = (i * 7) % 6 + 1 end
  local s = vtl.fewshot.EpisodicSampler(tg, {n_way = 4, k_shot = 3, q_query = 5, seed = 9})
  for e = 1, 20 do
    local ep = s:episode(e)
    T.eq(#ep.classes, 4)
    T.eq(#ep.support, 12)
    T.eq(#ep.query, 20)
    local seen, per = {}, {}
    for j, i in ipairs(ep.support) do
      T.truthy(not seen[i], "no sample twice")
      seen[i] = true
      local c = ep.support_labels[j]
      T.eq(tg[i], ep.classes[c], "support label names the class")
      per[c] = (per[c] or 0) + 1
    end
    for j, i in ipairs(ep.query) do
      T.truthy(not seen[i], "query disjoint from support")
      seen[i] = true
      T.eq(tg[i], ep.classes[ep.query_labels[j]])
    end
    for c = 1, 4 do T.eq(per[c], 3, "K shots per class") end
  end
  local a, b = s:episode(5), vtl.fewshot.EpisodicSampler(tg, {n_way = 4, k_shot = 3, q_query = 5, seed = 9}):episode(5)
  T.eq(table.concat(a.support, ","), table.concat(b.support, ","), "same seed, same episode")
  T.eq(table.concat(a.query, ","), table.concat(b.query, ","))
  local c = vtl.fewshot.EpisodicSampler(tg, {n_way = 4, k_shot = 3, q_query = 5, seed = 10}):episode(5)
  T.truthy(table.concat(a.support, ",") ~= table.concat(c.support, ","), "another seed, another episode")
  T.truthy(table.concat(s:episode(1).support, ",") ~= table.concat(s:episode(2).support, ","))
  -- restricted classes
  local r = vtl.fewshot.EpisodicSampler(tg, {n_way = 2, k_shot = 1, q_query = 1, classes = {5, 6}})
  for e = 1, 5 do
    local ep = r:episode(e)
    for _, cl in ipairs(ep.classes) do T.truthy(cl == 5 or cl == 6) end
  end
end)

test("EpisodicSampler and few-shot functions: bad arguments", function()
  local tg = {1, 1, 2, 2, 3}
  T.raises(function() vtl.fewshot.EpisodicSampler(tg, {n_way = 0}) end, "EpisodicSampler: n_way must be a positive integer")
  T.raises(function() vtl.fewshot.EpisodicSampler(tg, {n_way = 3, k_shot = 1, q_query = 1}) end, "only 2 classes have at least 2 samples")
  T.raises(function() vtl.fewshot.EpisodicSampler(tg, {n_way = 1, k_shot = 1, q_query = 1, classes = {3}}) end, "classes[1] = 3 has 1 samples")
  T.raises(function() vtl.fewshot.EpisodicSampler(42) end, "EpisodicSampler: expected a dataset with targets")
  T.raises(function() vtl.fewshot.EpisodicSampler(tg, {n_way = 1, k_shot = 1, q_query = 0}):episode(0) end, "episode: i must be a positive integer")
  T.raises(function() vtl.fewshot.proto_logits(vtl.randn({2, 3}), vtl.randn({4, 5})) end, "query has 3 features, prototypes 5")
  T.raises(function() vtl.fewshot.prototypes(vtl.randn({3, 2}), vtl.tensor({1, 1, 1}), 2) end, "some class in 1..n_way has no support sample")
  T.raises(function() vtl.fewshot.ProtoNet {} end, "ProtoNet: encoder must be an nn.Module or a function")
  T.raises(function() vtl.fewshot.FOMAML {model = vtl.nn.Linear(2, 2), inner_lr = -1} end, "FOMAML: inner_lr must be a positive number")
  T.raises(function() vtl.fewshot.contrastive_loss(vtl.randn({2, 3}), vtl.randn({2, 3}), vtl.tensor({1})) end,
    "contrastive_loss: same must be a 1-D tensor")
end)

test("ProtoNet: prototypes are class means, logits minus squared distances (by hand)", function()
  local emb = vtl.tensor({{0, 0}, {2, 0}, {0, 4}, {1, 1}, {3, 3}}, {dtype = "f64"})
  local labels = vtl.tensor({1, 1, 2, 2, 3})
  local p = vtl.fewshot.prototypes(emb, labels, 3)
  T.close(p, vtl.tensor({{1, 0}, {0.5, 2.5}, {3, 3}}, {dtype = "f64"}), 1e-12)
  local q = vtl.tensor({{1, 2}, {-1, 0}}, {dtype = "f64"})
  local want = {}
  local P = {{1, 0}, {0.5, 2.5}, {3, 3}}
  for i, qi in ipairs {{1, 2}, {-1, 0}} do
    want[i] = {}
    for c = 1, 3 do want[i][c] = -((qi[1] - P[c][1]) ^ 2 + (qi[2] - P[c][2]) ^ 2) end
  end
  T.close(vtl.fewshot.proto_logits(q, p), want, 1e-12)
  -- end to end with an identity encoder: episodes of well-separated points are solved
  local x = vtl.randn({60, 2}, {generator = vtl.Generator(4)}) * 0.1
  local tg = {}
  for i = 1, 60 do
    tg[i] = (i - 1) % 3 + 1
    x[i]:add_(vtl.tensor({{0, 0}, {5, 0}, {0, 5}})[tg[i]])
  end
  local ds = vtl.data.TensorDataset(x, vtl.tensor(tg, {dtype = "i64"}))
  local s = vtl.fewshot.EpisodicSampler(ds, {n_way = 3, k_shot = 2, q_query = 4, seed = 1})
  local r = vtl.fewshot.ProtoNet {encoder = function(t) return t end}:evaluate(ds, s, {episodes = 30})
  T.close(r.mean, 1, 0)
  T.eq(#r.accuracies, 30)
  local mean, ci = vtl.fewshot.mean_ci({0.5, 0.7, 0.9})
  T.close(mean, 0.7, 1e-12)
  T.close(ci, 1.96 * 0.2 / math.sqrt(3), 1e-12)
end)

test("ProtoNet training and first-order MAML learn separable episodes", function()
  vtl.seed(5)
  local ds = tiny_ds(96, 6, 7)
  local s = vtl.fewshot.EpisodicSampler(ds, {n_way = 3, k_shot = 2, q_query = 4, seed = 2})
  local enc = vtl.models.create("small_cnn", {num_classes = 0, width = 0.25, drop_rate = 0})
  local pn = vtl.fewshot.ProtoNet {encoder = enc}
  local fit = pn:fit(ds, s, {episodes = 30, lr = 3e-3})
  T.truthy(fit.loss == fit.loss, "finite loss")
  local r = pn:evaluate(ds, vtl.fewshot.EpisodicSampler(ds, {n_way = 3, k_shot = 2, q_query = 4, seed = 99}), {episodes = 40})
  T.truthy(r.mean > 0.6, "ProtoNet episode accuracy " .. r.mean .. " (chance 1/3)")
  local model = vtl.models.create("small_cnn", {num_classes = 3, width = 0.25, drop_rate = 0})
  local maml = vtl.fewshot.FOMAML {model = model, inner_steps = 3, inner_lr = 0.05, outer_lr = 3e-3}
  local w0 = model.classifier[2].weight:clone()
  maml:fit(ds, s, {episodes = 16, meta_batch = 4})
  T.truthy(maxdiff(w0, model.classifier[2].weight) > 0, "the outer step moved the initial weights")
  local before = model.classifier[2].weight:clone()
  local e = maml:evaluate(ds, s, {episodes = 10})
  T.truthy(e.mean >= 0 and e.mean <= 1 and #e.accuracies == 10)
  T.truthy(maxdiff(before, model.classifier[2].weight) == 0, "evaluate restores the weights")
  -- pair head
  local ph = vtl.fewshot.PairHead(enc, enc.num_features)
  local x = ds.x
  T.eq(ph(x:narrow(1, 1, 4), x:narrow(1, 5, 4)).shape[1], 4)
  local e1, e2 = vtl.tensor({{0, 0}, {3, 4}}), vtl.tensor({{0, 0}, {0, 0}})
  -- same pair at distance 0 -> 0; different pair at distance 5 with margin 6 -> 1
  T.close(vtl.fewshot.contrastive_loss(e1, e2, vtl.tensor({1, 0}), {margin = 6}):item(), 0.5, 1e-5)
end)

-- ---- domain adaptation ----

test("gradient reversal: identity forward, -coeff times the gradient (gradcheck), DANN schedule", function()
  local x = vtl.randn({3, 4}, {dtype = "f64"})
  x.requires_grad = true
  -- GRL(x) - ((1 + c) x).detach() has the value -c x and, through the reversal alone, the
  -- gradient -c: finite differences agree exactly when the reversal's backward is -c
  for _, c in ipairs {0.7, 2} do
    T.truthy(vtl.autograd.gradcheck(function(t) return vtl.adapt.grad_reverse(t, c) - (t * (1 + c)):detach() end, {x}) == true)
  end
  T.close(vtl.adapt.grad_reverse(x, 0.7), x:detach(), 0)
  local y = vtl.adapt.grad_reverse(x, 0.25):sum()
  x.grad = nil
  y:backward()
  T.close(x.grad, vtl.full({3, 4}, -0.25, {dtype = "f64"}), 1e-12)
  -- gradcheck sees a wrong sign: identity's gradient differs from reversal's
  T.raises(function() vtl.autograd.gradcheck(function(t) return vtl.adapt.grad_reverse(t, 1) end, {x}, {atol = 1e-6}) end,
    "gradcheck")
  T.close(vtl.adapt.grl_coeff(0), 0, 1e-15)
  T.close(vtl.adapt.grl_coeff(0.5), 2 / (1 + math.exp(-5)) - 1, 1e-15)
  T.close(vtl.adapt.grl_coeff(1, 3), 2 / (1 + math.exp(-3)) - 1, 1e-15)
  T.raises(function() vtl.adapt.grl_coeff(0.5, -1) end, "grl_coeff: gamma must be a positive number")
end)

test("mmd: multi-kernel Gaussian MMD^2 and its gradient against PyTorch", function()
  local x, y = R("mmd/x"), R("mmd/y")
  local xg = x:clone()
  xg.requires_grad = true
  local v = vtl.adapt.mmd(xg, y)
  v:backward()
  T.close(v:item(), R("mmd/value")[1]:item(), 1e-10)
  T.truthy(maxdiff(xg.grad, R("mmd/grad")) < 1e-10, "gradient")
  T.truthy(vtl.adapt.mmd(x, x):item() < 1e-12, "a sample against itself")
  T.raises(function() vtl.adapt.mmd(vtl.randn({3, 2}), vtl.randn({3, 4})) end, "mmd: x has 2 features, y 4")
  T.raises(function() vtl.adapt.mmd(vtl.randn({3}), vtl.randn({3, 4})) end, "mmd: x must be M×D")
  T.raises(function() vtl.adapt.mmd(x, y, {kernels = 0}) end, "mmd: kernels must be a positive integer")
end)

test("DANN and MMDAlign callbacks train, PairedLoader pairs batches; bad arguments", function()
  vtl.seed(2)
  local src = tiny_ds(48, 4, 3)
  local tgt = vtl.data.TensorDataset(src.x * -1)
  for _, mk in ipairs {function() return vtl.adapt.DANN {target = tgt, hidden = 16} end,
                       function() return vtl.adapt.MMDAlign {target = tgt, weight = 0.5} end} do
    local model = vtl.models.create("small_cnn", {num_classes = 4, width = 0.25})
    local cb = mk()
    local learn = vtl.train.Learner {model = model, train = src, batch_size = 16, progress = false, callbacks = {cb}}
    learn:fit(2, 1e-3)
    T.eq(cb.seen, 6, cb.name .. ": one target batch per source batch")
    T.truthy(rawget(model, "forward_features") == nil, cb.name .. ": capture removed")
    if cb.name == "DANN" then
      T.close(cb.coeff, vtl.adapt.grl_coeff(5 / 6), 1e-12, "coefficient at the last batch")
      T.truthy(cb.domain_loss > 0 and cb.domain_acc >= 0)
    else
      T.truthy(cb.mmd >= 0)
    end
  end
  local p = vtl.adapt.PairedLoader(src, vtl.data.TensorDataset(src.x:narrow(1, 1, 10)), {batch_size = 8})
  local n = 0
  for s, t in p:iter(1) do
    n = n + 1
    T.truthy(s.input.shape[1] >= 1 and t.input.shape[1] >= 1)
  end
  T.eq(n, 6, "one pair per source batch, the target restarting")
  T.eq(#p, 6)
  T.raises(function() vtl.adapt.DANN {} end, "DANN: target must be a dataset or a DataLoader")
  T.raises(function() vtl.adapt.DANN {target = tgt, gamma = 0} end, "DANN: gamma must be a positive number")
  T.raises(function() vtl.adapt.MMDAlign {target = tgt, weight = -1} end, "MMDAlign: weight must be a non-negative number")
  T.raises(function() vtl.adapt.PairedLoader(src, 5) end, "PairedLoader: target must be a dataset or a DataLoader")
  T.raises(function() vtl.adapt.DomainDiscriminator(0) end, "DomainDiscriminator: in_features must be a positive integer")
end)

-- ---- interpretability ----

test("gradcam and saliency match PyTorch on the same small_cnn weights", function()
  local m = small_cnn_ref()
  local x, cls = R("cam/x"), R("cam/class")
  for _, layer in ipairs {"features.4", "features.2"} do
    local r = vtl.explain.gradcam(m, x, cls, layer)
    T.truthy(maxdiff(r.logits, R("cam/logits")) < 1e-4, "logits")
    T.truthy(maxdiff(r.weights, R("cam/" .. layer .. "/weights")) < 1e-6, layer .. " channel weights")
    local rr = R("cam/" .. layer .. "/raw")
    T.truthy(maxdiff(r.raw, rr) < 1e-4 * (1 + rr:abs():max():item()), layer .. " raw map")
    T.truthy(maxdiff(r.cam, R("cam/" .. layer .. "/cam")) < 1e-4, layer .. " upsampled map")
  end
  -- the module itself instead of its path; nil class = the predicted one
  local r = vtl.explain.gradcam(m, x, nil, m.features[5])
  T.close(r.class, R("cam/logits"):argmax(2), 0)
  local s = vtl.explain.saliency(m, x, cls)
  T.truthy(maxdiff(s, R("saliency")) < 1e-5 * (1 + R("saliency"):max():item()), "saliency")
  for _, p in ipairs(m:parameters()) do T.truthy(p.grad == nil and p.requires_grad, "parameters untouched") end
  T.truthy(m._forward_hooks == nil or #rawget(m.features[5], "_forward_hooks") == 0, "hook removed")
end)

test("occlusion and the overlay PNG; explain bad arguments", function()
  local m = small_cnn_ref()
  local x = R("cam/x")
  local o, cls = vtl.explain.occlusion(m, x, 4, {window = 8, stride = 8})
  T.eq(table.concat(o.shape, ","), "2,32,32")
  T.eq(cls[1]:item(), 4)
  -- with stride = window each pixel is covered once: the map at a pixel is that window's drop
  local p = F.softmax(m(x), 2)[1][4]:item()
  local xo = x[1]:clone()
  xo:narrow(2, 9, 8):narrow(3, 17, 8):fill_(0)
  local q = F.softmax(m(xo:unsqueeze(1)), 2)[1][4]:item()
  T.close(o[1][10][20]:item(), p - q, 1e-5)
  local path = os.tmpname() .. ".png"
  local r = vtl.explain.gradcam(m, x, 1, "features.4", {path = path, mean = {0.5, 0.5, 0.5}, std = {0.25, 0.25, 0.25}})
  local img = vtl.image.load(path)
  T.eq(table.concat(img.shape, ","), "32,32,3")
  os.remove(path)
  -- a hot pixel of the map is red-ish over a black image at alpha 1
  local ov = vtl.explain.overlay(vtl.zeros({3, 4, 4}), vtl.tensor({{1, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}}), {alpha = 1})
  T.eq(ov[1][1]:totable()[1], 128)
  T.eq(ov[1][1]:totable()[3], 0)
  T.eq(ov[2][2]:totable()[3], 128, "cold: dark blue")
  T.truthy(r.cam:min():item() >= 0 and r.cam:max():item() <= 1)
  T.raises(function() vtl.explain.gradcam(m, x, 1, "features.9") end, "gradcam: layer 'features.9' is not a submodule")
  T.raises(function() vtl.explain.gradcam(m, x, 11, "features.4") end, "gradcam: class numbers must be in 1..10")
  T.raises(function() vtl.explain.gradcam(m, x[1], 1, "features.4") end, "gradcam: x must be an N×C×H×W tensor")
  T.raises(function() vtl.explain.gradcam(m, x, 1, "classifier.1") end, "must be an N×C×h×w tensor")
  T.raises(function() vtl.explain.gradcam(m, x, {1}, "features.4") end, "gradcam: 1 class numbers for 2 images")
  T.raises(function() vtl.explain.occlusion(m, x, 1, {window = 40}) end, "occlusion: window must be an integer in 1..min(H, W)")
  T.raises(function() vtl.explain.overlay(vtl.zeros({3, 4, 4}), vtl.zeros({4})) end, "overlay: heat must be an h×w tensor")
  -- the model is usable afterwards, its mode kept
  m:train()
  vtl.explain.saliency(m, x, 1)
  T.truthy(m.training)
end)

-- ---- deployment ----

test("deploy.report and half_check", function()
  local m = vtl.models.create("small_cnn", {num_classes = 10})
  local r = vtl.deploy.report(m, {3, 32, 32}, {runs = 3, throughput_runs = 1, batch = 8})
  local n = 0
  for _, p in ipairs(m:parameters()) do n = n + p:numel() end
  T.eq(r.params, n)
  -- safetensors: the data plus a header
  T.truthy(r.size_f32 >= 4 * (n + r.buffers) - 8 * 10 and r.size_f32 < 4 * (n + r.buffers) + 65536, "f32 size " .. r.size_f32)
  T.truthy(r.size_f16 < 0.6 * r.size_f32, "f16 about half")
  T.eq(r.macs, vtl.models.summary(m, {1, 3, 32, 32}, {print = false}).macs)
  T.eq(r.flops, 2 * r.macs)
  T.truthy(r.latency_ms > 0 and r.throughput > 0 and r.peak_tensor_bytes > 0)
  T.truthy(r.text:find("latency", 1, true))
  T.raises(function() vtl.deploy.report(m, {3, 32}) end, "deploy.report: input_shape must be {C, H, W}")
  T.raises(function() vtl.deploy.report({}, {3, 32, 32}) end, "deploy.report: model must be an nn.Module")
  -- half precision: same predictions on well-separated logits; the weights come back
  local x = vtl.randn({24, 3, 32, 32}, {generator = vtl.Generator(3)})
  m:eval()
  local y = m(x):argmax(2)
  local before = m(x)
  local h = vtl.deploy.half_check(m, vtl.data.TensorDataset(x, y), {dtype = "f16"})
  T.close(h.accuracy_f32, 1, 0)
  T.truthy(h.agreement >= 0.9 and h.accuracy_half >= 0.9, "f16 agreement " .. h.agreement)
  T.close(m(x), before, 0, "weights restored")
  T.eq(h.overflow, 0)
  -- a layer whose output overflows f16 is caught
  local big = vtl.nn.Sequential(vtl.nn.Conv2d(3, 2, 1), vtl.nn.AdaptiveAvgPool2d(1), vtl.nn.Flatten())
  vtl.no_grad(function() big[1].weight:fill_(3e4); big[1].bias:fill_(0) end)
  local hb = vtl.deploy.half_check(big, vtl.data.TensorDataset(x:abs() + 1, vtl.ones({24}, {dtype = "i64"})))
  T.truthy(hb.overflow > 0, "overflow counted")
  T.raises(function() vtl.deploy.half_check(m, x, {dtype = "f8"}) end, "dtype must be \"f16\" or \"bf16\"")
end)

-- ---- monitoring ----

test("PSI and KL by hand; mmd_test p-values", function()
  local e, a = {10, 20, 30, 40}, {20, 20, 20, 40}
  local want = 0
  for i = 1, 4 do
    local pe, pa = e[i] / 100, a[i] / 100
    want = want + (pa - pe) * math.log(pa / pe)
  end
  T.close(vtl.monitor.psi_counts(e, a), want, 1e-12)
  T.close(vtl.monitor.psi_counts(e, e), 0, 1e-15)
  -- an empty bin is floored at 1e-4
  T.close(vtl.monitor.psi_counts({50, 50}, {100, 0}), (1 - 0.5) * math.log(1 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5), 1e-12)
  T.close(vtl.monitor.kl({1, 3}, {1, 1}), 0.25 * math.log(0.5) + 0.75 * math.log(1.5), 1e-12)
  -- psi on raw values: deciles of 1..100 as bins; shifting everything by 50 empties half of them
  local ref, new = {}, {}
  for i = 1, 100 do ref[i] = i; new[i] = i + 50 end
  T.close(vtl.monitor.psi(ref, ref), 0, 1e-15)
  T.truthy(vtl.monitor.psi(ref, new) > 1)
  local x = vtl.randn({40, 3}, {generator = vtl.Generator(1)})
  local y = vtl.randn({40, 3}, {generator = vtl.Generator(2)})
  local _, p_same = vtl.monitor.mmd_test(x, y, {permutations = 99})
  local m2, p_diff = vtl.monitor.mmd_test(x, y + 2, {permutations = 99})
  T.truthy(p_same > 0.05, "same distribution p " .. p_same)
  T.close(p_diff, 0.01, 1e-12, "every permutation below the shifted statistic")
  T.close(m2, vtl.adapt.mmd(x:double(), (y + 2):double()):item(), 1e-9, "the statistic is adapt.mmd")
  T.raises(function() vtl.monitor.psi_counts({1, 2}, {1}) end, "psi_counts: expected and actual must have the same")
  T.raises(function() vtl.monitor.kl({0, 0}, {1, 1}) end, "kl: a distribution sums to 0")
  T.raises(function() vtl.monitor.psi({1, 2}, {"a"}) end, "psi: new[1] is not a number")
  T.raises(function() vtl.monitor.mmd_test(x, y, {permutations = 0}) end, "mmd_test: permutations must be a positive integer")
end)

test("monitor profile: clean data passes, shifted data is flagged", function()
  local m = vtl.models.create("small_cnn", {num_classes = 10, width = 0.5})
  local g = vtl.Generator(11)
  local x = vtl.rand({1200, 3, 16, 16}, {generator = g})
  local prof = vtl.monitor.fit_profile(x:narrow(1, 1, 600), {model = m})
  T.eq(#prof.names, 7)
  local clean = prof:score(x:narrow(1, 601, 600))
  T.truthy(not clean.drift, "clean: " .. clean.text)
  local shifted = prof:score(x:narrow(1, 601, 600) * 0.6 + 0.3)
  T.truthy(shifted.drift and shifted.flags.psi and shifted.flags.mmd, "shifted: " .. shifted.text)
  T.truthy(shifted.psi_max > clean.psi_max)
  T.raises(function() vtl.monitor.fit_profile(x, {model = 3}) end, "fit_profile: model must be an nn.Module")
  T.raises(function() prof:score(vtl.zeros({2, 3})) end, "Profile:score: a batch tensor must be N×C×H×W")
  T.raises(function() prof:score(vtl.rand({10, 1, 16, 16})) end, "expected input with 3 channels")
end)
