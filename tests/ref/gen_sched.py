"""Reference learning-rate (and momentum) sequences for vtl.optim.lr_scheduler from
torch.optim.lr_scheduler.

Usage: gen_sched.py <fixtures_dir>

Writes <fixtures_dir>/sched_ref.lua, a Lua chunk returning a list of cases
{name, optim, lrs, sched, opts, steps, metrics, want_lr, want_mom}: an optimizer `optim` ("SGD"
with momentum 0.9, or "Adam") over one parameter group per entry of `lrs`, the scheduler `sched`
with options `opts`, then `steps` calls of step() (ReduceLROnPlateau: step(metrics[t])).
want_lr[t][g] is group g's lr after t steps (t = 0: right after construction); want_mom[t][g]
is its momentum (SGD) or beta1 (Adam)."""
import math
import os
import sys

import torch
from torch.optim import lr_scheduler as S

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reflib import fixtures_dir, lua_value, write_lua  # noqa: E402


def make_opt(kind, lrs):
    groups = [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in lrs]
    if kind == "SGD":
        return torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)
    return torch.optim.Adam(groups, lr=lrs[0])


def mom_of(opt, kind):
    return [g["momentum"] if kind == "SGD" else g["betas"][0] for g in opt.param_groups]


def run(name, kind, lrs, sched, opts, steps, build, metrics=None):
    opt = make_opt(kind, lrs)
    s = build(opt)
    want_lr = [[g["lr"] for g in opt.param_groups]]
    want_mom = [mom_of(opt, kind)]
    for t in range(steps):
        opt.step()
        if metrics is not None:
            s.step(metrics[t])
        else:
            s.step()
        want_lr.append([g["lr"] for g in opt.param_groups])
        want_mom.append(mom_of(opt, kind))
    return dict(name=name, optim=kind, lrs=lrs, sched=sched, opts=opts, steps=steps,
                metrics=metrics or [], want_lr=want_lr, want_mom=want_mom)


cases = []
two = [0.1, 0.01]
cases.append(run("step", "SGD", two, "StepLR", {"step_size": 3, "gamma": 0.5}, 12,
                 lambda o: S.StepLR(o, step_size=3, gamma=0.5)))
cases.append(run("multistep", "SGD", two, "MultiStepLR", {"milestones": [7, 2, 5], "gamma": 0.3}, 10,
                 lambda o: S.MultiStepLR(o, milestones=[7, 2, 5], gamma=0.3)))
cases.append(run("exponential", "Adam", two, "ExponentialLR", {"gamma": 0.9}, 10,
                 lambda o: S.ExponentialLR(o, gamma=0.9)))
cases.append(run("linear", "SGD", two, "LinearLR", {"start_factor": 0.25, "end_factor": 1.0, "total_iters": 4}, 8,
                 lambda o: S.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=4)))
cases.append(run("cosine", "SGD", two, "CosineAnnealingLR", {"T_max": 10, "eta_min": 1e-4}, 25,
                 lambda o: S.CosineAnnealingLR(o, T_max=10, eta_min=1e-4)))
cases.append(run("warm_restarts", "SGD", two, "CosineAnnealingWarmRestarts", {"T_0": 3, "T_mult": 2, "eta_min": 0.001}, 30,
                 lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=0.001)))
cases.append(run("warm_restarts_1", "Adam", [0.003], "CosineAnnealingWarmRestarts", {"T_0": 4}, 13,
                 lambda o: S.CosineAnnealingWarmRestarts(o, T_0=4)))
for three in (False, True):
    for strat in ("cos", "linear"):
        for kind in ("SGD", "Adam"):
            nm = f"onecycle_{kind}_{strat}{'_3' if three else ''}"
            cases.append(run(nm, kind, two, "OneCycleLR",
                             {"max_lr": [0.5, 0.05], "total_steps": 40, "pct_start": 0.25, "anneal_strategy": strat,
                              "three_phase": three}, 40,
                             lambda o, strat=strat, three=three: S.OneCycleLR(
                                 o, max_lr=[0.5, 0.05], total_steps=40, pct_start=0.25, anneal_strategy=strat,
                                 three_phase=three)))
cases.append(run("onecycle_epochs", "SGD", [0.1], "OneCycleLR",
                 {"max_lr": 1.0, "epochs": 3, "steps_per_epoch": 7, "div_factor": 10, "final_div_factor": 100}, 21,
                 lambda o: S.OneCycleLR(o, max_lr=1.0, epochs=3, steps_per_epoch=7, div_factor=10, final_div_factor=100)))


def warm_cos(o):
    warm = S.LinearLR(o, start_factor=0.01, end_factor=1.0, total_iters=5)
    cos = S.CosineAnnealingLR(o, T_max=20, eta_min=0.0)
    return S.SequentialLR(o, [warm, cos], milestones=[5])


cases.append(run("warmup_cosine", "SGD", two, "warmup", {"steps": 5, "start_factor": 0.01, "inner": "CosineAnnealingLR",
                 "inner_opts": {"T_max": 20}}, 24, warm_cos))

metrics = [1.0, 0.9, 0.95, 0.92, 0.91, 0.9, 0.9, 0.89995, 0.95, 0.96, 0.97, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.1, 1.2, 1.3]
cases.append(run("plateau_min", "SGD", two, "ReduceLROnPlateau", {"patience": 2, "factor": 0.5, "min_lr": [0.02, 0.001]},
                 len(metrics), lambda o: S.ReduceLROnPlateau(o, patience=2, factor=0.5, min_lr=[0.02, 0.001]), metrics))
cases.append(run("plateau_max_abs_cooldown", "Adam", two, "ReduceLROnPlateau",
                 {"mode": "max", "patience": 1, "threshold": 0.05, "threshold_mode": "abs", "cooldown": 2},
                 len(metrics), lambda o: S.ReduceLROnPlateau(o, mode="max", patience=1, threshold=0.05,
                                                              threshold_mode="abs", cooldown=2), metrics))

write_lua(os.path.join(fixtures_dir(), "sched_ref.lua"),
          "-- Generated by tests/ref/gen_sched.py (PyTorch %s); do not edit.\nreturn " % torch.__version__ + lua_value(cases) + "\n")
