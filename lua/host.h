/*
 * The vtl host program: the script runner (host.c) and the interactive REPL (repl.c).
 * Shaped after Lua's own lua.c: every chunk runs through vtl_host_docall, which adds a
 * traceback to errors and turns Ctrl-C into an "interrupted!" Lua error.
 */
#ifndef VTL_HOST_H
#define VTL_HOST_H
#include <lua.h>

#define VTL_HOST_NAME "vtl"

/* Prints "pname: msg" (or msg alone when pname is NULL) to stderr. */
void vtl_host_message(const char *pname, const char *msg);
/* When status is not LUA_OK, prints the error on top of the stack and pops it. */
int vtl_host_report(lua_State *L, const char *pname, int status);
/* Calls the function below narg arguments with a traceback message handler and with
   SIGINT turned into an "interrupted!" error (the caller's SIGINT handler is put back
   after); like lua_pcall otherwise. */
int vtl_host_docall(lua_State *L, int narg, int nres);

/* Runs the read-eval-print loop on stdin until end of input. Uses GNU readline (history,
   completion) when stdin is a terminal, plain line reading otherwise. */
void vtl_repl(lua_State *L);

#endif
