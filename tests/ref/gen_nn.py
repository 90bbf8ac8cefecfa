#!/usr/bin/env python3
"""Reference cases for vtl.nn (modules and functional ops), computed with PyTorch.

Usage: gen_nn.py <fixtures_dir>

Writes <fixtures_dir>/nn/:
  <case>.safetensors  one file per case (written with the safetensors library):
                        param/<key>   the torch module's state_dict (model cases)
                        input/<name>  the inputs (index tensors already 1-based)
                        gout/<i>      a random upstream gradient for output i (1-based)
                        output/<i>    the outputs
                        grad/<name>   d(sum_i output_i * gout_i) / d input
                        pgrad/<key>   the same for each parameter (model cases)
                        after/<key>   the state_dict after the forward (running stats)
  nn_ref.lua          `return {models = {...}, functional = {...}}`:
    models:     {name, train (the mode), keys = {{key, shape}, ...} (torch's state_dict order), inputs,
                 grads = {names of inputs with gradients}, nout, tol, after = {keys}}
                The test builds the equivalent vtl module from its own table of builders.
    functional: {name, expr (Lua, run with vtl, F and the inputs as locals), inputs, grads,
                 nout, tol}
"""
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reflib import lua_str, write_lua  # noqa: E402

torch.manual_seed(0)
gen = torch.Generator().manual_seed(1234)

OUT = None
models, functional = [], []


def randn(*shape, scale=1.0):
    return torch.randn(shape, generator=gen) * scale


def rand(*shape, lo=0.0, hi=1.0):
    return torch.rand(shape, generator=gen) * (hi - lo) + lo


def lua_list(items):
    return "{" + ", ".join(lua_str(x) for x in items) + "}"


def as_outputs(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def save(name, tensors):
    path = os.path.join(OUT, name + ".safetensors")
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, path)


def run(fn, inputs, params):
    """Runs fn, backpropagates sum(out_i * gout_i); returns outputs, gouts, input and param grads."""
    outs = as_outputs(fn())
    gouts, used = [], []
    for o in outs:
        if o is not None and o.dtype.is_floating_point and o.requires_grad:
            g = randn(*o.shape)
            gouts.append(g)
            used.append((o, g))
        else:
            gouts.append(None)
    grad_in = [t for t in inputs.values() if t.requires_grad] + [p for p in params.values() if p.requires_grad]
    grads = {}
    if used and grad_in:
        loss = sum((o * g).sum() for o, g in used)
        res = torch.autograd.grad(loss, grad_in, allow_unused=True)
        for t, g in zip(grad_in, res):
            grads[id(t)] = g if g is not None else torch.zeros_like(t)
    return outs, gouts, grads


def model_case(name, module, inputs, call=None, train=True, tol=1e-4, index_inputs=(), after=False, prep=None):
    """inputs: name -> tensor (float inputs get gradients). index_inputs: names stored +1."""
    module.train(train)
    if prep:
        prep(module)
    params = dict(module.named_parameters())
    keys = [(k, list(v.shape)) for k, v in module.state_dict().items()]
    before = {"param/" + k: v.clone() for k, v in module.state_dict().items()}
    for k, v in inputs.items():
        if v.dtype.is_floating_point:
            v.requires_grad_(True)
    outs, gouts, grads = run(lambda: (call or (lambda m, i: m(*i.values())))(module, inputs), inputs, params)
    tensors = dict(before)
    for k, v in inputs.items():
        tensors["input/" + k] = (v + 1) if k in index_inputs else v
        if id(v) in grads:
            tensors["grad/" + k] = grads[id(v)]
    for i, (o, g) in enumerate(zip(outs, gouts), 1):
        tensors["output/%d" % i] = o
        if g is not None:
            tensors["gout/%d" % i] = g
    for k, p in params.items():
        if id(p) in grads:
            tensors["pgrad/" + k] = grads[id(p)]
    after_keys = []
    if after:
        for k, v in module.state_dict().items():
            tensors["after/" + k] = v
            after_keys.append(k)
    save(name, tensors)
    models.append(
        "  {name = %s, train = %s, keys = {%s}, inputs = %s, grads = %s, pgrads = %s, nout = %d, tol = %r, after = %s}"
        % (lua_str(name), "true" if train else "false", ", ".join("{%s, {%s}}" % (lua_str(k), ", ".join(map(str, s))) for k, s in keys),
           lua_list(inputs.keys()), lua_list([k for k, v in inputs.items() if id(v) in grads]),
           lua_list([k for k, p in params.items() if id(p) in grads]), len(outs), tol, lua_list(after_keys)))


