/*
 * A backend is a table of kernels for one device type. The op layer (runtime/ops.c) checks
 * shapes and dtypes, allocates outputs and calls these; an entry left NULL means the backend
 * does not support that op and the op layer reports it. Kernels receive tensors whose shapes
 * were already checked (inputs of elementwise ops broadcast to the output shape as views).
 */
#ifndef VTL_BACKEND_H
#define VTL_BACKEND_H
#include "core.h"
#include "nn_conv.h"
#include "nn_norm.h"

typedef enum {
  VTL_UN_COPY, VTL_UN_NEG, VTL_UN_ABS, VTL_UN_SIGN, VTL_UN_EXP, VTL_UN_LOG, VTL_UN_SQRT,
  VTL_UN_RSQRT, VTL_UN_SIGMOID, VTL_UN_TANH, VTL_UN_RELU, VTL_UN_FLOOR, VTL_UN_CEIL,
  VTL_UN_ROUND, VTL_UN_TRUNC, VTL_UN_SIN, VTL_UN_COS, VTL_UN_LOG1P, VTL_UN_EXPM1,
  VTL_UN_RECIPROCAL, VTL_UN_SQUARE, VTL_UN_LOGICAL_NOT, VTL_UN_CLAMP, VTL_UN_ISNAN,
  VTL_UN_ISINF, VTL_UN_LOG2, VTL_UN_ERF, VTL_UN_COUNT
} vtl_unary_op;

typedef enum {
  VTL_BIN_ADD, VTL_BIN_SUB, VTL_BIN_MUL, VTL_BIN_DIV, VTL_BIN_POW, VTL_BIN_MAXIMUM,
  VTL_BIN_MINIMUM, VTL_BIN_REMAINDER, VTL_BIN_FLOOR_DIVIDE, VTL_BIN_ATAN2,
  VTL_BIN_EQ, VTL_BIN_NE, VTL_BIN_LT, VTL_BIN_LE, VTL_BIN_GT, VTL_BIN_GE,
  VTL_BIN_LOGICAL_AND, VTL_BIN_LOGICAL_OR, VTL_BIN_LOGICAL_XOR, VTL_BIN_COUNT
} vtl_binary_op;

typedef enum {
  VTL_RED_SUM, VTL_RED_PROD, VTL_RED_MAX, VTL_RED_MIN, VTL_RED_ARGMAX, VTL_RED_ARGMIN,
  VTL_RED_MEAN, VTL_RED_VAR, VTL_RED_NORM, VTL_RED_LOGSUMEXP, VTL_RED_ANY, VTL_RED_ALL,
  VTL_RED_COUNT
} vtl_reduce_op;

/* In-place fused updates (optimizers): y = y + v*a (AXPY), y = y + (v*a)*b (ADDCMUL),
   y = y + (v*a)/b (ADDCDIV); a, b broadcast to y. Float dtypes; rounding as PyTorch's CPU
   kernels (AXPY and ADDCMUL end in one fused multiply-add). */
typedef enum { VTL_FUSED_AXPY, VTL_FUSED_ADDCMUL, VTL_FUSED_ADDCDIV } vtl_fused_op;

/* Which 2-D pooling a pooling kernel runs (kernels/cpu/pool.c has one function per kind). */
typedef enum { VTL_POOL_MAX, VTL_POOL_AVG, VTL_POOL_ADAPTIVE_AVG, VTL_POOL_ADAPTIVE_MAX } vtl_pool_kind;

/* A fused optimizer step over several parameters at once, rounded as the CPU's single-tensor
   kernels (kernels/cpu/optim.c) round. SGD: a = momentum buffer (or NULL), first: the buffer
   takes this step's direction as it is. Adam/AdamW: a, b, c = exp_avg, exp_avg_sq,
   max_exp_avg_sq (or NULL), step: the parameter's own step count (1-based). */
typedef enum { VTL_OPTIM_SGD, VTL_OPTIM_ADAM } vtl_optim_kind;
typedef struct {
  float *p;
  const float *g;
  float *a, *b, *c;
  int64_t n;
  int64_t step;
  bool first;
} vtl_optim_item;
typedef struct {
  vtl_optim_kind kind;
  double lr, weight_decay, momentum, dampening, beta1, beta2, eps;
  bool nesterov, maximize, decoupled;
} vtl_optim_step;

