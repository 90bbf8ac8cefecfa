-- PyTorch checkpoints (vtl.load / vtl.load_pth), state-dict files (vtl.load_state_dict_file),
-- JSON (vtl._json_decode) and timm hub folders (vtl.hub) against files written by torch.save,
-- safetensors and timm (tests/ref/gen_pth.py): every value, the unwrapping and prefix rules,
-- and a clear error with the process intact for each malicious or malformed file.
local T = require "testlib"
local R = require "reflib"
local vtl = require "vtl"
local hub = require "vtl.hub"
local nn = vtl.nn
local F = nn.functional

local DIR = (os.getenv("VTL_FIXTURES") or "build/fixtures") .. "/pth"
local BAD = DIR .. "/bad"
local HUB = DIR .. "/hub"

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function need_fixtures()
  if not exists(DIR .. "/plain.pth") then error("reference files missing (run tests/ref/gen_pth.py)") end
end

local function shape_str(t) return R.shape_str(t.shape) end

-- same dtype, shape and exact values
local function same_tensor(got, want, label)
  local msg = R.compare(got, want, 0, label)
  if msg then error(msg, 2) end
end

local function count(t)
  local n = 0
  for _ in next, t do n = n + 1 end
  return n
end

local TINY_KEYS = {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                   "bn1.num_batches_tracked", "fc.weight", "fc.bias"}

-- twin of gen_pth.py's Tiny
local Tiny = nn.Module:extend("PthTiny")
function Tiny:init(opts)
  opts = opts or {}
  self.conv1 = nn.Conv2d(3, 4, 3, {padding = 1, bias = false})
  self.bn1 = nn.BatchNorm2d(4)
  self.fc = nn.Linear(4, opts.num_classes or 5)
end
function Tiny:forward(x) return self.fc(F.relu(self.bn1(self.conv1(x))):mean({3, 4})) end

-- ---- state dicts ----

