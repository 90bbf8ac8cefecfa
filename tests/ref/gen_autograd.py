"""Reference gradients for vtl's autograd, computed with PyTorch.

Usage: gen_autograd.py <fixtures_dir>

Writes <fixtures_dir>/autograd_ref.lua, a Lua chunk returning a list of cases:

  {name = "...", expr = "return a:mul(b)", tol = 1e-5,
   inputs = {a = {dtype = "f32", shape = {3, 1}, data = {...}}, ...},
   requires = {"a", "b"},
   want = {dtype = "f32", shape = {3, 4}, data = {...}},
   g = {dtype = "f32", shape = {3, 4}, data = {...}},
   grads = {a = {dtype = "f32", shape = {3, 1}, data = {...}}, ...}}

`expr` is Lua source run with `vtl` and the inputs as locals; it returns one tensor. The
inputs named in `requires` require grad. `want` is the forward result, `g` the upstream
gradient passed to `backward`, and `grads` the gradient PyTorch gives each input in
`requires` (torch.autograd.grad(out, inputs, g)). Data is flat, row-major. Index tensors
and index arguments are 1-based on the Lua side (vtl's convention): PyTorch's plus one.
"""
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reflib import (  # noqa: E402
    Draws, fixtures_dir, idx1, lua_num, lua_str, shape_tag, tensor_spec, write_cases)

draws = Draws(4321)
gen = draws.gen
randn, rand, randint, nonzero = draws.randn, draws.rand, draws.randint, draws.nonzero
cases = []

TOL = 1e-5       # elementwise, views, indexing
TOL_RED = 1e-4   # reductions and matmul


# ---- random inputs ----

def spread(*shape, dtype=torch.float32):
    """Distinct values, at least 0.05 apart, shuffled: no ties for max/min/sort/topk."""
    n = 1
    for s in shape:
        n *= s
    perm = torch.randperm(n, generator=gen).to(torch.float64)
    jitter = rand(n, lo=0.0, hi=0.03, dtype=torch.float64)
    return ((perm - n / 2) * 0.1 + jitter).reshape(shape).to(dtype)


# ---- cases ----

def case(name, expr, inputs, fn, requires=None, tol=TOL):
    """inputs: dict name -> tensor (insertion order = fn's argument order).
    fn(*tensors) computes the same result with PyTorch. requires: the input names that require
    grad (default: every floating-point input)."""
    if not re.search(r"\breturn\b", expr):
        expr = "return " + expr
    if requires is None:
        requires = [k for k, v in inputs.items() if v.dtype.is_floating_point]
    leaves = {}
    for k, v in inputs.items():
        leaves[k] = v.detach().clone().requires_grad_(k in requires)
    out = fn(*leaves.values())
    assert out.requires_grad, "case without a differentiable output: " + name
    g = randn(*out.shape, dtype=out.dtype)
    diff = [leaves[k] for k in requires]
    grads = torch.autograd.grad(out, diff, g, allow_unused=True)
    gd = {}
    for k, gr in zip(requires, grads):
        gd[k] = gr if gr is not None else torch.zeros_like(leaves[k])
    cases.append((name, expr, tol, inputs, requires, out.detach(), g, gd))


def case_fields(expr, tol, inputs, requires, want, g, grads):
    ins = ", ".join("%s = %s" % (k, tensor_spec(v)) for k, v in inputs.items())
    req = ", ".join(lua_str(k) for k in requires)
    gr = ", ".join("%s = %s" % (k, tensor_spec(v)) for k, v in grads.items())
    return ("expr = %s, tol = %s,\n   inputs = {%s},\n   requires = {%s},\n   want = %s,\n   g = %s,\n"
            "   grads = {%s}" % (lua_str(expr), lua_num(tol, True), ins, req, tensor_spec(want), tensor_spec(g), gr))


def away_from_multiples(make, quotient):
    """make() redrawn until quotient(x) is at least 0.05 from every integer (remainder jumps there)."""
    while True:
        x = make()
        q = quotient(x.double())
        if ((q - q.round()).abs() > 0.05).all():
            return x


def rem_pair(sa, sb):
    """a, b for a:remainder(b), a / b away from integers."""
    while True:
        a, b = randn(*sa, scale=3.0), nonzero(*sb)
        q = a.double() / b.double()
        if ((q - q.round()).abs() > 0.05).all():
            return a, b


BCAST = [((3, 4), (3, 4)), ((3, 1), (1, 4)), ((2, 3, 4), (4,)), ((), (2, 3)), ((5, 1, 3), (1, 4, 1))]