/* The nn kernels of a backend (runtime/nn_conv.c, runtime/nn_norm.c call them). Operands are
   contiguous tensors on the backend's device whose shapes and dtypes (f32 or f64, the input's)
   the op layer checked; statistics (mean, invstd, rstd) are f64. Pointer-valued gradients may
   be NULL (not wanted). The CPU entries wrap the kernels declared in nn_conv.h / nn_norm.h. */
typedef struct vtl_nn_backend {
  /* x (N,C,H,W), w (K,C/groups,R,S), b (K) or NULL, y (N,K,OH,OW) */
  vtl_status (*conv2d_forward)(const vtl_conv2d_shape *s, const vtl_tensor *x, const vtl_tensor *w,
                               const vtl_tensor *b, vtl_tensor *y);
  /* y = act(conv + b (+ y when add)) as vtl_op_conv2d_post; NULL: the op composes it from
     conv2d_forward and elementwise ops. A backend with this entry takes f16/bf16 operands
     here, and f32 weights with half activations when s->w_f32. */
  vtl_status (*conv2d_forward_post)(const vtl_conv2d_shape *s, const vtl_tensor *x, const vtl_tensor *w,
                                    const vtl_tensor *b, vtl_tensor *y, bool add, const vtl_conv2d_post *post);
  /* y (M,N) = act(x (M,K) wᵀ + b (+ y when add)), contiguous; NULL: composed from matmul.
     Half dtypes as conv2d_forward_post (w and b f32 when their dtype says so). */
  vtl_status (*linear_forward_post)(vtl_dtype dt, int64_t M, int64_t K, int64_t N, const vtl_tensor *x,
                                    const vtl_tensor *w, const vtl_tensor *b, vtl_tensor *y, bool add,
                                    const vtl_conv2d_post *post);
  vtl_status (*conv2d_backward_data)(const vtl_conv2d_shape *s, const vtl_tensor *gy, const vtl_tensor *w,
                                     vtl_tensor *gx);
  /* conv2d_forward and the two backward entries also take f16 and bf16 operands (otherwise the
     op layer computes half convolutions in f32) */
  bool conv_half;
  /* the conv2d entries take channels-last operands (s->x_cl, s->y_cl); otherwise the op layer
     hands them contiguous ones */
  bool conv_cl;
  /* gw and (when not NULL) gb, overwritten */
  vtl_status (*conv2d_backward_weight)(const vtl_conv2d_shape *s, const vtl_tensor *gy, const vtl_tensor *x,
                                       vtl_tensor *gw, vtl_tensor *gb);
  /* x (P,H,W) planes, y (P,OH,OW); idx (i64, 0-based positions in the plane) for the max
     kinds, or NULL */
  vtl_status (*pool2d_forward)(vtl_pool_kind kind, const vtl_pool2d_shape *s, const vtl_tensor *x,
                               vtl_tensor *y, vtl_tensor *idx);
  /* gx (P,H,W) overwritten; idx for the max kinds (a device backend skips positions outside
     the plane; the CPU op checks them first) */
  vtl_status (*pool2d_backward)(vtl_pool_kind kind, const vtl_pool2d_shape *s, const vtl_tensor *gy,
                                const vtl_tensor *idx, vtl_tensor *gx);
  /* x (N,C,S). training: mean, invstd (C) from the batch (biased variance), and running_mean /
     running_var (C, any stride, or NULL) updated in place with momentum and the unbiased
     variance; eval: mean, invstd from the running statistics. */
  /* the batch-norm entries also take f16/bf16 data (x, out, g, dx) with f32 weight, bias,
     running statistics and weight gradients; otherwise the op layer computes on f32 copies */
  bool bn_half;
  vtl_status (*batch_norm_stats)(const vtl_tensor *x, int64_t N, int64_t C, int64_t S, bool training,
                                 double momentum, double eps, vtl_tensor *running_mean, vtl_tensor *running_var,
                                 vtl_tensor *mean, vtl_tensor *invstd);
  /* out = x normalised; then, with add (x's dtype and layout, or NULL) and [cmin, cmax] (or
     -INFINITY, INFINITY), out = clamp(out + add, cmin, cmax) in the same pass */
  vtl_status (*batch_norm_forward)(const vtl_tensor *x, vtl_tensor *out, int64_t N, int64_t C, int64_t S,
                                   const vtl_tensor *mean, const vtl_tensor *invstd, const vtl_tensor *w,
                                   const vtl_tensor *b, const vtl_tensor *add, double cmin, double cmax);
  /* With y (the forward's output, clamped to [cmin, cmax] by its activation): g is first masked
     as the activation's backward does (0 where y <= cmin, or y >= cmax for a finite cmax), the
     masked gradient written to gm (x's dtype and layout) and used in place of g. */
  vtl_status (*batch_norm_backward)(const vtl_tensor *g, const vtl_tensor *x, int64_t N, int64_t C, int64_t S,
                                    const vtl_tensor *mean, const vtl_tensor *invstd, const vtl_tensor *w,
                                    bool training, vtl_tensor *dx, vtl_tensor *gw, vtl_tensor *gb,
                                    const vtl_tensor *y, double cmin, double cmax, vtl_tensor *gm);
  /* x (M,D); w, b (D) or NULL; mean, rstd (M) */
  vtl_status (*layer_norm_forward)(const vtl_tensor *x, vtl_tensor *out, int64_t M, int64_t D,
                                   const vtl_tensor *w, const vtl_tensor *b, double eps, vtl_tensor *mean,
                                   vtl_tensor *rstd);
  vtl_status (*layer_norm_backward)(const vtl_tensor *g, const vtl_tensor *x, int64_t M, int64_t D,
                                    const vtl_tensor *w, const vtl_tensor *mean, const vtl_tensor *rstd,
                                    vtl_tensor *dx, vtl_tensor *gw, vtl_tensor *gb);
  /* x (N,C,S) in G groups of C/G channels; w, b (C) or NULL; mean, rstd (N*G, f64). NULL entries:
     the device has no group-norm kernel */
  vtl_status (*group_norm_forward)(const vtl_tensor *x, vtl_tensor *out, int64_t N, int64_t C, int64_t S, int64_t G,
                                   const vtl_tensor *w, const vtl_tensor *b, double eps, vtl_tensor *mean,
                                   vtl_tensor *rstd);
  vtl_status (*group_norm_backward)(const vtl_tensor *g, const vtl_tensor *x, int64_t N, int64_t C, int64_t S,
                                    int64_t G, const vtl_tensor *w, const vtl_tensor *mean, const vtl_tensor *rstd,
                                    vtl_tensor *dx, vtl_tensor *gw, vtl_tensor *gb);
  /* params: the two of vtl_activation with defaults filled in; s as vtl_activation_uses_output.
     act_half: the two entries also take f16/bf16 data (computed in f32, rounded once), else
     the op layer computes on f32 copies */
  bool act_half;
  /* params: the two of vtl_activation with defaults filled in; s as vtl_activation_uses_output */
  vtl_status (*activation_forward)(vtl_activation act, const vtl_tensor *x, vtl_tensor *y, const double *params);
  vtl_status (*activation_backward)(vtl_activation act, const vtl_tensor *g, const vtl_tensor *s, vtl_tensor *dx,
                                    const double *params);
  /* scaled dot-product attention (vtl_op_attention): q (P,L,E), k (P,S,E), v (P,S,Ev), out
     (P,L,Ev), g (P,L,Ev), the gradients and lse (P,L; f32, f64 for f64 data) contiguous; f32,
     f64, f16 and bf16 data (the softmax in f32 for the half types). NULL entries: the device has
     no attention kernel. */
  vtl_status (*attention_forward)(const vtl_tensor *q, const vtl_tensor *k, const vtl_tensor *v, double scale,
                                  bool causal, vtl_tensor *out, vtl_tensor *lse);
  vtl_status (*attention_backward)(const vtl_tensor *g, const vtl_tensor *q, const vtl_tensor *k,
                                   const vtl_tensor *v, const vtl_tensor *out, const vtl_tensor *lse, double scale,
                                   bool causal, vtl_tensor *dq, vtl_tensor *dk, vtl_tensor *dv);
  /* x, y: (A,R,B) along R */
  vtl_status (*softmax_forward)(const vtl_tensor *x, vtl_tensor *y, int64_t A, int64_t R, int64_t B, bool logsm);
  vtl_status (*softmax_backward)(const vtl_tensor *g, const vtl_tensor *y, vtl_tensor *dx, int64_t A, int64_t R,
                                 int64_t B, bool logsm);
  /* x (N,C,S) logits; target (N,S) i64 1-based class indices or prob (N,C,S); w (C) or NULL.
     out: the (N,S) row losses for VTL_REDUCTION_NONE, else a 0-d tensor of the sum or the mean
     (divided by the summed weights of the non-ignored targets, or by N*S for probabilities).
     A device backend checks the targets itself (the CPU op checks them first). */
  vtl_status (*cross_entropy_forward)(const vtl_tensor *x, int64_t N, int64_t C, int64_t S, const vtl_tensor *target,
                                      const vtl_tensor *prob, const vtl_tensor *w, int64_t ignore_index,
                                      double smoothing, vtl_reduction red, vtl_tensor *out);
  /* gout: the (N,S) row gradients for VTL_REDUCTION_NONE, else one element */
  vtl_status (*cross_entropy_backward)(const vtl_tensor *x, int64_t N, int64_t C, int64_t S,
                                       const vtl_tensor *target, const vtl_tensor *prob, const vtl_tensor *w,
                                       int64_t ignore_index, double smoothing, vtl_reduction red,
                                       const vtl_tensor *gout, vtl_tensor *dx, vtl_tensor *dprob);
  /* the Philox stream of vtl_cpu_dropout_forward: the same (seed, offset) gives the same mask
     on every backend; mask bool */
  vtl_status (*dropout_forward)(const vtl_tensor *x, vtl_tensor *out, vtl_tensor *mask, double p, uint64_t seed,
                                uint64_t offset);
  vtl_status (*dropout_backward)(const vtl_tensor *g, const vtl_tensor *mask, vtl_tensor *dx, double p);
} vtl_nn_backend;

