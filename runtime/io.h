/*
 * Tensor files: safetensors (read/write) and NumPy .npy (read/write).
 *
 * Loaders check a file's whole header before reading any tensor data, never allocate from a
 * size they have not checked against the file, and on failure leave a message that names the
 * file and the problem ("load: model.safetensors: tensor 'fc.weight' data_offsets [0, 400] do
 * not match shape {10,20} of F32 (800 bytes)"). Savers write `<path>.tmp.<pid>` in the same
 * directory, flush and fsync it, then rename it over `path`: a failed or interrupted save
 * leaves any existing file at `path` untouched.
 *
 * File dtypes without a vtl equivalent widen losslessly: I8/I16/U16 -> i32, U32/U64 -> i64
 * (U64 values above INT64_MAX are an error), F8_E4M3/F8_E5M2 -> f32.
 */
#ifndef VTL_IO_H
#define VTL_IO_H
#include "core.h"

/* Named tensors and string metadata, as read from a safetensors file. Owns everything it
   points to; tensors are in file (data offset) order. */
typedef struct {
  int n;
  char **names;
  vtl_tensor **tensors;
  int nmeta;
  char **meta_keys;
  char **meta_vals;
} vtl_tensor_dict;

/* Releases the tensors and frees the names; entries set to NULL are skipped, so a caller may
   take ownership of some tensors first. Leaves *d empty; safe to call twice. */
void vtl_tensor_dict_free(vtl_tensor_dict *d);

/* Reads a safetensors file into *out (zeroed first; left empty on failure). */
vtl_status vtl_safetensors_load(const char *path, vtl_tensor_dict *out);

/* Writes n named CPU tensors (sorted by name in the file) and nmeta key/value strings
   ("__metadata__", only when nmeta > 0). Names and keys must be distinct UTF-8 strings. */
vtl_status vtl_safetensors_save(const char *path, int n, const char *const *names,
                                vtl_tensor *const *tensors, int nmeta, const char *const *keys,
                                const char *const *vals);

/* Reads an .npy file (format 1.0, 2.0, 3.0; either byte order; C or Fortran order) into a new
   row-major tensor. Object arrays are refused: nothing is ever unpickled. */
vtl_tensor *vtl_npy_load(const char *path);

/* Writes a CPU tensor as .npy (format 1.0, or 2.0 when the header needs it), little-endian. */
vtl_status vtl_npy_save(const char *path, vtl_tensor *t);

/* 1 when the file starts with the .npy magic "\x93NUMPY", 0 when it does not, -1 (error set)
   when it cannot be opened or read. */
int vtl_npy_sniff(const char *path);

/* Reads an IDX file (the MNIST format), plain or gzip-compressed (told by its first bytes).
   Element types load as: unsigned byte -> u8, signed byte and short -> i32, int -> i32,
   float -> f32, double -> f64. Sizes are validated against the file before allocating. */
vtl_tensor *vtl_idx_load(const char *path);

#endif
