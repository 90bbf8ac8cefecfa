/*
 * Loader worker threads. Each worker is a POSIX thread with its own Lua state (the vtl library
 * loaded, the standard libraries open). The main state sends one message at start — a table
 * holding the dataset, the epoch's batches and the batch function's module and name — and each
 * worker decodes its own copy. Batches are numbered 1..n; a worker takes the lowest batch not
 * yet taken, as long as it lies within the prefetch window (at most `window` batches ahead of
 * the one the main state waits for), runs module[fn](payload, k) in its state, and leaves the
 * result as a message in slot k. The main state takes results strictly in order, so what a
 * loop sees never depends on the number of workers or on thread timing.
 *
 * Tensors travel by reference: a worker's batch is handed to the main state without copying
 * its pixels. Kernels called from a worker run single-threaded (the worker's OpenMP team size
 * is 1), so workers do not oversubscribe the cores the model trains on.
 */
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include "lvtl.h"
#include "lship.h"

#define LOADER_MT "vtl.Loader"

enum { SLOT_EMPTY = 0, SLOT_BUSY, SLOT_DONE, SLOT_FAILED };

typedef struct {
  int state;
  lvtl_msg msg;
  char *err;
} slot;

typedef struct loader {
  pthread_mutex_t mu;
  pthread_cond_t work, done;
  int nworkers, started;
  pthread_t *threads;
  lvtl_msg payload;
  char *path, *cpath, *module, *fn;
  int64_t nbatches, next, consumed, window;
  slot *slots;
  int stop, closed;
} loader;

/* Stack: the message handler's traceback, as the host prints it. */
static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Sets up a worker's state and leaves the batch function and the payload at indices 2 and 3
   (1 is the message handler). Runs under lua_pcall. */
static int worker_setup(lua_State *L) {
  loader *ld = lua_touserdata(L, 1);
  lua_settop(L, 0);
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_vtl_core);
  lua_setfield(L, -2, "vtl.core");
  lua_pop(L, 1);
  lua_getglobal(L, "package");
  lua_pushstring(L, ld->path);
  lua_setfield(L, -2, "path");
  lua_pushstring(L, ld->cpath);
  lua_setfield(L, -2, "cpath");
  lua_pop(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "vtl");
  lua_call(L, 1, 1);
  lua_setglobal(L, "vtl");
  lua_getglobal(L, "require");
  lua_pushstring(L, ld->module);
  lua_call(L, 1, 1);
  lua_getfield(L, -1, ld->fn);
  if (!lua_isfunction(L, -1)) return luaL_error(L, "loader: %s.%s is not a function", ld->module, ld->fn);
  lua_remove(L, -2);
  if (lvtl_ship_decode(L, &ld->payload) != LUA_OK) return lua_error(L);
  return 2;
}

/* Leaves slot k failed with msg (copied). */
static void slot_fail(loader *ld, int64_t k, const char *msg) {
  char *m = strdup(msg ? msg : "unknown error");
  pthread_mutex_lock(&ld->mu);
  ld->slots[k].err = m;
  ld->slots[k].state = SLOT_FAILED;
  pthread_cond_broadcast(&ld->done);
  pthread_mutex_unlock(&ld->mu);
}

