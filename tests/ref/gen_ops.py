"""Reference cases for tensor ops, computed with PyTorch.

Usage: gen_ops.py <fixtures_dir>

Writes <fixtures_dir>/ops_ref.lua, a Lua chunk returning a list of cases:

  {name = "...", expr = "return a:add(b)", tol = 1e-5,
   inputs = {a = {dtype = "f32", shape = {3, 1}, data = {...}}, ...},
   want = {kind = "tensor", dtype = "f32", shape = {3, 4}, data = {...}}}

`expr` is Lua source run with `vtl` and the inputs as locals. `want` is one of
  {kind = "tensor", dtype, shape, data}      a single tensor result
  {kind = "number", value}                   a Lua number result
  {kind = "multi", items = {...}}            several return values (sort, max(dim), unique)
  {kind = "list", items = {...}}             one Lua table of tensors (split, chunk)
Data is flat, row-major. Index-valued results and index arguments are 1-based on the Lua
side (vtl's convention), so expected indices are PyTorch's plus one.
"""
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reflib import (  # noqa: E402
    DTYPES, Draws, fixtures_dir, idx1, lua_num, lua_str, shape_tag, tensor_spec, write_cases)

draws = Draws(1234)
gen = draws.gen
randn, rand, randint, nonzero_divisor = draws.randn, draws.rand, draws.randint, draws.nonzero
cases = []


def perm_rows(rows, n):
    """(rows, n) i64: each row a random permutation of 0..n-1."""
    return torch.stack([torch.randperm(n, generator=gen) for _ in range(rows)])


# ---- Lua serialisation ----

def want_spec(w):
    if isinstance(w, torch.Tensor):
        return '{kind = "tensor", %s' % tensor_spec(w)[1:]
    if isinstance(w, Multi):
        return '{kind = "multi", items = {%s}}' % ", ".join(want_spec(x) for x in w.items)
    if isinstance(w, (list, tuple)):
        return '{kind = "list", items = {%s}}' % ", ".join(want_spec(x) for x in w)
    if isinstance(w, (int, float)) and not isinstance(w, bool):
        return '{kind = "number", value = %s}' % lua_num(w, isinstance(w, float))
    raise TypeError("unsupported expected value %r" % (w,))


def case_fields(expr, inputs, want, tol):
    ins = ", ".join("%s = %s" % (k, tensor_spec(v)) for k, v in inputs.items())
    return "expr = %s, tol = %s, inputs = {%s},\n   want = %s" % (lua_str(expr), lua_num(tol, True), ins, want_spec(want))


class Multi:
    """Several return values of one Lua call."""

    def __init__(self, *items):
        self.items = items


def case(name, expr, inputs, want, tol=1e-5):
    if not re.search(r"\breturn\b", expr):
        expr = "return " + expr
    assert want is not None, "case without an expected value: " + name
    cases.append((name, expr, inputs, want, tol))


# ---- elementwise binary with broadcasting ----

BCAST = [((3, 1), (1, 4)), ((2, 3, 4), (4,)), ((), (2, 3)), ((5, 1, 3), (1, 4, 1))]


