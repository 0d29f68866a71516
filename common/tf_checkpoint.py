"""Read TensorFlow's V2 checkpoints (the `.index` + `.data-XXXXX-of-YYYYY` "tensor bundle") without TensorFlow.

    PREFIX.index                  an SSTable (LevelDB's table format) mapping each tensor's name to a
                                  BundleEntryProto (dtype, shape, shard, offset, size, masked crc32c); the
                                  entry under the empty key is the BundleHeaderProto (shard count, endianness)
    PREFIX.data-00000-of-00001    the tensors' raw bytes, row-major, back to back

Usage:
    ckpt = TFCheckpoint("DVBPR_auc_100_39728.ckpt")    # parses the index only
    ckpt.variables()                                   # {name: (numpy dtype, shape)}
    ckpt["DVBPR/wc1"]                                  # reads one tensor, checks its size and crc32c
    read_checkpoint(prefix)                            # every numeric tensor, eagerly

Anything unexpected raises TFCheckpointError (a ValueError, and a CheckpointError, which a stage's command line
prints as one line) that says what and where. The SSTable blocks' checksums are checked as well as each tensor's;
string tensors, dtypes numpy lacks (bfloat16, ...) and sliced (partitioned) variables are listed in `unsupported`
and refused, as such, when read or required.

An index is untrusted input, so what parsing it may cost is fixed up front and refused, in one line, before it is
spent (the original's checkpoints hold under 200 tensors, in an index of a few KB):
    MAX_INDEX_BYTES    a larger .index file is refused unread
    MAX_ENTRIES        tensors, and blocks, in the index
    MAX_KEY_BYTES      the bytes of all keys (tensor names) together, counted before each key is built: keys are
                       prefix-compressed, so a few bytes of file can stand for a long key
    MAX_RANK, MAX_SHARDS   dimensions of a shape (TensorFlow's own limit), data shards
Each data block is read once: the blocks must follow one another in the file without overlapping, and the keys
must increase strictly, as LevelDB writes them. A shape's element count is a product of Python integers, so a
forged shape cannot wrap around to a small size; a tensor's size must then be that count times its dtype's size
and lie inside its shard. Parsing an index thus costs time linear in its size and some 10 MB of memory at most
(MAX_ENTRIES tensors with their names); reading a tensor allocates its size, which its shard's length bounds.
"""
import math
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from common.errors import CheckpointError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48   # two block handles (varints) padded to 40 bytes, then the 8-byte magic
BLOCK_TRAILER = 5  # compression type (1 byte), masked crc32c of block + type (4 bytes)
CRC_MASK_DELTA = 0xA282EAD8
READ_CHUNK = 1 << 24

MAX_INDEX_BYTES = 16 << 20
MAX_ENTRIES = 10_000
MAX_KEY_BYTES = 1 << 20   # MAX_ENTRIES names of 100 bytes
MAX_RANK = 254          # TensorShape's limit
MAX_SHARDS = 1024
ADDRESSABLE = 1 << 63   # numpy refuses an array whose dimensions (zeros aside) times its itemsize reach this

# TensorFlow DataType enum -> numpy (types.proto). The others have no numpy equivalent and are refused.
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 8: np.complex64,
          9: np.int64, 10: np.bool_, 17: np.uint16, 18: np.complex128, 19: np.float16, 22: np.uint32, 23: np.uint64}
UNSUPPORTED_DTYPES = {0: "DT_INVALID", 11: "qint8", 12: "quint8", 13: "qint32", 14: "bfloat16",
                      15: "qint16", 16: "quint16", 20: "resource", 21: "variant"}
DT_STRING = 7


class TFCheckpointError(CheckpointError, ValueError):
    """A TensorFlow checkpoint is missing, corrupted, or holds something this reader does not support."""


# ---------------------------------------------------------------- crc32c

def crc32c_extend(crc, chunk):
    """crc32c of (what `crc` covered) + chunk; Google's C implementation, since pure Python is ~1000x slower."""
    try:
        import google_crc32c
    except ImportError as exc:
        raise TFCheckpointError("checking a TensorFlow checkpoint's checksums needs the google-crc32c package "
                                "(pip install google-crc32c), or pass verify=False") from exc
    return google_crc32c.extend(crc, bytes(chunk))


def mask(crc):
    """LevelDB's and TensorFlow's stored form of a crc32c: rotated right by 15 bits plus a constant."""
    return (((crc >> 15) | (crc << 17)) + CRC_MASK_DELTA) & 0xFFFFFFFF


