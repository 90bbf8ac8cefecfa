// CUDA conv2d through cuDNN: forward, backward-data and backward-weight (+ bias), NCHW or
// channels-last (NHWC activations; the (K,C,R,S) weights relaid out as NHWC filters around each
// call, so parameters keep their layout), f32 and f64 (and f16/bf16 on tensor cores), groups
// (depthwise included) and dilation. cuDNN's switches (vtl.cuda.cudnn, autocast.h) are
// torch.backends.cudnn's: f32 convolutions run in FMA math (no TF32) unless allow_tf32, so
// results stay close to the CPU's; deterministic keeps to engines whose results do not vary;
// benchmark times the candidates once per shape instead of taking the heuristics' first. The
// engine or algorithm of each (direction, shape, switches) is chosen once and cached per device.
// Workspaces come from vtl's caching allocator. Asymmetric padding (padding="same" with an even
// kernel) runs on a zero-padded copy of the input, since cuDNN pads both sides alike.
#include <cudnn.h>
#include <limits.h>
#include <stdlib.h>
#include <stdio.h>
#include <map>
#include <mutex>
#include <vector>
#include "nn.cuh"
extern "C" {
#include "autocast.h"
}

#define MAX_DEVICES 64

namespace {

enum conv_dir { FWD = 0, BWD_DATA = 1, BWD_FILTER = 2 };

struct conv_key {
  int64_t v[18];
  bool operator<(const conv_key &o) const {
    for (int i = 0; i < 18; i++)
      if (v[i] != o.v[i]) return v[i] < o.v[i];
    return false;
  }
};

struct conv_algo { int algo; size_t workspace; int math, rank; };

// A cuDNN graph-API execution plan of one convolution (shape, dtype, layout, direction), with
// the engine configuration it was made from; ok false: none could be made (the legacy API then
// serves the shape).
struct graph_plan {
  cudnnBackendDescriptor_t plan = nullptr, cfg = nullptr;
  int64_t workspace = 0;
  int rank = -1; // the engine's place in the heuristics' list
  bool ok = false;
};

struct cudnn_state {
  std::mutex mu;
  cudnnHandle_t h = nullptr;
  std::map<conv_key, conv_algo> cache;
  std::map<conv_key, graph_plan> plans;
};
cudnn_state states[MAX_DEVICES];

vtl_status dnn_error(cudnnStatus_t s, const char *what) {
  return vtl_error_set(VTL_ERR_DEVICE, "conv2d: cuDNN %s failed: %s", what, cudnnGetErrorString(s));
}
#define DNN(call, what) do { cudnnStatus_t s_ = (call); if (s_ != CUDNN_STATUS_SUCCESS) return dnn_error(s_, what); } while (0)

// a switch from the environment: unset or empty gives dflt, "0..." off, anything else on
bool env_on(const char *name, bool dflt) {
  const char *e = getenv(name);
  return !e || !e[0] ? dflt : e[0] != '0';
}

// VTL_CUDNN_LOG=1: each algorithm choice (once per shape and direction) goes to stderr
bool log_mode() {
  static const bool on = env_on("VTL_CUDNN_LOG", false);
  return on;
}

// the cuDNN handle of dev, bound to its compute stream; NULL with the error set
cudnnHandle_t handle_of(int dev, cudaStream_t st) {
  if (dev < 0 || dev >= MAX_DEVICES) { vtl_error_set(VTL_ERR_DEVICE, "cuda:%d: no such device", dev); return nullptr; }
  cudnn_state &s = states[dev];
  std::lock_guard<std::mutex> g(s.mu);
  if (!s.h) {
    cudnnStatus_t e = cudnnCreate(&s.h);
    if (e != CUDNN_STATUS_SUCCESS) { s.h = nullptr; dnn_error(e, "cudnnCreate"); return nullptr; }
  }
  cudnnStatus_t e = cudnnSetStream(s.h, st);
  if (e != CUDNN_STATUS_SUCCESS) { dnn_error(e, "cudnnSetStream"); return nullptr; }
  return s.h;
}

// the descriptors of one convolution (input possibly padded beforehand)
struct conv_desc {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, b = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t c = nullptr;
  ~conv_desc() {
    if (x) cudnnDestroyTensorDescriptor(x);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (b) cudnnDestroyTensorDescriptor(b);
    if (w) cudnnDestroyFilterDescriptor(w);
    if (c) cudnnDestroyConvolutionDescriptor(c);
  }
};

// s with the padded input's size when the padding is asymmetric: H, W grown, pads zero
struct conv_geom {
  vtl_conv2d_shape s;
  bool padded;
  int64_t Hp, Wp;
};

conv_geom geom_of(const vtl_conv2d_shape *s) {
  conv_geom g;
  g.s = *s;
  g.padded = s->pad[0] != s->pad_end[0] || s->pad[1] != s->pad_end[1];
  g.Hp = s->H + (g.padded ? s->pad[0] + s->pad_end[0] : 0);
  g.Wp = s->W + (g.padded ? s->pad[1] + s->pad_end[1] : 0);
  return g;
}

// cuDNN's name of a float dtype
cudnnDataType_t dnn_type(vtl_dtype dt) {
  return dt == VTL_F32 ? CUDNN_DATA_FLOAT : dt == VTL_F64 ? CUDNN_DATA_DOUBLE : dt == VTL_F16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16;
}

vtl_status make_desc(const conv_geom &g, conv_desc &d) {
  const vtl_conv2d_shape &s = g.s;
  int64_t dims[] = {s.N, s.C, g.Hp, g.Wp, s.K, s.R, s.S, s.OH, s.OW, s.stride[0], s.stride[1], s.pad[0], s.pad[1],
                    s.dilation[0], s.dilation[1], s.groups, s.N * s.C * g.Hp * g.Wp, s.N * s.K * s.OH * s.OW,
                    s.K * (s.C / s.groups) * s.R * s.S};
  for (int64_t v : dims)
    if (v > INT_MAX)
      return vtl_error_set(VTL_ERR_ARG, "conv2d: sizes beyond %d elements are not supported on cuda (cuDNN's limit)",
                           INT_MAX);
  // half data (autocast) is computed in f32 on tensor cores; f32 and f64 exactly
  bool half = s.dtype == VTL_F16 || s.dtype == VTL_BF16;
  bool tf32 = s.dtype == VTL_F32 && vtl_get_cudnn_flags().allow_tf32;
  cudnnDataType_t dt = dnn_type(s.dtype), ct = half ? CUDNN_DATA_FLOAT : dt;
  int ph = g.padded ? 0 : (int)s.pad[0], pw = g.padded ? 0 : (int)s.pad[1];
  DNN(cudnnCreateTensorDescriptor(&d.x), "descriptor");
  DNN(cudnnCreateTensorDescriptor(&d.y), "descriptor");
  DNN(cudnnCreateTensorDescriptor(&d.b), "descriptor");
  DNN(cudnnCreateFilterDescriptor(&d.w), "descriptor");
  DNN(cudnnCreateConvolutionDescriptor(&d.c), "descriptor");
  // channels-last: x, y and the filter (converted to (K,R,S,C/groups) around the call) are NHWC
  if (s.x_cl != s.y_cl)
    return vtl_error_set(VTL_ERR_ARG, "conv2d: cuda takes channels-last input and output together");
  cudnnTensorFormat_t fmt = s.x_cl ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
  DNN(cudnnSetTensor4dDescriptor(d.x, fmt, dt, (int)s.N, (int)s.C, (int)g.Hp, (int)g.Wp), "input descriptor");
  DNN(cudnnSetTensor4dDescriptor(d.y, fmt, dt, (int)s.N, (int)s.K, (int)s.OH, (int)s.OW), "output descriptor");
  DNN(cudnnSetTensor4dDescriptor(d.b, CUDNN_TENSOR_NCHW, dt, 1, (int)s.K, 1, 1), "bias descriptor");
  DNN(cudnnSetFilter4dDescriptor(d.w, dt, fmt, (int)s.K, (int)(s.C / s.groups), (int)s.R, (int)s.S),
      "weight descriptor");
  DNN(cudnnSetConvolution2dDescriptor(d.c, ph, pw, (int)s.stride[0], (int)s.stride[1], (int)s.dilation[0],
                                      (int)s.dilation[1], CUDNN_CROSS_CORRELATION, ct),
      "convolution descriptor");
  DNN(cudnnSetConvolutionGroupCount(d.c, (int)s.groups), "group count");
  // exact f32 products (no TF32 tensor cores, unless allowed), as the CPU computes them; half
  // on tensor cores
  DNN(cudnnSetConvolutionMathType(d.c, half ? CUDNN_TENSOR_OP_MATH : tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH),
      "math type");
  int n, c, h, w;
  DNN(cudnnGetConvolution2dForwardOutputDim(d.c, d.x, d.w, &n, &c, &h, &w), "output size");
  if (n != s.N || c != s.K || h != s.OH || w != s.OW)
    return vtl_error_set(VTL_ERR_DEVICE, "conv2d: cuDNN computes an output of %dx%dx%dx%d, expected %lldx%lldx%lldx%lld",
                         n, c, h, w, (long long)s.N, (long long)s.K, (long long)s.OH, (long long)s.OW);
  return VTL_OK;
}

// the switches a choice depends on, as one number of the key
int64_t flag_bits(const vtl_cudnn_flags &f) { return (int64_t)f.deterministic | (int64_t)f.allow_tf32 << 1 | (int64_t)f.benchmark << 2; }

conv_key key_of(conv_dir dir, const conv_geom &g, const vtl_cudnn_flags &f) {
  const vtl_conv2d_shape &s = g.s;
  return conv_key{{dir, s.dtype, s.N, s.C, g.Hp, g.Wp, s.K, s.R, s.S, s.stride[0], s.stride[1],
                   g.padded ? 0 : s.pad[0], g.padded ? 0 : s.pad[1], s.dilation[0], s.dilation[1], s.groups, s.x_cl,
                   flag_bits(f)}};
}

// An acceptable algorithm from a list of candidates, best first: it runs (status), does not
// convert to half (math type), uses tensor cores only for half data or TF32-allowed f32, and,
// when need_det, is deterministic.
template <class Perf> bool pick(const Perf *p, int n, bool need_det, bool tensor_ops, conv_algo *out) {
  for (int i = 0; i < n; i++) {
    if (p[i].status != CUDNN_STATUS_SUCCESS) continue;
    if (p[i].mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) continue;
    if (!tensor_ops && p[i].mathType == CUDNN_TENSOR_OP_MATH) continue;
    if (need_det && p[i].determinism != CUDNN_DETERMINISTIC) continue;
    out->algo = (int)p[i].algo;
    out->workspace = p[i].memory;
    out->math = (int)p[i].mathType;
    out->rank = i;
    return true;
  }
  return false;
}

// "fwd bf16 nhwc N.. C.. HxW K.. RxS s.. g.." into buf (VTL_CUDNN_LOG's lines)
const char *shape_text(conv_dir dir, const conv_geom &g, char *buf, size_t n) {
  const vtl_conv2d_shape &s = g.s;
  snprintf(buf, n, "%s %s %s N%lld C%lld %lldx%lld K%lld %lldx%lld s%lld g%lld",
           dir == FWD ? "fwd" : dir == BWD_DATA ? "bwd_data" : "bwd_filter", vtl_dtype_name(s.dtype),
           s.x_cl ? "nhwc" : "nchw", (long long)s.N, (long long)s.C, (long long)g.Hp, (long long)g.Wp, (long long)s.K,
           (long long)s.R, (long long)s.S, (long long)s.stride[0], (long long)s.groups);
  return buf;
}

void log_choice(conv_dir dir, const conv_geom &g, const conv_algo &a) {
  char what[160];
  fprintf(stderr, "cudnn %s: algo %d (math %d, rank %d), workspace %zu\n", shape_text(dir, g, what, sizeof what), a.algo,
          a.math, a.rank, a.workspace);
}

// The cached algorithm of (dir, shape) on dev, chosen on first use.
vtl_status choose(int dev, cudnnHandle_t h, conv_dir dir, const conv_geom &g, const conv_desc &d,
                  const vtl_cudnn_flags &fl, conv_algo *out) {
  conv_key k = key_of(dir, g, fl);
  cudnn_state &s = states[dev];
  {
    std::lock_guard<std::mutex> lk(s.mu);
    auto it = s.cache.find(k);
    if (it != s.cache.end()) { *out = it->second; return VTL_OK; }
  }
  bool bench = fl.benchmark, ok = false, det = fl.deterministic;
  bool tc = g.s.dtype == VTL_F16 || g.s.dtype == VTL_BF16 || (g.s.dtype == VTL_F32 && fl.allow_tf32);
  int n = 0;
  if (dir == FWD) {
    cudnnConvolutionFwdAlgoPerf_t p[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    if (bench) DNN(cudnnFindConvolutionForwardAlgorithm(h, d.x, d.w, d.c, d.y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, p),
                   "algorithm search");
    else DNN(cudnnGetConvolutionForwardAlgorithm_v7(h, d.x, d.w, d.c, d.y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, p),
             "algorithm choice");
    ok = pick(p, n, det, tc, out) || pick(p, n, false, tc, out);
  } else if (dir == BWD_DATA) {
    cudnnConvolutionBwdDataAlgoPerf_t p[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    if (bench)
      DNN(cudnnFindConvolutionBackwardDataAlgorithm(h, d.w, d.y, d.c, d.x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &n, p),
          "algorithm search");
    else
      DNN(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d.w, d.y, d.c, d.x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &n, p),
          "algorithm choice");
    ok = pick(p, n, det, tc, out) || pick(p, n, false, tc, out);
  } else {
    cudnnConvolutionBwdFilterAlgoPerf_t p[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    if (bench)
      DNN(cudnnFindConvolutionBackwardFilterAlgorithm(h, d.x, d.y, d.c, d.w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &n,
                                                      p),
          "algorithm search");
    else
      DNN(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d.x, d.y, d.c, d.w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &n,
                                                        p),
          "algorithm choice");
    ok = pick(p, n, det, tc, out) || pick(p, n, false, tc, out);
  }
  if (!ok)
    return vtl_error_set(VTL_ERR_DEVICE, "conv2d: cuDNN offers no %s algorithm for this shape",
                         dir == FWD ? "forward" : dir == BWD_DATA ? "backward-data" : "backward-filter");
  // the workspace size of the chosen algorithm as the query functions report it
  size_t ws = 0;
  if (dir == FWD)
    DNN(cudnnGetConvolutionForwardWorkspaceSize(h, d.x, d.w, d.c, d.y, (cudnnConvolutionFwdAlgo_t)out->algo, &ws),
        "workspace size");
  else if (dir == BWD_DATA)
    DNN(cudnnGetConvolutionBackwardDataWorkspaceSize(h, d.w, d.y, d.c, d.x, (cudnnConvolutionBwdDataAlgo_t)out->algo,
                                                     &ws),
        "workspace size");
  else
    DNN(cudnnGetConvolutionBackwardFilterWorkspaceSize(h, d.x, d.y, d.c, d.w,
                                                       (cudnnConvolutionBwdFilterAlgo_t)out->algo, &ws),
        "workspace size");
  if (ws > out->workspace) out->workspace = ws;
  if (log_mode()) log_choice(dir, g, *out);
  std::lock_guard<std::mutex> lk(s.mu);
  s.cache[k] = *out;
  return VTL_OK;
}

// ---- the graph API ----
// Convolutions go through cuDNN's graph (backend) API where it offers an engine for the shape:
// its heuristics reach kernels the legacy algorithm enums do not. On an H100 against the legacy
// API: ResNet-50's bf16 channels-last training step 110 -> 93 ms, its f32 inference at batch 1
// 17.6 -> 9.2 ms; ResNet-18's f32 training step at batch 64 30.6 -> 33.6 ms. Engines are taken
// best first (or, with benchmark, the fastest of the first few), skipping those whose numerical
// notes the switches rule out: for exact f32 (and f64) tensor cores, down-converted inputs,
// reduced-precision reduction, FFT and Winograd; with deterministic, nondeterministic engines.
// VTL_CUDNN_GRAPH=0 keeps every shape on the legacy API.
bool graph_mode() {
  static const bool on = env_on("VTL_CUDNN_GRAPH", true);
  return on;
}

// one backend descriptor, destroyed with its scope unless released
struct bdesc {
  cudnnBackendDescriptor_t d = nullptr;
  bdesc() = default;
  bdesc(const bdesc &) = delete;
  bdesc &operator=(const bdesc &) = delete;
  ~bdesc() { if (d) cudnnBackendDestroyDescriptor(d); }
  cudnnStatus_t make(cudnnBackendDescriptorType_t t) { return cudnnBackendCreateDescriptor(t, &d); }
  cudnnBackendDescriptor_t release() { cudnnBackendDescriptor_t r = d; d = nullptr; return r; }
};

#define GR(call) do { cudnnStatus_t s_ = (call); if (s_ != CUDNN_STATUS_SUCCESS) return s_; } while (0)

cudnnStatus_t set_desc(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t a, cudnnBackendDescriptor_t v) {
  return cudnnBackendSetAttribute(d, a, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v);
}
cudnnStatus_t set_i64(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t a, int64_t n, const int64_t *v) {
  return cudnnBackendSetAttribute(d, a, CUDNN_TYPE_INT64, n, v);
}

// a tensor of dims (n, c, h, w) in NCHW order, laid out planar or channels-last, 16-byte aligned
cudnnStatus_t graph_tensor(bdesc &t, int64_t uid, cudnnDataType_t dt, int64_t n, int64_t c, int64_t h, int64_t w, bool cl) {
  int64_t dims[4] = {n, c, h, w};
  int64_t planar[4] = {c * h * w, h * w, w, 1}, last[4] = {h * w * c, 1, w * c, c};
  int64_t align = 16;
  GR(t.make(CUDNN_BACKEND_TENSOR_DESCRIPTOR));
  GR(cudnnBackendSetAttribute(t.d, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt));
  GR(set_i64(t.d, CUDNN_ATTR_TENSOR_DIMENSIONS, 4, dims));
  GR(set_i64(t.d, CUDNN_ATTR_TENSOR_STRIDES, 4, cl ? last : planar));
  GR(set_i64(t.d, CUDNN_ATTR_TENSOR_UNIQUE_ID, 1, &uid));
  GR(set_i64(t.d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, 1, &align));
  return cudnnBackendFinalize(t.d);
}

// whether an engine configuration's numerical notes allow it for dtype dt under the switches
bool engine_allowed(cudnnBackendDescriptor_t cfg, vtl_dtype dt, const vtl_cudnn_flags &fl) {
  bool exact = dt == VTL_F64 || (dt == VTL_F32 && !fl.allow_tf32);
  bdesc eng;
  if (eng.make(CUDNN_BACKEND_ENGINE_DESCRIPTOR) != CUDNN_STATUS_SUCCESS) return false;
  int64_t n = 0;
  if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &eng.d) !=
      CUDNN_STATUS_SUCCESS)
    return false;
  cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
  if (cudnnBackendGetAttribute(eng.d, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                               CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n, notes) != CUDNN_STATUS_SUCCESS)
    return false;
  for (int64_t i = 0; i < n; i++) {
    switch (notes[i]) {
    case CUDNN_NUMERICAL_NOTE_TENSOR_CORE:
    case CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS:
    case CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION:
    case CUDNN_NUMERICAL_NOTE_FFT:
    case CUDNN_NUMERICAL_NOTE_WINOGRAD:
    case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_4x4:
    case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_6x6:
    case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_13x13:
      if (exact) return false;
      break;
    case CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC: if (fl.deterministic) return false; break;
    default: break;
    }
  }
  return true;
}

