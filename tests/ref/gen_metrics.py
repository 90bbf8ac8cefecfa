"""Reference values for vtl.metrics from scikit-learn, pycocotools and torchvision.

Usage: gen_metrics.py <fixtures_dir>

Writes <fixtures_dir>/metrics_ref.lua, a Lua chunk returning a list of cases, each with a
`kind`:
- "cls": pred (class numbers 1..K or f32 scores N×K), target, k; want = scikit-learn's
  accuracy, top-k accuracy, balanced accuracy, precision/recall/F1 for every averaging
  (labels = 1..K, zero_division 0 and 1), confusion matrices (raw and normalised) and
  classification_report (dict and text).
- "rank": f32 scores (N×K, or N for a binary problem), target; want = ROC AUC and average
  precision per class (scikit-learn's binary scores on each one-vs-rest column) and averaged,
  and the expected calibration error from the numpy definition below.
- "group": pred, target, groups; want = per group scikit-learn scores.
- "iou": boxes a, b in a format, want = torchvision.ops.box_iou on the boxes converted to xyxy.
- "mask": masks a, b; want = pycocotools.mask.iou on their run-length encodings.
- "det": a detection set (per image boxes, scores, labels; ground truths with areas = w*h
  and iscrowd flags); want = pycocotools COCOeval (bbox) stats and per-class AP/AR.
Class numbers are 1-based here as in vtl; scikit-learn sees the same numbers as labels.
"""
import contextlib
import io
import os
import sys
import warnings

import numpy as np
import sklearn
import torch
import torchvision
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reflib import fixtures_dir, lua_value, tensor_spec, write_lua  # noqa: E402

warnings.filterwarnings("ignore")  # scikit-learn's notes on undefined scores: the cases want them

cases = []


def t64(a):
    return tensor_spec(torch.as_tensor(np.asarray(a, dtype=np.float64)))


def t32(a):
    return tensor_spec(torch.as_tensor(np.asarray(a, dtype=np.float32)))


def tint(a):
    return tensor_spec(torch.as_tensor(np.asarray(a, dtype=np.int64)))


def add(name, kind, **fields):
    body = ", ".join("%s = %s" % (k, v) for k, v in fields.items())
    cases.append((name, 'kind = "%s", %s' % (kind, body)))


def lua_list(xs):
    return "{" + ", ".join(repr(float(x)) if not np.isnan(x) else "0/0" for x in xs) + "}"


def lua_dict(d):
    return "{" + ", ".join("%s = %s" % (k, v) for k, v in d.items()) + "}"


def num(x):
    x = float(x)
    return "0/0" if np.isnan(x) else repr(x)


# ---- classification ----

