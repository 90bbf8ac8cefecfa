-- ResNet-18 and MobileNetV2 (the torchvision architectures) as plain vtl modules, for the
-- training-step benchmark; tests/bench/models.py defines the same networks in PyTorch.
local vtl = require "vtl"
local nn = vtl.nn
local F = nn.functional

local M = {}

local BasicBlock = nn.Module:extend("BasicBlock")
function BasicBlock:init(cin, cout, stride)
  self.conv1 = nn.Conv2d(cin, cout, 3, {stride = stride, padding = 1, bias = false})
  self.bn1 = nn.BatchNorm2d(cout)
  self.conv2 = nn.Conv2d(cout, cout, 3, {padding = 1, bias = false})
  self.bn2 = nn.BatchNorm2d(cout)
  if stride ~= 1 or cin ~= cout then
    self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, {stride = stride, bias = false}), nn.BatchNorm2d(cout))
  end
end
function BasicBlock:forward(x)
  local idt = self.downsample and self.downsample(x) or x
  local out = F.relu(self.bn1(self.conv1(x)))
  out = self.bn2(self.conv2(out))
  return F.relu(out + idt)
end

local ResNet18 = nn.Module:extend("ResNet18")
function ResNet18:init(num_classes)
  self.conv1 = nn.Conv2d(3, 64, 7, {stride = 2, padding = 3, bias = false})
  self.bn1 = nn.BatchNorm2d(64)
  self.maxpool = nn.MaxPool2d(3, {stride = 2, padding = 1})
  local cin = 64
  for i, spec in ipairs({{64, 1}, {128, 2}, {256, 2}, {512, 2}}) do
    self["layer" .. i] = nn.Sequential(BasicBlock(cin, spec[1], spec[2]), BasicBlock(spec[1], spec[1], 1))
    cin = spec[1]
  end
  self.fc = nn.Linear(512, num_classes or 1000)
end
function ResNet18:forward(x)
  x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
  x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
  return self.fc(F.adaptive_avg_pool2d(x, 1):flatten(2))
end

local function conv_bn(cin, cout, k, s, groups, act)
  local layers = {nn.Conv2d(cin, cout, k, {stride = s, padding = (k - 1) // 2, groups = groups or 1, bias = false}),
                  nn.BatchNorm2d(cout)}
  if act ~= false then layers[#layers + 1] = nn.ReLU6() end
  return nn.Sequential(table.unpack(layers))
end

local InvertedResidual = nn.Module:extend("InvertedResidual")
function InvertedResidual:init(cin, cout, stride, t)
  local hidden = cin * t
  self.use_res = stride == 1 and cin == cout
  local layers = {}
  if t ~= 1 then layers[#layers + 1] = conv_bn(cin, hidden, 1, 1) end
  layers[#layers + 1] = conv_bn(hidden, hidden, 3, stride, hidden)
  layers[#layers + 1] = conv_bn(hidden, cout, 1, 1, 1, false)
  self.conv = nn.Sequential(table.unpack(layers))
end
function InvertedResidual:forward(x)
  if self.use_res then return x + self.conv(x) end
  return self.conv(x)
end

local MobileNetV2 = nn.Module:extend("MobileNetV2")
function MobileNetV2:init(num_classes)
  local cfg = {{1, 16, 1, 1}, {6, 24, 2, 2}, {6, 32, 3, 2}, {6, 64, 4, 2}, {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}}
  local layers, cin = {conv_bn(3, 32, 3, 2)}, 32
  for _, c in ipairs(cfg) do
    for i = 1, c[3] do
      layers[#layers + 1] = InvertedResidual(cin, c[2], i == 1 and c[4] or 1, c[1])
      cin = c[2]
    end
  end
  layers[#layers + 1] = conv_bn(cin, 1280, 1, 1)
  self.features = nn.Sequential(table.unpack(layers))
  self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes or 1000))
end
function MobileNetV2:forward(x)
  return self.classifier(self.features(x):mean({3, 4}))
end

M.resnet18, M.mobilenet_v2 = ResNet18, MobileNetV2
return M