void drop_plan(graph_plan &p) {
  if (p.plan) cudnnBackendDestroyDescriptor(p.plan);
  if (p.cfg) cudnnBackendDestroyDescriptor(p.cfg);
  p = graph_plan();
}

// Builds plans of (dir, g) on handle h: the operation graph of one convolution (tensor uids
// 1: x or dx, 2: w or dw, 3: y or dy), heuristics mode A, and the plans of the first `most`
// allowed engines whose plans finalize, best first, appended to out.
cudnnStatus_t graph_build(cudnnHandle_t h, conv_dir dir, const conv_geom &g, const vtl_cudnn_flags &fl, size_t most,
                          std::vector<graph_plan> &out) {
  const vtl_conv2d_shape &s = g.s;
  bool half = s.dtype == VTL_F16 || s.dtype == VTL_BF16;
  cudnnDataType_t dt = dnn_type(s.dtype), ct = half ? CUDNN_DATA_FLOAT : dt;
  bdesc x, w, y, conv, op, graph, heur;
  GR(graph_tensor(x, 1, dt, s.N, s.C, g.Hp, g.Wp, s.x_cl));
  GR(graph_tensor(w, 2, dt, s.K, s.C / s.groups, s.R, s.S, s.x_cl));
  GR(graph_tensor(y, 3, dt, s.N, s.K, s.OH, s.OW, s.x_cl));
  int64_t two = 2, pad[2] = {g.padded ? 0 : s.pad[0], g.padded ? 0 : s.pad[1]};
  int64_t stride[2] = {s.stride[0], s.stride[1]}, dil[2] = {s.dilation[0], s.dilation[1]};
  cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  GR(conv.make(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR));
  GR(cudnnBackendSetAttribute(conv.d, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &ct));
  GR(cudnnBackendSetAttribute(conv.d, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode));
  GR(set_i64(conv.d, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, 1, &two));
  GR(set_i64(conv.d, CUDNN_ATTR_CONVOLUTION_DILATIONS, 2, dil));
  GR(set_i64(conv.d, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, 2, stride));
  GR(set_i64(conv.d, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, 2, pad));
  GR(set_i64(conv.d, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, 2, pad));
  GR(cudnnBackendFinalize(conv.d));
  float f1 = 1, f0 = 0;
  double d1 = 1, d0 = 0;
  cudnnBackendAttributeType_t st = s.dtype == VTL_F64 ? CUDNN_TYPE_DOUBLE : CUDNN_TYPE_FLOAT;
  const void *one = s.dtype == VTL_F64 ? (const void *)&d1 : (const void *)&f1;
  const void *zero = s.dtype == VTL_F64 ? (const void *)&d0 : (const void *)&f0;
  // the operation of each direction and its attributes: x (or dx), w (or dw), y (or dy), conv, alpha, beta
  static const struct {
    cudnnBackendDescriptorType_t type;
    cudnnBackendAttributeName_t x, w, y, conv, alpha, beta;
  } ops[3] = {
      {CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
       CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
       CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
       CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA},
      {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
       CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
       CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
       CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA},
      {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
       CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
       CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
       CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA},
  };
  const auto &a = ops[dir == FWD ? 0 : dir == BWD_DATA ? 1 : 2];
  GR(op.make(a.type));
  GR(set_desc(op.d, a.x, x.d));
  GR(set_desc(op.d, a.w, w.d));
  GR(set_desc(op.d, a.y, y.d));
  GR(set_desc(op.d, a.conv, conv.d));
  GR(cudnnBackendSetAttribute(op.d, a.alpha, st, 1, one));
  GR(cudnnBackendSetAttribute(op.d, a.beta, st, 1, zero));
  GR(cudnnBackendFinalize(op.d));
  GR(graph.make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR));
  GR(set_desc(graph.d, CUDNN_ATTR_OPERATIONGRAPH_OPS, op.d));
  GR(cudnnBackendSetAttribute(graph.d, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &h));
  GR(cudnnBackendFinalize(graph.d));
  cudnnBackendHeurMode_t hm = CUDNN_HEUR_MODE_A;
  GR(heur.make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR));
  GR(set_desc(heur.d, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph.d));
  GR(cudnnBackendSetAttribute(heur.d, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &hm));
  GR(cudnnBackendFinalize(heur.d));
  int64_t count = 0;
  GR(cudnnBackendGetAttribute(heur.d, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr));
  if (count <= 0) return CUDNN_STATUS_NOT_SUPPORTED;
  std::vector<bdesc> cfgs((size_t)count);
  std::vector<cudnnBackendDescriptor_t> raw((size_t)count);
  for (int64_t i = 0; i < count; i++) {
    GR(cfgs[i].make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
    raw[i] = cfgs[i].d;
  }
  int64_t got = 0;
  GR(cudnnBackendGetAttribute(heur.d, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got,
                              raw.data()));
  for (int64_t i = 0; i < got && i < count && out.size() < most; i++) {
    if (!engine_allowed(cfgs[i].d, s.dtype, fl)) continue;
    bdesc plan;
    if (plan.make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR) != CUDNN_STATUS_SUCCESS) continue;
    if (cudnnBackendSetAttribute(plan.d, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &h) != CUDNN_STATUS_SUCCESS ||
        set_desc(plan.d, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfgs[i].d) != CUDNN_STATUS_SUCCESS ||
        cudnnBackendFinalize(plan.d) != CUDNN_STATUS_SUCCESS)
      continue;
    int64_t ws = 0, n = 0;
    if (cudnnBackendGetAttribute(plan.d, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n, &ws) !=
        CUDNN_STATUS_SUCCESS)
      continue;
    graph_plan p;
    p.workspace = ws;
    p.plan = plan.release();
    p.cfg = cfgs[i].release();
    p.rank = (int)i;
    p.ok = true;
    out.push_back(p);
  }
  return out.empty() ? CUDNN_STATUS_NOT_SUPPORTED : CUDNN_STATUS_SUCCESS;
}
#undef GR

