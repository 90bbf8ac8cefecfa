/*
 * The vtl Jupyter kernel: the Jupyter messaging protocol (v5.3) over libzmq, in C.
 *
 *   vtl kernel --connection-file F           serve the kernel described by F
 *   vtl kernel install [--user | --prefix P] write the kernelspec (kernels/vtl/kernel.json)
 *
 * One Lua state, made as the host makes it, runs every cell. Sockets: shell, control and
 * stdin (ROUTER) belong to the main thread, which runs the cells; iopub (PUB) belongs to an
 * output thread; the heartbeat (REP) echoes on its own thread. The main thread hands its
 * iopub messages to the output thread over an inproc socket; the output thread also reads
 * the pipes that stand in for fds 1 and 2, so everything a cell writes (print, io.write,
 * C code) becomes `stream` messages. Before forwarding a message the output thread drains
 * the pipes, and the main thread flushes stdio before sending, so output and results keep
 * their order.
 *
 * Every message is signed with HMAC-SHA256 over its four JSON frames (OpenSSL). A message
 * whose signature does not match is dropped and logged on the kernel's own stderr.
 *
 * A cell runs through vtl_host_docall, so an interrupt (SIGINT: the kernelspec asks for
 * interrupt_mode "signal") stops it with the same "interrupted!" error as Ctrl-C in the
 * host; between cells SIGINT is ignored. Its value is shown as the REPL shows it: the cell
 * is first tried as `return <cell>;`, then its trailing lines as an expression after the
 * statements before them; the values become an execute_result with print's text.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <zmq.h>

#include <lua.h>
#include <lauxlib.h>

#include "core.h"
#include "host.h"

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

#define KERNEL_PROTOCOL "5.3"
#define KERNEL_DELIM "<IDS|MSG>"
#define KERNEL_MAX_FRAMES 64
#define KERNEL_MAX_KEY 256
#define KERNEL_SPLIT_LINES 32 /* trailing lines tried as the cell's value */
#define KERNEL_JUPYTER_MODULE "vtl.jupyter"

typedef struct {
  void *ctx;
  void *shell, *control, *stdin_sock, *hb, *iopub; /* iopub: owned by the output thread */
  void *to_iopub;                                  /* main thread's end of the inproc pipe */
  unsigned char key[KERNEL_MAX_KEY];
  size_t keylen;
  EVP_MAC *hmac;  /* OpenSSL's HMAC, fetched once */
  char session[40];
  FILE *log;      /* the kernel's own stderr, kept before fd 2 becomes a pipe */
  int out_fd[2];  /* pipes read by the output thread: fd 1 and fd 2 of the process */
  int err_fd[2];
  char *parent;   /* header of the request being handled (main thread) */
  lua_State *L;
  int execution_count;
  int dropped;    /* messages dropped for a bad signature */
  int iopub_sent, iopub_forwarded; /* messages handed to the output thread / sent on by it (atomic) */
} Kernel;

/* A received message: frames[0..nids) are identities, then the delimiter, the signature and
   header, parent, metadata, content. */
typedef struct {
  zmq_msg_t frames[KERNEL_MAX_FRAMES];
  int nframes, nids;
  cJSON *header, *content;
  const char *msg_type;
} Msg;

static Kernel *the_kernel; /* for the Lua functions: one kernel per process */

static void klog(Kernel *k, const char *fmt, ...) {
  va_list ap;
  FILE *f = k != NULL && k->log != NULL ? k->log : stderr;
  fputs("vtl kernel: ", f);
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fputc('\n', f);
  fflush(f);
}

/* ---- signing ---- */

/* hex HMAC-SHA256 of the parts (65 bytes with the NUL); "" when there is no key. */
static void sign_parts(const Kernel *k, const void *const *parts, const size_t *lens, int n, char out[65]) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  size_t maclen = 0, i;
  EVP_MAC_CTX *h;
  OSSL_PARAM params[2];
  static const char hex[] = "0123456789abcdef";
  out[0] = '\0';
  if (k->keylen == 0 || k->hmac == NULL) return;
  h = EVP_MAC_CTX_new(k->hmac);
  if (h == NULL) return;
  params[0] = OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0);
  params[1] = OSSL_PARAM_construct_end();
  if (EVP_MAC_init(h, k->key, k->keylen, params) == 1) {
    int j, ok = 1;
    for (j = 0; j < n && ok; j++) ok = EVP_MAC_update(h, parts[j], lens[j]) == 1;
    if (ok && EVP_MAC_final(h, mac, &maclen, sizeof mac) == 1) {
      for (i = 0; i < maclen && i < 32; i++) {
        out[2 * i] = hex[mac[i] >> 4];
        out[2 * i + 1] = hex[mac[i] & 15];
      }
      out[2 * i] = '\0';
    }
  }
  EVP_MAC_CTX_free(h);
}

/* ---- building and sending messages (any thread: reads only the key and session) ---- */

static void now_iso(char *buf, size_t n) {
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  snprintf(buf, n, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
           tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000);
}

static char *make_header(const Kernel *k, const char *msg_type) {
  static unsigned long counter;
  char id[96], date[64];
  cJSON *h = cJSON_CreateObject();
  char *s;
  if (h == NULL) return NULL;
  snprintf(id, sizeof id, "%s_%ld_%lu", k->session, (long)getpid(), __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));
  now_iso(date, sizeof date);
  cJSON_AddStringToObject(h, "msg_id", id);
  cJSON_AddStringToObject(h, "session", k->session);
  cJSON_AddStringToObject(h, "username", "vtl");
  cJSON_AddStringToObject(h, "date", date);
  cJSON_AddStringToObject(h, "msg_type", msg_type);
  cJSON_AddStringToObject(h, "version", KERNEL_PROTOCOL);
  s = cJSON_PrintUnformatted(h);
  cJSON_Delete(h);
  return s;
}

static int send_frame(void *sock, const void *data, size_t len, int more) {
  return zmq_send(sock, data, len, more ? ZMQ_SNDMORE : 0) < 0 ? -1 : 0;
}

/* Sends [ids..., delimiter, signature, header, parent, metadata, content] on sock. ids are
   the request's identity frames (router sockets) or a topic (iopub), n of them. */
