"""Reference cases for normalisation, activations, softmax and losses, computed with PyTorch.

Usage: gen_nn_norm.py <fixtures_dir>

Writes <fixtures_dir>/nn_norm_ref.lua, a Lua chunk returning a list of cases:

  {name = "batch_norm_train_4d_f32", tol = 1e-4,
   inputs = {x = {dtype, shape, data}, w = ..., gout = ...},
   call = "return F.batch_norm(x, rm, rv, w, b, {training = true})",  -- the forward
   raw = "local gx, gw, gb = F._batch_norm_backward(gout, x, rm, rv, w, {training = true}); return gx, gw, gb",
   grads = {"x", "w", "b"},              -- inputs whose gradients are checked, in raw's order
   post = {"rm", "rv"},                  -- inputs modified in place by the call (optional)
   want = {out = spec, grads = {spec, ...}, post = {spec, ...}}}

`call` and `raw` run with F = vtl.nn.functional and the inputs as locals. Expected values are
computed in float64 from the (rounded) inputs and cast to the case's dtype, so an f32 case
measures vtl's own error; gradients are torch.autograd.grad(out, inputs, gout) for a random
upstream gradient gout. Class targets are 1-based on the Lua side: a Lua target t is PyTorch's
t - 1, and a Lua ignore_index I (compared with the stored targets as is) is PyTorch's I - 1.
"""
import os
import sys
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reflib import Draws, fixtures_dir, lua_str, lua_value, tensor_spec, write_cases  # noqa: E402

TORCH_DTYPE = {"f32": torch.float32, "f64": torch.float64}

draws = Draws(2024)
gen = draws.gen
randn, rand, randint = draws.randn, draws.rand, draws.randint
cases = []


def add_case(name, dtype, tol, inputs, grads, fn, call, raw, post=(), fix=None):
    """inputs: name -> tensor (floats of `dtype`, or i64 targets in Lua's 1-based form);
    fn(**inputs as f64 torch tensors, targets 0-based) -> output. Inputs named in `post` are
    modified in place by fn and their final values are expected too. fix(grads, ref) -> grads
    replaces PyTorch's gradients where vtl deliberately differs (each use says why)."""
    ref = {}
    for k, v in inputs.items():
        if v.dtype.is_floating_point:
            ref[k] = v.detach().to(torch.float64).clone().requires_grad_(k in grads)
        else:
            ref[k] = v - 1  # PyTorch's 0-based class indices
    out = fn(**ref)
    gout = randn(*out.shape, dtype=TORCH_DTYPE[dtype])
    gs = torch.autograd.grad(out, [ref[k] for k in grads], gout.to(torch.float64)) if grads else []
    if fix:
        gs = fix(list(gs), ref)
    cast = TORCH_DTYPE[dtype]
    want = {"out": out.detach().to(cast), "grads": [g.to(cast) for g in gs],
            "post": [ref[k].detach().to(cast) for k in post]}
    ins = dict(inputs)
    ins["gout"] = gout
    cases.append((name, tol, ins, call, raw, list(grads), list(post), want))


def case_fields(tol, ins, call, raw, grads, post, want):
    ins_s = ", ".join("%s = %s" % (k, tensor_spec(v)) for k, v in ins.items())
    want_s = "out = %s, grads = {%s}, post = {%s}" % (
        tensor_spec(want["out"]), ", ".join(tensor_spec(g) for g in want["grads"]),
        ", ".join(tensor_spec(p) for p in want["post"]))
    return "tol = %s, call = %s, raw = %s, grads = {%s}, post = {%s},\n   inputs = {%s},\n   want = {%s}" % (
        repr(float(tol)), lua_str(call), lua_str(raw), ", ".join(lua_str(g) for g in grads),
        ", ".join(lua_str(p) for p in post), ins_s, want_s)


def tol_for(dtype, f32):
    return f32 if dtype == "f32" else 1e-10


# ---- normalisation ----

