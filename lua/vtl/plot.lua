-- vtl.plot: PNG charts for training runs — curves (loss, metrics, learning rate, lr_find),
-- confusion matrices, image grids (top losses, previews) and bar charts. Drawn with cairo on
-- vtl.core.plot's canvas; every function writes opts.path atomically and returns the path
-- and a layout table that says where things landed (in 1-based pixel rows and columns).
--
--   local plot = require "vtl.plot"
--   plot.lines({{y = losses, label = "train"}, {y = vlosses, label = "valid"}},
--              {path = "loss.png", xlabel = "epoch", ylabel = "loss"})
--   plot.confusion_matrix(cm, {path = "cm.png", class_names = names, normalize = "true"})
--   plot.image_grid(imgs, {path = "top_losses.png", captions = caps, cols = 4})
--
-- Colours are names ("red", "green", "blue", "black", "gray", "orange", ...), "#rrggbb", or
-- {r, g, b} with components in [0, 1] (or 0..255 when any component is above 1).
local vtl = require "vtl"
local core = require "vtl.core"

local M = {}

local floor, ceil, log10, huge = math.floor, math.ceil, math.log10 or function(x) return math.log(x, 10) end, math.huge
local fmt = string.format

-- ---------------------------------------------------------------------------------------
-- colours

