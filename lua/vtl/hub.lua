-- vtl.hub: weights as PyTorch and timm leave them on disk.
--
--   local sd, keys = vtl.hub.load_state_dict_file("model_best.pth")   -- also vtl.load_state_dict_file
--   local info = vtl.hub.read_folder("hub/resnet50.a1_in1k")           -- config.json + model.safetensors
--   local model = vtl.hub.create_model("hub/my_finetuned", {num_classes = 10})
--
-- A timm hub folder (what timm.models.push_to_hf_hub / save_for_hf writes, and what the
-- Hugging Face Hub serves for timm models) holds config.json ({"architecture": ...,
-- "num_classes": ..., "pretrained_cfg": {...}}) and model.safetensors or pytorch_model.bin,
-- possibly sharded (model.safetensors.index.json). Key names are PyTorch's, untouched.
local core = require "vtl.core"

local M = {}

-- entries that wrap a state dict in training checkpoints, in the order they are tried
M.wrappers = {"state_dict", "model_state_dict", "model", "model_state", "state_dict_ema"}
-- prefixes removed when every key has one: DataParallel/DistributedDataParallel, torch.compile
M.prefixes = {"module.", "_orig_mod."}

local function readfile(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- a map name -> tensor whose pairs() walks `order` (as Module:state_dict's does)
local function ordered_map(map, order)
  return setmetatable(map, {__pairs = function(self)
    local i = 0
    return function()
      while i < #order do
        i = i + 1
        local k = order[i]
        local v = rawget(self, k)
        if v ~= nil then return k, v end
      end
    end, self, nil
  end})
end

local function sorted_keys(t)
  local keys = {}
  for k in next, t do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    if ta == "string" or ta == "number" then return a < b end
    return tostring(a) < tostring(b)
  end)
  return keys
end

-- "a, b, c" (the first few keys of a table, for messages)
local function key_list(t)
  local keys, out = sorted_keys(t), {}
  for i = 1, math.min(#keys, 12) do out[i] = tostring(keys[i]) end
  if #keys > 12 then out[#out + 1] = ("... (%d keys)"):format(#keys) end
  return #out > 0 and table.concat(out, ", ") or "none"
end

-- the file's object and, for PyTorch checkpoints, the key order of its dicts
local function read_any(path)
  local f, err = io.open(path, "rb")
  if not f then error(("load_state_dict_file: cannot open '%s': %s"):format(path, err), 3) end
  local head = f:read(4) or ""
  f:close()
  if head == "PK\3\4" or head == "PK\5\6" then return core.load_pth(path) end
  return core.load(path), nil -- safetensors, .npy; vtl.load refuses PyTorch's legacy format itself
end

---Reads a state dict (name -> tensor) from a PyTorch checkpoint (.pth/.pt/.bin, torch.save's
---zip format) or a safetensors file. A training checkpoint is unwrapped: opts.key names the
---entry to take, else the first of hub.wrappers present ({state_dict = ...}, {model = ...}, ...;
---repeatedly, for nested wrappers). Entries that are not tensors are left out. A prefix every
---key shares ("module." from DataParallel, "_orig_mod." from torch.compile) is removed, unless
---opts.strip_prefix = false; opts.strip_prefix = "backbone." removes that prefix instead.
---The map's pairs() goes in file order (safetensors: sorted), which `keys` lists.
---@param path string
---@param opts? {key: string, strip_prefix: string|false}
---@return table<string, vtl.Tensor> state_dict, string[] keys
function M.load_state_dict_file(path, opts)
  if type(path) ~= "string" then error("load_state_dict_file: expected a path (string), got " .. type(path), 2) end
  opts = opts or {}
  if type(opts) ~= "table" then error("load_state_dict_file: opts must be a table, got " .. type(opts), 2) end
  local obj, order = read_any(path)
  if core.is_tensor(obj) then
    error(("load_state_dict_file: %s holds a single tensor (.npy), not a state dict (name -> tensor)"):format(path), 2)
  end
  if type(obj) ~= "table" then
    error(("load_state_dict_file: %s holds a %s, not a state dict (name -> tensor)"):format(path, type(obj)), 2)
  end
  local sd = obj
  if opts.key ~= nil then
    local inner = rawget(sd, opts.key)
    if type(inner) ~= "table" or core.is_tensor(inner) then
      error(("load_state_dict_file: %s has no entry '%s' holding a state dict (its keys: %s)"):format(path,
        tostring(opts.key), key_list(sd)), 2)
    end
    sd = inner
  else
    for _ = 1, 4 do
      local inner
      for _, w in ipairs(M.wrappers) do
        local v = rawget(sd, w)
        if type(v) == "table" then inner = v; break end -- tensors are not tables: a weight named "model" stays
      end
      if not inner then break end
      sd = inner
    end
  end
  local keys = order and order[sd] or sorted_keys(sd)
  local map, names = {}, {}
  for _, k in ipairs(keys) do
    local v = rawget(sd, k)
    if type(k) == "string" and core.is_tensor(v) and map[k] == nil then
      map[k] = v
      names[#names + 1] = k
    end
  end
  if #names == 0 then
    error(("load_state_dict_file: %s holds no tensors by name (its keys: %s)%s"):format(path, key_list(sd),
      opts.key == nil and "; pass {key = '<entry>'} to pick the entry holding the weights" or ""), 2)
  end
  local strip = opts.strip_prefix
  local prefixes = strip == false and {} or type(strip) == "string" and {strip} or M.prefixes
  local changed = true
  while changed do
    changed = false
    for _, pre in ipairs(prefixes) do
      local all = true
      for _, k in ipairs(names) do
        if k:sub(1, #pre) ~= pre then all = false; break end
      end
      if all then
        local m2, n2 = {}, {}
        for i, k in ipairs(names) do
          n2[i] = k:sub(#pre + 1)
          m2[n2[i]] = map[k]
        end
        map, names, changed = m2, n2, type(strip) ~= "string"
        break
      end
    end
  end
  return ordered_map(map, names), names
end

-- ---- timm hub folders ----

local function copy(t)
  if type(t) ~= "table" then return t end
  local out = {}
  for k, v in pairs(t) do out[k] = copy(v) end
  return out
end

local function read_json(path, fn)
  local text = readfile(path)
  if not text then return nil end
  local ok, v = pcall(core._json_decode, text, path)
  if not ok then error(("%s: %s"):format(fn, tostring(v)), 3) end
  return v
end

-- weights of a sharded checkpoint: index.json's weight_map names the files
local function read_sharded(dir, index_path, fn)
  local index = read_json(index_path, fn)
  if type(index) ~= "table" or type(index.weight_map) ~= "table" then
    error(("%s: %s has no weight_map object"):format(fn, index_path), 3)
  end
  local files, seen = {}, {}
  for name, file in pairs(index.weight_map) do
    if type(file) ~= "string" or file:find("/", 1, true) or file:find("..", 1, true) then
      error(("%s: %s: weight_map['%s'] is not a file name in the folder"):format(fn, index_path, tostring(name)), 3)
    end
    if not seen[file] then seen[file] = true; files[#files + 1] = file end
  end
  table.sort(files)
  local map = {}
  for _, file in ipairs(files) do
    local ok, sd = pcall(M.load_state_dict_file, dir .. "/" .. file)
    if not ok then error(("%s: %s"):format(fn, tostring(sd)), 3) end
    for k, v in next, sd do map[k] = v end
  end
  for name in pairs(index.weight_map) do
    if map[name] == nil then error(("%s: %s lists '%s', which no shard holds"):format(fn, index_path, name), 3) end
  end
  local names = sorted_keys(map)
  return ordered_map(map, names), names
end

-- weight files of a hub folder, in the order they are looked for
M.weight_files = {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"}

---Reads a timm hub folder: config.json and its weights. The result follows timm's
---load_model_config_from_hf: pretrained_cfg is config.json's pretrained_cfg (or, in the older
---layout without one, the rest of config.json) with num_classes, label_names and
---label_descriptions from the top level of config.json taking precedence.
---opts.weights = false reads config.json only.
---@param dir string
---@param opts? {weights: boolean}
---@return {architecture: string, num_classes: integer|nil, num_features: integer|nil, global_pool: string|nil, model_args: table, label_names: table|nil, pretrained_cfg: table, config: table, state_dict: table<string, vtl.Tensor>|nil, keys: string[]|nil, weights_file: string|nil}
function M.read_folder(dir, opts)
  local fn = "hub.read_folder"
  if type(dir) ~= "string" then error(fn .. ": expected a folder path (string), got " .. type(dir), 2) end
  opts = opts or {}
  dir = dir:gsub("(.)/+$", "%1")
  local cfg_path = dir .. "/config.json"
  local cfg = read_json(cfg_path, fn)
  if cfg == nil then
    error(("%s: %s not found (a timm hub folder holds config.json and model.safetensors or pytorch_model.bin)")
      :format(fn, cfg_path), 2)
  end
  if type(cfg) ~= "table" then error(("%s: %s holds a %s, not an object"):format(fn, cfg_path, type(cfg)), 2) end
  if type(cfg.architecture) ~= "string" then
    error(("%s: %s has no \"architecture\" (the model name, as timm.create_model takes it)"):format(fn, cfg_path), 2)
  end
  local pcfg
  if cfg.pretrained_cfg ~= nil then
    if type(cfg.pretrained_cfg) ~= "table" then error(("%s: %s: pretrained_cfg is not an object"):format(fn, cfg_path), 2) end
    pcfg = copy(cfg.pretrained_cfg)
  else -- the older layout: the pretrained cfg is the file itself
    pcfg = copy(cfg)
    pcfg.architecture, pcfg.num_features = nil, nil
    if pcfg.labels ~= nil then pcfg.label_names, pcfg.labels = pcfg.labels, nil end
  end
  if cfg.num_classes ~= nil then pcfg.num_classes = cfg.num_classes end
  if cfg.label_names ~= nil then pcfg.label_names = copy(cfg.label_names) end
  if cfg.label_descriptions ~= nil then pcfg.label_descriptions = copy(cfg.label_descriptions) end
  if pcfg.num_classes ~= nil and math.type(pcfg.num_classes) ~= "integer" then
    error(("%s: %s: num_classes must be an integer, got %s"):format(fn, cfg_path, tostring(pcfg.num_classes)), 2)
  end
  local info = {
    architecture = cfg.architecture, num_classes = pcfg.num_classes, num_features = cfg.num_features,
    global_pool = cfg.global_pool, model_args = copy(cfg.model_args) or {}, label_names = pcfg.label_names,
    pretrained_cfg = pcfg, config = cfg, dir = dir,
  }
  if opts.weights == false then return info end
  for _, name in ipairs(M.weight_files) do
    local path = dir .. "/" .. name
    if exists(path) then
      local sd, keys
      if name:match("%.index%.json$") then
        sd, keys = read_sharded(dir, path, fn)
      else
        local ok
        ok, sd, keys = pcall(M.load_state_dict_file, path)
        if not ok then error(("%s: %s"):format(fn, tostring(sd)), 2) end
      end
      info.state_dict, info.keys, info.weights_file = sd, keys, path
      return info
    end
  end
  error(("%s: %s holds no weights (looked for %s)"):format(fn, dir, table.concat(M.weight_files, ", ")), 2)
end

---Builds the folder's architecture with vtl.models.create and loads its weights. With
---opts.num_classes other than the folder's, the classifier (pretrained_cfg.classifier) is left
---freshly initialised. The model's pretrained_cfg takes the folder's values (mean, std,
---input_size, crop_pct, interpolation, label_names, ...). Other opts go to models.create.
---@param dir string
---@param opts? table
---@return vtl.nn.Module model, table info  (info as read_folder returns it)
function M.create_model(dir, opts)
  local fn = "hub.create_model"
  opts = opts or {}
  local ok, info = pcall(M.read_folder, dir)
  if not ok then error((tostring(info):gsub("^hub%.read_folder", fn)), 2) end
  local models = require "vtl.models"
  if not models.is_model(info.architecture) then
    error(("%s: %s: architecture '%s' is not in vtl's model zoo (known: %s)"):format(fn, dir, info.architecture,
      table.concat(models.list(), ", ")), 2)
  end
  local bopts = copy(info.model_args)
  for k, v in pairs(opts) do bopts[k] = v end
  bopts.pretrained = false
  if bopts.num_classes == nil then bopts.num_classes = info.num_classes end
  local model = models.create(info.architecture, bopts)
  local sd = {}
  for k, v in next, info.state_dict do sd[k] = v end
  local dropped = {}
  if bopts.num_classes ~= info.num_classes then
    local cls = info.pretrained_cfg.classifier
    for _, c in ipairs(type(cls) == "table" and cls or {cls}) do
      for _, suffix in ipairs({".weight", ".bias"}) do
        if sd[c .. suffix] ~= nil then sd[c .. suffix] = nil; dropped[c .. suffix] = true end
      end
    end
  end
  local lok, missing, unexpected = pcall(model.load_state_dict, model, sd, {strict = false})
  if not lok then error(("%s: %s: %s"):format(fn, info.weights_file, tostring(missing)), 2) end
  local bad = {}
  for _, k in ipairs(missing) do if not dropped[k] then bad[#bad + 1] = k end end
  if #bad > 0 or #unexpected > 0 then
    local errs = {}
    if #bad > 0 then errs[#errs + 1] = "missing key(s): " .. table.concat(bad, ", ") end
    if #unexpected > 0 then errs[#errs + 1] = "unexpected key(s): " .. table.concat(unexpected, ", ") end
    error(("%s: %s does not fit %s:\n  %s"):format(fn, info.weights_file, info.architecture, table.concat(errs, "\n  ")), 2)
  end
  local cfg = copy(rawget(model, "pretrained_cfg") or {})
  for k, v in pairs(info.pretrained_cfg) do cfg[k] = copy(v) end
  cfg.num_classes = bopts.num_classes
  if bopts.num_classes ~= info.num_classes then cfg.label_names, cfg.label_descriptions = nil, nil end
  rawset(model, "pretrained_cfg", cfg)
  return model, info
end

return M