# ---------------------------------------------------------------- protobuf wire format

def read_varint(buf, pos):
    result, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise TFCheckpointError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result >> 64:
                raise TFCheckpointError("a varint of more than 64 bits")
            return result, pos
        shift += 7


def as_int(value):
    """A numeric field as a signed 64-bit integer (how int32 and int64 fields encode negatives)."""
    if isinstance(value, bytes):
        raise TFCheckpointError("malformed protobuf message: a length-delimited value where a number belongs")
    return value - (1 << 64) if value >= 1 << 63 else value


def as_message(value):
    if not isinstance(value, bytes):
        raise TFCheckpointError("malformed protobuf message: a number where a sub-message belongs")
    return value


def proto_fields(buf):
    """The (field number, value) pairs of a protobuf message: an int for varint and fixed fields, bytes for
    length-delimited ones (sub-messages, strings, packed arrays)."""
    fields, pos = [], 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            value, pos = bytes(buf[pos:pos + length]), pos + length
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise TFCheckpointError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise TFCheckpointError("truncated protobuf message")
        fields.append((number, value))
    return fields


def parse_header(buf):
    """BundleHeaderProto: num_shards = 1, endianness = 2 (0 little, 1 big), version = 3 (VersionDef)."""
    header = {"num_shards": 0, "big_endian": False, "min_consumer": 0}
    for number, value in proto_fields(buf):
        if number == 1:
            header["num_shards"] = as_int(value)
        elif number == 2:
            header["big_endian"] = as_int(value) == 1
        elif number == 3:
            version = dict(proto_fields(as_message(value)))  # VersionDef: producer = 1, min_consumer = 2
            header["min_consumer"] = as_int(version.get(2, 0))
    return header


def parse_shape(buf):
    """TensorShapeProto: repeated Dim dim = 2 (Dim.size = 1), bool unknown_rank = 3."""
    dims = []
    for number, value in proto_fields(buf):
        if number == 2:
            if len(dims) == MAX_RANK:
                raise TFCheckpointError(f"a shape of more than {MAX_RANK} dimensions")
            dims.append(as_int(dict(proto_fields(as_message(value))).get(1, 0)))
        elif number == 3 and as_int(value):
            raise TFCheckpointError("tensor of unknown rank")
    return tuple(dims)


