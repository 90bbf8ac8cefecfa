/*
 * vtl.image: image files and the pixel ops behind vtl.transforms.
 *
 *   local img = vtl.image.load("cat.jpg", {channels = 3})   -- u8 H×W×C
 *   vtl.image.save("out.png", img)                         -- or f32 C×H×W in [0, 1]
 *   local x = vtl.image.to_tensor(vtl.image.resize(img, 224, 224))
 *
 * Positions are 1-based (crop's top and left). The pixel limit for decoding lives in this Lua
 * state's registry (vtl.image.set_limits), not in process-wide state.
 */
#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <lua.h>
#include <lauxlib.h>
#include "lvtl.h"
#include "image.h"

#define LIMITS_KEY "vtl.image.max_pixels"

static int64_t max_pixels(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, LIMITS_KEY);
  int64_t v = lua_isinteger(L, -1) ? (int64_t)lua_tointeger(L, -1) : VTL_IMAGE_MAX_PIXELS_DEFAULT;
  lua_pop(L, 1);
  return v;
}

/* Integer field `name` of the options table at index o (0: none), or def. */
static lua_Integer opt_int_field(lua_State *L, int o, const char *name, lua_Integer def, const char *fn) {
  if (!o) return def;
  lua_Integer v = def;
  if (lua_getfield(L, o, name) != LUA_TNIL) {
    int isnum;
    v = lua_tointegerx(L, -1, &isnum);
    if (!isnum) luaL_error(L, "%s: option '%s' must be an integer, got %s", fn, name, luaL_typename(L, -1));
  }
  lua_pop(L, 1);
  return v;
}

static int opts_arg(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return 0;
  luaL_checktype(L, idx, LUA_TTABLE);
  return idx;
}

/* Raises the core's message as it is (image messages name the op and the file). */
static int image_error(lua_State *L) { return luaL_error(L, "%s", vtl_error_message()); }

/* image.load(path [, {channels = 0..4}]) -> u8 H×W×C */
static int image_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int o = opts_arg(L, 2);
  lua_Integer ch = opt_int_field(L, o, "channels", 0, "image.load");
  if (ch < 0 || ch > 4) return luaL_error(L, "image.load: option 'channels' must be 1..4 (or 0: as in the file), got %d", (int)ch);
  lvtl_box *b = lvtl_newbox(L);
  vtl_tensor *t = vtl_image_load(path, (int)ch, max_pixels(L));
  if (!t) return image_error(L);
  return lvtl_fillbox(L, b, t);
}

/* image.save(path, img [, {quality = 95}]) */
static int image_save(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  vtl_tensor *t = lvtl_checktensor(L, 2);
  int o = opts_arg(L, 3);
  lua_Integer q = opt_int_field(L, o, "quality", 95, "image.save");
  if (q < 1 || q > 100) return luaL_error(L, "image.save: option 'quality' must be in 1..100, got %d", (int)q);
  if (vtl_image_save(path, t, (int)q) != VTL_OK) return image_error(L);
  return 0;
}

/* image.info(path) -> width, height, channels (from the header only) */
static int image_info(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int w, h, c;
  if (vtl_image_info(path, &w, &h, &c) != VTL_OK) return image_error(L);
  lua_pushinteger(L, w);
  lua_pushinteger(L, h);
  lua_pushinteger(L, c);
  return 3;
}

/* image.set_limits{max_pixels = n}; returns the previous limits */
static int image_set_limits(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer mp = opt_int_field(L, 1, "max_pixels", max_pixels(L), "image.set_limits");
  luaL_argcheck(L, mp >= 1, 1, "max_pixels must be at least 1");
  lua_createtable(L, 0, 1);
  lua_pushinteger(L, (lua_Integer)max_pixels(L));
  lua_setfield(L, -2, "max_pixels");
  lua_pushinteger(L, mp);
  lua_setfield(L, LUA_REGISTRYINDEX, LIMITS_KEY);
  return 1;
}

static int image_get_limits(lua_State *L) {
  lua_createtable(L, 0, 1);
  lua_pushinteger(L, (lua_Integer)max_pixels(L));
  lua_setfield(L, -2, "max_pixels");
  return 1;
}

static vtl_interp interp_arg(lua_State *L, int o, const char *fn) {
  if (!o || lua_getfield(L, o, "interpolation") == LUA_TNIL) {
    if (o) lua_pop(L, 1);
    return VTL_INTERP_BILINEAR;
  }
  const char *s = lua_tostring(L, -1);
  vtl_interp m;
  if (s && strcmp(s, "nearest") == 0) m = VTL_INTERP_NEAREST;
  else if (s && strcmp(s, "bilinear") == 0) m = VTL_INTERP_BILINEAR;
  else if (s && strcmp(s, "bicubic") == 0) m = VTL_INTERP_BICUBIC;
  else return luaL_error(L, "%s: option 'interpolation' must be \"nearest\", \"bilinear\" or \"bicubic\", got %s", fn,
                         s ? s : luaL_typename(L, -1));
  lua_pop(L, 1);
  return m;
}

