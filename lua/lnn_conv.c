/*
 * Lua binding of convolution and pooling: the functions of vtl.nn.functional
 *
 *   conv2d(x, w, b?, {stride=1, padding=0, dilation=1, groups=1})
 *   max_pool2d(x, kernel_size, {stride=kernel_size, padding=0, dilation=1, ceil_mode=false,
 *              return_indices=false})
 *   avg_pool2d(x, kernel_size, {stride=kernel_size, padding=0, ceil_mode=false,
 *              count_include_pad=true, divisor_override=nil})
 *   adaptive_avg_pool2d(x, output_size)
 *   adaptive_max_pool2d(x, output_size, {return_indices=false})
 *
 * Sizes are a number or a table {h, w}; conv2d's padding may also be "same" or "valid". The
 * keyword arguments may instead be given positionally in PyTorch's order (conv2d(x, w, b, 2, 1)).
 * Indices returned to Lua are 1-based flat positions in each input (H,W) plane (PyTorch's + 1).
 * The raw backward functions (_conv2d_backward, ...) are exposed for tests.
 */
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include "lvtl.h"
#include "ops.h"
#include "nn_conv.h"
#include "autograd.h"

#define newbox lvtl_newbox
#define fill_box lvtl_fillbox

/* ---- arguments ---- */

/* an options table: a table with no array part */
static bool is_opts(lua_State *L, int idx) { return lua_istable(L, idx) && luaL_len(L, idx) == 0; }

/* Index of the options table at or after `from`, or 0. */
static int find_opts(lua_State *L, int from) {
  int top = lua_gettop(L);
  for (int i = from; i <= top; i++)
    if (is_opts(L, i)) return i;
  return 0;
}

/* Pushes keyword `key` from the options table, else positional argument `pos` (when it is not
   the options table itself), else nil. Returns the pushed value's index. */
static int arg_value(lua_State *L, int opts, int pos, const char *key) {
  if (opts) {
    lua_getfield(L, opts, key);
    if (!lua_isnil(L, -1)) return lua_gettop(L);
    lua_pop(L, 1);
  }
  if (pos > 0 && pos != opts && (!opts || pos < opts) && pos <= lua_gettop(L)) lua_pushvalue(L, pos);
  else lua_pushnil(L);
  return lua_gettop(L);
}

static int64_t int_value(lua_State *L, int idx, const char *fn, const char *what) {
  int isnum;
  lua_Integer v = lua_tointegerx(L, idx, &isnum);
  if (!isnum) {
    if (lua_type(L, idx) == LUA_TNUMBER)
      luaL_error(L, "%s: %s must be an integer, got %s", fn, what, lua_tostring(L, idx));
    luaL_error(L, "%s: %s must be an integer, got %s", fn, what, luaL_typename(L, idx));
  }
  return (int64_t)v;
}

/* A number or a table {h, w} at idx into out; the default when nil. */
static void pair_value(lua_State *L, int idx, const char *fn, const char *what, int64_t def, int64_t *out) {
  if (lua_isnil(L, idx)) { out[0] = out[1] = def; return; }
  if (lua_type(L, idx) == LUA_TNUMBER) { out[0] = out[1] = int_value(L, idx, fn, what); return; }
  if (!lua_istable(L, idx))
    luaL_error(L, "%s: %s must be a number or a table {h, w}, got %s", fn, what, luaL_typename(L, idx));
  lua_Integer n = luaL_len(L, idx);
  if (n != 2) luaL_error(L, "%s: %s must be a number or a table of 2 numbers {h, w}, got a table of %d", fn, what, (int)n);
  for (int i = 0; i < 2; i++) {
    lua_geti(L, idx, i + 1);
    out[i] = int_value(L, lua_gettop(L), fn, what);
    lua_pop(L, 1);
  }
}

static void pair_arg(lua_State *L, int opts, int pos, const char *key, const char *fn, int64_t def, int64_t *out) {
  int top = lua_gettop(L);
  pair_value(L, arg_value(L, opts, pos, key), fn, key, def, out);
  lua_settop(L, top);
}