def batch_norm_cases():
    for dt in ("f32", "f64"):
        td = TORCH_DTYPE[dt]
        tol = tol_for(dt, 1e-4)
        for tag, shape in (("2d", (8, 5)), ("3d", (4, 3, 7)), ("4d", (4, 6, 5, 5))):
            C = shape[1]
            x = randn(*shape, dtype=td, scale=2.0) + 0.5
            w, b = randn(C, dtype=td), randn(C, dtype=td)
            rm, rv = randn(C, dtype=td), rand(C, lo=0.5, hi=2.0, dtype=td)
            # training: batch statistics, running stats updated in place
            add_case("batch_norm_train_%s_%s" % (tag, dt), dt, tol, {"x": x, "w": w, "b": b, "rm": rm, "rv": rv},
                     ["x", "w", "b"],
                     lambda x, w, b, rm, rv: F.batch_norm(x, rm, rv, w, b, training=True),
                     "return F.batch_norm(x, rm, rv, w, b, {training = true})",
                     "return F._batch_norm_backward(gout, x, rm, rv, w, {training = true})", post=["rm", "rv"])
            # eval: running statistics
            add_case("batch_norm_eval_%s_%s" % (tag, dt), dt, tol, {"x": x, "w": w, "b": b, "rm": rm, "rv": rv},
                     ["x", "w", "b"],
                     lambda x, w, b, rm, rv: F.batch_norm(x, rm, rv, w, b, training=False),
                     "return F.batch_norm(x, rm, rv, w, b)",
                     "return F._batch_norm_backward(gout, x, rm, rv, w)")
        x = randn(3, 4, 6, dtype=td)
        add_case("batch_norm_train_noaffine_nostats_%s" % dt, dt, tol, {"x": x}, ["x"],
                 lambda x: F.batch_norm(x, None, None, None, None, training=True, eps=1e-3),
                 "return F.batch_norm(x, nil, nil, nil, nil, {training = true, eps = 1e-3})",
                 "return (F._batch_norm_backward(gout, x, nil, nil, nil, {training = true, eps = 1e-3}))")
        C = 4
        rm, rv, w = randn(C, dtype=td), rand(C, lo=0.5, hi=2.0, dtype=td), randn(C, dtype=td)
        add_case("batch_norm_train_momentum_%s" % dt, dt, tol, {"x": x, "rm": rm, "rv": rv, "w": w}, ["x", "w"],
                 lambda x, rm, rv, w: F.batch_norm(x, rm, rv, w, None, training=True, momentum=0.3),
                 "return F.batch_norm(x, rm, rv, w, nil, {training = true, momentum = 0.3})",
                 "local gx, gw = F._batch_norm_backward(gout, x, rm, rv, w, {training = true}); return gx, gw",
                 post=["rm", "rv"])
        add_case("batch_norm_eval_noaffine_eps_%s" % dt, dt, tol, {"x": x, "rm": rm, "rv": rv}, ["x"],
                 lambda x, rm, rv: F.batch_norm(x, rm, rv, None, None, training=False, eps=0.1),
                 "return F.batch_norm(x, rm, rv, nil, nil, {eps = 0.1})",
                 "return (F._batch_norm_backward(gout, x, rm, rv, nil, {eps = 0.1}))")
    # the fused forms: act(batch_norm(x) + add) in one pass; raw: the same call's autograd
    # gradients without running statistics
    for dt in ("f32", "f64"):
        td = TORCH_DTYPE[dt]
        tol = tol_for(dt, 1e-4)
        for tag, shape, act, with_add, training in (("4d_relu_add", (4, 6, 5, 5), "relu", True, True),
                                                    ("2d_relu", (8, 5), "relu", False, True),
                                                    ("3d_relu6_add", (4, 3, 7), "relu6", True, True),
                                                    ("4d_add", (3, 4, 3, 3), None, True, True),
                                                    ("4d_relu6_eval", (4, 6, 5, 5), "relu6", False, False)):
            C = shape[1]
            x = randn(*shape, dtype=td, scale=2.0) + 0.5
            w, b = randn(C, dtype=td), randn(C, dtype=td) * 2
            rm, rv = randn(C, dtype=td), rand(C, lo=0.5, hi=2.0, dtype=td)
            ins = {"x": x, "w": w, "b": b, "rm": rm, "rv": rv}
            if with_add:
                ins["a"] = randn(*shape, dtype=td)
            grads = ["x", "w", "b"] + (["a"] if with_add else [])
            tf = {"relu": F.relu, "relu6": F.relu6, None: lambda t: t}[act]

            def fn(x, w, b, rm, rv, a=None, tf=tf, training=training):
                y = F.batch_norm(x, rm, rv, w, b, training=training)
                return tf(y + a if a is not None else y)
            opts = "training = %s%s%s" % ("true" if training else "false", ", add = a" if with_add else "",
                                           ', act = "%s"' % act if act else "")
            stats = "nil, nil" if training else "rm, rv"
            req = ", ".join("%s:clone():requires_grad_()" % g for g in grads)
            names = ", ".join(g + "g" for g in grads)
            raw_opts = opts.replace("add = a", "add = ag")
            raw = ("local %s = %s; F.batch_norm(xg, %s, wg, bg, {%s}):backward(gout); return %s" %
                   (names, req, stats, raw_opts, ", ".join(g + "g.grad" for g in grads)))
            add_case("batch_norm_fused_%s_%s" % (tag, dt), dt, tol, ins, grads, fn,
                     "return F.batch_norm(x, rm, rv, w, b, {%s})" % opts, raw,
                     post=["rm", "rv"] if training else ())
    # a batch of large, shifted values: the variance must not cancel
    x = randn(16, 3, 4, 4, dtype=torch.float32) * 0.01 + 100.0
    add_case("batch_norm_train_shifted_f32", "f32", 1e-3, {"x": x}, ["x"],
             lambda x: F.batch_norm(x, None, None, training=True),
             "return F.batch_norm(x, nil, nil, nil, nil, {training = true})",
             "return (F._batch_norm_backward(gout, x, nil, nil, nil, {training = true}))")


