/*
 * The vtl.Tensor Lua type: boxes, argument checking (1-based dims and indices), creation,
 * views, indexing, elementwise math, reductions, joining, metamethods.
 *
 * Every function checks its arguments before allocating, and raises a Lua error naming the
 * function on bad input; results are pushed in a box made before the C op runs, so a failed
 * allocation never leaves an orphan.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include "lvtl.h"
#include "ops.h"
#include "grad_ops.h"
#include "format.h"

/* ---- boxes ---- */

/* GC pressure: Lua cannot see tensor bytes, so every new tensor that owns a fresh storage adds
   to a debt, and each 64 KiB of debt advances the incremental collector as if Lua had allocated
   it. Garbage tensors are then freed at the pace they are made. A collection cycle costs time in
   proportion to the Lua heap, not to the tensor bytes it frees, so the tensor bytes are scaled
   down for a small heap: about VTL_GC_TENSOR_MIB MiB of new tensors per cycle (each cycle starts
   once the debt matches the heap), never less than byte for byte; a tensor of that size or more
   counts byte for byte. A model's modules and a script
   make a heap under 1 MiB, which byte for byte would be traversed dozens of times per forward
   pass of a vision model. */
#define VTL_GC_TENSOR_MIB 8
static _Thread_local size_t gc_debt;

void lvtl_gc_pressure(lua_State *L, const vtl_tensor *t) {
  if (__atomic_load_n(&t->storage->refcount, __ATOMIC_RELAXED) != 1) return; /* a view */
  size_t n = t->storage->nbytes, kb;
  if (n >= ((size_t)VTL_GC_TENSOR_MIB << 20)) {
    kb = n >> 10; /* a tensor as big as a cycle's worth counts byte for byte */
  } else {
    gc_debt += n;
    if (gc_debt < (64u << 10)) return;
    size_t heap_kb = (size_t)lua_gc(L, LUA_GCCOUNT) + 1;
    size_t ratio = ((size_t)VTL_GC_TENSOR_MIB << 10) / heap_kb;
    kb = (gc_debt >> 10) / (ratio > 1 ? ratio : 1);
    if (kb == 0) return; /* keep the debt until it is worth a step */
    gc_debt = 0;
  }
  lua_gc(L, LUA_GCSTEP, (int)(kb < (1u << 30) ? kb : 1u << 30));
}

lvtl_box *lvtl_newbox(lua_State *L) {
  lvtl_box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->t = NULL;
  luaL_setmetatable(L, LVTL_TENSOR_MT);
  return b;
}

/* Raises the core's message; allocation failures, which the core reports without an op
   name, get the name of the calling Lua function. */
int lvtl_error(lua_State *L) {
  lua_Debug ar;
  if (vtl_error_status() == VTL_ERR_OOM && lua_getstack(L, 0, &ar) && lua_getinfo(L, "n", &ar) && ar.name)
    return luaL_error(L, "%s: %s", ar.name, vtl_error_message());
  return luaL_error(L, "%s", vtl_error_message());
}

void lvtl_check(lua_State *L, vtl_status st) {
  if (st != VTL_OK) lvtl_error(L);
}

void lvtl_pushtensor(lua_State *L, vtl_tensor *t) {
  if (!t) { lvtl_error(L); return; }
  lvtl_box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->t = t;
  luaL_setmetatable(L, LVTL_TENSOR_MT);
  lvtl_gc_pressure(L, t);
}

/* Stores an op result in a box made by lvtl_newbox, or raises the op's error. */
int lvtl_fillbox(lua_State *L, lvtl_box *b, vtl_tensor *t) {
  if (!t) return lvtl_error(L);
  b->t = t;
  lvtl_gc_pressure(L, t);
  return 1;
}
#define newbox lvtl_newbox
#define fill_box lvtl_fillbox
#define RETURN_TENSOR(expr) do { lvtl_box *b_ = newbox(L); return fill_box(L, b_, (expr)); } while (0)

vtl_tensor *lvtl_totensor(lua_State *L, int idx) {
  lvtl_box *b = luaL_testudata(L, idx, LVTL_TENSOR_MT);
  return b ? b->t : NULL;
}

vtl_tensor *lvtl_checktensor(lua_State *L, int idx) {
  lvtl_box *b = luaL_checkudata(L, idx, LVTL_TENSOR_MT);
  if (!b->t) luaL_argerror(L, idx, "tensor has been freed (closed or collected)");
  return b->t;
}

static int tensor_release(lua_State *L) {
  lvtl_box *b = luaL_checkudata(L, 1, LVTL_TENSOR_MT);
  vtl_tensor_release(b->t);
  b->t = NULL;
  return 0;
}

void lvtl_setfuncs(lua_State *L, const luaL_Reg *l) { luaL_setfuncs(L, l, 0); }

/* ---- argument helpers ---- */

static int64_t check_int(lua_State *L, int idx, const char *what) {
  int isnum;
  lua_Integer v = lua_tointegerx(L, idx, &isnum);
  if (!isnum) {
    if (lua_type(L, idx) == LUA_TNUMBER) luaL_argerror(L, idx, lua_pushfstring(L, "%s must be an integer", what));
    luaL_typeerror(L, idx, "integer");
  }
  return (int64_t)v;
}

/* A 1-based dim (negative counts from the end) to 0-based; 0-d tensors accept 1 and -1. */
static int check_dim(lua_State *L, int idx, int ndim) {
  int64_t d = check_int(L, idx, "dim");
  int n = ndim ? ndim : 1;
  if (d < 0) d += n + 1;
  if (d < 1 || d > n) {
    lua_Integer orig = lua_tointeger(L, idx);
    return luaL_argerror(L, idx, lua_pushfstring(L, "dim %d out of range for a %d-D tensor (valid: 1..%d or -%d..-1)",
                                                 (int)orig, ndim, n, n));
  }
  return (int)d - 1;
}

static int opt_dim(lua_State *L, int idx, int ndim, int def) {
  return lua_isnoneornil(L, idx) ? def : check_dim(L, idx, ndim);
}

/* dims given as a number or a table of numbers → bitmask; nil → 0 (all) */
static uint32_t check_dims(lua_State *L, int idx, int ndim) {
  if (lua_isnoneornil(L, idx)) return 0;
  if (lua_istable(L, idx)) {
    uint32_t m = 0;
    lua_Integer n = luaL_len(L, idx);
    if (n == 0) luaL_argerror(L, idx, "empty list of dims");
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, idx, i);
      int d = check_dim(L, lua_gettop(L), ndim);
      if (m >> d & 1) luaL_argerror(L, idx, "dim repeated in the list");
      m |= 1u << d;
      lua_pop(L, 1);
    }
    return m;
  }
  return 1u << check_dim(L, idx, ndim);
}

/* Shape from varargs (ints) or one table starting at idx; returns ndim. Stops at a
   non-number, non-table argument (an options table is a table with no array part). */
static int check_shape(lua_State *L, int idx, int64_t *shape, const char *fn) {
  int top = lua_gettop(L);
  if (lua_istable(L, idx) && luaL_len(L, idx) > 0) {
    lua_Integer n = luaL_len(L, idx);
    if (n > VTL_MAX_DIMS) luaL_error(L, "%s: at most %d dims, got %d", fn, VTL_MAX_DIMS, (int)n);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, idx, i);
      int isnum;
      lua_Integer v = lua_tointegerx(L, -1, &isnum);
      if (!isnum) luaL_error(L, "%s: size %d of the shape must be an integer, got %s", fn, (int)i, luaL_typename(L, -1));
      if (v < 0 && !(v == -1 && (strcmp(fn, "view") == 0 || strcmp(fn, "reshape") == 0 || strcmp(fn, "expand") == 0)))
        luaL_error(L, "%s: size %d of the shape is negative (%d)", fn, (int)i, (int)v);
      shape[i - 1] = v;
      lua_pop(L, 1);
    }
    return (int)n;
  }
  int n = 0, i = idx;
  for (; i <= top && lua_type(L, i) == LUA_TNUMBER; i++) {
    if (n == VTL_MAX_DIMS) luaL_error(L, "%s: at most %d dims", fn, VTL_MAX_DIMS);
    int64_t v = check_int(L, i, "size");
    if (v < 0 && !(v == -1 && (strcmp(fn, "view") == 0 || strcmp(fn, "reshape") == 0 || strcmp(fn, "expand") == 0)))
      luaL_argerror(L, i, lua_pushfstring(L, "size must be non-negative, got %d", (int)v));
    shape[n++] = v;
  }
  if (i <= top && !lua_isnil(L, i) && !(lua_istable(L, i) && luaL_len(L, i) == 0))
    luaL_argerror(L, i, lua_pushfstring(L, "%s: sizes must be integers or a table of integers, got %s", fn,
                                        luaL_typename(L, i)));
  return n;
}

/* the first table argument at or after idx with no array part (an options table) or 0 */
static int opts_index(lua_State *L, int idx) {
  int top = lua_gettop(L);
  for (int i = idx; i <= top; i++)
    if (lua_istable(L, i) && luaL_len(L, i) == 0) return i;
  return 0;
}

static vtl_dtype dtype_arg(lua_State *L, int idx, const char *fn) {
  const char *s = luaL_checkstring(L, idx);
  vtl_dtype dt;
  if (!vtl_dtype_from_name(s, &dt))
    luaL_error(L, "%s: unknown dtype '%s' (expected f32, f64, f16, bf16, i64, i32, u8 or bool)", fn, s);
  return dt;
}

/* Reads dtype and device from an options table at index o (0 = none). */
static void read_opts(lua_State *L, int o, vtl_dtype *dt, vtl_device *dev, const char *fn) {
  if (!o) return;
  if (lua_getfield(L, o, "dtype") != LUA_TNIL) *dt = dtype_arg(L, lua_gettop(L), fn);
  lua_pop(L, 1);
  if (lua_getfield(L, o, "device") != LUA_TNIL) {
    const char *s = luaL_checkstring(L, -1);
    if (!vtl_device_parse(s, dev)) luaL_error(L, "%s: unknown device '%s' (expected cpu, cuda or cuda:N)", fn, s);
    if (!vtl_backend_get(*dev)) lvtl_error(L);
  }
  lua_pop(L, 1);
}

/* A tensor argument, or a number turned into a 0-d tensor of `like`'s dtype family. */
static int is_number(lua_State *L, int idx) { return lua_type(L, idx) == LUA_TNUMBER; }

/* ---- creation ---- */

static int l_empty_impl(lua_State *L, int kind) {
  static const char *names[] = {"empty", "zeros", "ones", "full"};
  int64_t shape[VTL_MAX_DIMS];
  int nd = check_shape(L, 1, shape, names[kind]);
  double value = kind == 2 ? 1 : 0;
  int vidx = 0;
  if (kind == 3) {
    if (!lua_istable(L, 1)) return luaL_argerror(L, 1, "full: the shape must be a table, as in vtl.full({2, 3}, value)");
    vidx = 2;
    if (lua_type(L, vidx) == LUA_TBOOLEAN) value = lua_toboolean(L, vidx);
    else value = luaL_checknumber(L, vidx);
  }
  vtl_dtype dt = VTL_F32;
  if (kind == 3 && lua_isinteger(L, vidx)) dt = VTL_I64;
  if (kind == 3 && lua_type(L, vidx) == LUA_TBOOLEAN) dt = VTL_BOOL;
  vtl_device dev = {VTL_CPU, 0};
  /* options come after the shape (a shape table may itself be empty: a 0-d tensor) */
  int first = nd + 1;
  if (lua_istable(L, 1)) { /* a shape table ({} is 0-d), unless it is the options table itself */
    lua_pushnil(L);
    int empty = !lua_next(L, 1);
    if (!empty) lua_pop(L, 2);
    first = (luaL_len(L, 1) > 0 || empty) ? 2 : 1;
  }
  read_opts(L, opts_index(L, kind == 3 ? vidx + 1 : first), &dt, &dev, names[kind]);
  if (vtl_shape_numel(shape, nd, vtl_dtype_size(dt), names[kind]) < 0) return lvtl_error(L);
  lvtl_box *b = newbox(L);
  if (kind == 0) return fill_box(L, b, vtl_tensor_empty(shape, nd, dt, dev));
  return fill_box(L, b, vtl_op_full(shape, nd, value, dt, dev));
}
static int l_empty(lua_State *L) { return l_empty_impl(L, 0); }
static int l_zeros(lua_State *L) { return l_empty_impl(L, 1); }
static int l_ones(lua_State *L) { return l_empty_impl(L, 2); }
static int l_full(lua_State *L) { return l_empty_impl(L, 3); }

