/*
 * vtl.core.plot: the drawing canvas behind vtl.plot (runtime/plot.h).
 *
 *   local cv = require("vtl.core").plot.canvas(640, 480)   -- white
 *   cv:color(0.2, 0.4, 0.8); cv:line_width(2)
 *   cv:move_to(10, 10); cv:line_to(100, 50); cv:stroke()
 *   cv:text("loss", 320, 20, {size = 14, align = "center", valign = "top"})
 *   cv:save("out.png")
 *
 * Coordinates are pixels from the top-left corner, continuous: pixel (row i, column j), 1-based
 * as tensors index them, covers x in [j-1, j), y in [i-1, i). Colours are r, g, b(, a) in [0, 1].
 */
#include <math.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include "lvtl.h"
#include "plot.h"

#define CANVAS_MT "vtl.Canvas"
#define COORD_MAX 1e7 /* far outside any canvas; keeps cairo's fixed-point coordinates in range */

typedef struct { vtl_canvas *c; } canvas_box;

static vtl_canvas *check_canvas(lua_State *L) {
  canvas_box *b = luaL_checkudata(L, 1, CANVAS_MT);
  if (!b->c) luaL_error(L, "canvas has been closed");
  return b->c;
}

/* A finite coordinate or length at idx, clamped to ±COORD_MAX. */
static double check_coord(lua_State *L, int idx) {
  double v = luaL_checknumber(L, idx);
  luaL_argcheck(L, isfinite(v), idx, "finite number expected");
  return v > COORD_MAX ? COORD_MAX : v < -COORD_MAX ? -COORD_MAX : v;
}

/* canvas(w, h) -> a white w×h canvas */
static int l_canvas(lua_State *L) {
  lua_Integer w = luaL_checkinteger(L, 1), h = luaL_checkinteger(L, 2);
  luaL_argcheck(L, w >= 1 && w <= VTL_PLOT_MAX_SIDE, 1, "width must be 1..16384");
  luaL_argcheck(L, h >= 1 && h <= VTL_PLOT_MAX_SIDE, 2, "height must be 1..16384");
  canvas_box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->c = NULL;
  luaL_setmetatable(L, CANVAS_MT);
  b->c = vtl_plot_canvas_new((int)w, (int)h);
  if (!b->c) return lvtl_error(L);
  return 1;
}

static int l_close(lua_State *L) {
  canvas_box *b = luaL_checkudata(L, 1, CANVAS_MT);
  vtl_plot_canvas_free(b->c);
  b->c = NULL;
  return 0;
}

static int l_size(lua_State *L) {
  int w, h;
  vtl_plot_canvas_size(check_canvas(L), &w, &h);
  lua_pushinteger(L, w);
  lua_pushinteger(L, h);
  return 2;
}

/* cv:color(r, g, b [, a = 1]), each in [0, 1] (clamped) */
static int l_color(lua_State *L) {
  vtl_canvas *c = check_canvas(L);
  double r = luaL_checknumber(L, 2), g = luaL_checknumber(L, 3), b = luaL_checknumber(L, 4);
  double a = luaL_optnumber(L, 5, 1);
  vtl_plot_color(c, r, g, b, a);
  return 0;
}

static int l_line_width(lua_State *L) {
  vtl_canvas *c = check_canvas(L);
  double w = check_coord(L, 2);
  luaL_argcheck(L, w >= 0, 2, "width must be non-negative");
  vtl_plot_line_width(c, w);
  return 0;
}

/* cv:dash(on, off): dashed strokes; cv:dash() or cv:dash(0): solid */
static int l_dash(lua_State *L) {
  vtl_canvas *c = check_canvas(L);
  double on = lua_isnoneornil(L, 2) ? 0 : check_coord(L, 2);
  double off = lua_isnoneornil(L, 3) ? on : check_coord(L, 3);
  vtl_plot_dash(c, on, off);
  return 0;
}

static int l_antialias(lua_State *L) {
  vtl_canvas *c = check_canvas(L);
  luaL_checkany(L, 2);
  vtl_plot_antialias(c, lua_toboolean(L, 2));
  return 0;
}

static int l_move_to(lua_State *L) {
  vtl_canvas *c = check_canvas(L);
  double x = check_coord(L, 2), y = check_coord(L, 3);
  vtl_plot_move_to(c, x, y);
  return 0;
}