def layer_norm_cases():
    for dt in ("f32", "f64"):
        td = TORCH_DTYPE[dt]
        tol = tol_for(dt, 1e-4)
        x = randn(4, 10, dtype=td, scale=3.0)
        w, b = randn(10, dtype=td), randn(10, dtype=td)
        add_case("layer_norm_last_%s" % dt, dt, tol, {"x": x, "w": w, "b": b}, ["x", "w", "b"],
                 lambda x, w, b: F.layer_norm(x, (10,), w, b),
                 "return F.layer_norm(x, 10, w, b)", "return F._layer_norm_backward(gout, x, 10, w)")
        x = randn(2, 3, 4, 5, dtype=td)
        w, b = randn(4, 5, dtype=td), randn(4, 5, dtype=td)
        add_case("layer_norm_2dims_%s" % dt, dt, tol, {"x": x, "w": w, "b": b}, ["x", "w", "b"],
                 lambda x, w, b: F.layer_norm(x, (4, 5), w, b, eps=1e-6),
                 "return F.layer_norm(x, {4, 5}, w, b, {eps = 1e-6})",
                 "return F._layer_norm_backward(gout, x, {4, 5}, w, {eps = 1e-6})")
        x = randn(3, 7, 9, dtype=td)
        add_case("layer_norm_noaffine_%s" % dt, dt, tol, {"x": x}, ["x"],
                 lambda x: F.layer_norm(x, (9,)),
                 "return F.layer_norm(x, {9})", "return (F._layer_norm_backward(gout, x, {9}))")
        x = randn(2, 50, 64, dtype=td)  # a block of ViT tokens
        w, b = randn(64, dtype=td), randn(64, dtype=td)
        add_case("layer_norm_tokens_%s" % dt, dt, tol, {"x": x, "w": w, "b": b}, ["x", "w", "b"],
                 lambda x, w, b: F.layer_norm(x, (64,), w, b, eps=1e-6),
                 "return F.layer_norm(x, {64}, w, b, {eps = 1e-6})",
                 "return F._layer_norm_backward(gout, x, {64}, w, {eps = 1e-6})")


