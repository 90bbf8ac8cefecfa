/*
 * Lua binding of the nn ops of runtime/nn_norm.h: normalisation, activations, softmax, losses
 * and dropout, opened into vtl.core.nn (re-exported as vtl.nn.functional). Signatures follow
 * torch.nn.functional, keyword arguments in a trailing options table (unknown names are errors):
 *
 *   F.batch_norm(x, running_mean, running_var, weight, bias, {training, momentum, eps, add, act})
 *     (add: a tensor of x's shape added after normalising, act: "relu" | "relu6" after that, in the
 *     same pass)
 *   F.layer_norm(x, normalized_shape, weight, bias, {eps})     F.group_norm(x, G, w, b, {eps})
 *   F.relu / relu6 / leaky_relu {negative_slope} / gelu {approximate} / silu / hardswish /
 *     hardsigmoid / softplus {beta, threshold} / elu {alpha} / sigmoid / tanh   (x, opts)
 *   F.softmax(x, dim), F.log_softmax(x, dim)
 *   F.cross_entropy(logits, target, {weight, ignore_index, label_smoothing, reduction})
 *   F.nll_loss(logp, target, {weight, ignore_index, reduction})
 *   F.binary_cross_entropy_with_logits(x, y, {weight, pos_weight, reduction})
 *   F.mse_loss / l1_loss / smooth_l1_loss {beta} / kl_div {log_target}   (x, y, {reduction})
 *   F.dropout(x, {p, training, generator}) → output, keep mask (nil when nothing is dropped)
 *
 * PyTorch's positional forms work too (batch_norm's training, momentum, eps; leaky_relu's slope;
 * dropout's p, training). Dims are 1-based (negative from the end), class targets 1-based.
 * Every argument and option is checked before anything is allocated. The raw backward
 * functions `_<op>_backward` are exposed for tests.
 */
#include <math.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include "lvtl.h"
#include "nn_norm.h"
#include "grad_ops.h"

#define newbox lvtl_newbox
#define fill_box lvtl_fillbox
#define gc_pressure lvtl_gc_pressure
#define RETURN_TENSOR(expr) do { lvtl_box *b_ = newbox(L); return fill_box(L, b_, (expr)); } while (0)

/* n boxes pushed on the stack, to be filled by fill_boxes */
static int push_boxes(lua_State *L, lvtl_box **bs, int n) {
  for (int i = 0; i < n; i++) bs[i] = newbox(L);
  return lua_gettop(L) - n + 1;
}

/* Fills the boxes from base on with ts (nil where a result is NULL); raises when st fails. */
static int fill_boxes(lua_State *L, vtl_status st, int base, lvtl_box **bs, vtl_tensor **ts, int n) {
  if (st != VTL_OK) return lvtl_error(L);
  for (int i = 0; i < n; i++) {
    if (ts[i]) {
      bs[i]->t = ts[i];
      gc_pressure(L, ts[i]);
    } else {
      lua_pushnil(L);
      lua_replace(L, base + i);
    }
  }
  return n;
}

/* ---- arguments and options ---- */

/* index of the options table: the first plain table at or after idx with no array part, or 0 */
static int opts_at(lua_State *L, int idx) {
  for (int i = idx; i <= lua_gettop(L); i++)
    if (lua_type(L, i) == LUA_TTABLE && luaL_len(L, i) == 0) return i;
  return 0;
}

/* Raises on option names not in `allowed` (NULL-terminated), to catch typos. */
static void check_opts(lua_State *L, int o, const char *fn, const char *const *allowed) {
  if (!o) return;
  lua_pushnil(L);
  while (lua_next(L, o)) {
    lua_pop(L, 1);
    const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    bool known = false;
    for (int i = 0; k && allowed[i]; i++) known |= strcmp(k, allowed[i]) == 0;
    if (!known) {
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      for (int i = 0; allowed[i]; i++) {
        if (i) luaL_addstring(&b, ", ");
        luaL_addstring(&b, allowed[i]);
      }
      luaL_pushresult(&b);
      if (k) luaL_error(L, "%s: unknown option '%s' (valid: %s)", fn, k, lua_tostring(L, -1));
      luaL_error(L, "%s: option names must be strings, got a %s key (valid: %s)", fn, luaL_typename(L, -2),
                 lua_tostring(L, -1));
    }
  }
}

/* pushes option `name` of table o (nil when o == 0); returns its type */
static int get_opt(lua_State *L, int o, const char *name) {
  if (!o) { lua_pushnil(L); return LUA_TNIL; }
  return lua_getfield(L, o, name);
}

