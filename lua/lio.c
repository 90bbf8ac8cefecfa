/*
 * vtl.save / vtl.load: safetensors and .npy files from Lua.
 *
 *   vtl.save("model.safetensors", {["fc.weight"] = w, ["fc.bias"] = b}, {epoch = 3})
 *   vtl.save("x.npy", x)
 *   local tensors, metadata = vtl.load("model.safetensors")
 *   local x = vtl.load("x.npy")
 *   local images = vtl.io.load_idx("train-images-idx3-ubyte.gz")   -- u8 60000×28×28
 *
 * Every argument is checked before anything is written. Loading goes through a userdata that
 * owns the C results until each tensor is boxed, so an error midway leaks nothing.
 */
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include "lvtl.h"
#include "io.h"
#include "io_pth.h"

#define LVTL_LOADSTATE_MT "vtl.LoadState"

static int loadstate_gc(lua_State *L) {
  vtl_tensor_dict *d = luaL_checkudata(L, 1, LVTL_LOADSTATE_MT);
  vtl_tensor_dict_free(d);
  return 0;
}

/* Raises the core's message as it is: io messages already begin with "load:" or "save:". */
static int io_error(lua_State *L) { return luaL_error(L, "%s", vtl_error_message()); }

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* A key of a user table, as text for an error message. */
static const char *key_text(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TSTRING) return lua_tostring(L, idx);
  if (lua_type(L, idx) == LUA_TNUMBER) {
    lua_pushvalue(L, idx);
    const char *s = lua_tostring(L, -1); /* converts the copy, not the key */
    return s;
  }
  return luaL_typename(L, idx);
}

/* Counts the entries of the tensors table at idx and checks names and values. */
static int check_tensors(lua_State *L, int idx, const char *path) {
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING)
      return luaL_error(L, "save: %s: tensor names must be strings, got key %s (a %s)", path, key_text(L, -2),
                        luaL_typename(L, -2));
    lvtl_box *b = luaL_testudata(L, -1, LVTL_TENSOR_MT);
    if (!b)
      return luaL_error(L, "save: %s: tensors['%s'] is not a tensor (got %s)", path, lua_tostring(L, -2),
                        luaL_typename(L, -1));
    if (!b->t) return luaL_error(L, "save: %s: tensors['%s'] has been freed (closed or collected)", path, lua_tostring(L, -2));
    if (n == INT_MAX) return luaL_error(L, "save: %s: too many tensors", path);
    n++;
    lua_pop(L, 1);
  }
  return n;
}

/* Counts the metadata table at idx; values must be strings or numbers. */
static int check_metadata(lua_State *L, int idx, const char *path) {
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING)
      return luaL_error(L, "save: %s: metadata keys must be strings, got key %s (a %s)", path, key_text(L, -2),
                        luaL_typename(L, -2));
    int t = lua_type(L, -1);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
      return luaL_error(L, "save: %s: metadata['%s'] must be a string or a number, got %s", path, lua_tostring(L, -2),
                        luaL_typename(L, -1));
    if (n == INT_MAX) return luaL_error(L, "save: %s: too many metadata entries", path);
    n++;
    lua_pop(L, 1);
  }
  return n;
}

/* vtl.save(path, tensors [, metadata]): writes atomically; an existing file is replaced only
   once the new one is complete.
   ---Writes named tensors to safetensors, or one tensor to .npy.
   ---@param path string  a .safetensors path (table of tensors) or a .npy path (one tensor)
   ---@param tensors table<string, vtl.Tensor>|vtl.Tensor
   ---@param metadata? table<string, string|number>  safetensors only */