static bool bool_arg(lua_State *L, int opts, int pos, const char *key, const char *fn, bool def) {
  int top = lua_gettop(L);
  int v = arg_value(L, opts, pos, key);
  bool r = def;
  if (!lua_isnil(L, v)) {
    if (!lua_isboolean(L, v)) luaL_error(L, "%s: %s must be a boolean, got %s", fn, key, luaL_typename(L, v));
    r = lua_toboolean(L, v);
  }
  lua_settop(L, top);
  return r;
}

/* conv2d's stride/padding/dilation/groups; positional arguments start at pos (0 = none). */
static vtl_conv2d_params conv_params(lua_State *L, int opts, int pos, vtl_tensor *w, const char *fn) {
  vtl_conv2d_params p;
  int64_t stride[2], dil[2], pad[2] = {0, 0};
  pair_arg(L, opts, pos ? pos : -1, "stride", fn, 1, stride);
  pair_arg(L, opts, pos ? pos + 2 : -1, "dilation", fn, 1, dil);
  int top = lua_gettop(L);
  int g = arg_value(L, opts, pos ? pos + 3 : -1, "groups");
  int64_t groups = lua_isnil(L, g) ? 1 : int_value(L, g, fn, "groups");
  lua_settop(L, top);
  int pv = arg_value(L, opts, pos ? pos + 1 : -1, "padding");
  const char *mode = lua_type(L, pv) == LUA_TSTRING ? lua_tostring(L, pv) : NULL;
  if (mode && strcmp(mode, "valid") != 0 && strcmp(mode, "same") != 0)
    luaL_error(L, "%s: padding must be a number, a table {h, w}, \"same\" or \"valid\", got \"%s\"", fn, mode);
  if (!mode) pair_value(L, pv, fn, "padding", 0, pad);
  lua_settop(L, top);
  p = vtl_conv2d_params_make(stride[0], stride[1], pad[0], pad[1], dil[0], dil[1], groups);
  if (mode && strcmp(mode, "same") == 0) {
    if (w->ndim != 4) {
      char s[96];
      vtl_shape_format(w->shape, w->ndim, s, sizeof s);
      luaL_error(L, "%s: weight must be 4-D (K,C/groups,R,S), got shape %s", fn, s);
    }
    if (vtl_conv2d_params_same(&p, w->shape[2], w->shape[3], fn)) lvtl_error(L);
  }
  /* padding_end = {h, w}: the bottom and right padding when they differ from the top and left
     (TensorFlow's "SAME" with an odd total) */
  if (opts && lua_getfield(L, opts, "padding_end") != LUA_TNIL) {
    if (mode) luaL_error(L, "%s: padding_end goes with a numeric padding, not \"%s\"", fn, mode);
    int64_t pe[2];
    pair_value(L, lua_gettop(L), fn, "padding_end", 0, pe);
    if (pe[0] < 0 || pe[1] < 0) luaL_error(L, "%s: padding_end must not be negative", fn);
    p.pad_end[0] = pe[0];
    p.pad_end[1] = pe[1];
  }
  lua_settop(L, top);
  /* channels_last = true: the output laid out channels-last (as it is when x is) */
  if (opts && lua_getfield(L, opts, "channels_last") != LUA_TNIL) {
    if (!lua_isboolean(L, -1)) luaL_error(L, "%s: channels_last must be a boolean, got %s", fn, luaL_typename(L, -1));
    p.channels_last = lua_toboolean(L, -1);
  }
  lua_settop(L, top);
  return p;
}

#define PACK_MT "vtl.WeightPack"

/* conv2d's and linear's post-operations from the options table: act (an activation's name; "gelu_tanh" for
   gelu's tanh approximation), act_params
   (a table of up to 2 numbers), add (a tensor of the output's shape), pack (weight_pack()).
   True when any was given. */