T.test("plain state_dict: every tensor, PyTorch's key order, and a forward pass that matches", function()
  need_fixtures()
  local ref = vtl.load(DIR .. "/plain.safetensors")
  local sd, order = vtl.load(DIR .. "/plain.pth")
  T.eq(table.concat(order[sd], " "), table.concat(TINY_KEYS, " "), "key order")
  T.eq(count(sd), #TINY_KEYS, "number of entries")
  for _, k in ipairs(TINY_KEYS) do same_tensor(sd[k], ref[k], k) end
  T.eq(sd["bn1.num_batches_tracked"].ndim, 0, "0-d num_batches_tracked")
  T.eq(sd["bn1.num_batches_tracked"]:item(), 12)
  local sd2 = vtl.load_pth(DIR .. "/plain.pth")
  same_tensor(sd2["fc.weight"], ref["fc.weight"], "load_pth")
  local m = Tiny()
  m:load_state_dict(sd)
  m:eval()
  T.close(m(ref["io/x"]), ref["io/y"], 1e-5, "Tiny forward with the loaded weights")
end)

T.test("a training checkpoint: every Python value kind", function()
  need_fixtures()
  local c, order = vtl.load_pth(DIR .. "/ckpt.pth")
  T.eq(c.epoch, 3)
  T.eq(math.type(c.epoch), "integer")
  T.eq(c.arch, "tiny")
  T.eq(c.best_acc, 0.875)
  T.eq(c.flags[1], true); T.eq(c.flags[2], false); T.eq(c.flags[3], nil); T.eq(c.flags[4], 1)
  local ints = {0, -1, 255, 256, 65535, 65536, -2 ^ 31, 2 ^ 31, 2 ^ 40, -2 ^ 40, math.maxinteger, math.mininteger}
  T.eq(#c.ints, #ints, "ints")
  for i, v in ipairs(ints) do
    T.eq(math.type(c.ints[i]), "integer", "ints[" .. i .. "] is an integer")
    T.eq(c.ints[i], math.tointeger(v), "ints[" .. i .. "]")
  end
  T.eq(c.floats[1], 1.5); T.eq(c.floats[2], -2.25e-7); T.eq(c.floats[3], 1e300); T.eq(c.floats[4], math.huge)
  T.eq(math.type(c.floats[1]), "float")
  T.eq(c.text, "h\u{e9}llo \u{2713}")
  T.eq(c.raw, "\0\1abc")
  T.eq(c.nested.a.b[1], 1)
  T.eq(c.nested.a.b[2].c, "deep")
  T.eq(c.int_keys[0], "zero"); T.eq(c.int_keys[7], "seven"); T.eq(c.int_keys[-3], "minus")
  T.eq(c.float_keys[0.5], "half")
  T.eq(c.tuple_in_list[1][1], 1); T.eq(c.tuple_in_list[1][2], 2); T.eq(#c.tuple_in_list[2], 0)
  T.eq(next(c.empty_list), nil); T.eq(next(c.empty_dict), nil)
  T.eq(c.none, nil)
  T.truthy(rawequal(c.same_twice[1], c.same_twice[2]), "a shared list stays one table")
  T.eq(table.concat(order[c.ordered], ","), "z,a,m", "OrderedDict order")
  T.eq(c.ordered.z, 1)
  -- keys in file order, including the one whose value is None
  local top = table.concat(order[c], ",")
  T.truthy(top:find("^state_dict,epoch,optimizer,arch,best_acc,flags,") and top:find(",none,"), top)
  -- optimizer state: integer keys as PyTorch wrote them (0-based parameter ids)
  local ref = vtl.load(DIR .. "/ckpt.safetensors")
  local pg = c.optimizer.param_groups[1]
  T.eq(pg.lr, 0.1); T.eq(pg.momentum, 0.9); T.eq(pg.nesterov, false)
  T.eq(#pg.params, 5)
  for i = 1, 5 do T.eq(pg.params[i], i - 1) end
  for i = 0, 4 do same_tensor(c.optimizer.state[i].momentum_buffer, ref["momentum/" .. i], "momentum " .. i) end
  for _, k in ipairs(TINY_KEYS) do same_tensor(c.state_dict[k], ref["sd/" .. k], "state_dict " .. k) end
end)

T.test("load_state_dict_file: unwrapping, prefixes, order, safetensors", function()
  need_fixtures()
  local ref = vtl.load(DIR .. "/ckpt.safetensors")
  local sd, keys = vtl.load_state_dict_file(DIR .. "/ckpt.pth")
  T.eq(table.concat(keys, " "), table.concat(TINY_KEYS, " "), "unwrapped state_dict keys in file order")
  for _, k in ipairs(TINY_KEYS) do same_tensor(sd[k], ref["sd/" .. k], k) end
  local seen = {}
  for k in pairs(sd) do seen[#seen + 1] = k end
  T.eq(table.concat(seen, " "), table.concat(TINY_KEYS, " "), "pairs() walks the file order")
  T.raises(function() vtl.load_state_dict_file(DIR .. "/ckpt.pth", {key = "optimizer"}) end, "holds no tensors by name")
  T.raises(function() vtl.load_state_dict_file(DIR .. "/ckpt.pth", {key = "nope"}) end,
    "has no entry 'nope' holding a state dict (its keys: arch, best_acc")
  -- DataParallel's "module." prefix
  local plain = vtl.load(DIR .. "/plain.pth")
  local raw = vtl.load(DIR .. "/dp.pth")
  T.truthy(raw["module.conv1.weight"] ~= nil, "load keeps the file's keys")
  local dp, dkeys = vtl.load_state_dict_file(DIR .. "/dp.pth")
  T.eq(table.concat(dkeys, " "), table.concat(TINY_KEYS, " "), "module. stripped")
  T.eq(dp["module.conv1.weight"], nil)
  local kept = vtl.load_state_dict_file(DIR .. "/dp.pth", {strip_prefix = false})
  T.truthy(kept["module.fc.bias"] ~= nil, "strip_prefix = false keeps the prefix")
  local bn = hub.load_state_dict_file(DIR .. "/plain.pth", {strip_prefix = "bn1."})
  T.truthy(bn["conv1.weight"] ~= nil, "a prefix not on every key is left alone")
  -- {"model": {"_orig_mod.<key>": ...}}
  local comp, ckeys = vtl.load_state_dict_file(DIR .. "/compiled.pth")
  T.eq(table.concat(ckeys, " "), table.concat(TINY_KEYS, " "), "model unwrapped, _orig_mod. stripped")
  same_tensor(comp["fc.weight"], plain["fc.weight"], "compiled fc.weight")
  -- safetensors: sorted keys
  local st, skeys = vtl.load_state_dict_file(DIR .. "/plain.safetensors")
  T.eq(table.concat(skeys, " "), table.concat(R.sorted_keys(st), " "), "safetensors keys sorted")
  same_tensor(st["bn1.running_var"], plain["bn1.running_var"], "safetensors tensor")
  -- a module loads it directly
  local m = Tiny()
  local missing, unexpected = m:load_state_dict(vtl.load_state_dict_file(DIR .. "/dp.pth"))
  T.eq(#missing + #unexpected, 0)
  -- not state dicts
  vtl.save(DIR .. "/one.npy", vtl.ones(2))
  T.raises(function() vtl.load_state_dict_file(DIR .. "/one.npy") end, "holds a single tensor (.npy)")
  T.raises(function() vtl.load_state_dict_file(DIR .. "/missing.pth") end, "cannot open")
  T.raises(function() vtl.load_state_dict_file(DIR .. "/storage.pth") end, "holds a single tensor")
  T.raises(function() vtl.load_state_dict_file(42) end, "expected a path")
end)

T.test("tensors sharing a storage stay views of one storage", function()
  need_fixtures()
  local ref = vtl.load(DIR .. "/shared.safetensors")
  local v = vtl.load_pth(DIR .. "/shared.pth")
  for _, k in ipairs({"base", "row", "col", "t", "narrow", "flat", "expanded", "other"}) do
    same_tensor(v[k], ref[k], k)
  end
  T.eq(table.concat(v.t:stride(), ","), "1,6", "transposed strides")
  T.truthy(not v.t:is_contiguous(), "transpose is not contiguous")
  T.eq(table.concat(v.col:stride(), ","), "6"); T.eq(v.col:storage_offset(), 2)
  T.eq(v.row:storage_offset(), 6)
  T.eq(table.concat(v.narrow:stride(), ","), "6,1"); T.eq(v.narrow:storage_offset(), 8)
  T.eq(v.flat:storage_offset(), 5)
  T.eq(table.concat(v.expanded:stride(), ","), "1,0", "expanded (stride 0)")
  T.truthy(rawequal(v.twice[1], v.twice[2]) and rawequal(v.twice[1], v.base), "one tensor stays one userdata")
  T.truthy(rawequal(v.self_list[1], v.self_list), "a list that holds itself")
  -- one storage: a write through one view shows in the others
  v.base:fill_(-1)
  T.eq(v.t:sum():item(), -24); T.eq(v.row:sum():item(), -6); T.eq(v.flat:sum():item(), -6)
  T.eq(v.other:sum():item(), 30, "a separate storage is untouched")
end)

T.test("dtypes, 0-d, empty, Parameter; storage types widened", function()
  need_fixtures()
  local ref = vtl.load(DIR .. "/dtypes.safetensors")
  local v = vtl.load_pth(DIR .. "/dtypes.pth")
  local want_dtype = {f32 = "f32", f64 = "f64", f16 = "f16", bf16 = "bf16", i64 = "i64", i32 = "i32", i16 = "i32",
                      i8 = "i32", u8 = "u8", bool = "bool", scalar = "f32", empty = "f32", param = "f32"}
  for k, dt in pairs(want_dtype) do
    T.eq(v[k].dtype, dt, k .. " dtype")
    same_tensor(v[k], ref[k], k) -- safetensors widens I16/I8 to i32 the same way
  end
  T.eq(v.i64:totable()[5], math.maxinteger); T.eq(v.i64:totable()[6], math.mininteger)
  T.eq(table.concat(v.i16:totable(), ","), "-32768,1,32767")
  T.eq(table.concat(v.i8:totable(), ","), "-128,0,127")
  T.eq(v.scalar.ndim, 0); T.eq(v.scalar:item(), 2.5)
  T.eq(shape_str(v.empty), "{0,3}")
  T.eq(v.param.requires_grad, false, "a loaded Parameter is a plain tensor")
  local s = vtl.load(DIR .. "/storage.pth")
  T.eq(s.dtype, "i32"); T.eq(table.concat(s:totable(), ","), "0,1,2,3,4", "a bare storage is a 1-D tensor")
end)

T.test("saved from cuda:0, and ZIP64 archives: loaded to the CPU", function()
  need_fixtures()
  local ref = vtl.load(DIR .. "/plain.safetensors")
  local c = vtl.load(DIR .. "/cuda.pth")
  local z = vtl.load(DIR .. "/zip64.pth")
  for _, k in ipairs(TINY_KEYS) do
    T.eq(c[k].device, "cpu", k .. " device")
    same_tensor(c[k], ref[k], "cuda " .. k)
    same_tensor(z[k], ref[k], "zip64 " .. k)
  end
end)

-- ---- hostile and malformed files ----

local BAD_FILES = {
  {"os_system.pth", "refusing to load global 'posix.system' (only tensors, storages and containers are allowed)"},
  {"eval.pth", "refusing to load global 'builtins.eval'"},
  {"popen_p4.pth", "refusing to load global 'subprocess.Popen'"},
  {"partial.pth", "refusing to load global 'functools.partial'"},
  {"truncated.pth", "truncated or damaged zip archive: no end-of-central-directory record"},
  {"not_zip.pth", "zip archive"},
  {"cd_past_end.pth", "the central directory (offset 3231, 583 bytes) extends past the end of the archive"},
  {"local_header_past_end.pth", "has its local header at offset 2147483632, past the entries' data"},
  {"entry_count.pth", "the central directory claims 60000 entries"},
  {"deflated.pth", "is compressed (method 8, deflate)"},
  {"no_data_pkl.pth", "a zip archive without a data.pkl record: not a PyTorch checkpoint"},
  {"big_endian.pth", "saved with byte order 'big'"},
  {"storage_short.pth", "storage '0' claims 108 elements of torch.FloatStorage, more than its record's 8 bytes hold"},
  {"storage_missing.pth", "storage '0' has no record 'plain/data/0'"},
  {"offset_beyond.pth", "a tensor of size {4}, stride {1} at storage offset 3 reaches beyond storage '0' (4 elements"},
  {"stride_beyond.pth", "a tensor of size {2,2}, stride {3,1} at storage offset 0 reaches beyond storage '0'"},
  {"numel_beyond.pth", "storage '0' claims 1099511627776 elements"},
  {"not_storage.pth", "_rebuild_tensor_v2: argument 1 is not a storage (got int)"},
  {"foo_storage.pth", "unknown storage type 'torch.FooStorage'"},
  {"complex.pth", "unknown storage type 'torch.ComplexFloatStorage'"},
  {"bare_class.pth", "holds the class or function 'torch.FloatStorage' itself"},
  {"legacy.pth", "PyTorch's legacy format"},
  {"legacy_p4.pth", "PyTorch's legacy format"},
  {"script.pt", "a TorchScript archive (torch.jit.save)"},
  {"deep.pth", "values nest deeper than 200 levels"},
  {"underflow.pth", "data.pkl byte 2 (APPEND): pickle stack underflow"},
  {"reduce_underflow.pth", "(REDUCE): pickle stack underflow"},
  {"memo.pth", "(BINGET): memo index 5 out of range"},
  {"memo_huge.pth", "(LONG_BINPUT): memo index 4294967280 out of range"},
  {"huge_len.pth", "(BINUNICODE): a length of 2147483647 bytes runs past the end of data.pkl"},
  {"huge_len8.pth", "(BINUNICODE8): a length of 9223372036854775807 bytes runs past the end"},
  {"no_stop.pth", "data.pkl ends without a STOP opcode"},
  {"empty.pth", "data.pkl ends without a STOP opcode"},
  {"text_opcode.pth", "opcode INT is not supported"},
  {"unknown_opcode.pth", "unknown pickle opcode 0xff"},
  {"long_wide.pth", "(LONG1): an integer wider than 64 bits"},
  {"no_mark.pth", "(TUPLE): no MARK on the pickle stack"},
  {"setitem_list.pth", "(SETITEM): sets an item on a list, not a dict"},
  {"protocol9.pth", "pickle protocol 9 is not supported"},
}

T.test("malicious and malformed checkpoints: a clear error naming the file, nothing run, process intact", function()
  need_fixtures()
  for _, case in ipairs(BAD_FILES) do
    local path = BAD .. "/" .. case[1]
    local err = T.raises(function() vtl.load(path) end, case[2])
    T.truthy(err:find("load: " .. path .. ": ", 1, true), case[1] .. ": the message names the file: " .. err)
    T.raises(function() vtl.load_pth(path) end, case[2])
    T.raises(function() vtl.load_state_dict_file(path) end, case[2])
  end
  T.truthy(not exists(BAD .. "/PWNED"), "no pickled call ran (marker file exists)")
  collectgarbage()
  -- still working after all of that
  same_tensor(vtl.load(DIR .. "/plain.pth")["fc.bias"], vtl.load(DIR .. "/plain.safetensors")["fc.bias"], "after errors")
  T.raises(function() vtl.load_pth(DIR .. "/plain.safetensors") end, "not a zip archive")
  T.raises(function() vtl.load_pth(DIR .. "/nope.pth") end, "cannot open")
  T.raises(function() vtl.load_pth(DIR) end, "not a regular file")
end)

T.test("checkpoints cut at every length fail cleanly", function()
  need_fixtures()
  local data = T.readfile(DIR .. "/shared.pth")
  local path = DIR .. "/cut.pth"
  local step = math.max(1, #data // 97)
  for n = 0, #data - 1, step do
    T.writefile(path, data:sub(1, n))
    local ok = pcall(vtl.load_pth, path)
    T.truthy(not ok, "a checkpoint cut to " .. n .. " bytes loaded")
  end
  -- damage inside data.pkl: every byte flipped in turn, within the stored record
  local pkl_at = data:find("shared/data.pkl", 1, true)
  local start = pkl_at + #"shared/data.pkl"
  for i = start, math.min(#data, start + 400) do
    local b = data:byte(i)
    T.writefile(path, data:sub(1, i - 1) .. string.char((b + 0x55) % 256) .. data:sub(i + 1))
    local ok, err = pcall(vtl.load_pth, path)
    T.truthy(ok or tostring(err):find("load: " .. path, 1, true), "flipped byte " .. i .. ": " .. tostring(err))
  end
  os.remove(path)
end)

-- ---- JSON ----

T.test("_json_decode", function()
  local v = vtl._json_decode('{"a": [1, 2.5, "x", true, false, null, {"b": null}], "n": -3, "big": 1e300, "s": "\\u00e9\\n"}')
  T.eq(v.a[1], 1); T.eq(math.type(v.a[1]), "integer"); T.eq(v.a[2], 2.5); T.eq(v.a[3], "x")
  T.eq(v.a[4], true); T.eq(v.a[5], false); T.eq(v.a[6], nil); T.eq(next(v.a[7]), nil)
  T.eq(v.n, -3); T.eq(v.big, 1e300); T.eq(v.s, "\u{e9}\n")
  T.eq(vtl._json_decode("[]")[1], nil)
  T.eq(vtl._json_decode(" 7 "), 7)
  T.raises(function() vtl._json_decode('{"a": 1,,}', "cfg.json") end, "json: cfg.json: invalid JSON at byte")
  T.raises(function() vtl._json_decode('{"a":\n 1,,}') end, "(line 2)")
  T.raises(function() vtl._json_decode("[1] x") end, "invalid JSON")
  T.raises(function() vtl._json_decode("") end, "invalid JSON")
  T.raises(function() vtl._json_decode("[1]\0") end, "contains a NUL byte")
  T.raises(function() vtl._json_decode(string.rep("[", 300) .. string.rep("]", 300)) end, "nests deeper than 200 levels")
  T.raises(function() vtl._json_decode(string.rep("[", 5000) .. string.rep("]", 5000)) end, "invalid JSON")
end)

-- ---- hub folders ----

T.test("hub.read_folder: timm's config.json and model.safetensors", function()
  need_fixtures()
  local info = hub.read_folder(HUB .. "/tiny/")
  T.eq(info.architecture, "pth_test_tiny")
  T.eq(info.num_classes, 5); T.eq(info.num_features, 4); T.eq(info.global_pool, "avg")
  T.eq(info.model_args.width, 1)
  local c = info.pretrained_cfg
  T.eq(table.concat(c.input_size, ","), "3,32,32"); T.eq(c.mean[2], 0.456); T.eq(c.std[3], 0.225)
  T.eq(c.crop_pct, 0.95); T.eq(c.interpolation, "bicubic"); T.eq(c.classifier, "fc"); T.eq(c.first_conv, "conv1")
  T.eq(c.num_classes, 5, "num_classes from the top level wins")
  T.eq(table.concat(c.label_names, ","), "ant,bee,cat,dog,eel")
  T.eq(c.label_descriptions.eel, "an eel")
  T.eq(c.hf_hub_id, nil)
  T.eq(info.weights_file, HUB .. "/tiny/model.safetensors")
  local ref = vtl.load(HUB .. "/tiny/model.safetensors")
  T.eq(#info.keys, #TINY_KEYS)
  for _, k in ipairs(TINY_KEYS) do same_tensor(info.state_dict[k], ref[k], k) end
  -- the same model as pytorch_model.bin; model.safetensors is preferred when both exist
  local bin = hub.read_folder(HUB .. "/tiny_bin")
  T.eq(bin.weights_file, HUB .. "/tiny_bin/pytorch_model.bin")
  T.eq(table.concat(bin.keys, " "), table.concat(TINY_KEYS, " "), "file order from the checkpoint")
  for _, k in ipairs(TINY_KEYS) do same_tensor(bin.state_dict[k], ref[k], "bin " .. k) end
  T.eq(hub.read_folder(HUB .. "/tiny_both").weights_file, HUB .. "/tiny_both/model.safetensors")
  local only = hub.read_folder(HUB .. "/tiny", {weights = false})
  T.eq(only.state_dict, nil); T.eq(only.architecture, "pth_test_tiny")
end)

T.test("hub.read_folder: the older config layout, sharded weights, broken folders", function()
  need_fixtures()
  local ref = vtl.load(HUB .. "/tiny/model.safetensors")
  local old = hub.read_folder(HUB .. "/tiny_old")
  T.eq(old.architecture, "pth_test_tiny"); T.eq(old.num_classes, 5); T.eq(old.num_features, 4)
  T.eq(old.pretrained_cfg.mean[1], 0.5); T.eq(old.pretrained_cfg.interpolation, "bilinear")
  T.eq(old.pretrained_cfg.architecture, nil)
  T.eq(table.concat(old.pretrained_cfg.label_names, ""), "abcde", "labels renamed label_names")
  T.eq(table.concat(old.keys, " "), table.concat(TINY_KEYS, " "), "module. stripped")
  local sh = hub.read_folder(HUB .. "/tiny_sharded")
  T.eq(sh.weights_file, HUB .. "/tiny_sharded/model.safetensors.index.json")
  T.eq(#sh.keys, #TINY_KEYS)
  for _, k in ipairs(TINY_KEYS) do same_tensor(sh.state_dict[k], ref[k], "sharded " .. k) end
  T.raises(function() hub.read_folder(HUB .. "/no_weights") end, "holds no weights (looked for model.safetensors")
  T.raises(function() hub.read_folder(HUB .. "/bad_json") end, "bad_json/config.json: invalid JSON at byte")
  T.raises(function() hub.read_folder(HUB .. "/no_arch") end, "has no \"architecture\"")
  T.raises(function() hub.read_folder(HUB .. "/deep_json") end, "nests deeper than 200 levels")
  T.raises(function() hub.read_folder(HUB .. "/missing") end, "missing/config.json not found")
  T.raises(function() hub.read_folder(nil) end, "expected a folder path")
end)

T.test("hub.create_model: the zoo's builder, the folder's weights and pretrained_cfg", function()
  need_fixtures()
  local ok, models = pcall(require, "vtl.models")
  T.truthy(ok, "vtl.models: " .. tostring(models))
  local registry = require "vtl.models.registry"
  local name = "pth_test_tiny"
  registry.register(name, {build = function(opts) return Tiny(opts) end,
                           cfg = {mean = {0, 0, 0}, std = {1, 1, 1}, input_size = {3, 8, 8}, classifier = "fc"}})
  local ok2, err = pcall(function()
    local ref = vtl.load(HUB .. "/tiny/model.safetensors")
    local m, info = hub.create_model(HUB .. "/tiny")
    T.eq(info.architecture, name)
    for _, k in ipairs(TINY_KEYS) do same_tensor(m:state_dict()[k], ref[k], k) end
    T.eq(m.pretrained_cfg.crop_pct, 0.95); T.eq(m.pretrained_cfg.mean[1], 0.485)
    T.eq(m.pretrained_cfg.label_names[5], "eel")
    local m3 = hub.create_model(HUB .. "/tiny", {num_classes = 3})
    T.eq(shape_str(m3.fc.weight), "{3,4}", "a new classifier")
    same_tensor(m3.conv1.weight, ref["conv1.weight"], "the rest is loaded")
    T.eq(m3.pretrained_cfg.num_classes, 3); T.eq(m3.pretrained_cfg.label_names, nil)
  end)
  registry.entries[name] = nil
  if not ok2 then error(err, 0) end
  T.raises(function() hub.create_model(HUB .. "/tiny") end, "architecture 'pth_test_tiny' is not in vtl's model zoo")
end)
