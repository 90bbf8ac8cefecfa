-- A picture of what a dataset's augmentation chain does: a PNG grid of samples (after the
-- dataset's transform), each tile labelled with its class name in a 5×7 bitmap font.
--
--   local preview = require("vtl.preview").preview
--   preview(train_ds, 16, "grid.png", {seed = 1, epoch = 1})
local vtl = require "vtl"

local M = {}

-- 5×7 glyphs for printable ASCII: the character ("SP" for the space), then 7 rows top to
-- bottom, '#' for ink.
local FONT_ART = [==[
SP ..... ..... ..... ..... ..... ..... .....
! ..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..
" .#.#. .#.#. .#.#. ..... ..... ..... .....
# .#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.
$ ..#.. .#### #.#.. .###. ..#.# ####. ..#..
% ##... ##..# ...#. ..#.. .#... #..## ...##
& .##.. #..#. #.#.. .#... #.#.# #..#. .##.#
' ..#.. ..#.. .#... ..... ..... ..... .....
( ...#. ..#.. .#... .#... .#... ..#.. ...#.
) .#... ..#.. ...#. ...#. ...#. ..#.. .#...
* ..... ..#.. #.#.# .###. #.#.# ..#.. .....
+ ..... ..#.. ..#.. ##### ..#.. ..#.. .....
, ..... ..... ..... ..... .##.. ..#.. .#...
- ..... ..... ..... ##### ..... ..... .....
. ..... ..... ..... ..... ..... .##.. .##..
/ ..... ....# ...#. ..#.. .#... #.... .....
0 .###. #...# #..## #.#.# ##..# #...# .###.
1 ..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.
2 .###. #...# ....# ...#. ..#.. .#... #####
3 ##### ...#. ..#.. ...#. ....# #...# .###.
4 ...#. ..##. .#.#. #..#. ##### ...#. ...#.
5 ##### #.... ####. ....# ....# #...# .###.
6 ..##. .#... #.... ####. #...# #...# .###.
7 ##### ....# ...#. ..#.. .#... .#... .#...
8 .###. #...# #...# .###. #...# #...# .###.
9 .###. #...# #...# .#### ....# ...#. .##..
: ..... .##.. .##.. ..... .##.. .##.. .....
; ..... .##.. .##.. ..... .##.. ..#.. .#...
< ...#. ..#.. .#... #.... .#... ..#.. ...#.
= ..... ..... ##### ..... ##### ..... .....
> .#... ..#.. ...#. ....# ...#. ..#.. .#...
? .###. #...# ....# ...#. ..#.. ..... ..#..
@ .###. #...# ....# .##.# #.#.# #.#.# .###.
A .###. #...# #...# ##### #...# #...# #...#
B ####. #...# #...# ####. #...# #...# ####.
C .###. #...# #.... #.... #.... #...# .###.
D ###.. #..#. #...# #...# #...# #..#. ###..
E ##### #.... #.... ####. #.... #.... #####
F ##### #.... #.... ####. #.... #.... #....
G .###. #...# #.... #.### #...# #...# .####
H #...# #...# #...# ##### #...# #...# #...#
I .###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.
J ..### ...#. ...#. ...#. ...#. #..#. .##..
K #...# #..#. #.#.. ##... #.#.. #..#. #...#
L #.... #.... #.... #.... #.... #.... #####
M #...# ##.## #.#.# #.#.# #...# #...# #...#
N #...# #...# ##..# #.#.# #..## #...# #...#
O .###. #...# #...# #...# #...# #...# .###.
P ####. #...# #...# ####. #.... #.... #....
Q .###. #...# #...# #...# #.#.# #..#. .##.#
R ####. #...# #...# ####. #.#.. #..#. #...#
S .#### #.... #.... .###. ....# ....# ####.
T ##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..
U #...# #...# #...# #...# #...# #...# .###.
V #...# #...# #...# #...# #...# .#.#. ..#..
W #...# #...# #...# #.#.# #.#.# #.#.# .#.#.
X #...# #...# .#.#. ..#.. .#.#. #...# #...#
Y #...# #...# .#.#. ..#.. ..#.. ..#.. ..#..
Z ##### ....# ...#. ..#.. .#... #.... #####
[ .###. .#... .#... .#... .#... .#... .###.
\ ..... #.... .#... ..#.. ...#. ....# .....
] .###. ...#. ...#. ...#. ...#. ...#. .###.
^ ..#.. .#.#. #...# ..... ..... ..... .....
_ ..... ..... ..... ..... ..... ..... #####
` .#... ..#.. ...#. ..... ..... ..... .....
a ..... ..... .###. ....# .#### #...# .####
b #.... #.... #.##. ##..# #...# #...# ####.
c ..... ..... .###. #.... #.... #...# .###.
d ....# ....# .##.# #..## #...# #...# .####
e ..... ..... .###. #...# ##### #.... .###.
f ..##. .#..# .#... ###.. .#... .#... .#...
g ..... .#### #...# #...# .#### ....# .###.
h #.... #.... #.##. ##..# #...# #...# #...#
i ..#.. ..... .##.. ..#.. ..#.. ..#.. .###.
j ...#. ..... ..##. ...#. ...#. #..#. .##..
k #.... #.... #..#. #.#.. ##... #.#.. #..#.
l .##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.
m ..... ..... ##.#. #.#.# #.#.# #...# #...#
n ..... ..... #.##. ##..# #...# #...# #...#
o ..... ..... .###. #...# #...# #...# .###.
p ..... ..... ####. #...# ####. #.... #....
q ..... ..... .##.# #..## .#### ....# ....#
r ..... ..... #.##. ##..# #.... #.... #....
s ..... ..... .###. #.... .###. ....# ####.
t .#... .#... ###.. .#... .#... .#..# ..##.
u ..... ..... #...# #...# #...# #..## .##.#
v ..... ..... #...# #...# #...# .#.#. ..#..
w ..... ..... #...# #...# #.#.# #.#.# .#.#.
x ..... ..... #...# .#.#. ..#.. .#.#. #...#
y ..... ..... #...# #...# .#### ....# .###.
z ..... ..... ##### ...#. ..#.. .#... #####
{ ...#. ..#.. ..#.. .#... ..#.. ..#.. ...#.
| ..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..
} .#... ..#.. ..#.. ...#. ..#.. ..#.. .#...
~ ..... ..... .#... #.#.# ...#. ..... .....
]==]

M.GLYPH_W, M.GLYPH_H = 5, 7

-- character -> list of 7 row strings
local FONT = {}
for line in FONT_ART:gmatch("[^\n]+") do
  local tok, rows = line:match("^(%S+) (.*)$")
  local ch = tok == "SP" and " " or tok
  local g = {}
  for r in rows:gmatch("[.#]+") do g[#g + 1] = r end
  assert(#ch == 1 and #g == 7, "preview: bad glyph line: " .. line)
  FONT[ch] = g
end
M.FONT = FONT

---The glyph rows of a character (7 strings of 5, '#' for ink); '?' for one outside printable ASCII.
---@param ch string
---@return string[]
function M.glyph(ch) return FONT[ch] or FONT["?"] end

---Renders text as a u8 H×W×3 tensor: dark ink (0) on white (255), glyphs 5×7 scaled by
---`scale` with one scaled pixel between characters, and `pad` pixels of margin.
---@param text string
---@param width integer  the strip's width in pixels; text that does not fit is cut
---@param opts? {scale: integer, pad: integer}
---@return vtl.Tensor
function M.render_text(text, width, opts)
  opts = opts or {}
  local s, pad = opts.scale or 1, opts.pad or 2
  local h = M.GLYPH_H * s + 2 * pad
  local px = {}
  for i = 1, h * width * 3 do px[i] = 255 end
  local x0 = pad
  for k = 1, #text do
    if x0 + M.GLYPH_W * s > width then break end
    local g = M.glyph(text:sub(k, k))
    for r = 1, M.GLYPH_H do
      local row = g[r]
      for c = 1, M.GLYPH_W do
        if row:byte(c) == 35 then -- '#'
          for dy = 0, s - 1 do
            local y = pad + (r - 1) * s + dy
            for dx = 0, s - 1 do
              local base = (y * width + x0 + (c - 1) * s + dx) * 3
              px[base + 1], px[base + 2], px[base + 3] = 0, 0, 0
            end
          end
        end
      end
    end
    x0 = x0 + (M.GLYPH_W + 1) * s
  end
  return vtl.tensor(px, {dtype = "u8"}):view(h, width, 3)
end

-- mean and std of the last Normalize in a transform (Compose lists searched), or nil
local function find_normalize(tf)
  if type(tf) ~= "table" then return nil end
  if tf.name == "Normalize" and tf.mean and tf.std then return tf.mean, tf.std end
  local found_m, found_s
  for _, t in ipairs(tf.transforms or {}) do
    local m, s = find_normalize(t)
    if m then found_m, found_s = m, s end
  end
  return found_m, found_s
end

local function dataset_normalize(ds)
  while type(ds) == "table" do
    local m, s = find_normalize(ds.transform)
    if m then return m, s end
    ds = ds.dataset
  end
end

local function per_channel(v, c)
  local out = {}
  for k = 1, c do out[k] = type(v) == "table" and (v[k] or v[#v]) or v end
  return out
end

-- A sample as a u8 H×W×3 tile: u8 H×W×C or H×W as they are (grey repeated, alpha dropped);
-- float C×H×W un-normalized with mean/std (when given) and rounded from [0, 1].
local function to_tile(x, mean, std, i)
  if not vtl.is_tensor(x) then error("preview: sample " .. i .. " is not an image tensor (got " .. type(x) .. ")", 0) end
  local img
  if x.dtype == "u8" then
    if x.ndim == 2 then img = x:view(x.shape[1], x.shape[2], 1)
    elseif x.ndim == 3 then img = x
    else error(string.format("preview: sample %d: a u8 image must be H×W×C, got {%s}", i, table.concat(x.shape, ",")), 0) end
  elseif x.dtype == "f32" or x.dtype == "f64" then
    if x.ndim == 2 then x = x:view(1, x.shape[1], x.shape[2]) end
    if x.ndim ~= 3 then
      error(string.format("preview: sample %d: a float image must be C×H×W, got {%s}", i, table.concat(x.shape, ",")), 0)
    end
    local c = x.shape[1]
    if mean then
      local m = vtl.tensor(per_channel(mean, c), {dtype = x.dtype}):view(c, 1, 1)
      local s = vtl.tensor(per_channel(std, c), {dtype = x.dtype}):view(c, 1, 1)
      x = x * s + m
    end
    img = vtl.image.to_u8(x:float())
  else
    error("preview: sample " .. i .. " has dtype " .. x.dtype .. " (expected u8 H×W×C or float C×H×W)", 0)
  end
  local c = img.shape[3]
  if c == 1 then img = vtl.cat({img, img, img}, 3)
  elseif c == 2 then img = vtl.cat({img:narrow(3, 1, 1), img:narrow(3, 1, 1), img:narrow(3, 1, 1)}, 3)
  elseif c >= 4 then img = img:narrow(3, 1, 3) end
  return img:contiguous()
end

local function label_of(ds, y)
  if y == nil then return "" end
  if math.type(y) == "integer" and ds.classes and ds.classes[y] ~= nil then return tostring(ds.classes[y]) end
  if vtl.is_tensor(y) then
    if y:numel() == 1 then return label_of(ds, math.tointeger(y:item()) or y:item()) end
    return "{" .. table.concat(y.shape, "x") .. "}"
  end
  return tostring(y)
end

---Writes a PNG grid of n samples of ds (after its transform) to path, each tile labelled with
---its class name, and returns the grid (u8 H×W×3) and the layout (a list of {index, label,
---top, left, height, width} per tile, 1-based pixel positions in the grid).
---Sample i is drawn with the generator the DataLoader gives it in epoch `epoch` with `seed`
---(so the grid shows that epoch's augmentations); an index listed again in opts.indices shows
---the epochs after it (epoch + 1, ...), to see how the augmentation varies. Float C×H×W samples are un-normalized with
---opts.mean/std or the mean/std of a Normalize found in the dataset's transform.
---opts: cols (default ⌈√n⌉), seed (0), epoch (1), indices (default 1..n), mean, std,
---zoom (integer; default enough to make tiles about 80 pixels), font_scale (1).
---@param ds table
---@param n integer
---@param path string
---@param opts? table
---@return vtl.Tensor grid, table[] layout
function M.preview(ds, n, path, opts)
  local fn = "preview"
  opts = opts or {}
  if type(ds) ~= "table" or type(ds.get) ~= "function" then error(fn .. ": expected a dataset (a table with get)", 2) end
  if math.type(n) ~= "integer" or n < 1 then error(fn .. ": n must be a positive integer, got " .. tostring(n), 2) end
  if type(path) ~= "string" then error(fn .. ": path must be a string, got " .. type(path), 2) end
  if type(opts) ~= "table" then error(fn .. ": opts must be a table", 2) end
  local len = #ds
  local indices = opts.indices
  if indices == nil then
    if n > len then error(string.format("%s: n = %d but the dataset has %d samples", fn, n, len), 2) end
    indices = {}
    for i = 1, n do indices[i] = i end
  elseif type(indices) ~= "table" or #indices < n then
    error(fn .. ": indices must be a list of at least n sample numbers", 2)
  end
  local cols = opts.cols or math.ceil(math.sqrt(n))
  if math.type(cols) ~= "integer" or cols < 1 then error(fn .. ": cols must be a positive integer", 2) end
  local seed, epoch = opts.seed or 0, opts.epoch or 1
  if math.type(seed) ~= "integer" or math.type(epoch) ~= "integer" then error(fn .. ": seed and epoch must be integers", 2) end
  local fs = opts.font_scale or 1
  if math.type(fs) ~= "integer" or fs < 1 then error(fn .. ": font_scale must be a positive integer", 2) end
  local mean, std = opts.mean, opts.std
  if (mean == nil) ~= (std == nil) then error(fn .. ": give both mean and std, or neither", 2) end
  if mean == nil then mean, std = dataset_normalize(ds) end
  local mix = require("vtl.data").mix_seed
  local tiles, labels, repeats = {}, {}, {}
  local maxh, maxw = 1, 1
  for k = 1, n do
    local i = indices[k]
    if math.type(i) ~= "integer" or i < 1 or i > len then
      error(string.format("%s: indices[%d] = %s out of range 1..%d", fn, k, tostring(i), len), 2)
    end
    local e = epoch + (repeats[i] or 0) -- a repeated index shows the following epochs
    repeats[i] = (repeats[i] or 0) + 1
    local x, y = ds:get(i, vtl.Generator(mix(seed, e, i)))
    if x == nil then
      tiles[k], labels[k] = nil, "unreadable"
    else
      local ok, tile = pcall(to_tile, x, mean, std, i)
      if not ok then error(tile, 2) end
      tiles[k], labels[k] = tile, label_of(ds, y)
      maxh, maxw = math.max(maxh, tile.shape[1]), math.max(maxw, tile.shape[2])
    end
  end
  local zoom = opts.zoom or math.max(1, math.ceil(80 / math.max(maxh, maxw)))
  if math.type(zoom) ~= "integer" or zoom < 1 then error(fn .. ": zoom must be a positive integer", 2) end
  local pad = 2
  local strip_h = M.GLYPH_H * fs + 4
  local cell_w = math.max(maxw * zoom, (M.GLYPH_W + 1) * fs * 4 + 4)
  local cell_h = maxh * zoom + strip_h
  local rows = (n + cols - 1) // cols
  local grid = vtl.full({rows * (cell_h + pad) + pad, cols * (cell_w + pad) + pad, 3}, 255, {dtype = "u8"})
  local layout = {}
  for k = 1, n do
    local r, c = (k - 1) // cols, (k - 1) % cols
    local top, left = pad + r * (cell_h + pad) + 1, pad + c * (cell_w + pad) + 1
    local entry = {index = indices[k], label = labels[k], top = top, left = left, height = 0, width = 0}
    local tile = tiles[k]
    if tile then
      local h, w = tile.shape[1], tile.shape[2]
      if zoom > 1 then
        tile = tile:view(h, 1, w, 1, 3):expand(h, zoom, w, zoom, 3):reshape(h * zoom, w * zoom, 3)
      end
      local th, tw = h * zoom, w * zoom
      local tl = left + (cell_w - tw) // 2
      grid:narrow(1, top, th):narrow(2, tl, tw):copy_(tile)
      entry.left, entry.height, entry.width = tl, th, tw
    end
    grid:narrow(1, top + maxh * zoom, strip_h):narrow(2, left, cell_w)
      :copy_(M.render_text(labels[k], cell_w, {scale = fs, pad = 2}))
    entry.label_top, entry.label_left, entry.label_width = top + maxh * zoom, left, cell_w
    layout[k] = entry
  end
  vtl.image.save(path, grid)
  return grid, layout
end

return M
