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

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local ok = p:close()
  T.truthy(ok, cmd .. " failed:\n" .. out)
  return out
end

if os.getenv("VTL_SAN") then
  T.skip("examples/recipes and finetune_folder.lua", "too slow under the sanitizers; run in the plain build")
else
  test("every recipe in examples/recipes runs (small settings) and writes its run directory", function()
    local vtlbin = os.getenv("VTL") or "./vtl"
    local tmp = os.tmpname()
    os.remove(tmp)
    for _, name in ipairs {"head_only", "fine_tune", "progressive_unfreezing", "discriminative_lr", "mixup_cutmix", "lr_find", "resume"} do
      local dir = tmp .. "/" .. name
      local extra = name == "resume" and (" --set checkpoint=" .. tmp .. "/ckpt") or ""
      local out = sh(string.format("%s examples/recipes/%s.lua --set model=small_cnn --set pretrained=false --set size=32 " ..
        "--set per_class=8 --set epochs=2 --set batch_size=16 --set workers=1 --set run_dir=%s%s", vtlbin, name, dir, extra))
      T.truthy(out:find("validation accuracy", 1, true), name .. ":\n" .. out)
      local m = vtl.json.decode(T.readfile(dir .. "/metrics.json"))
      T.truthy(m.accuracy >= 0 and m.accuracy <= 1, name)
      T.truthy(T.readfile(dir .. "/report/report.md") ~= nil, name .. ": report")
    end
    -- resume: a second run continues from the checkpoint the first one left
    local again = sh(string.format("%s examples/recipes/resume.lua --set model=small_cnn --set pretrained=false --set size=32 " ..
      "--set per_class=8 --set epochs=2 --set batch_size=16 --set workers=1 --set run_dir=%s/resume2 --set checkpoint=%s/ckpt",
      vtlbin, tmp, tmp))
    T.truthy(again:find("resuming from", 1, true), again)
    os.execute("rm -rf '" .. tmp .. "'")
  end)

  test("examples/finetune_folder.lua on an image folder", function()
    local vtlbin = os.getenv("VTL") or "./vtl"
    local tmp = os.tmpname()
    os.remove(tmp)
    local g = vtl.Generator(3)
    for c, name in ipairs {"circles", "squares"} do
      os.execute("mkdir -p '" .. tmp .. "/imgs/" .. name .. "'")
      for j = 1, 8 do
        local img = vtl.randint(0, 60, {40, 48, 3}, {generator = g}):to("u8") + (c == 1 and 150 or 0)
        vtl.image.save(string.format("%s/imgs/%s/%d.%s", tmp, name, j, j % 2 == 0 and "png" or "jpg"), img:to("u8"))
      end
    end
    T.writefile(tmp .. "/imgs/squares/broken.jpg", "not a jpeg")
    local out = sh(string.format("%s examples/finetune_folder.lua %s/imgs --set size=32 --set epochs=1 --set lr=0.01 " ..
      "--set batch_size=8 --set workers=1 --set auto_augment= --set run_dir=%s/run", vtlbin, tmp, tmp))
    T.truthy(out:find("2 classes", 1, true), out)
    T.truthy(out:find("precision", 1, true), out)
    T.truthy(out:find("skipped 1 unreadable sample", 1, true), "the broken file is skipped and counted:\n" .. out)
    T.truthy(T.readfile(tmp .. "/run/best.safetensors") ~= nil, "best weights saved")
    local usage = io.popen(vtlbin .. " examples/finetune_folder.lua 2>&1")
    local text = usage:read("a")
    T.eq(usage:close(), nil, "no folder: exit status 2")
    T.truthy(text:find("usage:", 1, true), text)
    os.execute("rm -rf '" .. tmp .. "'")
  end)
end