// how many engines benchmark mode times for a shape
constexpr size_t BENCH_ENGINES = 8;

// The cached graph plan of (dir, shape, switches) on dev, built on first use; NULL when the
// graph API has none for it (or is switched off). With benchmark, the candidates of a new shape
// (when there is more than one) go to *trials instead, for the first call to time on its
// operands and hand to graph_keep.
const graph_plan *graph_of(int dev, cudnnHandle_t h, conv_dir dir, const conv_geom &g, const vtl_cudnn_flags &fl,
                           std::vector<graph_plan> *trials) {
  if (!graph_mode()) return nullptr;
  conv_key k = key_of(dir, g, fl);
  cudnn_state &s = states[dev];
  std::lock_guard<std::mutex> lk(s.mu);
  auto it = s.plans.find(k);
  if (it == s.plans.end()) {
    std::vector<graph_plan> c;
    cudnnStatus_t st = graph_build(h, dir, g, fl, fl.benchmark ? BENCH_ENGINES : 1, c);
    if (c.size() > 1) {
      *trials = c;
      return nullptr;
    }
    graph_plan p = c.empty() ? graph_plan() : c[0];
    if (log_mode()) {
      char what[160];
      fprintf(stderr, "cudnn graph %s: %s (engine rank %d), workspace %lld\n", shape_text(dir, g, what, sizeof what),
              p.ok ? "plan" : cudnnGetErrorString(st), p.rank, (long long)p.workspace);
    }
    it = s.plans.emplace(k, p).first;
  }
  return it->second.ok ? &it->second : nullptr;
}

