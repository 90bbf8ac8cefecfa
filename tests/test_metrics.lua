-- vtl.metrics against scikit-learn, pycocotools and torchvision (tests/ref/gen_metrics.py), and
-- bad input. Classification metrics must agree to 1e-9, mAP to 1e-6.
local T = require "testlib"
local R = require "reflib"
local vtl = require "vtl"
local metrics = vtl.metrics
local test = T.test

local CLS_TOL, DET_TOL = 1e-9, 1e-6

local function i64(l) return vtl.tensor(l, {dtype = "i64"}) end

local function close(got, want, tol, what)
  if type(want) == "table" and want.dtype then return R.check(got, want, tol, what) end
  T.close(got, want, tol, what)
end

local function check_cls(c)
  local w = c.want
  local target = R.tensor(c.target)
  local inputs = {{"class numbers", R.tensor(c.pred)}}
  if c.scores then inputs[2] = {"scores", R.tensor(c.scores)} end
  for _, input in ipairs(inputs) do
    local how, pred = input[1], input[2]
    local o = {num_classes = c.k}
    local function tag(s) return c.name .. " (" .. how .. "): " .. s end
    close(metrics.accuracy(pred, target, o), w.accuracy, CLS_TOL, tag("accuracy"))
    close(metrics.balanced_accuracy(pred, target, o), w.balanced_accuracy, CLS_TOL, tag("balanced_accuracy"))
    for _, z in ipairs {0, 1} do
      for _, avg in ipairs {"macro", "micro", "weighted", "none"} do
        local opts = {num_classes = c.k, average = avg, zero_division = z}
        local key = avg .. "_" .. z
        close(metrics.precision(pred, target, opts), w["p_" .. key], CLS_TOL, tag("precision " .. key))
        close(metrics.recall(pred, target, opts), w["r_" .. key], CLS_TOL, tag("recall " .. key))
        close(metrics.f1(pred, target, opts), w["f_" .. key], CLS_TOL, tag("f1 " .. key))
      end
    end
    R.check(metrics.confusion_matrix(pred, target, o), w.cm, 0, tag("confusion_matrix"))
    for _, norm in ipairs {"true", "pred", "all"} do
      R.check(metrics.confusion_matrix(pred, target, {num_classes = c.k, normalize = norm}), w["cm_" .. norm],
        CLS_TOL, tag("confusion_matrix normalize=" .. norm))
    end
    local rep = metrics.classification_report(pred, target, {num_classes = c.k, class_names = c.class_names, digits = 3})
    T.eq(rep.text, w.report.text, tag("report text"))
    T.eq(metrics.classification_report(pred, target, o).text, w.report.text_default, tag("report text, default names"))
    T.eq(#rep.classes, c.k, tag("report rows"))
    for i, row in ipairs(w.report.classes) do
      local got = rep.classes[i]
      T.eq(got.name, row.name, tag("report name"))
      T.eq(got.support, row.support, tag("report support"))
      close({got.precision, got.recall, got.f1}, {row.precision, row.recall, row.f1}, CLS_TOL, tag("report row " .. i))
    end
    close(rep.accuracy, w.report.accuracy, CLS_TOL, tag("report accuracy"))
    for _, key in ipairs {"macro_avg", "weighted_avg"} do
      local g, e = rep[key], w.report[key]
      close({g.precision, g.recall, g.f1, g.support}, {e.precision, e.recall, e.f1, e.support}, CLS_TOL, tag(key))
    end
  end
  if c.scores then
    local scores = R.tensor(c.scores)
    for kk = 1, c.k do
      if w["top" .. kk] then
        close(metrics.accuracy(scores, target, {topk = kk}), w["top" .. kk], CLS_TOL, c.name .. " top" .. kk)
        close(metrics.get("top" .. kk)(scores, target), w["top" .. kk], CLS_TOL, c.name .. " get top" .. kk)
      end
    end
    -- without num_classes the scores' width gives K
    close(metrics.f1(scores, target, {average = "macro"}), w.f_macro_0, CLS_TOL, c.name .. " f1 without num_classes")
    close(metrics.get("f1_weighted")(scores, target), w.f_weighted_0, CLS_TOL, c.name .. " get f1_weighted")
    close(metrics.get("precision_micro")(scores, target), w.p_micro_0, CLS_TOL, c.name .. " get precision_micro")
    close(metrics.get("recall_macro")(scores, target), w.r_macro_0, CLS_TOL, c.name .. " get recall_macro")
    close(metrics.get("balanced_accuracy")(scores, target), w.balanced_accuracy, CLS_TOL, c.name .. " get balanced_accuracy")
  end
end

local function check_rank(c)
  local w, scores, target = c.want, R.tensor(c.scores), R.tensor(c.target)
  if c.k == 2 then
    close(metrics.roc_auc(scores, target), w.auc, CLS_TOL, c.name .. " roc_auc")
    close(metrics.average_precision(scores, target), w.ap, CLS_TOL, c.name .. " average_precision")
    return
  end
  for _, avg in ipairs {"macro", "weighted", "none"} do
    close(metrics.roc_auc(scores, target, {average = avg}), w["auc_" .. avg], CLS_TOL, c.name .. " roc_auc " .. avg)
    close(metrics.average_precision(scores, target, {average = avg}), w["ap_" .. avg], CLS_TOL,
      c.name .. " average_precision " .. avg)
  end
  if w.ece15 then
    close(metrics.expected_calibration_error(scores, target), w.ece15, CLS_TOL, c.name .. " ece 15 bins")
    close(metrics.expected_calibration_error(scores, target, {n_bins = 7}), w.ece7, CLS_TOL, c.name .. " ece 7 bins")
    close(metrics.expected_calibration_error(scores, target, {n_bins = 4}), w.ece4, CLS_TOL, c.name .. " ece 4 bins")
  end
  if not c.probs then return end -- metrics.get takes the softmax of rows that are not probabilities
  close(metrics.get("roc_auc")(scores, target), w.auc_macro, CLS_TOL, c.name .. " get roc_auc")
  close(metrics.get("roc_auc_weighted")(scores, target), w.auc_weighted, CLS_TOL, c.name .. " get roc_auc_weighted")
end

local function check_group(c)
  local scores, target = R.tensor(c.scores), R.tensor(c.target)
  local names = {"accuracy", "f1_macro", "balanced_accuracy", "top2"}
  local r = metrics.by_group(scores, target, c.groups, {metrics = names})
  local keys = R.sorted_keys(c.want)
  T.eq(table.concat(r.order, ","), table.concat(keys, ","), "group order")
  for _, g in ipairs(keys) do
    T.eq(r.groups[g].n, c.want[g].n, g .. " size")
    for _, n in ipairs(names) do close(r.groups[g][n], c.want[g][n], CLS_TOL, g .. " " .. n) end
  end
  for _, n in ipairs(names) do
    local hi, lo
    for _, g in ipairs(keys) do
      if not hi or c.want[g][n] > c.want[hi][n] then hi = g end
      if not lo or c.want[g][n] < c.want[lo][n] then lo = g end
    end
    local gap = r.gaps[n]
    close(gap.gap, c.want[hi][n] - c.want[lo][n], CLS_TOL, n .. " gap")
    T.eq(gap.max_group, hi, n .. " best group")
    T.eq(gap.min_group, lo, n .. " worst group")
  end
  -- class numbers instead of scores, integer group keys
  local pred = scores:argmax(2)
  local gi = {}
  for i, g in ipairs(c.groups) do gi[i] = ({east = 1, north = 2, south = 3})[g] end
  local r2 = metrics.by_group(pred, target, i64(gi), {metrics = {"accuracy"}, num_classes = c.k})
  close(r2.groups[2].accuracy, c.want.north.accuracy, CLS_TOL, "integer keys")
end

local function check_iou(c)
  local a, b, want = R.tensor(c.a), R.tensor(c.b), c.want
  local got = metrics.box_iou(a, b, {format = c.format})
  R.check(got, want, want.dtype == "f64" and 1e-12 or 1e-6, c.name)
end

local function check_mask(c)
  R.check(metrics.mask_iou(R.tensor(c.a), R.tensor(c.b)), c.want, 1e-12, c.name)
end

local function images(list)
  local out = {}
  for i, e in ipairs(list) do
    local t = {}
    for k, v in pairs(e) do t[k] = (type(v) == "table" and v.dtype) and R.tensor(v) or v end
    out[i] = t
  end
  return out
end

local function check_det(c)
  local r = metrics.mean_average_precision(images(c.dets), images(c.gts), {format = c.format, num_classes = c.k})
  for _, key in ipairs {"map", "map_50", "map_75", "map_small", "map_medium", "map_large",
                        "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"} do
    close(r[key], c.want[key], DET_TOL, c.name .. " " .. key)
  end
  T.eq(#r.per_class, c.k, c.name .. " per_class entries")
  for k = 1, c.k do
    for _, key in ipairs {"map", "map_50", "map_75", "mar_100"} do
      close(r.per_class[k][key], c.want.per_class[k][key], DET_TOL, c.name .. " class " .. k .. " " .. key)
    end
  end
end

local CHECK = {cls = check_cls, rank = check_rank, group = check_group, iou = check_iou, mask = check_mask, det = check_det}

R.cases("metrics_ref", 20, function(c) CHECK[c.kind](c) end)

-- ---- behaviour without a reference ----

test("metrics: the class set comes from num_classes, the scores or the largest class number", function()
  local pred, target = i64 {1, 2, 2}, i64 {1, 2, 1}
  T.eq(metrics.confusion_matrix(pred, target).shape[1], 2)
  T.eq(metrics.confusion_matrix(pred, target, {num_classes = 4}).shape[1], 4)
  -- a fourth class in neither counts 0 in the macro average
  T.close(metrics.recall(pred, target, {num_classes = 4}), (0.5 + 1) / 4, 1e-15)
  T.close(metrics.accuracy({1, 2, 2}, {1, 2, 1}), 2 / 3, 1e-15)
  local ece = metrics.expected_calibration_error(vtl.tensor({{1.0, 0.0}, {0.0, 1.0}}), i64 {1, 2})
  T.eq(ece, 0.0)
  local perfect = vtl.tensor({{0.9, 0.1}, {0.2, 0.8}, {0.3, 0.7}})
  T.eq(metrics.roc_auc(perfect, i64 {1, 2, 2}), 1.0)
end)

test("metrics: roc_auc with a class absent from target is NaN for it and left out of the mean", function()
  local s = vtl.tensor({{0.7, 0.2, 0.1}, {0.1, 0.8, 0.1}, {0.6, 0.3, 0.1}, {0.2, 0.2, 0.6}})
  local per = metrics.roc_auc(s, i64 {1, 2, 1, 2}, {average = "none"}):totable()
  T.truthy(per[3] ~= per[3], "class 3 NaN")
  T.close(metrics.roc_auc(s, i64 {1, 2, 1, 2}), (per[1] + per[2]) / 2, 1e-15)
end)

test("metrics.get: labels name the averaging; logits give the same ranking metrics as probabilities", function()
  local _, label = metrics.get("roc_auc")
  T.eq(label, "roc_auc_macro")
  T.eq(select(2, metrics.get("top5")), "top5_accuracy")
  T.eq(select(2, metrics.get("f1_macro")), "f1_macro")
  local logits = vtl.tensor({{2.0, -1.0, 0.5}, {0.1, 1.5, -0.3}, {-0.2, 0.3, 2.2}, {1.0, 0.9, 0.8}})
  local y = i64 {1, 2, 3, 2}
  local probs = require("vtl.nn.functional").softmax(logits:to("f64"), 2)
  T.close(metrics.get("roc_auc")(logits, y), metrics.roc_auc(probs, y), 1e-12)
  T.close(metrics.get("ece")(logits, y), metrics.expected_calibration_error(probs, y), 1e-12)
  T.raises(function() metrics.get("f1") end, "metrics.get: unknown metric 'f1'")
  T.raises(function() metrics.get(3) end, "metrics.get: name must be a string")
end)

test("metrics: bad input gives clear errors", function()
  local p, y = i64 {1, 2, 3}, i64 {1, 2, 2}
  local s = vtl.tensor({{0.1, 0.9}, {0.8, 0.2}})
  T.raises(function() metrics.accuracy(p, i64 {1, 2}) end, "metrics.accuracy: pred has 3 samples but target has 2")
  T.raises(function() metrics.accuracy(p, i64 {0, 1, 2}) end, "metrics.accuracy: target[1] = 0 is not a class number in 1..3")
  T.raises(function() metrics.f1(p, y, {num_classes = 2}) end, "metrics.f1: pred[3] = 3 is not a class number in 1..2")
  T.raises(function() metrics.f1(s, i64 {1, 3}) end, "metrics.f1: target[2] = 3 is not a class number in 1..2")
  T.raises(function() metrics.f1(s, i64 {1, 2}, {num_classes = 3}) end, "num_classes = 3 but pred has 2 score columns")
  T.raises(function() metrics.precision(p, vtl.tensor({1.0, 2.0, 2.0})) end, "metrics.precision: target must hold class numbers (an integer tensor), got dtype f32")
  T.raises(function() metrics.recall(p, "abc") end, "metrics.recall: target must be a tensor or a list of class numbers, got string")
  T.raises(function() metrics.recall({1, 2.5}, {1, 2}) end, "metrics.recall: pred[2] must be a class number, got 2.5")
  T.raises(function() metrics.f1(p, y, {average = "samples"}) end, "metrics.f1: average must be")
  T.raises(function() metrics.f1(p, y, {zero_division = "warn"}) end, "metrics.f1: zero_division must be 0 or 1")
  T.raises(function() metrics.f1(p, y, 5) end, "metrics.f1: options must be a table")
  T.raises(function() metrics.accuracy(p, y, {topk = 2}) end, "metrics.accuracy: pred must be scores")
  T.raises(function() metrics.accuracy(s, i64 {1, 2}, {topk = 0}) end, "metrics.accuracy: topk must be a positive integer")
  T.raises(function() metrics.accuracy(vtl.zeros({2, 2, 2}), i64 {1, 2}) end, "metrics.accuracy: pred scores must be 2-D")
  T.raises(function() metrics.accuracy(i64 {}, i64 {}) end, "metrics.accuracy: no samples")
  T.raises(function() metrics.accuracy(p:view(3, 1), y) end, "metrics.accuracy: pred must be 1-D (N)")
  T.raises(function() metrics.confusion_matrix(p, y, {normalize = "rows"}) end, "metrics.confusion_matrix: normalize must be")
  T.raises(function() metrics.classification_report(p, y, {class_names = {"a", "b"}}) end, "metrics.classification_report: pred[3] = 3 is not a class number in 1..2")
  T.raises(function() metrics.classification_report(p, y, {class_names = {"a", "b", 3}}) end, "class_names[3] must be a string")
  T.raises(function() metrics.classification_report(p, y, {digits = -1}) end, "digits must be an integer")
  T.raises(function() metrics.roc_auc(p, y) end, "metrics.roc_auc: scores must be a float tensor")
  T.raises(function() metrics.roc_auc(s, i64 {1, 2, 1}) end, "metrics.roc_auc: scores have 2 samples but target has 3")
  T.raises(function() metrics.average_precision(vtl.zeros({2, 1}), i64 {1, 1}) end, "scores need at least 2 columns")
  T.raises(function() metrics.roc_auc(s, i64 {1, 2}, {average = "micro"}) end, "metrics.roc_auc: average must be")
  T.raises(function() metrics.expected_calibration_error(s, i64 {1, 2}, {n_bins = 0}) end, "n_bins must be a positive integer")
  T.raises(function() metrics.expected_calibration_error(s * 3, i64 {1, 2}) end, "metrics.expected_calibration_error: probs must be probabilities in [0,1]")
  T.raises(function() metrics.by_group(p, y, {1, 2}) end, "metrics.by_group: groups has 2 entries but target has 3")
  T.raises(function() metrics.by_group(p, y, {1, 2, {}}) end, "metrics.by_group: groups[3] must be an integer or a string")
  T.raises(function() metrics.by_group(p, y, {1, 2, 3}, {metrics = {"nope"}}) end, "metrics.by_group: metrics[1]: metrics.get: unknown metric 'nope'")
end)

test("detection metrics: bad input gives clear errors", function()
  local a = vtl.tensor({{0, 0, 10, 10}})
  T.raises(function() metrics.box_iou(a, vtl.zeros({2, 3})) end, "metrics.box_iou: b must have shape (N,4), got {2,3}")
  T.raises(function() metrics.box_iou(a, "x") end, "metrics.box_iou: b must be a tensor (N,4), got string")
  T.raises(function() metrics.box_iou(a, a, {format = "yxyx"}) end, "metrics.box_iou: format must be")
  T.raises(function() metrics.mask_iou(vtl.zeros({1, 2, 2}), vtl.zeros({1, 3, 2})) end, "metrics.mask_iou: masks differ in size")
  T.raises(function() metrics.mask_iou(vtl.zeros({2, 2}), vtl.zeros({1, 2, 2})) end, "metrics.mask_iou: a must be 3-D (N,H,W)")
  T.raises(function() metrics.mask_iou(vtl.zeros({1, 2, 2}), {}) end, "metrics.mask_iou: b must be a tensor (N,H,W), got table")
  local gt = {{boxes = a, labels = i64 {1}}}
  local det = {{boxes = a, scores = vtl.tensor({0.5}), labels = i64 {1}}}
  local map = metrics.mean_average_precision
  T.raises(function() map(det, {}) end, "metrics.mean_average_precision: dets has 1 images but gts has 0")
  T.raises(function() map({{boxes = a, labels = i64 {1}}}, gt) end, "dets[1].scores is missing")
  T.raises(function() map({{boxes = a, scores = vtl.tensor({0.5}), labels = i64 {0}}}, gt) end, "dets[1].labels[1] = 0 is not a class number")
  T.raises(function() map(det, {{boxes = a, labels = i64 {1, 2}}}) end, "gts[1].labels has 2 entries for 1 boxes")
  T.raises(function() map(det, {{boxes = a, labels = vtl.tensor({1.0})}}) end, "gts[1].labels must be an integer tensor")
  T.raises(function() map(det, gt, {num_classes = 0}) end, "num_classes must be a positive integer")
  T.raises(function() map(det, {{boxes = a, labels = i64 {2}}}, {num_classes = 1}) end, "gts[1] has label 2 > num_classes 1")
  T.raises(function() map(det, {5}) end, "gts[1] must be a table")
end)

test("mask_iou takes bool, integer and float masks alike", function()
  local m = {{{1, 0, 1}, {1, 1, 0}}, {{0, 0, 0}, {0, 0, 0}}}
  local want = metrics.mask_iou(vtl.tensor(m, {dtype = "u8"}), vtl.tensor(m, {dtype = "u8"}))
  T.close(want, {{1, 0}, {0, 0}}, 0)
  R.check(metrics.mask_iou(vtl.tensor(m, {dtype = "u8"}):bool(), vtl.tensor(m, {dtype = "f32"})), want, 0, "bool vs f32")
end)

test("mean_average_precision: a perfect detector scores 1, an empty class -1", function()
  local boxes = vtl.tensor({{0, 0, 10, 10}, {50, 50, 150, 150}})
  local r = metrics.mean_average_precision({{boxes = boxes, scores = vtl.tensor({0.9, 0.8}), labels = i64 {1, 2}}, {}},
    {{boxes = boxes, labels = i64 {1, 2}}, {}}, {num_classes = 3})
  T.close(r.map, 1.0, 1e-12) -- pycocotools' precision tp / (tp + fp + eps) stays just below 1
  T.eq(r.map_medium, -1)
  T.eq(r.per_class[3].map, -1)
end)
