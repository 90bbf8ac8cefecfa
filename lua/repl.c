/*
 * The vtl REPL: read a chunk, run it, print what it returns, repeat until end of input.
 *
 * As in lua.c: a line is first tried as `return <line>;` so expressions print their values;
 * a chunk whose syntax error ends at "<eof>" is incomplete and waits for more lines. Errors
 * print with a traceback and the loop goes on. When stdin is a terminal, lines come from GNU
 * readline with persistent history and Tab completion of globals, fields (`a.b.c`) and
 * methods (`x:m`); otherwise lines are read plainly and no prompt is printed.
 *
 * Ctrl-C while a chunk runs raises "interrupted!" in it (vtl_host_docall); Ctrl-C at the
 * prompt discards the pending input. Ctrl-D (end of input) ends the loop.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>

#include <readline/readline.h>
#include <readline/history.h>

#include <lua.h>
#include <lauxlib.h>

#include "core.h"
#include "host.h"

#define REPL_PROMPT "> "
#define REPL_PROMPT2 ">> "
#define REPL_CHUNKNAME "=stdin"
#define REPL_HISTORY_MAX 1000
#define REPL_EOFMARK "<eof>"

enum { READ_EOF = -1, READ_INTERRUPTED = -2 };

static lua_State *replL;        /* the state that completion looks into */
static int use_readline;        /* stdin is a terminal */
static char *history_file;      /* NULL: history is not kept across sessions */
static volatile sig_atomic_t prompt_interrupted;

static void on_prompt_sigint(int sig) {
  (void)sig;
  prompt_interrupted = 1;
}

/* ---- reading lines ---- */

static char *tty_line;
static int tty_line_done;

static void on_readline_line(char *line) {
  tty_line = line;
  tty_line_done = 1;
  rl_callback_handler_remove();
}

/* One line from readline's callback interface, so that a SIGINT at the prompt can be
   handled here (pselect sees EINTR) instead of inside readline. Returns a malloc'd line,
   or NULL at end of input or (with *interrupted set) on Ctrl-C. */
static char *read_tty_line(const char *prompt, int *interrupted) {
  int fd = fileno(rl_instream != NULL ? rl_instream : stdin);
  sigset_t sigint_only, saved;
  tty_line = NULL;
  tty_line_done = 0;
  rl_callback_handler_install(prompt, on_readline_line);
  sigemptyset(&sigint_only);
  sigaddset(&sigint_only, SIGINT);
  while (!tty_line_done) {
    fd_set fds;
    int r = 0;
    /* SIGINT stays blocked between the flag test and the wait, so a Ctrl-C that comes
       just before the wait still ends it */
    sigprocmask(SIG_BLOCK, &sigint_only, &saved);
    if (!prompt_interrupted && !rl_pending_input) {
      FD_ZERO(&fds);
      FD_SET(fd, &fds);
      r = pselect(fd + 1, &fds, NULL, NULL, NULL, &saved);
    }
    sigprocmask(SIG_SETMASK, &saved, NULL);
    if (prompt_interrupted) {
      prompt_interrupted = 0;
      rl_free_line_state();
      rl_callback_sigcleanup();
      rl_cleanup_after_signal();
      rl_callback_handler_remove();
      fputs("\n", rl_outstream != NULL ? rl_outstream : stdout);
      *interrupted = 1;
      return NULL;
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      rl_callback_handler_remove();
      return NULL;
    }
    rl_callback_read_char();
  }
  return tty_line;
}

/* One line from a pipe or file, without the newline; NULL at end of input or on Ctrl-C. */
static char *read_plain_line(int *interrupted) {
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  errno = 0;
  n = getline(&line, &cap, stdin);
  if (n < 0) {
    free(line);
    if (prompt_interrupted || errno == EINTR) {
      clearerr(stdin);
      *interrupted = 1;
    }
    return NULL;
  }
  while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
  return line;
}

/* Pushes the prompt: _PROMPT / _PROMPT2 when set (as lua.c), else the default. */
static const char *push_prompt(lua_State *L, int firstline) {
  const char *p;
  lua_getglobal(L, firstline ? "_PROMPT" : "_PROMPT2");
  if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER) return lua_tostring(L, -1);
  lua_pop(L, 1);
  p = firstline ? REPL_PROMPT : REPL_PROMPT2;
  lua_pushstring(L, p);
  return lua_tostring(L, -1);
}