static int send_message(const Kernel *k, void *sock, zmq_msg_t *ids, int nids, const char *topic,
                        const char *msg_type, const char *parent, const char *content) {
  char sig[65];
  char *header = make_header(k, msg_type);
  const char *meta = "{}";
  const void *parts[4];
  size_t lens[4];
  int i, rc = 0;
  if (header == NULL) return -1;
  if (parent == NULL) parent = "{}";
  parts[0] = header; parts[1] = parent; parts[2] = meta; parts[3] = content;
  for (i = 0; i < 4; i++) lens[i] = strlen(parts[i]);
  sign_parts(k, parts, lens, 4, sig);
  for (i = 0; i < nids && rc == 0; i++) rc = send_frame(sock, zmq_msg_data(&ids[i]), zmq_msg_size(&ids[i]), 1);
  if (topic != NULL && rc == 0) rc = send_frame(sock, topic, strlen(topic), 1);
  if (rc == 0) rc = send_frame(sock, KERNEL_DELIM, sizeof KERNEL_DELIM - 1, 1);
  if (rc == 0) rc = send_frame(sock, sig, strlen(sig), 1);
  for (i = 0; i < 4 && rc == 0; i++) rc = send_frame(sock, parts[i], lens[i], i < 3);
  free(header);
  return rc;
}

/* ---- the output thread: iopub ---- */

/* Length of the prefix of buf[0..n) that ends on a whole UTF-8 character; bytes that are not
   UTF-8 are replaced with '?' in place, so the text is always valid JSON string content. */
static size_t utf8_prefix(char *buf, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned char c = (unsigned char)buf[i];
    size_t len, j;
    if (c < 0x80) { i++; continue; }
    len = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (len == 0 || c == 0xC0 || c == 0xC1 || c > 0xF4) { buf[i++] = '?'; continue; }
    if (i + len > n) { /* cut short: keep for the next read unless it is already wrong */
      for (j = 1; i + j < n; j++)
        if (((unsigned char)buf[i + j] & 0xC0) != 0x80) break;
      if (i + j == n) return i;
      buf[i++] = '?';
      continue;
    }
    for (j = 1; j < len; j++)
      if (((unsigned char)buf[i + j] & 0xC0) != 0x80) break;
    if (j < len) { buf[i++] = '?'; continue; }
    i += len;
  }
  return n;
}

typedef struct {
  int fd;
  const char *name;
  char buf[65536];
  size_t have;
} Stream;

/* Sends what the pipe holds as one `stream` message (whole characters only). Returns 1 when
   the pipe had data. */
static int drain_stream(Kernel *k, Stream *s, const char *parent) {
  int got = 0;
  for (;;) {
    ssize_t r = read(s->fd, s->buf + s->have, sizeof s->buf - 1 - s->have);
    if (r > 0) {
      got = 1;
      s->have += (size_t)r;
      if (s->have < sizeof s->buf - 1) continue;
    } else if (r < 0 && errno == EINTR) {
      continue;
    }
    if (s->have > 0) {
      size_t n = utf8_prefix(s->buf, s->have);
      if (n > 0) {
        cJSON *c = cJSON_CreateObject();
        char *text = malloc(n + 1), *json = NULL;
        if (c != NULL && text != NULL) {
          memcpy(text, s->buf, n);
          text[n] = '\0';
          cJSON_AddStringToObject(c, "name", s->name);
          cJSON_AddStringToObject(c, "text", text);
          json = cJSON_PrintUnformatted(c);
        }
        if (json != NULL) send_message(k, k->iopub, NULL, 0, "stream", "stream", parent, json);
        free(json);
        free(text);
        cJSON_Delete(c);
        memmove(s->buf, s->buf + n, s->have - n);
        s->have -= n;
      }
    }
    if (r <= 0 || s->have >= sizeof s->buf - 1) break;
  }
  return got;
}

/* Forwards the main thread's messages to iopub and turns pipe output into stream messages,
   until it receives the one-frame message "quit". Output is sent with the parent of the last
   message forwarded: the main thread flushes before each message, so what the pipes hold
   when a message arrives belongs to the request before it. */
static void *iopub_thread(void *arg) {
  Kernel *k = arg;
  char *parent = strdup("{}");
  void *pull = zmq_socket(k->ctx, ZMQ_PULL);
  Stream *out = calloc(1, sizeof *out), *err = calloc(1, sizeof *err);
  if (pull == NULL || out == NULL || err == NULL || zmq_connect(pull, "inproc://vtl-iopub") != 0) {
    klog(k, "cannot start the output thread: %s", zmq_strerror(zmq_errno()));
    goto done;
  }
  out->fd = k->out_fd[0];
  out->name = "stdout";
  err->fd = k->err_fd[0];
  err->name = "stderr";
  for (;;) {
    zmq_pollitem_t items[3] = {{pull, 0, ZMQ_POLLIN, 0}, {NULL, out->fd, ZMQ_POLLIN, 0}, {NULL, err->fd, ZMQ_POLLIN, 0}};
    int rc = zmq_poll(items, 3, -1);
    if (rc < 0) {
      if (zmq_errno() == EINTR) continue;
      break;
    }
    if (items[1].revents) drain_stream(k, out, parent);
    if (items[2].revents) drain_stream(k, err, parent);
    if (items[0].revents) {
      zmq_msg_t m;
      int more, first = 1, quit = 0, frame = 0;
      /* everything written before this message was sent is in the pipes now */
      drain_stream(k, out, parent);
      drain_stream(k, err, parent);
      do {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, pull, 0) < 0) {
          zmq_msg_close(&m);
          goto done;
        }
        more = zmq_msg_more(&m);
        if (first && !more && zmq_msg_size(&m) == 4 && memcmp(zmq_msg_data(&m), "quit", 4) == 0) quit = 1;
        if (frame == 4) { /* topic, delimiter, signature, header, parent */
          char *p = malloc(zmq_msg_size(&m) + 1);
          if (p != NULL) {
            memcpy(p, zmq_msg_data(&m), zmq_msg_size(&m));
            p[zmq_msg_size(&m)] = '\0';
            free(parent);
            parent = p;
          }
        }
        if (!quit) zmq_msg_send(&m, k->iopub, more ? ZMQ_SNDMORE : 0);
        zmq_msg_close(&m);
        first = 0;
        frame++;
      } while (more);
      if (quit) break;
      __atomic_add_fetch(&k->iopub_forwarded, 1, __ATOMIC_RELEASE);
    }
  }
done:
  if (pull != NULL) zmq_close(pull);
  free(parent);
  free(out);
  free(err);
  return NULL;
}

/* The heartbeat: echoes every message until the context ends. */
static void *heartbeat_thread(void *arg) {
  Kernel *k = arg;
  for (;;) {
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, k->hb, 0) < 0) {
      zmq_msg_close(&m);
      if (zmq_errno() == EINTR) continue;
      break;
    }
    zmq_msg_send(&m, k->hb, 0);
    zmq_msg_close(&m);
  }
  zmq_close(k->hb);
  return NULL;
}