def binary_cases():
    arith = {
        "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
        "maximum": torch.maximum, "minimum": torch.minimum, "atan2": torch.atan2,
    }
    for op, fn in arith.items():
        for sa, sb in BCAST:
            a, b = randn(*sa), randn(*sb)
            if op == "div":
                b = nonzero_divisor(*sb)
            case("%s f32 %s*%s" % (op, shape_tag(sa), shape_tag(sb)), "a:%s(b)" % op, {"a": a, "b": b}, fn(a, b))
    cmp = {"eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge}
    for op, fn in cmp.items():
        for sa, sb in BCAST[:2]:
            # small integers as floats, so that equality actually happens
            a, b = randint(-2, 3, *sa).float(), randint(-2, 3, *sb).float()
            case("%s f32 %s*%s" % (op, shape_tag(sa), shape_tag(sb)), "a:%s(b)" % op, {"a": a, "b": b}, fn(a, b))
    a, b = randint(-3, 4, 2, 5), randint(-3, 4, 5).to(torch.int32)
    case("lt i64*i32", "a:lt(b)", {"a": a, "b": b}, a < b)
    a, b = randn(2, 3), randint(-1, 2, 3)
    case("ge f32*i64", "a:ge(b)", {"a": a, "b": b}, a >= b)

    for sa, sb in BCAST[:2] + BCAST[3:]:
        a, b = rand(*sa, lo=0.2, hi=3.0), randn(*sb)
        case("pow f32 %s*%s" % (shape_tag(sa), shape_tag(sb)), "a:pow(b)", {"a": a, "b": b}, torch.pow(a, b))

    for sa, sb in BCAST[:2]:
        a, b = randn(*sa, scale=5.0), nonzero_divisor(*sb)
        case("remainder f32 %s*%s" % (shape_tag(sa), shape_tag(sb)), "a:remainder(b)", {"a": a, "b": b},
             torch.remainder(a, b))
        case("floor_divide f32 %s*%s" % (shape_tag(sa), shape_tag(sb)), "a:floor_divide(b)", {"a": a, "b": b},
             torch.floor_divide(a, b))
    a = randint(-20, 21, 3, 4)
    b = torch.tensor([-7, -3, 3, 7])
    case("remainder i64 neg", "a:remainder(b)", {"a": a, "b": b}, torch.remainder(a, b), tol=0)
    case("floor_divide i64 neg", "a:floor_divide(b)", {"a": a, "b": b}, torch.floor_divide(a, b), tol=0)
    case("remainder i64 metamethod", "a % b", {"a": a, "b": b}, torch.remainder(a, b), tol=0)
    case("floor_divide i64 metamethod", "a // b", {"a": a, "b": b}, torch.floor_divide(a, b), tol=0)

    for op, fn in {"logical_and": torch.logical_and, "logical_or": torch.logical_or,
                   "logical_xor": torch.logical_xor}.items():
        a, b = randint(-1, 2, 3, 1).float(), randint(-1, 2, 1, 4).float()
        case("%s f32 3x1*1x4" % op, "a:%s(b)" % op, {"a": a, "b": b}, fn(a, b))
        a, b = randint(0, 2, 2, 3).bool(), randint(0, 2, 3).bool()
        case("%s bool 2x3*3" % op, "a:%s(b)" % op, {"a": a, "b": b}, fn(a, b))

    # metamethods between tensors
    a, b = randn(3, 1), randn(1, 4)
    case("__add tensors", "a + b", {"a": a, "b": b}, a + b)
    case("__sub tensors", "a - b", {"a": a, "b": b}, a - b)
    case("__mul tensors", "a * b", {"a": a, "b": b}, a * b)
    b2 = nonzero_divisor(1, 4)
    case("__div tensors", "a / b", {"a": a, "b": b2}, a / b2)
    a2 = rand(3, 1, lo=0.2, hi=2.0)
    case("__pow tensors", "a ^ b", {"a": a2, "b": b}, a2 ** b)


def scalar_cases():
    a = randn(2, 3, scale=4.0)
    ins = {"a": a}
    case("scalar a + 2", "a + 2", ins, a + 2)
    case("scalar 2 - a", "2 - a", ins, 2 - a)
    case("scalar a * 2.5", "a * 2.5", ins, a * 2.5)
    case("scalar 2.5 * a", "2.5 * a", ins, 2.5 * a)
    case("scalar a / 2", "a / 2", ins, a / 2)
    case("scalar 3 / a", "3 / a", ins, 3 / a)
    p = rand(2, 3, lo=0.1, hi=3.0)
    case("scalar a ^ 2", "a ^ 2", {"a": a}, a ** 2)
    case("scalar a ^ 0.5", "a ^ 0.5", {"a": p}, p ** 0.5)
    case("scalar 2 ^ a", "2 ^ a", {"a": a}, torch.pow(2, a))
    case("scalar -a", "-a", ins, -a)
    case("scalar a % 3", "a % 3", ins, a % 3)
    case("scalar a % -3", "a % -3", ins, a % -3)
    d = nonzero_divisor(2, 3)
    case("scalar 7 % a", "7 % a", {"a": d}, torch.remainder(torch.full_like(d, 7.0), d))
    case("scalar a // 2", "a // 2", ins, torch.floor_divide(a, 2))
    case("scalar a // -2", "a // -2", ins, torch.floor_divide(a, -2))
    case("scalar a:add(2)", "a:add(2)", ins, a.add(2))
    case("scalar a:maximum(0.5)", "a:maximum(0.5)", ins, torch.clamp(a, min=0.5))
    case("scalar a:gt(0)", "a:gt(0)", ins, a > 0)
    case("scalar a:eq(a)", "a:eq(a)", ins, a == a)

    i = randint(-9, 10, 2, 4)
    ii = {"a": i}
    case("scalar i64 + 2", "a + 2", ii, i + 2, tol=0)
    case("scalar i64 * 2.5", "a * 2.5", ii, i * 2.5)
    case("scalar i64 / 2", "a / 2", ii, i / 2)
    case("scalar i64 % 3", "a % 3", ii, i % 3, tol=0)
    case("scalar i64 % -3", "a % -3", ii, i % -3, tol=0)
    case("scalar i64 // 2", "a // 2", ii, torch.floor_divide(i, 2), tol=0)
    case("scalar i64 // -4", "a // -4", ii, torch.floor_divide(i, -4), tol=0)
    case("scalar i64 ^ 2", "a ^ 2", ii, i ** 2, tol=0)
    case("scalar -i64", "-a", ii, -i, tol=0)
    case("scalar 10 - i64", "10 - a", ii, 10 - i, tol=0)
    i32 = randint(-9, 10, 5, dtype=torch.int32)
    case("scalar i32 * 3", "a * 3", {"a": i32}, i32 * 3, tol=0)
    u8 = randint(0, 100, 5, dtype=torch.uint8)
    case("scalar u8 + 1", "a + 1", {"a": u8}, u8 + 1, tol=0)
    bl = randint(0, 2, 5).bool()
    case("scalar bool + 1", "a + 1", {"a": bl}, bl + 1, tol=0)
    case("scalar bool * 1.5", "a * 1.5", {"a": bl}, bl * 1.5)
    h = randn(6, dtype=torch.float16, scale=3.0)
    case("scalar f16 + 2.5", "a + 2.5", {"a": h}, h + 2.5, tol=0)
    case("scalar f16 * 3", "a * 3", {"a": h}, h * 3, tol=0)
    # A Python scalar is not narrowed to f16/bf16 before the f32 math (upstream PyTorch's
    # original_scalar_value; 1.13 narrowed it first), so the reference computes in f32.
    case("scalar f16 * 1.1", "a * 1.1", {"a": h}, (h.float() * 1.1).half(), tol=0)
    bf = randn(6, dtype=torch.bfloat16, scale=3.0)
    case("scalar bf16 * 1.1", "a * 1.1", {"a": bf}, (bf.float() * 1.1).bfloat16(), tol=0)
    case("scalar bf16 / 3", "a / 3", {"a": bf}, bf / 3, tol=0)


def sample(dt, *shape):
    if dt == torch.bool:
        return randint(0, 2, *shape).bool()
    if dt == torch.uint8:
        return randint(0, 12, *shape, dtype=dt)
    if not dt.is_floating_point:
        return randint(-6, 7, *shape, dtype=dt)
    return randn(*shape, dtype=torch.float64, scale=3.0).to(dt)


def promotion_cases():
    order = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
             torch.uint8, torch.bool]
    for op, fn in (("add", torch.add), ("mul", torch.mul)):
        for da in order:
            for db in order:
                a, b = sample(da, 2, 3), sample(db, 3)
                case("promote %s %s+%s" % (op, DTYPES[da], DTYPES[db]), "a:%s(b)" % op, {"a": a, "b": b},
                     fn(a, b), tol=0)
    # dimensioned tensors win over 0-d tensors of the same category
    for da, db in ((torch.float32, torch.float64), (torch.int32, torch.int64), (torch.float16, torch.float32),
                   (torch.int64, torch.float64), (torch.uint8, torch.int64), (torch.bool, torch.int32)):
        a, b = sample(da, 4), sample(db)
        want = a + b
        if da == torch.float16:
            # current PyTorch adds a CPU 0-d operand at its original precision (opmath) and rounds
            # once; 1.13 rounded the 0-d value to f16 first
            want = (a.float() + b.float()).half()
        case("promote 0-d add %s+%s(0-d)" % (DTYPES[da], DTYPES[db]), "a + b", {"a": a, "b": b}, want, tol=0)
    a, b = randint(1, 9, 2, 3), randint(1, 9, 3)
    case("promote i64 / i64 -> f32", "a / b", {"a": a, "b": b}, a / b)
    a, b = randint(1, 9, 4, dtype=torch.int32), randint(1, 9, 4, dtype=torch.uint8)
    case("promote i32 / u8 -> f32", "a:div(b)", {"a": a, "b": b}, a / b)
    a, b = randint(-3, 4, 4), randn(4)
    case("promote i64 > f32 -> bool", "a:gt(b)", {"a": a, "b": b}, a > b)
    a = randn(4, dtype=torch.float16)
    b = a.to(torch.bfloat16)
    case("promote f16 == bf16 -> bool", "a:eq(b)", {"a": a, "b": b}, a == b)


# ---- unary ----

def low_precision(fn, x):
    """fn on an f16/bf16 tensor. Where this PyTorch build has no CPU kernel for the dtype, the
    result is what its kernels do elsewhere: compute in f32, round once to the input dtype."""
    try:
        return fn(x)
    except RuntimeError:
        return fn(x.float()).to(x.dtype)