// Caches trials[best] (none when best < 0: the legacy API then serves the shape) as the plan of
// (dir, shape, switches) on dev and drops the other trials; returns the cached plan, which is
// another thread's when it got there first, or NULL when there is none.
const graph_plan *graph_keep(int dev, conv_dir dir, const conv_geom &g, const vtl_cudnn_flags &fl,
                             std::vector<graph_plan> &trials, int best) {
  cudnn_state &s = states[dev];
  std::lock_guard<std::mutex> lk(s.mu);
  auto r = s.plans.emplace(key_of(dir, g, fl), best >= 0 ? trials[(size_t)best] : graph_plan());
  for (size_t i = 0; i < trials.size(); i++)
    if ((int)i != best || !r.second) drop_plan(trials[i]);
  trials.clear();
  return r.first->second.ok ? &r.first->second : nullptr;
}

// runs a graph plan on the tensors of uids 1, 2, 3; false when a pointer is not 16-byte aligned
// (the plan assumes it) or the variant pack cannot be made, with nothing launched
bool graph_exec(cudnnHandle_t h, const graph_plan &p, void *p1, void *p2, void *p3, void *ws, cudnnStatus_t *err) {
  *err = CUDNN_STATUS_SUCCESS;
  if (((uintptr_t)p1 | (uintptr_t)p2 | (uintptr_t)p3) & 15) return false;
  int64_t uids[3] = {1, 2, 3};
  void *ptrs[3] = {p1, p2, p3};
  bdesc vp;
  if (vp.make(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR) != CUDNN_STATUS_SUCCESS ||
      cudnnBackendSetAttribute(vp.d, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 3, uids) != CUDNN_STATUS_SUCCESS ||
      cudnnBackendSetAttribute(vp.d, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 3, ptrs) !=
          CUDNN_STATUS_SUCCESS ||
      cudnnBackendSetAttribute(vp.d, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws) != CUDNN_STATUS_SUCCESS ||
      cudnnBackendFinalize(vp.d) != CUDNN_STATUS_SUCCESS)
    return false;
  *err = cudnnBackendExecute(h, p.plan, vp.d);
  return true;
}

