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
#include <math.h>
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


static int image_to_u8(lua_State *L) {
  vtl_tensor *t = lvtl_checktensor(L, 1);
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_to_u8(t));
}

/* a number or a list of 1..64 numbers at idx into out; returns the count */
static int numbers_arg(lua_State *L, int idx, double *out, const char *op, const char *what) {
  if (lua_type(L, idx) == LUA_TNUMBER) {
    out[0] = lua_tonumber(L, idx);
    return 1;
  }
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_Integer n = luaL_len(L, idx);
  if (n < 1 || n > 64) return luaL_error(L, "%s: %s must have 1 to 64 entries, got %d", op, what, (int)n);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, idx, i);
    if (!lua_isnumber(L, -1)) return luaL_error(L, "%s: %s[%d] must be a number, got %s", op, what, (int)i, luaL_typename(L, -1));
    out[i - 1] = lua_tonumber(L, -1);
    lua_pop(L, 1);
  }
  return (int)n;
}

/* image.to_tensor(img [, mean, std]): u8 H×W×C -> f32 C×H×W / 255, then (x - mean[c]) / std[c]
   when mean and std are given (equal to image.normalize of the result, in one pass) */
static int image_to_tensor(lua_State *L) {
  vtl_tensor *t = lvtl_checktensor(L, 1);
  double mean[64], sd[64];
  int nm = 0;
  if (!lua_isnoneornil(L, 2) || !lua_isnoneornil(L, 3)) {
    nm = numbers_arg(L, 2, mean, "to_tensor", "mean");
    int ns = numbers_arg(L, 3, sd, "to_tensor", "std");
    if (nm != ns) return luaL_error(L, "to_tensor: mean has %d entries but std has %d", nm, ns);
  }
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_to_tensor_normalize(t, nm ? mean : NULL, nm ? sd : NULL, nm));
}

/* image.normalize(x, mean, std): (x - mean[c]) / std[c] for an f32 C×H×W tensor */
static int image_normalize(lua_State *L) {
  vtl_tensor *t = lvtl_checktensor(L, 1);
  double mean[64], sd[64];
  int nm = numbers_arg(L, 2, mean, "normalize", "mean"), ns = numbers_arg(L, 3, sd, "normalize", "std");
  if (nm != ns) return luaL_error(L, "normalize: mean has %d entries but std has %d", nm, ns);
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_normalize(t, mean, sd, nm));
}

/* ---- colour and geometry ops ---- */

/* a number or a list of 1..64 numbers at idx into out (fn and what name it in errors); the count */
static int number_list(lua_State *L, int idx, double *out, const char *fn, const char *what) {
  if (lua_type(L, idx) == LUA_TNUMBER) {
    out[0] = lua_tonumber(L, idx);
    return 1;
  }
  if (!lua_istable(L, idx))
    return luaL_error(L, "%s: %s must be a number or a list of numbers, got %s", fn, what, luaL_typename(L, idx));
  lua_Integer n = luaL_len(L, idx);
  if (n < 1 || n > 64) return luaL_error(L, "%s: %s must have 1 to 64 entries, got %d", fn, what, (int)n);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, idx, i);
    if (!lua_isnumber(L, -1))
      return luaL_error(L, "%s: %s[%d] must be a number, got %s", fn, what, (int)i, luaL_typename(L, -1));
    out[i - 1] = lua_tonumber(L, -1);
    lua_pop(L, 1);
  }
  return (int)n;
}

/* an integer, or an integer-valued float, at idx (what names it) */
static lua_Integer int_arg(lua_State *L, int idx, const char *fn, const char *what) {
  int isnum;
  lua_Integer v = lua_tointegerx(L, idx, &isnum);
  if (!isnum) luaL_error(L, "%s: %s must be an integer, got %s", fn, what,
                         lua_type(L, idx) == LUA_TNUMBER ? "a fraction" : luaL_typename(L, idx));
  return v;
}

static double num_arg(lua_State *L, int idx, const char *fn, const char *what) {
  if (lua_type(L, idx) != LUA_TNUMBER) luaL_error(L, "%s: %s must be a number, got %s", fn, what, luaL_typename(L, idx));
  return lua_tonumber(L, idx);
}

/* image.pad(img, padding [, {mode = "constant"|"edge"|"reflect"|"symmetric", fill = 0}]):
   padding is n (all sides), {left_right, top_bottom} or {left, top, right, bottom} as torchvision */
