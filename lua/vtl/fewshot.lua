-- vtl.fewshot: learning new classes from a handful of examples. Episodes (N-way, K-shot, Q
-- queries per class) drawn reproducibly from a labelled dataset; Prototypical Networks (Snell et
-- al. 2017); first-order MAML (Finn et al. 2017, the first-order variant); a Siamese pair head
-- with the contrastive loss. Accuracies over many episodes come with a 95% confidence interval.
--
--   local sampler = vtl.fewshot.EpisodicSampler(ds, {n_way = 4, k_shot = 1, q_query = 15, seed = 1})
--   local proto = vtl.fewshot.ProtoNet {encoder = model}
--   proto:fit(ds, sampler, {episodes = 200, lr = 1e-3})
--   print(proto:evaluate(test_ds, test_sampler, {episodes = 600}).mean)
local vtl = require "vtl"
local core = require "vtl.core"
local F = require "vtl.nn.functional"

local M = {}

local function fail(msg, level) error(msg, (level or 1) + 1) end
local function is_module(m) return type(m) == "table" and type(m.parameters) == "function" end
local function posint(v) return math.type(v) == "integer" and v >= 1 end

-- ---- episodes ----

local Sampler = {}
Sampler.__index = Sampler
Sampler.__name = "vtl.fewshot.EpisodicSampler"

-- a permutation of 1..n from generator g
local function perm(n, g)
  local idx = core.rand({n}, {generator = g}):argsort(1):totable()
  return idx
end