typedef struct vtl_backend {
  const char *name;
  void *(*alloc)(size_t nbytes, int device_index);
  void (*free)(void *p, size_t nbytes, int device_index);
  /* releases cached memory; returns the bytes released */
  size_t (*empty_cache)(int device_index);
  /* out = op(x); the kernel computes in `compute` dtype, converting on load and store. */
  vtl_status (*unary)(vtl_unary_op op, vtl_tensor *out, const vtl_tensor *x, vtl_dtype compute,
                      const double *params);
  /* out = op(a, b); a and b already broadcast to out's shape. */
  vtl_status (*binary)(vtl_binary_op op, vtl_tensor *out, const vtl_tensor *a, const vtl_tensor *b,
                       vtl_dtype compute);
  /* out = cond ? a : b (cond bool; a, b of the compute dtype or cast to it) */
  vtl_status (*where)(vtl_tensor *out, const vtl_tensor *cond, const vtl_tensor *a,
                      const vtl_tensor *b, vtl_dtype compute);
  /* out = a + w * (b - a), float */
  vtl_status (*lerp)(vtl_tensor *out, const vtl_tensor *a, const vtl_tensor *b, const vtl_tensor *w);
  vtl_status (*fill)(vtl_tensor *out, double value);
  /* x contiguous viewed as (A, R, B); out (A, B) contiguous of the result dtype; idx (A, B) i64
     for argmax/argmin/max/min with indices (may be NULL). param: p of norm, correction of var. */
  vtl_status (*reduce)(vtl_reduce_op op, vtl_tensor *out, vtl_tensor *idx, const vtl_tensor *x,
                       int64_t A, int64_t R, int64_t B, double param);
  vtl_status (*cumsum)(vtl_tensor *out, const vtl_tensor *x, int64_t A, int64_t R, int64_t B);
  /* C(b) = op(A(b)) @ op(B(b)) over broadcast batches; see kernels/cpu/matmul.c */
  vtl_status (*matmul)(vtl_tensor *out, const vtl_tensor *a, const vtl_tensor *b);
  /* out = x gathered along dim by 0-based index (index shape == out shape). */
  vtl_status (*gather)(vtl_tensor *out, const vtl_tensor *x, int dim, const vtl_tensor *index);
  /* out[index along dim] (=|+=) src; accumulate selects scatter_add. */
  vtl_status (*scatter)(vtl_tensor *out, int dim, const vtl_tensor *index, const vtl_tensor *src,
                        bool accumulate);
  /* rows of x (contiguous, (A, R)), sorted along R; indices 0-based. */
  vtl_status (*sort)(vtl_tensor *values, vtl_tensor *indices, const vtl_tensor *x, int64_t A,
                     int64_t R, bool descending);
  /* random fills: kind 0 uniform [lo,hi), 1 normal(mean=lo, std=hi), 2 integers [lo,hi) */
  vtl_status (*random)(vtl_tensor *out, int kind, double lo, double hi, uint64_t seed,
                       uint64_t offset);
  /* out (1-D i64, length = number of non-zeros) = positions of non-zero bytes of a
     contiguous bool tensor */
  vtl_status (*nonzero_flat)(vtl_tensor *out, const vtl_tensor *mask);
  vtl_status (*fused)(vtl_fused_op op, vtl_tensor *y, const vtl_tensor *a, const vtl_tensor *b, double value);
  /* One optimizer step over many f32 parameters of the device in few launches (NULL: the
     optimizers update one parameter at a time). */
  vtl_status (*optim_multi)(const vtl_optim_step *st, const vtl_optim_item *items, int n, int dev);
  /* dtypes (bit 1 << vtl_dtype) that matmul takes as they are; the op layer converts others
     (f16/bf16 to f32, integers to i64) before the call */
  unsigned matmul_dtypes;
  /* f16/bf16 matmul for operands the device's matmul does not take as they are: 1 done, 0 not
     handled here (the op layer converts as for matmul_dtypes), or NULL */
  int (*matmul_half)(vtl_tensor *out, const vtl_tensor *a, const vtl_tensor *b);
  /* the nn kernels, or NULL */
  const vtl_nn_backend *nn;

  /* Device management; NULL on the CPU. */
  /* devices of this type the process can use (0 when none) */
  int (*device_count)(void);
  /* n bytes between host memory and device memory of device dev, in either direction;
     returns once the bytes have arrived */
  vtl_status (*copy_host)(void *dst, const void *src, size_t n, int dev, bool to_device);
  /* Page-locked host memory (for asynchronous copies), from a cache of blocks: host_alloc
     returns NULL with the error set; host_free takes the block back once the copies queued
     from it have finished. */
  void *(*host_alloc)(size_t n);
  void (*host_free)(void *p, size_t n);
  /* n bytes from page-locked host memory (block: the host_alloc block holding src) to device
     memory of dev, queued on dev's compute stream; returns without waiting. Work queued after it
     on that stream sees the bytes. */
  vtl_status (*copy_host_async)(void *dst, const void *src, size_t n, int dev, void *block);
  /* waits for all work queued on device dev */
  vtl_status (*synchronize)(int dev);
  /* bytes held by tensors, bytes kept by the caching allocator, peak of the first, and the
     device allocations made so far (blocks the cache did not have) */
  void (*memory_stats)(int dev, size_t *allocated, size_t *cached, size_t *peak, size_t *mallocs);
  /* the peak of memory_stats starts again from the bytes allocated now */
  void (*reset_peak)(int dev);
} vtl_backend;

/* The backend of dev, or NULL with an error naming the device ("cuda: this build has no
   CUDA backend", "cuda: no CUDA device is available", "cuda:3: no such device ..."). */
const vtl_backend *vtl_backend_get(vtl_device dev);
/* The registered backend of a device type, or NULL (no error set). */
const vtl_backend *vtl_backend_of_type(vtl_device_type type);
void vtl_backend_register(vtl_device_type type, const vtl_backend *be);
extern const vtl_backend vtl_cpu_backend;
extern const vtl_nn_backend vtl_cpu_nn_backend; /* kernels/cpu/nn_backend.c */
/* The nn kernels of t's device, or NULL with an error "<op>: not supported on cuda:0 tensors
   yet; call :cpu()" (or the device's own error). */
const vtl_nn_backend *vtl_nn_backend_of(const char *op, const vtl_tensor *t);
/* Registers the CUDA backend (kernels/cuda/backend.cu; present in CUDA builds only). Safe to
   call more than once; without a device the backend reports "no CUDA device is available". */
void vtl_cuda_init(void);

#endif
