/* Shared helpers of the Lua binding files (lua/l*.c). */
#ifndef LVTL_H
#define LVTL_H
#include <lua.h>
#include <lauxlib.h>
#include "core.h"

#define LVTL_TENSOR_MT "vtl.Tensor"
#define LVTL_GENERATOR_MT "vtl.Generator"

/* The userdata box: one reference to a C tensor, NULL once released. */
typedef struct { vtl_tensor *t; } lvtl_box;

/* The tensor at idx; raises "<fn>: bad argument #idx (vtl.Tensor expected, got X)" or a
   "tensor has been freed" error. */
vtl_tensor *lvtl_checktensor(lua_State *L, int idx);
/* The tensor at idx or NULL when the value is not a (live) tensor. */
vtl_tensor *lvtl_totensor(lua_State *L, int idx);
/* Pushes a new box owning t's reference. t == NULL raises the C core's current error. */
void lvtl_pushtensor(lua_State *L, vtl_tensor *t);
/* A new empty box on the stack (made before an op runs, so a failed op leaves nothing
   half-made), and storing an op's result in it (raising the op's error when t is NULL). */
lvtl_box *lvtl_newbox(lua_State *L);
int lvtl_fillbox(lua_State *L, lvtl_box *b, vtl_tensor *t);
/* Counts a new tensor's fresh storage towards the collector's pace (done by lvtl_fillbox and
   lvtl_pushtensor; for code that fills boxes itself). */
void lvtl_gc_pressure(lua_State *L, const vtl_tensor *t);

/* A random generator: Philox key and counter (vtl.Generator userdata). */
typedef struct { uint64_t seed, offset; } lvtl_gen;
/* The generator named by the `generator` field of the options table at index o (0: none), or
   the state's default one; raises naming fn when the field holds something else. */
lvtl_gen *lvtl_generator(lua_State *L, int o, const char *fn);

/* Raises the C core's current error message as a Lua error. */
int lvtl_error(lua_State *L);
/* Raises when st != VTL_OK. */
void lvtl_check(lua_State *L, vtl_status st);
/* Registers a table of functions into the table on top of the stack. */
void lvtl_setfuncs(lua_State *L, const luaL_Reg *l);

/* Module parts, each adds its functions to the table on top of the stack. */
void lvtl_open_tensor(lua_State *L);
void lvtl_open_io(lua_State *L);
void lvtl_open_io_pth(lua_State *L);
/* Pushes a torch.save checkpoint's value and its dicts' key order (lio_pth.c); returns 2. */
int lvtl_load_pth(lua_State *L, const char *path);
void lvtl_open_sys(lua_State *L);
void lvtl_open_autograd(lua_State *L);
void lvtl_open_nn_conv(lua_State *L);
void lvtl_open_nn_norm(lua_State *L);
void lvtl_open_image(lua_State *L);
/* The plot canvas (lplot.c): adds the `plot` table. */
void lvtl_open_plot(lua_State *L);
/* Loader worker threads and the messages between Lua states (lloader.c, lship.c). */
void lvtl_open_loader(lua_State *L);

int luaopen_vtl_core(lua_State *L);
/* Ctrl-C held back while > 0 (see defer_interrupts in lvtl.c); pending when one came meanwhile. */
extern int lvtl_interrupt_deferred, lvtl_interrupt_pending;
#endif
