/* Mixed-precision regions: see autocast.h. */
#include "autocast.h"
#include <pthread.h>
#include <stdlib.h>
#include "autograd.h"
#include "grad_ops.h"

typedef struct {
  vtl_tensor *src, *out; /* both retained */
  uint32_t version;
} cast_entry;

static _Thread_local vtl_dtype cur = VTL_F32;
static _Thread_local int depth;
static _Thread_local cast_entry *cache;
static _Thread_local int ncache, capcache;

static bool tf32_matmul;

vtl_dtype vtl_autocast_dtype(void) { return cur; }
bool vtl_matmul_allow_tf32(void) { return tf32_matmul; }
void vtl_set_matmul_allow_tf32(bool on) { tf32_matmul = on; }

static vtl_cudnn_flags cudnn_flags;
static pthread_once_t cudnn_once = PTHREAD_ONCE_INIT;

/* a switch from the environment: unset or empty `dflt`, "0..." off, anything else on */
static bool env_flag(const char *name, bool dflt) {
  const char *e = getenv(name);
  if (!e || !e[0]) return dflt;
  return e[0] != '0';
}

static bool flash_attention;

static void cudnn_flags_init(void) {
  cudnn_flags.benchmark = env_flag("VTL_CUDNN_BENCHMARK", false);
  cudnn_flags.deterministic = env_flag("VTL_CUDNN_DETERMINISTIC", false);
  cudnn_flags.allow_tf32 = env_flag("VTL_CUDNN_TF32", true); /* torch.backends.cudnn.allow_tf32 */
  flash_attention = env_flag("VTL_FLASH_ATTENTION", false);
}

bool vtl_attention_flash(void) {
  pthread_once(&cudnn_once, cudnn_flags_init);
  return flash_attention;
}

void vtl_set_attention_flash(bool on) {
  pthread_once(&cudnn_once, cudnn_flags_init);
  flash_attention = on;
}

vtl_cudnn_flags vtl_get_cudnn_flags(void) {
  pthread_once(&cudnn_once, cudnn_flags_init);
  return cudnn_flags;
}

void vtl_set_cudnn_flags(vtl_cudnn_flags f) {
  pthread_once(&cudnn_once, cudnn_flags_init);
  cudnn_flags = f;
}

static void cache_clear(void) {
  for (int i = 0; i < ncache; i++) {
    vtl_tensor_release(cache[i].src);
    vtl_tensor_release(cache[i].out);
  }
  free(cache);
  cache = NULL;
  ncache = capcache = 0;
}

int vtl_autocast_enter(vtl_dtype dt) {
  int saved = (int)cur;
  cur = dt == VTL_BF16 || dt == VTL_F16 ? dt : VTL_F32;
  depth++;
  return saved;
}

void vtl_autocast_leave(int saved) {
  cur = (vtl_dtype)saved;
  if (depth > 0 && --depth == 0) cache_clear();
}

int vtl_autocast_cache_size(void) { return ncache; }

static bool is_half(vtl_dtype d) { return d == VTL_F16 || d == VTL_BF16; }

bool vtl_autocast_casts(const vtl_tensor *x) {
  return cur != VTL_F32 && x && (x->dtype == VTL_F32 || is_half(x->dtype)) && x->dtype != cur;
}

vtl_tensor *vtl_autocast_low(vtl_tensor *x) {
  if (!vtl_autocast_casts(x)) return x ? vtl_tensor_retain(x) : NULL;
  bool cacheable = x->dtype == VTL_F32 && vtl_requires_grad(x) && !vtl_grad_fn(x);
  if (cacheable)
    for (int i = 0; i < ncache; i++)
      if (cache[i].src == x && cache[i].version == x->storage->version && cache[i].out->dtype == cur)
        return vtl_tensor_retain(cache[i].out);
  vtl_tensor *out = vtl_fn_to_dtype(x, cur);
  if (!out || !cacheable) return out;
  for (int i = 0; i < ncache; i++)
    if (cache[i].src == x) { /* an older version or dtype: replace it */
      vtl_tensor_release(cache[i].out);
      cache[i].out = vtl_tensor_retain(out);
      cache[i].version = x->storage->version;
      return out;
    }
  if (ncache == capcache) {
    int cap = capcache ? 2 * capcache : 64;
    cast_entry *c = realloc(cache, (size_t)cap * sizeof *c);
    if (!c) return out; /* not cached: still correct */
    cache = c;
    capcache = cap;
  }
  cache[ncache++] = (cast_entry){vtl_tensor_retain(x), vtl_tensor_retain(out), x->storage->version};
  return out;
}

vtl_tensor *vtl_autocast_f32(vtl_tensor *x) {
  if (!x) return NULL;
  if (cur == VTL_F32 || !is_half(x->dtype)) return vtl_tensor_retain(x);
  return vtl_fn_to_dtype(x, VTL_F32);
}