def parse_entry(buf):
    """BundleEntryProto: dtype = 1, shape = 2, shard_id = 3, offset = 4, size = 5, crc32c = 6 (fixed32),
    slices = 7. proto3 leaves zero-valued fields out, hence the defaults."""
    entry = {"tf_dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "crc": 0, "sliced": False}
    for number, value in proto_fields(buf):
        if number == 1:
            entry["tf_dtype"] = as_int(value)
        elif number == 2:
            entry["shape"] = parse_shape(as_message(value))
        elif number == 3:
            entry["shard"] = as_int(value)
        elif number == 4:
            entry["offset"] = as_int(value)
        elif number == 5:
            entry["size"] = as_int(value)
        elif number == 6:
            entry["crc"] = as_int(value)
        elif number == 7:
            entry["sliced"] = True
    return entry


# ---------------------------------------------------------------- SSTable

def block_handle(buf, pos):
    offset, pos = read_varint(buf, pos)
    size, pos = read_varint(buf, pos)
    return (offset, size), pos


def read_block(table, handle, what, verify):
    offset, size = handle
    end = offset + size + BLOCK_TRAILER
    if end > len(table):
        raise TFCheckpointError(f"{what} at bytes {offset}..{end} runs past the end of the index ({len(table)} bytes)")
    stored = struct.unpack_from("<I", table, offset + size + 1)[0]
    if verify and mask(crc32c_extend(0, table[offset:offset + size + 1])) != stored:
        raise TFCheckpointError(f"{what} fails its checksum: the index is corrupted")
    compression = table[offset + size]
    if compression == 1:
        raise TFCheckpointError(f"{what} is snappy-compressed, which this reader does not support "
                                "(TensorFlow writes checkpoint indexes uncompressed)")
    if compression != 0:
        raise TFCheckpointError(f"{what} has unknown compression type {compression}")
    return table[offset:offset + size]


class Budget:
    """The entries and key bytes an index may still spend (MAX_ENTRIES, MAX_KEY_BYTES), charged before each key
    is built."""

    def __init__(self):
        self.entries, self.key_bytes = MAX_ENTRIES, MAX_KEY_BYTES

    def charge(self, key_length, what):
        self.entries -= 1
        self.key_bytes -= key_length
        if self.entries < 0:
            raise TFCheckpointError(f"{what}: more than {MAX_ENTRIES:,} entries in the index, the most this reader "
                                    "takes (the index is corrupted or not a model's)")
        if self.key_bytes < 0:
            raise TFCheckpointError(f"{what}: keys of more than {MAX_KEY_BYTES:,} bytes in all, the most this "
                                    "reader takes (the index is corrupted or not a model's)")


def block_entries(block, what, budget):
    """The (key, value) pairs of a block. Keys are prefix-compressed: each entry stores how many bytes it shares
    with the previous key, then the rest; the restart array at the end only serves seeking, so it is skipped."""
    if len(block) < 4:
        raise TFCheckpointError(f"{what} is too short")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 * (num_restarts + 1)
    if limit < 0:
        raise TFCheckpointError(f"{what} has a bad restart count ({num_restarts})")
    entries, key, pos = [], b"", 0
    while pos < limit:
        shared, pos = read_varint(block, pos)
        unshared, pos = read_varint(block, pos)
        value_size, pos = read_varint(block, pos)
        if shared > len(key) or pos + unshared + value_size > limit:
            raise TFCheckpointError(f"{what} has a malformed entry at byte {pos}")
        budget.charge(shared + unshared, what)
        key = key[:shared] + bytes(block[pos:pos + unshared])
        pos += unshared
        entries.append((key, bytes(block[pos:pos + value_size])))
        pos += value_size
    return entries


def table_entries(table, verify):
    """Every (key, value) of an SSTable, in key order: footer -> index block -> data blocks, each data block read
    once, in file order."""
    if len(table) < FOOTER_SIZE:
        raise TFCheckpointError(f"the index is truncated ({len(table)} bytes, less than its {FOOTER_SIZE}-byte footer)")
    footer = table[-FOOTER_SIZE:]
    if struct.unpack_from("<Q", footer, 40)[0] != TABLE_MAGIC:
        raise TFCheckpointError("the index has a bad magic number: not an SSTable, or truncated or corrupted")
    _, pos = block_handle(footer, 0)  # the meta-index block: no filters in a checkpoint
    index_handle, _ = block_handle(footer, pos)
    budget = Budget()
    index = read_block(table, index_handle, "the index block", verify)
    entries, block_end = [], 0
    for i, (_, value) in enumerate(block_entries(index, "the index block", budget)):
        handle, _ = block_handle(value, 0)
        what = f"data block {i}"
        if handle[0] < block_end:
            raise TFCheckpointError(f"{what} at byte {handle[0]} overlaps the block before it, which ends at byte "
                                    f"{block_end}: the index is corrupted")
        for key, value in block_entries(read_block(table, handle, what, verify), what, budget):
            if entries and key <= entries[-1][0]:
                raise TFCheckpointError(f"{what}: the keys are out of order: the index is corrupted")
            entries.append((key, value))
        block_end = handle[0] + handle[1] + BLOCK_TRAILER
    return entries


# ---------------------------------------------------------------- the checkpoint

def read_index(path):
    """The bytes of an .index file, refused unread beyond MAX_INDEX_BYTES."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_INDEX_BYTES:
                raise TFCheckpointError(f"{path} has {size:,} bytes, more than the {MAX_INDEX_BYTES:,} a checkpoint "
                                        "index may have here (the original's have a few KB)")
            return f.read(size)
    except FileNotFoundError:
        raise TFCheckpointError(f"not a TensorFlow checkpoint: no {path}") from None
    except OSError as exc:
        raise TFCheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None


class TFCheckpoint(Mapping):
    """A lazy mapping {tensor name: np.ndarray} over a TF V2 checkpoint; only the index is read up front."""

    def __init__(self, prefix, verify=True):
        self.prefix, self.verify = str(prefix), verify
        index_path = Path(self.prefix + ".index")
        table = memoryview(read_index(index_path))
        try:
            entries = table_entries(table, verify)
            if not entries or entries[0][0] != b"":
                raise TFCheckpointError("the index has no bundle header")
            self.header = parse_header(entries[0][1])
            self.entries = {}
            for key, value in entries[1:]:
                name = key.decode()
                try:
                    self.entries[name] = parse_entry(value)
                except TFCheckpointError as exc:
                    raise TFCheckpointError(f"{name}: {exc}") from None
        except UnicodeDecodeError:
            raise TFCheckpointError(f"{index_path}: a tensor name is not UTF-8: the index is corrupted") from None
        except TFCheckpointError as exc:
            raise TFCheckpointError(f"{index_path}: {exc}") from None
        self.check_header()
        self.unsupported = {name: why for name, entry in self.entries.items() if (why := self.refusal(entry))}
        for name, entry in self.entries.items():
            if name not in self.unsupported:
                self.check_entry(name, entry)
        self.check_shards()

    def check_header(self):
        if not 1 <= self.header["num_shards"] <= MAX_SHARDS:
            raise TFCheckpointError(f"{self.prefix}.index: bad shard count {self.header['num_shards']} (this reader "
                                    f"takes 1 to {MAX_SHARDS})")
        if self.header["min_consumer"] > 1:
            raise TFCheckpointError(f"{self.prefix}.index: bundle format version {self.header['min_consumer']} is "
                                    "newer than this reader (1)")

    def refusal(self, entry):
        if entry["sliced"]:
            return "saved in slices (a partitioned variable)"
        if entry["tf_dtype"] == DT_STRING:
            return "a string tensor"
        if entry["tf_dtype"] not in DTYPES:
            known = UNSUPPORTED_DTYPES.get(entry["tf_dtype"])
            return f"of TensorFlow dtype {entry['tf_dtype']}{f' ({known})' if known else ''}, which numpy lacks"
        return None

    def check_entry(self, name, entry):
        """The entry's shard, offset, shape and size agree with one another; sizes as Python integers."""
        where = f"{self.prefix}.index: {name}"
        if not 0 <= entry["shard"] < self.header["num_shards"]:
            raise TFCheckpointError(f"{where}: shard {entry['shard']} of a {self.header['num_shards']}-shard "
                                    "checkpoint")
        if entry["offset"] < 0:
            raise TFCheckpointError(f"{where}: negative offset {entry['offset']} into its data shard: the index is "
                                    "corrupted")
        shape, itemsize = entry["shape"], self.dtype(name).itemsize
        if min(shape, default=0) < 0:
            raise TFCheckpointError(f"{where}: negative dimension in shape {list(shape)}: the index is corrupted")
        expected = math.prod(shape) * itemsize
        if entry["size"] != expected:
            raise TFCheckpointError(f"{where}: {entry['size']} bytes stored for shape {list(shape)} of "
                                    f"{self.dtype(name)} ({expected} bytes): the index is corrupted")
        if math.prod(size for size in shape if size) * itemsize >= ADDRESSABLE:  # an empty tensor's other sizes
            raise TFCheckpointError(f"{where}: shape {list(shape)} of {self.dtype(name)} is beyond what an array "
                                    "can address: the index is corrupted")

    def check_shards(self):
        """Every shard is there and long enough for the tensors it should hold."""
        furthest = {}  # shard -> (end, name) of the tensor that reaches furthest into it
        for name, entry in self.entries.items():
            if name not in self.unsupported:
                reach = entry["offset"] + entry["size"], name
                furthest[entry["shard"]] = max(furthest.get(entry["shard"], reach), reach)
        for shard in range(self.header["num_shards"]):
            path = self.shard_path(shard)
            if not path.is_file():
                raise TFCheckpointError(f"missing data shard {path}")
            have, (end, name) = path.stat().st_size, furthest.get(shard, (0, ""))
            if end > have:
                entry = self.entries[name]
                raise TFCheckpointError(f"data shard {path} is truncated: {name} needs bytes "
                                        f"{entry['offset']}..{end}, the file has {have}")

    def dtype(self, name):
        byte_order = ">" if self.header["big_endian"] else "<"
        return np.dtype(DTYPES[self.entries[name]["tf_dtype"]]).newbyteorder(byte_order)

    def shard_path(self, shard):
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.header['num_shards']:05d}")

    def variables(self):
        """{name: (numpy dtype, shape)} of every tensor this reader can read."""
        return {name: (self.dtype(name).newbyteorder("="), entry["shape"])
                for name, entry in self.entries.items() if name not in self.unsupported}

    def read(self, name):
        if name not in self.entries:
            raise KeyError(name)
        if name in self.unsupported:
            raise TFCheckpointError(f"{name} is {self.unsupported[name]}: this reader does not support it")
        entry = self.entries[name]
        path = self.shard_path(entry["shard"])
        data, crc = bytearray(entry["size"]), 0
        try:
            with open(path, "rb") as f:
                f.seek(entry["offset"])
                for start in range(0, entry["size"], READ_CHUNK):  # chunks keep the peak memory near one tensor
                    want = min(READ_CHUNK, entry["size"] - start)
                    chunk = f.read(want)
                    if len(chunk) != want:
                        raise TFCheckpointError(f"data shard {path} is truncated: {name} runs past its end")
                    data[start:start + want] = chunk
                    crc = crc32c_extend(crc, chunk) if self.verify else 0
        except OSError as exc:
            raise TFCheckpointError(f"cannot read {name} from data shard {path}: {exc}") from exc
        if self.verify and mask(crc) != entry["crc"]:
            raise TFCheckpointError(f"{name} fails its checksum in {path}: the data is corrupted")
        array = np.frombuffer(data, dtype=self.dtype(name)).reshape(entry["shape"])
        return array.astype(array.dtype.newbyteorder("="), copy=False)

    def __getitem__(self, name):
        return self.read(name)

    def __contains__(self, name):  # Mapping's default would read the tensor
        return name in self.entries and name not in self.unsupported

    def __iter__(self):
        return (name for name in self.entries if name not in self.unsupported)

    def __len__(self):
        return len(self.entries) - len(self.unsupported)


