-- Vision Transformers (Dosovitskiy et al.): ViT-Tiny/Small/Base with 16x16 patches at 224,
-- timm's architecture and names (patch_embed.proj, cls_token, pos_embed, blocks.N.norm1,
-- blocks.N.attn.qkv / attn.proj, blocks.N.norm2, blocks.N.mlp.fc1 / mlp.fc2, norm, head), so
-- timm state dicts load as they are. Pre-norm blocks, exact GELU, LayerNorm eps 1e-6, the class
-- token's output feeds the head.
local core = require "vtl.core"
local nn = require "vtl.nn"
local registry = require "vtl.models.registry"
local F = nn.functional
local init = nn.init

local M = {}

local function zoo() return require "vtl.models" end

local function shape_str(t) return "{" .. table.concat(t.shape, ",") .. "}" end

local function ln(dim) return nn.LayerNorm(dim, {eps = 1e-6}) end

-- timm's init of Linear layers: truncated normal (std 0.02, cut at +-2) weights, zero bias; a cut
-- 100 standard deviations out never happens, so a plain normal draw is the same distribution
local function init_linear(m)
  init.normal_(m.weight, 0, 0.02)
  if m.bias then init.zeros_(m.bias) end
  return m
end

---PatchEmbed(img_size, patch, in_chans, dim): a patch x patch convolution with stride patch,
---(N, C, H, W) -> (N, H/patch * W/patch, dim).
local PatchEmbed = nn.Module:extend("PatchEmbed")
M.PatchEmbed = PatchEmbed

function PatchEmbed:init(img_size, patch, in_chans, dim)
  self.img_size, self.patch_size = img_size, patch
  self.grid_size = img_size // patch
  self.num_patches = self.grid_size * self.grid_size
  self.proj = nn.Conv2d(in_chans, dim, patch, {stride = patch})
end

function PatchEmbed:forward(x)
  if x.ndim ~= 4 then self:raise("expected a 4-D (N,C,H,W) input, got shape %s", shape_str(x)) end
  if x.shape[3] ~= self.img_size or x.shape[4] ~= self.img_size then
    self:raise("input size %dx%d does not match the model's %dx%d (create it with img_size = %d)",
      x.shape[3], x.shape[4], self.img_size, self.img_size, x.shape[3])
  end
  return self.proj(x):flatten(3):transpose(2, 3)
end

---Attention(dim, heads): multi-head self-attention with one qkv projection, as timm's.
local Attention = nn.Module:extend("Attention")
M.Attention = Attention

function Attention:init(dim, heads, opts)
  self.num_heads = heads
  self.head_dim = dim // heads
  self.scale = self.head_dim ^ -0.5
  self.attn_drop_rate = opts and opts.attn_drop or 0
  self.qkv = init_linear(nn.Linear(dim, 3 * dim))
  self.proj = init_linear(nn.Linear(dim, dim))
end

---x: (B, N, C); add (optional): a tensor of the output's shape added to it.
function Attention:forward(x, add)
  local B, N, C = x.shape[1], x.shape[2], x.shape[3]
  local H, D = self.num_heads, self.head_dim
  local drop = self.training and self.attn_drop_rate or 0
  -- without dropout on the probabilities: the attention op on the packed projection, whose
  -- backward pass hands qkv its gradient in one piece
  if drop == 0 then return self.proj(F.attention_qkv(self.qkv(x), H, self.scale), add) end
  local qkv = self.qkv(x):reshape(B, N, 3, H, D):permute(3, 1, 4, 2, 5) -- (3, B, H, N, D)
  local q, k, v = qkv:select(1, 1), qkv:select(1, 2), qkv:select(1, 3)
  local out = F.scaled_dot_product_attention(q, k, v, {scale = self.scale, dropout_p = drop})
  return self.proj(out:transpose(2, 3):reshape(B, N, C), add)
end

-- the two attention matmuls (q kᵀ and attn v), as fvcore counts them
function Attention:_macs(x)
  local B, N = x.shape[1], x.shape[2]
  return 2 * B * self.num_heads * N * N * self.head_dim
end

---Mlp(dim, hidden): fc1, exact GELU, fc2.
local Mlp = nn.Module:extend("Mlp")
M.Mlp = Mlp

