-- The small CNN of the PyTorch reference generators gen_train.py and gen_amp.py
-- (conv-bn-relu-pool x2, linear on 1x28x28 inputs), with PyTorch's parameter names.
local nn = require("vtl").nn
local F = nn.functional

local SmallCNN = nn.Module:extend("SmallCNN")
function SmallCNN:init()
  self.conv1 = nn.Conv2d(1, 8, 3, {padding = 1})
  self.bn1 = nn.BatchNorm2d(8)
  self.conv2 = nn.Conv2d(8, 16, 3, {padding = 1})
  self.bn2 = nn.BatchNorm2d(16)
  self.fc = nn.Linear(16 * 7 * 7, 10)
end
function SmallCNN:forward(x)
  x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
  x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
  return self.fc(x:flatten(2))
end
return SmallCNN
