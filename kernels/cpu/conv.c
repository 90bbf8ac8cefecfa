/*
 * CPU 2-D convolution.
 *
 * f32 runs on oneDNN, as PyTorch's CPU convolution does: the primitive picks its preferred
 * (blocked) layouts, plain NCHW operands are reordered in and out, and everything built for
 * one set of shapes and parameters (primitive descriptors, primitives, reorders) is kept in a
 * small LRU cache, so a training loop builds them once. f64, and f32 when oneDNN cannot
 * build a primitive, run as im2col + BLAS GEMM per (sample, group).
 *
 * Shapes (all contiguous): x (N,C,H,W), w (K,C/groups,R,S), b (K), y (N,K,OH,OW).
 */
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <omp.h>
#include <cblas.h>
#include <dnnl.h>
#include "nn_conv.h"
#include "parallel.h"
#include "iter.h"

static const vtl_device cpu = {VTL_CPU, 0};

/* Scratch memory from the tensor allocator (cached, accounted, OOM retry); NULL with the
   error set. */
static vtl_storage *scratch_new(size_t nbytes) { return vtl_storage_new(nbytes, cpu); }

/* ======================================================================================
 * oneDNN
 * ====================================================================================== */

enum { K_FWD, K_BWD_DATA, K_BWD_WEIGHT, K_LINEAR };

/* entries: three per distinct convolution of a network (forward, two backward), so room for
   MobileNet-sized zoos at two batch sizes */
#define CACHE_SIZE 256
#define KEY_LEN 28
#define MAX_ARGS 4

/* One operand of a cached primitive: the plain layout the caller holds and the primitive's
   layout, with the reorder between them when they differ (user → prim for inputs, prim →
   user for outputs). */
typedef struct {
  int arg;            /* DNNL_ARG_* of the convolution */
  bool output;
  dnnl_memory_desc_t user, prim;
  dnnl_primitive_t reorder; /* NULL when the layouts match */
  dnnl_primitive_t reorder_in; /* an output the primitive also reads (a sum post-op): user → prim */
  size_t bytes;       /* of the prim layout when a reorder is needed, else 0 */
} dnnl_operand;

typedef struct {
  int64_t key[KEY_LEN];
  uint64_t hash;      /* of key, compared first */
  int refs;           /* the cache's reference + running calls */
  uint64_t last_use;
  dnnl_primitive_desc_t hint, pd;
  dnnl_primitive_t prim;
  dnnl_operand ops[MAX_ARGS];
  int nops;
  size_t scratchpad;  /* bytes of the primitive's scratchpad */
} dnnl_entry;

/* A forward's post-operations, as oneDNN runs them: a sum (the output buffer holds a tensor
   to add), then up to two eltwise steps. */
typedef struct {
  bool sum;
  int nelt;
  dnnl_alg_kind_t alg[2];
  float alpha[2], beta[2];
} post_ops;

static const post_ops no_post = {0};

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static dnnl_entry *cache[CACHE_SIZE];
static uint64_t cache_clock;
static dnnl_engine_t engine;
static int engine_state; /* 0 not tried, 1 ready, -1 unavailable */
static _Thread_local dnnl_stream_t stream;

static void entry_free(dnnl_entry *e) {
  if (!e) return;
  for (int i = 0; i < e->nops; i++)
    if (e->ops[i].reorder) dnnl_primitive_destroy(e->ops[i].reorder);
  for (int i = 0; i < e->nops; i++)
    if (e->ops[i].reorder_in) dnnl_primitive_destroy(e->ops[i].reorder_in);
  if (e->prim) dnnl_primitive_destroy(e->prim);
  if (e->pd) dnnl_primitive_desc_destroy(e->pd);
  if (e->hint) dnnl_primitive_desc_destroy(e->hint);
  free(e);
}

static void entry_release(dnnl_entry *e) {
  pthread_mutex_lock(&cache_lock);
  int left = --e->refs;
  pthread_mutex_unlock(&cache_lock);
  if (left == 0) entry_free(e);
}

void vtl_cpu_conv2d_clear_cache(void) {
  dnnl_entry *drop[CACHE_SIZE];
  int n = 0;
  pthread_mutex_lock(&cache_lock);
  for (int i = 0; i < CACHE_SIZE; i++)
    if (cache[i]) {
      if (--cache[i]->refs == 0) drop[n++] = cache[i];
      cache[i] = NULL;
    }
  pthread_mutex_unlock(&cache_lock);
  for (int i = 0; i < n; i++) entry_free(drop[i]);
}

/* A primitive splits its work for the thread count it was built under: that count is part of
   the key. */
static uint64_t make_key(int64_t *k, int kind, bool bias, const vtl_conv2d_shape *s, const post_ops *po) {
  int64_t v[KEY_LEN] = {kind, bias, s->N, s->C, s->H, s->W, s->K, s->R, s->S, s->OH, s->OW,
                        s->stride[0], s->stride[1], s->pad[0], s->pad[1], s->pad_end[0], s->pad_end[1],
                        s->dilation[0], s->dilation[1], s->groups, omp_get_max_threads(),
                        po->sum, po->nelt, po->nelt ? po->alg[0] : 0, po->nelt > 1 ? po->alg[1] : 0,
                        s->x_cl | s->y_cl << 1, s->dtype | s->w_f32 << 8, 0};
  uint32_t f[4] = {0};
  for (int i = 0; i < po->nelt; i++) {
    memcpy(&f[2 * i], &po->alpha[i], 4);
    memcpy(&f[2 * i + 1], &po->beta[i], 4);
  }
  v[KEY_LEN - 1] = (int64_t)(((uint64_t)f[0] * 31 + f[1]) * 1000003u + ((uint64_t)f[2] * 31 + f[3]));
  memcpy(k, v, sizeof v);
  uint64_t h = 14695981039346656037ull; /* FNV-1a over the values */
  for (int i = 0; i < KEY_LEN; i++) h = (h ^ (uint64_t)v[i]) * 1099511628211ull;
  return h;
}

static dnnl_data_type_t dnnl_dt(vtl_dtype d) {
  return d == VTL_BF16 ? dnnl_bf16 : d == VTL_F16 ? dnnl_f16 : dnnl_f32;
}
static bool is_half(vtl_dtype d) { return d == VTL_BF16 || d == VTL_F16; }

static bool engine_ready(void) {
  pthread_mutex_lock(&cache_lock);
  if (engine_state == 0) engine_state = dnnl_engine_create(&engine, dnnl_cpu, 0) == dnnl_success ? 1 : -1;
  bool ok = engine_state == 1;
  pthread_mutex_unlock(&cache_lock);
  if (ok && !stream && dnnl_stream_create(&stream, engine, dnnl_stream_default_flags) != dnnl_success) {
    stream = NULL;
    return false;
  }
  return ok;
}

/* memory descriptors of x, w, b, y: the caller's plain layouts, or "any" for the primitive to
   choose; grouped weights are 5-D (G, K/G, C/G, R, S) */
static void conv_mds(const vtl_conv2d_shape *s, bool any, dnnl_memory_desc_t *x, dnnl_memory_desc_t *w,
                     dnnl_memory_desc_t *b, dnnl_memory_desc_t *y) {
  dnnl_dims_t xd = {s->N, s->C, s->H, s->W}, yd = {s->N, s->K, s->OH, s->OW}, bd = {s->K};
  dnnl_format_tag_t a = dnnl_format_tag_any;
  /* a channels-last output makes the primitive work in channels-last (no blocked layouts to
     reorder to and from); only the weights keep the primitive's choice */
  dnnl_format_tag_t xt = any ? (s->y_cl ? dnnl_nhwc : a) : s->x_cl ? dnnl_nhwc : dnnl_nchw;
  dnnl_format_tag_t yt = any ? (s->y_cl ? dnnl_nhwc : a) : s->y_cl ? dnnl_nhwc : dnnl_nchw;
  /* the primitive's weights have the activations' dtype; the caller's may be f32 (w_f32) */
  dnnl_data_type_t dt = dnnl_dt(s->dtype), wdt = any || !s->w_f32 ? dt : dnnl_f32;
  dnnl_data_type_t bdt = s->w_f32 ? dnnl_f32 : dt;
  dnnl_memory_desc_init_by_tag(x, 4, xd, dt, xt);
  dnnl_memory_desc_init_by_tag(y, 4, yd, dt, yt);
  dnnl_memory_desc_init_by_tag(b, 1, bd, bdt, any ? a : dnnl_x);
  int64_t g = s->groups;
  dnnl_format_tag_t wt = any ? a : g > 1 ? dnnl_goihw : dnnl_oihw;
  if (g > 1) {
    dnnl_dims_t wd = {g, s->K / g, s->C / g, s->R, s->S};
    dnnl_memory_desc_init_by_tag(w, 5, wd, wdt, wt);
  } else {
    dnnl_dims_t wd = {s->K, s->C, s->R, s->S};
    dnnl_memory_desc_init_by_tag(w, 4, wd, wdt, wt);
  }
}