static int l_like_impl(lua_State *L, int kind) {
  static const char *names[] = {"empty_like", "zeros_like", "ones_like", "full_like"};
  vtl_tensor *x = lvtl_checktensor(L, 1);
  double value = kind == 2 ? 1 : 0;
  if (kind == 3) value = luaL_checknumber(L, 2);
  vtl_dtype dt = x->dtype;
  vtl_device dev = vtl_tensor_device(x);
  read_opts(L, opts_index(L, 2), &dt, &dev, names[kind]);
  lvtl_box *b = newbox(L);
  if (kind == 0) return fill_box(L, b, vtl_tensor_empty(x->shape, x->ndim, dt, dev));
  return fill_box(L, b, vtl_op_full(x->shape, x->ndim, value, dt, dev));
}
static int l_empty_like(lua_State *L) { return l_like_impl(L, 0); }
static int l_zeros_like(lua_State *L) { return l_like_impl(L, 1); }
static int l_ones_like(lua_State *L) { return l_like_impl(L, 2); }
static int l_full_like(lua_State *L) { return l_like_impl(L, 3); }

/* vtl.tensor(nested table | number | boolean | tensor, {dtype=}) */
static void nested_shape(lua_State *L, int idx, int depth, int64_t *shape, int *nd, int *kind) {
  if (lua_istable(L, idx)) {
    if (depth >= VTL_MAX_DIMS) luaL_error(L, "tensor: nesting deeper than %d levels", VTL_MAX_DIMS);
    lua_Integer n = luaL_len(L, idx);
    if (depth >= *nd) { *nd = depth + 1; shape[depth] = n; }
    for (lua_Integer i = 1; i <= n; i++) { /* every leaf decides the dtype; shape from the first */
      lua_geti(L, idx, i);
      nested_shape(L, lua_gettop(L), depth + 1, shape, nd, kind);
      lua_pop(L, 1);
    }
    return;
  }
  int t = lua_type(L, idx);
  if (t == LUA_TNUMBER) *kind |= lua_isinteger(L, idx) ? 1 : 2;
  else if (t == LUA_TBOOLEAN) *kind |= 4;
  else luaL_error(L, "tensor: expected numbers or booleans in the table, got %s", luaL_typename(L, idx));
}

static void nested_fill(lua_State *L, int idx, int depth, const int64_t *shape, int nd, vtl_tensor *t,
                        int64_t *pos, char *path, size_t plen) {
  if (depth == nd) {
    int ty = lua_type(L, idx);
    double v;
    if (ty == LUA_TNUMBER) v = lua_tonumber(L, idx);
    else if (ty == LUA_TBOOLEAN) v = lua_toboolean(L, idx);
    else {
      vtl_tensor_release(t);
      luaL_error(L, "tensor: element %s is a %s, expected a number or boolean", path, luaL_typename(L, idx));
      return;
    }
    char *p = (char *)vtl_tensor_data(t) + *pos * (int64_t)vtl_dtype_size(t->dtype);
    if (t->dtype == VTL_I64 && lua_isinteger(L, idx)) *(int64_t *)p = lua_tointeger(L, idx);
    else vtl_store_from_double(p, t->dtype, v);
    (*pos)++;
    return;
  }
  if (!lua_istable(L, idx) || luaL_len(L, idx) != shape[depth]) {
    int64_t got = lua_istable(L, idx) ? luaL_len(L, idx) : -1;
    vtl_tensor_release(t);
    if (got < 0) luaL_error(L, "tensor: ragged nested table: element %s is a %s, expected a table of length %d",
                            path, luaL_typename(L, idx), (int)shape[depth]);
    luaL_error(L, "tensor: ragged nested table: element %s has length %d, expected %d", path, (int)got, (int)shape[depth]);
  }
  for (int64_t i = 1; i <= shape[depth]; i++) {
    lua_geti(L, idx, i);
    size_t k = strlen(path);
    snprintf(path + k, plen - k, "[%lld]", (long long)i);
    nested_fill(L, lua_gettop(L), depth + 1, shape, nd, t, pos, path, plen);
    path[k] = 0;
    lua_pop(L, 1);
  }
}

static int l_tensor(lua_State *L) {
  vtl_dtype dt = VTL_F32;
  vtl_device dev = {VTL_CPU, 0};
  int has_dtype = 0;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "dtype");
    has_dtype = !lua_isnil(L, -1);
    lua_pop(L, 1);
  }
  vtl_tensor *src = lvtl_totensor(L, 1);
  if (src) {
    dt = src->dtype;
    read_opts(L, lua_istable(L, 2) ? 2 : 0, &dt, &dev, "tensor");
    lvtl_box *b = newbox(L);
    vtl_tensor *c = vtl_device_eq(dev, vtl_tensor_device(src)) ? vtl_op_clone(src) : vtl_tensor_to_device(src, dev);
    vtl_tensor *r = c ? vtl_op_to_dtype(c, dt) : NULL;
    vtl_tensor_release(c);
    return fill_box(L, b, r);
  }
  int64_t shape[VTL_MAX_DIMS];
  int nd = 0, kind = 0;
  luaL_argexpected(L, lua_istable(L, 1) || lua_type(L, 1) == LUA_TNUMBER || lua_type(L, 1) == LUA_TBOOLEAN, 1,
                   "table, number or boolean");
  nested_shape(L, 1, 0, shape, &nd, &kind);
  if (!has_dtype) dt = (kind & 2) ? VTL_F32 : (kind & 1) ? VTL_I64 : (kind & 4) ? VTL_BOOL : VTL_F32;
  read_opts(L, lua_istable(L, 2) ? 2 : 0, &dt, &dev, "tensor");
  if (vtl_shape_numel(shape, nd, vtl_dtype_size(dt), "tensor") < 0) return lvtl_error(L);
  lvtl_box *b = newbox(L);
  vtl_tensor *t = vtl_tensor_empty(shape, nd, dt, (vtl_device){VTL_CPU, 0});
  if (!t) return lvtl_error(L);
  int64_t pos = 0;
  char path[256] = "";
  nested_fill(L, 1, 0, shape, nd, t, &pos, path, sizeof path);
  if (dev.type != VTL_CPU) {
    vtl_tensor *d = vtl_tensor_to_device(t, dev);
    vtl_tensor_release(t);
    t = d;
  }
  return fill_box(L, b, t);
}

static int l_arange(lua_State *L) {
  int n = 0;
  while (n < 3 && is_number(L, n + 1)) n++;
  if (n == 0) return luaL_argerror(L, 1, "number expected");
  double start = 0, end, step = 1;
  int allint = 1;
  for (int i = 1; i <= n; i++) allint &= lua_isinteger(L, i);
  if (n == 1) end = lua_tonumber(L, 1);
  else { start = lua_tonumber(L, 1); end = lua_tonumber(L, 2); if (n == 3) step = lua_tonumber(L, 3); }
  vtl_dtype dt = allint ? VTL_I64 : VTL_F32;
  vtl_device dev = {VTL_CPU, 0};
  read_opts(L, opts_index(L, n + 1), &dt, &dev, "arange");
  RETURN_TENSOR(vtl_op_arange(start, end, step, dt, dev));
}

static int l_linspace(lua_State *L) {
  double a = luaL_checknumber(L, 1), e = luaL_checknumber(L, 2);
  int64_t steps = check_int(L, 3, "steps");
  vtl_dtype dt = VTL_F32;
  vtl_device dev = {VTL_CPU, 0};
  read_opts(L, opts_index(L, 4), &dt, &dev, "linspace");
  RETURN_TENSOR(vtl_op_linspace(a, e, steps, dt, dev));
}

static int l_eye(lua_State *L) {
  int64_t n = check_int(L, 1, "n");
  int64_t m = is_number(L, 2) ? check_int(L, 2, "m") : n;
  vtl_dtype dt = VTL_F32;
  vtl_device dev = {VTL_CPU, 0};
  read_opts(L, opts_index(L, 2), &dt, &dev, "eye");
  RETURN_TENSOR(vtl_op_eye(n, m, dt, dev));
}

/* ---- random: generators are {seed, offset} userdata; the default one lives in the registry ---- */
#define DEFAULT_SEED 67280421310721ull

static lvtl_gen *default_gen(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, "vtl.default_generator");
  lvtl_gen *g = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return g;
}

lvtl_gen *lvtl_generator(lua_State *L, int o, const char *fn) {
  if (o) {
    lua_getfield(L, o, "generator");
    if (!lua_isnil(L, -1)) {
      lvtl_gen *g = luaL_testudata(L, -1, LVTL_GENERATOR_MT);
      if (!g) luaL_error(L, "%s: option 'generator' must be a vtl.Generator, got %s", fn, luaL_typename(L, -1));
      lua_pop(L, 1); /* still referenced by the options table */
      return g;
    }
    lua_pop(L, 1);
  }
  return default_gen(L);
}

static int random_impl(lua_State *L, int kind) {
  static const char *names[] = {"rand", "randn", "randint"};
  int first = 1;
  double lo = kind == 1 ? 0 : 0, hi = 1;
  if (kind == 2) {
    /* randint(high, shape) or randint(low, high, shape) */
    if (is_number(L, 2) && (is_number(L, 3) || lua_istable(L, 3))) {
      lo = (double)check_int(L, 1, "low"); hi = (double)check_int(L, 2, "high"); first = 3;
    } else {
      hi = (double)check_int(L, 1, "high"); first = 2;
    }
  }
  int64_t shape[VTL_MAX_DIMS];
  int nd = check_shape(L, first, shape, names[kind]);
  vtl_dtype dt = kind == 2 ? VTL_I64 : VTL_F32;
  vtl_device dev = {VTL_CPU, 0};
  int o = opts_index(L, first);
  read_opts(L, o, &dt, &dev, names[kind]);
  if (o && kind == 0) {
    if (lua_getfield(L, o, "low") != LUA_TNIL) lo = luaL_checknumber(L, -1);
    if (lua_getfield(L, o, "high") != LUA_TNIL) hi = luaL_checknumber(L, -1);
    lua_pop(L, 2);
  }
  if (o && kind == 1) {
    if (lua_getfield(L, o, "mean") != LUA_TNIL) lo = luaL_checknumber(L, -1);
    if (lua_getfield(L, o, "std") != LUA_TNIL) hi = luaL_checknumber(L, -1);
    lua_pop(L, 2);
  }
  lvtl_gen *g = lvtl_generator(L, o, names[kind]);
  if (vtl_shape_numel(shape, nd, vtl_dtype_size(dt), names[kind]) < 0) return lvtl_error(L);
  RETURN_TENSOR(vtl_op_random(shape, nd, kind, lo, hi, dt, dev, g->seed, &g->offset));
}
static int l_rand(lua_State *L) { return random_impl(L, 0); }
static int l_randn(lua_State *L) { return random_impl(L, 1); }
static int l_randint(lua_State *L) { return random_impl(L, 2); }

static int like_random(lua_State *L, int kind) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  vtl_dtype dt = x->dtype;
  vtl_device dev = vtl_tensor_device(x);
  int o = opts_index(L, 2);
  read_opts(L, o, &dt, &dev, kind ? "randn_like" : "rand_like");
  lvtl_gen *g = lvtl_generator(L, o, kind ? "randn_like" : "rand_like");
  RETURN_TENSOR(vtl_op_random(x->shape, x->ndim, kind, 0, 1, dt, dev, g->seed, &g->offset));
}
static int l_rand_like(lua_State *L) { return like_random(L, 0); }
static int l_randn_like(lua_State *L) { return like_random(L, 1); }

static uint64_t check_seed(lua_State *L, int idx) {
  int isnum;
  lua_Integer s = lua_tointegerx(L, idx, &isnum);
  if (!isnum) luaL_argerror(L, idx, "seed must be an integer");
  return (uint64_t)s;
}

static int l_seed(lua_State *L) {
  lvtl_gen *g = default_gen(L);
  g->seed = check_seed(L, 1);
  g->offset = 0;
  return 0;
}

static int l_generator(lua_State *L) {
  uint64_t s = lua_isnoneornil(L, 1) ? DEFAULT_SEED : check_seed(L, 1);
  lvtl_gen *g = lua_newuserdatauv(L, sizeof *g, 0);
  g->seed = s;
  g->offset = 0;
  luaL_setmetatable(L, LVTL_GENERATOR_MT);
  return 1;
}