/* Main thread: an iopub message with the current request as parent. */
static void publish(Kernel *k, const char *msg_type, const char *content) {
  fflush(stdout);
  fflush(stderr);
  send_message(k, k->to_iopub, NULL, 0, msg_type, msg_type, k->parent, content);
  __atomic_add_fetch(&k->iopub_sent, 1, __ATOMIC_RELEASE);
}

/* Waits (up to 2 s) until the output thread has sent on every message published so far, so
   that it already knows the new request when the request's first output reaches the pipes;
   otherwise a slow output thread could label that output with the previous request. */
static void wait_forwarded(Kernel *k) {
  int sent = __atomic_load_n(&k->iopub_sent, __ATOMIC_ACQUIRE);
  for (int i = 0; i < 40000 && __atomic_load_n(&k->iopub_forwarded, __ATOMIC_ACQUIRE) < sent; i++) {
    struct timespec ts = {0, 50000};
    nanosleep(&ts, NULL);
  }
}

static void publish_json(Kernel *k, const char *msg_type, cJSON *content) {
  char *s = cJSON_PrintUnformatted(content);
  if (s != NULL) publish(k, msg_type, s);
  free(s);
  cJSON_Delete(content);
}

static void publish_status(Kernel *k, const char *state) {
  cJSON *c = cJSON_CreateObject();
  cJSON_AddStringToObject(c, "execution_state", state);
  publish_json(k, "status", c);
}

/* ---- receiving ---- */

static void msg_free(Msg *m) {
  int i;
  for (i = 0; i < m->nframes; i++) zmq_msg_close(&m->frames[i]);
  m->nframes = 0;
  cJSON_Delete(m->header);
  cJSON_Delete(m->content);
  m->header = m->content = NULL;
}

static cJSON *parse_frame(zmq_msg_t *f) {
  return cJSON_ParseWithLength((const char *)zmq_msg_data(f), zmq_msg_size(f));
}

/* Receives one whole message from sock. Returns 1 with m filled, 0 when the message was
   malformed or badly signed (dropped and logged), -1 when the socket failed. */
static int recv_message(Kernel *k, void *sock, Msg *m) {
  int more = 1, i, d = -1;
  char sig[65];
  const void *parts[4];
  size_t lens[4];
  memset(m, 0, sizeof *m);
  while (more) {
    zmq_msg_t *f = &m->frames[m->nframes < KERNEL_MAX_FRAMES ? m->nframes : KERNEL_MAX_FRAMES - 1];
    if (m->nframes >= KERNEL_MAX_FRAMES) zmq_msg_close(f); /* too many: keep overwriting the last */
    zmq_msg_init(f);
    if (zmq_msg_recv(f, sock, 0) < 0) {
      int e = zmq_errno();
      zmq_msg_close(f);
      msg_free(m);
      return e == EINTR || e == EAGAIN ? 0 : -1;
    }
    more = zmq_msg_more(f);
    if (m->nframes < KERNEL_MAX_FRAMES) m->nframes++;
  }
  for (i = 0; i < m->nframes; i++) {
    if (zmq_msg_size(&m->frames[i]) == sizeof KERNEL_DELIM - 1 &&
        memcmp(zmq_msg_data(&m->frames[i]), KERNEL_DELIM, sizeof KERNEL_DELIM - 1) == 0) {
      d = i;
      break;
    }
  }
  if (d < 0 || m->nframes < d + 6) {
    klog(k, "dropped a malformed message (%d frames)", m->nframes);
    msg_free(m);
    return 0;
  }
  m->nids = d;
  for (i = 0; i < 4; i++) {
    parts[i] = zmq_msg_data(&m->frames[d + 2 + i]);
    lens[i] = zmq_msg_size(&m->frames[d + 2 + i]);
  }
  sign_parts(k, parts, lens, 4, sig);
  if (k->keylen > 0 && (zmq_msg_size(&m->frames[d + 1]) != 64 ||
                        CRYPTO_memcmp(sig, zmq_msg_data(&m->frames[d + 1]), 64) != 0)) {
    k->dropped++;
    klog(k, "dropped a message with a bad signature (%d so far)", k->dropped);
    msg_free(m);
    return 0;
  }
  m->header = parse_frame(&m->frames[d + 2]);
  m->content = parse_frame(&m->frames[d + 5]);
  m->msg_type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m->header, "msg_type"));
  if (m->header == NULL || m->content == NULL || m->msg_type == NULL) {
    klog(k, "dropped a message whose header or content is not JSON");
    msg_free(m);
    return 0;
  }
  return 1;
}

/* The raw header frame of the request, NUL-terminated (malloc'd). */
static char *raw_header(Msg *m) {
  zmq_msg_t *f = &m->frames[m->nids + 2];
  size_t n = zmq_msg_size(f);
  char *s = malloc(n + 1);
  if (s != NULL) {
    memcpy(s, zmq_msg_data(f), n);
    s[n] = '\0';
  }
  return s;
}

static void reply(Kernel *k, void *sock, Msg *req, const char *msg_type, cJSON *content) {
  char *s = cJSON_PrintUnformatted(content);
  char *parent = raw_header(req);
  if (s != NULL && parent != NULL) send_message(k, sock, req->frames, req->nids, NULL, msg_type, parent, s);
  free(parent);
  free(s);
  cJSON_Delete(content);
}

/* ---- code positions: Jupyter counts Unicode code points, Lua bytes ---- */

static size_t byte_offset(const char *s, size_t len, long cp) {
  size_t i = 0;
  while (i < len && cp > 0) {
    i++;
    while (i < len && ((unsigned char)s[i] & 0xC0) == 0x80) i++;
    cp--;
  }
  return i;
}

static long cp_offset(const char *s, size_t bytes) {
  long n = 0;
  size_t i;
  for (i = 0; i < bytes; i++)
    if (((unsigned char)s[i] & 0xC0) != 0x80) n++;
  return n;
}

static int is_word_char(char c) {
  return c != '\0' && strchr(VTL_REPL_WORD_BREAKS, c) == NULL;
}

/* ---- the Lua side: vtl.jupyter ---- */

/* jupyter.send(msg_type, content_json): publishes a display_data or update_display_data (or
   any iopub message) with the running cell as its parent. */
static int kj_send(lua_State *L) {
  const char *type = luaL_checkstring(L, 1);
  const char *content = luaL_checkstring(L, 2);
  cJSON *check = cJSON_Parse(content);
  if (check == NULL || !cJSON_IsObject(check)) {
    cJSON_Delete(check);
    return luaL_error(L, "jupyter.send: argument 2 must be a JSON object");
  }
  cJSON_Delete(check);
  publish(the_kernel, type, content);
  return 0;
}

