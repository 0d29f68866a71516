"""Small files that would cost gigabytes or never finish, raw tracebacks, misleading messages and runs that
overwrite each other: each refused in one line that names the file or flag and the cause, within a small multiple
of the input's size in memory and a few seconds."""
import io
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.checkpoint import load_checkpoint, save_checkpoint
from common.cli import parse_config
from common.data import load_dataset
from common.errors import CheckpointError, ConfigError, RunError
from common.images import MAX_PIXELS, decode_failure, decode_image, image_cache
from common.original_format import save_original_format
from common.runlog import run_dir
from common.tf_checkpoint import (
    MAX_ENTRIES,
    MAX_KEY_BYTES,
    TABLE_MAGIC,
    TFCheckpoint,
    TFCheckpointError,
    crc32c_extend,
    mask,
    parse_entry,
    table_entries,
)
from dvbpr.cnnf import feature_map_size
from dvbpr.config import DVBPRConfig
from dvbpr.main import main as dvbpr_main
from dvbpr.tf_import import dvbpr_state_from_tf
from dvbpr.tf_run import fitting_image_sizes
from pm.main import main as pm_main
from tests.helpers import ROOT, refused, within

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tf"
DVBPR_CKPT = FIXTURES / "dvbpr.ckpt"
SHARD = ".data-00000-of-00001"




# ----------------------------------------------------------------------------------------------------------
# Forged TensorFlow indexes: protobuf fields and LevelDB's table format, written by hand

def varint(value):
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def number(field, value):
    return varint(field << 3) + varint(value % (1 << 64))  # negatives as 64-bit two's complement, as protobuf


def message(field, payload):
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def bundle_entry(tf_dtype=1, shape=(), offset=0, size=0, crc=0, shard=0, dims=None):
    """A BundleEntryProto; `dims` gives each dimension's varint bytes as written, instead of `shape`."""
    dims = dims if dims is not None else [varint(size % (1 << 64)) for size in shape]
    shape_proto = b"".join(message(2, varint(1 << 3) + dim) for dim in dims)
    fixed_crc = varint(6 << 3 | 5) + struct.pack("<I", crc)
    return (number(1, tf_dtype) + message(2, shape_proto) + number(3, shard) + number(4, offset) + number(5, size)
            + fixed_crc)


HEADER = (b"", number(1, 1))  # BundleHeaderProto: one shard


def block(entries):
    """An SSTable block of (shared, unshared key bytes, value) entries, written as given, one restart point."""
    body = b"".join(varint(shared) + varint(len(rest)) + varint(len(value)) + rest + value
                    for shared, rest, value in entries)
    return body + struct.pack("<II", 0, 1)


def prefix_compressed(pairs):
    """(key, value) pairs as a block's entries, each key sharing what it can with the one before."""
    entries, last = [], b""
    for key, value in pairs:
        shared = len(os.path.commonprefix([last, key]))
        entries.append((shared, key[shared:], value))
        last = key
    return entries


def sealed(data):
    """A block followed by its trailer: compression type none, masked crc32c."""
    return data + b"\0" + struct.pack("<I", mask(crc32c_extend(0, data + b"\0")))


def sstable(blocks, listing=None):
    """An index file: the data blocks back to back, an empty meta-index block, the index block listing the data
    blocks in the order `listing` gives (default: each once), then the footer."""
    table, handles = b"", []
    for data in blocks:
        handles.append(varint(len(table)) + varint(len(data)))
        table += sealed(data)
    meta = varint(len(table)) + varint(8)
    table += sealed(block([]))
    listed = [(0, k.to_bytes(4, "big"), handles[i]) for k, i in enumerate(listing or range(len(blocks)))]
    index = varint(len(table)) + varint(len(block(listed)))
    table += sealed(block(listed))
    return table + (meta + index).ljust(40, b"\0") + struct.pack("<Q", TABLE_MAGIC)