/* The convolution descriptor of one kind over "any" layouts. */
static bool conv_desc(dnnl_convolution_desc_t *cd, int kind, bool bias, const vtl_conv2d_shape *s) {
  dnnl_memory_desc_t x, w, b, y;
  conv_mds(s, true, &x, &w, &b, &y);
  dnnl_dims_t st = {s->stride[0], s->stride[1]}, dl = {s->dilation[0] - 1, s->dilation[1] - 1};
  dnnl_dims_t pl = {s->pad[0], s->pad[1]}, pr = {s->pad_end[0], s->pad_end[1]};
  dnnl_status_t r;
  if (kind == K_FWD)
    r = dnnl_dilated_convolution_forward_desc_init(cd, dnnl_forward_training, dnnl_convolution_direct, &x, &w,
                                                   bias ? &b : NULL, &y, st, dl, pl, pr);
  else if (kind == K_BWD_DATA)
    r = dnnl_dilated_convolution_backward_data_desc_init(cd, dnnl_convolution_direct, &x, &w, &y, st, dl, pl, pr);
  else
    r = dnnl_dilated_convolution_backward_weights_desc_init(cd, dnnl_convolution_direct, &x, &w, bias ? &b : NULL, &y,
                                                            st, dl, pl, pr);
  return r == dnnl_success;
}

static bool add_operand(dnnl_entry *e, int arg, bool output, const dnnl_memory_desc_t *user, dnnl_query_t q, int qi,
                        bool read_too) {
  const dnnl_memory_desc_t *pm = dnnl_primitive_desc_query_md(e->pd, q, qi);
  if (!pm) return false;
  dnnl_operand *o = &e->ops[e->nops++];
  o->arg = arg;
  o->output = output;
  o->user = *user;
  o->prim = *pm;
  o->reorder = NULL;
  o->bytes = 0;
  if (dnnl_memory_desc_equal(user, pm)) return true;
  dnnl_primitive_desc_t rpd;
  const dnnl_memory_desc_t *from = output ? pm : user, *to = output ? user : pm;
  if (dnnl_reorder_primitive_desc_create(&rpd, from, engine, to, engine, NULL) != dnnl_success) return false;
  dnnl_status_t r = dnnl_primitive_create(&o->reorder, rpd);
  dnnl_primitive_desc_destroy(rpd);
  if (r != dnnl_success) { o->reorder = NULL; return false; }
  if (output && read_too) {
    if (dnnl_reorder_primitive_desc_create(&rpd, user, engine, pm, engine, NULL) != dnnl_success) return false;
    r = dnnl_primitive_create(&o->reorder_in, rpd);
    dnnl_primitive_desc_destroy(rpd);
    if (r != dnnl_success) { o->reorder_in = NULL; return false; }
  }
  o->bytes = dnnl_memory_desc_get_size(pm);
  return true;
}

/* po's steps as the attribute's post-ops (none: the attribute is left as it is) */
static bool set_post_ops(dnnl_primitive_attr_t attr, const post_ops *po) {
  if (!po->sum && !po->nelt) return true;
  dnnl_post_ops_t ops = NULL;
  bool ok = dnnl_post_ops_create(&ops) == dnnl_success;
  if (ok && po->sum) ok = dnnl_post_ops_append_sum(ops, 1.0f) == dnnl_success;
  for (int i = 0; ok && i < po->nelt; i++)
    ok = dnnl_post_ops_append_eltwise(ops, 1.0f, po->alg[i], po->alpha[i], po->beta[i]) == dnnl_success;
  if (ok) ok = dnnl_primitive_attr_set_post_ops(attr, ops) == dnnl_success;
  if (ops) dnnl_post_ops_destroy(ops);
  return ok;
}

static dnnl_entry *entry_build(const int64_t *key, int kind, bool bias, const vtl_conv2d_shape *s,
                               const post_ops *po) {
  dnnl_entry *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  memcpy(e->key, key, sizeof e->key);
  dnnl_primitive_attr_t attr = NULL;
  dnnl_convolution_desc_t fd, cd;
  bool ok = dnnl_primitive_attr_create(&attr) == dnnl_success &&
            dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user) == dnnl_success &&
            conv_desc(&fd, K_FWD, bias && kind == K_FWD, s);
  ok = ok && set_post_ops(attr, po);
  if (ok && kind != K_FWD) {
    ok = dnnl_primitive_desc_create(&e->hint, &fd, NULL, engine, NULL) == dnnl_success;
    if (!ok) e->hint = NULL;
    ok = ok && conv_desc(&cd, kind, bias, s);
  }
  if (ok) {
    ok = dnnl_primitive_desc_create(&e->pd, kind == K_FWD ? &fd : &cd, attr, engine, e->hint) == dnnl_success;
    if (!ok) e->pd = NULL;
  }
  if (attr) dnnl_primitive_attr_destroy(attr);
  if (ok) {
    ok = dnnl_primitive_create(&e->prim, e->pd) == dnnl_success;
    if (!ok) e->prim = NULL;
  }
  if (ok) {
    dnnl_memory_desc_t x, w, b, y;
    conv_mds(s, false, &x, &w, &b, &y);
    if (kind == K_FWD) {
      ok = add_operand(e, DNNL_ARG_SRC, false, &x, dnnl_query_src_md, 0, false) &&
           add_operand(e, DNNL_ARG_WEIGHTS, false, &w, dnnl_query_weights_md, 0, false) &&
           (!bias || add_operand(e, DNNL_ARG_BIAS, false, &b, dnnl_query_weights_md, 1, false)) &&
           add_operand(e, DNNL_ARG_DST, true, &y, dnnl_query_dst_md, 0, po->sum);
    } else if (kind == K_BWD_DATA) {
      ok = add_operand(e, DNNL_ARG_DIFF_DST, false, &y, dnnl_query_diff_dst_md, 0, false) &&
           add_operand(e, DNNL_ARG_WEIGHTS, false, &w, dnnl_query_weights_md, 0, false) &&
           add_operand(e, DNNL_ARG_DIFF_SRC, true, &x, dnnl_query_diff_src_md, 0, false);
    } else {
      ok = add_operand(e, DNNL_ARG_DIFF_DST, false, &y, dnnl_query_diff_dst_md, 0, false) &&
           add_operand(e, DNNL_ARG_SRC, false, &x, dnnl_query_src_md, 0, false) &&
           add_operand(e, DNNL_ARG_DIFF_WEIGHTS, true, &w, dnnl_query_diff_weights_md, 0, false) &&
           (!bias || add_operand(e, DNNL_ARG_DIFF_BIAS, true, &b, dnnl_query_diff_weights_md, 1, false));
    }
  }
  if (ok) {
    const dnnl_memory_desc_t *sp = dnnl_primitive_desc_query_md(e->pd, dnnl_query_scratchpad_md, 0);
    e->scratchpad = sp ? dnnl_memory_desc_get_size(sp) : 0;
  }
  if (!ok) { entry_free(e); return NULL; }
  return e;
}

/* An inference linear layer y (M,N) = x (M,K) wᵀ + b with post-ops, as a oneDNN matmul whose
   weights operand is w (N,K) read as a (K,N) matrix; the shape struct carries M, K, N as
   N, C, K. */
static dnnl_entry *linear_entry_build(const int64_t *key, bool bias, const vtl_conv2d_shape *s, const post_ops *po) {
  dnnl_entry *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  memcpy(e->key, key, sizeof e->key);
  dnnl_memory_desc_t x, w, wany, b, y;
  dnnl_dims_t xd = {s->N, s->C}, wd = {s->C, s->K}, bd = {1, s->K}, yd = {s->N, s->K};
  dnnl_data_type_t dt = dnnl_dt(s->dtype), wdt = s->w_f32 ? dnnl_f32 : dt;
  bool ok = dnnl_memory_desc_init_by_tag(&x, 2, xd, dt, dnnl_ab) == dnnl_success &&
            dnnl_memory_desc_init_by_tag(&w, 2, wd, wdt, dnnl_ba) == dnnl_success &&
            dnnl_memory_desc_init_by_tag(&wany, 2, wd, dt, dnnl_format_tag_any) == dnnl_success &&
            dnnl_memory_desc_init_by_tag(&b, 2, bd, wdt, dnnl_ab) == dnnl_success &&
            dnnl_memory_desc_init_by_tag(&y, 2, yd, dt, dnnl_ab) == dnnl_success;
  dnnl_matmul_desc_t md;
  ok = ok && dnnl_matmul_desc_init(&md, &x, &wany, bias ? &b : NULL, &y) == dnnl_success;
  dnnl_primitive_attr_t attr = NULL;
  ok = ok && dnnl_primitive_attr_create(&attr) == dnnl_success &&
       dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user) == dnnl_success &&
       set_post_ops(attr, po);
  if (ok) {
    ok = dnnl_primitive_desc_create(&e->pd, &md, attr, engine, NULL) == dnnl_success;
    if (!ok) e->pd = NULL;
  }
  if (attr) dnnl_primitive_attr_destroy(attr);
  if (ok) {
    ok = dnnl_primitive_create(&e->prim, e->pd) == dnnl_success;
    if (!ok) e->prim = NULL;
  }
  ok = ok && add_operand(e, DNNL_ARG_SRC, false, &x, dnnl_query_src_md, 0, false) &&
       add_operand(e, DNNL_ARG_WEIGHTS, false, &w, dnnl_query_weights_md, 0, false) &&
       (!bias || add_operand(e, DNNL_ARG_BIAS, false, &b, dnnl_query_weights_md, 1, false)) &&
       add_operand(e, DNNL_ARG_DST, true, &y, dnnl_query_dst_md, 0, po->sum);
  if (ok) {
    const dnnl_memory_desc_t *sp = dnnl_primitive_desc_query_md(e->pd, dnnl_query_scratchpad_md, 0);
    e->scratchpad = sp ? dnnl_memory_desc_get_size(sp) : 0;
  }
  if (!ok) { entry_free(e); return NULL; }
  return e;
}

/* The cached entry for (kind, bias, shape), built on a miss; a reference for the caller, or
   NULL when oneDNN cannot run this convolution. */