static double opt_number(lua_State *L, int o, const char *fn, const char *name, double def) {
  int t = get_opt(L, o, name);
  double v = def;
  if (t == LUA_TNUMBER) v = lua_tonumber(L, -1);
  else if (t != LUA_TNIL) luaL_error(L, "%s: option '%s' must be a number, got %s", fn, name, luaL_typename(L, -1));
  lua_pop(L, 1);
  return v;
}

static int64_t opt_integer(lua_State *L, int o, const char *fn, const char *name, int64_t def) {
  int t = get_opt(L, o, name);
  int64_t v = def;
  if (t != LUA_TNIL) {
    int isint;
    lua_Integer i = lua_tointegerx(L, -1, &isint);
    if (!isint && t == LUA_TNUMBER)
      luaL_error(L, "%s: option '%s' must be an integer, got %f", fn, name, lua_tonumber(L, -1));
    if (!isint) luaL_error(L, "%s: option '%s' must be an integer, got %s", fn, name, luaL_typename(L, -1));
    v = i;
  }
  lua_pop(L, 1);
  return v;
}

static bool opt_bool(lua_State *L, int o, const char *fn, const char *name, bool def) {
  int t = get_opt(L, o, name);
  bool v = def;
  if (t == LUA_TBOOLEAN) v = lua_toboolean(L, -1);
  else if (t != LUA_TNIL) luaL_error(L, "%s: option '%s' must be a boolean, got %s", fn, name, luaL_typename(L, -1));
  lua_pop(L, 1);
  return v;
}

/* A tensor option (nil → NULL). The tensor stays referenced by the options table. */
static vtl_tensor *opt_tensor(lua_State *L, int o, const char *fn, const char *name) {
  int t = get_opt(L, o, name);
  vtl_tensor *v = NULL;
  if (t != LUA_TNIL) {
    lvtl_box *b = luaL_testudata(L, -1, LVTL_TENSOR_MT);
    if (!b) luaL_error(L, "%s: option '%s' must be a vtl.Tensor, got %s", fn, name, luaL_typename(L, -1));
    if (!b->t) luaL_error(L, "%s: option '%s' is a tensor that has been freed", fn, name);
    v = b->t;
  }
  lua_pop(L, 1);
  return v;
}

/* A string option naming one of names[0 .. n-1]: its index, or def when the option is nil;
   anything else raises "<fn>: <opt> must be <expect>, got ...". */
static int opt_choice(lua_State *L, int o, const char *fn, const char *opt, const char *const *names, int n, int def,
                      const char *expect) {
  int t = get_opt(L, o, opt);
  int r = def;
  if (t != LUA_TNIL) {
    const char *s = t == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    r = 0;
    while (s && r < n && strcmp(s, names[r]) != 0) r++;
    if (!s || r == n)
      luaL_error(L, "%s: %s must be %s, got %s%s%s", fn, opt, expect, s ? "'" : "", s ? s : luaL_typename(L, -1),
                 s ? "'" : "");
  }
  lua_pop(L, 1);
  return r;
}

static vtl_reduction opt_reduction(lua_State *L, int o, const char *fn, bool batchmean_ok) {
  static const char *const names[] = {"mean", "sum", "none", "batchmean"};
  static const vtl_reduction kinds[] = {VTL_REDUCTION_MEAN, VTL_REDUCTION_SUM, VTL_REDUCTION_NONE,
                                        VTL_REDUCTION_BATCHMEAN};
  return kinds[opt_choice(L, o, fn, "reduction", names, batchmean_ok ? 4 : 3, 0,
                          batchmean_ok ? "'mean', 'sum', 'batchmean' or 'none'" : "'mean', 'sum' or 'none'")];
}

/* A positional tensor that may be nil or absent (or replaced by the options table at o). */
static vtl_tensor *arg_tensor_opt(lua_State *L, int idx, int o) {
  if (lua_isnoneornil(L, idx) || (o && idx >= o)) return NULL;
  return lvtl_checktensor(L, idx);
}