static bool post_args(lua_State *L, int opts, vtl_conv2d_post *post, const char *fn) {
  if (!opts) return false;
  int top = lua_gettop(L);
  bool any = false;
  if (lua_getfield(L, opts, "act") != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "%s: act must be an activation's name, got %s", fn, luaL_typename(L, -1));
    const char *name = lua_tostring(L, -1);
    int a = 0;
    if (strcmp(name, "gelu_tanh") == 0) a = VTL_ACT_GELU_TANH; /* gelu's tanh form shares its name */
    else
      while (a < VTL_ACT_COUNT && strcmp(vtl_activation_name((vtl_activation)a), name) != 0) a++;
    if (a == VTL_ACT_COUNT) luaL_error(L, "%s: unknown activation '%s'", fn, name);
    post->has_act = true;
    post->act = (vtl_activation)a;
    any = true;
  }
  lua_settop(L, top);
  post->act_params[0] = post->act_params[1] = 0;
  bool params = lua_getfield(L, opts, "act_params") != LUA_TNIL;
  if (params) {
    if (!lua_istable(L, -1)) luaL_error(L, "%s: act_params must be a table of numbers, got %s", fn, luaL_typename(L, -1));
    if (!post->has_act) luaL_error(L, "%s: act_params given without act", fn);
    for (int i = 0; i < 2; i++) {
      lua_geti(L, top + 1, i + 1);
      if (!lua_isnil(L, -1)) {
        if (!lua_isnumber(L, -1)) luaL_error(L, "%s: act_params[%d] must be a number, got %s", fn, i + 1, luaL_typename(L, -1));
        post->act_params[i] = lua_tonumber(L, -1);
      }
      lua_pop(L, 1);
    }
  }
  lua_settop(L, top);
  if (post->has_act && !params) { /* the activation's defaults */
    if (post->act == VTL_ACT_LEAKY_RELU) post->act_params[0] = 0.01;
    else if (post->act == VTL_ACT_ELU) post->act_params[0] = 1;
    else if (post->act == VTL_ACT_SOFTPLUS) { post->act_params[0] = 1; post->act_params[1] = 20; }
  }
  if (lua_getfield(L, opts, "add") != LUA_TNIL) {
    if (!luaL_testudata(L, -1, LVTL_TENSOR_MT)) luaL_error(L, "%s: add must be a tensor, got %s", fn, luaL_typename(L, -1));
    post->add = lvtl_checktensor(L, lua_gettop(L)); /* kept alive by the options table */
    any = true;
  }
  lua_settop(L, top);
  if (lua_getfield(L, opts, "pack") != LUA_TNIL) {
    vtl_conv2d_pack **pp = luaL_testudata(L, -1, PACK_MT);
    if (!pp || !*pp) luaL_error(L, "%s: pack must come from weight_pack(), got %s", fn, luaL_typename(L, -1));
    post->pack = *pp;
    any = true;
  }
  lua_settop(L, top);
  return any;
}

/* ---- conv2d ---- */

/* conv2d(x, w, b?, opts | stride, padding, dilation, groups) */
static int l_conv2d(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1), *w = lvtl_checktensor(L, 2), *b = NULL;
  int pos = 4;
  if (is_opts(L, 3)) pos = 0; /* conv2d(x, w, {stride = 2}) */
  else if (!lua_isnoneornil(L, 3)) b = lvtl_checktensor(L, 3);
  int opts = find_opts(L, 3);
  vtl_conv2d_params p = conv_params(L, opts, pos, w, "conv2d");
  vtl_conv2d_post post = {0};
  bool any = post_args(L, opts, &post, "conv2d");
  lvtl_box *box = newbox(L);
  return fill_box(L, box, any ? vtl_fn_conv2d_post(x, w, b, &p, &post) : vtl_fn_conv2d(x, w, b, &p));
}

/* linear(x, w, b?, opts): act(x wᵀ + b + add) with conv2d's post-operation options; an inference layer: with gradients it runs as differentiable ops */
static int l_linear(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1), *w = lvtl_checktensor(L, 2), *b = NULL;
  if (!lua_isnoneornil(L, 3) && !is_opts(L, 3)) b = lvtl_checktensor(L, 3);
  int opts = find_opts(L, 3);
  vtl_conv2d_post post = {0};
  post_args(L, opts, &post, "linear");
  lvtl_box *box = newbox(L);
  return fill_box(L, box, vtl_fn_linear_post(x, w, b, &post));
}