/* Reads a line and pushes it: 1 done, 0 end of input, -1 Ctrl-C at the prompt. */
static int pushline(lua_State *L, int firstline) {
  int interrupted = 0;
  char *line;
  const char *prompt = push_prompt(L, firstline);
  prompt_interrupted = 0;
  line = use_readline ? read_tty_line(prompt, &interrupted) : read_plain_line(&interrupted);
  lua_pop(L, 1); /* prompt */
  if (line == NULL) return interrupted ? -1 : 0;
  lua_pushstring(L, line);
  free(line);
  return 1;
}

/* ---- history ---- */

static void history_open(void) {
  const char *env = getenv("VTL_HISTORY");
  using_history();
  stifle_history(REPL_HISTORY_MAX);
  if (env != NULL) {
    if (env[0] == '\0') return; /* VTL_HISTORY= turns persistence off */
    history_file = strdup(env);
  } else {
    const char *home = getenv("HOME");
    size_t n;
    if (home == NULL || home[0] == '\0') return;
    n = strlen(home) + sizeof "/.vtl_history";
    history_file = malloc(n);
    if (history_file != NULL) snprintf(history_file, n, "%s/.vtl_history", home);
  }
  if (history_file != NULL) read_history(history_file); /* a missing file is fine */
}

static void history_save(const char *chunk) {
  HIST_ENTRY *last;
  const char *p = chunk;
  if (!use_readline) return;
  while (*p == ' ' || *p == '\t' || *p == '\n') p++;
  if (*p == '\0') return;
  last = history_length > 0 ? history_get(history_base + history_length - 1) : NULL;
  if (last != NULL && strcmp(last->line, chunk) == 0) return;
  add_history(chunk);
  /* Appended at once, so a session that ends by a signal keeps its history. */
  if (history_file != NULL && append_history(1, history_file) != 0) write_history(history_file);
}

static void history_close(void) {
  if (history_file != NULL) history_truncate_file(history_file, REPL_HISTORY_MAX);
  free(history_file);
  history_file = NULL;
}

/* ---- completion ---- */

static const char *const lua_keywords[] = {
  "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if",
  "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while", NULL
};

static int is_ident(const char *s, size_t n) {
  size_t i;
  if (n == 0 || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') || s[0] == '_'))
    return 0;
  for (i = 1; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
      return 0;
  }
  return 1;
}

#define COMPLETE_MAX_DEPTH 16

/* set[key] = true for the identifier keys of the table at tbl starting with partial.
   Keys beginning with "__" are left out unless partial asks for them. */
static void add_keys(lua_State *L, int set, int tbl, const char *partial, size_t plen, int only_fn) {
  int hidden = !(plen >= 2 && partial[0] == '_' && partial[1] == '_');
  tbl = lua_absindex(L, tbl);
  lua_pushnil(L);
  while (lua_next(L, tbl)) {
    if (lua_type(L, -2) == LUA_TSTRING && (!only_fn || lua_type(L, -1) == LUA_TFUNCTION)) {
      size_t klen;
      const char *k = lua_tolstring(L, -2, &klen);
      if (is_ident(k, klen) && klen >= plen && memcmp(k, partial, plen) == 0 &&
          !(hidden && klen >= 2 && k[0] == '_' && k[1] == '_')) {
        lua_pushvalue(L, -2);
        lua_pushboolean(L, 1);
        lua_rawset(L, set);
      }
    }
    lua_pop(L, 1);
  }
}

/* With the metatable on top (above the current value): replaces both with mt.__index when
   that is a table and returns 0; otherwise pops the metatable and returns 1. */
static int follow_index(lua_State *L) {
  lua_pushliteral(L, "__index");
  lua_rawget(L, -2);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 2);
    return 1;
  }
  lua_remove(L, -2); /* metatable */
  lua_remove(L, -2); /* previous value */
  return 0;
}

/* With a metatable on top: the keys of its `name` table, when it has one. */
static void add_meta_keys(lua_State *L, int set, const char *name, const char *partial, size_t plen) {
  lua_pushstring(L, name);
  lua_rawget(L, -2);
  if (lua_istable(L, -1)) add_keys(L, set, -1, partial, plen, 0);
  lua_pop(L, 1);
}

/* Keys reachable with `.` from the value at idx: its own (if a table), then those of each
   table found by following metatable __index tables, and the names a metatable lists in
   __methods and __getters (for userdata whose __index is a function). Reads raw: runs no
   Lua code. */
