-- vtl.plot: the PNGs read back with vtl.image.load and checked against the layout each
-- function returns (sizes, colours where series, markers, cells and tiles must be), confusion
-- matrix normalisation against sklearn and image tiles against torchvision (fixtures by
-- tests/ref/gen_plot.py), and bad arguments.
local T = require "testlib"
local vtl = require "vtl"
local plot = require "vtl.plot"
local image = vtl.image
local test = T.test

local FIX = os.getenv("VTL_FIXTURES") or "build/fixtures"
local TMP = os.tmpname()
os.remove(TMP)
os.execute("mkdir -p '" .. TMP .. "'")
local function tmp(name) return TMP .. "/" .. name end

local ok_cases, cases = pcall(dofile, FIX .. "/plot_ref.lua")
if not ok_cases then
  test("plot fixtures", function() error("cannot load " .. FIX .. "/plot_ref.lua; run .venv/bin/python tests/ref/gen_plot.py " .. FIX, 0) end)
  cases = {}
end
local function case(kind, k)
  for _, c in ipairs(cases) do if c.kind == kind and (not k or c.k == k) then return c end end
end

-- ---- pixel helpers (img: u8 H×W×3 as loaded; rows and columns 1-based) ----

local function region(img, row, col, h, w) return img:narrow(1, row, h):narrow(2, col, w) end

-- Pixels of img whose r, g, b are each within tol of rgb.
local function count_color(img, rgb, tol)
  local x = img:to("i32")
  local m
  for c = 1, 3 do
    local d = (x:select(3, c) - rgb[c]):abs():le(tol or 0)
    m = m and m:logical_and(d) or d
  end
  return m:sum():item()
end

-- Pixels whose colour leans towards one channel: that channel exceeds both others by margin.
local function count_hue(img, ch, margin)
  local x = img:to("i32")
  local c = x:select(3, ch)
  local m
  for k = 1, 3 do
    if k ~= ch then
      local d = (c - x:select(3, k)):gt(margin)
      m = m and m:logical_and(d) or d
    end
  end
  return m:sum():item()
end

local function pixel(img, row, col)
  local p = img[row][col]
  return {p[1]:item(), p[2]:item(), p[3]:item()}
end

local function same(a, b) return a[1] == b[1] and a[2] == b[2] and a[3] == b[3] end
local function rgbstr(c) return string.format("{%d,%d,%d}", c[1], c[2], c[3]) end
local function luminance(c) return 0.2126 * c[1] + 0.7152 * c[2] + 0.0722 * c[3] end

local function maxdiff(a, b)
  T.eq(table.concat(a.shape, ","), table.concat(b.shape, ","), "shape")
  return (a:to("i32") - b:to("i32")):abs():max():item()
end

-- The plot area of a lines/bars layout as a region, with the legend box blanked out by
-- counting only what lies outside it.
local function plot_region(img, L)
  local p = L.plot
  return region(img, p.top, p.left, p.bottom - p.top + 1, p.right - p.left + 1)
end
local function count_in_plot(img, L, rgb, tol)
  local n = count_color(plot_region(img, L), rgb, tol)
  if L.legend then n = n - count_color(region(img, L.legend.row, L.legend.col, L.legend.h, L.legend.w), rgb, tol) end
  return n
end

