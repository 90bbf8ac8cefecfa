"""References for tests/test_advanced.lua (vtl.distill, vtl.adapt, vtl.explain) written with
PyTorch from the formulas:

- the knowledge-distillation loss alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) ||
  softmax(s/T)) (batch mean) and its gradient, for two (T, alpha) settings;
- the multi-kernel Gaussian MMD^2 (bandwidths median * 2^(k - 2), k = 0..4, from the lower
  median of the pooled off-diagonal squared distances; biased estimate) and its gradient;
- Grad-CAM and saliency of the PyTorch twin of vtl's small_cnn (tests/ref/gen_models.py) with
  random weights and batch-norm statistics, at two layers.

Writes <fixtures>/advanced/advanced.safetensors (model weights under "model.").
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import reflib
from gen_models import make_model, state


def kd_loss(s, t, y, T, alpha):
    soft = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T
    return alpha * F.cross_entropy(s, y) + (1 - alpha) * soft


def mmd(x, y, kernels=5, mul=2.0):
    z = torch.cat([x, y])
    d = torch.cdist(z, z) ** 2
    n = z.shape[0]
    off = d.detach()[~torch.eye(n, dtype=torch.bool)]
    base = off.median()  # the lower median, as vtl takes it
    k = sum(torch.exp(-d / (base * mul ** (j - kernels // 2))) for j in range(kernels))
    m = x.shape[0]
    return k[:m, :m].mean() + k[m:, m:].mean() - 2 * k[:m, m:].mean()


def gradcam(model, layer, x, cls):
    saved = {}

    def hook(_m, _i, out):
        out.retain_grad()
        saved["a"] = out

    h = layer.register_forward_hook(hook)
    logits = model(x)
    logits.gather(1, cls.view(-1, 1)).sum().backward()
    h.remove()
    a = saved["a"]
    w = a.grad.mean((2, 3))
    raw = torch.relu((w[:, :, None, None] * a).sum(1)).detach()
    up = F.interpolate(raw[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    flat = up.reshape(up.shape[0], -1)
    lo, hi = flat.min(1, keepdim=True)[0], flat.max(1, keepdim=True)[0]
    cam = ((flat - lo) / (hi - lo)).view_as(up)
    return raw, cam, w.detach(), logits.detach()


def main():
    out = os.path.join(reflib.fixtures_dir(), "advanced")
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    d = reflib.Draws(808)
    io = {}

    # ---- distillation ----
    s, t = d.randn(8, 5, scale=2.0), d.randn(8, 5, scale=3.0)
    y = d.randint(0, 5, 8)
    io["kd/s"], io["kd/t"], io["kd/y"] = s, t, y + 1
    for tag, T, alpha in (("t4a05", 4.0, 0.5), ("t2a03", 2.0, 0.3)):
        sg = s.clone().requires_grad_(True)
        loss = kd_loss(sg, t, y, T, alpha)
        loss.backward()
        io["kd/%s/loss" % tag], io["kd/%s/grad" % tag] = loss.detach().reshape(1), sg.grad

    # ---- MMD ----
    x, z = d.randn(10, 4, dtype=torch.float64), d.randn(12, 4, dtype=torch.float64) * 1.5 + 0.7
    xg = x.clone().requires_grad_(True)
    val = mmd(xg, z)
    val.backward()
    io["mmd/x"], io["mmd/y"], io["mmd/value"], io["mmd/grad"] = x, z, val.detach().reshape(1), xg.grad

    # ---- Grad-CAM and saliency on small_cnn ----
    model, gen = make_model("small_cnn", 31, (2, 3, 32, 32), 10)
    model.eval()
    xi = torch.randn(2, 3, 32, 32, generator=gen)
    cls = torch.tensor([3, 7])
    io["cam/x"], io["cam/class"] = xi, cls + 1
    for name in ("features.4", "features.2"):
        raw, cam, w, logits = gradcam(model, model.get_submodule(name), xi, cls)
        io["cam/%s/raw" % name], io["cam/%s/cam" % name], io["cam/%s/weights" % name] = raw, cam, w
        io["cam/logits"] = logits
    xs = xi.clone().requires_grad_(True)
    model(xs).gather(1, cls.view(-1, 1)).sum().backward()
    io["saliency"] = xs.grad.abs().amax(1)

    for k, v in state(model).items():
        io["model." + k] = v
    save_file({k: v.detach().contiguous() for k, v in io.items()}, os.path.join(out, "advanced.safetensors"))
    print("gen_advanced: %d tensors" % len(io))


if __name__ == "__main__":
    main()