/* jupyter.input(prompt, password): asks the front end for a line (input_request on stdin);
   returns it, or nil when the front end does not take input or the cell was interrupted. */
static int kj_input(lua_State *L) {
  Kernel *k = the_kernel;
  const char *prompt = luaL_optstring(L, 1, "");
  int password = lua_toboolean(L, 2);
  cJSON *c;
  char *s, *parent;
  Msg m;
  lua_getfield(L, LUA_REGISTRYINDEX, "vtl.jupyter.allow_stdin");
  if (!lua_toboolean(L, -1)) return luaL_error(L, "io.read: this front end does not take input (allow_stdin is false)");
  lua_pop(L, 1);
  fflush(stdout);
  fflush(stderr);
  c = cJSON_CreateObject();
  cJSON_AddStringToObject(c, "prompt", prompt);
  cJSON_AddBoolToObject(c, "password", password);
  s = cJSON_PrintUnformatted(c);
  cJSON_Delete(c);
  lua_getfield(L, LUA_REGISTRYINDEX, "vtl.jupyter.stdin_ids");
  if (s == NULL || !lua_isstring(L, -1)) {
    free(s);
    return luaL_error(L, "io.read: no request to ask input for");
  }
  {
    /* identities of the execute request, kept as one string of length-prefixed frames */
    size_t n, off = 0;
    const char *ids = lua_tolstring(L, -1, &n);
    zmq_msg_t frames[KERNEL_MAX_FRAMES];
    int nids = 0;
    while (off + 4 <= n && nids < KERNEL_MAX_FRAMES) {
      uint32_t len;
      memcpy(&len, ids + off, 4);
      off += 4;
      zmq_msg_init_size(&frames[nids], len);
      memcpy(zmq_msg_data(&frames[nids]), ids + off, len);
      off += len;
      nids++;
    }
    parent = k->parent != NULL ? strdup(k->parent) : NULL;
    send_message(k, k->stdin_sock, frames, nids, NULL, "input_request", parent, s);
    while (nids > 0) zmq_msg_close(&frames[--nids]);
    free(parent);
    free(s);
  }
  lua_pop(L, 1);
  for (;;) {
    zmq_pollitem_t item = {k->stdin_sock, 0, ZMQ_POLLIN, 0};
    int rc = zmq_poll(&item, 1, 200);
    if (lua_gethook(L) != NULL) { /* interrupted while waiting: the hook raises at once */
      lua_pushnil(L);
      return 1;
    }
    if (rc < 0 && zmq_errno() != EINTR) return luaL_error(L, "io.read: stdin socket failed");
    if (rc <= 0) continue;
    rc = recv_message(k, k->stdin_sock, &m);
    if (rc < 0) return luaL_error(L, "io.read: stdin socket failed");
    if (rc == 0) continue;
    if (strcmp(m.msg_type, "input_reply") == 0) {
      const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m.content, "value"));
      lua_pushstring(L, v != NULL ? v : "");
      msg_free(&m);
      return 1;
    }
    klog(k, "ignored %s on the stdin socket", m.msg_type);
    msg_free(&m);
  }
}

/* Lua run once in the kernel's state: io.read and io.stdin:read ask the front end. */
static const char kernel_lua_setup[] =
  "local jupyter = ...\n"
  "local function read(fmt, ...)\n"
  "  if select('#', ...) > 0 then error('io.read: the kernel reads one value at a time', 2) end\n"
  "  fmt = fmt or 'l'\n"
  "  if type(fmt) == 'string' then fmt = fmt:gsub('^%*', '') end\n"
  "  local line = jupyter.input('', false)\n"
  "  if line == nil then return nil end\n"
  "  if fmt == 'n' then return tonumber(line) end\n"
  "  if fmt == 'L' then return line .. '\\n' end\n"
  "  if type(fmt) == 'number' then return line:sub(1, fmt) end\n"
  "  return line\n"
  "end\n"
  "io.read = read\n"
  "local mt = getmetatable(io.stdin)\n"
  "local methods = mt and mt.__index\n"
  "if type(methods) == 'table' and methods.read then\n"
  "  local file_read = methods.read\n"
  "  methods.read = function(f, ...)\n"
  "    if f == io.stdin then return read(...) end\n"
  "    return file_read(f, ...)\n"
  "  end\n"
  "end\n";

