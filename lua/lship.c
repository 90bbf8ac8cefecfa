/*
 * Copying Lua values between Lua states (the main state and the loader's worker states).
 *
 * A value is encoded into a flat message: numbers, strings and booleans by value; tables
 * field by field (shared and cyclic references kept, metatables too); Lua functions as their
 * bytecode plus their upvalues' values; tensors by reference (the message holds one reference
 * to each, so no pixel data is copied); generators by state. Values reachable from
 * package.loaded (a module, or a field of one, such as vtl.image.hflip or string.format) are
 * sent by name and looked up with require on the other side, so library code is shared, not
 * copied. Any other userdata, a coroutine, or a C function with upvalues cannot be sent; the
 * error names where in the value it was found ("value.transform.transforms[3]: ...").
 *
 * Encoding runs in the sending state and decoding in the receiving one; the message itself
 * belongs to neither, so it can be handed from one thread to another.
 */
#include <stdlib.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include "lvtl.h"
#include "lship.h"

enum {
  TAG_NIL = 'n', TAG_FALSE = 'f', TAG_TRUE = 't', TAG_INT = 'i', TAG_FLT = 'd', TAG_STR = 's',
  TAG_TABLE = '{', TAG_END = '}', TAG_FUNC = 'F', TAG_CFUNC = 'C', TAG_REF = 'r', TAG_NAMED = 'M',
  TAG_TENSOR = 'T', TAG_GEN = 'G'
};

#define MAX_DEPTH 200

void lvtl_msg_free(lvtl_msg *m) {
  for (int i = 0; i < m->ntensors; i++) vtl_tensor_release(m->tensors[i]);
  free(m->tensors);
  free(m->buf);
  memset(m, 0, sizeof *m);
}

/* ---- encoding ---- */

typedef struct {
  lua_State *L;
  lvtl_msg *m;
  int names, seen; /* stack indices: value -> "module\0field" name, value -> id */
  int nextid;
  char path[256];
  char err[384];
} encoder;

static int put(encoder *e, const void *p, size_t n) {
  lvtl_msg *m = e->m;
  if (m->len + n > m->cap) {
    size_t cap = m->cap ? m->cap : 256;
    while (cap < m->len + n) cap *= 2;
    char *b = realloc(m->buf, cap);
    if (!b) { snprintf(e->err, sizeof e->err, "out of memory"); return -1; }
    m->buf = b;
    m->cap = cap;
  }
  memcpy(m->buf + m->len, p, n);
  m->len += n;
  return 0;
}
static int put_tag(encoder *e, char t) { return put(e, &t, 1); }
static int put_i64(encoder *e, int64_t v) { return put(e, &v, sizeof v); }
static int put_bytes(encoder *e, const char *s, size_t n) {
  return put_i64(e, (int64_t)n) || put(e, s, n);
}

static int fail(encoder *e, const char *what) {
  snprintf(e->err, sizeof e->err, "%s: %s", e->path[0] ? e->path : "value", what);
  return -1;
}

static int add_tensor(encoder *e, vtl_tensor *t) {
  lvtl_msg *m = e->m;
  if (m->ntensors == m->captensors) {
    int cap = m->captensors ? 2 * m->captensors : 8;
    vtl_tensor **ts = realloc(m->tensors, (size_t)cap * sizeof *ts);
    if (!ts) { snprintf(e->err, sizeof e->err, "out of memory"); return -1; }
    m->tensors = ts;
    m->captensors = cap;
  }
  /* a tensor taking part in autograd travels as a plain view of its data: the graph stays here */
  vtl_tensor *r = t->ag ? vtl_tensor_view_of(t, t->shape, t->strides, t->ndim, t->offset) : vtl_tensor_retain(t);
  if (!r) { snprintf(e->err, sizeof e->err, "out of memory"); return -1; }
  m->tensors[m->ntensors] = r;
  return put_tag(e, TAG_TENSOR) || put_i64(e, m->ntensors++);
}

static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud) {
  (void)L;
  return put((encoder *)ud, p, sz);
}

static int encode(encoder *e, int idx, int depth);

/* Appends ".key" or "[key]" to the error path while a field is encoded. */
static size_t path_push(encoder *e, int kidx) {
  size_t n = strlen(e->path);
  lua_State *L = e->L;
  if (lua_type(L, kidx) == LUA_TSTRING)
    snprintf(e->path + n, sizeof e->path - n, "%s%s", n ? "." : "", lua_tostring(L, kidx));
  else if (lua_type(L, kidx) == LUA_TNUMBER) {
    if (lua_isinteger(L, kidx)) snprintf(e->path + n, sizeof e->path - n, "[%lld]", (long long)lua_tointeger(L, kidx));
    else snprintf(e->path + n, sizeof e->path - n, "[%g]", lua_tonumber(L, kidx));
  } else
    snprintf(e->path + n, sizeof e->path - n, "[%s]", luaL_typename(L, kidx));
  return n;
}

