/*
 * Tensor operations: argument and shape checks, output allocation, dispatch to the backend of
 * the inputs' device. Every function returns a new reference (or NULL with the error set);
 * dims are 0-based and already normalised by the caller unless stated; index tensors hold
 * 0-based positions at this level (the Lua binding converts from and to 1-based).
 */
#ifndef VTL_OPS_H
#define VTL_OPS_H
#include "core.h"
#include "backend.h"

/* dim in [-ndim, ndim) (0-based) or a 1-based Lua dim is normalised by the binding; this
   helper checks a 0-based dim. */
int vtl_check_dim(const char *op, int dim, int ndim);

/* ---- creation ---- */
vtl_tensor *vtl_op_full(const int64_t *shape, int ndim, double value, vtl_dtype dt, vtl_device dev);
vtl_tensor *vtl_op_arange(double start, double end, double step, vtl_dtype dt, vtl_device dev);
vtl_tensor *vtl_op_linspace(double start, double end, int64_t steps, vtl_dtype dt, vtl_device dev);
vtl_tensor *vtl_op_eye(int64_t n, int64_t m, vtl_dtype dt, vtl_device dev);
/* kind: 0 uniform [lo, hi), 1 normal (mean lo, std hi), 2 integers in [lo, hi) */
vtl_tensor *vtl_op_random(const int64_t *shape, int ndim, int kind, double lo, double hi,
                          vtl_dtype dt, vtl_device dev, uint64_t seed, uint64_t *offset);

/* ---- copies and conversions ---- */
vtl_tensor *vtl_op_contiguous(vtl_tensor *x);       /* x itself (retained) when already contiguous */
vtl_tensor *vtl_op_clone(const vtl_tensor *x);
/* x (N,C,H,W) laid out channels-last: x itself (retained) when it already is, else a copy */
vtl_tensor *vtl_op_contiguous_channels_last(vtl_tensor *x);
vtl_tensor *vtl_op_to_dtype(vtl_tensor *x, vtl_dtype dt); /* x retained when dt matches; keeps channels-last */
vtl_status vtl_op_copy_(vtl_tensor *dst, const vtl_tensor *src); /* broadcasting, casting */
vtl_status vtl_op_fill_(vtl_tensor *dst, double value);

/* ---- views (share storage) ---- */
vtl_tensor *vtl_op_view(const vtl_tensor *x, const int64_t *shape, int ndim); /* one -1 allowed */
vtl_tensor *vtl_op_reshape(vtl_tensor *x, const int64_t *shape, int ndim);    /* view or copy */
vtl_tensor *vtl_op_permute(const vtl_tensor *x, const int *perm, int n);
vtl_tensor *vtl_op_transpose(const vtl_tensor *x, int d0, int d1);
vtl_tensor *vtl_op_narrow(const vtl_tensor *x, int dim, int64_t start, int64_t length);
vtl_tensor *vtl_op_slice(const vtl_tensor *x, int dim, int64_t start, int64_t stop, int64_t step);
vtl_tensor *vtl_op_select(const vtl_tensor *x, int dim, int64_t index);
vtl_tensor *vtl_op_squeeze(const vtl_tensor *x, int dim); /* dim < -ndim-... : -1000 = all */
vtl_tensor *vtl_op_unsqueeze(const vtl_tensor *x, int dim); /* dim in [0, ndim] */
vtl_tensor *vtl_op_expand(const vtl_tensor *x, const int64_t *shape, int ndim); /* -1 keeps */
vtl_tensor *vtl_op_flatten(vtl_tensor *x, int start, int end);
vtl_tensor *vtl_op_unfold(const vtl_tensor *x, int dim, int64_t size, int64_t step);
#define VTL_SQUEEZE_ALL (-1000)