static int gen_manual_seed(lua_State *L) {
  lvtl_gen *g = luaL_checkudata(L, 1, LVTL_GENERATOR_MT);
  g->seed = check_seed(L, 2);
  g->offset = 0;
  lua_settop(L, 1);
  return 1;
}
static int gen_initial_seed(lua_State *L) {
  lvtl_gen *g = luaL_checkudata(L, 1, LVTL_GENERATOR_MT);
  lua_pushinteger(L, (lua_Integer)g->seed);
  return 1;
}
static int gen_get_state(lua_State *L) {
  lvtl_gen *g = luaL_checkudata(L, 1, LVTL_GENERATOR_MT);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)g->seed);
  lua_setfield(L, -2, "seed");
  lua_pushinteger(L, (lua_Integer)g->offset);
  lua_setfield(L, -2, "offset");
  return 1;
}
static int gen_set_state(lua_State *L) {
  lvtl_gen *g = luaL_checkudata(L, 1, LVTL_GENERATOR_MT);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_getfield(L, 2, "seed");
  lua_getfield(L, 2, "offset");
  g->seed = check_seed(L, -2);
  g->offset = check_seed(L, -1);
  return 0;
}
static int gen_tostring(lua_State *L) {
  lvtl_gen *g = luaL_checkudata(L, 1, LVTL_GENERATOR_MT);
  lua_pushfstring(L, "vtl.Generator(seed=%I, offset=%I)", (lua_Integer)g->seed, (lua_Integer)g->offset);
  return 1;
}

/* ---- properties and conversions ---- */

static void push_shape(lua_State *L, const vtl_tensor *x) {
  lua_createtable(L, x->ndim, 0);
  for (int d = 0; d < x->ndim; d++) {
    lua_pushinteger(L, x->shape[d]);
    lua_rawseti(L, -2, d + 1);
  }
}

static int t_size(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  if (lua_isnoneornil(L, 2)) { push_shape(L, x); return 1; }
  int d = check_dim(L, 2, x->ndim);
  lua_pushinteger(L, x->ndim ? x->shape[d] : 1);
  return 1;
}
static int t_stride(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  if (!lua_isnoneornil(L, 2)) { lua_pushinteger(L, x->ndim ? x->strides[check_dim(L, 2, x->ndim)] : 1); return 1; }
  lua_createtable(L, x->ndim, 0);
  for (int d = 0; d < x->ndim; d++) { lua_pushinteger(L, x->strides[d]); lua_rawseti(L, -2, d + 1); }
  return 1;
}
static int t_dim(lua_State *L) { lua_pushinteger(L, lvtl_checktensor(L, 1)->ndim); return 1; }
static int t_numel(lua_State *L) { lua_pushinteger(L, vtl_tensor_numel(lvtl_checktensor(L, 1))); return 1; }
/* a memory format's name at argument i: true for "channels_last", false for "contiguous" or none */
static bool check_format(lua_State *L, int i, const char *fn) {
  if (lua_isnoneornil(L, i)) return false;
  const char *f = luaL_checkstring(L, i);
  if (strcmp(f, "channels_last") == 0) return true;
  if (strcmp(f, "contiguous") == 0) return false;
  return luaL_error(L, "%s: memory format must be \"contiguous\" or \"channels_last\", got \"%s\"", fn, f), false;
}

/* x:is_contiguous([format]) */
static int t_is_contiguous(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  bool cl = check_format(L, 2, "is_contiguous");
  lua_pushboolean(L, cl ? x->ndim == 4 && vtl_tensor_is_channels_last(x) : vtl_tensor_is_contiguous(x));
  return 1;
}
static int t_storage_offset(lua_State *L) { lua_pushinteger(L, lvtl_checktensor(L, 1)->offset); return 1; }

static void push_scalar(lua_State *L, const vtl_tensor *x, const void *p) {
  if (x->dtype == VTL_BOOL) lua_pushboolean(L, *(const uint8_t *)p != 0);
  else if (vtl_dtype_is_int(x->dtype)) lua_pushinteger(L, vtl_load_as_int(p, x->dtype));
  else lua_pushnumber(L, vtl_load_as_double(p, x->dtype));
}

/* x itself when its bytes are in host memory, else a host copy kept alive in a box pushed
   on the stack (so an error raised later frees it). */
static vtl_tensor *host_view(lua_State *L, vtl_tensor *x) {
  if (vtl_tensor_device(x).type == VTL_CPU) return x;
  lvtl_box *b = newbox(L);
  fill_box(L, b, vtl_tensor_to_device(x, (vtl_device){VTL_CPU, 0}));
  return b->t;
}

static int t_item(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  if (vtl_tensor_numel(x) != 1) {
    char s[128];
    vtl_shape_format(x->shape, x->ndim, s, sizeof s);
    return luaL_error(L, "item: tensor of shape %s has %d elements, expected exactly one", s, (int)vtl_tensor_numel(x));
  }
  x = host_view(L, x);
  push_scalar(L, x, vtl_tensor_data(x));
  return 1;
}

static void totable_rec(lua_State *L, const vtl_tensor *x, int d, int64_t off) {
  size_t es = vtl_dtype_size(x->dtype);
  if (d == x->ndim) { push_scalar(L, x, (const char *)x->storage->data + off * (int64_t)es); return; }
  luaL_checkstack(L, 4, "totable: nesting too deep");
  lua_createtable(L, (int)x->shape[d], 0);
  for (int64_t i = 0; i < x->shape[d]; i++) {
    totable_rec(L, x, d + 1, off + i * x->strides[d]);
    lua_rawseti(L, -2, i + 1);
  }
}
static int t_totable(lua_State *L) {
  vtl_tensor *x = host_view(L, lvtl_checktensor(L, 1));
  totable_rec(L, x, 0, x->offset);
  return 1;
}

static int t_tostring(lua_State *L) {
  lvtl_box *b = luaL_checkudata(L, 1, LVTL_TENSOR_MT);
  if (!b->t) { lua_pushliteral(L, "tensor(<freed>)"); return 1; }
  char *s = vtl_tensor_format(b->t);
  if (!s) return vtl_tensor_device(b->t).type != VTL_CPU ? lvtl_error(L) : luaL_error(L, "tostring: out of memory");
  lua_pushstring(L, s);
  free(s);
  return 1;
}

static int t_to(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  vtl_dtype dt = x->dtype;
  vtl_device dev = vtl_tensor_device(x);
  bool async = false;
  for (int i = 2; i <= lua_gettop(L); i++) {
    if (lvtl_totensor(L, i)) { vtl_tensor *o = lvtl_totensor(L, i); dt = o->dtype; dev = vtl_tensor_device(o); continue; }
    if (lua_istable(L, i)) {
      read_opts(L, i, &dt, &dev, "to");
      if (lua_getfield(L, i, "non_blocking") != LUA_TNIL) {
        if (!lua_isboolean(L, -1)) luaL_error(L, "to: non_blocking must be a boolean, got %s", luaL_typename(L, -1));
        async = lua_toboolean(L, -1);
      }
      lua_pop(L, 1);
      continue;
    }
    const char *s = luaL_checkstring(L, i);
    if (vtl_dtype_from_name(s, &dt)) continue;
    if (!vtl_device_parse(s, &dev))
      return luaL_error(L, "to: '%s' is neither a dtype (f32, f64, f16, bf16, i64, i32, u8, bool) nor a device (cpu, cuda, cuda:N)", s);
  }
  if (!vtl_device_eq(dev, vtl_tensor_device(x))) {
    if (!vtl_backend_get(dev)) return lvtl_error(L);
    lvtl_box *b = newbox(L);
    vtl_tensor *m = vtl_fn_to_device(x, dev, async);
    vtl_tensor *r = m ? vtl_fn_to_dtype(m, dt) : NULL;
    vtl_tensor_release(m);
    return fill_box(L, b, r);
  }
  if (dt == x->dtype) { /* nothing to change: x itself, as PyTorch's to() */
    lua_settop(L, 1);
    return 1;
  }
  RETURN_TENSOR(vtl_fn_to_dtype(x, dt));
}

static int convert(lua_State *L, vtl_dtype dt) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  if (dt == x->dtype) { /* x itself, as PyTorch's x.float() on a float tensor */
    lua_settop(L, 1);
    return 1;
  }
  RETURN_TENSOR(vtl_fn_to_dtype(x, dt));
}
static int t_float(lua_State *L) { return convert(L, VTL_F32); }
static int t_double(lua_State *L) { return convert(L, VTL_F64); }
static int t_half(lua_State *L) { return convert(L, VTL_F16); }
static int t_bfloat16(lua_State *L) { return convert(L, VTL_BF16); }
static int t_long(lua_State *L) { return convert(L, VTL_I64); }
static int t_int(lua_State *L) { return convert(L, VTL_I32); }
static int t_byte(lua_State *L) { return convert(L, VTL_U8); }
static int t_bool(lua_State *L) { return convert(L, VTL_BOOL); }
static int t_cpu(lua_State *L) { lvtl_checktensor(L, 1); lua_settop(L, 1); lua_pushliteral(L, "cpu"); return t_to(L); }
/* x:cuda([opts]): to("cuda", opts), e.g. {non_blocking = true} */
static int t_cuda(lua_State *L) {
  lvtl_checktensor(L, 1);
  bool opts = lua_istable(L, 2);
  lua_settop(L, 2);
  lua_pushliteral(L, "cuda");
  lua_insert(L, 2);
  if (!opts) lua_settop(L, 2);
  return t_to(L);
}

/* x:pin_memory(): a copy in page-locked host memory, which x:cuda{non_blocking = true} copies
   without waiting (needs a CUDA device) */
static int t_pin_memory(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  RETURN_TENSOR(vtl_tensor_pin_memory(x));
}
static int t_is_pinned(lua_State *L) { lua_pushboolean(L, lvtl_checktensor(L, 1)->storage->pinned); return 1; }

static int t_clone(lua_State *L) { vtl_tensor *x = lvtl_checktensor(L, 1); RETURN_TENSOR(vtl_fn_clone(x)); }
/* x:contiguous([format]): "channels_last" lays a 4-D (N,C,H,W) tensor out as (N,H,W,C) */
static int t_contiguous(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  bool cl = check_format(L, 2, "contiguous");
  RETURN_TENSOR(cl ? vtl_fn_contiguous_channels_last(x) : vtl_fn_contiguous(x));
}

/* ---- views ---- */

static int t_view_impl(lua_State *L, int reshape) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int64_t shape[VTL_MAX_DIMS];
  int nd = check_shape(L, 2, shape, reshape ? "reshape" : "view");
  RETURN_TENSOR(reshape ? vtl_fn_reshape(x, shape, nd) : vtl_fn_view(x, shape, nd));
}
static int t_view(lua_State *L) { return t_view_impl(L, 0); }
static int t_reshape(lua_State *L) { return t_view_impl(L, 1); }
static int t_view_as(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1), *y = lvtl_checktensor(L, 2);
  RETURN_TENSOR(vtl_fn_view(x, y->shape, y->ndim));
}

static int t_permute(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int perm[VTL_MAX_DIMS], n = 0;
  if (lua_istable(L, 2)) {
    lua_Integer len = luaL_len(L, 2);
    if (len > VTL_MAX_DIMS) return luaL_error(L, "permute: too many dims");
    for (lua_Integer i = 1; i <= len; i++) {
      lua_geti(L, 2, i);
      perm[n++] = check_dim(L, lua_gettop(L), x->ndim);
      lua_pop(L, 1);
    }
  } else {
    for (int i = 2; i <= lua_gettop(L) && n < VTL_MAX_DIMS; i++) perm[n++] = check_dim(L, i, x->ndim);
  }
  RETURN_TENSOR(vtl_fn_permute(x, perm, n));
}

static int t_transpose(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int d0 = check_dim(L, 2, x->ndim), d1 = check_dim(L, 3, x->ndim);
  RETURN_TENSOR(vtl_fn_transpose(x, d0, d1));
}

static int t_t(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  if (x->ndim > 2) return luaL_error(L, "t: expects a tensor with at most 2 dims, got %d; use transpose", x->ndim);
  if (x->ndim < 2) RETURN_TENSOR(vtl_fn_view(x, x->shape, x->ndim));
  RETURN_TENSOR(vtl_fn_transpose(x, 0, 1));
}

static int t_narrow(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int d = check_dim(L, 2, x->ndim);
  int64_t start = check_int(L, 3, "start"), len = check_int(L, 4, "length");
  int64_t n = x->ndim ? x->shape[d] : 1;
  if (start < 0) start += n + 1;
  RETURN_TENSOR(vtl_fn_narrow(x, d, start - 1, len));
}