static dnnl_entry *entry_get(int kind, bool bias, const vtl_conv2d_shape *s, const post_ops *po) {
  if (!engine_ready()) return NULL;
  int64_t key[KEY_LEN];
  uint64_t hash = make_key(key, kind, bias, s, po);
  pthread_mutex_lock(&cache_lock);
  for (int i = 0; i < CACHE_SIZE; i++)
    if (cache[i] && cache[i]->hash == hash && memcmp(cache[i]->key, key, sizeof key) == 0) {
      dnnl_entry *e = cache[i];
      e->refs++;
      e->last_use = ++cache_clock;
      pthread_mutex_unlock(&cache_lock);
      return e;
    }
  pthread_mutex_unlock(&cache_lock);
  dnnl_entry *e = kind == K_LINEAR ? linear_entry_build(key, bias, s, po) : entry_build(key, kind, bias, s, po);
  if (!e) return NULL;
  e->hash = hash;
  /* insert into a free slot or over the least recently used entry */
  dnnl_entry *evicted = NULL;
  pthread_mutex_lock(&cache_lock);
  int slot = 0;
  for (int i = 0; i < CACHE_SIZE; i++) {
    if (!cache[i]) { slot = i; break; }
    if (cache[i]->last_use < cache[slot]->last_use) slot = i;
  }
  if (cache[slot] && --cache[slot]->refs == 0) evicted = cache[slot];
  cache[slot] = e;
  e->refs = 2; /* the cache's and the caller's */
  e->last_use = ++cache_clock;
  pthread_mutex_unlock(&cache_lock);
  entry_free(evicted);
  return e;
}

/* A convolution's weights in a primitive's layout (see nn_conv.h). */
struct vtl_conv2d_pack {
  vtl_storage *src;         /* retained: its address cannot be reused while packed */
  const void *w;            /* the weights packed, inside src */
  uint32_t version;         /* src's version when packed */
  dnnl_memory_desc_t md;    /* the layout of data */
  void *data;
  size_t bytes, cap;
};

vtl_conv2d_pack *vtl_conv2d_pack_new(void) { return calloc(1, sizeof(vtl_conv2d_pack)); }

void vtl_conv2d_pack_free(vtl_conv2d_pack *pk) {
  if (!pk) return;
  vtl_storage_release(pk->src);
  free(pk->data);
  free(pk);
}

size_t vtl_conv2d_pack_bytes(const vtl_conv2d_pack *pk) { return pk && pk->src ? pk->bytes : 0; }

/* The packed weights for operand o (user weights w in wsrc), packing them first when the pack
   holds other weights, an older version or another layout; NULL on failure (out of memory
   or oneDNN: the caller reorders as usual). */
static void *pack_weights(vtl_conv2d_pack *pk, const dnnl_operand *o, const void *w, vtl_storage *wsrc) {
  if (pk->src == wsrc && pk->w == w && pk->version == wsrc->version && dnnl_memory_desc_equal(&pk->md, &o->prim))
    return pk->data;
  if (pk->cap < o->bytes) {
    void *d = NULL;
    if (posix_memalign(&d, 64, o->bytes) != 0) return NULL;
    free(pk->data);
    pk->data = d;
    pk->cap = o->bytes;
  }
  vtl_storage_release(pk->src);
  pk->src = NULL;
  dnnl_memory_t um = NULL, pm = NULL;
  bool ok = dnnl_memory_create(&um, &o->user, engine, (void *)w) == dnnl_success &&
            dnnl_memory_create(&pm, &o->prim, engine, pk->data) == dnnl_success;
  if (ok) {
    dnnl_exec_arg_t ra[2] = {{DNNL_ARG_FROM, um}, {DNNL_ARG_TO, pm}};
    ok = dnnl_primitive_execute(o->reorder, stream, 2, ra) == dnnl_success && dnnl_stream_wait(stream) == dnnl_success;
  }
  if (um) dnnl_memory_destroy(um);
  if (pm) dnnl_memory_destroy(pm);
  if (!ok) return NULL;
  vtl_storage_retain(wsrc);
  pk->src = wsrc;
  pk->w = w;
  pk->version = wsrc->version;
  pk->md = o->prim;
  pk->bytes = o->bytes;
  return pk->data;
}

/* Runs a cached primitive: user[i] is the caller's buffer of operand i (same order as
   e->ops). pack (or NULL) keeps the weights operand packed between calls (wsrc: the weights'
   storage). Returns 1 on success, 0 when oneDNN failed (nothing was written that the caller
   relies on), -1 on out of memory (error set). */
static int entry_run(dnnl_entry *e, void *const *user, vtl_conv2d_pack *pack, vtl_storage *wsrc) {
  void *packed[MAX_ARGS] = {0};
  for (int i = 0; i < e->nops && pack && wsrc; i++)
    if (e->ops[i].arg == DNNL_ARG_WEIGHTS && e->ops[i].reorder) packed[i] = pack_weights(pack, &e->ops[i], user[i], wsrc);
  size_t total = e->scratchpad, off[MAX_ARGS];
  for (int i = 0; i < e->nops; i++) {
    off[i] = total;
    if (!packed[i]) total += (e->ops[i].bytes + 63) & ~(size_t)63;
  }
  vtl_storage *tmp = NULL;
  if (total) {
    tmp = scratch_new(total + 64);
    if (!tmp) return -1;
  }
  char *base = tmp ? (char *)(((uintptr_t)tmp->data + 63) & ~(uintptr_t)63) : NULL;
  dnnl_memory_t um[MAX_ARGS] = {0}, pm[MAX_ARGS] = {0}, spm = NULL;
  dnnl_exec_arg_t args[MAX_ARGS + 1];
  int nargs = 0, ok = 1;
  for (int i = 0; i < e->nops && ok; i++) {
    dnnl_operand *o = &e->ops[i];
    ok = dnnl_memory_create(&um[i], &o->user, engine, user[i]) == dnnl_success;
    if (ok && o->reorder)
      ok = dnnl_memory_create(&pm[i], &o->prim, engine, packed[i] ? packed[i] : base + off[i]) == dnnl_success;
    if (ok) args[nargs++] = (dnnl_exec_arg_t){o->arg, o->reorder ? pm[i] : um[i]};
  }
  if (ok && e->scratchpad) {
    const dnnl_memory_desc_t *sp = dnnl_primitive_desc_query_md(e->pd, dnnl_query_scratchpad_md, 0);
    ok = sp && dnnl_memory_create(&spm, sp, engine, base) == dnnl_success;
    if (ok) args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, spm};
  }
  for (int i = 0; i < e->nops && ok; i++) {
    dnnl_operand *o = &e->ops[i];
    dnnl_primitive_t r = !o->output && o->reorder && !packed[i] ? o->reorder : o->reorder_in;
    if (r) {
      dnnl_exec_arg_t ra[2] = {{DNNL_ARG_FROM, um[i]}, {DNNL_ARG_TO, pm[i]}};
      ok = dnnl_primitive_execute(r, stream, 2, ra) == dnnl_success;
    }
  }
  if (ok) ok = dnnl_primitive_execute(e->prim, stream, nargs, args) == dnnl_success;
  for (int i = 0; i < e->nops && ok; i++)
    if (e->ops[i].reorder && e->ops[i].output) {
      dnnl_exec_arg_t ra[2] = {{DNNL_ARG_FROM, pm[i]}, {DNNL_ARG_TO, um[i]}};
      ok = dnnl_primitive_execute(e->ops[i].reorder, stream, 2, ra) == dnnl_success;
    }
  if (ok) ok = dnnl_stream_wait(stream) == dnnl_success;
  for (int i = 0; i < e->nops; i++) {
    if (um[i]) dnnl_memory_destroy(um[i]);
    if (pm[i]) dnnl_memory_destroy(pm[i]);
  }
  if (spm) dnnl_memory_destroy(spm);
  vtl_storage_release(tmp);
  return ok;
}

/* 1 done, 0 not handled (use the fallback), -1 error set */
static int dnnl_conv(int kind, const vtl_conv2d_shape *s, void *const *user, bool bias, const post_ops *po,
                     vtl_conv2d_pack *pack, vtl_storage *wsrc) {
  dnnl_entry *e = entry_get(kind, bias, s, po);
  if (!e) return 0;
  int r = entry_run(e, user, pack, wsrc);
  entry_release(e);
  return r;
}

/* ======================================================================================
 * im2col + GEMM
 * ====================================================================================== */

