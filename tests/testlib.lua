-- A small test framework: test(name, fn) registers; the runner (tests/run.lua) reports.
local M = {tests = {}}

---@param name string
---@param fn fun()
function M.test(name, fn) M.tests[#M.tests + 1] = {name = name, fn = fn} end

-- Registers a test that cannot run here (no GPU, ...); the runner counts it as skipped, never
-- as passed, and prints the reason.
---@param name string
---@param reason string
function M.skip(name, reason) M.tests[#M.tests + 1] = {name = name, skip = reason} end

local function fail(msg, level) error(msg, (level or 1) + 2) end

function M.eq(got, want, msg)
  if got ~= want then fail(string.format("%sexpected %s, got %s", msg and msg .. ": " or "", tostring(want), tostring(got))) end
end

function M.truthy(v, msg) if not v then fail(msg or "expected a true value") end end

local FLOAT = {f32 = true, f64 = true, f16 = true, bf16 = true}

-- Compares a tensor or number or nested table of numbers with a reference, elementwise: equal,
-- both NaN, or b finite and |a - b| <= tol * (1 + |b|).
function M.close(got, want, tol, msg)
  tol = tol or 1e-6
  local vtl = require "vtl"
  local g, w = got, want -- (a 0-d bool tensor's totable() is false: no and/or here)
  if vtl.is_tensor(got) and vtl.is_tensor(want) then
    local gs, ws = table.concat(got.shape, ","), table.concat(want.shape, ",")
    if gs ~= ws then fail(string.format("%sshape {%s} ~= {%s}", msg and msg .. ": " or "", gs, ws)) end
    -- floating tensors: the same test as the walk below, as tensor ops in f64 (large tensors)
    if FLOAT[got.dtype] and FLOAT[want.dtype] then
      local a, b = got:detach():cpu():double(), want:detach():cpu():double()
      local ok = a:eq(b):logical_or(a:isnan():logical_and(b:isnan()))
        :logical_or((a - b):abs():le(b:abs() * tol + tol):logical_and(b:isinf():logical_not()))
      local nbad = ok:logical_not():sum():item()
      if nbad == 0 then return end
      local at = ok:reshape(-1):logical_not():nonzero()[1][1]:item()
      fail(string.format("%s%d mismatches (tol %g), first at flat index %d: got %.9g, want %.9g", msg and msg .. ": " or "",
        nbad, tol, at, a:reshape(-1)[at]:item(), b:reshape(-1)[at]:item()))
    end
  end
  if vtl.is_tensor(got) then g = got:totable() end
  if vtl.is_tensor(want) then w = want:totable() end
  local bad, first = 0, nil
  local function walk(a, b, path)
    if type(a) == "table" or type(b) == "table" then
      if type(a) ~= "table" or type(b) ~= "table" or #a ~= #b then
        fail(string.format("%sstructure differs at %s", msg and msg .. ": " or "", path))
      end
      for i = 1, #a do walk(a[i], b[i], path .. "[" .. i .. "]") end
      return
    end
    if type(a) == "boolean" then a = a and 1 or 0 end
    if type(b) == "boolean" then b = b and 1 or 0 end
    local ok = (a == b) or (a ~= a and b ~= b) or (math.abs(b) ~= math.huge and math.abs(a - b) <= tol * (1 + math.abs(b)))
    if not ok then bad = bad + 1; first = first or string.format("%s: got %.9g, want %.9g", path, a, b) end
  end
  walk(g, w, "")
  if bad > 0 then fail(string.format("%s%d mismatches (tol %g), first %s", msg and msg .. ": " or "", bad, tol, first)) end
end

-- Expects fn to raise an error whose message contains `pattern` (plain text).
function M.raises(fn, pattern)
  local ok, err = pcall(fn)
  if ok then fail("expected an error containing '" .. pattern .. "', got none") end
  err = tostring(err)
  if not err:find(pattern, 1, true) then fail("expected an error containing '" .. pattern .. "', got: " .. err) end
  return err
end

-- Runs `code` (a Lua chunk without single quotes) in a fresh $VTL (default ./vtl) process
-- under the shell prefix `env` (variable settings, `env -u NAME`, ...); returns what it printed.
function M.run_fresh(env, code)
  local p = assert(io.popen(("%s %s -e '%s' 2>&1"):format(env, os.getenv("VTL") or "./vtl", code)))
  local out = p:read("a")
  p:close()
  return out
end

-- Compiles a host emulation of GPU kernels (tests/gpu/<name>.cpp, built on tests/gpu/emu.h with
-- the C++ compiler $CXX, else c++) and runs it; returns its output and whether it exited 0.
function M.run_emulation(name)
  local cxx = os.getenv("CXX") or "c++"
  local bin = (os.getenv("TMPDIR") or "/tmp") .. ("/vtl_%s_%d_%d"):format(name, os.time(), math.random(1e9))
  local p = assert(io.popen(("%s -std=c++20 -O2 -pthread -Ikernels/cuda -Iruntime tests/gpu/%s.cpp -o '%s' 2>&1 && '%s' 2>&1; echo \"exit=$?\"")
    :format(cxx, name, bin, bin)))
  local out = p:read("a")
  p:close()
  os.remove(bin)
  local ok = out:find("exit=0%s*$") ~= nil
  return (out:gsub("exit=%d+%s*$", "")), ok
end

-- Runs an emulation (run_emulation) and expects it to exit 0, to end with the line `done` and
-- to print `checks` lines that start with "ok".
function M.emulation_passes(name, done, checks)
  local out, ok = M.run_emulation(name)
  if not ok or not out:find(done, 1, true) then fail(name .. " failed:\n" .. out) end
  local n = select(2, ("\n" .. out):gsub("\nok ", ""))
  if n ~= checks then fail(("%s: %d checks passed, expected %d:\n%s"):format(name, n, checks, out)) end
end

-- Whole-file helpers for tests that write inputs or read outputs.
function M.readfile(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

function M.writefile(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
  return path
end

return M