static int image_pad(lua_State *L) {
  const char *fn = "pad";
  vtl_tensor *t = lvtl_checktensor(L, 1);
  lua_Integer p[4] = {0, 0, 0, 0}; /* left, top, right, bottom */
  if (lua_type(L, 2) == LUA_TNUMBER) {
    p[0] = p[1] = p[2] = p[3] = int_arg(L, 2, fn, "padding");
  } else if (lua_istable(L, 2)) {
    lua_Integer n = luaL_len(L, 2);
    if (n != 1 && n != 2 && n != 4) return luaL_error(L, "pad: padding must have 1, 2 or 4 entries, got %d", (int)n);
    lua_Integer v[4];
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, 2, i);
      v[i - 1] = int_arg(L, -1, fn, "padding entries");
      lua_pop(L, 1);
    }
    if (n == 1) p[0] = p[1] = p[2] = p[3] = v[0];
    else if (n == 2) { p[0] = p[2] = v[0]; p[1] = p[3] = v[1]; }
    else for (int i = 0; i < 4; i++) p[i] = v[i];
  } else {
    return luaL_error(L, "pad: padding must be an integer or a list of 1, 2 or 4 integers, got %s", luaL_typename(L, 2));
  }
  int o = opts_arg(L, 3);
  vtl_pad_mode mode = VTL_PAD_CONSTANT;
  double fill = 0;
  if (o) {
    if (lua_getfield(L, o, "mode") != LUA_TNIL) {
      static const char *const modes[] = {"constant", "edge", "reflect", "symmetric", NULL};
      const char *m = lua_tostring(L, -1);
      int i = 0;
      while (m && modes[i] && strcmp(modes[i], m) != 0) i++;
      if (!m || !modes[i])
        return luaL_error(L, "pad: option 'mode' must be \"constant\", \"edge\", \"reflect\" or \"symmetric\", got %s",
                          m ? m : luaL_typename(L, -1));
      mode = (vtl_pad_mode)i;
    }
    if (lua_getfield(L, o, "fill") != LUA_TNIL) fill = num_arg(L, -1, fn, "option 'fill'");
    lua_pop(L, 2);
  }
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_pad(t, p[1], p[0], p[3], p[2], mode, fill));
}

/* image.warp(img, matrix [, {size = {h, w}, interpolation = "nearest"|"bilinear", fill = n|{...}}]):
   matrix is torchvision's inverse affine matrix (6 numbers, output -> input, centred pixel
   coordinates); without fill the outside is 0 and not blended */
static int image_warp(lua_State *L) {
  const char *fn = "warp";
  vtl_tensor *t = lvtl_checktensor(L, 1);
  double m[64];
  if (number_list(L, 2, m, fn, "matrix") != 6) return luaL_error(L, "warp: matrix must have 6 numbers");
  int o = opts_arg(L, 3);
  int64_t h, w;
  if (t->ndim == 3 && t->dtype == VTL_U8) { h = t->shape[0]; w = t->shape[1]; }
  else { h = t->shape[t->ndim - 2 >= 0 ? t->ndim - 2 : 0]; w = t->shape[t->ndim - 1 >= 0 ? t->ndim - 1 : 0]; }
  vtl_interp mode = VTL_INTERP_NEAREST;
  double fill[64];
  int nfill = 0;
  if (o) {
    if (lua_getfield(L, o, "size") != LUA_TNIL) {
      if (!lua_istable(L, -1) || luaL_len(L, -1) != 2) return luaL_error(L, "warp: option 'size' must be {h, w}");
      lua_geti(L, -1, 1);
      h = int_arg(L, -1, fn, "size[1]");
      lua_geti(L, -2, 2);
      w = int_arg(L, -1, fn, "size[2]");
      lua_pop(L, 2);
    }
    lua_pop(L, 1);
    if (lua_getfield(L, o, "interpolation") != LUA_TNIL) {
      const char *s = lua_tostring(L, -1);
      if (s && strcmp(s, "nearest") == 0) mode = VTL_INTERP_NEAREST;
      else if (s && strcmp(s, "bilinear") == 0) mode = VTL_INTERP_BILINEAR;
      else return luaL_error(L, "warp: option 'interpolation' must be \"nearest\" or \"bilinear\", got %s", s ? s : luaL_typename(L, -1));
    }
    lua_pop(L, 1);
    if (lua_getfield(L, o, "fill") != LUA_TNIL) nfill = number_list(L, lua_gettop(L), fill, fn, "option 'fill'");
    lua_pop(L, 1);
  }
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_warp(t, m, h, w, mode, nfill ? fill : NULL, nfill));
}

static int adjust(lua_State *L, vtl_adjust what, const char *fn) {
  vtl_tensor *t = lvtl_checktensor(L, 1);
  double f = num_arg(L, 2, fn, "factor");
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_adjust(t, what, f));
}
static int image_adjust_brightness(lua_State *L) { return adjust(L, VTL_ADJUST_BRIGHTNESS, "adjust_brightness"); }
static int image_adjust_contrast(lua_State *L) { return adjust(L, VTL_ADJUST_CONTRAST, "adjust_contrast"); }
static int image_adjust_saturation(lua_State *L) { return adjust(L, VTL_ADJUST_SATURATION, "adjust_saturation"); }
static int image_adjust_sharpness(lua_State *L) { return adjust(L, VTL_ADJUST_SHARPNESS, "adjust_sharpness"); }

static int image_adjust_hue(lua_State *L) {
  vtl_tensor *t = lvtl_checktensor(L, 1);
  double f = num_arg(L, 2, "adjust_hue", "hue factor");
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_adjust_hue(t, f));
}

