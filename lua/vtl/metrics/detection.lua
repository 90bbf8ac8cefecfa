-- Detection metrics: box and mask IoU, and COCO-style mean average precision computed the way
-- pycocotools' COCOeval (iouType "bbox") computes it. Part of vtl.metrics.
--
--   local iou = vtl.metrics.box_iou(a, b, {format = "xyxy"})        -- N×M
--   local r = vtl.metrics.mean_average_precision(dets, gts, {format = "xywh"})
--   print(r.map, r.map_50, r.map_75, r.mar_100, r.per_class[3].map)
local vtl = require "vtl"

local M = {}

local min, max = math.min, math.max

local function fail(fname, msg) error("metrics." .. fname .. ": " .. msg, 0) end

local FLOAT_DTYPES = {f32 = true, f64 = true, f16 = true, bf16 = true}
local FORMATS = {xyxy = true, xywh = true, cxcywh = true}

local function shape_str(t) return "{" .. table.concat(t.shape, ",") .. "}" end

local function check_format(fname, opts, default)
  local f = opts.format or default
  if not FORMATS[f] then
    fail(fname, "format must be \"xyxy\", \"xywh\" or \"cxcywh\", got " .. tostring(opts.format))
  end
  return f
end

local function check_boxes(fname, argname, b)
  if not vtl.is_tensor(b) then fail(fname, argname .. " must be a tensor (N,4), got " .. type(b)) end
  if b.dtype == "bool" then fail(fname, argname .. " must be a numeric tensor, got dtype bool") end
  if b.ndim ~= 2 or b.shape[2] ~= 4 then fail(fname, argname .. " must have shape (N,4), got " .. shape_str(b)) end
end

-- Columns x1, y1, x2, y2 of boxes (N,4) given in `format`, each (N,1).
local function corners(b, format)
  local c1, c2, c3, c4 = b:narrow(2, 1, 1), b:narrow(2, 2, 1), b:narrow(2, 3, 1), b:narrow(2, 4, 1)
  if format == "xyxy" then return c1, c2, c3, c4 end
  if format == "xywh" then return c1, c2, c1 + c3, c2 + c4 end
  local hw, hh = c3 * 0.5, c4 * 0.5
  return c1 - hw, c2 - hh, c1 + hw, c2 + hh
end

---Intersection over union of every box of a (N,4) with every box of b (M,4): an N×M tensor
---of a's dtype (f32 for integer boxes). Boxes in opts.format: "xyxy" (corners, default), "xywh" (corner and size) or
---"cxcywh" (centre and size). Pairs whose union is empty have IoU 0.
---@param a vtl.Tensor (N,4)
---@param b vtl.Tensor (M,4)
---@param opts? {format?: "xyxy"|"xywh"|"cxcywh"}
---@return vtl.Tensor
function M.box_iou(a, b, opts)
  if opts ~= nil and type(opts) ~= "table" then fail("box_iou", "options must be a table, got " .. type(opts)) end
  local format = check_format("box_iou", opts or {}, "xyxy")
  check_boxes("box_iou", "a", a)
  check_boxes("box_iou", "b", b)
  if not FLOAT_DTYPES[a.dtype] then a = a:to("f32") end -- integer boxes give f32 IoUs, as in PyTorch
  if a.dtype ~= b.dtype then b = b:to(a.dtype) end
  local n, m = a.shape[1], b.shape[1]
  if n == 0 or m == 0 then return vtl.zeros({n, m}, {dtype = a.dtype}) end
  local ax1, ay1, ax2, ay2 = corners(a, format)
  local bx1, by1, bx2, by2 = corners(b, format)
  local area_a = (ax2 - ax1) * (ay2 - ay1)                  -- (N,1)
  local area_b = ((bx2 - bx1) * (by2 - by1)):t()           -- (1,M)
  local w = (ax2:minimum(bx2:t()) - ax1:maximum(bx1:t())):clamp(0)
  local h = (ay2:minimum(by2:t()) - ay1:maximum(by1:t())):clamp(0)
  local inter = w * h
  local union = area_a + area_b - inter
  local empty = union:le(0)
  return (inter / union:masked_fill(empty, 1)):masked_fill(empty, 0)