def binary_cases():
    ops = {
        "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
        "maximum": torch.maximum, "minimum": torch.minimum, "atan2": torch.atan2,
    }
    for op, fn in ops.items():
        for sa, sb in BCAST:
            a, b = randn(*sa), randn(*sb)
            if op == "div":
                b = nonzero(*sb)
            case("%s %s*%s" % (op, shape_tag(sa), shape_tag(sb)), "a:%s(b)" % op, {"a": a, "b": b}, fn)
    for sa, sb in BCAST:
        a, b = rand(*sa, lo=0.3, hi=3.0), randn(*sb)
        case("pow %s*%s" % (shape_tag(sa), shape_tag(sb)), "a:pow(b)", {"a": a, "b": b}, torch.pow)
    for sa, sb in BCAST[:3]:
        a, b = rem_pair(sa, sb)
        case("remainder %s*%s" % (shape_tag(sa), shape_tag(sb)), "a:remainder(b)", {"a": a, "b": b}, torch.remainder)

    # metamethods
    a, b = randn(3, 1), randn(1, 4)
    case("__add", "a + b", {"a": a, "b": b}, lambda a, b: a + b)
    case("__sub", "a - b", {"a": a, "b": b}, lambda a, b: a - b)
    case("__mul", "a * b", {"a": a, "b": b}, lambda a, b: a * b)
    case("__div", "a / b", {"a": a, "b": nonzero(1, 4)}, lambda a, b: a / b)
    case("__pow", "a ^ b", {"a": rand(3, 1, lo=0.3, hi=2.0), "b": b}, lambda a, b: a ** b)
    ra, rb = rem_pair((3, 4), (4,))
    case("__mod", "a % b", {"a": ra, "b": rb}, torch.remainder)
    case("__unm", "-a", {"a": a}, lambda a: -a)

    # only one side requires grad
    a, b = randn(3, 4), nonzero(3, 4)
    case("mul only a requires grad", "a * b", {"a": a, "b": b}, lambda a, b: a * b, requires=["a"])
    case("div only b requires grad", "a / b", {"a": a, "b": b}, lambda a, b: a / b, requires=["b"])
    case("pow only exponent requires grad", "a ^ b", {"a": rand(3, 4, lo=0.3, hi=2.0), "b": a},
         lambda a, b: a ** b, requires=["b"])
    # a float tensor times an integer tensor
    i = randint(-3, 4, 4)
    case("mul f32 * i64", "a * i", {"a": a, "i": i}, lambda a, i: a * i)
    case("add i64 + f32", "i + a", {"a": a, "i": i}, lambda a, i: i + a)
    # the same tensor on both sides, and through several paths
    case("a * a", "a * a", {"a": a}, lambda a: a * a)
    case("a - a:t():t() + a", "a:sub(a:t():t()) + a", {"a": a}, lambda a: a - a.t().t() + a)
    case("diamond exp(a) * sin(a) + a", "a:exp() * a:sin() + a", {"a": a}, lambda a: a.exp() * a.sin() + a)
    a64, b64 = randn(4, 2, dtype=torch.float64), rand(2, dtype=torch.float64)
    case("f64 mul/div chain", "(a * b):div(b + 3):exp()", {"a": a64, "b": b64},
         lambda a, b: (a * b).div(b + 3).exp(), tol=1e-10)


def scalar_cases():
    a = away_from_multiples(lambda: randn(2, 3, scale=2.0), lambda a: a / 1.5)  # for a % 1.5
    p = rand(2, 3, lo=0.3, hi=3.0)
    d = away_from_multiples(lambda: nonzero(2, 3), lambda d: 7 / d)  # for 7 % d
    A = {"a": a}
    S = [
        ("a + 2", A, lambda a: a + 2),
        ("2 + a", A, lambda a: 2 + a),
        ("a - 1.5", A, lambda a: a - 1.5),
        ("3 - a", A, lambda a: 3 - a),
        ("a * 2.5", A, lambda a: a * 2.5),
        ("2.5 * a", A, lambda a: 2.5 * a),
        ("a / 4", A, lambda a: a / 4),
        ("3 / a", {"a": d}, lambda a: 3 / a),
        ("a ^ 2", A, lambda a: a ** 2),
        ("a ^ 3", A, lambda a: a ** 3),
        ("a ^ 0.5", {"a": p}, lambda a: a ** 0.5),
        ("a ^ -1.5", {"a": p}, lambda a: a ** -1.5),
        ("2 ^ a", A, lambda a: torch.pow(2, a)),
        ("0.5 ^ a", A, lambda a: torch.pow(0.5, a)),
        ("a % 1.5", A, lambda a: torch.remainder(a, 1.5)),
        ("7 % a", {"a": d}, lambda a: torch.remainder(torch.full_like(a, 7.0), a)),
        ("a:add(2)", A, lambda a: a.add(2)),
        ("a:sub(2)", A, lambda a: a.sub(2)),
        ("a:mul(-3)", A, lambda a: a.mul(-3)),
        ("a:div(0.25)", A, lambda a: a.div(0.25)),
        ("a:pow(2)", A, lambda a: a.pow(2)),
        ("a:maximum(0.3)", A, lambda a: torch.clamp(a, min=0.3)),
        ("a:minimum(-0.2)", A, lambda a: torch.clamp(a, max=-0.2)),
        ("a:atan2(0.7)", A, lambda a: torch.atan2(a, torch.tensor(0.7))),
    ]
    for expr, ins, fn in S:
        case("scalar " + expr, expr, ins, fn)