/* A 1-based dim (negative from the end) → 0-based. */
static int arg_dim(lua_State *L, int idx, int ndim, const char *fn) {
  int isint;
  lua_Integer d = lua_tointegerx(L, idx, &isint);
  if (!isint) {
    if (lua_isnoneornil(L, idx)) luaL_error(L, "%s: dim is required (1-based; -1 is the last dim)", fn);
    luaL_error(L, "%s: dim must be an integer, got %s", fn, luaL_typename(L, idx));
  }
  int n = ndim ? ndim : 1;
  lua_Integer z = d < 0 ? d + n : d - 1;
  if (d == 0 || z < 0 || z >= n)
    luaL_error(L, "%s: dim %d out of range for a %d-D tensor (valid: 1..%d or -%d..-1)", fn, (int)d, ndim, n, n);
  return (int)z;
}

/* ---- normalisation ---- */

static const char *const bn_opts[] = {"training", "momentum", "eps", "act", "add", NULL};

/* batch_norm's fused activation: act = "relu" | "relu6" (nil: none) */
static vtl_activation bn_act(lua_State *L, int o, const char *fn) {
  static const char *const names[] = {"relu", "relu6"};
  static const vtl_activation acts[] = {VTL_ACT_RELU, VTL_ACT_RELU6, VTL_ACT_COUNT};
  return acts[opt_choice(L, o, fn, "act", names, 2, 2, "'relu' or 'relu6'")];
}

static int l_batch_norm(lua_State *L) {
  static const char fn[] = "batch_norm";
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int o = opts_at(L, 2);
  vtl_tensor *rm = arg_tensor_opt(L, 2, o), *rv = arg_tensor_opt(L, 3, o);
  vtl_tensor *w = arg_tensor_opt(L, 4, o), *b = arg_tensor_opt(L, 5, o);
  check_opts(L, o, fn, bn_opts);
  /* PyTorch's positional order also works: (x, rm, rv, w, b, training, momentum, eps) */
  bool training = lua_type(L, 6) == LUA_TBOOLEAN ? lua_toboolean(L, 6) : false;
  double momentum = lua_type(L, 7) == LUA_TNUMBER ? lua_tonumber(L, 7) : 0.1;
  double eps = lua_type(L, 8) == LUA_TNUMBER ? lua_tonumber(L, 8) : 1e-5;
  training = opt_bool(L, o, fn, "training", training);
  momentum = opt_number(L, o, fn, "momentum", momentum);
  eps = opt_number(L, o, fn, "eps", eps);
  vtl_activation act = bn_act(L, o, fn);
  vtl_tensor *add = opt_tensor(L, o, fn, "add");
  RETURN_TENSOR(vtl_fn_batch_norm_act(x, rm, rv, w, b, training, momentum, eps, add, act));
}

/* _batch_norm_backward(gout, x, running_mean, running_var, weight, {training, eps}) → gx, gw, gb */
static int l_batch_norm_backward(lua_State *L) {
  static const char fn[] = "_batch_norm_backward";
  vtl_tensor *g = lvtl_checktensor(L, 1), *x = lvtl_checktensor(L, 2);
  int o = opts_at(L, 3);
  vtl_tensor *rm = arg_tensor_opt(L, 3, o), *rv = arg_tensor_opt(L, 4, o), *w = arg_tensor_opt(L, 5, o);
  check_opts(L, o, fn, bn_opts);
  bool training = opt_bool(L, o, fn, "training", false);
  double eps = opt_number(L, o, fn, "eps", 1e-5);
  lvtl_box *bs[3];
  int base = push_boxes(L, bs, 3);
  vtl_tensor *mean, *invstd, *ts[3] = {NULL, NULL, NULL};
  /* the statistics the forward uses (training: of the batch; running stats left untouched) */
  vtl_tensor *y = vtl_op_batch_norm(x, training ? NULL : rm, training ? NULL : rv, w, NULL, training, 0, eps, &mean,
                                    &invstd);
  if (!y) return lvtl_error(L);
  vtl_tensor_release(y);
  vtl_status st = vtl_op_batch_norm_backward(g, x, w, mean, invstd, training, &ts[0], &ts[1], &ts[2]);
  vtl_tensor_release(mean);
  vtl_tensor_release(invstd);
  return fill_boxes(L, st, base, bs, ts, 3);
}

/* normalized_shape: an integer or a table of integers */
static int arg_shape(lua_State *L, int idx, int64_t *shape, const char *fn) {
  if (lua_isinteger(L, idx)) { shape[0] = lua_tointeger(L, idx); return 1; }
  if (!lua_istable(L, idx))
    return luaL_error(L, "%s: normalized_shape must be an integer or a table of integers, got %s", fn,
                      luaL_typename(L, idx));
  lua_Integer n = luaL_len(L, idx);
  if (n < 1 || n > VTL_MAX_DIMS) return luaL_error(L, "%s: normalized_shape must have 1 to %d dims, got %d", fn, VTL_MAX_DIMS, (int)n);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, idx, i);
    if (!lua_isinteger(L, -1))
      luaL_error(L, "%s: normalized_shape[%d] must be an integer, got %s", fn, (int)i, luaL_typename(L, -1));
    shape[i - 1] = lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  return (int)n;
}