static void gemm(vtl_dtype dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void *A, int64_t lda,
                 const void *B, int64_t ldb, double beta, void *C, int64_t ldc) {
  CBLAS_TRANSPOSE a = ta ? CblasTrans : CblasNoTrans, b = tb ? CblasTrans : CblasNoTrans;
  if (dt == VTL_F32)
    cblas_sgemm(CblasRowMajor, a, b, (int)M, (int)N, (int)K, 1.0f, A, (int)lda, B, (int)ldb, (float)beta, C, (int)ldc);
  else
    cblas_dgemm(CblasRowMajor, a, b, (int)M, (int)N, (int)K, 1.0, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

/* The range [lo, hi) of output positions o < nout whose tap at offset koff reads inside the
   input: 0 <= o*st - pad + koff < nin. */
static void valid_range(int64_t nin, int64_t nout, int64_t st, int64_t pad, int64_t koff, int64_t *lo, int64_t *hi) {
  int64_t a = pad - koff; /* o*st >= a */
  int64_t l = a <= 0 ? 0 : (a + st - 1) / st;
  int64_t b = nin + pad - koff; /* o*st < b */
  int64_t h = b <= 0 ? 0 : (b + st - 1) / st;
  if (h > nout) h = nout;
  if (l > h) l = h;
  *lo = l;
  *hi = h;
}

static inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* col (Cg*R*S, (o1-o0)*OW): the band of output rows [o0, o1) of one sample's group block
   x (Cg,H,W), zeros where a tap falls in the padding. */
#define IM2COL_BODY(T)                                                                                    \
  do {                                                                                                    \
    const T *X = x;                                                                                       \
    T *COL = col;                                                                                         \
    int64_t rows = o1 - o0;                                                                               \
    for (int64_t c = 0; c < Cg; c++)                                                                      \
      for (int64_t r = 0; r < s->R; r++)                                                                  \
        for (int64_t q = 0; q < s->S; q++) {                                                              \
          T *dst = COL + ((c * s->R + r) * s->S + q) * rows * s->OW;                                      \
          int64_t h0, h1, w0, w1;                                                                         \
          valid_range(s->H, s->OH, s->stride[0], s->pad[0], r * s->dilation[0], &h0, &h1);                \
          valid_range(s->W, s->OW, s->stride[1], s->pad[1], q * s->dilation[1], &w0, &w1);                \
          h0 = clamp64(h0, o0, o1);                                                                       \
          h1 = clamp64(h1, h0, o1);                                                                       \
          memset(dst, 0, (size_t)((h0 - o0) * s->OW) * sizeof(T));                                        \
          for (int64_t oh = h0; oh < h1; oh++) {                                                          \
            T *d = dst + (oh - o0) * s->OW;                                                               \
            const T *srow = X + (c * s->H + oh * s->stride[0] - s->pad[0] + r * s->dilation[0]) * s->W;   \
            int64_t off = q * s->dilation[1] - s->pad[1];                                                 \
            for (int64_t ow = 0; ow < w0; ow++) d[ow] = 0;                                                \
            if (s->stride[1] == 1)                                                                        \
              memcpy(d + w0, srow + w0 + off, (size_t)(w1 - w0) * sizeof(T));                             \
            else                                                                                          \
              for (int64_t ow = w0; ow < w1; ow++) d[ow] = srow[ow * s->stride[1] + off];                 \
            for (int64_t ow = w1; ow < s->OW; ow++) d[ow] = 0;                                            \
          }                                                                                               \
          memset(dst + (h1 - o0) * s->OW, 0, (size_t)((o1 - h1) * s->OW) * sizeof(T));                    \
        }                                                                                                 \
  } while (0)

/* x (Cg,H,W) += col2im(col (Cg*R*S, (o1-o0)*OW)) for the band of output rows [o0, o1) */
#define COL2IM_BODY(T)                                                                                    \
  do {                                                                                                    \
    T *X = x;                                                                                             \
    const T *COL = col;                                                                                   \
    int64_t rows = o1 - o0;                                                                               \
    for (int64_t c = 0; c < Cg; c++)                                                                      \
      for (int64_t r = 0; r < s->R; r++)                                                                  \
        for (int64_t q = 0; q < s->S; q++) {                                                              \
          const T *src = COL + ((c * s->R + r) * s->S + q) * rows * s->OW;                                \
          int64_t h0, h1, w0, w1;                                                                         \
          valid_range(s->H, s->OH, s->stride[0], s->pad[0], r * s->dilation[0], &h0, &h1);                \
          valid_range(s->W, s->OW, s->stride[1], s->pad[1], q * s->dilation[1], &w0, &w1);                \
          h0 = clamp64(h0, o0, o1);                                                                       \
          h1 = clamp64(h1, h0, o1);                                                                       \
          for (int64_t oh = h0; oh < h1; oh++) {                                                          \
            const T *sr = src + (oh - o0) * s->OW;                                                        \
            T *drow = X + (c * s->H + oh * s->stride[0] - s->pad[0] + r * s->dilation[0]) * s->W;         \
            int64_t off = q * s->dilation[1] - s->pad[1];                                                 \
            if (s->stride[1] == 1)                                                                        \
              for (int64_t ow = w0; ow < w1; ow++) drow[ow + off] += sr[ow];                              \
            else                                                                                          \
              for (int64_t ow = w0; ow < w1; ow++) drow[ow * s->stride[1] + off] += sr[ow];               \
          }                                                                                               \
        }                                                                                                 \
  } while (0)

static void im2col(const vtl_conv2d_shape *s, int64_t Cg, const void *x, void *col, int64_t o0, int64_t o1) {
  if (s->dtype == VTL_F32) IM2COL_BODY(float);
  else IM2COL_BODY(double);
}

static void col2im(const vtl_conv2d_shape *s, int64_t Cg, const void *col, void *x, int64_t o0, int64_t o1) {
  if (s->dtype == VTL_F32) COL2IM_BODY(float);
  else COL2IM_BODY(double);
}

/* a 1x1, stride-1, unpadded convolution reads x directly as the column matrix */
static bool is_pointwise(const vtl_conv2d_shape *s) {
  return s->R == 1 && s->S == 1 && s->stride[0] == 1 && s->stride[1] == 1 && s->pad[0] == 0 && s->pad[1] == 0 &&
         s->pad_end[0] == 0 && s->pad_end[1] == 0;
}

/* threads for a loop over samples, each running single-threaded GEMMs; 1 = one sample at a
   time with the BLAS library's own threads */
static int sample_threads(int64_t N) {
  int nt = omp_get_max_threads();
  if (omp_in_parallel() || nt < 2 || N < nt) return 1;
  return nt;
}

/* A column buffer holds at most COL_BYTES: a sample's output rows are processed in bands of
   band_rows() rows (all of them for a pointwise convolution, which needs no buffer). */
#define COL_BYTES ((size_t)8 << 20)

static int64_t band_rows(const vtl_conv2d_shape *s, int64_t CRS, size_t es) {
  if (is_pointwise(s)) return s->OH > 0 ? s->OH : 1;
  size_t row = (size_t)(CRS * s->OW) * es;
  int64_t r = row ? (int64_t)(COL_BYTES / row) : s->OH;
  if (r > s->OH) r = s->OH;
  return r > 0 ? r : 1;
}

/* the shape-derived sizes shared by the GEMM paths */
typedef struct {
  size_t es;
  int64_t G, Cg, Kg, L, CRS, band;
  bool direct;
  size_t colb; /* bytes of one column buffer (0 when direct) */
} gemm_plan;

static gemm_plan plan_of(const vtl_conv2d_shape *s) {
  gemm_plan p;
  p.es = vtl_dtype_size(s->dtype);
  p.G = s->groups;
  p.Cg = s->C / p.G;
  p.Kg = s->K / p.G;
  p.L = s->OH * s->OW;
  p.CRS = p.Cg * s->R * s->S;
  p.direct = is_pointwise(s);
  p.band = band_rows(s, p.CRS, p.es);
  p.colb = p.direct ? 0 : (size_t)(p.CRS * p.band * s->OW) * p.es;
  return p;
}

static vtl_status gemm_forward(const vtl_conv2d_shape *s, const void *x, const void *w, const void *b, void *y) {
  gemm_plan P = plan_of(s);
  size_t es = P.es;
  int nt = sample_threads(s->N);
  vtl_storage *cols = P.direct ? NULL : scratch_new((size_t)nt * P.colb);
  if (!P.direct && !cols) return vtl_error_status();
VTL_FOR_THREADS(nt, n, s->N, {
    char *col = cols ? (char *)cols->data + (size_t)omp_get_thread_num() * P.colb : NULL;
    for (int64_t g = 0; g < P.G; g++) {
      const char *xg = (const char *)x + (size_t)((n * s->C + g * P.Cg) * s->H * s->W) * es;
      char *yg = (char *)y + (size_t)((n * s->K + g * P.Kg) * P.L) * es;
      for (int64_t o0 = 0; o0 < s->OH; o0 += P.band) {
        int64_t o1 = o0 + P.band < s->OH ? o0 + P.band : s->OH, Lb = (o1 - o0) * s->OW;
        if (!P.direct) im2col(s, P.Cg, xg, col, o0, o1);
        gemm(s->dtype, false, false, P.Kg, Lb, P.CRS, (const char *)w + (size_t)(g * P.Kg * P.CRS) * es, P.CRS,
             P.direct ? xg : col, P.direct ? P.L : Lb, 0.0, yg + (size_t)(o0 * s->OW) * es, P.L);
      }
    }
    if (b)
      for (int64_t k = 0; k < s->K; k++) {
        if (s->dtype == VTL_F32) {
          float *yk = (float *)y + (n * s->K + k) * P.L, bk = ((const float *)b)[k];
          for (int64_t i = 0; i < P.L; i++) yk[i] += bk;
        } else {
          double *yk = (double *)y + (n * s->K + k) * P.L, bk = ((const double *)b)[k];
          for (int64_t i = 0; i < P.L; i++) yk[i] += bk;
        }
      }
  });
  vtl_storage_release(cols);
  return VTL_OK;
}

static vtl_status gemm_backward_data(const vtl_conv2d_shape *s, const void *gy, const void *w, void *gx) {
  gemm_plan P = plan_of(s);
  size_t es = P.es;
  int nt = sample_threads(s->N);
  vtl_storage *cols = P.direct ? NULL : scratch_new((size_t)nt * P.colb);
  if (!P.direct && !cols) return vtl_error_status();
VTL_FOR_THREADS(nt, n, s->N, {
    char *col = cols ? (char *)cols->data + (size_t)omp_get_thread_num() * P.colb : NULL;
    char *gxn = (char *)gx + (size_t)(n * s->C * s->H * s->W) * es;
    if (!P.direct) memset(gxn, 0, (size_t)(s->C * s->H * s->W) * es);
    for (int64_t g = 0; g < P.G; g++) {
      char *gxg = gxn + (size_t)(g * P.Cg * s->H * s->W) * es;
      const char *gyg = (const char *)gy + (size_t)((n * s->K + g * P.Kg) * P.L) * es;
      for (int64_t o0 = 0; o0 < s->OH; o0 += P.band) {
        int64_t o1 = o0 + P.band < s->OH ? o0 + P.band : s->OH, Lb = (o1 - o0) * s->OW;
        gemm(s->dtype, true, false, P.CRS, Lb, P.Kg, (const char *)w + (size_t)(g * P.Kg * P.CRS) * es, P.CRS,
             gyg + (size_t)(o0 * s->OW) * es, P.L, 0.0, P.direct ? gxg : col, P.direct ? P.L : Lb);
        if (!P.direct) col2im(s, P.Cg, col, gxg, o0, o1);
      }
    }
  });
  vtl_storage_release(cols);
  return VTL_OK;
}

static void bias_grad(const vtl_conv2d_shape *s, const void *gy, void *gb) {
  int64_t L = s->OH * s->OW;
  int nt = s->K * s->N * L >= 65536 && !omp_in_parallel() ? omp_get_max_threads() : 1;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t k = 0; k < s->K; k++) {
    double acc = 0;
    for (int64_t n = 0; n < s->N; n++) {
      if (s->dtype == VTL_F32) {
        const float *p = (const float *)gy + (n * s->K + k) * L;
        float a = 0;
        for (int64_t i = 0; i < L; i++) a += p[i];
        acc += a;
      } else {
        const double *p = (const double *)gy + (n * s->K + k) * L;
        for (int64_t i = 0; i < L; i++) acc += p[i];
      }
    }
    if (s->dtype == VTL_F32) ((float *)gb)[k] = (float)acc;
    else ((double *)gb)[k] = acc;
  }
}

/* one thread's share of gemm_backward_weight: its samples' products summed into its
   accumulator (the weight gradient itself for thread 0) */
static void weight_grad_part(const vtl_conv2d_shape *s, const gemm_plan *p, const void *gy, const void *x,
                             vtl_storage *buf, void *gw, char *accs, size_t accb) {
  gemm_plan P = *p;
  size_t es = P.es;
  int t = omp_get_thread_num();
  char *col = P.direct ? NULL : (char *)buf->data + (size_t)t * P.colb;
  char *acc = t == 0 ? gw : accs + (size_t)(t - 1) * accb;
#pragma omp for schedule(static)
  for (int64_t n = 0; n < s->N; n++)
    for (int64_t g = 0; g < P.G; g++) {
      const char *xg = (const char *)x + (size_t)((n * s->C + g * P.Cg) * s->H * s->W) * es;
      const char *gyg = (const char *)gy + (size_t)((n * s->K + g * P.Kg) * P.L) * es;
      for (int64_t o0 = 0; o0 < s->OH; o0 += P.band) {
        int64_t o1 = o0 + P.band < s->OH ? o0 + P.band : s->OH, Lb = (o1 - o0) * s->OW;
        if (!P.direct) im2col(s, P.Cg, xg, col, o0, o1);
        gemm(s->dtype, false, true, P.Kg, P.CRS, Lb, gyg + (size_t)(o0 * s->OW) * es, P.L, P.direct ? xg : col,
             P.direct ? P.L : Lb, 1.0, acc + (size_t)(g * P.Kg * P.CRS) * es, P.CRS);
      }
    }
}

static vtl_status gemm_backward_weight(const vtl_conv2d_shape *s, const void *gy, const void *x, void *gw, void *gb) {
  gemm_plan P = plan_of(s);
  size_t es = P.es;
  int64_t wn = s->K * P.CRS;
  int nt = sample_threads(s->N);
  /* per thread: a column buffer and (threads after the first) a private weight gradient */
  size_t accb = (size_t)wn * es;
  vtl_storage *buf = scratch_new((size_t)nt * P.colb + (size_t)(nt - 1) * accb + 1);
  if (!buf) return vtl_error_status();
  char *accs = (char *)buf->data + (size_t)nt * P.colb;
  memset(gw, 0, accb);
  if (nt > 1) memset(accs, 0, (size_t)(nt - 1) * accb);
if (nt > 1) {
#pragma omp parallel num_threads(nt)
    weight_grad_part(s, &P, gy, x, buf, gw, accs, accb);
  } else {
    weight_grad_part(s, &P, gy, x, buf, gw, accs, accb);
  }
  for (int t = 1; t < nt; t++) {
    const char *acc = accs + (size_t)(t - 1) * accb;
    if (s->dtype == VTL_F32)
      for (int64_t i = 0; i < wn; i++) ((float *)gw)[i] += ((const float *)acc)[i];
    else
      for (int64_t i = 0; i < wn; i++) ((double *)gw)[i] += ((const double *)acc)[i];
  }
  vtl_storage_release(buf);
  if (gb) bias_grad(s, gy, gb);
  return VTL_OK;
}

/* dst = src (add: dst += src) between (N,C,S) and channels-last (N,S,C) layouts: to_cl says
   which way */
#define RELAYOUT_BODY(T)                                                                                  \
  do {                                                                                                    \
    T *d = dst;                                                                                           \
    const T *a = src;                                                                                     \
    for (int64_t n = 0; n < N; n++)                                                                       \
      for (int64_t c = 0; c < C; c++)                                                                     \
        for (int64_t i = 0; i < S; i++) {                                                                 \
          int64_t p = (n * C + c) * S + i, q = (n * S + i) * C + c;                                      \
          T v = a[to_cl ? p : q];                                                                         \
          T *o = &d[to_cl ? q : p];                                                                       \
          *o = add ? *o + v : v;                                                                          \
        }                                                                                                 \
  } while (0)

static void relayout(vtl_dtype dt, void *dst, const void *src, int64_t N, int64_t C, int64_t S, bool to_cl, bool add) {
  if (dt == VTL_F32) RELAYOUT_BODY(float);
  else if (dt == VTL_F64) RELAYOUT_BODY(double);
  else if (!add) RELAYOUT_BODY(uint16_t); /* half bits, moved */
}

/* A channels-last call oneDNN did not run (s->x_cl: x and gx are (N,H,W,C) in memory; s->y_cl:
   y and gy are (N,OH,OW,K)) runs on (N,C,H,W) copies in scratch: the operands to read are
   copied in, those written come from scratch buffers copied out after the call. */
typedef struct {
  vtl_conv2d_shape s;       /* the planar problem */
  vtl_storage *xt, *yt;     /* scratch of x (or gx) and y (or gy), when channels-last */
} planar;

static vtl_status planar_open(planar *pl, const vtl_conv2d_shape *s, const void *x, const void *y) {
  size_t es = vtl_dtype_size(s->dtype);
  pl->s = *s;
  pl->s.x_cl = pl->s.y_cl = false;
  pl->xt = pl->yt = NULL;
  if (s->x_cl && !(pl->xt = scratch_new((size_t)(s->N * s->C * s->H * s->W) * es + 1))) return vtl_error_status();
  if (s->y_cl && !(pl->yt = scratch_new((size_t)(s->N * s->K * s->OH * s->OW) * es + 1))) {
    vtl_storage_release(pl->xt);
    return vtl_error_status();
  }
  if (x && pl->xt) relayout(s->dtype, pl->xt->data, x, s->N, s->C, s->H * s->W, false, false);
  if (y && pl->yt) relayout(s->dtype, pl->yt->data, y, s->N, s->K, s->OH * s->OW, false, false);
  return VTL_OK;
}

/* copies the written operand (x: gx, else y) back to channels-last and frees the scratch */
static vtl_status planar_close(planar *pl, vtl_status st, void *x, void *y) {
  const vtl_conv2d_shape *s = &pl->s;
  if (st == VTL_OK && x && pl->xt) relayout(s->dtype, x, pl->xt->data, s->N, s->C, s->H * s->W, true, false);
  if (st == VTL_OK && y && pl->yt) relayout(s->dtype, y, pl->yt->data, s->N, s->K, s->OH * s->OW, true, false);
  vtl_storage_release(pl->xt);
  vtl_storage_release(pl->yt);
  return st;
}

static const void *pick_in(const vtl_storage *t, const void *p) { return t ? t->data : p; }
static void *pick_out(vtl_storage *t, void *p) { return t ? t->data : p; }


/* ======================================================================================
 * entry points
 * ====================================================================================== */

static vtl_status check_dtype(const vtl_conv2d_shape *s, const char *fn) {
  if (s->dtype != VTL_F32 && s->dtype != VTL_F64)
    return vtl_error_set(VTL_ERR_ARG, "%s: kernel supports f32 and f64, got %s", fn, vtl_dtype_name(s->dtype));
  return VTL_OK;
}

vtl_status vtl_cpu_conv2d_forward(const vtl_conv2d_shape *s, const void *x, const void *w, const void *b, void *y) {
  if (check_dtype(s, "conv2d")) return vtl_error_status();
  size_t es = vtl_dtype_size(s->dtype);
  int64_t ny = s->N * s->K * s->OH * s->OW;
  if (ny == 0) return VTL_OK;
  if (s->C == 0) { /* no input channels: the output is the bias */
    for (int64_t i = 0; i < ny; i++) {
      int64_t k = s->y_cl ? i % s->K : i / (s->OH * s->OW) % s->K;
      double v = b ? vtl_load_as_double((const char *)b + k * (int64_t)es, s->dtype) : 0;
      vtl_store_from_double((char *)y + i * (int64_t)es, s->dtype, v);
    }
    return VTL_OK;
  }
  if (s->dtype == VTL_F32) {
    void *user[MAX_ARGS] = {(void *)x, (void *)w, b ? (void *)b : y, y};
    int r = dnnl_conv(K_FWD, s, user, b != NULL, &no_post, NULL, NULL);
    if (r) return r > 0 ? VTL_OK : vtl_error_status();
  }
  if (s->x_cl || s->y_cl) {
    planar pl;
    if (planar_open(&pl, s, x, NULL)) return vtl_error_status();
    return planar_close(&pl, gemm_forward(&pl.s, pick_in(pl.xt, x), w, b, pick_out(pl.yt, y)), NULL, y);
  }
  return gemm_forward(s, x, w, b, y);
}

/* bf16 gradients: oneDNN's bf16 kernels or an error (the op layer then computes in f32) */
static vtl_status bf16_backward(int kind, const vtl_conv2d_shape *s, void *const *user, bool bias) {
  int r = dnnl_conv(kind, s, user, bias, &no_post, NULL, NULL);
  if (r) return r > 0 ? VTL_OK : vtl_error_status();
  return vtl_error_set(VTL_ERR_ARG, "conv2d_backward: no bf16 kernel for this convolution here");
}

vtl_status vtl_cpu_conv2d_backward_data(const vtl_conv2d_shape *s, const void *gy, const void *w, void *gx) {
  if (s->dtype == VTL_BF16 && s->N * s->C * s->H * s->W > 0 && s->K > 0 && s->OH * s->OW > 0) {
    void *user[MAX_ARGS] = {(void *)gy, (void *)w, gx};
    return bf16_backward(K_BWD_DATA, s, user, false);
  }
  if (check_dtype(s, "conv2d_backward")) return vtl_error_status();
  size_t es = vtl_dtype_size(s->dtype);
  int64_t nx = s->N * s->C * s->H * s->W;
  if (nx == 0) return VTL_OK;
  if (s->K == 0 || s->OH * s->OW == 0) { memset(gx, 0, (size_t)nx * es); return VTL_OK; }
  /* oneDNN pads the input-gradient channels to its block of 16: with few input channels (an
     image stem) the GEMM path is several times faster */
  bool few_channels = s->groups == 1 && s->C < 16;
  if (s->dtype == VTL_F32 && !few_channels) {
    void *user[MAX_ARGS] = {(void *)gy, (void *)w, gx};
    int r = dnnl_conv(K_BWD_DATA, s, user, false, &no_post, NULL, NULL);
    if (r) return r > 0 ? VTL_OK : vtl_error_status();
  }
  if (s->x_cl || s->y_cl) {
    planar pl;
    if (planar_open(&pl, s, NULL, gy)) return vtl_error_status();
    return planar_close(&pl, gemm_backward_data(&pl.s, pick_in(pl.yt, gy), w, pick_out(pl.xt, gx)), gx, NULL);
  }
  return gemm_backward_data(s, gy, w, gx);
}

vtl_status vtl_cpu_conv2d_backward_weight(const vtl_conv2d_shape *s, const void *gy, const void *x, void *gw,
                                          void *gb) {
  if (s->dtype == VTL_BF16 && s->N * s->OH * s->OW > 0 && s->C > 0 && s->K > 0) {
    void *user[MAX_ARGS] = {(void *)gy, (void *)x, gw, gb};
    return bf16_backward(K_BWD_WEIGHT, s, user, gb != NULL);
  }
  if (check_dtype(s, "conv2d_backward")) return vtl_error_status();
  size_t es = vtl_dtype_size(s->dtype);
  int64_t nw = s->K * (s->C / (s->groups ? s->groups : 1)) * s->R * s->S;
  if (s->N * s->OH * s->OW == 0 || s->C == 0) {
    memset(gw, 0, (size_t)nw * es);
    if (gb) memset(gb, 0, (size_t)s->K * es);
    return VTL_OK;
  }
  if (s->dtype == VTL_F32 && nw > 0) {
    void *user[MAX_ARGS] = {(void *)gy, (void *)x, gw, gb};
    int r = dnnl_conv(K_BWD_WEIGHT, s, user, gb != NULL, &no_post, NULL, NULL);
    if (r) return r > 0 ? VTL_OK : vtl_error_status();
  }
  if (s->x_cl || s->y_cl) {
    planar pl;
    if (planar_open(&pl, s, nw > 0 ? x : NULL, gy)) return vtl_error_status();
    vtl_status st = VTL_OK;
    if (nw > 0) st = gemm_backward_weight(&pl.s, pick_in(pl.yt, gy), pick_in(pl.xt, x), gw, gb);
    else if (gb) bias_grad(&pl.s, pick_in(pl.yt, gy), gb);
    return planar_close(&pl, st, NULL, NULL);
  }
  if (nw == 0) {
    if (gb) bias_grad(s, gy, gb);
    return VTL_OK;
  }
  return gemm_backward_weight(s, gy, x, gw, gb);
}

/* The oneDNN eltwise steps for an activation; false when it has none. */
static bool eltwise_of(vtl_activation act, const double *p, post_ops *po) {
  switch (act) {
  case VTL_ACT_RELU: po->alg[0] = dnnl_eltwise_relu; po->alpha[0] = 0; break;
  case VTL_ACT_LEAKY_RELU: po->alg[0] = dnnl_eltwise_relu; po->alpha[0] = (float)(p ? p[0] : 0.01); break;
  case VTL_ACT_RELU6: po->alg[0] = dnnl_eltwise_clip; po->alpha[0] = 0; po->beta[0] = 6; break;
  case VTL_ACT_GELU: po->alg[0] = dnnl_eltwise_gelu_erf; break;
  case VTL_ACT_GELU_TANH: po->alg[0] = dnnl_eltwise_gelu_tanh; break;
  case VTL_ACT_SILU: po->alg[0] = dnnl_eltwise_swish; po->alpha[0] = 1; break;
  case VTL_ACT_HARDSWISH: po->alg[0] = dnnl_eltwise_hardswish; break;
  case VTL_ACT_HARDSIGMOID: /* clip(x/6 + 1/2, 0, 1) */
    po->alg[0] = dnnl_eltwise_linear; po->alpha[0] = 1.0f / 6; po->beta[0] = 0.5f;
    po->alg[1] = dnnl_eltwise_clip; po->alpha[1] = 0; po->beta[1] = 1;
    po->nelt = 2;
    return true;
  case VTL_ACT_SIGMOID: po->alg[0] = dnnl_eltwise_logistic; break;
  case VTL_ACT_TANH: po->alg[0] = dnnl_eltwise_tanh; break;
  case VTL_ACT_ELU: po->alg[0] = dnnl_eltwise_elu; po->alpha[0] = (float)(p ? p[0] : 1.0); break;
  default: return false;
  }
  po->nelt = 1;
  return true;
}

/* A half-precision layer run in f32: x, y (when added to) and the weights (unless already
   f32) converted into scratch, the f32 path run, y converted back. nx, nw, ny: element counts
   of x, w, y; nb of b. */
typedef struct {
  vtl_dtype dt;
  bool w_f32;
  int64_t nx, nw, nb, ny;
  const void *x, *w, *b;
  void *y;
  bool add;
  float *xf, *wf, *bf, *yf;
  vtl_storage *tmp;
} half_io;

static vtl_status half_in(half_io *h) {
  bool cw = !h->w_f32;
  size_t n = (size_t)(h->nx + h->ny + (cw ? h->nw + h->nb : 0));
  h->tmp = scratch_new(n * sizeof(float) + 64);
  if (!h->tmp) return vtl_error_status();
  float *p = h->tmp->data;
  h->xf = p;
  h->yf = p + h->nx;
  vtl_cpu_cast(h->xf, VTL_F32, 4, h->x, h->dt, 2, h->nx);
  if (h->add) vtl_cpu_cast(h->yf, VTL_F32, 4, h->y, h->dt, 2, h->ny);
  h->wf = (float *)h->w;
  h->bf = (float *)h->b;
  if (cw) {
    h->wf = h->yf + h->ny;
    vtl_cpu_cast(h->wf, VTL_F32, 4, h->w, h->dt, 2, h->nw);
    if (h->b) {
      h->bf = h->wf + h->nw;
      vtl_cpu_cast(h->bf, VTL_F32, 4, h->b, h->dt, 2, h->nb);
    }
  }
  return VTL_OK;
}

static vtl_status half_out(half_io *h, vtl_status st) {
  if (st == VTL_OK) vtl_cpu_cast(h->y, h->dt, 2, h->yf, VTL_F32, 4, h->ny); /* byte strides */
  vtl_storage_release(h->tmp);
  return st;
}

vtl_status vtl_cpu_conv2d_forward_post(const vtl_conv2d_shape *s, const void *x, const void *w, const void *b,
                                       void *y, bool add, const vtl_conv2d_post *post, vtl_storage *wstorage) {
  bool half = is_half(s->dtype);
  if (!half && check_dtype(s, "conv2d")) return vtl_error_status();
  size_t es = vtl_dtype_size(s->dtype);
  int64_t ny = s->N * s->K * s->OH * s->OW;
  if (ny == 0) return VTL_OK;
  post_ops po = {.sum = add};
  /* oneDNN runs f32 and bf16 here (its f16 CPU kernels need AVX512-FP16: f16 takes the f32 path) */
  bool fused = (s->dtype == VTL_F32 || s->dtype == VTL_BF16) && s->C > 0 &&
               (!post->has_act || eltwise_of(post->act, post->act_params, &po));
  if (fused) {
    void *user[MAX_ARGS] = {(void *)x, (void *)w, b ? (void *)b : y, y};
    int r = dnnl_conv(K_FWD, s, user, b != NULL, &po, post->pack, wstorage);
    if (r) return r > 0 ? VTL_OK : vtl_error_status();
  }
  if (half) { /* oneDNN has no such half kernel here: the same layer in f32 */
    half_io h = {.dt = s->dtype, .w_f32 = s->w_f32, .nx = s->N * s->C * s->H * s->W,
                 .nw = s->K * (s->C / s->groups) * s->R * s->S, .nb = s->K, .ny = ny, .x = x, .w = w, .b = b, .y = y,
                 .add = add};
    if (half_in(&h)) return vtl_error_status();
    vtl_conv2d_shape p = *s;
    p.dtype = VTL_F32;
    p.w_f32 = false;
    vtl_conv2d_post q = *post;
    q.pack = NULL;
    return half_out(&h, vtl_cpu_conv2d_forward_post(&p, h.xf, h.wf, h.bf, h.yf, add, &q, NULL));
  }
  /* the plain convolution on (N,C,H,W) buffers, then the sum and the activation as separate
     passes */
  vtl_conv2d_shape p = *s;
  p.x_cl = p.y_cl = false;
  vtl_storage *xt = NULL, *tmp = NULL;
  if (s->x_cl) {
    xt = scratch_new((size_t)(s->N * s->C * s->H * s->W) * es);
    if (!xt) return vtl_error_status();
    relayout(s->dtype, xt->data, x, s->N, s->C, s->H * s->W, false, false);
  }
  if (add || s->y_cl) {
    tmp = scratch_new((size_t)ny * es);
    if (!tmp) {
      vtl_storage_release(xt);
      return vtl_error_status();
    }
  }
  void *out = tmp ? tmp->data : y;
  vtl_status st = vtl_cpu_conv2d_forward(&p, xt ? xt->data : x, w, b, out);
  if (st == VTL_OK && s->y_cl) {
    relayout(s->dtype, y, out, s->N, s->K, s->OH * s->OW, true, add);
  } else if (st == VTL_OK && add) {
    if (s->dtype == VTL_F32)
      for (int64_t i = 0; i < ny; i++) ((float *)y)[i] += ((const float *)out)[i];
    else
      for (int64_t i = 0; i < ny; i++) ((double *)y)[i] += ((const double *)out)[i];
  }
  vtl_storage_release(xt);
  vtl_storage_release(tmp);
  if (st == VTL_OK && post->has_act) vtl_cpu_activation_forward(s->dtype, post->act, y, y, ny, post->act_params);
  return st;
}

vtl_status vtl_cpu_linear_forward_post(vtl_dtype dt, int64_t M, int64_t K, int64_t N, const void *x, const void *w,
                                       const void *b, void *y, bool add, const vtl_conv2d_post *post,
                                       vtl_storage *wstorage, bool w_f32) {
  bool half = is_half(dt);
  if (dt != VTL_F32 && dt != VTL_F64 && !half)
    return vtl_error_set(VTL_ERR_ARG, "linear: kernel supports f32, f64, f16 and bf16, got %s", vtl_dtype_name(dt));
  size_t es = vtl_dtype_size(dt);
  if (M * N == 0) return VTL_OK;
  post_ops po = {.sum = add};
  if ((dt == VTL_F32 || dt == VTL_BF16) && K > 0 && (!post->has_act || eltwise_of(post->act, post->act_params, &po))) {
    vtl_conv2d_shape s = {.dtype = dt, .N = M, .C = K, .K = N, .H = 1, .W = 1, .R = 1, .S = 1, .OH = 1, .OW = 1,
                          .stride = {1, 1}, .dilation = {1, 1}, .groups = 1, .w_f32 = half && w_f32};
    void *user[MAX_ARGS] = {(void *)x, (void *)w, b ? (void *)b : y, y};
    int r = dnnl_conv(K_LINEAR, &s, user, b != NULL, &po, post->pack, wstorage);
    if (r) return r > 0 ? VTL_OK : vtl_error_status();
  }
  if (half) { /* no oneDNN half kernel: the same layer in f32 */
    half_io h = {.dt = dt, .w_f32 = w_f32, .nx = M * K, .nw = N * K, .nb = N, .ny = M * N, .x = x, .w = w, .b = b,
                 .y = y, .add = add};
    if (half_in(&h)) return vtl_error_status();
    vtl_conv2d_post q = *post;
    q.pack = NULL;
    return half_out(&h, vtl_cpu_linear_forward_post(VTL_F32, M, K, N, h.xf, h.wf, h.bf, h.yf, add, &q, NULL, false));
  }
  /* y = x wᵀ + b (+ y) by BLAS, then the activation */
  if (b) {
    if (add) { /* y += b first: the GEMM below accumulates into y */
      for (int64_t i = 0; i < M; i++)
        if (dt == VTL_F32)
          for (int64_t j = 0; j < N; j++) ((float *)y)[i * N + j] += ((const float *)b)[j];
        else
          for (int64_t j = 0; j < N; j++) ((double *)y)[i * N + j] += ((const double *)b)[j];
    } else {
      for (int64_t i = 0; i < M; i++) memcpy((char *)y + (size_t)(i * N) * es, b, (size_t)N * es);
    }
  }
  double beta = b || add ? 1.0 : 0.0;
  if (K > 0) gemm(dt, false, true, M, N, K, x, K, w, K, beta, y, N);
  else if (!b && !add) memset(y, 0, (size_t)(M * N) * es);
  if (post->has_act) vtl_cpu_activation_forward(dt, post->act, y, y, M * N, post->act_params);
  return VTL_OK;
}

/* ======================================================================================
 * bf16 attention (vtl_op_attention_qkv in an autocast region)
 * ====================================================================================== */

/* The two batched oneDNN matmuls of one attention shape: S = q kᵀ (bf16 in, f32 out) and
   O = P v (bf16), both reading q, k, v in place from the (B,N,3,H,D) projection and writing O
   in (B,N,H,D). A few shapes are kept (one per model and batch size in practice). */
typedef struct {
  int64_t B, N, H, D;
  int threads;
  dnnl_primitive_t qk, pv;
  dnnl_memory_desc_t q, k, s, p, v, o;
} attn_entry;

#define ATTN_CACHE 8
static attn_entry attn_cache[ATTN_CACHE];
static int attn_next;

static bool attn_build(attn_entry *e) {
  int64_t B = e->B, N = e->N, H = e->H, D = e->D, ld = 3 * H * D;
  dnnl_dims_t qd = {B, H, N, D}, qs = {N * ld, D, ld, 1};
  dnnl_dims_t kd = {B, H, D, N}, ks = {N * ld, D, 1, ld};
  dnnl_dims_t sd = {B, H, N, N};
  dnnl_dims_t os = {N * H * D, D, H * D, 1};
  bool ok = dnnl_memory_desc_init_by_strides(&e->q, 4, qd, dnnl_bf16, qs) == dnnl_success &&
            dnnl_memory_desc_init_by_strides(&e->k, 4, kd, dnnl_bf16, ks) == dnnl_success &&
            dnnl_memory_desc_init_by_tag(&e->s, 4, sd, dnnl_f32, dnnl_abcd) == dnnl_success &&
            dnnl_memory_desc_init_by_tag(&e->p, 4, sd, dnnl_bf16, dnnl_abcd) == dnnl_success &&
            dnnl_memory_desc_init_by_strides(&e->v, 4, qd, dnnl_bf16, qs) == dnnl_success &&
            dnnl_memory_desc_init_by_strides(&e->o, 4, qd, dnnl_bf16, os) == dnnl_success;
  dnnl_matmul_desc_t m1, m2;
  ok = ok && dnnl_matmul_desc_init(&m1, &e->q, &e->k, NULL, &e->s) == dnnl_success &&
       dnnl_matmul_desc_init(&m2, &e->p, &e->v, NULL, &e->o) == dnnl_success;
  dnnl_primitive_desc_t pd1 = NULL, pd2 = NULL;
  ok = ok && dnnl_primitive_desc_create(&pd1, &m1, NULL, engine, NULL) == dnnl_success &&
       dnnl_primitive_desc_create(&pd2, &m2, NULL, engine, NULL) == dnnl_success;
  e->qk = e->pv = NULL;
  ok = ok && dnnl_primitive_create(&e->qk, pd1) == dnnl_success && dnnl_primitive_create(&e->pv, pd2) == dnnl_success;
  if (pd1) dnnl_primitive_desc_destroy(pd1);
  if (pd2) dnnl_primitive_desc_destroy(pd2);
  if (!ok) {
    if (e->qk) dnnl_primitive_destroy(e->qk);
    if (e->pv) dnnl_primitive_destroy(e->pv);
    e->qk = e->pv = NULL;
  }
  return ok;
}

/* 1 done, 0 not handled (no oneDNN bf16 matmul here: the caller computes in f32), -1 error set */
int vtl_cpu_attention_qkv_bf16(int64_t B, int64_t N, int64_t H, int64_t D, double scale, const void *qkv, void *out) {
  if (B * H * N == 0) return 1;
  if (!engine_ready()) return 0;
  int threads = omp_get_max_threads();
  pthread_mutex_lock(&cache_lock);
  attn_entry *e = NULL;
  for (int i = 0; i < ATTN_CACHE && !e; i++)
    if (attn_cache[i].qk && attn_cache[i].B == B && attn_cache[i].N == N && attn_cache[i].H == H &&
        attn_cache[i].D == D && attn_cache[i].threads == threads)
      e = &attn_cache[i];
  if (!e) {
    e = &attn_cache[attn_next];
    attn_next = (attn_next + 1) % ATTN_CACHE;
    if (e->qk) dnnl_primitive_destroy(e->qk);
    if (e->pv) dnnl_primitive_destroy(e->pv);
    *e = (attn_entry){.B = B, .N = N, .H = H, .D = D, .threads = threads};
    if (!attn_build(e)) {
      pthread_mutex_unlock(&cache_lock);
      return 0;
    }
  }
  /* the entry stays valid while the lock is held: the products run under it (one at a time) */
  int64_t ns = B * H * N * N;
  vtl_storage *tmp = scratch_new((size_t)ns * 6 + 64);
  if (!tmp) {
    pthread_mutex_unlock(&cache_lock);
    return -1;
  }
  float *s = tmp->data;
  uint16_t *p = (uint16_t *)(s + ns);
  const uint16_t *q = qkv;
  dnnl_memory_t mq = NULL, mk = NULL, ms = NULL, mp = NULL, mv = NULL, mo = NULL;
  bool ok = dnnl_memory_create(&mq, &e->q, engine, (void *)q) == dnnl_success &&
            dnnl_memory_create(&mk, &e->k, engine, (void *)(q + H * D)) == dnnl_success &&
            dnnl_memory_create(&ms, &e->s, engine, s) == dnnl_success &&
            dnnl_memory_create(&mp, &e->p, engine, p) == dnnl_success &&
            dnnl_memory_create(&mv, &e->v, engine, (void *)(q + 2 * H * D)) == dnnl_success &&
            dnnl_memory_create(&mo, &e->o, engine, out) == dnnl_success;
  if (ok) {
    dnnl_exec_arg_t a1[3] = {{DNNL_ARG_SRC, mq}, {DNNL_ARG_WEIGHTS, mk}, {DNNL_ARG_DST, ms}};
    ok = dnnl_primitive_execute(e->qk, stream, 3, a1) == dnnl_success && dnnl_stream_wait(stream) == dnnl_success;
  }
  if (ok) { /* softmax(scale * s) per row, in f32, rounded once to bf16 */
    float f = (float)scale;
#pragma omp parallel for if (ns > 65536)
    for (int64_t i = 0; i < ns; i++) s[i] *= f;
    vtl_cpu_softmax_forward(VTL_F32, s, s, B * H * N, N, 1, false);
    vtl_cpu_cast(p, VTL_BF16, 2, s, VTL_F32, 4, ns);
    dnnl_exec_arg_t a2[3] = {{DNNL_ARG_SRC, mp}, {DNNL_ARG_WEIGHTS, mv}, {DNNL_ARG_DST, mo}};
    ok = dnnl_primitive_execute(e->pv, stream, 3, a2) == dnnl_success && dnnl_stream_wait(stream) == dnnl_success;
  }
  pthread_mutex_unlock(&cache_lock);
  dnnl_memory_t all[6] = {mq, mk, ms, mp, mv, mo};
  for (int i = 0; i < 6; i++)
    if (all[i]) dnnl_memory_destroy(all[i]);
  vtl_storage_release(tmp);
  return ok ? 1 : 0;
}

/* ======================================================================================
 * bf16 matmul (vtl_op_matmul on bf16 operands): one oneDNN batched matmul reading both
 * operands in place through their strides, f32 accumulation, the result rounded once
 * ====================================================================================== */

/* t, an operand expanded to out's batch shape: its batch dims as one dim of *B matrices *s
   elements apart (0: one matrix broadcast over the batch); false when the dims do not merge */
static bool merge_batch(const vtl_tensor *out, const vtl_tensor *t, int64_t *B, int64_t *s) {
  int64_t n = 1, st = -1, prev_stride = 0, prev_size = 1;
  bool zero = false, nonzero = false;
  for (int d = out->ndim - 3; d >= 0; d--) {
    int64_t sz = out->shape[d], sd = t->strides[d];
    if (sz == 1) continue;
    if (sd == 0) zero = true;
    else nonzero = true;
    if (st < 0) st = sd;
    else if (sd != prev_stride * prev_size) return false;
    prev_stride = sd;
    prev_size = sz;
    n *= sz;
  }
  if (zero && nonzero) return false;
  *B = n;
  *s = st < 0 ? 0 : st;
  return true;
}

typedef struct {
  int64_t key[12];
  bool used, failed; /* failed: oneDNN has no matmul for this key (not asked again) */
  dnnl_primitive_t prim;
  dnnl_memory_desc_t a, b, c;
} mm_entry;

#define MM_CACHE 32
static mm_entry mm_cache[MM_CACHE];
static int mm_next;
static pthread_mutex_t mm_lock = PTHREAD_MUTEX_INITIALIZER;

/* key: B, M, K, N, the strides of a (3) and b (3), the output dtype, the thread count */
static bool mm_build(mm_entry *e) {
  int64_t B = e->key[0], M = e->key[1], K = e->key[2], N = e->key[3];
  int64_t *sa = e->key + 4, *sb = e->key + 7;
  dnnl_dims_t ad = {sa[0] ? B : 1, M, K}, as = {sa[0] ? sa[0] : M * K, sa[1], sa[2]};
  dnnl_dims_t bd = {sb[0] ? B : 1, K, N}, bs = {sb[0] ? sb[0] : K * N, sb[1], sb[2]};
  dnnl_dims_t cd = {B, M, N};
  bool ok = dnnl_memory_desc_init_by_strides(&e->a, 3, ad, dnnl_bf16, as) == dnnl_success &&
            dnnl_memory_desc_init_by_strides(&e->b, 3, bd, dnnl_bf16, bs) == dnnl_success &&
            dnnl_memory_desc_init_by_tag(&e->c, 3, cd, dnnl_dt((vtl_dtype)e->key[10]), dnnl_abc) == dnnl_success;
  dnnl_matmul_desc_t md;
  ok = ok && dnnl_matmul_desc_init(&md, &e->a, &e->b, NULL, &e->c) == dnnl_success;
  dnnl_primitive_desc_t pd = NULL;
  ok = ok && dnnl_primitive_desc_create(&pd, &md, NULL, engine, NULL) == dnnl_success;
  /* oneDNN's reference kernels (a CPU without bf16 instructions) are slower than the f32 path */
  const char *impl = NULL;
  ok = ok && dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl &&
       strncmp(impl, "ref", 3) != 0;
  e->prim = NULL;
  ok = ok && dnnl_primitive_create(&e->prim, pd) == dnnl_success;
  if (pd) dnnl_primitive_desc_destroy(pd);
  if (!ok && e->prim) { dnnl_primitive_destroy(e->prim); e->prim = NULL; }
  return ok;
}

int vtl_cpu_gemm_bf16(int64_t B, int64_t M, int64_t N, int64_t K, const void *a, const int64_t sa[3], const void *b,
                      const int64_t sb[3], void *c, vtl_dtype cdt) {
  if (B == 0 || M == 0 || N == 0 || K == 0 || (cdt != VTL_BF16 && cdt != VTL_F32)) return 0;
  if (!engine_ready()) return 0;
  int64_t key[12] = {B, M, K, N, sa[0], sa[1], sa[2], sb[0], sb[1], sb[2], cdt, omp_get_max_threads()};
  pthread_mutex_lock(&mm_lock);
  mm_entry *e = NULL;
  for (int i = 0; i < MM_CACHE && !e; i++)
    if (mm_cache[i].used && memcmp(mm_cache[i].key, key, sizeof key) == 0) e = &mm_cache[i];
  if (!e) {
    e = &mm_cache[mm_next];
    mm_next = (mm_next + 1) % MM_CACHE;
    if (e->prim) dnnl_primitive_destroy(e->prim);
    memset(e, 0, sizeof *e);
    memcpy(e->key, key, sizeof key);
    e->used = true;
    e->failed = !mm_build(e);
  }
  if (e->failed) {
    pthread_mutex_unlock(&mm_lock);
    return 0;
  }
  /* the entry stays valid while the lock is held: the product runs under it */
  dnnl_memory_t ma = NULL, mb = NULL, mc = NULL;
  bool ok = dnnl_memory_create(&ma, &e->a, engine, (void *)a) == dnnl_success &&
            dnnl_memory_create(&mb, &e->b, engine, (void *)b) == dnnl_success &&
            dnnl_memory_create(&mc, &e->c, engine, c) == dnnl_success;
  if (ok) {
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
    ok = dnnl_primitive_execute(e->prim, stream, 3, args) == dnnl_success && dnnl_stream_wait(stream) == dnnl_success;
  }
  pthread_mutex_unlock(&mm_lock);
  dnnl_memory_t all[3] = {ma, mb, mc};
  for (int i = 0; i < 3; i++)
    if (all[i]) dnnl_memory_destroy(all[i]);
  return ok ? 1 : 0;
}

int vtl_cpu_matmul_half(vtl_tensor *out, const vtl_tensor *a, const vtl_tensor *b) {
  int nd = out->ndim;
  int64_t M = out->shape[nd - 2], N = out->shape[nd - 1], K = a->shape[nd - 1];
  if (out->dtype != VTL_BF16 || a->dtype != out->dtype || b->dtype != out->dtype) return 0;
  int64_t B, sa[3], sb[3];
  if (!merge_batch(out, a, &B, &sa[0]) || !merge_batch(out, b, &B, &sb[0])) return 0;
  sa[1] = a->strides[nd - 2];
  sa[2] = a->strides[nd - 1];
  sb[1] = b->strides[nd - 2];
  sb[2] = b->strides[nd - 1];
  return vtl_cpu_gemm_bf16(B, M, N, K, vtl_tensor_data(a), sa, vtl_tensor_data(b), sb, vtl_tensor_data(out), VTL_BF16);
}
