-- Runs tests/test_*.lua (or the files given as arguments) and prints "N passed, N failed,
-- N skipped" (skipped: registered with skip(name, reason), e.g. GPU tests without a GPU).
-- VTL_TEST_FILTER=text runs only the tests whose names contain text; VTL_TEST_FROM=k starts at
-- the k-th test of each file; VTL_TEST_VERBOSE=1 prints "START k name" (flushed) before each
-- test and its result with the wall time after it; VTL_TEST_CHECK_CUDA=1 synchronizes the GPU
-- after each test and ends the process with status 3 when the device context is lost, so a
-- runner (tests/gpu/test_cuda.sh) can go on in a fresh process from the next test.
package.path = "tests/?.lua;" .. package.path
local T = require "testlib"
local files = {}
if #arg > 0 then
  for i = 1, #arg do files[#files + 1] = arg[i] end
else
  local p = io.popen("ls " .. (os.getenv("VTL_TEST_DIR") or "tests") .. "/test_*.lua")
  for f in p:lines() do files[#files + 1] = f end
  p:close()
end
local passed, failed, skipped = 0, 0, 0
local filter = os.getenv("VTL_TEST_FILTER")
local from = tonumber(os.getenv("VTL_TEST_FROM") or "1") or 1
local verbose = os.getenv("VTL_TEST_VERBOSE")
local check_cuda = os.getenv("VTL_TEST_CHECK_CUDA") == "1"
local vtl = require "vtl"
for _, f in ipairs(files) do
  T.tests = {}
  local chunk, err = loadfile(f)
  if not chunk then
    print("FAIL " .. f .. ": " .. err); failed = failed + 1
  else
    local ok, lerr = xpcall(chunk, debug.traceback)
    if not ok then print("FAIL " .. f .. " (load): " .. lerr); failed = failed + 1 end
    for k, t in ipairs(T.tests) do
      if k < from then -- luacheck: ignore 542
      elseif t.skip and (not filter or t.name:find(filter, 1, true)) then
        skipped = skipped + 1
        print(string.format("SKIP %s :: %s (%s)", f, t.name, t.skip))
      elseif not filter or t.name:find(filter, 1, true) then
        if verbose then io.stdout:write(string.format("START %d %s\n", k, t.name)); io.stdout:flush() end
        local t0 = vtl.clock()
        local tok, terr = xpcall(t.fn, debug.traceback)
        collectgarbage()
        if tok then passed = passed + 1
        else failed = failed + 1; print(string.format("FAIL %s :: %s\n  %s", f, t.name, terr:gsub("\n", "\n  "))) end
        if verbose then print(string.format("  %s %s (%.2fs)", tok and "ok  " or "FAIL", t.name, vtl.clock() - t0)); io.stdout:flush() end
        if check_cuda and vtl.cuda.is_available() then
          local sok, serr = pcall(vtl.cuda.synchronize)
          if not sok then
            print(string.format("CUDA CONTEXT LOST after test %d (%s): %s", k, t.name, serr))
            print(string.format("lua: %d passed, %d failed, %d skipped", passed, failed, skipped))
            io.stdout:flush()
            os.exit(3)
          end
        end
      end
    end
  end
end
print(string.format("lua: %d passed, %d failed, %d skipped", passed, failed, skipped))
os.exit(failed == 0 and 0 or 1)
