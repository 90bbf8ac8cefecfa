/* dtypes: sizes, names, promotion, half-precision conversion. */
#include <string.h>
#include <math.h>
#include "core.h"

static const struct { const char *name; size_t size; const char *aliases[4]; } dtype_info[VTL_NDTYPES] = {
  [VTL_F32]  = {"f32", 4, {"float32", "float", NULL}},
  [VTL_F64]  = {"f64", 8, {"float64", "double", NULL}},
  [VTL_F16]  = {"f16", 2, {"float16", "half", NULL}},
  [VTL_BF16] = {"bf16", 2, {"bfloat16", NULL}},
  [VTL_I64]  = {"i64", 8, {"int64", "long", NULL}},
  [VTL_I32]  = {"i32", 4, {"int32", "int", NULL}},
  [VTL_U8]   = {"u8", 1, {"uint8", "byte", NULL}},
  [VTL_BOOL] = {"bool", 1, {NULL}},
};

size_t vtl_dtype_size(vtl_dtype dt) { return dtype_info[dt].size; }
const char *vtl_dtype_name(vtl_dtype dt) { return dtype_info[dt].name; }

int vtl_dtype_from_name(const char *name, vtl_dtype *out) {
  for (int d = 0; d < VTL_NDTYPES; d++) {
    if (strcmp(name, dtype_info[d].name) == 0) { *out = (vtl_dtype)d; return 1; }
    for (int a = 0; dtype_info[d].aliases[a]; a++)
      if (strcmp(name, dtype_info[d].aliases[a]) == 0) { *out = (vtl_dtype)d; return 1; }
  }
  return 0;
}

bool vtl_dtype_is_float(vtl_dtype dt) {
  return dt == VTL_F32 || dt == VTL_F64 || dt == VTL_F16 || dt == VTL_BF16;
}
bool vtl_dtype_is_int(vtl_dtype dt) { return dt == VTL_I64 || dt == VTL_I32 || dt == VTL_U8; }

/* Category rank: bool < integers < floats; within a category the wider type wins.
   f16 with bf16 gives f32, as in PyTorch. */
vtl_dtype vtl_dtype_promote(vtl_dtype a, vtl_dtype b) {
  if (a == b) return a;
  bool fa = vtl_dtype_is_float(a), fb = vtl_dtype_is_float(b);
  if (fa && fb) {
    if (a == VTL_F64 || b == VTL_F64) return VTL_F64;
    if (a == VTL_F32 || b == VTL_F32) return VTL_F32;
    return VTL_F32; /* f16 with bf16 */
  }
  if (fa) return a;
  if (fb) return b;
  if (a == VTL_BOOL) return b;
  if (b == VTL_BOOL) return a;
  if (a == VTL_I64 || b == VTL_I64) return VTL_I64;
  if (a == VTL_I32 || b == VTL_I32) return VTL_I32;
  return VTL_U8;
}

/* A Lua number combined with a tensor: the tensor's dtype wins within its category, a float
   number lifts integers to the default float, an integer number lifts bool to i64. */
vtl_dtype vtl_dtype_promote_scalar(vtl_dtype t, bool scalar_is_float) {
  if (vtl_dtype_is_float(t)) return t;
  if (scalar_is_float) return VTL_F32;
  if (t == VTL_BOOL) return VTL_I64;
  return t;
}

float vtl_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0) {
    if (man == 0) bits = sign;
    else { /* subnormal: renormalise */
      int e = -1;
      do { e++; man <<= 1; } while (!(man & 0x400));
      bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
    }
  } else if (exp == 31) bits = sign | 0x7f800000u | man << 13;
  else bits = sign | (exp + 127 - 15) << 23 | man << 13;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

/* Round to nearest even, with overflow to inf and gradual underflow. */
uint16_t vtl_f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
  if (ax < 0x38800000u) { /* below smallest normal half: subnormal or zero */
    if (ax < 0x33000000u) return (uint16_t)sign;
    uint32_t e = ax >> 23, man = (ax & 0x7fffff) | 0x800000;
    int shift = 126 - (int)e; /* 14 + (113 - e) - ... : value = man * 2^(e-150); half sub unit 2^-24 */
    uint32_t q = man >> (shift), rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return (uint16_t)(sign | q);
  }
  uint32_t r = ax + 0xfff + ((ax >> 13) & 1); /* round to nearest even at bit 13 */
  return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

float vtl_bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

uint16_t vtl_f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
  x += 0x7fff + ((x >> 16) & 1);
  return (uint16_t)(x >> 16);
}
