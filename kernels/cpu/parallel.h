/* Splitting a range of items over the OpenMP pool (one region, contiguous shares). */
#ifndef VTL_CPU_PARALLEL_H
#define VTL_CPU_PARALLEL_H
#include <stdint.h>
#include <omp.h>

/* This thread's share [lo, hi) of [0, n). */
static inline void vtl_thread_range(int64_t n, int64_t *lo, int64_t *hi) {
  int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
  *lo = n * id / nt;
  *hi = n * (id + 1) / nt;
}

/* Runs CALL (which reads lo, hi) for each thread's share of [0, n), in parallel when `go` is
   true and no parallel region is active. */
#define VTL_PARALLEL_RANGE(n, go, CALL)                                \
  do {                                                                 \
    const int64_t n_ = (n);                                            \
    const int go_ = (go);                                              \
    _Pragma("omp parallel if (go_ && !omp_in_parallel())")             \
    {                                                                  \
      int64_t lo, hi;                                                  \
      vtl_thread_range(n_, &lo, &hi);                                  \
      CALL;                                                            \
    }                                                                  \
  } while (0)

/* The same for a body returning a partial sum; the sum of the shares is stored in total. */
#define VTL_PARALLEL_SUM(total, n, go, CALL)                           \
  do {                                                                 \
    const int64_t n_ = (n);                                            \
    const int go_ = (go);                                              \
    double t_ = 0;                                                     \
    _Pragma("omp parallel if (go_ && !omp_in_parallel()) reduction(+ : t_)") \
    {                                                                  \
      int64_t lo, hi;                                                  \
      vtl_thread_range(n_, &lo, &hi);                                  \
      t_ += CALL;                                                      \
    }                                                                  \
    (total) = t_;                                                      \
  } while (0)

/* for (int64_t i = 0; i < n; i++) BODY on nt threads; with nt <= 1 outside any parallel
   region: OpenBLAS called inside one, even an inactive if (0) or one-thread region, ran small
   products 3.5x slower. */
#define VTL_FOR_THREADS(nt, i, n, ...)                                 \
  do {                                                                 \
    if ((nt) > 1) {                                                    \
      _Pragma("omp parallel for num_threads(nt) schedule(static)")     \
      for (int64_t i = 0; i < (n); i++) __VA_ARGS__                    \
    } else {                                                           \
      for (int64_t i = 0; i < (n); i++) __VA_ARGS__                    \
    }                                                                  \
  } while (0)

#endif