static const char *const eps_opts[] = {"eps", NULL};

static int l_layer_norm(lua_State *L) {
  static const char fn[] = "layer_norm";
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int64_t shape[VTL_MAX_DIMS];
  int nd = arg_shape(L, 2, shape, fn);
  int o = opts_at(L, 3);
  vtl_tensor *w = arg_tensor_opt(L, 3, o), *b = arg_tensor_opt(L, 4, o);
  check_opts(L, o, fn, eps_opts);
  double eps = opt_number(L, o, fn, "eps", lua_type(L, 5) == LUA_TNUMBER ? lua_tonumber(L, 5) : 1e-5);
  RETURN_TENSOR(vtl_fn_layer_norm(x, shape, nd, w, b, eps));
}

/* _layer_norm_backward(gout, x, normalized_shape, weight, {eps}) → gx, gw, gb */
static int l_layer_norm_backward(lua_State *L) {
  static const char fn[] = "_layer_norm_backward";
  vtl_tensor *g = lvtl_checktensor(L, 1), *x = lvtl_checktensor(L, 2);
  int64_t shape[VTL_MAX_DIMS];
  int nd = arg_shape(L, 3, shape, fn);
  int o = opts_at(L, 4);
  vtl_tensor *w = arg_tensor_opt(L, 4, o);
  check_opts(L, o, fn, eps_opts);
  double eps = opt_number(L, o, fn, "eps", 1e-5);
  lvtl_box *bs[3];
  int base = push_boxes(L, bs, 3);
  vtl_tensor *mean, *rstd, *ts[3] = {NULL, NULL, NULL};
  vtl_tensor *y = vtl_op_layer_norm(x, shape, nd, w, NULL, eps, &mean, &rstd);
  if (!y) return lvtl_error(L);
  vtl_tensor_release(y);
  vtl_status st = vtl_op_layer_norm_backward(g, x, nd, w, mean, rstd, &ts[0], &ts[1], &ts[2]);
  vtl_tensor_release(mean);
  vtl_tensor_release(rstd);
  return fill_boxes(L, st, base, bs, ts, 3);
}

static int64_t arg_groups(lua_State *L, int idx, const char *fn) {
  if (!lua_isinteger(L, idx))
    luaL_error(L, "%s: num_groups must be an integer, got %s", fn,
               lua_type(L, idx) == LUA_TNUMBER ? "a fraction" : luaL_typename(L, idx));
  return lua_tointeger(L, idx);
}

static int l_group_norm(lua_State *L) {
  static const char fn[] = "group_norm";
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int64_t G = arg_groups(L, 2, fn);
  int o = opts_at(L, 3);
  vtl_tensor *w = arg_tensor_opt(L, 3, o), *b = arg_tensor_opt(L, 4, o);
  check_opts(L, o, fn, eps_opts);
  double eps = opt_number(L, o, fn, "eps", lua_type(L, 5) == LUA_TNUMBER ? lua_tonumber(L, 5) : 1e-5);
  RETURN_TENSOR(vtl_fn_group_norm(x, G, w, b, eps));
}

/* _group_norm_backward(gout, x, num_groups, weight, {eps}) → gx, gw, gb */
static int l_group_norm_backward(lua_State *L) {
  static const char fn[] = "_group_norm_backward";
  vtl_tensor *g = lvtl_checktensor(L, 1), *x = lvtl_checktensor(L, 2);
  int64_t G = arg_groups(L, 3, fn);
  int o = opts_at(L, 4);
  vtl_tensor *w = arg_tensor_opt(L, 4, o);
  check_opts(L, o, fn, eps_opts);
  double eps = opt_number(L, o, fn, "eps", 1e-5);
  lvtl_box *bs[3];
  int base = push_boxes(L, bs, 3);
  vtl_tensor *mean, *rstd, *ts[3] = {NULL, NULL, NULL};
  vtl_tensor *y = vtl_op_group_norm(x, G, w, NULL, eps, &mean, &rstd);
  if (!y) return lvtl_error(L);
  vtl_tensor_release(y);
  vtl_status st = vtl_op_group_norm_backward(g, x, G, w, mean, rstd, &ts[0], &ts[1], &ts[2]);
  vtl_tensor_release(mean);
  vtl_tensor_release(rstd);
  return fill_boxes(L, st, base, bs, ts, 3);
}