/* image.rgb_to_grayscale(img [, out_channels = 1]) */
static int image_rgb_to_grayscale(lua_State *L) {
  vtl_tensor *t = lvtl_checktensor(L, 1);
  lua_Integer n = lua_isnoneornil(L, 2) ? 1 : int_arg(L, 2, "rgb_to_grayscale", "output channels");
  if (n != 1 && n != 3) return luaL_error(L, "rgb_to_grayscale: output channels must be 1 or 3, got %d", (int)n);
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_grayscale(t, (int)n));
}

static int image_invert(lua_State *L) {
  vtl_tensor *t = lvtl_checktensor(L, 1);
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_point(t, VTL_POINT_INVERT, 0));
}

static int image_posterize(lua_State *L) {
  vtl_tensor *t = lvtl_checktensor(L, 1);
  lua_Integer bits = int_arg(L, 2, "posterize", "bits");
  if (bits < 0 || bits > 8) return luaL_error(L, "posterize: bits must be in 0..8, got %d", (int)bits);
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_point(t, VTL_POINT_POSTERIZE, (double)bits));
}

static int image_solarize(lua_State *L) {
  vtl_tensor *t = lvtl_checktensor(L, 1);
  double thr = num_arg(L, 2, "solarize", "threshold");
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_point(t, VTL_POINT_SOLARIZE, thr));
}

static int image_autocontrast(lua_State *L) {
  vtl_tensor *t = lvtl_checktensor(L, 1);
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_autocontrast(t));
}

static int image_equalize(lua_State *L) {
  vtl_tensor *t = lvtl_checktensor(L, 1);
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_equalize(t));
}

/* an int or {x, y} pair (or {n}) at idx into v[2] */
static void pair_arg(lua_State *L, int idx, double v[2], const char *fn, const char *what) {
  double tmp[64];
  int n = number_list(L, idx, tmp, fn, what);
  if (n > 2) luaL_error(L, "%s: %s must be a number or {x, y}, got %d entries", fn, what, n);
  v[0] = tmp[0];
  v[1] = tmp[n - 1];
}

/* image.gaussian_blur(img, kernel_size, sigma): kernel_size k or {kx, ky} (odd), sigma s or
   {sx, sy}; sigma defaults to 0.3 * ((k - 1) * 0.5 - 1) + 0.8 as torchvision */
static int image_gaussian_blur(lua_State *L) {
  const char *fn = "gaussian_blur";
  vtl_tensor *t = lvtl_checktensor(L, 1);
  double k[2], s[2];
  pair_arg(L, 2, k, fn, "kernel size");
  if (k[0] != floor(k[0]) || k[1] != floor(k[1]) || !(k[0] >= 1 && k[0] <= 4095) || !(k[1] >= 1 && k[1] <= 4095))
    return luaL_error(L, "gaussian_blur: kernel size must be odd positive integers, got %g×%g", k[0], k[1]);
  if (lua_isnoneornil(L, 3)) {
    s[0] = k[0] * 0.15 + 0.35;
    s[1] = k[1] * 0.15 + 0.35;
  } else {
    pair_arg(L, 3, s, fn, "sigma");
  }
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_gaussian_blur(t, (int)k[0], (int)k[1], s[0], s[1]));
}

/* image.erase(img, top, left, h, w, value): value a number, a list of C numbers or an f32 C×h×w
   tensor; top and left 1-based */
static int image_erase(lua_State *L) {
  const char *fn = "erase";
  vtl_tensor *t = lvtl_checktensor(L, 1);
  lua_Integer top = int_arg(L, 2, fn, "top"), left = int_arg(L, 3, fn, "left");
  lua_Integer h = int_arg(L, 4, fn, "height"), w = int_arg(L, 5, fn, "width");
  double v[64];
  int nv = 0;
  vtl_tensor *noise = NULL;
  if (lvtl_totensor(L, 6)) noise = lvtl_totensor(L, 6);
  else nv = number_list(L, 6, v, fn, "value");
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_image_erase(t, top - 1, left - 1, h, w, v, nv, noise));
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
  {"listdir", image_listdir}, {"pad", image_pad}, {"warp", image_warp},
  {"adjust_brightness", image_adjust_brightness}, {"adjust_contrast", image_adjust_contrast},
  {"adjust_saturation", image_adjust_saturation}, {"adjust_sharpness", image_adjust_sharpness},
  {"adjust_hue", image_adjust_hue}, {"rgb_to_grayscale", image_rgb_to_grayscale}, {"invert", image_invert},
  {"posterize", image_posterize}, {"solarize", image_solarize}, {"autocontrast", image_autocontrast},
  {"equalize", image_equalize}, {"gaussian_blur", image_gaussian_blur}, {"erase", image_erase},
  {NULL, NULL}};

/* Adds the `image` table to the module table on top of the stack. */
void lvtl_open_image(lua_State *L) {
  lua_newtable(L);
  luaL_setfuncs(L, image_funcs, 0);
  lua_setfield(L, -2, "image");
}
