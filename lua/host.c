/*
 * vtl: the host program. Runs Lua 5.4 scripts with the vtl library loaded, or the REPL.
 *
 *   vtl [options] [script [args]]     options as Lua's own lua(1): -e -i -l -v -W -- -
 *   vtl info                          version, build flags, BLAS, threads, GPUs
 *   vtl kernel ...                    the Jupyter kernel (kernel.c)
 *
 * Follows lua.c: everything runs inside one protected call (pmain), chunks run through
 * vtl_host_docall (traceback message handler, Ctrl-C becomes an "interrupted!" error), and
 * errors are reported as "vtl: <message>" on stderr with exit status 1. Nothing here exits
 * the process on an error.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <dnnl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "core.h"
#include "lvtl.h"
#include "host.h"

#ifndef VTL_LUA_DIR
#define VTL_LUA_DIR "/usr/local/share/vtl/lua"
#endif
#ifndef VTL_BUILD_FLAGS
#define VTL_BUILD_FLAGS "unknown"
#endif
#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

#ifdef VTL_HAVE_CUDA
int vtl_cuda_device_count(void);
#endif
/* From OpenBLAS (cblas.h), declared here so the host does not need BLAS headers. */
char *openblas_get_config(void);
int openblas_get_parallel(void);

static const char *progname = VTL_HOST_NAME;
static lua_State *globalL = NULL;
static int second_sigint_kills = 1;

/* ---- messages and protected calls (lua.c) ---- */

void vtl_host_message(const char *pname, const char *msg) {
  fflush(stdout); /* keep stdout and stderr in order when both go to one place */
  if (pname) fprintf(stderr, "%s: ", pname);
  fprintf(stderr, "%s\n", msg);
  fflush(stderr);
}

int vtl_host_report(lua_State *L, const char *pname, int status) {
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    vtl_host_message(pname, msg ? msg : "(error object is not a string)");
    lua_pop(L, 1);
  }
  return status;
}

/* Message handler: turns any error object into a string and appends a traceback. */
static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static void setsignal(int sig, void (*handler)(int)) {
  struct sigaction sa;
  sa.sa_handler = handler;
  sa.sa_flags = 0;
  sigemptyset(&sa.sa_mask);
  sigaction(sig, &sa, NULL);
}

/* Hook set by the SIGINT handler: raises the error at the next Lua instruction. */
static void lstop(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  if (lvtl_interrupt_deferred > 0) { /* raised when the critical section ends */
    lvtl_interrupt_pending = 1;
    return;
  }
  luaL_error(L, "interrupted!");
}

/* SIGINT while a chunk runs. A second Ctrl-C (say, inside a long C kernel that never
   returns to Lua) gets the default action and ends the process. */
static void laction(int sig) {
  int flag = LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT;
  if (second_sigint_kills) setsignal(sig, SIG_DFL);
  lua_sethook(globalL, lstop, flag, 1);
}

void vtl_host_set_second_sigint_kills(int on) { second_sigint_kills = on; }

int vtl_host_docall(lua_State *L, int narg, int nres) {
  int status;
  int base = lua_gettop(L) - narg;
  struct sigaction sa, saved;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  globalL = L;
  sa.sa_handler = laction;
  sa.sa_flags = 0;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &saved);
  status = lua_pcall(L, narg, nres, base);
  sigaction(SIGINT, &saved, NULL); /* the REPL's prompt handler, or the default */
  if (lua_gethook(L) == lstop) lua_sethook(L, NULL, 0, 0); /* Ctrl-C after the chunk ended */
  lua_remove(L, base);
  return status;
}

static int dochunk(lua_State *L, int status) {
  if (status == LUA_OK) status = vtl_host_docall(L, 0, 0);
  return vtl_host_report(L, progname, status);
}

static int dostring(lua_State *L, const char *s, const char *name) {
  return dochunk(L, luaL_loadbuffer(L, s, strlen(s), name));
}

/* -l mod: global mod = require "mod" */
static int dolibrary(lua_State *L, const char *name) {
  int status;
  lua_getglobal(L, "require");
  lua_pushstring(L, name);
  status = vtl_host_docall(L, 1, 1);
  if (status == LUA_OK) lua_setglobal(L, name);
  return vtl_host_report(L, progname, status);
}

