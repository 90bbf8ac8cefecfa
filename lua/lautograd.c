/* Autograd from Lua: tensor fields (requires_grad, grad, grad_fn, is_leaf), backward,
   detach, grad mode, and nodes whose backward is a Lua function (autograd.Function). */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include "lvtl.h"
#include "autograd.h"
#include "grad_ops.h"
#include "autocast.h"

#define LVTL_NODE_MT "vtl.GradFn"
#define LVTL_GUARD_MT "vtl.GradMode"
#define LVTL_AUTOCAST_MT "vtl.Autocast"

/* the thread running backward(): Lua backward functions run on it */
static _Thread_local lua_State *backward_L;

/* ---- fields ---- */
static int g_requires_grad(lua_State *L) { lua_pushboolean(L, vtl_requires_grad(lvtl_checktensor(L, 1))); return 1; }
static int g_grad(lua_State *L) {
  vtl_tensor *g = vtl_grad(lvtl_checktensor(L, 1));
  if (!g) return 0;
  lvtl_pushtensor(L, vtl_tensor_retain(g));
  return 1;
}
static int g_is_leaf(lua_State *L) { lua_pushboolean(L, vtl_grad_fn(lvtl_checktensor(L, 1)) == NULL); return 1; }

static int node_gc(lua_State *L) {
  vtl_node **p = luaL_checkudata(L, 1, LVTL_NODE_MT);
  vtl_node_release(*p);
  *p = NULL;
  return 0;
}
static int node_tostring(lua_State *L) {
  vtl_node **p = luaL_checkudata(L, 1, LVTL_NODE_MT);
  lua_pushfstring(L, "<grad_fn %s>", *p ? (*p)->name : "?");
  return 1;
}
static int node_index(lua_State *L) {
  vtl_node **p = luaL_checkudata(L, 1, LVTL_NODE_MT);
  const char *k = luaL_checkstring(L, 2);
  if (*p && strcmp(k, "name") == 0) { lua_pushstring(L, (*p)->name); return 1; }
  return 0;
}
static int g_grad_fn(lua_State *L) {
  vtl_node *n = vtl_grad_fn(lvtl_checktensor(L, 1));
  if (!n) return 0;
  vtl_node **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = n;
  vtl_node_retain(n);
  luaL_setmetatable(L, LVTL_NODE_MT);
  return 1;
}

static int s_requires_grad(lua_State *L) {
  lvtl_check(L, vtl_set_requires_grad(lvtl_checktensor(L, 1), lua_toboolean(L, 3)));
  return 0;
}
static int s_grad(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  vtl_tensor *g = lua_isnil(L, 3) ? NULL : lvtl_checktensor(L, 3);
  lvtl_check(L, vtl_set_grad(x, g));
  return 0;
}

/* x.data: a detached alias of x (same storage). x.data = t: x becomes a detached alias of t
   (its storage, shape, dtype and device) and keeps its identity and requires_grad, the way
   Module:to moves parameters; x's .grad is dropped. Leaves only. */
static int g_data(lua_State *L) {
  lvtl_pushtensor(L, vtl_detach(lvtl_checktensor(L, 1)));
  return 1;
}
static int s_data(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  lvtl_box *b = luaL_checkudata(L, 1, LVTL_TENSOR_MT);
  vtl_tensor *src = lvtl_totensor(L, 3);
  if (!src) return luaL_error(L, "data: expected a tensor to assign, got %s", luaL_typename(L, 3));
  if (vtl_grad_fn(x)) return luaL_error(L, "data: only a leaf tensor's data can be replaced (this one has a grad_fn)");
  bool rg = vtl_requires_grad(x);
  vtl_tensor *n = vtl_detach(src);
  if (!n) lvtl_check(L, vtl_error_status());
  if (rg) {
    vtl_status st = vtl_set_requires_grad(n, true);
    if (st != VTL_OK) {
      vtl_tensor_release(n);
      lvtl_check(L, st);
    }
  }
  vtl_tensor_release(b->t);
  b->t = n;
  return 0;
}

/* ---- methods ---- */
static int t_requires_grad_(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  lvtl_check(L, vtl_set_requires_grad(x, lua_isnoneornil(L, 2) ? true : lua_toboolean(L, 2)));
  lua_settop(L, 1);
  return 1;
}