static int l_line_to(lua_State *L) {
  vtl_canvas *c = check_canvas(L);
  double x = check_coord(L, 2), y = check_coord(L, 3);
  vtl_plot_line_to(c, x, y);
  return 0;
}

static int l_rect(lua_State *L) {
  vtl_canvas *c = check_canvas(L);
  double x = check_coord(L, 2), y = check_coord(L, 3), w = check_coord(L, 4), h = check_coord(L, 5);
  vtl_plot_rect(c, x, y, w, h);
  return 0;
}

static int l_circle(lua_State *L) {
  vtl_canvas *c = check_canvas(L);
  double x = check_coord(L, 2), y = check_coord(L, 3), r = check_coord(L, 4);
  luaL_argcheck(L, r >= 0, 4, "radius must be non-negative");
  vtl_plot_circle(c, x, y, r);
  return 0;
}

static int l_stroke(lua_State *L) {
  vtl_plot_stroke(check_canvas(L));
  return 0;
}

static int l_fill(lua_State *L) {
  vtl_plot_fill(check_canvas(L));
  return 0;
}

static int l_clip(lua_State *L) {
  vtl_canvas *c = check_canvas(L);
  double x = check_coord(L, 2), y = check_coord(L, 3), w = check_coord(L, 4), h = check_coord(L, 5);
  vtl_plot_clip(c, x, y, w, h);
  return 0;
}

static int l_reset_clip(lua_State *L) {
  vtl_plot_reset_clip(check_canvas(L));
  return 0;
}

/* Font options from the table at o (0: none): size (pixels, default 12) and bold. */
static void font_opts(lua_State *L, int o, double *size, bool *bold) {
  *size = 12;
  *bold = false;
  if (!o) return;
  if (lua_getfield(L, o, "size") != LUA_TNIL) {
    int ok;
    *size = lua_tonumberx(L, -1, &ok);
    if (!ok || !isfinite(*size) || *size <= 0 || *size > 1000)
      luaL_error(L, "canvas:text: option 'size' must be a number in (0, 1000], got %s", luaL_tolstring(L, -1, NULL));
  }
  lua_pop(L, 1);
  lua_getfield(L, o, "bold");
  *bold = lua_toboolean(L, -1);
  lua_pop(L, 1);
}

static int opts_arg(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return 0;
  luaL_checktype(L, idx, LUA_TTABLE);
  return idx;
}

/* Index in names of the string field `k` of the table at o (0 when absent); raises naming the
   option and the choices otherwise. */
static int option_field(lua_State *L, int o, const char *k, const char *const names[], const char *choices) {
  int r = 0;
  if (lua_getfield(L, o, k) != LUA_TNIL) {
    const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    for (r = 0; v && names[r] && strcmp(names[r], v) != 0; r++) {}
    if (!v || !names[r])
      return luaL_error(L, "canvas:text: option '%s' must be %s, got %s", k, choices, luaL_tolstring(L, -1, NULL));
  }
  lua_pop(L, 1);
  return r;
}

/* cv:text(s, x, y [, {size = 12, bold = false, align = "left"|"center"|"right",
   valign = "baseline"|"middle"|"top"|"bottom", angle = degrees counter-clockwise}]) */
static int l_text(lua_State *L) {
  vtl_canvas *c = check_canvas(L);
  const char *s = luaL_checkstring(L, 2);
  double x = check_coord(L, 3), y = check_coord(L, 4);
  int o = opts_arg(L, 5);
  double size;
  bool bold;
  font_opts(L, o, &size, &bold);
  vtl_align al = VTL_ALIGN_START;
  vtl_valign va = VTL_VALIGN_BASELINE;
  double angle = 0;
  if (o) {
    static const char *const aligns[] = {"left", "center", "right", NULL};
    static const char *const valigns[] = {"baseline", "middle", "top", "bottom", NULL};
    al = (vtl_align)option_field(L, o, "align", aligns, "left, center or right");
    va = (vtl_valign)option_field(L, o, "valign", valigns, "baseline, middle, top or bottom");
    lua_getfield(L, o, "angle");
    if (!lua_isnil(L, -1)) {
      int ok;
      angle = lua_tonumberx(L, -1, &ok);
      if (!ok || !isfinite(angle)) return luaL_error(L, "canvas:text: option 'angle' must be a finite number");
    }
    lua_pop(L, 1);
  }
  vtl_plot_text(c, s, x, y, size, bold, al, va, angle);
  return 0;
}