/* ---- where vtl's Lua files are ---- */

static int has_vtl_init(const char *dir) {
  char path[PATH_MAX + 32];
  if ((size_t)snprintf(path, sizeof path, "%s/vtl/init.lua", dir) >= sizeof path) return 0;
  return access(path, R_OK) == 0;
}

/* The directory holding vtl/init.lua: $VTL_LUA_DIR, else <exe dir>/lua (source tree), else
   <exe dir>/../share/vtl/lua (an installed tree, wherever it was copied), else the install
   directory fixed at build time. At most two access() calls: startup stays fast. */
static const char *vtl_lua_dir(char *buf, size_t n) {
  const char *env = getenv("VTL_LUA_DIR");
  char exe[PATH_MAX];
  ssize_t len;
  if (env != NULL && env[0] != '\0') return env;
  len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len > 0) {
    char *slash;
    exe[len] = '\0';
    slash = strrchr(exe, '/');
    if (slash != NULL) {
      *slash = '\0';
      if ((size_t)snprintf(buf, n, "%s/lua", exe) < n && has_vtl_init(buf)) return buf;
      slash = strrchr(exe, '/');
      if (slash != NULL) {
        *slash = '\0';
        if ((size_t)snprintf(buf, n, "%s/share/vtl/lua", exe) < n && has_vtl_init(buf)) return buf;
      }
    }
  }
  return VTL_LUA_DIR;
}

/* package.preload["vtl.core"] and package.path so that `require "vtl"` finds the library. */
static void setup_library_path(lua_State *L, const char *dir) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_vtl_core);
  lua_setfield(L, -2, "vtl.core");
  lua_pop(L, 1);
  if (lua_getglobal(L, "package") == LUA_TTABLE) {
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir,
                    lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
    lua_setfield(L, -3, "path");
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* global vtl = require "vtl" */
static int load_vtl(lua_State *L, const char *dir) {
  int status;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "vtl");
  status = vtl_host_docall(L, 1, 1);
  if (status == LUA_OK) {
    lua_setglobal(L, "vtl");
    return 1;
  }
  lua_pushfstring(L, "cannot load the vtl library (Lua files from %s): %s", dir,
                  lua_tostring(L, -1));
  lua_remove(L, -2);
  vtl_host_report(L, progname, status);
  return 0;
}

int vtl_host_open(lua_State *L) {
  char dirbuf[PATH_MAX + 32];
  const char *dir = vtl_lua_dir(dirbuf, sizeof dirbuf);
  luaL_openlibs(L);
  setup_library_path(L, dir);
  return load_vtl(L, dir);
}

/* ---- command line ---- */

static void print_version(void) {
  printf("vtl %s (%s)\n", VTL_VERSION, LUA_RELEASE);
  fflush(stdout);
}

static void print_help(void) {
  printf("usage: vtl [options] [script [args]]\n"
         "       vtl info\n"
         "       vtl kernel --connection-file F | vtl kernel install [--user | --prefix P]\n"
         "Runs a Lua 5.4 script with the vtl library loaded as the global 'vtl'; with no\n"
         "script, starts the interactive REPL (Tab completes, Ctrl-C interrupts, Ctrl-D exits).\n"
         "Options:\n"
         "  -e stat        execute string 'stat' (may repeat; runs before the script)\n"
         "  -i             enter the REPL after running 'script' or -e\n"
         "  -l mod         require library 'mod' into global 'mod'\n"
         "  -v, --version  show version information\n"
         "  -W             turn warnings on\n"
         "  -h, --help     show this help\n"
         "  --             stop handling options\n"
         "  -              run stdin as the script and stop handling options\n"
         "Commands:\n"
         "  info           version, build flags, BLAS, threads and visible GPUs\n"
         "  kernel         the Jupyter kernel: vtl kernel --connection-file F;\n"
         "                 vtl kernel install [--user | --prefix P] writes its kernelspec\n"
         "Environment:\n"
         "  VTL_LUA_DIR    directory of vtl's Lua files (default: found next to the program)\n"
         "  VTL_HISTORY    REPL history file (default ~/.vtl_history; empty: no history)\n");
}

