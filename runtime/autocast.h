/*
 * Mixed-precision regions (vtl.autocast). Inside a region the matrix ops (conv2d, linear,
 * matmul) cast their floating inputs to the region's reduced dtype (bf16 or f16) and return
 * that dtype; the numerically sensitive ops (softmax, norms, losses) cast half inputs up to
 * f32 and return f32. Weights stay f32 (their gradients arrive in f32 through the cast). A
 * leaf that requires grad (a parameter) is cast once per outermost region and per version, as
 * PyTorch's autocast caches it. The state is per thread; the backward pass runs outside it.
 */
#ifndef VTL_AUTOCAST_H
#define VTL_AUTOCAST_H
#include "core.h"

/* the region's reduced dtype, or VTL_F32 outside any region (or in a disabled one) */
vtl_dtype vtl_autocast_dtype(void);
/* Enters a region of dtype VTL_BF16 or VTL_F16, or VTL_F32 for a region with autocast off
   (nested in an enabled one). Returns the state vtl_autocast_leave restores. */
int vtl_autocast_enter(vtl_dtype dt);
/* Leaves the region; leaving the outermost one drops the cached weight casts. */
void vtl_autocast_leave(int saved);

/* For a reduced-precision op: x cast to the region's dtype (differentiably) when x is f32, f16
   or bf16 of another dtype; otherwise x itself. A new reference (NULL with the error set). */
vtl_tensor *vtl_autocast_low(vtl_tensor *x);
/* For an op that runs in f32: a half x cast to f32 when a region is active; otherwise x
   itself. A new reference (NULL with the error set). NULL x gives NULL without error. */
vtl_tensor *vtl_autocast_f32(vtl_tensor *x);
/* whether vtl_autocast_low would cast x */
bool vtl_autocast_casts(const vtl_tensor *x);
/* cached weight casts held (for tests) */
int vtl_autocast_cache_size(void);

/* Whether f32 matrix products on a GPU may use TF32 tensor cores (cuBLAS); off by default, as
   PyTorch's torch.backends.cuda.matmul.allow_tf32. Process-wide. */
bool vtl_matmul_allow_tf32(void);
void vtl_set_matmul_allow_tf32(bool on);

/* cuDNN's switches, as torch.backends.cudnn's: benchmark (time the candidate engines once per
   shape and keep the fastest), deterministic (only engines whose results do not vary from run
   to run), allow_tf32 (f32 convolutions may use TF32 tensor cores, and the engines that round
   or transform their inputs). Process-wide; PyTorch's defaults (benchmark and deterministic off,
   allow_tf32 on) unless VTL_CUDNN_BENCHMARK, VTL_CUDNN_DETERMINISTIC or VTL_CUDNN_TF32 says
   otherwise ("0" off, any other value on) before the first vtl_set_cudnn_flags. */
typedef struct {
  bool benchmark, deterministic, allow_tf32;
} vtl_cudnn_flags;
vtl_cudnn_flags vtl_get_cudnn_flags(void);
void vtl_set_cudnn_flags(vtl_cudnn_flags f);

/* Whether f16/bf16 attention on a GPU runs the fused (flash-style) kernels where they take the
   case (head dims 32, 64, 128); off by default until measured against the cuBLAS path, or on
   with VTL_FLASH_ATTENTION=1. Process-wide. */
bool vtl_attention_flash(void);
void vtl_set_attention_flash(bool on);
#endif
