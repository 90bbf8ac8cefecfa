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

/* Whether a second SIGINT during one chunk ends the process (the default, as lua.c: a chunk
   stuck in a long C kernel can still be stopped). The Jupyter kernel turns it off: there an
   interrupt only ever stops the running cell. */
void vtl_host_set_second_sigint_kills(int on);
/* Loads the vtl library into a fresh state as the host does: standard libraries, the
   library path, global `vtl`. Returns 1, or 0 after reporting the error. */
int vtl_host_open(lua_State *L);

/* Runs the read-eval-print loop on stdin until end of input. Uses GNU readline (history,
   completion) when stdin is a terminal, plain line reading otherwise. */
void vtl_repl(lua_State *L);

/* The REPL's pieces, shared with the Jupyter kernel. */
/* Characters that end the word being completed ('.' and ':' do not: `a.b:c` is one word). */
#define VTL_REPL_WORD_BREAKS " \t\n\"\\'`@$><=;|&{}()[],+-*/%^#~"
enum { VTL_CHUNK_COMPLETE, VTL_CHUNK_INCOMPLETE, VTL_CHUNK_INVALID };
/* Whether code is a complete chunk (or expression), one that more lines could complete, or
   one with a syntax error; leaves the stack as it was. */
int vtl_repl_chunk_status(lua_State *L, const char *code, size_t len, const char *name);
/* Pushes the completions of text (`a.b.c`, `x:m`, a global's prefix) as an array of whole
   words and returns how many; returns -1 and pushes nothing when text cannot be completed. */
int vtl_repl_completions(lua_State *L, const char *text);
/* Replaces the values above base with one string, written as print writes them
   (tab-separated, through __tostring). Returns the status; on an error leaves the message. */
int vtl_repl_results_text(lua_State *L, int base);

/* The Jupyter kernel: `vtl kernel --connection-file F` and `vtl kernel install`. argv[0] is
   "kernel". Returns the process exit status. */
int vtl_kernel_main(int argc, char **argv);

#endif