def unary_cases():
    gen_f = randn(3, 4, scale=1.5)
    pos = rand(3, 4, lo=0.1, hi=4.0)
    ops = {
        "neg": gen_f, "exp": gen_f, "log": pos, "log2": pos, "sqrt": pos, "rsqrt": pos, "abs": nonzero(3, 4),
        "sigmoid": randn(3, 4, scale=3.0), "tanh": gen_f, "relu": nonzero(3, 4), "sin": randn(3, 4, scale=3.0),
        "cos": randn(3, 4, scale=3.0), "log1p": rand(3, 4, lo=-0.8, hi=3.0), "expm1": gen_f,
        "reciprocal": nonzero(3, 4), "square": gen_f, "erf": gen_f,
    }
    for op, x in ops.items():
        fn = getattr(torch, op)
        case("unary %s" % op, "a:%s()" % op, {"a": x}, fn)
    # a 0-d input, a transposed (non-contiguous) input, and f64
    z = torch.tensor(0.7)
    case("unary exp 0-d", "a:exp()", {"a": z}, torch.exp)
    case("unary tanh of a transposed view", "a:t():tanh()", {"a": randn(4, 3)}, lambda a: a.t().tanh())
    case("unary sigmoid f64", "a:sigmoid()", {"a": randn(3, 4, dtype=torch.float64)}, torch.sigmoid, tol=1e-10)
    case("unary log f64", "a:log()", {"a": rand(5, lo=0.2, hi=2.0, dtype=torch.float64)}, torch.log, tol=1e-10)
    x = randn(4, 5, scale=2.0)
    case("clamp(min, max)", "a:clamp(-0.5, 0.7)", {"a": x}, lambda a: a.clamp(-0.5, 0.7))
    case("clamp(min)", "a:clamp(0.1)", {"a": x}, lambda a: a.clamp(min=0.1))
    case("clamp(nil, max)", "a:clamp(nil, 1)", {"a": x}, lambda a: a.clamp(max=1))
    case("clip(min, max)", "a:clip(-1, 1)", {"a": x}, lambda a: a.clip(-1, 1))
    # compositions
    case("softplus-like log(1 + exp(a))", "(a:exp() + 1):log()", {"a": x}, lambda a: (a.exp() + 1).log())
    case("gelu-like a * sigmoid(1.702 a)", "a * (a * 1.702):sigmoid()", {"a": x}, lambda a: a * (a * 1.702).sigmoid())
    case("a:relu():sqrt() of positives", "(a:relu() + 0.5):sqrt()", {"a": x}, lambda a: (a.relu() + 0.5).sqrt())


def select_cases():
    m, y = randn(3, 4), randn(3, 4)
    c = m > 0
    case("vtl.where(c, a, b)", "vtl.where(c, a, b)", {"c": c, "a": m, "b": y}, lambda c, a, b: torch.where(c, a, b))
    bc = torch.tensor([[True], [False], [True]])
    yb = randn(4)
    case("vtl.where broadcast (3x1 cond, 4 b)", "vtl.where(c, a, b)", {"c": bc, "a": m, "b": yb},
         lambda c, a, b: torch.where(c, a, b))
    a1 = randn(1, 4)
    case("vtl.where broadcast a 1x4 b 3x1", "vtl.where(c, a, b)", {"c": c, "a": a1, "b": randn(3, 1)},
         lambda c, a, b: torch.where(c, a, b))
    case("vtl.where(c, a, 0)", "vtl.where(c, a, 0)", {"c": c, "a": m},
         lambda c, a: torch.where(c, a, torch.tensor(0.0)))
    case("vtl.where(c, 1.5, b)", "vtl.where(c, 1.5, b)", {"c": c, "b": y},
         lambda c, b: torch.where(c, torch.tensor(1.5), b))
    case("a:where(c, b)", "a:where(c, b)", {"c": c, "a": m, "b": y}, lambda c, a, b: a.where(c, b))
    la, lb = randn(3, 4), randn(3, 4)
    case("lerp scalar weight", "a:lerp(b, 0.3)", {"a": la, "b": lb}, lambda a, b: torch.lerp(a, b, 0.3))
    w = rand(4)
    case("lerp tensor weight (broadcast)", "a:lerp(b, w)", {"a": la, "b": lb, "w": w},
         lambda a, b, w: torch.lerp(a, b, w))
    case("lerp broadcast a 3x1 b 1x4 w 3x4", "a:lerp(b, w)", {"a": randn(3, 1), "b": randn(1, 4), "w": rand(3, 4)},
         lambda a, b, w: torch.lerp(a, b, w))
    case("lerp weight only", "a:lerp(b, w)", {"a": la, "b": lb, "w": rand(3, 4)},
         lambda a, b, w: torch.lerp(a, b, w), requires=["w"])
    mf = m < 0
    case("masked_fill", "a:masked_fill(m, -1)", {"a": m, "m": mf}, lambda a, m: a.masked_fill(m, -1))
    bmask = torch.tensor([True, False, False, True])
    case("masked_fill broadcast mask", "a:masked_fill(m, 0.5)", {"a": m, "m": bmask},
         lambda a, m: a.masked_fill(m, 0.5))


