/*
 * Convolution and pooling over (N,C,H,W) tensors, with PyTorch's semantics.
 *
 * Three layers, as for every differentiable op:
 *   - vtl_op_*: argument checks, output allocation and the call into the CPU kernels; forward
 *     functions return a new tensor, backward functions compute the gradients asked for
 *     (pointer outputs, NULL = not wanted);
 *   - vtl_fn_*: the forward op plus an autograd node when an input requires grad;
 *   - kernels (kernels/cpu/conv.c, kernels/cpu/pool.c): plain functions over contiguous
 *     buffers described by the shape structs below, free of Lua and of autograd.
 * Max-pooling indices are i64, 0-based flat positions in each input (H,W) plane at this
 * level; the Lua binding adds one.
 */
#ifndef VTL_NN_CONV_H
#define VTL_NN_CONV_H
#include "core.h"
#include "nn_norm.h"

/* ---- parameters ---- */

/* Padding may differ between the start and the end of a dim (padding="same" with an even
   effective kernel puts the extra row/column at the bottom/right, as PyTorch does). */
typedef struct {
  int64_t stride[2];   /* (h, w), >= 1 */
  int64_t pad[2];      /* top, left; >= 0 */
  int64_t pad_end[2];  /* bottom, right; >= 0 */
  int64_t dilation[2]; /* >= 1 */
  int64_t groups;      /* >= 1, divides C and K */
  bool channels_last;  /* the output laid out channels-last, as it is when x is (where the
                          device's kernels take that layout; else contiguous) */
} vtl_conv2d_params;

/* Symmetric padding, stride, dilation and groups in one call. */
vtl_conv2d_params vtl_conv2d_params_make(int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                                         int64_t dil_h, int64_t dil_w, int64_t groups);
/* padding="same" (PyTorch: stride must be 1; total padding dilation*(k-1), the odd one at the
   end). Returns VTL_OK or an error naming `op`. */
vtl_status vtl_conv2d_params_same(vtl_conv2d_params *p, int64_t R, int64_t S, const char *op);

typedef struct {
  int64_t kernel[2];
  int64_t stride[2];
  int64_t pad[2];      /* symmetric; at most half the kernel (PyTorch's rule) */
  int64_t dilation[2]; /* max_pool2d only */
  bool ceil_mode;
  bool count_include_pad; /* avg_pool2d */
  int64_t divisor_override; /* avg_pool2d; 0 = none */
} vtl_pool2d_params;

/* ---- shapes handed to the kernels ---- */

/* x: (N,C,H,W), w: (K,C/groups,R,S), b: (K), y: (N,K,OH,OW), all contiguous, except that
   x_cl / y_cl say x (and gx) / y (and gy) are channels-last: their memory is (N,H,W,C) /
   (N,OH,OW,K). The backward passes get both or neither. w_f32: x and y are of a half dtype while w and b are
   f32 (an autocast inference layer: the CPU kernel converts the weights as it packs them). */
typedef struct {
  vtl_dtype dtype;
  int64_t N, C, H, W, K, R, S, OH, OW;
  int64_t stride[2], pad[2], pad_end[2], dilation[2], groups;
  bool x_cl, y_cl;
  bool w_f32;
} vtl_conv2d_shape;

/* x: (P,H,W) planes (P = N*C), y: (P,OH,OW), contiguous. */
typedef struct {
  vtl_dtype dtype;
  int64_t P, H, W, OH, OW;
  int64_t kernel[2], stride[2], pad[2], dilation[2];
  bool count_include_pad;
  int64_t divisor_override;
} vtl_pool2d_shape;

/* What an inference convolution does after the product, in the same pass (oneDNN post-ops
   on the CPU): add a tensor of the output's shape (a residual), then apply an activation. */
typedef struct vtl_conv2d_pack vtl_conv2d_pack;
typedef struct {
  vtl_tensor *add;          /* (N,K,OH,OW) or NULL */
  bool has_act;
  vtl_activation act;
  double act_params[2];     /* as vtl_op_activation's */
  vtl_conv2d_pack *pack;    /* or NULL: see vtl_conv2d_pack_new */
} vtl_conv2d_post;

/* A convolution's weights kept in the CPU kernel's preferred layout between calls, so that an
   inference loop reorders them once instead of on every call. The pack holds a reference to
   the weights it was made from and is remade when they change (another storage, or an
   in-place write). Used by one thread at a time. */