static void print_usage(const char *badoption) {
  fprintf(stderr, "%s: ", progname);
  if (badoption[0] == '-' && (badoption[1] == 'e' || badoption[1] == 'l') && badoption[2] == '\0')
    fprintf(stderr, "'%s' needs argument\n", badoption);
  else
    fprintf(stderr, "unrecognized option '%s'\n", badoption);
  fprintf(stderr, "usage: vtl [options] [script [args]]   (vtl --help for the options)\n");
  fflush(stderr);
}

enum { HAS_ERROR = 1, HAS_I = 2, HAS_V = 4, HAS_E = 8, HAS_L = 16, HAS_H = 32 };

/* Scans the options; *first is the index of the script (argc when there is none) or of
   the bad option. */
static int collectargs(char **argv, int *first) {
  int args = 0;
  int i;
  if (argv[0] == NULL) { *first = 0; return 0; } /* no program name, no arguments */
  for (i = 1; argv[i] != NULL; i++) {
    *first = i;
    if (argv[i][0] != '-') return args; /* the script */
    switch (argv[i][1]) {
    case '-':
      if (argv[i][2] == '\0') { *first = i + 1; return args; }
      if (strcmp(argv[i], "--version") == 0) args |= HAS_V;
      else if (strcmp(argv[i], "--help") == 0) args |= HAS_H;
      else return HAS_ERROR;
      break;
    case '\0': return args; /* '-': stdin is the script */
    case 'i':
      if (argv[i][2] != '\0') return HAS_ERROR;
      args |= HAS_I;
      break;
    case 'v':
      if (argv[i][2] != '\0') return HAS_ERROR;
      args |= HAS_V;
      break;
    case 'h':
      if (argv[i][2] != '\0') return HAS_ERROR;
      args |= HAS_H;
      break;
    case 'W':
      if (argv[i][2] != '\0') return HAS_ERROR;
      break;
    case 'e': case 'l':
      args |= argv[i][1] == 'e' ? HAS_E : HAS_L;
      if (argv[i][2] == '\0') { /* the argument is the next word */
        i++;
        if (argv[i] == NULL) return HAS_ERROR;
      }
      break;
    default: return HAS_ERROR;
    }
  }
  *first = i;
  return args;
}

/* Runs -e, -l and -W in order; stops at the first error. */
static int runargs(lua_State *L, char **argv, int n) {
  int i;
  for (i = 1; i < n; i++) {
    int option = argv[i][1];
    if (argv[i][0] != '-') break;
    switch (option) {
    case 'e': case 'l': {
      const char *extra = argv[i] + 2;
      int status;
      if (*extra == '\0') extra = argv[++i];
      status = option == 'e' ? dostring(L, extra, "=(command line)") : dolibrary(L, extra);
      if (status != LUA_OK) return 0;
      break;
    }
    case 'W': lua_warning(L, "@on", 0); break;
    default: break;
    }
  }
  return 1;
}

/* Global `arg` as lua(1) makes it: arg[0] the script, arg[1..] its arguments, negative
   indices the interpreter and its options. */
