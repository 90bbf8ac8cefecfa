"""Reference cases for convolution and pooling, computed with PyTorch.

Usage: gen_nn_conv.py <fixtures_dir>

Writes <fixtures_dir>/nn_conv_ref.lua, a Lua chunk returning a list of cases:

  {name = "conv2d_stride2_f32", tol = 1e-4,
   inputs = {x = {dtype, shape, data}, w = ..., b = ..., gout = ...},
   call = "return F.conv2d(x, w, b, {stride = 2})",        -- the forward, from Lua
   raw = "return F._conv2d_backward(gout, x, w, {stride = 2})", -- gradients from the raw backward
   grads = {"x", "w", "b"},                                -- inputs whose gradients are checked
   want = {out = spec, grads = {spec, ...}, indices = spec or nil}}

Max-pooling cases also carry `icall`, a call returning (out, indices). `call`, `raw` and
`icall` run with F = vtl.nn.functional and the inputs as locals. Expected values
are computed in float64 from the (rounded) inputs, so an f32 case measures vtl's own error;
gradients are torch.autograd.grad(out, inputs, gout) for a random upstream gradient gout.
Max-pooling indices are 1-based on the Lua side (PyTorch's + 1).
"""
import os
import sys
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reflib import Draws, fixtures_dir, lua_str, lua_value, tensor_spec, write_cases  # noqa: E402

TORCH_DTYPE = {"f32": torch.float32, "f64": torch.float64}

draws = Draws(4321)
randn = draws.randn
cases = []


def add_case(name, dtype, tol, inputs, grads, fn, call, raw, icall=None):
    """inputs: name -> tensor of `dtype` (rounded to it); fn(**inputs as f64) -> output (and
    the torch indices when icall, a Lua call returning (out, indices), is set)."""
    ref = {k: v.detach().to(torch.float64).requires_grad_(k in grads) for k, v in inputs.items()}
    res = fn(**ref)
    out, idx = (res if icall else (res, None))
    gout = randn(*out.shape, dtype=TORCH_DTYPE[dtype])
    gs = torch.autograd.grad(out, [ref[k] for k in grads], gout.to(torch.float64))
    want = {"out": out.to(TORCH_DTYPE[dtype]), "grads": [g.to(TORCH_DTYPE[dtype]) for g in gs]}
    if idx is not None:
        want["indices"] = idx + 1
    ins = dict(inputs)
    ins["gout"] = gout
    cases.append((name, tol, ins, call, raw, grads, want, icall))


def case_fields(tol, ins, call, raw, grads, want, icall):
    ins_s = ", ".join("%s = %s" % (k, tensor_spec(v)) for k, v in ins.items())
    want_s = "out = %s, grads = {%s}" % (tensor_spec(want["out"]), ", ".join(tensor_spec(g) for g in want["grads"]))
    if "indices" in want:
        want_s += ", indices = %s" % tensor_spec(want["indices"])
    extra = ", icall = %s" % lua_str(icall) if icall else ""
    return "tol = %s, call = %s, raw = %s%s, grads = {%s},\n   inputs = {%s},\n   want = {%s}" % (
        repr(float(tol)), lua_str(call), lua_str(raw), extra, ", ".join(lua_str(g) for g in grads), ins_s, want_s)


# ---- conv2d ----