vtl_conv2d_pack *vtl_conv2d_pack_new(void);
void vtl_conv2d_pack_free(vtl_conv2d_pack *pk);
/* bytes of packed weights held (0 when none) */
size_t vtl_conv2d_pack_bytes(const vtl_conv2d_pack *pk);

/* ---- op level ---- */

/* y = conv2d(x, w) + b. x (N,C,H,W), w (K,C/groups,R,S), b (K) or NULL; f32 or f64. */
vtl_tensor *vtl_op_conv2d(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_params *p);
/* act(conv2d(x, w) + b + post->add), for inference: no autograd (vtl_fn_conv2d_post composes
   differentiable ops when a gradient is needed). */
vtl_tensor *vtl_op_conv2d_post(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_params *p,
                               const vtl_conv2d_post *post);
/* act(x wᵀ + b + post->add) over the last dim of x (any leading dims): x (*,K), w (N,K), b (N)
   or NULL, add (*,N); for inference (vtl_fn_linear_post composes differentiable ops when a
   gradient is needed). */
vtl_tensor *vtl_op_linear_post(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_post *post);
/* Multi-head self-attention of an inference layer from its packed projection qkv (B,N,3*C),
   C = heads * D: q, k, v per token and head as timm's (B,N,3,heads,D) view; returns (B,N,C) =
   softmax(scale q kᵀ) v per sample and head, heads side by side. CPU, f32 or f64, no autograd. */
/* Scaled dot-product attention: q (P,L,E), k (P,S,E), v (P,S,Ev) -> (P,L,Ev) =
   softmax(scale q kᵀ) v over the keys (P = batch * heads); causal: query i sees keys 1..i.
   save_lse (optional): the (P,L) log-sum-exp of the scaled scores (f32; f64 for f64 data), which
   the backward pass takes to recompute the probabilities. */
vtl_tensor *vtl_op_attention(vtl_tensor *q, vtl_tensor *k, vtl_tensor *v, double scale, bool causal,
                             vtl_tensor **save_lse);
/* dq, dk, dv from the output gradient g and the forward's out and lse */
vtl_status vtl_op_attention_backward(vtl_tensor *g, vtl_tensor *q, vtl_tensor *k, vtl_tensor *v, vtl_tensor *out,
                                     vtl_tensor *lse, double scale, bool causal, vtl_tensor **dq, vtl_tensor **dk,
                                     vtl_tensor **dv);
/* with autograd; in an autocast region q, k and v are cast to its dtype, as matmul's operands */
vtl_tensor *vtl_fn_attention(vtl_tensor *q, vtl_tensor *k, vtl_tensor *v, double scale, bool causal);
vtl_tensor *vtl_op_attention_qkv(vtl_tensor *qkv, int64_t heads, double scale);
/* The same, differentiable and on any device with an attention kernel (the CPU's fused kernel
   when no gradient is needed); in an autocast region a f32 qkv is cast first. */
vtl_tensor *vtl_fn_attention_qkv(vtl_tensor *qkv, int64_t heads, double scale);
/* Gradients of conv2d given gy (N,K,OH,OW): gx (shape of x), gw (shape of w), gb (K). */
vtl_status vtl_op_conv2d_backward(vtl_tensor *gy, vtl_tensor *x, vtl_tensor *w, const vtl_conv2d_params *p,
                                  vtl_tensor **gx, vtl_tensor **gw, vtl_tensor **gb);

/* x (N,C,H,W) or (C,H,W). indices (optional out): i64 0-based flat positions in each plane. */
vtl_tensor *vtl_op_max_pool2d(vtl_tensor *x, const vtl_pool2d_params *p, vtl_tensor **indices);
/* gx of shape in_shape (3-D or 4-D): gy scattered (summed) at indices. p: the forward's
   parameters, or NULL when unknown (a device backend then looks at every output for each
   input element instead of only those whose window reaches it). */
vtl_tensor *vtl_op_max_pool2d_backward(vtl_tensor *gy, vtl_tensor *indices, const int64_t *in_shape, int in_ndim,
                                       const vtl_pool2d_params *p);
vtl_tensor *vtl_op_avg_pool2d(vtl_tensor *x, const vtl_pool2d_params *p);
vtl_tensor *vtl_op_avg_pool2d_backward(vtl_tensor *gy, const int64_t *in_shape, int in_ndim,
                                       const vtl_pool2d_params *p);
