#!/usr/bin/env python3
"""Reference files for tests/test_io.lua.

Usage: gen_io.py <fixtures_dir>

Writes <fixtures_dir>/io/:
  *.safetensors   written by the `safetensors` library (torch and numpy front ends), plus
                  F8 files written by hand (torch 1.13 has no float8 dtypes)
  *.npy           written by numpy (every supported dtype, Fortran order, big-endian,
                  0-d, empty, format versions 1.0/2.0/3.0) and a few numpy files vtl must
                  refuse (object, complex, structured, uint64 overflow)
  expected.lua    `return {safetensors = {...}, npy = {...}}`: for each file the dtype vtl
                  must give each tensor, its shape and its values in row-major order
                  (floats as exact hex literals), and the safetensors metadata.

Two large files are checked by formula in the test instead of listed values:
  st_big.safetensors  'big' I16 of 700000 elements, value(i) = i % 65536 - 32768 (0-based i)
  big_be_f4.npy       '>f4' of 300000 elements,    value(i) = (i % 1000) * 0.25 - 100
"""
import json
import math
import os
import struct
import sys

import numpy as np

# ---- Lua literals -------------------------------------------------------------------------


def lua_str(s):
    """A Lua string literal for s (str or bytes), every non-printable or non-ASCII byte escaped."""
    b = s.encode("utf-8") if isinstance(s, str) else s
    out = []
    for c in b:
        if c in (0x22, 0x5C):
            out.append("\\" + chr(c))
        elif 0x20 <= c < 0x7F:
            out.append(chr(c))
        else:
            out.append("\\%03d" % c)
    return '"' + "".join(out) + '"'


def lua_float(x):
    x = float(x)
    if math.isnan(x):
        return "(0/0)"
    if math.isinf(x):
        return "math.huge" if x > 0 else "(-math.huge)"
    return x.hex()


def lua_int(x):
    x = int(x)
    return "math.mininteger" if x == -(2**63) else str(x)


VTL_DTYPE = {  # numpy dtype kind+size -> the vtl dtype a loader gives
    "f4": "f32", "f8": "f64", "f2": "f16", "i8": "i64", "i4": "i32", "u1": "u8", "b1": "bool",
    "i1": "i32", "i2": "i32", "u2": "i32", "u4": "i64", "u8": "i64",
}


def lua_array(values, vtl_dtype, shape):
    """{dtype=..., shape={...}, values={...}} for a flat row-major sequence of python numbers."""
    if vtl_dtype == "bool":
        vals = ["true" if v else "false" for v in values]
    elif vtl_dtype in ("f32", "f64", "f16", "bf16"):
        vals = [lua_float(v) for v in values]
    else:
        vals = [lua_int(v) for v in values]
    return "{dtype=%s, shape={%s}, values={%s}}" % (
        lua_str(vtl_dtype), ",".join(str(int(d)) for d in shape), ",".join(vals))


def lua_numpy(a, vtl_dtype=None):
    """Expected entry for a numpy array (any byte order, any memory order)."""
    if vtl_dtype is None:
        vtl_dtype = VTL_DTYPE[a.dtype.kind + str(a.dtype.itemsize)]
    flat = np.ascontiguousarray(a).reshape(-1)
    if a.dtype.kind == "f":
        values = [float(v) for v in flat.astype(np.float64)]
    elif a.dtype.kind == "b":
        values = [bool(v) for v in flat]
    else:
        values = [int(v) for v in flat]
    return lua_array(values, vtl_dtype, a.shape)


def lua_torch(t):
    """Expected entry for a torch tensor, values exact (bf16/f16 widened to float64)."""
    import torch

    vtl_dtype = {
        torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16",
        torch.int64: "i64", torch.int32: "i32", torch.uint8: "u8", torch.bool: "bool",
        torch.int8: "i32", torch.int16: "i32",
    }[t.dtype]
    flat = t.contiguous().reshape(-1)
    if t.is_floating_point():
        values = [float(v) for v in flat.to(torch.float64).tolist()]
    elif t.dtype == torch.bool:
        values = [bool(v) for v in flat.tolist()]
    else:
        values = [int(v) for v in flat.tolist()]
    return lua_array(values, vtl_dtype, tuple(t.shape))


def lua_entry(name_to_lua, metadata=None):
    items = ",\n      ".join("[%s] = %s" % (lua_str(k), v) for k, v in sorted(name_to_lua.items()))
    meta = ", ".join("[%s] = %s" % (lua_str(k), lua_str(v)) for k, v in sorted((metadata or {}).items()))
    return "{\n    tensors = {\n      %s},\n    metadata = {%s}}" % (items, meta)


# ---- F8 -----------------------------------------------------------------------------------