end

---Intersection over union of binary masks: a (N,H,W) against b (M,H,W), nonzero = inside;
---an N×M f64 tensor, 0 where both masks are empty.
---@param a vtl.Tensor (N,H,W)
---@param b vtl.Tensor (M,H,W)
---@return vtl.Tensor
function M.mask_iou(a, b)
  for _, x in ipairs {{"a", a}, {"b", b}} do
    if not vtl.is_tensor(x[2]) then fail("mask_iou", x[1] .. " must be a tensor (N,H,W), got " .. type(x[2])) end
    if x[2].ndim ~= 3 then fail("mask_iou", x[1] .. " must be 3-D (N,H,W), got shape " .. shape_str(x[2])) end
  end
  if a.shape[2] ~= b.shape[2] or a.shape[3] ~= b.shape[3] then
    fail("mask_iou", "masks differ in size: a is " .. shape_str(a) .. ", b is " .. shape_str(b))
  end
  local n, m = a.shape[1], b.shape[1]
  if n == 0 or m == 0 then return vtl.zeros({n, m}, {dtype = "f64"}) end
  local fa = a:ne(0):to("f64"):reshape({n, -1})
  local fb = b:ne(0):to("f64"):reshape({m, -1})
  local inter = fa:matmul(fb:t())
  local union = fa:sum(2, true) + fb:sum(2, true):t() - inter
  local empty = union:le(0)
  return (inter / union:masked_fill(empty, 1)):masked_fill(empty, 0)
end

-- ---- COCO mean average precision ----

-- numpy.linspace(lo, hi, n): i * step + lo, the last exactly hi.
local function linspace(lo, hi, n)
  local step, out = (hi - lo) / (n - 1), {}
  for i = 0, n - 1 do out[i + 1] = i * step + lo end
  out[n] = hi
  return out
end

local IOU_THRS = linspace(0.5, 0.95, 10)
local REC_THRS = linspace(0.0, 1.0, 101)
local MAX_DETS = {1, 10, 100}
local AREA_RNG = {{0, 1e10}, {0, 32 * 32}, {32 * 32, 96 * 96}, {96 * 96, 1e10}} -- all, small, medium, large
local SPACING1 = 2.220446049250313e-16 -- numpy.spacing(1)

-- Rows of a float tensor (N,4) in `format` as {x, y, w, h} lists.
local function xywh_rows(fname, what, b, format)
  check_boxes(fname, what, b)
  local rows = b:to("f64"):totable()
  if format == "xywh" then return rows end
  for i, r in ipairs(rows) do
    if format == "xyxy" then
      rows[i] = {r[1], r[2], r[3] - r[1], r[4] - r[2]}
    else
      rows[i] = {r[1] - r[3] * 0.5, r[2] - r[4] * 0.5, r[3], r[4]}
    end
  end
  return rows
end

-- A per-box vector field of an image entry as a Lua list of n values (nil when absent).
local function vector(fname, what, v, n, kind)
  if v == nil then return nil end
  local l
  if vtl.is_tensor(v) then
    if v.ndim ~= 1 then fail(fname, what .. " must be 1-D, got shape " .. shape_str(v)) end
    if kind == "int" and FLOAT_DTYPES[v.dtype] then fail(fname, what .. " must be an integer tensor, got dtype " .. v.dtype) end
    l = v:totable()
  elseif type(v) == "table" then
    l = v
  else
    fail(fname, what .. " must be a tensor or a list, got " .. type(v))
  end
  if #l ~= n then fail(fname, string.format("%s has %d entries for %d boxes", what, #l, n)) end
  for i = 1, n do
    local x = l[i]
    if kind == "int" then
      if math.type(x) ~= "integer" then fail(fname, string.format("%s[%d] must be an integer, got %s", what, i, tostring(x))) end
    elseif kind == "bool" then
      if type(x) ~= "boolean" and type(x) ~= "number" then fail(fname, string.format("%s[%d] must be a boolean, got %s", what, i, tostring(x))) end
    elseif type(x) ~= "number" then
      fail(fname, string.format("%s[%d] must be a number, got %s", what, i, tostring(x)))
    end
  end
  return l