/* y:backward([g], [{retain_graph = bool}]) */
static int t_backward(lua_State *L) {
  vtl_tensor *y = lvtl_checktensor(L, 1);
  vtl_tensor *g = lvtl_totensor(L, 2);
  int o = lua_istable(L, 2) ? 2 : lua_istable(L, 3) ? 3 : 0;
  if (!g && !lua_isnoneornil(L, 2) && o != 2) return luaL_argerror(L, 2, "gradient tensor or options table expected");
  bool retain = false;
  if (o) {
    lua_getfield(L, o, "retain_graph");
    retain = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  lua_State *prev = backward_L;
  backward_L = L;
  vtl_status st = vtl_autograd_backward(y, g, retain);
  backward_L = prev;
  lvtl_check(L, st);
  return 0;
}

static int t_detach(lua_State *L) {
  vtl_tensor *x = lvtl_checktensor(L, 1);
  lvtl_pushtensor(L, vtl_detach(x));
  return 1;
}

/* ---- grad mode ---- */
static int guard_close(lua_State *L) {
  int *prev = luaL_checkudata(L, 1, LVTL_GUARD_MT);
  if (*prev >= 0) vtl_set_grad_enabled(*prev);
  *prev = -1;
  return 0;
}

/* with_mode(on, [fn, ...]): runs fn in that mode and restores it (also on error); without fn
   returns a guard for `local g <close> = vtl.no_grad()`. */
static int with_mode(lua_State *L, bool on) {
  bool prev = vtl_grad_enabled();
  if (lua_isnoneornil(L, 1)) {
    int *g = lua_newuserdatauv(L, sizeof *g, 0);
    *g = prev;
    luaL_setmetatable(L, LVTL_GUARD_MT);
    vtl_set_grad_enabled(on);
    return 1;
  }
  luaL_checktype(L, 1, LUA_TFUNCTION);
  int n = lua_gettop(L);
  vtl_set_grad_enabled(on);
  int st = lua_pcall(L, n - 1, LUA_MULTRET, 0);
  vtl_set_grad_enabled(prev);
  if (st != LUA_OK) return lua_error(L);
  return lua_gettop(L);
}
static int l_no_grad(lua_State *L) { return with_mode(L, false); }
static int l_enable_grad(lua_State *L) { return with_mode(L, true); }
static int l_is_grad_enabled(lua_State *L) { lua_pushboolean(L, vtl_grad_enabled()); return 1; }
static int l_set_grad_enabled(lua_State *L) {
  luaL_checkany(L, 1);
  vtl_set_grad_enabled(lua_toboolean(L, 1));
  return 0;
}

/* ---- autocast (runtime/autocast.h) ---- */
static int autocast_close(lua_State *L) {
  int *saved = luaL_checkudata(L, 1, LVTL_AUTOCAST_MT);
  if (saved[1]) vtl_autocast_leave(saved[0]);
  saved[1] = 0;
  return 0;
}

/* autocast(dtype, [fn, ...]): dtype "bf16" or "f16" (false, nil or "f32": autocast off inside);
   runs fn in the region and leaves it (also on error), or without fn returns a guard for
   `local ac <close> = vtl.autocast("bf16")`. */
static int l_autocast(lua_State *L) {
  vtl_dtype dt = VTL_F32;
  if (lua_toboolean(L, 1)) {
    const char *name = luaL_checkstring(L, 1);
    if (!vtl_dtype_from_name(name, &dt) || (dt != VTL_BF16 && dt != VTL_F16 && dt != VTL_F32))
      return luaL_error(L, "autocast: dtype must be \"bf16\", \"f16\" or false (off), got \"%s\"", name);
  }
  if (lua_isnoneornil(L, 2)) {
    int *g = lua_newuserdatauv(L, 2 * sizeof *g, 0);
    g[1] = 0;
    luaL_setmetatable(L, LVTL_AUTOCAST_MT);
    g[0] = vtl_autocast_enter(dt);
    g[1] = 1;
    return 1;
  }
  luaL_checktype(L, 2, LUA_TFUNCTION);
  int n = lua_gettop(L);
  int saved = vtl_autocast_enter(dt);
  int st = lua_pcall(L, n - 2, LUA_MULTRET, 0);
  vtl_autocast_leave(saved);
  if (st != LUA_OK) return lua_error(L);
  return lua_gettop(L) - 1;
}

static int l_autocast_dtype(lua_State *L) {
  vtl_dtype dt = vtl_autocast_dtype();
  if (dt == VTL_F32) lua_pushnil(L);
  else lua_pushstring(L, vtl_dtype_name(dt));
  return 1;
}

static int l_autocast_cache_size(lua_State *L) {
  lua_pushinteger(L, vtl_autocast_cache_size());
  return 1;
}

/* ---- nodes with a Lua backward ---- */
/* L: the main thread (the registry is shared by all threads); the backward itself runs on
   the thread that called backward(). */
typedef struct { lua_State *L; int ref; int nargs; int argpos[VTL_NODE_MAXIN]; char name[64]; } lua_fn_ctx;


static void lua_fn_free(void *p) {
  lua_fn_ctx *c = p;
  luaL_unref(c->L, LUA_REGISTRYINDEX, c->ref);
  free(c);
}

static int call_backward(lua_State *L) {
  /* (fn, gout) → all results */
  lua_call(L, 1, LUA_MULTRET);
  return lua_gettop(L);
}

static vtl_status lua_fn_backward(vtl_node *n, vtl_tensor *g, vtl_tensor **gin) {
  lua_fn_ctx *c = n->ctx;
  lua_State *L = backward_L;
  if (!L) return vtl_error_set(VTL_ERR_ARG, "%s: a Lua backward can only run from backward() in Lua", n->name);
  int top = lua_gettop(L);
  lua_pushcfunction(L, call_backward);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref);
  lvtl_pushtensor(L, vtl_tensor_retain(g));
  if (lua_pcall(L, 2, LUA_MULTRET, 0) != LUA_OK) {
    vtl_status st = vtl_error_set(VTL_ERR_ARG, "%s: backward failed: %s", n->name, luaL_tolstring(L, -1, NULL));
    lua_settop(L, top);
    return st;
  }
  int nres = lua_gettop(L) - top;
  vtl_status st = VTL_OK;
  for (int k = 0; k < n->ninputs && st == VTL_OK; k++) {
    int pos = c->argpos[k];
    if (pos > nres || !n->needs[k]) continue;
    int idx = top + pos;
    if (lua_isnil(L, idx)) continue;
    vtl_tensor *t = lvtl_totensor(L, idx);
    if (!t) st = vtl_error_set(VTL_ERR_ARG, "%s: backward returned a %s for argument %d, expected a tensor or nil",
                               n->name, luaL_typename(L, idx), pos);
    else gin[k] = vtl_tensor_retain(t);
  }
  lua_settop(L, top);
  return st;
}