def cls_case(name, pred, target, k, scores=None, topk=()):
    """pred: class numbers (the argmax of scores when given); scores: f32 N×K or None."""
    labels = list(range(1, k + 1))
    w = {}
    w["accuracy"] = num(skm.accuracy_score(target, pred))
    w["balanced_accuracy"] = num(skm.balanced_accuracy_score(target, pred))
    for z in (0, 1):
        for avg in ("macro", "micro", "weighted"):
            p, r, f, _ = skm.precision_recall_fscore_support(target, pred, labels=labels, average=avg,
                                                             zero_division=z)
            w["p_%s_%d" % (avg, z)], w["r_%s_%d" % (avg, z)], w["f_%s_%d" % (avg, z)] = num(p), num(r), num(f)
        p, r, f, s = skm.precision_recall_fscore_support(target, pred, labels=labels, average=None,
                                                         zero_division=z)
        w["p_none_%d" % z], w["r_none_%d" % z], w["f_none_%d" % z] = t64(p), t64(r), t64(f)
    w["cm"] = tint(skm.confusion_matrix(target, pred, labels=labels))
    for norm in ("true", "pred", "all"):
        w["cm_" + norm] = t64(skm.confusion_matrix(target, pred, labels=labels, normalize=norm))
    if scores is not None:
        for kk in topk:
            w["top%d" % kk] = num(skm.top_k_accuracy_score(target, scores.astype(np.float64), k=kk, labels=labels))
    names = ["class %s" % chr(96 + c) for c in labels] if k <= 8 else None
    rep = skm.classification_report(target, pred, labels=labels, target_names=names, digits=3,
                                    output_dict=True, zero_division=0)
    text = skm.classification_report(target, pred, labels=labels, target_names=names, digits=3, zero_division=0)
    text2 = skm.classification_report(target, pred, labels=labels, zero_division=0)
    rows = []
    for c, n in enumerate(names or [str(c) for c in labels]):
        row = rep[n]
        rows.append(lua_dict({"name": lua_value(n), "precision": num(row["precision"]), "recall": num(row["recall"]),
                              "f1": num(row["f1-score"]), "support": str(int(row["support"]))}))
    w["report"] = lua_dict({
        "classes": "{" + ", ".join(rows) + "}", "accuracy": num(rep["accuracy"] if "accuracy" in rep else rep["micro avg"]["f1-score"]),
        "macro_avg": lua_dict({"precision": num(rep["macro avg"]["precision"]), "recall": num(rep["macro avg"]["recall"]),
                               "f1": num(rep["macro avg"]["f1-score"]), "support": str(int(rep["macro avg"]["support"]))}),
        "weighted_avg": lua_dict({"precision": num(rep["weighted avg"]["precision"]),
                                  "recall": num(rep["weighted avg"]["recall"]),
                                  "f1": num(rep["weighted avg"]["f1-score"]),
                                  "support": str(int(rep["weighted avg"]["support"]))}),
        "text": lua_value(text), "text_default": lua_value(text2)})
    fields = dict(k=str(k), target=tint(target), pred=tint(pred), want=lua_dict(w),
                  class_names=lua_value(names) if names else "nil")
    if scores is not None:
        fields["scores"] = t32(scores)
    add(name, "cls", **fields)


rng = np.random.RandomState(6)

# 5 classes from f32 logits, some signal so the scores are not all chance
n, k = 200, 5
y = rng.randint(1, k + 1, n)
logits = rng.randn(n, k).astype(np.float32)
logits[np.arange(n), y - 1] += 1.0
cls_case("5 classes from scores", logits.argmax(1) + 1, y, k, logits, topk=(1, 2, 3, 5))

# 4 classes as class numbers: class 3 never predicted, class 4 absent from the targets
n, k = 60, 4
y = rng.randint(1, 4, n)               # 1..3
p = np.where(rng.rand(n) < 0.6, y, rng.randint(1, k + 1, n))
p[p == 3] = 4
cls_case("4 classes, one never predicted, one absent from targets", p, y, k)

# binary
n = 50
y = rng.randint(1, 3, n)
p = np.where(rng.rand(n) < 0.7, y, 3 - y)
cls_case("binary", p, y, 2)

# 10 classes from scores: class 7 absent from targets, class 2 never the argmax
n, k = 500, 10
y = rng.randint(1, k + 1, n)
y[y == 7] = 8
logits = rng.randn(n, k).astype(np.float32)
logits[np.arange(n), y - 1] += 1.5
logits[:, 1] -= 100
cls_case("10 classes, absent and never-predicted classes", logits.argmax(1) + 1, y, k, logits, topk=(1, 3))

# 6 classes, class 6 in neither pred nor target (only num_classes says it exists)
n, k = 80, 6
y = rng.randint(1, 6, n)
p = np.where(rng.rand(n) < 0.5, y, rng.randint(1, 6, n))
cls_case("6 classes, one in neither", p, y, k)

# small: classes 1 and 2 predicted and present but never right, class 4 in neither
cls_case("small, zero precision and recall", np.array([1, 1, 2, 3, 3]), np.array([2, 2, 1, 3, 1]), 4)