/* 1-based index with negatives from the end → 0-based, checked */
static int64_t check_index(lua_State *L, int idx, int64_t n, int dim, const char *fn) {
  int64_t i = check_int(L, idx, "index");
  int64_t j = i < 0 ? i + n : i - 1;
  if (i == 0 || j < 0 || j >= n)
    luaL_error(L, "%s: index %d out of range for dim %d of size %d (valid: 1..%d or -%d..-1)", fn, (int)i, dim + 1,
               (int)n, (int)n, (int)n);
  return j;
}

static int t_select(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  if (x->ndim == 0) return luaL_error(L, "select: cannot index a 0-d tensor");
  int d = check_dim(L, 2, x->ndim);
  int64_t i = check_index(L, 3, x->shape[d], d, "select");
  RETURN_TENSOR(vtl_fn_select(x, d, i));
}

static int t_squeeze(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int d = lua_isnoneornil(L, 2) ? VTL_SQUEEZE_ALL : check_dim(L, 2, x->ndim);
  RETURN_TENSOR(vtl_fn_squeeze(x, d));
}

static int t_unsqueeze(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int64_t d = check_int(L, 2, "dim");
  int n = x->ndim + 1;
  if (d < 0) d += n + 1;
  if (d < 1 || d > n)
    return luaL_error(L, "unsqueeze: dim %d out of range for a %d-D tensor (valid: 1..%d or -%d..-1)",
                      (int)lua_tointeger(L, 2), x->ndim, n, n);
  RETURN_TENSOR(vtl_fn_unsqueeze(x, (int)d - 1));
}

static int t_expand(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int64_t shape[VTL_MAX_DIMS];
  int nd = check_shape(L, 2, shape, "expand");
  RETURN_TENSOR(vtl_fn_expand(x, shape, nd));
}
static int t_expand_as(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1), *y = lvtl_checktensor(L, 2);
  RETURN_TENSOR(vtl_fn_expand(x, y->shape, y->ndim));
}

static int t_flatten(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int s = opt_dim(L, 2, x->ndim, 0), e = opt_dim(L, 3, x->ndim, x->ndim ? x->ndim - 1 : 0);
  RETURN_TENSOR(vtl_fn_flatten(x, s, e));
}

static int t_unfold(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int d = check_dim(L, 2, x->ndim);
  int64_t size = check_int(L, 3, "size"), step = check_int(L, 4, "step");
  if (vtl_requires_grad(x) && vtl_grad_enabled()) return luaL_error(L, "unfold: gradients through unfold are not supported; detach() the input");
  RETURN_TENSOR(vtl_op_unfold(x, d, size, step));
}

static int t_repeat(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int64_t reps[VTL_MAX_DIMS];
  int n = check_shape(L, 2, reps, "repeat");
  RETURN_TENSOR(vtl_fn_repeat(x, reps, n));
}

/* tile: like repeat, but fewer counts than dims are padded with leading ones */
static int t_tile(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int64_t reps[VTL_MAX_DIMS], full[VTL_MAX_DIMS];
  int n = check_shape(L, 2, reps, "tile");
  int m = n > x->ndim ? n : x->ndim;
  for (int i = 0; i < m; i++) full[i] = i < m - n ? 1 : reps[i - (m - n)];
  RETURN_TENSOR(vtl_fn_repeat(x, full, m));
}

/* split(size_or_sizes, dim) and chunk(n, dim): tables of views */
static int push_splits(lua_State *L, vtl_tensor *x, int d, const int64_t *sizes, int n) {
  lua_createtable(L, n, 0);
  int64_t at = 0;
  for (int i = 0; i < n; i++) {
    lvtl_box *b = newbox(L);
    fill_box(L, b, vtl_fn_narrow(x, d, at, sizes[i]));
    lua_rawseti(L, -2, i + 1);
    at += sizes[i];
  }
  return 1;
}

static int t_split(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  if (x->ndim == 0) return luaL_error(L, "split: cannot split a 0-d tensor");
  int d = opt_dim(L, 3, x->ndim, 0);
  int64_t n = x->shape[d];
  int64_t *sizes;
  int k = 0;
  if (lua_istable(L, 2)) {
    lua_Integer len = luaL_len(L, 2);
    sizes = lua_newuserdatauv(L, (size_t)(len + 1) * sizeof *sizes, 0);
    int64_t total = 0;
    for (lua_Integer i = 1; i <= len; i++) {
      lua_geti(L, 2, i);
      sizes[k] = check_int(L, -1, "split size");
      if (sizes[k] < 0) return luaL_error(L, "split: sizes must be non-negative");
      total += sizes[k++];
      lua_pop(L, 1);
    }
    if (total != n) return luaL_error(L, "split: sizes sum to %d but dim %d has size %d", (int)total, d + 1, (int)n);
  } else {
    int64_t s = check_int(L, 2, "split size");
    if (s <= 0) return luaL_error(L, "split: size must be positive, got %d", (int)s);
    int64_t cnt = n ? (n + s - 1) / s : 1;
    sizes = lua_newuserdatauv(L, (size_t)cnt * sizeof *sizes, 0);
    for (int64_t at = 0; k < cnt; at += s) sizes[k++] = n - at < s ? n - at : s;
  }
  return push_splits(L, x, d, sizes, k);
}

static int t_chunk(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  if (x->ndim == 0) return luaL_error(L, "chunk: cannot split a 0-d tensor");
  int64_t c = check_int(L, 2, "chunks");
  if (c <= 0) return luaL_error(L, "chunk: number of chunks must be positive, got %d", (int)c);
  int d = opt_dim(L, 3, x->ndim, 0);
  int64_t n = x->shape[d], s = (n + c - 1) / c;
  if (s == 0) s = 1;
  int64_t cnt = n ? (n + s - 1) / s : 1;
  int64_t *sizes = lua_newuserdatauv(L, (size_t)cnt * sizeof *sizes, 0);
  int k = 0;
  for (int64_t at = 0; k < cnt; at += s) sizes[k++] = n - at < s ? n - at : s;
  return push_splits(L, x, d, sizes, k);
}

/* ---- elementwise ---- */

/* A number on either side of a binary op (2 * t calls __mul(2, t)). */
static int binary_op(lua_State *L, vtl_binary_op op) {
  vtl_tensor *a = lvtl_totensor(L, 1), *b = lvtl_totensor(L, 2);
  const char *name = vtl_binary_name(op);
  if (a && b) RETURN_TENSOR(vtl_fn_binary(op, a, b));
  if (a && (is_number(L, 2) || lua_isboolean(L, 2))) {
    double s = lua_isboolean(L, 2) ? lua_toboolean(L, 2) : lua_tonumber(L, 2);
    RETURN_TENSOR(vtl_fn_binary_scalar(op, a, s, is_number(L, 2) && !lua_isinteger(L, 2), false));
  }
  if (b && is_number(L, 1)) RETURN_TENSOR(vtl_fn_binary_scalar(op, b, lua_tonumber(L, 1), !lua_isinteger(L, 1), true));
  if (!a && !b && lua_isuserdata(L, 1) && luaL_testudata(L, 1, LVTL_TENSOR_MT)) lvtl_checktensor(L, 1);
  if (!a && !b && lua_isuserdata(L, 2) && luaL_testudata(L, 2, LVTL_TENSOR_MT)) lvtl_checktensor(L, 2);
  return luaL_error(L, "%s: expected tensors or numbers, got %s and %s", name, luaL_typename(L, 1), luaL_typename(L, 2));
}

/* In-place writes: refused on tensors taking part in autograd (in grad mode), and counted so
   that saved tensors notice the change. */
static void check_inplace(lua_State *L, vtl_tensor *x, const char *fn) {
  if (vtl_ag_check_inplace(x, fn) != VTL_OK) lvtl_error(L);
}

static int binary_inplace(lua_State *L, vtl_binary_op op) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  check_inplace(L, x, lua_pushfstring(L, "%s_", vtl_binary_name(op)));
  lua_pop(L, 1);
  vtl_tensor *b = lvtl_totensor(L, 2);
  if (!b && !is_number(L, 2)) {
    if (luaL_testudata(L, 2, LVTL_TENSOR_MT)) lvtl_checktensor(L, 2);
    return luaL_error(L, "%s_: expected a tensor or number, got %s", vtl_binary_name(op), luaL_typename(L, 2));
  }
  if (b && (op == VTL_BIN_ADD || op == VTL_BIN_SUB) && !lua_isnoneornil(L, 3)) { /* add_(y, alpha): one rounding */
    double alpha = luaL_checknumber(L, 3);
    lvtl_check(L, vtl_op_fused_(VTL_FUSED_AXPY, x, b, NULL, op == VTL_BIN_SUB ? -alpha : alpha));
  } else {
    lvtl_check(L, vtl_op_binary_(op, x, b, b ? 0 : lua_tonumber(L, 2)));
  }
  lua_settop(L, 1);
  return 1;
}

/* y:addcmul_(a, b[, value]) and y:addcdiv_(a, b[, value]): y += value * a * b (or / b) */
static int fused_inplace(lua_State *L, vtl_fused_op op, const char *name) {
  vtl_tensor *y = lvtl_checktensor(L, 1), *a = lvtl_checktensor(L, 2), *b = lvtl_checktensor(L, 3);
  double v = luaL_optnumber(L, 4, 1);
  check_inplace(L, y, name);
  lvtl_check(L, vtl_op_fused_(op, y, a, b, v));
  lua_settop(L, 1);
  return 1;
}
/* fused optimizer steps for contiguous f32 tensors of one shape; false when not applicable */
void vtl_cpu_sgd_step(float *p, const float *g, float *buf, int64_t n, double lr, double momentum, double dampening,
                      double wd, int nesterov, int maximize, int first);
void vtl_cpu_adam_step(float *p, const float *g, float *m, float *v, float *vmax, int64_t n, double lr, double beta1,
                       double beta2, double eps, double wd, int decoupled, int64_t step, int maximize);

static int fusable(vtl_tensor *p, vtl_tensor *t) {
  return t && t->dtype == VTL_F32 && vtl_tensor_is_contiguous(t) && vtl_tensor_device(t).type == VTL_CPU &&
         t->ndim == p->ndim && memcmp(t->shape, p->shape, (size_t)p->ndim * sizeof *p->shape) == 0;
}

