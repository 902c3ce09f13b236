"""Reading and writing the GGUF container: header, metadata and tensor table.

The reader never touches tensor data and never decodes metadata arrays: a Llama-3 vocabulary
has 128k token strings and 280k merges, which the ``gguf`` package parses eagerly (seconds);
here an array is skipped by reading only its string lengths, and decoded on request.
Layout (version 2 and 3, little endian): magic ``GGUF``, u32 version, u64 tensor count,
u64 metadata count, the metadata pairs, the tensor infos, padding to the alignment, data.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from launcher.errors import LauncherError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types.
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = (
    range(13)
)
_SCALAR_FORMATS: dict[int, str] = {
    UINT8: "<B",
    INT8: "<b",
    UINT16: "<H",
    INT16: "<h",
    UINT32: "<I",
    INT32: "<i",
    FLOAT32: "<f",
    BOOL: "<?",
    UINT64: "<Q",
    INT64: "<q",
    FLOAT64: "<d",
}

# ggml tensor types: (block size in elements, bytes per block). Only the types a GGUF model
# commonly holds; an unknown type makes the reader fail clearly rather than guess.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}
GGML_TYPE_IDS: dict[str, int] = {name: type_id for type_id, (name, _, _) in GGML_TYPES.items()}


def tensor_nbytes(type_id: int, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of ggml type ``type_id`` with ``shape`` (ggml order, ne0 first)."""
    if type_id not in GGML_TYPES:
        raise ValueError(f"unknown ggml tensor type {type_id}")
    _, block, block_bytes = GGML_TYPES[type_id]
    n = 1
    for dim in shape:
        n *= dim
    if shape and shape[0] % block:
        raise ValueError(f"row of {shape[0]} elements is not a multiple of the block {block}")
    return n // block * block_bytes


@dataclass(frozen=True)
class ArrayRef:
    """A metadata array left undecoded: its element type, length and where it starts."""

    item_type: int
    count: int
    offset: int


@dataclass(frozen=True)
class TensorSpec:
    """A tensor: name, ggml shape (ne0 first) and ggml type."""

    name: str
    shape: tuple[int, ...]
    type_id: int

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.type_id, self.shape)

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.type_id][0]


@dataclass(frozen=True)
class TensorInfo(TensorSpec):
    """One row of a file's tensor table; ``offset`` is relative to the data section."""

    offset: int = 0


MetaValue = int | float | bool | str | ArrayRef


@dataclass
class GGUFHeader:
    """Everything before the tensor data of one GGUF file."""

    path: Path
    version: int
    metadata: dict[str, MetaValue]
    raw_metadata: dict[str, bytes] = field(repr=False)
    tensors: list[TensorInfo]
    data_offset: int
    file_size: int
    bytes_read: int

    @property
    def alignment(self) -> int:
        value = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        return value if isinstance(value, int) and value > 0 else DEFAULT_ALIGNMENT

    def read_array(self, key: str) -> list[MetaValue]:
        """Decode the array stored under ``key`` (maps the file again)."""
        ref = self.metadata[key]
        if not isinstance(ref, ArrayRef):
            raise TypeError(f"{key} is not an array")
        with self.path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            reader = _Reader(buf, self.path, ref.offset)
            return [reader.value(ref.item_type) for _ in range(ref.count)]