def group_norm_cases():
    for dt in ("f32", "f64"):
        td = TORCH_DTYPE[dt]
        tol = tol_for(dt, 1e-4)
        for tag, shape, G in (("g3", (2, 6, 4, 4), 3), ("g2_3d", (3, 4, 5), 2), ("g1", (2, 4, 3, 3), 1),
                              ("gC", (2, 4, 3, 3), 4)):
            C = shape[1]
            x = randn(*shape, dtype=td, scale=2.0)
            w, b = randn(C, dtype=td), randn(C, dtype=td)
            add_case("group_norm_%s_%s" % (tag, dt), dt, tol, {"x": x, "w": w, "b": b}, ["x", "w", "b"],
                     lambda x, w, b, G=G: F.group_norm(x, G, w, b),
                     "return F.group_norm(x, %d, w, b)" % G, "return F._group_norm_backward(gout, x, %d, w)" % G)
        x = randn(2, 8, 3, 3, dtype=td)
        add_case("group_norm_noaffine_eps_%s" % dt, dt, tol, {"x": x}, ["x"],
                 lambda x: F.group_norm(x, 4, eps=1e-3),
                 "return F.group_norm(x, 4, nil, nil, {eps = 1e-3})",
                 "return (F._group_norm_backward(gout, x, 4, nil, {eps = 1e-3}))")


# ---- activations ----

def act_input(dtype):
    """Values over [-7, 7] plus the kinks of relu, relu6, hardswish, hardsigmoid, softplus."""
    x = randn(5, 8, dtype=torch.float64, scale=3.0)
    flat = x.view(-1)
    for i, v in enumerate((0.0, 6.0, -3.0, 3.0, 20.0, 10.0, -20.0, 7.5, -7.5, 1e-3)):
        flat[3 * i + 1] = v
    return x.to(dtype)


def hardsigmoid_exact(x):
    """F.hardsigmoid with the exact slope 1/6 inside (-3, 3): PyTorch's f64 backward multiplies
    by 1/6 rounded to f32 (1.66666672e-01), vtl by 1/6 in the data's precision."""
    inside = (x > -3) & (x < 3)
    return torch.where(inside, (x + 3) / 6, torch.where(x <= -3, 0 * x, 0 * x + 1))


def activation_cases():
    acts = [
        # case tag, Lua name, torch fn, Lua args, what the raw backward takes ("x" or "y")
        ("relu", "relu", F.relu, "", "y"),
        ("relu6", "relu6", F.relu6, "", "x"),
        ("leaky_relu", "leaky_relu", lambda x: F.leaky_relu(x, 0.01), "", "x"),
        ("leaky_relu_02", "leaky_relu", lambda x: F.leaky_relu(x, 0.2), "{negative_slope = 0.2}", "x"),
        ("leaky_relu_pos", "leaky_relu", lambda x: F.leaky_relu(x, 0.3), "0.3", "x"),
        ("gelu", "gelu", F.gelu, "", "x"),
        ("gelu_tanh", "gelu", lambda x: F.gelu(x, approximate="tanh"), '{approximate = "tanh"}', "x"),
        ("silu", "silu", F.silu, "", "x"),
        ("hardswish", "hardswish", F.hardswish, "", "x"),
        ("hardsigmoid", "hardsigmoid", hardsigmoid_exact, "", "x"),
        ("softplus", "softplus", F.softplus, "", "x"),
        ("softplus_beta", "softplus", lambda x: F.softplus(x, beta=2.0, threshold=5.0), "{beta = 2, threshold = 5}",
         "x"),
        ("elu", "elu", F.elu, "", "y"),
        ("elu_alpha", "elu", lambda x: F.elu(x, alpha=0.5), "{alpha = 0.5}", "y"),
        ("sigmoid", "sigmoid", torch.sigmoid, "", "y"),
        ("tanh", "tanh", torch.tanh, "", "y"),
    ]
    for dt in ("f32", "f64"):
        td = TORCH_DTYPE[dt]
        tol = tol_for(dt, 1e-5)
        x = act_input(td)
        for tag, lua_name, fn, args, saved in acts:
            a = (", " + args) if args else ""
            call = "return F.%s(x%s)" % (lua_name, a)
            s = "F.%s(x%s)" % (lua_name, a) if saved == "y" else "x"
            raw = "return F._%s_backward(gout, %s%s)" % (lua_name, s, a)
            add_case("act_%s_%s" % (tag, dt), dt, tol, {"x": x}, ["x"], lambda x, fn=fn: fn(x), call, raw)
    # a non-contiguous input
    x = randn(6, 5, dtype=torch.float32)
    add_case("act_gelu_transposed_f32", "f32", 1e-5, {"x": x}, ["x"], lambda x: F.gelu(x.t()),
             "return F.gelu(x:t())", "return F._gelu_backward(gout, x:t()):t()")