/* ---- activations: one closure per activation, its vtl_activation as upvalue 1 ---- */

/* Reads an activation's parameters from a positional number at idx and/or the options table
   (PyTorch's F.leaky_relu(x, 0.2) and F.leaky_relu(x, {negative_slope = 0.2}) both work);
   gelu's approximate option selects the variant. */
static vtl_activation act_args(lua_State *L, int idx, const char *fn, double p[2]) {
  vtl_activation act = (vtl_activation)lua_tointeger(L, lua_upvalueindex(1));
  int o = opts_at(L, idx);
  p[0] = act == VTL_ACT_LEAKY_RELU ? 0.01 : 1;
  p[1] = 20;
  static const char *const none[] = {NULL}, *const slope[] = {"negative_slope", "inplace", NULL},
                           *const alpha[] = {"alpha", "inplace", NULL}, *const sp[] = {"beta", "threshold", NULL},
                           *const gelu[] = {"approximate", NULL}, *const inplace[] = {"inplace", NULL};
  const char *const *allowed = act == VTL_ACT_LEAKY_RELU ? slope : act == VTL_ACT_ELU ? alpha
                               : act == VTL_ACT_SOFTPLUS ? sp : act == VTL_ACT_GELU ? gelu
                               : act == VTL_ACT_SIGMOID || act == VTL_ACT_TANH ? none : inplace;
  check_opts(L, o, fn, allowed);
  if (opt_bool(L, o, fn, "inplace", false))
    luaL_error(L, "%s: inplace = true is not supported; use the result (y = F.%s(x))", fn, fn);
  int npos = act == VTL_ACT_SOFTPLUS ? 2 : (act == VTL_ACT_LEAKY_RELU || act == VTL_ACT_ELU) ? 1 : 0;
  for (int k = 0; k < npos; k++)
    if (lua_type(L, idx + k) == LUA_TNUMBER) p[k] = lua_tonumber(L, idx + k);
  if (act == VTL_ACT_LEAKY_RELU) p[0] = opt_number(L, o, fn, "negative_slope", p[0]);
  if (act == VTL_ACT_ELU) p[0] = opt_number(L, o, fn, "alpha", p[0]);
  if (act == VTL_ACT_SOFTPLUS) {
    p[0] = opt_number(L, o, fn, "beta", p[0]);
    p[1] = opt_number(L, o, fn, "threshold", p[1]);
  }
  if (act == VTL_ACT_GELU && get_opt(L, o, "approximate") != LUA_TNIL) {
    const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    if (s && strcmp(s, "tanh") == 0) act = VTL_ACT_GELU_TANH;
    else if (!s || strcmp(s, "none") != 0)
      luaL_error(L, "%s: approximate must be 'none' or 'tanh', got %s", fn, s ? s : luaL_typename(L, -1));
    lua_pop(L, 1);
  } else if (act == VTL_ACT_GELU) {
    lua_pop(L, 1);
  }
  return act;
}

static int l_activation(lua_State *L) {
  vtl_activation act0 = (vtl_activation)lua_tointeger(L, lua_upvalueindex(1));
  const char *fn = vtl_activation_name(act0);
  vtl_tensor *x = lvtl_checktensor(L, 1);
  double p[2];
  vtl_activation act = act_args(L, 2, fn, p);
  /* relu, sigmoid and tanh of integer tensors: the tensor methods' rules */
  if (!vtl_dtype_is_float(x->dtype) && (act == VTL_ACT_RELU || act == VTL_ACT_SIGMOID || act == VTL_ACT_TANH)) {
    vtl_unary_op op = act == VTL_ACT_RELU ? VTL_UN_RELU : act == VTL_ACT_SIGMOID ? VTL_UN_SIGMOID : VTL_UN_TANH;
    RETURN_TENSOR(vtl_fn_unary(op, x, NULL));
  }
  RETURN_TENSOR(vtl_fn_activation(act, x, p));
}

/* _<act>_backward(gout, s, opts): s is the forward's output for relu, sigmoid, tanh and elu,
   its input otherwise */
