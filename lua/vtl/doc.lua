-- vtl.doc: the documentation of a value, read from the library's annotation comments.
-- A function written in Lua is documented by the block of `---` lines just above its
-- definition (a description, then ---@param / ---@return lines); describe() finds that
-- block through debug.getinfo and reads it from the source file.
--
--   print(vtl.doc.describe(vtl.plot.lines, "vtl.plot.lines"))
local M = {}

local cache = {} -- source path -> list of lines

local function source_lines(path)
  local lines = cache[path]
  if lines == nil then
    local f = io.open(path, "r")
    lines = false
    if f then
      lines = {}
      for l in f:lines() do lines[#lines + 1] = l end
      f:close()
    end
    cache[path] = lines
  end
  return lines or nil
end

---The signature and `---` comment block of a Lua function: signature (the definition's
---parameter list), doc (the comment text, one string), or nil when its source is not a file.
---@param f function
---@return string|nil signature
---@return string|nil doc
function M.annotation(f)
  if type(f) ~= "function" then error("doc.annotation: argument 1 must be a function, got " .. type(f), 2) end
  local info = debug.getinfo(f, "S")
  if info.what ~= "Lua" or info.source:sub(1, 1) ~= "@" then return nil end
  local lines = source_lines(info.source:sub(2))
  local def = lines and lines[info.linedefined]
  if not def then return nil end
  local sig = def:match("function%s*[%w_.:]*%s*(%b())")
  local doc = {}
  local i = info.linedefined - 1
  while i >= 1 and lines[i]:match("^%s*%-%-%-") do i = i - 1 end
  for j = i + 1, info.linedefined - 1 do
    doc[#doc + 1] = (lines[j]:gsub("^%s*%-%-%-%s?", ""))
  end
  return sig, table.concat(doc, "\n")
end

local function sorted_keys(t, want)
  local keys = {}
  for k, v in pairs(t) do
    if type(k) == "string" and not k:match("^_") and (want == nil or type(v) == want) then keys[#keys + 1] = k end
  end
  table.sort(keys)
  return keys
end

---A description of a value for a reader: for a function its signature and documentation,
---for a table (a module) the functions it holds, otherwise its type and text.
---@param v any
---@param name? string how the value was reached (shown in the signature)
---@return string
function M.describe(v, name)
  name = name or "?"
  local t = type(v)
  if t == "function" then
    local sig, doc = M.annotation(v)
    if sig == nil then
      local info = debug.getinfo(v, "S")
      return name .. ": built-in function" .. (info.what == "C" and " (C)" or "")
    end
    local info = debug.getinfo(v, "S")
    local where = info.short_src .. ":" .. info.linedefined
    if doc == "" then return name .. sig .. "\n\n(no documentation)\n" .. where end
    return name .. sig .. "\n\n" .. doc .. "\n\n" .. where
  elseif t == "table" then
    local fns = sorted_keys(v, "function")
    local mt = getmetatable(v)
    if mt and type(mt.__index) == "table" then
      for _, k in ipairs(sorted_keys(mt.__index, "function")) do fns[#fns + 1] = k end
    end
    local head = name .. ": table"
    if #fns == 0 then return head end
    return head .. " with functions:\n  " .. table.concat(fns, ", ")
  end
  return name .. ": " .. t .. "\n" .. tostring(v)
end

---The description of the value a dotted name (`vtl.plot.lines`, `t:reshape`) reaches from the
---globals, or nil when it reaches nothing. Indexing is the ordinary one (it may load a lazily
---loaded module), each step protected.
---@param name string
---@return string|nil
function M.inspect(name)
  if type(name) ~= "string" then error("doc.inspect: argument 1 must be a string, got " .. type(name), 2) end
  local v = _G
  for part in (name:gsub(":", ".") .. "."):gmatch("([^.]*)%.") do
    if not part:match("^[%a_][%w_]*$") then return nil end
    local ok, nv = pcall(function() return v[part] end)
    if not ok or nv == nil then return nil end
    v = nv
  end
  return M.describe(v, name)
end

return M