# ---- softmax ----

def softmax_cases():
    for dt in ("f32", "f64"):
        td = TORCH_DTYPE[dt]
        tol = tol_for(dt, 1e-5)
        for tag, shape, d in (("rows", (4, 7), -1), ("rows_dim2", (4, 7), 2), ("cols", (4, 7), 1),
                              ("mid", (3, 4, 5), 2), ("first_3d", (3, 4, 70), 1), ("1d", (9,), 1)):
            x = randn(*shape, dtype=td, scale=3.0)
            pd = d - 1 if d > 0 else d
            for name, fn in (("softmax", F.softmax), ("log_softmax", F.log_softmax)):
                add_case("%s_%s_%s" % (name, tag, dt), dt, tol, {"x": x}, ["x"],
                         lambda x, fn=fn, pd=pd: fn(x, dim=pd),
                         "return F.%s(x, %d)" % (name, d),
                         "return F._%s_backward(gout, F.%s(x, %d), %d)" % (name, name, d, d))
        # large logits: stable only with the max subtracted
        x = randn(3, 6, dtype=td, scale=300.0)
        for name, fn in (("softmax", F.softmax), ("log_softmax", F.log_softmax)):
            add_case("%s_large_%s" % (name, dt), dt, tol, {"x": x}, ["x"], lambda x, fn=fn: fn(x, dim=1),
                     "return F.%s(x, 2)" % name, "return F._%s_backward(gout, F.%s(x, 2), 2)" % (name, name))


# ---- losses ----

def ce_target(N, C, *rest, ignore=None, n_ignored=0):
    """1-based class targets; the first n_ignored (after a shuffle) set to ignore."""
    t = randint(1, C + 1, N, *rest)
    if n_ignored:
        flat = t.view(-1)
        idx = torch.randperm(flat.numel(), generator=gen)[:n_ignored]
        flat[idx] = ignore
    return t