static double opt_num(lua_State *L, int o, const char *k, double def) {
  lua_getfield(L, o, k);
  double v = lua_isnil(L, -1) ? def : luaL_checknumber(L, -1);
  lua_pop(L, 1);
  return v;
}
static int opt_bool(lua_State *L, int o, const char *k) {
  lua_getfield(L, o, k);
  int v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

/* _sgd_step_(p, grad, buf|nil, {lr, momentum, dampening, weight_decay, nesterov, maximize, first}) */
static int l_sgd_step(lua_State *L) {
  vtl_tensor *p = lvtl_checktensor(L, 1), *g = lvtl_checktensor(L, 2), *b = lvtl_totensor(L, 3);
  luaL_checktype(L, 4, LUA_TTABLE);
  double mom = opt_num(L, 4, "momentum", 0);
  if (!fusable(p, p) || !fusable(p, g) || (mom != 0 && !fusable(p, b))) { lua_pushboolean(L, 0); return 1; }
  vtl_cpu_sgd_step(vtl_tensor_data(p), vtl_tensor_data(g), b ? vtl_tensor_data(b) : NULL, vtl_tensor_numel(p),
                   opt_num(L, 4, "lr", 0), mom, opt_num(L, 4, "dampening", 0), opt_num(L, 4, "weight_decay", 0),
                   opt_bool(L, 4, "nesterov"), opt_bool(L, 4, "maximize"), opt_bool(L, 4, "first"));
  p->storage->version++;
  lua_pushboolean(L, 1);
  return 1;
}

/* _adam_step_(p, grad, exp_avg, exp_avg_sq, max_exp_avg_sq|nil, {lr, beta1, beta2, eps, weight_decay,
   decoupled, step, maximize}) */
static int l_adam_step(lua_State *L) {
  vtl_tensor *p = lvtl_checktensor(L, 1), *g = lvtl_checktensor(L, 2), *m = lvtl_checktensor(L, 3);
  vtl_tensor *v = lvtl_checktensor(L, 4), *vm = lvtl_totensor(L, 5);
  luaL_checktype(L, 6, LUA_TTABLE);
  if (!fusable(p, p) || !fusable(p, g) || !fusable(p, m) || !fusable(p, v) || (vm && !fusable(p, vm))) {
    lua_pushboolean(L, 0);
    return 1;
  }
  vtl_cpu_adam_step(vtl_tensor_data(p), vtl_tensor_data(g), vtl_tensor_data(m), vtl_tensor_data(v),
                    vm ? vtl_tensor_data(vm) : NULL, vtl_tensor_numel(p), opt_num(L, 6, "lr", 0),
                    opt_num(L, 6, "beta1", 0.9), opt_num(L, 6, "beta2", 0.999), opt_num(L, 6, "eps", 1e-8),
                    opt_num(L, 6, "weight_decay", 0), opt_bool(L, 6, "decoupled"),
                    (int64_t)opt_num(L, 6, "step", 1), opt_bool(L, 6, "maximize"));
  p->storage->version++;
  lua_pushboolean(L, 1);
  return 1;
}

/* t: f32, contiguous, of p's shape, on device dev */
static bool multi_ok(const vtl_tensor *p, const vtl_tensor *t, vtl_device dev) {
  return t && t->dtype == VTL_F32 && vtl_tensor_is_contiguous(t) && vtl_device_eq(vtl_tensor_device(t), dev) &&
         t->ndim == p->ndim && memcmp(t->shape, p->shape, (size_t)p->ndim * sizeof *p->shape) == 0;
}

static vtl_tensor *field_tensor(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  vtl_tensor *x = lvtl_totensor(L, -1);
  lua_pop(L, 1); /* the record keeps it alive */
  return x;
}

/* _optim_multi("sgd" | "adam", records, opts): one step over many parameters of one device in
   few launches. records[i] = {p, g, a, b, c, step, first} (SGD: a = momentum buffer or nil;
   Adam: a, b, c = exp_avg, exp_avg_sq, max_exp_avg_sq or nil); opts as _sgd_step_ / _adam_step_.
   Returns false, having done nothing, when the device has no such kernel or a tensor is not
   f32, contiguous, of its parameter's shape and on the first parameter's device. */
static int l_optim_multi(lua_State *L) {
  static const char *const kinds[] = {"sgd", "adam", NULL};
  int kind = luaL_checkoption(L, 1, NULL, kinds);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  int n = (int)luaL_len(L, 2);
  if (n == 0) { lua_pushboolean(L, 1); return 1; }
  vtl_optim_item *items = lua_newuserdatauv(L, sizeof *items * (size_t)n, 0);
  vtl_device dev = {VTL_CPU, 0};
  bool ok = true, sgd = kind == 0;
  double mom = opt_num(L, 3, "momentum", 0);
  for (int i = 0; i < n && ok; i++) {
    lua_geti(L, 2, i + 1);
    int r = lua_gettop(L);
    luaL_argexpected(L, lua_istable(L, r), 2, "a list of records");
    vtl_tensor *p = field_tensor(L, r, "p"), *g = field_tensor(L, r, "g"), *a = field_tensor(L, r, "a");
    vtl_tensor *b = field_tensor(L, r, "b"), *c = field_tensor(L, r, "c");
    if (!p) luaL_error(L, "_optim_multi: record %d has no parameter", i + 1);
    if (i == 0) dev = vtl_tensor_device(p);
    ok = multi_ok(p, p, dev) && multi_ok(p, g, dev) && (sgd ? (mom == 0 || multi_ok(p, a, dev))
                                                          : multi_ok(p, a, dev) && multi_ok(p, b, dev) && (!c || multi_ok(p, c, dev)));
    items[i] = (vtl_optim_item){.p = vtl_tensor_data(p), .g = g ? vtl_tensor_data(g) : NULL,
                                .a = a && (!sgd || mom != 0) ? vtl_tensor_data(a) : NULL,
                                .b = b && !sgd ? vtl_tensor_data(b) : NULL, .c = c && !sgd ? vtl_tensor_data(c) : NULL,
                                .n = vtl_tensor_numel(p), .step = (int64_t)opt_num(L, r, "step", 1),
                                .first = opt_bool(L, r, "first")};
    lua_settop(L, r - 1);
  }
  const vtl_backend *be = ok ? vtl_backend_get(dev) : NULL;
  if (!ok || !be || !be->optim_multi) { lua_pushboolean(L, 0); return 1; }
  vtl_optim_step st = {.kind = sgd ? VTL_OPTIM_SGD : VTL_OPTIM_ADAM, .lr = opt_num(L, 3, "lr", 0),
                       .weight_decay = opt_num(L, 3, "weight_decay", 0), .momentum = mom,
                       .dampening = opt_num(L, 3, "dampening", 0), .beta1 = opt_num(L, 3, "beta1", 0.9),
                       .beta2 = opt_num(L, 3, "beta2", 0.999), .eps = opt_num(L, 3, "eps", 1e-8),
                       .nesterov = opt_bool(L, 3, "nesterov"), .maximize = opt_bool(L, 3, "maximize"),
                       .decoupled = opt_bool(L, 3, "decoupled")};
  lvtl_check(L, be->optim_multi(&st, items, n, dev.index));
  for (int i = 0; i < n; i++) { /* the parameters changed in place */
    lua_geti(L, 2, i + 1);
    vtl_tensor *p = field_tensor(L, lua_gettop(L), "p");
    p->storage->version++;
    lua_pop(L, 1);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int t_addcmul_(lua_State *L) { return fused_inplace(L, VTL_FUSED_ADDCMUL, "addcmul_"); }
static int t_addcdiv_(lua_State *L) { return fused_inplace(L, VTL_FUSED_ADDCDIV, "addcdiv_"); }

#define BINARY(NAME, OP)                                                     \
  static int t_##NAME(lua_State *L) { return binary_op(L, OP); }             \
  static int t_##NAME##_(lua_State *L) { return binary_inplace(L, OP); }
BINARY(add, VTL_BIN_ADD)
BINARY(sub, VTL_BIN_SUB)
BINARY(mul, VTL_BIN_MUL)
BINARY(div, VTL_BIN_DIV)
BINARY(pow, VTL_BIN_POW)
BINARY(maximum, VTL_BIN_MAXIMUM)
BINARY(minimum, VTL_BIN_MINIMUM)
BINARY(remainder, VTL_BIN_REMAINDER)
BINARY(floor_divide, VTL_BIN_FLOOR_DIVIDE)
BINARY(atan2, VTL_BIN_ATAN2)
BINARY(eq, VTL_BIN_EQ)
BINARY(ne, VTL_BIN_NE)
BINARY(lt, VTL_BIN_LT)
BINARY(le, VTL_BIN_LE)
BINARY(gt, VTL_BIN_GT)
BINARY(ge, VTL_BIN_GE)
BINARY(logical_and, VTL_BIN_LOGICAL_AND)
BINARY(logical_or, VTL_BIN_LOGICAL_OR)
BINARY(logical_xor, VTL_BIN_LOGICAL_XOR)

static int unary_op(lua_State *L, vtl_unary_op op, const double *prm) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  RETURN_TENSOR(vtl_fn_unary(op, x, prm));
}
static int unary_inplace(lua_State *L, vtl_unary_op op, const double *prm) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  check_inplace(L, x, lua_pushfstring(L, "%s_", vtl_unary_name(op)));
  lua_pop(L, 1);
  lvtl_check(L, vtl_op_unary_(op, x, prm));
  lua_settop(L, 1);
  return 1;
}
#define UNARY(NAME, OP)                                                      \
  static int t_##NAME(lua_State *L) { return unary_op(L, OP, NULL); }        \
  static int t_##NAME##_(lua_State *L) { return unary_inplace(L, OP, NULL); }
UNARY(neg, VTL_UN_NEG)
UNARY(abs, VTL_UN_ABS)
UNARY(sign, VTL_UN_SIGN)
UNARY(exp, VTL_UN_EXP)
UNARY(log, VTL_UN_LOG)
UNARY(log2, VTL_UN_LOG2)
UNARY(log1p, VTL_UN_LOG1P)
UNARY(expm1, VTL_UN_EXPM1)
UNARY(sqrt, VTL_UN_SQRT)
UNARY(rsqrt, VTL_UN_RSQRT)
UNARY(sigmoid, VTL_UN_SIGMOID)
UNARY(tanh, VTL_UN_TANH)
UNARY(relu, VTL_UN_RELU)
UNARY(floor, VTL_UN_FLOOR)
UNARY(ceil, VTL_UN_CEIL)
UNARY(round, VTL_UN_ROUND)
UNARY(trunc, VTL_UN_TRUNC)
UNARY(sin, VTL_UN_SIN)
UNARY(cos, VTL_UN_COS)
UNARY(reciprocal, VTL_UN_RECIPROCAL)
UNARY(square, VTL_UN_SQUARE)
UNARY(erf, VTL_UN_ERF)
UNARY(logical_not, VTL_UN_LOGICAL_NOT)
static int t_isnan(lua_State *L) { return unary_op(L, VTL_UN_ISNAN, NULL); }
static int t_isinf(lua_State *L) { return unary_op(L, VTL_UN_ISINF, NULL); }

static void clamp_params(lua_State *L, double *p) {
  p[0] = lua_isnoneornil(L, 2) ? -INFINITY : luaL_checknumber(L, 2);
  p[1] = lua_isnoneornil(L, 3) ? INFINITY : luaL_checknumber(L, 3);
  if (lua_isnoneornil(L, 2) && lua_isnoneornil(L, 3)) luaL_error(L, "clamp: at least one of min and max must be given");
}
static int t_clamp(lua_State *L) {
  double p[2];
  vtl_tensor *x = lvtl_checktensor(L, 1);
  clamp_params(L, p);
  int frac = (is_number(L, 2) && !lua_isinteger(L, 2)) || (is_number(L, 3) && !lua_isinteger(L, 3));
  if (frac && !vtl_dtype_is_float(x->dtype)) { /* as PyTorch: a float bound makes the result float */
    lvtl_box *b = newbox(L);
    vtl_tensor *f = vtl_fn_to_dtype(x, VTL_F32);
    vtl_tensor *r = f ? vtl_fn_unary(VTL_UN_CLAMP, f, p) : NULL;
    vtl_tensor_release(f);
    return fill_box(L, b, r);
  }
  return unary_op(L, VTL_UN_CLAMP, p);
}
static int t_clamp_(lua_State *L) { double p[2]; lvtl_checktensor(L, 1); clamp_params(L, p); return unary_inplace(L, VTL_UN_CLAMP, p); }

/* a scalar or tensor argument as a tensor (a new 0-d one for numbers, same dtype family as x) */
static vtl_tensor *tensor_or_scalar(lua_State *L, int idx, vtl_tensor *like, const char *fn, int *owned) {
  vtl_tensor *t = lvtl_totensor(L, idx);
  *owned = 0;
  if (t) return t;
  if (!is_number(L, idx)) {
    if (luaL_testudata(L, idx, LVTL_TENSOR_MT)) lvtl_checktensor(L, idx);
    luaL_error(L, "%s: argument #%d must be a tensor or number, got %s", fn, idx, luaL_typename(L, idx));
  }
  vtl_dtype dt = vtl_dtype_is_float(like->dtype) ? like->dtype
                 : lua_isinteger(L, idx) ? (like->dtype == VTL_BOOL ? VTL_I64 : like->dtype) : VTL_F32;
  t = vtl_op_full(NULL, 0, lua_tonumber(L, idx), dt, vtl_tensor_device(like));
  if (!t) lvtl_error(L);
  *owned = 1;
  return t;
}

static int t_lerp(lua_State *L) {
  vtl_tensor *a = lvtl_checktensor(L, 1), *b = lvtl_checktensor(L, 2);
  int ow;
  vtl_tensor *w = tensor_or_scalar(L, 3, a, "lerp", &ow);
  lvtl_box *box = newbox(L);
  vtl_tensor *r = vtl_fn_lerp(a, b, w);
  if (ow) vtl_tensor_release(w);
  return fill_box(L, box, r);
}

static int l_where(lua_State *L) {
  vtl_tensor *c = lvtl_checktensor(L, 1);
  vtl_tensor *ref = lvtl_totensor(L, 2) ? lvtl_totensor(L, 2) : lvtl_totensor(L, 3);
  int oa, ob;
  if (!ref) { /* two numbers: a 0-d reference of their common type */
    luaL_checknumber(L, 2);
    luaL_checknumber(L, 3);
    vtl_dtype dt = lua_isinteger(L, 2) && lua_isinteger(L, 3) ? VTL_I64 : VTL_F32;
    lvtl_box *rb = newbox(L);
    fill_box(L, rb, vtl_tensor_empty(NULL, 0, dt, vtl_tensor_device(c)));
    ref = rb->t;
  }
  vtl_tensor *a = tensor_or_scalar(L, 2, ref, "where", &oa);
  vtl_tensor *b = tensor_or_scalar(L, 3, ref, "where", &ob);
  lvtl_box *box = newbox(L);
  vtl_tensor *r = vtl_fn_where(c, a, b);
  if (oa) vtl_tensor_release(a);
  if (ob) vtl_tensor_release(b);
  return fill_box(L, box, r);
}
/* x:where(cond, y) = where(cond, x, y) */
static int t_where(lua_State *L) {
  lvtl_checktensor(L, 1);
  lua_settop(L, 3);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_replace(L, 1);
  lua_replace(L, 2); /* (cond, x, y) */
  return l_where(L);
}

static int t_masked_fill(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1), *m = lvtl_checktensor(L, 2);
  double v = lua_isboolean(L, 3) ? lua_toboolean(L, 3) : luaL_checknumber(L, 3);
  RETURN_TENSOR(vtl_fn_masked_fill(x, m, v));
}
static int t_masked_fill_(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1), *m = lvtl_checktensor(L, 2);
  double v = lua_isboolean(L, 3) ? lua_toboolean(L, 3) : luaL_checknumber(L, 3);
  check_inplace(L, x, "masked_fill_");
  lvtl_check(L, vtl_op_masked_fill_(x, m, v));
  lua_settop(L, 1);
  return 1;
}