static void add_field_keys(lua_State *L, int set, int idx, const char *partial, size_t plen) {
  int depth;
  lua_pushvalue(L, idx);
  for (depth = 0; depth < COMPLETE_MAX_DEPTH; depth++) {
    if (lua_istable(L, -1)) add_keys(L, set, -1, partial, plen, 0);
    if (!lua_getmetatable(L, -1)) break;
    add_meta_keys(L, set, "__methods", partial, plen);
    add_meta_keys(L, set, "__getters", partial, plen);
    if (follow_index(L)) break;
  }
  lua_pop(L, 1);
}

/* Methods for `x:` — the keys of the metatable's __methods table when there is one, else
   the keys reachable through __index tables; for a table also its own functions. */
static void add_method_keys(lua_State *L, int set, int idx, const char *partial, size_t plen) {
  idx = lua_absindex(L, idx);
  if (lua_istable(L, idx)) add_keys(L, set, idx, partial, plen, 1);
  if (lua_getmetatable(L, idx)) {
    lua_pushliteral(L, "__methods");
    lua_rawget(L, -2);
    if (lua_istable(L, -1)) {
      add_keys(L, set, -1, partial, plen, 0);
      lua_pop(L, 2);
      return;
    }
    lua_pop(L, 1);
    lua_pushliteral(L, "__index");
    lua_rawget(L, -2);
    if (lua_istable(L, -1)) add_field_keys(L, set, -1, partial, plen);
    lua_pop(L, 2);
  }
}

/* Pushes field k of the value on top, in place of it: a raw lookup that follows __index
   tables (never calls a function), nil when absent. */
static void lookup_field(lua_State *L, const char *k, size_t klen) {
  int depth;
  for (depth = 0; depth < COMPLETE_MAX_DEPTH; depth++) {
    if (lua_istable(L, -1)) {
      lua_pushlstring(L, k, klen);
      lua_rawget(L, -2);
      if (!lua_isnil(L, -1)) {
        lua_remove(L, -2);
        return;
      }
      lua_pop(L, 1);
    }
    if (!lua_getmetatable(L, -1)) break;
    if (follow_index(L)) break;
  }
  lua_pop(L, 1);
  lua_pushnil(L);
}

/* lua_CFunction: completions of the text (a light userdata string) as an array of full
   words. Runs under lua_pcall so nothing can escape into readline. */
static int collect_completions(lua_State *L) {
  const char *text = (const char *)lua_touserdata(L, 1);
  const char *seg, *sep = NULL, *p;
  const char *partial;
  size_t plen;
  int set, out, n = 0;
  lua_settop(L, 0);
  lua_newtable(L);
  set = lua_gettop(L);
  for (p = text; *p; p++)
    if (*p == '.' || *p == ':') sep = p;
  lua_pushglobaltable(L);
  if (sep == NULL) {
    int i;
    partial = text;
    plen = strlen(text);
    add_field_keys(L, set, -1, partial, plen);
    for (i = 0; lua_keywords[i] != NULL; i++) {
      if (strncmp(lua_keywords[i], partial, plen) == 0) {
        lua_pushboolean(L, 1);
        lua_setfield(L, set, lua_keywords[i]);
      }
    }
  } else {
    /* walk the path before the last separator: only '.' and identifiers */
    seg = text;
    for (p = text; p <= sep; p++) {
      if (*p == '.' || *p == ':') {
        if ((*p == ':' && p != sep) || !is_ident(seg, (size_t)(p - seg))) return 0;
        lookup_field(L, seg, (size_t)(p - seg));
        if (lua_isnil(L, -1)) return 0;
        seg = p + 1;
      }
    }
    partial = sep + 1;
    plen = strlen(partial);
    if (*sep == ':') add_method_keys(L, set, -1, partial, plen);
    else add_field_keys(L, set, -1, partial, plen);
  }
  lua_newtable(L);
  out = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, set)) {
    lua_pop(L, 1);
    lua_pushlstring(L, text, (size_t)(partial - text));
    lua_pushvalue(L, -2);
    lua_concat(L, 2);
    lua_rawseti(L, out, ++n);
  }
  return 1;
}

static char **completion_list;
static size_t completion_count, completion_next;

static char *completion_generator(const char *text, int state) {
  (void)text;
  if (state == 0) completion_next = 0;
  if (completion_next < completion_count) {
    char *s = completion_list[completion_next];
    completion_list[completion_next++] = NULL; /* readline owns it now */
    return s;
  }
  return NULL;
}