def cross_entropy_cases():
    for dt in ("f32", "f64"):
        td = TORCH_DTYPE[dt]
        tol = tol_for(dt, 1e-4)
        N, C = 8, 10
        x = randn(N, C, dtype=td, scale=2.0)
        w = rand(C, lo=0.2, hi=2.0, dtype=td)
        t = ce_target(N, C)
        t_ign = ce_target(N, C, ignore=-100, n_ignored=3)
        t_ign3 = ce_target(N, C, ignore=3, n_ignored=0)  # class 3 is then ignored wherever it occurs
        t_ign3.view(-1)[:2] = 3
        variants = [
            ("plain", t, {}, {}),
            ("sum", t, {"reduction": "sum"}, {"reduction": "sum"}),
            ("none", t, {"reduction": "none"}, {"reduction": "none"}),
            ("weight", t, {"weight": "w"}, {"weight": True}),
            ("weight_sum", t, {"weight": "w", "reduction": "sum"}, {"weight": True, "reduction": "sum"}),
            ("weight_none", t, {"weight": "w", "reduction": "none"}, {"weight": True, "reduction": "none"}),
            ("ignore", t_ign, {}, {"ignore_index": -101}),
            ("ignore_weight", t_ign, {"weight": "w"}, {"weight": True, "ignore_index": -101}),
            ("ignore_class3", t_ign3, {"ignore_index": 3}, {"ignore_index": 2}),
            ("smooth", t, {"label_smoothing": 0.1}, {"label_smoothing": 0.1}),
            ("smooth_weight_ignore", t_ign, {"weight": "w", "label_smoothing": 0.2},
             {"weight": True, "ignore_index": -101, "label_smoothing": 0.2}),
            ("smooth_none_ignore", t_ign, {"label_smoothing": 0.3, "reduction": "none"},
             {"ignore_index": -101, "label_smoothing": 0.3, "reduction": "none"}),
            ("smooth_weight_sum", t, {"weight": "w", "label_smoothing": 0.15, "reduction": "sum"},
             {"weight": True, "label_smoothing": 0.15, "reduction": "sum"}),
        ]
        for tag, tgt, lopts, topts in variants:
            has_w = "weight" in lopts
            lua_o = ", ".join("%s = %s" % (k, v if k == "weight" else lua_value(v)) for k, v in lopts.items())
            lua_o = "{" + lua_o + "}" if lua_o else "{}"
            ins = {"x": x, "t": tgt}
            if has_w:
                ins["w"] = w

            def fn(x, t, w=None, topts=topts):
                o = dict(topts)
                if o.pop("weight", False):
                    o["weight"] = w
                return F.cross_entropy(x, t, **o)
            add_case("cross_entropy_%s_%s" % (tag, dt), dt, tol, ins, ["x"], fn,
                     "return F.cross_entropy(x, t, %s)" % lua_o,
                     "return (F._cross_entropy_backward(gout, x, t, %s))" % lua_o)
        # spatial: (N, C, H, W) logits, (N, H, W) targets
        xs = randn(2, 5, 3, 4, dtype=td, scale=2.0)
        ts = ce_target(2, 5, 3, 4, ignore=-100, n_ignored=4)
        ws = rand(5, lo=0.2, hi=2.0, dtype=td)
        add_case("cross_entropy_spatial_%s" % dt, dt, tol, {"x": xs, "t": ts, "w": ws}, ["x"],
                 lambda x, t, w: F.cross_entropy(x, t, weight=w, ignore_index=-101, label_smoothing=0.1),
                 "return F.cross_entropy(x, t, {weight = w, label_smoothing = 0.1})",
                 "return (F._cross_entropy_backward(gout, x, t, {weight = w, label_smoothing = 0.1}))")
        add_case("cross_entropy_spatial_none_%s" % dt, dt, tol, {"x": xs, "t": ts}, ["x"],
                 lambda x, t: F.cross_entropy(x, t, ignore_index=-101, reduction="none"),
                 'return F.cross_entropy(x, t, {reduction = "none"})',
                 'return (F._cross_entropy_backward(gout, x, t, {reduction = "none"}))')
        # unbatched: (C) logits, 0-d target
        x1 = randn(6, dtype=td)
        t1 = torch.tensor(4)
        add_case("cross_entropy_unbatched_%s" % dt, dt, tol, {"x": x1, "t": t1}, ["x"],
                 lambda x, t: F.cross_entropy(x, t), "return F.cross_entropy(x, t)",
                 "return (F._cross_entropy_backward(gout, x, t))")
        # class probabilities (mixup / cutmix targets), with gradients for the target too
        p = F.softmax(randn(N, C, dtype=torch.float64), dim=1).to(td)
        for tag, lopts, topts in (("plain", "{}", {}), ("smooth", "{label_smoothing = 0.1}", {"label_smoothing": 0.1}),
                                  ("weight_sum", '{weight = w, reduction = "sum"}', {"weight": True, "reduction": "sum"}),
                                  ("weight_smooth_none", '{weight = w, label_smoothing = 0.2, reduction = "none"}',
                                   {"weight": True, "label_smoothing": 0.2, "reduction": "none"})):
            ins = {"x": x, "p": p}
            if "weight" in topts:
                ins["w"] = w

            def fn(x, p, w=None, topts=topts):
                o = dict(topts)
                if o.pop("weight", False):
                    o["weight"] = w
                return F.cross_entropy(x, p, **o)
            add_case("cross_entropy_prob_%s_%s" % (tag, dt), dt, tol, ins, ["x", "p"], fn,
                     "return F.cross_entropy(x, p, %s)" % lopts,
                     "return F._cross_entropy_backward(gout, x, p, %s)" % lopts)
        ps = F.softmax(randn(2, 5, 3, 4, dtype=torch.float64), dim=1).to(td)
        add_case("cross_entropy_prob_spatial_%s" % dt, dt, tol, {"x": xs, "p": ps}, ["x", "p"],
                 lambda x, p: F.cross_entropy(x, p), "return F.cross_entropy(x, p)",
                 "return F._cross_entropy_backward(gout, x, p)")