# ---- ranking and calibration ----

def ece_ref(probs, target, n_bins):
    """ECE: confidences in equal-width bins (b/n, (b+1)/n] (0 in the first), weighted
    |accuracy - mean confidence|."""
    probs = probs.astype(np.float64)
    conf = probs.max(1)
    pred = probs.argmax(1) + 1
    edges = np.arange(n_bins + 1) * (1.0 / n_bins)
    edges[-1] = 1.0
    b = np.searchsorted(edges[1:-1], conf, side="left")   # conf <= edges[1] -> bin 0
    total = 0.0
    for i in range(n_bins):
        m = b == i
        if m.any():
            total += m.sum() / len(conf) * abs((pred[m] == target[m]).mean() - conf[m].mean())
    return total


def rank_case(name, scores, target, k, probs_sum_to_one=True):
    labels = list(range(1, k + 1))
    w = {}
    s64 = scores.astype(np.float64)
    if k == 2:
        col = s64 if s64.ndim == 1 else s64[:, 1]
        w["auc"] = num(skm.roc_auc_score(target, col))
        w["ap"] = num(skm.average_precision_score(target, col, pos_label=2))
    else:
        onehot = label_binarize(target, classes=labels)
        auc = []
        for c in range(k):
            if 0 < onehot[:, c].sum() < len(target):
                auc.append(skm.roc_auc_score(onehot[:, c], s64[:, c]))
            else:
                auc.append(np.nan)
        auc = np.array(auc)
        ok = ~np.isnan(auc)
        support = onehot.sum(0)
        w["auc_none"] = t64(auc)
        w["auc_macro"] = num(auc[ok].mean())
        w["auc_weighted"] = num(np.average(auc[ok], weights=support[ok]))
        if ok.all() and probs_sum_to_one:
            # scikit-learn's own multiclass one-vs-rest must agree with the per-class route
            for avg in ("macro", "weighted"):
                whole = skm.roc_auc_score(target, s64, multi_class="ovr", average=avg, labels=labels)
                assert abs(whole - float(w["auc_" + avg])) < 1e-12, (name, avg)
        w["ap_none"] = t64(skm.average_precision_score(onehot, s64, average=None))
        w["ap_macro"] = num(skm.average_precision_score(onehot, s64, average="macro"))
        w["ap_weighted"] = num(skm.average_precision_score(onehot, s64, average="weighted"))
        if s64.ndim == 2:
            w["ece15"] = num(ece_ref(scores, target, 15))
            w["ece7"] = num(ece_ref(scores, target, 7))
            w["ece4"] = num(ece_ref(scores, target, 4))
    spec = t32(scores)
    add(name, "rank", k=str(k), scores=spec, target=tint(target), want=lua_dict(w),
        probs=lua_value(bool(probs_sum_to_one)))


def softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


n, k = 300, 4
y = rng.randint(1, k + 1, n)
x = rng.randn(n, k)
x[np.arange(n), y - 1] += 1.2
rank_case("4 classes, probabilities", softmax(x).astype(np.float32), y, k)

n, k = 400, 6
y = rng.randint(1, k + 1, n)
y[y == 5] = 1
x = rng.randn(n, k) * 2
x[np.arange(n), y - 1] += 2.0
rank_case("6 classes, one absent from targets", softmax(x).astype(np.float32), y, k)

n, k = 150, 3
y = rng.randint(1, k + 1, n)
x = rng.randn(n, k)
x[np.arange(n), y - 1] += 1.0
tied = np.round(softmax(x) * 10) / 10   # many equal scores per column
rank_case("3 classes, tied scores", tied.astype(np.float32), y, k, probs_sum_to_one=False)

# confidences on the bin edges (exact in f32 and in i * (1/4))
edge = np.array([[0.5, 0.25, 0.25], [0.75, 0.25, 0.0], [0.25, 0.5, 0.25], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0],
                 [0.25, 0.25, 0.5], [0.75, 0.0, 0.25], [0.5, 0.0, 0.5]], dtype=np.float32)
