/*
 * PyTorch checkpoints (torch.save's zip format): a bounds-checked zip reader (stored entries,
 * ZIP64) and a restricted unpickler that builds values and tensors and runs nothing.
 *
 * Bounds: the archive's directory, every entry and every storage record are checked against
 * the file's size before they are read; every length in the pickle is checked against the
 * bytes left in data.pkl; memo indices are bounded by data.pkl's size; the number of values
 * is capped. The unpickler is a loop over opcodes (no recursion), and the values it builds
 * are freed from a list of blocks, so cycles and deep nesting cost nothing extra here.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "core.h"
#include "io_pth.h"

#define NAME_SHOWN 128
#define PKL_MAX ((uint64_t)1 << 30)       /* data.pkl larger than this is refused */
#define MAX_VALUES ((size_t)1 << 24)     /* values one pickle may create */
#define CHUNK_BYTES ((size_t)1 << 20)
#define BLOCK_VALUES 1024

/* Loader-only kinds; none is left in a finished checkpoint. */
enum { PV_GLOBAL = VTL_PV_NKINDS + 1, /* u.i: a global_id */
       PV_STORAGE                     /* u.i: index into vtl_pth.stor */ };
#define PV_VISITED 1u

/* ------------------------------------------------------------------------------------------ */
/* The globals the unpickler accepts.                                                        */

typedef enum {
  G_ORDERED_DICT, G_REBUILD_TENSOR, G_REBUILD_TENSOR_V2, G_REBUILD_PARAMETER, G_REBUILD_PARAMETER_STATE,
  G_CODECS_ENCODE, /* how protocol 2 pickles bytes: _codecs.encode(text, 'latin1') */
  G_STORAGE /* + index into storage_types */
} global_id;

static const struct { const char *module, *name; } allowed_globals[G_STORAGE] = {
  [G_ORDERED_DICT] = {"collections", "OrderedDict"},
  [G_REBUILD_TENSOR] = {"torch._utils", "_rebuild_tensor"},
  [G_REBUILD_TENSOR_V2] = {"torch._utils", "_rebuild_tensor_v2"},
  [G_REBUILD_PARAMETER] = {"torch._utils", "_rebuild_parameter"},
  [G_REBUILD_PARAMETER_STATE] = {"torch._utils", "_rebuild_parameter_with_state"},
  [G_CODECS_ENCODE] = {"_codecs", "encode"},
};

typedef enum { CONV_NONE, CONV_BOOL, CONV_I16, CONV_I8 } storage_conv;

/* torch.<name> storage classes: the element size in the file and the vtl dtype loaded. */
static const struct { const char *name; int file_size; vtl_dtype dt; storage_conv conv; } storage_types[] = {
  {"FloatStorage", 4, VTL_F32, CONV_NONE},   {"DoubleStorage", 8, VTL_F64, CONV_NONE},
  {"HalfStorage", 2, VTL_F16, CONV_NONE},    {"BFloat16Storage", 2, VTL_BF16, CONV_NONE},
  {"LongStorage", 8, VTL_I64, CONV_NONE},    {"IntStorage", 4, VTL_I32, CONV_NONE},
  {"ByteStorage", 1, VTL_U8, CONV_NONE},     {"BoolStorage", 1, VTL_BOOL, CONV_BOOL},
  {"ShortStorage", 2, VTL_I32, CONV_I16},    {"CharStorage", 1, VTL_I32, CONV_I8},
};
#define N_STORAGE_TYPES ((int)(sizeof storage_types / sizeof storage_types[0]))
#define STORAGE_TYPE_LIST "Float Double Half BFloat16 Long Int Byte Bool Short Char"

/* "torch._utils._rebuild_tensor_v2" or "torch.FloatStorage" */
static void global_name(int64_t id, char *buf, size_t n) {
  if (id >= G_STORAGE) snprintf(buf, n, "torch.%s", storage_types[id - G_STORAGE].name);
  else snprintf(buf, n, "%s.%s", allowed_globals[id].module, allowed_globals[id].name);
}

/* ------------------------------------------------------------------------------------------ */
/* The checkpoint                                                                             */

typedef struct {
  char *name;
  uint64_t local_offset, csize, usize;
  uint16_t method, flags;
} zip_entry;

typedef struct {
  char *key;
  int type;       /* index into storage_types */
  uint64_t numel; /* elements */
  vtl_storage *s;
} pth_storage;

typedef struct pv_block {
  struct pv_block *next;
  size_t used;
  vtl_pv v[BLOCK_VALUES];
} pv_block;

struct vtl_pth {
  char *path;
  int fd;
  uint64_t fsize;
  uint64_t data_end;   /* entries' data lies before this offset (the central directory) */
  zip_entry *ents;     /* sorted by name */
  size_t nents;
  char *prefix;        /* the archive's top directory ("archive"), "" when there is none */
  pv_block *blocks;
  size_t nvalues;
  size_t nitems, max_items; /* container slots filled, and the bound data.pkl's size sets */
  pth_storage *stor;
  size_t nstor, capstor;
  int32_t *stor_hash;  /* open addressing: index into stor, -1 empty */
  size_t hash_cap;
  vtl_pv *root;
};

/* A name taken from a file, fit for an error message: control bytes become '?', long names
   are cut with "...". */
static const char *shown_n(const char *s, size_t len, char buf[NAME_SHOWN]) {
  size_t i = 0;
  for (; i < len && i < NAME_SHOWN - 4; i++) {
    unsigned char c = (unsigned char)s[i];
    buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
  }
  if (i < len) { memcpy(buf + i, "...", 3); i += 3; }
  buf[i] = 0;
  return buf;
}
static const char *shown(const char *s, char buf[NAME_SHOWN]) { return shown_n(s, strlen(s), buf); }

/* Sets "load: <path>: <message>" and returns st. */
__attribute__((format(printf, 3, 4)))
static vtl_status pth_fail(const vtl_pth *p, vtl_status st, const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return vtl_error_set(st, "load: %s: %s", p->path, msg);
}

static uint16_t rd16(const unsigned char *b) { return (uint16_t)(b[0] | b[1] << 8); }
static uint32_t rd32(const unsigned char *b) { return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24; }
static uint64_t rd64(const unsigned char *b) { return (uint64_t)rd32(b) | (uint64_t)rd32(b + 4) << 32; }

/* Reads exactly n bytes at pos: 0, an errno, or -1 for a premature end of file. */
static int pread_full(int fd, void *buf, size_t n, uint64_t pos) {
  char *c = buf;
  while (n) {
    size_t k = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
    ssize_t r = pread(fd, c, k, (off_t)pos);
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (r == 0) return -1;
    c += r; pos += (uint64_t)r; n -= (size_t)r;
  }
  return 0;
}