def nll_cases():
    for dt in ("f32", "f64"):
        td = TORCH_DTYPE[dt]
        tol = tol_for(dt, 1e-5)
        N, C = 7, 6
        lp = F.log_softmax(randn(N, C, dtype=torch.float64, scale=2.0), dim=1).to(td)
        w = rand(C, lo=0.2, hi=2.0, dtype=td)
        t = ce_target(N, C, ignore=-100, n_ignored=2)
        t2 = ce_target(N, C)
        t2.view(-1)[:2] = 2
        for tag, lopts, topts in (("plain", "{}", {}), ("weight", "{weight = w}", {"weight": True}),
                                  ("weight_sum", '{weight = w, reduction = "sum"}', {"weight": True, "reduction": "sum"}),
                                  ("none", '{reduction = "none"}', {"reduction": "none"}),
                                  ("ignore_class2", "{ignore_index = 2}", {"ignore_index": 1})):
            ins = {"x": lp, "t": t2 if "ignore_index" in topts else t}
            if "weight" in topts:
                ins["w"] = w

            def fn(x, t, w=None, topts=topts):
                o = dict(topts)
                o.setdefault("ignore_index", -101)
                if o.pop("weight", False):
                    o["weight"] = w
                return F.nll_loss(x, t, **o)
            add_case("nll_loss_%s_%s" % (tag, dt), dt, tol, ins, ["x"], fn,
                     "return F.nll_loss(x, t, %s)" % lopts, "return F._nll_loss_backward(gout, x, t, %s)" % lopts)
        lps = F.log_softmax(randn(2, 4, 3, 3, dtype=torch.float64), dim=1).to(td)
        ts = ce_target(2, 4, 3, 3, ignore=-100, n_ignored=3)
        add_case("nll_loss_spatial_%s" % dt, dt, tol, {"x": lps, "t": ts}, ["x"],
                 lambda x, t: F.nll_loss(x, t, ignore_index=-101), "return F.nll_loss(x, t)",
                 "return F._nll_loss_backward(gout, x, t)")


def bce_cases():
    for dt in ("f32", "f64"):
        td = TORCH_DTYPE[dt]
        tol = tol_for(dt, 1e-5)
        x = randn(6, 4, dtype=td, scale=4.0)
        y = rand(6, 4, dtype=td)
        w = rand(4, lo=0.5, hi=2.0, dtype=td)
        pw = rand(4, lo=0.5, hi=3.0, dtype=td)
        wfull = rand(6, 4, lo=0.5, hi=2.0, dtype=td)
        for tag, lopts, topts in (("plain", "{}", {}), ("sum", '{reduction = "sum"}', {"reduction": "sum"}),
                                  ("none", '{reduction = "none"}', {"reduction": "none"}),
                                  ("weight", "{weight = w}", {"weight": "w"}),
                                  ("weight_full", "{weight = wf}", {"weight": "wf"}),
                                  ("pos_weight", "{pos_weight = pw}", {"pos_weight": "pw"}),
                                  ("both_none", '{weight = w, pos_weight = pw, reduction = "none"}',
                                   {"weight": "w", "pos_weight": "pw", "reduction": "none"})):
            ins = {"x": x, "y": y}
            for k in ("weight", "pos_weight"):
                if k in topts:
                    ins[topts[k]] = {"w": w, "pw": pw, "wf": wfull}[topts[k]]

            def fn(x, y, w=None, pw=None, wf=None, topts=topts):
                o = dict(topts)
                env = {"w": w, "pw": pw, "wf": wf}
                for k in ("weight", "pos_weight"):
                    if k in o:
                        o[k] = env[o[k]]
                return F.binary_cross_entropy_with_logits(x, y, **o)
            add_case("bce_with_logits_%s_%s" % (tag, dt), dt, tol, ins, ["x", "y"], fn,
                     "return F.binary_cross_entropy_with_logits(x, y, %s)" % lopts,
                     "return F._binary_cross_entropy_with_logits_backward(gout, x, y, %s)" % lopts)