static int open_jupyter_module(lua_State *L) {
  static const luaL_Reg fns[] = {{"send", kj_send}, {"input", kj_input}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}

/* ---- handlers ---- */

static cJSON *ok_content(void) {
  cJSON *c = cJSON_CreateObject();
  cJSON_AddStringToObject(c, "status", "ok");
  return c;
}

static void on_kernel_info(Kernel *k, void *sock, Msg *m) {
  cJSON *c = ok_content(), *li;
  char banner[160];
  snprintf(banner, sizeof banner, "vtl %s (%s) kernel. The library is the global 'vtl'.", VTL_VERSION, LUA_RELEASE);
  cJSON_AddStringToObject(c, "protocol_version", KERNEL_PROTOCOL);
  cJSON_AddStringToObject(c, "implementation", "vtl");
  cJSON_AddStringToObject(c, "implementation_version", VTL_VERSION);
  li = cJSON_AddObjectToObject(c, "language_info");
  cJSON_AddStringToObject(li, "name", "lua");
  cJSON_AddStringToObject(li, "version", LUA_VERSION_MAJOR "." LUA_VERSION_MINOR);
  cJSON_AddStringToObject(li, "mimetype", "text/x-lua");
  cJSON_AddStringToObject(li, "file_extension", ".lua");
  cJSON_AddStringToObject(li, "pygments_lexer", "lua");
  cJSON_AddStringToObject(li, "codemirror_mode", "lua");
  cJSON_AddStringToObject(c, "banner", banner);
  cJSON_AddArrayToObject(c, "help_links");
  reply(k, sock, m, "kernel_info_reply", c);
}

/* Loads a cell: as `return <cell>;` (the REPL's rule), else with its last lines as a returned
   expression after the statements before them, else as it is. Pushes the function or the
   syntax error. */
static int load_cell(lua_State *L, const char *code, size_t len, const char *name) {
  int status, tries = 0;
  size_t end = len, start;
  const char *src = lua_pushfstring(L, "return %s;", code);
  status = luaL_loadbuffer(L, src, strlen(src), name);
  lua_remove(L, -2);
  if (status == LUA_OK) return status;
  lua_pop(L, 1);
  while (end > 0 && (code[end - 1] == '\n' || code[end - 1] == ' ' || code[end - 1] == '\t' || code[end - 1] == '\r')) end--;
  start = end;
  while (start > 0 && tries < KERNEL_SPLIT_LINES) {
    start--;
    while (start > 0 && code[start - 1] != '\n') start--;
    tries++;
    if (luaL_loadbuffer(L, code, start, name) != LUA_OK) { /* the statements before must stand alone */
      lua_pop(L, 1);
      continue;
    }
    lua_pop(L, 1);
    {
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      luaL_addlstring(&b, code, start);
      luaL_addstring(&b, "return ");
      luaL_addlstring(&b, code + start, end - start);
      luaL_addstring(&b, ";");
      luaL_pushresult(&b);
    }
    src = lua_tostring(L, -1);
    status = luaL_loadbuffer(L, src, strlen(src), name);
    lua_remove(L, -2);
    if (status == LUA_OK) return status;
    lua_pop(L, 1);
  }
  return luaL_loadbuffer(L, code, len, name);
}

/* An error message with its traceback, as error content: ename, evalue, traceback lines. */
static cJSON *error_content(const char *msg) {
  cJSON *c = cJSON_CreateObject(), *tb;
  const char *cut = strstr(msg, "\nstack traceback:");
  size_t vlen = cut != NULL ? (size_t)(cut - msg) : strlen(msg);
  char *evalue = malloc(vlen + 1);
  const char *p = msg;
  cJSON_AddStringToObject(c, "status", "error");
  cJSON_AddStringToObject(c, "ename", strstr(msg, "interrupted!") != NULL ? "Interrupted" : "LuaError");
  if (evalue != NULL) {
    memcpy(evalue, msg, vlen);
    evalue[vlen] = '\0';
    cJSON_AddStringToObject(c, "evalue", evalue);
    free(evalue);
  }
  tb = cJSON_AddArrayToObject(c, "traceback");
  while (*p) {
    const char *nl = strchr(p, '\n');
    size_t n = nl != NULL ? (size_t)(nl - p) : strlen(p);
    char *line = malloc(n + 1);
    if (line != NULL) {
      memcpy(line, p, n);
      line[n] = '\0';
      cJSON_AddItemToArray(tb, cJSON_CreateString(line));
      free(line);
    }
    p += n;
    if (*p == '\n') p++;
  }
  return c;
}

/* Keeps the request's identity frames (for input_request) in the registry. */
static void keep_stdin_ids(lua_State *L, Msg *m) {
  luaL_Buffer b;
  int i;
  luaL_buffinit(L, &b);
  for (i = 0; i < m->nids; i++) {
    uint32_t len = (uint32_t)zmq_msg_size(&m->frames[i]);
    luaL_addlstring(&b, (const char *)&len, 4);
    luaL_addlstring(&b, zmq_msg_data(&m->frames[i]), len);
  }
  luaL_pushresult(&b);
  lua_setfield(L, LUA_REGISTRYINDEX, "vtl.jupyter.stdin_ids");
}

static void on_execute(Kernel *k, void *sock, Msg *m) {
  lua_State *L = k->L;
  const char *code = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m->content, "code"));
  int silent = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m->content, "silent"));
  cJSON *sh = cJSON_GetObjectItemCaseSensitive(m->content, "store_history");
  int store = !silent && (sh == NULL || cJSON_IsTrue(sh));
  cJSON *c;
  char name[48];
  int status, base = lua_gettop(L), count;
  if (code == NULL) code = "";
  if (store) k->execution_count++;
  count = k->execution_count;
  if (!silent) {
    c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "code", code);
    cJSON_AddNumberToObject(c, "execution_count", count);
    publish_json(k, "execute_input", c);
  }
  lua_pushboolean(L, cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m->content, "allow_stdin")));
  lua_setfield(L, LUA_REGISTRYINDEX, "vtl.jupyter.allow_stdin");
  keep_stdin_ids(L, m);
  snprintf(name, sizeof name, "=In[%d]", count);
  status = load_cell(L, code, strlen(code), name);
  if (status == LUA_OK) status = vtl_host_docall(L, 0, LUA_MULTRET);
  if (status == LUA_OK && lua_gettop(L) > base) {
    status = vtl_repl_results_text(L, base);
    if (status == LUA_OK && !silent) {
      cJSON *data;
      c = cJSON_CreateObject();
      cJSON_AddNumberToObject(c, "execution_count", count);
      data = cJSON_AddObjectToObject(c, "data");
      cJSON_AddStringToObject(data, "text/plain", lua_tostring(L, -1));
      cJSON_AddObjectToObject(c, "metadata");
      publish_json(k, "execute_result", c);
    }
  }
  fflush(stdout);
  fflush(stderr);
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    cJSON *err = error_content(msg != NULL ? msg : "(error object is not a string)");
    cJSON *pub = cJSON_Duplicate(err, 1);
    cJSON_DeleteItemFromObject(pub, "status");
    if (!silent) publish_json(k, "error", pub);
    else cJSON_Delete(pub);
    cJSON_AddNumberToObject(err, "execution_count", count);
    reply(k, sock, m, "execute_reply", err);
  } else {
    c = ok_content();
    cJSON_AddNumberToObject(c, "execution_count", count);
    cJSON_AddObjectToObject(c, "user_expressions");
    cJSON_AddArrayToObject(c, "payload");
    reply(k, sock, m, "execute_reply", c);
  }
  lua_settop(L, base);
  lua_pushboolean(L, 0);
  lua_setfield(L, LUA_REGISTRYINDEX, "vtl.jupyter.allow_stdin");
}

static void on_complete(Kernel *k, void *sock, Msg *m) {
  lua_State *L = k->L;
  const char *code = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m->content, "code"));
  cJSON *pos = cJSON_GetObjectItemCaseSensitive(m->content, "cursor_pos");
  cJSON *c = ok_content(), *matches = cJSON_AddArrayToObject(c, "matches");
  size_t len, cur, start;
  int top = lua_gettop(L), n, i;
  if (code == NULL) code = "";
  len = strlen(code);
  cur = cJSON_IsNumber(pos) ? byte_offset(code, len, (long)pos->valuedouble) : len;
  start = cur;
  while (start > 0 && is_word_char(code[start - 1])) start--;
  {
    char *text = malloc(cur - start + 1);
    if (text != NULL) {
      memcpy(text, code + start, cur - start);
      text[cur - start] = '\0';
      n = vtl_repl_completions(L, text);
      for (i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        if (lua_isstring(L, -1)) cJSON_AddItemToArray(matches, cJSON_CreateString(lua_tostring(L, -1)));
        lua_pop(L, 1);
      }
      free(text);
    }
  }
  lua_settop(L, top);
  cJSON_AddNumberToObject(c, "cursor_start", (double)cp_offset(code, start));
  cJSON_AddNumberToObject(c, "cursor_end", (double)cp_offset(code, cur));
  cJSON_AddObjectToObject(c, "metadata");
  reply(k, sock, m, "complete_reply", c);
}