def unary_cases():
    gen_f = randn(3, 4, scale=2.0)
    pos = rand(3, 4, lo=0.05, hi=4.0)
    log1p_in = rand(3, 4, lo=-0.9, hi=3.0)
    ops = {
        "neg": gen_f, "abs": gen_f, "sign": torch.tensor([[-2.5, 0.0, 3.0, -0.0]]), "exp": gen_f,
        "log": pos, "log2": pos, "log1p": log1p_in, "expm1": gen_f, "sqrt": pos, "rsqrt": pos,
        "sigmoid": randn(3, 4, scale=4.0), "tanh": gen_f, "relu": gen_f, "floor": gen_f, "ceil": gen_f,
        "trunc": gen_f, "sin": randn(3, 4, scale=3.0), "cos": randn(3, 4, scale=3.0), "reciprocal": nonzero_divisor(3, 4),
        "square": gen_f, "erf": gen_f,
    }
    for op, x in ops.items():
        fn = getattr(torch, op)
        case("unary %s f32" % op, "a:%s()" % op, {"a": x}, fn(x))
        x64 = x.double()
        case("unary %s f64" % op, "a:%s()" % op, {"a": x64}, fn(x64), tol=1e-12)
    rnd = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999, 3.5001, -3.7, 0.0, 1e6 + 0.5, 7.5])
    case("unary round half-to-even f32", "a:round()", {"a": rnd}, torch.round(rnd), tol=0)
    case("unary round half-to-even f64", "a:round()", {"a": rnd.double()}, torch.round(rnd.double()), tol=0)
    x = randn(3, 4, scale=2.0)
    case("clamp(min,max)", "a:clamp(-0.5, 0.7)", {"a": x}, x.clamp(-0.5, 0.7))
    case("clamp(min)", "a:clamp(0)", {"a": x}, x.clamp(min=0))
    case("clamp(nil,max)", "a:clamp(nil, 1)", {"a": x}, x.clamp(max=1))
    case("clip alias", "a:clip(-1, 1)", {"a": x}, x.clip(-1, 1))
    special = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0, -2.0])
    case("isnan", "a:isnan()", {"a": special}, special.isnan())
    case("isinf", "a:isinf()", {"a": special}, special.isinf())
    case("isnan f64", "a:isnan()", {"a": special.double()}, special.double().isnan())
    case("isnan i64", "a:isnan()", {"a": torch.tensor([1, 2])}, torch.tensor([1, 2]).isnan())
    case("exp of inf/nan", "a:exp()", {"a": special}, special.exp())
    lg = torch.tensor([0.0, -1.0, 1.0, float("inf")])
    case("log edge (0, negative)", "a:log()", {"a": lg}, lg.log())
    ln = torch.tensor([[0.0, 1.5, -2.0], [0.0, 0.0, 3.0]])
    case("logical_not f32", "a:logical_not()", {"a": ln}, ln.logical_not())
    lb = randint(0, 2, 5).bool()
    case("logical_not bool", "a:logical_not()", {"a": lb}, lb.logical_not())
    li = torch.tensor([0, 3, -1, 0])
    case("logical_not i64", "a:logical_not()", {"a": li}, li.logical_not())

    i = randint(-6, 7, 2, 5)
    for op in ("neg", "abs", "sign", "square", "relu", "floor", "ceil", "round", "trunc"):
        case("unary %s i64" % op, "a:%s()" % op, {"a": i}, getattr(torch, op)(i), tol=0)
    case("unary abs i32", "a:abs()", {"a": i.int()}, i.int().abs(), tol=0)
    case("clamp i64 int bounds", "a:clamp(-2, 3)", {"a": i}, i.clamp(-2, 3), tol=0)
    case("clamp i64 float min -> f32", "a:clamp(0.5)", {"a": i}, i.clamp(0.5))
    ip = randint(1, 50, 2, 5)
    for op in ("exp", "sqrt", "log", "sigmoid", "sin", "reciprocal", "erf", "tanh"):
        x = i if op in ("exp", "sigmoid", "sin", "erf", "tanh") else ip
        case("unary %s i64 -> f32" % op, "a:%s()" % op, {"a": x}, getattr(torch, op)(x))
    case("unary sqrt u8 -> f32", "a:sqrt()", {"a": ip.to(torch.uint8)}, ip.to(torch.uint8).sqrt())
    h = randn(8, dtype=torch.float16, scale=2.0)
    for op in ("exp", "tanh", "sigmoid", "sqrt", "neg"):
        x = h.abs() if op == "sqrt" else h
        case("unary %s f16" % op, "a:%s()" % op, {"a": x}, low_precision(getattr(torch, op), x), tol=0)
    b = randn(8, dtype=torch.bfloat16, scale=2.0)
    for op in ("exp", "erf", "reciprocal"):
        case("unary %s bf16" % op, "a:%s()" % op, {"a": b}, low_precision(getattr(torch, op), b), tol=0)


def inplace_cases():
    a, b = randn(3, 4), randn(4)
    case("add_ broadcast", "local r = a:add_(b); assert(rawequal(r, a), 'add_ must return self'); return a",
         {"a": a, "b": b}, a + b)
    case("mul_ scalar", "local r = a:mul_(2); assert(rawequal(r, a), 'mul_ must return self'); return a",
         {"a": a}, a * 2)
    case("sub_ tensor", "a:sub_(b); return a", {"a": a, "b": b}, a - b)
    case("div_ scalar", "a:div_(4); return a", {"a": a}, a / 4)
    case("clamp_", "local r = a:clamp_(-0.5, 0.5); assert(rawequal(r, a)); return a", {"a": a}, a.clamp(-0.5, 0.5))
    case("exp_", "a:exp_(); return a", {"a": a}, a.exp())
    i = randint(-5, 6, 6)
    case("add_ i64 scalar", "a:add_(3); return a", {"a": i}, i + 3, tol=0)
    bi = randint(-3, 4, 4)
    case("mul_ f32 by i64", "a:mul_(b); return a", {"a": a, "b": bi}, a * bi)
    v = randn(2, 6)
    w = v.clone()
    w[:, 1:4] += 10
    case("add_ into a view mutates the base", "local s = a:narrow(2, 2, 3); s:add_(10); return a", {"a": v}, w)


# ---- reductions ----

