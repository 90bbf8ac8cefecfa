-- Runs tests/test_*.lua (or the files given as arguments) and prints "N passed, N failed,
-- N skipped" (skipped: registered with skip(name, reason), e.g. GPU tests without a GPU).
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
for _, f in ipairs(files) do
  T.tests = {}
  local chunk, err = loadfile(f)
  if not chunk then
    print("FAIL " .. f .. ": " .. err); failed = failed + 1
  else
    local ok, lerr = xpcall(chunk, debug.traceback)
    if not ok then print("FAIL " .. f .. " (load): " .. lerr); failed = failed + 1 end
    for _, t in ipairs(T.tests) do
      if t.skip and (not filter or t.name:find(filter, 1, true)) then
        skipped = skipped + 1
        print(string.format("SKIP %s :: %s (%s)", f, t.name, t.skip))
      elseif not filter or t.name:find(filter, 1, true) then
        local t0 = os.clock()
        local tok, terr = xpcall(t.fn, debug.traceback)
        collectgarbage()
        if tok then passed = passed + 1
        else failed = failed + 1; print(string.format("FAIL %s :: %s\n  %s", f, t.name, terr:gsub("\n", "\n  "))) end
        if os.getenv("VTL_TEST_VERBOSE") then print(string.format("  %s %s (%.2fs)", tok and "ok  " or "FAIL", t.name, os.clock() - t0)) end
      end
    end
  end
end
print(string.format("lua: %d passed, %d failed, %d skipped", passed, failed, skipped))
os.exit(failed == 0 and 0 or 1)
