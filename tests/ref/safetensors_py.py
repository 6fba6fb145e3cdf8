"""safetensors_py.py: a small, dependency-free (json + struct + numpy) reader and writer for the
safetensors format, used by the PyTorch reference (tests/ref/t5gemma_ref.py).

Format (the public safetensors layout): 8 bytes little-endian u64 N = header length, then N bytes
of UTF-8 JSON {name: {"dtype": D, "shape": [..], "data_offsets": [begin, end]}, optional
"__metadata__": {str: str}}, then the data buffer; offsets are relative to the start of the data
buffer, tensors are C-contiguous little-endian. The writer pads the header with spaces to a
multiple of 8 bytes and stores tensors in sorted-name order without gaps.

Supported dtypes: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL.  BF16 has no numpy type:
it is read as float32 (exact) and written from float32 with round-to-nearest-even.

A checkpoint directory holds either model.safetensors or model.safetensors.index.json
({"weight_map": {name: shard file}}) plus its shards (Hugging Face convention).

API:
  load_file(path)                      -> dict name -> np.ndarray (BF16 returned as float32)
  load_file_dtypes(path)               -> dict name -> stored dtype string
  save_file(tensors, path, metadata)   tensors: name -> np.ndarray, or (np.ndarray, "BF16"/"F16"/...)
  load_dir(dir)                        -> dict name -> np.ndarray over a (sharded) checkpoint dir
  save_dir(tensors, dir, max_shard_bytes=None)  single file, or shards + index if the limit is hit
Errors raise SafetensorsError with the file name and what was wrong.
"""
import json
import os
import struct

import numpy as np

_NP = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
         "BOOL": 1}
_FROM_NP = {np.dtype(v).str.lstrip("<>|="): k for k, v in _NP.items()}


class SafetensorsError(Exception):
    pass


def bf16_bits_to_f32(bits):
    """uint16 array of bfloat16 bit patterns -> float32 array (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x):
    """float32 array -> uint16 bfloat16 bit patterns, round to nearest even; NaN stays NaN."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    out = r.astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def _read_header(f, path):
    raw = f.read(8)
    if len(raw) != 8:
        raise SafetensorsError("%s: file shorter than the 8-byte header length" % path)
    (n,) = struct.unpack("<Q", raw)
    size = os.fstat(f.fileno()).st_size
    if n > size - 8 or n > 100 * 1024 * 1024:
        raise SafetensorsError("%s: header length %d does not fit in a file of %d bytes" % (path, n, size))
    try:
        hdr = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise SafetensorsError("%s: header is not valid JSON: %s" % (path, e))
    if not isinstance(hdr, dict):
        raise SafetensorsError("%s: header is not a JSON object" % path)
    return hdr, 8 + n, size