/* The dotted name under (or just before) the cursor, malloc'd; NULL when there is none. */
static char *name_at(const char *code, size_t len, size_t cur) {
  size_t a, b;
  char *s;
  if (cur > len) cur = len;
  a = b = cur;
  while (b < len && is_word_char(code[b]) && code[b] != ':' && code[b] != '.') b++;
  while (a > 0 && is_word_char(code[a - 1])) a--;
  if (a == b) { /* `f(` with the cursor after the parenthesis: the function's name */
    size_t p = cur;
    while (p > 0 && (code[p - 1] == ' ' || code[p - 1] == '(')) p--;
    if (p == cur) return NULL;
    b = p;
    a = p;
    while (a > 0 && is_word_char(code[a - 1])) a--;
    if (a == b) return NULL;
  }
  s = malloc(b - a + 1);
  if (s != NULL) {
    memcpy(s, code + a, b - a);
    s[b - a] = '\0';
  }
  return s;
}

/* lua_CFunction: require("vtl.doc").inspect(name) */
static int inspect_name(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "vtl.doc");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "inspect");
  lua_pushvalue(L, 1);
  lua_call(L, 1, 1);
  return 1;
}

static void on_inspect(Kernel *k, void *sock, Msg *m) {
  lua_State *L = k->L;
  const char *code = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m->content, "code"));
  cJSON *pos = cJSON_GetObjectItemCaseSensitive(m->content, "cursor_pos");
  cJSON *c = ok_content(), *data;
  size_t len;
  int top = lua_gettop(L), found = 0;
  char *name;
  if (code == NULL) code = "";
  len = strlen(code);
  name = name_at(code, len, cJSON_IsNumber(pos) ? byte_offset(code, len, (long)pos->valuedouble) : len);
  data = cJSON_CreateObject();
  if (name != NULL) {
    lua_pushcfunction(L, inspect_name);
    lua_pushstring(L, name);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_isstring(L, -1)) {
      found = 1;
      cJSON_AddStringToObject(data, "text/plain", lua_tostring(L, -1));
    } else if (lua_isstring(L, -1)) {
      klog(k, "inspect %s: %s", name, lua_tostring(L, -1));
    }
  }
  lua_settop(L, top);
  free(name);
  cJSON_AddBoolToObject(c, "found", found);
  cJSON_AddItemToObject(c, "data", data);
  cJSON_AddObjectToObject(c, "metadata");
  reply(k, sock, m, "inspect_reply", c);
}

static void on_is_complete(Kernel *k, void *sock, Msg *m) {
  const char *code = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m->content, "code"));
  cJSON *c = cJSON_CreateObject();
  int s;
  if (code == NULL) code = "";
  s = vtl_repl_chunk_status(k->L, code, strlen(code), "=cell");
  cJSON_AddStringToObject(c, "status", s == VTL_CHUNK_COMPLETE ? "complete" : s == VTL_CHUNK_INCOMPLETE ? "incomplete" : "invalid");
  if (s == VTL_CHUNK_INCOMPLETE) cJSON_AddStringToObject(c, "indent", "  ");
  reply(k, sock, m, "is_complete_reply", c);
}

/* Handles one request; returns 1 when the kernel should stop. */
static int handle(Kernel *k, void *sock, Msg *m) {
  const char *t = m->msg_type;
  int stop = 0;
  char *parent = raw_header(m);
  free(k->parent);
  k->parent = parent;
  publish_status(k, "busy");
  wait_forwarded(k);
  if (strcmp(t, "kernel_info_request") == 0) on_kernel_info(k, sock, m);
  else if (strcmp(t, "execute_request") == 0) on_execute(k, sock, m);
  else if (strcmp(t, "complete_request") == 0) on_complete(k, sock, m);
  else if (strcmp(t, "inspect_request") == 0) on_inspect(k, sock, m);
  else if (strcmp(t, "is_complete_request") == 0) on_is_complete(k, sock, m);
  else if (strcmp(t, "shutdown_request") == 0) {
    cJSON *c = ok_content();
    cJSON_AddBoolToObject(c, "restart", cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m->content, "restart")));
    reply(k, sock, m, "shutdown_reply", c);
    stop = 1;
  } else if (strcmp(t, "interrupt_request") == 0) {
    /* a cell that runs is stopped by SIGINT (interrupt_mode "signal"); here none runs */
    reply(k, sock, m, "interrupt_reply", ok_content());
  } else if (strcmp(t, "history_request") == 0) {
    cJSON *c = ok_content();
    cJSON_AddArrayToObject(c, "history");
    reply(k, sock, m, "history_reply", c);
  } else if (strcmp(t, "comm_info_request") == 0) {
    cJSON *c = ok_content();
    cJSON_AddObjectToObject(c, "comms");
    reply(k, sock, m, "comm_info_reply", c);
  } else {
    klog(k, "ignored a %s", t);
  }
  publish_status(k, "idle");
  return stop;
}

/* ---- start and stop ---- */

static int bind_port(Kernel *k, void *sock, cJSON *cf, const char *field) {
  char addr[512];
  const char *transport = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cf, "transport"));
  const char *ip = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cf, "ip"));
  cJSON *port = cJSON_GetObjectItemCaseSensitive(cf, field);
  if (sock == NULL) return -1;
  if (transport == NULL) transport = "tcp";
  if (ip == NULL) ip = "127.0.0.1";
  if (!cJSON_IsNumber(port)) {
    klog(k, "connection file: '%s' is missing or not a number", field);
    return -1;
  }
  if (strcmp(transport, "ipc") == 0) snprintf(addr, sizeof addr, "ipc://%s-%d", ip, port->valueint);
  else snprintf(addr, sizeof addr, "%s://%s:%d", transport, ip, port->valueint);
  if (zmq_bind(sock, addr) != 0) {
    klog(k, "cannot bind %s to %s: %s", field, addr, zmq_strerror(zmq_errno()));
    return -1;
  }
  return 0;
}