static void *worker_main(void *arg) {
  loader *ld = arg;
  omp_set_num_threads(1);
  lua_State *L = luaL_newstate();
  char *init_err = NULL;
  if (!L) init_err = strdup("loader worker: cannot create a Lua state (out of memory)");
  else {
    lua_pushcfunction(L, traceback);
    lua_pushcfunction(L, worker_setup);
    lua_pushlightuserdata(L, ld);
    if (lua_pcall(L, 1, 2, 1) != LUA_OK) {
      const char *m = lua_tostring(L, -1);
      size_t n = strlen(m ? m : "?") + 64;
      init_err = malloc(n);
      if (init_err) snprintf(init_err, n, "loader worker: cannot start: %s", m ? m : "?");
      lua_settop(L, 1);
    }
  }
  for (;;) {
    pthread_mutex_lock(&ld->mu);
    while (!ld->stop && ld->next < ld->nbatches && ld->next >= ld->consumed + ld->window)
      pthread_cond_wait(&ld->work, &ld->mu);
    if (ld->stop || ld->next >= ld->nbatches) {
      pthread_mutex_unlock(&ld->mu);
      break;
    }
    int64_t k = ld->next++;
    ld->slots[k].state = SLOT_BUSY;
    pthread_mutex_unlock(&ld->mu);
    if (init_err) { slot_fail(ld, k, init_err); continue; }
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_pushinteger(L, (lua_Integer)k + 1);
    if (lua_pcall(L, 2, 1, 1) != LUA_OK) {
      slot_fail(ld, k, lua_tostring(L, -1));
    } else {
      lvtl_msg m;
      char err[400];
      if (lvtl_ship_encode(L, -1, &m, err, sizeof err)) slot_fail(ld, k, err);
      else {
        pthread_mutex_lock(&ld->mu);
        ld->slots[k].msg = m;
        ld->slots[k].state = SLOT_DONE;
        pthread_cond_broadcast(&ld->done);
        pthread_mutex_unlock(&ld->mu);
      }
    }
    lua_settop(L, 3);
    /* the batch's tensors now belong to the main state; let this state drop its boxes soon */
    lua_gc(L, LUA_GCSTEP, 0);
  }
  free(init_err);
  if (L) lua_close(L);
  return NULL;
}

static void loader_close(loader *ld) {
  if (ld->closed) return;
  ld->closed = 1;
  pthread_mutex_lock(&ld->mu);
  ld->stop = 1;
  pthread_cond_broadcast(&ld->work);
  pthread_mutex_unlock(&ld->mu);
  for (int i = 0; i < ld->started; i++) pthread_join(ld->threads[i], NULL);
  for (int64_t k = 0; k < ld->nbatches && ld->slots; k++) {
    lvtl_msg_free(&ld->slots[k].msg);
    free(ld->slots[k].err);
  }
  free(ld->slots);
  free(ld->threads);
  lvtl_msg_free(&ld->payload);
  free(ld->path);
  free(ld->cpath);
  free(ld->module);
  free(ld->fn);
  pthread_cond_destroy(&ld->work);
  pthread_cond_destroy(&ld->done);
  pthread_mutex_destroy(&ld->mu);
}

static loader *check_loader(lua_State *L) {
  loader *ld = luaL_checkudata(L, 1, LOADER_MT);
  if (ld->closed) luaL_error(L, "loader: already closed");
  return ld;
}

static char *dup_field(lua_State *L, int t, const char *k, const char *dflt) {
  lua_getfield(L, t, k);
  const char *s = lua_isstring(L, -1) ? lua_tostring(L, -1) : dflt;
  char *r = strdup(s ? s : "");
  lua_pop(L, 1);
  if (!r) luaL_error(L, "loader: out of memory");
  return r;
}

/* vtl.core.loader_start(payload, {workers=, window=, batches=, module=, fn=}) -> loader.
   Starts the workers; payload is sent to each. */
