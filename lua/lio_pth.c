/*
 * PyTorch checkpoints and JSON from Lua.
 *
 *   local ckpt, order = vtl.load_pth("model.pth")   -- or vtl.load("model.pth")
 *   ckpt.state_dict["fc.weight"], ckpt.epoch, order[ckpt.state_dict]  -- keys in file order
 *   local sd, keys = vtl.load_state_dict_file("model.pth")  -- flat name -> tensor (vtl.hub)
 *   local cfg = vtl._json_decode('{"num_classes": 10}')
 *
 * Python values become Lua values: dicts and OrderedDicts tables (keys as they are: strings,
 * integers...), lists and tuples 1-based arrays, None nil (a dict entry whose value is None
 * is absent; in a list it leaves a hole), bool/int/float/str/bytes booleans, integers,
 * numbers and strings, tensors vtl tensors on the CPU. A value the pickle shares (one dict
 * in two places, tensors with one storage) stays shared.
 *
 * The C results are owned by a userdata until every Lua value is built, so an error midway
 * (too deep, out of memory) leaks nothing.
 */
#include <limits.h>
#include <math.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include <cjson/cJSON.h>
#include "lvtl.h"
#include "io_pth.h"

#define LVTL_PTHSTATE_MT "vtl.PthState"
#define LVTL_JSONSTATE_MT "vtl.JsonState"
#define MAX_DEPTH 200 /* nesting of the values built (Lua tables), for pickles and JSON alike */

typedef struct { vtl_pth *p; } pth_state;
typedef struct { cJSON *j; } json_state;

static int pthstate_gc(lua_State *L) {
  pth_state *s = luaL_checkudata(L, 1, LVTL_PTHSTATE_MT);
  vtl_pth_free(s->p);
  s->p = NULL;
  return 0;
}

static int jsonstate_gc(lua_State *L) {
  json_state *s = luaL_checkudata(L, 1, LVTL_JSONSTATE_MT);
  cJSON_Delete(s->j);
  s->j = NULL;
  return 0;
}

/* ---- pickled values -> Lua ---- */

typedef struct {
  lua_State *L;
  const char *path;
  int cache; /* node (light userdata) -> its Lua table or tensor, so sharing survives */
  int order; /* dict table -> its keys in file order (weak keys) */
} conv;

static void push_pv(conv *c, const vtl_pv *v, int depth) {
  lua_State *L = c->L;
  luaL_checkstack(L, 8, "load: values nest too deeply");
  switch (v->kind) {
  case VTL_PV_NONE: lua_pushnil(L); return;
  case VTL_PV_BOOL: lua_pushboolean(L, v->u.i != 0); return;
  case VTL_PV_INT: lua_pushinteger(L, (lua_Integer)v->u.i); return;
  case VTL_PV_FLOAT: lua_pushnumber(L, (lua_Number)v->u.f); return;
  case VTL_PV_STR: case VTL_PV_BYTES: lua_pushlstring(L, v->u.s.p, v->u.s.n); return;
  default: break;
  }
  if (lua_rawgetp(L, c->cache, v) != LUA_TNIL) return;
  lua_pop(L, 1);
  if (v->kind == VTL_PV_TENSOR) {
    lvtl_box *b = lvtl_newbox(L);
    b->t = vtl_tensor_retain(v->u.t);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, c->cache, v);
    return;
  }
  if (depth >= MAX_DEPTH) luaL_error(L, "load: %s: values nest deeper than %d levels", c->path, MAX_DEPTH);
  size_t n = v->u.seq.n;
  if (v->kind == VTL_PV_LIST || v->kind == VTL_PV_TUPLE) {
    lua_createtable(L, n < INT_MAX ? (int)n : 0, 0);
    int tbl = lua_gettop(L);
    lua_pushvalue(L, tbl);
    lua_rawsetp(L, c->cache, v);
    for (size_t i = 0; i < n; i++) {
      push_pv(c, v->u.seq.v[i], depth + 1);
      lua_rawseti(L, tbl, (lua_Integer)i + 1);
    }
    return;
  }
  /* a dict */
  lua_createtable(L, 0, n / 2 < INT_MAX ? (int)(n / 2) : 0);
  int tbl = lua_gettop(L);
  lua_pushvalue(L, tbl);
  lua_rawsetp(L, c->cache, v);
  lua_createtable(L, n / 2 < INT_MAX ? (int)(n / 2) : 0, 0);
  int keys = lua_gettop(L);
  lua_pushvalue(L, tbl);
  lua_pushvalue(L, keys);
  lua_rawset(L, c->order);
  lua_Integer nk = 0;
  for (size_t i = 0; i + 1 < n; i += 2) {
    push_pv(c, v->u.seq.v[i], depth + 1);
    int kt = lua_type(L, -1);
    if (kt == LUA_TNIL || (kt == LUA_TNUMBER && lua_tonumber(L, -1) != lua_tonumber(L, -1))) {
      lua_pop(L, 1); /* None and NaN cannot be Lua keys */
      continue;
    }
    lua_pushvalue(L, -1);
    bool seen = lua_rawget(L, tbl) != LUA_TNIL;
    lua_pop(L, 1);
    if (!seen) {
      lua_pushvalue(L, -1);
      lua_rawseti(L, keys, ++nk);
    }
    push_pv(c, v->u.seq.v[i + 1], depth + 1);
    lua_rawset(L, tbl);
  }
  lua_pop(L, 1); /* keys */
}

