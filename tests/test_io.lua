-- vtl.save / vtl.load: safetensors and .npy against files written by the safetensors library
-- and numpy (tests/ref/gen_io.py), round trips checked back in Python (tests/ref/check_io.py),
-- malformed files, and atomic saves.
local T = require "testlib"
local vtl = require "vtl"

local FIX = (os.getenv("VTL_FIXTURES") or "build/fixtures") .. "/io"
local VTL = os.getenv("VTL") or "./vtl"
local PY = os.getenv("VTL_PYTHON") or ".venv/bin/python"
local TMP = FIX .. "/tmp"

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
assert(os.execute("rm -rf " .. sh_quote(TMP) .. " && mkdir -p " .. sh_quote(TMP)))

local function tmp(name) return TMP .. "/" .. name end

local expected_cache
local function expected()
  if not expected_cache then
    local chunk, err = loadfile(FIX .. "/expected.lua")
    if not chunk then error("reference files missing (run tests/ref/gen_io.py): " .. err) end
    expected_cache = chunk()
  end
  return expected_cache
end

local write_file = T.writefile

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function flat(v, out)
  out = out or {}
  if type(v) == "table" then for i = 1, #v do flat(v[i], out) end else out[#out + 1] = v end
  return out
end

-- exact equality; NaN equals NaN; 0.0 and -0.0 differ
local function same(a, b)
  if type(a) == "boolean" or type(b) == "boolean" then return a == b end
  if a ~= a then return b ~= b end
  if a == 0 and b == 0 then return 1 / a == 1 / b end
  return a == b
end