static void completion_list_free(void) {
  size_t i;
  for (i = 0; i < completion_count; i++) free(completion_list[i]);
  free(completion_list);
  completion_list = NULL;
  completion_count = completion_next = 0;
}

int vtl_repl_completions(lua_State *L, const char *text) {
  int top = lua_gettop(L);
  if (!lua_checkstack(L, 4)) return -1;
  lua_pushcfunction(L, collect_completions);
  lua_pushlightuserdata(L, (void *)text);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_istable(L, -1)) {
    lua_settop(L, top);
    return -1;
  }
  return (int)lua_rawlen(L, -1);
}

static char **repl_complete(const char *text, int start, int end) {
  lua_State *L = replL;
  int top, n;
  size_t i;
  char **matches = NULL;
  (void)start;
  (void)end;
  rl_attempted_completion_over = 1; /* never fall back to file names */
  rl_completion_append_character = '\0';
  if (L == NULL) return NULL;
  top = lua_gettop(L);
  n = vtl_repl_completions(L, text);
  if (n < 0) return NULL;
  completion_list_free();
  completion_list = n ? calloc((size_t)n, sizeof *completion_list) : NULL;
  if (completion_list != NULL) {
    for (i = 0; i < (size_t)n; i++) {
      const char *s;
      lua_rawgeti(L, -1, (lua_Integer)i + 1);
      s = lua_tostring(L, -1);
      if (s != NULL && (completion_list[completion_count] = strdup(s)) != NULL) completion_count++;
      lua_pop(L, 1);
    }
  }
  lua_settop(L, top);
  if (completion_count > 0) matches = rl_completion_matches(text, completion_generator);
  completion_list_free();
  return matches;
}

/* Lists candidates by their last part (`zeros`, not `vtl.zeros`), as a shell lists file
   names without their directory. */
static void display_matches(char **matches, int n, int maxlen) {
  char **shown;
  const char *last;
  size_t cut = 0;
  int i, max = 0;
  (void)maxlen;
  if (n < 1) return;
  last = strpbrk(matches[1], ".:");
  while (last != NULL) {
    cut = (size_t)(last - matches[1]) + 1;
    last = strpbrk(last + 1, ".:");
  }
  shown = malloc(((size_t)n + 2) * sizeof *shown);
  if (shown == NULL) {
    rl_display_match_list(matches, n, maxlen);
  } else {
    for (i = 0; i <= n; i++) {
      size_t len = strlen(matches[i]);
      shown[i] = matches[i] + (len >= cut ? cut : len);
      if (i > 0 && (int)strlen(shown[i]) > max) max = (int)strlen(shown[i]);
    }
    shown[n + 1] = NULL;
    rl_display_match_list(shown, n, max);
    free(shown);
  }
  rl_forced_update_display();
}

static void readline_open(void) {
  /* '.' and ':' are not word breaks, so the text to complete is a whole `a.b.c:m`. */
  static char breaks[] = VTL_REPL_WORD_BREAKS;
  rl_readline_name = "vtl";
  rl_catch_signals = 0; /* SIGINT is ours: see read_tty_line */
  rl_attempted_completion_function = repl_complete;
  rl_completion_display_matches_hook = display_matches;
  rl_completer_word_break_characters = breaks;
  history_open();
}

/* ---- read, evaluate, print ---- */

/* A syntax error that ends at "<eof>": the chunk may still be completed by more lines. */
static int incomplete(lua_State *L, int status) {
  if (status == LUA_ERRSYNTAX) {
    size_t lmsg;
    const char *msg = lua_tolstring(L, -1, &lmsg);
    size_t mlen = sizeof REPL_EOFMARK - 1;
    if (msg != NULL && lmsg >= mlen && strcmp(msg + lmsg - mlen, REPL_EOFMARK) == 0) {
      lua_pop(L, 1);
      return 1;
    }
  }
  return 0;
}

/* Compiles `return <chunk>;` over the chunk on top; on success pushes the function. */
static int try_return(lua_State *L) {
  const char *chunk = lua_tostring(L, -1);
  const char *retline = lua_pushfstring(L, "return %s;", chunk);
  int status = luaL_loadbuffer(L, retline, strlen(retline), REPL_CHUNKNAME);
  if (status == LUA_OK) lua_remove(L, -2); /* the modified chunk */
  else lua_pop(L, 2);
  return status;
}