static int l_loader_start(lua_State *L) {
  luaL_checkany(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_getfield(L, 2, "workers");
  lua_getfield(L, 2, "window");
  lua_getfield(L, 2, "batches");
  lua_Integer nw = luaL_checkinteger(L, -3), win = luaL_checkinteger(L, -2), nb = luaL_checkinteger(L, -1);
  lua_pop(L, 3);
  luaL_argcheck(L, nw >= 1 && nw <= 256, 2, "workers must be between 1 and 256");
  luaL_argcheck(L, win >= 1, 2, "window must be positive");
  luaL_argcheck(L, nb >= 0 && nb <= ((lua_Integer)1 << 40), 2, "batches out of range");
  lua_getfield(L, 2, "module");
  lua_getfield(L, 2, "fn");
  luaL_checkstring(L, -2);
  luaL_checkstring(L, -1);
  lua_pop(L, 2);

  loader *ld = lua_newuserdatauv(L, sizeof *ld, 0);
  memset(ld, 0, sizeof *ld);
  ld->closed = 1; /* nothing to release until set up */
  luaL_setmetatable(L, LOADER_MT);
  pthread_mutex_init(&ld->mu, NULL);
  pthread_cond_init(&ld->work, NULL);
  pthread_cond_init(&ld->done, NULL);
  ld->closed = 0;
  ld->nbatches = nb;
  ld->window = win;
  ld->module = dup_field(L, 2, "module", NULL);
  ld->fn = dup_field(L, 2, "fn", NULL);
  lua_getglobal(L, "package");
  ld->path = dup_field(L, lua_gettop(L), "path", "");
  ld->cpath = dup_field(L, lua_gettop(L), "cpath", "");
  lua_pop(L, 1);
  ld->slots = calloc((size_t)(nb > 0 ? nb : 1), sizeof *ld->slots);
  ld->threads = calloc((size_t)nw, sizeof *ld->threads);
  if (!ld->slots || !ld->threads) return luaL_error(L, "DataLoader: out of memory for %I batches", nb);
  char err[400];
  if (lvtl_ship_encode(L, 1, &ld->payload, err, sizeof err))
    return luaL_error(L, "DataLoader: the dataset cannot be sent to worker threads (use num_workers = 0): %s", err);
  for (int i = 0; i < nw; i++) {
    if (pthread_create(&ld->threads[i], NULL, worker_main, ld) != 0) {
      if (i == 0) return luaL_error(L, "DataLoader: cannot start a worker thread");
      break;
    }
    ld->started = i + 1;
  }
  ld->nworkers = ld->started;
  return 1;
}

/* loader:next() -> the next batch's value, nil after the last; raises a worker's error. */
static int l_loader_next(lua_State *L) {
  loader *ld = check_loader(L);
  pthread_mutex_lock(&ld->mu);
  if (ld->consumed >= ld->nbatches) {
    pthread_mutex_unlock(&ld->mu);
    lua_pushnil(L);
    return 1;
  }
  int64_t k = ld->consumed;
  while (ld->slots[k].state != SLOT_DONE && ld->slots[k].state != SLOT_FAILED) pthread_cond_wait(&ld->done, &ld->mu);
  slot s = ld->slots[k];
  memset(&ld->slots[k], 0, sizeof ld->slots[k]);
  ld->consumed++;
  pthread_cond_broadcast(&ld->work);
  pthread_mutex_unlock(&ld->mu);
  if (s.state == SLOT_FAILED) {
    lua_pushstring(L, s.err);
    free(s.err);
    return lua_error(L);
  }
  int st = lvtl_ship_decode(L, &s.msg);
  lvtl_msg_free(&s.msg);
  if (st != LUA_OK) return lua_error(L);
  return 1;
}

static int l_loader_close(lua_State *L) {
  loader *ld = luaL_checkudata(L, 1, LOADER_MT);
  loader_close(ld);
  return 0;
}

static int l_loader_workers(lua_State *L) {
  loader *ld = check_loader(L);
  lua_pushinteger(L, ld->nworkers);
  return 1;
}

static const luaL_Reg loader_methods[] = {
  {"next", l_loader_next}, {"close", l_loader_close}, {"workers", l_loader_workers}, {NULL, NULL}};

static const luaL_Reg loader_funcs[] = {{"loader_start", l_loader_start}, {NULL, NULL}};

void lvtl_open_loader(lua_State *L) {
  if (luaL_newmetatable(L, LOADER_MT)) {
    lua_newtable(L);
    luaL_setfuncs(L, loader_methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_loader_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_loader_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, loader_funcs, 0);
  lvtl_open_ship(L);
}
