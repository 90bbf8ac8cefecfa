-- Containers: Sequential, ModuleList, ModuleDict. Children of Sequential and ModuleList are
-- named "0", "1", ... (PyTorch's state_dict keys); from Lua they are indexed 1-based.
local module = require "vtl.nn.module"
local Module, is_module = module.Module, module.is_module

local M = {}

-- i (1-based, negatives from the end) -> the child's name, or nil when out of range
local function slot(self, i)
  local n = #self._module_names
  if i < 0 then i = n + 1 + i end
  if i < 1 or i > n then return nil end
  return self._module_names[i]
end

local function getitem(self, i)
  local name = slot(self, i)
  return name and self._modules[name]
end

local function setitem(self, i, m)
  local name = slot(self, i)
  if not name then self:raise("index %d out of range for %d modules", i, #self._module_names) end
  if not is_module(m) then self:raise("only modules can be stored, got %s", type(m)) end
  self:add_module(name, m)
end

-- renames children to "0".."n-1" after an insertion or removal
local function renumber(self, list)
  for _, name in ipairs(self._module_names) do self._modules[name] = nil end
  self._module_names = {}
  for i, m in ipairs(list) do self:add_module(tostring(i - 1), m) end
end

local function append(self, m)
  if not is_module(m) then self:raise("append: expected a module, got %s", type(m)) end
  self:add_module(tostring(#self._module_names), m)
  return self
end

-- extend(modules) appends modules; on a class, extend("Name") makes a subclass as for any Module
local function extend(self, ms)
  if type(ms) == "string" then return Module.extend(self, ms) end
  for _, m in ipairs(ms) do append(self, m) end
  return self
end

local function insert(self, i, m)
  local list = self:children()
  if i < 0 then i = #list + 2 + i end
  if i < 1 or i > #list + 1 then self:raise("insert: index %d out of range", i) end
  table.insert(list, i, m)
  renumber(self, list)
  return self
end

local function pop(self, i)
  local list = self:children()
  i = i or #list
  if i < 0 then i = #list + 1 + i end
  if i < 1 or i > #list then self:raise("pop: index %d out of range for %d modules", i, #list) end
  local m = table.remove(list, i)
  renumber(self, list)
  return m
end

---nn.Sequential(m1, m2, ...), nn.Sequential{m1, m2}, or nn.Sequential{{"conv", m1}, {"relu", m2}}:
---runs its children in order, each on the previous one's output.
local Sequential = Module:extend("Sequential")
M.Sequential = Sequential

function Sequential:init(...)
  local args = {...}
  if #args == 1 and not is_module(args[1]) and type(args[1]) == "table" then args = args[1] end
  for i, v in ipairs(args) do
    if is_module(v) then
      self:add_module(tostring(#self._module_names), v)
    elseif type(v) == "table" and type(v[1]) == "string" and is_module(v[2]) then
      self:add_module(v[1], v[2])
    else
      error(("Sequential: argument %d is a %s, expected a module or a {name, module} pair"):format(i, type(v)), 3)
    end
  end
end

function Sequential:forward(x)
  for _, name in ipairs(self._module_names) do x = self._modules[name](x) end
  return x
end
Sequential._getitem, Sequential._setitem = getitem, setitem
Sequential.append, Sequential.extend, Sequential.insert, Sequential.pop = append, extend, insert, pop

---nn.ModuleList{m1, m2, ...}: holds modules (indexed 1-based, named "0".."n-1"); no forward.
local ModuleList = Module:extend("ModuleList")
M.ModuleList = ModuleList

function ModuleList:init(ms)
  for _, m in ipairs(ms or {}) do append(self, m) end
end
ModuleList._getitem, ModuleList._setitem = getitem, setitem
ModuleList.append, ModuleList.extend, ModuleList.insert, ModuleList.pop = append, extend, insert, pop

function ModuleList:forward()
  self:raise("a ModuleList has no forward; iterate over it instead")
end

---nn.ModuleDict{{"a", m1}, {"b", m2}} (ordered) or nn.ModuleDict{a = m1, b = m2} (sorted by name).
local ModuleDict = Module:extend("ModuleDict")
M.ModuleDict = ModuleDict

function ModuleDict:init(items)
  items = items or {}
  for _, v in ipairs(items) do
    if type(v) ~= "table" or type(v[1]) ~= "string" or not is_module(v[2]) then
      error("ModuleDict: expected {name, module} pairs or a table of name = module", 3)
    end
    self:add_module(v[1], v[2])
  end
  local names = {}
  for k, v in pairs(items) do
    if type(k) == "string" then
      if not is_module(v) then error(("ModuleDict: '%s' is a %s, expected a module"):format(k, type(v)), 3) end
      names[#names + 1] = k
    end
  end
  table.sort(names)
  for _, k in ipairs(names) do self:add_module(k, items[k]) end
end

---The names, in order.
---@return string[]
function ModuleDict:keys()
  local out = {}
  for i, n in ipairs(self._module_names) do out[i] = n end
  return out
end

---{name, module} pairs in order (also an iterator).
function ModuleDict:items() return self:named_children() end

---The modules in order.
function ModuleDict:values() return self:children() end

function ModuleDict:forward()
  self:raise("a ModuleDict has no forward; index it by name instead")
end

return M