static char *read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  long n;
  if (f == NULL) return NULL;
  if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && n < (1 << 20) && fseek(f, 0, SEEK_SET) == 0 &&
      (buf = malloc((size_t)n + 1)) != NULL) {
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
      free(buf);
      buf = NULL;
    } else {
      buf[n] = '\0';
    }
  }
  fclose(f);
  return buf;
}

static void random_session(char *out, size_t n) {
  unsigned char r[16];
  size_t i;
  int fd = open("/dev/urandom", O_RDONLY);
  if (fd < 0 || read(fd, r, sizeof r) != (ssize_t)sizeof r) {
    unsigned long x = (unsigned long)time(NULL) ^ ((unsigned long)getpid() << 16);
    for (i = 0; i < sizeof r; i++) r[i] = (unsigned char)(x >> (i % 8 * 8)) ^ (unsigned char)i;
  }
  if (fd >= 0) close(fd);
  for (i = 0; i < sizeof r && 2 * i + 2 < n; i++) snprintf(out + 2 * i, 3, "%02x", r[i]);
}

/* fds 1 and 2 become pipes read by the output thread; fd 0 reads nothing (io.read asks the
   front end). The kernel's own messages keep going to the original stderr. */
static int redirect_stdio(Kernel *k) {
  int logfd = dup(2), nul;
  if (logfd < 0 || pipe(k->out_fd) != 0 || pipe(k->err_fd) != 0) return -1;
  k->log = fdopen(logfd, "w");
  fflush(stdout);
  fflush(stderr);
  if (dup2(k->out_fd[1], 1) < 0 || dup2(k->err_fd[1], 2) < 0) return -1;
  close(k->out_fd[1]);
  close(k->err_fd[1]);
  fcntl(k->out_fd[0], F_SETFL, fcntl(k->out_fd[0], F_GETFL) | O_NONBLOCK);
  fcntl(k->err_fd[0], F_SETFL, fcntl(k->err_fd[0], F_GETFL) | O_NONBLOCK);
  fcntl(k->out_fd[0], F_SETFD, FD_CLOEXEC);
  fcntl(k->err_fd[0], F_SETFD, FD_CLOEXEC);
  setvbuf(stdout, NULL, _IOLBF, 0);
  nul = open("/dev/null", O_RDONLY);
  if (nul >= 0) {
    dup2(nul, 0);
    close(nul);
  }
  return 0;
}

/* Runs in protected mode: the vtl library, then vtl.jupyter and the kernel's Lua setup. */
static int kernel_pmain(lua_State *L) {
  if (!vtl_host_open(L)) return luaL_error(L, "cannot load the vtl library");
  luaL_requiref(L, KERNEL_JUPYTER_MODULE, open_jupyter_module, 0);
  if (luaL_loadbuffer(L, kernel_lua_setup, sizeof kernel_lua_setup - 1, "=(kernel setup)") != LUA_OK) return lua_error(L);
  lua_insert(L, -2);
  lua_call(L, 1, 0);
  return 0;
}

static int serve(const char *connection_file) {
  Kernel k;
  cJSON *cf;
  char *text;
  const char *key, *scheme;
  pthread_t hb_thread, io_thread;
  int hb_started = 0, io_started = 0, rc = EXIT_FAILURE;
  memset(&k, 0, sizeof k);
  text = read_file(connection_file);
  if (text == NULL) {
    klog(NULL, "cannot read the connection file '%s': %s", connection_file, strerror(errno));
    return EXIT_FAILURE;
  }
  cf = cJSON_Parse(text);
  free(text);
  if (cf == NULL) {
    klog(NULL, "the connection file '%s' is not JSON", connection_file);
    return EXIT_FAILURE;
  }
  key = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cf, "key"));
  scheme = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cf, "signature_scheme"));
  if (scheme != NULL && key != NULL && key[0] != '\0' && strcmp(scheme, "hmac-sha256") != 0) {
    klog(NULL, "signature scheme '%s' is not supported (hmac-sha256 is)", scheme);
    cJSON_Delete(cf);
    return EXIT_FAILURE;
  }
  if (key != NULL) {
    k.keylen = strlen(key);
    if (k.keylen > sizeof k.key) {
      klog(NULL, "the key in '%s' is longer than %d bytes", connection_file, KERNEL_MAX_KEY);
      cJSON_Delete(cf);
      return EXIT_FAILURE;
    }
    memcpy(k.key, key, k.keylen);
  }
  random_session(k.session, sizeof k.session);
  k.hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  if (k.hmac == NULL) {
    klog(NULL, "OpenSSL has no HMAC");
    cJSON_Delete(cf);
    return EXIT_FAILURE;
  }
  k.ctx = zmq_ctx_new();
  k.shell = zmq_socket(k.ctx, ZMQ_ROUTER);
  k.control = zmq_socket(k.ctx, ZMQ_ROUTER);
  k.stdin_sock = zmq_socket(k.ctx, ZMQ_ROUTER);
  k.iopub = zmq_socket(k.ctx, ZMQ_PUB);
  k.hb = zmq_socket(k.ctx, ZMQ_REP);
  k.to_iopub = zmq_socket(k.ctx, ZMQ_PUSH);
  if (bind_port(&k, k.shell, cf, "shell_port") || bind_port(&k, k.control, cf, "control_port") ||
      bind_port(&k, k.stdin_sock, cf, "stdin_port") || bind_port(&k, k.iopub, cf, "iopub_port") ||
      bind_port(&k, k.hb, cf, "hb_port") || k.to_iopub == NULL || zmq_bind(k.to_iopub, "inproc://vtl-iopub") != 0) {
    cJSON_Delete(cf);
    goto out;
  }
  cJSON_Delete(cf);
  if (redirect_stdio(&k) != 0) {
    klog(&k, "cannot redirect the standard streams: %s", strerror(errno));
    goto out;
  }
  {
    /* the helper threads never take SIGINT: it is for the thread that runs the cells */
    sigset_t block, saved;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &saved);
    hb_started = pthread_create(&hb_thread, NULL, heartbeat_thread, &k) == 0;
    io_started = pthread_create(&io_thread, NULL, iopub_thread, &k) == 0;
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
  }
  if (!hb_started || !io_started) {
    klog(&k, "cannot start the kernel's threads");
    goto out;
  }
  signal(SIGINT, SIG_IGN); /* between cells an interrupt has nothing to stop */
  vtl_host_set_second_sigint_kills(0);
  k.L = luaL_newstate();
  if (k.L == NULL) {
    klog(&k, "cannot create the Lua state: not enough memory");
    goto out;
  }
  the_kernel = &k;
  lua_pushcfunction(k.L, kernel_pmain);
  if (vtl_host_docall(k.L, 0, 0) != LUA_OK) {
    klog(&k, "%s", lua_tostring(k.L, -1));
    goto out;
  }
  publish_status(&k, "starting");
  klog(&k, "ready (session %s)", k.session);
  for (;;) {
    zmq_pollitem_t items[2] = {{k.control, 0, ZMQ_POLLIN, 0}, {k.shell, 0, ZMQ_POLLIN, 0}};
    Msg m;
    int i, r, stop = 0;
    if (zmq_poll(items, 2, -1) < 0) {
      if (zmq_errno() == EINTR) continue;
      klog(&k, "poll failed: %s", zmq_strerror(zmq_errno()));
      break;
    }
    for (i = 0; i < 2 && !stop; i++) {
      if (!items[i].revents) continue;
      r = recv_message(&k, items[i].socket, &m);
      if (r < 0) {
        stop = 1;
        break;
      }
      if (r == 0) continue;
      stop = handle(&k, items[i].socket, &m);
      msg_free(&m);
    }
    if (stop) break;
  }
  rc = EXIT_SUCCESS;