// copies planes between the input (H, W) and its zero-padded form (Hp, Wp), rows `top` and
// columns `left` in; each pixel is `inner` consecutive values (channels-last: C, else 1);
// to_padded: input -> padded (the border zero), else padded -> input
template <class T>
__global__ void pad_planes(const void *src_, void *dst_, int64_t planes, int64_t inner, int64_t H, int64_t W, int64_t Hp,
                           int64_t Wp, int64_t top, int64_t left, bool to_padded) {
  const T *src = (const T *)src_;
  T *dst = (T *)dst_;
  int64_t total = planes * inner * (to_padded ? Hp * Wp : H * W);
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t c = i % inner, r = i / inner;
    if (to_padded) {
      int64_t w = r % Wp, h = (r / Wp) % Hp, p = r / (Wp * Hp), ih = h - top, iw = w - left;
      dst[i] = ih >= 0 && ih < H && iw >= 0 && iw < W ? src[((p * H + ih) * W + iw) * inner + c] : (T)0;
    } else {
      int64_t w = r % W, h = (r / W) % H, p = r / (W * H);
      dst[i] = src[((p * Hp + h + top) * Wp + w + left) * inner + c];
    }
  }
}

// launches K<T> over total elements with T chosen by element size (f16/bf16 moved as bits:
// all-zero bits are +0 in both)
#define BY_ELEMENT_SIZE(es, total, st, K, ...)                                                              \
  do {                                                                                                    \
    if ((es) == 4) K<float><<<vtl_cu_blocks(total), 256, 0, st>>>(__VA_ARGS__);                           \
    else if ((es) == 2) K<uint16_t><<<vtl_cu_blocks(total), 256, 0, st>>>(__VA_ARGS__);                   \
    else K<double><<<vtl_cu_blocks(total), 256, 0, st>>>(__VA_ARGS__);                                    \
  } while (0)