rank_case("3 classes, confidences on bin edges", edge, np.array([1, 2, 3, 1, 2, 3, 3, 1]), 3)

n = 120
y = rng.randint(1, 3, n)
s = 1 / (1 + np.exp(-(rng.randn(n) + (y - 1.5) * 1.5)))
rank_case("binary, scores of class 2", s.astype(np.float32), y, 2)
s2 = np.stack([1 - s, s], 1)
rank_case("binary, two columns", s2.astype(np.float32), y, 2)


# ---- by_group ----

n, k = 240, 4
y = rng.randint(1, k + 1, n)
logits = rng.randn(n, k).astype(np.float32)
logits[np.arange(n), y - 1] += 1.0
groups = rng.choice(["north", "south", "east"], n)
pred = logits.argmax(1) + 1
want = {}
for g in sorted(set(groups)):
    m = groups == g
    want[g] = lua_dict({"n": str(int(m.sum())), "accuracy": num(skm.accuracy_score(y[m], pred[m])),
                        "f1_macro": num(skm.f1_score(y[m], pred[m], labels=list(range(1, k + 1)), average="macro",
                                                     zero_division=0)),
                        "balanced_accuracy": num(skm.balanced_accuracy_score(y[m], pred[m])),
                        "top2": num(skm.top_k_accuracy_score(y[m], logits[m].astype(np.float64), k=2,
                                                             labels=list(range(1, k + 1))))})
add("three groups", "group", k=str(k), scores=t32(logits), target=tint(y), groups=lua_value(list(groups)),
    want="{" + ", ".join("[%s] = %s" % (lua_value(g), v) for g, v in want.items()) + "}")


# ---- box and mask IoU ----

def to_xyxy(b, fmt):
    return torchvision.ops.box_convert(torch.as_tensor(b), in_fmt=fmt, out_fmt="xyxy")


for fmt in ("xyxy", "xywh", "cxcywh"):
    for dt in (np.float64, np.float32):
        a = np.concatenate([rng.rand(7, 2) * 50, rng.rand(7, 2) * 30 + 1], 1)
        b = np.concatenate([rng.rand(5, 2) * 50, rng.rand(5, 2) * 30 + 1], 1)
        if fmt == "xyxy":
            a[:, 2:] += a[:, :2]
            b[:, 2:] += b[:, :2]
        b[0] = a[2]                     # an identical pair
        a, b = a.astype(dt), b.astype(dt)
        want = torchvision.ops.box_iou(to_xyxy(a, fmt), to_xyxy(b, fmt))
        tag = "f64" if dt == np.float64 else "f32"
        add("box_iou %s %s" % (fmt, tag), "iou", format=lua_value(fmt), a=tensor_spec(torch.as_tensor(a)),
            b=tensor_spec(torch.as_tensor(b)), want=tensor_spec(want))

ma = (rng.rand(4, 9, 11) < 0.4).astype(np.uint8)
mb = (rng.rand(3, 9, 11) < 0.5).astype(np.uint8)
ma[3] = 0                               # an empty mask
mb[0] = ma[1]
enc = lambda m: mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0)))
add("mask_iou", "mask", a=tensor_spec(torch.as_tensor(ma)), b=tensor_spec(torch.as_tensor(mb)),
    want=t64(mask_utils.iou(enc(ma), enc(mb), [0] * len(mb))))


# ---- COCO mean average precision ----

