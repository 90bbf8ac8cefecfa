/* Per-thread error buffer of the C core. */
#include <stdarg.h>
#include <stdio.h>
#include "core.h"

static _Thread_local char err_msg[1024];
static _Thread_local vtl_status err_status;

vtl_status vtl_error_set(vtl_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err_msg, sizeof err_msg, fmt, ap);
  va_end(ap);
  err_status = st;
  return st;
}

const char *vtl_error_message(void) { return err_msg[0] ? err_msg : "unknown error"; }
vtl_status vtl_error_status(void) { return err_status; }