def f8_e4m3(b):
    """float8_e4m3fn: bias 7, no infinities, only S.1111.111 is NaN."""
    sign = -1.0 if b & 0x80 else 1.0
    e, m = (b >> 3) & 0xF, b & 7
    if e == 15 and m == 7:
        return math.nan
    if e == 0:
        return sign * math.ldexp(m / 8.0, -6)
    return sign * math.ldexp(1 + m / 8.0, e - 7)


def f8_e5m2(b):
    """float8_e5m2: bias 15, IEEE-style infinities and NaNs."""
    sign = -1.0 if b & 0x80 else 1.0
    e, m = (b >> 2) & 0x1F, b & 3
    if e == 31:
        return sign * math.inf if m == 0 else math.nan
    if e == 0:
        return sign * math.ldexp(m / 4.0, -14)
    return sign * math.ldexp(1 + m / 4.0, e - 15)


def write_raw_safetensors(path, entries, metadata=None):
    """entries: (name, dtype string, shape, raw bytes); laid out in order, header padded to 8."""
    header, data, off = {}, b"", 0
    if metadata:
        header["__metadata__"] = metadata
    for name, dt, shape, raw in entries:
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


# ---- the files ----------------------------------------------------------------------------


def main(root):
    import torch
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file as save_torch

    out = os.path.join(root, "io")
    os.makedirs(out, exist_ok=True)
    P = lambda name: os.path.join(out, name)
    st, npy = {}, {}

    # safetensors from torch: every torch dtype vtl reads, specials, 0-d, empty, metadata
    nan, inf = math.nan, math.inf
    tt = {
        "f32": torch.tensor([[0.0, -0.0, 1.5, -2.25], [nan, inf, -inf, 1e-40], [3.4e38, -1.17549435e-38, 1 / 3, 1e-45]],
                            dtype=torch.float32),
        "f64": torch.tensor([1 / 3, -1e300, 5e-324, 0.1, -0.0], dtype=torch.float64),
        "f16": torch.tensor([[1.0, -0.5, 65504.0, 6e-8], [nan, inf, 0.0999, -0.0]], dtype=torch.float16),
        "bf16": torch.tensor([1.0, -3.140625, 1e38, 1e-39, -inf, nan], dtype=torch.bfloat16),
        "i64": torch.tensor([0, -1, 2**53 + 1, 2**63 - 1, -(2**63), 123456789012], dtype=torch.int64),
        "i32": torch.tensor([[-(2**31), 2**31 - 1], [0, -7]], dtype=torch.int32),
        "u8": torch.tensor([0, 1, 127, 128, 255], dtype=torch.uint8),
        "bool": torch.tensor([[True, False, True], [False, False, True]]),
        "i8": torch.tensor([-128, -1, 0, 127], dtype=torch.int8),
        "i16": torch.tensor([[-32768, 32767], [-2, 5]], dtype=torch.int16),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "layer1.0.conv1.weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2) / 8,
        'odd "name" \\ ünï': torch.tensor([7], dtype=torch.int32),
    }
    meta = {"format": "pt", "epoch": "3", "note": 'ünïcode ✓ "quoted" \\ back'}
    save_torch(tt, P("st_torch.safetensors"), metadata=meta)
    st["st_torch.safetensors"] = lua_entry({k: lua_torch(v) for k, v in tt.items()}, meta)

    # safetensors from numpy: the unsigned types torch 1.13 lacks; no metadata
    nt = {
        "u16": np.array([0, 1, 65535, 40000], dtype=np.uint16),
        "u32": np.array([[0, 4294967295], [123, 2**31]], dtype=np.uint32),
        "u64": np.array([0, 2**63 - 1, 2**40], dtype=np.uint64),
        "i8": np.array([[-5, 100, -128]], dtype=np.int8),
        "i16": np.array([-300, 0, 300], dtype=np.int16),
        "f64": np.array([[0.25, -1e-310], [1e308, 2.0]], dtype=np.float64),
        "b": np.array([True, False], dtype=bool),
    }
    save_numpy(nt, P("st_numpy.safetensors"))
    st["st_numpy.safetensors"] = lua_entry({k: lua_numpy(v) for k, v in nt.items()})

    save_numpy({"empty_file_ok": np.zeros((0,), dtype=np.float32)}, P("st_only_empty.safetensors"))
    st["st_only_empty.safetensors"] = lua_entry({"empty_file_ok": lua_numpy(np.zeros((0,), dtype=np.float32))})

    save_torch({}, P("st_no_tensors.safetensors"), metadata={"only": "metadata"})
    st["st_no_tensors.safetensors"] = lua_entry({}, {"only": "metadata"})

    # a large widening tensor (several read chunks), checked by formula in the test
    big = (np.arange(700000, dtype=np.int64) % 65536 - 32768).astype(np.int16)
    save_numpy({"big": big, "tail": np.array([9], dtype=np.uint8)}, P("st_big.safetensors"))

    # F8, all 256 codes of each kind, written by hand
    codes = bytes(range(256))
    write_raw_safetensors(P("st_f8.safetensors"), [("e4m3", "F8_E4M3", (16, 16), codes),
                                                    ("e5m2", "F8_E5M2", (256,), codes)], {"kind": "f8"})
    st["st_f8.safetensors"] = lua_entry({
        "e4m3": lua_array([f8_e4m3(b) for b in codes], "f32", (16, 16)),
        "e5m2": lua_array([f8_e5m2(b) for b in codes], "f32", (256,)),
    }, {"kind": "f8"})

    # files vtl must refuse
    save_numpy({"x": np.array([1, 2**63], dtype=np.uint64)}, P("st_u64_over.safetensors"))
    write_raw_safetensors(P("st_bad_bool.safetensors"), [("flags", "BOOL", (3,), b"\x00\x01\x02")])

    # ---- npy ----
    arrays = {
        "f4": np.array([[1.5, -0.0, nan], [inf, -inf, 1e-45]], dtype="<f4"),
        "f8": np.array([1 / 3, -1e300, 5e-324], dtype="<f8"),
        "f2": np.array([[1.0, 65504.0], [6e-8, -inf]], dtype="<f2"),
        "i8": np.array([2**63 - 1, -(2**63), 2**53 + 1, -5], dtype="<i8"),
        "i4": np.array([[-(2**31), 2**31 - 1, 0]], dtype="<i4"),
        "u1": np.array([0, 255, 128], dtype="|u1"),
        "b1": np.array([[True, False], [False, True]], dtype="|b1"),
        "i2": np.array([-32768, 32767, 1], dtype="<i2"),
        "i1": np.array([-128, 127, 0], dtype="|i1"),
        "u2": np.array([65535, 0, 1234], dtype="<u2"),
        "u4": np.array([4294967295, 0, 7], dtype="<u4"),
        "u8": np.array([2**63 - 1, 0, 42], dtype="<u8"),
        "fortran_f4": np.asfortranarray(np.arange(24, dtype="<f4").reshape(2, 3, 4) - 5),
        "fortran_i2": np.asfortranarray((np.arange(6, dtype="<i2") * -7).reshape(3, 2)),
        "fortran_1d": np.asfortranarray(np.arange(5, dtype="<i4")),
        "be_f4": np.array([[1.5, -2.0, 3.25], [inf, 0.0, -1e-45]], dtype=">f4"),
        "be_f8": np.array([1 / 3, -0.1], dtype=">f8"),
        "be_f2": np.array([1.0, -65504.0, 6e-8], dtype=">f2"),
        "be_i8": np.array([2**62 + 3, -(2**63)], dtype=">i8"),
        "be_i4": np.array([[1, -2], [2**31 - 1, -(2**31)]], dtype=">i4"),
        "be_i2": np.array([-2, 300], dtype=">i2"),
        "be_u2": np.array([65535, 258], dtype=">u2"),
        "be_u4": np.array([4294967295, 16909060], dtype=">u4"),
        "be_fortran_f8": np.asfortranarray(np.arange(6, dtype=">f8").reshape(2, 3) / 4),
        "scalar": np.array(3.25, dtype="<f8"),
        "scalar_b": np.array(True),
        "empty": np.zeros((0, 4), dtype="<f4"),
        "empty_mid": np.zeros((5, 0, 2), dtype="<i4"),
    }
    for name, a in arrays.items():
        np.save(P(name + ".npy"), a, allow_pickle=False)
        npy[name + ".npy"] = lua_numpy(a)
    for ver in ((2, 0), (3, 0)):
        a = np.arange(6, dtype="<f4").reshape(2, 3) * 1.5
        name = "v%d.npy" % ver[0]
        with open(P(name), "wb") as f:
            np.lib.format.write_array(f, a, version=ver, allow_pickle=False)
        npy[name] = lua_numpy(a)
    big = ((np.arange(300000) % 1000) * 0.25 - 100).astype(">f4")
    np.save(P("big_be_f4.npy"), big)

    np.save(P("object.npy"), np.array([1, "a", None], dtype=object), allow_pickle=True)
    np.save(P("complex.npy"), np.zeros(3, dtype=np.complex64))
    np.save(P("structured.npy"), np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]))
    np.save(P("u8_over.npy"), np.array([5, 2**63], dtype="<u8"))

    with open(P("expected.lua"), "w", encoding="ascii") as f:
        f.write("-- written by tests/ref/gen_io.py\nreturn {\n  safetensors = {\n")
        for k, v in st.items():
            f.write("  [%s] = %s,\n" % (lua_str(k), v))
        f.write("  },\n  npy = {\n")
        for k, v in npy.items():
            f.write("    [%s] = %s,\n" % (lua_str(k), v))
        f.write("  },\n}\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: gen_io.py <fixtures_dir>")
    main(sys.argv[1])
