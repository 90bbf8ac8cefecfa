"""Reference trajectories for vtl.optim, computed with torch.optim.

Usage: gen_optim.py <fixtures_dir>

Writes <fixtures_dir>/optim_ref.lua, a Lua chunk returning

  {params = {{shape = {4, 5}, data = {...}}, ...},      initial parameters (f32, flat)
   grads  = {[t] = {[i] = {...}}},                       gradient of parameter i at step t
   steps  = 20,
   cases  = {{name, optim, groups, missing, events, want}, ...}}

Each case builds torch.optim.<optim> over `groups` (a list of {params = {indices}, <options>};
indices are 1-based), then for t = 1..steps: applies the events due before step t, sets every
parameter's .grad to grads[t][i] (or None when {t, i} is listed in `missing`), calls step(),
and records all parameters: want[t][i] is parameter i's flat data after step t.
Events: {before = t, kind = "add_group", group = {params = {...}, <options>}} and
{before = t, kind = "set_lr", group = g, lr = x}.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reflib import fixtures_dir, lua_num, lua_value, write_lua  # noqa: E402

STEPS = 20
SHAPES = [(4, 5), (5,), (3, 2, 4), (6,)]
GRAD_SCALE = [1.0, 0.1, 2.0, 1e-3]

gen = torch.Generator().manual_seed(20240611)
init = [torch.randn(s, generator=gen, dtype=torch.float32) for s in SHAPES]
grads = [[torch.randn(s, generator=gen, dtype=torch.float32) * k for s, k in zip(SHAPES, GRAD_SCALE)]
         for _ in range(STEPS)]

ALL = [1, 2, 3, 4]


def G(indices, **opts):
    return dict(params=list(indices), **opts)


# (name, optimizer, groups, missing {(t, i)}, events)
CASES = [
    ("sgd_plain", "SGD", [G(ALL, lr=0.1)], [], []),
    ("sgd_momentum", "SGD", [G(ALL, lr=0.05, momentum=0.9)], [], []),
    ("sgd_nesterov", "SGD", [G(ALL, lr=0.05, momentum=0.9, nesterov=True)], [], []),
    ("sgd_dampening", "SGD", [G(ALL, lr=0.05, momentum=0.8, dampening=0.3)], [], []),
    ("sgd_weight_decay", "SGD", [G(ALL, lr=0.05, momentum=0.9, weight_decay=0.01)], [], []),
    ("sgd_nesterov_wd", "SGD", [G(ALL, lr=0.02, momentum=0.9, nesterov=True, weight_decay=0.05)], [], []),
    ("sgd_maximize", "SGD", [G(ALL, lr=0.05, momentum=0.5, weight_decay=0.01, maximize=True)], [], []),
    ("sgd_groups", "SGD", [G([1, 3], lr=0.1, momentum=0.9, weight_decay=1e-3), G([2, 4], lr=0.01, momentum=0.9)], [], []),
    ("adam_default", "Adam", [G(ALL)], [], []),
    ("adam_lr", "Adam", [G(ALL, lr=0.05, betas=(0.8, 0.99), eps=1e-6)], [], []),
    ("adam_amsgrad", "Adam", [G(ALL, lr=0.01, amsgrad=True)], [], []),
    ("adam_weight_decay", "Adam", [G(ALL, lr=0.01, weight_decay=0.1)], [], []),
    ("adam_amsgrad_wd_maximize", "Adam", [G(ALL, lr=0.01, weight_decay=0.05, amsgrad=True, maximize=True)], [], []),
    ("adam_groups", "Adam", [G([1, 2], lr=1e-2, weight_decay=0.1), G([3, 4], lr=1e-3)], [], []),
    ("adamw_default", "AdamW", [G(ALL)], [], []),
    ("adamw_lr_wd", "AdamW", [G(ALL, lr=0.02, weight_decay=0.1)], [], []),
    ("adamw_amsgrad", "AdamW", [G(ALL, lr=0.01, weight_decay=0.05, amsgrad=True)], [], []),
    ("adamw_groups", "AdamW", [G([2, 4], lr=3e-3, weight_decay=0.0), G([1, 3], lr=1e-2, weight_decay=0.05)], [], []),
    ("rmsprop_plain", "RMSprop", [G(ALL)], [], []),
    ("rmsprop_centered", "RMSprop", [G(ALL, lr=1e-3, centered=True)], [], []),
    ("rmsprop_momentum", "RMSprop", [G(ALL, lr=1e-3, momentum=0.9)], [], []),
    ("rmsprop_centered_momentum_wd", "RMSprop",
     [G(ALL, lr=1e-3, alpha=0.9, eps=1e-6, momentum=0.5, centered=True, weight_decay=0.01)], [], []),
    ("rmsprop_groups", "RMSprop", [G([1], lr=1e-2, weight_decay=0.1), G([2, 3, 4], lr=1e-3, momentum=0.9)], [], []),
    # a parameter without a gradient on some steps is skipped (its step count stays behind)
    ("adam_missing_grads", "Adam", [G(ALL, lr=0.01)], [(t, 2) for t in range(1, STEPS + 1, 2)] + [(t, 4) for t in range(1, 8)], []),
    ("sgd_missing_grads", "SGD", [G(ALL, lr=0.05, momentum=0.9)], [(t, 3) for t in range(4, 12)], []),
    # a group added mid-run (layers unfrozen) and a learning rate changed between steps
    ("adamw_add_group", "AdamW", [G([1, 2], lr=1e-2)],
     [], [dict(before=8, kind="add_group", group=G([3, 4], lr=1e-3, weight_decay=0.0))]),
    ("sgd_add_group_set_lr", "SGD", [G([4], lr=0.1, momentum=0.9)],
     [], [dict(before=5, kind="add_group", group=G([1, 2, 3], lr=0.01, nesterov=True, momentum=0.9)),
          dict(before=12, kind="set_lr", group=1, lr=0.01), dict(before=15, kind="set_lr", group=2, lr=0.003)]),
    ("rmsprop_set_lr", "RMSprop", [G(ALL, lr=1e-2, momentum=0.5)],
     [], [dict(before=11, kind="set_lr", group=1, lr=1e-3)]),
]


def torch_group(g, params):
    out = {k: v for k, v in g.items() if k != "params"}
    out["params"] = [params[i - 1] for i in g["params"]]
    return out


def run(opt_name, groups, missing, events):
    params = [p.clone().requires_grad_(True) for p in init]
    opt = getattr(torch.optim, opt_name)([torch_group(g, params) for g in groups])
    missing = set(missing)
    want = []
    for t in range(1, STEPS + 1):
        for ev in events:
            if ev["before"] != t:
                continue
            if ev["kind"] == "add_group":
                opt.add_param_group(torch_group(ev["group"], params))
            elif ev["kind"] == "set_lr":
                opt.param_groups[ev["group"] - 1]["lr"] = ev["lr"]
        for i, p in enumerate(params, 1):
            p.grad = None if (t, i) in missing else grads[t - 1][i - 1].clone()
        opt.step()
        want.append([p.detach().clone() for p in params])
    return want


# ---- Lua serialisation ----

def lua_val(v):
    """lua_value, with a tensor as its flat list of values."""
    if isinstance(v, torch.Tensor):
        return "{" + ", ".join(lua_num(x, True) for x in v.reshape(-1).tolist()) + "}"
    return lua_value(v)


def main():
    out_dir = fixtures_dir()
    lines = ["-- written by tests/ref/gen_optim.py (torch " + torch.__version__ + ")", "return {"]
    lines.append(f"steps = {STEPS},")
    lines.append("params = {" + ", ".join(
        "{shape = " + lua_val(list(s)) + ", data = " + lua_val(p) + "}" for s, p in zip(SHAPES, init)) + "},")
    lines.append("grads = {")
    for step in grads:
        lines.append("  {" + ", ".join(lua_val(g) for g in step) + "},")
    lines.append("},")
    lines.append("cases = {")
    for name, opt_name, groups, missing, events in CASES:
        want = run(opt_name, groups, missing, events)
        lines.append("  {name = %s, optim = %s, groups = %s, missing = %s, events = %s, want = {" % (
            lua_val(name), lua_val(opt_name), lua_val(groups), lua_val([list(m) for m in missing]), lua_val(events)))
        for step in want:
            lines.append("    {" + ", ".join(lua_val(p) for p in step) + "},")
        lines.append("  }},")
    lines.append("},")
    lines.append("}")
    write_lua(os.path.join(out_dir, "optim_ref.lua"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