vtl_status pad_copy(const conv_geom &g, const void *src, void *dst, bool to_padded, cudaStream_t st) {
  const vtl_conv2d_shape &s = g.s;
  int64_t planes = s.x_cl ? s.N : s.N * s.C, inner = s.x_cl ? s.C : 1;
  int64_t total = planes * inner * (to_padded ? g.Hp * g.Wp : s.H * s.W);
  if (total == 0) return VTL_OK;
  BY_ELEMENT_SIZE(vtl_dtype_size(s.dtype), total, st, pad_planes, src, dst, planes, inner, s.H, s.W, g.Hp, g.Wp,
                  s.pad[0], s.pad[1], to_padded);
  VTL_CU_LAUNCHED("conv2d padding");
  return VTL_OK;
}

// the weights between (K, Cg, R*S) and the channels-last filter (K, R*S, Cg); to_cl says which way
template <class T>
__global__ void filter_relayout(const void *src_, void *dst_, int64_t K, int64_t Cg, int64_t RS, bool to_cl) {
  const T *src = (const T *)src_;
  T *dst = (T *)dst_;
  int64_t total = K * Cg * RS;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t c = i % Cg, s = (i / Cg) % RS, k = i / (Cg * RS), p = (k * Cg + c) * RS + s; // i: (k, s, c)
    if (to_cl) dst[i] = src[p];
    else dst[p] = src[i];
  }
}

// The channels-last filter of a call: w's values in (K, R, S, C/groups) order in scratch, or
// (for a weight gradient) scratch that weights_back() copies into w's own layout.
struct cl_filter {
  cu_scratch buf;
  const vtl_conv2d_shape &s;
  cudaStream_t st;
  cl_filter(const vtl_conv2d_shape &sh, int dev, cudaStream_t stream)
      : buf(sh.x_cl ? (size_t)(sh.K * (sh.C / sh.groups) * sh.R * sh.S) * vtl_dtype_size(sh.dtype) + 16 : 0, dev),
        s(sh), st(stream) {}
  int64_t total() const { return s.K * (s.C / s.groups) * s.R * s.S; }
  // w's values between its (K, C/groups, R, S) layout and buf; false with the error set
  bool move(const void *src, void *dst, bool to_cl) {
    if (total() == 0) return true;
    BY_ELEMENT_SIZE(vtl_dtype_size(s.dtype), total(), st, filter_relayout, src, dst, s.K, s.C / s.groups, s.R * s.S,
                    to_cl);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return vtl_cu_error(e, "conv2d filter layout"), false;
    return true;
  }
  // the filter pointer a call reads: w itself, or its channels-last copy; NULL with the error set
  const void *in(const void *w) {
    if (!s.x_cl) return w;
    return buf.p && move(w, buf.p, true) ? buf.p : nullptr;
  }
  // where a weight gradient is written: gw itself, or scratch (NULL with the error set)
  void *out(void *gw) { return s.x_cl ? buf.p : gw; }
  // the gradient written by the call into gw's (K, C/groups, R, S) layout
  vtl_status back(void *gw) {
    if (!s.x_cl) return VTL_OK;
    return move(buf.p, gw, false) ? VTL_OK : vtl_error_status();
  }
};

// alpha = 1, beta = 0: cuDNN reads double scalars for double data, float for the others
struct scalars {
  float f1 = 1, f0 = 0;
  double d1 = 1, d0 = 0;
  const void *one(vtl_dtype dt) const { return dt == VTL_F64 ? (const void *)&d1 : (const void *)&f1; }
  const void *zero(vtl_dtype dt) const { return dt == VTL_F64 ? (const void *)&d0 : (const void *)&f0; }
};