def make_detection_set(rng, n_img, k, crowd, special):
    """Per image: gts (xywh, label, crowd) and dets (xywh, score, label). Classes: k-1 has
    detections only (no ground truth); k has nothing unless num_classes names it."""
    gts, dets = [], []
    for i in range(n_img):
        g, d = [], []
        if i % 5 != 3:                                    # every fifth image has no gts
            for _ in range(rng.randint(1, 7)):
                c = rng.randint(1, k - 1)                 # 1..k-2
                size = rng.choice([rng.uniform(4, 30), rng.uniform(33, 95), rng.uniform(100, 200)])
                w, h = round(size * rng.uniform(0.6, 1.4), 2), round(size * rng.uniform(0.6, 1.4), 2)
                x, y = round(rng.uniform(0, 400), 2), round(rng.uniform(0, 400), 2)
                g.append(([x, y, w, h], c, bool(crowd and rng.rand() < 0.15)))
        for (x, y, w, h), c, *_ in g:
            r = rng.rand()
            if r < 0.2:
                continue                                  # a miss
            ndup = 2 if r > 0.85 else 1                   # sometimes a duplicate
            for _ in range(ndup):
                j = lambda v, s: round(v + rng.normal(0, s), 2)
                bw, bh = max(1.0, j(w, 0.1 * w)), max(1.0, j(h, 0.1 * h))
                cc = c if rng.rand() < 0.9 else rng.randint(1, k - 1)
                d.append(([j(x, 0.1 * w), j(y, 0.1 * h), bw, bh], round(rng.rand(), 2), cc))
        if i % 7 != 5:                                    # every seventh image has no dets
            for _ in range(rng.randint(0, 4)):            # false positives, some of class k-1
                c = rng.randint(1, k)
                d.append(([round(rng.uniform(0, 400), 2), round(rng.uniform(0, 400), 2),
                           round(rng.uniform(2, 150), 2), round(rng.uniform(2, 150), 2)], round(rng.rand(), 2), c))
        else:
            d = []
        gts.append(g)
        dets.append(d)
    if special:
        # equal IoUs: det 1 overlaps gts A and B equally (pycocotools takes the later, B), so
        # det 2 still finds A; a regular gt and one outside the area range (given area) or crowd
        # on the same box: a detection matched to the regular one stops there
        gts.append([([0, 0, 10, 10], 1, False), ([2, 0, 10, 10], 1, False),
                    ([100, 100, 20, 20], 2, False, 400.0), ([100, 100, 20, 20], 2, False, 5000.0),
                    ([200, 200, 40, 40], 2, False), ([201, 200, 40, 40], 2, True)])
        dets.append([([1, 0, 10, 10], 0.9, 1), ([-1, 0, 10, 10], 0.8, 1), ([101, 100, 20, 20], 0.7, 2),
                     ([100, 100, 20, 20], 0.6, 2), ([200, 201, 40, 40], 0.5, 2), ([201, 201, 40, 40], 0.4, 2)])
        # areas exactly on the small/medium and medium/large limits (32², 96²)
        gts.append([([300, 300, 32, 32], 3, False), ([300, 0, 96, 96], 3, False)])
        dets.append([([300, 301, 32, 32], 0.55, 3), ([300, 2, 96, 96], 0.45, 3)])
    # one image with more than 100 detections of one class (maxDets 100 cuts)
    x0 = gts[0][0][0] if gts[0] else [10, 10, 40, 40]
    c0 = gts[0][0][1] if gts[0] else 1
    for t in range(130):
        dets[0].append(([round(x0[0] + rng.uniform(-5, 5), 2), round(x0[1] + rng.uniform(-5, 5), 2),
                         x0[2], x0[3]], round(rng.uniform(0, 0.5), 3), c0))
    return gts, dets