/* attention_qkv(qkv, heads, scale) -> (B, N, C): see vtl_fn_attention_qkv */
static int l_attention_qkv(lua_State *L) {
  vtl_tensor *qkv = lvtl_checktensor(L, 1);
  lua_Integer heads = luaL_checkinteger(L, 2);
  double scale = luaL_checknumber(L, 3);
  lvtl_box *box = newbox(L);
  return fill_box(L, box, vtl_fn_attention_qkv(qkv, (int64_t)heads, scale));
}

/* attention(q, k, v, scale, causal) -> (P, L, Ev): see vtl_op_attention (with autograd) */
static int l_attention(lua_State *L) {
  vtl_tensor *q = lvtl_checktensor(L, 1), *k = lvtl_checktensor(L, 2), *v = lvtl_checktensor(L, 3);
  double scale = luaL_checknumber(L, 4);
  bool causal = lua_toboolean(L, 5);
  lvtl_box *box = newbox(L);
  return fill_box(L, box, vtl_fn_attention(q, k, v, scale, causal));
}

/* ---- weight packs ---- */


static int l_pack_gc(lua_State *L) {
  vtl_conv2d_pack **pp = luaL_checkudata(L, 1, PACK_MT);
  vtl_conv2d_pack_free(*pp);
  *pp = NULL;
  return 0;
}

/* weight_pack() -> a pack for conv2d's and linear's {pack = } option */
static int l_weight_pack(lua_State *L) {
  vtl_conv2d_pack **pp = lua_newuserdatauv(L, sizeof *pp, 0);
  *pp = NULL;
  luaL_setmetatable(L, PACK_MT);
  *pp = vtl_conv2d_pack_new();
  if (!*pp) return luaL_error(L, "weight_pack: out of memory");
  return 1;
}

/* weight_pack_bytes(pack) -> bytes of packed weights it holds */
static int l_weight_pack_bytes(lua_State *L) {
  vtl_conv2d_pack **pp = luaL_checkudata(L, 1, PACK_MT);
  lua_pushinteger(L, (lua_Integer)vtl_conv2d_pack_bytes(*pp));
  return 1;
}

/* _conv2d_backward(gout, x, w, opts) -> gx, gw, gb */
static int l_conv2d_backward(lua_State *L) {
  vtl_tensor *gy = lvtl_checktensor(L, 1), *x = lvtl_checktensor(L, 2), *w = lvtl_checktensor(L, 3);
  int opts = find_opts(L, 4);
  vtl_conv2d_params p = conv_params(L, opts, opts == 4 ? 0 : 4, w, "conv2d_backward");
  lvtl_box *bx = newbox(L), *bw = newbox(L), *bb = newbox(L);
  vtl_tensor *gx, *gw, *gb;
  lvtl_check(L, vtl_op_conv2d_backward(gy, x, w, &p, &gx, &gw, &gb));
  fill_box(L, bx, gx);
  fill_box(L, bw, gw);
  fill_box(L, bb, gb);
  return 3;
}

/* ---- pooling ---- */

/* max/avg pooling parameters: kernel_size at argument k; stride, padding (then dilation for max)
   follow positionally or in the options table */
