# A small CNN (conv-bn-relu-pool x2, linear) trained 50 steps with SGD-momentum in PyTorch:
# writes the initial weights, the batches and the loss after each step for tests/test_train.lua.
import os, sys, torch
from safetensors.torch import save_file

out = sys.argv[1]
torch.manual_seed(0)


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(16)
        self.fc = torch.nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


model = SmallCNN()
init = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
steps, batch = 50, 16
xs = torch.randn(steps, batch, 1, 28, 28)
ys = torch.randint(0, 10, (steps, batch))
losses = []
for i in range(steps):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(xs[i]), ys[i])
    loss.backward()
    opt.step()
    losses.append(loss.item())
final = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
save_file(init, os.path.join(out, "train_init.safetensors"))
save_file({"x": xs, "y": ys + 1, "loss": torch.tensor(losses, dtype=torch.float64)},
          os.path.join(out, "train_data.safetensors"))
save_file(final, os.path.join(out, "train_final.safetensors"))
print("gen_train: wrote 50 steps")