def write_checkpoint(prefix, pairs, shard=b""):
    """A checkpoint of one data block holding (name, BundleEntryProto) pairs after the header."""
    Path(f"{prefix}.index").write_bytes(sstable([block(prefix_compressed([HEADER, *pairs]))]))
    Path(f"{prefix}{SHARD}").write_bytes(shard)
    return prefix


def fixture_with(prefix, name, **changes):
    """The DVBPR fixture with one tensor's entry rewritten (`changes` to bundle_entry's arguments)."""
    pairs = table_entries(memoryview(Path(f"{DVBPR_CKPT}.index").read_bytes()), verify=True)[1:]
    rewritten = []
    for key, value in pairs:
        entry = parse_entry(value)
        if key.decode() == name:
            fields = dict(tf_dtype=entry["tf_dtype"], shape=entry["shape"], offset=entry["offset"],
                          size=entry["size"], crc=entry["crc"])
            value = bundle_entry(**{**fields, **changes})
        rewritten.append((key, value))
    return write_checkpoint(prefix, rewritten, Path(f"{DVBPR_CKPT}{SHARD}").read_bytes())


def test_the_forged_index_writer_writes_what_the_reader_reads(tmp_path):
    prefix = fixture_with(tmp_path / "same.ckpt", "none")
    ckpt, fixture = TFCheckpoint(prefix), TFCheckpoint(DVBPR_CKPT)
    assert ckpt.variables() == fixture.variables()
    np.testing.assert_array_equal(ckpt["DVBPR/wc1"], fixture["DVBPR/wc1"])


# ----------------------------------------------------------------------------------------------------------
# 1. Small files that cost gigabytes or never finish

def test_keys_sharing_ever_longer_prefixes_stop_at_the_key_budget(tmp_path):
    """283 KB of entries that each add one byte to the previous key: 1.25 GB of keys if they were all built."""
    entries = [(0, b"", number(1, 1))] + [(i, b"a", b"") for i in range(50_000)]
    prefix = tmp_path / "prefixes.ckpt"
    Path(f"{prefix}.index").write_bytes(sstable([block(entries)]))
    size = Path(f"{prefix}.index").stat().st_size
    assert 270_000 < size < 300_000
    with within(seconds=3, peak_bytes=4 * MAX_KEY_BYTES):
        message = refused(TFCheckpointError, lambda: TFCheckpoint(prefix))
    assert message == (f"{prefix}.index: data block 0: keys of more than {MAX_KEY_BYTES:,} bytes in all, the most "
                       "this reader takes (the index is corrupted or not a model's)")


def test_a_data_block_listed_many_times_is_read_once(tmp_path):
    """A 51 KB index whose index block lists its one data block 400 times."""
    pairs = [HEADER] + [(f"t{k:06d}".encode(), bundle_entry()) for k in range(2_300)]
    prefix = tmp_path / "listed.ckpt"
    Path(f"{prefix}.index").write_bytes(sstable([block(prefix_compressed(pairs))], listing=[0] * 400))
    size = Path(f"{prefix}.index").stat().st_size
    assert 40_000 < size < 60_000
    with within(seconds=2, peak_bytes=20 * size):
        message = refused(TFCheckpointError, lambda: TFCheckpoint(prefix))
    assert message.startswith(f"{prefix}.index: data block 1 at byte 0 overlaps the block before it")


def test_many_tiny_entries_stop_at_the_entry_budget(tmp_path):
    """300 KB of 6-byte entries, each a distinct key and no value."""
    entries = [(0, b"", number(1, 1))] + [(0, k.to_bytes(3, "big"), b"") for k in range(1, 50_000)]
    prefix = tmp_path / "tiny.ckpt"
    Path(f"{prefix}.index").write_bytes(sstable([block(entries)]))
    size = Path(f"{prefix}.index").stat().st_size
    with within(seconds=2, peak_bytes=8 * size):
        message = refused(TFCheckpointError, lambda: TFCheckpoint(prefix))
    assert f"data block 0: more than {MAX_ENTRIES:,} entries in the index" in message