def reduction_cases():
    a = randn(3, 4, 5)
    A = {"a": a}
    case("sum()", "a:sum()", A, a.sum())
    case("sum(2)", "a:sum(2)", A, a.sum(1))
    case("sum(2, true)", "a:sum(2, true)", A, a.sum(1, keepdim=True))
    case("sum(-1)", "a:sum(-1)", A, a.sum(-1))
    case("sum({1,3})", "a:sum({1, 3})", A, a.sum((0, 2)))
    case("sum{dim=3, keepdim=true}", "a:sum{dim = 3, keepdim = true}", A, a.sum(2, keepdim=True))
    case("mean()", "a:mean()", A, a.mean())
    case("mean(1)", "a:mean(1)", A, a.mean(0))
    case("mean({2,3}, true)", "a:mean({2, 3}, true)", A, a.mean((1, 2), keepdim=True))
    p = rand(3, 4, 5, lo=0.7, hi=1.3)
    case("prod()", "a:prod()", {"a": p}, p.prod())
    case("prod(3)", "a:prod(3)", {"a": p}, p.prod(2))
    pi = randint(-3, 4, 3, 4)
    case("prod i64 (2)", "a:prod(2)", {"a": pi}, pi.prod(1), tol=0)
    case("max()", "a:max()", A, a.max())
    case("min()", "a:min()", A, a.min())
    case("max(2)", "a:max(2)", A, Multi(a.max(1).values, idx1(a.max(1).indices)))
    case("max(2, true)", "a:max(2, true)", A,
         Multi(a.max(1, keepdim=True).values, idx1(a.max(1, keepdim=True).indices)))
    case("min(-1)", "a:min(-1)", A, Multi(a.min(-1).values, idx1(a.min(-1).indices)))
    o = randn(5)
    case("max(other) = maximum", "a:max(b)", {"a": a, "b": o}, torch.maximum(a, o))
    mi = randperm_tensor(3, 4)
    case("max i64 (1)", "a:max(1)", {"a": mi}, Multi(mi.max(0).values, idx1(mi.max(0).indices)), tol=0)
    case("argmax()", "a:argmax()", A, idx1(a.argmax()), tol=0)
    case("argmin()", "a:argmin()", A, idx1(a.argmin()), tol=0)
    case("argmax(2)", "a:argmax(2)", A, idx1(a.argmax(1)), tol=0)
    case("argmax(-1, true)", "a:argmax(-1, true)", A, idx1(a.argmax(-1, keepdim=True)), tol=0)
    case("argmin(1)", "a:argmin(1)", A, idx1(a.argmin(0)), tol=0)
    v1 = randn(7)
    case("argmax 1-D", "a:argmax()", {"a": v1}, idx1(v1.argmax()), tol=0)
    case("var()", "a:var()", A, a.var())
    case("var(2)", "a:var(2)", A, a.var(1))
    case("var(2, false)", "a:var(2, false)", A, a.var(1, unbiased=False))
    case("var{dim=1, correction=0}", "a:var{dim = 1, correction = 0}", A, a.var(0, unbiased=False))
    case("var{dim={1,3}, keepdim=true}", "a:var{dim = {1, 3}, keepdim = true}", A, a.var((0, 2), keepdim=True))
    case("std()", "a:std()", A, a.std())
    case("std(3, false)", "a:std(3, false)", A, a.std(2, unbiased=False))
    case("std(2, true, true)", "a:std(2, true, true)", A, a.std(1, unbiased=True, keepdim=True))
    case("std{unbiased=false}", "a:std{unbiased = false}", A, a.std(unbiased=False))
    case("norm()", "a:norm()", A, a.norm())
    case("norm(1)", "a:norm(1)", A, a.norm(1))
    case("norm('inf')", "a:norm('inf')", A, a.norm(float("inf")))
    case("norm(2, 1)", "a:norm(2, 1)", A, a.norm(2, 0))
    case("norm(1, -1, true)", "a:norm(1, -1, true)", A, a.norm(1, -1, keepdim=True))
    case("norm(3, 2)", "a:norm(3, 2)", A, a.norm(3, 1))
    case("logsumexp(2)", "a:logsumexp(2)", A, a.logsumexp(1))
    big = randn(2, 3, scale=30.0) + 100
    case("logsumexp large values (3..)", "a:logsumexp(-1)", {"a": big}, big.logsumexp(-1))
    case("cumsum(2)", "a:cumsum(2)", A, a.cumsum(1))
    case("cumsum(-1)", "a:cumsum(-1)", A, a.cumsum(-1))
    ci = randint(-5, 6, 2, 6, dtype=torch.int32)
    case("cumsum i32 -> i64", "a:cumsum(2)", {"a": ci}, ci.cumsum(1), tol=0)
    bm = randint(0, 2, 3, 4).bool()
    case("any()", "a:any()", {"a": bm}, bm.any())
    case("all()", "a:all()", {"a": bm}, bm.all())
    case("any(2)", "a:any(2)", {"a": bm}, bm.any(1))
    case("all(1)", "a:all(1)", {"a": bm}, bm.all(0))
    fz = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    case("any f32 (2)", "a:any(2)", {"a": fz}, fz.any(1))
    case("all f32 ()", "a:all()", {"a": fz + 1}, (fz + 1).all())
    si = randint(-100, 100, 4, 5, dtype=torch.int32)
    case("sum i32 -> i64", "a:sum()", {"a": si}, si.sum(), tol=0)
    case("sum i32 (1) -> i64", "a:sum(1)", {"a": si}, si.sum(0), tol=0)
    su = randint(0, 255, 40, dtype=torch.uint8)
    case("sum u8 -> i64 (no overflow)", "a:sum()", {"a": su}, su.sum(), tol=0)
    case("sum bool -> i64", "a:sum()", {"a": bm}, bm.sum(), tol=0)
    case("sum bool (2) -> i64", "a:sum(2)", {"a": bm}, bm.sum(1), tol=0)
    h = randn(4, 8, dtype=torch.float16)
    case("sum f16 -> f16", "a:sum()", {"a": h}, h.sum(), tol=1e-3)
    case("sum f16 (2) -> f16", "a:sum(2)", {"a": h}, h.sum(1), tol=1e-3)
    case("mean f16 (1)", "a:mean(1)", {"a": h}, h.mean(0), tol=1e-3)
    d = randn(4, 6, dtype=torch.float64)
    case("sum f64 (2)", "a:sum(2)", {"a": d}, d.sum(1), tol=1e-12)
    case("var f64", "a:var()", {"a": d}, d.var(), tol=1e-12)
    L = randn(16, 400)
    case("sum large (2)", "a:sum(2)", {"a": L}, L.sum(1), tol=1e-4)
    case("sum large ()", "a:sum()", {"a": L}, L.sum(), tol=1e-4)
    case("mean large (1)", "a:mean(1)", {"a": L}, L.mean(0), tol=1e-4)
    case("var large (2)", "a:var(2)", {"a": L}, L.var(1), tol=1e-4)
    case("norm large", "a:norm()", {"a": L}, L.norm(), tol=1e-4)
    case("logsumexp large (2)", "a:logsumexp(2)", {"a": L}, L.logsumexp(1), tol=1e-4)
    nc = randn(4, 5)
    case("sum of a transposed view (1)", "a:t():sum(1)", {"a": nc}, nc.t().sum(0))
    case("max of a transposed view (2)", "a:t():max(2)", {"a": nc},
         Multi(nc.t().max(1).values, idx1(nc.t().max(1).indices)))