static int encode_table(encoder *e, int idx, int depth) {
  lua_State *L = e->L;
  if (put_tag(e, TAG_TABLE)) return -1;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int k = lua_gettop(L) - 1, v = k + 1;
    size_t n = path_push(e, k);
    if (encode(e, k, depth + 1) || encode(e, v, depth + 1)) return -1;
    e->path[n] = '\0';
    lua_pop(L, 1);
  }
  if (put_tag(e, TAG_END)) return -1;
  if (lua_getmetatable(L, idx)) {
    size_t n = strlen(e->path);
    snprintf(e->path + n, sizeof e->path - n, "%s", "<metatable>");
    if (encode(e, lua_gettop(L), depth + 1)) return -1;
    e->path[n] = '\0';
    lua_pop(L, 1);
    return 0;
  }
  return put_tag(e, TAG_NIL);
}

static int encode_function(encoder *e, int idx, int depth) {
  lua_State *L = e->L;
  if (lua_iscfunction(L, idx)) {
    if (lua_getupvalue(L, idx, 1)) {
      lua_pop(L, 1);
      return fail(e, "a C function with upvalues (not from a module) cannot be sent to a loader worker");
    }
    lua_CFunction f = lua_tocfunction(L, idx);
    return put_tag(e, TAG_CFUNC) || put(e, &f, sizeof f);
  }
  if (put_tag(e, TAG_FUNC)) return -1;
  int64_t lenpos = (int64_t)e->m->len;
  if (put_i64(e, 0)) return -1;
  lua_pushvalue(L, idx);
  int st = lua_dump(L, dump_writer, e, 0);
  lua_pop(L, 1);
  if (st) return e->err[0] ? -1 : fail(e, "cannot dump this function");
  int64_t n = (int64_t)e->m->len - lenpos - (int64_t)sizeof(int64_t);
  memcpy(e->m->buf + lenpos, &n, sizeof n);
  int nup = 0;
  while (lua_getupvalue(L, idx, nup + 1)) { lua_pop(L, 1); nup++; }
  if (put_i64(e, nup)) return -1;
  for (int i = 1; i <= nup; i++) {
    const char *name = lua_getupvalue(L, idx, i);
    size_t pl = strlen(e->path);
    snprintf(e->path + pl, sizeof e->path - pl, "<upvalue %s>", name && *name ? name : "?");
    if (encode(e, lua_gettop(L), depth + 1)) return -1;
    e->path[pl] = '\0';
    lua_pop(L, 1);
  }
  return 0;
}

static int encode(encoder *e, int idx, int depth) {
  lua_State *L = e->L;
  idx = lua_absindex(L, idx);
  if (depth > MAX_DEPTH) return fail(e, "nested too deeply (more than 200 levels)");
  if (!lua_checkstack(L, 8)) return fail(e, "Lua stack overflow");
  int t = lua_type(L, idx);
  switch (t) {
  case LUA_TNIL: return put_tag(e, TAG_NIL);
  case LUA_TBOOLEAN: return put_tag(e, lua_toboolean(L, idx) ? TAG_TRUE : TAG_FALSE);
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) return put_tag(e, TAG_INT) || put_i64(e, (int64_t)lua_tointeger(L, idx));
    else {
      double d = lua_tonumber(L, idx);
      return put_tag(e, TAG_FLT) || put(e, &d, sizeof d);
    }
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    return put_tag(e, TAG_STR) || put_bytes(e, s, n);
  }
  case LUA_TUSERDATA: {
    vtl_tensor *tt = lvtl_totensor(L, idx);
    if (tt) return add_tensor(e, tt);
    lvtl_gen *g = luaL_testudata(L, idx, LVTL_GENERATOR_MT);
    if (g) return put_tag(e, TAG_GEN) || put_i64(e, (int64_t)g->seed) || put_i64(e, (int64_t)g->offset);
    if (lua_touserdata(L, idx) && luaL_testudata(L, idx, LVTL_TENSOR_MT)) return fail(e, "the tensor has been freed");
    break;
  }
  case LUA_TTABLE:
  case LUA_TFUNCTION: {
    /* by name when it belongs to a loaded module */
    lua_pushvalue(L, idx);
    if (lua_rawget(L, e->names) == LUA_TSTRING) {
      size_t n;
      const char *s = lua_tolstring(L, -1, &n);
      int r = put_tag(e, TAG_NAMED) || put_bytes(e, s, n);
      lua_pop(L, 1);
      return r;
    }
    lua_pop(L, 1);
    /* a value already sent in this message */
    lua_pushvalue(L, idx);
    if (lua_rawget(L, e->seen) == LUA_TNUMBER) {
      int64_t id = (int64_t)lua_tointeger(L, -1);
      lua_pop(L, 1);
      return put_tag(e, TAG_REF) || put_i64(e, id);
    }
    lua_pop(L, 1);
    lua_pushvalue(L, idx);
    lua_pushinteger(L, e->nextid++);
    lua_rawset(L, e->seen);
    return t == LUA_TTABLE ? encode_table(e, idx, depth) : encode_function(e, idx, depth);
  }
  default: break;
  }
  char what[96];
  const char *name = NULL;
  if (luaL_getmetafield(L, idx, "__name") == LUA_TSTRING) name = lua_tostring(L, -1);
  snprintf(what, sizeof what, "a %s cannot be sent to a loader worker", name ? name : luaL_typename(L, idx));
  if (name) lua_pop(L, 1);
  return fail(e, what);
}