out:
  if (k.L != NULL) {
    lua_close(k.L);
    k.L = NULL;
  }
  fflush(stdout);
  fflush(stderr);
  if (io_started) {
    send_frame(k.to_iopub, "quit", 4, 0);
    pthread_join(io_thread, NULL);
  }
  if (k.log != NULL) { /* late messages (a sanitizer's report) go where the kernel logs */
    fflush(k.log);
    dup2(fileno(k.log), 1);
    dup2(fileno(k.log), 2);
  }
  {
    int linger = 0;
    void *socks[5] = {k.shell, k.control, k.stdin_sock, k.iopub, k.to_iopub};
    int i;
    for (i = 0; i < 5; i++)
      if (socks[i] != NULL) {
        zmq_setsockopt(socks[i], ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(socks[i]);
      }
  }
  if (k.ctx != NULL) {
    zmq_ctx_shutdown(k.ctx); /* ends the heartbeat's wait */
    if (hb_started) pthread_join(hb_thread, NULL);
    else if (k.hb != NULL) zmq_close(k.hb);
    zmq_ctx_term(k.ctx);
  }
  if (k.out_fd[0] > 0) close(k.out_fd[0]);
  if (k.err_fd[0] > 0) close(k.err_fd[0]);
  free(k.parent);
  if (k.log != NULL) fclose(k.log);
  EVP_MAC_free(k.hmac);
  the_kernel = NULL;
  return rc;
}

/* ---- vtl kernel install ---- */

static int mkdirs(char *path) {
  char *p;
  for (p = path + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(path, 0755) != 0 && errno != EEXIST) return -1;
    *p = '/';
  }
  return mkdir(path, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static int install(int argc, char **argv) {
  char dir[PATH_MAX], exe[PATH_MAX], file[PATH_MAX + 16];
  const char *prefix = "/usr/local";
  int user = 0, i;
  cJSON *spec, *args;
  char *text;
  FILE *f;
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--user") == 0) user = 1;
    else if (strcmp(argv[i], "--prefix") == 0 && i + 1 < argc) prefix = argv[++i];
    else if (strncmp(argv[i], "--prefix=", 9) == 0) prefix = argv[i] + 9;
    else {
      fprintf(stderr, "vtl kernel install: unknown argument '%s'\nusage: vtl kernel install [--user | --prefix P]\n", argv[i]);
      return EXIT_FAILURE;
    }
  }
  if (user) {
    const char *data = getenv("JUPYTER_DATA_DIR"), *home = getenv("HOME");
    if (data != NULL && data[0] != '\0') snprintf(dir, sizeof dir, "%s/kernels/vtl", data);
    else if (home != NULL && home[0] != '\0') snprintf(dir, sizeof dir, "%s/.local/share/jupyter/kernels/vtl", home);
    else {
      fprintf(stderr, "vtl kernel install: --user needs $HOME or $JUPYTER_DATA_DIR\n");
      return EXIT_FAILURE;
    }
  } else {
    snprintf(dir, sizeof dir, "%s/share/jupyter/kernels/vtl", prefix);
  }
  if (realpath("/proc/self/exe", exe) == NULL) {
    fprintf(stderr, "vtl kernel install: cannot find the vtl program: %s\n", strerror(errno));
    return EXIT_FAILURE;
  }
  if (mkdirs(dir) != 0) {
    fprintf(stderr, "vtl kernel install: cannot create '%s': %s\n", dir, strerror(errno));
    return EXIT_FAILURE;
  }
  spec = cJSON_CreateObject();
  args = cJSON_AddArrayToObject(spec, "argv");
  cJSON_AddItemToArray(args, cJSON_CreateString(exe));
  cJSON_AddItemToArray(args, cJSON_CreateString("kernel"));
  cJSON_AddItemToArray(args, cJSON_CreateString("--connection-file"));
  cJSON_AddItemToArray(args, cJSON_CreateString("{connection_file}"));
  cJSON_AddStringToObject(spec, "display_name", "vtl (Lua 5.4)");
  cJSON_AddStringToObject(spec, "language", "lua");
  cJSON_AddStringToObject(spec, "interrupt_mode", "signal");
  cJSON_AddObjectToObject(spec, "metadata");
  text = cJSON_Print(spec);
  cJSON_Delete(spec);
  snprintf(file, sizeof file, "%s/kernel.json", dir);
  f = fopen(file, "w");
  if (f == NULL || text == NULL || fputs(text, f) < 0 || fputc('\n', f) < 0 || fclose(f) != 0) {
    fprintf(stderr, "vtl kernel install: cannot write '%s': %s\n", file, strerror(errno));
    free(text);
    return EXIT_FAILURE;
  }
  free(text);
  printf("installed the vtl kernelspec in %s\n", dir);
  return EXIT_SUCCESS;
}

int vtl_kernel_main(int argc, char **argv) {
  int i;
  if (argc >= 2 && strcmp(argv[1], "install") == 0) return install(argc - 1, argv + 1);
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--connection-file") == 0 && i + 1 < argc) return serve(argv[i + 1]);
    if (strncmp(argv[i], "--connection-file=", 18) == 0) return serve(argv[i] + 18);
    if (strcmp(argv[i], "-f") == 0 && i + 1 < argc) return serve(argv[i + 1]);
  }
  fprintf(stderr, "usage: vtl kernel --connection-file FILE\n"
                  "       vtl kernel install [--user | --prefix P]\n");
  return EXIT_FAILURE;
}