class _Reader:
    """Little-endian reads from a memory map; a short file becomes a clear error."""

    _U64 = struct.Struct("<Q")

    def __init__(self, buf: mmap.mmap | bytes, path: Path, pos: int = 0) -> None:
        self.buf = buf
        self.path = path
        self.pos = pos

    def truncated(self) -> LauncherError:
        return LauncherError(
            f"{self.path} ends in the middle of its GGUF header: the file is truncated or still "
            "downloading; download it again."
        )

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise self.truncated()
        data = self.buf[self.pos : end]
        self.pos = end
        return bytes(data)

    def scalar(self, value_type: int) -> int | float | bool:
        fmt = _SCALAR_FORMATS[value_type]
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise self.truncated()
        value: int | float | bool = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def u32(self) -> int:
        return int(self.scalar(UINT32))

    def u64(self) -> int:
        return int(self.scalar(UINT64))

    def string(self) -> str:
        return self.take(self.u64()).decode("utf-8", errors="replace")

    def value(self, value_type: int) -> MetaValue:
        if value_type == STRING:
            return self.string()
        if value_type == ARRAY:
            item_type = self.u32()
            count = self.u64()
            ref = ArrayRef(item_type, count, self.pos)
            self.skip_array(item_type, count)
            return ref
        if value_type not in _SCALAR_FORMATS:
            raise LauncherError(
                f"{self.path} has an unknown GGUF value type {value_type}: it is corrupt or "
                "from a newer GGUF version; download or convert it again."
            )
        return self.scalar(value_type)

    def skip_array(self, item_type: int, count: int) -> None:
        if item_type == STRING:
            # Each length precedes its string, so every one must be read: a tight loop over
            # the memory map (tens of milliseconds for a 400k-entry vocabulary and merges).
            unpack = self._U64.unpack_from
            buf, pos, size = self.buf, self.pos, len(self.buf)
            try:
                for _ in range(count):
                    pos += 8 + unpack(buf, pos)[0]
            except struct.error as err:
                raise self.truncated() from err
            if pos > size:
                raise self.truncated()
            self.pos = pos
        elif item_type == ARRAY:
            for _ in range(count):
                self.value(ARRAY)
        elif item_type in _SCALAR_FORMATS:
            self.pos += count * struct.calcsize(_SCALAR_FORMATS[item_type])
            if self.pos > len(self.buf):
                raise self.truncated()
        else:
            raise LauncherError(f"{self.path} has a metadata array of unknown type {item_type}.")


def read_header(path: Path, *, raw_prefixes: tuple[str, ...] = ()) -> GGUFHeader:
    """Read the metadata and tensor table of one GGUF file, never its tensor data.

    The file is memory-mapped and only the header pages are touched (``bytes_read``). The wire
    bytes of metadata whose key starts with one of ``raw_prefixes`` are kept in
    ``raw_metadata`` (to copy a tokenizer into another file). Raises ``LauncherError`` for a
    missing, non-GGUF, truncated or corrupt file.
    """
    if not path.exists():
        raise LauncherError(f"{path} does not exist; check the path to the model file.")
    if not path.is_file():
        raise LauncherError(f"{path} is not a file; give the path of a .gguf model file.")
    file_size = path.stat().st_size
    with path.open("rb") as f:
        if file_size < 24:
            head = f.read()
            if head[:4] != MAGIC:
                raise _not_gguf(path)
            raise _Reader(head, path).truncated()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, path, file_size, raw_prefixes)


def _not_gguf(path: Path) -> LauncherError:
    return LauncherError(
        f"{path} is not a GGUF file (it does not start with 'GGUF'); give a .gguf model "
        "converted for llama.cpp."
    )


