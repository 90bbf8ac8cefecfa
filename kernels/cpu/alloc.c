/* CPU memory: a caching allocator. Blocks of 64 KiB and more are kept on free lists by size
   class when released and handed out again, most recently freed first, so a tensor made in a
   loop reuses memory that is already mapped and likely still in cache. Smaller blocks go to
   malloc directly. The cache holds at most VTL_CPU_CACHE_MAX bytes (or 1/8 of RAM). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "core.h"

#define MIN_CACHED ((size_t)64 << 10)
#define NCLASS 512

typedef struct block { struct block *next; size_t size; } block;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static block *bins[NCLASS];
static size_t cached, cache_max;

/* classes: 8 per power of two; the rounded size is what gets allocated */
static int size_class(size_t n, size_t *rounded) {
  int e = 63 - __builtin_clzll((unsigned long long)n);
  size_t step = (size_t)1 << (e >= 3 ? e - 3 : 0);
  size_t r = (n + step - 1) & ~(step - 1);
  e = 63 - __builtin_clzll((unsigned long long)r);
  int sub = (int)((r >> (e >= 3 ? e - 3 : 0)) & 7);
  *rounded = r;
  int c = e * 8 + sub;
  return c < NCLASS ? c : -1;
}

static size_t limit(void) {
  if (!cache_max) {
    const char *env = getenv("VTL_CPU_CACHE_MAX");
    long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
    cache_max = env ? (size_t)strtoull(env, NULL, 10) : (pages > 0 && psize > 0 ? (size_t)pages * (size_t)psize / 8 : (size_t)1 << 30);
    if (!cache_max) cache_max = 1;
  }
  return cache_max;
}

void *vtl_cpu_alloc(size_t n) {
  size_t r = n;
  int c = n >= MIN_CACHED ? size_class(n, &r) : -1;
  if (c >= 0) {
    pthread_mutex_lock(&lock);
    block *b = bins[c];
    if (b) { bins[c] = b->next; cached -= b->size; }
    pthread_mutex_unlock(&lock);
    if (b) return b;
  }
  void *p = NULL;
  return posix_memalign(&p, 64, r) == 0 ? p : NULL;
}

void vtl_cpu_free(void *p, size_t n) {
  size_t r = n;
  int c = n >= MIN_CACHED ? size_class(n, &r) : -1;
  if (c >= 0) {
    pthread_mutex_lock(&lock);
    if (cached + r <= limit()) {
      block *b = p;
      b->size = r;
      b->next = bins[c];
      bins[c] = b;
      cached += r;
      p = NULL;
    }
    pthread_mutex_unlock(&lock);
  }
  free(p);
}

/* Returns every cached block to the system; the bytes that were cached. */
size_t vtl_cpu_empty_cache(void) {
  pthread_mutex_lock(&lock);
  block *all[NCLASS];
  memcpy(all, bins, sizeof all);
  memset(bins, 0, sizeof bins);
  size_t n = cached;
  cached = 0;
  pthread_mutex_unlock(&lock);
  for (int c = 0; c < NCLASS; c++)
    for (block *b = all[c]; b;) { block *nx = b->next; free(b); b = nx; }
  return n;
}

size_t vtl_cpu_cached_bytes(void) {
  pthread_mutex_lock(&lock);
  size_t n = cached;
  pthread_mutex_unlock(&lock);
  return n;
}
