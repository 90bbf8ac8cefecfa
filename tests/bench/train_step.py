# One benchmark configuration in PyTorch: prints "images_per_s peak_rss_mib".
import resource, sys, torch
sys.path.insert(0, __file__.rsplit("/", 1)[0])
import models
from benchlib import best

name, batch, size, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
bf16 = len(sys.argv) > 6 and sys.argv[6] == "bf16"  # forward and loss under CPU bf16 autocast
cl = len(sys.argv) > 7 and sys.argv[7] == "cl"  # channels-last model and input
torch.set_num_threads(threads)
torch.manual_seed(0)
if name.startswith("vit"):  # timm's model (PyTorch 1.13: attention as matmul, softmax, matmul)
    import timm
    model = timm.create_model(name, num_classes=1000)
else:
    model = {"resnet18": models.ResNet18, "mobilenet_v2": models.MobileNetV2}[name]()
model.train()
if cl:
    model = model.to(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(batch, 3, size, size)
if cl:
    x = x.contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 1000, (batch,))

def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()

try:
    t = best(step, steps)
except RuntimeError as e:  # PyTorch 1.13 lacks some bf16 CPU backward kernels (hardtanh: ReLU6)
    print("nan 0 %s" % str(e).split("\n")[0].replace(" ", "_")[:60])
    sys.exit(0)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("%.3f %.1f" % (batch / t, rss))
