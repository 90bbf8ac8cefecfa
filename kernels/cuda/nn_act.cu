// CUDA activations (forward, backward) and dropout, and the CUDA backend's nn table.
// Activations compute in the data's own type, as the CPU kernels of kernels/cpu/activation.c
// do, with the same derivative conventions at the kinks; dropout draws its keep mask from the
// same Philox4x32-10 words as the CPU (element i: word i % 4 of block offset + i / 4), so a
// seeded dropout gives the same mask and the same values on both devices.
#include "nn.cuh"
#include "cpu/philox.h"

namespace {

#include "act_kernels.cuh"

vtl_status cu_activation_forward(vtl_activation act, const vtl_tensor *x, vtl_tensor *y, const double *p) {
  int64_t n = vtl_tensor_numel(x);
  if (n == 0) return VTL_OK;
  cudaStream_t st = vtl_cu_stream(vtl_cu_device(x));
  if (!st) return vtl_error_status();
  if (x->dtype == VTL_BF16 || x->dtype == VTL_F16) {
    if (x->dtype == VTL_BF16)
      act_forward_half<true><<<vtl_cu_blocks((n + HV - 1) / HV), 256, 0, st>>>(act, cu_ptr<uint16_t>(x), cu_ptr<uint16_t>(y), n,
                                                               (float)p[0], (float)p[1]);
    else
      act_forward_half<false><<<vtl_cu_blocks((n + HV - 1) / HV), 256, 0, st>>>(act, cu_ptr<uint16_t>(x), cu_ptr<uint16_t>(y), n,
                                                                (float)p[0], (float)p[1]);
    VTL_CU_LAUNCHED("activation");
    return VTL_OK;
  }
  if (x->dtype == VTL_F32)
    act_forward_kernel<float><<<vtl_cu_blocks(n), 256, 0, st>>>(act, cu_ptr<float>(x), cu_ptr<float>(y), n,
                                                                (float)p[0], (float)p[1]);
  else
    act_forward_kernel<double><<<vtl_cu_blocks(n), 256, 0, st>>>(act, cu_ptr<double>(x), cu_ptr<double>(y), n, p[0],
                                                                 p[1]);
  VTL_CU_LAUNCHED("activation");
  return VTL_OK;
}

vtl_status cu_activation_backward(vtl_activation act, const vtl_tensor *g, const vtl_tensor *s, vtl_tensor *dx,
                                  const double *p) {
  int64_t n = vtl_tensor_numel(s);
  if (n == 0) return VTL_OK;
  cudaStream_t st = vtl_cu_stream(vtl_cu_device(s));
  if (!st) return vtl_error_status();
  if (s->dtype == VTL_BF16 || s->dtype == VTL_F16) {
    if (s->dtype == VTL_BF16)
      act_backward_half<true><<<vtl_cu_blocks((n + HV - 1) / HV), 256, 0, st>>>(act, cu_ptr<uint16_t>(g), cu_ptr<uint16_t>(s),
                                                                cu_ptr<uint16_t>(dx), n, (float)p[0], (float)p[1]);
    else
      act_backward_half<false><<<vtl_cu_blocks((n + HV - 1) / HV), 256, 0, st>>>(act, cu_ptr<uint16_t>(g), cu_ptr<uint16_t>(s),
                                                                 cu_ptr<uint16_t>(dx), n, (float)p[0], (float)p[1]);
    VTL_CU_LAUNCHED("activation_backward");
    return VTL_OK;
  }
  if (s->dtype == VTL_F32)
    act_backward_kernel<float><<<vtl_cu_blocks(n), 256, 0, st>>>(act, cu_ptr<float>(g), cu_ptr<float>(s),
                                                                 cu_ptr<float>(dx), n, (float)p[0], (float)p[1]);
  else
    act_backward_kernel<double><<<vtl_cu_blocks(n), 256, 0, st>>>(act, cu_ptr<double>(g), cu_ptr<double>(s),
                                                                  cu_ptr<double>(dx), n, p[0], p[1]);
  VTL_CU_LAUNCHED("activation_backward");
  return VTL_OK;
}

// blocks of 4 elements: mask[i] = 24-bit word < thr; out = x * scale (in double, as the CPU)
template <class T>
__global__ void dropout_forward_kernel(const T *x, T *out, uint8_t *mask, int64_t n, uint32_t thr, double scale,
                                       uint64_t seed, uint64_t offset) {
  int64_t nb = (n + 3) / 4;
  for (int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b < nb; b += (int64_t)gridDim.x * blockDim.x) {
    uint32_t r[4];
    vtl_philox4x32(offset + (uint64_t)b, seed, r);
    for (int j = 0; j < 4 && 4 * b + j < n; j++) {
      int64_t i = 4 * b + j;
      uint8_t k = (r[j] >> 8) < thr;
      mask[i] = k;
      out[i] = k ? (T)((double)x[i] * scale) : (T)0;
    }
  }
}

template <class T> __global__ void dropout_backward_kernel(const T *g, const uint8_t *mask, T *dx, int64_t n, double scale) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dx[i] = mask[i] ? (T)((double)g[i] * scale) : (T)0;
}

