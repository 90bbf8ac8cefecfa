#!/usr/bin/env python3
"""PyTorch checkpoints for vtl.load_pth / vtl.load_state_dict_file / vtl.hub, written by torch.save.

Usage: gen_pth.py <fixtures_dir>

Writes <fixtures_dir>/pth/:
  plain.pth            state_dict of Tiny (conv1, bn1, fc); plain.safetensors: the same tensors,
                       plus io/x and io/y (an input and Tiny's eval-mode output)
  ckpt.pth             {"state_dict", "epoch", "optimizer" (SGD with momentum, after one step),
                        and one value of every Python kind}; ckpt.safetensors: momentum buffers
  dp.pth               nn.DataParallel(Tiny).state_dict() ("module." keys)
  compiled.pth         {"model": {"_orig_mod.<key>": ...}} (torch.compile's prefix, wrapped)
  shared.pth           views of one storage (row, column, transpose, narrow, flat slice), an
                       expanded (stride 0) tensor, a list holding one tensor twice, a list that
                       holds itself; shared.safetensors: contiguous copies
  dtypes.pth           f32 f64 f16 bf16 i64 i32 i16 i8 u8 bool, 0-d, empty, nn.Parameter;
                       dtypes.safetensors: the same tensors
  storage.pth          a bare storage (torch.save(t.storage()))
  cuda.pth             a state_dict whose storages are located on 'cuda:0'
  zip64.pth            plain.pth's records in a zip written with ZIP64 records everywhere
  bad/*.pth            malicious and malformed files (see BAD below); the test expects each
                       error message and that no marker file appears
  hub/<name>/          timm hub folders (config.json by timm's save_config_for_hf when timm is installed)
"""
import collections
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib

import torch
import torch.nn as nn
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reflib import Draws, fixtures_dir  # noqa: E402

OUT = os.path.join(fixtures_dir(), "pth")
BAD = os.path.join(OUT, "bad")
draws = Draws(7)
randn = draws.randn


class Tiny(nn.Module):
    """Twin of the Lua test's Tiny: conv1 (no bias) -> bn1 -> relu -> mean -> fc."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn1(self.conv1(x))).mean((2, 3)))


def tiny(num_classes=5):
    torch.manual_seed(3)
    m = Tiny(num_classes)
    with torch.no_grad():  # non-trivial running statistics
        m.bn1.running_mean.copy_(randn(4) * 0.1)
        m.bn1.running_var.copy_(draws.rand(4, lo=0.5, hi=1.5))
        m.bn1.num_batches_tracked.fill_(12)
    return m.eval()


def st_save(path, tensors):
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, path)


def read_zip(path):
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def write_zip(path, entries, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries:
            z.writestr(name, data, compress_type=compression)


def checkpoint_zip(path, pkl, storages=None, extra=None):
    """A torch.save-shaped archive around a hand-made pickle."""
    entries = [("archive/data.pkl", pkl)]
    entries += [("archive/data/%s" % k, v) for k, v in (storages or {}).items()]
    entries += [("archive/version", b"3\n")] + list(extra or [])
    write_zip(path, entries)


class StorageRef:
    def __init__(self, stype, key, numel, location="cpu"):
        self.pid = ("storage", stype, key, location, numel)


class Call:
    """Pickles as fn(*args) (REDUCE); the unpickler under test must never run fn."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, StorageRef) else None


def dumps(obj, protocol=2):
    buf = io.BytesIO()
    Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def rebuild(storage, offset, size, stride):
    return Call(torch._utils._rebuild_tensor_v2, storage, offset, size, stride, False, collections.OrderedDict())