static int l_activation_backward(lua_State *L) {
  const char *fn = lua_tostring(L, lua_upvalueindex(2));
  vtl_tensor *g = lvtl_checktensor(L, 1), *s = lvtl_checktensor(L, 2);
  double p[2];
  vtl_activation act = act_args(L, 3, fn, p);
  RETURN_TENSOR(vtl_op_activation_backward(act, g, s, p));
}

/* ---- softmax ---- */

static const char *const dim_opts[] = {"dim", NULL};

/* softmax(x, dim) or softmax(x, {dim = d}) */
static int softmax_impl(lua_State *L, bool logsm) {
  const char *fn = logsm ? "log_softmax" : "softmax";
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int o = opts_at(L, 2);
  check_opts(L, o, fn, dim_opts);
  if (o == 2) {
    lua_getfield(L, 2, "dim");
    lua_replace(L, 2);
  }
  int dim = arg_dim(L, 2, x->ndim, fn);
  RETURN_TENSOR(vtl_fn_softmax(x, dim, logsm));
}
static int l_softmax(lua_State *L) { return softmax_impl(L, false); }
static int l_log_softmax(lua_State *L) { return softmax_impl(L, true); }

static int softmax_backward_impl(lua_State *L, bool logsm) {
  const char *fn = logsm ? "_log_softmax_backward" : "_softmax_backward";
  vtl_tensor *g = lvtl_checktensor(L, 1), *y = lvtl_checktensor(L, 2);
  int dim = arg_dim(L, 3, y->ndim, fn);
  RETURN_TENSOR(vtl_op_softmax_backward(g, y, dim, logsm));
}
static int l_softmax_backward(lua_State *L) { return softmax_backward_impl(L, false); }
static int l_log_softmax_backward(lua_State *L) { return softmax_backward_impl(L, true); }

/* ---- losses ---- */

typedef struct {
  vtl_tensor *weight;
  int64_t ignore_index;
  double smoothing;
  vtl_reduction red;
} ce_opts;

static const char *const ce_opt_names[] = {"weight", "ignore_index", "label_smoothing", "reduction", NULL};
static const char *const nll_opt_names[] = {"weight", "ignore_index", "reduction", NULL};

static ce_opts read_ce_opts(lua_State *L, int o, const char *fn, bool ce) {
  check_opts(L, o, fn, ce ? ce_opt_names : nll_opt_names);
  ce_opts r;
  r.weight = opt_tensor(L, o, fn, "weight");
  r.ignore_index = opt_integer(L, o, fn, "ignore_index", -100);
  r.smoothing = ce ? opt_number(L, o, fn, "label_smoothing", 0) : 0;
  r.red = opt_reduction(L, o, fn, false);
  return r;
}

static int l_cross_entropy(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1), *t = lvtl_checktensor(L, 2);
  ce_opts c = read_ce_opts(L, opts_at(L, 3), "cross_entropy", true);
  RETURN_TENSOR(vtl_fn_cross_entropy(x, t, c.weight, c.ignore_index, c.smoothing, c.red));
}

/* _cross_entropy_backward(gout, logits, target, opts) → glogits, gtarget (probabilities only) */
static int l_cross_entropy_backward(lua_State *L) {
  vtl_tensor *g = lvtl_checktensor(L, 1), *x = lvtl_checktensor(L, 2), *t = lvtl_checktensor(L, 3);
  ce_opts c = read_ce_opts(L, opts_at(L, 4), "_cross_entropy_backward", true);
  lvtl_box *bs[2];
  int base = push_boxes(L, bs, 2);
  vtl_tensor *ts[2] = {NULL, NULL};
  vtl_status st = vtl_op_cross_entropy_backward(g, x, t, c.weight, c.ignore_index, c.smoothing, c.red, &ts[0], &ts[1]);
  return fill_boxes(L, st, base, bs, ts, 2);
}

static int l_nll_loss(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1), *t = lvtl_checktensor(L, 2);
  ce_opts c = read_ce_opts(L, opts_at(L, 3), "nll_loss", false);
  RETURN_TENSOR(vtl_fn_nll_loss(x, t, c.weight, c.ignore_index, c.red));
}

static int l_nll_loss_backward(lua_State *L) {
  vtl_tensor *g = lvtl_checktensor(L, 1), *x = lvtl_checktensor(L, 2), *t = lvtl_checktensor(L, 3);
  ce_opts c = read_ce_opts(L, opts_at(L, 4), "_nll_loss_backward", false);
  RETURN_TENSOR(vtl_op_nll_loss_backward(g, x, t, c.weight, c.ignore_index, c.red));
}

