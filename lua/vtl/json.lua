-- vtl.json: JSON text from Lua values and back, for checkpoints' and logs' metadata.
--
-- Tables with keys 1..n become arrays, other tables objects (keys as strings, sorted, so the
-- text is stable); numbers keep their exact value (17 significant digits); NaN and infinities,
-- which JSON lacks, are written as the strings "NaN", "Infinity" and "-Infinity" and turned
-- back into numbers by decode{numbers = true}. Functions, userdata and cycles are refused.
local core = require "vtl.core"

local M = {}

local escapes = {['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t"}

local function str(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return escapes[c] or string.format("\\u%04x", c:byte()) end) .. '"'
end

local function num(x)
  if math.type(x) == "integer" then return string.format("%d", x) end
  if x ~= x then return '"NaN"' end
  if x == math.huge then return '"Infinity"' end
  if x == -math.huge then return '"-Infinity"' end
  local s = string.format("%.17g", x)
  if tonumber(string.format("%.15g", x)) == x then s = string.format("%.15g", x) end
  if not s:find("[%.eEn]") then s = s .. ".0" end
  return s
end

local function is_array(t)
  local n = #t
  local count = 0
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 or k > n then return false end
    count = count + 1
  end
  return count == n
end

local function enc(v, out, seen, path)
  local t = type(v)
  if v == nil then out[#out + 1] = "null"
  elseif t == "boolean" then out[#out + 1] = tostring(v)
  elseif t == "number" then out[#out + 1] = num(v)
  elseif t == "string" then out[#out + 1] = str(v)
  elseif t == "table" then
    if seen[v] then error("json.encode: " .. path .. " refers back to itself", 0) end
    seen[v] = true
    if next(v) ~= nil and is_array(v) then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        enc(v[i], out, seen, path .. "[" .. i .. "]")
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do
        if type(k) ~= "string" and type(k) ~= "number" then
          error("json.encode: " .. path .. " has a " .. type(k) .. " key", 0)
        end
        keys[#keys + 1] = k
      end
      table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = str(tostring(k))
        out[#out + 1] = ":"
        enc(v[k], out, seen, path .. "." .. tostring(k))
      end
      out[#out + 1] = "}"
    end
    seen[v] = nil
  else
    error("json.encode: " .. path .. " is a " .. t .. ", which JSON cannot hold", 0)
  end
end

---JSON text of a value made of tables, strings, numbers, booleans.
---@param v any
---@return string
function M.encode(v)
  local out = {}
  enc(v, out, {}, "value")
  return table.concat(out)
end

local specials = {NaN = 0 / 0, Infinity = math.huge, ["-Infinity"] = -math.huge}

local function restore(v)
  if type(v) == "string" and specials[v] then return specials[v] end
  if type(v) == "table" then
    for k, x in pairs(v) do v[k] = restore(x) end
  end
  return v
end

---Parses JSON text (name labels errors). opts.numbers: turn "NaN"/"Infinity"/"-Infinity"
---strings back into numbers.
---@param text string
---@param name? string
---@param opts? {numbers: boolean}
function M.decode(text, name, opts)
  local v = core._json_decode(text, name)
  if opts and opts.numbers then v = restore(v) end
  return v
end

return M