def randperm_tensor(*shape):
    n = 1
    for s in shape:
        n *= s
    return torch.randperm(n, generator=gen).reshape(shape)


# ---- sort, topk, unique ----

def sort_cases():
    a = randn(3, 6)
    A = {"a": a}
    s = a.sort(1)
    case("sort()", "a:sort()", A, Multi(s.values, idx1(s.indices)), tol=0)
    s = a.sort(0, descending=True)
    case("sort(1, true)", "a:sort(1, true)", A, Multi(s.values, idx1(s.indices)), tol=0)
    s = a.sort(-1, descending=True)
    case("sort{dim=-1, descending=true}", "a:sort{dim = -1, descending = true}", A, Multi(s.values, idx1(s.indices)),
         tol=0)
    case("argsort(2)", "a:argsort(2)", A, idx1(a.argsort(1)), tol=0)
    ti = randperm_tensor(4, 5) - 7
    s = ti.sort(1)
    case("sort i64 (2)", "a:sort(2)", {"a": ti}, Multi(s.values, idx1(s.indices)), tol=0)
    ties = torch.tensor([[3.0, 1.0, 2.0, 1.0, 3.0, 2.0, 1.0, 0.0], [5.0, 5.0, 5.0, 4.0, 4.0, 6.0, 6.0, 5.0]])
    s = torch.sort(ties, dim=1, stable=True)
    case("sort stable ties ascending", "a:sort(2)", {"a": ties}, Multi(s.values, idx1(s.indices)), tol=0)
    s = torch.sort(ties, dim=1, descending=True, stable=True)
    case("sort stable ties descending", "a:sort(2, true)", {"a": ties}, Multi(s.values, idx1(s.indices)), tol=0)
    nanv = torch.tensor([2.0, float("nan"), -1.0, 0.5])
    s = torch.sort(nanv)
    case("sort with nan (nan last)", "a:sort()", {"a": nanv}, Multi(s.values, idx1(s.indices)), tol=0)

    t = randn(4, 7)
    T = {"a": t}
    k = t.topk(3)
    case("topk(3)", "a:topk(3)", T, Multi(k.values, idx1(k.indices)), tol=0)
    k = t.topk(2, 0)
    case("topk(2, 1)", "a:topk(2, 1)", T, Multi(k.values, idx1(k.indices)), tol=0)
    k = t.topk(2, 1, largest=False)
    case("topk(2, 2, false)", "a:topk(2, 2, false)", T, Multi(k.values, idx1(k.indices)), tol=0)
    v = randn(10)
    k = v.topk(4)
    case("topk 1-D", "a:topk(4)", {"a": v}, Multi(k.values, idx1(k.indices)), tol=0)

    u = randint(0, 6, 3, 5)
    vals, inv, cnt = torch.unique(u, sorted=True, return_inverse=True, return_counts=True)
    case("unique i64", "a:unique()", {"a": u}, vals, tol=0)
    case("unique{return_inverse, return_counts} i64",
         "a:unique{return_inverse = true, return_counts = true}", {"a": u}, Multi(vals, idx1(inv), cnt), tol=0)
    vals, inv = torch.unique(u, sorted=True, return_inverse=True)
    case("unique{return_inverse} i64", "a:unique{return_inverse = true}", {"a": u}, Multi(vals, idx1(inv)), tol=0)
    vals, cnt = torch.unique(u, sorted=True, return_counts=True)
    case("unique{return_counts} i64", "a:unique{return_counts = true}", {"a": u}, Multi(vals, cnt), tol=0)
    uf = torch.tensor([2.5, -1.0, 2.5, 0.0, -1.0, 7.25, 0.0, 2.5])
    vals, inv, cnt = torch.unique(uf, sorted=True, return_inverse=True, return_counts=True)
    case("unique f32 inverse counts", "a:unique{return_inverse = true, return_counts = true}", {"a": uf},
         Multi(vals, idx1(inv), cnt), tol=0)


# ---- matmul ----

def matmul_cases():
    def mm(name, sa, sb, dtype=torch.float32, tol=1e-5, expr="a:matmul(b)", fa=None, fb=None):
        if dtype.is_floating_point:
            a, b = randn(*sa, dtype=dtype), randn(*sb, dtype=dtype)
        else:
            a, b = randint(-5, 6, *sa, dtype=dtype), randint(-5, 6, *sb, dtype=dtype)
        ta = fa(a) if fa else a
        tb = fb(b) if fb else b
        case(name, expr, {"a": a, "b": b}, torch.matmul(ta, tb), tol=tol)

    mm("matmul 1-D . 1-D", (7,), (7,))
    mm("matmul 2-D . 1-D", (3, 7), (7,))
    mm("matmul 1-D . 2-D", (7,), (7, 4))
    mm("matmul 2-D . 2-D", (3, 7), (7, 4))
    mm("matmul batched (2,3,4,5)x(5,6)", (2, 3, 4, 5), (5, 6))
    mm("matmul broadcast batch (2,1,3,4)x(5,4,2)", (2, 1, 3, 4), (5, 4, 2))
    mm("matmul 3-D x 1-D", (2, 3, 4), (4,))
    mm("matmul 1-D x 3-D", (4,), (2, 4, 3))
    mm("matmul a:t() . b", (7, 3), (7, 4), expr="a:t():matmul(b)", fa=lambda x: x.t())
    mm("matmul a . b:t()", (3, 7), (4, 7), expr="a:matmul(b:t())", fb=lambda x: x.t())
    mm("matmul a:t() . b:t()", (7, 3), (4, 7), expr="a:t():matmul(b:t())", fa=lambda x: x.t(), fb=lambda x: x.t())
    mm("matmul batched transposed", (2, 5, 3), (2, 5, 4), expr="a:transpose(2, 3):matmul(b)",
       fa=lambda x: x.transpose(1, 2))
    mm("matmul f64", (4, 6), (6, 3), dtype=torch.float64, tol=1e-12)
    mm("matmul i64", (3, 5), (5, 4), dtype=torch.int64, tol=0)
    mm("matmul i64 batched", (2, 3, 5), (5, 2), dtype=torch.int64, tol=0)
    mm("matmul larger 64x96x80", (64, 96), (96, 80), tol=1e-4)
    mm("mm", (3, 5), (5, 2), expr="a:mm(b)")
    mm("bmm", (4, 3, 5), (4, 5, 2), expr="a:bmm(b)")
    mm("dot", (9,), (9,), expr="a:dot(b)")
    mm("vtl.matmul functional", (2, 3), (3, 2), expr="vtl.matmul(a, b)")


# ---- views and copies ----

