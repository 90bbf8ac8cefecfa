-- vtl.recipe: settings from the command line, run directories, data fingerprints, reruns.
local T = require "testlib"
local vtl = require "vtl"
local recipe = require "vtl.recipe"
local test = T.test

local TMP = os.tmpname()
os.remove(TMP)
os.execute("mkdir -p '" .. TMP .. "'")

test("config: defaults, --set with types, --config files, unknown keys refused", function()
  local d = {lr = 1e-3, epochs = 5, name = "a", aug = true, sizes = {1, 2}}
  local cfg, rest = recipe.config(d, {"--set", "lr=3e-4", "pos1", "--set=epochs=10", "--set", "aug=false",
                                      "--set", "sizes=[3,4,5]", "--set", "name=b c"})
  T.eq(cfg.lr, 3e-4); T.eq(math.type(cfg.lr), "float")
  T.eq(cfg.epochs, 10); T.eq(math.type(cfg.epochs), "integer")
  T.eq(cfg.aug, false); T.eq(#cfg.sizes, 3); T.eq(cfg.name, "b c")
  T.eq(rest[1], "pos1")
  T.eq(d.lr, 1e-3, "defaults untouched")
  T.raises(function() recipe.config(d, {"--set", "lrr=1"}) end, "unknown setting 'lrr' (settings: aug, epochs, lr, name, sizes)")
  T.raises(function() recipe.config(d, {"--set", "epochs=2.5"}) end, "expected an integer")
  T.raises(function() recipe.config(d, {"--set", "lr=fast"}) end, "expected a number")
  T.raises(function() recipe.config(d, {"--set", "aug=maybe"}) end, "expected true or false")
  T.raises(function() recipe.config(d, {"--set", "oops"}) end, "expected key=value")
  T.writefile(TMP .. "/c.json", '{"lr": 1, "epochs": 7}')
  local c2 = recipe.config(d, {"--config", TMP .. "/c.json", "--set", "epochs=8"})
  T.eq(c2.lr, 1.0); T.eq(math.type(c2.lr), "float"); T.eq(c2.epochs, 8)
  T.raises(function() recipe.config(d, {"--config", TMP .. "/none.json"}) end, "cannot read")
end)

test("start writes config, env and the recipe's text; fingerprints follow the data", function()
  local script = TMP .. "/r.lua"
  T.writefile(script, "-- a recipe\n")
  local run = recipe.start {name = "t", defaults = {lr = 0.1}, args = {"--set", "lr=0.5"}, dir = TMP .. "/run1", script = script}
  T.eq(run.config.lr, 0.5)
  T.eq(run.config.seed, 0)
  local cfg = vtl.json.decode(T.readfile(TMP .. "/run1/config.json"))
  T.eq(cfg.lr, 0.5)
  local env = vtl.json.decode(T.readfile(TMP .. "/run1/env.json"))
  T.eq(env.vtl, vtl.version); T.eq(env.lua, _VERSION)
  T.eq(T.readfile(TMP .. "/run1/recipe.lua"), "-- a recipe\n")
  -- image folders: file list and sizes
  os.execute("mkdir -p '" .. TMP .. "/imgs/a' '" .. TMP .. "/imgs/b'")
  vtl.image.save(TMP .. "/imgs/a/1.png", vtl.zeros({4, 4, 3}, {dtype = "u8"}))
  vtl.image.save(TMP .. "/imgs/b/2.png", vtl.ones({4, 4, 3}, {dtype = "u8"}))
  local f1 = run:fingerprint("train", vtl.data.ImageFolder(TMP .. "/imgs"))
  T.eq(f1.files, 2); T.eq(f1.kind, "files")
  T.eq(run:fingerprint("again", vtl.data.ImageFolder(TMP .. "/imgs")).hash, f1.hash)
  vtl.image.save(TMP .. "/imgs/b/2.png", vtl.full({5, 4, 3}, 7, {dtype = "u8"}))
  T.truthy(run:fingerprint("changed", vtl.data.ImageFolder(TMP .. "/imgs")).hash ~= f1.hash, "a changed file changes the hash")
  local x = vtl.rand({5, 3})
  local t1 = run:fingerprint("tensors", vtl.data.TensorDataset(x, vtl.arange(1, 6)))
  T.eq(run:fingerprint("same", vtl.data.TensorDataset(x:clone(), vtl.arange(1, 6))).hash, t1.hash)
  x[2][2] = 5
  T.truthy(run:fingerprint("edited", vtl.data.TensorDataset(x, vtl.arange(1, 6))).hash ~= t1.hash)
  local data = vtl.json.decode(T.readfile(TMP .. "/run1/data.json"))
  T.eq(data.train.hash, f1.hash)
  run:finish {accuracy = 0.5}
  T.eq(vtl.json.decode(T.readfile(TMP .. "/run1/metrics.json")).accuracy, 0.5)
end)

test("rerunning a run directory's recipe with its config reproduces its metrics exactly", function()
  local script = TMP .. "/train.lua"
  T.writefile(script, [[
local vtl = require "vtl"
local run = vtl.recipe.start{name = "tiny", defaults = {lr = 0.05, epochs = 2, seed = 1, hidden = 16}}
local cfg = run.config
local g = vtl.Generator(7)
local x = vtl.randn({64, 8}, {generator = g})
local y = (x:narrow(2, 1, 1):reshape({64}):gt(0)):to("i64") + 1
local ds = vtl.data.TensorDataset(x, y)
run:fingerprint("train", ds)
local nn = vtl.nn
local model = nn.Sequential(nn.Linear(8, cfg.hidden), nn.ReLU(), nn.Dropout(0.3), nn.Linear(cfg.hidden, 2))
local learn = vtl.train.Learner{model = model, train = ds, valid = ds, batch_size = 8, progress = false, seed = cfg.seed}
learn:fit_one_cycle(cfg.epochs, cfg.lr)
local r = learn:evaluate()
run:finish{valid_loss = r.loss, train_loss = learn.history[#learn.history].train_loss}
]])
  local vtlbin = os.getenv("VTL") or "./vtl"
  local function sh(cmd)
    local p = io.popen(cmd .. " 2>&1")
    local out = p:read("a")
    T.truthy(p:close(), cmd .. ": " .. out)
  end
  sh(vtlbin .. " " .. script .. " --set epochs=3 --set lr=0.1 --set run_dir=" .. TMP .. "/a")
  local first = T.readfile(TMP .. "/a/metrics.json")
  T.truthy(first and first:find("valid_loss"), "metrics written")
  T.eq(vtl.json.decode(T.readfile(TMP .. "/a/config.json")).epochs, 3)
  sh(vtlbin .. " " .. TMP .. "/a/recipe.lua --config " .. TMP .. "/a/config.json --set run_dir=" .. TMP .. "/b")
  T.eq(T.readfile(TMP .. "/b/metrics.json"), first, "the rerun's metrics")
  T.eq(vtl.json.decode(T.readfile(TMP .. "/b/data.json")).train.hash, vtl.json.decode(T.readfile(TMP .. "/a/data.json")).train.hash)
  sh(vtlbin .. " " .. script .. " --set epochs=3 --set lr=0.2 --set run_dir=" .. TMP .. "/c")
  T.truthy(T.readfile(TMP .. "/c/metrics.json") ~= first, "another lr gives other metrics")
end)