def coco_eval(gts, dets, k, fmt):
    """pycocotools on the set; boxes as vtl receives them are returned too (fmt)."""
    images, anns, res = [], [], []
    aid = 0
    for i, (g, d) in enumerate(zip(gts, dets)):
        images.append({"id": i + 1})
        for box, c, crowd, *area in g:
            aid += 1
            anns.append({"id": aid, "image_id": i + 1, "category_id": c, "bbox": box,
                         "area": area[0] if area else box[2] * box[3], "iscrowd": int(crowd)})
        for box, s, c in d:
            res.append({"image_id": i + 1, "category_id": c, "bbox": box, "score": s})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in range(1, k + 1)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(res)
        E = COCOeval(gt, dt, "bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    keys = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large",
            "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]
    want = {key: num(v) for key, v in zip(keys, E.stats)}
    per = []
    prec, rec = E.eval["precision"], E.eval["recall"]
    for c in range(k):
        def mean(s):
            s = s[s > -1]
            return -1.0 if s.size == 0 else float(np.mean(s))
        per.append(lua_dict({"map": num(mean(prec[:, :, c, 0, 2])), "map_50": num(mean(prec[0, :, c, 0, 2])),
                             "map_75": num(mean(prec[5, :, c, 0, 2])), "mar_100": num(mean(rec[:, c, 0, 2]))}))
    want["per_class"] = "{" + ", ".join(per) + "}"
    return lua_dict(want)


def image_specs(gts, dets, fmt):
    """The set as vtl's lists of per-image tables, boxes in fmt (converted from the xywh that
    pycocotools sees, so that x2 - x1 gives back the same w)."""
    def boxes(bs):
        if not bs:
            return tensor_spec(torch.zeros(0, 4, dtype=torch.float64))
        a = np.array(bs, dtype=np.float64)
        if fmt == "xyxy":
            a[:, 2:] += a[:, :2]
        return tensor_spec(torch.as_tensor(a))
    G, D = [], []
    for g, d in zip(gts, dets):
        if g:
            e = {"boxes": boxes([x[0] for x in g]), "labels": tint([x[1] for x in g]),
                 "iscrowd": lua_value([x[2] for x in g])}
            if any(len(x) > 3 for x in g):
                e["areas"] = t64([x[3] if len(x) > 3 else x[0][2] * x[0][3] for x in g])
            G.append(lua_dict(e))
        else:
            G.append("{}")
        D.append(lua_dict({"boxes": boxes([b for b, _, _ in d]), "scores": t64([s for _, s, _ in d]),
                           "labels": tint([c for _, _, c in d])}))
    return "{" + ", ".join(G) + "}", "{" + ", ".join(D) + "}"


def xyxy_roundtrip(gts, dets):
    """Boxes as x, y, (x + w) - x, (y + h) - y: the widths vtl computes from xyxy input."""
    f = lambda b: [b[0], b[1], (b[0] + b[2]) - b[0], (b[1] + b[3]) - b[1]]
    return ([[(f(x[0]),) + tuple(x[1:]) for x in g] for g in gts], [[(f(b), s, c) for b, s, c in d] for d in dets])


for name, n_img, k, crowd, fmt, seed in [("coco set xywh", 25, 6, False, "xywh", 1),
                                         ("coco set xyxy with crowd", 30, 6, True, "xyxy", 2),
                                         ("coco set many classes", 40, 9, True, "xywh", 3)]:
    r = np.random.RandomState(seed)
    gts, dets = make_detection_set(r, n_img, k, crowd, special=fmt == "xywh")
    G, D = image_specs(gts, dets, fmt)
    if fmt == "xyxy":
        gts, dets = xyxy_roundtrip(gts, dets)
    add(name, "det", format=lua_value(fmt), k=str(k), gts=G, dets=D, want=coco_eval(gts, dets, k, fmt))


if __name__ == "__main__":
    out = fixtures_dir()
    lines = ["-- Generated by tests/ref/gen_metrics.py (scikit-learn %s, torchvision %s); do not edit."
             % (sklearn.__version__, torchvision.__version__), "return {"]
    for name, fields in cases:
        lines.append("  {name = %s, %s}," % (lua_value(name), fields))
    lines.append("}")
    write_lua(os.path.join(out, "metrics_ref.lua"), "\n".join(lines) + "\n")
    print("gen_metrics: wrote %d cases to %s" % (len(cases), os.path.join(out, "metrics_ref.lua")))