def view_cases():
    a = randn(2, 3, 4)
    A = {"a": a}
    case("view(6, -1)", "a:view(6, -1)", A, a.view(6, -1), tol=0)
    case("view({-1})", "a:view({-1})", A, a.view(-1), tol=0)
    case("reshape(4, -1, 2)", "a:reshape(4, -1, 2)", A, a.reshape(4, -1, 2), tol=0)
    case("reshape of permuted (copy)", "a:permute(3, 1, 2):reshape(4, 6)", A, a.permute(2, 0, 1).reshape(4, 6), tol=0)
    case("permute(3,1,2)", "a:permute(3, 1, 2)", A, a.permute(2, 0, 1), tol=0)
    case("permute({2,3,1})", "a:permute({2, 3, 1})", A, a.permute(1, 2, 0), tol=0)
    case("permute negative dims", "a:permute(-1, -3, -2)", A, a.permute(2, 0, 1), tol=0)
    case("transpose(1,3)", "a:transpose(1, 3)", A, a.transpose(0, 2), tol=0)
    case("transpose(-1,-2)", "a:transpose(-1, -2)", A, a.transpose(-1, -2), tol=0)
    m = randn(3, 5)
    case("t()", "a:t()", {"a": m}, m.t(), tol=0)
    case("t():contiguous()", "local c = a:t():contiguous(); assert(c:is_contiguous()); return c", {"a": m}, m.t().contiguous(),
         tol=0)
    case("contiguous of permuted", "a:permute(2, 3, 1):contiguous()", A, a.permute(1, 2, 0).contiguous(), tol=0)
    case("narrow(3, 2, 2)", "a:narrow(3, 2, 2)", A, a.narrow(2, 1, 2), tol=0)
    case("narrow(2, -2, 2)", "a:narrow(2, -2, 2)", A, a.narrow(1, 1, 2), tol=0)
    case("select(2, 3)", "a:select(2, 3)", A, a.select(1, 2), tol=0)
    case("select(3, -1)", "a:select(3, -1)", A, a.select(2, -1), tol=0)
    s = randn(1, 3, 1, 2)
    case("squeeze()", "a:squeeze()", {"a": s}, s.squeeze(), tol=0)
    case("squeeze(3)", "a:squeeze(3)", {"a": s}, s.squeeze(2), tol=0)
    case("squeeze(2) non-1 is no-op", "a:squeeze(2)", {"a": s}, s.squeeze(1), tol=0)
    case("unsqueeze(1)", "a:unsqueeze(1)", {"a": m}, m.unsqueeze(0), tol=0)
    case("unsqueeze(-1)", "a:unsqueeze(-1)", {"a": m}, m.unsqueeze(-1), tol=0)
    case("unsqueeze(2)", "a:unsqueeze(2)", {"a": m}, m.unsqueeze(1), tol=0)
    e = randn(3, 1)
    case("expand(3, 4)", "a:expand(3, 4)", {"a": e}, e.expand(3, 4), tol=0)
    case("expand(2, -1, 4)", "a:expand(2, -1, 4)", {"a": e}, e.expand(2, -1, 4), tol=0)
    case("expand then contiguous", "a:expand(3, 4):contiguous()", {"a": e}, e.expand(3, 4).contiguous(), tol=0)
    f = randn(2, 3, 4, 5)
    case("flatten()", "a:flatten()", {"a": f}, f.flatten(), tol=0)
    case("flatten(2)", "a:flatten(2)", {"a": f}, f.flatten(1), tol=0)
    case("flatten(2, 3)", "a:flatten(2, 3)", {"a": f}, f.flatten(1, 2), tol=0)
    case("flatten(-2, -1)", "a:flatten(-2, -1)", {"a": f}, f.flatten(-2, -1), tol=0)
    u = randn(2, 7)
    case("unfold(2, 3, 2)", "a:unfold(2, 3, 2)", {"a": u}, u.unfold(1, 3, 2), tol=0)
    case("unfold(2, 2, 1)", "a:unfold(2, 2, 1)", {"a": u}, u.unfold(1, 2, 1), tol=0)
    case("unfold(1, 2, 1)", "a:unfold(1, 2, 1)", {"a": u}, u.unfold(0, 2, 1), tol=0)
    r = randn(2, 3)
    case("repeat(2, 3)", 'a["repeat"](a, 2, 3)', {"a": r}, r.repeat(2, 3), tol=0)
    case("repeat(2, 1, 2) adds a dim", 'a["repeat"](a, 2, 1, 2)', {"a": r}, r.repeat(2, 1, 2), tol=0)
    case("tile(2, 3)", "a:tile(2, 3)", {"a": r}, r.tile((2, 3)), tol=0)
    case("tile(2) pads leading", "a:tile(2)", {"a": r}, r.tile((2,)), tol=0)
    case("repeat 1-D", 'a["repeat"](a, 3)', {"a": r[0]}, r[0].repeat(3), tol=0)
    b = randn(2, 5)
    case("cat dim 2", "vtl.cat({a, b}, 2)", {"a": r, "b": b}, torch.cat([r, b], 1), tol=0)
    c = randn(4, 3)
    case("cat default dim", "vtl.cat({a, b})", {"a": r, "b": c}, torch.cat([r, c], 0), tol=0)
    case("cat three, dim -1", "vtl.cat({a, b, a}, -1)", {"a": r, "b": b}, torch.cat([r, b, r], -1), tol=0)
    ri = randint(0, 9, 2, 2)
    case("cat i64", "vtl.cat({a, b}, 1)", {"a": ri, "b": ri * 2}, torch.cat([ri, ri * 2]), tol=0)
    r2 = randn(2, 3)
    case("stack(1)", "vtl.stack({a, b}, 1)", {"a": r, "b": r2}, torch.stack([r, r2], 0), tol=0)
    case("stack(2)", "vtl.stack({a, b}, 2)", {"a": r, "b": r2}, torch.stack([r, r2], 1), tol=0)
    case("stack(-1)", "vtl.stack({a, b, a}, -1)", {"a": r, "b": r2}, torch.stack([r, r2, r], -1), tol=0)
    sp = randn(5, 4)
    case("split(2, 1)", "a:split(2, 1)", {"a": sp}, list(sp.split(2, 0)), tol=0)
    case("split(3, 2)", "a:split(3, 2)", {"a": sp}, list(sp.split(3, 1)), tol=0)
    case("split({1, 3}, 2)", "a:split({1, 3}, 2)", {"a": sp}, list(sp.split([1, 3], 1)), tol=0)
    case("chunk(3, 1)", "a:chunk(3, 1)", {"a": sp}, list(sp.chunk(3, 0)), tol=0)
    case("chunk(2, 2)", "a:chunk(2, 2)", {"a": sp}, list(sp.chunk(2, 1)), tol=0)
    c6 = randn(6)
    case("chunk(4) of 6 gives 3", "a:chunk(4)", {"a": c6}, list(c6.chunk(4)), tol=0)
    base = m[:, :4].contiguous()
    w = base.clone()
    w.view(12)[0] = 99
    case("view shares storage", "local v = a:view(12); v[1] = 99; return a", {"a": base}, w, tol=0)


