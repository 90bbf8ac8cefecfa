/* Messages carrying Lua values between Lua states (see lship.c). */
#ifndef LSHIP_H
#define LSHIP_H
#include <lua.h>
#include "core.h"

typedef struct {
  char *buf;
  size_t len, cap;
  vtl_tensor **tensors; /* one reference each, released by lvtl_msg_free */
  int ntensors, captensors;
} lvtl_msg;

/* Encodes the value at idx into m (initialised here). Returns 0, or -1 with a message in err
   naming where in the value the problem was (m is then freed). Never raises. */
int lvtl_ship_encode(lua_State *L, int idx, lvtl_msg *m, char *err, size_t errn);
/* Pushes the decoded value (status LUA_OK) or an error message (another status). */
int lvtl_ship_decode(lua_State *L, const lvtl_msg *m);
void lvtl_msg_free(lvtl_msg *m);
void lvtl_open_ship(lua_State *L);
#endif