def checkpoint_prefix(path):
    """The prefix of a checkpoint given by its prefix or by one of its files (.index, .data-*, .meta)."""
    path = Path(path)
    name = re.sub(r"\.(index|meta|data-\d{5}-of-\d{5})$", "", path.name)
    return path.with_name(name) if name else path


def prefix_step(prefix):
    """The global step at the end of a prefix, as TF's Saver and the original code named their checkpoints
    (DVBPR_auc_100_39728.ckpt -> 39728, DCGAN.model-311502 -> 311502), else None."""
    found = re.search(r"[-_](\d+)(\.ckpt)?$", Path(prefix).name)
    return int(found.group(1)) if found else None


def list_variables(prefix):
    """{name: (numpy dtype, shape)} of a checkpoint's readable tensors, from its index alone."""
    return TFCheckpoint(prefix).variables()


def read_checkpoint(prefix, names=None, verify=True):
    """{name: np.ndarray} of the named tensors (default: every readable one), each checked against its crc32c."""
    ckpt = TFCheckpoint(prefix, verify)
    return {name: ckpt[name] for name in (ckpt if names is None else names)}


# ---------------------------------------------------------------- for the converters to PyTorch

OPTIMIZER_STATE = re.compile(r"/Adam(_\d+)?$|(^|/)beta[12]_power(_\d+)?$")  # Adam's slots and its beta powers


