-- vtl.metrics: classification metrics with scikit-learn's definitions, detection metrics with
-- pycocotools' (vtl.metrics.detection), and a per-group audit.
--
-- Predictions are class numbers (an integer tensor or list, N) or scores (a float tensor N×K:
-- logits or probabilities, the class is the argmax). Targets are class numbers 1..K.
-- The classes are 1..K where K is opts.num_classes, else the width of the scores, else the
-- largest class number in pred or target; averages run over all K classes (scikit-learn with
-- labels = 1..K). A class never predicted has precision 0 (opts.zero_division, 0 or 1, as
-- scikit-learn's zero_division); a class absent from the targets has recall 0 likewise.
--
--   local m = vtl.metrics
--   m.accuracy(logits, y)                       -- fraction of argmax == y
--   m.accuracy(logits, y, {topk = 5})           -- target among the 5 highest scores
--   m.f1(logits, y, {average = "macro"})        -- "macro" | "micro" | "weighted" | "none"
--   m.confusion_matrix(pred, y, {normalize = "true"})
--   print(m.classification_report(pred, y, {class_names = names}).text)
--   local acc = m.get("f1_macro")               -- a function(pred, target) for the Learner
local vtl = require "vtl"

local M = {}

local abs, huge = math.abs, math.huge

local function fail(fname, msg) error("metrics." .. fname .. ": " .. msg, 0) end

local INT_DTYPES = {i64 = true, i32 = true, u8 = true, i16 = true, i8 = true}
local FLOAT_DTYPES = {f32 = true, f64 = true, f16 = true, bf16 = true}

local function shape_str(t) return "{" .. table.concat(t.shape, ",") .. "}" end

local function check_opts(fname, opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then fail(fname, "options must be a table, got " .. type(opts)) end
  return opts
end

-- The class numbers in x (an integer tensor, or a list of integral numbers) as a Lua list.
local function int_list(fname, argname, x)
  if vtl.is_tensor(x) then
    if not INT_DTYPES[x.dtype] then
      fail(fname, argname .. " must hold class numbers (an integer tensor), got dtype " .. x.dtype)
    end
    if x.ndim ~= 1 then fail(fname, argname .. " must be 1-D (N), got shape " .. shape_str(x)) end
    return x:totable()
  end
  if type(x) ~= "table" then
    fail(fname, argname .. " must be a tensor or a list of class numbers, got " .. type(x))
  end
  local out = {}
  for i = 1, #x do
    local v = type(x[i]) == "number" and math.tointeger(x[i])
    if not v then fail(fname, string.format("%s[%d] must be a class number, got %s", argname, i, tostring(x[i]))) end
    out[i] = v
  end
  return out
end

local function check_range(fname, argname, l, k)
  for i = 1, #l do
    local c = l[i]
    if c < 1 or c > k then
      fail(fname, string.format("%s[%d] = %d is not a class number in 1..%d%s", argname, i, c, k,
        c < 1 and " (classes are numbered from 1)" or ""))
    end
  end
end

local function max_of(l)
  local m = -huge
  for i = 1, #l do if l[i] > m then m = l[i] end end
  return m
end

local function check_num_classes(fname, opts)
  local k = opts.num_classes
  if k ~= nil and (math.type(k) ~= "integer" or k < 1) then
    fail(fname, "num_classes must be a positive integer, got " .. tostring(k))
  end
  return k
end

-- Checked inputs: {pred = class list, target = class list, n, k, scores = float tensor N×K or nil}.
local function prepare(fname, pred, target, opts, need_scores)
  local k = check_num_classes(fname, opts)
  local t = int_list(fname, "target", target)
  local p, scores
  if vtl.is_tensor(pred) and FLOAT_DTYPES[pred.dtype] then
    if pred.ndim ~= 2 then
      fail(fname, "pred scores must be 2-D (N,K), got shape " .. shape_str(pred))
    end
    scores = pred
    if k and k ~= pred.shape[2] then
      fail(fname, string.format("num_classes = %d but pred has %d score columns", k, pred.shape[2]))
    end
    k = pred.shape[2]
    p = pred.shape[1] > 0 and pred:argmax(2):totable() or {}
  else
    if need_scores then
      fail(fname, "pred must be scores (a float tensor N×K), got " .. (vtl.is_tensor(pred) and ("dtype " .. pred.dtype) or type(pred)))
    end
    p = int_list(fname, "pred", pred)
  end
  if #p ~= #t then fail(fname, string.format("pred has %d samples but target has %d", #p, #t)) end
  if #t == 0 then fail(fname, "no samples (pred and target are empty)") end
  if not k then k = math.max(max_of(p), max_of(t), 1) end
  check_range(fname, "target", t, k)
  check_range(fname, "pred", p, k)
  return {pred = p, target = t, n = #t, k = k, scores = scores}
end

-- Per-class counts: tp[c], npred[c], ntrue[c].
local function counts(d)
  local tp, np, nt = {}, {}, {}
  for c = 1, d.k do tp[c], np[c], nt[c] = 0, 0, 0 end
  local p, t = d.pred, d.target
  for i = 1, d.n do
    local a, b = p[i], t[i]
    np[a] = np[a] + 1
    nt[b] = nt[b] + 1
    if a == b then tp[a] = tp[a] + 1 end
  end
  return tp, np, nt
end

local function zero_division(fname, opts)
  local z = opts.zero_division
  if z == nil then return 0.0 end
  if z ~= 0 and z ~= 1 then fail(fname, "zero_division must be 0 or 1, got " .. tostring(z)) end
  return z + 0.0
end

local AVERAGES = {macro = true, micro = true, weighted = true, none = true}

local function check_average(fname, opts, default)
  local a = opts.average
  if a == nil then return default end
  if not AVERAGES[a] then
    fail(fname, "average must be \"macro\", \"micro\", \"weighted\" or \"none\", got " .. tostring(a))
  end
  return a
end

local function f64(list) return vtl.tensor(list, {dtype = "f64"}) end

local function mean(l)
  local s = 0.0
  for i = 1, #l do s = s + l[i] end
  return s / #l
end

local function weighted_mean(l, w)
  local s, sw = 0.0, 0
  for i = 1, #l do s = s + l[i] * w[i]; sw = sw + w[i] end
  return s / sw
end

-- precision, recall, F1 lists (per class, or one entry for "micro") as scikit-learn computes them.
local function prf(tp, np, nt, z)
  local p, r, f = {}, {}, {}
  for c = 1, #tp do
    p[c] = np[c] == 0 and z or tp[c] / np[c]
    r[c] = nt[c] == 0 and z or tp[c] / nt[c]
    local den = p[c] + r[c]
    f[c] = den == 0 and 0.0 or 2 * p[c] * r[c] / den
  end
  return p, r, f
end

local function sum(l)
  local s = 0
  for i = 1, #l do s = s + l[i] end
  return s
end

-- The three scores averaged as `average` says: numbers, or f64 tensors for "none".
local function prf_average(d, average, z)
  local tp, np, nt = counts(d)
  if average == "micro" then
    local p, r, f = prf({sum(tp)}, {sum(np)}, {sum(nt)}, z)
    return p[1], r[1], f[1], nt
  end
  local p, r, f = prf(tp, np, nt, z)
  if average == "none" then return f64(p), f64(r), f64(f), nt end
  if average == "weighted" then return weighted_mean(p, nt), weighted_mean(r, nt), weighted_mean(f, nt), nt end
  return mean(p), mean(r), mean(f), nt
end

local function prf_metric(fname, which)
  return function(pred, target, opts)
    opts = check_opts(fname, opts)
    local average = check_average(fname, opts, "macro")
    local z = zero_division(fname, opts)
    local d = prepare(fname, pred, target, opts)
    return (select(which, prf_average(d, average, z)))
  end
end

---Precision (tp / predicted), per class or averaged; a class never predicted scores
---opts.zero_division (0).
---@param pred vtl.Tensor|integer[] class numbers (N) or scores (N×K)
---@param target vtl.Tensor|integer[] class numbers 1..K (N)
---@param opts? {average?: "macro"|"micro"|"weighted"|"none", num_classes?: integer, zero_division?: 0|1}
---@return number|vtl.Tensor
M.precision = prf_metric("precision", 1)

---Recall (tp / actual), per class or averaged; a class absent from target scores
---opts.zero_division (0).
---@param pred vtl.Tensor|integer[]
---@param target vtl.Tensor|integer[]
---@param opts? {average?: "macro"|"micro"|"weighted"|"none", num_classes?: integer, zero_division?: 0|1}
---@return number|vtl.Tensor
M.recall = prf_metric("recall", 2)

---F1 score (harmonic mean of precision and recall, 0 where both are 0), per class or averaged.
---@param pred vtl.Tensor|integer[]
---@param target vtl.Tensor|integer[]
---@param opts? {average?: "macro"|"micro"|"weighted"|"none", num_classes?: integer, zero_division?: 0|1}
---@return number|vtl.Tensor
M.f1 = prf_metric("f1", 3)

---Fraction of samples whose predicted class is the target; with opts.topk = k (scores only),
---fraction whose target is among the k highest scores (fewer than k classes score strictly
---higher, so ties count in the target's favour).
---@param pred vtl.Tensor|integer[]
---@param target vtl.Tensor|integer[]
---@param opts? {topk?: integer, num_classes?: integer}
---@return number
function M.accuracy(pred, target, opts)
  opts = check_opts("accuracy", opts)
  local k = opts.topk
  if k ~= nil and (math.type(k) ~= "integer" or k < 1) then
    fail("accuracy", "topk must be a positive integer, got " .. tostring(k))
  end
  local d = prepare("accuracy", pred, target, opts, k ~= nil and k > 1)
  local hits = 0
  if k ~= nil and k > 1 then
    -- a hit when fewer than k classes score strictly higher than the target
    local ts = d.scores:gather(2, vtl.tensor(d.target, {dtype = "i64"}):view(d.n, 1))
    hits = d.scores:gt(ts):sum(2):lt(k):sum():item()
  else
    for i = 1, d.n do if d.pred[i] == d.target[i] then hits = hits + 1 end end
  end
  return hits / d.n
end

---Mean recall over the classes present in target (scikit-learn's balanced_accuracy_score).
---@param pred vtl.Tensor|integer[]
---@param target vtl.Tensor|integer[]
---@param opts? {num_classes?: integer}
---@return number
function M.balanced_accuracy(pred, target, opts)
  opts = check_opts("balanced_accuracy", opts)
  local d = prepare("balanced_accuracy", pred, target, opts)
  local tp, _, nt = counts(d)
  local r = {}
  for c = 1, d.k do if nt[c] > 0 then r[#r + 1] = tp[c] / nt[c] end end
  return mean(r)
end

local NORMALIZE = {["true"] = true, pred = true, all = true}

---Confusion matrix K×K, rows the true class, columns the predicted class: i64 counts, or f64
---fractions with normalize = "true" (rows sum to 1), "pred" (columns sum to 1) or "all"; a row
---or column with no samples stays 0.
---@param pred vtl.Tensor|integer[]
---@param target vtl.Tensor|integer[]
---@param opts? {num_classes?: integer, normalize?: "true"|"pred"|"all"}
---@return vtl.Tensor
function M.confusion_matrix(pred, target, opts)
  opts = check_opts("confusion_matrix", opts)
  local norm = opts.normalize
  if norm ~= nil and not NORMALIZE[norm] then
    fail("confusion_matrix", "normalize must be nil, \"true\", \"pred\" or \"all\", got " .. tostring(norm))
  end
  local d = prepare("confusion_matrix", pred, target, opts)
  local k = d.k
  local cm = {}
  for i = 1, k do
    local row = {}
    for j = 1, k do row[j] = 0 end
    cm[i] = row
  end
  for i = 1, d.n do
    local row = cm[d.target[i]]
    row[d.pred[i]] = row[d.pred[i]] + 1
  end
  if norm == nil then return vtl.tensor(cm, {dtype = "i64"}) end
  local rows, cols = {}, {}
  for i = 1, k do rows[i], cols[i] = 0, 0 end
  for i = 1, k do
    for j = 1, k do rows[i] = rows[i] + cm[i][j]; cols[j] = cols[j] + cm[i][j] end
  end
  local out = {}
  for i = 1, k do
    local row = {}
    for j = 1, k do
      local den = norm == "true" and rows[i] or norm == "pred" and cols[j] or d.n
      row[j] = den == 0 and 0.0 or cm[i][j] / den
    end
    out[i] = row
  end
  return vtl.tensor(out, {dtype = "f64"})
end

local function check_digits(fname, opts)
  local digits = opts.digits or 2
  if math.type(digits) ~= "integer" or digits < 0 or digits > 15 then
    fail(fname, "digits must be an integer in 0..15, got " .. tostring(digits))
  end
  return digits
end

---Per-class precision, recall, F1 and support with accuracy and macro/weighted averages, as
---scikit-learn's classification_report with labels 1..K. The returned table holds
---`classes` (one {name, precision, recall, f1, support} per class), `accuracy`,
---`macro_avg` and `weighted_avg` ({precision, recall, f1, support}) and `text`, the report
---laid out as scikit-learn prints it (whose accuracy row reads "micro avg" when a class is in
---neither pred nor target).
---@param pred vtl.Tensor|integer[]
---@param target vtl.Tensor|integer[]
---@param opts? {class_names?: string[], digits?: integer, num_classes?: integer, zero_division?: 0|1}
---@return table
function M.classification_report(pred, target, opts)
  local fname = "classification_report"
  opts = check_opts(fname, opts)
  local digits = check_digits(fname, opts)
  local z = zero_division(fname, opts)
  local names = opts.class_names
  if names ~= nil and type(names) ~= "table" then fail(fname, "class_names must be a list of strings") end
  if names and opts.num_classes == nil and not (vtl.is_tensor(pred) and FLOAT_DTYPES[pred.dtype]) then
    opts = setmetatable({num_classes = #names}, {__index = opts})
  end
  local d = prepare(fname, pred, target, opts)
  if names and #names ~= d.k then
    fail(fname, string.format("class_names has %d names for %d classes", #names, d.k))
  end
  local tp, np, nt = counts(d)
  local p, r, f = prf(tp, np, nt, z)
  local rep = {classes = {}}
  local width = #"weighted avg"
  for c = 1, d.k do
    local name = names and names[c] or tostring(c)
    if type(name) ~= "string" then fail(fname, string.format("class_names[%d] must be a string", c)) end
    if #name > width then width = #name end
    rep.classes[c] = {name = name, precision = p[c], recall = r[c], f1 = f[c], support = nt[c]}
  end
  local _, _, mf = prf({sum(tp)}, {sum(np)}, {sum(nt)}, z)
  rep.accuracy = mf[1]
  rep.macro_avg = {precision = mean(p), recall = mean(r), f1 = mean(f), support = d.n}
  rep.weighted_avg = {precision = weighted_mean(p, nt), recall = weighted_mean(r, nt), f1 = weighted_mean(f, nt), support = d.n}
  if digits > width then width = digits end
  local num = "%9." .. digits .. "f"
  local row_fmt = "%" .. width .. "s " .. (" " .. num):rep(3) .. " %9d\n"
  local lines = {string.format("%" .. width .. "s " .. (" %9s"):rep(4), "", "precision", "recall", "f1-score", "support"), "\n\n"}
  for _, c in ipairs(rep.classes) do
    lines[#lines + 1] = string.format(row_fmt, c.name, c.precision, c.recall, c.f1, c.support)
  end
  lines[#lines + 1] = "\n"
  local all_seen = true -- scikit-learn prints "micro avg" when a class is in neither pred nor target
  for c = 1, d.k do if np[c] + nt[c] == 0 then all_seen = false end end
  if all_seen then
    lines[#lines + 1] = string.format("%" .. width .. "s " .. (" %9s"):rep(2) .. " " .. num .. " %9d\n", "accuracy", "", "", rep.accuracy, d.n)
  else
    lines[#lines + 1] = string.format(row_fmt, "micro avg", rep.accuracy, rep.accuracy, rep.accuracy, d.n)
  end
  local a = rep.macro_avg
  lines[#lines + 1] = string.format(row_fmt, "macro avg", a.precision, a.recall, a.f1, a.support)
  a = rep.weighted_avg
  lines[#lines + 1] = string.format(row_fmt, "weighted avg", a.precision, a.recall, a.f1, a.support)
  rep.text = table.concat(lines)
  return rep
end

-- ---- ranking metrics (scores per class) ----

-- Scores and targets for the ranking metrics: a binary problem (1-D scores for class 2, or two
-- columns) or a K-column one. Returns d (with d.k) and the f64 score columns (N, 1 or K).
local function prepare_ranking(fname, scores, target, opts)
  local k = check_num_classes(fname, opts)
  if not vtl.is_tensor(scores) or not FLOAT_DTYPES[scores.dtype] then
    fail(fname, "scores must be a float tensor (N,K) or (N), got " .. (vtl.is_tensor(scores) and ("dtype " .. scores.dtype) or type(scores)))
  end
  local t = int_list(fname, "target", target)
  local s = scores
  if s.ndim == 1 then
    if k and k ~= 2 then fail(fname, "1-D scores are for two classes, but num_classes = " .. k) end
    s = s:reshape({-1, 1})
    k = 2
  elseif s.ndim == 2 then
    if k and k ~= s.shape[2] then
      fail(fname, string.format("num_classes = %d but scores have %d columns", k, s.shape[2]))
    end
    k = s.shape[2]
    if k < 2 then fail(fname, "scores need at least 2 columns, got shape " .. shape_str(s)) end
    if k == 2 then s = s:narrow(2, 2, 1) end
  else
    fail(fname, "scores must be (N,K) or (N), got shape " .. shape_str(s))
  end
  if s.shape[1] ~= #t then fail(fname, string.format("scores have %d samples but target has %d", s.shape[1], #t)) end
  if #t == 0 then fail(fname, "no samples (scores and target are empty)") end
  check_range(fname, "target", t, k)
  return {target = t, n = #t, k = k, binary = k == 2}, s:to("f64")
end

-- Sorts column c of the scores (highest first) and calls fn(tp, fp) at the end of each run of
-- equal scores (the distinct thresholds); returns the numbers of positives (target == cls) and
-- negatives. One column at a time keeps memory at N values for any K.
local function sweep(d, s, c, cls, fn)
  local v, i = s:select(2, c):sort(1, true)
  local vals, idx = v:totable(), i:totable()
  local tp, fp, n = 0, 0, d.n
  local t = d.target
  for j = 1, n do
    if t[idx[j]] == cls then tp = tp + 1 else fp = fp + 1 end
    if j == n or vals[j + 1] ~= vals[j] then fn(tp, fp) end
  end
  return tp, n - tp
end

-- Area under the ROC curve for column c against class cls (trapezoids between thresholds, ties
-- as diagonal steps), NaN when the class has no positives or no negatives.
local function auc_column(d, s, c, cls)
  local area, ptp, pfp = 0, 0, 0
  local pos, neg = sweep(d, s, c, cls, function(tp, fp)
    area = area + (fp - pfp) * (tp + ptp)
    ptp, pfp = tp, fp
  end)
  if pos == 0 or neg == 0 then return 0 / 0, pos end
  return area / (2.0 * pos * neg), pos
end

-- Average precision for column c against class cls: sum over thresholds of
-- (recall step) × precision; 0 when the class has no positives (scikit-learn).
local function ap_column(d, s, c, cls)
  local npos = 0
  for i = 1, d.n do if d.target[i] == cls then npos = npos + 1 end end
  if npos == 0 then return 0.0, 0 end
  local ap, prev = 0.0, 0.0
  sweep(d, s, c, cls, function(tp, fp)
    local rc = tp / npos
    ap = ap + (rc - prev) * (tp / (tp + fp))
    prev = rc
  end)
  return ap, npos
end

local function ranking_metric(fname, column, skip_nan)
  return function(scores, target, opts)
    opts = check_opts(fname, opts)
    local average = opts.average or "macro"
    if average ~= "macro" and average ~= "weighted" and average ~= "none" then
      fail(fname, "average must be \"macro\", \"weighted\" or \"none\", got " .. tostring(average))
    end
    local d, s = prepare_ranking(fname, scores, target, opts)
    if d.binary then return (column(d, s, 1, 2)) end
    local per, support = {}, {}
    for c = 1, d.k do per[c], support[c] = column(d, s, c, c) end
    if average == "none" then return f64(per) end
    local s, sw, cnt = 0.0, 0, 0
    for c = 1, d.k do
      if not (skip_nan and per[c] ~= per[c]) then
        local w = average == "weighted" and support[c] or 1
        s, sw, cnt = s + per[c] * w, sw + w, cnt + 1
      end
    end
    if cnt == 0 then return 0 / 0 end
    if sw == 0 then return 0.0 end
    return s / sw
  end
end

---ROC AUC. Two classes (scores N for class 2, or N×2 where column 2 is used): the binary AUC
---of class 2. K > 2: one-vs-rest AUC of each column against its class, averaged ("macro"),
---weighted by class support ("weighted") or per class ("none", f64 tensor). Only the order of
---each column matters, so logits work as well as probabilities. A class absent from target
---(or the only class present) has no AUC: NaN per class, left out of the averages.
---@param scores vtl.Tensor (N,K) or (N)
---@param target vtl.Tensor|integer[]
---@param opts? {average?: "macro"|"weighted"|"none", num_classes?: integer}
---@return number|vtl.Tensor
M.roc_auc = ranking_metric("roc_auc", auc_column, true)

---Average precision (scikit-learn's average_precision_score: the step-wise sum over score
---thresholds of (R_n - R_{n-1}) · P_n, no interpolation), per class one-vs-rest and averaged
---("macro", "weighted" by support, "none"); two classes: that of class 2. A class absent from
---target scores 0, as in scikit-learn.
---@param scores vtl.Tensor (N,K) or (N)
---@param target vtl.Tensor|integer[]
---@param opts? {average?: "macro"|"weighted"|"none", num_classes?: integer}
---@return number|vtl.Tensor
M.average_precision = ranking_metric("average_precision", ap_column, false)

---Expected calibration error from probabilities: confidences (the largest probability of each
---row) are put in n_bins equal-width bins ((b-1)/n, b/n] (a confidence of 0 in the first);
---ECE = sum over bins of (bin size / N) · |accuracy in bin - mean confidence in bin|, the
---prediction being the argmax. Bin edges are b · (1/n), as numpy.linspace(0, 1, n+1).
---@param probs vtl.Tensor (N,K) probabilities
---@param target vtl.Tensor|integer[]
---@param opts? {n_bins?: integer}
---@return number
function M.expected_calibration_error(probs, target, opts)
  local fname = "expected_calibration_error"
  opts = check_opts(fname, opts)
  local nb = opts.n_bins or 15
  if math.type(nb) ~= "integer" or nb < 1 then fail(fname, "n_bins must be a positive integer, got " .. tostring(nb)) end
  local d = prepare(fname, probs, target, {num_classes = opts.num_classes}, true)
  local conf = d.scores:to("f64"):max(2):totable()
  for i = 1, d.n do
    if not (conf[i] >= 0 and conf[i] <= 1) then
      fail(fname, string.format("probs must be probabilities in [0,1] (softmax of the logits); row %d has largest value %s", i, tostring(conf[i])))
    end
  end
  local step = 1.0 / nb
  local edge = {}
  for b = 0, nb - 1 do edge[b] = b * step end
  edge[nb] = 1.0
  local cnt, correct, csum = {}, {}, {}
  for b = 1, nb do cnt[b], correct[b], csum[b] = 0, 0, 0.0 end
  for i = 1, d.n do
    local c = conf[i]
    local b = math.min(math.max(math.ceil(c * nb), 1), nb)
    while b > 1 and c <= edge[b - 1] do b = b - 1 end
    while b < nb and c > edge[b] do b = b + 1 end
    cnt[b] = cnt[b] + 1
    csum[b] = csum[b] + c
    if d.pred[i] == d.target[i] then correct[b] = correct[b] + 1 end
  end
  local ece = 0.0
  for b = 1, nb do
    if cnt[b] > 0 then ece = ece + cnt[b] / d.n * abs(correct[b] / cnt[b] - csum[b] / cnt[b]) end
  end
  return ece
end

-- ---- names for the Learner ----

-- Softmax of score rows unless they already look like probabilities (non-negative, rows summing
-- to 1 within 1e-3), for the ranking and calibration metrics fed with logits.
local function as_probs(s)
  if not vtl.is_tensor(s) or not FLOAT_DTYPES[s.dtype] or s.ndim ~= 2 or s.shape[1] == 0 then return s end
  local rs = s:to("f64"):sum(2)
  if s:min():item() >= 0 and (rs - 1):abs():max():item() <= 1e-3 then return s end
  return require("vtl.nn.functional").softmax(s:to("f64"), 2)
end

local function averaged(fn, average)
  return function(pred, target, opts)
    local o = {average = average}
    for k, v in pairs(opts or {}) do o[k] = o[k] or v end
    return fn(pred, target, o)
  end
end

local NAMED = {
  accuracy = M.accuracy,
  balanced_accuracy = M.balanced_accuracy,
  ece = function(p, t, o) return M.expected_calibration_error(as_probs(p), t, o) end,
}
for _, avg in ipairs {"macro", "micro", "weighted"} do
  NAMED["precision_" .. avg] = averaged(M.precision, avg)
  NAMED["recall_" .. avg] = averaged(M.recall, avg)
  NAMED["f1_" .. avg] = averaged(M.f1, avg)
end
for _, avg in ipairs {"macro", "weighted"} do
  NAMED["roc_auc_" .. avg] = function(p, t, o) return averaged(M.roc_auc, avg)(as_probs(p), t, o) end
  NAMED["average_precision_" .. avg] = function(p, t, o) return averaged(M.average_precision, avg)(as_probs(p), t, o) end
end
local ALIASES = {roc_auc = "roc_auc_macro", top1 = "accuracy", expected_calibration_error = "ece"}

---The metric called `name` as a function(pred, target, opts) → number, and its label (the
---name with its averaging spelled out). Names: "accuracy", "top<k>" (top-k accuracy, e.g.
---"top5"), "balanced_accuracy", "precision_<avg>", "recall_<avg>", "f1_<avg>" (avg = macro,
---micro, weighted), "roc_auc_macro", "roc_auc_weighted" ("roc_auc" = "roc_auc_macro"),
---"average_precision_macro", "average_precision_weighted", "ece". The ranking metrics and ece
---take the softmax of rows that are not already probabilities.
---@param name string
---@return fun(pred: any, target: any, opts?: table): number, string
function M.get(name)
  if type(name) ~= "string" then fail("get", "name must be a string, got " .. type(name)) end
  local label = ALIASES[name] or name
  local fn = NAMED[label]
  if fn then return fn, label end
  local k = name:match("^top(%d+)$")
  if k then
    k = math.tointeger(tonumber(k))
    if k and k >= 1 then
      return function(p, t, o)
        local opts = {topk = k}
        for key, v in pairs(o or {}) do opts[key] = opts[key] or v end
        return M.accuracy(p, t, opts)
      end, "top" .. k .. "_accuracy"
    end
  end
  local known = {}
  for n in pairs(NAMED) do known[#known + 1] = n end
  for n in pairs(ALIASES) do known[#known + 1] = n end
  table.sort(known)
  fail("get", "unknown metric '" .. name .. "' (known: " .. table.concat(known, ", ") .. ", top<k>)")
end

-- ---- subgroup audit ----

---Each metric computed within each group of samples, and per metric the largest gap between
---groups. groups: a group key per sample (integer tensor, or a list of integers or strings).
---Returns {groups = {[key] = {n = count, [metric] = value}}, order = sorted keys,
---gaps = {[metric] = {gap =, max_group =, max =, min_group =, min =}}}; groups where a metric is
---NaN are left out of its gap. All groups share the classes 1..K of the whole set.
---@param pred vtl.Tensor|integer[]
---@param target vtl.Tensor|integer[]
---@param groups vtl.Tensor|(integer|string)[]
---@param opts? {metrics?: string[], num_classes?: integer}
---@return table
function M.by_group(pred, target, groups, opts)
  local fname = "by_group"
  opts = check_opts(fname, opts)
  local names = opts.metrics or {"accuracy", "f1_macro"}
  if type(names) ~= "table" or #names == 0 then fail(fname, "metrics must be a non-empty list of metric names") end
  local fns = {}
  for i, n in ipairs(names) do
    local ok, fn = pcall(M.get, n)
    if not ok then fail(fname, "metrics[" .. i .. "]: " .. tostring(fn)) end
    fns[i] = fn
  end
  local d = prepare(fname, pred, target, opts)
  local g
  if vtl.is_tensor(groups) then
    if not INT_DTYPES[groups.dtype] or groups.ndim ~= 1 then
      fail(fname, "groups must be a 1-D integer tensor or a list of keys, got dtype " .. groups.dtype .. " shape " .. shape_str(groups))
    end
    g = groups:totable()
  elseif type(groups) == "table" then
    g = groups
    for i = 1, #g do
      local tv = type(g[i])
      if tv ~= "string" and math.type(g[i]) ~= "integer" then
        fail(fname, string.format("groups[%d] must be an integer or a string, got %s", i, tostring(g[i])))
      end
    end
  else
    fail(fname, "groups must be a tensor or a list, got " .. type(groups))
  end
  if #g ~= d.n then fail(fname, string.format("groups has %d entries but target has %d", #g, d.n)) end
  local members, order = {}, {}
  for i = 1, d.n do
    local key = g[i]
    if not members[key] then members[key] = {}; order[#order + 1] = key end
    local m = members[key]
    m[#m + 1] = i
  end
  table.sort(order, function(a, b)
    if type(a) == type(b) then return a < b end
    return type(a) == "number"
  end)
  local out = {groups = {}, order = order, gaps = {}}
  for _, key in ipairs(order) do
    local idx = members[key]
    local sub_t, sub_p = {}, nil
    for j, i in ipairs(idx) do sub_t[j] = d.target[i] end
    if d.scores then
      sub_p = d.scores:index_select(1, vtl.tensor(idx, {dtype = "i64"}))
    else
      sub_p = {}
      for j, i in ipairs(idx) do sub_p[j] = d.pred[i] end
    end
    local row = {n = #idx}
    for m, n in ipairs(names) do row[n] = fns[m](sub_p, sub_t, {num_classes = d.k}) end
    out.groups[key] = row
  end
  for _, n in ipairs(names) do
    local hi, lo
    for _, key in ipairs(order) do
      local v = out.groups[key][n]
      if v == v then
        if not hi or v > out.groups[hi][n] then hi = key end
        if not lo or v < out.groups[lo][n] then lo = key end
      end
    end
    if hi then
      local a, b = out.groups[hi][n], out.groups[lo][n]
      out.gaps[n] = {gap = a - b, max_group = hi, max = a, min_group = lo, min = b}
    end
  end
  return out
end

-- Detection metrics live in their own file; their functions are part of vtl.metrics.
local det = require "vtl.metrics.detection"
for k, v in pairs(det) do M[k] = v end

return M
