-- Optimizer state dicts as flat files: nested tables become dotted names, tensors go to the
-- tensor table and everything else to string metadata that reads back to the same value
-- (floats in round-trip precision). This is what vtl.save's safetensors writer takes.
local core = require "vtl.core"

local M = {}

local function encode(v)
  local t = type(v)
  if t == "boolean" then return v and "true" or "false" end
  if t == "string" then return v end
  if math.type(v) == "integer" then return ("%d"):format(v) end
  if t == "number" then
    if v ~= v then return "nan" end
    if v == math.huge then return "inf" end
    if v == -math.huge then return "-inf" end
    local s = ("%.17g"):format(v)
    if not s:find("[%.eEn]") then s = s .. ".0" end -- keep it a float when read back
    return s
  end
  error(("state dict: cannot store a %s value"):format(t), 0)
end

local function decode(s)
  if s == "true" then return true end
  if s == "false" then return false end
  if s == "nan" then return 0 / 0 end
  if s == "inf" then return math.huge end
  if s == "-inf" then return -math.huge end
  return tonumber(s) or s
end

---Flattens a state dict into (tensors, metadata) keyed by dotted paths ("state.3.exp_avg",
---"param_groups.1.lr"), each prefixed by prefix.
---@param sd table
---@param prefix string|nil
---@return table<string, vtl.Tensor> tensors
---@return table<string, string> metadata
function M.flatten(sd, prefix)
  prefix = prefix or ""
  local tensors, meta = {}, {}
  local function walk(v, path)
    if core.is_tensor(v) then
      tensors[path] = v
    elseif type(v) == "table" then
      for k, x in pairs(v) do
        local key = tostring(k)
        if key:find(".", 1, true) then error(("state dict: key '%s' contains a dot"):format(key), 0) end
        walk(x, path == "" and prefix .. key or path .. "." .. key)
      end
    else
      meta[path] = encode(v)
    end
  end
  walk(sd, "")
  return tensors, meta
end

---Rebuilds the nested state dict from flatten's output (names without prefix are ignored).
---@param tensors table<string, vtl.Tensor>
---@param metadata table<string, string>|nil
---@param prefix string|nil
---@return table
function M.unflatten(tensors, metadata, prefix)
  prefix = prefix or ""
  local root = {}
  local function put(name, v)
    if name:sub(1, #prefix) ~= prefix then return end
    local node, parts = root, {}
    for part in name:sub(#prefix + 1):gmatch("[^.]+") do
      parts[#parts + 1] = part:match("^%d+$") and math.tointeger(tonumber(part)) or part
    end
    for i = 1, #parts - 1 do
      local k = parts[i]
      if type(node[k]) ~= "table" then node[k] = {} end
      node = node[k]
    end
    if #parts > 0 then node[parts[#parts]] = v end
  end
  for name, t in pairs(tensors or {}) do put(name, t) end
  for name, s in pairs(metadata or {}) do put(name, decode(s)) end
  return root
end

return M