def test_the_largest_index_within_the_budgets_costs_a_few_mb(tmp_path):
    names = [f"scope/layer_{k:05d}/{'w' * 80}".encode() for k in range(MAX_ENTRIES - 2)]  # block + header too
    assert sum(map(len, names)) < MAX_KEY_BYTES
    empty = bundle_entry(shape=(0,), crc=mask(0))
    prefix = write_checkpoint(tmp_path / "large.ckpt", [(name, empty) for name in names])
    with within(seconds=8, peak_bytes=16 << 20):  # about 0.4 s untraced
        ckpt = TFCheckpoint(prefix)
    assert len(ckpt) == MAX_ENTRIES - 2 and ckpt[names[-1].decode()].shape == (0,)


def test_a_shape_whose_element_count_wraps_is_refused_by_its_size(tmp_path):
    """[2**62, 32] floats: the count wraps to 0 in int64, which a size of 0 used to match."""
    prefix = fixture_with(tmp_path / "wrap.ckpt", "DVBPR/wd1", shape=(2**62, 32), size=0)
    with within(seconds=1, peak_bytes=1 << 20):
        message = refused(TFCheckpointError, lambda: TFCheckpoint(prefix))
    assert message == (f"{prefix}.index: DVBPR/wd1: 0 bytes stored for shape [{2**62}, 32] of float32 "
                       f"({2**62 * 32 * 4} bytes): the index is corrupted")


def test_an_empty_tensor_with_a_huge_dimension_is_refused(tmp_path):
    prefix = fixture_with(tmp_path / "empty.ckpt", "DVBPR/wd1", shape=(2**62, 0), size=0)
    message = refused(TFCheckpointError, lambda: TFCheckpoint(prefix))
    assert f"DVBPR/wd1: shape [{2**62}, 0] of float32 is beyond what an array can address" in message


def test_the_fitting_image_sizes_of_a_huge_side_come_at_once():
    for side in range(0, 12):
        sizes = [size for size in range(1, 32 * side + 1) if feature_map_size(size) == side]
        assert fitting_image_sizes(side) == (f"{sizes[0]} to {sizes[-1]}" if sizes else "none")
    started = time.perf_counter()
    assert fitting_image_sizes(2**62) == f"{32 * (2**62 - 1) + 1} to {32 * 2**62}"
    assert time.perf_counter() - started < 0.1


def torch_file_with_deflated_entries(path, tensor):
    """What torch.save writes, with every entry re-stored DEFLATED (which torch.save never does)."""
    buffer = io.BytesIO()
    torch.save({"stage": "dvbpr-embeddings", "items": tensor}, buffer)
    with zipfile.ZipFile(buffer) as stored, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as deflated:
        for info in stored.infolist():
            deflated.writestr(info.filename, stored.read(info.filename))
    return path


def test_a_checkpoint_with_deflated_entries_is_refused_before_inflating(tmp_path):
    """64 MB of zeros that a 70 KB file would inflate to."""
    path = torch_file_with_deflated_entries(tmp_path / "embeddings.pt", torch.zeros(16 << 20))
    size = path.stat().st_size
    assert size < 100_000
    with within(seconds=1, peak_bytes=20 * size):
        message = refused(CheckpointError, lambda: load_checkpoint(path, "dvbpr-embeddings"))
    assert message == (f"cannot read checkpoint {path}: its entry archive/data.pkl is stored compressed, which "
                       "torch.save never does (refused before it is inflated)")


def test_zip_entries_larger_than_the_file_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"stage": "dvbpr", "model": {"w": torch.ones(4)}})
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")  # the first entry's record in the zip's central directory
    data[central + 24:central + 28] = struct.pack("<I", 2**31)  # its uncompressed size
    path.write_bytes(bytes(data))
    message = refused(CheckpointError, lambda: load_checkpoint(path, "dvbpr"))
    assert message.startswith(f"cannot read checkpoint {path}: its entries claim ")
    assert message.endswith(f"more than the file's {len(data)}: corrupted")


# ----------------------------------------------------------------------------------------------------------
# 2. Raw tracebacks where a line was promised