// everything one convolution call needs: stream, handle, switches, descriptors, algorithm or
// plan, and workspace
struct conv_call {
  conv_geom g;
  conv_desc d;
  conv_dir dir = FWD;
  cudaStream_t st = nullptr;
  cudnnHandle_t h = nullptr;
  vtl_cudnn_flags fl = {false, false, false};
  conv_algo algo = {0, 0, 0, 0};
  const graph_plan *plan = nullptr;
  std::vector<graph_plan> trials; // benchmark: the candidate plans of a new shape, timed by run_plan
  bool have_desc = false;
  int dev = 0;
  void *ws = nullptr;
  size_t ws_n = 0;
  ~conv_call() {
    for (graph_plan &p : trials) drop_plan(p);
    if (ws) vtl_cu_free(ws, ws_n, dev);
  }

  vtl_status workspace(size_t n) {
    if (n <= ws_n) return VTL_OK;
    if (ws) vtl_cu_free(ws, ws_n, dev);
    ws = vtl_cu_alloc(n, dev);
    ws_n = ws ? n : 0;
    if (!ws) return vtl_error_set(VTL_ERR_OOM, "conv2d: out of memory (a cuDNN workspace of %zu bytes)", n);
    return VTL_OK;
  }
  vtl_status open(const vtl_conv2d_shape *s, const vtl_tensor *on, conv_dir which) {
    g = geom_of(s);
    dir = which;
    dev = vtl_cu_device(on);
    st = vtl_cu_stream(dev);
    if (!st) return vtl_error_status();
    h = handle_of(dev, st);
    if (!h) return vtl_error_status();
    fl = vtl_get_cudnn_flags();
    plan = graph_of(dev, h, dir, g, fl, &trials);
    if (plan) return workspace((size_t)plan->workspace);
    if (!trials.empty()) return VTL_OK; // the workspaces come with the timing
    return legacy();
  }
  // the legacy API's descriptors (made once; the bias steps use them with either API)
  vtl_status descs() {
    if (have_desc) return VTL_OK;
    if (make_desc(g, d) != VTL_OK) return vtl_error_status();
    have_desc = true;
    return VTL_OK;
  }
  // the legacy API's descriptors, algorithm and workspace (also when a call cannot take the plan)
  vtl_status legacy() {
    if (descs() != VTL_OK || choose(dev, h, dir, g, d, fl, &algo) != VTL_OK) return vtl_error_status();
    plan = nullptr;
    return workspace(algo.workspace);
  }
  // Benchmark: runs each trial plan on this call's operands (each writes the output, which the
  // chosen plan then writes again), once to warm up and then TIMED_RUNS times between two
  // events, and caches the fastest. Operands the plans cannot take (misaligned) leave the trials
  // untimed, for a later call of the shape; this one takes the legacy API.
  static constexpr int TIMED_RUNS = 3;
  void time_trials(void *p1, void *p2, void *p3) {
    if (((uintptr_t)p1 | (uintptr_t)p2 | (uintptr_t)p3) & 15) {
      for (graph_plan &p : trials) drop_plan(p);
      trials.clear();
      return;
    }
    int best = -1;
    float best_ms = 0;
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    bool events = cudaEventCreate(&e0) == cudaSuccess && cudaEventCreate(&e1) == cudaSuccess;
    for (size_t i = 0; events && i < trials.size(); i++) {
      if (workspace((size_t)trials[i].workspace) != VTL_OK) continue; // too large now: not a candidate
      cudnnStatus_t e;
      bool ok = graph_exec(h, trials[i], p1, p2, p3, ws, &e) && e == CUDNN_STATUS_SUCCESS &&
                cudaEventRecord(e0, st) == cudaSuccess;
      for (int r = 0; ok && r < TIMED_RUNS; r++) ok = graph_exec(h, trials[i], p1, p2, p3, ws, &e) && e == CUDNN_STATUS_SUCCESS;
      float ms = 0;
      ok = ok && cudaEventRecord(e1, st) == cudaSuccess && cudaEventSynchronize(e1) == cudaSuccess &&
           cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess;
      if (!ok) {
        cudaGetLastError(); // an engine that refused the operands is not a candidate
        continue;
      }
      if (log_mode()) {
        char what[160];
        fprintf(stderr, "cudnn graph %s: engine rank %d takes %.4f ms, workspace %lld\n",
                shape_text(dir, g, what, sizeof what), trials[i].rank, ms / TIMED_RUNS, (long long)trials[i].workspace);
      }
      if (best < 0 || ms < best_ms) {
        best = (int)i;
        best_ms = ms;
      }
    }
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    plan = graph_keep(dev, dir, g, fl, trials, best);
  }
  // runs the plan on uids 1..3: 1 when it ran, 0 when this call needs the legacy API, -1 on error
  int run_plan(void *p1, void *p2, void *p3) {
    if (!trials.empty()) {
      time_trials(p1, p2, p3);
      if (plan && workspace((size_t)plan->workspace) != VTL_OK) return -1;
      if (!plan) return legacy() == VTL_OK ? 0 : -1;
    }
    if (!plan) return 0;
    cudnnStatus_t e;
    if (graph_exec(h, *plan, p1, p2, p3, ws, &e) && e == CUDNN_STATUS_SUCCESS) return 1;
    // misaligned operands, or an engine that refused the call: the legacy API takes it
    if (log_mode() && e != CUDNN_STATUS_SUCCESS) fprintf(stderr, "cudnn graph execution: %s\n", cudnnGetErrorString(e));
    return legacy() == VTL_OK ? 0 : -1;
  }
};

size_t input_bytes(const conv_geom &g) {
  return (size_t)(g.s.N * g.s.C * g.Hp * g.Wp) * vtl_dtype_size(g.s.dtype);
}

} // namespace

