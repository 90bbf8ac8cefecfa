-- vtl.recipe: reproducible recipe files. A recipe declares its settings with defaults; the
-- command line overrides them (`vtl recipe.lua --set lr=3e-4 --set epochs=10`, or
-- `--config run/config.json` to rerun a recorded run); every run gets a directory holding the
-- resolved settings, the seed, the versions, the recipe's own text and a fingerprint of its
-- data, next to whatever the run writes there (logs, plots, checkpoints, metrics).
--
--   local recipe = require "vtl.recipe"
--   local run = recipe.start{name = "fashion", defaults = {lr = 2e-3, epochs = 5, seed = 1}}
--   local cfg = run.config                     -- the resolved settings
--   run:fingerprint("train", train_ds)         -- recorded in data.json
--   ... train ...
--   run:finish{accuracy = acc}                 -- metrics.json
local vtl = require "vtl"
local json = require "vtl.json"

local M = {}

local Run = {}
Run.__index = Run

local function fail(msg) error(msg, 3) end

local function write_atomic(path, text)
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "wb")
  if not f then error("recipe: cannot write " .. path .. ": " .. tostring(err), 0) end
  f:write(text)
  f:close()
  local ok, rerr = os.rename(tmp, path)
  if not ok then error("recipe: cannot write " .. path .. ": " .. tostring(rerr), 0) end
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- the value of a --set override, typed after the default
local function coerce(key, text, default)
  local t = type(default)
  if t == "number" then
    local v = tonumber(text)
    if v == nil then fail(("recipe: --set %s=%s: expected a number"):format(key, text)) end
    if math.type(default) == "integer" then
      local i = math.tointeger(v)
      if i == nil then fail(("recipe: --set %s=%s: expected an integer"):format(key, text)) end
      return i
    end
    return v + 0.0
  elseif t == "boolean" then
    if text == "true" or text == "1" or text == "yes" then return true end
    if text == "false" or text == "0" or text == "no" then return false end
    fail(("recipe: --set %s=%s: expected true or false"):format(key, text))
  elseif t == "table" then
    local ok, v = pcall(json.decode, text, "--set " .. key)
    if not ok then fail(("recipe: --set %s: expected JSON for a list or table (%s)"):format(key, tostring(v))) end
    return v
  end
  return text
end