/* output size (oh, ow) >= 1 */
vtl_tensor *vtl_op_adaptive_avg_pool2d(vtl_tensor *x, int64_t oh, int64_t ow);
vtl_tensor *vtl_op_adaptive_avg_pool2d_backward(vtl_tensor *gy, const int64_t *in_shape, int in_ndim);
vtl_tensor *vtl_op_adaptive_max_pool2d(vtl_tensor *x, int64_t oh, int64_t ow, vtl_tensor **indices);
/* same scatter as max_pool2d's backward */
vtl_tensor *vtl_op_adaptive_max_pool2d_backward(vtl_tensor *gy, vtl_tensor *indices, const int64_t *in_shape,
                                                int in_ndim);

/* ---- differentiable ---- */
vtl_tensor *vtl_fn_conv2d(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_params *p);
/* vtl_op_conv2d_post, or the same result from differentiable ops when an input needs a
   gradient */
vtl_tensor *vtl_fn_conv2d_post(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_params *p,
                               const vtl_conv2d_post *post);
vtl_tensor *vtl_fn_linear_post(vtl_tensor *x, vtl_tensor *w, vtl_tensor *b, const vtl_conv2d_post *post);
/* indices (optional out) as in vtl_op_max_pool2d */
vtl_tensor *vtl_fn_max_pool2d(vtl_tensor *x, const vtl_pool2d_params *p, vtl_tensor **indices);
vtl_tensor *vtl_fn_avg_pool2d(vtl_tensor *x, const vtl_pool2d_params *p);
vtl_tensor *vtl_fn_adaptive_avg_pool2d(vtl_tensor *x, int64_t oh, int64_t ow);
vtl_tensor *vtl_fn_adaptive_max_pool2d(vtl_tensor *x, int64_t oh, int64_t ow, vtl_tensor **indices);

/* ---- CPU kernels (contiguous buffers of s->dtype; f32 and f64, and f16/bf16 for the forward_post ones) ---- */

/* y = conv(x, w) + b (b may be NULL) */
vtl_status vtl_cpu_conv2d_forward(const vtl_conv2d_shape *s, const void *x, const void *w, const void *b, void *y);
/* y = act(conv(x, w) + b + y) when add, else act(conv(x, w) + b); act as post (post->add is
   not read: add says whether y holds the tensor to add). wstorage: the storage of w, for
   post->pack. */
vtl_status vtl_cpu_conv2d_forward_post(const vtl_conv2d_shape *s, const void *x, const void *w, const void *b,
                                       void *y, bool add, const vtl_conv2d_post *post, vtl_storage *wstorage);
/* y (M,N) = act(x (M,K) wᵀ + b + y) when add, else act(x wᵀ + b); w (N,K), b (N) or NULL;
   post and wstorage as for vtl_cpu_conv2d_forward_post (the same packs serve both). dt may be a
   half type (oneDNN, or the f32 path on converted copies); w_f32: w and b are f32 then. */
vtl_status vtl_cpu_linear_forward_post(vtl_dtype dt, int64_t M, int64_t K, int64_t N, const void *x, const void *w,
                                       const void *b, void *y, bool add, const vtl_conv2d_post *post,
                                       vtl_storage *wstorage, bool w_f32);
/* scaled dot-product attention over P (sample, head) pairs, all contiguous: q (P,L,E), k (P,S,E),
   v (P,S,Ev), out (P,L,Ev) = softmax(scale q kᵀ) v, lse (P,L) or NULL: the log-sum-exp of each
   row of scaled scores (f32 for f16/bf16 data); causal: query i sees keys 1..i. f32 and f64;
   bf16 on oneDNN's bf16 products (probabilities and score gradients rounded to bf16 for them,
   as on the GPU); f16 (and bf16 without those kernels) on f32 copies, rounded once. */
vtl_status vtl_cpu_attention_forward(vtl_dtype dt, int64_t P, int64_t L, int64_t S, int64_t E, int64_t Ev,
                                     double scale, bool causal, const void *q, const void *k, const void *v, void *out,
                                     void *lse);
/* dq, dk, dv (shapes of q, k, v; overwritten) from g (P,L,Ev) and the forward's out and lse; the
   scores are recomputed */