vtl_status vtl_cu_conv2d_forward(const vtl_conv2d_shape *s, const vtl_tensor *x, const vtl_tensor *w,
                                 const vtl_tensor *b, vtl_tensor *y) {
  if (s->N * s->K * s->OH * s->OW == 0) return VTL_OK;
  conv_call cc;
  if (cc.open(s, x, FWD) != VTL_OK) return vtl_error_status();
  scalars k;
  const void *xin = vtl_tensor_data(x);
  cu_scratch xp(cc.g.padded ? input_bytes(cc.g) : 0, cc.dev);
  if (cc.g.padded) {
    if (!xp.p || pad_copy(cc.g, xin, xp.p, true, cc.st) != VTL_OK) return vtl_error_status();
    xin = xp.p;
  }
  cl_filter f(*s, cc.dev, cc.st);
  const void *win = f.in(vtl_tensor_data(w));
  if (!win) return vtl_error_status();
  int ran = cc.run_plan((void *)xin, (void *)win, vtl_tensor_data(y));
  if (ran < 0) return vtl_error_status();
  if (!ran)
    DNN(cudnnConvolutionForward(cc.h, k.one(s->dtype), cc.d.x, xin, cc.d.w, win, cc.d.c,
                                (cudnnConvolutionFwdAlgo_t)cc.algo.algo, cc.ws, cc.algo.workspace, k.zero(s->dtype),
                                cc.d.y, vtl_tensor_data(y)),
        "convolution forward");
  if (b && cc.descs() != VTL_OK) return vtl_error_status();
  if (b) DNN(cudnnAddTensor(cc.h, k.one(s->dtype), cc.d.b, vtl_tensor_data(b), k.one(s->dtype), cc.d.y, vtl_tensor_data(y)),
             "bias");
  return VTL_OK;
}

vtl_status vtl_cu_conv2d_backward_data(const vtl_conv2d_shape *s, const vtl_tensor *gy, const vtl_tensor *w,
                                       vtl_tensor *gx) {
  if (s->N * s->C * s->H * s->W == 0) return VTL_OK;
  conv_call cc;
  if (cc.open(s, gy, BWD_DATA) != VTL_OK) return vtl_error_status();
  if (s->N * s->K * s->OH * s->OW == 0) {
    cudaError_t e = cudaMemsetAsync(vtl_tensor_data(gx), 0, (size_t)vtl_tensor_numel(gx) * vtl_dtype_size(s->dtype), cc.st);
    return e == cudaSuccess ? VTL_OK : vtl_cu_error(e, "conv2d_backward");
  }
  scalars k;
  cu_scratch gp(cc.g.padded ? input_bytes(cc.g) : 0, cc.dev);
  if (cc.g.padded && !gp.p) return vtl_error_status();
  void *out = cc.g.padded ? gp.p : vtl_tensor_data(gx);
  cl_filter f(*s, cc.dev, cc.st);
  const void *win = f.in(vtl_tensor_data(w));
  if (!win) return vtl_error_status();
  int ran = cc.run_plan(out, (void *)win, vtl_tensor_data(gy));
  if (ran < 0) return vtl_error_status();
  if (!ran)
    DNN(cudnnConvolutionBackwardData(cc.h, k.one(s->dtype), cc.d.w, win, cc.d.y, vtl_tensor_data(gy),
                                     cc.d.c, (cudnnConvolutionBwdDataAlgo_t)cc.algo.algo, cc.ws, cc.algo.workspace,
                                     k.zero(s->dtype), cc.d.x, out),
        "convolution backward data");
  if (cc.g.padded) return pad_copy(cc.g, gp.p, vtl_tensor_data(gx), false, cc.st);
  return VTL_OK;
}

vtl_status vtl_cu_conv2d_backward_weight(const vtl_conv2d_shape *s, const vtl_tensor *gy, const vtl_tensor *x,
                                         vtl_tensor *gw, vtl_tensor *gb) {
  conv_call cc;
  if (cc.open(s, x, BWD_FILTER) != VTL_OK) return vtl_error_status();
  scalars k;
  if (s->N * s->OH * s->OW == 0) { // no output: zero gradients
    cudaError_t e = cudaMemsetAsync(vtl_tensor_data(gw), 0, (size_t)vtl_tensor_numel(gw) * vtl_dtype_size(s->dtype), cc.st);
    if (e == cudaSuccess && gb)
      e = cudaMemsetAsync(vtl_tensor_data(gb), 0, (size_t)vtl_tensor_numel(gb) * vtl_dtype_size(s->dtype), cc.st);
    return e == cudaSuccess ? VTL_OK : vtl_cu_error(e, "conv2d_backward");
  }
  const void *xin = vtl_tensor_data(x);
  cu_scratch xp(cc.g.padded ? input_bytes(cc.g) : 0, cc.dev);
  if (cc.g.padded) {
    if (!xp.p || pad_copy(cc.g, xin, xp.p, true, cc.st) != VTL_OK) return vtl_error_status();
    xin = xp.p;
  }
  cl_filter f(*s, cc.dev, cc.st);
  void *gwout = f.out(vtl_tensor_data(gw));
  if (!gwout) return vtl_error_status();
  int ran = cc.run_plan((void *)xin, gwout, vtl_tensor_data(gy));
  if (ran < 0) return vtl_error_status();
  if (!ran)
    DNN(cudnnConvolutionBackwardFilter(cc.h, k.one(s->dtype), cc.d.x, xin, cc.d.y, vtl_tensor_data(gy), cc.d.c,
                                       (cudnnConvolutionBwdFilterAlgo_t)cc.algo.algo, cc.ws, cc.algo.workspace,
                                       k.zero(s->dtype), cc.d.w, gwout),
        "convolution backward filter");
  if (f.back(vtl_tensor_data(gw)) != VTL_OK) return vtl_error_status();
  if (gb && cc.descs() != VTL_OK) return vtl_error_status();
  if (gb)
    DNN(cudnnConvolutionBackwardBias(cc.h, k.one(s->dtype), cc.d.y, vtl_tensor_data(gy), k.zero(s->dtype), cc.d.b,
                                     vtl_tensor_data(gb)),
        "bias gradient");
  return VTL_OK;
}