static int io_save(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  if (luaL_testudata(L, 2, LVTL_TENSOR_MT)) {
    vtl_tensor *t = lvtl_checktensor(L, 2);
    if (!lua_isnoneornil(L, 3))
      return luaL_error(L, "save: %s: metadata is only written to safetensors files (a table of name -> tensor); "
                        ".npy holds one array", path);
    if (!ends_with(path, ".npy"))
      return luaL_error(L, "save: %s: a single tensor is saved as .npy, so the path must end in .npy; to write "
                        "safetensors pass a table of name -> tensor", path);
    if (vtl_npy_save(path, t) != VTL_OK) return io_error(L);
    return 0;
  }
  luaL_argexpected(L, lua_type(L, 2) == LUA_TTABLE, 2, "table of name -> tensor, or a tensor");
  if (ends_with(path, ".npy"))
    return luaL_error(L, "save: %s: an .npy file holds one tensor; pass a tensor, or use a .safetensors path for a "
                      "table of tensors", path);
  if (!lua_isnoneornil(L, 3)) luaL_argexpected(L, lua_type(L, 3) == LUA_TTABLE, 3, "table of metadata strings");
  /* vtl.save(path, model:state_dict()) passes state_dict's second result, the list of key names
     in order; safetensors stores names sorted, so that list carries nothing to write */
  if (lua_istable(L, 3) && luaL_len(L, 3) > 0) {
    lua_Integer len = luaL_len(L, 3), count = 0;
    int names_only = 1;
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      count++;
      names_only &= lua_type(L, -2) == LUA_TNUMBER && lua_type(L, -1) == LUA_TSTRING;
      lua_pop(L, 1);
    }
    if (names_only && count == len) { lua_pushnil(L); lua_replace(L, 3); }
  }
  lua_settop(L, 3);
  int n = check_tensors(L, 2, path);
  int nmeta = lua_isnil(L, 3) ? 0 : check_metadata(L, 3, path);

  /* scratch arrays live in userdata (collected on error); number values are converted to
     strings kept alive in the table at index 7 */
  const char **names = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *names, 0);         /* 4 */
  vtl_tensor **tensors = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *tensors, 0);     /* 5 */
  const char **kv = lua_newuserdatauv(L, (size_t)(nmeta ? 2 * nmeta : 1) * sizeof *kv, 0);   /* 6 */
  lua_createtable(L, nmeta, 0);                                                               /* 7 */
  int i = 0;
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    names[i] = lua_tostring(L, -2);
    tensors[i] = lvtl_totensor(L, -1);
    i++;
    lua_pop(L, 1);
  }
  const char **keys = kv, **vals = kv + nmeta;
  i = 0;
  if (nmeta) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      keys[i] = lua_tostring(L, -2);
      if (lua_type(L, -1) == LUA_TSTRING) vals[i] = lua_tostring(L, -1);
      else {
        vals[i] = luaL_tolstring(L, -1, NULL); /* as tostring(): 3, 0.5, 1e+100 */
        lua_rawseti(L, 7, i + 1);
      }
      i++;
      lua_pop(L, 1);
    }
  }
  if (vtl_safetensors_save(path, n, names, tensors, nmeta, keys, vals) != VTL_OK) return io_error(L);
  return 0;
}

/* vtl.load(path): the format is told by the file's first bytes (zip or legacy PyTorch, the .npy
   magic, else safetensors), not its name.
   ---Reads a safetensors, .npy or PyTorch (torch.save) file.
   ---@param path string
   ---@return table<string, vtl.Tensor>|vtl.Tensor|any value  a table for safetensors, a tensor for .npy, what was saved for .pth
   ---@return table? extra  safetensors: the metadata (empty when none); .pth: each dict's key order */
static int io_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int npy = vtl_npy_sniff(path);
  if (npy < 0) return io_error(L);
  if (npy || ends_with(path, ".npy")) { /* a .npy name without the magic gets the .npy reader's error */
    vtl_tensor *t = vtl_npy_load(path);
    if (!t) return io_error(L);
    lvtl_pushtensor(L, t);
    return 1;
  }
  int pth = vtl_pth_sniff(path); /* a zip archive (torch.save) or PyTorch's legacy format */
  if (pth < 0) return io_error(L);
  if (pth) return lvtl_load_pth(L, path);
  vtl_tensor_dict *d = lua_newuserdatauv(L, sizeof *d, 0);
  memset(d, 0, sizeof *d);
  luaL_setmetatable(L, LVTL_LOADSTATE_MT);
  if (vtl_safetensors_load(path, d) != VTL_OK) return io_error(L);
  lua_createtable(L, 0, d->n);
  for (int i = 0; i < d->n; i++) {
    lvtl_pushtensor(L, d->tensors[i]);
    d->tensors[i] = NULL; /* owned by the box now */
    lua_setfield(L, -2, d->names[i]);
  }
  lua_createtable(L, 0, d->nmeta);
  for (int i = 0; i < d->nmeta; i++) {
    lua_pushstring(L, d->meta_vals[i]);
    lua_setfield(L, -2, d->meta_keys[i]);
  }
  vtl_tensor_dict_free(d);
  return 2;
}

/* vtl.io.load_idx(path)
   ---Reads an IDX file (the MNIST format; gzip-compressed when it starts with the gzip magic).
   ---Element types load as: unsigned byte -> u8, signed byte/short/int -> i32, float -> f32,
   ---double -> f64.
   ---@param path string
   ---@return vtl.Tensor */
static int io_load_idx(lua_State *L) {
  if (lua_type(L, 1) != LUA_TSTRING)
    return luaL_error(L, "load_idx: path (argument 1) must be a string, got %s", luaL_typename(L, 1));
  const char *path = lua_tostring(L, 1);
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_idx_load(path));
}

static const luaL_Reg io_funcs[] = {{"save", io_save}, {"load", io_load}, {NULL, NULL}};
static const luaL_Reg io_table_funcs[] = {{"load_idx", io_load_idx}, {NULL, NULL}};

void lvtl_open_io(lua_State *L) {
  if (luaL_newmetatable(L, LVTL_LOADSTATE_MT)) {
    lua_pushcfunction(L, loadstate_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, loadstate_gc);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  lvtl_setfuncs(L, io_funcs);
  lua_newtable(L);
  luaL_setfuncs(L, io_table_funcs, 0);
  lua_setfield(L, -2, "io");
}