@pytest.mark.parametrize("dim, cause", [
    (b"\xff" * 9 + b"\x01", "negative dimension in shape [-1, 32]"),  # 2**64 - 1: int64 -1, as protobuf writes it
    (b"\xff" * 9 + b"\x7f", "a varint of more than 64 bits"),         # 2**70 - 1: no int64 at all
])
def test_a_ten_byte_varint_dimension_is_refused_in_one_line(tmp_path, dim, cause):
    prefix = write_checkpoint(tmp_path / "varint.ckpt", [(b"DVBPR/wd1", bundle_entry(dims=[dim, varint(32)]))])
    message = refused(TFCheckpointError, lambda: TFCheckpoint(prefix))
    assert message.startswith(f"{prefix}.index: DVBPR/wd1") and cause in message


# ----------------------------------------------------------------------------------------------------------
# 3. Messages that mislead

class RunsCode:
    def __reduce__(self):
        return os.system, ("echo executed",)


def test_a_refused_pickle_names_the_global_without_torchs_advice(tmp_path, capfd):
    path = tmp_path / "checkpoint.pt"
    torch.save({"stage": "dvbpr", "model": RunsCode()}, path)
    message = refused(CheckpointError, lambda: load_checkpoint(path, "dvbpr"))
    assert message == (f"cannot read checkpoint {path}: its pickle asks for {os.system.__module__}.system, which the "
                       "project's checkpoints never hold (refused: it could run code)")
    assert "weights_only" not in message and "executed" not in capfd.readouterr().out


def test_an_unsupported_dtype_is_named_as_such_not_as_missing(tmp_path):
    prefix = fixture_with(tmp_path / "bf16.ckpt", "DVBPR/wc1", tf_dtype=14)
    message = refused(TFCheckpointError, lambda: dvbpr_state_from_tf(TFCheckpoint(prefix)))
    assert message == ("DVBPR/wc1 is of TensorFlow dtype 14 (bfloat16), which numpy lacks: this reader does not "
                       "support it, so this DVBPR checkpoint cannot be read")


def test_a_negative_offset_is_named_as_such(tmp_path):
    prefix = fixture_with(tmp_path / "offset.ckpt", "DVBPR/wd2", offset=-8)
    message = refused(TFCheckpointError, lambda: TFCheckpoint(prefix))
    assert message == (f"{prefix}.index: DVBPR/wd2: negative offset -8 into its data shard: the index is "
                       "corrupted")