static int t_copy_(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1), *s = lvtl_checktensor(L, 2);
  check_inplace(L, x, "copy_");
  lvtl_check(L, vtl_op_copy_(x, s));
  lua_settop(L, 1);
  return 1;
}
static int t_fill_(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  double v = lua_isboolean(L, 2) ? lua_toboolean(L, 2) : luaL_checknumber(L, 2);
  check_inplace(L, x, "fill_");
  lvtl_check(L, vtl_op_fill_(x, v));
  lua_settop(L, 1);
  return 1;
}
static int t_zero_(lua_State *L) {
  check_inplace(L, lvtl_checktensor(L, 1), "zero_");
  lvtl_check(L, vtl_op_fill_(lvtl_checktensor(L, 1), 0));
  lua_settop(L, 1);
  return 1;
}

/* ---- reductions ---- */

/* reads (dim, keepdim) positional or {dim=, keepdim=} */
static void reduce_args(lua_State *L, vtl_tensor *x, int idx, uint32_t *dims, int *keepdim) {
  *keepdim = 0;
  if (lua_istable(L, idx) && luaL_len(L, idx) == 0) {
    lua_getfield(L, idx, "dim");
    *dims = check_dims(L, lua_gettop(L), x->ndim);
    lua_getfield(L, idx, "keepdim");
    *keepdim = lua_toboolean(L, -1);
    lua_pop(L, 2);
    return;
  }
  *dims = check_dims(L, idx, x->ndim);
  *keepdim = lua_toboolean(L, idx + 1);
}

static int reduce_simple(lua_State *L, vtl_reduce_op op, double param) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  uint32_t dims;
  int keep;
  reduce_args(L, x, 2, &dims, &keep);
  RETURN_TENSOR(vtl_fn_reduce(op, x, dims, keep, param, NULL));
}
static int t_sum(lua_State *L) { return reduce_simple(L, VTL_RED_SUM, 0); }
static int t_mean(lua_State *L) { return reduce_simple(L, VTL_RED_MEAN, 0); }
static int t_prod(lua_State *L) { return reduce_simple(L, VTL_RED_PROD, 0); }
static int t_logsumexp(lua_State *L) { return reduce_simple(L, VTL_RED_LOGSUMEXP, 0); }
static int t_any(lua_State *L) { return reduce_simple(L, VTL_RED_ANY, 0); }
static int t_all(lua_State *L) { return reduce_simple(L, VTL_RED_ALL, 0); }

/* a result index tensor (0-based i64) pushed as 1-based */
static int push_index_result(lua_State *L, vtl_tensor *idx0) {
  lvtl_box *b = newbox(L);
  vtl_tensor *r = idx0 ? vtl_op_binary_scalar(VTL_BIN_ADD, idx0, 1, false, false) : NULL;
  vtl_tensor_release(idx0);
  return fill_box(L, b, r);
}

static int argreduce(lua_State *L, vtl_reduce_op op) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  uint32_t dims;
  int keep;
  reduce_args(L, x, 2, &dims, &keep);
  if (dims && (dims & (dims - 1))) return luaL_error(L, "%s: expects a single dim", op == VTL_RED_ARGMAX ? "argmax" : "argmin");
  vtl_tensor *r;
  if (!dims && x->ndim > 1) { /* over the flattened tensor, as PyTorch */
    int64_t n = vtl_tensor_numel(x);
    vtl_tensor *f = vtl_op_reshape(x, &n, 1);
    r = f ? vtl_op_reduce(op, f, 0, keep, 0, NULL) : NULL;
    vtl_tensor_release(f);
    if (r && keep) {
      int64_t ones[VTL_MAX_DIMS];
      for (int d = 0; d < x->ndim; d++) ones[d] = 1;
      vtl_tensor *v = vtl_op_view(r, ones, x->ndim);
      vtl_tensor_release(r);
      r = v;
    }
  } else r = vtl_op_reduce(op, x, dims, keep, 0, NULL);
  if (!r) return lvtl_error(L);
  return push_index_result(L, r);
}
static int t_argmax(lua_State *L) { return argreduce(L, VTL_RED_ARGMAX); }
static int t_argmin(lua_State *L) { return argreduce(L, VTL_RED_ARGMIN); }

/* max(), max(dim[, keepdim]) → values, indices; max(other) → elementwise maximum */
static int maxmin(lua_State *L, vtl_reduce_op op, vtl_binary_op bop) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  if (lvtl_totensor(L, 2)) return binary_op(L, bop);
  uint32_t dims;
  int keep;
  reduce_args(L, x, 2, &dims, &keep);
  if (!dims) RETURN_TENSOR(vtl_fn_reduce(op, x, 0, false, 0, NULL));
  if (dims & (dims - 1)) return luaL_error(L, "%s: expects a single dim", op == VTL_RED_MAX ? "max" : "min");
  vtl_tensor *idx = NULL;
  lvtl_box *b = newbox(L);
  fill_box(L, b, vtl_fn_reduce(op, x, dims, keep, 0, &idx));
  return 1 + push_index_result(L, idx);
}
static int t_max(lua_State *L) { return maxmin(L, VTL_RED_MAX, VTL_BIN_MAXIMUM); }
static int t_min(lua_State *L) { return maxmin(L, VTL_RED_MIN, VTL_BIN_MINIMUM); }

/* var/std(dim, unbiased, keepdim) or {dim=, unbiased=, correction=, keepdim=} */
static int varstd(lua_State *L, int is_std) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  uint32_t dims = 0;
  int keep = 0;
  double corr = 1;
  if (lua_istable(L, 2) && luaL_len(L, 2) == 0) {
    lua_getfield(L, 2, "dim");
    dims = check_dims(L, lua_gettop(L), x->ndim);
    lua_getfield(L, 2, "keepdim");
    keep = lua_toboolean(L, -1);
    lua_getfield(L, 2, "unbiased");
    if (!lua_isnil(L, -1)) corr = lua_toboolean(L, -1) ? 1 : 0;
    lua_getfield(L, 2, "correction");
    if (!lua_isnil(L, -1)) corr = luaL_checknumber(L, -1);
    lua_pop(L, 4);
  } else {
    dims = check_dims(L, 2, x->ndim);
    if (!lua_isnoneornil(L, 3)) corr = lua_toboolean(L, 3) ? 1 : 0;
    keep = lua_toboolean(L, 4);
  }
  lvtl_box *b = newbox(L);
  vtl_tensor *v = vtl_fn_reduce(VTL_RED_VAR, x, dims, keep, corr, NULL);
  if (v && is_std) {
    vtl_tensor *s = vtl_fn_unary(VTL_UN_SQRT, v, NULL);
    vtl_tensor_release(v);
    v = s;
  }
  return fill_box(L, b, v);
}
static int t_var(lua_State *L) { return varstd(L, 0); }
static int t_std(lua_State *L) { return varstd(L, 1); }

static int t_norm(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  double p = 2;
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *s = lua_tostring(L, 2);
    if (strcmp(s, "inf") == 0) p = INFINITY;
    else if (strcmp(s, "fro") == 0) p = 2;
    else return luaL_error(L, "norm: unknown p '%s' (a number, 'inf' or 'fro')", s);
  } else if (!lua_isnoneornil(L, 2)) p = luaL_checknumber(L, 2);
  if (p < 0) return luaL_error(L, "norm: p must be non-negative, got %f", p);
  uint32_t dims = check_dims(L, 3, x->ndim);
  int keep = lua_toboolean(L, 4);
  if (!vtl_dtype_is_float(x->dtype)) return luaL_error(L, "norm: expected a float tensor, got %s", vtl_dtype_name(x->dtype));
  RETURN_TENSOR(vtl_fn_reduce(VTL_RED_NORM, x, dims, keep, p, NULL));
}

static int t_cumsum(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int d = check_dim(L, 2, x->ndim);
  RETURN_TENSOR(vtl_fn_cumsum(x, d));
}

/* values and 1-based indices of the k first entries along d (sorted) */
static int push_topk(lua_State *L, vtl_tensor *x, int64_t k, int d, int largest) {
  lvtl_box *bv = newbox(L);
  lvtl_box *bi = newbox(L);
  vtl_tensor *v = NULL, *i = NULL;
  lvtl_check(L, vtl_fn_topk(x, k, d, largest, &v, &i));
  bv->t = v;
  vtl_tensor *i1 = vtl_op_binary_scalar(VTL_BIN_ADD, i, 1, false, false);
  vtl_tensor_release(i);
  fill_box(L, bi, i1);
  return 2;
}

static int t_sort(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int d, desc;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "dim");
    d = opt_dim(L, lua_gettop(L), x->ndim, x->ndim ? x->ndim - 1 : 0);
    lua_getfield(L, 2, "descending");
    desc = lua_toboolean(L, -1);
    lua_settop(L, 1);
  } else {
    d = opt_dim(L, 2, x->ndim, x->ndim ? x->ndim - 1 : 0);
    desc = lua_toboolean(L, 3);
    lua_settop(L, 1);
  }
  int64_t n = x->ndim ? x->shape[d] : 1;
  return push_topk(L, x, n, d, desc);
}

static int t_argsort(lua_State *L) {
  t_sort(L);
  return 1;
}

static int t_topk(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int64_t k = check_int(L, 2, "k");
  int d = opt_dim(L, 3, x->ndim, x->ndim ? x->ndim - 1 : 0);
  int largest = lua_isnoneornil(L, 4) ? 1 : lua_toboolean(L, 4);
  return push_topk(L, x, k, d, largest);
}

/* unique({return_inverse=, return_counts=}) → values[, inverse][, counts] (sorted) */
static int t_unique(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int inv = 0, cnt = 0;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "return_inverse");
    inv = lua_toboolean(L, -1);
    lua_getfield(L, 2, "return_counts");
    cnt = lua_toboolean(L, -1);
    lua_pop(L, 2);
  }
  lvtl_box *bv = newbox(L);
  lvtl_box *bi = inv ? newbox(L) : NULL;
  lvtl_box *bc = cnt ? newbox(L) : NULL;
  vtl_tensor *v = NULL, *i = NULL, *c = NULL;
  lvtl_check(L, vtl_op_unique(x, &v, inv ? &i : NULL, cnt ? &c : NULL));
  bv->t = v;
  if (bi) {
    bi->t = vtl_op_binary_scalar(VTL_BIN_ADD, i, 1, false, false);
    vtl_tensor_release(i);
    if (!bi->t) return lvtl_error(L);
  }
  if (bc) bc->t = c;
  return 1 + inv + cnt;
}

/* ---- linear algebra ---- */
static int t_matmul(lua_State *L) {
  vtl_tensor *a = lvtl_checktensor(L, 1), *b = lvtl_checktensor(L, 2);
  RETURN_TENSOR(vtl_fn_matmul(a, b));
}
static int t_mm(lua_State *L) {
  vtl_tensor *a = lvtl_checktensor(L, 1), *b = lvtl_checktensor(L, 2);
  if (a->ndim != 2 || b->ndim != 2) return luaL_error(L, "mm: expected 2-D tensors, got %d-D and %d-D", a->ndim, b->ndim);
  RETURN_TENSOR(vtl_fn_matmul(a, b));
}
static int t_bmm(lua_State *L) {
  vtl_tensor *a = lvtl_checktensor(L, 1), *b = lvtl_checktensor(L, 2);
  if (a->ndim != 3 || b->ndim != 3) return luaL_error(L, "bmm: expected 3-D tensors, got %d-D and %d-D", a->ndim, b->ndim);
  if (a->shape[0] != b->shape[0])
    return luaL_error(L, "bmm: batch sizes differ (%d vs %d)", (int)a->shape[0], (int)b->shape[0]);
  RETURN_TENSOR(vtl_fn_matmul(a, b));
}
static int t_dot(lua_State *L) {
  vtl_tensor *a = lvtl_checktensor(L, 1), *b = lvtl_checktensor(L, 2);
  if (a->ndim != 1 || b->ndim != 1) return luaL_error(L, "dot: expected 1-D tensors, got %d-D and %d-D", a->ndim, b->ndim);
  RETURN_TENSOR(vtl_fn_matmul(a, b));
}