---Draws N-way K-shot episodes from a labelled dataset (or a list of 1-based class numbers):
---N classes, K support and Q query samples per class, no sample twice in an episode. Episode i
---depends only on (seed, i). opts: n_way (5), k_shot (1), q_query (15), seed (0), classes (the
---class numbers to draw from; default every class with at least K + Q samples).
---@param ds table a dataset with .targets, or a list of class numbers
---@param opts? {n_way: integer|nil, k_shot: integer|nil, q_query: integer|nil, seed: integer|nil, classes: integer[]|nil}
function M.EpisodicSampler(ds, opts)
  local fn = "EpisodicSampler"
  local targets = type(ds) == "table" and (ds.targets or (ds[1] ~= nil and ds)) or nil
  if type(targets) ~= "table" or #targets == 0 then fail(fn .. ": expected a dataset with targets or a list of class numbers", 2) end
  if opts ~= nil and type(opts) ~= "table" then fail(fn .. ": options must be a table", 2) end
  opts = opts or {}
  local n, k, q, seed = opts.n_way or 5, opts.k_shot or 1, opts.q_query or 15, opts.seed or 0
  if not posint(n) then fail(fn .. ": n_way must be a positive integer, got " .. tostring(n), 2) end
  if not posint(k) then fail(fn .. ": k_shot must be a positive integer, got " .. tostring(k), 2) end
  if math.type(q) ~= "integer" or q < 0 then fail(fn .. ": q_query must be a non-negative integer, got " .. tostring(q), 2) end
  if math.type(seed) ~= "integer" then fail(fn .. ": seed must be an integer", 2) end
  local by_class = {}
  for i, t in ipairs(targets) do
    if math.type(t) ~= "integer" then fail(("%s: targets[%d] is not a class number"):format(fn, i), 2) end
    by_class[t] = by_class[t] or {}
    local l = by_class[t]
    l[#l + 1] = i
  end
  local classes = {}
  if opts.classes ~= nil then
    if type(opts.classes) ~= "table" then fail(fn .. ": classes must be a list of class numbers", 2) end
    for j, c in ipairs(opts.classes) do
      local have = by_class[c] and #by_class[c] or 0
      if have < k + q then
        fail(("%s: classes[%d] = %s has %d samples, fewer than k_shot + q_query = %d"):format(fn, j, tostring(c), have, k + q), 2)
      end
      classes[#classes + 1] = c
    end
  else
    for c, l in pairs(by_class) do if #l >= k + q then classes[#classes + 1] = c end end
    table.sort(classes)
  end
  if #classes < n then
    fail(("%s: n_way = %d but only %d classes have at least %d samples"):format(fn, n, #classes, k + q), 2)
  end
  return setmetatable({n_way = n, k_shot = k, q_query = q, seed = seed, classes = classes, by_class = by_class}, Sampler)
end

---Episode i: {classes = the N class numbers drawn, support = N*K dataset indices (class by
---class), query = N*Q indices, support_labels / query_labels = episode labels 1..N}.
---@param i integer
function Sampler:episode(i)
  if math.type(i) ~= "integer" or i < 1 then fail("EpisodicSampler:episode: i must be a positive integer", 2) end
  local g = core.Generator(self.seed * 1000003 + i * 7919 + 17)
  local order = perm(#self.classes, g)
  local ep = {classes = {}, support = {}, query = {}, support_labels = {}, query_labels = {}}
  for c = 1, self.n_way do
    local cls = self.classes[order[c]]
    ep.classes[c] = cls
    local pool = self.by_class[cls]
    local pick = perm(#pool, g)
    for s = 1, self.k_shot do
      ep.support[#ep.support + 1] = pool[pick[s]]
      ep.support_labels[#ep.support_labels + 1] = c
    end
    for s = 1, self.q_query do
      ep.query[#ep.query + 1] = pool[pick[self.k_shot + s]]
      ep.query_labels[#ep.query_labels + 1] = c
    end
  end
  return ep
end

---The tensors of an episode: support inputs, support labels (i64, 1..N), query inputs, query labels.
---@return vtl.Tensor xs, vtl.Tensor ys, vtl.Tensor xq, vtl.Tensor yq
function M.load_episode(ds, ep)
  if type(ds) ~= "table" or type(ds.get) ~= "function" then fail("load_episode: expected a dataset", 2) end
  local function stack(idx)
    local xs = {}
    for j, i in ipairs(idx) do xs[j] = (ds:get(i)) end
    return #xs > 0 and core.stack(xs) or nil
  end
  return stack(ep.support), core.tensor(ep.support_labels, {dtype = "i64"}), stack(ep.query),
         core.tensor(ep.query_labels, {dtype = "i64"})
end

---Mean and half-width of the 95% confidence interval (normal approximation, 1.96 standard errors).
---@param xs number[]
---@return number mean, number ci95
function M.mean_ci(xs)
  local n = #xs
  if n == 0 then return 0 / 0, 0 / 0 end
  local s = 0
  for _, v in ipairs(xs) do s = s + v end
  local mean = s / n
  if n == 1 then return mean, 0 / 0 end
  local ss = 0
  for _, v in ipairs(xs) do ss = ss + (v - mean) ^ 2 end
  return mean, 1.96 * math.sqrt(ss / (n - 1)) / math.sqrt(n)
end

---Accuracy of classify(xs, ys, xq, n_way) -> query predictions (i64 1..N) over episodes 1..
---opts.episodes (600) of sampler: {mean, ci95, accuracies}.
---@param classify fun(xs: vtl.Tensor, ys: vtl.Tensor, xq: vtl.Tensor, n_way: integer): vtl.Tensor
function M.evaluate_episodes(ds, sampler, classify, opts)
  if getmetatable(sampler) ~= Sampler then fail("evaluate_episodes: sampler must be an EpisodicSampler", 2) end
  if type(classify) ~= "function" then fail("evaluate_episodes: classify must be a function", 2) end
  local n = opts and opts.episodes or 600
  if not posint(n) then fail("evaluate_episodes: episodes must be a positive integer", 2) end
  if sampler.q_query < 1 then fail("evaluate_episodes: the sampler draws no query samples (q_query = 0)", 2) end
  local first = opts and opts.first or 1
  local accs = {}
  for e = 1, n do
    local xs, ys, xq, yq = M.load_episode(ds, sampler:episode(first + e - 1))
    local pred = classify(xs, ys, xq, sampler.n_way)
    accs[e] = pred:eq(yq):float():mean():item()
  end
  local mean, ci = M.mean_ci(accs)
  return {mean = mean, ci95 = ci, accuracies = accs, episodes = n}
end

-- ---- Prototypical Networks ----

---Prototypes: the mean embedding of each class. emb S×D, labels i64 S with values 1..n_way.
---@return vtl.Tensor n_way×D
function M.prototypes(emb, labels, n_way)
  if not core.is_tensor(emb) or emb.ndim ~= 2 then fail("prototypes: emb must be S×D", 2) end
  if not core.is_tensor(labels) or labels.ndim ~= 1 or labels.shape[1] ~= emb.shape[1] then
    fail("prototypes: labels must be a 1-D tensor with one label per row of emb", 2)
  end
  if not posint(n_way) then fail("prototypes: n_way must be a positive integer", 2) end
  local onehot = F.one_hot(labels, n_way):to(emb.dtype)          -- S×N
  local counts = onehot:sum(1)                                     -- N
  if counts:min():item() == 0 then fail("prototypes: some class in 1..n_way has no support sample", 2) end
  return onehot:t():matmul(emb) / counts:unsqueeze(2)
end

---Logits of queries against prototypes: minus the squared Euclidean distance, Q×N.
---@param query vtl.Tensor Q×D
---@param protos vtl.Tensor N×D
function M.proto_logits(query, protos)
  if not core.is_tensor(query) or query.ndim ~= 2 then fail("proto_logits: query must be Q×D", 2) end
  if not core.is_tensor(protos) or protos.ndim ~= 2 then fail("proto_logits: protos must be N×D", 2) end
  if query.shape[2] ~= protos.shape[2] then
    fail(("proto_logits: query has %d features, prototypes %d"):format(query.shape[2], protos.shape[2]), 2)
  end
  local qq = (query * query):sum(2, {keepdim = true})               -- Q×1
  local pp = (protos * protos):sum(2):unsqueeze(1)                  -- 1×N
  return query:matmul(protos:t()) * 2 - qq - pp
end

-- the embedding of x under an encoder: a zoo model's pooled pre-logits features, another
-- module's output, or a function's result
local function embed(encoder, x)
  if is_module(encoder) and type(encoder.forward_features) == "function" and type(encoder.forward_head) == "function" then
    return encoder:forward_head(encoder:forward_features(x), true)
  end
  local e = encoder(x)
  if e.ndim > 2 then e = e:flatten(2) end
  return e
end
M.embed = embed

local ProtoNet = {}
ProtoNet.__index = ProtoNet
ProtoNet.__name = "vtl.fewshot.ProtoNet"

---A Prototypical Network around an encoder (a zoo model, whose pooled pre-logits features are the
---embedding, or any module or function mapping a batch to N×D).
---@param opts {encoder: vtl.nn.Module|function}
function M.ProtoNet(opts)
  if type(opts) ~= "table" then fail("ProtoNet: expected an options table {encoder = model}", 2) end
  local enc = opts.encoder
  if not (is_module(enc) or type(enc) == "function") then fail("ProtoNet: encoder must be an nn.Module or a function", 2) end
  return setmetatable({encoder = enc}, ProtoNet)
end

---Embeds x (N×...) to N×D.
function ProtoNet:embed(x) return embed(self.encoder, x) end

---Query logits (Q×N) from a support set: minus squared distances to the class prototypes.
function ProtoNet:logits(xs, ys, xq, n_way)
  local n = xs.shape[1]
  local e = self:embed(core.cat({xs, xq}, 1))
  local es, eq = e:narrow(1, 1, n), e:narrow(1, n + 1, xq.shape[1])
  return M.proto_logits(eq, M.prototypes(es, ys, n_way))
end

---One episodic training step: cross-entropy of the query logits, backward, opt:step().
---Returns the loss and the query accuracy.
function ProtoNet:train_step(xs, ys, xq, yq, n_way, opt)
  if is_module(self.encoder) then self.encoder:train() end
  opt:zero_grad()
  local logits = self:logits(xs, ys, xq, n_way)
  local loss = F.cross_entropy(logits, yq)
  loss:backward()
  opt:step()
  local acc = logits:argmax(2):eq(yq):float():mean():item()
  return loss:item(), acc
end

---Episodic training on episodes 1..opts.episodes (100) of sampler with Adam (opts.lr, 1e-3) or
---opts.opt. Returns the mean loss and accuracy of the last tenth of the episodes.
function ProtoNet:fit(ds, sampler, opts)
  if getmetatable(sampler) ~= Sampler then fail("ProtoNet:fit: sampler must be an EpisodicSampler", 2) end
  opts = opts or {}
  local n = opts.episodes or 100
  if not posint(n) then fail("ProtoNet:fit: episodes must be a positive integer", 2) end
  if not is_module(self.encoder) then fail("ProtoNet:fit: the encoder must be an nn.Module to train", 2) end
  local opt = opts.opt or vtl.optim.Adam(self.encoder:parameters(), {lr = opts.lr or 1e-3})
  local tail, ls, as = math.max(1, n // 10), 0, 0
  for e = 1, n do
    local xs, ys, xq, yq = M.load_episode(ds, sampler:episode(e))
    local l, a = self:train_step(xs, ys, xq, yq, sampler.n_way, opt)
    if e > n - tail then ls, as = ls + l, as + a end
  end
  return {loss = ls / tail, accuracy = as / tail}
end

---Mean query accuracy with its 95% confidence interval over opts.episodes (600) episodes of
---sampler, the encoder in eval mode: {mean, ci95, accuracies}.
function ProtoNet:evaluate(ds, sampler, opts)
  local enc = self.encoder
  local was = is_module(enc) and enc.training
  if is_module(enc) then enc:eval() end
  local guard <close> = core.no_grad()
  local ok, res = pcall(M.evaluate_episodes, ds, sampler, function(xs, ys, xq, n_way)
    return self:logits(xs, ys, xq, n_way):argmax(2)
  end, opts)
  if is_module(enc) then enc:train(was) end
  if not ok then error(res, 2) end
  return res
end

-- ---- first-order MAML ----

local FOMAML = {}
FOMAML.__index = FOMAML
FOMAML.__name = "vtl.fewshot.FOMAML"

---First-order MAML: a model whose output has n_way logits is adapted to each task by
---inner_steps (5) steps of plain SGD at inner_lr (0.01) on the support set; the query loss
---gradient at the adapted weights (first-order: not differentiated through the inner loop) is
---averaged over the tasks of a meta-batch and applied to the initial weights by the outer
---optimizer (opts.outer_opt, or Adam at outer_lr 1e-3).
---@param opts {model: vtl.nn.Module, inner_steps: integer|nil, inner_lr: number|nil, outer_opt: table|nil, outer_lr: number|nil}
function M.FOMAML(opts)
  local fn = "FOMAML"
  if type(opts) ~= "table" then fail(fn .. ": expected an options table {model = ...}", 2) end
  if not is_module(opts.model) then fail(fn .. ": model must be an nn.Module", 2) end
  local steps, lr = opts.inner_steps or 5, opts.inner_lr or 0.01
  if math.type(steps) ~= "integer" or steps < 0 then fail(fn .. ": inner_steps must be a non-negative integer", 2) end
  if type(lr) ~= "number" or lr <= 0 then fail(fn .. ": inner_lr must be a positive number", 2) end
  local olr = opts.outer_lr or 1e-3
  if type(olr) ~= "number" or olr <= 0 then fail(fn .. ": outer_lr must be a positive number", 2) end
  local params = {}
  for _, p in ipairs(opts.model:parameters()) do if p.requires_grad then params[#params + 1] = p end end
  local outer = opts.outer_opt or vtl.optim.Adam(params, {lr = olr})
  return setmetatable({model = opts.model, inner_steps = steps, inner_lr = lr, outer_opt = outer, params = params}, FOMAML)
end

function FOMAML:_save()
  local guard <close> = core.no_grad()
  local s = {}
  for i, p in ipairs(self.params) do s[i] = p:detach():clone() end
  return s
end

function FOMAML:_restore(s)
  local guard <close> = core.no_grad()
  for i, p in ipairs(self.params) do p:copy_(s[i]) end
end

---Adapts the model in place to a support set (inner_steps SGD steps on its cross-entropy).
function FOMAML:adapt(xs, ys)
  self.model:train()
  for _ = 1, self.inner_steps do
    for _, p in ipairs(self.params) do p.grad = nil end
    local loss = F.cross_entropy(self.model(xs), ys)
    loss:backward()
    local guard <close> = core.no_grad()
    for _, p in ipairs(self.params) do
      if p.grad then p:sub_(p.grad * self.inner_lr) end
    end
  end
  for _, p in ipairs(self.params) do p.grad = nil end
end

---One outer step over a list of tasks {xs, ys, xq, yq}; returns the mean query loss and accuracy
---after adaptation.
function FOMAML:meta_step(tasks)
  if type(tasks) ~= "table" or #tasks == 0 then fail("FOMAML:meta_step: expected a non-empty list of tasks", 2) end
  local init = self:_save()
  local sum = {}
  local ls, as = 0, 0
  for _, t in ipairs(tasks) do
    self:adapt(t[1], t[2])
    local logits = self.model(t[3])
    local loss = F.cross_entropy(logits, t[4])
    loss:backward()
    ls, as = ls + loss:item(), as + logits:argmax(2):eq(t[4]):float():mean():item()
    local guard <close> = core.no_grad()
    for i, p in ipairs(self.params) do
      if p.grad then sum[i] = sum[i] and sum[i] + p.grad or p.grad:clone() end
      p.grad = nil
    end
    self:_restore(init)
  end
  for i, p in ipairs(self.params) do if sum[i] then p.grad = sum[i] / #tasks end end
  self.outer_opt:step()
  self.outer_opt:zero_grad()
  return ls / #tasks, as / #tasks
end

---Meta-training on episodes of sampler: opts.episodes (100) tasks in meta-batches of
---opts.meta_batch (4). Returns the mean query loss and accuracy of the last tenth of meta-steps.
function FOMAML:fit(ds, sampler, opts)
  if getmetatable(sampler) ~= Sampler then fail("FOMAML:fit: sampler must be an EpisodicSampler", 2) end
  opts = opts or {}
  local n, mb = opts.episodes or 100, opts.meta_batch or 4
  if not posint(n) or not posint(mb) then fail("FOMAML:fit: episodes and meta_batch must be positive integers", 2) end
  local steps = math.max(1, n // mb)
  local tail, ls, as = math.max(1, steps // 10), 0, 0
  for s = 1, steps do
    local tasks = {}
    for j = 1, mb do tasks[j] = {M.load_episode(ds, sampler:episode((s - 1) * mb + j))} end
    local l, a = self:meta_step(tasks)
    if s > steps - tail then ls, as = ls + l, as + a end
  end
  return {loss = ls / tail, accuracy = as / tail}
end

---Accuracy after adapting to each episode's support set (weights restored after each), with
---the 95% confidence interval: {mean, ci95, accuracies}. opts.episodes (600).
function FOMAML:evaluate(ds, sampler, opts)
  local init = self:_save()
  local ok, res = pcall(M.evaluate_episodes, ds, sampler, function(xs, ys, xq)
    self:adapt(xs, ys)
    self.model:eval()
    local pred = core.no_grad(function() return self.model(xq):argmax(2) end)
    self:_restore(init)
    return pred
  end, opts)
  self:_restore(init)
  self.model:train()
  if not ok then error(res, 2) end
  return res
end

-- ---- Siamese pair head ----

---Contrastive loss of embedding pairs (Hadsell et al. 2006): same * d^2 + (1 - same) *
---max(0, margin - d)^2, batch mean, d the Euclidean distance. same: 1 for a same-class pair, 0 else.
---@param e1 vtl.Tensor N×D
---@param e2 vtl.Tensor N×D
---@param same vtl.Tensor N (0/1)
---@param opts? {margin: number|nil}
function M.contrastive_loss(e1, e2, same, opts)
  if not core.is_tensor(e1) or not core.is_tensor(e2) or e1.ndim ~= 2 or e2.ndim ~= 2 then
    fail("contrastive_loss: e1 and e2 must be N×D tensors", 2)
  end
  if e1.shape[1] ~= e2.shape[1] or e1.shape[2] ~= e2.shape[2] then fail("contrastive_loss: e1 and e2 differ in shape", 2) end
  if not core.is_tensor(same) or same.ndim ~= 1 or same.shape[1] ~= e1.shape[1] then
    fail("contrastive_loss: same must be a 1-D tensor with one 0/1 value per pair", 2)
  end
  local margin = opts and opts.margin or 1
  if type(margin) ~= "number" or margin <= 0 then fail("contrastive_loss: margin must be a positive number", 2) end
  local s = same:to(e1.dtype)
  local d2 = ((e1 - e2) ^ 2):sum(2)
  local d = (d2 + 1e-12):sqrt()
  local neg = (d * -1 + margin):relu() ^ 2
  return (s * d2 + (s * -1 + 1) * neg):mean()
end

local PairHead = vtl.nn.Module:extend("PairHead")
M.PairHead = PairHead

---PairHead(encoder, dim): a Siamese head. forward(x1, x2) embeds both inputs with the shared
---encoder and returns the same-class logit of each pair, Linear(|e1 - e2|) -> N; embed(x) gives
---the embeddings (for contrastive_loss).
function PairHead:init(encoder, dim)
  if not is_module(encoder) then error("PairHead: encoder must be an nn.Module", 3) end
  if not posint(dim) then error("PairHead: dim must be the embedding size (a positive integer)", 3) end
  self.encoder = encoder
  self.fc = vtl.nn.Linear(dim, 1)
end

function PairHead:embed(x) return embed(self.encoder, x) end

function PairHead:forward(x1, x2)
  if not core.is_tensor(x1) or not core.is_tensor(x2) then self:raise("expected two input tensors") end
  local n = x1.shape[1]
  local e = self:embed(core.cat({x1, x2}, 1))
  local d = (e:narrow(1, 1, n) - e:narrow(1, n + 1, x2.shape[1])):abs()
  return self.fc(d):view(-1)
end

return M