def png_header(width, height):
    """The start of a 1-bit greyscale PNG of width x height, as far as its first (empty) data chunk."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)) + \
        chunk(b"IDAT", b"")


@pytest.mark.parametrize("side, says", [
    (30_000, f"has more than the {MAX_PIXELS:,} pixels an image may have here (MAX_PIXELS)"),  # past PIL's own bound
    (7_000, f"is 7000x7000 = 49,000,000 pixels, more than the {MAX_PIXELS:,} pixels an image may have here"),
])
def test_an_image_over_the_pixel_bound_is_named_as_such(side, says):
    png = png_header(side, side)
    with within(seconds=1, peak_bytes=1 << 20):
        assert decode_image(png, 32) is None
        assert decode_failure(png).startswith(says)
    assert decode_failure(b"not an image") == "is not a readable image (PIL cannot decode it)"


def test_an_empty_or_truncated_checkpoint_is_one_clear_line(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    assert refused(CheckpointError, lambda: load_checkpoint(tmp_path / "empty.pt")) == (
        f"cannot read checkpoint {tmp_path / 'empty.pt'}: the file is empty (a save or a copy that did not finish?)")
    save_checkpoint(tmp_path / "whole.pt", {"stage": "dvbpr", "model": {"w": torch.ones(100)}})
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:300])
    assert refused(CheckpointError, lambda: load_checkpoint(tmp_path / "cut.pt")) == (
        f"cannot read checkpoint {tmp_path / 'cut.pt'}: truncated, or not a file torch.save wrote (File is not a "
        "zip file)")


def test_a_stage_names_the_empty_checkpoint_it_resumes(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(SystemExit) as caught:
        dvbpr_main(["--resume", "--out", str(tmp_path)])
    assert str(caught.value) == (f"dvbpr: cannot read checkpoint {tmp_path / 'checkpoint.pt'}: the file is empty "
                                 "(a save or a copy that did not finish?)")


# ----------------------------------------------------------------------------------------------------------
# 4. Silent wrong results and lost work

HOLD = ("import sys; from common.runlog import run_dir; run_dir(sys.argv[1], 'dvbpr'); print('held', flush=True); "
        "input()")


def test_a_second_writer_of_a_run_directory_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        message = refused(RunError, lambda: run_dir(out, "dvbpr"))
        assert message == (f"the run directory {out} is in use by another run (process {holder.pid}): wait for it "
                           "to end, or give another --out")
        with pytest.raises(SystemExit, match=f"^dvbpr: the run directory {out} is in use by another run"):
            dvbpr_main(["--out", str(out), "--device", "cpu"])
        monkeypatch.setenv("RANK", "1")  # ranks other than 0 write nothing, and take no lock
        assert run_dir(out, "dvbpr") == out
    finally:
        holder.communicate("\n", timeout=30)
    monkeypatch.delenv("RANK")
    assert run_dir(out, "dvbpr") == out  # the holder has ended: its lock went with it
    assert run_dir(out, "dvbpr") == out  # and this process may call again for the directory it holds


def bmp_items(colours):
    """Items whose images are BMPs of one size, so that catalogues of other colours have files of equal size."""
    images = []
    for colour in colours:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), colour).save(buffer, "BMP")
        images.append({"imgs": buffer.getvalue(), "c": [1, 0]})
    return images


def bmp_catalogue(path, colours):
    records = {u: [{"productid": u}] for u in range(3)}
    path.parent.mkdir()
    save_original_format(path, records, records, records, bmp_items(colours), 3, len(colours))
    return path


def test_another_dataset_copied_with_its_times_does_not_reuse_the_cache(tmp_path):
    """cp -p of another catalogue over the one a cache was built from: same name, size and mtime."""
    ours = bmp_catalogue(tmp_path / "ours" / "Tiny.npy", [(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    theirs = bmp_catalogue(tmp_path / "theirs" / "Tiny.npy", [(9, 9, 9), (99, 99, 99), (199, 199, 199)])
    cache = tmp_path / "cache"
    assert (np.asarray(image_cache(load_dataset(ours), 4, cache_dir=cache))[:, 0, 0, 0] == [255, 0, 0]).all()
    stat = ours.stat()
    shutil.copyfile(theirs, ours)
    os.utime(ours, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert ours.stat().st_size == stat.st_size and ours.stat().st_mtime_ns == stat.st_mtime_ns
    rebuilt = np.asarray(image_cache(load_dataset(ours), 4, cache_dir=cache))
    np.testing.assert_array_equal(rebuilt[:, :, 0, 0], [[9] * 3, [99] * 3, [199] * 3])


@pytest.mark.parametrize("argv, flag", [(["--lr", "nan"], "--lr nan"), (["--lr=-inf"], "--lr -inf"),
                                        (["--tune-lrs", "0.1", "inf"], "--tune-lrs [0.1, inf]")])
def test_non_finite_float_flags_are_refused(argv, flag):
    main = pm_main if argv[0].startswith("--tune") else dvbpr_main
    with pytest.raises(SystemExit) as caught:
        main(argv)
    stage = "pm" if main is pm_main else "dvbpr"
    name, value = flag.split(" ", 1)
    assert str(caught.value) == f"{stage}: {name} must be a finite number, got {value}"


def test_finite_float_flags_pass():
    assert parse_config(DVBPRConfig, ["--lr", "1e-4", "--dropout", "0"])[0].lr == 1e-4
    with pytest.raises(ConfigError, match="--dropout must be a finite number, got nan"):
        parse_config(DVBPRConfig, ["--dropout", "NaN"])
