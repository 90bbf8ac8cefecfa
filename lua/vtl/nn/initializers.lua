-- vtl.nn.init: in-place weight initialisation with PyTorch's formulas. Each function fills its
-- tensor without recording gradients and returns it. Numbers may be given positionally as in
-- PyTorch (normal_(w, 0, 0.02)) or in a trailing options table ({mean = 0, std = 0.02});
-- every function takes `generator` in that table.
local core = require "vtl.core"

local M = {}

-- positional numbers/strings after the tensor, then an optional options table
local function args(names, ...)
  local n = select("#", ...)
  local o = {}
  local last = n > 0 and select(n, ...) or nil
  if type(last) == "table" then
    for k, v in pairs(last) do o[k] = v end
    n = n - 1
  end
  for i = 1, math.min(n, #names) do
    local v = select(i, ...)
    if v ~= nil then o[names[i]] = v end
  end
  return o
end

local function check(t, fn)
  if not core.is_tensor(t) then error(fn .. ": expected a tensor, got " .. type(t), 3) end
end

-- copies src into t (converting the dtype) without recording
local function fill(t, src)
  core.no_grad(function() t:copy_(src) end)
  return t
end

local function float_dtype(t) return (t.dtype == "f64") and "f64" or "f32" end

---Fan-in and fan-out of a weight: (out, in, k...) -> in*prod(k), out*prod(k).
---@param t vtl.Tensor
---@return integer fan_in, integer fan_out
function M.calculate_fan_in_and_fan_out(t)
  if t.ndim < 2 then error("init: fan in and fan out need a tensor of at least 2 dims, got " .. t.ndim, 2) end
  local rf = 1
  for i = 3, t.ndim do rf = rf * t.shape[i] end
  return t.shape[2] * rf, t.shape[1] * rf
end

---The recommended gain for a nonlinearity (PyTorch's calculate_gain).
---@param nonlinearity string
---@param param number|nil  negative slope for leaky_relu
---@return number
function M.calculate_gain(nonlinearity, param)
  local linear = {linear = 1, conv1d = 1, conv2d = 1, conv3d = 1, conv_transpose1d = 1, conv_transpose2d = 1,
                  conv_transpose3d = 1, sigmoid = 1}
  if linear[nonlinearity] then return 1 end
  if nonlinearity == "tanh" then return 5 / 3 end
  if nonlinearity == "relu" then return math.sqrt(2) end
  if nonlinearity == "leaky_relu" then
    local slope = param or 0.01
    return math.sqrt(2 / (1 + slope * slope))
  end
  if nonlinearity == "selu" then return 3 / 4 end
  error("init: unsupported nonlinearity '" .. tostring(nonlinearity) .. "'", 2)
end

---Fills t with U(a, b).
---@param t vtl.Tensor
---@return vtl.Tensor
function M.uniform_(t, ...)
  check(t, "uniform_")
  local o = args({"a", "b"}, ...)
  local a, b = o.a or 0, o.b or 1
  local u = core.rand(t.shape, {dtype = float_dtype(t), generator = o.generator})
  return fill(t, u * (b - a) + a)
end

---Fills t with N(mean, std²).
---@param t vtl.Tensor
---@return vtl.Tensor
function M.normal_(t, ...)
  check(t, "normal_")
  local o = args({"mean", "std"}, ...)
  local z = core.randn(t.shape, {dtype = float_dtype(t), generator = o.generator})
  return fill(t, z * (o.std or 1) + (o.mean or 0))
end

---Fills t with a constant.
---@param t vtl.Tensor
---@param val number
---@return vtl.Tensor
function M.constant_(t, val)
  check(t, "constant_")
  core.no_grad(function() t:fill_(val) end)
  return t
end

---Fills t with zeros.
function M.zeros_(t) return M.constant_(t, 0) end
---Fills t with ones.
function M.ones_(t) return M.constant_(t, 1) end

---Identity matrix in a 2-D tensor.
function M.eye_(t)
  check(t, "eye_")
  if t.ndim ~= 2 then error("eye_: expected a 2-D tensor", 2) end
  return fill(t, core.eye(t.shape[1], t.shape[2]))
end

-- erfinv of a tensor in (-1, 1): Giles' single-precision approximation, refined by two
-- Newton steps (f64 in, f64 out)
local function erfinv(x)
  local w = -((1 - x) * (1 + x)):log()
  local a = w - 2.5
  local p = a * 2.81022636e-08 + 3.43273939e-07
  for _, c in ipairs({-3.5233877e-06, -4.39150654e-06, 0.00021858087, -0.00125372503, -0.00417768164,
                      0.246640727, 1.50140941}) do p = p * a + c end
  local b = w:sqrt() - 3
  local q = b * -0.000200214257 + 0.000100950558
  for _, c in ipairs({0.00134934322, -0.00367342844, 0.00573950773, -0.0076224613, 0.00943887047,
                      1.00167406, 2.83297682}) do q = q * b + c end
  local y = core.where(w:lt(5), p, q) * x
  for _ = 1, 2 do
    y = y - (y:erf() - x) / ((-(y:square())):exp() * (2 / math.sqrt(math.pi)))
  end
  return y
end

-- standard normal CDF of a number
local function norm_cdf(v)
  return (1 + core.tensor(v / math.sqrt(2), {dtype = "f64"}):erf():item()) / 2
end

---Fills t with N(mean, std²) truncated to [a, b] (inverse-CDF method, as PyTorch).
---@param t vtl.Tensor
---@return vtl.Tensor
function M.trunc_normal_(t, ...)
  check(t, "trunc_normal_")
  local o = args({"mean", "std", "a", "b"}, ...)
  local mean, std, a, b = o.mean or 0, o.std or 1, o.a or -2, o.b or 2
  local l, u = norm_cdf((a - mean) / std), norm_cdf((b - mean) / std)
  local x = core.rand(t.shape, {dtype = "f64", generator = o.generator}) * (2 * u - 2 * l) + (2 * l - 1)
  local y = (erfinv(x) * (std * math.sqrt(2)) + mean):clamp(a, b)
  return fill(t, y)
end

---Glorot uniform: U(-g·sqrt(6/(fan_in+fan_out)), +...).
---@param t vtl.Tensor
---@return vtl.Tensor
function M.xavier_uniform_(t, ...)
  check(t, "xavier_uniform_")
  local o = args({"gain"}, ...)
  local fi, fo = M.calculate_fan_in_and_fan_out(t)
  local bound = (o.gain or 1) * math.sqrt(6 / (fi + fo))
  return M.uniform_(t, -bound, bound, {generator = o.generator})
end

---Glorot normal: N(0, g²·2/(fan_in+fan_out)).
---@param t vtl.Tensor
---@return vtl.Tensor
function M.xavier_normal_(t, ...)
  check(t, "xavier_normal_")
  local o = args({"gain"}, ...)
  local fi, fo = M.calculate_fan_in_and_fan_out(t)
  return M.normal_(t, 0, (o.gain or 1) * math.sqrt(2 / (fi + fo)), {generator = o.generator})
end

local function kaiming_std(t, o, fn)
  local mode = o.mode or "fan_in"
  if mode ~= "fan_in" and mode ~= "fan_out" then error(fn .. ": mode must be 'fan_in' or 'fan_out', got '" .. tostring(mode) .. "'", 3) end
  local fi, fo = M.calculate_fan_in_and_fan_out(t)
  local fan = mode == "fan_in" and fi or fo
  return M.calculate_gain(o.nonlinearity or "leaky_relu", o.a or 0) / math.sqrt(fan)
end

---He uniform: U(-b, b), b = gain·sqrt(3/fan) (a, mode "fan_in"|"fan_out", nonlinearity).
---@param t vtl.Tensor
---@return vtl.Tensor
function M.kaiming_uniform_(t, ...)
  check(t, "kaiming_uniform_")
  local o = args({"a", "mode", "nonlinearity"}, ...)
  local bound = math.sqrt(3) * kaiming_std(t, o, "kaiming_uniform_")
  return M.uniform_(t, -bound, bound, {generator = o.generator})
end

---He normal: N(0, gain²/fan) (a, mode, nonlinearity).
---@param t vtl.Tensor
---@return vtl.Tensor
function M.kaiming_normal_(t, ...)
  check(t, "kaiming_normal_")
  local o = args({"a", "mode", "nonlinearity"}, ...)
  return M.normal_(t, 0, kaiming_std(t, o, "kaiming_normal_"), {generator = o.generator})
end

return M