static const char *const bce_opt_names[] = {"weight", "pos_weight", "reduction", NULL};

static int l_bce_with_logits(lua_State *L) {
  static const char fn[] = "binary_cross_entropy_with_logits";
  vtl_tensor *x = lvtl_checktensor(L, 1), *y = lvtl_checktensor(L, 2);
  int o = opts_at(L, 3);
  check_opts(L, o, fn, bce_opt_names);
  vtl_tensor *w = opt_tensor(L, o, fn, "weight"), *pw = opt_tensor(L, o, fn, "pos_weight");
  vtl_reduction red = opt_reduction(L, o, fn, false);
  RETURN_TENSOR(vtl_fn_bce_with_logits(x, y, w, pw, red));
}

/* → gx, gtarget */
static int l_bce_with_logits_backward(lua_State *L) {
  static const char fn[] = "_binary_cross_entropy_with_logits_backward";
  vtl_tensor *g = lvtl_checktensor(L, 1), *x = lvtl_checktensor(L, 2), *y = lvtl_checktensor(L, 3);
  int o = opts_at(L, 4);
  check_opts(L, o, fn, bce_opt_names);
  vtl_tensor *w = opt_tensor(L, o, fn, "weight"), *pw = opt_tensor(L, o, fn, "pos_weight");
  vtl_reduction red = opt_reduction(L, o, fn, false);
  lvtl_box *bs[2];
  int base = push_boxes(L, bs, 2);
  vtl_tensor *ts[2] = {NULL, NULL};
  vtl_status st = vtl_op_bce_with_logits_backward(g, x, y, w, pw, red, &ts[0], &ts[1]);
  return fill_boxes(L, st, base, bs, ts, 2);
}

/* elementwise losses: upvalue 1 is the vtl_loss */
static double loss_param(lua_State *L, int o, vtl_loss kind, const char *fn) {
  static const char *const plain[] = {"reduction", NULL}, *const sl1[] = {"reduction", "beta", NULL},
                           *const kl[] = {"reduction", "log_target", NULL};
  check_opts(L, o, fn, kind == VTL_LOSS_SMOOTH_L1 ? sl1 : kind == VTL_LOSS_KL_DIV ? kl : plain);
  if (kind == VTL_LOSS_SMOOTH_L1) return opt_number(L, o, fn, "beta", 1);
  if (kind == VTL_LOSS_KL_DIV) return opt_bool(L, o, fn, "log_target", false);
  return 0;
}

static int l_pointwise_loss(lua_State *L) {
  vtl_loss kind = (vtl_loss)lua_tointeger(L, lua_upvalueindex(1));
  const char *fn = vtl_loss_name(kind);
  vtl_tensor *x = lvtl_checktensor(L, 1), *y = lvtl_checktensor(L, 2);
  int o = opts_at(L, 3);
  double param = loss_param(L, o, kind, fn);
  vtl_reduction red = opt_reduction(L, o, fn, kind == VTL_LOSS_KL_DIV);
  RETURN_TENSOR(vtl_fn_pointwise_loss(kind, x, y, red, param));
}

/* _<loss>_backward(gout, input, target, opts) → ginput, gtarget */
static int l_pointwise_loss_backward(lua_State *L) {
  vtl_loss kind = (vtl_loss)lua_tointeger(L, lua_upvalueindex(1));
  const char *fn = lua_tostring(L, lua_upvalueindex(2));
  vtl_tensor *g = lvtl_checktensor(L, 1), *x = lvtl_checktensor(L, 2), *y = lvtl_checktensor(L, 3);
  int o = opts_at(L, 4);
  double param = loss_param(L, o, kind, fn);
  vtl_reduction red = opt_reduction(L, o, fn, kind == VTL_LOSS_KL_DIV);
  lvtl_box *bs[2];
  int base = push_boxes(L, bs, 2);
  vtl_tensor *ts[2] = {NULL, NULL};
  vtl_status st = vtl_op_pointwise_loss_backward(kind, g, x, y, red, param, &ts[0], &ts[1]);
  return fill_boxes(L, st, base, bs, ts, 2);
}

/* ---- dropout ---- */

/* the generator of options table o, or the default one */
static lvtl_gen *generator(lua_State *L, int o, const char *fn) { return lvtl_generator(L, o, fn); }

/* F.dropout(x, {p = 0.5, training = true, generator}) or F.dropout(x, p, training) →
   output, keep mask (bool; nil when nothing is dropped) */