def write_zip64(path, entries):
    """A zip with ZIP64 sizes and offsets in every record, as large checkpoints have."""
    out, cd = bytearray(), bytearray()
    for name, data in entries:
        nb, off, crc = name.encode(), len(out), zlib.crc32(data)
        lx = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(nb), len(lx))
        out += nb + lx + data
        cx = struct.pack("<HHQQQ", 1, 24, len(data), len(data), off)
        cd += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                          len(nb), len(cx), 0, 0, 0, 0, 0xFFFFFFFF) + nb + cx
    cd_off, n = len(out), len(entries)
    out += cd
    z64 = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(cd), cd_off)
    out += struct.pack("<IIQI", 0x07064B50, 0, z64, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    with open(path, "wb") as f:
        f.write(out)


def eocd_offset(data):
    return data.rindex(b"PK\x05\x06")


def good_files():
    m = tiny()
    sd = m.state_dict()
    torch.save(sd, os.path.join(OUT, "plain.pth"))
    x = randn(2, 3, 5, 5)
    with torch.no_grad():
        y = m(x)
    st_save(os.path.join(OUT, "plain.safetensors"), {**sd, "io/x": x, "io/y": y})

    # a training checkpoint: optimizer state and one value of every kind
    train = tiny()
    train.train()
    opt = torch.optim.SGD(train.parameters(), lr=0.1, momentum=0.9)
    train(randn(2, 3, 5, 5)).square().sum().backward()
    opt.step()
    osd = opt.state_dict()
    shared_list = [1, 2]
    ckpt = {
        "state_dict": train.state_dict(), "epoch": 3, "optimizer": osd, "arch": "tiny", "best_acc": 0.875,
        "flags": [True, False, None, 1], "ints": (0, -1, 255, 256, 65535, 65536, -2**31, 2**31, 2**40, -2**40,
                                                   2**63 - 1, -2**63),
        "floats": [1.5, -2.25e-7, 1e300, float("inf")], "text": "h\u00e9llo \u2713", "raw": b"\x00\x01abc",
        "nested": {"a": {"b": [1, {"c": "deep"}]}}, "int_keys": {0: "zero", 7: "seven", -3: "minus"},
        "float_keys": {0.5: "half"}, "tuple_in_list": [(1, 2), ()], "empty_list": [], "empty_dict": {},
        "none": None, "same_twice": [shared_list, shared_list],
        "ordered": collections.OrderedDict([("z", 1), ("a", 2), ("m", 3)]),
    }
    torch.save(ckpt, os.path.join(OUT, "ckpt.pth"))
    st_save(os.path.join(OUT, "ckpt.safetensors"),
            {**{"sd/" + k: v for k, v in train.state_dict().items()},
             **{"momentum/%d" % i: s["momentum_buffer"] for i, s in osd["state"].items()}})

    dp = nn.DataParallel(tiny())
    torch.save(dp.state_dict(), os.path.join(OUT, "dp.pth"))
    torch.save({"model": {"_orig_mod." + k: v for k, v in sd.items()}, "epoch": 1}, os.path.join(OUT, "compiled.pth"))

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    other = torch.arange(3, dtype=torch.float32).reshape(3, 1) * 10
    views = {"base": base, "row": base[1], "col": base[:, 2], "t": base.t(), "narrow": base[1:3, 2:5],
             "flat": base.view(-1)[5:11], "expanded": other.expand(3, 4), "other": other}
    self_list = []
    self_list.append(self_list)
    torch.save({**views, "twice": [base, base], "self_list": self_list}, os.path.join(OUT, "shared.pth"))
    st_save(os.path.join(OUT, "shared.safetensors"), views)

    p = nn.Parameter(randn(2, 3))
    dt = {
        "f32": randn(3, 2), "f64": randn(4).double(), "f16": randn(2, 3).half(), "bf16": randn(5).bfloat16(),
        "i64": torch.tensor([0, -1, 2**40, -2**40, 2**63 - 1, -2**63]), "i32": torch.tensor([-5, 7, 2**31 - 1], dtype=torch.int32),
        "i16": torch.tensor([-32768, 1, 32767], dtype=torch.int16), "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 7, 255], dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3), "param": p,
    }
    torch.save(dt, os.path.join(OUT, "dtypes.pth"))
    st_save(os.path.join(OUT, "dtypes.safetensors"), dt)

    torch.save(torch.arange(5, dtype=torch.int16).storage(), os.path.join(OUT, "storage.pth"))

    # saved from a GPU: the storages' location is 'cuda:0' (patched in, there is no GPU here)
    tag = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(sd, os.path.join(OUT, "cuda.pth"))
    finally:
        torch.serialization.location_tag = tag
    assert b"cuda:0" in zipfile.ZipFile(os.path.join(OUT, "cuda.pth")).read("cuda/data.pkl")

    write_zip64(os.path.join(OUT, "zip64.pth"), read_zip(os.path.join(OUT, "plain.pth")))
    z = torch.load(os.path.join(OUT, "zip64.pth"))
    assert all(torch.equal(z[k], v) for k, v in sd.items())


def bad_files():
    marker = os.path.join(BAD, "PWNED")
    plain = os.path.join(OUT, "plain.pth")
    pdata = open(plain, "rb").read()
    ones = torch.ones(2)

    torch.save({"w": ones, "x": Call(os.system, "touch " + marker)}, os.path.join(BAD, "os_system.pth"))
    torch.save({"w": ones, "x": Call(eval, "__import__('os').system('touch %s')" % marker)}, os.path.join(BAD, "eval.pth"))
    checkpoint_zip(os.path.join(BAD, "popen_p4.pth"), dumps({"x": Call(subprocess.Popen, ["touch", marker])}, 4))
    checkpoint_zip(os.path.join(BAD, "partial.pth"), dumps([1, Call(__import__("functools").partial, print, 1)]))

    # archive damage
    open(os.path.join(BAD, "truncated.pth"), "wb").write(pdata[: len(pdata) // 2])
    e = eocd_offset(pdata)
    cd_past = bytearray(pdata)
    cd_past[e + 16: e + 20] = struct.pack("<I", len(pdata) + 100)
    open(os.path.join(BAD, "cd_past_end.pth"), "wb").write(cd_past)
    cd_off = struct.unpack("<I", pdata[e + 16: e + 20])[0]
    lho = bytearray(pdata)
    lho[cd_off + 42: cd_off + 46] = struct.pack("<I", 0x7FFFFFF0)
    open(os.path.join(BAD, "local_header_past_end.pth"), "wb").write(lho)
    count = bytearray(pdata)
    count[e + 10: e + 12] = struct.pack("<H", 60000)
    count[e + 8: e + 10] = struct.pack("<H", 60000)
    open(os.path.join(BAD, "entry_count.pth"), "wb").write(count)
    write_zip(os.path.join(BAD, "deflated.pth"), read_zip(plain), zipfile.ZIP_DEFLATED)
    write_zip(os.path.join(BAD, "no_data_pkl.pth"), [("archive/readme.txt", b"hello")])
    write_zip(os.path.join(BAD, "big_endian.pth"), read_zip(plain) + [("plain/byteorder", b"big")])
    entries = [(n, d[:8] if n.endswith("/data/0") else d) for n, d in read_zip(plain)]
    write_zip(os.path.join(BAD, "storage_short.pth"), entries)
    entries = [(n, d) for n, d in read_zip(plain) if not n.endswith("/data/0")]
    write_zip(os.path.join(BAD, "storage_missing.pth"), entries)

    # tensors that do not fit their storage, unknown storage types
    st = StorageRef(torch.FloatStorage, "0", 4)
    four = struct.pack("<4f", 1, 2, 3, 4)
    checkpoint_zip(os.path.join(BAD, "offset_beyond.pth"), dumps({"w": rebuild(st, 3, (4,), (1,))}), {"0": four})
    checkpoint_zip(os.path.join(BAD, "stride_beyond.pth"), dumps({"w": rebuild(st, 0, (2, 2), (3, 1))}), {"0": four})
    checkpoint_zip(os.path.join(BAD, "numel_beyond.pth"),
                   dumps({"w": rebuild(StorageRef(torch.FloatStorage, "0", 1 << 40), 0, (4,), (1,))}), {"0": four})
    checkpoint_zip(os.path.join(BAD, "not_storage.pth"), dumps({"w": rebuild(5, 0, (1,), (1,))}))

    class FooStorage:
        pass
    FooStorage.__module__, FooStorage.__qualname__ = "torch", "FooStorage"
    torch.FooStorage = FooStorage
    try:
        checkpoint_zip(os.path.join(BAD, "foo_storage.pth"),
                       dumps({"w": rebuild(StorageRef(FooStorage, "0", 4), 0, (4,), (1,))}), {"0": four})
    finally:
        del torch.FooStorage
    torch.save({"c": torch.zeros(2, dtype=torch.complex64)}, os.path.join(BAD, "complex.pth"))
    checkpoint_zip(os.path.join(BAD, "bare_class.pth"), dumps({"cls": torch.FloatStorage}))
    torch.save(tiny().state_dict(), os.path.join(BAD, "legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save(tiny().state_dict(), os.path.join(BAD, "legacy_p4.pth"), _use_new_zipfile_serialization=False,
               pickle_protocol=4)
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), os.path.join(BAD, "script.pt"))

    # hand-written pickles
    n = 100000
    raw = {
        "deep": b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b".",
        "underflow": b"\x80\x02a.",
        "reduce_underflow": b"\x80\x02R.",
        "memo": b"\x80\x02h\x05.",
        "memo_huge": b"\x80\x02]r\xf0\xff\xff\xff.",
        "huge_len": b"\x80\x02X\xff\xff\xff\x7fabc.",
        "huge_len8": b"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7fabc.",
        "no_stop": b"\x80\x02]q\x00",
        "text_opcode": b"\x80\x02I1\n.",
        "unknown_opcode": b"\x80\x02\xff.",
        "long_wide": b"\x80\x02\x8a\x09" + b"\x00" * 8 + b"\x01.",
        "no_mark": b"\x80\x02t.",
        "setitem_list": b"\x80\x02]K\x01K\x02s.",
        "protocol9": b"\x80\x09N.",
        "empty": b"",
    }
    for name, pkl in raw.items():
        checkpoint_zip(os.path.join(BAD, name + ".pth"), pkl)
    open(os.path.join(BAD, "not_zip.pth"), "wb").write(b"PK\x03\x04" + b"\x00" * 60)
    assert not os.path.exists(marker)


def hub_folders():
    hub = os.path.join(OUT, "hub")
    m = tiny(5)
    m.pretrained_cfg = {
        "architecture": "pth_test_tiny", "tag": "ft_demo", "custom_load": False, "input_size": [3, 32, 32],
        "fixed_input_size": False, "interpolation": "bicubic", "crop_pct": 0.95, "crop_mode": "center",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 1000,
        "pool_size": [1, 1], "first_conv": "conv1", "classifier": "fc", "license": "apache-2.0",
        "hf_hub_id": None,
    }
    m.num_classes, m.num_features, m.global_pool = 5, 4, "avg"
    labels = ["ant", "bee", "cat", "dog", "eel"]
    mcfg = {"label_names": labels, "label_descriptions": {"ant": "an ant", "eel": "an eel"}}
    try:  # timm's own config writer (what save_for_hf / push_to_hf_hub call)
        from timm.models._hub import save_config_for_hf
    except ImportError:
        save_config_for_hf = None

    def save(d, safe, model_args=None):
        """timm's save_for_hf: the state_dict as model.safetensors and/or pytorch_model.bin, config.json."""
        import json
        from pathlib import Path
        os.makedirs(d, exist_ok=True)
        sd = m.state_dict()
        if safe in (True, "both"):
            save_file(dict(sd), os.path.join(d, "model.safetensors"))
        if safe in (False, "both"):
            torch.save(sd, os.path.join(d, "pytorch_model.bin"))
        if save_config_for_hf:
            save_config_for_hf(m, Path(d) / "config.json", model_config=dict(mcfg), model_args=model_args)
            return
        pcfg = {k: v for k, v in m.pretrained_cfg.items() if v is not None}  # the same layout without timm
        cfg = {"architecture": pcfg.pop("architecture"), "num_classes": 5, "num_features": 4, "global_pool": "avg",
               "label_names": labels, "label_descriptions": mcfg["label_descriptions"]}
        if model_args:
            cfg["model_args"] = model_args
        cfg["pretrained_cfg"] = pcfg
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)

    save(os.path.join(hub, "tiny"), True, {"width": 1})
    save(os.path.join(hub, "tiny_bin"), False)
    save(os.path.join(hub, "tiny_both"), "both")
    import json
    # the older layout: no pretrained_cfg, its fields at the top level, "labels"
    old = os.path.join(hub, "tiny_old")
    os.makedirs(old, exist_ok=True)
    torch.save({"module." + k: v for k, v in m.state_dict().items()}, os.path.join(old, "pytorch_model.bin"))
    with open(os.path.join(old, "config.json"), "w") as f:
        json.dump({"architecture": "pth_test_tiny", "num_classes": 5, "num_features": 4, "input_size": [3, 32, 32],
                   "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear", "crop_pct": 0.9,
                   "classifier": "fc", "labels": ["a", "b", "c", "d", "e"]}, f)
    # sharded safetensors
    sh = os.path.join(hub, "tiny_sharded")
    os.makedirs(sh, exist_ok=True)
    sd = m.state_dict()
    keys = list(sd)
    parts = {"model-00001-of-00002.safetensors": keys[:3], "model-00002-of-00002.safetensors": keys[3:]}
    for fname, ks in parts.items():
        save_file({k: sd[k].contiguous() for k in ks}, os.path.join(sh, fname))
    with open(os.path.join(sh, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": {k: fn for fn, ks in parts.items() for k in ks}}, f)
    shutil.copy(os.path.join(hub, "tiny", "config.json"), os.path.join(sh, "config.json"))
    # broken folders
    for name, text in {"no_weights": None, "bad_json": '{"architecture": "x",\n "num_classes": 5,,}',
                       "no_arch": '{"num_classes": 5}', "deep_json": "[" * 300 + "]" * 300}.items():
        d = os.path.join(hub, name)
        os.makedirs(d, exist_ok=True)
        if text is None:
            shutil.copy(os.path.join(hub, "tiny", "config.json"), os.path.join(d, "config.json"))
        else:
            open(os.path.join(d, "config.json"), "w").write(text)
            save_file(dict(m.state_dict()), os.path.join(d, "model.safetensors"))


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(BAD)
    good_files()
    bad_files()
    hub_folders()


if __name__ == "__main__":
    main()