/* Pushes the checkpoint's object and the key-order table; returns 2. For vtl.load's
   dispatch on a zip file.
   ---@return any value, table<table, any[]> order */
int lvtl_load_pth(lua_State *L, const char *path) {
  pth_state *s = lua_newuserdatauv(L, sizeof *s, 0);
  s->p = NULL;
  luaL_setmetatable(L, LVTL_PTHSTATE_MT);
  s->p = vtl_pth_load(path);
  if (!s->p) return luaL_error(L, "%s", vtl_error_message());
  lua_newtable(L);
  int cache = lua_gettop(L);
  lua_newtable(L);
  int order = lua_gettop(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, order);
  conv c = {L, path, cache, order};
  push_pv(&c, vtl_pth_root(s->p), 0);
  /* tensor memory paces the collector: count each new storage once */
  lua_newtable(L);
  int seen = lua_gettop(L);
  size_t bytes = 0;
  lua_pushnil(L);
  while (lua_next(L, cache)) {
    vtl_tensor *t = lvtl_totensor(L, -1);
    if (t) {
      if (lua_rawgetp(L, seen, t->storage) == LUA_TNIL) {
        bytes += t->storage->nbytes;
        lua_pushboolean(L, 1);
        lua_rawsetp(L, seen, t->storage);
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1); /* seen */
  vtl_pth_free(s->p);
  s->p = NULL;
  if (bytes >= (64u << 10)) lua_gc(L, LUA_GCSTEP, (int)((bytes >> 10) < (1u << 30) ? (bytes >> 10) : (1u << 30)));
  lua_pushvalue(L, order); /* the value and the order table are the top two */
  return 2;
}

/* vtl.load_pth(path)
   ---Reads a PyTorch checkpoint written by torch.save (zip format, PyTorch >= 1.6) without
   ---running any code: containers, numbers, strings and tensors (on the CPU).
   ---@param path string
   ---@return any value  what torch.save was given (a table of name -> tensor for a state_dict)
   ---@return table<table, any[]> order  for each dict in value, its keys in file order */
static int l_load_pth(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  return lvtl_load_pth(L, path);
}

/* vtl.load_state_dict_file(path [, opts]): implemented in Lua (vtl.hub), here so that it sits
   next to vtl.load.
   ---Reads a state dict (name -> tensor) from a .pth/.pt/.bin checkpoint or a safetensors
   ---file: unwraps {state_dict = ...}-style checkpoints, strips a DataParallel "module." prefix.
   ---@param path string
   ---@param opts? {key: string}  the entry to take (default: the first of state_dict, model_state_dict, model, model_state, state_dict_ema)
   ---@return table<string, vtl.Tensor> state_dict, string[] keys */
static int l_load_state_dict_file(lua_State *L) {
  int n = lua_gettop(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "vtl.hub");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "load_state_dict_file");
  lua_remove(L, -2);
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  return lua_gettop(L);
}

/* ---- JSON -> Lua ---- */

static void push_json(lua_State *L, const cJSON *j, int depth, const char *name) {
  luaL_checkstack(L, 6, "json: nests too deeply");
  if (cJSON_IsNull(j) || cJSON_IsInvalid(j)) lua_pushnil(L);
  else if (cJSON_IsBool(j)) lua_pushboolean(L, cJSON_IsTrue(j));
  else if (cJSON_IsNumber(j)) {
    double d = j->valuedouble;
    if (d == floor(d) && d >= -9007199254740992.0 && d <= 9007199254740992.0) lua_pushinteger(L, (lua_Integer)d);
    else lua_pushnumber(L, d);
  } else if (cJSON_IsString(j)) lua_pushstring(L, j->valuestring);
  else {
    if (depth >= MAX_DEPTH) luaL_error(L, "json: %s: nests deeper than %d levels", name, MAX_DEPTH);
    bool arr = cJSON_IsArray(j);
    int n = cJSON_GetArraySize(j);
    lua_createtable(L, arr ? n : 0, arr ? 0 : n);
    int tbl = lua_gettop(L);
    lua_Integer i = 0;
    for (const cJSON *c = j->child; c; c = c->next) {
      if (arr) {
        push_json(L, c, depth + 1, name);
        lua_rawseti(L, tbl, ++i);
      } else {
        lua_pushstring(L, c->string ? c->string : "");
        push_json(L, c, depth + 1, name);
        lua_rawset(L, tbl); /* null values leave the key out */
      }
    }
  }
}

/* vtl._json_decode(text [, name])
   ---Parses JSON: objects and arrays become tables (arrays 1-based), null nil, integral
   ---numbers integers.
   ---@param text string
   ---@param name? string  names the text in error messages (a file name)
   ---@return any */
static int l_json_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  const char *name = luaL_optstring(L, 2, "text");
  if (strlen(s) != len) return luaL_error(L, "json: %s: contains a NUL byte", name);
  json_state *st = lua_newuserdatauv(L, sizeof *st, 0);
  st->j = NULL;
  luaL_setmetatable(L, LVTL_JSONSTATE_MT);
  const char *end = NULL;
  st->j = cJSON_ParseWithLengthOpts(s, len + 1, &end, 1); /* + the NUL, which cJSON wants */
  if (!st->j) {
    long at = end && end >= s && end <= s + len ? (long)(end - s) : -1;
    if (at >= 0) {
      int line = 1;
      for (long i = 0; i < at; i++) line += s[i] == '\n';
      return luaL_error(L, "json: %s: invalid JSON at byte %d (line %d)", name, (int)at + 1, line);
    }
    return luaL_error(L, "json: %s: invalid JSON", name);
  }
  push_json(L, st->j, 0, name);
  cJSON_Delete(st->j);
  st->j = NULL;
  return 1;
}

static const luaL_Reg pth_funcs[] = {
  {"load_pth", l_load_pth}, {"load_state_dict_file", l_load_state_dict_file}, {"_json_decode", l_json_decode},
  {NULL, NULL}};

void lvtl_open_io_pth(lua_State *L) {
  if (luaL_newmetatable(L, LVTL_PTHSTATE_MT)) {
    lua_pushcfunction(L, pthstate_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, pthstate_gc);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, LVTL_JSONSTATE_MT)) {
    lua_pushcfunction(L, jsonstate_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, jsonstate_gc);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  lvtl_setfuncs(L, pth_funcs);
}
