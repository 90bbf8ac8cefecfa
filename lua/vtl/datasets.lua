-- vtl.data's file-backed datasets: IDX files (FashionMNIST and any other MNIST-format pair)
-- and a CSV listing of images with labels and per-sample group columns. vtl.data merges this
-- module's functions into itself; datasets follow its protocol (`#ds`, `ds:get(i, gen)`,
-- `ds.targets` as 1-based class numbers, `ds.classes`).
local vtl = require "vtl"

local M = {}

local function callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return type(mt) == "table" and mt.__call ~= nil
end

-- ---- IDX files ----

local IDXDataset = {}
IDXDataset.__index = IDXDataset
IDXDataset.__len = function(self) return self.n end
IDXDataset.__name = "vtl.data.IDXDataset"

local function check_opts(fn, opts)
  if opts ~= nil and type(opts) ~= "table" then error(fn .. ": opts must be a table, got " .. type(opts), 3) end
  return opts or {}
end

local function check_label_base(fn, base)
  base = base == nil and 0 or base
  if math.type(base) ~= "integer" then error(fn .. ": label_base must be an integer (0 or 1), got " .. tostring(base), 3) end
  return base
end

-- A list of class numbers 1..K from a label tensor holding label_base..label_base+K-1.
local function targets_from_labels(fn, path, labels, base, nclasses)
  local list = labels:totable()
  local lo, hi = math.huge, -math.huge
  for i, v in ipairs(list) do
    local t = v - base + 1
    list[i] = t
    if t < lo then lo = t end
    if t > hi then hi = t end
  end
  if #list > 0 and lo < 1 then
    error(string.format("%s: %s: label %d is below label_base %d", fn, path, lo + base - 1, base), 3)
  end
  if nclasses and #list > 0 and hi > nclasses then
    error(string.format("%s: %s: label %d is outside the %d classes (label_base %d)", fn, path, hi + base - 1,
      nclasses, base), 3)
  end
  return list, (#list > 0 and hi or 0)
end

---Images and labels from a pair of IDX files (the MNIST format; .gz or plain). Images N×H×W
---give samples as u8 H×W×1 tensors (so image transforms apply), N×H×W×C as H×W×C; labels
---(a 1-D integer file) become 1-based class numbers: label + 1 - label_base.
---opts: transform (called as transform(img, generator)), classes (list of names; default the
---label values as strings), label_base (0, as MNIST files; 1 when the file counts from 1).
---@param images_path string
---@param labels_path? string
---@param opts? table
function M.IDXDataset(images_path, labels_path, opts)
  local fn = "IDXDataset"
  if type(images_path) ~= "string" then error(fn .. ": images_path must be a path string, got " .. type(images_path), 2) end
  if labels_path ~= nil and type(labels_path) ~= "string" then
    error(fn .. ": labels_path must be a path string or nil, got " .. type(labels_path), 2)
  end
  opts = check_opts(fn, opts)
  local base = check_label_base(fn, opts.label_base)
  if opts.classes ~= nil and type(opts.classes) ~= "table" then error(fn .. ": classes must be a list of names", 2) end
  if opts.transform ~= nil and not callable(opts.transform) then error(fn .. ": transform must be callable", 2) end
  local ok, images = pcall(vtl.io.load_idx, images_path)
  if not ok then error(fn .. ": " .. tostring(images), 2) end
  if images.dtype ~= "u8" or (images.ndim ~= 3 and images.ndim ~= 4) then
    error(string.format("%s: %s: expected u8 images N×H×W or N×H×W×C, got %s {%s}", fn, images_path, images.dtype,
      table.concat(images.shape, ",")), 2)
  end
  local n = images.shape[1]
  local ds = {images = images, n = n, transform = opts.transform, classes = opts.classes,
              images_path = images_path, labels_path = labels_path,
              sample_shape = {images.shape[2], images.shape[3], images.shape[4] or 1}}
  if labels_path then
    local okl, labels = pcall(vtl.io.load_idx, labels_path)
    if not okl then error(fn .. ": " .. tostring(labels), 2) end
    if labels.ndim ~= 1 or labels.dtype == "f32" or labels.dtype == "f64" then
      error(string.format("%s: %s: labels must be a 1-D integer IDX file, got %s {%s}", fn, labels_path, labels.dtype,
        table.concat(labels.shape, ",")), 2)
    end
    if labels.shape[1] ~= n then
      error(string.format("%s: %s has %d images but %s has %d labels", fn, images_path, n, labels_path, labels.shape[1]), 2)
    end
    local targets, k = targets_from_labels(fn, labels_path, labels, base, opts.classes and #opts.classes)
    ds.targets = targets
    if not ds.classes then
      ds.classes = {}
      for c = 1, k do ds.classes[c] = tostring(c - 1 + base) end
    end
  end
  if ds.classes then
    ds.class_to_idx = {}
    for k, name in ipairs(ds.classes) do ds.class_to_idx[name] = k end
  end
  return setmetatable(ds, IDXDataset)
end

---Sample i: the (transformed) u8 H×W×C image and its class number (nil without labels).
---@param i integer
function IDXDataset:get(i, gen)
  if math.type(i) ~= "integer" or i < 1 or i > self.n then
    error(string.format("%s: index %s out of range 1..%d", "IDXDataset", tostring(i), self.n), 2)
  end
  local s = self.sample_shape
  local img = self.images[i]:view(s[1], s[2], s[3])
  if self.transform then img = self.transform(img, gen) end
  return img, self.targets and self.targets[i]
end

M.FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
M.FASHION_MNIST_CLASSES = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                           "Bag", "Ankle boot"}

local function file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

---Fashion-MNIST (Zalando): 60000 training or 10000 test images, u8 28×28×1, classes 1..10
---named as torchvision's. opts: split "train" (default) or "test"; root (default the files of
---Debian's dataset-fashion-mnist package, installed by `make setup`); transform.
---@param opts? table
function M.FashionMNIST(opts)
  local fn = "FashionMNIST"
  opts = check_opts(fn, opts)
  local split = opts.split or "train"
  if split ~= "train" and split ~= "test" then
    error(fn .. ": split must be \"train\" or \"test\", got " .. tostring(split), 2)
  end
  local root = opts.root or M.FASHION_MNIST_ROOT
  if type(root) ~= "string" then error(fn .. ": root must be a path string", 2) end
  local stem = split == "train" and "train" or "t10k"
  local function find(kind)
    local base = string.format("%s/%s-%s-idx%d-ubyte", root, stem, kind, kind == "images" and 3 or 1)
    if file_exists(base) then return base end
    if file_exists(base .. ".gz") then return base .. ".gz" end
    error(string.format("%s: %s(.gz) not found%s", fn, base, opts.root and ""
      or " (install Debian's dataset-fashion-mnist: make setup)"), 3)
  end
  local images, labels = find("images"), find("labels")
  local ds = M.IDXDataset(images, labels, {transform = opts.transform, classes = M.FASHION_MNIST_CLASSES})
  ds.split, ds.root = split, root
  return ds
end

-- ---- CSV ----

---Parses CSV text (RFC 4180: quoted fields with "" for a quote, embedded delimiters and
---newlines inside quotes, LF, CRLF or CR line ends, a UTF-8 byte-order mark ignored). Returns a
---list of records, each a list of field strings with `line`, its first line number. Blank
---lines are skipped. Errors name the path, the line and the column (in bytes).
---@param text string
---@param delim? string  one character (default ",")
---@param path? string   named in errors
---@return table[]
function M.parse_csv(text, delim, path)
  delim = delim or ","
  path = path or "<csv>"
  if type(text) ~= "string" then error("parse_csv: text must be a string", 2) end
  if type(delim) ~= "string" or #delim ~= 1 or delim:find("[\"\r\n]") then
    error("parse_csv: delimiter must be one character other than a quote or a newline, got " .. tostring(delim), 2)
  end
  local n, dbyte = #text, delim:byte()
  local pos = text:sub(1, 3) == "\239\187\191" and 4 or 1
  -- line and column of a position, counted forward from the last position asked about
  local seen_pos, seen_line, seen_start = 1, 1, 1
  local function where(p)
    local i = seen_pos
    while true do
      local q = text:find("[\r\n]", i)
      if not q or q >= p then break end
      if text:byte(q) == 13 and text:byte(q + 1) == 10 then q = q + 1 end
      if q >= p then break end
      seen_line, seen_start, i = seen_line + 1, q + 1, q + 1
    end
    seen_pos = p
    return seen_line, p - seen_start + 1
  end
  local function fail(p, msg)
    local l, c = where(p)
    error(string.format("CSVDataset: %s: line %d, column %d: %s", path, l, c, msg), 0)
  end
  local special = "[" .. (delim:find("[%^%]%%%-]") and "%" or "") .. delim .. "\"\r\n]"
  local records, rec = {}, {}
  local function end_record()
    if #rec > 1 or rec[1] ~= "" or rec.quoted then -- a blank line is no record
      rec.quoted = nil
      records[#records + 1] = rec
    end
    rec = {}
  end
  while true do
    if #rec == 0 then rec.line = (where(pos)) end
    local c = text:byte(pos)
    local stop -- position of the delimiter or line end after the field (nil: end of text)
    if c == 34 then -- quoted field
      local parts, p = {}, pos + 1
      while true do
        local q = text:find("\"", p, true)
        if not q then fail(pos, "unterminated quoted field") end
        parts[#parts + 1] = text:sub(p, q - 1)
        if text:byte(q + 1) ~= 34 then p = q + 1; break end
        parts[#parts + 1] = "\""
        p = q + 2
      end
      rec[#rec + 1] = table.concat(parts)
      rec.quoted = true
      local nc = text:byte(p)
      if nc ~= nil and nc ~= dbyte and nc ~= 10 and nc ~= 13 then
        fail(p, "unexpected character '" .. string.char(nc) .. "' after a closing quote")
      end
      stop = nc and p
    else
      local s = text:find(special, pos)
      if s and text:byte(s) == 34 then
        fail(s, "quote inside an unquoted field (quote the whole field and double the quote)")
      end
      rec[#rec + 1] = text:sub(pos, (s or n + 1) - 1)
      stop = s
    end
    if not stop then
      if #rec > 1 or rec[1] ~= "" or rec.quoted then end_record() end
      break
    end
    if text:byte(stop) == dbyte then
      pos = stop + 1
    else
      end_record()
      pos = (text:byte(stop) == 13 and text:byte(stop + 1) == 10) and stop + 2 or stop + 1
      if pos > n then break end
    end
  end
  return records
end

local CSVDataset = {}
CSVDataset.__index = CSVDataset
CSVDataset.__len = function(self) return #self.paths end
CSVDataset.__name = "vtl.data.CSVDataset"

local function column_of(path, header, col, what)
  if math.type(col) == "integer" then
    if col < 1 or col > #header then
      error(string.format("CSVDataset: %s: %s %d is outside the %d columns", path, what, col, #header), 0)
    end
    return col
  end
  if type(col) ~= "string" then error(string.format("CSVDataset: %s must be a column name or number, got %s", what, type(col)), 0) end
  for i, h in ipairs(header) do if h == col then return i end end
  error(string.format("CSVDataset: %s: %s \"%s\" is not a column (header: %s)", path, what, col, table.concat(header, ", ")), 0)
end

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

---Images listed in a CSV file with a header row. Each row names an image (path_col, relative
---to root) and its label (label_col); group_cols are kept per sample in ds.groups[i] (a table
---column -> value) for subgroup evaluation, and returned by ds:get as a third value.
---Labels are read as class names, or as integers when every label is an integer (label_type
---"auto", the default; force with "names" or "integers"). Names: classes are opts.classes or
---the sorted distinct names. Integers: the class number is label + 1 - label_base (label_base
---0 by default, as PyTorch-style files; 1 when the file already counts from 1); classes are
---opts.classes or the label values as strings.
---opts: root (default: the CSV file's directory; absolute paths are used as they are),
---path_col ("path"), label_col ("label"; false for no labels), group_cols ({}), transform,
---classes, label_type, label_base, delimiter (","), channels (3), on_error ("raise" | "skip").
---@param csv string  path of the CSV file
---@param opts? table
function M.CSVDataset(csv, opts)
  local fn = "CSVDataset"
  if type(csv) ~= "string" then error(fn .. ": csv must be a path string, got " .. type(csv), 2) end
  opts = check_opts(fn, opts)
  local base = check_label_base(fn, opts.label_base)
  local on_error = opts.on_error or "raise"
  if on_error ~= "raise" and on_error ~= "skip" then
    error(fn .. ": on_error must be \"raise\" or \"skip\", got " .. tostring(on_error), 2)
  end
  local label_type = opts.label_type or "auto"
  if label_type ~= "auto" and label_type ~= "names" and label_type ~= "integers" then
    error(fn .. ": label_type must be \"auto\", \"names\" or \"integers\", got " .. tostring(label_type), 2)
  end
  if opts.transform ~= nil and not callable(opts.transform) then error(fn .. ": transform must be callable", 2) end
  if opts.classes ~= nil and type(opts.classes) ~= "table" then error(fn .. ": classes must be a list of names", 2) end
  local group_cols = opts.group_cols or {}
  if type(group_cols) ~= "table" then error(fn .. ": group_cols must be a list of column names", 2) end
  local f, err = io.open(csv, "rb")
  if not f then error(fn .. ": cannot open " .. tostring(err), 2) end
  local text = f:read("a")
  f:close()
  local ok, records = pcall(M.parse_csv, text, opts.delimiter or ",", csv)
  if not ok then error(records, 2) end
  if #records == 0 then error(fn .. ": " .. csv .. ": empty file (a header row is required)", 2) end
  local header = records[1]
  local ok2, res = pcall(function()
    local pc = column_of(csv, header, opts.path_col or "path", "path_col")
    local lc = opts.label_col
    if lc == nil then lc = "label" end
    if lc ~= false then lc = column_of(csv, header, lc, "label_col") end
    local gcs = {}
    for k, g in ipairs(group_cols) do gcs[k] = {name = header[column_of(csv, header, g, "group_cols[" .. k .. "]")],
                                                col = column_of(csv, header, g, "group_cols[" .. k .. "]")} end
    return {pc, lc, gcs}
  end)
  if not ok2 then error(res, 2) end
  local pc, lc, gcs = res[1], res[2], res[3]
  local root = opts.root or dirname(csv)
  local paths, raw_labels, label_lines, groups = {}, {}, {}, {}
  for r = 2, #records do
    local rec = records[r]
    if #rec ~= #header then
      error(string.format("%s: %s: line %d: %d fields, the header has %d", fn, csv, rec.line, #rec, #header), 2)
    end
    local p = rec[pc]
    if p == "" then error(string.format("%s: %s: line %d, column %d (%s): empty path", fn, csv, rec.line, pc, header[pc]), 2) end
    if p:sub(1, 1) ~= "/" then p = root .. "/" .. p end
    paths[#paths + 1] = p
    if lc then
      local v = rec[lc]
      if v == "" then error(string.format("%s: %s: line %d, column %d (%s): empty label", fn, csv, rec.line, lc, header[lc]), 2) end
      raw_labels[#raw_labels + 1] = v
      label_lines[#label_lines + 1] = rec.line
    end
    if #gcs > 0 then
      local g = {}
      for _, gc in ipairs(gcs) do g[gc.name] = rec[gc.col] end
      groups[#groups + 1] = g
    end
  end
  if #paths == 0 then error(fn .. ": " .. csv .. ": no rows after the header", 2) end
  local ds = {csv = csv, root = root, paths = paths, transform = opts.transform, channels = opts.channels or 3,
              on_error = on_error, skipped = 0, groups = #gcs > 0 and groups or nil}
  if lc then
    local integers = label_type == "integers"
    if label_type == "auto" then
      integers = true
      for _, v in ipairs(raw_labels) do
        if not v:match("^%s*%-?%d+%s*$") then integers = false; break end
      end
    end
    local targets, classes = {}, opts.classes
    if integers then
      local hi = 0
      for k, v in ipairs(raw_labels) do
        local num = math.tointeger(tonumber(v))
        if not num then
          error(string.format("%s: %s: line %d, column %d (%s): label \"%s\" is not an integer", fn, csv,
            label_lines[k], lc, header[lc], v), 2)
        end
        local t = num - base + 1
        if t < 1 or (classes and t > #classes) then
          error(string.format("%s: %s: line %d, column %d (%s): label %d is outside %d..%s (label_base %d)", fn, csv,
            label_lines[k], lc, header[lc], num, base, classes and tostring(base + #classes - 1) or "", base), 2)
        end
        targets[k] = t
        if t > hi then hi = t end
      end
      if not classes then
        classes = {}
        for c = 1, hi do classes[c] = tostring(c - 1 + base) end
      end
    else
      if not classes then
        local seen = {}
        classes = {}
        for _, v in ipairs(raw_labels) do
          if not seen[v] then seen[v] = true; classes[#classes + 1] = v end
        end
        table.sort(classes)
      end
      local idx = {}
      for c, name in ipairs(classes) do idx[name] = c end
      for k, v in ipairs(raw_labels) do
        local t = idx[v]
        if not t then
          error(string.format("%s: %s: line %d, column %d (%s): label \"%s\" is not one of the given classes", fn,
            csv, label_lines[k], lc, header[lc], v), 2)
        end
        targets[k] = t
      end
    end
    ds.targets, ds.classes = targets, classes
    ds.class_to_idx = {}
    for c, name in ipairs(classes) do ds.class_to_idx[name] = c end
  end
  return setmetatable(ds, CSVDataset)
end

---Sample i: the (transformed) image, its class number (nil without labels) and its group
---table (nil without group_cols); nil when the file cannot be decoded and on_error is "skip".
---@param i integer
function CSVDataset:get(i, gen)
  local p = self.paths[i]
  if math.type(i) ~= "integer" or not p then
    error(string.format("CSVDataset: index %s out of range 1..%d", tostring(i), #self.paths), 2)
  end
  local ok, img = pcall(vtl.image.load, p, {channels = self.channels})
  if not ok then
    if self.on_error == "skip" then
      self.skipped = self.skipped + 1
      return nil
    end
    error(string.format("CSVDataset: sample %d: %s", i, tostring(img)), 2)
  end
  if self.transform then img = self.transform(img, gen) end
  return img, self.targets and self.targets[i], self.groups and self.groups[i]
end

return M