-- x has the dtype, shape and exact values of want = {dtype=, shape=, values=}
local function check_tensor(x, want, label)
  T.truthy(vtl.is_tensor(x), label .. ": not a tensor")
  T.eq(x.dtype, want.dtype, label .. " dtype")
  T.eq(table.concat(x.shape, ","), table.concat(want.shape, ","), label .. " shape")
  local got = flat(x:totable())
  T.eq(#got, #want.values, label .. " element count")
  local bad, first = 0, nil
  for i = 1, #got do
    if not same(got[i], want.values[i]) then
      bad = bad + 1
      first = first or string.format("element %d: got %s, want %s", i, tostring(got[i]), tostring(want.values[i]))
    end
  end
  if bad > 0 then error(string.format("%s: %d values differ, first %s", label, bad, first), 2) end
end

local function check_dict(tensors, meta, want, label)
  local n = 0
  for name, w in pairs(want.tensors) do
    n = n + 1
    check_tensor(tensors[name], w, label .. " '" .. name .. "'")
  end
  local got_n = 0
  for _ in pairs(tensors) do got_n = got_n + 1 end
  T.eq(got_n, n, label .. ": number of tensors")
  local mn = 0
  for k, v in pairs(want.metadata) do mn = mn + 1; T.eq(meta[k], v, label .. " metadata '" .. k .. "'") end
  local got_mn = 0
  for _ in pairs(meta) do got_mn = got_mn + 1 end
  T.eq(got_mn, mn, label .. ": number of metadata entries")
end

-- what the reference libraries read from files vtl wrote: path -> expected-style entry
local function python_view(paths)
  local args = {}
  for i, p in ipairs(paths) do args[i] = sh_quote(p) end
  local p = assert(io.popen(PY .. " tests/ref/check_io.py " .. table.concat(args, " ") .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  if not ok then error("reference libraries refused a file vtl wrote:\n" .. out, 2) end
  return assert(load(out, "=check_io"))()
end

-- the exact values of a vtl tensor, as an expected entry
local function as_expected(x)
  return {dtype = x.dtype, shape = x.shape, values = flat(x:totable())}
end

-- runs a Lua script in a fresh vtl process under the shell prefix; returns output, ok, how
local function run_script(prefix, source)
  local script = tmp("script_" .. tostring(os.time()) .. "_" .. tostring(math.random(1e9)) .. ".lua")
  write_file(script, source)
  local p = assert(io.popen(prefix .. " exec " .. VTL .. " " .. sh_quote(script) .. " 2>&1"))
  local out = p:read("a")
  local ok, how, code = p:close()
  os.remove(script)
  return out, ok, how, code
end

local function list_dir(dir)
  local p = assert(io.popen("ls -A " .. sh_quote(dir)))
  local names = {}
  for l in p:lines() do names[#names + 1] = l end
  p:close()
  return names
end

-- a safetensors file from a header string and data bytes
local function st_bytes(header, data) return string.pack("<I8", #header) .. header .. (data or "") end
local function f32s(...) return string.pack("<" .. string.rep("f", select("#", ...)), ...) end

---------------------------------------------------------------------------------------------
-- files written by the reference libraries

T.test("io: safetensors written by the safetensors library load with exact values", function()
  local n = 0
  for file, want in pairs(expected().safetensors) do
    local tensors, meta = vtl.load(FIX .. "/" .. file)
    check_dict(tensors, meta, want, file)
    n = n + 1
  end
  T.truthy(n >= 5, "expected at least 5 safetensors reference files, found " .. n)
end)

T.test("io: safetensors dtypes map as documented", function()
  local t = vtl.load(FIX .. "/st_torch.safetensors")
  local want = {f32 = "f32", f64 = "f64", f16 = "f16", bf16 = "bf16", i64 = "i64", i32 = "i32", u8 = "u8",
                bool = "bool", i8 = "i32", i16 = "i32"}
  for name, dt in pairs(want) do T.eq(t[name].dtype, dt, name) end
  T.eq(#t.scalar.shape, 0, "0-d tensor keeps no dims")
  T.eq(t.scalar:item(), 2.5)
  T.eq(t.empty:numel(), 0)
  T.eq(t.i64:totable()[4], math.maxinteger, "i64 max is exact")
  T.eq(t.i64:totable()[5], math.mininteger, "i64 min is exact")
  T.eq(t.i64:totable()[3], 9007199254740993, "2^53+1 is exact")
  local u = vtl.load(FIX .. "/st_numpy.safetensors")
  T.eq(u.u16.dtype, "i32"); T.eq(u.u16:totable()[3], 65535)
  T.eq(u.u32.dtype, "i64"); T.eq(u.u32:totable()[1][2], 4294967295)
  T.eq(u.u64.dtype, "i64"); T.eq(u.u64:totable()[2], math.maxinteger)
end)

T.test("io: safetensors metadata comes back as a table, empty when absent", function()
  local _, meta = vtl.load(FIX .. "/st_torch.safetensors")
  T.eq(meta.format, "pt")
  T.eq(meta.note, 'ünïcode ✓ "quoted" \\ back')
  local _, none = vtl.load(FIX .. "/st_numpy.safetensors")
  T.eq(type(none), "table")
  T.eq(next(none), nil)
  local t, m = vtl.load(FIX .. "/st_no_tensors.safetensors")
  T.eq(next(t), nil, "no tensors")
  T.eq(m.only, "metadata")
end)

T.test("io: F8_E4M3 and F8_E5M2 decode exactly to f32", function()
  local t = vtl.load(FIX .. "/st_f8.safetensors")
  local e4 = flat(t.e4m3:totable())
  local e5 = flat(t.e5m2:totable())
  T.eq(t.e4m3.dtype, "f32")
  -- spot values from the OCP FP8 spec (index = code + 1)
  T.eq(e4[0x38 + 1], 1.0); T.eq(e4[0xB8 + 1], -1.0)
  T.eq(e4[0x7E + 1], 448.0, "E4M3 max")
  T.eq(e4[0x01 + 1], 2.0 ^ -9, "E4M3 smallest subnormal")
  T.eq(e4[0x08 + 1], 2.0 ^ -6, "E4M3 smallest normal")
  T.truthy(e4[0x7F + 1] ~= e4[0x7F + 1] and e4[0xFF + 1] ~= e4[0xFF + 1], "E4M3 S.1111.111 is NaN")
  T.eq(e4[0x78 + 1], 256.0, "E4M3 has no infinity: 0x78 is 256")
  T.eq(e5[0x3C + 1], 1.0)
  T.eq(e5[0x7B + 1], 57344.0, "E5M2 max")
  T.eq(e5[0x7C + 1], math.huge); T.eq(e5[0xFC + 1], -math.huge)
  T.truthy(e5[0x7D + 1] ~= e5[0x7D + 1], "E5M2 NaN")
  T.eq(e5[0x01 + 1], 2.0 ^ -16, "E5M2 smallest subnormal")
  T.eq(e5[0x04 + 1], 2.0 ^ -14, "E5M2 smallest normal")
  T.truthy(1 / e5[0x80 + 1] < 0, "E5M2 0x80 is -0")
end)

T.test("io: large widening read (several chunks) is exact", function()
  local t = vtl.load(FIX .. "/st_big.safetensors")
  T.eq(t.big.dtype, "i32")
  T.eq(t.big:numel(), 700000)
  local v = t.big:totable()
  local bad
  for i = 1, #v do
    if v[i] ~= (i - 1) % 65536 - 32768 then bad = i; break end
  end
  T.eq(bad, nil, "first wrong element")
  T.eq(t.tail:totable()[1], 9)
  local b = vtl.load(FIX .. "/big_be_f4.npy")
  T.eq(b.dtype, "f32")
  local w = b:totable()
  T.eq(#w, 300000)
  bad = nil
  for i = 1, #w do
    if w[i] ~= ((i - 1) % 1000) * 0.25 - 100 then bad = i; break end
  end
  T.eq(bad, nil, "first wrong element of the big-endian array")
end)

T.test("io: npy written by numpy load with exact values", function()
  local n = 0
  for file, want in pairs(expected().npy) do
    check_tensor(vtl.load(FIX .. "/" .. file), want, file)
    n = n + 1
  end
  T.truthy(n >= 25, "expected at least 25 npy reference files, found " .. n)
end)

T.test("io: npy Fortran order, big-endian and versions are really exercised", function()
  T.truthy(read_file(FIX .. "/fortran_f4.npy"):find("'fortran_order': True", 1, true), "fixture is Fortran-ordered")
  T.truthy(read_file(FIX .. "/be_f4.npy"):find("'>f4'", 1, true), "fixture is big-endian")
  T.eq(read_file(FIX .. "/v2.npy"):byte(7), 2)
  T.eq(read_file(FIX .. "/v3.npy"):byte(7), 3)
  local f = vtl.load(FIX .. "/fortran_f4.npy")
  T.eq(f:totable()[2][3][4], 23 - 5, "element [2][3][4] of arange(24)-5 in C order")
  T.truthy(f:is_contiguous(), "result is an ordinary row-major tensor")
end)

---------------------------------------------------------------------------------------------
-- round trips through vtl and the reference libraries

local function all_dtype_tensors()
  local x = vtl.tensor({{1.5, -2.25, 0}, {1e-3, 3e4, -0.0}})
  return {
    f32 = x,
    f64 = vtl.tensor({1 / 3, -1e300, 5e-324}, {dtype = "f64"}),
    f16 = vtl.tensor({{1, -0.5}, {65504, 2 ^ -24}}, {dtype = "f16"}),
    bf16 = vtl.tensor({1, -3.140625, 2 ^ 100}, {dtype = "bf16"}),
    i64 = vtl.tensor({math.maxinteger, math.mininteger, 9007199254740993, -1}, {dtype = "i64"}),
    i32 = vtl.tensor({{-2147483648, 2147483647}}, {dtype = "i32"}),
    u8 = vtl.tensor({0, 255, 128}, {dtype = "u8"}),
    bool = vtl.tensor({{true, false, true}}, {dtype = "bool"}),
    scalar = vtl.tensor(4.5),
    empty = vtl.zeros(0, 3),
    transposed = x:transpose(1, 2),                     -- not contiguous
    row = x:select(1, 2),                               -- contiguous with a storage offset
    ['odd "name" \\ ünï\n'] = vtl.tensor({7}, {dtype = "i32"}),
    ["layer1.0.conv1.weight"] = vtl.arange(24):float():reshape(2, 3, 2, 2),
  }
end

T.test("io: safetensors round trip through vtl, all dtypes, views, metadata", function()
  local src = all_dtype_tensors()
  T.truthy(not src.transposed:is_contiguous(), "the transposed input is a strided view")
  local path = tmp("rt.safetensors")
  vtl.save(path, src, {epoch = 3, lr = 0.5, name = "run ✓", big = 1e100})
  local t, meta = vtl.load(path)
  for name, x in pairs(src) do check_tensor(t[name], as_expected(x), "reloaded '" .. name .. "'") end
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  T.eq(n, 14)
  T.eq(meta.epoch, "3"); T.eq(meta.lr, "0.5"); T.eq(meta.name, "run ✓"); T.eq(meta.big, "1e+100")
end)

T.test("io: safetensors written by vtl read identically with the safetensors library", function()
  local src = all_dtype_tensors()
  local path = tmp("py.safetensors")
  vtl.save(path, src, {epoch = 3, note = 'q"uote\\'})
  local seen = python_view({path})[path]
  local want = {tensors = {}, metadata = {epoch = "3", note = 'q"uote\\'}}
  for name, x in pairs(src) do want.tensors[name] = as_expected(x) end
  -- the library sees the same tensors, dtypes, shapes, values and metadata
  for name, w in pairs(want.tensors) do
    local s = seen.tensors[name]
    T.truthy(s, "python sees tensor '" .. name .. "'")
    T.eq(s.dtype, w.dtype, name .. " dtype in python")
    T.eq(table.concat(s.shape, ","), table.concat(w.shape, ","), name .. " shape in python")
    T.eq(#s.values, #w.values, name .. " count in python")
    for i = 1, #w.values do
      if not same(s.values[i], w.values[i]) then
        error(string.format("'%s' element %d: python reads %s, vtl wrote %s", name, i, tostring(s.values[i]),
                            tostring(w.values[i])))
      end
    end
  end
  local n = 0
  for _ in pairs(seen.tensors) do n = n + 1 end
  T.eq(n, 14, "python sees exactly the saved tensors")
  T.eq(seen.metadata.epoch, "3"); T.eq(seen.metadata.note, 'q"uote\\')
end)

T.test("io: a file saved twice with the same contents is byte-identical", function()
  local src = all_dtype_tensors()
  vtl.save(tmp("same1.safetensors"), src, {a = "1", b = "2", c = "3"})
  vtl.save(tmp("same2.safetensors"), src, {c = "3", b = "2", a = "1"})
  T.truthy(read_file(tmp("same1.safetensors")) == read_file(tmp("same2.safetensors")), "files differ")
end)

T.test("io: npy round trip through vtl and numpy for every numpy dtype", function()
  local src = all_dtype_tensors()
  src.bf16 = nil
  src['odd "name" \\ ünï\n'] = nil
  for name, x in pairs(src) do
    local path = tmp("rt_" .. name .. ".npy")
    vtl.save(path, x)
    check_tensor(vtl.load(path), as_expected(x), "vtl reload of " .. name .. ".npy")
  end
end)

T.test("io: npy written by vtl reads identically in numpy", function()
  local src = all_dtype_tensors()
  local names = {"f32", "f64", "f16", "i64", "i32", "u8", "bool", "scalar", "empty", "transposed", "row"}
  local paths = {}
  for i, name in ipairs(names) do
    paths[i] = tmp("np_" .. name .. ".npy")
    vtl.save(paths[i], src[name])
  end
  local view = python_view(paths)
  for i, name in ipairs(names) do
    local seen = view[paths[i]]
    T.truthy(seen, "numpy read " .. paths[i])
    local w = as_expected(src[name])
    T.eq(seen.dtype, w.dtype, name .. " dtype in numpy")
    T.eq(table.concat(seen.shape, ","), table.concat(w.shape, ","), name .. " shape in numpy")
    T.eq(#seen.values, #w.values, name .. " count in numpy")
    for i = 1, #w.values do
      if not same(seen.values[i], w.values[i]) then
        error(string.format("%s element %d: numpy reads %s, vtl wrote %s", name, i, tostring(seen.values[i]),
                            tostring(w.values[i])))
      end
    end
  end
end)

---------------------------------------------------------------------------------------------
-- malformed safetensors: each raises an error naming the file and the problem

local bad_st = {
  {"empty.safetensors", "", "too short"},
  {"short.safetensors", "\1\0\0", "too short"},
  {"hlen_big.safetensors", string.pack("<I8", 1000) .. "{}", "larger than the rest of the file"},
  {"hlen_huge.safetensors", string.pack("<I8", 1 << 40) .. "{}", "exceeds the 100 MB limit"},
  {"notjson.safetensors", st_bytes("{not json"), "not valid JSON"},
  {"nul.safetensors", st_bytes("{}\0      "), "NUL byte"},
  {"notobj.safetensors", st_bytes("[1,2]   "), "not a JSON object"},
  {"entry_notobj.safetensors", st_bytes('{"a":3}'), "tensor 'a' header entry is a number"},
  {"dtype.safetensors", st_bytes('{"w":{"dtype":"F7","shape":[1],"data_offsets":[0,4]}}', f32s(1)), "unknown dtype 'F7'"},
  {"dtype_num.safetensors", st_bytes('{"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}', f32s(1)), "dtype is a number"},
  {"noshape.safetensors", st_bytes('{"w":{"dtype":"F32","data_offsets":[0,4]}}', f32s(1)), 'lacks "shape"'},
  {"nooffs.safetensors", st_bytes('{"w":{"dtype":"F32","shape":[1]}}', f32s(1)), 'lacks "data_offsets"'},
  {"negshape.safetensors", st_bytes('{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', f32s(1)),
   "shape entry 1 (-1) is not a non-negative integer"},
  {"floatshape.safetensors", st_bytes('{"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,4]}}', f32s(1)),
   "shape entry 1 (2.5) is not a non-negative integer"},
  {"strshape.safetensors", st_bytes('{"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}}', f32s(1, 2)),
   "shape entry 1 is a string"},
  {"shape_notarray.safetensors", st_bytes('{"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}}', f32s(1, 2)),
   "shape is a number, not an array"},
  {"dims.safetensors", st_bytes('{"w":{"dtype":"F32","shape":[' .. string.rep("1,", 16) .. '1],"data_offsets":[0,4]}}',
                                f32s(1)), "17 dimensions (at most 16"},
  {"overflow.safetensors", st_bytes('{"w":{"dtype":"F32","shape":[4503599627370496,4503599627370496],"data_offsets":[0,4]}}',
                                    f32s(1)), "is too large"},
  {"longarray.safetensors", st_bytes('{"w":{"dtype":"F32","shape":[' .. string.rep("1,", 999) .. '1],"data_offsets":[0,4]}}',
                                     f32s(1)), "array of more than 64 elements"},
  {"deep.safetensors", st_bytes(string.rep("[", 5000) .. string.rep("]", 5000)), "nests deeper than"},
  {"mismatch.safetensors", st_bytes('{"fc.weight":{"dtype":"F32","shape":[10,20],"data_offsets":[0,400]}}',
                                    string.rep("\0", 400)),
   "tensor 'fc.weight' data_offsets [0, 400] do not match shape {10,20} of F32 (800 bytes)"},
  {"backwards.safetensors", st_bytes('{"w":{"dtype":"U8","shape":[0],"data_offsets":[8,4]}}', string.rep("\0", 8)),
   "end before they begin"},
  {"offs_bad.safetensors", st_bytes('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}}', f32s(1)),
   "data_offsets must be [begin, end]"},
  {"out_of_range.safetensors", st_bytes('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', f32s(1)),
   "extend past the end of the data section"},
  {"overlap.safetensors", st_bytes('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' ..
                                   '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', f32s(1, 2, 3)),
   "tensors 'a' and 'b' overlap"},
  {"hole.safetensors", st_bytes('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},' ..
                                '"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}', f32s(1, 2, 3)),
   "hole: bytes [4, 8) before tensor 'b'"},
  {"tail.safetensors", st_bytes('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', f32s(1, 2)),
   "its last 4 bytes belong to no tensor"},
  {"dup.safetensors", st_bytes('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},' ..
                               '"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', f32s(1, 2)),
   "tensor name 'a' appears twice"},
  {"meta_num.safetensors", st_bytes('{"__metadata__":{"k":1}}'), "__metadata__ value of key 'k' is a number"},
  {"meta_arr.safetensors", st_bytes('{"__metadata__":[1]}'), "__metadata__ is an array, not an object"},
  {"meta_dup.safetensors", st_bytes('{"__metadata__":{"k":"1","k":"2"}}'), "__metadata__ key 'k' appears twice"},
  {"meta_twice.safetensors", st_bytes('{"__metadata__":{},"__metadata__":{}}'), "__metadata__ appears twice"},
  {"bool_byte.safetensors", st_bytes('{"m":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}}', "\1\7"),
   "tensor 'm' of dtype BOOL holds a byte other than 0 or 1 at element 2"},
}

T.test("io: malformed safetensors files raise errors naming the file and the problem", function()
  for _, case in ipairs(bad_st) do
    local path = tmp(case[1])
    write_file(path, case[2])
    local err = T.raises(function() vtl.load(path) end, case[3])
    T.truthy(err:find(path, 1, true), case[1] .. ": error does not name the file: " .. err)
    T.truthy(err:find("load: ", 1, true), case[1] .. ": error does not name the function: " .. err)
  end
  -- the process is intact: a good file still loads
  local t = vtl.load(FIX .. "/st_torch.safetensors")
  T.eq(t.scalar:item(), 2.5)
end)

T.test("io: truncated safetensors data is reported, not read past", function()
  local path = tmp("trunc_src.safetensors")
  vtl.save(path, {a = vtl.arange(10):float(), b = vtl.arange(5):float()})
  local whole = read_file(path)
  local cut = tmp("trunc.safetensors")
  write_file(cut, whole:sub(1, #whole - 3))
  local err = T.raises(function() vtl.load(cut) end, "extend past the end of the data section")
  T.truthy(err:find("file truncated", 1, true), err)
  T.truthy(err:find(cut, 1, true), err)
  write_file(cut, whole:sub(1, 20))
  T.raises(function() vtl.load(cut) end, "larger than the rest of the file")
end)

T.test("io: values a vtl dtype cannot hold are refused, naming the tensor", function()
  T.raises(function() vtl.load(FIX .. "/st_u64_over.safetensors") end,
           "tensor 'x' of dtype U64 holds a value above the i64 maximum at element 2")
  T.raises(function() vtl.load(FIX .. "/st_bad_bool.safetensors") end,
           "tensor 'flags' of dtype BOOL holds a byte other than 0 or 1 at element 3")
  T.raises(function() vtl.load(FIX .. "/u8_over.npy") end, "above the i64 maximum at element 2")
end)

T.test("io: files that are not there or not files", function()
  local err = T.raises(function() vtl.load(tmp("does_not_exist.safetensors")) end, "cannot open")
  T.truthy(err:find("does_not_exist.safetensors", 1, true), err)
  T.raises(function() vtl.load(TMP) end, "not a regular file")
  write_file(tmp("ckpt.pth"), "PK\3\4" .. string.rep("\0", 60))
  T.raises(function() vtl.load(tmp("ckpt.pth")) end, "zip archive")
  T.raises(function() vtl.load(nil) end, "string expected")
end)

---------------------------------------------------------------------------------------------
-- malformed .npy

local function npy_bytes(header, data, major)
  major = major or 1
  local pre = "\147NUMPY" .. string.char(major, 0)
  if major == 1 then return pre .. string.pack("<I2", #header) .. header .. (data or "") end
  return pre .. string.pack("<I4", #header) .. header .. (data or "")
end

local bad_npy = {
  {"magic.npy", "\147NUMPX\1\0\10\0{}        ", "not an .npy file (bad magic bytes)"},
  {"text.npy", "hello world, not numpy", "bad magic"},
  {"magic_only.npy", "\147NUMPY\1", "header incomplete"},
  {"hdr_trunc.npy", "\147NUMPY\1\0\200\0{'descr'", "truncated (the header needs"},
  {"version.npy", npy_bytes("{}\n", "", 4), "unsupported .npy format version 4.0"},
  {"garbage.npy", npy_bytes("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (1,), }\n", f32s(1)),
   "'fortran_order' is not True or False"},
  {"notdict.npy", npy_bytes("['<f4', False, (1,)]\n", f32s(1)), "not a Python dict literal"},
  {"nokey.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False}\n", f32s(1)), "missing 'shape'"},
  {"extrakey.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}\n", f32s(1)),
   "unexpected key 'x'"},
  {"dupkey.npy", npy_bytes("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}\n", f32s(1)),
   "a key appears twice"},
  {"notuple.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1), }\n", f32s(1)), "not a tuple"},
  {"negshape.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }\n", f32s(1)),
   "non-negative integers"},
  {"trailing.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), } x\n", f32s(1)),
   "unexpected text after the dict"},
  {"dtype.npy", npy_bytes("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }\n", string.rep("\0", 8)),
   "unsupported .npy dtype '<c8'"},
  {"object.npy", npy_bytes("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }\n", string.rep("\0", 8)),
   "object arrays are not supported"},
  {"bigshape.npy", npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }\n", ""),
   "is too large"},
  {"data_trunc.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }\n", f32s(1, 2)),
   "truncated: shape {3} of '<f4' needs 12 data bytes, the file has 8"},
  {"data_extra.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n", f32s(1, 2)),
   "has extra bytes"},
  {"bool.npy", npy_bytes("{'descr': '|b1', 'fortran_order': False, 'shape': (2,), }\n", "\0\2"),
   "byte other than 0 or 1 at element 2"},
}

T.test("io: malformed .npy files raise errors naming the file and the problem", function()
  for _, case in ipairs(bad_npy) do
    local path = tmp(case[1])
    write_file(path, case[2])
    local err = T.raises(function() vtl.load(path) end, case[3])
    T.truthy(err:find(path, 1, true), case[1] .. ": error does not name the file: " .. err)
  end
  check_tensor(vtl.load(FIX .. "/f4.npy"), expected().npy["f4.npy"], "a good file after the bad ones")
end)

T.test("io: numpy files vtl refuses: object (never unpickled), complex, structured", function()
  T.raises(function() vtl.load(FIX .. "/object.npy") end, "object arrays are not supported (vtl never unpickles)")
  T.raises(function() vtl.load(FIX .. "/complex.npy") end, "unsupported .npy dtype '<c8'")
  T.raises(function() vtl.load(FIX .. "/structured.npy") end, "structured arrays are not supported")
  T.raises(function()
    local whole = read_file(FIX .. "/f8.npy")
    write_file(tmp("f8_cut.npy"), whole:sub(1, #whole - 1))
    vtl.load(tmp("f8_cut.npy"))
  end, "truncated")
end)

---------------------------------------------------------------------------------------------
-- save: argument checks, errors, atomicity

T.test("io: save checks every argument before writing anything", function()
  local x = vtl.zeros(2)
  local path = tmp("never_written.safetensors")
  T.raises(function() vtl.save(path, {a = x, b = "str"}) end, "tensors['b'] is not a tensor (got string)")
  T.raises(function() vtl.save(path, {a = x, [1] = x}) end, "tensor names must be strings, got key 1")
  T.raises(function() vtl.save(path, {a = x}, {k = {}}) end, "metadata['k'] must be a string or a number, got table")
  T.raises(function() vtl.save(path, {a = x}, {k = true}) end, "metadata['k'] must be a string or a number, got boolean")
  T.raises(function() vtl.save(path, {a = x}, {[2] = "v"}) end, "metadata keys must be strings")
  T.raises(function() vtl.save(path, {a = x}, "meta") end, "bad argument #3")
  T.raises(function() vtl.save(path, 42) end, "bad argument #2")
  T.raises(function() vtl.save(path, {__metadata__ = x}) end, "'__metadata__' is reserved")
  T.raises(function() vtl.save(path, {["bad\255name"] = x}) end, "not valid UTF-8")
  local freed
  do
    local y <close> = vtl.zeros(2)
    freed = y
  end
  T.raises(function() vtl.save(path, {a = x, f = freed}) end, "has been freed")
  T.truthy(not exists(path), "nothing was written")
  -- the same checks leave an existing file alone
  vtl.save(path, {keep = vtl.tensor({1, 2, 3})})
  local before = read_file(path)
  T.raises(function() vtl.save(path, {a = x, b = 5}) end, "tensors['b'] is not a tensor")
  T.eq(read_file(path) == before, true, "existing file untouched")
end)

T.test("io: save picks the format from the arguments and refuses mismatches", function()
  local x = vtl.tensor({1, 2})
  T.raises(function() vtl.save(tmp("one.safetensors"), x) end, "a single tensor is saved as .npy")
  T.raises(function() vtl.save(tmp("many.npy"), {a = x}) end, "an .npy file holds one tensor")
  T.raises(function() vtl.save(tmp("meta.npy"), x, {k = "v"}) end, "metadata is only written to safetensors")
  local err = T.raises(function() vtl.save(tmp("b.npy"), vtl.tensor({1, 2}, {dtype = "bf16"})) end,
                       "bf16 has no NumPy dtype")
  T.truthy(err:find(":float()", 1, true), "suggests :float(): " .. err)
  T.truthy(not exists(tmp("one.safetensors")) and not exists(tmp("many.npy")) and not exists(tmp("b.npy")),
           "nothing written")
end)

T.test("io: saving into a missing directory names the path", function()
  local path = tmp("no/such/dir/model.safetensors")
  local err = T.raises(function() vtl.save(path, {a = vtl.zeros(2)}) end, path)
  T.truthy(err:find("No such file or directory", 1, true), err)
  T.raises(function() vtl.save(tmp("no/such/dir/x.npy"), vtl.zeros(2)) end, tmp("no/such/dir/x.npy"))
end)

T.test("io: save replaces an existing file and leaves no temporary file", function()
  local dir = tmp("replace")
  assert(os.execute("mkdir -p " .. sh_quote(dir)))
  local path = dir .. "/m.safetensors"
  vtl.save(path, {a = vtl.tensor({1, 2, 3})})
  vtl.save(path, {b = vtl.tensor({4.5})})
  local t = vtl.load(path)
  T.eq(t.a, nil)
  T.eq(t.b:item(), 4.5)
  vtl.save(dir .. "/x.npy", vtl.tensor({1, 2}))
  vtl.save(dir .. "/x.npy", vtl.tensor({3, 4, 5}))
  T.eq(vtl.load(dir .. "/x.npy"):numel(), 3)
  local names = list_dir(dir)
  table.sort(names)
  T.eq(table.concat(names, " "), "m.safetensors x.npy")
end)

local function interrupted_save(dir, shell_prefix)
  assert(os.execute("rm -rf " .. sh_quote(dir) .. " && mkdir -p " .. sh_quote(dir)))
  local path = dir .. "/model.safetensors"
  local npy = dir .. "/arr.npy"
  vtl.save(path, {old = vtl.tensor({1, 2, 3})}, {version = "old"})
  vtl.save(npy, vtl.tensor({7, 8}))
  local out, ok, how, code = run_script(shell_prefix, string.format([[
local vtl = require "vtl"
local big = vtl.zeros(100000)
local ok, err = pcall(vtl.save, %q, {new = big}, {version = "new"})
print(ok and "SAVED" or ("ERR1: " .. tostring(err)))
ok, err = pcall(vtl.save, %q, big)
print(ok and "SAVED" or ("ERR2: " .. tostring(err)))
]], path, npy))
  -- the old files are intact and load with their old contents
  local t, meta = vtl.load(path)
  check_tensor(t.old, {dtype = "i64", shape = {3}, values = {1, 2, 3}}, "old tensor after the interrupted save")
  T.eq(t.new, nil)
  T.eq(meta.version, "old")
  check_tensor(vtl.load(npy), {dtype = "i64", shape = {2}, values = {7, 8}}, "old .npy after the interrupted save")
  T.truthy(not out:find("SAVED", 1, true), "the save was supposed to fail: " .. out)
  return out, ok, how, code
end

T.test("io: a save killed midway (SIGXFSZ) leaves the previous file intact", function()
  local dir = tmp("killed")
  local out, ok, how = interrupted_save(dir, "ulimit -c 0; ulimit -f 16;")
  T.truthy(not ok and how == "signal", "the writer was killed by a signal (" .. tostring(how) .. "): " .. out)
end)

T.test("io: a save that fails midway (EFBIG) reports it and removes its temporary file", function()
  local dir = tmp("efbig")
  local out = interrupted_save(dir, "trap '' XFSZ; ulimit -c 0; ulimit -f 16;")
  T.truthy(out:find("ERR1: save: " .. dir .. "/model.safetensors: ", 1, true), "error names the path: " .. out)
  T.truthy(out:find("File too large", 1, true), "error gives the errno text: " .. out)
  T.truthy(out:find("ERR2: save: " .. dir .. "/arr.npy: ", 1, true), "npy error names the path: " .. out)
  local names = list_dir(dir)
  table.sort(names)
  T.eq(table.concat(names, " "), "arr.npy model.safetensors", "no temporary files left behind")
end)

return T
