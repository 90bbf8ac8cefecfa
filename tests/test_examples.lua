-- The flagship recipe runs end to end (its --quick form) and learns: pretrained features beat
-- training from scratch on the same small data.
local T = require "testlib"
local vtl = require "vtl"
local test = T.test

local function run_quick()
  local dir = os.tmpname()
  os.remove(dir)
  local cmd = (os.getenv("VTL") or "./vtl") .. " examples/finetune_fashion.lua --quick --set run_dir=" .. dir .. " 2>&1"
  local p = io.popen(cmd)
  local out = p:read("a")
  local ok = p:close()
  T.truthy(ok, "the recipe failed:\n" .. out)
  return out, dir
end

if os.getenv("VTL_SAN") then
  T.skip("examples/finetune_fashion.lua --quick", "too slow under the sanitizers; runs in the plain build")
else
  test("examples/finetune_fashion.lua --quick: four strategies, a table, a run directory", function()
    local out, dir = run_quick()
    for _, key in ipairs {"(a) from scratch", "(b) head only", "(c) fine_tune", "(d) progressive"} do
      T.truthy(out:find(key, 1, true), "the table lists " .. key .. ":\n" .. out)
    end
    local m = vtl.json.decode(T.readfile(dir .. "/metrics.json"))
    for _, k in ipairs {"a", "b", "c", "d"} do
      T.truthy(m[k].accuracy >= 0 and m[k].accuracy <= 1 and m[k].f1_macro >= 0, k)
    end
    -- 10 classes: chance is 0.1; the frozen pretrained base must do clearly better, and better
    -- than the same network trained from scratch on these 200 images
    T.truthy(m.b.accuracy > 0.3, "head on pretrained features: accuracy " .. m.b.accuracy)
    T.truthy(m.b.accuracy > m.a.accuracy, ("pretrained %.3f vs scratch %.3f"):format(m.b.accuracy, m.a.accuracy))
    T.eq(#m.confusion_matrix, 10)
    local cfg = vtl.json.decode(T.readfile(dir .. "/config.json"))
    T.eq(cfg.per_class, 20)
    T.truthy(T.readfile(dir .. "/recipe.lua"):find("finetune_fashion", 1, true))
    T.truthy(vtl.json.decode(T.readfile(dir .. "/data.json")).train.hash ~= nil)
    T.truthy(T.readfile(dir .. "/report/report.md"):find("## History", 1, true), "the fine-tuned model's report")
    T.truthy(vtl.image.load(dir .. "/report/confusion_matrix.png").shape[1] > 100)
    os.execute("rm -rf '" .. dir .. "'")
  end)
end