-- Series colours: the "tab10" palette (Tableau 10, matplotlib's default cycle).
local PALETTE = {
  {0x1f, 0x77, 0xb4}, {0xff, 0x7f, 0x0e}, {0x2c, 0xa0, 0x2c}, {0xd6, 0x27, 0x28}, {0x94, 0x67, 0xbd},
  {0x8c, 0x56, 0x4b}, {0xe3, 0x77, 0xc2}, {0x7f, 0x7f, 0x7f}, {0xbc, 0xbd, 0x22}, {0x17, 0xbe, 0xcf},
}

local NAMED = {
  black = {0, 0, 0}, white = {255, 255, 255}, red = {0xd6, 0x27, 0x28}, green = {0x2c, 0xa0, 0x2c},
  blue = {0x1f, 0x77, 0xb4}, orange = {0xff, 0x7f, 0x0e}, purple = {0x94, 0x67, 0xbd},
  brown = {0x8c, 0x56, 0x4b}, pink = {0xe3, 0x77, 0xc2}, gray = {0x7f, 0x7f, 0x7f}, grey = {0x7f, 0x7f, 0x7f},
  olive = {0xbc, 0xbd, 0x22}, cyan = {0x17, 0xbe, 0xcf},
}

-- ColorBrewer sequential 9-class scales, light to dark.
local CMAPS = {
  blues = {{0xf7, 0xfb, 0xff}, {0xde, 0xeb, 0xf7}, {0xc6, 0xdb, 0xef}, {0x9e, 0xca, 0xe1}, {0x6b, 0xae, 0xd6},
           {0x42, 0x92, 0xc6}, {0x21, 0x71, 0xb5}, {0x08, 0x51, 0x9c}, {0x08, 0x30, 0x6b}},
  greys = {{0xff, 0xff, 0xff}, {0xf0, 0xf0, 0xf0}, {0xd9, 0xd9, 0xd9}, {0xbd, 0xbd, 0xbd}, {0x96, 0x96, 0x96},
           {0x73, 0x73, 0x73}, {0x52, 0x52, 0x52}, {0x25, 0x25, 0x25}, {0x00, 0x00, 0x00}},
  greens = {{0xf7, 0xfc, 0xf5}, {0xe5, 0xf5, 0xe0}, {0xc7, 0xe9, 0xc0}, {0xa1, 0xd9, 0x9b}, {0x74, 0xc4, 0x76},
            {0x41, 0xab, 0x5d}, {0x23, 0x8b, 0x45}, {0x00, 0x6d, 0x2c}, {0x00, 0x44, 0x1b}},
}

local function errorf(...) error(fmt(...), 3) end

-- {r, g, b} in 0..255 (integers) from a colour spec, or raises naming `what`.
local function rgb255(c, what)
  if type(c) == "string" then
    local named = NAMED[c:lower()]
    if named then return named end
    local h = c:match("^#(%x%x%x%x%x%x)$")
    if h then return {tonumber(h:sub(1, 2), 16), tonumber(h:sub(3, 4), 16), tonumber(h:sub(5, 6), 16)} end
    errorf("%s: unknown colour %q (a name, \"#rrggbb\" or {r, g, b})", what, c)
  elseif type(c) == "table" then
    local r, g, b = c[1] or c.r, c[2] or c.g, c[3] or c.b
    if type(r) ~= "number" or type(g) ~= "number" or type(b) ~= "number" then
      errorf("%s: a colour table must hold three numbers {r, g, b}", what)
    end
    local scale = (r > 1 or g > 1 or b > 1) and 1 or 255
    local function clamp(v) v = floor(v * scale + 0.5); return v < 0 and 0 or v > 255 and 255 or v end
    return {clamp(r), clamp(g), clamp(b)}
  end
  errorf("%s: a colour must be a name, \"#rrggbb\" or {r, g, b}, got %s", what, type(c))
end

local function set_color(cv, c, a) cv:color(c[1] / 255, c[2] / 255, c[3] / 255, a) end

---The colour of a sequential colour map at t in [0, 1] (clamped), as {r, g, b} in 0..255.
---@param name string "blues" | "greys" | "greens"
---@param t number
---@return integer[]
function M.colormap(name, t)
  local stops = CMAPS[name]
  if not stops then error(fmt("plot.colormap: unknown colour map %q (blues, greys, greens)", tostring(name)), 2) end
  if type(t) ~= "number" or t ~= t then error("plot.colormap: t must be a number in [0, 1]", 2) end
  t = t < 0 and 0 or t > 1 and 1 or t
  local s = t * (#stops - 1)
  local i = floor(s)
  if i >= #stops - 1 then i = #stops - 2 end
  local f = s - i
  local a, b = stops[i + 1], stops[i + 2]
  return {floor(a[1] + (b[1] - a[1]) * f + 0.5), floor(a[2] + (b[2] - a[2]) * f + 0.5), floor(a[3] + (b[3] - a[3]) * f + 0.5)}
end

---The colour vtl.plot gives the i-th series, as {r, g, b} in 0..255.
---@param i integer
---@return integer[]
function M.series_color(i) local c = PALETTE[(i - 1) % #PALETTE + 1]; return {c[1], c[2], c[3]} end

-- ---------------------------------------------------------------------------------------
-- argument checks

local function check_opts(fn, opts)
  if opts == nil then errorf("%s: opts is required (at least {path = \"out.png\"})", fn) end
  if type(opts) ~= "table" then errorf("%s: opts must be a table, got %s", fn, type(opts)) end
  if type(opts.path) ~= "string" or opts.path == "" then
    errorf("%s: opts.path must be the PNG file to write (a string), got %s", fn, type(opts.path))
  end
  for _, k in ipairs {"title", "xlabel", "ylabel"} do
    if opts[k] ~= nil and type(opts[k]) ~= "string" then errorf("%s: opts.%s must be a string, got %s", fn, k, type(opts[k])) end
  end
end

local function opt_int(fn, opts, k, def, lo, hi)
  local v = opts[k]
  if v == nil then return def end
  if math.type(v) ~= "integer" and not (type(v) == "number" and v == floor(v)) then
    errorf("%s: opts.%s must be an integer, got %s", fn, k, tostring(v))
  end
  if v < lo or v > hi then errorf("%s: opts.%s must be in %d..%d, got %d", fn, k, lo, hi, v) end
  return floor(v)
end

-- A list of numbers from a Lua list or a 1-D tensor.
local function numbers(fn, v, what)
  if vtl.is_tensor(v) then
    if v:dim() ~= 1 then errorf("%s: %s must be 1-D, got a %d-D tensor", fn, what, v:dim()) end
    return v:cpu():to("f64"):totable()
  end
  if type(v) ~= "table" then errorf("%s: %s must be a list of numbers or a 1-D tensor, got %s", fn, what, type(v)) end
  local n = #v
  for i = 1, n do
    if type(v[i]) ~= "number" then errorf("%s: %s[%d] must be a number, got %s", fn, what, i, type(v[i])) end
  end
  return v
end

local function finite(v) return v == v and v ~= huge and v ~= -huge end

local function check_lim(fn, lim, what, log)
  if lim == nil then return nil end
  if type(lim) ~= "table" or type(lim[1]) ~= "number" or type(lim[2]) ~= "number" then
    errorf("%s: opts.%s must be {lo, hi}", fn, what)
  end
  local lo, hi = lim[1], lim[2]
  if not (finite(lo) and finite(hi) and lo < hi) then errorf("%s: opts.%s must be finite with lo < hi, got {%s, %s}", fn, what, lo, hi) end
  if log and lo <= 0 then errorf("%s: opts.%s must be positive on a log axis, got {%s, %s}", fn, what, lo, hi) end
  return {lo, hi}
end

-- ---------------------------------------------------------------------------------------
-- axes

-- Trims float noise from a tick value that should be a multiple of step.
local function snap(v, step)
  local q = v / step
  local r = floor(q + 0.5)
  if math.abs(q - r) < 1e-6 then v = r * step end
  if math.abs(v) < step * 1e-9 then v = 0 end
  return tonumber(fmt("%.12g", v))
end

-- The smallest step of 1, 2 or 5 times a power of ten that cuts span into at most n + 1
-- intervals.
local function nice_step(span, n)
  local mag = 10 ^ floor(log10(span / (n + 1)))
  for _, m in ipairs {1, 2, 5, 10} do
    if span / (m * mag) <= n + 1 + 1e-9 then return m * mag end
  end
  return 10 * mag
end

local function linear_ticks(lo, hi, n)
  local step = nice_step(hi - lo, n or 5)
  local ticks = {}
  local k0, k1 = ceil(lo / step - 1e-9), floor(hi / step + 1e-9)
  for k = k0, k1 do ticks[#ticks + 1] = snap(k * step, step) end
  return ticks, step
end

local function tick_label_linear(v, step)
  local a = math.abs(v)
  if a == 0 then v = 0 -- no "-0.0"
  elseif a >= 1e6 or a < 1e-4 then return (fmt("%.3g", v):gsub("e%+?(%-?)0*(%d)", "e%1%2")) end
  local dec = math.max(0, -floor(log10(step) + 1e-9))
  return fmt("%." .. dec .. "f", v)
end

local function tick_label_log(v)
  local e = log10(v)
  local re = floor(e + 0.5)
  if math.abs(e - re) < 1e-9 then
    if re >= -3 and re <= 4 then return (fmt("%.4f", 10.0 ^ re):gsub("%.?0+$", "")) end
    return fmt("1e%d", re)
  end
  local a = math.abs(v)
  if a >= 1e-3 and a < 1e5 then return fmt("%g", tonumber(fmt("%.3g", v))) end
  return (fmt("%.0e", v):gsub("e%+?(%-?)0*(%d)", "e%1%2"))
end

-- Ticks on a log axis: decades (every k-th when there are many), with 2 and 5 between them
-- when the range spans little more than a decade.
local function log_ticks(lo, hi)
  local e0, e1 = floor(log10(lo) + 1e-9), ceil(log10(hi) - 1e-9)
  local ticks = {}
  local ndec = e1 - e0
  if ndec <= 2 then
    for e = e0, e1 do
      for _, m in ipairs {1, 2, 5} do
        local v = tonumber(fmt("%.12g", m * 10.0 ^ e))
        if v >= lo * (1 - 1e-9) and v <= hi * (1 + 1e-9) then ticks[#ticks + 1] = v end
      end
    end
    if #ticks < 2 then -- less than a decade wide: plain 1-2-5 steps inside it
      local lt, step = linear_ticks(lo, hi, 4)
      local out = {}
      for _, v in ipairs(lt) do if v > 0 then out[#out + 1] = v end end
      return out, step
    end
    return ticks
  end
  local every = ceil(ndec / 10)
  for e = ceil(e0 / every) * every, e1, every do
    local v = tonumber(fmt("%.12g", 10.0 ^ e))
    if v >= lo * (1 - 1e-9) and v <= hi * (1 + 1e-9) then ticks[#ticks + 1] = v end
  end
  return ticks
end

-- Range [lo, hi] covering the values vmin..vmax with a 5% margin (in log10 on a log axis).
local function pad_range(vmin, vmax, log)
  if log then
    local a, b = log10(vmin), log10(vmax)
    if a == b then a, b = a - 0.5, b + 0.5 end
    local m = (b - a) * 0.05
    return 10 ^ (a - m), 10 ^ (b + m)
  end
  if vmin == vmax then
    local d = vmin == 0 and 1 or math.abs(vmin) * 0.1
    return vmin - d, vmax + d
  end
  local m = (vmax - vmin) * 0.05
  return vmin - m, vmax + m
end

-- An axis: range, ticks and labels, and the map from data values to a pixel interval.
local function make_axis(lo, hi, log)
  local ax = {lo = lo, hi = hi, log = log}
  local ticks, step
  if log then ticks, step = log_ticks(lo, hi) else ticks, step = linear_ticks(lo, hi, 5) end
  ax.ticks, ax.labels = ticks, {}
  for i, v in ipairs(ticks) do
    ax.labels[i] = (log and not step) and tick_label_log(v) or tick_label_linear(v, step)
  end
  local t0, t1 = log and log10(lo) or lo, log and log10(hi) or hi
  ax.frac = function(v) return ((log and log10(v) or v) - t0) / (t1 - t0) end
  return ax
end

M._linear_ticks, M._log_ticks = linear_ticks, log_ticks

-- ---------------------------------------------------------------------------------------
-- plot.lines

local GRID, FRAME, TEXT = {0xe0, 0xe0, 0xe0}, {0x40, 0x40, 0x40}, {0, 0, 0}
local MARKER = {0, 0, 0}
local FONT, TITLE_FONT = 12, 15

-- One series, checked: x and y lists of equal length, style, colour.
local function check_series(fn, s, i)
  local what = fmt("series[%d]", i)
  if type(s) ~= "table" then errorf("%s: %s must be a table {y = {...}, x =, label =, style =}, got %s", fn, what, type(s)) end
  if s.y == nil then errorf("%s: %s.y is missing", fn, what) end
  local y = numbers(fn, s.y, what .. ".y")
  if #y == 0 then errorf("%s: %s is empty (y has no values)", fn, what) end
  local x
  if s.x ~= nil then
    x = numbers(fn, s.x, what .. ".x")
    if #x ~= #y then errorf("%s: %s.x has %d values but y has %d", fn, what, #x, #y) end
  else
    x = {}
    for k = 1, #y do x[k] = k end
  end
  local style = s.style or "line"
  if style ~= "line" and style ~= "points" and style ~= "both" then
    errorf("%s: %s.style must be \"line\", \"points\" or \"both\", got %s", fn, what, tostring(style))
  end
  if s.label ~= nil and type(s.label) ~= "string" then errorf("%s: %s.label must be a string", fn, what) end
  local color = s.color and rgb255(s.color, fn .. ": " .. what .. ".color") or M.series_color(i)
  return {x = x, y = y, label = s.label, style = style, color = color}
end

-- Data range of the values usable on the axis (finite; positive on a log axis).
local function extent(lists, log)
  local lo, hi = huge, -huge
  for _, l in ipairs(lists) do
    for _, v in ipairs(l) do
      if finite(v) and (not log or v > 0) then
        if v < lo then lo = v end
        if v > hi then hi = v end
      end
    end
  end
  return lo, hi
end

local function text_w(cv, s, size) return (cv:text_size(s, {size = size or FONT})) end

-- Legend box: entries {label, color, style} in the corner of the plot area that covers the
-- fewest data points (or the one asked for). Returns its rectangle in canvas coordinates.
local function draw_legend(cv, entries, area, pts, where)
  local lw, lh = 0, FONT + 6
  for _, e in ipairs(entries) do lw = math.max(lw, text_w(cv, e.label)) end
  local w, h = floor(lw + 40), floor(#entries * lh + 8)
  local corners = {
    ["upper right"] = {area.r - w - 8, area.t + 8}, ["upper left"] = {area.l + 8, area.t + 8},
    ["lower right"] = {area.r - w - 8, area.b - h - 8}, ["lower left"] = {area.l + 8, area.b - h - 8},
  }
  local x, y
  if type(where) == "string" then
    x, y = corners[where][1], corners[where][2]
  else
    local best = huge
    for _, name in ipairs {"upper right", "upper left", "lower right", "lower left"} do
      local c = corners[name]
      local n = 0
      for _, p in ipairs(pts) do
        if p[1] >= c[1] and p[1] <= c[1] + w and p[2] >= c[2] and p[2] <= c[2] + h then n = n + 1 end
      end
      if n < best then best, x, y = n, c[1], c[2] end
    end
  end
  cv:color(1, 1, 1, 0.9)
  cv:rect(x, y, w, h)
  cv:fill()
  cv:color(0.75, 0.75, 0.75)
  cv:line_width(1)
  cv:rect(x + 0.5, y + 0.5, w - 1, h - 1)
  cv:stroke()
  for k, e in ipairs(entries) do
    local cy = y + 4 + (k - 0.5) * lh
    set_color(cv, e.color)
    if e.style == "points" then
      cv:circle(x + 18, cy, 3.5)
      cv:fill()
    else
      cv:line_width(e.width or 2)
      cv:move_to(x + 8, cy)
      cv:line_to(x + 28, cy)
      cv:stroke()
      if e.style == "both" then cv:circle(x + 18, cy, 3); cv:fill() end
    end
    set_color(cv, TEXT)
    cv:text(e.label, x + 34, cy, {size = FONT, valign = "middle"})
  end
  return {col = x + 1, row = y + 1, w = w, h = h}
end

-- Grid, frame, ticks and labels of a chart with axes ax (x) and ay (y) on the plot area.
local function draw_axes(cv, area, ax, ay, opts)
  local function px(v) return area.l + ax.frac(v) * (area.r - area.l) end
  local function py(v) return area.b - ay.frac(v) * (area.b - area.t) end
  set_color(cv, GRID)
  cv:line_width(1)
  for _, v in ipairs(ax.ticks) do
    local x = floor(px(v)) + 0.5
    cv:move_to(x, area.t); cv:line_to(x, area.b)
  end
  for _, v in ipairs(ay.ticks) do
    local y = floor(py(v)) + 0.5
    cv:move_to(area.l, y); cv:line_to(area.r, y)
  end
  cv:stroke()
  set_color(cv, FRAME)
  cv:rect(area.l - 0.5, area.t - 0.5, area.r - area.l + 1, area.b - area.t + 1)
  cv:stroke()
  for i, v in ipairs(ax.ticks) do
    local x = floor(px(v)) + 0.5
    set_color(cv, FRAME)
    cv:move_to(x, area.b + 0.5); cv:line_to(x, area.b + 5)
    cv:stroke()
    set_color(cv, TEXT)
    cv:text(ax.labels[i], x, area.b + 7, {size = FONT, align = "center", valign = "top"})
  end
  for i, v in ipairs(ay.ticks) do
    local y = floor(py(v)) + 0.5
    set_color(cv, FRAME)
    cv:move_to(area.l - 0.5, y); cv:line_to(area.l - 5, y)
    cv:stroke()
    set_color(cv, TEXT)
    cv:text(ay.labels[i], area.l - 8, y, {size = FONT, align = "right", valign = "middle"})
  end
  local W = cv:size()
  set_color(cv, TEXT)
  if opts.title then cv:text(opts.title, W / 2, 10, {size = TITLE_FONT, bold = true, align = "center", valign = "top"}) end
  if opts.xlabel then
    cv:text(opts.xlabel, (area.l + area.r) / 2, area.b + 26, {size = FONT + 1, align = "center", valign = "top"})
  end
  if opts.ylabel then
    cv:text(opts.ylabel, 8, (area.t + area.b) / 2, {size = FONT + 1, align = "center", valign = "top", angle = 90})
  end
  return px, py
end

-- Plot area margins for the given tick labels and titles.
local function plot_area(fn, cv, W, H, ay, opts)
  local lw = 0
  for _, s in ipairs(ay.labels) do lw = math.max(lw, text_w(cv, s)) end
  local l = ceil(lw) + 14 + (opts.ylabel and 28 or 4)
  local t = opts.title and 36 or 14
  local b = H - (opts.xlabel and 50 or 30)
  local r = W - 18
  if r - l < 20 or b - t < 20 then error(fmt("%s: the image (%d×%d) is too small for the axes and labels", fn, W, H), 3) end
  return {l = l, t = t, r = r, b = b}
end

---Line (or point) chart of one or more series, e.g. loss curves or an lr_find sweep.
---Non-finite points (and non-positive ones on a log axis) are skipped, leaving a gap.
---Returns the path and a layout: `plot` = {left, top, right, bottom} (1-based pixel columns
---and rows of the plot area, inclusive), `to_pixel(x, y)` -> column, row of a data point,
---`xticks`/`yticks`, `xlim`/`ylim`, `colors` (per series, 0..255), `legend` (its box or nil),
---`marker` = {x =, col =} (the pixel column of the vertical marker line).
---@param series table list of {y = numbers|tensor, x = numbers|tensor|nil, label =, style = "line"|"points"|"both", color =}
---@param opts table {path =, title =, xlabel =, ylabel =, logx =, logy =, width = 800, height = 500, legend = true, marker = {x =, label =}, xlim = {lo, hi}, ylim = {lo, hi}}
---@return string path
---@return table layout
function M.lines(series, opts)
  local fn = "plot.lines"
  check_opts(fn, opts)
  if type(series) ~= "table" then errorf("%s: series must be a list of {y = ...} tables, got %s", fn, type(series)) end
  if series.y ~= nil then series = {series} end
  if #series == 0 then errorf("%s: series is empty (give at least one {y = ...})", fn) end
  local W = opt_int(fn, opts, "width", 800, 100, 8000)
  local H = opt_int(fn, opts, "height", 500, 80, 8000)
  local logx, logy = opts.logx and true or false, opts.logy and true or false
  local S = {}
  for i, s in ipairs(series) do S[i] = check_series(fn, s, i) end
  local marker = opts.marker
  if marker ~= nil then
    if type(marker) ~= "table" or type(marker.x) ~= "number" or not finite(marker.x) then
      errorf("%s: opts.marker must be {x = <finite number>, label =}", fn)
    end
    if logx and marker.x <= 0 then errorf("%s: opts.marker.x must be positive on a log x axis, got %s", fn, marker.x) end
    if marker.label ~= nil and type(marker.label) ~= "string" then errorf("%s: opts.marker.label must be a string", fn) end
  end
  local xlim, ylim = check_lim(fn, opts.xlim, "xlim", logx), check_lim(fn, opts.ylim, "ylim", logy)
  local lg = opts.legend
  if lg ~= nil and lg ~= true and lg ~= false and lg ~= "upper right" and lg ~= "upper left" and lg ~= "lower right"
    and lg ~= "lower left" then
    errorf("%s: opts.legend must be true, false, \"upper right\", \"upper left\", \"lower right\" or \"lower left\", got %s",
      fn, tostring(lg))
  end

  -- ranges
  local xs, ys = {}, {}
  for i, s in ipairs(S) do
    -- a point counts towards the ranges only when both coordinates are usable
    local xx, yy = {}, {}
    for k = 1, #s.y do
      local x, y = s.x[k], s.y[k]
      if finite(x) and finite(y) and (not logx or x > 0) and (not logy or y > 0) then xx[#xx + 1], yy[#yy + 1] = x, y end
    end
    xs[i], ys[i] = xx, yy
  end
  if marker then xs[#xs + 1] = {marker.x} end
  local x0, x1 = extent(xs, logx)
  local y0, y1 = extent(ys, logy)
  if x0 > x1 or y0 > y1 then
    errorf("%s: no finite%s points to plot", fn, (logx or logy) and " (and positive, on a log axis)" or "")
  end
  if xlim then x0, x1 = xlim[1], xlim[2] else x0, x1 = pad_range(x0, x1, logx) end
  if ylim then y0, y1 = ylim[1], ylim[2] else y0, y1 = pad_range(y0, y1, logy) end
  local ax, ay = make_axis(x0, x1, logx), make_axis(y0, y1, logy)

  local cv <close> = core.plot.canvas(W, H)
  local area = plot_area(fn, cv, W, H, ay, opts)
  local px, py = draw_axes(cv, area, ax, ay, opts)

  -- series, clipped to the plot area
  cv:clip(area.l, area.t, area.r - area.l, area.b - area.t)
  local pts = {}
  local function usable(x, y) return finite(x) and finite(y) and (not logx or x > 0) and (not logy or y > 0) end
  for _, s in ipairs(S) do
    set_color(cv, s.color)
    if s.style ~= "points" then
      cv:line_width(2)
      local open = false
      for k = 1, #s.y do
        local x, y = s.x[k], s.y[k]
        if usable(x, y) then
          local X, Y = px(x), py(y)
          if open then cv:line_to(X, Y) else cv:move_to(X, Y); open = true end
          pts[#pts + 1] = {X, Y}
        else
          if open then cv:stroke() end
          open = false
        end
      end
      if open then cv:stroke() end
      -- a point with gaps on both sides would be invisible as a line: draw it as a dot
      for k = 1, #s.y do
        if usable(s.x[k], s.y[k]) and not (k > 1 and usable(s.x[k - 1], s.y[k - 1]))
          and not (k < #s.y and usable(s.x[k + 1], s.y[k + 1])) and s.style == "line" then
          cv:circle(px(s.x[k]), py(s.y[k]), 2)
          cv:fill()
        end
      end
    end
    if s.style ~= "line" then
      for k = 1, #s.y do
        local x, y = s.x[k], s.y[k]
        if usable(x, y) then
          local X, Y = px(x), py(y)
          cv:circle(X, Y, 3.5)
          pts[#pts + 1] = {X, Y}
        end
      end
      cv:fill()
    end
  end
  local marker_info
  if marker then
    local c = floor(px(marker.x))
    set_color(cv, MARKER)
    cv:rect(c, area.t, 1, area.b - area.t)
    cv:fill()
    marker_info = {x = marker.x, col = c + 1}
  end
  cv:reset_clip()

  -- legend
  local entries = {}
  for _, s in ipairs(S) do
    if s.label then entries[#entries + 1] = {label = s.label, color = s.color, style = s.style} end
  end
  if marker and marker.label then entries[#entries + 1] = {label = marker.label, color = MARKER, style = "line", width = 1} end
  local legend
  if opts.legend ~= false and #entries > 0 then legend = draw_legend(cv, entries, area, pts, opts.legend) end

  cv:save(opts.path, fn .. ": opts.path")
  local colors = {}
  for i, s in ipairs(S) do colors[i] = s.color end
  return opts.path, {
    width = W, height = H,
    plot = {left = area.l + 1, top = area.t + 1, right = area.r, bottom = area.b},
    to_pixel = function(x, y) return floor(px(x)) + 1, floor(py(y)) + 1 end,
    xticks = ax.ticks, yticks = ay.ticks, xtick_labels = ax.labels, ytick_labels = ay.labels,
    xlim = {x0, x1}, ylim = {y0, y1}, colors = colors, legend = legend, marker = marker_info,
  }
end

-- ---------------------------------------------------------------------------------------
-- plot.confusion_matrix

local function luminance(c) return (0.2126 * c[1] + 0.7152 * c[2] + 0.0722 * c[3]) / 255 end

-- Rows of a square matrix of non-negative finite numbers from a tensor or nested table.
local function check_matrix(fn, cm)
  local rows
  if vtl.is_tensor(cm) then
    if cm:dim() ~= 2 then errorf("%s: cm must be an N×N matrix, got a %d-D tensor", fn, cm:dim()) end
    rows = cm:cpu():to("f64"):totable()
    if cm.shape[1] ~= cm.shape[2] then errorf("%s: cm must be square (N×N), got %d×%d", fn, cm.shape[1], cm.shape[2]) end
  elseif type(cm) == "table" then
    rows = cm
  else
    errorf("%s: cm must be an N×N tensor or a table of rows, got %s", fn, type(cm))
  end
  local n = #rows
  if n == 0 then errorf("%s: cm is empty", fn) end
  for i = 1, n do
    local r = rows[i]
    if type(r) ~= "table" then errorf("%s: cm[%d] must be a row (a table of numbers), got %s", fn, i, type(r)) end
    if #r ~= n then errorf("%s: cm must be square (N×N): it has %d rows but row %d has %d entries", fn, n, i, #r) end
    for j = 1, n do
      local v = r[j]
      if type(v) ~= "number" or not finite(v) or v < 0 then
        errorf("%s: cm[%d][%d] must be a non-negative finite number, got %s", fn, i, j, tostring(v))
      end
    end
  end
  return rows, n
end

---Confusion matrix as a labelled heatmap: rows are true classes, columns predicted ones.
---Returns the path and a layout: `cells[i][j]` = {row, col, h, w} (1-based pixel rectangle of
---each cell), `values` (the matrix as drawn, after normalisation), `vmax`, `colors[i][j]`.
---@param cm vtl.Tensor|table N×N counts
---@param opts table {path =, class_names =, normalize = nil|"true"|"pred"|"all", title =, cmap = "blues", numbers = true, cell = px}
---@return string path
---@return table layout
function M.confusion_matrix(cm, opts)
  local fn = "plot.confusion_matrix"
  check_opts(fn, opts)
  local rows, n = check_matrix(fn, cm)
  local names = opts.class_names
  if names ~= nil then
    if type(names) ~= "table" then errorf("%s: opts.class_names must be a list of strings, got %s", fn, type(names)) end
    if #names ~= n then errorf("%s: opts.class_names has %d names but cm is %d×%d", fn, #names, n, n) end
    for i = 1, n do
      if type(names[i]) ~= "string" and type(names[i]) ~= "number" then errorf("%s: opts.class_names[%d] must be a string", fn, i) end
    end
  else
    names = {}
    for i = 1, n do names[i] = tostring(i) end
  end
  local norm = opts.normalize
  if norm ~= nil and norm ~= "true" and norm ~= "pred" and norm ~= "all" then
    errorf("%s: opts.normalize must be nil, \"true\", \"pred\" or \"all\", got %s", fn, tostring(norm))
  end
  local cmap = opts.cmap or "blues"
  if type(cmap) ~= "string" or not CMAPS[cmap] then errorf("%s: opts.cmap must be \"blues\", \"greys\" or \"greens\", got %s", fn, tostring(cmap)) end

  -- values as drawn
  local vals = {}
  for i = 1, n do vals[i] = {} for j = 1, n do vals[i][j] = rows[i][j] end end
  if norm == "true" then
    for i = 1, n do
      local s = 0
      for j = 1, n do s = s + rows[i][j] end
      for j = 1, n do vals[i][j] = s > 0 and rows[i][j] / s or 0 end
    end
  elseif norm == "pred" then
    for j = 1, n do
      local s = 0
      for i = 1, n do s = s + rows[i][j] end
      for i = 1, n do vals[i][j] = s > 0 and rows[i][j] / s or 0 end
    end
  elseif norm == "all" then
    local s = 0
    for i = 1, n do for j = 1, n do s = s + rows[i][j] end end
    for i = 1, n do for j = 1, n do vals[i][j] = s > 0 and rows[i][j] / s or 0 end end
  end
  local vmax = 0
  for i = 1, n do for j = 1, n do if vals[i][j] > vmax then vmax = vals[i][j] end end end
  local integral = norm == nil
  if integral then
    for i = 1, n do for j = 1, n do if vals[i][j] ~= floor(vals[i][j]) then integral = false end end end
  end

  local cell = opts.cell and opt_int(fn, opts, "cell", 0, 4, 400) or math.max(12, math.min(64, floor(640 / n)))
  local show_numbers = opts.numbers
  if show_numbers == nil then show_numbers = cell >= 22 end
  local fsize = math.max(7, math.min(14, floor(cell * 0.3)))
  local label_size = math.max(8, math.min(FONT, cell - 2))

  -- margins from the class-name widths (x labels are rotated when any is wider than a cell)
  local probe <close> = core.plot.canvas(1, 1)
  local namew = 0
  for i = 1, n do namew = math.max(namew, text_w(probe, tostring(names[i]), label_size)) end
  local rotate = namew > cell - 4
  local left = ceil(namew) + 10 + 26
  local top = opts.title and 40 or 14
  local xlab_h = rotate and ceil(namew * 0.7071 + label_size) + 10 or label_size + 10
  local grid = n * cell
  local bar_w, bar_gap = 16, 14
  local W = left + grid + bar_gap + bar_w + 60
  local H = top + grid + xlab_h + 30
  if W > 16384 or H > 16384 then errorf("%s: a %d×%d matrix with %d-pixel cells does not fit an image", fn, n, n, cell) end
  W = math.max(W, opts.title and ceil(text_w(probe, opts.title, TITLE_FONT)) + 20 or 0)

  local cv <close> = core.plot.canvas(W, H)
  local cells, colors = {}, {}
  for i = 1, n do
    cells[i], colors[i] = {}, {}
    for j = 1, n do
      local x, y = left + (j - 1) * cell, top + (i - 1) * cell
      local c = M.colormap(cmap, vmax > 0 and vals[i][j] / vmax or 0)
      set_color(cv, c)
      cv:rect(x, y, cell, cell)
      cv:fill()
      cells[i][j] = {row = y + 1, col = x + 1, h = cell, w = cell}
      colors[i][j] = c
      if show_numbers then
        local s = integral and fmt("%d", floor(vals[i][j])) or fmt("%.2f", vals[i][j])
        if luminance(c) < 0.5 then cv:color(1, 1, 1) else cv:color(0, 0, 0) end
        cv:text(s, x + cell / 2, y + cell / 2, {size = fsize, align = "center", valign = "middle"})
      end
    end
  end
  set_color(cv, FRAME)
  cv:line_width(1)
  cv:rect(left - 0.5, top - 0.5, grid + 1, grid + 1)
  cv:stroke()
  -- class names
  set_color(cv, TEXT)
  for i = 1, n do
    local nm = tostring(names[i])
    cv:text(nm, left - 6, top + (i - 0.5) * cell, {size = label_size, align = "right", valign = "middle"})
    local cx = left + (i - 0.5) * cell
    if rotate then
      cv:text(nm, cx + label_size * 0.35, top + grid + 6, {size = label_size, align = "right", valign = "middle", angle = 45})
    else
      cv:text(nm, cx, top + grid + 5, {size = label_size, align = "center", valign = "top"})
    end
  end
  cv:text("predicted", left + grid / 2, top + grid + xlab_h + 4, {size = FONT + 1, align = "center", valign = "top"})
  cv:text("true", 12, top + grid / 2, {size = FONT + 1, align = "center", valign = "top", angle = 90})
  if opts.title then cv:text(opts.title, W / 2, 12, {size = TITLE_FONT, bold = true, align = "center", valign = "top"}) end
  -- colour bar: the scale from 0 (bottom) to vmax (top)
  local bx = left + grid + bar_gap
  for k = 0, grid - 1 do
    set_color(cv, M.colormap(cmap, 1 - (k + 0.5) / grid))
    cv:rect(bx, top + k, bar_w, 1)
    cv:fill()
  end
  set_color(cv, FRAME)
  cv:rect(bx - 0.5, top - 0.5, bar_w + 1, grid + 1)
  cv:stroke()
  if vmax > 0 then
    local ticks, step = linear_ticks(0, vmax, math.max(2, math.min(5, floor(grid / 40))))
    for _, v in ipairs(ticks) do
      local y = floor(top + grid - v / vmax * grid) + 0.5
      set_color(cv, FRAME)
      cv:move_to(bx + bar_w + 0.5, y); cv:line_to(bx + bar_w + 4, y)
      cv:stroke()
      set_color(cv, TEXT)
      cv:text(tick_label_linear(v, step), bx + bar_w + 6, y, {size = 10, valign = "middle"})
    end
  end
  cv:save(opts.path, fn .. ": opts.path")
  return opts.path, {width = W, height = H, cells = cells, values = vals, vmax = vmax, colors = colors, cell = cell}
end

-- ---------------------------------------------------------------------------------------
-- plot.image_grid

-- A u8 H×W×C image (C = 1 or 3) from a u8 H×W×C / H×W tensor or a float C×H×W / H×W one in
-- [0, 1] (after undoing mean/std).
local function to_u8_image(fn, img, i, mean, std)
  local what = fmt("images[%d]", i)
  if not vtl.is_tensor(img) then errorf("%s: %s must be a tensor (u8 H×W×C or float C×H×W), got %s", fn, what, type(img)) end
  img = img:cpu()
  local nd = img:dim()
  if img.dtype == "u8" then
    if nd == 2 then img = img:unsqueeze(3) elseif nd ~= 3 then errorf("%s: %s: a u8 image must be H×W×C, got %d-D", fn, what, nd) end
    local c = img.shape[3]
    if c ~= 1 and c ~= 3 and c ~= 4 then errorf("%s: %s: a u8 image must have 1, 3 or 4 channels (H×W×C), got %d", fn, what, c) end
    if img.shape[1] < 1 or img.shape[2] < 1 then errorf("%s: %s is empty", fn, what) end
    return img
  end
  if img.dtype ~= "f32" and img.dtype ~= "f64" and img.dtype ~= "f16" and img.dtype ~= "bf16" then
    errorf("%s: %s must be u8 H×W×C or float C×H×W, got dtype %s", fn, what, img.dtype)
  end
  if nd == 2 then img = img:unsqueeze(1) elseif nd ~= 3 then errorf("%s: %s: a float image must be C×H×W, got %d-D", fn, what, nd) end
  local c = img.shape[1]
  if c ~= 1 and c ~= 3 then errorf("%s: %s: a float image must have 1 or 3 channels (C×H×W), got %d", fn, what, c) end
  if img.shape[2] < 1 or img.shape[3] < 1 then errorf("%s: %s is empty", fn, what) end
  img = img:to("f32")
  if mean then
    if #mean ~= c or #std ~= c then
      errorf("%s: opts.mean and opts.std need %d entries for %s (C = %d), got %d and %d", fn, c, what, c, #mean, #std)
    end
    -- x * std + mean, written as the normalisation (x - m') / s' with m' = -mean/std, s' = 1/std
    local m2, s2 = {}, {}
    for k = 1, c do m2[k], s2[k] = -mean[k] / std[k], 1 / std[k] end
    img = vtl.image.normalize(img, m2, s2)
  end
  return vtl.image.to_u8(img)
end

local function check_mean_std(fn, opts)
  local mean, std = opts.mean, opts.std
  if mean == nil and std == nil then return nil end
  if type(mean) ~= "table" or type(std) ~= "table" then errorf("%s: opts.mean and opts.std must both be lists of numbers", fn) end
  for k = 1, math.max(#mean, #std) do
    if type(mean[k]) ~= "number" or type(std[k]) ~= "number" or std[k] == 0 then
      errorf("%s: opts.mean and opts.std must be lists of numbers of equal length with std ~= 0", fn)
    end
  end
  return mean, std
end

local function check_captions(fn, caps, n)
  if caps == nil then return nil end
  if type(caps) ~= "table" then errorf("%s: opts.captions must be a list, got %s", fn, type(caps)) end
  if #caps ~= n then errorf("%s: opts.captions has %d entries but there are %d images", fn, #caps, n) end
  local out = {}
  for i = 1, n do
    local c = caps[i]
    if type(c) == "string" or type(c) == "number" then
      out[i] = {text = tostring(c), color = TEXT}
    elseif type(c) == "table" then
      if type(c.text) ~= "string" and type(c.text) ~= "number" then errorf("%s: opts.captions[%d].text must be a string", fn, i) end
      out[i] = {text = tostring(c.text), color = c.color and rgb255(c.color, fmt("%s: opts.captions[%d].color", fn, i)) or TEXT}
    else
      errorf("%s: opts.captions[%d] must be a string or {text =, color =}, got %s", fn, i, type(c))
    end
  end
  return out
end

-- A caption fitted into width w: the font shrinks down to 8 px, then the text is cut with "…".
local function fit_caption(cv, s, w)
  local size = FONT
  while size > 8 and text_w(cv, s, size) > w do size = size - 1 end
  if text_w(cv, s, size) <= w then return s, size end
  local cut = s
  while #cut > 0 and text_w(cv, cut .. "…", size) > w do
    cut = cut:sub(1, (utf8.offset(cut, -1) or #cut) - 1) -- one whole UTF-8 character
  end
  return cut .. "…", size
end

---A grid of images with optional coloured captions (plot_top_losses, dataset previews).
---Each image is resized to fit its tile (keeping its aspect ratio; nearest when enlarging 2×
---or more, antialiased bilinear otherwise) and pasted pixel for pixel. Returns the path and a
---layout: `tiles[i]` = {row, col, h, w} (1-based top-left pixel and size of image i as drawn),
---`images[i]` (the u8 H×W×C pixels drawn there), `cols`, `rows`.
---@param images vtl.Tensor[]|vtl.Tensor u8 H×W×C or float C×H×W in [0, 1] each, or an N×C×H×W float batch
---@param opts table {path =, cols =, captions = {string|{text =, color =}}, tile = px|{h, w}, title =, mean =, std =}
---@return string path
---@return table layout
function M.image_grid(images, opts)
  local fn = "plot.image_grid"
  check_opts(fn, opts)
  if vtl.is_tensor(images) and images:dim() == 4 then -- a batch N×C×H×W
    local batch = images
    images = {}
    for i = 1, batch.shape[1] do images[i] = batch:select(1, i) end
  end
  if type(images) ~= "table" or vtl.is_tensor(images) then
    errorf("%s: images must be a list of tensors or an N×C×H×W batch, got %s", fn,
      vtl.is_tensor(images) and fmt("a %d-D tensor", images:dim()) or type(images))
  end
  local n = #images
  if n == 0 then errorf("%s: images is empty", fn) end
  local mean, std = check_mean_std(fn, opts)
  local caps = check_captions(fn, opts.captions, n)
  local cols = opt_int(fn, opts, "cols", math.min(n, ceil(math.sqrt(n))), 1, 1000)
  local th, tw
  if type(opts.tile) == "table" then
    th, tw = opts.tile[1], opts.tile[2]
    if math.type(th) ~= "integer" or math.type(tw) ~= "integer" or th < 8 or tw < 8 or th > 4096 or tw > 4096 then
      errorf("%s: opts.tile must be a size in pixels or {h, w}, each in 8..4096", fn)
    end
  else
    th = opt_int(fn, opts, "tile", 128, 8, 4096)
    tw = th
  end
  local u8 = {}
  for i = 1, n do u8[i] = to_u8_image(fn, images[i], i, mean, std) end

  local rows = ceil(n / cols)
  local pad = 8
  local cap_h = caps and FONT + 8 or 0
  local top = opts.title and 36 or pad
  local W = cols * (tw + pad) + pad
  local H = top + rows * (th + cap_h + pad)
  if W > 16384 or H > 16384 then errorf("%s: %d images of %d×%d in %d columns do not fit an image", fn, n, th, tw, cols) end
  local cv <close> = core.plot.canvas(W, H)
  local tiles, drawn = {}, {}
  for i = 1, n do
    local img = u8[i]
    local h, w = img.shape[1], img.shape[2]
    local s = math.min(th / h, tw / w)
    local nh, nw = math.max(1, floor(h * s + 0.5)), math.max(1, floor(w * s + 0.5))
    if nh ~= h or nw ~= w then
      img = vtl.image.resize(img, nh, nw, {interpolation = s >= 2 and "nearest" or "bilinear", antialias = true})
    end
    local r, c = (i - 1) // cols, (i - 1) % cols
    local x0, y0 = pad + c * (tw + pad), top + r * (th + cap_h + pad)
    local x, y = x0 + (tw - nw) // 2, y0 + (th - nh) // 2
    cv:image(img, x + 1, y + 1)
    tiles[i] = {row = y + 1, col = x + 1, h = nh, w = nw}
    drawn[i] = img
    if caps then
      local text, size = fit_caption(cv, caps[i].text, tw + pad - 2)
      set_color(cv, caps[i].color)
      cv:text(text, x0 + tw / 2, y0 + th + 3, {size = size, align = "center", valign = "top"})
    end
  end
  if opts.title then
    set_color(cv, TEXT)
    cv:text(opts.title, W / 2, 10, {size = TITLE_FONT, bold = true, align = "center", valign = "top"})
  end
  cv:save(opts.path, fn .. ": opts.path")
  return opts.path, {width = W, height = H, tiles = tiles, images = drawn, cols = cols, rows = rows}
end

-- ---------------------------------------------------------------------------------------
-- plot.bars

---Vertical bar chart, e.g. a per-class metric. NaN values get no bar.
---Returns the path and a layout: `bars[i]` = {row, col, h, w} (1-based pixel rectangle of bar
---i), `plot`, `to_pixel(i, v)`, `yticks`, `ylim`.
---@param values number[]|vtl.Tensor
---@param opts table {path =, labels =, title =, xlabel =, ylabel =, ylim = {lo, hi}, color =, numbers = true, width =, height =}
---@return string path
---@return table layout
function M.bars(values, opts)
  local fn = "plot.bars"
  check_opts(fn, opts)
  local v = numbers(fn, values, "values")
  local n = #v
  if n == 0 then errorf("%s: values is empty", fn) end
  local labels = opts.labels
  if labels ~= nil then
    if type(labels) ~= "table" then errorf("%s: opts.labels must be a list of strings, got %s", fn, type(labels)) end
    if #labels ~= n then errorf("%s: opts.labels has %d entries but there are %d values", fn, #labels, n) end
  else
    labels = {}
    for i = 1, n do labels[i] = tostring(i) end
  end
  local given = labels
  labels = {}
  for i = 1, n do
    if type(given[i]) ~= "string" and type(given[i]) ~= "number" then errorf("%s: opts.labels[%d] must be a string", fn, i) end
    labels[i] = tostring(given[i])
  end
  local color = opts.color and rgb255(opts.color, fn .. ": opts.color") or PALETTE[1]
  local ylim = check_lim(fn, opts.ylim, "ylim", false)
  local lo, hi = 0, 0
  for i = 1, n do
    if finite(v[i]) then lo, hi = math.min(lo, v[i]), math.max(hi, v[i]) end
  end
  if ylim then lo, hi = ylim[1], ylim[2]
  else
    if lo == hi then hi = 1 end
    local m = (hi - lo) * 0.08
    if lo < 0 then lo = lo - m end
    if hi > 0 then hi = hi + m end
  end
  local ay = make_axis(lo, hi, false)

  local probe <close> = core.plot.canvas(1, 1)
  local labw = 0
  for i = 1, n do labw = math.max(labw, text_w(probe, labels[i])) end
  local W = opt_int(fn, opts, "width", math.max(400, math.min(1600, 90 + n * 48)), 100, 8000)
  local slot0 = (W - 110) / n
  local rotate = labw > slot0 - 4
  local extra = rotate and ceil(labw * 0.7071) or 0
  local H = opt_int(fn, opts, "height", 420 + extra, 80, 8000)
  local cv <close> = core.plot.canvas(W, H)
  local area = plot_area(fn, cv, W, H - extra, ay, opts)
  -- the x axis is categorical: ticks are drawn below, so hand draw_axes a tickless one
  local ax = {ticks = {}, labels = {}, frac = function(i) return (i - 0.5) / n end}
  local xlabel = opts.xlabel
  local px, py = draw_axes(cv, area, ax, ay, {title = opts.title, ylabel = opts.ylabel})
  local slot = (area.r - area.l) / n
  local bw = math.max(1, floor(slot * 0.7))
  local base = py(math.max(lo, math.min(hi, 0)))
  local bars = {}
  local show_numbers = opts.numbers ~= false and slot >= 24
  cv:clip(area.l, area.t, area.r - area.l, area.b - area.t)
  for i = 1, n do
    if finite(v[i]) then
      local x = floor(px(i) - bw / 2)
      local ytop = floor(py(math.max(lo, math.min(hi, v[i]))) + 0.5)
      local y0, y1 = math.min(ytop, floor(base + 0.5)), math.max(ytop, floor(base + 0.5))
      set_color(cv, color)
      cv:rect(x, y0, bw, y1 - y0)
      cv:fill()
      bars[i] = {row = y0 + 1, col = x + 1, h = y1 - y0, w = bw}
      if show_numbers then
        set_color(cv, TEXT)
        local s = fmt("%.3g", v[i])
        if v[i] >= 0 then cv:text(s, px(i), y0 - 2, {size = 10, align = "center", valign = "bottom"})
        else cv:text(s, px(i), y1 + 2, {size = 10, align = "center", valign = "top"}) end
      end
    end
  end
  cv:reset_clip()
  set_color(cv, TEXT)
  for i = 1, n do
    if rotate then
      cv:text(labels[i], px(i) + 4, area.b + 8, {size = FONT, align = "right", valign = "middle", angle = 45})
    else
      cv:text(labels[i], px(i), area.b + 7, {size = FONT, align = "center", valign = "top"})
    end
  end
  if xlabel then cv:text(xlabel, (area.l + area.r) / 2, H - 6, {size = FONT + 1, align = "center", valign = "bottom"}) end
  cv:save(opts.path, fn .. ": opts.path")
  return opts.path, {
    width = W, height = H, bars = bars,
    plot = {left = area.l + 1, top = area.t + 1, right = area.r, bottom = area.b},
    to_pixel = function(i, y) return floor(px(i)) + 1, floor(py(y)) + 1 end,
    yticks = ay.ticks, ylim = {lo, hi},
  }
end

---A blank canvas for custom drawing (see lua/lplot.c for its methods).
---@param w integer
---@param h integer
function M.canvas(w, h) return core.plot.canvas(w, h) end

return M