static vtl_pool2d_params pool_params(lua_State *L, int k, int opts, bool is_max, const char *fn) {
  vtl_pool2d_params p;
  memset(&p, 0, sizeof p);
  int top = lua_gettop(L);
  if (lua_isnoneornil(L, k) || is_opts(L, k)) luaL_error(L, "%s: kernel_size is required (a number or a table {h, w})", fn);
  pair_value(L, k, fn, "kernel_size", 1, p.kernel);
  int sv = arg_value(L, opts, k + 1, "stride");
  if (lua_istable(L, sv) && luaL_len(L, sv) == 0) lua_pushnil(L), sv = lua_gettop(L); /* stride = {} */
  pair_value(L, sv, fn, "stride", 0, p.stride);
  if (lua_isnil(L, sv)) { p.stride[0] = p.kernel[0]; p.stride[1] = p.kernel[1]; }
  lua_settop(L, top);
  pair_arg(L, opts, k + 2, "padding", fn, 0, p.pad);
  if (is_max) {
    pair_arg(L, opts, k + 3, "dilation", fn, 1, p.dilation);
    p.ceil_mode = bool_arg(L, opts, k + 4, "ceil_mode", fn, false);
  } else {
    p.dilation[0] = p.dilation[1] = 1;
    p.ceil_mode = bool_arg(L, opts, k + 3, "ceil_mode", fn, false);
    p.count_include_pad = bool_arg(L, opts, k + 4, "count_include_pad", fn, true);
    int d = arg_value(L, opts, k + 5, "divisor_override");
    if (!lua_isnil(L, d)) {
      p.divisor_override = int_value(L, d, fn, "divisor_override");
      if (p.divisor_override <= 0)
        luaL_error(L, "%s: divisor_override must be positive, got %d", fn, (int)p.divisor_override);
    }
    lua_settop(L, top);
  }
  return p;
}

/* Pushes y, and the 1-based indices when asked; ix is released. */
static int push_with_indices(lua_State *L, lvtl_box *by, lvtl_box *bi, vtl_tensor *y, vtl_tensor *ix) {
  if (!y) return lvtl_error(L);
  fill_box(L, by, y);
  if (!bi) return 1;
  vtl_tensor *one = vtl_op_binary_scalar(VTL_BIN_ADD, ix, 1, false, false);
  vtl_tensor_release(ix);
  fill_box(L, bi, one);
  return 2;
}

/* max_pool2d(x, kernel_size, opts | stride, padding, dilation, ceil_mode, return_indices) */
static int l_max_pool2d(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int opts = find_opts(L, 3);
  vtl_pool2d_params p = pool_params(L, 2, opts, true, "max_pool2d");
  bool ret = bool_arg(L, opts, 7, "return_indices", "max_pool2d", false);
  lvtl_box *by = newbox(L), *bi = ret ? newbox(L) : NULL;
  vtl_tensor *ix = NULL;
  vtl_tensor *y = vtl_fn_max_pool2d(x, &p, ret ? &ix : NULL);
  return push_with_indices(L, by, bi, y, ix);
}

/* avg_pool2d(x, kernel_size, opts | stride, padding, ceil_mode, count_include_pad, divisor_override) */
static int l_avg_pool2d(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int opts = find_opts(L, 3);
  vtl_pool2d_params p = pool_params(L, 2, opts, false, "avg_pool2d");
  lvtl_box *b = newbox(L);
  return fill_box(L, b, vtl_fn_avg_pool2d(x, &p));
}

static void output_size(lua_State *L, int idx, const char *fn, int64_t *out) {
  if (lua_isnoneornil(L, idx)) luaL_error(L, "%s: output_size is required (a number or a table {h, w})", fn);
  pair_value(L, idx, fn, "output_size", 1, out);
}

/* adaptive_avg_pool2d(x, output_size) */
static int l_adaptive_avg_pool2d(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int64_t os[2];
  output_size(L, 2, "adaptive_avg_pool2d", os);
  lvtl_box *b = newbox(L);
  return fill_box(L, b, vtl_fn_adaptive_avg_pool2d(x, os[0], os[1]));
}

/* adaptive_max_pool2d(x, output_size, opts | return_indices) */
static int l_adaptive_max_pool2d(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int64_t os[2];
  output_size(L, 2, "adaptive_max_pool2d", os);
  int opts = find_opts(L, 3);
  bool ret = bool_arg(L, opts, 3, "return_indices", "adaptive_max_pool2d", false);
  lvtl_box *by = newbox(L), *bi = ret ? newbox(L) : NULL;
  vtl_tensor *ix = NULL;
  vtl_tensor *y = vtl_fn_adaptive_max_pool2d(x, os[0], os[1], ret ? &ix : NULL);
  return push_with_indices(L, by, bi, y, ix);
}