def copy_cases():
    a = randn(3, 4)
    case("double()", "a:double()", {"a": a}, lambda a: a.double())
    case('to("f64")', 'a:to("f64")', {"a": a}, lambda a: a.to(torch.float64))
    d = randn(3, 4, dtype=torch.float64)
    case("float() of f64", "a:float()", {"a": d}, lambda a: a.float())
    case("float() of f32 (same dtype)", "a:float()", {"a": a}, lambda a: a.float())
    case('to("f32") of f32 then exp', 'a:to("f32"):exp()', {"a": a}, lambda a: a.to(torch.float32).exp())
    case("double():exp():float()", "a:double():exp():float()", {"a": a}, lambda a: a.double().exp().float())
    case("clone()", "a:clone()", {"a": a}, lambda a: a.clone())
    case("clone() * a", "a:clone() * a", {"a": a}, lambda a: a.clone() * a)
    case("contiguous() of contiguous", "a:contiguous()", {"a": a}, lambda a: a.contiguous())
    case("t():contiguous()", "a:t():contiguous()", {"a": a}, lambda a: a.t().contiguous())


def view_cases():
    a = randn(2, 3, 4)
    A = {"a": a}
    V = [
        ("a:view(6, -1)", lambda a: a.view(6, -1)),
        ("a:view({-1})", lambda a: a.view(-1)),
        ("a:reshape(4, -1, 2)", lambda a: a.reshape(4, -1, 2)),
        ("a:reshape(2, 3, 4)", lambda a: a.reshape(2, 3, 4)),
        ("a:permute(3, 1, 2):reshape(4, 6)", lambda a: a.permute(2, 0, 1).reshape(4, 6)),
        ("a:permute(3, 1, 2)", lambda a: a.permute(2, 0, 1)),
        ("a:permute(-1, -3, -2)", lambda a: a.permute(2, 0, 1)),
        ("a:transpose(1, 3)", lambda a: a.transpose(0, 2)),
        ("a:transpose(-1, -2)", lambda a: a.transpose(-1, -2)),
        ("a:narrow(3, 2, 2)", lambda a: a.narrow(2, 1, 2)),
        ("a:narrow(2, -2, 2)", lambda a: a.narrow(1, 1, 2)),
        ("a:select(2, 3)", lambda a: a.select(1, 2)),
        ("a:select(3, -1)", lambda a: a.select(2, -1)),
        ("a:unsqueeze(1)", lambda a: a.unsqueeze(0)),
        ("a:unsqueeze(-1)", lambda a: a.unsqueeze(-1)),
        ("a:flatten()", lambda a: a.flatten()),
        ("a:flatten(2)", lambda a: a.flatten(1)),
        ("a:flatten(1, 2)", lambda a: a.flatten(0, 1)),
        ("a:tile(2, 1, 2)", lambda a: a.tile((2, 1, 2))),
        ('a["repeat"](a, 2, 1, 1, 3)', lambda a: a.repeat(2, 1, 1, 3)),
        ("a:narrow(3, 2, 2):select(1, 2)", lambda a: a.narrow(2, 1, 2).select(0, 1)),
        ("a:transpose(1, 2):reshape(3, 8)", lambda a: a.transpose(0, 1).reshape(3, 8)),
    ]
    for expr, fn in V:
        case("view " + expr, expr, A, fn)
    m = randn(3, 5)
    case("view a:t()", "a:t()", {"a": m}, lambda a: a.t())
    case("view a:t() of 1-D", "a:t()", {"a": randn(5)}, lambda a: a.t())
    s = randn(1, 3, 1, 2)
    case("view a:squeeze()", "a:squeeze()", {"a": s}, lambda a: a.squeeze())
    case("view a:squeeze(3)", "a:squeeze(3)", {"a": s}, lambda a: a.squeeze(2))
    case("view a:squeeze(2) (size 3: no-op)", "a:squeeze(2)", {"a": s}, lambda a: a.squeeze(1))
    e = randn(3, 1)
    case("view a:expand(3, 4)", "a:expand(3, 4)", {"a": e}, lambda a: a.expand(3, 4))
    case("view a:expand(3, 4) of 0-d", "a:expand(3, 4)", {"a": torch.tensor(0.5)}, lambda a: a.expand(3, 4))
    case("view a:expand(2, -1, 4)", "a:expand(2, -1, 4)", {"a": e}, lambda a: a.expand(2, -1, 4))
    case("view a:expand_as(b)", "a:expand_as(b)", {"a": e, "b": randn(2, 3, 5)}, lambda a, b: a.expand_as(b),
         requires=["a"])
    case("view a:view_as(b)", "a:view_as(b)", {"a": randn(6), "b": randn(2, 3)}, lambda a, b: a.view_as(b),
         requires=["a"])
    r = randn(2, 3)
    case("view a:tile(2, 3)", "a:tile(2, 3)", {"a": r}, lambda a: a.tile((2, 3)))
    case("view a:tile(2) pads leading", "a:tile(2)", {"a": r}, lambda a: a.tile((2,)))
    case('view a["repeat"](a, 3) 1-D', 'a["repeat"](a, 3)', {"a": randn(4)}, lambda a: a.repeat(3))
    case('view a["repeat"](a, 2, 1, 2) adds a dim', 'a["repeat"](a, 2, 1, 2)', {"a": r}, lambda a: a.repeat(2, 1, 2))


