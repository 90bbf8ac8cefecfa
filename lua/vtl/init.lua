-- vtl: tensors for fine-tuning vision models. The C core is vtl.core; this module adds the
-- pure-Lua parts on top and is what `require "vtl"` returns.
local core = require "vtl.core"
local vtl = {}
for k, v in pairs(core) do vtl[k] = v end
return vtl
