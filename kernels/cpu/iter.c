/* The CPU strided iterator and dtype casts (see iter.h). */
#include <string.h>
#include <omp.h>
#include "iter.h"
#include "iter_dims.h"

#define BLOCK 512

static inline int is_intlike(vtl_dtype d) { return d == VTL_I64 || d == VTL_I32 || d == VTL_U8 || d == VTL_BOOL; }

/* contiguous f32 <-> bf16 runs (autocast casts whole activations): the same rounding as
   vtl_f32_to_bf16, in a loop the compiler vectorises */
static void f32_to_bf16_run(uint16_t *o, const char *a, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) {
    uint32_t x;
    memcpy(&x, a + 4 * i, 4);
    uint32_t r = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    o[i] = (x & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((x >> 16) | 0x40u) : (uint16_t)r;
  }
}

static void bf16_to_f32_run(char *o, const uint16_t *a, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) {
    uint32_t x = (uint32_t)a[i] << 16;
    memcpy(o + 4 * i, &x, 4);
  }
}

void vtl_cpu_cast(void *dst, vtl_dtype dd, int64_t ds, const void *src, vtl_dtype sd, int64_t ss, int64_t n) {
  char *o = dst;
  const char *a = src;
  if (dd == VTL_BF16 && sd == VTL_F32 && ds == 2 && ss == 4) { f32_to_bf16_run(dst, a, n); return; }
  if (dd == VTL_F32 && sd == VTL_BF16 && ds == 4 && ss == 2) { bf16_to_f32_run(o, src, n); return; }
  if (dd == sd) {
    size_t es = vtl_dtype_size(dd);
    if (ds == (int64_t)es && ss == (int64_t)es) { memmove(o, a, (size_t)n * es); return; }
    switch (es) {
    case 1: for (int64_t i = 0; i < n; i++) o[i * ds] = a[i * ss]; return;
    case 2: for (int64_t i = 0; i < n; i++) *(uint16_t *)(o + i * ds) = *(const uint16_t *)(a + i * ss); return;
    case 4: for (int64_t i = 0; i < n; i++) *(uint32_t *)(o + i * ds) = *(const uint32_t *)(a + i * ss); return;
    default: for (int64_t i = 0; i < n; i++) *(uint64_t *)(o + i * ds) = *(const uint64_t *)(a + i * ss); return;
    }
  }
  if (dd == VTL_F32) {
    switch (sd) {
    case VTL_F16: for (int64_t i = 0; i < n; i++) *(float *)(o + i * ds) = vtl_f16_to_f32(*(const uint16_t *)(a + i * ss)); return;
    case VTL_BF16: for (int64_t i = 0; i < n; i++) *(float *)(o + i * ds) = vtl_bf16_to_f32(*(const uint16_t *)(a + i * ss)); return;
    case VTL_F64: for (int64_t i = 0; i < n; i++) *(float *)(o + i * ds) = (float)*(const double *)(a + i * ss); return;
    case VTL_I64: for (int64_t i = 0; i < n; i++) *(float *)(o + i * ds) = (float)*(const int64_t *)(a + i * ss); return;
    case VTL_I32: for (int64_t i = 0; i < n; i++) *(float *)(o + i * ds) = (float)*(const int32_t *)(a + i * ss); return;
    case VTL_U8: case VTL_BOOL: for (int64_t i = 0; i < n; i++) *(float *)(o + i * ds) = (float)*(const uint8_t *)(a + i * ss); return;
    default: break;
    }
  }
  if (sd == VTL_F32) {
    switch (dd) {
    case VTL_F16: for (int64_t i = 0; i < n; i++) *(uint16_t *)(o + i * ds) = vtl_f32_to_f16(*(const float *)(a + i * ss)); return;
    case VTL_BF16: for (int64_t i = 0; i < n; i++) *(uint16_t *)(o + i * ds) = vtl_f32_to_bf16(*(const float *)(a + i * ss)); return;
    case VTL_F64: for (int64_t i = 0; i < n; i++) *(double *)(o + i * ds) = *(const float *)(a + i * ss); return;
    default: break;
    }
  }
  if (dd == VTL_BOOL) {
    for (int64_t i = 0; i < n; i++) *(uint8_t *)(o + i * ds) = vtl_load_as_double(a + i * ss, sd) != 0;
    return;
  }
  if (is_intlike(dd) && is_intlike(sd)) {
    for (int64_t i = 0; i < n; i++) {
      int64_t v = vtl_load_as_int(a + i * ss, sd);
      switch (dd) {
      case VTL_I64: *(int64_t *)(o + i * ds) = v; break;
      case VTL_I32: *(int32_t *)(o + i * ds) = (int32_t)v; break;
      default: *(uint8_t *)(o + i * ds) = (uint8_t)v; break;
      }
    }
    return;
  }
  for (int64_t i = 0; i < n; i++) vtl_store_from_double(o + i * ds, dd, vtl_load_as_double(a + i * ss, sd));
}