# ---- indexing ----

def index_cases():
    a = randn(4, 3, 5)
    A = {"a": a}
    case("a[2]", "a[2]", A, a[1], tol=0)
    case("a[-1]", "a[-1]", A, a[-1], tol=0)
    case("a[{ {2,3}, {}, -1 }]", "a[{ {2, 3}, {}, -1 }]", A, a[1:3, :, -1], tol=0)
    case("a[{ {1,-1,2} }]", "a[{ {1, -1, 2} }]", A, a[0::2], tol=0)
    case("a[{2, {1,3}, {2,5,2}}]", "a[{2, {1, 3}, {2, 5, 2}}]", A, a[1, 0:3, 1:5:2], tol=0)
    case("a[{ {}, 2 }]", "a[{ {}, 2 }]", A, a[:, 1], tol=0)
    case("a[{ {-2,-1} }]", "a[{ {-2, -1} }]", A, a[-2:], tol=0)
    case("a[{3}] single range start", "a[{ {3} }]", A, a[2:3], tol=0)
    m = randn(3, 4)
    mask = m > 0
    case("a[mask] same shape", "a[m]", {"a": m, "m": mask}, m[mask], tol=0)
    rmask = torch.tensor([True, False, True])
    case("a[row_mask] selects rows", "a[m]", {"a": m, "m": rmask}, m[rmask], tol=0)
    idx = torch.tensor([2, 0, 2, 1])
    case("a[idx] (index tensor, dim 1)", "a[i]", {"a": m, "i": idx1(idx)}, m[idx], tol=0)
    case("a[idx] 3-D", "a[i]", {"a": a, "i": idx1(torch.tensor([3, 1]))}, a[torch.tensor([3, 1])], tol=0)
    ix = torch.tensor([3, 0, 3])
    case("index_select(2, idx)", "a:index_select(2, i)", {"a": m, "i": idx1(ix)}, m.index_select(1, ix), tol=0)
    case("index_select(1, idx i32)", "a:index_select(1, i)", {"a": m, "i": idx1(torch.tensor([2, 2, 0])).int()},
         m.index_select(0, torch.tensor([2, 2, 0])), tol=0)
    g = randint(0, 4, 3, 6)
    case("gather(2, idx)", "a:gather(2, i)", {"a": m, "i": idx1(g)}, m.gather(1, g), tol=0)
    g0 = randint(0, 3, 2, 4)
    case("gather(1, idx)", "a:gather(1, i)", {"a": m, "i": idx1(g0)}, m.gather(0, g0), tol=0)
    base = torch.zeros(3, 5)
    si = perm_rows(3, 5)[:, :3]
    src = randn(3, 3)
    case("scatter(2, idx, src)", "a:scatter(2, i, s)", {"a": base, "i": idx1(si), "s": src},
         base.scatter(1, si, src), tol=0)
    case("scatter(2, idx, value)", "a:scatter(2, i, 2.5)", {"a": base, "i": idx1(si)}, base.scatter(1, si, 2.5), tol=0)
    si0 = perm_rows(5, 3).t()[:2]  # (2,5): along dim 0, distinct per column
    src0 = randn(2, 5)
    case("scatter(1, idx, src)", "a:scatter(1, i, s)", {"a": base, "i": idx1(si0), "s": src0},
         base.scatter(0, si0, src0), tol=0)
    case("scatter_ in place", "a:scatter_(2, i, s); return a", {"a": base, "i": idx1(si), "s": src},
         base.scatter(1, si, src), tol=0)
    sa = randint(0, 5, 3, 8)
    srca = randn(3, 8)
    b1 = randn(3, 5)
    case("scatter_add(2, idx, src) duplicates", "a:scatter_add(2, i, s)", {"a": b1, "i": idx1(sa), "s": srca},
         b1.scatter_add(1, sa, srca))
    hist_i = randint(0, 4, 20)
    case("scatter_add histogram i64", "a:scatter_add(1, i, s)",
         {"a": torch.zeros(4, dtype=torch.int64), "i": idx1(hist_i), "s": torch.ones(20, dtype=torch.int64)},
         torch.zeros(4, dtype=torch.int64).scatter_add(0, hist_i, torch.ones(20, dtype=torch.int64)), tol=0)
    mf = m < 0
    case("masked_fill", "a:masked_fill(m, -1)", {"a": m, "m": mf}, m.masked_fill(mf, -1), tol=0)
    bmask = torch.tensor([True, False, False, True])
    case("masked_fill broadcast mask", "a:masked_fill(m, 0.5)", {"a": m, "m": bmask}, m.masked_fill(bmask, 0.5), tol=0)
    case("masked_fill_ in place", "a:masked_fill_(m, 7); return a", {"a": m, "m": mf}, m.masked_fill(mf, 7), tol=0)
    mi = randint(-5, 6, 3, 4)
    case("masked_fill i64", "a:masked_fill(m, 100)", {"a": mi, "m": mi > 0}, mi.masked_fill(mi > 0, 100), tol=0)
    y = randn(3, 4)
    case("vtl.where(c, a, b)", "vtl.where(c, a, b)", {"c": mask, "a": m, "b": y}, torch.where(mask, m, y), tol=0)
    bc = torch.tensor([[True], [False], [True]])
    yb = randn(4)
    case("vtl.where broadcast", "vtl.where(c, a, b)", {"c": bc, "a": m, "b": yb}, torch.where(bc, m, yb), tol=0)
    case("vtl.where(c, a, 0)", "vtl.where(c, a, 0)", {"c": mask, "a": m}, torch.where(mask, m, torch.tensor(0.0)),
         tol=0)
    case("a:where(c, b)", "a:where(c, b)", {"c": mask, "a": m, "b": y}, m.where(mask, y), tol=0)
    case("vtl.where f32/f64 promotes", "vtl.where(c, a, b)", {"c": mask, "a": m, "b": y.double()},
         torch.where(mask, m, y.double()), tol=0)
    nz = torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, -1.0]])
    case("nonzero 2-D", "a:nonzero()", {"a": nz}, idx1(nz.nonzero()), tol=0)
    nz1 = torch.tensor([0, 3, 0, 0, 5, 1])
    case("nonzero 1-D", "a:nonzero()", {"a": nz1}, idx1(nz1.nonzero()), tol=0)
    nzb = randint(0, 2, 2, 3, 2).bool()
    case("nonzero 3-D bool", "a:nonzero()", {"a": nzb}, idx1(nzb.nonzero()), tol=0)
    la, lb = randn(3, 4), randn(3, 4)
    case("lerp scalar weight", "a:lerp(b, 0.3)", {"a": la, "b": lb}, torch.lerp(la, lb, 0.3))
    lw = rand(4)
    case("lerp tensor weight", "a:lerp(b, w)", {"a": la, "b": lb, "w": lw}, torch.lerp(la, lb, lw))
    case("lerp weight > 0.5", "a:lerp(b, 0.9)", {"a": la, "b": lb}, torch.lerp(la, lb, 0.9))
    case("masked_select", "a:masked_select(m)", {"a": m, "m": mask}, m.masked_select(mask), tol=0)