def kl_target_zero_grad(gs, ref):
    """d kl_div / d target where target == 0: PyTorch 1.13 differentiates xlogy(t, t) there and
    gets 0/0 = NaN; vtl gives 0, the masked rule of PyTorch's own kl_div_target_backward (and
    of earlier versions), so that a zero-probability target does not poison a training step."""
    gy = gs[1].clone()
    gy[ref["y"] == 0] = 0.0
    return [gs[0], gy]


def pointwise_loss_cases():
    for dt in ("f32", "f64"):
        td = TORCH_DTYPE[dt]
        tol = tol_for(dt, 1e-5)
        x, y = randn(5, 6, dtype=td), randn(5, 6, dtype=td)
        for name, fn, extra_l, extra_t in (("mse_loss", F.mse_loss, "", {}), ("l1_loss", F.l1_loss, "", {}),
                                           ("smooth_l1_loss", F.smooth_l1_loss, "", {}),
                                           ("smooth_l1_loss", F.smooth_l1_loss, "beta = 0.5", {"beta": 0.5}),
                                           ("smooth_l1_loss", F.smooth_l1_loss, "beta = 0", {"beta": 0.0})):
            for red in ("mean", "sum", "none"):
                parts = [p for p in (extra_l, "" if red == "mean" else 'reduction = "%s"' % red) if p]
                lo = "{" + ", ".join(parts) + "}"
                tag = "%s%s_%s" % (name, "_beta" + str(extra_t["beta"]).replace(".", "") if extra_t else "", red)
                add_case("%s_%s" % (tag, dt), dt, tol, {"x": x, "y": y}, ["x", "y"],
                         lambda x, y, fn=fn, red=red, extra_t=extra_t: fn(x, y, reduction=red, **extra_t),
                         "return F.%s(x, y, %s)" % (name, lo), "return F._%s_backward(gout, x, y, %s)" % (name, lo))
        # kl_div: log-probabilities in, probabilities (some exactly 0) or log-probabilities as target
        lp = F.log_softmax(randn(4, 5, dtype=torch.float64), dim=1).to(td)
        q = F.softmax(randn(4, 5, dtype=torch.float64, scale=2.0), dim=1)
        q[0, 1] = 0.0
        q[2, 3] = 0.0
        q = q.to(td)
        lq = F.log_softmax(randn(4, 5, dtype=torch.float64), dim=1).to(td)
        for red in ("batchmean", "sum", "none", "mean"):
            add_case("kl_div_%s_%s" % (red, dt), dt, tol, {"x": lp, "y": q}, ["x", "y"],
                     lambda x, y, red=red: F.kl_div(x, y, reduction=red),
                     'return F.kl_div(x, y, {reduction = "%s"})' % red,
                     'return F._kl_div_backward(gout, x, y, {reduction = "%s"})' % red, fix=kl_target_zero_grad)
            add_case("kl_div_log_target_%s_%s" % (red, dt), dt, tol, {"x": lp, "y": lq}, ["x", "y"],
                     lambda x, y, red=red: F.kl_div(x, y, reduction=red, log_target=True),
                     'return F.kl_div(x, y, {reduction = "%s", log_target = true})' % red,
                     'return F._kl_div_backward(gout, x, y, {reduction = "%s", log_target = true})' % red)


def main():
    out_dir = fixtures_dir()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="reduction: 'mean' divides")
    batch_norm_cases()
    layer_norm_cases()
    group_norm_cases()
    activation_cases()
    softmax_cases()
    cross_entropy_cases()
    nll_cases()
    bce_cases()
    pointwise_loss_cases()
    write_cases(out_dir, "nn_norm_ref.lua", __file__, ((c[0], case_fields(*c[1:])) for c in cases))


if __name__ == "__main__":
    main()