def index_cases():
    a = randn(4, 3, 5)
    A = {"a": a}
    I = [
        ("a[2]", lambda a: a[1]),
        ("a[-1]", lambda a: a[-1]),
        ("a[{ {2, 3}, {}, -1 }]", lambda a: a[1:3, :, -1]),
        ("a[{ {1, -1, 2} }]", lambda a: a[0::2]),
        ("a[{2, {1, 3}, {2, 5, 2}}]", lambda a: a[1, 0:3, 1:5:2]),
        ("a[{ {}, 2 }]", lambda a: a[:, 1]),
        ("a[{ {-2, -1} }]", lambda a: a[-2:]),
        ("a[2][3]", lambda a: a[1][2]),
    ]
    for expr, fn in I:
        case("index " + expr, expr, A, fn)
    m = randn(3, 4)
    mask = m > 0
    case("index a[mask] same shape", "a[m]", {"a": m, "m": mask}, lambda a, m: a[m])
    rmask = torch.tensor([True, False, True])
    case("index a[row_mask]", "a[m]", {"a": m, "m": rmask}, lambda a, m: a[m])
    idx = torch.tensor([2, 0, 2, 1])
    case("index a[idx] with a repeat", "a[i]", {"a": m, "i": idx1(idx)}, lambda a, i: a[i - 1])
    case("index a[idx] 3-D", "a[i]", {"a": a, "i": idx1(torch.tensor([3, 1, 3]))}, lambda a, i: a[i - 1])
    ix = torch.tensor([3, 0, 3, 3])
    case("index_select(2, idx) duplicates", "a:index_select(2, i)", {"a": m, "i": idx1(ix)},
         lambda a, i: a.index_select(1, i - 1))
    case("index_select(1, idx i32)", "a:index_select(1, i)", {"a": m, "i": idx1(torch.tensor([2, 2, 0])).int()},
         lambda a, i: a.index_select(0, i.long() - 1))
    case("index_select(3, idx) 3-D", "a:index_select(3, i)", {"a": a, "i": idx1(torch.tensor([4, 0]))},
         lambda a, i: a.index_select(2, i - 1))
    g = randint(0, 4, 3, 6)
    case("gather(2, idx)", "a:gather(2, i)", {"a": m, "i": idx1(g)}, lambda a, i: a.gather(1, i - 1))
    g0 = randint(0, 3, 5, 4)
    case("gather(1, idx)", "a:gather(1, i)", {"a": m, "i": idx1(g0)}, lambda a, i: a.gather(0, i - 1))
    gs = randint(0, 4, 2, 3)
    case("gather(2, idx) index smaller than input", "a:gather(2, i)", {"a": m, "i": idx1(gs)},
         lambda a, i: a.gather(1, i - 1))
    g3 = randint(0, 5, 4, 3, 2)
    case("gather(3, idx) 3-D", "a:gather(3, i)", {"a": a, "i": idx1(g3)}, lambda a, i: a.gather(2, i - 1))
    case("masked_select same shape", "a:masked_select(m)", {"a": m, "m": mask}, lambda a, m: a.masked_select(m))
    bm = torch.tensor([True, False, True, True])
    case("masked_select broadcast mask", "a:masked_select(m)", {"a": m, "m": bm}, lambda a, m: a.masked_select(m))