def fn_case(name, expr, inputs, fn, tol=1e-5, index_inputs=(), no_grad=()):
    """expr: Lua source using F and the inputs; fn(*inputs) the torch equivalent (inputs in order)."""
    for k, v in inputs.items():
        if v.dtype.is_floating_point and k not in no_grad:
            v.requires_grad_(True)
    outs, gouts, grads = run(lambda: fn(*inputs.values()), inputs, {})
    tensors = {}
    for k, v in inputs.items():
        tensors["input/" + k] = (v + 1) if k in index_inputs else v
        if id(v) in grads:
            tensors["grad/" + k] = grads[id(v)]
    for i, (o, g) in enumerate(zip(outs, gouts), 1):
        tensors["output/%d" % i] = (o + 1) if (not o.dtype.is_floating_point and o.dtype != torch.bool) else o
        if g is not None:
            tensors["gout/%d" % i] = g
    save("f_" + name, tensors)
    if not expr.lstrip().startswith("return"):
        expr = "return " + expr
    functional.append("  {name = %s, expr = %s, inputs = %s, grads = %s, nout = %d, tol = %r}" % (
        lua_str(name), lua_str(expr), lua_list(inputs.keys()),
        lua_list([k for k, v in inputs.items() if id(v) in grads]), len(outs), tol))


def randomize(module):
    """Random values for every parameter and floating buffer (so loading is really checked)."""
    with torch.no_grad():
        for _, p in module.named_parameters():
            p.copy_(randn(*p.shape, scale=0.5))
        for k, b in module.named_buffers():
            if k.endswith("running_var"):
                b.copy_(rand(*b.shape, lo=0.5, hi=2.0))
            elif b.dtype.is_floating_point:
                b.copy_(randn(*b.shape, scale=0.5))
    return module


# ---- models ---------------------------------------------------------------------------------