vtl_status cu_dropout_forward(const vtl_tensor *x, vtl_tensor *out, vtl_tensor *mask, double p, uint64_t seed,
                              uint64_t offset) {
  int64_t n = vtl_tensor_numel(x);
  if (n == 0) return VTL_OK;
  cudaStream_t st = vtl_cu_stream(vtl_cu_device(x));
  if (!st) return vtl_error_status();
  double keep = 1 - p, scale = keep > 0 ? 1 / keep : 0;
  uint32_t thr = (uint32_t)ceil(keep * 16777216.0);
  unsigned blocks = vtl_cu_blocks((n + 3) / 4);
  if (x->dtype == VTL_F32)
    dropout_forward_kernel<float><<<blocks, 256, 0, st>>>(cu_ptr<float>(x), cu_ptr<float>(out), cu_ptr<uint8_t>(mask),
                                                          n, thr, scale, seed, offset);
  else
    dropout_forward_kernel<double><<<blocks, 256, 0, st>>>(cu_ptr<double>(x), cu_ptr<double>(out),
                                                           cu_ptr<uint8_t>(mask), n, thr, scale, seed, offset);
  VTL_CU_LAUNCHED("dropout");
  return VTL_OK;
}

vtl_status cu_dropout_backward(const vtl_tensor *g, const vtl_tensor *mask, vtl_tensor *dx, double p) {
  int64_t n = vtl_tensor_numel(g);
  if (n == 0) return VTL_OK;
  cudaStream_t st = vtl_cu_stream(vtl_cu_device(g));
  if (!st) return vtl_error_status();
  double keep = 1 - p, scale = keep > 0 ? 1 / keep : 0;
  if (g->dtype == VTL_F32)
    dropout_backward_kernel<float><<<vtl_cu_blocks(n), 256, 0, st>>>(cu_ptr<float>(g), cu_ptr<uint8_t>(mask),
                                                                     cu_ptr<float>(dx), n, scale);
  else
    dropout_backward_kernel<double><<<vtl_cu_blocks(n), 256, 0, st>>>(cu_ptr<double>(g), cu_ptr<uint8_t>(mask),
                                                                      cu_ptr<double>(dx), n, scale);
  VTL_CU_LAUNCHED("dropout_backward");
  return VTL_OK;
}

vtl_nn_backend make_table() {
  vtl_nn_backend t = {};
  t.conv2d_forward = vtl_cu_conv2d_forward;
  t.conv2d_backward_data = vtl_cu_conv2d_backward_data;
  t.conv2d_backward_weight = vtl_cu_conv2d_backward_weight;
  t.conv_half = true;
  t.conv_cl = true;
  t.act_half = true;
  t.bn_half = true;
  t.pool2d_forward = vtl_cu_pool2d_forward;
  t.pool2d_backward = vtl_cu_pool2d_backward;
  t.batch_norm_stats = vtl_cu_batch_norm_stats;
  t.batch_norm_forward = vtl_cu_batch_norm_forward;
  t.batch_norm_backward = vtl_cu_batch_norm_backward;
  t.layer_norm_forward = vtl_cu_layer_norm_forward;
  t.layer_norm_backward = vtl_cu_layer_norm_backward;
  t.group_norm_forward = vtl_cu_group_norm_forward;
  t.group_norm_backward = vtl_cu_group_norm_backward;
  t.activation_forward = cu_activation_forward;
  t.activation_backward = cu_activation_backward;
  t.softmax_forward = vtl_cu_softmax_forward;
  t.softmax_backward = vtl_cu_softmax_backward;
  t.attention_forward = vtl_cu_attention_forward;
  t.attention_backward = vtl_cu_attention_backward;
  t.cross_entropy_forward = vtl_cu_cross_entropy_forward;
  t.cross_entropy_backward = vtl_cu_cross_entropy_backward;
  t.dropout_forward = cu_dropout_forward;
  t.dropout_backward = cu_dropout_backward;
  return t;
}

} // namespace

const vtl_nn_backend vtl_cu_nn_backend = make_table();