def reduction_cases():
    a = randn(3, 4, 5)
    A = {"a": a}
    R = [
        ("a:sum()", lambda a: a.sum()),
        ("a:sum(2)", lambda a: a.sum(1)),
        ("a:sum(2, true)", lambda a: a.sum(1, keepdim=True)),
        ("a:sum(-1)", lambda a: a.sum(-1)),
        ("a:sum({1, 3})", lambda a: a.sum((0, 2))),
        ("a:sum{dim = 3, keepdim = true}", lambda a: a.sum(2, keepdim=True)),
        ("a:mean()", lambda a: a.mean()),
        ("a:mean(1)", lambda a: a.mean(0)),
        ("a:mean({2, 3}, true)", lambda a: a.mean((1, 2), keepdim=True)),
        ("a:logsumexp(2)", lambda a: a.logsumexp(1)),
        ("a:logsumexp(3, true)", lambda a: a.logsumexp(2, keepdim=True)),
        ("a:logsumexp({1, 2})", lambda a: a.logsumexp((0, 1))),
        ("a:var()", lambda a: a.var()),
        ("a:var(2)", lambda a: a.var(1)),
        ("a:var(2, false)", lambda a: a.var(1, unbiased=False)),
        ("a:var{dim = {1, 3}, keepdim = true}", lambda a: a.var((0, 2), keepdim=True)),
        ("a:var{dim = 1, correction = 0}", lambda a: a.var(0, unbiased=False)),
        ("a:var{unbiased = false}", lambda a: a.var(unbiased=False)),
        ("a:std()", lambda a: a.std()),
        ("a:std(3, false)", lambda a: a.std(2, unbiased=False)),
        ("a:std(2, true, true)", lambda a: a.std(1, unbiased=True, keepdim=True)),
        ("a:std{unbiased = false}", lambda a: a.std(unbiased=False)),
        ("a:norm()", lambda a: a.norm()),
        ("a:norm(1)", lambda a: a.norm(1)),
        ("a:norm(3)", lambda a: a.norm(3)),
        ("a:norm(2, 1)", lambda a: a.norm(2, 0)),
        ("a:norm(1, -1, true)", lambda a: a.norm(1, -1, keepdim=True)),
        ("a:norm(3, 2)", lambda a: a.norm(3, 1)),
        ("a:cumsum(2)", lambda a: a.cumsum(1)),
        ("a:cumsum(-1)", lambda a: a.cumsum(-1)),
        ("a:cumsum(1)", lambda a: a.cumsum(0)),
        ("a:sum(2):mean()", lambda a: a.sum(1).mean()),
        ("(a * a):sum(3):sqrt()", lambda a: (a * a).sum(2).sqrt()),
    ]
    for expr, fn in R:
        case("reduce " + expr, expr, A, fn, tol=TOL_RED)
    p = rand(3, 4, 5, lo=0.6, hi=1.5)
    case("reduce a:prod()", "a:prod()", {"a": p}, lambda a: a.prod(), tol=TOL_RED)
    case("reduce a:prod(3)", "a:prod(3)", {"a": p}, lambda a: a.prod(2), tol=TOL_RED)
    case("reduce a:prod(2, true)", "a:prod(2, true)", {"a": p}, lambda a: a.prod(1, keepdim=True), tol=TOL_RED)
    s = spread(3, 4, 5)
    S = {"a": s}
    M = [
        ("a:max()", lambda a: a.max()),
        ("a:min()", lambda a: a.min()),
        ("(a:max(2))", lambda a: a.max(1).values),
        ("(a:max(2, true))", lambda a: a.max(1, keepdim=True).values),
        ("(a:min(-1))", lambda a: a.min(-1).values),
        ("(a:min(1, true))", lambda a: a.min(0, keepdim=True).values),
        ("a:norm('inf')", lambda a: a.norm(float("inf"))),
        ("a:norm('inf', 2)", lambda a: a.norm(float("inf"), 1)),
        ("a:norm('inf', 3, true)", lambda a: a.norm(float("inf"), 2, keepdim=True)),
        ("(a:topk(3))", lambda a: a.topk(3).values),
        ("(a:topk(2, 1))", lambda a: a.topk(2, 0).values),
        ("(a:topk(2, 2, false))", lambda a: a.topk(2, 1, largest=False).values),
        ("(a:sort())", lambda a: a.sort().values),
        ("(a:sort(2))", lambda a: a.sort(1).values),
        ("(a:sort(1, true))", lambda a: a.sort(0, descending=True).values),
        ("(a:sort{dim = -1, descending = true})", lambda a: a.sort(-1, descending=True).values),
    ]
    for expr, fn in M:
        case("reduce " + expr, expr, S, fn, tol=TOL_RED)
    v = spread(10)
    case("reduce (a:topk(4)) 1-D", "(a:topk(4))", {"a": v}, lambda a: a.topk(4).values, tol=TOL_RED)
    case("reduce a:max() 1-D", "a:max()", {"a": v}, lambda a: a.max(), tol=TOL_RED)
    case("reduce a:sum() 0-d", "a:sum()", {"a": torch.tensor(1.25)}, lambda a: a.sum(), tol=TOL_RED)
    L = randn(16, 200)
    case("reduce large a:sum(2)", "a:sum(2)", {"a": L}, lambda a: a.sum(1), tol=TOL_RED)
    case("reduce large a:var(2)", "a:var(2)", {"a": L}, lambda a: a.var(1), tol=TOL_RED)
    case("reduce large a:logsumexp(2)", "a:logsumexp(2)", {"a": L}, lambda a: a.logsumexp(1), tol=TOL_RED)
    case("reduce large a:norm()", "a:norm()", {"a": L}, lambda a: a.norm(), tol=TOL_RED)
    d = randn(4, 6, dtype=torch.float64)
    case("reduce f64 a:std(2)", "a:std(2)", {"a": d}, lambda a: a.std(1), tol=1e-10)
    nc = randn(4, 5)
    case("reduce a:t():sum(1)", "a:t():sum(1)", {"a": nc}, lambda a: a.t().sum(0), tol=TOL_RED)


