-- The Jupyter kernel (`vtl kernel`), driven by the real Jupyter stack: tests/jupyter/check_kernel.py
-- talks to it with jupyter_client (execute, streams, results, errors, complete, inspect,
-- is_complete, io.read, rich display, a badly signed message, interrupt, RSS over 200
-- executions, restart, shutdown); then every notebook in notebooks/ runs with nbclient.
local T = require "testlib"

local VTL = os.getenv("VTL") or "./vtl"
local SAN = os.getenv("VTL_SAN") == "1"
local PY = os.getenv("VTL_PY") or ".venv/bin/python"

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function has_jupyter()
  local ok = os.execute(q(PY) .. " -c 'import jupyter_client, nbclient, nbformat' >/dev/null 2>&1")
  return ok == true
end

local function run_check(args)
  local p = assert(io.popen(q(PY) .. " tests/jupyter/check_kernel.py " .. q(VTL) .. " " .. args .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  return ok, out
end

T.test("the Jupyter stack is installed", function()
  T.truthy(has_jupyter(), PY .. " lacks jupyter_client/nbclient/nbformat: run make setup")
end)

T.test("kernel protocol with jupyter_client", function()
  local ok, out = run_check("")
  io.write(out)
  T.truthy(ok and out:find("%d+ passed, 0 failed"), "protocol checks failed:\n" .. out)
end)

if SAN then
  -- the fine-tuning notebooks train a network: minutes under the sanitizers
  T.skip("notebooks run with nbclient", "VTL_SAN=1: too slow under ASan; runs in the normal suite")
else
  T.test("every notebook in notebooks/ runs top to bottom with nbclient", function()
    local p = assert(io.popen("ls notebooks/*.ipynb"))
    local list = {}
    for l in p:lines() do list[#list + 1] = q(l) end
    p:close()
    T.truthy(#list >= 4, "expected the notebooks in notebooks/")
    local t0 = os.time()
    local ok, out = run_check(table.concat(list, " "))
    io.write(out)
    T.truthy(ok and out:find("\n" .. #list .. " passed, 0 failed", 1, true), "a notebook failed:\n" .. out)
    print(string.format("  notebooks: %d s", os.time() - t0))
  end)
end


---------------------------------------------------------------- vtl.display and vtl.doc in the host

local vtl = require "vtl"

T.test("display.base64 matches Python's base64 on every length mod 3", function()
  for _, n in ipairs({0, 1, 2, 3, 100, 1001}) do
    local bytes = {}
    for i = 1, n do bytes[i] = string.char((i * 37 + n) % 256) end
    local s = table.concat(bytes)
    local path = os.tmpname()
    local f = assert(io.open(path, "wb")); f:write(s); f:close()
    local p = assert(io.popen(q(PY) .. " -c 'import base64,sys; sys.stdout.write(base64.b64encode(open(sys.argv[1], \"rb\").read()).decode())' " .. q(path)))
    local want = p:read("a")
    p:close()
    os.remove(path)
    T.eq(vtl.display.base64(s), want, "length " .. n)
  end
end)

T.test("outside a notebook, display prints the text form", function()
  T.truthy(not vtl.display.live(), "the host is not a notebook")
  local b = vtl.display.bundle(vtl.arange(6):view(2, 3))
  T.eq(b["text/plain"], tostring(vtl.arange(6):view(2, 3)))
  T.truthy(b["text/html"]:find("<td>5</td>", 1, true), b["text/html"])
  T.eq(vtl.display.bundle({markdown = "*x*"})["text/markdown"], "*x*")
end)

T.test("display and doc: wrong arguments are clear errors", function()
  T.raises(function() vtl.display(1, 2) end, "display: argument 2 must be an options table")
  T.raises(function() vtl.display(1, {display_id = 3}) end, "display: display_id must be true or a string")
  T.raises(function() vtl.display.update(1, "x") end, "display.update: argument 1 must be a display id")
  T.raises(function() vtl.display.markdown(1) end, "display.markdown: argument 1 must be a string")
  T.raises(function() vtl.display.base64({}) end, "display.base64: argument 1 must be a string")
  T.raises(function() vtl.display("/nonexistent/x.png") end, "display: cannot read")
  T.raises(function() vtl.display({markdown = 1}) end, "display: markdown must be a string")
  T.raises(function() vtl.doc.inspect(1) end, "doc.inspect: argument 1 must be a string")
  T.raises(function() vtl.doc.annotation(1) end, "doc.annotation: argument 1 must be a function")
end)

T.test("doc reads the --- block above a Lua function", function()
  local sig, doc = vtl.doc.annotation(vtl.plot.bars)
  T.eq(sig, "(values, opts)")
  T.truthy(doc:find("^Vertical bar chart"), doc)
  T.truthy(vtl.doc.describe(vtl.zeros, "vtl.zeros"):find("built-in function", 1, true))
  T.eq(vtl.doc.inspect("vtl.no_such_name"), nil)
end)

T.test("vtl kernel: usage and install errors", function()
  local p = io.popen(q(VTL) .. " kernel 2>&1; echo rc=$?")
  local out = p:read("a"); p:close()
  T.truthy(out:find("usage: vtl kernel --connection-file", 1, true) and out:find("rc=1", 1, true), out)
  p = io.popen(q(VTL) .. " kernel --connection-file /nonexistent.json 2>&1; echo rc=$?")
  out = p:read("a"); p:close()
  T.truthy(out:find("cannot read the connection file", 1, true) and out:find("rc=1", 1, true), out)
  p = io.popen(q(VTL) .. " kernel install --bogus 2>&1; echo rc=$?")
  out = p:read("a"); p:close()
  T.truthy(out:find("unknown argument '--bogus'", 1, true) and out:find("rc=1", 1, true), out)
end)