/* ---- indexing ---- */

/* index tensor argument (1-based) → 0-based i64 tensor (owned) */
static vtl_tensor *index_arg(lua_State *L, int idx, const char *fn) {
  vtl_tensor *t = lvtl_checktensor(L, idx);
  if (t->dtype != VTL_I64 && t->dtype != VTL_I32 && t->dtype != VTL_U8)
    luaL_error(L, "%s: index must be an integer tensor, got %s", fn, vtl_dtype_name(t->dtype));
  vtl_tensor *r = vtl_op_binary_scalar(VTL_BIN_SUB, t, 1, false, false);
  if (!r) lvtl_error(L);
  vtl_tensor *r64 = vtl_op_to_dtype(r, VTL_I64);
  vtl_tensor_release(r);
  if (!r64) lvtl_error(L);
  return r64;
}

/* Runs op with a converted index and releases it before raising any error. */
#define WITH_INDEX(IDX, ARGPOS, FN, EXPR)                                                        \
  do {                                                                                          \
    lvtl_box *b_ = newbox(L);                                                                   \
    vtl_tensor *IDX = index_arg(L, ARGPOS, FN);                                                 \
    vtl_tensor *r_ = (EXPR);                                                                    \
    vtl_tensor_release(IDX);                                                                    \
    return fill_box(L, b_, r_);                                                                 \
  } while (0)

static int t_index_select(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int d = check_dim(L, 2, x->ndim);
  WITH_INDEX(ix, 3, "index_select", vtl_fn_index_select(x, d, ix));
}
static int t_gather(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int d = check_dim(L, 2, x->ndim);
  WITH_INDEX(ix, 3, "gather", vtl_fn_gather(x, d, ix));
}

static int scatter_impl(lua_State *L, int acc, int inplace) {
  const char *fn = acc ? "scatter_add" : "scatter";
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int d = check_dim(L, 2, x->ndim);
  vtl_tensor *ix0 = lvtl_checktensor(L, 3);
  int own = 0;
  vtl_tensor *src = lvtl_totensor(L, 4);
  if (!src) {
    double v = luaL_checknumber(L, 4);
    src = vtl_op_full(ix0->shape, ix0->ndim, v, x->dtype, vtl_tensor_device(x));
    if (!src) return lvtl_error(L);
    own = 1;
  }
  if (inplace && vtl_ag_check_inplace(x, fn) != VTL_OK) {
    if (own) vtl_tensor_release(src);
    return lvtl_error(L);
  }
  if (!inplace && vtl_grad_enabled() && (vtl_requires_grad(x) || vtl_requires_grad(src))) {
    if (own) vtl_tensor_release(src);
    return luaL_error(L, "%s: gradients through scatter are not supported; detach() the inputs", fn);
  }
  lvtl_box *b = inplace ? NULL : newbox(L);
  vtl_tensor *ix = vtl_op_binary_scalar(VTL_BIN_SUB, ix0, 1, false, false);
  vtl_tensor *r = NULL;
  vtl_status st = VTL_OK;
  if (!ix) st = vtl_error_status();
  else if (ix0->dtype != VTL_I64 && ix0->dtype != VTL_I32 && ix0->dtype != VTL_U8)
    st = vtl_error_set(VTL_ERR_ARG, "%s: index must be an integer tensor, got %s", fn, vtl_dtype_name(ix0->dtype));
  else if (inplace) st = vtl_op_scatter_(x, d, ix, src, acc);
  else if (!(r = vtl_op_scatter(x, d, ix, src, acc))) st = vtl_error_status();
  vtl_tensor_release(ix);
  if (own) vtl_tensor_release(src);
  if (st != VTL_OK) return lvtl_error(L);
  if (inplace) { lua_settop(L, 1); return 1; }
  return fill_box(L, b, r);
}
static int t_scatter(lua_State *L) { return scatter_impl(L, 0, 0); }
static int t_scatter_(lua_State *L) { return scatter_impl(L, 0, 1); }
static int t_scatter_add(lua_State *L) { return scatter_impl(L, 1, 0); }
static int t_scatter_add_(lua_State *L) { return scatter_impl(L, 1, 1); }

static int t_index_copy_(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  int d = check_dim(L, 2, x->ndim);
  vtl_tensor *src = lvtl_checktensor(L, 4);
  check_inplace(L, x, "index_copy_");
  vtl_tensor *ix = index_arg(L, 3, "index_copy");
  vtl_status st = vtl_op_index_copy_(x, d, ix, src);
  vtl_tensor_release(ix);
  lvtl_check(L, st);
  lua_settop(L, 1);
  return 1;
}

static int t_masked_select(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1), *m = lvtl_checktensor(L, 2);
  RETURN_TENSOR(vtl_fn_masked_select(x, m));
}
static int t_masked_scatter_(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1), *m = lvtl_checktensor(L, 2), *s = lvtl_checktensor(L, 3);
  check_inplace(L, x, "masked_scatter_");
  lvtl_check(L, vtl_op_masked_scatter_(x, m, s));
  lua_settop(L, 1);
  return 1;
}
static int t_nonzero(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  vtl_tensor *r = vtl_op_nonzero(x);
  if (!r) return lvtl_error(L);
  return push_index_result(L, r);
}

/* x[key]: key = integer (select dim 1), table of per-dim specs, bool mask, index tensor. The
   result is a view for integers and tables, a copy for masks and index tensors. */
static vtl_tensor *index_view(lua_State *L, vtl_tensor *x, int k) {
  if (lua_type(L, k) == LUA_TNUMBER) {
    if (x->ndim == 0) luaL_error(L, "index: cannot index a 0-d tensor (use item())");
    int64_t i = check_index(L, k, x->shape[0], 0, "index");
    vtl_tensor *r = vtl_fn_select(x, 0, i);
    if (!r) lvtl_error(L);
    return r;
  }
  if (!lua_istable(L, k)) luaL_error(L, "index: expected an integer, a table of ranges or a tensor as index, got %s", luaL_typename(L, k));
  lua_Integer n = luaL_len(L, k);
  if (n > x->ndim) luaL_error(L, "index: %d indices given for a %d-D tensor", (int)n, x->ndim);
  vtl_tensor *cur = vtl_tensor_retain(x);
  int dim = 0; /* dim of cur being indexed; i - 1 is the dim of x */
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, k, i);
    int top = lua_gettop(L);
    vtl_tensor *next = NULL;
    if (lua_type(L, top) == LUA_TNUMBER) {
      int isnum;
      lua_Integer v = lua_tointegerx(L, top, &isnum);
      int64_t sz = cur->shape[dim];
      int64_t j = v < 0 ? v + sz : v - 1;
      if (!isnum || v == 0 || j < 0 || j >= sz) {
        vtl_tensor_release(cur);
        luaL_error(L, "index: index %s out of range for dim %d of size %d", lua_tostring(L, top), (int)i, (int)sz);
      }
      next = vtl_fn_select(cur, dim, j);
    } else if (lua_istable(L, top)) {
      lua_Integer len = luaL_len(L, top);
      int64_t sz = cur->shape[dim], a = 1, b = sz, step = 1;
      int ok = len <= 3;
      if (len >= 1) { lua_geti(L, top, 1); a = lua_tointegerx(L, -1, &ok) ; lua_pop(L, 1); b = a; }
      if (ok && len >= 2) { lua_geti(L, top, 2); b = lua_tointegerx(L, -1, &ok); lua_pop(L, 1); }
      if (ok && len == 3) { lua_geti(L, top, 3); step = lua_tointegerx(L, -1, &ok); lua_pop(L, 1); }
      if (len == 0) ok = 1;
      if (!ok) { vtl_tensor_release(cur); luaL_error(L, "index: range for dim %d must be {first, last[, step]} of integers", (int)i); }
      if (a < 0) a += sz + 1;
      if (b < 0) b += sz + 1;
      if (a < 1 || b > sz || a > b + 1 || step < 1) {
        vtl_tensor_release(cur);
        luaL_error(L, "index: range {%d, %d} out of bounds for dim %d of size %d", (int)a, (int)b, (int)i, (int)sz);
      }
      next = vtl_fn_slice(cur, dim, a - 1, b, step);
      dim++;
    } else {
      vtl_tensor_release(cur);
      luaL_error(L, "index: entry %d must be an integer or a range table, got %s", (int)i, luaL_typename(L, top));
    }
    lua_pop(L, 1);
    vtl_tensor_release(cur);
    if (!next) lvtl_error(L);
    cur = next;
  }
  return cur;
}

static int t_index(lua_State *L) {
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *key = lua_tostring(L, 2);
    lvtl_box *b = luaL_checkudata(L, 1, LVTL_TENSOR_MT);
    /* methods first */
    lua_getfield(L, lua_upvalueindex(1), key);
    if (!lua_isnil(L, -1)) return 1;
    lua_pop(L, 1);
    if (!b->t) return luaL_error(L, "tensor has been freed (closed or collected)");
    /* fields: shape, dtype, ndim, device, and those the Lua library adds (autograd) */
    lua_getfield(L, lua_upvalueindex(2), key);
    if (lua_isfunction(L, -1)) { lua_pushvalue(L, 1); lua_call(L, 1, 1); return 1; }
    return 0;
  }
  vtl_tensor *x = lvtl_checktensor(L, 1);
  vtl_tensor *key = lvtl_totensor(L, 2);
  if (key) {
    if (key->dtype == VTL_BOOL) RETURN_TENSOR(vtl_fn_mask_index(x, key));
    if (x->ndim == 0) return luaL_error(L, "index: cannot index a 0-d tensor");
    WITH_INDEX(ix, 2, "index", vtl_fn_index_select(x, 0, ix));
  }
  lvtl_box *b = newbox(L);
  return fill_box(L, b, index_view(L, x, 2));
}

static int t_newindex(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  if (lua_type(L, 2) == LUA_TSTRING) { /* setters registered by the Lua library */
    lua_getfield(L, lua_upvalueindex(1), lua_tostring(L, 2));
    if (lua_isfunction(L, -1)) { lua_insert(L, 1); lua_call(L, 3, 0); return 0; }
    return luaL_error(L, "tensor: cannot set field '%s'", lua_tostring(L, 2));
  }
  vtl_tensor *v = lvtl_totensor(L, 3);
  if (!v && !is_number(L, 3) && !lua_isboolean(L, 3)) {
    if (luaL_testudata(L, 3, LVTL_TENSOR_MT)) lvtl_checktensor(L, 3);
    return luaL_error(L, "index assignment: value must be a tensor, number or boolean, got %s", luaL_typename(L, 3));
  }
  double num = v ? 0 : lua_isboolean(L, 3) ? lua_toboolean(L, 3) : lua_tonumber(L, 3);
  vtl_tensor *key = lvtl_totensor(L, 2);
  check_inplace(L, x, "index assignment");
  vtl_status st;
  if (key && key->dtype == VTL_BOOL) {
    st = vtl_op_mask_assign_(x, key, v, num);
  } else if (key) {
    if (x->ndim == 0) return luaL_error(L, "index assignment: cannot index a 0-d tensor");
    vtl_tensor *ix = index_arg(L, 2, "index assignment");
    vtl_tensor *src = v ? vtl_tensor_retain(v) : vtl_op_full(NULL, 0, num, x->dtype, vtl_tensor_device(x));
    st = src ? vtl_op_index_copy_(x, 0, ix, src) : vtl_error_status();
    vtl_tensor_release(ix);
    vtl_tensor_release(src);
  } else {
    vtl_tensor *view = index_view(L, x, 2);
    st = v ? vtl_op_copy_(view, v) : vtl_op_fill_(view, num);
    vtl_tensor_release(view);
  }
  lvtl_check(L, st);
  return 0;
}

static int t_len(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  if (x->ndim == 0) return luaL_error(L, "len: a 0-d tensor has no length");
  lua_pushinteger(L, x->shape[0]);
  return 1;
}

static int t_unm(lua_State *L) { return unary_op(L, VTL_UN_NEG, NULL); }

