-- Parameter groups that exempt biases and normalization parameters from weight decay.
local core = require "vtl.core"

local M = {}

-- {{name, tensor}, ...} from a module's named_parameters() or a list of pairs
local function named_list(src)
  local out = {}
  local function add(name, p, at)
    if type(name) ~= "string" or not core.is_tensor(p) then
      error(("param_groups_no_decay: entry %s must be {name, tensor}"):format(at), 0)
    end
    out[#out + 1] = {name, p}
  end
  local function from_table(t)
    if #t > 0 then
      for i, e in ipairs(t) do
        if type(e) ~= "table" then error(("param_groups_no_decay: entry %d must be {name, tensor}, got %s"):format(i, type(e)), 0) end
        add(e[1] or e.name, e[2] or e.param or e.tensor, tostring(i))
      end
    else -- a map name -> tensor: sorted for a stable order
      local names = {}
      for k in pairs(t) do names[#names + 1] = k end
      table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
      for _, k in ipairs(names) do add(k, t[k], tostring(k)) end
    end
  end
  if type(src) == "table" and type(src.named_parameters) == "function" then
    local r = src:named_parameters()
    if type(r) == "function" then
      for name, p in r do
        if type(name) == "table" then name, p = name[1], name[2] end
        add(name, p, tostring(#out + 1))
      end
    elseif type(r) == "table" then
      from_table(r)
    else
      error("param_groups_no_decay: named_parameters() returned a " .. type(r), 0)
    end
  elseif type(src) == "table" then
    from_table(src)
  else
    error("param_groups_no_decay: expected a module or a list of {name, tensor}, got " .. type(src), 0)
  end
  return out
end

---Splits parameters into {no-decay group, decay group} like timm's param_groups_weight_decay:
---1-D tensors (biases, norm scales and shifts), names ending in ".bias" and names in skip
---(plus the module's no_weight_decay() names) get weight_decay = 0. Frozen parameters
---(requires_grad false) are left out unless include_frozen.
---@param src table  a module with named_parameters(), or a list of {name, tensor}
---@param opts {weight_decay: number|nil, lr: number|nil, skip: string[]|nil, include_frozen: boolean|nil}|nil
---@return table[] groups  {{params = {...}, weight_decay = 0}, {params = {...}, weight_decay = wd}}
function M.param_groups_no_decay(src, opts)
  opts = opts or {}
  local skip = {}
  for _, n in ipairs(opts.skip or {}) do skip[n] = true end
  if type(src) == "table" and type(src.no_weight_decay) == "function" then
    for _, n in ipairs(src:no_weight_decay() or {}) do skip[n] = true end
  end
  local decay, no_decay = {}, {}
  for _, np in ipairs(named_list(src)) do
    local name, p = np[1], np[2]
    if p.requires_grad or opts.include_frozen then
      if p.ndim <= 1 or name:sub(-5) == ".bias" or name == "bias" or skip[name] then
        no_decay[#no_decay + 1] = p
      else
        decay[#decay + 1] = p
      end
    end
  end
  local g1, g2 = {params = no_decay, weight_decay = 0}, {params = decay, weight_decay = opts.weight_decay}
  if opts.lr then g1.lr, g2.lr = opts.lr, opts.lr end
  return {g1, g2}
end

return M