/* names[v] = "mod" for every loaded module and "mod\0field" for its table and function
   fields; the first name found wins, modules before fields. */
static void build_names(lua_State *L) {
  lua_newtable(L);
  int names = lua_gettop(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  int loaded = lua_gettop(L);
  for (int pass = 0; pass < 2; pass++) {
    lua_pushnil(L);
    while (lua_next(L, loaded)) {
      if (lua_type(L, -2) == LUA_TSTRING && (lua_istable(L, -1) || lua_isfunction(L, -1))) {
        if (pass == 0) {
          lua_pushvalue(L, -1);
          if (lua_rawget(L, names) == LUA_TNIL) {
            lua_pushvalue(L, -2);
            lua_pushvalue(L, -4);
            lua_rawset(L, names);
          }
          lua_pop(L, 1);
        } else if (lua_istable(L, -1)) {
          int mod = lua_gettop(L);
          /* of the globals, only the built-in C functions: user globals are copied */
          int globals = strcmp(lua_tostring(L, mod - 1), LUA_GNAME) == 0;
          lua_pushnil(L);
          while (lua_next(L, mod)) {
            if (lua_type(L, -2) == LUA_TSTRING && (globals ? lua_iscfunction(L, -1) : (lua_istable(L, -1) || lua_isfunction(L, -1)))) {
              lua_pushvalue(L, -1);
              if (lua_rawget(L, names) == LUA_TNIL) {
                lua_pushvalue(L, -2);
                lua_pushvalue(L, mod - 1);
                lua_pushlstring(L, "", 1);
                lua_pushvalue(L, -6);
                lua_concat(L, 3);
                lua_rawset(L, names);
              }
              lua_pop(L, 1);
            }
            lua_pop(L, 1);
          }
        }
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
}

int lvtl_ship_encode(lua_State *L, int idx, lvtl_msg *m, char *err, size_t errn) {
  idx = lua_absindex(L, idx);
  memset(m, 0, sizeof *m);
  encoder e = {.L = L, .m = m, .nextid = 1};
  int top = lua_gettop(L);
  build_names(L);
  e.names = lua_gettop(L);
  lua_newtable(L);
  e.seen = lua_gettop(L);
  int r = encode(&e, idx, 0);
  lua_settop(L, top);
  if (r) {
    snprintf(err, errn, "%s", e.err);
    lvtl_msg_free(m);
  }
  return r;
}

/* ---- decoding ---- */

typedef struct {
  lua_State *L;
  const lvtl_msg *m;
  size_t pos;
  int ids; /* stack index: id -> value */
  int nextid;
} decoder;

static int get(decoder *d, void *p, size_t n) {
  if (d->pos + n > d->m->len) return -1;
  memcpy(p, d->m->buf + d->pos, n);
  d->pos += n;
  return 0;
}

/* Pushes the next value; raises a Lua error on a damaged message. */
static void decode(decoder *d) {
  lua_State *L = d->L;
  luaL_checkstack(L, 8, "loader message nested too deeply");
  char tag = 0;
  int64_t v;
  if (get(d, &tag, 1)) luaL_error(L, "loader message: truncated");
  switch (tag) {
  case TAG_NIL: lua_pushnil(L); return;
  case TAG_FALSE: lua_pushboolean(L, 0); return;
  case TAG_TRUE: lua_pushboolean(L, 1); return;
  case TAG_INT:
    if (get(d, &v, sizeof v)) break;
    lua_pushinteger(L, (lua_Integer)v);
    return;
  case TAG_FLT: {
    double x;
    if (get(d, &x, sizeof x)) break;
    lua_pushnumber(L, x);
    return;
  }
  case TAG_STR:
    if (get(d, &v, sizeof v) || v < 0 || d->pos + (size_t)v > d->m->len) break;
    lua_pushlstring(L, d->m->buf + d->pos, (size_t)v);
    d->pos += (size_t)v;
    return;
  case TAG_TENSOR: {
    if (get(d, &v, sizeof v) || v < 0 || v >= d->m->ntensors) break;
    lvtl_box *b = lvtl_newbox(L);
    lvtl_fillbox(L, b, vtl_tensor_retain(d->m->tensors[v]));
    return;
  }
  case TAG_GEN: {
    int64_t off;
    if (get(d, &v, sizeof v) || get(d, &off, sizeof off)) break;
    lvtl_gen *g = lua_newuserdatauv(L, sizeof *g, 0);
    g->seed = (uint64_t)v;
    g->offset = (uint64_t)off;
    luaL_setmetatable(L, LVTL_GENERATOR_MT);
    return;
  }
  case TAG_REF:
    if (get(d, &v, sizeof v)) break;
    if (lua_rawgeti(L, d->ids, (lua_Integer)v) == LUA_TNIL) luaL_error(L, "loader message: bad reference");
    return;
  case TAG_NAMED: {
    if (get(d, &v, sizeof v) || v < 0 || d->pos + (size_t)v > d->m->len) break;
    const char *s = d->m->buf + d->pos;
    size_t n = (size_t)v, modlen = strnlen(s, n);
    d->pos += n;
    lua_getglobal(L, "require");
    lua_pushlstring(L, s, modlen);
    lua_call(L, 1, 1);
    if (modlen < n) {
      lua_pushlstring(L, s + modlen + 1, n - modlen - 1);
      lua_gettable(L, -2);
      lua_remove(L, -2);
    }
    return;
  }
  case TAG_CFUNC: {
    lua_CFunction f;
    if (get(d, &f, sizeof f)) break;
    lua_pushcfunction(L, f);
    lua_pushvalue(L, -1);
    lua_rawseti(L, d->ids, d->nextid++); /* numbered like every copied function */
    return;
  }
  case TAG_TABLE: {
    lua_newtable(L);
    int t = lua_gettop(L);
    lua_pushvalue(L, t);
    lua_rawseti(L, d->ids, d->nextid++);
    for (;;) {
      if (d->pos >= d->m->len) luaL_error(L, "loader message: truncated");
      if (d->m->buf[d->pos] == TAG_END) { d->pos++; break; }
      decode(d);
      decode(d);
      if (lua_isnil(L, -2)) lua_pop(L, 2);
      else lua_rawset(L, t);
    }
    decode(d);
    if (lua_istable(L, -1)) lua_setmetatable(L, t);
    else lua_pop(L, 1);
    return;
  }
  case TAG_FUNC: {
    if (get(d, &v, sizeof v) || v < 0 || d->pos + (size_t)v > d->m->len) break;
    if (luaL_loadbufferx(L, d->m->buf + d->pos, (size_t)v, "=(loader worker)", "b") != LUA_OK) lua_error(L);
    d->pos += (size_t)v;
    int f = lua_gettop(L);
    lua_pushvalue(L, f);
    lua_rawseti(L, d->ids, d->nextid++);
    int64_t nup;
    if (get(d, &nup, sizeof nup)) break;
    for (int64_t i = 1; i <= nup; i++) {
      decode(d);
      if (!lua_setupvalue(L, f, (int)i)) lua_pop(L, 1);
    }
    return;
  }
  default: break;
  }
  luaL_error(L, "loader message: damaged (tag %d at byte %d)", (int)tag, (int)d->pos);
}

static int decode_main(lua_State *L) {
  decoder *d = lua_touserdata(L, 1);
  lua_settop(L, 0);
  lua_newtable(L);
  d->L = L;
  d->ids = 1;
  decode(d);
  return 1;
}

int lvtl_ship_decode(lua_State *L, const lvtl_msg *m) {
  decoder d = {.L = L, .m = m, .nextid = 1};
  lua_pushcfunction(L, decode_main);
  lua_pushlightuserdata(L, &d);
  return lua_pcall(L, 1, 1, 0);
}

/* vtl.core.ship_copy(v): v sent through a message and decoded in the same state (a deep copy
   that shares tensors and module values) — for tests and for checking early that a dataset
   can be sent to loader workers. */
static int l_ship_copy(lua_State *L) {
  luaL_checkany(L, 1);
  lvtl_msg m;
  char err[400];
  if (lvtl_ship_encode(L, 1, &m, err, sizeof err)) return luaL_error(L, "%s", err);
  int st = lvtl_ship_decode(L, &m);
  lvtl_msg_free(&m);
  if (st != LUA_OK) return lua_error(L);
  return 1;
}

static const luaL_Reg ship_funcs[] = {{"ship_copy", l_ship_copy}, {NULL, NULL}};

void lvtl_open_ship(lua_State *L) { luaL_setfuncs(L, ship_funcs, 0); }
