/*
 * PyTorch checkpoints: the zip format torch.save writes since PyTorch 1.6
 * (<archive>/data.pkl, <archive>/data/<key> storage records, <archive>/version), read
 * through a restricted unpickler.
 *
 * The unpickler executes nothing. It builds containers (dict, OrderedDict, list, tuple),
 * scalars, strings and tensors; the only globals it accepts are collections.OrderedDict,
 * torch._utils._rebuild_tensor(_v2), torch._utils._rebuild_parameter(_with_state), the
 * torch.<Type>Storage classes and _codecs.encode(text, 'latin1') (protocol 2's bytes), and
 * any other global is refused by name ("load: model.pth:
 * refusing to load global 'posix.system' (only tensors, storages and containers are
 * allowed)"). Every size read from the archive or the pickle is checked against the file
 * before it is used, so a malformed or hostile file gives an error naming the file and the
 * problem and never more memory than a small multiple of its own size (tensor data aside,
 * which is bounded by the storage records it holds).
 *
 * Tensors are loaded to the CPU whatever device they were saved from ('cuda:0' included).
 * Tensors that shared a storage in PyTorch share one vtl storage (views stay views, with
 * their offsets and strides). Storage types without a vtl dtype widen losslessly:
 * ShortStorage and CharStorage -> i32; BoolStorage bytes other than 0 read as true.
 * The legacy pre-1.6 format (a bare pickle stream, or torch.save(...,
 * _use_new_zipfile_serialization=False)), TorchScript archives, compressed or encrypted
 * zip entries and big-endian checkpoints are refused with a message saying so.
 */
#ifndef VTL_IO_PTH_H
#define VTL_IO_PTH_H
#include "core.h"

/* The kinds of value a checkpoint holds once loaded. Dicts keep insertion order; tuples and
   lists keep their kinds apart only for callers that care. */
typedef enum {
  VTL_PV_NONE = 0, VTL_PV_BOOL, VTL_PV_INT, VTL_PV_FLOAT, VTL_PV_STR, VTL_PV_BYTES,
  VTL_PV_LIST, VTL_PV_TUPLE, VTL_PV_DICT, VTL_PV_TENSOR,
  VTL_PV_NKINDS
} vtl_pv_kind;

/* One value. A value may be reachable along several paths (the pickle's memo shares
   objects, and a container may even hold itself): walk it with a visited set. */
typedef struct vtl_pv vtl_pv;
struct vtl_pv {
  int kind;       /* a vtl_pv_kind once loading has finished */
  uint32_t flags; /* reserved for the loader */
  union {
    int64_t i;                               /* BOOL (0 or 1), INT */
    double f;                                /* FLOAT */
    struct { char *p; size_t n; } s;         /* STR (UTF-8 as stored), BYTES; NUL-terminated */
    struct { vtl_pv **v; size_t n, cap; } seq; /* LIST, TUPLE: n items; DICT: n/2 pairs,
                                                  v[2k] the key, v[2k+1] its value */
    vtl_tensor *t;                           /* TENSOR (owned by the checkpoint) */
  } u;
};

/* A loaded checkpoint: owns every value and tensor reference it hands out. */
typedef struct vtl_pth vtl_pth;

/* Reads a torch.save zip checkpoint; NULL with the error set ("load: <path>: ..."). */
vtl_pth *vtl_pth_load(const char *path);
/* The object torch.save was given (a dict of tensors for a state_dict). */
const vtl_pv *vtl_pth_root(const vtl_pth *p);
/* Frees the values and releases the tensor references (callers retain the tensors they
   keep); NULL is ignored. */
void vtl_pth_free(vtl_pth *p);

/* What a file's first bytes say: 1 a zip archive (a torch.save checkpoint, or another zip),
   2 a legacy PyTorch pickle stream, 0 neither, -1 (error set) when it cannot be read. */
int vtl_pth_sniff(const char *path);

#endif