static void createargtable(lua_State *L, char **argv, int argc, int script) {
  int i, narg;
  if (script == argc) script = 0; /* no script: arg[0] is the program */
  narg = argc - (script + 1);
  lua_createtable(L, narg > 0 ? narg : 0, script + 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

static int pushargs(lua_State *L) {
  int i, n;
  if (lua_getglobal(L, "arg") != LUA_TTABLE) luaL_error(L, "'arg' is not a table");
  n = (int)luaL_len(L, -1);
  luaL_checkstack(L, n + 3, "too many arguments to script");
  for (i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -i);
  return n;
}

static int handle_script(lua_State *L, char **argv) {
  int status;
  const char *fname = argv[0];
  if (strcmp(fname, "-") == 0 && strcmp(argv[-1], "--") != 0) fname = NULL; /* stdin */
  status = luaL_loadfile(L, fname);
  if (status == LUA_OK) {
    int n = pushargs(L);
    status = vtl_host_docall(L, n, 0);
  }
  return vtl_host_report(L, progname, status);
}

/* Everything runs in here, in protected mode: argv in, a boolean (success) out. */
static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = (char **)lua_touserdata(L, 2);
  int script = argc;
  int args = collectargs(argv, &script);
  int ok = 1, repl;
  char dirbuf[PATH_MAX + 32];
  const char *dir;
  luaL_checkversion(L);
  if (args == HAS_ERROR) {
    print_usage(argv[script]);
    return 0;
  }
  if (args & HAS_H) {
    print_help();
    lua_pushboolean(L, 1);
    return 1;
  }
  if (args & HAS_V) print_version();
  repl = (args & HAS_I) || (script == argc && !(args & (HAS_E | HAS_V)));
  if (script == argc && !repl && !(args & (HAS_E | HAS_L))) { /* only -v */
    lua_pushboolean(L, 1);
    return 1;
  }
  luaL_openlibs(L);
  createargtable(L, argv, argc, script);
  lua_gc(L, LUA_GCRESTART);
  dir = vtl_lua_dir(dirbuf, sizeof dirbuf);
  setup_library_path(L, dir);
  if (!load_vtl(L, dir)) return 0;
  ok = runargs(L, argv, script);
  if (ok && script < argc) ok = handle_script(L, argv + script) == LUA_OK;
  if ((args & HAS_I) || (ok && repl)) vtl_repl(L); /* -i: the REPL even after an error */
  lua_pushboolean(L, ok);
  return 1;
}

/* ---- vtl info ---- */

static int print_info(void) {
  char dirbuf[PATH_MAX + 32];
  const char *blas = openblas_get_config();
  int par = openblas_get_parallel();
  printf("vtl %s (%s)\n", VTL_VERSION, LUA_RELEASE);
  printf("build flags: %s\n", VTL_BUILD_FLAGS);
#if defined(__clang__)
  printf("compiler: clang %s\n", __clang_version__);
#elif defined(__GNUC__)
  printf("compiler: gcc %s\n", __VERSION__);
#endif
  printf("lua files: %s\n", vtl_lua_dir(dirbuf, sizeof dirbuf));
  printf("BLAS: %s (%s threading)\n", blas ? blas : "OpenBLAS",
         par == 2 ? "OpenMP" : par == 1 ? "pthreads" : "no");
  {
    const dnnl_version_t *v = dnnl_version();
    printf("oneDNN: %d.%d.%d (convolutions)\n", v->major, v->minor, v->patch);
  }
  printf("threads: %d\n", vtl_get_num_threads());
#ifdef VTL_HAVE_CUDA
  {
    int n = vtl_cuda_device_count();
    printf("CUDA: built, %d GPU%s visible\n", n, n == 1 ? "" : "s");
  }
#else
  printf("CUDA: not built (CPU-only build)\n");
#endif
  fflush(stdout);
  return ferror(stdout) ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* The OpenMP runtime reads its settings when it loads, before main. Its default spin
   (300,000 rounds before a waiting thread sleeps) makes a thread that just left an OpenBLAS
   region answer the next vtl region late: a GEMM followed by an elementwise op took 0.7 ms
   longer on 2 cores, and a ViT-S forward ran 3x slower. Unless the user chose a wait policy,
   the host restarts itself once with a short spin. */
static void tune_openmp(char **argv) {
  if (getenv("GOMP_SPINCOUNT") || getenv("OMP_WAIT_POLICY") || getenv("VTL_NO_OMP_TUNING")) return;
  if (setenv("GOMP_SPINCOUNT", "10000", 1) != 0) return;
  execv("/proc/self/exe", argv);
  unsetenv("GOMP_SPINCOUNT"); /* exec failed: carry on as we are */
}

int main(int argc, char **argv) {
  int status, result;
  lua_State *L;
  tune_openmp(argv);
  if (argc >= 2 && strcmp(argv[1], "info") == 0) return print_info();
  if (argc >= 2 && strcmp(argv[1], "kernel") == 0) return vtl_kernel_main(argc - 1, argv + 1);
  L = luaL_newstate();
  if (L == NULL) {
    vtl_host_message(progname, "cannot create state: not enough memory");
    return EXIT_FAILURE;
  }
  lua_gc(L, LUA_GCSTOP); /* no collections while the state is being built */
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  status = lua_pcall(L, 2, 1, 0);
  result = lua_toboolean(L, -1);
  vtl_host_report(L, progname, status);
  lua_close(L);
  return (result && status == LUA_OK) ? EXIT_SUCCESS : EXIT_FAILURE;
}