def matmul_cases():
    def mm(name, sa, sb, expr="a:matmul(b)", fn=torch.matmul, dtype=torch.float32, tol=TOL_RED):
        a, b = randn(*sa, dtype=dtype), randn(*sb, dtype=dtype)
        case(name, expr, {"a": a, "b": b}, fn, tol=tol)

    mm("matmul 1-D . 1-D", (7,), (7,))
    mm("matmul 2-D . 1-D", (3, 7), (7,))
    mm("matmul 1-D . 2-D", (7,), (7, 4))
    mm("matmul 2-D . 2-D", (3, 7), (7, 4))
    mm("matmul batched (2,3,4,5)x(5,6)", (2, 3, 4, 5), (5, 6))
    mm("matmul (3,4)x(2,4,5)", (3, 4), (2, 4, 5))
    mm("matmul batched (4,3,5)x(4,5,2)", (4, 3, 5), (4, 5, 2))
    mm("matmul broadcast batch (2,1,3,4)x(5,4,2)", (2, 1, 3, 4), (5, 4, 2))
    mm("matmul broadcast batch (1,3,4)x(2,4,2)", (1, 3, 4), (2, 4, 2))
    mm("matmul 3-D x 1-D", (2, 3, 4), (4,))
    mm("matmul 1-D x 3-D", (4,), (2, 4, 3))
    mm("matmul a:t() . b", (7, 3), (7, 4), expr="a:t():matmul(b)", fn=lambda a, b: a.t() @ b)
    mm("matmul a . b:t()", (3, 7), (4, 7), expr="a:matmul(b:t())", fn=lambda a, b: a @ b.t())
    mm("matmul batched transposed", (2, 5, 3), (2, 5, 4), expr="a:transpose(2, 3):matmul(b)",
       fn=lambda a, b: a.transpose(1, 2) @ b)
    mm("matmul f64", (4, 6), (6, 3), dtype=torch.float64, tol=1e-10)
    mm("matmul larger 32x48x40", (32, 48), (48, 40))
    mm("mm", (3, 5), (5, 2), expr="a:mm(b)", fn=torch.mm)
    mm("bmm", (4, 3, 5), (4, 5, 2), expr="a:bmm(b)", fn=torch.bmm)
    mm("dot", (9,), (9,), expr="a:dot(b)", fn=torch.dot)
    mm("vtl.matmul", (2, 3), (3, 2), expr="vtl.matmul(a, b)")
    a, b = randn(3, 4), randn(4, 2)
    case("matmul only b requires grad", "a:matmul(b)", {"a": a, "b": b}, torch.matmul, requires=["b"], tol=TOL_RED)
    case("matmul a . a:t()", "a:matmul(a:t())", {"a": a}, lambda a: a @ a.t(), tol=TOL_RED)
    x, w, bias = randn(5, 4), randn(3, 4), randn(3)
    case("linear x . w:t() + b, relu, sum", "(x:matmul(w:t()) + b):relu():sum(2)", {"x": x, "w": w, "b": bias},
         lambda x, w, b: (x @ w.t() + b).relu().sum(1), tol=TOL_RED)


def cat_cases():
    r, b, c = randn(2, 3), randn(2, 5), randn(4, 3)
    case("cat dim 2", "vtl.cat({a, b}, 2)", {"a": r, "b": b}, lambda a, b: torch.cat([a, b], 1))
    case("cat default dim", "vtl.cat({a, b})", {"a": r, "b": c}, lambda a, b: torch.cat([a, b], 0))
    case("cat three, dim -1, one input twice", "vtl.cat({a, b, a}, -1)", {"a": r, "b": b},
         lambda a, b: torch.cat([a, b, a], -1))
    case("cat only one input requires grad", "vtl.cat({a, b}, 2)", {"a": r, "b": b},
         lambda a, b: torch.cat([a, b], 1), requires=["b"])
    n = 11
    ins = {"x%02d" % k: randn(2, 1 + k % 3) for k in range(1, n + 1)}
    names = list(ins)
    case("cat %d inputs, dim 2" % n, "vtl.cat({%s}, 2)" % ", ".join(names), ins, lambda *xs: torch.cat(xs, 1))
    ins = {"y%02d" % k: randn(k % 2 + 1, 3) for k in range(1, 18)}
    names = list(ins)
    case("cat 17 inputs, dim 1", "vtl.cat({%s}, 1)" % ", ".join(names), ins, lambda *xs: torch.cat(xs, 0))
    r2 = randn(2, 3)
    case("stack(1)", "vtl.stack({a, b}, 1)", {"a": r, "b": r2}, lambda a, b: torch.stack([a, b], 0))
    case("stack(2)", "vtl.stack({a, b}, 2)", {"a": r, "b": r2}, lambda a, b: torch.stack([a, b], 1))
    case("stack(-1), one input twice", "vtl.stack({a, b, a}, -1)", {"a": r, "b": r2},
         lambda a, b: torch.stack([a, b, a], -1))
    ins = {"z%02d" % k: randn(3) for k in range(1, 11)}
    names = list(ins)
    case("stack 10 inputs", "vtl.stack({%s}, 2)" % ", ".join(names), ins, lambda *xs: torch.stack(xs, 1))
    # split/chunk pieces used again
    s = randn(5, 4)
    case("split pieces recombined", "local p = a:split(2, 1); return p[1] * 2 + p[2] - p[3]:sum()", {"a": s},
         lambda a: (lambda p: p[0] * 2 + p[1] - p[2].sum())(a.split(2, 0)))
    case("chunk pieces multiplied", "local p = a:chunk(2, 2); return p[1] * p[2]", {"a": s},
         lambda a: (lambda p: p[0] * p[1])(a.chunk(2, 1)))