/* cv:text_size(s [, {size =, bold =}]) -> width, height (advance width; ascent + descent) */
static int l_text_size(lua_State *L) {
  vtl_canvas *c = check_canvas(L);
  const char *s = luaL_checkstring(L, 2);
  int o = opts_arg(L, 3);
  double size, w, h;
  bool bold;
  font_opts(L, o, &size, &bold);
  vtl_plot_text_size(c, s, size, bold, &w, &h);
  lua_pushnumber(L, w);
  lua_pushnumber(L, h);
  return 2;
}

/* cv:image(img, col, row): pastes a u8 H×W×C image 1:1 with its top-left pixel at the 1-based
   pixel (row, col) */
static int l_image(lua_State *L) {
  vtl_canvas *c = check_canvas(L);
  vtl_tensor *t = lvtl_checktensor(L, 2);
  lua_Integer x = luaL_checkinteger(L, 3), y = luaL_checkinteger(L, 4);
  luaL_argcheck(L, x > -VTL_PLOT_MAX_SIDE * 4 && x < VTL_PLOT_MAX_SIDE * 4, 3, "column out of range");
  luaL_argcheck(L, y > -VTL_PLOT_MAX_SIDE * 4 && y < VTL_PLOT_MAX_SIDE * 4, 4, "row out of range");
  lvtl_check(L, vtl_plot_image(c, t, x - 1, y - 1));
  return 0;
}

/* cv:pixels() -> u8 H×W×3 */
static int l_pixels(lua_State *L) {
  vtl_canvas *c = check_canvas(L);
  lvtl_box *b = lvtl_newbox(L);
  return lvtl_fillbox(L, b, vtl_plot_pixels(c));
}

/* cv:save(path [, who]): atomic PNG; errors begin with `who` (default "canvas:save") */
static int l_save(lua_State *L) {
  vtl_canvas *c = check_canvas(L);
  const char *path = luaL_checkstring(L, 2);
  const char *who = luaL_optstring(L, 3, "canvas:save");
  if (vtl_plot_save_png(c, path, who) != VTL_OK) return luaL_error(L, "%s", vtl_error_message());
  lua_pushvalue(L, 2);
  return 1;
}

static int l_tostring(lua_State *L) {
  canvas_box *b = luaL_checkudata(L, 1, CANVAS_MT);
  if (!b->c) {
    lua_pushliteral(L, "vtl.Canvas (closed)");
    return 1;
  }
  int w, h;
  vtl_plot_canvas_size(b->c, &w, &h);
  lua_pushfstring(L, "vtl.Canvas %d×%d", w, h);
  return 1;
}

static const luaL_Reg canvas_methods[] = {
  {"size", l_size}, {"color", l_color}, {"line_width", l_line_width}, {"dash", l_dash},
  {"antialias", l_antialias}, {"move_to", l_move_to}, {"line_to", l_line_to}, {"rect", l_rect},
  {"circle", l_circle}, {"stroke", l_stroke}, {"fill", l_fill}, {"clip", l_clip},
  {"reset_clip", l_reset_clip}, {"text", l_text}, {"text_size", l_text_size}, {"image", l_image},
  {"pixels", l_pixels}, {"save", l_save}, {"close", l_close}, {NULL, NULL}};

static const luaL_Reg canvas_meta[] = {
  {"__gc", l_close}, {"__close", l_close}, {"__tostring", l_tostring}, {NULL, NULL}};

static const luaL_Reg plot_funcs[] = {{"canvas", l_canvas}, {NULL, NULL}};

/* Adds the `plot` table (the canvas constructor) to the module table on top of the stack. */
void lvtl_open_plot(lua_State *L) {
  if (luaL_newmetatable(L, CANVAS_MT)) {
    luaL_setfuncs(L, canvas_meta, 0);
    lua_newtable(L);
    luaL_setfuncs(L, canvas_methods, 0);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_newtable(L);
  luaL_setfuncs(L, plot_funcs, 0);
  lua_setfield(L, -2, "plot");
}