/* Reads a complete chunk and leaves its compiled function (LUA_OK) or an error message on
   the stack; READ_EOF / READ_INTERRUPTED leave nothing. */
static int loadline(lua_State *L) {
  int status, r = pushline(L, 1);
  if (r == 0) return READ_EOF;
  if (r < 0) return READ_INTERRUPTED;
  for (;;) {
    size_t len;
    const char *chunk;
    if ((status = try_return(L)) == LUA_OK) break;
    chunk = lua_tolstring(L, -1, &len);
    status = luaL_loadbuffer(L, chunk, len, REPL_CHUNKNAME);
    if (!incomplete(L, status)) break;
    r = pushline(L, 0);
    if (r < 0) {
      lua_pop(L, 1);
      return READ_INTERRUPTED;
    }
    if (r == 0) { /* end of input inside a chunk: report why it is incomplete */
      chunk = lua_tolstring(L, -1, &len);
      status = luaL_loadbuffer(L, chunk, len, REPL_CHUNKNAME);
      break;
    }
    lua_pushliteral(L, "\n");
    lua_insert(L, -2);
    lua_concat(L, 3);
  }
  history_save(lua_tostring(L, -2));
  lua_remove(L, -2); /* the chunk text */
  return status;
}

int vtl_repl_chunk_status(lua_State *L, const char *code, size_t len, const char *name) {
  int status;
  const char *retline = lua_pushfstring(L, "return %s;", code);
  status = luaL_loadbuffer(L, retline, strlen(retline), name);
  lua_pop(L, 2);
  if (status == LUA_OK) return VTL_CHUNK_COMPLETE;
  status = luaL_loadbuffer(L, code, len, name);
  if (incomplete(L, status)) return VTL_CHUNK_INCOMPLETE;
  lua_pop(L, 1);
  return status == LUA_OK ? VTL_CHUNK_COMPLETE : VTL_CHUNK_INVALID;
}

/* lua_CFunction: the values on the stack as print writes them (luaL_tolstring, tab-separated). */
static int results_text(lua_State *L) {
  int i, n = lua_gettop(L);
  luaL_Buffer b;
  luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
  luaL_buffinit(L, &b);
  for (i = 1; i <= n; i++) {
    if (i > 1) luaL_addchar(&b, '\t');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  return 1;
}

int vtl_repl_results_text(lua_State *L, int base) {
  int status, n = lua_gettop(L) - base;
  lua_pushcfunction(L, results_text);
  lua_insert(L, base + 1);
  status = vtl_host_docall(L, n, 1);
  if (status != LUA_OK) {
    lua_pushfstring(L, "error calling 'print' (%s)", lua_tostring(L, -1));
    lua_remove(L, -2);
  }
  return status;
}

/* Prints the values above base as the global print would. */
static void print_results(lua_State *L, int base) {
  if (lua_gettop(L) > base) {
    int status = vtl_repl_results_text(L, base);
    if (status == LUA_OK) {
      size_t len;
      const char *s = lua_tolstring(L, -1, &len);
      fwrite(s, 1, len, stdout);
      fputs("\n", stdout);
      lua_pop(L, 1);
    } else {
      vtl_host_report(L, NULL, status);
    }
  }
}

void vtl_repl(lua_State *L) {
  int base = lua_gettop(L);
  struct sigaction sa, saved;
  replL = L;
  /* Between chunks a Ctrl-C only discards input; vtl_host_docall swaps in its own handler
     while a chunk runs and puts this one back after. */
  sa.sa_handler = on_prompt_sigint;
  sa.sa_flags = 0;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &saved);
  use_readline = isatty(STDIN_FILENO);
  if (use_readline) {
    readline_open();
    printf("vtl %s (%s). The library is the global 'vtl'; Tab completes, Ctrl-D exits.\n",
           VTL_VERSION, LUA_RELEASE);
    fflush(stdout);
  }
  for (;;) {
    int status;
    lua_settop(L, base);
    status = loadline(L);
    if (status == READ_EOF) break;
    if (status == READ_INTERRUPTED) continue;
    if (status == LUA_OK) status = vtl_host_docall(L, 0, LUA_MULTRET);
    if (status == LUA_OK) print_results(L, base);
    else vtl_host_report(L, NULL, status);
    fflush(stdout);
  }
  lua_settop(L, base);
  if (use_readline) {
    fputs("\n", stdout);
    history_close();
  }
  fflush(stdout);
  sigaction(SIGINT, &saved, NULL);
  replL = NULL;
}