def _entries(hdr, path, data_start, size):
    out = []
    for name, e in hdr.items():
        if name == "__metadata__":
            continue
        try:
            dt, shape, (b, e_) = e["dtype"], [int(s) for s in e["shape"]], e["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError("%s: tensor %r: entry needs dtype, shape, data_offsets; found %r" % (path, name, e))
        if dt not in _SIZE:
            raise SafetensorsError("%s: tensor %r: dtype %r not supported (expected one of %s)"
                                   % (path, name, dt, ", ".join(sorted(_SIZE))))
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if e_ - b != count * _SIZE[dt] or b < 0 or data_start + e_ > size:
            raise SafetensorsError("%s: tensor %r: data_offsets [%d, %d] do not match %s %s (%d bytes) "
                                   "or exceed the file" % (path, name, b, e_, dt, shape, count * _SIZE[dt]))
        out.append((name, dt, shape, b, e_))
    return out


def load_file_dtypes(path):
    with open(path, "rb") as f:
        hdr, ds, size = _read_header(f, path)
    return {n: dt for n, dt, _, _, _ in _entries(hdr, path, ds, size)}


def load_file(path):
    with open(path, "rb") as f:
        hdr, ds, size = _read_header(f, path)
        ents = _entries(hdr, path, ds, size)
        out = {}
        for name, dt, shape, b, e in ents:
            f.seek(ds + b)
            buf = f.read(e - b)
            if dt == "BF16":
                arr = bf16_bits_to_f32(np.frombuffer(buf, dtype="<u2"))
            else:
                arr = np.frombuffer(buf, dtype=np.dtype(_NP[dt]).newbyteorder("<")).astype(_NP[dt])
            out[name] = arr.reshape(shape).copy()
    return out


def save_file(tensors, path, metadata=None):
    """Write tensors (name -> array or (array, dtype string)) atomically (temp name + rename)."""
    hdr, blobs, off = {}, [], 0
    for name in sorted(tensors):
        v = tensors[name]
        arr, dt = (v if isinstance(v, tuple) else (v, None))
        arr = np.asarray(arr)
        if dt is None:
            dt = _FROM_NP.get(arr.dtype.str.lstrip("<>|="))
            if dt is None:
                raise SafetensorsError("%s: tensor %r: numpy dtype %s has no safetensors dtype" % (path, name, arr.dtype))
        if dt == "BF16":
            data = f32_to_bf16_bits(arr).astype("<u2").tobytes()
        elif dt in _NP:
            data = np.ascontiguousarray(arr, dtype=np.dtype(_NP[dt]).newbyteorder("<")).tobytes()
        else:
            raise SafetensorsError("%s: tensor %r: unknown dtype %r" % (path, name, dt))
        hdr[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    if metadata:
        hdr["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(hdr, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp%d" % os.getpid()
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def load_dir(d):
    """Load a checkpoint directory (model.safetensors or a sharded index), or a single file path."""
    if os.path.isfile(d):
        return load_file(d)
    single = os.path.join(d, "model.safetensors")
    index = os.path.join(d, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                wm = json.load(f)["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise SafetensorsError("%s: expected a JSON object with \"weight_map\": %s" % (index, e))
        out = {}
        for shard in sorted(set(wm.values())):
            part = load_file(os.path.join(d, shard))
            for name, arr in part.items():
                if wm.get(name) != shard:
                    raise SafetensorsError("%s: tensor %r found in %s but weight_map says %r"
                                           % (index, name, shard, wm.get(name)))
                out[name] = arr
        missing = [n for n in wm if n not in out]
        if missing:
            raise SafetensorsError("%s: %d tensors listed in weight_map are absent from their shards, e.g. %r"
                                   % (index, len(missing), missing[0]))
        return out
    if os.path.isfile(single):
        return load_file(single)
    raise SafetensorsError("%s: no model.safetensors or model.safetensors.index.json" % d)


def save_dir(tensors, d, max_shard_bytes=None, metadata=None):
    """Write model.safetensors, or (when max_shard_bytes is given and exceeded) Hugging Face style
    shards model-0000k-of-0000n.safetensors plus model.safetensors.index.json."""
    os.makedirs(d, exist_ok=True)
    def nbytes(v):
        arr, dt = (v if isinstance(v, tuple) else (v, None))
        arr = np.asarray(arr)
        return arr.size * (_SIZE[dt] if dt else arr.dtype.itemsize)
    total = sum(nbytes(v) for v in tensors.values())
    if not max_shard_bytes or total <= max_shard_bytes:
        save_file(tensors, os.path.join(d, "model.safetensors"), metadata)
        return
    shards, cur, cur_b = [], {}, 0
    for name in sorted(tensors):
        b = nbytes(tensors[name])
        if cur and cur_b + b > max_shard_bytes:
            shards.append(cur)
            cur, cur_b = {}, 0
        cur[name] = tensors[name]
        cur_b += b
    if cur:
        shards.append(cur)
    wm = {}
    for k, s in enumerate(shards):
        fn = "model-%05d-of-%05d.safetensors" % (k + 1, len(shards))
        save_file(s, os.path.join(d, fn), metadata)
        for name in s:
            wm[name] = fn
    tmp = os.path.join(d, "model.safetensors.index.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(d, "model.safetensors.index.json"))