def gen_models():
    model_case("linear", nn.Linear(4, 3), {"x": randn(2, 5, 4)})
    model_case("linear_nobias", nn.Linear(4, 3, bias=False), {"x": randn(3, 4)})
    model_case("conv", nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), {"x": randn(2, 4, 7, 7)})
    model_case("conv_dilated", nn.Conv2d(3, 4, (3, 2), padding=(2, 1), dilation=2, bias=False),
               {"x": randn(1, 3, 8, 6)})
    model_case("conv_same", nn.Conv2d(3, 4, 4, padding="same"), {"x": randn(2, 3, 6, 5)})
    model_case("conv_reflect", nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), {"x": randn(1, 2, 5, 6)})
    model_case("bn2d_train", randomize(nn.BatchNorm2d(4)), {"x": randn(3, 4, 5, 5) * 2 + 1}, after=True)
    model_case("bn2d_eval", randomize(nn.BatchNorm2d(4)), {"x": randn(3, 4, 5, 5)}, train=False, after=True)
    model_case("bn1d_train", randomize(nn.BatchNorm1d(4)), {"x": randn(6, 4)}, after=True)
    model_case("bn1d_3d_train", randomize(nn.BatchNorm1d(3)), {"x": randn(4, 3, 5)}, after=True)
    cma = randomize(nn.BatchNorm1d(3, momentum=None))
    cma.num_batches_tracked.fill_(3)
    model_case("bn1d_cma", cma, {"x": randn(5, 3)}, after=True)
    model_case("bn2d_noaffine", nn.BatchNorm2d(3, affine=False), {"x": randn(2, 3, 4, 4)}, after=True)
    model_case("ln", randomize(nn.LayerNorm(6)), {"x": randn(2, 3, 6)})
    model_case("ln2", randomize(nn.LayerNorm((3, 6))), {"x": randn(2, 3, 6)})
    model_case("gn", randomize(nn.GroupNorm(2, 6)), {"x": randn(2, 6, 4, 4)})

    mha = randomize(nn.MultiheadAttention(8, 2, batch_first=True))
    kpm = torch.tensor([[False, False, True, False], [False, False, False, True]])
    model_case("mha", mha, {"q": randn(2, 5, 8), "kv": randn(2, 4, 8), "kpm": kpm},
               call=lambda m, i: m(i["q"], i["kv"], i["kv"], key_padding_mask=i["kpm"]))
    mha2 = randomize(nn.MultiheadAttention(8, 4))
    causal = torch.triu(torch.full((5, 5), float("-inf")), diagonal=1)
    model_case("mha_seq", mha2, {"x": randn(5, 2, 8), "mask": causal},
               call=lambda m, i: m(i["x"], i["x"], i["x"], attn_mask=i["mask"], average_attn_weights=False))

    emb = nn.Embedding(10, 3, padding_idx=2)
    model_case("embedding", emb, {"idx": torch.tensor([[0, 2, 9, 2], [5, 5, 1, 3]])}, index_inputs=("idx",))

    cnn = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, 5))
    model_case("cnn", cnn, {"x": randn(2, 3, 12, 12)}, after=True, prep=lambda m: m[9].eval())

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(c)
            self.act = nn.SiLU()

        def forward(self, x):
            return x + self.act(self.bn(self.conv(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1) * 1.5)
            self.register_buffer("stat", torch.arange(2.0))
            self.register_buffer("tmp", torch.zeros(2), persistent=False)
            self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
            self.blocks = nn.ModuleList([Block(4), Block(4)])
            self.heads = nn.ModuleDict({"cls": nn.Linear(4, 3), "aux": nn.Linear(4, 1)})

        def forward(self, x):
            x = self.stem(x)
            for b in self.blocks:
                x = b(x)
            f = x.mean((2, 3)) * self.scale
            return self.heads["cls"](f), self.heads["aux"](f)

    model_case("net", randomize(Net()), {"x": randn(2, 3, 7, 7)}, train=False)


# ---- functional -----------------------------------------------------------------------------

def sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """PyTorch 2.x's scaled_dot_product_attention, written out (torch 1.13 lacks it)."""
    L, S = q.shape[-2], k.shape[-2]
    s = scale if scale is not None else 1 / math.sqrt(q.shape[-1])
    attn = q @ k.transpose(-2, -1) * s
    if is_causal:
        attn = attn.masked_fill(torch.ones(L, S, dtype=torch.bool).tril().logical_not(), float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn = attn.masked_fill(attn_mask.logical_not(), float("-inf"))
        else:
            attn = attn + attn_mask
    return torch.softmax(attn, -1) @ v


def gen_functional():
    fn_case("linear", "F.linear(x, w, b)", {"x": randn(2, 3, 4), "w": randn(5, 4), "b": randn(5)}, F.linear)
    fn_case("linear_nobias", "F.linear(x, w)", {"x": randn(3, 4), "w": randn(2, 4)}, F.linear)
    fn_case("embedding", "F.embedding(idx, w)", {"idx": torch.tensor([[3, 0], [1, 3]]), "w": randn(4, 3)},
            lambda idx, w: F.embedding(idx, w), index_inputs=("idx",))
    fn_case("embedding_pad", "F.embedding(idx, w, {padding_idx = 2})",
            {"idx": torch.tensor([1, 0, 1, 3]), "w": randn(4, 3)},
            lambda idx, w: F.embedding(idx, w, padding_idx=1), index_inputs=("idx",))

    # pad
    x = randn(2, 3, 4, 5)
    fn_case("pad_constant", "F.pad(x, {1, 2, 0, 1}, {value = 0.5})", {"x": x.clone()},
            lambda x: F.pad(x, (1, 2, 0, 1), value=0.5))
    fn_case("pad_crop", "F.pad(x, {-1, 2, 1, -2})", {"x": x.clone()}, lambda x: F.pad(x, (-1, 2, 1, -2)))
    fn_case("pad_3dims", "F.pad(x, {1, 0, 0, 1, 2, 1})", {"x": x.clone()}, lambda x: F.pad(x, (1, 0, 0, 1, 2, 1)))
    for mode in ("reflect", "replicate", "circular"):
        fn_case("pad_" + mode, "F.pad(x, {2, 1, 1, 3}, {mode = '%s'})" % mode, {"x": x.clone()},
                lambda x, mode=mode: F.pad(x, (2, 1, 1, 3), mode=mode))

    # interpolate
    small, big = randn(2, 3, 4, 5), randn(1, 2, 9, 8)
    fn_case("nearest_size", "F.interpolate(x, {size = {7, 9}})", {"x": small.clone()},
            lambda x: F.interpolate(x, size=(7, 9)))
    fn_case("nearest_scale2", "F.interpolate(x, {scale_factor = 2})", {"x": small.clone()},
            lambda x: F.interpolate(x, scale_factor=2))
    fn_case("nearest_down", "F.interpolate(x, {size = {4, 3}})", {"x": big.clone()},
            lambda x: F.interpolate(x, size=(4, 3)))
    fn_case("nearest_scale_frac", "F.interpolate(x, {scale_factor = {1.7, 0.6}})", {"x": big.clone()},
            lambda x: F.interpolate(x, scale_factor=(1.7, 0.6)))
    fn_case("nearest_exact", "F.interpolate(x, {size = {6, 7}, mode = 'nearest-exact'})", {"x": small.clone()},
            lambda x: F.interpolate(x, size=(6, 7), mode="nearest-exact"))
    fn_case("nearest_1d", "F.interpolate(x, {size = 11})", {"x": randn(2, 3, 5)},
            lambda x: F.interpolate(x, size=11))
    for ac in (False, True):
        acs = "true" if ac else "false"
        fn_case("bilinear_up_ac_" + acs, "F.interpolate(x, {size = {7, 9}, mode = 'bilinear', align_corners = %s})" % acs,
                {"x": small.clone()}, lambda x, ac=ac: F.interpolate(x, size=(7, 9), mode="bilinear", align_corners=ac))
        fn_case("bilinear_down_ac_" + acs, "F.interpolate(x, {size = {4, 3}, mode = 'bilinear', align_corners = %s})" % acs,
                {"x": big.clone()}, lambda x, ac=ac: F.interpolate(x, size=(4, 3), mode="bilinear", align_corners=ac))
        fn_case("bilinear_to1_ac_" + acs, "F.interpolate(x, {size = {1, 3}, mode = 'bilinear', align_corners = %s})" % acs,
                {"x": small.clone()}, lambda x, ac=ac: F.interpolate(x, size=(1, 3), mode="bilinear", align_corners=ac))
    fn_case("bilinear_scale", "F.interpolate(x, {scale_factor = 1.5, mode = 'bilinear'})", {"x": small.clone()},
            lambda x: F.interpolate(x, scale_factor=1.5, mode="bilinear", align_corners=False))
    fn_case("linear_1d", "F.interpolate(x, {size = 8, mode = 'linear', align_corners = false})", {"x": randn(2, 2, 5)},
            lambda x: F.interpolate(x, size=8, mode="linear", align_corners=False))

    # attention
    q, k, v = randn(2, 3, 5, 4), randn(2, 3, 6, 4), randn(2, 3, 6, 3)
    fn_case("sdpa", "F.scaled_dot_product_attention(q, k, v)", {"q": q.clone(), "k": k.clone(), "v": v.clone()}, sdpa)
    fn_case("sdpa_causal", "F.scaled_dot_product_attention(q, k, v, {is_causal = true, scale = 0.3})",
            {"q": q.clone(), "k": k.clone(), "v": v.clone()}, lambda q, k, v: sdpa(q, k, v, is_causal=True, scale=0.3))
    bmask = torch.rand(5, 6, generator=gen) > 0.3
    bmask[:, 0] = True
    fn_case("sdpa_bool_mask", "F.scaled_dot_product_attention(q, k, v, {attn_mask = m})",
            {"q": q.clone(), "k": k.clone(), "v": v.clone(), "m": bmask},
            lambda q, k, v, m: sdpa(q, k, v, attn_mask=m))
    fn_case("sdpa_float_mask", "F.scaled_dot_product_attention(q, k, v, {attn_mask = m})",
            {"q": q.clone(), "k": k.clone(), "v": v.clone(), "m": randn(2, 1, 5, 6)},
            lambda q, k, v, m: sdpa(q, k, v, attn_mask=m), no_grad=("m",))

    # the C ops (or their Lua forms), through F
    x = randn(3, 5)
    for name, lua, fn in [
        ("relu", "F.relu(x)", F.relu), ("relu6", "F.relu6(x * 4)", lambda x: F.relu6(x * 4)),
        ("leaky_relu", "F.leaky_relu(x, {negative_slope = 0.2})", lambda x: F.leaky_relu(x, 0.2)),
        ("gelu", "F.gelu(x)", F.gelu), ("gelu_tanh", "F.gelu(x, {approximate = 'tanh'})",
                                        lambda x: F.gelu(x, approximate="tanh")),
        ("silu", "F.silu(x)", F.silu), ("elu", "F.elu(x, {alpha = 0.7})", lambda x: F.elu(x, 0.7)), ("hardswish", "F.hardswish(x * 3)", lambda x: F.hardswish(x * 3)),
        ("hardsigmoid", "F.hardsigmoid(x * 3)", lambda x: F.hardsigmoid(x * 3)),
        ("softplus", "F.softplus(x * 10, {beta = 2, threshold = 5})", lambda x: F.softplus(x * 10, beta=2, threshold=5)),
        ("sigmoid", "F.sigmoid(x)", torch.sigmoid), ("tanh", "F.tanh(x)", torch.tanh),
        ("softmax", "F.softmax(x, 2)", lambda x: F.softmax(x, 1)),
        ("softmax_dim1", "F.softmax(x, 1)", lambda x: F.softmax(x, 0)),
        ("log_softmax", "F.log_softmax(x, -1)", lambda x: F.log_softmax(x, -1)),
    ]:
        fn_case(name, lua, {"x": x.clone()}, fn)

    logits, tgt = randn(6, 4), torch.tensor([0, 3, 1, 2, 2, 1])
    w = torch.tensor([1.0, 2.0, 0.5, 1.5])
    fn_case("cross_entropy", "F.cross_entropy(x, t)", {"x": logits.clone(), "t": tgt}, F.cross_entropy, index_inputs=("t",))
    ign = torch.tensor([0, 3, -100, 2, 2, -100])
    fn_case("cross_entropy_full", "F.cross_entropy(x, t, {weight = w, ignore_index = -99, label_smoothing = 0.1})",
            {"x": logits.clone(), "t": ign, "w": w.clone()},
            lambda x, t, w: F.cross_entropy(x, t, weight=w, ignore_index=-100, label_smoothing=0.1),
            index_inputs=("t",), no_grad=("w",))
    fn_case("cross_entropy_none", "F.cross_entropy(x, t, {reduction = 'none', label_smoothing = 0.2})",
            {"x": logits.clone(), "t": tgt}, lambda x, t: F.cross_entropy(x, t, reduction="none", label_smoothing=0.2),
            index_inputs=("t",))
    fn_case("cross_entropy_sum_w", "F.cross_entropy(x, t, {reduction = 'sum', weight = w})",
            {"x": logits.clone(), "t": tgt, "w": w.clone()},
            lambda x, t, w: F.cross_entropy(x, t, reduction="sum", weight=w), index_inputs=("t",), no_grad=("w",))
    fn_case("cross_entropy_2d", "F.cross_entropy(x, t)", {"x": randn(2, 3, 4, 5), "t": torch.randint(0, 3, (2, 4, 5), generator=gen)},
            F.cross_entropy, index_inputs=("t",))
    probs = torch.softmax(randn(6, 4), 1)
    fn_case("cross_entropy_probs", "F.cross_entropy(x, p, {label_smoothing = 0.1})", {"x": logits.clone(), "p": probs},
            lambda x, p: F.cross_entropy(x, p, label_smoothing=0.1), no_grad=("p",))
    fn_case("nll_loss", "F.nll_loss(F.log_softmax(x, 2), t, {weight = w})", {"x": logits.clone(), "t": tgt, "w": w.clone()},
            lambda x, t, w: F.nll_loss(F.log_softmax(x, 1), t, weight=w), index_inputs=("t",), no_grad=("w",))
    y01 = (torch.rand(6, 4, generator=gen) > 0.5).float()
    fn_case("bce_logits", "F.binary_cross_entropy_with_logits(x, y, {pos_weight = pw})",
            {"x": logits.clone() * 3, "y": y01, "pw": torch.tensor([1.0, 2.0, 0.5, 3.0])},
            lambda x, y, pw: F.binary_cross_entropy_with_logits(x, y, pos_weight=pw), no_grad=("y", "pw"))
    fn_case("bce_logits_w", "F.binary_cross_entropy_with_logits(x, y, {weight = w, reduction = 'sum'})",
            {"x": logits.clone(), "y": rand(6, 4), "w": rand(6, 4)},
            lambda x, y, w: F.binary_cross_entropy_with_logits(x, y, weight=w, reduction="sum"), no_grad=("y", "w"))
    a, b = randn(4, 5), randn(4, 5)
    fn_case("mse", "F.mse_loss(a, b)", {"a": a.clone(), "b": b.clone()}, F.mse_loss)
    fn_case("l1", "F.l1_loss(a, b, {reduction = 'sum'})", {"a": a.clone(), "b": b.clone()},
            lambda a, b: F.l1_loss(a, b, reduction="sum"))
    fn_case("smooth_l1", "F.smooth_l1_loss(a, b, {beta = 0.5})", {"a": a.clone(), "b": b.clone()},
            lambda a, b: F.smooth_l1_loss(a, b, beta=0.5))
    lp = F.log_softmax(randn(4, 5), 1)
    tp = torch.softmax(randn(4, 5), 1)
    tp[0, 0] = 0
    fn_case("kl_div", "F.kl_div(a, b, {reduction = 'batchmean'})", {"a": lp.clone(), "b": tp.clone()},
            lambda a, b: F.kl_div(a, b, reduction="batchmean"), no_grad=("b",))
    fn_case("kl_div_log", "F.kl_div(a, b, {reduction = 'sum', log_target = true})", {"a": lp.clone(), "b": tp.clamp(min=1e-3).log()},
            lambda a, b: F.kl_div(a, b, reduction="sum", log_target=True))

    xb = randn(4, 3, 5, 5)
    fn_case("batch_norm_eval", "F.batch_norm(x, rm, rv, w, b, {eps = 1e-3})",
            {"x": xb.clone(), "rm": randn(3), "rv": rand(3, lo=0.5, hi=2), "w": randn(3), "b": randn(3)},
            lambda x, rm, rv, w, b: F.batch_norm(x, rm, rv, w, b, eps=1e-3), no_grad=("rm", "rv"), tol=1e-4)
    fn_case("batch_norm_train", "F.batch_norm(x, nil, nil, w, b, {training = true})",
            {"x": xb.clone(), "w": randn(3), "b": randn(3)},
            lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), tol=1e-4)
    fn_case("layer_norm", "F.layer_norm(x, {5, 5}, w, b)", {"x": xb.clone(), "w": randn(5, 5), "b": randn(5, 5)},
            lambda x, w, b: F.layer_norm(x, (5, 5), w, b), tol=1e-4)
    fn_case("group_norm", "F.group_norm(x, 3, w, b, {eps = 1e-4})", {"x": randn(2, 6, 3, 3), "w": randn(6), "b": randn(6)},
            lambda x, w, b: F.group_norm(x, 3, w, b, eps=1e-4), tol=1e-4)

    xc = randn(2, 4, 7, 8)
    fn_case("conv2d", "F.conv2d(x, w, b, {stride = {2, 1}, padding = {1, 2}, dilation = {1, 2}, groups = 2})",
            {"x": xc.clone(), "w": randn(6, 2, 3, 3), "b": randn(6)},
            lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2), tol=1e-4)
    fn_case("conv2d_valid", "F.conv2d(x, w, nil, {padding = 'valid'})", {"x": xc.clone(), "w": randn(3, 4, 2, 3)},
            lambda x, w: F.conv2d(x, w, None, padding="valid"), tol=1e-4)
    fn_case("conv2d_depthwise", "F.conv2d(x, w, b, {padding = 1, groups = 4})",
            {"x": xc.clone(), "w": randn(4, 1, 3, 3), "b": randn(4)},
            lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=4), tol=1e-4)
    fn_case("max_pool2d", "F.max_pool2d(x, 3, {stride = 2, padding = 1})", {"x": xc.clone()},
            lambda x: F.max_pool2d(x, 3, stride=2, padding=1))
    fn_case("max_pool2d_ceil_dil", "F.max_pool2d(x, {2, 3}, {stride = 2, ceil_mode = true, dilation = {1, 2}})",
            {"x": xc.clone()}, lambda x: F.max_pool2d(x, (2, 3), stride=2, ceil_mode=True, dilation=(1, 2)))
    fn_case("max_pool2d_indices", "F.max_pool2d(x, 2, {return_indices = true})", {"x": xc.clone()},
            lambda x: F.max_pool2d(x, 2, return_indices=True))
    fn_case("avg_pool2d", "F.avg_pool2d(x, 3, {stride = 2, padding = 1})", {"x": xc.clone()},
            lambda x: F.avg_pool2d(x, 3, stride=2, padding=1))
    fn_case("avg_pool2d_ceil_nopad", "F.avg_pool2d(x, 3, {stride = 2, padding = 1, ceil_mode = true, count_include_pad = false})",
            {"x": xc.clone()}, lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=False))
    fn_case("avg_pool2d_divisor", "F.avg_pool2d(x, 2, {divisor_override = 3})", {"x": xc.clone()},
            lambda x: F.avg_pool2d(x, 2, divisor_override=3))
    fn_case("adaptive_avg", "F.adaptive_avg_pool2d(x, {3, 5})", {"x": xc.clone()},
            lambda x: F.adaptive_avg_pool2d(x, (3, 5)))
    fn_case("adaptive_avg_global", "F.adaptive_avg_pool2d(x, 1)", {"x": xc.clone()},
            lambda x: F.adaptive_avg_pool2d(x, 1))
    fn_case("adaptive_max", "F.adaptive_max_pool2d(x, {3, 5})", {"x": xc.clone()},
            lambda x: F.adaptive_max_pool2d(x, (3, 5)))


def main():
    global OUT
    root = sys.argv[1]
    OUT = os.path.join(root, "nn")
    os.makedirs(OUT, exist_ok=True)
    gen_models()
    gen_functional()
    write_lua(os.path.join(OUT, "nn_ref.lua"), "-- generated by tests/ref/gen_nn.py\nreturn {\nmodels = {\n%s\n},\n"
              "functional = {\n%s\n},\n}\n" % (",\n".join(models), ",\n".join(functional)))


if __name__ == "__main__":
    main()
