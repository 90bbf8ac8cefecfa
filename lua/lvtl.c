/* The vtl.core module: tensors, files, and system functions (clock, threads, build info). */
#include <lua.h>
#include <lauxlib.h>
#include <string.h>
#include <unistd.h>
#include "autocast.h"
#include "lvtl.h"
#include "backend.h"
#include "profile.h"

static void collect_on_oom(void *ud) { lua_gc((lua_State *)ud, LUA_GCCOLLECT); }

static int l_clock(lua_State *L) { lua_pushnumber(L, vtl_clock()); return 1; }

/* _profile(on, sync): starts (clearing the sums) or stops the timing of backward nodes */
static int l_profile(lua_State *L) {
  vtl_profile_set(lua_toboolean(L, 1), lua_toboolean(L, 2));
  return 0;
}
/* _profile_mark(): the clock (after waiting for the devices when profiling with sync) and the
   seconds summed over backward nodes so far */
static int l_profile_mark(lua_State *L) {
  int n;
  double total;
  lua_pushnumber(L, vtl_profile_mark());
  vtl_profile_entries(&n, &total);
  lua_pushnumber(L, total);
  return 2;
}
/* _profile_nodes(): {{name, calls, seconds}, ...} of the backward nodes, and their total seconds */
static int l_profile_nodes(lua_State *L) {
  int n;
  double total;
  const vtl_profile_entry *e = vtl_profile_entries(&n, &total);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_createtable(L, 3, 0);
    lua_pushstring(L, e[i].name);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, e[i].calls);
    lua_rawseti(L, -2, 2);
    lua_pushnumber(L, e[i].seconds);
    lua_rawseti(L, -2, 3);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushnumber(L, total);
  return 2;
}

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
static int l_memory_cached(lua_State *L) { lua_pushinteger(L, (lua_Integer)vtl_cpu_cached_bytes()); return 1; }
static int l_empty_cache(lua_State *L) { lua_pushinteger(L, (lua_Integer)vtl_cpu_empty_cache()); return 1; }

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

/* ---- vtl.cuda: devices, synchronisation and the caching allocator ---- */

/* the CUDA device named by the optional argument at idx: nil (cuda:0), an index N or "cuda:N" */
static vtl_device cuda_arg(lua_State *L, int idx, const char *fn) {
  vtl_device d = {VTL_CUDA, 0};
  if (lua_isnoneornil(L, idx)) return d;
  if (lua_type(L, idx) == LUA_TSTRING) {
    const char *s = lua_tostring(L, idx);
    if (!vtl_device_parse(s, &d) || d.type != VTL_CUDA)
      luaL_argerror(L, idx, lua_pushfstring(L, "%s: expected a CUDA device (cuda or cuda:N), got '%s'", fn, s));
    return d;
  }
  int isnum;
  lua_Integer i = lua_tointegerx(L, idx, &isnum);
  if (!isnum || i < 0 || i > 1023)
    luaL_argerror(L, idx, lua_pushfstring(L, "%s: expected a device index (0, 1, ...) or 'cuda:N'", fn));
  d.index = (int)i;
  return d;
}

/* the CUDA backend for device d, or raises "cuda: ..." naming why there is none */
static const vtl_backend *cuda_backend(lua_State *L, vtl_device d) {
  const vtl_backend *be = vtl_backend_get(d);
  if (!be) lvtl_error(L);
  return be;
}

static int cuda_device_count(lua_State *L) {
  const vtl_backend *be = vtl_backend_of_type(VTL_CUDA);
  lua_pushinteger(L, be && be->device_count ? be->device_count() : 0);
  return 1;
}

static int cuda_is_available(lua_State *L) {
  const vtl_backend *be = vtl_backend_of_type(VTL_CUDA);
  lua_pushboolean(L, be && be->device_count && be->device_count() > 0);
  return 1;
}

static int cuda_synchronize(lua_State *L) {
  vtl_device d = cuda_arg(L, 1, "synchronize");
  lvtl_check(L, cuda_backend(L, d)->synchronize(d.index));
  return 0;
}

/* frees the cached blocks of every device; without CUDA there is nothing to free */
static int cuda_empty_cache(lua_State *L) {
  const vtl_backend *be = vtl_backend_of_type(VTL_CUDA);
  size_t n = 0;
  int count = be && be->device_count ? be->device_count() : 0;
  for (int i = 0; i < count; i++) n += be->empty_cache(i);
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

static int cuda_memory_stats(lua_State *L) {
  vtl_device d = cuda_arg(L, 1, "memory_stats");
  size_t used = 0, cached = 0, peak = 0, mallocs = 0;
  cuda_backend(L, d)->memory_stats(d.index, &used, &cached, &peak, &mallocs);
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, (lua_Integer)used);
  lua_setfield(L, -2, "allocated");
  lua_pushinteger(L, (lua_Integer)cached);
  lua_setfield(L, -2, "cached");
  lua_pushinteger(L, (lua_Integer)peak);
  lua_setfield(L, -2, "peak");
  lua_pushinteger(L, (lua_Integer)mallocs);
  lua_setfield(L, -2, "mallocs");
  return 1;
}