vtl_status vtl_cpu_attention_backward(vtl_dtype dt, int64_t P, int64_t L, int64_t S, int64_t E, int64_t Ev,
                                      double scale, bool causal, const void *g, const void *q, const void *k,
                                      const void *v, const void *out, const void *lse, void *dq, void *dk, void *dv);
/* out (B,N,H,D) from qkv (B,N,3,H,D), both contiguous (vtl_op_attention_qkv) */
vtl_status vtl_cpu_attention_qkv(vtl_dtype dt, int64_t B, int64_t N, int64_t H, int64_t D, double scale,
                                 const void *qkv, void *out);
/* the same from a bf16 qkv into a bf16 out, by oneDNN bf16 matmuls (the scores and softmax in
   f32, the probabilities rounded to bf16 for the second product): 1 done, 0 not available here
   (compute in f32 instead), -1 error set */
int vtl_cpu_attention_qkv_bf16(int64_t B, int64_t N, int64_t H, int64_t D, double scale, const void *qkv, void *out);
/* out (batch..., M, N) contiguous = a b for bf16 operands, expanded to out's batch shape, read
   through their strides by a oneDNN matmul (f32 accumulation; bf16 instructions, not oneDNN's
   reference kernels): 1 done, 0 not handled (the caller computes in f32) */
int vtl_cpu_matmul_half(vtl_tensor *out, const vtl_tensor *a, const vtl_tensor *b);
/* c (B, M, N) contiguous, of cdt (bf16 or f32) = a b for bf16 a (B, M, K) and b (B, K, N) read
   through element strides {batch, row, column} (batch stride 0: one matrix for the whole batch),
   f32 accumulation: 1 done, 0 no oneDNN bf16 kernel here */
int vtl_cpu_gemm_bf16(int64_t B, int64_t M, int64_t N, int64_t K, const void *a, const int64_t sa[3], const void *b,
                      const int64_t sb[3], void *c, vtl_dtype cdt);
/* gx = conv2d's input gradient; overwrites gx */
vtl_status vtl_cpu_conv2d_backward_data(const vtl_conv2d_shape *s, const void *gy, const void *w, void *gx);
/* gw (and gb when not NULL) = weight and bias gradients; overwrite them */
vtl_status vtl_cpu_conv2d_backward_weight(const vtl_conv2d_shape *s, const void *gy, const void *x, void *gw,
                                          void *gb);
/* Drops the cached oneDNN primitives (they are rebuilt on demand). */
void vtl_cpu_conv2d_clear_cache(void);

/* Channels-last inference pooling: x (N,H,W,C), y (N,OH,OW,C) with s->P = N; no indices. The
   average is PyTorch's (the sum, then one division per window). */
/* channels-last (N,H,W,C) forms, s->P = N; idx (optional) as the planar kernel's, laid out as y */
void vtl_cpu_max_pool2d_forward_cl(const vtl_pool2d_shape *s, int64_t C, const void *x, void *y, int64_t *idx);
void vtl_cpu_max_pool2d_backward_cl(const vtl_pool2d_shape *s, int64_t C, const void *gy, const int64_t *idx,
                                    void *gx);
void vtl_cpu_adaptive_avg_pool2d_forward_cl(const vtl_pool2d_shape *s, int64_t C, const void *x, void *y);
/* idx (optional, i64): argmax position in the plane; NaN propagates like PyTorch */
void vtl_cpu_max_pool2d_forward(const vtl_pool2d_shape *s, const void *x, void *y, int64_t *idx);
/* gx (P,H,W) zeroed then gy added at idx (covers adaptive max pooling too) */
void vtl_cpu_max_pool2d_backward(const vtl_pool2d_shape *s, const void *gy, const int64_t *idx, void *gx);
void vtl_cpu_avg_pool2d_forward(const vtl_pool2d_shape *s, const void *x, void *y);
void vtl_cpu_avg_pool2d_backward(const vtl_pool2d_shape *s, const void *gy, void *gx);
/* adaptive: window of output i is [floor(i*H/OH), ceil((i+1)*H/OH)) */
void vtl_cpu_adaptive_avg_pool2d_forward(const vtl_pool2d_shape *s, const void *x, void *y);
void vtl_cpu_adaptive_avg_pool2d_backward(const vtl_pool2d_shape *s, const void *gy, void *gx);
void vtl_cpu_adaptive_max_pool2d_forward(const vtl_pool2d_shape *s, const void *x, void *y, int64_t *idx);

#endif