static vtl_status read_at(const vtl_pth *p, void *buf, size_t n, uint64_t pos) {
  int e = pread_full(p->fd, buf, n, pos);
  if (e) return pth_fail(p, VTL_ERR_IO, "read failed: %s", e == -1 ? "unexpected end of file" : strerror(e));
  return VTL_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Values                                                                                     */

static vtl_pv *pv_new(vtl_pth *p, int kind) {
  if (p->nvalues >= MAX_VALUES) {
    pth_fail(p, VTL_ERR_FORMAT, "the pickle creates more than %zu objects (not a checkpoint?)", MAX_VALUES);
    return NULL;
  }
  if (!p->blocks || p->blocks->used == BLOCK_VALUES) {
    pv_block *b = malloc(sizeof *b);
    if (!b) { pth_fail(p, VTL_ERR_OOM, "out of memory"); return NULL; }
    b->next = p->blocks;
    b->used = 0;
    p->blocks = b;
  }
  vtl_pv *v = &p->blocks->v[p->blocks->used++];
  p->nvalues++;
  memset(v, 0, sizeof *v);
  v->kind = kind;
  return v;
}

static bool is_seq(const vtl_pv *v) { return v->kind == VTL_PV_LIST || v->kind == VTL_PV_TUPLE; }

static vtl_status seq_push(vtl_pth *p, vtl_pv *c, vtl_pv *x) {
  if (++p->nitems > p->max_items)
    return pth_fail(p, VTL_ERR_FORMAT, "the pickle fills more than %zu container slots (not a checkpoint?)",
                    p->max_items);
  if (c->u.seq.n == c->u.seq.cap) {
    size_t cap = c->u.seq.cap ? 2 * c->u.seq.cap : 4;
    vtl_pv **v = cap <= SIZE_MAX / sizeof *v ? realloc(c->u.seq.v, cap * sizeof *v) : NULL;
    if (!v) return pth_fail(p, VTL_ERR_OOM, "out of memory");
    c->u.seq.v = v;
    c->u.seq.cap = cap;
  }
  c->u.seq.v[c->u.seq.n++] = x;
  return VTL_OK;
}

static const char *kind_name(int kind) {
  switch (kind) {
  case VTL_PV_NONE: return "None";
  case VTL_PV_BOOL: return "bool";
  case VTL_PV_INT: return "int";
  case VTL_PV_FLOAT: return "float";
  case VTL_PV_STR: return "str";
  case VTL_PV_BYTES: return "bytes";
  case VTL_PV_LIST: return "list";
  case VTL_PV_TUPLE: return "tuple";
  case VTL_PV_DICT: return "dict";
  case VTL_PV_TENSOR: return "tensor";
  case PV_GLOBAL: return "class or function";
  case PV_STORAGE: return "storage";
  default: return "value";
  }
}

void vtl_pth_free(vtl_pth *p) {
  if (!p) return;
  for (pv_block *b = p->blocks, *next; b; b = next) {
    next = b->next;
    for (size_t i = 0; i < b->used; i++) {
      vtl_pv *v = &b->v[i];
      switch (v->kind) {
      case VTL_PV_STR: case VTL_PV_BYTES: free(v->u.s.p); break;
      case VTL_PV_LIST: case VTL_PV_TUPLE: case VTL_PV_DICT: free(v->u.seq.v); break;
      case VTL_PV_TENSOR: vtl_tensor_release(v->u.t); break;
      default: break;
      }
    }
    free(b);
  }
  for (size_t i = 0; i < p->nstor; i++) {
    free(p->stor[i].key);
    if (p->stor[i].s) vtl_storage_release(p->stor[i].s);
  }
  free(p->stor);
  free(p->stor_hash);
  for (size_t i = 0; i < p->nents; i++) free(p->ents[i].name);
  free(p->ents);
  free(p->prefix);
  if (p->fd >= 0) close(p->fd);
  free(p->path);
  free(p);
}

const vtl_pv *vtl_pth_root(const vtl_pth *p) { return p ? p->root : NULL; }

/* ------------------------------------------------------------------------------------------ */
/* Zip archive: central directory, stored entries, ZIP64                                     */

static int cmp_entry(const void *a, const void *b) {
  return strcmp(((const zip_entry *)a)->name, ((const zip_entry *)b)->name);
}

static const zip_entry *zip_find(const vtl_pth *p, const char *name) {
  zip_entry key = {.name = (char *)name};
  return bsearch(&key, p->ents, p->nents, sizeof *p->ents, cmp_entry);
}

#define ZIP_DAMAGED "truncated or damaged zip archive"

/* Reads the central directory into p->ents (sorted by name). */
static vtl_status zip_open(vtl_pth *p) {
  if (p->fsize < 22)
    return pth_fail(p, VTL_ERR_FORMAT, ZIP_DAMAGED " (%llu bytes, too short for its end-of-central-directory record)",
                    (unsigned long long)p->fsize);
  size_t tail = p->fsize < 22 + 65535 ? (size_t)p->fsize : 22 + 65535;
  unsigned char *t = malloc(tail);
  if (!t) return pth_fail(p, VTL_ERR_OOM, "out of memory");
  if (read_at(p, t, tail, p->fsize - tail) != VTL_OK) { free(t); return vtl_error_status(); }
  size_t at = SIZE_MAX;
  for (size_t i = tail - 22 + 1; i-- > 0;)
    if (rd32(t + i) == 0x06054b50 && i + 22 + rd16(t + i + 20) <= tail) { at = i; break; }
  if (at == SIZE_MAX) {
    free(t);
    return pth_fail(p, VTL_ERR_FORMAT, ZIP_DAMAGED ": no end-of-central-directory record");
  }
  uint64_t eocd = p->fsize - tail + at;
  uint64_t disk = rd16(t + at + 4), cd_disk = rd16(t + at + 6), n_here = rd16(t + at + 8), n = rd16(t + at + 10);
  uint64_t cd_size = rd32(t + at + 12), cd_off = rd32(t + at + 16);
  free(t);
  uint64_t limit = eocd; /* the central directory ends before this */
  if (n == 0xffff || n_here == 0xffff || cd_size == 0xffffffffu || cd_off == 0xffffffffu) {
    unsigned char loc[20], rec[56];
    if (eocd < 20) return pth_fail(p, VTL_ERR_FORMAT, ZIP_DAMAGED ": the zip64 end-of-central-directory locator is missing");
    if (read_at(p, loc, 20, eocd - 20) != VTL_OK) return vtl_error_status();
    if (rd32(loc) != 0x07064b50)
      return pth_fail(p, VTL_ERR_FORMAT, ZIP_DAMAGED ": the zip64 end-of-central-directory locator is missing");
    uint64_t z64 = rd64(loc + 8);
    if (z64 > eocd - 20 || eocd - 20 - z64 < 56)
      return pth_fail(p, VTL_ERR_FORMAT, ZIP_DAMAGED ": the zip64 end-of-central-directory record (offset %llu) lies "
                      "past the end of the archive", (unsigned long long)z64);
    if (read_at(p, rec, 56, z64) != VTL_OK) return vtl_error_status();
    if (rd32(rec) != 0x06064b50)
      return pth_fail(p, VTL_ERR_FORMAT, ZIP_DAMAGED ": bad zip64 end-of-central-directory record at offset %llu",
                      (unsigned long long)z64);
    disk = rd32(rec + 16); cd_disk = rd32(rec + 20); n_here = rd64(rec + 24); n = rd64(rec + 32);
    cd_size = rd64(rec + 40); cd_off = rd64(rec + 48);
    limit = z64;
  }
  if (disk != 0 || cd_disk != 0 || n_here != n)
    return pth_fail(p, VTL_ERR_FORMAT, "a multi-part (split) zip archive; only single-file archives are read");
  if (cd_off > limit || cd_size > limit - cd_off)
    return pth_fail(p, VTL_ERR_FORMAT, ZIP_DAMAGED ": the central directory (offset %llu, %llu bytes) extends past the "
                    "end of the archive (%llu bytes)", (unsigned long long)cd_off, (unsigned long long)cd_size,
                    (unsigned long long)limit);
  if (n > cd_size / 46)
    return pth_fail(p, VTL_ERR_FORMAT, ZIP_DAMAGED ": the central directory claims %llu entries but its %llu bytes "
                    "hold at most %llu", (unsigned long long)n, (unsigned long long)cd_size,
                    (unsigned long long)(cd_size / 46));
  p->data_end = cd_off;
  unsigned char *cd = malloc(cd_size ? (size_t)cd_size : 1);
  p->ents = calloc(n ? (size_t)n : 1, sizeof *p->ents);
  if (!cd || !p->ents) { free(cd); return pth_fail(p, VTL_ERR_OOM, "out of memory"); }
  if (read_at(p, cd, (size_t)cd_size, cd_off) != VTL_OK) { free(cd); return vtl_error_status(); }
  vtl_status st = VTL_OK;
  size_t pos = 0;
  for (uint64_t k = 0; k < n && st == VTL_OK; k++) {
    const unsigned char *h = cd + pos;
    if (cd_size - pos < 46 || rd32(h) != 0x02014b50) {
      st = pth_fail(p, VTL_ERR_FORMAT, ZIP_DAMAGED ": bad central directory entry %llu (at offset %llu)",
                    (unsigned long long)k + 1, (unsigned long long)(cd_off + pos));
      break;
    }
    size_t nlen = rd16(h + 28), xlen = rd16(h + 30), clen = rd16(h + 32);
    if (cd_size - pos - 46 < nlen + xlen + clen) {
      st = pth_fail(p, VTL_ERR_FORMAT, ZIP_DAMAGED ": central directory entry %llu runs past the directory's end",
                    (unsigned long long)k + 1);
      break;
    }
    zip_entry *e = &p->ents[p->nents];
    const char *name = (const char *)h + 46;
    if (memchr(name, 0, nlen)) {
      st = pth_fail(p, VTL_ERR_FORMAT, ZIP_DAMAGED ": entry %llu has a name with a NUL byte", (unsigned long long)k + 1);
      break;
    }
    e->name = malloc(nlen + 1);
    if (!e->name) { st = pth_fail(p, VTL_ERR_OOM, "out of memory"); break; }
    memcpy(e->name, name, nlen);
    e->name[nlen] = 0;
    p->nents++;
    e->flags = rd16(h + 8);
    e->method = rd16(h + 10);
    e->csize = rd32(h + 20);
    e->usize = rd32(h + 24);
    e->local_offset = rd32(h + 42);
    uint32_t disk_start = rd16(h + 34);
    /* the zip64 extra field holds, in order, whichever of these are saturated */
    const unsigned char *x = h + 46 + nlen, *xend = x + xlen;
    while (xend - x >= 4) {
      uint16_t id = rd16(x), sz = rd16(x + 2);
      if ((size_t)(xend - x - 4) < sz) break;
      if (id == 0x0001) {
        const unsigned char *f = x + 4, *fend = f + sz;
        bool bad = false;
        if (e->usize == 0xffffffffu) { if (fend - f < 8) bad = true; else { e->usize = rd64(f); f += 8; } }
        if (!bad && e->csize == 0xffffffffu) { if (fend - f < 8) bad = true; else { e->csize = rd64(f); f += 8; } }
        if (!bad && e->local_offset == 0xffffffffu) { if (fend - f < 8) bad = true; else { e->local_offset = rd64(f); f += 8; } }
        if (!bad && disk_start == 0xffff) { if (fend - f < 4) bad = true; else { disk_start = rd32(f); f += 4; } }
        if (bad) {
          char nb[NAME_SHOWN];
          st = pth_fail(p, VTL_ERR_FORMAT, ZIP_DAMAGED ": entry '%s' has a short zip64 extra field", shown(e->name, nb));
        }
      }
      x += 4 + sz;
    }
    if (st != VTL_OK) break;
    if (e->usize == 0xffffffffu || e->csize == 0xffffffffu || e->local_offset == 0xffffffffu) {
      char nb[NAME_SHOWN];
      st = pth_fail(p, VTL_ERR_FORMAT, ZIP_DAMAGED ": entry '%s' lacks its zip64 sizes", shown(e->name, nb));
      break;
    }
    if (disk_start != 0) {
      st = pth_fail(p, VTL_ERR_FORMAT, "a multi-part (split) zip archive; only single-file archives are read");
      break;
    }
    if (e->local_offset > p->data_end || p->data_end - e->local_offset < 30) {
      char nb[NAME_SHOWN];
      st = pth_fail(p, VTL_ERR_FORMAT, ZIP_DAMAGED ": entry '%s' has its local header at offset %llu, past the "
                    "entries' data (which ends at %llu)", shown(e->name, nb), (unsigned long long)e->local_offset,
                    (unsigned long long)p->data_end);
      break;
    }
    pos += 46 + nlen + xlen + clen;
  }
  free(cd);
  if (st != VTL_OK) return st;
  qsort(p->ents, p->nents, sizeof *p->ents, cmp_entry);
  return VTL_OK;
}

/* The offset of an entry's bytes, checked to lie wholly before the central directory. */
static vtl_status zip_data(const vtl_pth *p, const zip_entry *e, uint64_t *start) {
  char nb[NAME_SHOWN];
  if (e->flags & 1) return pth_fail(p, VTL_ERR_FORMAT, "zip entry '%s' is encrypted", shown(e->name, nb));
  if (e->method != 0)
    return pth_fail(p, VTL_ERR_FORMAT, "zip entry '%s' is compressed (method %u%s); torch.save stores its records "
                    "uncompressed: save the checkpoint again with torch.save, or re-zip it with 'zip -0'",
                    shown(e->name, nb), e->method, e->method == 8 ? ", deflate" : "");
  if (e->csize != e->usize)
    return pth_fail(p, VTL_ERR_FORMAT, ZIP_DAMAGED ": stored entry '%s' has different compressed and uncompressed "
                    "sizes (%llu and %llu)", shown(e->name, nb), (unsigned long long)e->csize,
                    (unsigned long long)e->usize);
  unsigned char h[30];
  if (read_at(p, h, 30, e->local_offset) != VTL_OK) return vtl_error_status();
  if (rd32(h) != 0x04034b50)
    return pth_fail(p, VTL_ERR_FORMAT, ZIP_DAMAGED ": no local header for entry '%s' at offset %llu", shown(e->name, nb),
                    (unsigned long long)e->local_offset);
  uint64_t s = e->local_offset + 30 + rd16(h + 26) + rd16(h + 28);
  if (s > p->data_end || e->csize > p->data_end - s)
    return pth_fail(p, VTL_ERR_FORMAT, ZIP_DAMAGED ": entry '%s' (%llu bytes at offset %llu) runs past the entries' "
                    "data (which ends at %llu)", shown(e->name, nb), (unsigned long long)e->csize,
                    (unsigned long long)s, (unsigned long long)p->data_end);
  *start = s;
  return VTL_OK;
}

/* The name prefix + "/" + rest (or rest alone for an archive without a top directory). */
static char *entry_name(const vtl_pth *p, const char *rest) {
  size_t a = strlen(p->prefix), b = strlen(rest);
  char *s = malloc(a + b + 2);
  if (!s) return NULL;
  if (a) { memcpy(s, p->prefix, a); s[a] = '/'; a++; }
  memcpy(s + a, rest, b + 1);
  return s;
}

static const zip_entry *find_record(const vtl_pth *p, const char *rest, bool *oom) {
  char *name = entry_name(p, rest);
  *oom = name == NULL;
  if (!name) return NULL;
  const zip_entry *e = zip_find(p, name);
  free(name);
  return e;
}

/* Finds the archive's top directory (the one holding data.pkl) and refuses archives that are
   not torch.save checkpoints. */
static vtl_status find_archive(vtl_pth *p) {
  const zip_entry *pkl = NULL;
  for (size_t i = 0; i < p->nents && !pkl; i++) {
    const char *nm = p->ents[i].name, *slash = strchr(nm, '/');
    if (strcmp(nm, "data.pkl") == 0 || (slash && strcmp(slash + 1, "data.pkl") == 0)) pkl = &p->ents[i];
  }
  if (!pkl)
    return pth_fail(p, VTL_ERR_FORMAT, "a zip archive without a data.pkl record: not a PyTorch checkpoint written by "
                    "torch.save");
  size_t plen = strlen(pkl->name) - strlen("data.pkl");
  p->prefix = malloc(plen + 1);
  if (!p->prefix) return pth_fail(p, VTL_ERR_OOM, "out of memory");
  memcpy(p->prefix, pkl->name, plen ? plen - 1 : 0);
  p->prefix[plen ? plen - 1 : 0] = 0;
  bool oom;
  char *code = entry_name(p, "code/");
  if (!code) return pth_fail(p, VTL_ERR_OOM, "out of memory");
  bool script = find_record(p, "constants.pkl", &oom) != NULL;
  for (size_t i = 0; i < p->nents && !script; i++) script = strncmp(p->ents[i].name, code, strlen(code)) == 0;
  free(code);
  if (script)
    return pth_fail(p, VTL_ERR_FORMAT, "a TorchScript archive (torch.jit.save), which holds code; vtl reads checkpoints "
                    "written by torch.save: save the model's state_dict() with torch.save instead");
  const zip_entry *bo = find_record(p, "byteorder", &oom);
  if (oom) return pth_fail(p, VTL_ERR_OOM, "out of memory");
  if (bo) {
    char b[16] = {0};
    uint64_t s;
    if (zip_data(p, bo, &s) != VTL_OK) return vtl_error_status();
    size_t k = bo->usize < sizeof b - 1 ? (size_t)bo->usize : sizeof b - 1;
    if (read_at(p, b, k, s) != VTL_OK) return vtl_error_status();
    if (strcmp(b, "little") != 0) {
      char nb[NAME_SHOWN];
      return pth_fail(p, VTL_ERR_FORMAT, "saved with byte order '%s'; only little-endian checkpoints are read",
                      shown(b, nb));
    }
  }
  return VTL_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Storage records: read once per key                                                         */

static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

/* The index of the storage with key, or -1. */
static long stor_lookup(const vtl_pth *p, const char *key) {
  if (!p->hash_cap) return -1;
  for (size_t h = hash_str(key) & (p->hash_cap - 1);; h = (h + 1) & (p->hash_cap - 1)) {
    int32_t i = p->stor_hash[h];
    if (i < 0) return -1;
    if (strcmp(p->stor[i].key, key) == 0) return i;
  }
}

static vtl_status stor_index(vtl_pth *p, size_t i) {
  if (2 * (p->nstor + 1) > p->hash_cap) {
    size_t cap = p->hash_cap ? 2 * p->hash_cap : 64;
    int32_t *h = malloc(cap * sizeof *h);
    if (!h) return pth_fail(p, VTL_ERR_OOM, "out of memory");
    memset(h, 0xff, cap * sizeof *h);
    free(p->stor_hash);
    p->stor_hash = h;
    p->hash_cap = cap;
    for (size_t j = 0; j < p->nstor; j++) {
      size_t s = hash_str(p->stor[j].key) & (cap - 1);
      while (h[s] >= 0) s = (s + 1) & (cap - 1);
      h[s] = (int32_t)j;
    }
    if (i < p->nstor) return VTL_OK; /* already placed by the rehash */
  }
  size_t s = hash_str(p->stor[i].key) & (p->hash_cap - 1);
  while (p->stor_hash[s] >= 0) s = (s + 1) & (p->hash_cap - 1);
  p->stor_hash[s] = (int32_t)i;
  return VTL_OK;
}

/* Reads data/<key> as numel elements of storage type `type` into a new CPU storage. */
static vtl_status read_storage(vtl_pth *p, const char *key, int type, uint64_t numel, vtl_storage **out) {
  char nb[NAME_SHOWN];
  char rest[NAME_SHOWN + 8];
  *out = NULL;
  size_t klen = strlen(key);
  if (klen > NAME_SHOWN) return pth_fail(p, VTL_ERR_FORMAT, "storage key '%s' is too long", shown(key, nb));
  snprintf(rest, sizeof rest, "data/%s", key);
  bool oom;
  const zip_entry *e = find_record(p, rest, &oom);
  if (oom) return pth_fail(p, VTL_ERR_OOM, "out of memory");
  if (!e)
    return pth_fail(p, VTL_ERR_FORMAT, "storage '%s' has no record '%s%s%s' in the archive", shown(key, nb), p->prefix,
                    *p->prefix ? "/" : "", rest);
  uint64_t fsz = (uint64_t)storage_types[type].file_size, need;
  if (__builtin_mul_overflow(numel, fsz, &need) || need > e->usize)
    return pth_fail(p, VTL_ERR_FORMAT, "storage '%s' claims %llu elements of torch.%s, more than its record's %llu "
                    "bytes hold (truncated or damaged checkpoint)", shown(key, nb), (unsigned long long)numel,
                    storage_types[type].name, (unsigned long long)e->usize);
  uint64_t start;
  if (zip_data(p, e, &start) != VTL_OK) return vtl_error_status();
  vtl_dtype dt = storage_types[type].dt;
  size_t dsz = vtl_dtype_size(dt);
  vtl_storage *s = vtl_storage_new((size_t)numel * dsz, (vtl_device){VTL_CPU, 0});
  if (!s) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", vtl_error_message());
    return pth_fail(p, vtl_error_status(), "storage '%s': %s", shown(key, nb), msg);
  }
  storage_conv conv = storage_types[type].conv;
  if (conv == CONV_NONE || conv == CONV_BOOL) {
    if (read_at(p, s->data, (size_t)need, start) != VTL_OK) { vtl_storage_release(s); return vtl_error_status(); }
    if (conv == CONV_BOOL) {
      uint8_t *d = s->data;
      for (uint64_t i = 0; i < numel; i++) d[i] = d[i] != 0;
    }
  } else {
    unsigned char *buf = malloc(CHUNK_BYTES);
    if (!buf) { vtl_storage_release(s); return pth_fail(p, VTL_ERR_OOM, "out of memory"); }
    uint64_t per = CHUNK_BYTES / fsz;
    int32_t *d = s->data;
    for (uint64_t done = 0; done < numel;) {
      uint64_t k = numel - done < per ? numel - done : per;
      if (read_at(p, buf, (size_t)(k * fsz), start + done * fsz) != VTL_OK) {
        free(buf);
        vtl_storage_release(s);
        return vtl_error_status();
      }
      if (conv == CONV_I16) for (uint64_t i = 0; i < k; i++) d[done + i] = (int16_t)rd16(buf + 2 * i);
      else for (uint64_t i = 0; i < k; i++) d[done + i] = (int8_t)buf[i];
      done += k;
    }
    free(buf);
  }
  *out = s;
  return VTL_OK;
}

/* The storage for a persistent id; records are read on first use and shared after. */
static long get_storage(vtl_pth *p, const char *key, int type, uint64_t numel) {
  char nb[NAME_SHOWN];
  long i = stor_lookup(p, key);
  if (i >= 0) {
    const pth_storage *s = &p->stor[i];
    if (s->type != type || s->numel != numel)
      return pth_fail(p, VTL_ERR_FORMAT, "storage '%s' is referenced both as %llu elements of torch.%s and as %llu of "
                      "torch.%s", shown(key, nb), (unsigned long long)s->numel, storage_types[s->type].name,
                      (unsigned long long)numel, storage_types[type].name), -1;
    return i;
  }
  if (p->nstor == p->capstor) {
    size_t cap = p->capstor ? 2 * p->capstor : 16;
    pth_storage *ns = cap < INT32_MAX ? realloc(p->stor, cap * sizeof *ns) : NULL;
    if (!ns) return pth_fail(p, VTL_ERR_OOM, "out of memory"), -1;
    p->stor = ns;
    p->capstor = cap;
  }
  vtl_storage *s;
  if (read_storage(p, key, type, numel, &s) != VTL_OK) return -1;
  pth_storage *e = &p->stor[p->nstor];
  e->key = strdup(key);
  if (!e->key) { vtl_storage_release(s); return pth_fail(p, VTL_ERR_OOM, "out of memory"), -1; }
  e->type = type;
  e->numel = numel;
  e->s = s;
  p->nstor++;
  if (stor_index(p, p->nstor - 1) != VTL_OK) return -1;
  return (long)(p->nstor - 1);
}

/* ------------------------------------------------------------------------------------------ */
/* The unpickler                                                                              */

typedef struct {
  vtl_pth *p;
  const unsigned char *b;
  size_t n, pos, op_at;
  unsigned char op;
  int proto;
  vtl_pv **stack;
  size_t sn, scap;
  size_t *marks;
  size_t mn, mcap;
  vtl_pv **memo;
  size_t memo_cap, memo_count;
} unpickler;

static const char *op_name(unsigned char op) {
  switch (op) {
  case 0x80: return "PROTO"; case 0x95: return "FRAME"; case '}': return "EMPTY_DICT"; case ']': return "EMPTY_LIST";
  case ')': return "EMPTY_TUPLE"; case '(': return "MARK"; case 'q': return "BINPUT"; case 'r': return "LONG_BINPUT";
  case 0x94: return "MEMOIZE"; case 'h': return "BINGET"; case 'j': return "LONG_BINGET"; case 'X': return "BINUNICODE";
  case 0x8d: return "BINUNICODE8"; case 0x8c: return "SHORT_BINUNICODE"; case 'T': return "BINSTRING";
  case 'U': return "SHORT_BINSTRING"; case 'B': return "BINBYTES"; case 'C': return "SHORT_BINBYTES";
  case 0x8e: return "BINBYTES8"; case 0x96: return "BYTEARRAY8"; case 'J': return "BININT"; case 'K': return "BININT1";
  case 'M': return "BININT2"; case 0x8a: return "LONG1"; case 0x8b: return "LONG4"; case 'G': return "BINFLOAT";
  case 0x88: return "NEWTRUE"; case 0x89: return "NEWFALSE"; case 'N': return "NONE"; case 't': return "TUPLE";
  case 0x85: return "TUPLE1"; case 0x86: return "TUPLE2"; case 0x87: return "TUPLE3"; case 'l': return "LIST";
  case 'd': return "DICT"; case 's': return "SETITEM"; case 'u': return "SETITEMS"; case 'a': return "APPEND";
  case 'e': return "APPENDS"; case 'c': return "GLOBAL"; case 0x93: return "STACK_GLOBAL"; case 'R': return "REDUCE";
  case 'b': return "BUILD"; case 0x81: return "NEWOBJ"; case 0x92: return "NEWOBJ_EX"; case 'Q': return "BINPERSID";
  case '0': return "POP"; case '1': return "POP_MARK"; case '2': return "DUP"; case '.': return "STOP";
  case 'I': return "INT"; case 'L': return "LONG"; case 'F': return "FLOAT"; case 'S': return "STRING";
  case 'V': return "UNICODE"; case 'P': return "PERSID"; case 'g': return "GET"; case 'p': return "PUT";
  case 'i': return "INST"; case 'o': return "OBJ"; case 0x82: return "EXT1"; case 0x83: return "EXT2";
  case 0x84: return "EXT4"; case 0x8f: return "EMPTY_SET"; case 0x90: return "ADDITEMS"; case 0x91: return "FROZENSET";
  case 0x97: return "NEXT_BUFFER"; case 0x98: return "READONLY_BUFFER";
  default: return NULL;
  }
}

/* "load: <path>: data.pkl byte <at> (<OPCODE>): <message>" */
__attribute__((format(printf, 2, 3)))
static vtl_status bad(const unpickler *u, const char *fmt, ...) {
  char msg[640];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  const char *name = op_name(u->op);
  char opb[16];
  if (!name) { snprintf(opb, sizeof opb, "0x%02x", u->op); name = opb; }
  return pth_fail(u->p, VTL_ERR_FORMAT, "data.pkl byte %zu (%s): %s", u->op_at, name, msg);
}

static const unsigned char *need(unpickler *u, size_t k) {
  if (u->n - u->pos < k) {
    bad(u, "needs %zu more bytes but data.pkl ends (truncated pickle)", k);
    return NULL;
  }
  const unsigned char *r = u->b + u->pos;
  u->pos += k;
  return r;
}

/* A length read from the pickle, checked against the bytes left. */
static bool need_len(unpickler *u, uint64_t len, const unsigned char **out) {
  if (len > u->n - u->pos) {
    bad(u, "a length of %llu bytes runs past the end of data.pkl (%zu bytes left)", (unsigned long long)len,
        u->n - u->pos);
    return false;
  }
  *out = u->b + u->pos;
  u->pos += (size_t)len;
  return true;
}

static vtl_status push(unpickler *u, vtl_pv *v) {
  if (!v) return vtl_error_status();
  if (u->sn == u->scap) {
    size_t cap = u->scap ? 2 * u->scap : 64;
    vtl_pv **s = realloc(u->stack, cap * sizeof *s);
    if (!s) return pth_fail(u->p, VTL_ERR_OOM, "out of memory");
    u->stack = s;
    u->scap = cap;
  }
  u->stack[u->sn++] = v;
  return VTL_OK;
}

static size_t frame_bottom(const unpickler *u) { return u->mn ? u->marks[u->mn - 1] : 0; }

static vtl_pv *pop(unpickler *u) {
  if (u->sn <= frame_bottom(u)) {
    bad(u, "pickle stack underflow");
    return NULL;
  }
  return u->stack[--u->sn];
}

static vtl_pv *top(unpickler *u) {
  if (u->sn <= frame_bottom(u)) {
    bad(u, "pickle stack underflow");
    return NULL;
  }
  return u->stack[u->sn - 1];
}

/* Removes the items above the last MARK; they stay readable at *items until the next push. */
static vtl_status pop_mark(unpickler *u, vtl_pv ***items, size_t *k) {
  if (!u->mn) return bad(u, "no MARK on the pickle stack");
  size_t m = u->marks[--u->mn];
  *items = u->stack + m;
  *k = u->sn - m;
  u->sn = m;
  return VTL_OK;
}

static vtl_pv *new_str(unpickler *u, int kind, const unsigned char *s, size_t len) {
  vtl_pv *v = pv_new(u->p, kind);
  if (!v) return NULL;
  v->u.s.p = malloc(len + 1);
  if (!v->u.s.p) {
    v->kind = VTL_PV_NONE;
    pth_fail(u->p, VTL_ERR_OOM, "out of memory");
    return NULL;
  }
  memcpy(v->u.s.p, s, len);
  v->u.s.p[len] = 0;
  v->u.s.n = len;
  return v;
}

static vtl_pv *new_int(unpickler *u, int64_t i) {
  vtl_pv *v = pv_new(u->p, VTL_PV_INT);
  if (v) v->u.i = i;
  return v;
}

/* A sequence of kind from k items. */
static vtl_pv *new_seq(unpickler *u, int kind, vtl_pv *const *items, size_t k) {
  vtl_pv *v = pv_new(u->p, kind);
  if (!v) return NULL;
  for (size_t i = 0; i < k; i++)
    if (seq_push(u->p, v, items[i]) != VTL_OK) return NULL;
  return v;
}

static vtl_status memo_put(unpickler *u, uint64_t idx) {
  vtl_pv *v = top(u);
  if (!v) return vtl_error_status();
  if (idx >= (uint64_t)u->n + 256)
    return bad(u, "memo index %llu out of range (data.pkl has %zu bytes)", (unsigned long long)idx, u->n);
  if (idx >= u->memo_cap) {
    size_t cap = u->memo_cap ? u->memo_cap : 64;
    while (cap <= idx) cap *= 2;
    vtl_pv **m = realloc(u->memo, cap * sizeof *m);
    if (!m) return pth_fail(u->p, VTL_ERR_OOM, "out of memory");
    memset(m + u->memo_cap, 0, (cap - u->memo_cap) * sizeof *m);
    u->memo = m;
    u->memo_cap = cap;
  }
  if (!u->memo[idx]) u->memo_count++;
  u->memo[idx] = v;
  return VTL_OK;
}

static vtl_status memo_get(unpickler *u, uint64_t idx) {
  if (idx >= u->memo_cap || !u->memo[idx])
    return bad(u, "memo index %llu out of range (nothing was stored there)", (unsigned long long)idx);
  return push(u, u->memo[idx]);
}

/* A little-endian two's complement integer of len bytes (LONG1/LONG4). */
static vtl_status read_long(unpickler *u, const unsigned char *s, uint64_t len) {
  uint64_t v = 0;
  if (len == 0) return push(u, new_int(u, 0));
  bool neg = s[len - 1] & 0x80;
  for (uint64_t i = 8; i < len; i++)
    if (s[i] != (neg ? 0xff : 0x00)) return bad(u, "an integer wider than 64 bits");
  for (uint64_t i = 0; i < 8; i++) {
    unsigned char c = i < len ? s[i] : (neg ? 0xff : 0x00);
    v |= (uint64_t)c << (8 * i);
  }
  if (len >= 8 && (bool)(v >> 63) != neg) return bad(u, "an integer wider than 64 bits");
  return push(u, new_int(u, (int64_t)v));
}

/* GLOBAL / STACK_GLOBAL: the allowed globals become values, any other is refused by name. */
static vtl_status find_global(unpickler *u, const char *mod, size_t ml, const char *name, size_t nl) {
  char mb[NAME_SHOWN], nb[NAME_SHOWN];
  if (u->proto < 3) { /* Python 2 module names, as Python's unpickler maps them */
    if (ml == 11 && memcmp(mod, "__builtin__", 11) == 0) { mod = "builtins"; ml = 8; }
    else if (ml == 10 && memcmp(mod, "exceptions", 10) == 0) { mod = "builtins"; ml = 8; }
    else if (ml == 8 && memcmp(mod, "copy_reg", 8) == 0) { mod = "copyreg"; ml = 7; }
  }
  for (int g = 0; g < G_STORAGE; g++)
    if (strlen(allowed_globals[g].module) == ml && memcmp(allowed_globals[g].module, mod, ml) == 0 &&
        strlen(allowed_globals[g].name) == nl && memcmp(allowed_globals[g].name, name, nl) == 0) {
      vtl_pv *v = pv_new(u->p, PV_GLOBAL);
      if (v) v->u.i = g;
      return push(u, v);
    }
  if (ml == 5 && memcmp(mod, "torch", 5) == 0 && nl > 7 && memcmp(name + nl - 7, "Storage", 7) == 0) {
    for (int t = 0; t < N_STORAGE_TYPES; t++)
      if (strlen(storage_types[t].name) == nl && memcmp(storage_types[t].name, name, nl) == 0) {
        vtl_pv *v = pv_new(u->p, PV_GLOBAL);
        if (v) v->u.i = G_STORAGE + t;
        return push(u, v);
      }
    return pth_fail(u->p, VTL_ERR_FORMAT, "unknown storage type 'torch.%s' (known: " STORAGE_TYPE_LIST " Storage)",
                    shown_n(name, nl, nb));
  }
  return pth_fail(u->p, VTL_ERR_FORMAT, "refusing to load global '%s.%s' (only tensors, storages and containers are "
                  "allowed)", shown_n(mod, ml, mb), shown_n(name, nl, nb));
}

static bool get_int(const vtl_pv *v, int64_t *out) {
  if (v->kind != VTL_PV_INT && v->kind != VTL_PV_BOOL) return false;
  *out = v->u.i;
  return true;
}

/* _rebuild_tensor(_v2)(storage, storage_offset, size, stride, ...): a view of the storage,
   checked to lie inside it. */
static vtl_status rebuild_tensor(unpickler *u, const char *fn, vtl_pv *const *a) {
  char sb[256], tb[256], nb[NAME_SHOWN];
  if (a[0]->kind != PV_STORAGE) return bad(u, "%s: argument 1 is not a storage (got %s)", fn, kind_name(a[0]->kind));
  const pth_storage *s = &u->p->stor[a[0]->u.i];
  int64_t off;
  if (!get_int(a[1], &off) || off < 0)
    return bad(u, "%s: the storage offset must be a non-negative integer (got a %s)", fn, kind_name(a[1]->kind));
  if (!is_seq(a[2]) || !is_seq(a[3]))
    return bad(u, "%s: size and stride must be tuples (got a %s and a %s)", fn, kind_name(a[2]->kind),
               kind_name(a[3]->kind));
  size_t nd = a[2]->u.seq.n;
  if (a[3]->u.seq.n != nd)
    return bad(u, "%s: size has %zu dimensions but stride has %zu", fn, nd, a[3]->u.seq.n);
  if (nd > VTL_MAX_DIMS) return bad(u, "%s: %zu dimensions (at most %d supported)", fn, nd, VTL_MAX_DIMS);
  int64_t shape[VTL_MAX_DIMS] = {0}, strides[VTL_MAX_DIMS] = {0};
  for (size_t d = 0; d < nd; d++) {
    if (!get_int(a[2]->u.seq.v[d], &shape[d]) || shape[d] < 0)
      return bad(u, "%s: size entry %zu is not a non-negative integer", fn, d + 1);
    if (!get_int(a[3]->u.seq.v[d], &strides[d]) || strides[d] < 0)
      return bad(u, "%s: stride entry %zu is not a non-negative integer", fn, d + 1);
  }
  vtl_shape_format(shape, (int)nd, sb, sizeof sb);
  vtl_shape_format(strides, (int)nd, tb, sizeof tb);
  /* the last element's index, or the offset alone for an empty tensor */
  uint64_t last = (uint64_t)off, numel = 1;
  bool empty = false, overflow = false;
  for (size_t d = 0; d < nd; d++) {
    uint64_t step;
    if (shape[d] == 0) empty = true;
    else if (__builtin_mul_overflow((uint64_t)(shape[d] - 1), (uint64_t)strides[d], &step) ||
             __builtin_add_overflow(last, step, &last))
      overflow = true;
    if (__builtin_mul_overflow(numel, (uint64_t)shape[d], &numel)) overflow = true;
  }
  if (overflow && empty)
    return bad(u, "%s: size %s is too large", fn, sb);
  if (!empty && (overflow || last >= s->numel))
    return pth_fail(u->p, VTL_ERR_FORMAT, "a tensor of size %s, stride %s at storage offset %lld reaches beyond "
                    "storage '%s' (%llu elements of torch.%s)", sb, tb, (long long)off, shown(s->key, nb),
                    (unsigned long long)s->numel, storage_types[s->type].name);
  if (empty && (uint64_t)off > s->numel)
    return pth_fail(u->p, VTL_ERR_FORMAT, "an empty tensor at storage offset %lld lies beyond storage '%s' (%llu "
                    "elements)", (long long)off, shown(s->key, nb), (unsigned long long)s->numel);
  if (numel > (uint64_t)INT64_MAX / 8) return bad(u, "%s: size %s is too large", fn, sb); /* expanded (stride 0) */
  vtl_tensor base;
  memset(&base, 0, sizeof base);
  base.dtype = storage_types[s->type].dt;
  base.storage = s->s;
  vtl_tensor *t = vtl_tensor_view_of(&base, shape, strides, (int)nd, off);
  if (!t) return pth_fail(u->p, VTL_ERR_OOM, "out of memory");
  vtl_pv *v = pv_new(u->p, VTL_PV_TENSOR);
  if (!v) { vtl_tensor_release(t); return vtl_error_status(); }
  v->u.t = t;
  return push(u, v);
}

/* A dict from an iterable of (key, value) pairs: OrderedDict([(k, v), ...]). */
static vtl_status dict_from_pairs(unpickler *u, const vtl_pv *pairs) {
  vtl_pv *d = pv_new(u->p, VTL_PV_DICT);
  if (!d) return vtl_error_status();
  for (size_t i = 0; i < pairs->u.seq.n; i++) {
    const vtl_pv *pr = pairs->u.seq.v[i];
    if (!is_seq(pr) || pr->u.seq.n != 2) return bad(u, "OrderedDict: item %zu is not a (key, value) pair", i + 1);
    if (seq_push(u->p, d, pr->u.seq.v[0]) != VTL_OK || seq_push(u->p, d, pr->u.seq.v[1]) != VTL_OK)
      return vtl_error_status();
  }
  return push(u, d);
}

/* _codecs.encode(text, 'latin1'): the bytes whose code points text holds (each below 256). */
static vtl_status latin1_bytes(unpickler *u, const vtl_pv *text) {
  const unsigned char *s = (const unsigned char *)text->u.s.p;
  size_t n = text->u.s.n, k = 0;
  vtl_pv *v = new_str(u, VTL_PV_BYTES, s, n); /* the result is at most as long as the text */
  if (!v) return vtl_error_status();
  for (size_t i = 0; i < n; i++) {
    if (s[i] < 0x80) v->u.s.p[k++] = (char)s[i];
    else if ((s[i] == 0xc2 || s[i] == 0xc3) && i + 1 < n && (s[i + 1] & 0xc0) == 0x80) {
      v->u.s.p[k++] = (char)(((s[i] & 0x03) << 6) | (s[i + 1] & 0x3f));
      i++;
    } else return bad(u, "_codecs.encode: the text is not latin-1");
  }
  v->u.s.p[k] = 0;
  v->u.s.n = k;
  return push(u, v);
}

static vtl_status do_reduce(unpickler *u) {
  vtl_pv *args = pop(u), *fn = args ? pop(u) : NULL;
  if (!fn) return vtl_error_status();
  if (fn->kind != PV_GLOBAL) return bad(u, "calls a %s, not an allowed global", kind_name(fn->kind));
  if (args->kind != VTL_PV_TUPLE) return bad(u, "the arguments are a %s, not a tuple", kind_name(args->kind));
  vtl_pv *const *a = args->u.seq.v;
  size_t n = args->u.seq.n;
  char gb[96];
  global_name(fn->u.i, gb, sizeof gb);
  switch (fn->u.i) {
  case G_ORDERED_DICT:
    if (n == 0) return push(u, pv_new(u->p, VTL_PV_DICT));
    if (n == 1 && is_seq(a[0])) return dict_from_pairs(u, a[0]);
    if (n == 1 && a[0]->kind == VTL_PV_DICT) return push(u, new_seq(u, VTL_PV_DICT, a[0]->u.seq.v, a[0]->u.seq.n));
    return bad(u, "%s: expected no arguments or a list of pairs", gb);
  case G_REBUILD_TENSOR:
  case G_REBUILD_TENSOR_V2:
    if (n < 4 || n > 7) return bad(u, "%s: expected 4 to 7 arguments, got %zu", gb, n);
    return rebuild_tensor(u, allowed_globals[fn->u.i].name, a);
  case G_CODECS_ENCODE:
    if (n != 2 || a[0]->kind != VTL_PV_STR || a[1]->kind != VTL_PV_STR ||
        (strcmp(a[1]->u.s.p, "latin1") != 0 && strcmp(a[1]->u.s.p, "latin-1") != 0))
      return bad(u, "%s: only (text, 'latin1') is supported", gb);
    return latin1_bytes(u, a[0]);
  case G_REBUILD_PARAMETER:
  case G_REBUILD_PARAMETER_STATE:
    if (n < 3 || n > 4 || a[0]->kind != VTL_PV_TENSOR)
      return bad(u, "%s: expected (tensor, requires_grad, hooks[, state])", gb);
    return push(u, a[0]);
  default:
    return bad(u, "'%s' cannot be called", gb);
  }
}

/* NEWOBJ / NEWOBJ_EX: cls.__new__(cls, ...), only for OrderedDict. */
static vtl_status do_newobj(unpickler *u, bool ex) {
  vtl_pv *kw = ex ? pop(u) : NULL;
  if (ex && !kw) return vtl_error_status();
  vtl_pv *args = pop(u), *cls = args ? pop(u) : NULL;
  if (!cls) return vtl_error_status();
  if (cls->kind != PV_GLOBAL) return bad(u, "instantiates a %s, not an allowed class", kind_name(cls->kind));
  if (cls->u.i != G_ORDERED_DICT) {
    char gb[96];
    global_name(cls->u.i, gb, sizeof gb);
    return bad(u, "'%s' cannot be instantiated", gb);
  }
  return push(u, pv_new(u->p, VTL_PV_DICT));
}

/* BINPERSID: ('storage', torch.<T>Storage, key, location, numel) -> the storage; the
   location (cpu, cuda:0, ...) is ignored: everything loads to the CPU. */
static vtl_status do_persid(unpickler *u) {
  vtl_pv *pid = pop(u);
  if (!pid) return vtl_error_status();
  if (!is_seq(pid) || pid->u.seq.n != 5)
    return bad(u, "persistent id is a %s, not ('storage', type, key, location, numel)", kind_name(pid->kind));
  vtl_pv *const *a = pid->u.seq.v;
  if (a[0]->kind != VTL_PV_STR || strcmp(a[0]->u.s.p, "storage") != 0)
    return bad(u, "persistent id does not start with 'storage'");
  if (a[1]->kind != PV_GLOBAL || a[1]->u.i < G_STORAGE)
    return bad(u, "persistent id's storage type is a %s, not a torch storage class", kind_name(a[1]->kind));
  if (a[2]->kind != VTL_PV_STR) return bad(u, "persistent id's key is a %s, not a string", kind_name(a[2]->kind));
  if (a[3]->kind != VTL_PV_STR) return bad(u, "persistent id's location is a %s, not a string", kind_name(a[3]->kind));
  int64_t numel;
  if (!get_int(a[4], &numel) || numel < 0) return bad(u, "persistent id's element count is not a non-negative integer");
  if (strlen(a[2]->u.s.p) != a[2]->u.s.n) return bad(u, "persistent id's key holds a NUL byte");
  long i = get_storage(u->p, a[2]->u.s.p, (int)(a[1]->u.i - G_STORAGE), (uint64_t)numel);
  if (i < 0) return vtl_error_status();
  vtl_pv *v = pv_new(u->p, PV_STORAGE);
  if (v) v->u.i = i;
  return push(u, v);
}

static vtl_status unpickle(unpickler *u) {
  const unsigned char *s;
  vtl_pv **items = NULL, *v, *k, *c;
  size_t nitems = 0;
  vtl_status st = VTL_OK;
  while (st == VTL_OK) {
    if (u->pos >= u->n) {
      u->op_at = u->n;
      return pth_fail(u->p, VTL_ERR_FORMAT, "data.pkl ends without a STOP opcode (truncated pickle)");
    }
    u->op_at = u->pos;
    u->op = u->b[u->pos++];
    switch (u->op) {
    case 0x80: /* PROTO */
      if (!(s = need(u, 1))) return VTL_ERR_FORMAT;
      if (s[0] > 5) return bad(u, "pickle protocol %d is not supported (0 to 5 are)", s[0]);
      u->proto = s[0];
      break;
    case 0x95: /* FRAME: a size hint */
      if (!need(u, 8)) return VTL_ERR_FORMAT;
      break;
    case '}': st = push(u, pv_new(u->p, VTL_PV_DICT)); break;
    case ']': st = push(u, pv_new(u->p, VTL_PV_LIST)); break;
    case ')': st = push(u, pv_new(u->p, VTL_PV_TUPLE)); break;
    case '(':
      if (u->mn == u->mcap) {
        size_t cap = u->mcap ? 2 * u->mcap : 32;
        size_t *m = realloc(u->marks, cap * sizeof *m);
        if (!m) return pth_fail(u->p, VTL_ERR_OOM, "out of memory");
        u->marks = m;
        u->mcap = cap;
      }
      u->marks[u->mn++] = u->sn;
      break;
    case 'q': if (!(s = need(u, 1))) return VTL_ERR_FORMAT; st = memo_put(u, s[0]); break;
    case 'r': if (!(s = need(u, 4))) return VTL_ERR_FORMAT; st = memo_put(u, rd32(s)); break;
    case 0x94: st = memo_put(u, u->memo_count); break;
    case 'h': if (!(s = need(u, 1))) return VTL_ERR_FORMAT; st = memo_get(u, s[0]); break;
    case 'j': if (!(s = need(u, 4))) return VTL_ERR_FORMAT; st = memo_get(u, rd32(s)); break;
    case 'X': case 'T': case 'B': /* 4-byte length */
    case 0x8d: case 0x8e: case 0x96: /* 8-byte length */
    case 0x8c: case 'U': case 'C': { /* 1-byte length */
      size_t w = (u->op == 'X' || u->op == 'T' || u->op == 'B') ? 4 : (u->op == 0x8c || u->op == 'U' || u->op == 'C') ? 1 : 8;
      if (!(s = need(u, w))) return VTL_ERR_FORMAT;
      uint64_t len = w == 1 ? s[0] : w == 4 ? rd32(s) : rd64(s);
      if (u->op == 'T' && (int32_t)len < 0) return bad(u, "negative string length");
      const unsigned char *str;
      if (!need_len(u, len, &str)) return VTL_ERR_FORMAT;
      bool bytes = u->op == 'B' || u->op == 'C' || u->op == 0x8e || u->op == 0x96;
      st = push(u, new_str(u, bytes ? VTL_PV_BYTES : VTL_PV_STR, str, (size_t)len));
      break;
    }
    case 'J': if (!(s = need(u, 4))) return VTL_ERR_FORMAT; st = push(u, new_int(u, (int32_t)rd32(s))); break;
    case 'K': if (!(s = need(u, 1))) return VTL_ERR_FORMAT; st = push(u, new_int(u, s[0])); break;
    case 'M': if (!(s = need(u, 2))) return VTL_ERR_FORMAT; st = push(u, new_int(u, rd16(s))); break;
    case 0x8a: case 0x8b: {
      size_t w = u->op == 0x8a ? 1 : 4;
      if (!(s = need(u, w))) return VTL_ERR_FORMAT;
      uint64_t len = w == 1 ? s[0] : rd32(s);
      if (w == 4 && (int32_t)len < 0) return bad(u, "negative integer length");
      const unsigned char *num;
      if (!need_len(u, len, &num)) return VTL_ERR_FORMAT;
      st = read_long(u, num, len);
      break;
    }
    case 'G': {
      if (!(s = need(u, 8))) return VTL_ERR_FORMAT;
      uint64_t bits = 0;
      for (int i = 0; i < 8; i++) bits = bits << 8 | s[i]; /* big-endian */
      v = pv_new(u->p, VTL_PV_FLOAT);
      if (v) memcpy(&v->u.f, &bits, 8);
      st = push(u, v);
      break;
    }
    case 0x88: case 0x89:
      v = pv_new(u->p, VTL_PV_BOOL);
      if (v) v->u.i = u->op == 0x88;
      st = push(u, v);
      break;
    case 'N': st = push(u, pv_new(u->p, VTL_PV_NONE)); break;
    case 't': case 'l':
      if ((st = pop_mark(u, &items, &nitems)) != VTL_OK) break;
      st = push(u, new_seq(u, u->op == 't' ? VTL_PV_TUPLE : VTL_PV_LIST, items, nitems));
      break;
    case 0x85: case 0x86: case 0x87: {
      size_t k3 = (size_t)(u->op - 0x84);
      if (u->sn - frame_bottom(u) < k3) return bad(u, "pickle stack underflow");
      u->sn -= k3;
      st = push(u, new_seq(u, VTL_PV_TUPLE, u->stack + u->sn, k3));
      break;
    }
    case 'd':
      if ((st = pop_mark(u, &items, &nitems)) != VTL_OK) break;
      if (nitems % 2) return bad(u, "an odd number of items (%zu) for a dict", nitems);
      st = push(u, new_seq(u, VTL_PV_DICT, items, nitems));
      break;
    case 's':
      if (!(v = pop(u)) || !(k = pop(u)) || !(c = top(u))) return VTL_ERR_FORMAT;
      if (c->kind != VTL_PV_DICT) return bad(u, "sets an item on a %s, not a dict", kind_name(c->kind));
      if ((st = seq_push(u->p, c, k)) == VTL_OK) st = seq_push(u->p, c, v);
      break;
    case 'u':
      if ((st = pop_mark(u, &items, &nitems)) != VTL_OK) break;
      if (nitems % 2) return bad(u, "an odd number of items (%zu) for a dict", nitems);
      if (!(c = top(u))) return VTL_ERR_FORMAT;
      if (c->kind != VTL_PV_DICT) return bad(u, "sets items on a %s, not a dict", kind_name(c->kind));
      for (size_t i = 0; i < nitems && st == VTL_OK; i++) st = seq_push(u->p, c, items[i]);
      break;
    case 'a':
      if (!(v = pop(u)) || !(c = top(u))) return VTL_ERR_FORMAT;
      if (c->kind != VTL_PV_LIST) return bad(u, "appends to a %s, not a list", kind_name(c->kind));
      st = seq_push(u->p, c, v);
      break;
    case 'e':
      if ((st = pop_mark(u, &items, &nitems)) != VTL_OK) break;
      if (!(c = top(u))) return VTL_ERR_FORMAT;
      if (c->kind != VTL_PV_LIST) return bad(u, "appends to a %s, not a list", kind_name(c->kind));
      for (size_t i = 0; i < nitems && st == VTL_OK; i++) st = seq_push(u->p, c, items[i]);
      break;
    case 'c': {
      const unsigned char *mod = u->b + u->pos, *e1 = memchr(mod, '\n', u->n - u->pos);
      if (!e1) return bad(u, "unterminated module name");
      const unsigned char *name = e1 + 1, *e2 = memchr(name, '\n', (size_t)(u->b + u->n - name));
      if (!e2) return bad(u, "unterminated global name");
      u->pos = (size_t)(e2 + 1 - u->b);
      st = find_global(u, (const char *)mod, (size_t)(e1 - mod), (const char *)name, (size_t)(e2 - name));
      break;
    }
    case 0x93:
      if (!(v = pop(u)) || !(k = pop(u))) return VTL_ERR_FORMAT;
      if (k->kind != VTL_PV_STR || v->kind != VTL_PV_STR) return bad(u, "module and name must be strings");
      st = find_global(u, k->u.s.p, k->u.s.n, v->u.s.p, v->u.s.n);
      break;
    case 'R': st = do_reduce(u); break;
    case 0x81: st = do_newobj(u, false); break;
    case 0x92: st = do_newobj(u, true); break;
    case 'b':
      if (!(v = pop(u)) || !(c = top(u))) return VTL_ERR_FORMAT;
      /* an OrderedDict's attributes (state_dict's _metadata) and a tensor's Python state are
         dropped; nothing else takes state */
      if (c->kind != VTL_PV_DICT && c->kind != VTL_PV_TENSOR)
        return bad(u, "sets the state of a %s, which is not supported", kind_name(c->kind));
      break;
    case 'Q': st = do_persid(u); break;
    case '0':
      if (u->sn > frame_bottom(u)) u->sn--;
      else if (u->mn) u->mn--; /* POP on an empty frame discards the MARK, as Python does */
      else return bad(u, "pickle stack underflow");
      break;
    case '1': st = pop_mark(u, &items, &nitems); break;
    case '2':
      if (!(v = top(u))) return VTL_ERR_FORMAT;
      st = push(u, v);
      break;
    case '.':
      if (!(v = pop(u))) return VTL_ERR_FORMAT;
      u->p->root = v;
      return VTL_OK;
    default: {
      const char *nm = op_name(u->op);
      if (nm) return bad(u, "opcode %s is not supported in checkpoints", nm);
      return bad(u, "unknown pickle opcode 0x%02x (not a pickle, or a damaged one)", u->op);
    }
    }
  }
  return st;
}

/* Checks what the pickle returned: a bare class or function is refused, a bare storage
   becomes a 1-D tensor over it. Iterative; each value is visited once. */
static vtl_status finish_values(vtl_pth *p) {
  size_t cap = 64, n = 0;
  vtl_pv **todo = malloc(cap * sizeof *todo);
  if (!todo) return pth_fail(p, VTL_ERR_OOM, "out of memory");
  todo[n++] = p->root;
  p->root->flags |= PV_VISITED;
  vtl_status st = VTL_OK;
  while (n && st == VTL_OK) {
    vtl_pv *v = todo[--n];
    if (v->kind == PV_GLOBAL) {
      char gb[96];
      global_name(v->u.i, gb, sizeof gb);
      st = pth_fail(p, VTL_ERR_FORMAT, "the checkpoint holds the class or function '%s' itself; only tensors, numbers, "
                    "strings and containers can be loaded", gb);
    } else if (v->kind == PV_STORAGE) {
      const pth_storage *s = &p->stor[v->u.i];
      vtl_tensor base;
      memset(&base, 0, sizeof base);
      base.dtype = storage_types[s->type].dt;
      base.storage = s->s;
      int64_t shape = (int64_t)s->numel, stride = 1;
      vtl_tensor *t = vtl_tensor_view_of(&base, &shape, &stride, 1, 0);
      if (!t) st = pth_fail(p, VTL_ERR_OOM, "out of memory");
      else { v->kind = VTL_PV_TENSOR; v->u.t = t; }
    } else if (v->kind == VTL_PV_LIST || v->kind == VTL_PV_TUPLE || v->kind == VTL_PV_DICT) {
      for (size_t i = 0; i < v->u.seq.n && st == VTL_OK; i++) {
        vtl_pv *c = v->u.seq.v[i];
        if (c->flags & PV_VISITED) continue;
        c->flags |= PV_VISITED;
        if (n == cap) {
          vtl_pv **t2 = realloc(todo, 2 * cap * sizeof *t2);
          if (!t2) { st = pth_fail(p, VTL_ERR_OOM, "out of memory"); break; }
          todo = t2;
          cap *= 2;
        }
        todo[n++] = c;
      }
    }
  }
  free(todo);
  return st;
}

/* ------------------------------------------------------------------------------------------ */

/* The legacy format's first pickle is this magic number (LONG1), right after PROTO (and,
   from protocol 4, a FRAME). */
static const unsigned char legacy_magic[12] = {0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
#define SNIFF_BYTES 32

static int sniff_bytes(const unsigned char *b, size_t k) {
  if (k >= 4 && (memcmp(b, "PK\x03\x04", 4) == 0 || memcmp(b, "PK\x05\x06", 4) == 0)) return 1;
  if (k >= 2 + sizeof legacy_magic && b[0] == 0x80 && b[1] >= 2 && b[1] <= 5) {
    size_t at = b[1] >= 4 && b[2] == 0x95 ? 11 : 2;
    if (k >= at + sizeof legacy_magic && memcmp(b + at, legacy_magic, sizeof legacy_magic) == 0) return 2;
  }
  return 0;
}

/* Opens a regular file for reading; -1 with the error set. */
static int open_regular(const char *path, uint64_t *size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return vtl_error_set(VTL_ERR_IO, "load: %s: cannot open: %s", path, strerror(errno)), -1;
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    int e = errno;
    close(fd);
    return vtl_error_set(VTL_ERR_IO, "load: %s: cannot stat: %s", path, strerror(e)), -1;
  }
  if (!S_ISREG(sb.st_mode)) {
    close(fd);
    return vtl_error_set(VTL_ERR_IO, "load: %s: not a regular file", path), -1;
  }
  *size = (uint64_t)sb.st_size;
  return fd;
}

int vtl_pth_sniff(const char *path) {
  if (!path) return vtl_error_set(VTL_ERR_ARG, "load: path is NULL"), -1;
  uint64_t size;
  int fd = open_regular(path, &size);
  if (fd < 0) return -1;
  unsigned char b[SNIFF_BYTES];
  size_t k = size < sizeof b ? (size_t)size : sizeof b;
  int e = pread_full(fd, b, k, 0);
  close(fd);
  if (e) return vtl_error_set(VTL_ERR_IO, "load: %s: read failed: %s", path, e == -1 ? "unexpected end of file" : strerror(e)), -1;
  return sniff_bytes(b, k);
}

vtl_pth *vtl_pth_load(const char *path) {
  if (!path) return vtl_error_set(VTL_ERR_ARG, "load: path is NULL"), NULL;
  const uint16_t one = 1;
  if (*(const unsigned char *)&one != 1)
    return vtl_error_set(VTL_ERR_FORMAT, "load: %s: PyTorch checkpoints are read on little-endian machines only", path), NULL;
  vtl_pth *p = calloc(1, sizeof *p);
  if (!p) return vtl_error_set(VTL_ERR_OOM, "load: %s: out of memory", path), NULL;
  p->fd = -1;
  p->path = strdup(path);
  if (!p->path) { free(p); return vtl_error_set(VTL_ERR_OOM, "load: %s: out of memory", path), NULL; }
  unpickler u;
  memset(&u, 0, sizeof u);
  unsigned char *pkl = NULL;
  vtl_status st = VTL_OK;
  unsigned char head[SNIFF_BYTES];
  size_t hk;
  uint64_t start;
  const zip_entry *pe;
  bool oom;
  p->fd = open_regular(path, &p->fsize);
  if (p->fd < 0) { st = vtl_error_status(); goto done; }
  hk = p->fsize < sizeof head ? (size_t)p->fsize : sizeof head;
  if ((st = read_at(p, head, hk, 0)) != VTL_OK) goto done;
  switch (sniff_bytes(head, hk)) {
  case 2:
    st = pth_fail(p, VTL_ERR_FORMAT, "a checkpoint in PyTorch's legacy format (torch.save before PyTorch 1.6, or with "
                  "_use_new_zipfile_serialization=False), which vtl does not read: load it in PyTorch and save it "
                  "again with torch.save (or as safetensors)");
    goto done;
  case 0:
    st = pth_fail(p, VTL_ERR_FORMAT, "not a zip archive (torch.save checkpoints begin with 'PK')");
    goto done;
  default: break;
  }
  if ((st = zip_open(p)) != VTL_OK || (st = find_archive(p)) != VTL_OK) goto done;
  pe = find_record(p, "data.pkl", &oom);
  if (!pe) { st = pth_fail(p, VTL_ERR_OOM, "out of memory"); goto done; }
  if ((st = zip_data(p, pe, &start)) != VTL_OK) goto done;
  if (pe->usize > PKL_MAX) {
    st = pth_fail(p, VTL_ERR_FORMAT, "data.pkl is %llu bytes (more than the %llu-byte limit)",
                  (unsigned long long)pe->usize, (unsigned long long)PKL_MAX);
    goto done;
  }
  pkl = malloc(pe->usize ? (size_t)pe->usize : 1);
  if (!pkl) { st = pth_fail(p, VTL_ERR_OOM, "out of memory"); goto done; }
  if ((st = read_at(p, pkl, (size_t)pe->usize, start)) != VTL_OK) goto done;
  u.p = p;
  u.b = pkl;
  u.n = (size_t)pe->usize;
  p->max_items = 8 * u.n + ((size_t)1 << 20); /* a pickle spends at least a byte per item, bar copies */
  u.proto = 0;
  if ((st = unpickle(&u)) != VTL_OK) goto done;
  st = finish_values(p);
done:
  free(u.stack);
  free(u.marks);
  free(u.memo);
  free(pkl);
  if (p->fd >= 0) { close(p->fd); p->fd = -1; }
  if (st != VTL_OK) {
    vtl_pth_free(p);
    return NULL;
  }
  return p;
}
