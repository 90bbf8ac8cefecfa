/*
 * Differentiable forms of the tensor ops: each runs the plain op and, when an input requires
 * grad in grad mode, records its backward (runtime/autograd.h). Same arguments and results
 * as the vtl_op_* functions of ops.h.
 */
#ifndef VTL_GRAD_OPS_H
#define VTL_GRAD_OPS_H
#include "ops.h"
#include "autograd.h"

vtl_tensor *vtl_fn_unary(vtl_unary_op op, vtl_tensor *x, const double *params);
vtl_tensor *vtl_fn_binary(vtl_binary_op op, vtl_tensor *a, vtl_tensor *b);
vtl_tensor *vtl_fn_binary_scalar(vtl_binary_op op, vtl_tensor *a, double s, bool s_is_float, bool scalar_first);
vtl_tensor *vtl_fn_where(vtl_tensor *cond, vtl_tensor *a, vtl_tensor *b);
vtl_tensor *vtl_fn_lerp(vtl_tensor *a, vtl_tensor *b, vtl_tensor *w);
vtl_tensor *vtl_fn_masked_fill(vtl_tensor *x, vtl_tensor *mask, double value);
vtl_tensor *vtl_fn_to_dtype(vtl_tensor *x, vtl_dtype dt);
/* a copy on device dev (async: from pinned memory, ordered on the device's stream) whose
   gradient is copied back to x's device */
vtl_tensor *vtl_fn_to_device(vtl_tensor *x, vtl_device dev, bool async);
vtl_tensor *vtl_fn_clone(vtl_tensor *x);
vtl_tensor *vtl_fn_contiguous(vtl_tensor *x);
vtl_tensor *vtl_fn_contiguous_channels_last(vtl_tensor *x);

vtl_tensor *vtl_fn_view(vtl_tensor *x, const int64_t *shape, int ndim);
vtl_tensor *vtl_fn_reshape(vtl_tensor *x, const int64_t *shape, int ndim);
vtl_tensor *vtl_fn_permute(vtl_tensor *x, const int *perm, int n);
vtl_tensor *vtl_fn_transpose(vtl_tensor *x, int d0, int d1);
vtl_tensor *vtl_fn_slice(vtl_tensor *x, int dim, int64_t start, int64_t stop, int64_t step);
vtl_tensor *vtl_fn_narrow(vtl_tensor *x, int dim, int64_t start, int64_t length);
vtl_tensor *vtl_fn_select(vtl_tensor *x, int dim, int64_t index);
vtl_tensor *vtl_fn_squeeze(vtl_tensor *x, int dim);
vtl_tensor *vtl_fn_unsqueeze(vtl_tensor *x, int dim);
vtl_tensor *vtl_fn_expand(vtl_tensor *x, const int64_t *shape, int ndim);
vtl_tensor *vtl_fn_flatten(vtl_tensor *x, int start, int end);
vtl_tensor *vtl_fn_repeat(vtl_tensor *x, const int64_t *reps, int n);

vtl_tensor *vtl_fn_reduce(vtl_reduce_op op, vtl_tensor *x, uint32_t dims, bool keepdim, double param,
                          vtl_tensor **indices);
vtl_tensor *vtl_fn_cumsum(vtl_tensor *x, int dim);
vtl_status vtl_fn_topk(vtl_tensor *x, int64_t k, int dim, bool largest, vtl_tensor **values, vtl_tensor **indices);

vtl_tensor *vtl_fn_matmul(vtl_tensor *a, vtl_tensor *b);

vtl_tensor *vtl_fn_index_select(vtl_tensor *x, int dim, vtl_tensor *index);
vtl_tensor *vtl_fn_gather(vtl_tensor *x, int dim, vtl_tensor *index);
vtl_tensor *vtl_fn_mask_index(vtl_tensor *x, vtl_tensor *mask);
vtl_tensor *vtl_fn_masked_select(vtl_tensor *x, vtl_tensor *mask);
vtl_tensor *vtl_fn_cat(vtl_tensor *const *xs, int n, int dim);
vtl_tensor *vtl_fn_stack(vtl_tensor *const *xs, int n, int dim);

#endif