/* reset_peak_memory_stats([device]): memory_stats().peak restarts from the bytes allocated now */
static int cuda_reset_peak(lua_State *L) {
  vtl_device d = cuda_arg(L, 1, "reset_peak_memory_stats");
  const vtl_backend *be = cuda_backend(L, d);
  if (be->reset_peak) be->reset_peak(d.index);
  return 0;
}

/* allow_tf32([on]): whether f32 matmuls on a GPU may use TF32 (default false, as PyTorch's
   matmul setting); with an argument sets it and returns the previous setting */
static int cuda_allow_tf32(lua_State *L) {
  bool prev = vtl_matmul_allow_tf32();
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TBOOLEAN);
    vtl_set_matmul_allow_tf32(lua_toboolean(L, 1));
  }
  lua_pushboolean(L, prev);
  return 1;
}

/* cudnn([opts]): cuDNN's switches {benchmark, deterministic, allow_tf32} (see autocast.h); the
   fields given in opts are set. Returns the settings in force before the call, so passing that
   table back restores them. */
static int cuda_cudnn(lua_State *L) {
  static const char *const names[] = {"benchmark", "deterministic", "allow_tf32"};
  vtl_cudnn_flags f = vtl_get_cudnn_flags(), prev = f;
  bool *fields[] = {&f.benchmark, &f.deterministic, &f.allow_tf32};
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
      int i = 0;
      if (lua_type(L, -2) == LUA_TSTRING)
        while (i < 3 && strcmp(lua_tostring(L, -2), names[i]) != 0) i++;
      else
        i = 3;
      if (i == 3)
        return luaL_error(L, "cuda.cudnn: unknown option %s (expected benchmark, deterministic or allow_tf32)",
                          luaL_tolstring(L, -2, NULL));
      if (!lua_isboolean(L, -1))
        return luaL_error(L, "cuda.cudnn: %s must be a boolean, got %s", names[i], luaL_typename(L, -1));
      *fields[i] = lua_toboolean(L, -1);
      lua_pop(L, 1);
    }
    vtl_set_cudnn_flags(f);
  }
  bool old[] = {prev.benchmark, prev.deterministic, prev.allow_tf32};
  lua_createtable(L, 0, 3);
  for (int i = 0; i < 3; i++) {
    lua_pushboolean(L, old[i]);
    lua_setfield(L, -2, names[i]);
  }
  return 1;
}

/* flash_attention([on]): whether half attention on a GPU takes the fused kernels (default false);
   with an argument sets it and returns the previous setting */
static int cuda_flash_attention(lua_State *L) {
  bool prev = vtl_attention_flash();
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TBOOLEAN);
    vtl_set_attention_flash(lua_toboolean(L, 1));
  }
  lua_pushboolean(L, prev);
  return 1;
}

static const luaL_Reg cuda_funcs[] = {
  {"is_available", cuda_is_available}, {"device_count", cuda_device_count}, {"synchronize", cuda_synchronize},
  {"empty_cache", cuda_empty_cache}, {"memory_stats", cuda_memory_stats}, {"allow_tf32", cuda_allow_tf32},
  {"cudnn", cuda_cudnn}, {"flash_attention", cuda_flash_attention}, {"reset_peak_memory_stats", cuda_reset_peak}, {NULL, NULL}};

static const luaL_Reg sys_funcs[] = {
  {"clock", l_clock}, {"_profile", l_profile}, {"_profile_mark", l_profile_mark}, {"_profile_nodes", l_profile_nodes},
  {"set_num_threads", l_set_num_threads}, {"get_num_threads", l_get_num_threads},
  {"memory_allocated", l_memory_allocated}, {"memory_cached", l_memory_cached}, {"empty_cache", l_empty_cache}, {"build_info", l_build_info}, {"isatty", l_isatty},
  {"defer_interrupts", l_defer_interrupts}, {NULL, NULL}};

void lvtl_open_sys(lua_State *L) {
  luaL_setfuncs(L, sys_funcs, 0);
  lua_newtable(L);
  luaL_setfuncs(L, cuda_funcs, 0);
  lua_setfield(L, -2, "cuda");
  lua_pushstring(L, VTL_VERSION);
  lua_setfield(L, -2, "version");
}

int luaopen_vtl_core(lua_State *L) {
#ifdef VTL_HAVE_CUDA
  vtl_cuda_init(); /* registers the CUDA backend */
#endif
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