/* _record_function(out, args_table, nargs, backward_fn, name) → out with a grad_fn when an
   argument requires grad (a new alias of out), else out itself. */
static int l_record_function(lua_State *L) {
  vtl_tensor *out = lvtl_checktensor(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  int nargs = (int)luaL_checkinteger(L, 3);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  const char *name = luaL_optstring(L, 5, "FunctionBackward");
  vtl_tensor *ins[VTL_NODE_MAXIN];
  lua_fn_ctx *c = calloc(1, sizeof *c);
  if (!c) return luaL_error(L, "autograd.Function: out of memory");
  int n = 0;
  for (int a = 1; a <= nargs; a++) {
    lua_geti(L, 2, a);
    vtl_tensor *t = lvtl_totensor(L, -1);
    lua_pop(L, 1);
    if (!t) continue;
    if (n == VTL_NODE_MAXIN) { free(c); return luaL_error(L, "autograd.Function: at most %d tensor arguments", VTL_NODE_MAXIN); }
    c->argpos[n] = a;
    ins[n++] = t;
  }
  if (!vtl_ag_needs(ins, n)) { free(c); lua_settop(L, 1); return 1; }
  vtl_tensor *alias = vtl_detach(out);
  if (!alias) { free(c); return lvtl_error(L); }
  lvtl_pushtensor(L, alias);
  vtl_node *nd = vtl_ag_node("FunctionBackward", lua_fn_backward, ins, n);
  if (!nd) { free(c); return lvtl_error(L); }
  snprintf(c->name, sizeof c->name, "%s", name);
  nd->name = c->name;
  lua_pushvalue(L, 4);
  c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  c->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  c->nargs = nargs;
  nd->ctx = c;
  nd->ctx_free = lua_fn_free;
  vtl_ag_attach(alias, nd);
  return 1;
}

static const luaL_Reg getters[] = {
  {"requires_grad", g_requires_grad}, {"grad", g_grad}, {"grad_fn", g_grad_fn}, {"is_leaf", g_is_leaf},
  {"data", g_data}, {NULL, NULL}};
static const luaL_Reg setters[] = {
  {"requires_grad", s_requires_grad}, {"grad", s_grad}, {"data", s_data}, {NULL, NULL}};
static const luaL_Reg methods[] = {
  {"requires_grad_", t_requires_grad_}, {"backward", t_backward}, {"detach", t_detach}, {NULL, NULL}};
static const luaL_Reg funcs[] = {
  {"no_grad", l_no_grad}, {"enable_grad", l_enable_grad}, {"is_grad_enabled", l_is_grad_enabled},
  {"set_grad_enabled", l_set_grad_enabled}, {"_record_function", l_record_function}, {"autocast", l_autocast},
  {"autocast_dtype", l_autocast_dtype}, {"_autocast_cache_size", l_autocast_cache_size}, {NULL, NULL}};

void lvtl_open_autograd(lua_State *L) {
  int mod = lua_gettop(L);
  luaL_getmetatable(L, LVTL_TENSOR_MT);
  lua_getfield(L, -1, "__getters");
  luaL_setfuncs(L, getters, 0);
  lua_getfield(L, -2, "__setters");
  luaL_setfuncs(L, setters, 0);
  lua_getfield(L, -3, "__methods");
  luaL_setfuncs(L, methods, 0);
  lua_settop(L, mod);
  luaL_setfuncs(L, funcs, 0);
  luaL_setfuncs(L, methods, 0);
  luaL_newmetatable(L, LVTL_NODE_MT);
  lua_pushcfunction(L, node_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, node_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushcfunction(L, node_index);
  lua_setfield(L, -2, "__index");
  luaL_newmetatable(L, LVTL_AUTOCAST_MT);
  lua_pushcfunction(L, autocast_close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, autocast_close);
  lua_setfield(L, -2, "__gc");
  lua_settop(L, mod);
  luaL_newmetatable(L, LVTL_GUARD_MT);
  lua_pushcfunction(L, guard_close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, guard_close);
  lua_setfield(L, -2, "__gc");
  lua_settop(L, mod);
}
