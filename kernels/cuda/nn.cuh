// Shared by the CUDA nn kernels (nn_conv.cu, nn_pool.cu, nn_norm.cu, nn_act.cu): the entries of
// the CUDA backend's nn table (runtime/backend.h says what each computes) and small helpers.
// Operands arrive contiguous on one device, f32 or f64; statistics are f64.
#ifndef VTL_CUDA_NN_CUH
#define VTL_CUDA_NN_CUH
#include "common.cuh"

extern const vtl_nn_backend vtl_cu_nn_backend; // nn_act.cu

vtl_status vtl_cu_conv2d_forward(const vtl_conv2d_shape *s, const vtl_tensor *x, const vtl_tensor *w,
                                 const vtl_tensor *b, vtl_tensor *y);
vtl_status vtl_cu_conv2d_backward_data(const vtl_conv2d_shape *s, const vtl_tensor *gy, const vtl_tensor *w,
                                       vtl_tensor *gx);
vtl_status vtl_cu_conv2d_backward_weight(const vtl_conv2d_shape *s, const vtl_tensor *gy, const vtl_tensor *x,
                                         vtl_tensor *gw, vtl_tensor *gb);
vtl_status vtl_cu_pool2d_forward(vtl_pool_kind kind, const vtl_pool2d_shape *s, const vtl_tensor *x, vtl_tensor *y,
                                 vtl_tensor *idx);
vtl_status vtl_cu_pool2d_backward(vtl_pool_kind kind, const vtl_pool2d_shape *s, const vtl_tensor *gy,
                                  const vtl_tensor *idx, vtl_tensor *gx);
vtl_status vtl_cu_batch_norm_stats(const vtl_tensor *x, int64_t N, int64_t C, int64_t S, bool training,
                                   double momentum, double eps, vtl_tensor *running_mean, vtl_tensor *running_var,
                                   vtl_tensor *mean, vtl_tensor *invstd);
vtl_status vtl_cu_batch_norm_forward(const vtl_tensor *x, vtl_tensor *out, int64_t N, int64_t C, int64_t S,
                                     const vtl_tensor *mean, const vtl_tensor *invstd, const vtl_tensor *w,
                                     const vtl_tensor *b, const vtl_tensor *add, double cmin, double cmax);
vtl_status vtl_cu_batch_norm_backward(const vtl_tensor *g, const vtl_tensor *x, int64_t N, int64_t C, int64_t S,
                                      const vtl_tensor *mean, const vtl_tensor *invstd, const vtl_tensor *w,
                                      bool training, vtl_tensor *dx, vtl_tensor *gw, vtl_tensor *gb, const vtl_tensor *y,
                                      double cmin, double cmax, vtl_tensor *gm);
vtl_status vtl_cu_layer_norm_forward(const vtl_tensor *x, vtl_tensor *out, int64_t M, int64_t D, const vtl_tensor *w,
                                     const vtl_tensor *b, double eps, vtl_tensor *mean, vtl_tensor *rstd);
vtl_status vtl_cu_layer_norm_backward(const vtl_tensor *g, const vtl_tensor *x, int64_t M, int64_t D,
                                      const vtl_tensor *w, const vtl_tensor *mean, const vtl_tensor *rstd,
                                      vtl_tensor *dx, vtl_tensor *gw, vtl_tensor *gb);
vtl_status vtl_cu_group_norm_forward(const vtl_tensor *x, vtl_tensor *out, int64_t N, int64_t C, int64_t S, int64_t G,
                                     const vtl_tensor *w, const vtl_tensor *b, double eps, vtl_tensor *mean,
                                     vtl_tensor *rstd);
vtl_status vtl_cu_group_norm_backward(const vtl_tensor *g, const vtl_tensor *x, int64_t N, int64_t C, int64_t S,
                                      int64_t G, const vtl_tensor *w, const vtl_tensor *mean, const vtl_tensor *rstd,
                                      vtl_tensor *dx, vtl_tensor *gw, vtl_tensor *gb);
vtl_status vtl_cu_softmax_forward(const vtl_tensor *x, vtl_tensor *y, int64_t A, int64_t R, int64_t B, bool logsm);
vtl_status vtl_cu_softmax_backward(const vtl_tensor *g, const vtl_tensor *y, vtl_tensor *dx, int64_t A, int64_t R,
                                   int64_t B, bool logsm);
vtl_status vtl_cu_attention_forward(const vtl_tensor *q, const vtl_tensor *k, const vtl_tensor *v, double scale,
                                    bool causal, vtl_tensor *out, vtl_tensor *lse);
vtl_status vtl_cu_attention_backward(const vtl_tensor *g, const vtl_tensor *q, const vtl_tensor *k,
                                     const vtl_tensor *v, const vtl_tensor *out, const vtl_tensor *lse, double scale,
                                     bool causal, vtl_tensor *dq, vtl_tensor *dk, vtl_tensor *dv);
// the fused (flash-style) half-precision attention of flash.cu, same contract: 1 when it ran, 0
// when the case is not its (dtype, head dim, alignment, shared memory), -1 on error
int vtl_cu_flash_forward(const vtl_tensor *q, const vtl_tensor *k, const vtl_tensor *v, double scale, bool causal,
                         vtl_tensor *out, vtl_tensor *lse);
int vtl_cu_flash_backward(const vtl_tensor *g, const vtl_tensor *q, const vtl_tensor *k, const vtl_tensor *v,
                          const vtl_tensor *out, const vtl_tensor *lse, double scale, bool causal, vtl_tensor *dq,
                          vtl_tensor *dk, vtl_tensor *dv);
vtl_status vtl_cu_cross_entropy_forward(const vtl_tensor *x, int64_t N, int64_t C, int64_t S,
                                        const vtl_tensor *target, const vtl_tensor *prob, const vtl_tensor *w,
                                        int64_t ignore_index, double smoothing, vtl_reduction red, vtl_tensor *out);
vtl_status vtl_cu_cross_entropy_backward(const vtl_tensor *x, int64_t N, int64_t C, int64_t S,
                                         const vtl_tensor *target, const vtl_tensor *prob, const vtl_tensor *w,
                                         int64_t ignore_index, double smoothing, vtl_reduction red,
                                         const vtl_tensor *gout, vtl_tensor *dx, vtl_tensor *dprob);

// typed data pointer of an optional tensor
template <class T> static inline T *cu_ptr(const vtl_tensor *t) { return t ? (T *)vtl_tensor_data(t) : nullptr; }


#endif