---The settings: defaults overridden by `--config file.json` and then by each `--set key=value`
---in args (default: the script's global `arg`). Unknown keys are refused, naming the known ones.
---@param defaults table
---@param args? string[]
---@return table config, string[] rest  (the arguments that were not settings)
function M.config(defaults, args)
  if type(defaults) ~= "table" then fail("recipe.config: defaults must be a table") end
  args = args or _G.arg or {}
  local cfg = {}
  for k, v in pairs(defaults) do cfg[k] = v end
  local function known(k)
    if defaults[k] == nil then
      local names = {}
      for n in pairs(defaults) do names[#names + 1] = n end
      table.sort(names)
      fail(("recipe: unknown setting '%s' (settings: %s)"):format(k, table.concat(names, ", ")))
    end
  end
  local rest, i = {}, 1
  while i <= #args do
    local a = args[i]
    if a == "--config" then
      local path = args[i + 1]
      if not path then fail("recipe: --config needs a file") end
      local text = read_file(path)
      if not text then fail("recipe: cannot read " .. path) end
      local ok, v = pcall(json.decode, text, path, {numbers = true})
      if not ok or type(v) ~= "table" then fail("recipe: " .. path .. ": " .. tostring(v)) end
      for k, x in pairs(v) do
        known(k)
        if math.type(defaults[k]) == "float" and math.type(x) == "integer" then x = x + 0.0 end
        cfg[k] = x
      end
      i = i + 2
    elseif a == "--set" or a:match("^%-%-set=") then
      local kv = a == "--set" and args[i + 1] or a:sub(7)
      if not kv then fail("recipe: --set needs key=value") end
      local k, v = kv:match("^([%w_%.]+)=(.*)$")
      if not k then fail("recipe: --set " .. kv .. ": expected key=value") end
      known(k)
      cfg[k] = coerce(k, v, defaults[k])
      i = i + (a == "--set" and 2 or 1)
    else
      rest[#rest + 1] = a
      i = i + 1
    end
  end
  return cfg, rest
end

-- FNV-1a, 64 bits, as 16 hex digits
local function fnv(h, s)
  for i = 1, #s do
    h = h ~ s:byte(i)
    h = h * 0x100000001b3
  end
  return h
end
local FNV0 = -3750763034362895579 -- 0xcbf29ce484222325

---Starts a run: resolves the settings (see config), seeds vtl's generator from config.seed
---(default 0) and writes, in opts.dir (default: the run_dir setting, else
---runs/<name>-<date>-<time>):
---config.json, env.json (vtl version, build, BLAS, Lua, date, host, command line), recipe.lua
---(the script's text). opts: name, defaults, args, dir, script (default arg[0]).
---@param opts {name: string, defaults: table, args: string[]|nil, dir: string|nil, script: string|nil}
function M.start(opts)
  if type(opts) ~= "table" or type(opts.name) ~= "string" then fail("recipe.start: name is required") end
  local defaults = {}
  for k, v in pairs(opts.defaults or {}) do defaults[k] = v end
  if defaults.seed == nil then defaults.seed = 0 end
  if defaults.run_dir == nil then defaults.run_dir = "" end
  local cfg, rest = M.config(defaults, opts.args)
  local dir = opts.dir or (cfg.run_dir ~= "" and cfg.run_dir) or nil
  if not dir then dir = "runs/" .. opts.name .. "-" .. os.date("%Y%m%d-%H%M%S") end
  cfg.run_dir = nil -- where a run goes is not part of what it computes
  if not os.execute("mkdir -p '" .. tostring(dir):gsub("'", "'\\''") .. "'") then
    fail("recipe.start: cannot create the run directory " .. tostring(dir))
  end
  vtl.seed(cfg.seed)
  local script = opts.script or (_G.arg and _G.arg[0])
  local bi = vtl.build_info()
  local host = read_file("/etc/hostname")
  local cmd = {}
  for k = 0, #(_G.arg or {}) do cmd[#cmd + 1] = _G.arg and _G.arg[k] or nil end
  local env = {vtl = bi.version, flags = bi.flags, blas = bi.blas, threads = bi.threads, cuda = bi.cuda,
               lua = _VERSION, date = os.date("!%Y-%m-%dT%H:%M:%SZ"), host = host and host:gsub("%s+$", "") or nil,
               command = cmd, script = script}
  write_atomic(dir .. "/config.json", json.encode(cfg) .. "\n")
  write_atomic(dir .. "/env.json", json.encode(env) .. "\n")
  if script then
    local text = read_file(script)
    if text then write_atomic(dir .. "/recipe.lua", text) end
  end
  return setmetatable({name = opts.name, dir = dir, config = cfg, args = rest, data = {}}, Run)
end

---A fingerprint of a dataset (recorded under `name` in data.json): the sorted file list with
---sizes and a hash of it for file-backed datasets (ImageFolder, CSVDataset: each sample's
---path), else a hash of the tensors' bytes (TensorDataset, up to 64 MiB) — so a rerun can tell
---whether it saw the same data.
---@param name string
---@param ds table
---@return table
function Run:fingerprint(name, ds)
  local fp = {size = #ds}
  local paths = {}
  for _, s in ipairs(ds.samples or {}) do
    local p = type(s) == "table" and (s[1] or s.path) or s
    if type(p) == "string" then paths[#paths + 1] = p end
  end
  local h = FNV0
  if #paths > 0 then
    table.sort(paths)
    local total = 0
    for _, p in ipairs(paths) do
      local f = io.open(p, "rb")
      local sz = f and f:seek("end") or -1
      if f then f:close() end
      total = total + math.max(sz, 0)
      h = fnv(h, p .. "\0" .. sz .. "\0")
    end
    fp.files, fp.bytes, fp.kind = #paths, total, "files"
  elseif vtl.is_tensor(ds.x) then
    local function add(t)
      local c = t:contiguous()
      local bytes = c:numel() * (c.dtype == "f64" and 8 or (c.dtype == "i64" and 8 or 4))
      if bytes > 64 * 1024 * 1024 then fp.partial = true end
      h = fnv(h, table.concat(c.shape, "x") .. c.dtype)
      local flat = c:reshape({-1})
      local n = math.min(flat.shape[1], 1 << 20)
      local vals = flat:narrow(1, 1, n):to("f64"):totable()
      for i = 1, #vals do h = fnv(h, string.pack("<d", vals[i])) end
    end
    add(ds.x)
    if vtl.is_tensor(ds.y) then add(ds.y) end
    fp.kind = "tensors"
  else
    fp.kind = "unknown"
  end
  fp.hash = string.format("%016x", h)
  if ds.classes then fp.classes = ds.classes end
  self.data[name] = fp
  write_atomic(self.dir .. "/data.json", json.encode(self.data) .. "\n")
  return fp
end

---A path inside the run directory.
---@param name string
function Run:path(name) return self.dir .. "/" .. name end

---Records the run's results in metrics.json (numbers, strings, tables of them).
---@param metrics table
function Run:finish(metrics)
  if type(metrics) ~= "table" then fail("run:finish: metrics must be a table") end
  write_atomic(self.dir .. "/metrics.json", json.encode(metrics) .. "\n")
  return self.dir
end

return M