typedef struct {
  int nops, nd;
  int64_t shape[VTL_MAX_DIMS];
  int64_t st[VTL_ITER_MAXOPS][VTL_MAX_DIMS];
  char *base[VTL_ITER_MAXOPS];
  vtl_dtype dt[VTL_ITER_MAXOPS], cdt[VTL_ITER_MAXOPS];
  int convert;
} iter_t;

/* Runs elements [begin, end) of the (collapsed) index space. */
static void iter_range(const iter_t *it, int64_t begin, int64_t end, vtl_loop_fn fn, const void *ctx) {
  int nd = it->nd, nops = it->nops;
  int64_t idx[VTL_MAX_DIMS];
  int64_t rem = begin;
  for (int d = nd - 1; d >= 0; d--) { idx[d] = rem % it->shape[d]; rem /= it->shape[d]; }
  int64_t inner = nd ? it->shape[nd - 1] : 1;
  int64_t s[VTL_ITER_MAXOPS], cs[VTL_ITER_MAXOPS];
  for (int o = 0; o < nops; o++) {
    s[o] = nd ? it->st[o][nd - 1] : 0;
    cs[o] = (int64_t)vtl_dtype_size(it->cdt[o]);
  }
  _Alignas(64) char buf[VTL_ITER_MAXOPS][BLOCK * 8];
  int64_t pos = begin;
  while (pos < end) {
    int64_t i0 = nd ? idx[nd - 1] : 0;
    int64_t len = inner - i0;
    if (len > end - pos) len = end - pos;
    char *p[VTL_ITER_MAXOPS];
    for (int o = 0; o < nops; o++) {
      char *q = it->base[o];
      for (int d = 0; d < nd; d++) q += idx[d] * it->st[o][d];
      p[o] = q;
    }
    if (!it->convert) {
      fn(p, s, len, ctx);
    } else {
      for (int64_t j = 0; j < len; j += BLOCK) {
        int64_t m = len - j < BLOCK ? len - j : BLOCK;
        char *q[VTL_ITER_MAXOPS];
        int64_t qs[VTL_ITER_MAXOPS];
        for (int o = 0; o < nops; o++) {
          char *src = p[o] + j * s[o];
          if (it->dt[o] == it->cdt[o]) { q[o] = src; qs[o] = s[o]; continue; }
          q[o] = buf[o];
          qs[o] = cs[o];
          if (o > 0) vtl_cpu_cast(buf[o], it->cdt[o], cs[o], src, it->dt[o], s[o], m);
        }
        fn(q, qs, m, ctx);
        if (it->dt[0] != it->cdt[0]) vtl_cpu_cast(p[0] + j * s[0], it->dt[0], s[0], buf[0], it->cdt[0], cs[0], m);
      }
    }
    pos += len;
    if (nd) {
      idx[nd - 1] += len;
      for (int d = nd - 1; d > 0 && idx[d] >= it->shape[d]; d--) { idx[d] = 0; idx[d - 1]++; }
    }
  }
}

void vtl_cpu_iter(int nops, const vtl_tensor *const *ts, const vtl_dtype *cdt, vtl_loop_fn fn, const void *ctx) {
  iter_t it;
  it.nops = nops;
  it.convert = 0;
  int64_t numel = 1;
  for (int o = 0; o < nops; o++) {
    it.dt[o] = ts[o]->dtype;
    it.cdt[o] = cdt[o];
    it.base[o] = vtl_tensor_data(ts[o]);
    if (cdt[o] != ts[o]->dtype) it.convert = 1;
  }
  int nd = vtl_iter_dims(nops, ts, it.shape, it.st, &numel);
  if (numel == 0) return;
  it.nd = nd;
  int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (numel < (int64_t)VTL_GRAIN * 2) nt = 1;
  if (nt > 1 && numel / nt < VTL_GRAIN) nt = (int)(numel / VTL_GRAIN);
  if (nt <= 1) { iter_range(&it, 0, numel, fn, ctx); return; }
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num(), n = omp_get_num_threads();
    int64_t b = numel * t / n, e = numel * (t + 1) / n;
    /* keep chunk edges on 16-element boundaries so threads do not share cache lines */
    if (t) b &= ~(int64_t)15;
    if (t != n - 1) e &= ~(int64_t)15;
    if (b < e) iter_range(&it, b, e, fn, ctx);
  }
}