static bool bool_field(lua_State *L, int o, const char *name, bool def) {
  if (!o) return def;
  bool v = def;
  if (lua_getfield(L, o, name) != LUA_TNIL) v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

/* image.resize(img, h, w [, {interpolation = "bilinear", antialias = true}]) */
static int image_resize(lua_State *L) {
  vtl_tensor *t = lvtl_checktensor(L, 1);
  lua_Integer h = luaL_checkinteger(L, 2), w = luaL_checkinteger(L, 3);
  int o = opts_arg(L, 4);
  luaL_argcheck(L, h >= 1, 2, "height must be at least 1");
  luaL_argcheck(L, w >= 1, 3, "width must be at least 1");
  vtl_interp m = interp_arg(L, o, "resize");
  bool aa = bool_field(L, o, "antialias", true);
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_resize(t, h, w, m, aa));
}

/* image.crop(img, top, left, h, w [, {fill = 0}]): rows top..top+h-1, columns left..left+w-1
   (1-based); outside the image: fill */
static int image_crop(lua_State *L) {
  vtl_tensor *t = lvtl_checktensor(L, 1);
  lua_Integer top = luaL_checkinteger(L, 2), left = luaL_checkinteger(L, 3);
  lua_Integer h = luaL_checkinteger(L, 4), w = luaL_checkinteger(L, 5);
  int o = opts_arg(L, 6);
  luaL_argcheck(L, h >= 0, 4, "height must be non-negative");
  luaL_argcheck(L, w >= 0, 5, "width must be non-negative");
  double fill = 0;
  if (o) {
    if (lua_getfield(L, o, "fill") != LUA_TNIL) {
      if (!lua_isnumber(L, -1)) return luaL_error(L, "crop: option 'fill' must be a number, got %s", luaL_typename(L, -1));
      fill = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
  }
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_crop(t, top - 1, left - 1, h, w, fill));
}

static int image_hflip(lua_State *L) {
  vtl_tensor *t = lvtl_checktensor(L, 1);
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_flip(t, true));
}

static int image_vflip(lua_State *L) {
  vtl_tensor *t = lvtl_checktensor(L, 1);
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_flip(t, false));
}

static int image_to_tensor(lua_State *L) {
  vtl_tensor *t = lvtl_checktensor(L, 1);
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_to_tensor(t));
}

static int image_to_u8(lua_State *L) {
  vtl_tensor *t = lvtl_checktensor(L, 1);
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_to_u8(t));
}

/* a number or a list of 1..64 numbers at idx into out; returns the count */
static int numbers_arg(lua_State *L, int idx, double *out, const char *what) {
  if (lua_type(L, idx) == LUA_TNUMBER) {
    out[0] = lua_tonumber(L, idx);
    return 1;
  }
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_Integer n = luaL_len(L, idx);
  if (n < 1 || n > 64) return luaL_error(L, "normalize: %s must have 1 to 64 entries, got %d", what, (int)n);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, idx, i);
    if (!lua_isnumber(L, -1)) return luaL_error(L, "normalize: %s[%d] must be a number, got %s", what, (int)i, luaL_typename(L, -1));
    out[i - 1] = lua_tonumber(L, -1);
    lua_pop(L, 1);
  }
  return (int)n;
}

/* image.normalize(x, mean, std): (x - mean[c]) / std[c] for an f32 C×H×W tensor */
static int image_normalize(lua_State *L) {
  vtl_tensor *t = lvtl_checktensor(L, 1);
  double mean[64], sd[64];
  int nm = numbers_arg(L, 2, mean, "mean"), ns = numbers_arg(L, 3, sd, "std");
  if (nm != ns) return luaL_error(L, "normalize: mean has %d entries but std has %d", nm, ns);
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_normalize(t, mean, sd, nm));
}

/* image.listdir(path) -> {{name = "a.jpg", dir = false}, ...} in directory order, without "."
   and ".."; symbolic links are followed. For datasets that walk folders. */
static int image_listdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  DIR *d = opendir(path);
  if (!d) return luaL_error(L, "listdir: %s: %s", path, strerror(errno));
  lua_newtable(L);
  int n = 0;
  struct dirent *e;
  luaL_Buffer b;
  while ((e = readdir(d))) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, path);
    luaL_addchar(&b, '/');
    luaL_addstring(&b, e->d_name);
    luaL_pushresult(&b);
    struct stat sb;
    int isdir = stat(lua_tostring(L, -1), &sb) == 0 && S_ISDIR(sb.st_mode);
    lua_pop(L, 1);
    lua_createtable(L, 0, 2);
    lua_pushstring(L, e->d_name);
    lua_setfield(L, -2, "name");
    lua_pushboolean(L, isdir);
    lua_setfield(L, -2, "dir");
    lua_rawseti(L, -2, ++n);
  }
  closedir(d);
  return 1;
}

static const luaL_Reg image_funcs[] = {
  {"load", image_load}, {"save", image_save}, {"info", image_info}, {"set_limits", image_set_limits},
  {"get_limits", image_get_limits}, {"resize", image_resize}, {"crop", image_crop}, {"hflip", image_hflip},
  {"vflip", image_vflip}, {"to_tensor", image_to_tensor}, {"to_u8", image_to_u8}, {"normalize", image_normalize},
  {"listdir", image_listdir},
  {NULL, NULL}};

/* Adds the `image` table to the module table on top of the stack. */
void lvtl_open_image(lua_State *L) {
  lua_newtable(L);
  luaL_setfuncs(L, image_funcs, 0);
  lua_setfield(L, -2, "image");
}
