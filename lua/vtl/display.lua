-- vtl.display: rich output for notebooks. In the vtl Jupyter kernel, `vtl.display(x)` sends
-- x as a display_data message; anywhere else it prints x's text form.
--
--   vtl.display(t)                         -- a tensor: text/plain and an HTML table
--   vtl.display(img_u8)                    -- an H×W or H×W×C u8 image tensor: image/png
--   vtl.display("loss.png")                -- a PNG file (what vtl.plot returns): image/png
--   vtl.display.markdown("**done**")       -- or vtl.display{markdown = "..."}: text/markdown
--   local id = vtl.display("step 1", {display_id = true})
--   vtl.display.update(id, "step 2")       -- replaces that output in place
--
-- The MIME bundle of a value is `bundle(x)`: a table from MIME type to text (base64 for
-- image/png), which is what is sent.
local M = {}

local fmt = string.format

local function tensor_api()
  local vtl = require "vtl"
  return vtl
end

-- ---------------------------------------------------------------------------------------
-- base64 (RFC 4648, with padding)

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local b64 = {}
for i = 1, 64 do b64[i - 1] = B64:sub(i, i) end

---Base64 text of a byte string (standard alphabet, padded).
---@param s string
---@return string
function M.base64(s)
  if type(s) ~= "string" then error("display.base64: argument 1 must be a string, got " .. type(s), 2) end
  local out, n = {}, #s
  local byte = string.byte
  for i = 1, n - 2, 3 do
    local a, b, c = byte(s, i, i + 2)
    local v = a * 65536 + b * 256 + c
    out[#out + 1] = b64[v >> 18] .. b64[(v >> 12) & 63] .. b64[(v >> 6) & 63] .. b64[v & 63]
  end
  local rest = n % 3
  if rest == 1 then
    local v = byte(s, n) * 65536
    out[#out + 1] = b64[v >> 18] .. b64[(v >> 12) & 63] .. "=="
  elseif rest == 2 then
    local a, b = byte(s, n - 1, n)
    local v = a * 65536 + b * 256
    out[#out + 1] = b64[v >> 18] .. b64[(v >> 12) & 63] .. b64[(v >> 6) & 63] .. "="
  end
  return table.concat(out)
end

-- ---------------------------------------------------------------------------------------
-- MIME bundles

local function html_escape(s)
  return (tostring(s):gsub("[&<>\"]", {["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;"}))
end
M.html_escape = html_escape

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then error("display: cannot read " .. tostring(err), 3) end
  local s = f:read("a")
  f:close()
  return s
end

local PNG_MAGIC = "\137PNG\r\n\26\n"

-- An H×W or H×W×C (C = 1, 3, 4) u8 tensor: what vtl.image.load returns and image.save takes.
local function is_image(t)
  if t.dtype ~= "u8" then return false end
  local s = t.shape
  return #s == 2 or (#s == 3 and (s[3] == 1 or s[3] == 3 or s[3] == 4))
end

local function png_of_tensor(t)
  local vtl = tensor_api()
  local tmp = os.tmpname()
  local path = tmp .. ".png"
  local img = t
  if #t.shape == 2 then img = t:reshape({t.shape[1], t.shape[2], 1}) end
  local ok, err = pcall(vtl.image.save, path, img:contiguous())
  os.remove(tmp)
  if not ok then os.remove(path); error("display: " .. tostring(err), 3) end
  local bytes = read_file(path)
  os.remove(path)
  return bytes
end

local function cell(v)
  if math.type(v) == "integer" then return tostring(v) end
  if type(v) == "number" then return fmt("%.4g", v) end
  return tostring(v)
end

-- Rows (a list of lists of values) of the first `maxr` × `maxc` entries of a 1-D or 2-D tensor.
local function head_rows(t, maxr, maxc)
  local s = t.shape
  if #s == 1 then
    local n = math.min(s[1], maxc)
    return {t:narrow(1, 1, n):totable()}, 1, s[1]
  end
  local r, c = math.min(s[1], maxr), math.min(s[2], maxc)
  return t:narrow(1, 1, r):narrow(2, 1, c):totable(), s[1], s[2]
end

---The HTML table of a tensor: 0-D to 2-D as a table (the first 20 rows and columns, with
---an ellipsis for the rest), more dimensions as preformatted text; a caption gives shape and
---dtype.
---@param t vtl.Tensor
---@param opts? {max_rows: integer|nil, max_cols: integer|nil}
---@return string
function M.tensor_html(t, opts)
  local vtl = tensor_api()
  if not vtl.is_tensor(t) then error("display.tensor_html: argument 1 must be a tensor, got " .. type(t), 2) end
  opts = opts or {}
  local maxr, maxc = opts.max_rows or 20, opts.max_cols or 20
  local s = t.shape
  local caption = fmt("<caption>tensor shape={%s} dtype=%s</caption>", table.concat(s, ","), t.dtype)
  if #s > 2 or t.device ~= "cpu" then
    return fmt("<table>%s<tr><td><pre>%s</pre></td></tr></table>", caption, html_escape(tostring(t)))
  end
  local out = {"<table class=\"vtl-tensor\">", caption}
  if #s == 0 then
    out[#out + 1] = "<tr><td>" .. html_escape(cell(t:item())) .. "</td></tr>"
  else
    local rows, nr, nc = head_rows(t, maxr, maxc)
    out[#out + 1] = "<tr><th></th>"
    for j = 1, #rows[1] do out[#out + 1] = "<th>" .. j .. "</th>" end
    if #rows[1] < nc then out[#out + 1] = "<th>…</th>" end
    out[#out + 1] = "</tr>"
    for i, row in ipairs(rows) do
      out[#out + 1] = "<tr><th>" .. (#s == 1 and "" or i) .. "</th>"
      for _, v in ipairs(row) do out[#out + 1] = "<td>" .. html_escape(cell(v)) .. "</td>" end
      if #row < nc then out[#out + 1] = "<td>…</td>" end
      out[#out + 1] = "</tr>"
    end
    if #rows < nr then out[#out + 1] = "<tr><th>…</th></tr>" end
  end
  out[#out + 1] = "</table>"
  return table.concat(out)
end

---The MIME bundle of a value: a tensor (text/plain + text/html, or image/png for a u8 image
---tensor), a PNG file's path (image/png), {markdown = s}, {html = s}, {png = path}, or any
---other value (text/plain, as print writes it).
---@param x any
---@return table<string, string>
function M.bundle(x)
  local vtl = tensor_api()
  if vtl.is_tensor(x) then
    if is_image(x) and x.device == "cpu" then
      return {["image/png"] = M.base64(png_of_tensor(x)),
              ["text/plain"] = fmt("<image %s u8>", table.concat(x.shape, "×"))}
    end
    return {["text/plain"] = tostring(x), ["text/html"] = M.tensor_html(x)}
  end
  if type(x) == "string" and x:lower():match("%.png$") then
    local bytes = read_file(x)
    if bytes:sub(1, 8) ~= PNG_MAGIC then error("display: " .. x .. " is not a PNG file", 3) end
    return {["image/png"] = M.base64(bytes), ["text/plain"] = "<image " .. x .. ">"}
  end
  if type(x) == "table" and getmetatable(x) == nil then
    if x.markdown ~= nil then
      if type(x.markdown) ~= "string" then error("display: markdown must be a string", 3) end
      return {["text/markdown"] = x.markdown, ["text/plain"] = x.markdown}
    elseif x.html ~= nil then
      if type(x.html) ~= "string" then error("display: html must be a string", 3) end
      return {["text/html"] = x.html, ["text/plain"] = x.text or x.html}
    elseif x.png ~= nil then
      if type(x.png) ~= "string" or not x.png:lower():match("%.png$") then error("display: png must be a .png path", 3) end
      return M.bundle(x.png)
    end
  end
  return {["text/plain"] = (select(1, tostring(x)))}
end

-- ---------------------------------------------------------------------------------------
-- sending

local counter = 0

---Whether output goes to a notebook (the vtl Jupyter kernel runs this state).
---@return boolean
function M.live() return package.loaded["vtl.jupyter"] ~= nil end

local function send(kind, data, id)
  local jupyter = package.loaded["vtl.jupyter"]
  if not jupyter then
    print(data["text/plain"])
    return
  end
  local json = require "vtl.json"
  local content = {data = data, metadata = {}, transient = {}}
  if id then content.transient.display_id = id end
  jupyter.send(kind, json.encode(content))
end

---Shows x (see bundle): in a notebook as display_data, elsewhere by printing its text.
---opts.display_id = true (a fresh id) or a string names the output so that update() can
---replace it; returns that id (and nothing without one, so that a cell ending in
---vtl.display(x) shows no value of its own).
---@param x any
---@param opts? {display_id: boolean|string|nil}
---@return string|nil display_id
function M.display(x, opts)
  if opts ~= nil and type(opts) ~= "table" then error("display: argument 2 must be an options table, got " .. type(opts), 2) end
  local id = opts and opts.display_id
  if id == true then
    counter = counter + 1
    id = fmt("vtl-%d-%d", os.time(), counter)
  elseif id ~= nil and type(id) ~= "string" then
    error("display: display_id must be true or a string, got " .. type(id), 2)
  end
  send("display_data", M.bundle(x), id)
  if id then return id end
end

---Replaces the output shown with display_id (update_display_data).
---@param id string
---@param x any
function M.update(id, x)
  if type(id) ~= "string" then error("display.update: argument 1 must be a display id (string), got " .. type(id), 2) end
  send("update_display_data", M.bundle(x), id)
end

---Shows markdown text.
---@param s string
---@param opts? {display_id: boolean|string|nil}
function M.markdown(s, opts)
  if type(s) ~= "string" then error("display.markdown: argument 1 must be a string, got " .. type(s), 2) end
  return M.display({markdown = s}, opts)
end

---Shows HTML (text is what a plain terminal shows instead).
---@param s string
---@param opts? {display_id: boolean|string|nil, text: string|nil}
function M.html(s, opts)
  if type(s) ~= "string" then error("display.html: argument 1 must be a string, got " .. type(s), 2) end
  return M.display({html = s, text = opts and opts.text}, opts)
end

return setmetatable(M, {__call = function(_, x, opts) return M.display(x, opts) end})
