-- The vtl host program: command line, script errors, the REPL (piped and through a
-- pseudo-terminal), the C module for a stock lua5.4, and an installed tree.
local T = require "testlib"

local VTL = os.getenv("VTL") or "./vtl"
local SAN = os.getenv("VTL_SAN") == "1"

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local readall, writefile = T.readfile, T.writefile

-- Temporary files made by a test; `cleanup()` at its end removes them.
local tmpfiles = {}
local function tmpfile(content)
  local p = os.tmpname()
  tmpfiles[#tmpfiles + 1] = p
  if content then writefile(p, content) end
  return p
end
local function cleanup()
  for _, p in ipairs(tmpfiles) do os.remove(p) end
  tmpfiles = {}
end
-- T.test, removing the test's temporary files when it passes.
local function test(name, fn) T.test(name, function() fn(); cleanup() end) end

-- Runs a shell command with `input` (or nothing) on stdin; returns stdout, stderr, status.
local function sh(cmd, input)
  local errf = os.tmpname()
  local inf = input and writefile(os.tmpname(), input) or "/dev/null"
  local p = assert(io.popen("(" .. cmd .. ") <" .. q(inf) .. " 2>" .. q(errf)))
  local out = p:read("a")
  local _, how, code = p:close()
  local err = readall(errf) or ""
  os.remove(errf)
  if input then os.remove(inf) end
  return out, err, how == "exit" and code or 128 + code
end

local ROOT = sh("pwd"):gsub("\n$", "")
local VTL_ABS = VTL:sub(1, 1) == "/" and VTL or ROOT .. "/" .. VTL:gsub("^%./", "")

local function vtl(args, input) return sh(q(VTL) .. " " .. args, input) end

local function has(s, sub, what)
  T.truthy(s:find(sub, 1, true), string.format("%s: expected %q in:\n%s", what or "output", sub, s))
end

local function mktempdir()
  local d = sh("mktemp -d"):gsub("\n$", "")
  T.truthy(d ~= "", "mktemp -d failed")
  return d
end

---------------------------------------------------------------- command line

test("script gets arg and ... like lua", function()
  local script = tmpfile([[
print(select("#", ...), ...)
print(arg[0], arg[1], arg[2], arg[3], #arg)
print(arg[-1])
]])
  local out, err, st = vtl(q(script) .. " a 'b c' 3")
  T.eq(st, 0, err)
  local lines = {}
  for l in out:gmatch("[^\n]*") do lines[#lines + 1] = l end
  T.eq(lines[1], "3\ta\tb c\t3")
  T.eq(lines[2], script .. "\ta\tb c\t3\t3")
  T.eq(lines[3], VTL)
end)

test("-e runs code, repeats, and runs before the script", function()
  local out, err, st = vtl("-e 'print(1 + 1)'")
  T.eq(st, 0, err)
  T.eq(out, "2\n")
  local script = tmpfile("print(x, arg[0] ~= nil, arg[-1], arg[-5])\n")
  out, err, st = vtl("-e 'x = 1' -e 'x = x * 10' " .. q(script))
  T.eq(st, 0, err)
  T.eq(out, "10\ttrue\tx = x * 10\t" .. VTL .. "\n")
end)

test("the vtl global is require 'vtl' in -e and scripts", function()
  local out, err, st = vtl([[-e 'print(type(vtl), vtl == require "vtl", package.loaded["vtl.core"] ~= nil)']])
  T.eq(st, 0, err)
  T.eq(out, "table\ttrue\ttrue\n")
  local script = tmpfile("print(type(vtl))\n")
  out = vtl(q(script))
  T.eq(out, "table\n")
end)

test("script from stdin with -", function()
  local out, err, st = vtl("- x y", "print('stdin', ...)\n")
  T.eq(st, 0, err)
  T.eq(out, "stdin\tx\ty\n")
end)

test("shebang line and os.exit status pass through", function()
  local script = tmpfile("#!/usr/bin/env vtl\nio.write('ran') os.exit(3)\n")
  local out, _, st = vtl(q(script))
  T.eq(out, "ran")
  T.eq(st, 3)
end)

test("--version, -v and --help", function()
  for _, opt in ipairs{"--version", "-v"} do
    local out, err, st = vtl(opt)
    T.eq(st, 0, err)
    has(out, "vtl 0.1.0")
    has(out, "Lua 5.4")
  end
  local out, err, st = vtl("-v -e 'print(7)'")
  T.eq(st, 0, err)
  T.truthy(out:match("^vtl 0%.1%.0[^\n]*\n7\n$"), out)
  out, err, st = vtl("--help")
  T.eq(st, 0, err)
  has(out, "usage: vtl")
  has(out, "-e stat")
  has(out, "info")
end)

test("bad options: message, usage, status 1", function()
  local out, err, st = vtl("-x")
  T.eq(st, 1)
  T.eq(out, "")
  has(err, "vtl: unrecognized option '-x'", "stderr")
  has(err, "usage: vtl", "stderr")
  _, err, st = vtl("-e")
  T.eq(st, 1)
  has(err, "'-e' needs argument", "stderr")
end)

test("info: version, build flags, BLAS, oneDNN, threads, CUDA", function()
  local out, err, st = vtl("info")
  T.eq(st, 0, err)
  has(out, "vtl 0.1.0 (Lua 5.4")
  T.truthy(out:match("\nbuild flags: [^\n]*%-O"), "build flags line: " .. out)
  T.truthy(out:match("\nBLAS: OpenBLAS %d"), "BLAS line: " .. out)
  has(out, "\noneDNN: 2.")
  local n = tonumber(out:match("\nthreads: (%d+)"))
  T.truthy(n and n >= 1, "threads line: " .. out)
  T.truthy(out:match("\nCUDA: built, %d+ GPUs? visible") or out:match("\nCUDA: not built"), "CUDA line: " .. out)
  has(out, "\nlua files: /")
  out = sh("OMP_NUM_THREADS=3 " .. q(VTL) .. " info")
  has(out, "\nthreads: 3\n")
end)

---------------------------------------------------------------- errors

test("runtime error: vtl: message + traceback on stderr, status 1", function()
  local script = tmpfile("local function inner() error('boom here') end\nlocal function outer() inner() end\nouter()\nprint('not reached')\n")
  local out, err, st = vtl(q(script))
  T.eq(st, 1)
  T.eq(out, "")
  T.truthy(err:find("^vtl: " .. script:gsub("%p", "%%%0") .. ":1: boom here\n"), "message: " .. err)
  has(err, "stack traceback:", "stderr")
  has(err, script .. ":1: in upvalue 'inner'", "stderr")
  has(err, script .. ":2: in local 'outer'", "stderr")
  has(err, script .. ":3: in main chunk", "stderr")
end)

test("error objects that are not strings", function()
  local _, err, st = vtl("-e 'error({})'")
  T.eq(st, 1)
  has(err, "vtl: (error object is a table value)", "stderr")
  _, err, st = vtl([[-e 'error(setmetatable({}, {__tostring = function() return "custom message" end}))']])
  T.eq(st, 1)
  has(err, "vtl: custom message", "stderr")
end)

test("an error in -e stops before the script", function()
  local script = tmpfile("print('script ran')\n")
  local out, err, st = vtl("-e 'error(\"early\")' " .. q(script))
  T.eq(st, 1)
  T.eq(out, "")
  has(err, "vtl: (command line):1: early", "stderr")
end)

test("syntax error in a file: one clear line", function()
  local script = tmpfile("local x = 1\nif x then\n  print(x)\n")
  local out, err, st = vtl(q(script))
  T.eq(st, 1)
  T.eq(out, "")
  has(err, "vtl: " .. script .. ":4: 'end' expected (to close 'if' at line 2) near <eof>", "stderr")
end)

test("missing script file: clear message, status 1", function()
  local out, err, st = vtl("/nonexistent/dir/no_such_script.lua")
  T.eq(st, 1)
  T.eq(out, "")
  has(err, "vtl: cannot open /nonexistent/dir/no_such_script.lua", "stderr")
end)

test("Ctrl-C (SIGINT) in a script raises 'interrupted!'", function()
  local out, err, st = sh("timeout --foreground -s INT --preserve-status 1.5 " .. q(VTL) .. " -e 'while true do end'")
  T.eq(out, "")
  T.eq(st, 1, "exit status (stderr: " .. err .. ")")
  has(err, "vtl: interrupted!", "stderr")
  has(err, "stack traceback:", "stderr")
end)

---------------------------------------------------------------- library path

test("VTL_LUA_DIR chooses where vtl's Lua files come from", function()
  local dir = mktempdir()
  sh("mkdir -p " .. q(dir .. "/vtl"))
  writefile(dir .. "/vtl/init.lua", "return {marker = 'from VTL_LUA_DIR', core = require 'vtl.core'}\n")
  local out, err, st = sh("VTL_LUA_DIR=" .. q(dir) .. " " .. q(VTL) .. " -e 'print(vtl.marker, type(vtl.core))'")
  T.eq(st, 0, err)
  T.eq(out, "from VTL_LUA_DIR\ttable\n")
  -- a broken library is a clear error, not a crash
  writefile(dir .. "/vtl/init.lua", "error('broken init')\n")
  out, err, st = sh("VTL_LUA_DIR=" .. q(dir) .. " " .. q(VTL) .. " -e 'print(1)'")
  T.eq(st, 1)
  T.eq(out, "")
  has(err, "vtl: cannot load the vtl library (Lua files from " .. dir .. ")", "stderr")
  has(err, "broken init", "stderr")
  sh("rm -rf " .. q(dir))
end)

test("the source tree's lua/ is found from any working directory", function()
  local out, err, st = sh("cd / && env -u VTL_LUA_DIR " .. q(VTL_ABS) .. " -e 'print(package.searchpath(\"vtl\", package.path))'")
  T.eq(st, 0, err)
  T.eq(out, ROOT .. "/lua/vtl/init.lua\n")
end)

---------------------------------------------------------------- REPL through a pipe

test("REPL (piped): values, multi-line chunks, errors, EOF", function()
  local input = table.concat({
    "1 + 1",
    "function twice(a)",
    "  return a * 2",
    "end",
    "twice(21)",
    "error('oops in repl')",
    "print('after error')",
    "return 1, nil, 's'",
    "setmetatable({}, {__tostring = function() return 'custom tostring' end})",
    "local t = {",
    "  10,",
    "  20}",
    "type(vtl)",
    "string.format('%d-%d',",
    "  3, 4)",
    "x = = 1",
    "'still running'",
  }, "\n") .. "\n"
  local out, err, st = vtl("", input)
  T.eq(st, 0, err)
  T.eq(out, "2\n42\nafter error\n1\tnil\ts\ncustom tostring\ntable\n3-4\nstill running\n")
  has(err, "stdin:1: oops in repl", "stderr")
  has(err, "stack traceback:", "stderr")
  has(err, "stdin:1: unexpected symbol near '='", "stderr")
  T.truthy(not err:find("vtl: ", 1, true), "REPL errors carry no program name: " .. err)
end)

test("REPL (piped): incomplete chunk at end of input", function()
  local out, err, st = vtl("", "print('first')\nfor i = 1, 2 do\n  print(i)\n")
  T.eq(st, 0, err)
  T.eq(out, "first\n")
  has(err, "stdin:2: 'end' expected (to close 'for' at line 1) near <eof>", "stderr")
end)

test("-i runs the script then the REPL, even after an error", function()
  local script = tmpfile("from_script = 40\n")
  local out, err, st = vtl("-i " .. q(script), "from_script + 2\n")
  T.eq(st, 0, err)
  T.eq(out, "42\n")
  script = tmpfile("partial = 1\nerror('script failed')\n")
  out, err, st = vtl("-i " .. q(script), "partial\n")
  T.eq(out, "1\n")
  has(err, "script failed", "stderr")
  T.eq(st, 1)
end)

---------------------------------------------------------------- REPL through a terminal

-- A pseudo-terminal driver: steps "s:TEXT" send TEXT, "e:TEXT" wait for TEXT in the output
-- that follows the previous match, "w:SECONDS" pause. Bounded by a deadline, so it cannot
-- hang; prints "PTY-OK exit=N" or "PTY-FAIL why", then the transcript.
local PTY_DRIVER = [==[
import os, pty, sys, time, select, signal, struct, fcntl, termios
prog, steps = sys.argv[1], sys.argv[2:]
deadline = time.time() + 30
pid, fd = pty.fork()
if pid == 0:
    os.environ.update(TERM="dumb", INPUTRC="/dev/null")
    os.execv(prog, [prog])
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
buf, pos = b"", 0
def pump(t):
    global buf
    r, _, _ = select.select([fd], [], [], t)
    if r:
        try:
            d = os.read(fd, 4096)
        except OSError:
            d = b""
        buf += d
        return len(d) > 0
    return True
def fail(why):
    print("PTY-FAIL " + why)
    print(repr(buf.decode("utf-8", "replace")))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    sys.exit(1)
for st in steps:
    kind, text = st[0], st[2:].encode("utf-8", "surrogateescape")
    if kind == "s":
        os.write(fd, text)
    elif kind == "w":
        end = time.time() + float(st[2:])
        while time.time() < end:
            pump(max(0, end - time.time()))
    elif kind == "e":
        while True:
            i = buf.find(text, pos)
            if i >= 0:
                pos = i + len(text)
                break
            if time.time() > deadline:
                fail("timeout waiting for " + repr(text))
            if not pump(min(0.2, max(0, deadline - time.time()))):
                fail("end of output waiting for " + repr(text))
status = None
while time.time() < deadline:
    p, s = os.waitpid(pid, os.WNOHANG)
    if p == pid:
        status = s
        break
    pump(0.05)
if status is None:
    fail("program did not exit")
print("PTY-OK exit=%d" % os.waitstatus_to_exitcode(status))
print(repr(buf.decode("utf-8", "replace")))
]==]

local PYTHON = "/usr/bin/python3"
local function have_python()
  local f = io.open(PYTHON)
  if f then f:close() return true end
  print("  skip: " .. PYTHON .. " is absent, terminal REPL tests not run")
  return false
end

-- Runs `vtl` (no arguments: the REPL) in a pseudo-terminal through the steps; asserts that
-- every expected text came and that it exited with status 0. Returns the transcript.
local function pty(steps, env)
  local driver = tmpfile(PTY_DRIVER)
  local args = {}
  for i, s in ipairs(steps) do args[i] = q(s) end
  local out = sh((env or "") .. " " .. PYTHON .. " " .. q(driver) .. " " .. q(VTL_ABS) .. " " ..
                 table.concat(args, " "))
  T.truthy(out:find("PTY-OK exit=0", 1, true), "terminal session failed:\n" .. out)
  return out
end

local function add(t, ...) for _, v in ipairs{...} do t[#t + 1] = v end end

test("REPL (terminal): Tab completes globals, fields and methods", function()
  if not have_python() then return end
  local steps = {"e:> ", "s:abc = {defgh = {xyz1 = 1}}\n", "e:> "}
  -- nested fields: abc.de<TAB> -> abc.defgh, then .xy<TAB> -> .xyz1
  add(steps, "s:abc.de\t.xy\t + 41\n", "e:\r\n42\r\n", "e:> ")
  -- methods from a metatable's __index table
  add(steps, "s:obj = setmetatable({}, {__index = {frobnicate = function() return 43 end}})\n", "e:> ",
      "s:obj:frob\t()\n", "e:\r\n43\r\n", "e:> ")
  -- methods from a metatable's __methods table (how a userdata type can list its methods)
  add(steps, "s:u = setmetatable({}, {__methods = {quuxify = true}, __index = function(_, k) " ..
      "if k == 'quuxify' then return function() return 44 end end end})\n", "e:> ",
      "s:u:quux\t()\n", "e:\r\n44\r\n", "e:> ")
  -- a userdata's methods (io.stdout) and a global
  add(steps, "s:io.stdout:wri\t('w' .. 'rote\\n')\n", "e:\r\nwrote\r\n", "e:> ",
      "s:coroutin\t.running ~= nil\n", "e:\r\ntrue\r\n", "e:> ")
  -- the library: vtl.<prefix><TAB>
  -- a function of vtl whose first 4 letters no other field shares, so one Tab completes it
  local name = sh(q(VTL) .. [[ -e 'local keys = {}
    for k in pairs(vtl) do if type(k) == "string" then keys[#keys + 1] = k end end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local n = 0
      for _, o in ipairs(keys) do if o:sub(1, 4) == k:sub(1, 4) then n = n + 1 end end
      if n == 1 and #k >= 6 and k:match("^[%a_][%w_]*$") and type(vtl[k]) == "function" then io.write(k) break end
    end']])
  if name == "" then name = nil end
  if name then
    add(steps, "s:type(vtl." .. name:sub(1, 4) .. "\t" .. ")\n", "e:\r\nfunction\r\n", "e:> ")
  else
    print("  skip: vtl has no function to complete")
  end
  -- a tensor's methods (its metatable's __methods): tt:nume<TAB>() -> tt:numel()
  local probe = sh(q(VTL) .. [[ -e 'local mt = debug.getregistry()["vtl.Tensor"]
    local n = 0
    for k in pairs(mt and mt.__methods or {}) do if k:sub(1, 4) == "nume" then n = n + 1 end end
    io.write(tostring(vtl.zeros ~= nil and n == 1 and mt.__methods.numel ~= nil))']])
  if probe == "true" then
    add(steps, "s:tt = vtl.zeros(2, 3)\n", "e:> ", "s:tt:nume\t()\n", "e:\r\n6\r\n", "e:> ")
  else
    print("  skip: no vtl.zeros or Tensor:numel; tensor method completion step left out")
  end
  add(steps, "s:\4")
  local out = pty(steps, "VTL_HISTORY=")
  if name then
    T.truthy(out:find("vtl." .. name:sub(1, 4), 1, true), out)
  end
end)

test("REPL (terminal): Ctrl-C interrupts a running chunk and clears the prompt", function()
  if not have_python() then return end
  local out = pty({
    "e:> ",
    "s:while true do end\n", "w:0.5", "s:\3", "e:interrupted!", "e:> ",
    "s:print(6 * 7)\n", "e:\r\n42\r\n", "e:> ",
    -- at a continuation prompt the pending lines are thrown away
    "s:print('pending',\n", "e:>> ", "s:\3", "e:> ",
    "s:print('after' .. '-ctrl-c')\n", "e:\r\nafter-ctrl-c\r\n", "e:> ",
    -- and on the first line
    "s:zzz_never_defined", "w:0.2", "s:\3", "e:> ",
    "s:'ok' .. '!'\n", "e:\r\nok!\r\n", "e:> ",
    "s:\4",
  }, "VTL_HISTORY=")
  -- the discarded line never ran: print('pending', print(...)) would have printed it
  T.truthy(not out:find("\\r\\npending", 1, true), "pending line ran:\n" .. out)
end)

test("REPL (terminal): history persists and stays bounded", function()
  if not have_python() then return end
  local hist = tmpfile()
  local old = {}
  for i = 1, 1500 do old[i] = "old_line_" .. i end
  writefile(hist, table.concat(old, "\n") .. "\n")
  local env = "VTL_HISTORY=" .. q(hist)
  pty({"e:> ", "s:print('hist' .. 'ory-ok')\n", "e:\r\nhistory-ok\r\n", "e:> ", "s:\4"}, env)
  local saved = readall(hist)
  has(saved, "print('hist' .. 'ory-ok')\n", "history file")
  local n = select(2, saved:gsub("\n", ""))
  T.truthy(n <= 1000, "history file has " .. n .. " lines")
  -- a new session recalls it with Ctrl-P (previous-history)
  pty({"e:> ", "s:\16\n", "e:\r\nhistory-ok\r\n", "e:> ", "s:\4"}, env)
end)

---------------------------------------------------------------- stock lua5.4 and install

test("a stock lua5.4 loads build/vtl/core.so", function()
  if SAN then print("  skip: the sanitizer build's module cannot load into an uninstrumented lua5.4") return end
  local lua = sh("command -v lua5.4"):gsub("\n$", "")
  if lua == "" then print("  skip: lua5.4 is absent") return end
  local code = [[package.cpath = "build/?.so;" .. package.cpath
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local vtl = require "vtl"
print(type(vtl), package.searchpath("vtl.core", package.cpath), vtl == package.loaded.vtl)]]
  local out, err, st = sh(q(lua) .. " -e " .. q(code))
  T.eq(st, 0, err)
  T.eq(out, "table\tbuild/vtl/core.so\ttrue\n")
end)

test("make install PREFIX=dir gives a working vtl from any directory", function()
  if SAN then print("  skip: VTL_SAN=1 (the install takes the regular build)") return end
  local prefix = mktempdir()
  local out, err, st = sh("make -s -C " .. q(ROOT) .. " install PREFIX=" .. q(prefix) .. " 2>&1")
  T.eq(st, 0, "make install failed: " .. out .. err)
  out, err, st = sh("cd / && env -u VTL_LUA_DIR " .. q(prefix .. "/bin/vtl") ..
    [[ -e 'assert(require "vtl" == vtl); print(package.searchpath("vtl", package.path))']])
  T.eq(st, 0, err)
  T.eq(out, prefix .. "/share/vtl/lua/vtl/init.lua\n")
  -- the installed C module and the lua path link for a stock lua5.4
  if sh("command -v lua5.4") ~= "" then
    out, err, st = sh("cd / && LUA_CPATH=" .. q(prefix .. "/lib/lua/5.4/?.so;;") ..
      " LUA_PATH=" .. q(prefix .. "/share/lua/5.4/?.lua;" .. prefix .. "/share/lua/5.4/?/init.lua;;") ..
      [[ lua5.4 -e 'print(type(require "vtl"))']])
    T.eq(st, 0, err)
    T.eq(out, "table\n")
  end
  sh("rm -rf " .. q(prefix))
end)