end

-- One image's boxes: a list of {x, y, w, h, label, score/area/crowd}; checks labels against k.
local function parse_image(fname, what, e, format, is_gt)
  if type(e) ~= "table" then fail(fname, what .. " must be a table {boxes =, labels =, ...}, got " .. type(e)) end
  if e.boxes == nil then
    if e.labels ~= nil and (vtl.is_tensor(e.labels) and e.labels:numel() or #e.labels) > 0 then
      fail(fname, what .. ".boxes is missing")
    end
    return {}
  end
  local rows = xywh_rows(fname, what .. ".boxes", e.boxes, format)
  local n = #rows
  local labels = vector(fname, what .. ".labels", e.labels, n, "int")
  if not labels then fail(fname, what .. ".labels is missing") end
  local scores, areas, crowd
  if is_gt then
    areas = vector(fname, what .. ".areas", e.areas, n, "number")
    crowd = vector(fname, what .. ".iscrowd", e.iscrowd, n, "bool")
  else
    scores = vector(fname, what .. ".scores", e.scores, n, "number")
    if not scores then fail(fname, what .. ".scores is missing") end
  end
  local out = {}
  for i, r in ipairs(rows) do
    if labels[i] < 1 then fail(fname, string.format("%s.labels[%d] = %d is not a class number (classes start at 1)", what, i, labels[i])) end
    local c = crowd and crowd[i]
    out[i] = {x = r[1], y = r[2], w = r[3], h = r[4], label = labels[i],
              score = scores and scores[i],
              area = areas and areas[i] or r[3] * r[4],
              crowd = c == true or (type(c) == "number" and c ~= 0)}
  end
  return out
end

-- IoU of detection d with ground truth g as pycocotools' bbIou: crowd regions count the
-- intersection over the detection's area.
local function iou(d, g)
  local w = min(d.w + d.x, g.w + g.x) - max(d.x, g.x)
  if w <= 0 then return 0.0 end
  local h = min(d.h + d.y, g.h + g.y) - max(d.y, g.y)
  if h <= 0 then return 0.0 end
  local i = w * h
  local da = d.w * d.h
  local u = g.crowd and da or da + g.w * g.h - i
  return i / u
end

-- Stable sort of list by decreasing score.
local function sort_by_score(list)
  local keyed = {}
  for i, d in ipairs(list) do keyed[i] = {d, i} end
  table.sort(keyed, function(a, b)
    if a[1].score ~= b[1].score then return a[1].score > b[1].score end
    return a[2] < b[2]
  end)
  for i, k in ipairs(keyed) do list[i] = k[1] end
  return list
end

-- Matches the detections of one image and class against its ground truths within area range
-- rng (COCOeval.evaluateImg with maxDet = 100); dt is sorted by score and ious[d][g] given.
local function evaluate_img(gt, dt, ious, rng)
  local gig = {}
  for j, g in ipairs(gt) do gig[j] = (g.crowd or g.area < rng[1] or g.area > rng[2]) and 1 or 0 end
  local order = {}
  for j = 1, #gt do order[j] = j end
  table.sort(order, function(a, b) if gig[a] ~= gig[b] then return gig[a] < gig[b] end return a < b end)
  local G, D = #gt, #dt
  local gt_ig, crowd = {}, {}
  for j, o in ipairs(order) do gt_ig[j], crowd[j] = gig[o], gt[o].crowd end
  local dtm, dt_ig = {}, {}
  for t, thr in ipairs(IOU_THRS) do
    local gtm, m_row, ig_row = {}, {}, {}
    for j = 1, G do gtm[j] = false end
    for di = 1, D do
      m_row[di], ig_row[di] = false, false
      local best, m = min(thr, 1 - 1e-10), 0
      local row = ious[di]
      for j = 1, G do
        if not (gtm[j] and not crowd[j]) then
          if m > 0 and gt_ig[m] == 0 and gt_ig[j] == 1 then break end
          local v = row[order[j]]
          if v >= best then best, m = v, j end
        end
      end
      if m > 0 then
        ig_row[di] = gt_ig[m] == 1
        m_row[di] = true
        gtm[m] = true
      end
    end
    for di = 1, D do
      if not m_row[di] then
        local a = dt[di].area
        if a < rng[1] or a > rng[2] then ig_row[di] = true end
      end
    end
    dtm[t], dt_ig[t] = m_row, ig_row
  end
  local scores = {}
  for di = 1, D do scores[di] = dt[di].score end
  return {scores = scores, dtm = dtm, dt_ig = dt_ig, gt_ig = gt_ig}
end

-- Precision at the 101 recall thresholds (per IoU threshold) and final recall for one class,
-- area range and maxDet over the evaluated images (COCOeval.accumulate); nil when the class
-- has no ground truth that counts (pycocotools' -1).
local function accumulate(evals, max_det)
  local entries, gt_ig = {}, 0
  for _, e in ipairs(evals) do
    for di = 1, min(#e.scores, max_det) do entries[#entries + 1] = {e, di, #entries + 1} end
    for _, ig in ipairs(e.gt_ig) do if ig == 0 then gt_ig = gt_ig + 1 end end
  end
  if #evals == 0 or gt_ig == 0 then return nil end
  table.sort(entries, function(a, b)
    local sa, sb = a[1].scores[a[2]], b[1].scores[b[2]]
    if sa ~= sb then return sa > sb end
    return a[3] < b[3]
  end)
  local nd = #entries
  local prec, rec = {}, {}
  for t = 1, #IOU_THRS do
    local tp, fp = 0, 0
    local rc, pr = {}, {}
    for i, en in ipairs(entries) do
      local e, di = en[1], en[2]
      if not e.dt_ig[t][di] then
        if e.dtm[t][di] then tp = tp + 1 else fp = fp + 1 end
      end
      rc[i] = tp / gt_ig
      pr[i] = tp / (fp + tp + SPACING1)
    end
    rec[t] = nd > 0 and rc[nd] or 0
    for i = nd, 2, -1 do if pr[i] > pr[i - 1] then pr[i - 1] = pr[i] end end
    local q, i = {}, 1
    for r, thr in ipairs(REC_THRS) do
      while i <= nd and rc[i] < thr do i = i + 1 end
      q[r] = i <= nd and pr[i] or 0.0
    end
    prec[t] = q
  end
  return {precision = prec, recall = rec}
end

-- Mean of precision (ap) or recall entries over classes with ground truth; -1 when none.
local function summarize(acc, ap, t_sel)
  local s, n = 0.0, 0
  for _, a in pairs(acc) do
    for t = 1, #IOU_THRS do
      if not t_sel or t == t_sel then
        if ap then
          for _, v in ipairs(a.precision[t]) do s, n = s + v, n + 1 end
        else
          s, n = s + a.recall[t], n + 1
        end
      end
    end
  end
  return n == 0 and -1 or s / n
end

local function thr_index(v)
  for t, x in ipairs(IOU_THRS) do if x == v then return t end end
end

---COCO-style detection metrics, as pycocotools' COCOeval with iouType "bbox" computes them:
---IoU thresholds 0.50:0.05:0.95, precision interpolated at 101 recall points, at most
---1/10/100 detections per image and class (the highest scores), area ranges all / small
---(< 32²) / medium / large (> 96²), greedy matching of detections by decreasing score to the
---unmatched ground truth of highest IoU, ground truths marked iscrowd ignored (and matchable
---many times, IoU over the detection's area). Means run over the classes with ground truth;
---a value with none to average is -1.
---
---dets and gts are lists with one entry per image (same length, same order):
---dets[i] = {boxes = (D,4) float, scores = (D), labels = (D) integer}, gts[i] = {boxes =
---(G,4), labels = (G), iscrowd = (G) booleans (optional), areas = (G) (optional, default box
---area w·h)}; an image without boxes is {} or has (0,4) boxes. Labels are class numbers 1..K.
---Returns {map, map_50, map_75, map_small, map_medium, map_large, mar_1, mar_10, mar_100,
---mar_small, mar_medium, mar_large, per_class = {[c] = {map, map_50, map_75, mar_100}}}.
---@param dets table[]
---@param gts table[]
---@param opts? {format?: "xyxy"|"xywh"|"cxcywh", num_classes?: integer}
---@return table
function M.mean_average_precision(dets, gts, opts)
  local fname = "mean_average_precision"
  if opts ~= nil and type(opts) ~= "table" then fail(fname, "options must be a table, got " .. type(opts)) end
  opts = opts or {}
  local format = check_format(fname, opts, "xyxy")
  if type(dets) ~= "table" then fail(fname, "dets must be a list with one table per image, got " .. type(dets)) end
  if type(gts) ~= "table" then fail(fname, "gts must be a list with one table per image, got " .. type(gts)) end
  if #dets ~= #gts then fail(fname, string.format("dets has %d images but gts has %d", #dets, #gts)) end
  local k = opts.num_classes
  if k ~= nil and (math.type(k) ~= "integer" or k < 1) then
    fail(fname, "num_classes must be a positive integer, got " .. tostring(k))
  end
  local nimg = #gts
  local by_img, maxlab = {}, 0
  for i = 1, nimg do
    local g = parse_image(fname, "gts[" .. i .. "]", gts[i], format, true)
    local d = parse_image(fname, "dets[" .. i .. "]", dets[i], format, false)
    local gc, dc = {}, {}
    for _, b in ipairs(g) do
      gc[b.label] = gc[b.label] or {}
      table.insert(gc[b.label], b)
      maxlab = max(maxlab, b.label)
      if k and b.label > k then fail(fname, string.format("gts[%d] has label %d > num_classes %d", i, b.label, k)) end
    end
    for _, b in ipairs(d) do
      dc[b.label] = dc[b.label] or {}
      table.insert(dc[b.label], b)
      maxlab = max(maxlab, b.label)
      if k and b.label > k then fail(fname, string.format("dets[%d] has label %d > num_classes %d", i, b.label, k)) end
    end
    by_img[i] = {gt = gc, dt = dc}
  end
  k = k or maxlab
  -- evals[c][a] = list of per-image results (images with neither boxes skipped)
  local acc = {} -- acc[a][m][c]
  for a = 1, #AREA_RNG do
    acc[a] = {}
    for m = 1, #MAX_DETS do acc[a][m] = {} end
  end
  for c = 1, k do
    local evals = {}
    for a = 1, #AREA_RNG do evals[a] = {} end
    for i = 1, nimg do
      local gt, dt = by_img[i].gt[c] or {}, by_img[i].dt[c] or {}
      if #gt > 0 or #dt > 0 then
        sort_by_score(dt)
        local top = {}
        for di = 1, min(#dt, MAX_DETS[#MAX_DETS]) do top[di] = dt[di] end
        local ious = {}
        for di, d in ipairs(top) do
          local row = {}
          for j, g in ipairs(gt) do row[j] = iou(d, g) end
          ious[di] = row
        end
        for a, rng in ipairs(AREA_RNG) do table.insert(evals[a], evaluate_img(gt, top, ious, rng)) end
      end
    end
    for a = 1, #AREA_RNG do
      for m, md in ipairs(MAX_DETS) do acc[a][m][c] = accumulate(evals[a], md) end
    end
  end
  local t50, t75 = thr_index(0.5), thr_index(0.75)
  local all, last = acc[1][#MAX_DETS], #MAX_DETS
  local r = {
    map = summarize(all, true), map_50 = summarize(all, true, t50), map_75 = summarize(all, true, t75),
    map_small = summarize(acc[2][last], true), map_medium = summarize(acc[3][last], true),
    map_large = summarize(acc[4][last], true),
    mar_1 = summarize(acc[1][1], false), mar_10 = summarize(acc[1][2], false), mar_100 = summarize(all, false),
    mar_small = summarize(acc[2][last], false), mar_medium = summarize(acc[3][last], false),
    mar_large = summarize(acc[4][last], false),
    per_class = {},
  }
  for c = 1, k do
    local one = {all[c]}
    r.per_class[c] = {map = summarize(one, true), map_50 = summarize(one, true, t50),
                      map_75 = summarize(one, true, t75), mar_100 = summarize(one, false)}
  end
  return r
end

return M