# ---- creation ----

def creation_cases():
    case("arange(5)", "vtl.arange(5)", {}, torch.arange(5), tol=0)
    case("arange(1, 10, 2)", "vtl.arange(1, 10, 2)", {}, torch.arange(1, 10, 2), tol=0)
    case("arange(0, 1, 0.1)", "vtl.arange(0, 1, 0.1)", {}, torch.arange(0, 1, 0.1), tol=1e-6)
    case("arange(10, 0, -3)", "vtl.arange(10, 0, -3)", {}, torch.arange(10, 0, -3), tol=0)
    case("arange(1.5, 4)", "vtl.arange(1.5, 4)", {}, torch.arange(1.5, 4), tol=0)
    case("arange(5, {dtype=f64})", 'vtl.arange(5, {dtype = "f64"})', {}, torch.arange(5, dtype=torch.float64), tol=0)
    case("linspace(0, 1, 5)", "vtl.linspace(0, 1, 5)", {}, torch.linspace(0, 1, 5), tol=1e-6)
    case("linspace(-2, 3, 7)", "vtl.linspace(-2, 3, 7)", {}, torch.linspace(-2, 3, 7), tol=1e-6)
    case("linspace(0, 1, 1)", "vtl.linspace(0, 1, 1)", {}, torch.linspace(0, 1, 1), tol=0)
    case("eye(3)", "vtl.eye(3)", {}, torch.eye(3), tol=0)
    case("eye(2, 4)", "vtl.eye(2, 4)", {}, torch.eye(2, 4), tol=0)
    case("eye(3, {dtype=i64})", 'vtl.eye(3, {dtype = "i64"})', {}, torch.eye(3, dtype=torch.int64), tol=0)
    case("zeros({2,3})", "vtl.zeros({2, 3})", {}, torch.zeros(2, 3), tol=0)
    case("zeros(2, 3, {dtype=i32})", 'vtl.zeros(2, 3, {dtype = "i32"})', {}, torch.zeros(2, 3, dtype=torch.int32),
         tol=0)
    case("ones({4}, {dtype=f64})", 'vtl.ones({4}, {dtype = "f64"})', {}, torch.ones(4, dtype=torch.float64), tol=0)
    case("ones(2, 2, {dtype=bool})", 'vtl.ones(2, 2, {dtype = "bool"})', {}, torch.ones(2, 2, dtype=torch.bool), tol=0)
    case("full({2,3}, 7, {dtype=i32})", 'vtl.full({2, 3}, 7, {dtype = "i32"})', {},
         torch.full((2, 3), 7, dtype=torch.int32), tol=0)
    case("full({2}, 1.5)", "vtl.full({2}, 1.5)", {}, torch.full((2,), 1.5), tol=0)
    case("full({2,2}, 7) -> i64", "vtl.full({2, 2}, 7)", {}, torch.full((2, 2), 7), tol=0)
    case("full({3}, true) -> bool", "vtl.full({3}, true)", {}, torch.full((3,), True), tol=0)
    case("full({2}, 0.1, {dtype=f16})", 'vtl.full({2}, 0.1, {dtype = "f16"})', {},
         torch.full((2,), 0.1, dtype=torch.float16), tol=0)
    case("zeros_like i32", "vtl.zeros_like(a)", {"a": randint(0, 3, 2, 2, dtype=torch.int32)},
         torch.zeros(2, 2, dtype=torch.int32), tol=0)
    case("full_like", "vtl.full_like(a, 3)", {"a": randn(2, 3)}, torch.full((2, 3), 3.0), tol=0)
    case("tensor from nested table",
         "vtl.tensor({{1, 2}, {3, 4}})", {}, torch.tensor([[1, 2], [3, 4]]), tol=0)
    case("tensor nested floats", "vtl.tensor({{1.5, 2}, {3, 4}})", {}, torch.tensor([[1.5, 2], [3, 4]]), tol=0)


# ---- conversions and 0-d / empty ----

def conversion_cases():
    x = torch.tensor([-2.7, -0.5, 0.0, 0.49, 1.5, 2.9, 300.25])
    case("to i64 truncates", 'a:to("i64")', {"a": x}, x.to(torch.int64), tol=0)
    case("long()", "a:long()", {"a": x}, x.long(), tol=0)
    h = randn(8, scale=3.0)
    case("to f16 rounds", "a:half()", {"a": h}, h.half(), tol=0)
    case("to bf16 rounds", "a:bfloat16()", {"a": h}, h.bfloat16(), tol=0)
    case("bool()", "a:bool()", {"a": x}, x.bool(), tol=0)
    d = randn(5, dtype=torch.float64)
    case("f64 -> f32", "a:float()", {"a": d}, d.float(), tol=0)
    z = torch.tensor(3.25)
    b = randn(3)
    case("0-d input + 1-D", "a + b", {"a": z, "b": b}, z + b, tol=1e-6)
    case("0-d sum", "a:sum()", {"a": z}, z.sum(), tol=0)
    case("0-d exp", "a:exp()", {"a": z}, z.exp())
    e = torch.zeros(0, 3)
    case("empty sum(1)", "a:sum(1)", {"a": e}, e.sum(0), tol=0)
    case("empty sum()", "a:sum()", {"a": e}, e.sum(), tol=0)
    b = randn(3)
    case("empty + broadcast", "a + b", {"a": e, "b": b}, e + b, tol=0)
    case("empty cat", "vtl.cat({a, b}, 1)", {"a": e, "b": torch.ones(2, 3)}, torch.cat([e, torch.ones(2, 3)]), tol=0)
    case("item()", "a:sum():item()", {"a": torch.tensor([1.5, 2.25])}, 3.75)
    case("item() i64", "a:max():item()", {"a": torch.tensor([3, 9, -2])}, 9)


def main():
    out_dir = fixtures_dir()
    binary_cases()
    scalar_cases()
    promotion_cases()
    unary_cases()
    inplace_cases()
    reduction_cases()
    sort_cases()
    matmul_cases()
    view_cases()
    index_cases()
    creation_cases()
    conversion_cases()
    write_cases(out_dir, "ops_ref.lua", __file__,
                ((name, case_fields(expr, inputs, want, tol)) for name, expr, inputs, want, tol in cases))


if __name__ == "__main__":
    main()