static int l_dropout(lua_State *L) {
  static const char fn[] = "dropout";
  static const char *const names[] = {"p", "training", "generator", "inplace", NULL};
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int o = opts_at(L, 2);
  check_opts(L, o, fn, names);
  double p = lua_type(L, 2) == LUA_TNUMBER ? lua_tonumber(L, 2) : 0.5;
  bool training = lua_type(L, 3) == LUA_TBOOLEAN ? lua_toboolean(L, 3) : true;
  if (!lua_isnoneornil(L, 2) && lua_type(L, 2) != LUA_TNUMBER && !lua_istable(L, 2))
    luaL_error(L, "%s: p must be a number, got %s", fn, luaL_typename(L, 2));
  p = opt_number(L, o, fn, "p", p);
  training = opt_bool(L, o, fn, "training", training);
  if (opt_bool(L, o, fn, "inplace", false)) luaL_error(L, "%s: inplace = true is not supported; use the result", fn);
  if (!(p >= 0 && p <= 1)) luaL_error(L, "%s: p must be in [0, 1], got %f", fn, p);
  lvtl_gen *g = generator(L, o, fn);
  lvtl_box *b = newbox(L), *mb = newbox(L);
  vtl_tensor *mask = NULL;
  vtl_tensor *out = vtl_fn_dropout(x, p, training, g->seed, &g->offset, &mask);
  if (!out) return lvtl_error(L);
  b->t = out;
  gc_pressure(L, out);
  if (!mask) { lua_pop(L, 1); return 1; }
  mb->t = mask;
  return 2;
}

static int l_dropout_backward(lua_State *L) {
  vtl_tensor *g = lvtl_checktensor(L, 1), *m = lvtl_checktensor(L, 2);
  double p = luaL_checknumber(L, 3);
  RETURN_TENSOR(vtl_op_dropout_backward(g, m, p));
}

/* ---- registration ---- */

static const luaL_Reg nn_funcs[] = {
  {"batch_norm", l_batch_norm}, {"layer_norm", l_layer_norm}, {"group_norm", l_group_norm},
  {"softmax", l_softmax}, {"log_softmax", l_log_softmax},
  {"cross_entropy", l_cross_entropy}, {"nll_loss", l_nll_loss},
  {"binary_cross_entropy_with_logits", l_bce_with_logits}, {"dropout", l_dropout},
  {"_batch_norm_backward", l_batch_norm_backward}, {"_layer_norm_backward", l_layer_norm_backward},
  {"_group_norm_backward", l_group_norm_backward}, {"_softmax_backward", l_softmax_backward},
  {"_log_softmax_backward", l_log_softmax_backward}, {"_cross_entropy_backward", l_cross_entropy_backward},
  {"_nll_loss_backward", l_nll_loss_backward},
  {"_binary_cross_entropy_with_logits_backward", l_bce_with_logits_backward},
  {"_dropout_backward", l_dropout_backward}, {NULL, NULL}};

void lvtl_open_nn_norm(lua_State *L) {
  luaL_setfuncs(L, nn_funcs, 0);
  static const vtl_activation acts[] = {VTL_ACT_RELU, VTL_ACT_RELU6, VTL_ACT_LEAKY_RELU, VTL_ACT_GELU, VTL_ACT_SILU,
                                        VTL_ACT_HARDSWISH, VTL_ACT_HARDSIGMOID, VTL_ACT_SOFTPLUS, VTL_ACT_ELU,
                                        VTL_ACT_SIGMOID, VTL_ACT_TANH};
  for (size_t i = 0; i < sizeof acts / sizeof *acts; i++) {
    const char *name = vtl_activation_name(acts[i]);
    lua_pushinteger(L, acts[i]);
    lua_pushcclosure(L, l_activation, 1);
    lua_setfield(L, -2, name);
    lua_pushfstring(L, "_%s_backward", name);
    lua_pushinteger(L, acts[i]);
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, l_activation_backward, 2);
    lua_settable(L, -3);
  }
  for (int k = 0; k < VTL_LOSS_COUNT; k++) {
    const char *name = vtl_loss_name((vtl_loss)k);
    lua_pushinteger(L, k);
    lua_pushcclosure(L, l_pointwise_loss, 1);
    lua_setfield(L, -2, name);
    lua_pushfstring(L, "_%s_backward", name);
    lua_pushinteger(L, k);
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, l_pointwise_loss_backward, 2);
    lua_settable(L, -3);
  }
}
