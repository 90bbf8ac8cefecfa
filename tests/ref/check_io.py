#!/usr/bin/env python3
"""Reads files written by vtl with the reference libraries and prints what they see.

Usage: check_io.py <file.safetensors | file.npy> ...

Prints one Lua chunk on stdout, `return {[path] = entry, ...}`, entries in the format of
gen_io.py's expected.lua:
  safetensors: {tensors = {[name] = {dtype=, shape=, values=}}, metadata = {...}}, read with
               safetensors.torch.load_file (the library validates the header and offsets
               itself) and safe_open(...).metadata()
  npy:         {dtype=, shape=, values=}, read with numpy.load(allow_pickle=False)
Also checks the layout vtl promises: safetensors header padded to 8 bytes with tensors in
name order; .npy format 1.0, little-endian, data 64-byte aligned. Exits 1 with a message on
stderr if a library refuses a file or the layout is off.
"""
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_io import lua_entry, lua_numpy, lua_str, lua_torch  # noqa: E402


class Refused(Exception):
    pass


def check_safetensors(path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with open(path, "rb") as f:
        raw = f.read()
    (hlen,) = struct.unpack("<Q", raw[:8])
    if hlen % 8 != 0:
        raise Refused("header length %d is not a multiple of 8" % hlen)
    header = json.loads(raw[8:8 + hlen])
    names = [k for k in header if k != "__metadata__"]
    by_offset = sorted(names, key=lambda k: header[k]["data_offsets"][0])
    if by_offset != sorted(names):
        raise Refused("tensors are not stored in name order: %s" % by_offset)
    tensors = load_file(path)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    return lua_entry({k: lua_torch(v) for k, v in tensors.items()}, meta)


def check_npy(path):
    import numpy as np

    with open(path, "rb") as f:
        raw = f.read(12)
    if raw[6:8] != b"\x01\x00":
        raise Refused("expected format version 1.0, got %d.%d" % (raw[6], raw[7]))
    (hlen,) = struct.unpack("<H", raw[8:10])
    if (10 + hlen) % 64 != 0:
        raise Refused("data does not start on a 64-byte boundary (offset %d)" % (10 + hlen))
    a = np.load(path, allow_pickle=False)
    if a.dtype.byteorder == ">":
        raise Refused("array is big-endian")
    return lua_numpy(a)


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: check_io.py <file> ...")
    entries = []
    for path in sys.argv[1:]:
        try:
            entry = check_npy(path) if path.endswith(".npy") else check_safetensors(path)
        except Exception as e:  # the library refused the file, or the layout is off
            sys.stderr.write("check_io: %s: %s: %s\n" % (path, type(e).__name__, e))
            sys.exit(1)
        entries.append("[%s] = %s" % (lua_str(path), entry))
    print("return {\n" + ",\n".join(entries) + "}")


if __name__ == "__main__":
    main()