function Mlp:init(dim, hidden, drop)
  self.fc1 = init_linear(nn.Linear(dim, hidden))
  self.act = nn.GELU()
  self.fc2 = init_linear(nn.Linear(hidden, dim))
  self.drop = drop or 0
end

-- vtl.models.fuse_for_inference: the GELU runs inside fc1
function Mlp:_fuse_inference(fuse) fuse.move_act(self, "fc1", "act") end

---x: (B, N, C); add (optional): a tensor of the output's shape added to it (by fc2 when
---there is no dropout after it).
function Mlp:forward(x, add)
  x = self.act(self.fc1(x))
  if self.drop > 0 then x = F.dropout(x, {p = self.drop, training = self.training}) end
  if self.drop == 0 then return self.fc2(x, add) end
  x = self.fc2(x)
  if self.drop > 0 then x = F.dropout(x, {p = self.drop, training = self.training}) end
  if add then x = x + add end
  return x
end

---Block(dim, heads, {mlp_ratio = 4, drop_path}): x + attn(norm1(x)), then x + mlp(norm2(x)).
local Block = nn.Module:extend("Block")
M.Block = Block

function Block:init(dim, heads, opts)
  opts = opts or {}
  self.norm1 = ln(dim)
  self.attn = Attention(dim, heads, opts)
  self.norm2 = ln(dim)
  self.mlp = Mlp(dim, math.floor(dim * (opts.mlp_ratio or 4)), opts.proj_drop)
  self.drop_path_rate = opts.drop_path or 0
end

-- vtl.models.fuse_for_inference: the residual sums run inside the output projections
function Block:_fuse_inference() rawset(self, "_fused", true) end

function Block:forward(x)
  if rawget(self, "_fused") then
    x = self.attn(self.norm1(x), x)
    return self.mlp(self.norm2(x), x)
  end
  local p = self.drop_path_rate
  local a = self.attn(self.norm1(x))
  if p > 0 then a = F.drop_path(a, p, self.training) end
  x = x + a
  local m = self.mlp(self.norm2(x))
  if p > 0 then m = F.drop_path(m, p, self.training) end
  return x + m
end

---@class vtl.models.VisionTransformer: vtl.nn.Module
local VisionTransformer = nn.Module:extend("VisionTransformer")
M.VisionTransformer = VisionTransformer

---VisionTransformer({embed_dim, depth, num_heads, patch_size = 16, img_size = 224, in_chans = 3,
---num_classes = 1000, drop_rate = 0 (head dropout), proj_drop_rate = 0, attn_drop_rate = 0,
---drop_path_rate = 0, mlp_ratio = 4}).
function VisionTransformer:init(opts)
  local dim, depth, heads = opts.embed_dim, opts.depth, opts.num_heads
  local img, patch = opts.img_size or 224, opts.patch_size or 16
  if type(img) == "table" then
    if img[1] ~= img[2] then error("VisionTransformer: only square img_size is supported", 3) end
    img = img[1]
  end
  if img % patch ~= 0 then error(("VisionTransformer: img_size %d is not a multiple of the patch size %d"):format(img, patch), 3) end
  local num_classes = opts.num_classes or 1000
  self.embed_dim, self.num_features, self.num_classes = dim, dim, num_classes
  self.drop_rate = opts.drop_rate or 0
  self.num_prefix_tokens = 1
  self.patch_embed = PatchEmbed(img, patch, opts.in_chans or 3, dim)
  local n = self.patch_embed.num_patches + 1
  self.cls_token = nn.Parameter(core.zeros({1, 1, dim}))
  self.pos_embed = nn.Parameter(core.zeros({1, n, dim}))
  local blocks = {}
  local dpr = opts.drop_path_rate or 0
  for i = 1, depth do
    blocks[i] = Block(dim, heads, {mlp_ratio = opts.mlp_ratio, proj_drop = opts.proj_drop_rate,
      attn_drop = opts.attn_drop_rate, drop_path = depth > 1 and dpr * (i - 1) / (depth - 1) or 0})
  end
  self.blocks = nn.Sequential(blocks)
  self.norm = ln(dim)
  self.head = num_classes > 0 and init_linear(nn.Linear(dim, num_classes)) or nn.Identity()
  init.normal_(self.pos_embed, 0, 0.02)
  init.normal_(self.cls_token, {std = 1e-6})