/* ---- raw backward functions ---- */

/* 1-based indices from Lua to 0-based */
static vtl_tensor *zero_based(lua_State *L, int idx, const char *fn) {
  vtl_tensor *ix = lvtl_checktensor(L, idx);
  if (ix->dtype != VTL_I64) luaL_error(L, "%s: indices must be i64, got %s", fn, vtl_dtype_name(ix->dtype));
  vtl_tensor *z = vtl_op_binary_scalar(VTL_BIN_SUB, ix, 1, false, false);
  if (!z) lvtl_error(L);
  return z;
}

static int max_backward_impl(lua_State *L, bool adaptive) {
  const char *fn = adaptive ? "adaptive_max_pool2d_backward" : "max_pool2d_backward";
  vtl_tensor *gy = lvtl_checktensor(L, 1), *x = lvtl_checktensor(L, 2);
  lvtl_checktensor(L, 3);
  lvtl_box *b = newbox(L);
  vtl_tensor *ix = zero_based(L, 3, fn);
  vtl_tensor *gx = adaptive ? vtl_op_adaptive_max_pool2d_backward(gy, ix, x->shape, x->ndim)
                            : vtl_op_max_pool2d_backward(gy, ix, x->shape, x->ndim, NULL);
  vtl_tensor_release(ix);
  return fill_box(L, b, gx);
}

/* _max_pool2d_backward(gout, x, indices) -> gx (indices 1-based, as max_pool2d returns them) */
static int l_max_pool2d_backward(lua_State *L) { return max_backward_impl(L, false); }
/* _adaptive_max_pool2d_backward(gout, x, indices) -> gx */
static int l_adaptive_max_pool2d_backward(lua_State *L) { return max_backward_impl(L, true); }

/* _avg_pool2d_backward(gout, x, kernel_size, opts) -> gx */
static int l_avg_pool2d_backward(lua_State *L) {
  vtl_tensor *gy = lvtl_checktensor(L, 1), *x = lvtl_checktensor(L, 2);
  int opts = find_opts(L, 4);
  vtl_pool2d_params p = pool_params(L, 3, opts, false, "avg_pool2d_backward");
  lvtl_box *b = newbox(L);
  return fill_box(L, b, vtl_op_avg_pool2d_backward(gy, x->shape, x->ndim, &p));
}

/* _adaptive_avg_pool2d_backward(gout, x) -> gx */
static int l_adaptive_avg_pool2d_backward(lua_State *L) {
  vtl_tensor *gy = lvtl_checktensor(L, 1), *x = lvtl_checktensor(L, 2);
  lvtl_box *b = newbox(L);
  return fill_box(L, b, vtl_op_adaptive_avg_pool2d_backward(gy, x->shape, x->ndim));
}

static const luaL_Reg nn_conv_funcs[] = {
  {"conv2d", l_conv2d}, {"linear", l_linear}, {"attention_qkv", l_attention_qkv}, {"attention", l_attention}, {"weight_pack", l_weight_pack},
  {"weight_pack_bytes", l_weight_pack_bytes},
  {"max_pool2d", l_max_pool2d}, {"avg_pool2d", l_avg_pool2d},
  {"adaptive_avg_pool2d", l_adaptive_avg_pool2d}, {"adaptive_max_pool2d", l_adaptive_max_pool2d},
  {"_conv2d_backward", l_conv2d_backward}, {"_max_pool2d_backward", l_max_pool2d_backward},
  {"_avg_pool2d_backward", l_avg_pool2d_backward}, {"_adaptive_avg_pool2d_backward", l_adaptive_avg_pool2d_backward},
  {"_adaptive_max_pool2d_backward", l_adaptive_max_pool2d_backward}, {NULL, NULL}};

/* Adds the convolution and pooling functions to the table on top of the stack. */
void lvtl_open_nn_conv(lua_State *L) {
  if (luaL_newmetatable(L, PACK_MT)) {
    lua_pushcfunction(L, l_pack_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, nn_conv_funcs, 0);
}
