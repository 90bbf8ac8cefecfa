/*
 * The CPU strided iterator: walks operands of one shape (operand 0 is the output, the
 * inputs are views already broadcast to it), collapses dims, splits the work over the
 * OpenMP pool, and converts operands whose dtype differs from the loop's compute dtype in
 * small blocks, so kernels only ever see one dtype per operand.
 */
#ifndef VTL_CPU_ITER_H
#define VTL_CPU_ITER_H
#include "core.h"

#define VTL_ITER_MAXOPS 4

/* p: operand pointers; s: byte strides of the innermost dim; n: elements. */
typedef void (*vtl_loop_fn)(char **p, const int64_t *s, int64_t n, const void *ctx);

/* Runs fn over every element. cdt[i] is the dtype the loop expects for operand i. */
void vtl_cpu_iter(int nops, const vtl_tensor *const *ts, const vtl_dtype *cdt, vtl_loop_fn fn,
                  const void *ctx);

/* dst[i*ds] = (dd) src[i*ss] for n elements; strides in bytes. */
void vtl_cpu_cast(void *dst, vtl_dtype dd, int64_t ds, const void *src, vtl_dtype sd, int64_t ss, int64_t n);

/* Elements per thread below which a loop stays serial. */
#define VTL_GRAIN 32768

#endif
