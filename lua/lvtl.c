/* The vtl.core module: tensors, files, and system functions (clock, threads, build info). */
#include <lua.h>
#include <lauxlib.h>
#include <unistd.h>
#include "lvtl.h"

static void collect_on_oom(void *ud) { lua_gc((lua_State *)ud, LUA_GCCOLLECT); }

static int l_clock(lua_State *L) { lua_pushnumber(L, vtl_clock()); return 1; }

static int l_set_num_threads(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= 4096, 1, "thread count must be between 1 and 4096");
  vtl_set_num_threads((int)n);
  return 0;
}

static int l_get_num_threads(lua_State *L) { lua_pushinteger(L, vtl_get_num_threads()); return 1; }

/* isatty(fd = 1): whether a standard stream is a terminal (progress bars redraw in place only there). */
static int l_isatty(lua_State *L) {
  lua_Integer fd = luaL_optinteger(L, 1, 1);
  luaL_argcheck(L, fd >= 0 && fd <= 2, 1, "fd must be 0, 1 or 2");
  lua_pushboolean(L, isatty((int)fd));
  return 1;
}

/* Ctrl-C inside a critical section (an optimizer step, a checkpoint write) is held back until
   the section ends, so an interrupted run never stops with half-updated weights. The host's
   SIGINT hook reads these. */
int lvtl_interrupt_deferred, lvtl_interrupt_pending;

/* defer_interrupts(on): enters (true) or leaves (false) a critical section; leaving the
   outermost one raises "interrupted!" when Ctrl-C came meanwhile. */
static int l_defer_interrupts(lua_State *L) {
  if (lua_toboolean(L, 1)) lvtl_interrupt_deferred++;
  else if (lvtl_interrupt_deferred > 0 && --lvtl_interrupt_deferred == 0 && lvtl_interrupt_pending) {
    lvtl_interrupt_pending = 0;
    return luaL_error(L, "interrupted!");
  }
  return 0;
}

static int l_memory_allocated(lua_State *L) { lua_pushinteger(L, (lua_Integer)vtl_alloc_bytes()); return 1; }

#ifdef VTL_HAVE_CUDA
int vtl_cuda_device_count(void);
#endif

/* Build facts shared by `vtl info` and vtl.build_info(). */
static int l_build_info(lua_State *L) {
  char *openblas_get_config(void);
  lua_createtable(L, 0, 6);
  lua_pushstring(L, VTL_VERSION);
  lua_setfield(L, -2, "version");
#ifdef VTL_BUILD_FLAGS
  lua_pushstring(L, VTL_BUILD_FLAGS);
  lua_setfield(L, -2, "flags");
#endif
  lua_pushstring(L, openblas_get_config());
  lua_setfield(L, -2, "blas");
  lua_pushinteger(L, vtl_get_num_threads());
  lua_setfield(L, -2, "threads");
#ifdef VTL_HAVE_CUDA
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "cuda");
  lua_pushinteger(L, vtl_cuda_device_count());
  lua_setfield(L, -2, "gpus");
#else
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "cuda");
  lua_pushinteger(L, 0);
  lua_setfield(L, -2, "gpus");
#endif
  return 1;
}

static const luaL_Reg sys_funcs[] = {
  {"clock", l_clock}, {"set_num_threads", l_set_num_threads}, {"get_num_threads", l_get_num_threads},
  {"memory_allocated", l_memory_allocated}, {"build_info", l_build_info}, {"isatty", l_isatty},
  {"defer_interrupts", l_defer_interrupts}, {NULL, NULL}};

void lvtl_open_sys(lua_State *L) {
  luaL_setfuncs(L, sys_funcs, 0);
  lua_pushstring(L, VTL_VERSION);
  lua_setfield(L, -2, "version");
}

int luaopen_vtl_core(lua_State *L) {
  /* Tensor memory paces the incremental collector (see gc_pressure in ltensor.c); the
     generational mode would let garbage tensors age into the old generation unseen. */
  lua_gc(L, LUA_GCINC, 0, 0, 0);
  lua_newtable(L);
  lvtl_open_tensor(L);
  lvtl_open_io(L);
  lvtl_open_io_pth(L);
  lvtl_open_image(L);
  lvtl_open_autograd(L);
  lvtl_open_loader(L);
  lvtl_open_plot(L);
  lua_newtable(L); /* nn: the C functional ops */
  lvtl_open_nn_conv(L);
  lvtl_open_nn_norm(L);
  lua_setfield(L, -2, "nn");
  lvtl_open_sys(L);
  vtl_set_oom_hook(collect_on_oom, L);
  return 1;
}