def require(tensors, names, model):
    """Refuses a checkpoint's tensors (a mapping, e.g. a TFCheckpoint) that lack any of these variables, or that
    hold anything else but optimizer state."""
    unsupported = tensors.unsupported if isinstance(tensors, TFCheckpoint) else {}
    refused = [name for name in names if name in unsupported]
    if refused:
        raise TFCheckpointError(f"{refused[0]} is {unsupported[refused[0]]}: this reader does not support it, so "
                                f"this {model} checkpoint cannot be read")
    missing = [name for name in names if name not in tensors]
    if missing:
        held = [name for name in tensors if not OPTIMIZER_STATE.search(name)]
        raise TFCheckpointError(f"not a {model} checkpoint: it lacks {listing(missing)}; it holds {listing(held)}")
    unexpected = [name for name in tensors if name not in names and not OPTIMIZER_STATE.search(name)]
    if unexpected:
        raise TFCheckpointError(f"the {model} checkpoint holds variables the model does not have: "
                                f"{listing(unexpected)}")


def shapes_of(tensors, names):
    """{name: shape}, from a TFCheckpoint's index without reading the data."""
    if isinstance(tensors, TFCheckpoint):
        return {name: tuple(tensors.entries[name]["shape"]) for name in names}
    return {name: tuple(np.shape(tensors[name])) for name in names}


def check_shapes(shapes, expected, model):
    """Refuses the first variable whose shape is not the one `model` (a description of the target) needs."""
    for name, shape in expected.items():
        if shapes[name] != tuple(shape):
            raise TFCheckpointError(f"{name} has shape {list(shapes[name])}, but {model} needs {list(shape)}")


def dim(shapes, name, axis):
    """One dimension of a variable's shape, refusing a variable of too low a rank."""
    if not -len(shapes[name]) <= axis < len(shapes[name]):
        raise TFCheckpointError(f"{name} has shape {list(shapes[name])}: expected more dimensions")
    return shapes[name][axis]


def listing(names, limit=6):
    names = list(names)
    if not names:
        return "nothing"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
