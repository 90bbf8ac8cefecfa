-- Loss modules: thin wrappers holding the options of the functional losses.
local Module = require("vtl.nn.module").Module
local F = require "vtl.nn.functional"

local M = {}

-- A loss class: nn.<Class>{options}; calling it with (input, target) runs F[fname].
local function loss(class, fname, defaults)
  local cls = Module:extend(class)
  M[class] = cls
  function cls:init(opts)
    local o = {}
    for k, v in pairs(defaults) do o[k] = v end
    for k, v in pairs(opts or {}) do o[k] = v end
    self.opts = o
  end
  function cls:forward(input, target)
    return F[fname](input, target, self.opts)
  end
  function cls:extra_repr()
    local keys = {}
    for k in pairs(self.opts) do keys[#keys + 1] = k end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do
      local v = self.opts[k]
      if type(v) ~= "table" and type(v) ~= "userdata" then parts[#parts + 1] = k .. "=" .. tostring(v) end
    end
    return table.concat(parts, ", ")
  end
  return cls
end

---nn.CrossEntropyLoss{weight, ignore_index = -100, label_smoothing = 0, reduction = "mean"} (1-based targets).
loss("CrossEntropyLoss", "cross_entropy", {})
---nn.NLLLoss{weight, ignore_index = -100, reduction = "mean"}.
loss("NLLLoss", "nll_loss", {})
---nn.BCEWithLogitsLoss{weight, pos_weight, reduction = "mean"}.
loss("BCEWithLogitsLoss", "binary_cross_entropy_with_logits", {})
---nn.MSELoss{reduction = "mean"}.
loss("MSELoss", "mse_loss", {})
---nn.L1Loss{reduction = "mean"}.
loss("L1Loss", "l1_loss", {})
---nn.SmoothL1Loss{beta = 1, reduction = "mean"}.
loss("SmoothL1Loss", "smooth_l1_loss", {})
---nn.KLDivLoss{reduction = "mean", log_target = false}.
loss("KLDivLoss", "kl_div", {})

return M
