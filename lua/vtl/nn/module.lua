-- vtl.nn.Module: the base class of layers and models. Children, parameters and buffers are
-- registered by assignment (`self.fc = nn.Linear(4, 2)`), kept in insertion order, and named
-- with PyTorch's dotted keys (`features.0.weight`), so state dicts move between vtl and PyTorch.
local core = require "vtl.core"

local M = {}

-- Parameters are ordinary tensors remembered here; the set is weak so it never keeps one alive.
local param_set = setmetatable({}, {__mode = "k"})

---Marks a tensor as a parameter: a leaf sharing t's storage, requiring grad unless told not to.
---@param t vtl.Tensor
---@param requires_grad boolean|nil  default true
---@return vtl.Tensor
function M.Parameter(t, requires_grad)
  if not core.is_tensor(t) then error("nn.Parameter: expected a tensor, got " .. type(t), 2) end
  local p = t:detach()
  p.requires_grad = requires_grad ~= false
  param_set[p] = true
  return p
end

---True when t was made by nn.Parameter (or registered as a module's parameter).
---@param t any
---@return boolean
function M.is_parameter(t) return param_set[t] == true end

-- Lists of {name, value} pairs that are also iterators: `for name, p in m:named_parameters()`
-- as well as `ipairs(list)` / `#list` / `list[i][1]`.
local function pair_list(items)
  local i = 0
  return setmetatable(items, {__call = function(self, _, ctl)
    if ctl == nil then i = 0 end
    i = i + 1
    local e = self[i]
    if e then return e[1], e[2] end
  end})
end
M.pair_list = pair_list

-- A map name -> tensor whose pairs() walks the names in `order` first, then any added later.
local function ordered_map(map, order)
  local known = {}
  for _, k in ipairs(order) do known[k] = true end
  return setmetatable(map, {__pairs = function(self)
    local i, rest = 0, nil
    return function()
      while i < #order do
        i = i + 1
        local k = order[i]
        local v = rawget(self, k)
        if v ~= nil then return k, v end
      end
      local v
      repeat rest, v = next(self, rest) until rest == nil or not known[rest]
      return rest, v
    end, self, nil
  end})
end

local function remove_name(list, name)
  for i = #list, 1, -1 do
    if list[i] == name then table.remove(list, i) end
  end
end

---@class vtl.nn.Module
---@field training boolean
local Module = {__name = "Module"}
M.Module = Module

local function is_module(v) return type(v) == "table" and rawget(v, "_modules") ~= nil end
M.is_module = is_module

-- Each module knows its dotted path below the outermost module it was registered into; errors
-- raised in its forward name that path.
local function set_path(m, path)
  rawset(m, "_path", path)
  for _, name in ipairs(m._module_names) do
    set_path(m._modules[name], path and path .. "." .. name or name)
  end
end

local function child_path(self, name)
  local p = rawget(self, "_path")
  return p and p .. "." .. name or name
end

---The module's label in messages: its dotted path, or its class name at the top.
---@return string
function Module:where()
  return rawget(self, "_path") or self.__name
end

local function unregister(self, k)
  if self._parameters[k] ~= nil then self._parameters[k] = nil; remove_name(self._param_names, k) end
  if self._buffers[k] ~= nil then
    self._buffers[k] = nil; self._non_persistent[k] = nil; remove_name(self._buffer_names, k)
  end
  local child = self._modules[k]
  if child ~= nil then
    self._modules[k] = nil
    remove_name(self._module_names, k)
    set_path(child, nil)
  end
end

---Registers (or replaces) a child module under a name.
---@param name string
---@param m vtl.nn.Module|nil
function Module:add_module(name, m)
  name = tostring(name)
  if m == nil then unregister(self, name); return end
  if not is_module(m) then error(("%s: add_module '%s': expected a module, got %s"):format(self:where(), name, type(m)), 2) end
  local old = self._modules[name]
  if old == nil then
    unregister(self, name)
    self._module_names[#self._module_names + 1] = name
  elseif old ~= m then
    set_path(old, nil)
  end
  self._modules[name] = m
  set_path(m, child_path(self, name))
end

Module.register_module = Module.add_module

---The sub-module at a dotted path ("features.3.conv"); raises naming the missing part.
---@param path string
---@return vtl.nn.Module
function Module:get_submodule(path)
  local m = self
  if path == "" then return m end
  for part in path:gmatch("[^.]+") do
    local child = m._modules[part]
    if not child then error(("%s: no sub-module '%s' in '%s'"):format(self:where(), part, path), 2) end
    m = child
  end
  return m
end

---Replaces (or adds) the sub-module at a dotted path: model:set_submodule("classifier.1", nn.Linear(1280, 10)).
---@param path string
---@param m vtl.nn.Module
function Module:set_submodule(path, m)
  local parent, name = path:match("^(.*)%.([^.]+)$")
  local owner = parent and self:get_submodule(parent) or self
  owner:add_module(name or path, m)
end

---Registers (or replaces) a parameter; t is made a parameter if it is a plain tensor.
---@param name string
---@param t vtl.Tensor|nil
function Module:register_parameter(name, t)
  if t == nil then unregister(self, name); return end
  if not core.is_tensor(t) then error(("%s: parameter '%s' must be a tensor, got %s"):format(self:where(), name, type(t)), 2) end
  if not param_set[t] then t = M.Parameter(t) end
  if self._parameters[name] == nil then
    unregister(self, name)
    self._param_names[#self._param_names + 1] = name
  end
  self._parameters[name] = t
end

---Registers (or replaces) a buffer: state saved in state_dict (unless persistent = false) but not trained.
---@param name string
---@param t vtl.Tensor|nil
---@param opts {persistent: boolean}|nil
function Module:register_buffer(name, t, opts)
  if t == nil then unregister(self, name); return end
  if not core.is_tensor(t) then error(("%s: buffer '%s' must be a tensor, got %s"):format(self:where(), name, type(t)), 2) end
  if self._buffers[name] == nil then
    unregister(self, name)
    self._buffer_names[#self._buffer_names + 1] = name
  end
  self._buffers[name] = t
  self._non_persistent[name] = (opts and opts.persistent == false) or nil
end

-- ---- instances: field access routes through the registries ----

local function instance_index(self, k)
  local v = self._parameters[k]
  if v ~= nil then return v end
  v = self._buffers[k]
  if v ~= nil then return v end
  v = self._modules[k]
  if v ~= nil then return v end
  local cls = getmetatable(self)
  if math.type(k) == "integer" and cls._getitem then return cls._getitem(self, k) end
  return cls[k]
end

local function instance_newindex(self, k, v)
  local cls = getmetatable(self)
  if math.type(k) == "integer" and cls._setitem then return cls._setitem(self, k, v) end
  if is_module(v) then return self:add_module(k, v) end
  if core.is_tensor(v) then
    if param_set[v] then return self:register_parameter(k, v) end
    if self._buffers[k] ~= nil then self._buffers[k] = v; return end
    if self._parameters[k] ~= nil then
      error(("%s: cannot assign a plain tensor to parameter '%s'; wrap it with nn.Parameter(t)"):format(self:where(), k), 2)
    end
  elseif v == nil and (self._parameters[k] ~= nil or self._buffers[k] ~= nil or self._modules[k] ~= nil) then
    return unregister(self, k)
  end
  if self._modules[k] ~= nil or self._parameters[k] ~= nil or self._buffers[k] ~= nil then unregister(self, k) end
  rawset(self, k, v)
end

-- Forward calls go through one handler that prefixes the innermost module's path to an error.
local stack, depth, last_msg = {}, 0, nil

local function tag_error(e)
  if type(e) ~= "string" or e == last_msg then return e end
  local m = stack[depth]
  last_msg = m and (m:where() .. ": " .. e) or e
  return last_msg
end

local function finish_call(ok, ...)
  stack[depth] = nil
  depth = depth - 1
  if not ok then error((...), 0) end
  return ...
end

-- forward, then each forward hook in registration order; a hook's non-nil result replaces the output
local function hooked_forward(self, hooks, ...)
  local out = self.forward(self, ...)
  local inputs = table.pack(...)
  for _, h in ipairs(hooks) do
    local r = h.fn(self, inputs, out)
    if r ~= nil then out = r end
  end
  return out
end

-- vtl.profiler's timer while it runs: profile_hook(module, call_forward, ...) times the call
local profile_hook

local function call_forward(self, ...)
  local hooks = rawget(self, "_forward_hooks")
  if hooks and hooks[1] then return hooked_forward(self, {table.unpack(hooks)}, ...) end
  return self.forward(self, ...)
end

---Sets (or clears, with nil) the function that times module calls; for vtl.profiler.
---@param fn fun(m: vtl.nn.Module, call: function, ...): ...|nil
function Module._set_profile_hook(fn) profile_hook = fn end

---True while vtl.profiler times module calls (the fused forms of several modules then run
---them one by one, so each is timed).
function Module._profiling() return profile_hook ~= nil end

local function instance_call(self, ...)
  depth = depth + 1
  stack[depth] = self
  if profile_hook then return finish_call(xpcall(profile_hook, tag_error, self, call_forward, ...)) end
  local hooks = rawget(self, "_forward_hooks")
  if hooks and hooks[1] then return finish_call(xpcall(hooked_forward, tag_error, self, {table.unpack(hooks)}, ...)) end
  return finish_call(xpcall(self.forward, tag_error, self, ...))
end

---Registers fn(module, inputs, output) to run after every forward call of this module (inputs:
---the packed arguments); a non-nil result replaces the output. Returns a handle whose
---remove() unregisters it (safe to call twice).
---@param fn fun(m: vtl.nn.Module, inputs: table, output: any): any
---@return {remove: fun()}
function Module:register_forward_hook(fn)
  if type(fn) ~= "function" then error("register_forward_hook: expected a function(module, inputs, output)", 2) end
  local hooks = rawget(self, "_forward_hooks")
  if not hooks then hooks = {}; rawset(self, "_forward_hooks", hooks) end
  local entry = {fn = fn}
  hooks[#hooks + 1] = entry
  local handle = {}
  function handle.remove()
    for i, h in ipairs(hooks) do
      if h == entry then table.remove(hooks, i); return end
    end
  end
  return handle
end

---Raises an error naming this module's path: `features.3.conv: expected ...`.
---@param fmt string
function Module:raise(fmt, ...)
  local msg = self:where() .. ": " .. (select("#", ...) > 0 and fmt:format(...) or fmt)
  last_msg = msg
  error(msg, 0)
end

local function addindent(s)
  return (s:gsub("\n", "\n  "))
end

local function instance_tostring(self)
  local extra = self:extra_repr()
  local lines, n_extra = {}, 0
  if extra and extra ~= "" then
    for line in (extra .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = line end
    n_extra = #lines
  end
  for _, name in ipairs(self._module_names) do
    lines[#lines + 1] = "(" .. name .. "): " .. addindent(tostring(self._modules[name]))
  end
  local s = self.__name .. "("
  if #lines > 0 then
    if n_extra == 1 and #lines == 1 then s = s .. lines[1]
    else s = s .. "\n  " .. table.concat(lines, "\n  ") .. "\n" end
  end
  return s .. ")"
end

local function instance_len(self)
  local cls = getmetatable(self)
  if cls._len then return cls._len(self) end
  return #self._module_names
end

Module.__index = instance_index
Module.__newindex = instance_newindex
Module.__call = instance_call
Module.__tostring = instance_tostring
Module.__len = instance_len

local METAMETHODS = {"__index", "__newindex", "__call", "__tostring", "__len", "__pairs", "__close", "__eq"}

local function construct(cls, ...)
  local self = setmetatable({
    _parameters = {}, _param_names = {}, _buffers = {}, _buffer_names = {}, _non_persistent = {},
    _modules = {}, _module_names = {}, training = true,
  }, cls)
  local init = cls.init
  if init then init(self, ...) end
  return self
end

---Makes a subclass: `local Net = nn.Module:extend("Net")`, then `function Net:init(...)` and
---`function Net:forward(x)`; `Net(...)` makes an instance.
---@param name string
---@return table
function Module:extend(name)
  if type(name) ~= "string" then error("Module:extend: expected a class name (string)", 2) end
  local cls = {__name = name, super = self}
  for _, mm in ipairs(METAMETHODS) do cls[mm] = self[mm] end
  return setmetatable(cls, {__index = self, __call = construct, __tostring = function() return "class " .. name end})
end
setmetatable(Module, {__call = construct, __tostring = function() return "class Module" end})

function Module:init() end

---Computes the module's output; subclasses define it.
function Module:forward()
  self:raise("forward is not implemented (define function %s:forward(...))", self.__name)
end

---One line of settings shown by tostring (subclasses override).
---@return string
function Module:extra_repr() return "" end

-- ---- traversal ----

---The direct children, in order.
---@return vtl.nn.Module[]
function Module:children()
  local out = {}
  for i, name in ipairs(self._module_names) do out[i] = self._modules[name] end
  return out
end

---The direct children as {name, module} pairs (also an iterator: `for name, m in m:named_children()`).
function Module:named_children()
  local out = {}
  for i, name in ipairs(self._module_names) do out[i] = {name, self._modules[name]} end
  return pair_list(out)
end

local function walk_modules(m, prefix, out, seen)
  if seen[m] then return end
  seen[m] = true
  out[#out + 1] = {prefix, m}
  for _, name in ipairs(m._module_names) do
    walk_modules(m._modules[name], prefix == "" and name or prefix .. "." .. name, out, seen)
  end
end

---Every module of the tree, this one first, as {name, module} pairs ("" for this one).
function Module:named_modules()
  local out = {}
  walk_modules(self, "", out, {})
  return pair_list(out)
end

---Every module of the tree, this one first.
---@return vtl.nn.Module[]
function Module:modules()
  local out = {}
  for i, e in ipairs(self:named_modules()) do out[i] = e[2] end
  return out
end

local function named_tensors(self, names_field, map_field, recurse, skip_non_persistent)
  local out, seen = {}, {}
  local mods = recurse == false and {{"", self}} or self:named_modules()
  for _, e in ipairs(mods) do
    local prefix, m = e[1], e[2]
    for _, name in ipairs(m[names_field]) do
      local t = m[map_field][name]
      if not seen[t] and not (skip_non_persistent and m._non_persistent[name]) then
        seen[t] = true
        out[#out + 1] = {prefix == "" and name or prefix .. "." .. name, t}
      end
    end
  end
  return out
end

---Parameters with dotted names, as {name, tensor} pairs (also an iterator). recurse = false: own only.
---@param recurse boolean|nil
function Module:named_parameters(recurse)
  return pair_list(named_tensors(self, "_param_names", "_parameters", recurse))
end

---All parameters, in order (each once).
---@param recurse boolean|nil
---@return vtl.Tensor[]
function Module:parameters(recurse)
  local out = {}
  for i, e in ipairs(named_tensors(self, "_param_names", "_parameters", recurse)) do out[i] = e[2] end
  return out
end

---Buffers with dotted names, as {name, tensor} pairs (also an iterator).
---@param recurse boolean|nil
function Module:named_buffers(recurse)
  return pair_list(named_tensors(self, "_buffer_names", "_buffers", recurse))
end

---All buffers, in order.
---@param recurse boolean|nil
---@return vtl.Tensor[]
function Module:buffers(recurse)
  local out = {}
  for i, e in ipairs(named_tensors(self, "_buffer_names", "_buffers", recurse)) do out[i] = e[2] end
  return out
end

---Calls fn on every sub-module (children first) and then on this one; returns self.
---@param fn fun(m: vtl.nn.Module)
---@return vtl.nn.Module
function Module:apply(fn)
  for _, name in ipairs(self._module_names) do self._modules[name]:apply(fn) end
  fn(self)
  return self
end

---Sets training mode (default true) on this module and all below; returns self.
---@param mode boolean|nil
---@return vtl.nn.Module
function Module:train(mode)
  mode = mode ~= false
  for _, m in ipairs(self:modules()) do rawset(m, "training", mode) end
  return self
end

---Evaluation mode (train(false)); returns self.
---@return vtl.nn.Module
function Module:eval() return self:train(false) end

---Drops every parameter's gradient (sets .grad to nil).
function Module:zero_grad()
  for _, p in ipairs(self:parameters()) do p.grad = nil end
end

---Sets requires_grad on every parameter; returns self.
---@param on boolean|nil
---@return vtl.nn.Module
function Module:requires_grad_(on)
  for _, p in ipairs(self:parameters()) do p.requires_grad = on ~= false end
  return self
end

-- What freeze/unfreeze do to one module's own parameters (norm layers extend it).
function Module:_set_frozen(frozen)
  for _, name in ipairs(self._param_names) do self._parameters[name].requires_grad = not frozen end
end

---Freezes this module and everything below: parameters stop requiring grad, and batch-norm layers
---also stop updating and use their running statistics. opts.train_bn = true leaves batch norm trainable.
---@param opts {train_bn: boolean}|nil
---@return vtl.nn.Module
function Module:freeze(opts)
  for _, m in ipairs(self:modules()) do m:_set_frozen(true, opts or {}) end
  return self
end

---Undoes freeze: parameters require grad again, batch norm back to normal; returns self.
---@return vtl.nn.Module
function Module:unfreeze()
  for _, m in ipairs(self:modules()) do m:_set_frozen(false, {}) end
  return self
end

---Number of parameter elements (trainable_only: those requiring grad).
---@param opts {trainable_only: boolean}|nil
---@return integer
function Module:num_parameters(opts)
  local n = 0
  for _, p in ipairs(self:parameters()) do
    if not (opts and opts.trainable_only) or p.requires_grad then n = n + p:numel() end
  end
  return n
end

-- ---- state ----

local function shape_str(t) return "{" .. table.concat(t.shape, ",") .. "}" end

---Parameters and persistent buffers by dotted name (detached, sharing storage). The map's
---pairs() goes in module order; the ordered names are the second result. vtl.save writes it.
---@return table<string, vtl.Tensor>, string[]
function Module:state_dict()
  local map, order = {}, {}
  for _, e in ipairs(self:named_modules()) do
    local prefix, m = e[1], e[2]
    local pre = prefix == "" and "" or prefix .. "."
    for _, name in ipairs(m._param_names) do
      order[#order + 1] = pre .. name
      map[pre .. name] = m._parameters[name]:detach()
    end
    for _, name in ipairs(m._buffer_names) do
      if not m._non_persistent[name] then
        order[#order + 1] = pre .. name
        map[pre .. name] = m._buffers[name]
      end
    end
  end
  return ordered_map(map, order), order
end

---Copies tensors from sd (name -> tensor) into the parameters and buffers. A shape mismatch
---always raises (naming the key and both shapes); with strict (default) missing or unexpected
---keys raise too. Nothing is copied when it raises. Returns the missing and unexpected keys.
---@param sd table<string, vtl.Tensor>
---@param opts {strict: boolean}|nil
---@return string[] missing, string[] unexpected
function Module:load_state_dict(sd, opts)
  if type(sd) ~= "table" then error("load_state_dict: expected a table of name -> tensor, got " .. type(sd), 2) end
  local strict = not (opts and opts.strict == false)
  local own, order = self:state_dict()
  local missing, unexpected, mismatched = {}, {}, {}
  local copies = {}
  for _, k in ipairs(order) do
    local src = rawget(sd, k)
    if src == nil then
      -- checkpoints from before num_batches_tracked existed keep the current count
      if not k:match("num_batches_tracked$") then missing[#missing + 1] = k end
    elseif not core.is_tensor(src) then
      error(("load_state_dict: '%s' is a %s, expected a tensor"):format(k, type(src)), 2)
    elseif shape_str(src) ~= shape_str(own[k]) then
      mismatched[#mismatched + 1] = ("size mismatch for %s: the checkpoint has shape %s, the model %s"):format(
        k, shape_str(src), shape_str(own[k]))
    else
      copies[#copies + 1] = {own[k], src}
    end
  end
  local keys = {}
  for k in next, sd do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    if own[k] == nil then unexpected[#unexpected + 1] = k end
  end
  local errs = {}
  if strict and #missing > 0 then errs[#errs + 1] = "missing key(s): " .. table.concat(missing, ", ") end
  if strict and #unexpected > 0 then errs[#errs + 1] = "unexpected key(s): " .. table.concat(unexpected, ", ") end
  for _, e in ipairs(mismatched) do errs[#errs + 1] = e end
  if #errs > 0 then
    error(("load_state_dict: error(s) loading the state dict for %s:\n  %s"):format(self.__name, table.concat(errs, "\n  ")), 2)
  end
  core.no_grad(function()
    for _, c in ipairs(copies) do c[1]:copy_(c[2]) end
  end)
  return missing, unexpected
end

---Converts parameters and buffers: a dtype applies to the floating-point ones (to("f64"),
---to("f16")), a device to all of them. Parameters stay the same tensor objects (their data is
---replaced, requires_grad kept, .grad dropped), so an optimizer made before still holds them;
---its state is not moved. Returns self.
---@param ... any  arguments of Tensor:to
---@return vtl.nn.Module
function Module:to(...)
  local float = {f32 = true, f64 = true, f16 = true, bf16 = true}
  local dtypes = {f32 = true, f64 = true, f16 = true, bf16 = true, i64 = true, i32 = true, u8 = true, bool = true}
  local all, no_dtype = table.pack(...), {}
  for i = 1, all.n do
    local a = all[i]
    if not (type(a) == "string" and dtypes[a]) and not (type(a) == "table" and a.dtype) then no_dtype[#no_dtype + 1] = a end
  end
  local function convert(t)
    if float[t.dtype] then return t:to(table.unpack(all, 1, all.n)) end
    if #no_dtype > 0 then return t:to(table.unpack(no_dtype)) end
    return t
  end
  for _, m in ipairs(self:modules()) do
    for _, name in ipairs(m._param_names) do
      local p = m._parameters[name]
      local q = convert(p:detach())
      if q.dtype ~= p.dtype or q.device ~= p.device then p.data = q end
    end
    for _, name in ipairs(m._buffer_names) do m._buffers[name] = convert(m._buffers[name]) end
  end
  return self
end

---Sets the memory format of the activations: "channels_last" makes every convolution lay its
---output out as (N,H,W,C) in memory (the shape stays (N,C,H,W)), so that the layers after it
---(batch norm, activations, pooling, residual sums) keep that layout and the convolution
---kernels (oneDNN, cuDNN's tensor-core kernels) work without reordering; "contiguous" goes
---back. Parameters keep their layout, so state dicts and optimizers are unaffected. Returns self.
---@param format "channels_last"|"contiguous"
---@return vtl.nn.Module
function Module:to_memory_format(format)
  if format ~= "channels_last" and format ~= "contiguous" then
    error(("to_memory_format: format must be \"channels_last\" or \"contiguous\", got %s"):format(
      type(format) == "string" and '"' .. format .. '"' or tostring(format)), 2)
  end
  for _, m in ipairs(self:modules()) do
    local cls = getmetatable(m)
    while cls and rawget(cls, "__name") ~= "Conv2d" do cls = rawget(cls, "super") end
    if cls then rawset(m, "_channels_last", format == "channels_last" or nil) end
  end
  rawset(self, "memory_format", format)
  return self
end

---to("f32"); returns self.
function Module:float() return self:to("f32") end
---to("f64"); returns self.
function Module:double() return self:to("f64") end
---to("cpu"); returns self.
function Module:cpu() return self:to("cpu") end
---to("cuda"); returns self.
function Module:cuda() return self:to("cuda") end

return M