local function files_in(dir)
  local out = {}
  for _, e in ipairs(image.listdir(dir)) do out[#out + 1] = e.name end
  table.sort(out)
  return out
end

-- ---- lines ----

local function decay(n, a, b)
  local y = {}
  for i = 1, n do y[i] = a * math.exp(-i / b) + 0.05 end
  return y
end

test("lines: size, white background, one colour per series inside the plot area", function()
  local path, L = plot.lines({{y = decay(40, 2, 8), label = "train"}, {y = decay(40, 2.5, 12), label = "valid"}},
    {path = tmp("loss.png"), title = "Loss", xlabel = "epoch", ylabel = "loss"})
  T.eq(path, tmp("loss.png"))
  local img = image.load(path)
  T.eq(table.concat(img.shape, ","), "500,800,3", "default size")
  T.truthy(same(pixel(img, 1, 1), {255, 255, 255}), "corner is white")
  T.truthy(same(pixel(img, 500, 800), {255, 255, 255}), "corner is white")
  T.truthy(same(L.colors[1], plot.series_color(1)) and not same(L.colors[1], L.colors[2]), "distinct colours")
  -- an antialiased 2-pixel line across ~700 columns has hundreds of pixels of its exact colour
  for i = 1, 2 do
    local n = count_in_plot(img, L, L.colors[i], 0)
    T.truthy(n > 300, "series " .. i .. " colour " .. rgbstr(L.colors[i]) .. ": only " .. n .. " pixels")
  end
  -- and a palette colour that no series uses appears nowhere
  T.eq(count_color(img, plot.series_color(3), 0), 0, "unused colour")
  -- most of the plot area is background
  local p = L.plot
  local area = (p.bottom - p.top + 1) * (p.right - p.left + 1)
  T.truthy(count_color(plot_region(img, L), {255, 255, 255}, 0) > area * 0.8, "plot area mostly white")
  -- the legend holds both series' colours
  T.truthy(L.legend, "legend drawn")
  local lg = region(img, L.legend.row, L.legend.col, L.legend.h, L.legend.w)
  T.truthy(count_color(lg, L.colors[1], 0) > 10 and count_color(lg, L.colors[2], 0) > 10, "legend samples")
end)

test("lines: to_pixel maps every point onto its marker (points style)", function()
  local x, y = {}, {}
  for i = 1, 25 do x[i] = i * 0.37 - 2; y[i] = math.sin(i / 3) * 5 end
  local path, L = plot.lines({{x = x, y = y, style = "points"}}, {path = tmp("pts.png"), legend = false, width = 640, height = 400})
  local img = image.load(path)
  T.eq(table.concat(img.shape, ","), "400,640,3")
  for i = 1, 25 do
    local col, row = L.to_pixel(x[i], y[i])
    T.truthy(col >= L.plot.left and col <= L.plot.right and row >= L.plot.top and row <= L.plot.bottom, "inside")
    local got = pixel(img, row, col)
    T.truthy(same(got, L.colors[1]), string.format("point %d at row %d col %d is %s", i, row, col, rgbstr(got)))
  end
  -- the axis range covers the data with a margin
  T.truthy(L.xlim[1] < x[1] and L.xlim[2] > x[25], "xlim covers x")
end)

test("lines: ticks are 1-2-5 steps inside the range; log axes get decades", function()
  local _, L = plot.lines({{x = {0, 1, 2, 3}, y = {0.013, 0.4, 0.77, 1.08}}}, {path = tmp("t.png")})
  for _, ticks in ipairs {L.xticks, L.yticks} do
    T.truthy(#ticks >= 3 and #ticks <= 7, "3 to 7 ticks, got " .. #ticks)
    local step = ticks[2] - ticks[1]
    local m = step / 10 ^ math.floor(math.log(step, 10) + 1e-9)
    T.truthy(math.abs(m - 1) < 1e-9 or math.abs(m - 2) < 1e-9 or math.abs(m - 5) < 1e-9, "step " .. step)
    for i = 2, #ticks do T.truthy(math.abs(ticks[i] - ticks[i - 1] - step) < 1e-9 * step, "even steps") end
  end
  T.eq(table.concat(L.ytick_labels, " "), "0.0 0.2 0.4 0.6 0.8 1.0")
  local lr, loss = {}, {}
  for i = 1, 60 do lr[i] = 1e-7 * 10 ^ (i / 8); loss[i] = 2 + math.sin(i / 9) end
  local _, G = plot.lines({{x = lr, y = loss}}, {path = tmp("log.png"), logx = true})
  T.truthy(#G.xticks >= 4, "decade ticks")
  for _, v in ipairs(G.xticks) do
    local e = math.log(v, 10)
    T.truthy(math.abs(e - math.floor(e + 0.5)) < 1e-9, "tick " .. v .. " is a power of ten")
  end
  -- lr spans 10^-6.875 .. 10^0.5; with the 5% margin the axis starts at 10^-7.24, so the
  -- first decade tick is 1e-7, and every decade has one (7.7 decades: no thinning)
  T.truthy(math.abs(G.xticks[1] / 10 ^ math.ceil(math.log(G.xlim[1], 10)) - 1) < 1e-9, "first decade")
  T.eq(G.xtick_labels[1], "1e-7")
  T.eq(table.concat(G.xtick_labels, " "), "1e-7 1e-6 1e-5 1e-4 0.001 0.01 0.1 1")
end)

test("lines: a marker line stands at the data x, at the column the axis mapping gives", function()
  local lr, loss = {}, {}
  for i = 1, 80 do lr[i] = 1e-6 * 10 ^ (i / 12); loss[i] = 2.3 - 0.2 * math.log(1 + lr[i] * 1e3) end
  local mx = 3.2e-3
  local path, L = plot.lines({{x = lr, y = loss, label = "loss"}},
    {path = tmp("lr.png"), logx = true, marker = {x = mx, label = "suggestion"}})
  local img = image.load(path)
  -- column from the returned axis range and plot area: pixel column c covers [c-1, c)
  local p = L.plot
  local f = (math.log(mx, 10) - math.log(L.xlim[1], 10)) / (math.log(L.xlim[2], 10) - math.log(L.xlim[1], 10))
  local want = math.floor((p.left - 1) + f * (p.right - p.left + 1)) + 1
  T.eq(L.marker.col, want, "marker column")
  local function black_rows(col)
    local n = 0
    for r = p.top, p.bottom do
      local inside_legend = L.legend and r >= L.legend.row and r < L.legend.row + L.legend.h
        and col >= L.legend.col and col < L.legend.col + L.legend.w
      if not inside_legend and same(pixel(img, r, col), {0, 0, 0}) then n = n + 1 end
    end
    return n
  end
  local h = p.bottom - p.top + 1
  T.truthy(black_rows(want) >= 0.9 * h - (L.legend and L.legend.h or 0), "marker column is black: " .. black_rows(want))
  T.eq(black_rows(want - 3), 0, "left of the marker")
  T.eq(black_rows(want + 3), 0, "right of the marker")
end)

test("lines: NaN and inf points leave a gap", function()
  local y = {1, 1, 1, 1, 0 / 0, 1, 1, 1 / 0, 1, 1}
  local path, L = plot.lines({{y = y}}, {path = tmp("gap.png"), legend = false, ylim = {0, 2}})
  local img = image.load(path)
  local function colour_cols(a, b) -- series pixels in columns a..b of the plot area
    local c1 = L.to_pixel(a, 1)
    local c2 = L.to_pixel(b, 1)
    return count_color(region(img, L.plot.top, c1, L.plot.bottom - L.plot.top + 1, c2 - c1 + 1), L.colors[1], 0)
  end
  T.truthy(colour_cols(2.1, 2.9) > 20, "a line between points 2 and 3")
  T.eq(colour_cols(4.1, 5.9), 0, "no line across the NaN")
  T.eq(colour_cols(7.1, 8.9), 0, "no line across the inf")
  T.truthy(colour_cols(9.1, 9.9) > 10, "the line resumes")
end)

test("lines: log axes skip non-positive values; tensors and a bare series are accepted", function()
  local path, L = plot.lines({y = vtl.tensor({0, 1, 10, -1, 100, 1000}), x = vtl.tensor({1, 2, 3, 4, 5, 6}), label = "t"},
    {path = tmp("logy.png"), logy = true})
  T.truthy(L.ylim[1] > 0 and L.ylim[1] < 1 and L.ylim[2] > 1000, "range from the positive values")
  T.truthy(count_in_plot(image.load(path), L, L.colors[1], 0) > 50, "drawn")
  T.raises(function() plot.lines({{y = {0, -1}}}, {path = tmp("x.png"), logy = true}) end, "plot.lines: no finite (and positive")
  T.raises(function() plot.lines({{y = {0 / 0, 1 / 0}}}, {path = tmp("x.png")}) end, "plot.lines: no finite points")
end)

test("lines: writes are atomic and leave no temporary files; a file is replaced", function()
  local dir = tmp("atomic")
  os.execute("mkdir -p '" .. dir .. "'")
  plot.lines({{y = {1, 2, 3}}}, {path = dir .. "/a.png"})
  plot.lines({{y = {3, 2, 1}}}, {path = dir .. "/a.png", width = 300, height = 200})
  T.eq(table.concat(files_in(dir), " "), "a.png")
  T.eq(image.load(dir .. "/a.png").shape[2], 300, "replaced")
  T.raises(function() plot.lines({{y = {1}}}, {path = dir .. "/missing/a.png"}) end,
    "plot.lines: opts.path: cannot write " .. dir .. "/missing/a.png: directory " .. dir .. "/missing does not exist")
  T.raises(function() plot.lines({{y = {1}}}, {path = dir}) end, "it is a directory")
  T.eq(table.concat(files_in(dir), " "), "a.png")
end)

test("lines: bad arguments", function()
  local P = {path = tmp("bad.png")}
  T.raises(function() plot.lines({}, P) end, "plot.lines: series is empty")
  T.raises(function() plot.lines("x", P) end, "plot.lines: series must be a list")
  T.raises(function() plot.lines({{y = {}}}, P) end, "plot.lines: series[1] is empty")
  T.raises(function() plot.lines({{y = {1}}, {x = {1, 2}, y = {1, 2, 3}}}, P) end, "plot.lines: series[2].x has 2 values but y has 3")
  T.raises(function() plot.lines({{y = {1, "a"}}}, P) end, "plot.lines: series[1].y[2] must be a number, got string")
  T.raises(function() plot.lines({{y = 5}}, P) end, "plot.lines: series[1].y must be a list of numbers or a 1-D tensor")
  T.raises(function() plot.lines({{y = vtl.zeros(2, 2)}}, P) end, "plot.lines: series[1].y must be 1-D")
  T.raises(function() plot.lines({{x = {1}}}, P) end, "plot.lines: series[1].y is missing")
  T.raises(function() plot.lines({{y = {1}, style = "bars"}}, P) end, "plot.lines: series[1].style must be")
  T.raises(function() plot.lines({{y = {1}, color = "mauve-ish"}}, P) end, "plot.lines: series[1].color: unknown colour")
  T.raises(function() plot.lines({{y = {1}}}) end, "plot.lines: opts is required")
  T.raises(function() plot.lines({{y = {1}}}, {}) end, "plot.lines: opts.path must be the PNG file to write")
  T.raises(function() plot.lines({{y = {1}}}, {path = tmp("b.png"), width = 10}) end, "plot.lines: opts.width must be in 100..8000")
  T.raises(function() plot.lines({{y = {1}}}, {path = tmp("b.png"), ylim = {1, 0}}) end, "plot.lines: opts.ylim must be finite with lo < hi")
  T.raises(function() plot.lines({{y = {1}}}, {path = tmp("b.png"), ylim = {0, 1}, logy = true}) end, "opts.ylim must be positive on a log axis")
  T.raises(function() plot.lines({{y = {1}}}, {path = tmp("b.png"), marker = {x = 0 / 0}}) end, "plot.lines: opts.marker must be")
  T.raises(function() plot.lines({{y = {1}}}, {path = tmp("b.png"), title = 3}) end, "plot.lines: opts.title must be a string")
  T.raises(function() plot.lines({{y = {1}, label = "a"}}, {path = tmp("b.png"), legend = "middle"}) end, "plot.lines: opts.legend must be")
  T.eq(io.open(tmp("bad.png")), nil, "nothing written")
end)

-- ---- confusion matrix ----

test("confusion_matrix: normalisation equals sklearn's (true, pred, all), an absent class included", function()
  for _, k in ipairs {4, 7} do
    local c = case("cm", k)
    T.truthy(c, "fixture for k = " .. k)
    local _, raw = plot.confusion_matrix(c.cm, {path = tmp("cm.png")})
    T.close(raw.values, c.cm, 0, "raw")
    for _, mode in ipairs {"true", "pred", "all"} do
      local _, L = plot.confusion_matrix(vtl.tensor(c.cm), {path = tmp("cm_" .. mode .. ".png"), normalize = mode})
      T.close(L.values, c["norm_" .. mode], 1e-12, "normalize = " .. mode .. ", k = " .. k)
    end
  end
end)

test("confusion_matrix: cells are filled with the colour scale, darker for larger values", function()
  local cm = {{50, 3, 0, 1}, {7, 41, 2, 12}, {0, 5, 33, 20}, {9, 4, 15, 60}}
  local path, L = plot.confusion_matrix(cm, {path = tmp("cm_cells.png"), numbers = false, class_names = {"a", "b", "c", "d"}})
  local img = image.load(path)
  T.eq(img.shape[1], L.height)
  T.eq(img.shape[2], L.width)
  T.truthy(same(pixel(img, 1, 1), {255, 255, 255}), "white background")
  local seen = {}
  for i = 1, 4 do
    for j = 1, 4 do
      local cell = L.cells[i][j]
      local got = pixel(img, cell.row + cell.h // 2, cell.col + cell.w // 2)
      T.truthy(same(got, plot.colormap("blues", cm[i][j] / 60)), string.format("cell %d,%d: %s", i, j, rgbstr(got)))
      -- the whole cell is that one colour
      T.eq(count_color(region(img, cell.row, cell.col, cell.h, cell.w), got, 0), cell.h * cell.w, "uniform cell")
      seen[#seen + 1] = {v = cm[i][j], lum = luminance(got)}
    end
  end
  table.sort(seen, function(a, b) return a.v < b.v end)
  for k = 2, #seen do
    if seen[k].v > seen[k - 1].v then T.truthy(seen[k].lum < seen[k - 1].lum, "darker for larger values") end
  end
  -- the scale itself runs from near-white to dark blue
  T.truthy(luminance(plot.colormap("blues", 0)) > 240 and luminance(plot.colormap("blues", 1)) < 60, "scale ends")
end)

test("confusion_matrix: numbers in cells, white on dark cells and black on light ones", function()
  local cm = {{90, 0}, {1, 80}}
  local path, L = plot.confusion_matrix(cm, {path = tmp("cm_num.png")})
  local img = image.load(path)
  local function cell_img(i, j) local c = L.cells[i][j]; return region(img, c.row, c.col, c.h, c.w) end
  -- dark cell (90): white text; the background colour is dark blue, so white is only text
  T.truthy(count_color(cell_img(1, 1), {255, 255, 255}, 40) > 10, "white digits on the darkest cell")
  T.eq(count_color(cell_img(1, 1), {0, 0, 0}, 40), 0, "no black on the darkest cell")
  -- light cell (0): black text
  T.truthy(count_color(cell_img(1, 2), {0, 0, 0}, 40) > 5, "black digits on a light cell")
  T.eq(count_color(cell_img(1, 2), {255, 255, 255}, 0), 0, "no white on a light cell")
  -- a cell without numbers has none of either
  local _, L2 = plot.confusion_matrix(cm, {path = tmp("cm_nonum.png"), numbers = false})
  local img2 = image.load(tmp("cm_nonum.png"))
  local c = L2.cells[1][1]
  T.eq(count_color(region(img2, c.row, c.col, c.h, c.w), {255, 255, 255}, 0), 0, "no digits")
end)

test("confusion_matrix: cell size shrinks as N grows", function()
  local function eye(n)
    local m = {}
    for i = 1, n do m[i] = {} for j = 1, n do m[i][j] = i == j and 5 or 1 end end
    return m
  end
  local _, a = plot.confusion_matrix(eye(3), {path = tmp("cm3.png")})
  local _, b = plot.confusion_matrix(eye(20), {path = tmp("cm20.png")})
  local _, c = plot.confusion_matrix(eye(100), {path = tmp("cm100.png")})
  T.truthy(a.cell > b.cell and b.cell > c.cell, string.format("cells %d > %d > %d", a.cell, b.cell, c.cell))
  T.truthy(b.cell * 20 <= 640 and c.cell >= 12, "grid bounded")
  T.eq(image.load(tmp("cm100.png")).shape[2], c.width)
end)

test("confusion_matrix: bad arguments", function()
  local P = {path = tmp("cmbad.png")}
  T.raises(function() plot.confusion_matrix({{1, 2}, {3}}, P) end, "plot.confusion_matrix: cm must be square (N×N): it has 2 rows but row 2 has 1")
  T.raises(function() plot.confusion_matrix(vtl.zeros(2, 3), P) end, "plot.confusion_matrix: cm must be square (N×N), got 2×3")
  T.raises(function() plot.confusion_matrix(vtl.zeros(4), P) end, "plot.confusion_matrix: cm must be an N×N matrix, got a 1-D tensor")
  T.raises(function() plot.confusion_matrix({}, P) end, "plot.confusion_matrix: cm is empty")
  T.raises(function() plot.confusion_matrix("cm", P) end, "plot.confusion_matrix: cm must be an N×N tensor")
  T.raises(function() plot.confusion_matrix({{1, -2}, {3, 4}}, P) end, "plot.confusion_matrix: cm[1][2] must be a non-negative finite number")
  T.raises(function() plot.confusion_matrix({{1, 0 / 0}, {3, 4}}, P) end, "cm[1][2] must be a non-negative finite number")
  T.raises(function() plot.confusion_matrix({{1, 2}, {3, 4}}, {path = tmp("c.png"), class_names = {"a"}}) end,
    "plot.confusion_matrix: opts.class_names has 1 names but cm is 2×2")
  T.raises(function() plot.confusion_matrix({{1, 2}, {3, 4}}, {path = tmp("c.png"), normalize = "rows"}) end,
    "plot.confusion_matrix: opts.normalize must be nil, \"true\", \"pred\" or \"all\"")
  T.raises(function() plot.confusion_matrix({{1, 2}, {3, 4}}, {path = tmp("c.png"), cmap = "jet"}) end, "plot.confusion_matrix: opts.cmap")
  T.raises(function() plot.confusion_matrix({{1}}, {path = tmp("nope/c.png")}) end, "plot.confusion_matrix: opts.path: cannot write")
end)

-- ---- image grid ----

local function load_fix(name) return vtl.load(FIX .. "/plot/" .. name) end

test("image_grid: tiles hold the input pixels at the returned positions", function()
  local imgs = {}
  for i = 1, 5 do imgs[i] = (vtl.rand({32, 32, 3}) * 255):to("u8") end
  imgs[6] = (vtl.rand({32, 32}) * 255):to("u8") -- grey
  local path, L = plot.image_grid(imgs, {path = tmp("grid.png"), tile = 32, cols = 4})
  local img = image.load(path)
  T.eq(img.shape[1], L.height)
  T.eq(img.shape[2], L.width)
  T.eq(L.cols, 4)
  T.eq(L.rows, 2)
  T.truthy(same(pixel(img, 1, 1), {255, 255, 255}), "white background")
  for i = 1, 6 do
    local t = L.tiles[i]
    T.eq(t.h, 32)
    T.eq(t.w, 32)
    local got = region(img, t.row, t.col, t.h, t.w)
    local want = i == 6 and imgs[6]:unsqueeze(3):expand(32, 32, 3) or imgs[i]
    T.eq(maxdiff(got, want), 0, "tile " .. i)
  end
  -- tiles of one row side by side, left to right; the second row below
  T.truthy(L.tiles[2].col > L.tiles[1].col + 32 and L.tiles[2].row == L.tiles[1].row, "row order")
  T.truthy(L.tiles[5].row > L.tiles[1].row + 32 and L.tiles[5].col == L.tiles[1].col, "next row")
end)

test("image_grid: normalised float images are un-normalised with opts.mean/std (torchvision's normalize)", function()
  local c = case("images")
  T.truthy(c, "fixture")
  local cat, norm = load_fix("cat.npy"), load_fix("cat_norm.npy")
  local path, L = plot.image_grid({norm}, {path = tmp("norm.png"), tile = 64, mean = c.mean, std = c.std})
  local img = image.load(path)
  local t = L.tiles[1]
  T.eq(t.h .. "x" .. t.w, "48x64", "no resize when the image fits its tile exactly")
  T.truthy(maxdiff(region(img, t.row, t.col, t.h, t.w), cat) <= 1, "un-normalised pixels within one level")
end)

test("image_grid: images are resized to fit the tile as torchvision resizes them", function()
  local cat, patch = load_fix("cat.npy"), load_fix("patch.npy")
  local path, L = plot.image_grid({cat, cat, patch}, {path = tmp("resize.png"), tile = {96, 96}})
  local img = image.load(path)
  local t = L.tiles[1]
  T.eq(t.h .. "x" .. t.w, "72x96", "aspect ratio kept")
  T.truthy(maxdiff(region(img, t.row, t.col, t.h, t.w), load_fix("cat_72x96.npy")) <= 1, "bilinear enlargement")
  local _, L2 = plot.image_grid({cat}, {path = tmp("resize2.png"), tile = 32})
  local t2 = L2.tiles[1]
  T.eq(t2.h .. "x" .. t2.w, "24x32")
  T.truthy(maxdiff(region(image.load(tmp("resize2.png")), t2.row, t2.col, 24, 32), load_fix("cat_24x32.npy")) <= 1, "antialiased reduction")
  local _, L3 = plot.image_grid({patch}, {path = tmp("resize3.png"), tile = 64})
  local t3 = L3.tiles[1]
  T.eq(t3.h .. "x" .. t3.w, "48x64")
  T.eq(maxdiff(region(image.load(tmp("resize3.png")), t3.row, t3.col, 48, 64), load_fix("patch_48x64.npy")), 0, "nearest for 4x")
  -- centred in the tile: 72 rows in a 96-row tile leave 12 above
  T.eq(L.tiles[2].row - L.tiles[1].row, 0)
end)

test("image_grid: a float N×C×H×W batch is split into its images; long captions are cut", function()
  local batch = vtl.rand({3, 3, 16, 16})
  local path, L = plot.image_grid(batch, {path = tmp("batch.png"), tile = 16,
    captions = {"a", "a very long caption that cannot fit under a sixteen pixel tile", "é"}})
  local img = image.load(path)
  for i = 1, 3 do
    local t = L.tiles[i]
    T.eq(maxdiff(region(img, t.row, t.col, 16, 16), image.to_u8(batch:select(1, i))), 0, "tile " .. i)
  end
end)

test("image_grid: captions are drawn under their tiles in their colours", function()
  local imgs = {}
  for i = 1, 2 do imgs[i] = vtl.zeros(3, 40, 40) + 0.5 end
  local path, L = plot.image_grid(imgs, {path = tmp("caps.png"), tile = 64, title = "top losses",
    captions = {{text = "Shirt/Coat/0.91", color = "red"}, {text = "Bag/Bag/0.99", color = "green"}}})
  local img = image.load(path)
  local function band(i) -- the strip under tile i
    local t = L.tiles[i]
    return region(img, t.row + t.h, t.col - 8, math.min(24, L.height - t.row - t.h + 1), t.w + 16)
  end
  T.truthy(count_hue(band(1), 1, 60) > 20, "red caption under tile 1")
  T.eq(count_hue(band(1), 2, 30), 0, "no green under tile 1")
  T.truthy(count_hue(band(2), 2, 40) > 20, "green caption under tile 2")
  T.eq(count_hue(band(2), 1, 30), 0, "no red under tile 2")
  -- the grey tiles are not tinted
  local t = L.tiles[1]
  T.eq(count_hue(region(img, t.row, t.col, t.h, t.w), 1, 5) + count_hue(region(img, t.row, t.col, t.h, t.w), 2, 5), 0, "grey tile")
end)

test("image_grid: bad arguments", function()
  local P = {path = tmp("gbad.png")}
  local u = vtl.zeros({8, 8, 3}, {dtype = "u8"})
  T.raises(function() plot.image_grid({}, P) end, "plot.image_grid: images is empty")
  T.raises(function() plot.image_grid(u, P) end, "plot.image_grid: images must be a list of tensors or an N×C×H×W batch, got a 3-D tensor")
  T.raises(function() plot.image_grid({u, "x"}, P) end, "plot.image_grid: images[2] must be a tensor")
  T.raises(function() plot.image_grid({vtl.zeros(1, 3, 8, 8)}, P) end, "plot.image_grid: images[1]: a float image must be C×H×W, got 4-D")
  T.raises(function() plot.image_grid({vtl.zeros(5, 8, 8)}, P) end, "a float image must have 1 or 3 channels")
  T.raises(function() plot.image_grid({vtl.zeros({8, 8, 2}, {dtype = "u8"})}, P) end, "a u8 image must have 1, 3 or 4 channels")
  T.raises(function() plot.image_grid({vtl.zeros({3, 3}, {dtype = "i32"})}, P) end, "must be u8 H×W×C or float C×H×W, got dtype i32")
  T.raises(function() plot.image_grid({u, u}, {path = tmp("g.png"), captions = {"a"}}) end,
    "plot.image_grid: opts.captions has 1 entries but there are 2 images")
  T.raises(function() plot.image_grid({u}, {path = tmp("g.png"), captions = {{text = "a", color = 7}}}) end,
    "plot.image_grid: opts.captions[1].color")
  T.raises(function() plot.image_grid({vtl.zeros(3, 8, 8)}, {path = tmp("g.png"), mean = {0.5}, std = {0.5}}) end,
    "opts.mean and opts.std need 3 entries")
  T.raises(function() plot.image_grid({u}, {path = tmp("g.png"), mean = {0.5}}) end, "opts.mean and opts.std must both be lists")
  T.raises(function() plot.image_grid({u}, {path = tmp("g.png"), tile = 2}) end, "plot.image_grid: opts.tile must be in 8..4096")
  T.raises(function() plot.image_grid({u}, {path = tmp("no/g.png")}) end, "plot.image_grid: opts.path: cannot write")
end)

-- ---- bars ----

test("bars: bar heights follow the values; NaN leaves a slot empty", function()
  local v = {0.25, 0.5, 1.0, 0 / 0, 0.75}
  local path, L = plot.bars(v, {path = tmp("bars.png"), labels = {"a", "b", "c", "d", "e"}, title = "F1", ylabel = "F1"})
  local img = image.load(path)
  T.eq(img.shape[2], L.width)
  local blue = plot.series_color(1)
  for i, b in pairs(L.bars) do
    T.eq(count_color(region(img, b.row, b.col, b.h, b.w), blue, 0), b.h * b.w, "bar " .. i .. " is solid")
    -- its top is at the value on the y axis
    local _, row = L.to_pixel(i, v[i])
    T.truthy(math.abs(b.row - row) <= 1, string.format("bar %d top row %d, axis says %d", i, b.row, row))
  end
  T.eq(L.bars[4], nil, "no bar for NaN")
  T.truthy(math.abs(L.bars[3].h / L.bars[1].h - 4) < 0.1, "heights proportional")
  local col = L.to_pixel(4, 0)
  T.eq(count_color(region(img, L.plot.top, col - 5, L.plot.bottom - L.plot.top + 1, 11), blue, 0), 0, "empty slot")
end)

test("bars: negative values hang below zero; bad arguments", function()
  local _, L = plot.bars({-1, 2}, {path = tmp("neg.png")})
  local _, zero = L.to_pixel(1, 0)
  T.truthy(math.abs(L.bars[1].row - zero) <= 1 and math.abs(L.bars[2].row + L.bars[2].h - zero) <= 1, "both bars meet at 0")
  T.raises(function() plot.bars({}, {path = tmp("b.png")}) end, "plot.bars: values is empty")
  T.raises(function() plot.bars({1, 2}, {path = tmp("b.png"), labels = {"a"}}) end, "plot.bars: opts.labels has 1 entries but there are 2 values")
  T.raises(function() plot.bars({1, "x"}, {path = tmp("b.png")}) end, "plot.bars: values[2] must be a number")
  T.raises(function() plot.bars({1}, {path = 5}) end, "plot.bars: opts.path must be")
end)

-- ---- canvas ----

test("canvas: pixels equal the PNG; bad text and coordinates do not break it", function()
  local cv = plot.canvas(60, 40)
  cv:color(1, 0, 0)
  cv:rect(5, 5, 10, 10)
  cv:fill()
  cv:color(0, 0, 0)
  cv:text("bad \xff\xfe utf-8", 20, 20, {size = 10})
  cv:color(0, 0, 1)
  cv:rect(40, 30, 5, 5)
  cv:fill()
  local px = cv:pixels()
  T.truthy(same(pixel(px, 6, 6), {255, 0, 0}) and same(pixel(px, 31, 41), {0, 0, 255}), "drawing still works after bad UTF-8")
  T.eq(cv:save(tmp("cv.png")), tmp("cv.png"))
  T.eq(maxdiff(image.load(tmp("cv.png")), px), 0, "PNG round trip")
  T.raises(function() cv:line_to(0 / 0, 1) end, "finite number expected")
  T.raises(function() cv:text("a", 1, 2, {align = "middle"}) end, "canvas:text: option 'align' must be left, center or right, got middle")
  T.raises(function() cv:image(vtl.zeros(3, 4, 4), 1, 1) end, "canvas:image: image must be u8")
  T.raises(function() plot.canvas(0, 10) end, "width must be 1..16384")
  cv:close()
  T.raises(function() cv:fill() end, "canvas has been closed")
  cv:close()
end)

test("canvas: images are pasted 1:1 and cut at the edges, alpha blended over white", function()
  local cv <close> = plot.canvas(20, 10)
  local rgba = vtl.zeros({4, 4, 4}, {dtype = "u8"})
  rgba:select(3, 1):fill_(200)
  rgba:select(3, 4):fill_(255)
  rgba[1][1][4] = 0 -- one transparent pixel
  cv:image(rgba, 18, 8) -- top-left at row 8, column 18: 3×3 visible
  local px = cv:pixels()
  T.truthy(same(pixel(px, 9, 19), {200, 0, 0}), "opaque")
  T.truthy(same(pixel(px, 8, 18), {255, 255, 255}), "transparent shows white")
  T.truthy(same(pixel(px, 8, 17), {255, 255, 255}), "left of the image untouched")
end)