/* ---- joining ---- */
static vtl_tensor **tensor_list(lua_State *L, int idx, int *n, const char *fn) {
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_Integer len = luaL_len(L, idx);
  if (len <= 0) luaL_error(L, "%s: expected a non-empty list of tensors", fn);
  if (len > 1 << 20) luaL_error(L, "%s: too many tensors", fn);
  vtl_tensor **ts = lua_newuserdatauv(L, (size_t)len * sizeof *ts, 0); /* freed by the GC */
  for (lua_Integer i = 1; i <= len; i++) {
    lua_geti(L, idx, i);
    ts[i - 1] = lvtl_totensor(L, -1);
    if (!ts[i - 1]) luaL_error(L, "%s: element %d of the list is a %s, expected a tensor", fn, (int)i, luaL_typename(L, -1));
    lua_pop(L, 1);
  }
  *n = (int)len;
  return ts;
}

static int l_cat(lua_State *L) {
  int n;
  lua_settop(L, 2);
  vtl_tensor **ts = tensor_list(L, 1, &n, "cat");
  int nd = 0;
  for (int i = 0; i < n; i++) if (ts[i]->ndim > nd) nd = ts[i]->ndim;
  int d = opt_dim(L, 2, nd, 0);
  RETURN_TENSOR(vtl_fn_cat(ts, n, d));
}

static int l_stack(lua_State *L) {
  int n;
  lua_settop(L, 2);
  vtl_tensor **ts = tensor_list(L, 1, &n, "stack");
  int d = 0;
  if (!lua_isnoneornil(L, 2)) {
    int64_t v = check_int(L, 2, "dim");
    int m = ts[0]->ndim + 1;
    if (v < 0) v += m + 1;
    if (v < 1 || v > m) return luaL_error(L, "stack: dim %d out of range (valid: 1..%d or -%d..-1)", (int)lua_tointeger(L, 2), m, m);
    d = (int)v - 1;
  }
  RETURN_TENSOR(vtl_fn_stack(ts, n, d));
}

static int l_is_tensor(lua_State *L) {
  lua_pushboolean(L, luaL_testudata(L, 1, LVTL_TENSOR_MT) != NULL);
  return 1;
}

static const luaL_Reg tensor_methods[] = {
  {"size", t_size}, {"stride", t_stride}, {"dim", t_dim}, {"numel", t_numel}, {"nelement", t_numel},
  {"is_contiguous", t_is_contiguous}, {"storage_offset", t_storage_offset}, {"item", t_item},
  {"totable", t_totable}, {"tolist", t_totable}, {"to", t_to}, {"float", t_float}, {"double", t_double},
  {"half", t_half}, {"bfloat16", t_bfloat16}, {"long", t_long}, {"int", t_int}, {"byte", t_byte},
  {"bool", t_bool}, {"cpu", t_cpu}, {"cuda", t_cuda}, {"pin_memory", t_pin_memory}, {"is_pinned", t_is_pinned}, {"clone", t_clone}, {"contiguous", t_contiguous},
  {"view", t_view}, {"reshape", t_reshape}, {"view_as", t_view_as}, {"permute", t_permute},
  {"transpose", t_transpose}, {"t", t_t}, {"narrow", t_narrow}, {"select", t_select}, {"squeeze", t_squeeze},
  {"unsqueeze", t_unsqueeze}, {"expand", t_expand}, {"expand_as", t_expand_as}, {"flatten", t_flatten},
  {"unfold", t_unfold}, {"repeat", t_repeat}, {"tile", t_tile}, {"split", t_split}, {"chunk", t_chunk},
  {"add", t_add}, {"sub", t_sub}, {"mul", t_mul}, {"div", t_div}, {"pow", t_pow}, {"maximum", t_maximum},
  {"minimum", t_minimum}, {"remainder", t_remainder}, {"floor_divide", t_floor_divide}, {"atan2", t_atan2},
  {"eq", t_eq}, {"ne", t_ne}, {"lt", t_lt}, {"le", t_le}, {"gt", t_gt}, {"ge", t_ge},
  {"logical_and", t_logical_and}, {"logical_or", t_logical_or}, {"logical_xor", t_logical_xor},
  {"add_", t_add_}, {"sub_", t_sub_}, {"mul_", t_mul_}, {"div_", t_div_}, {"pow_", t_pow_},
  {"maximum_", t_maximum_}, {"minimum_", t_minimum_}, {"remainder_", t_remainder_},
  {"floor_divide_", t_floor_divide_}, {"atan2_", t_atan2_}, {"eq_", t_eq_}, {"ne_", t_ne_}, {"lt_", t_lt_},
  {"le_", t_le_}, {"gt_", t_gt_}, {"ge_", t_ge_}, {"logical_and_", t_logical_and_},
  {"logical_or_", t_logical_or_}, {"logical_xor_", t_logical_xor_},
  {"neg", t_neg}, {"abs", t_abs}, {"sign", t_sign}, {"exp", t_exp}, {"log", t_log}, {"log2", t_log2},
  {"log1p", t_log1p}, {"expm1", t_expm1}, {"sqrt", t_sqrt}, {"rsqrt", t_rsqrt}, {"sigmoid", t_sigmoid},
  {"tanh", t_tanh}, {"relu", t_relu}, {"floor", t_floor}, {"ceil", t_ceil}, {"round", t_round},
  {"trunc", t_trunc}, {"sin", t_sin}, {"cos", t_cos}, {"reciprocal", t_reciprocal}, {"square", t_square},
  {"erf", t_erf}, {"logical_not", t_logical_not}, {"isnan", t_isnan}, {"isinf", t_isinf},
  {"neg_", t_neg_}, {"abs_", t_abs_}, {"sign_", t_sign_}, {"exp_", t_exp_}, {"log_", t_log_},
  {"log2_", t_log2_}, {"log1p_", t_log1p_}, {"expm1_", t_expm1_}, {"sqrt_", t_sqrt_}, {"rsqrt_", t_rsqrt_},
  {"sigmoid_", t_sigmoid_}, {"tanh_", t_tanh_}, {"relu_", t_relu_}, {"floor_", t_floor_}, {"ceil_", t_ceil_},
  {"round_", t_round_}, {"trunc_", t_trunc_}, {"sin_", t_sin_}, {"cos_", t_cos_},
  {"reciprocal_", t_reciprocal_}, {"square_", t_square_}, {"erf_", t_erf_}, {"logical_not_", t_logical_not_},
  {"clamp", t_clamp}, {"clamp_", t_clamp_}, {"clip", t_clamp}, {"clip_", t_clamp_}, {"lerp", t_lerp},
  {"where", t_where}, {"masked_fill", t_masked_fill}, {"masked_fill_", t_masked_fill_}, {"copy_", t_copy_},
  {"fill_", t_fill_}, {"zero_", t_zero_}, {"addcmul_", t_addcmul_}, {"addcdiv_", t_addcdiv_},
  {"sum", t_sum}, {"mean", t_mean}, {"prod", t_prod}, {"logsumexp", t_logsumexp}, {"any", t_any},
  {"all", t_all}, {"argmax", t_argmax}, {"argmin", t_argmin}, {"max", t_max}, {"min", t_min},
  {"var", t_var}, {"std", t_std}, {"norm", t_norm}, {"cumsum", t_cumsum}, {"sort", t_sort},
  {"argsort", t_argsort}, {"topk", t_topk}, {"unique", t_unique},
  {"matmul", t_matmul}, {"mm", t_mm}, {"bmm", t_bmm}, {"dot", t_dot},
  {"index_select", t_index_select}, {"gather", t_gather}, {"scatter", t_scatter}, {"scatter_", t_scatter_},
  {"scatter_add", t_scatter_add}, {"scatter_add_", t_scatter_add_}, {"index_copy_", t_index_copy_},
  {"masked_select", t_masked_select}, {"masked_scatter_", t_masked_scatter_}, {"nonzero", t_nonzero},
  {NULL, NULL}};

static const luaL_Reg module_funcs[] = {
  {"tensor", l_tensor}, {"is_tensor", l_is_tensor}, {"empty", l_empty}, {"zeros", l_zeros}, {"ones", l_ones},
  {"full", l_full}, {"empty_like", l_empty_like}, {"zeros_like", l_zeros_like}, {"ones_like", l_ones_like},
  {"full_like", l_full_like}, {"arange", l_arange}, {"linspace", l_linspace}, {"eye", l_eye}, {"rand", l_rand},
  {"randn", l_randn}, {"randint", l_randint}, {"rand_like", l_rand_like}, {"randn_like", l_randn_like},
  {"seed", l_seed}, {"manual_seed", l_seed}, {"Generator", l_generator}, {"cat", l_cat}, {"stack", l_stack},
  {"where", l_where}, {"_sgd_step_", l_sgd_step}, {"_adam_step_", l_adam_step}, {"_optim_multi", l_optim_multi}, {NULL, NULL}};

static const luaL_Reg tensor_meta[] = {
  {"__gc", tensor_release}, {"__close", tensor_release}, {"__tostring", t_tostring}, {"__len", t_len},
  {"__add", t_add}, {"__sub", t_sub}, {"__mul", t_mul}, {"__div", t_div}, {"__pow", t_pow},
  {"__mod", t_remainder}, {"__idiv", t_floor_divide}, {"__unm", t_unm}, {NULL, NULL}};

/* field getters (answered first by t_index; listed here so completion finds them) */
static int g_shape(lua_State *L) { push_shape(L, lvtl_checktensor(L, 1)); return 1; }
static int g_dtype(lua_State *L) { lua_pushstring(L, vtl_dtype_name(lvtl_checktensor(L, 1)->dtype)); return 1; }
static int g_ndim(lua_State *L) { lua_pushinteger(L, lvtl_checktensor(L, 1)->ndim); return 1; }
static int g_device(lua_State *L) {
  char d[32];
  vtl_device_format(vtl_tensor_device(lvtl_checktensor(L, 1)), d, sizeof d);
  lua_pushstring(L, d);
  return 1;
}
static const luaL_Reg tensor_getters[] = {
  {"shape", g_shape}, {"dtype", g_dtype}, {"ndim", g_ndim}, {"device", g_device}, {NULL, NULL}};

static const luaL_Reg generator_methods[] = {
  {"manual_seed", gen_manual_seed}, {"seed", gen_manual_seed}, {"initial_seed", gen_initial_seed},
  {"get_state", gen_get_state}, {"set_state", gen_set_state}, {NULL, NULL}};

/* Adds the tensor type and its functions to the module table on top of the stack. The
   metatable keeps `__methods` (read by REPL completion), `__getters` and `__setters`: tables of
   field accessors `f(x)` / `f(x, value)` that the Lua library may fill (autograd fields). */
void lvtl_open_tensor(lua_State *L) {
  int mod = lua_gettop(L);
  luaL_newmetatable(L, LVTL_TENSOR_MT);
  int mt = lua_gettop(L);
  luaL_setfuncs(L, tensor_meta, 0);
  lua_newtable(L);
  luaL_setfuncs(L, tensor_methods, 0);
  int methods = lua_gettop(L);
  lua_pushvalue(L, methods);
  lua_setfield(L, mt, "__methods");
  lua_newtable(L);
  luaL_setfuncs(L, tensor_getters, 0);
  int getters = lua_gettop(L);
  lua_pushvalue(L, getters);
  lua_setfield(L, mt, "__getters");
  lua_newtable(L);
  int setters = lua_gettop(L);
  lua_pushvalue(L, setters);
  lua_setfield(L, mt, "__setters");
  lua_pushvalue(L, methods);
  lua_pushvalue(L, getters);
  lua_pushcclosure(L, t_index, 2);
  lua_setfield(L, mt, "__index");
  lua_pushvalue(L, setters);
  lua_pushcclosure(L, t_newindex, 1);
  lua_setfield(L, mt, "__newindex");
  /* functional forms: vtl.add(a, b), vtl.sum(x, dim), ... */
  lua_pushnil(L);
  while (lua_next(L, methods)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_settable(L, mod);
  }
  lua_settop(L, mod);
  luaL_setfuncs(L, module_funcs, 0);
  /* generators */
  luaL_newmetatable(L, LVTL_GENERATOR_MT);
  lua_newtable(L);
  luaL_setfuncs(L, generator_methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, gen_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  lvtl_gen *g = lua_newuserdatauv(L, sizeof *g, 0);
  g->seed = DEFAULT_SEED;
  g->offset = 0;
  luaL_setmetatable(L, LVTL_GENERATOR_MT);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, "vtl.default_generator");
  lua_setfield(L, mod, "default_generator");
}