def _parse(buf: mmap.mmap, path: Path, file_size: int, raw_prefixes: tuple[str, ...]) -> GGUFHeader:
    reader = _Reader(buf, path)
    if reader.take(4) != MAGIC:
        raise _not_gguf(path)
    version = reader.u32()
    if version not in (2, 3):
        raise LauncherError(
            f"{path} is GGUF version {version}, which this tool cannot read; convert it "
            "again with a current llama.cpp."
        )
    n_tensors = reader.u64()
    n_kv = reader.u64()
    if n_tensors > 1 << 24 or n_kv > 1 << 20:
        raise LauncherError(f"{path} has an impossible GGUF header; the file is corrupt.")
    metadata: dict[str, MetaValue] = {}
    raw: dict[str, bytes] = {}
    for _ in range(n_kv):
        start = reader.pos
        key = reader.string()
        metadata[key] = reader.value(reader.u32())
        if raw_prefixes and key.startswith(raw_prefixes):
            raw[key] = bytes(buf[start : reader.pos])
    tensors = []
    for _ in range(n_tensors):
        name = reader.string()
        n_dims = reader.u32()
        if n_dims > 8:
            raise LauncherError(f"{path} has a tensor with {n_dims} dimensions; it is corrupt.")
        shape = tuple(reader.u64() for _ in range(n_dims))
        type_id = reader.u32()
        offset = reader.u64()
        if type_id not in GGML_TYPES:
            raise LauncherError(
                f"{path}: tensor {name} has ggml type {type_id}, unknown to this tool; "
                "use a model in a common quantization (Q4_K_M, Q8_0, F16)."
            )
        tensors.append(TensorInfo(name, shape, type_id, offset))
    header_end = reader.pos
    alignment_value = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    alignment = alignment_value if isinstance(alignment_value, int) else DEFAULT_ALIGNMENT
    data_offset = _pad(header_end, alignment)
    header = GGUFHeader(path, version, metadata, raw, tensors, data_offset, file_size, header_end)
    data_end = max((t.offset + t.nbytes for t in tensors), default=0)
    if tensors and data_offset + data_end > file_size:
        raise LauncherError(
            f"{path} is truncated: its tensors need {data_offset + data_end} bytes but the file "
            f"has {file_size}; download it again."
        )
    return header


def _pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


# --- writing -------------------------------------------------------------------------------


def _pack_string(s: str) -> bytes:
    data = s.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def pack_kv(key: str, value: int | float | bool | str, value_type: int) -> bytes:
    """One metadata pair in GGUF's wire form."""
    if value_type == STRING:
        assert isinstance(value, str)
        body = _pack_string(value)
    else:
        body = struct.pack(_SCALAR_FORMATS[value_type], value)
    return _pack_string(key) + struct.pack("<I", value_type) + body


def pack_array(key: str, values: Iterable[int | float], item_type: int) -> bytes:
    """A metadata array of scalars in GGUF's wire form."""
    items = list(values)
    fmt = _SCALAR_FORMATS[item_type]
    body = b"".join(struct.pack(fmt, v) for v in items)
    return _pack_string(key) + struct.pack("<IIQ", ARRAY, item_type, len(items)) + body


def write_header(
    f: BinaryIO, metadata: list[bytes], tensors: list[TensorSpec], alignment: int
) -> list[int]:
    """Write the header, metadata (already packed) and tensor table, padded to the data.

    Returns each tensor's offset from the start of the data section.
    """
    offsets = []
    cursor = 0
    for t in tensors:
        offsets.append(cursor)
        cursor = _pad(cursor + t.nbytes, alignment)
    f.write(MAGIC + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for kv in metadata:
        f.write(kv)
    for t, offset in zip(tensors, offsets, strict=True):
        f.write(_pack_string(t.name) + struct.pack("<I", len(t.shape)))
        f.write(struct.pack(f"<{len(t.shape)}Q", *t.shape))
        f.write(struct.pack("<IQ", t.type_id, offset))
    f.write(b"\0" * (_pad(f.tell(), alignment) - f.tell()))
    return offsets


def data_size(tensors: list[TensorSpec], alignment: int) -> int:
    """Bytes of the data section for ``tensors`` (each padded to ``alignment``)."""
    return sum(_pad(t.nbytes, alignment) for t in tensors)


def iter_split_paths(first: Path) -> Iterator[Path]:
    """The part files named by a ``NAME-00001-of-0000N.gguf`` path, in order."""
    stem = first.name
    marker = "-00001-of-"
    if marker not in stem:
        yield first
        return
    prefix, rest = stem.split(marker, 1)
    count_text = rest.removesuffix(".gguf")
    if not count_text.isdigit():
        yield first
        return
    count = int(count_text)
    for i in range(1, count + 1):
        yield first.with_name(f"{prefix}-{i:05d}-of-{count:05d}.gguf")