def composite_cases():
    # a small softmax cross-entropy and an MLP step, built from the ops
    logits = randn(4, 5)
    onehot = torch.nn.functional.one_hot(torch.tensor([1, 0, 4, 2]), 5).float()
    case("softmax cross-entropy", "(-(a - a:logsumexp(2, true)) * t):sum(2):mean()", {"a": logits, "t": onehot},
         lambda a, t: (-(a - a.logsumexp(1, keepdim=True)) * t).sum(1).mean(), requires=["a"], tol=TOL_RED)
    case("softmax by exp/sum", "a:exp() / a:exp():sum(2, true)", {"a": logits},
         lambda a: a.exp() / a.exp().sum(1, keepdim=True), tol=TOL_RED)
    x, w1, w2 = randn(6, 4), randn(4, 8, scale=0.5), randn(8, 3, scale=0.5)
    case("mlp tanh", "x:matmul(w1):tanh():matmul(w2):square():mean()", {"x": x, "w1": w1, "w2": w2},
         lambda x, w1, w2: (x @ w1).tanh().matmul(w2).square().mean(), requires=["w1", "w2"], tol=TOL_RED)
    y = randn(8, 3)
    case("layernorm-like", "(a - a:mean(2, true)) / (a:var(2, false, true) + 1e-5):sqrt()", {"a": y},
         lambda a: (a - a.mean(1, keepdim=True)) / (a.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt(),
         tol=TOL_RED)


def edge_cases():
    """Points where the derivative is one-sided or shared: PyTorch's conventions."""
    z = torch.tensor([-1.5, 0.0, 2.0, 0.0])
    case("edge abs at 0", "a:abs()", {"a": z}, torch.abs)
    case("edge relu at 0", "a:relu()", {"a": z}, torch.relu)
    case("edge sqrt(a^2 + 1) at 0", "(a * a + 1):sqrt()", {"a": z}, lambda a: (a * a + 1).sqrt())
    cb = torch.tensor([-0.5, 0.7, 0.0, 1.0, -2.0])
    case("edge clamp at the bounds", "a:clamp(-0.5, 0.7)", {"a": cb}, lambda a: a.clamp(-0.5, 0.7))
    ta, tb = torch.tensor([1.0, 2.0, -1.0, 0.5]), torch.tensor([1.0, 3.0, -1.0, 0.25])
    case("edge maximum ties", "a:maximum(b)", {"a": ta, "b": tb}, torch.maximum)
    case("edge minimum ties", "a:minimum(b)", {"a": ta, "b": tb}, torch.minimum)
    case("edge max() with ties", "a:max()", {"a": torch.tensor([[3.0, 1.0], [3.0, -2.0]])}, lambda a: a.max())
    case("edge min() with ties", "a:min()", {"a": torch.tensor([0.5, -1.0, 2.0, -1.0, -1.0])}, lambda a: a.min())
    zr = torch.tensor([[0.0, 0.0, 0.0], [3.0, -4.0, 1.0]])
    case("edge norm(2, 2) of a zero row", "a:norm(2, 2)", {"a": zr}, lambda a: a.norm(2, 1))
    case("edge norm(1) with zeros", "a:norm(1)", {"a": zr}, lambda a: a.norm(1))
    ti = torch.tensor([[2.0, -2.0, 1.0], [0.5, 1.0, -1.0]])
    case("edge norm('inf') with ties", "a:norm('inf')", {"a": ti}, lambda a: a.norm(float("inf")))
    case("edge norm('inf', 2) with ties", "a:norm('inf', 2)", {"a": ti}, lambda a: a.norm(float("inf"), 1))
    s0 = torch.tensor(1.75)
    case("edge (a:topk(1)) 0-d", "(a:topk(1))", {"a": s0}, lambda a: a.topk(1).values)
    case("edge (a:sort()) 0-d", "(a:sort())", {"a": s0}, lambda a: a.sort().values)
    case("edge (a:max(1)) 0-d", "(a:max(1))", {"a": s0}, lambda a: a.max(0).values)
    case("edge a:cumsum(1) 0-d", "a:cumsum(1)", {"a": s0}, lambda a: a.cumsum(0))
    pa, pb = torch.tensor([0.0, 1.0, 2.0, 0.0]), torch.tensor([2.0, 0.5, 3.0, 1.0])
    case("edge pow 0^b", "a:pow(b)", {"a": pa, "b": pb}, torch.pow)
    case("edge a ^ 2 at 0", "a ^ 2", {"a": z}, lambda a: a ** 2)


def main():
    out_dir = fixtures_dir()
    binary_cases()
    scalar_cases()
    unary_cases()
    select_cases()
    copy_cases()
    view_cases()
    index_cases()
    reduction_cases()
    matmul_cases()
    cat_cases()
    composite_cases()
    edge_cases()
    write_cases(out_dir, "autograd_ref.lua", __file__, ((c[0], case_fields(*c[1:])) for c in cases))


if __name__ == "__main__":
    main()