/* ---- elementwise (broadcasting, PyTorch type promotion) ---- */
vtl_tensor *vtl_op_unary(vtl_unary_op op, vtl_tensor *x, const double *params);
vtl_tensor *vtl_op_binary(vtl_binary_op op, vtl_tensor *a, vtl_tensor *b);
/* dtype of a binary op's operands after promotion (0-d tensors follow PyTorch's rule) */
vtl_dtype vtl_result_type(const vtl_tensor *a, const vtl_tensor *b);
vtl_tensor *vtl_op_binary_scalar(vtl_binary_op op, vtl_tensor *a, double s, bool s_is_float, bool scalar_first);
/* in place: result written into x (cast to x's dtype); b may be NULL with scalar s */
vtl_status vtl_op_unary_(vtl_unary_op op, vtl_tensor *x, const double *params);
vtl_status vtl_op_binary_(vtl_binary_op op, vtl_tensor *x, vtl_tensor *b, double s);
/* y (op)= ... in place, see vtl_fused_op; a and b broadcast to y; b unused for AXPY */
vtl_status vtl_op_fused_(vtl_fused_op op, vtl_tensor *y, vtl_tensor *a, vtl_tensor *b, double value);
vtl_tensor *vtl_op_where(vtl_tensor *cond, vtl_tensor *a, vtl_tensor *b);
vtl_tensor *vtl_op_lerp(vtl_tensor *a, vtl_tensor *b, vtl_tensor *w);
vtl_status vtl_op_masked_fill_(vtl_tensor *x, vtl_tensor *mask, double value);
const char *vtl_unary_name(vtl_unary_op op);
const char *vtl_binary_name(vtl_binary_op op);
/* Broadcast shapes; returns ndim of the result or -1 with the error set. */
int vtl_broadcast_shape(const char *op, const vtl_tensor *a, const vtl_tensor *b, int64_t *out);
int vtl_broadcast_shapes(const char *op, const int64_t *a, int na, const int64_t *b, int nb, int64_t *out);
/* A view of x broadcast to shape (x must be broadcastable). */
vtl_tensor *vtl_broadcast_to(const vtl_tensor *x, const int64_t *shape, int ndim);

/* ---- reductions ---- */
/* dims: a bitmask of dims to reduce (0 = all). keepdim keeps them as size 1. indices (optional
   out): for max/min over one dim. param: p for norm, correction for var. */
vtl_tensor *vtl_op_reduce(vtl_reduce_op op, vtl_tensor *x, uint32_t dims, bool keepdim,
                          double param, vtl_tensor **indices);
vtl_tensor *vtl_op_cumsum(vtl_tensor *x, int dim);
vtl_status vtl_op_sort(vtl_tensor *x, int dim, bool descending, vtl_tensor **values, vtl_tensor **indices);
vtl_status vtl_op_topk(vtl_tensor *x, int64_t k, int dim, bool largest, bool sorted,
                       vtl_tensor **values, vtl_tensor **indices);
/* flattened unique values (sorted); inverse (shape of x) and counts optional */
vtl_status vtl_op_unique(vtl_tensor *x, vtl_tensor **values, vtl_tensor **inverse, vtl_tensor **counts);

/* ---- linear algebra ---- */
vtl_tensor *vtl_op_matmul(vtl_tensor *a, vtl_tensor *b);

/* ---- indexing ---- */
vtl_tensor *vtl_op_index_select(vtl_tensor *x, int dim, vtl_tensor *index);
vtl_tensor *vtl_op_gather(vtl_tensor *x, int dim, vtl_tensor *index);
/* scatter into a copy (or into x itself with _inplace) */
vtl_tensor *vtl_op_scatter(vtl_tensor *x, int dim, vtl_tensor *index, vtl_tensor *src, bool accumulate);
vtl_status vtl_op_scatter_(vtl_tensor *x, int dim, vtl_tensor *index, vtl_tensor *src, bool accumulate);
vtl_status vtl_op_index_copy_(vtl_tensor *x, int dim, vtl_tensor *index, vtl_tensor *src);
vtl_tensor *vtl_op_masked_select(vtl_tensor *x, vtl_tensor *mask);
vtl_status vtl_op_masked_scatter_(vtl_tensor *x, vtl_tensor *mask, vtl_tensor *src);
vtl_tensor *vtl_op_nonzero(vtl_tensor *x);
/* x[mask] / x[mask] = v with a bool mask over x's leading dims (PyTorch boolean indexing) */
vtl_tensor *vtl_op_mask_index(vtl_tensor *x, vtl_tensor *mask);
vtl_status vtl_op_mask_assign_(vtl_tensor *x, vtl_tensor *mask, vtl_tensor *src, double value); /* (n, ndim) i64, 0-based */

/* ---- joining ---- */
vtl_tensor *vtl_op_cat(vtl_tensor *const *xs, int n, int dim);
vtl_tensor *vtl_op_stack(vtl_tensor *const *xs, int n, int dim);
vtl_tensor *vtl_op_repeat(vtl_tensor *x, const int64_t *reps, int n);

#endif