end

-- the parameters in state_dict order: the model's own (cls_token, pos_embed) come first

---Features before pooling (timm's forward_features): all tokens after the final norm, (N, 1 + patches, dim).
---@param x vtl.Tensor (N, C, H, W)
---@return vtl.Tensor
function VisionTransformer:forward_features(x)
  x = self.patch_embed(x)
  local B = x.shape[1]
  local cls = self.cls_token:expand(B, 1, self.embed_dim)
  x = core.cat({cls, x}, 2) + self.pos_embed
  x = self.blocks(x)
  return self.norm(x)
end

---The class token's features, head dropout and the head; pre_logits: stop before the head.
function VisionTransformer:forward_head(x, pre_logits)
  x = x:select(2, 1)
  if self.drop_rate > 0 then x = F.dropout(x, {p = self.drop_rate, training = self.training}) end
  if pre_logits then return x end
  return self.head(x)
end

function VisionTransformer:forward(x) return self:forward_head(self:forward_features(x)) end

---The classifier module (head).
function VisionTransformer:get_classifier() return self.head end

---Replaces head with a new Linear(dim, num_classes) (0: an Identity).
---@param num_classes integer
function VisionTransformer:reset_classifier(num_classes)
  self.head = registry.classifier(self.embed_dim, num_classes)
  self.num_classes = num_classes
end

---Parameter names exempt from weight decay (as timm): the position embedding and class token.
---@return string[]
function VisionTransformer:no_weight_decay() return {"pos_embed", "cls_token"} end

---Layer groups: "embed" (patch_embed, cls_token, pos_embed), "block1".."blockN", "norm", "head".
function VisionTransformer:layer_groups()
  local g = zoo().group
  local groups = {g(self, "embed", {self.patch_embed}, {{"cls_token", self.cls_token}, {"pos_embed", self.pos_embed}})}
  for i = 1, #self.blocks do groups[#groups + 1] = g(self, "block" .. i, {self.blocks[i]}) end
  groups[#groups + 1] = g(self, "norm", {self.norm})
  groups[#groups + 1] = g(self, "head", {self.head})
  return groups
end

function VisionTransformer:summary(input_shape, opts) return zoo().summary(self, input_shape, opts) end

-- ---- registration ----

local VARIANTS = {
  vit_tiny_patch16_224 = {dim = 192, heads = 3, tag = "augreg_in21k_ft_in1k", label = "ViT-Ti/16"},
  vit_small_patch16_224 = {dim = 384, heads = 6, tag = "augreg_in21k_ft_in1k", label = "ViT-S/16"},
  vit_base_patch16_224 = {dim = 768, heads = 12, tag = "augreg2_in21k_ft_in1k", label = "ViT-B/16"},
}

for name, v in pairs(VARIANTS) do
  local cfg = {mean = {0.5, 0.5, 0.5}, std = {0.5, 0.5, 0.5}, input_size = {3, 224, 224}, crop_pct = 0.9,
               interpolation = "bicubic", num_classes = 1000, first_conv = "patch_embed.proj", classifier = "head",
               architecture = name, tag = v.tag}
  local file = name .. "." .. v.tag .. ".safetensors"
  registry.register(name, {
    build = function(opts)
      opts = opts or {}
      local o = {embed_dim = v.dim, depth = 12, num_heads = v.heads, patch_size = 16}
      for k, val in pairs(opts) do o[k] = val end
      local model = VisionTransformer(o)
      local c = zoo().cfg_for(cfg, opts.in_chans)
      local img = model.patch_embed.img_size
      c.input_size[2], c.input_size[3] = img, img
      model.pretrained_cfg = c
      return model
    end,
    cfg = cfg,
    weights = {file = file, how = ("timm's weights: the model.safetensors of the Hugging Face repository "
      .. "timm/%s.%s, saved under this name (or timm.create_model('%s.%s', pretrained=True) and save its state_dict)")
      :format(name, v.tag, name, v.tag)},
    description = ("%s (timm), ImageNet-21k pretrained, ImageNet-1k fine-tuned"):format(v.label),
  })
end

return M