def conv_case(tag, N, C, H, W, K, R, S, dtype, bias=True, stride=1, padding=0, dilation=1, groups=1,
              lua_opts_override=None, transpose_x=False):
    td = TORCH_DTYPE[dtype]
    x = randn(N, C, W, H, dtype=td) if transpose_x else randn(N, C, H, W, dtype=td)
    w = randn(K, C // groups, R, S, dtype=td)
    b = randn(K, dtype=td) if bias else None
    inputs = {"x": x, "w": w}
    if bias:
        inputs["b"] = b
    opts = lua_opts_override if lua_opts_override is not None else {
        k: v for k, v in (("stride", stride), ("padding", padding), ("dilation", dilation), ("groups", groups))
        if v != (0 if k == "padding" else 1)}
    lx = "x:transpose(3, 4)" if transpose_x else "x"
    call = "return F.conv2d(%s, w, %s, %s)" % (lx, "b" if bias else "nil", lua_value(opts))
    grads = ["x", "w", "b"] if bias else ["x", "w"]
    # the raw gradient is for the (transposed) view; the reference is for the stored x
    raw = "local gx, gw, gb = F._conv2d_backward(gout, %s, w, %s); return %s, gw%s" % (
        lx, lua_value(opts), "gx:transpose(3, 4)" if transpose_x else "gx", ", gb" if bias else "")

    def fn(x, w, b=None):
        xx = x.transpose(2, 3) if transpose_x else x
        return F.conv2d(xx, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)

    tol = 1e-4 if dtype == "f32" else 1e-10
    add_case("conv2d_%s_%s" % (tag, dtype), dtype, tol, inputs, grads, fn, call, raw)


def conv_cases():
    for dt in ("f32", "f64"):
        conv_case("3x3_pad1", 2, 3, 7, 9, 4, 3, 3, dt, padding=1)
        conv_case("stride2_rect", 2, 4, 9, 8, 5, 3, 2, dt, bias=False, stride=2, padding=(1, 2))
        conv_case("stride_hw", 1, 3, 11, 10, 4, 3, 3, dt, stride=(2, 3), padding=(0, 1))
        conv_case("dilation2", 2, 3, 10, 10, 4, 3, 3, dt, padding=2, dilation=2)
        conv_case("dilation_hw", 1, 2, 9, 12, 3, 2, 3, dt, padding=(1, 3), dilation=(2, 3))
        conv_case("groups2", 2, 4, 8, 8, 6, 3, 3, dt, padding=1, groups=2)
        conv_case("depthwise", 2, 6, 9, 9, 6, 3, 3, dt, stride=2, padding=1, groups=6)
        conv_case("depthwise_mult2", 2, 6, 8, 8, 12, 3, 3, dt, bias=False, padding=1, groups=6)
        conv_case("depthwise16", 2, 16, 10, 10, 16, 3, 3, dt, padding=1, groups=16)
        conv_case("same_even", 2, 3, 7, 8, 4, 4, 4, dt, padding="same")
        conv_case("same_dilated", 1, 3, 9, 9, 2, 3, 2, dt, padding="same", dilation=(1, 2))
        conv_case("valid", 2, 3, 6, 7, 4, 3, 3, dt, padding="valid")
        conv_case("pointwise", 2, 8, 5, 6, 16, 1, 1, dt)
        conv_case("pointwise_s2", 2, 8, 7, 7, 4, 1, 1, dt, stride=2)
        conv_case("stem7x7", 2, 3, 16, 16, 8, 7, 7, dt, stride=2, padding=3, bias=False)
        conv_case("full_kernel", 3, 5, 4, 4, 6, 4, 4, dt)
        conv_case("blocked16", 1, 16, 8, 8, 32, 3, 3, dt, padding=1)
        conv_case("batch5", 5, 16, 6, 6, 16, 3, 3, dt, stride=2, padding=1)
        conv_case("transposed_input", 2, 3, 6, 8, 4, 3, 3, dt, padding=1, transpose_x=True)
    # positional PyTorch-order arguments: conv2d(x, w, b, stride, padding, dilation, groups)
    x, w, b = randn(2, 4, 8, 8), randn(6, 2, 3, 3), randn(6)
    add_case("conv2d_positional_f32", "f32", 1e-4, {"x": x, "w": w, "b": b}, ["x", "w", "b"],
             lambda x, w, b: F.conv2d(x, w, b, 2, 1, 1, 2), "return F.conv2d(x, w, b, 2, 1, 1, 2)",
             "return F._conv2d_backward(gout, x, w, {stride = 2, padding = 1, groups = 2})")


# ---- pooling ----

def pool_case(name, dtype, shape, fn, call, raw, indices=None, tol=None, ties=False):
    td = TORCH_DTYPE[dtype]
    x = randn(*shape, dtype=td)
    if ties:  # ReLU-like input: many windows of equal values (zeros) and repeated maxima
        x = x.clamp(min=0).mul(2).round()
    tol = tol or (1e-5 if dtype == "f32" else 1e-12)
    add_case("%s_%s" % (name, dtype), dtype, tol, {"x": x}, ["x"], fn, call, raw, icall=indices)


def max_pool(tag, dt, shape, k, opts, torch_kw, ties=False):
    lo = lua_value(opts)
    lo_idx = lua_value(dict(opts, return_indices=True))
    pool_case("max_pool2d_" + tag, dt, shape,
              lambda x: F.max_pool2d(x, k, return_indices=True, **torch_kw),
              "return F.max_pool2d(x, %s, %s)" % (lua_value(k), lo),
              "local _, idx = F.max_pool2d(x, %s, %s); return F._max_pool2d_backward(gout, x, idx)"
              % (lua_value(k), lo_idx), indices="return F.max_pool2d(x, %s, %s)" % (lua_value(k), lo_idx), ties=ties)


def avg_pool(tag, dt, shape, k, opts, torch_kw):
    lo = lua_value(opts)
    pool_case("avg_pool2d_" + tag, dt, shape, lambda x: F.avg_pool2d(x, k, **torch_kw),
              "return F.avg_pool2d(x, %s, %s)" % (lua_value(k), lo),
              "return F._avg_pool2d_backward(gout, x, %s, %s)" % (lua_value(k), lo))


def adaptive_avg(tag, dt, shape, size):
    pool_case("adaptive_avg_pool2d_" + tag, dt, shape, lambda x: F.adaptive_avg_pool2d(x, size),
              "return F.adaptive_avg_pool2d(x, %s)" % lua_value(size),
              "return F._adaptive_avg_pool2d_backward(gout, x)")


def adaptive_max(tag, dt, shape, size, ties=False):
    pool_case("adaptive_max_pool2d_" + tag, dt, shape,
              lambda x: F.adaptive_max_pool2d(x, size, return_indices=True),
              "return F.adaptive_max_pool2d(x, %s)" % lua_value(size),
              "local _, idx = F.adaptive_max_pool2d(x, %s, {return_indices = true}); "
              "return F._adaptive_max_pool2d_backward(gout, x, idx)" % lua_value(size),
              indices="return F.adaptive_max_pool2d(x, %s, {return_indices = true})" % lua_value(size), ties=ties)


def pool_cases():
    for dt in ("f32", "f64"):
        max_pool("3x3s2p1", dt, (2, 3, 9, 9), 3, {"stride": 2, "padding": 1}, {"stride": 2, "padding": 1})
        max_pool("2x2", dt, (2, 2, 6, 8), 2, {}, {})
        max_pool("ceil", dt, (1, 3, 7, 8), 2, {"ceil_mode": True}, {"ceil_mode": True})
        max_pool("ceil_pad", dt, (1, 2, 8, 8), 3, {"stride": 2, "padding": 1, "ceil_mode": True},
                 {"stride": 2, "padding": 1, "ceil_mode": True})
        max_pool("dilation", dt, (2, 2, 9, 10), 3, {"stride": 1, "dilation": 2}, {"stride": 1, "dilation": 2})
        max_pool("rect", dt, (1, 3, 9, 7), (3, 2), {"stride": (2, 1), "padding": (1, 0)},
                 {"stride": (2, 1), "padding": (1, 0)})
        max_pool("unbatched", dt, (3, 6, 6), 2, {"stride": 1}, {"stride": 1})
        max_pool("ties", dt, (2, 3, 9, 9), 3, {"stride": 2, "padding": 1}, {"stride": 2, "padding": 1}, ties=True)
        max_pool("ties_overlap", dt, (1, 2, 8, 8), (3, 2), {"stride": 1}, {"stride": 1}, ties=True)
        avg_pool("3x3s2p1", dt, (2, 3, 9, 9), 3, {"stride": 2, "padding": 1}, {"stride": 2, "padding": 1})
        avg_pool("exclude_pad", dt, (2, 3, 9, 9), 3, {"stride": 2, "padding": 1, "count_include_pad": False},
                 {"stride": 2, "padding": 1, "count_include_pad": False})
        avg_pool("ceil", dt, (1, 2, 8, 7), 3, {"stride": 2, "padding": 1, "ceil_mode": True},
                 {"stride": 2, "padding": 1, "ceil_mode": True})
        avg_pool("ceil_exclude", dt, (1, 2, 8, 7), 3,
                 {"stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False},
                 {"stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False})
        avg_pool("divisor", dt, (2, 2, 6, 6), 2, {"divisor_override": 3}, {"divisor_override": 3})
        avg_pool("rect", dt, (1, 3, 9, 7), (3, 2), {"stride": (2, 1), "padding": (1, 0)},
                 {"stride": (2, 1), "padding": (1, 0)})
        avg_pool("unbatched", dt, (3, 6, 6), 2, {}, {})
        adaptive_avg("global", dt, (4, 8, 7, 7), 1)
        adaptive_avg("3x3_of_7x7", dt, (2, 3, 7, 7), 3)
        adaptive_avg("uneven", dt, (2, 3, 9, 11), (4, 5))
        adaptive_avg("upsample", dt, (1, 2, 3, 4), (5, 7))
        adaptive_avg("unbatched", dt, (3, 5, 5), (2, 3))
        adaptive_max("global", dt, (2, 4, 6, 5), 1)
        adaptive_max("3x3_of_8x8", dt, (2, 3, 8, 8), 3)
        adaptive_max("uneven", dt, (2, 3, 9, 11), (4, 5))
        adaptive_max("unbatched", dt, (3, 7, 6), (2, 4))
        adaptive_max("ties", dt, (2, 3, 8, 9), (3, 4), ties=True)
    # positional PyTorch-order arguments: max_pool2d(x, kernel, stride, padding)
    pool_case("max_pool2d_positional", "f32", (1, 2, 7, 7), lambda x: F.max_pool2d(x, 3, 2, 1, return_indices=True),
              "return F.max_pool2d(x, 3, 2, 1)",
              "local _, idx = F.max_pool2d(x, 3, 2, 1, 1, false, true); return F._max_pool2d_backward(gout, x, idx)",
              indices="return F.max_pool2d(x, 3, 2, 1, 1, false, true)")


def main():
    out_dir = fixtures_dir()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*padding='same'.*")
    conv_cases()
    pool_cases()
    write_cases(out_dir, "nn_conv_ref.lua", __file__, ((c[0], case_fields(*c[1:])) for c in cases))


if __name__ == "__main__":
    main()
