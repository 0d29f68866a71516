"""Random mutations of well-formed inputs, for the parsers of untrusted files: a TensorFlow checkpoint's index,
a dataset in the original layout (the restricted unpickler), a run directory's checkpoint and the settings stored
in it. Each mutation must
end in a valid object or in one line of a ProjectError, within a time and memory budget; any other exception, a
multi-line message, a slow parse or a large allocation fails the test with the mutation that caused it.

By default each test tries the same 100 mutations on every run; PROPERTY_EXAMPLES=N tries N fresh random ones,
to hunt for new failures.
"""
import os
import resource
import shutil
import time
import tracemalloc
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from common.checkpoint import load_checkpoint, save_checkpoint, saved_config
from common.data import load_dataset
from common.errors import ProjectError
from common.original_format import save_original_format
from common.tf_checkpoint import TFCheckpoint
from dvbpr.config import DVBPRConfig
from dvbpr.config import check_config as check_dvbpr
from gan.config import GANConfig
from gan.config import check_config as check_gan

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tf"
SHARD = ".data-00000-of-00001"
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", 100))
FRESH = "PROPERTY_EXAMPLES" in os.environ
SECONDS = 2.0           # per parse
MEMORY_FACTOR = 40      # peak Python/numpy allocation per parse, times the input's size, plus MEMORY_SLACK
MEMORY_SLACK = 2 << 20
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=not FRESH, database=None,
                    phases=list(Phase) if FRESH else [Phase.explicit, Phase.generate],  # shrinking when hunting
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# What a mutation does at a position: a byte xor-ed, bytes overwritten, inserted or deleted, or the file cut.
# The written bytes favour the values that stress a parser: 0xff runs (long varints, huge lengths) and zeros.
BLOBS = st.one_of(st.binary(min_size=1, max_size=12), st.sampled_from([b"\xff" * 10, b"\x00" * 8, b"\x7f", b"\x80"]))
MUTATIONS = st.lists(st.tuples(st.sampled_from(["xor", "write", "insert", "delete", "cut"]),
                               st.integers(0, 1 << 32), BLOBS), min_size=1, max_size=4)


def mutated(data, mutations):
    data = bytearray(data)
    for kind, where, blob in mutations:
        pos = where % (len(data) + 1)
        if kind == "xor" and data:
            data[pos % len(data)] ^= blob[0] or 0xFF
        elif kind == "write":
            data[pos:pos + len(blob)] = blob
        elif kind == "insert":
            data[pos:pos] = blob
        elif kind == "delete":
            del data[pos:pos + len(blob)]
        elif kind == "cut":
            del data[pos:]
    return bytes(data)


def one_line(message):
    assert "\n" not in message, message


def within_budget(parse, input_size, check_message=one_line):
    """parse() ends in a value or in a ProjectError whose message passes check_message (default: one line),
    within SECONDS and the memory budget."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        parse()
    except ProjectError as error:
        check_message(str(error))
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < SECONDS, f"took {elapsed:.1f} s"
    assert peak < MEMORY_FACTOR * input_size + MEMORY_SLACK, f"allocated {peak:,} bytes for {input_size:,}"


# ----------------------------------------------------------------------------------------------------------
# A TensorFlow checkpoint: its index mutated, then every tensor it lists read

@PROPERTY
@given(mutations=MUTATIONS, model=st.sampled_from(["dvbpr", "gan"]), verify=st.booleans())
def test_a_mutated_tf_index_reads_or_is_refused_in_one_line(tmp_path, mutations, model, verify):
    prefix = tmp_path / f"{model}.ckpt"
    index = mutated((FIXTURES / f"{model}.ckpt.index").read_bytes(), mutations)
    Path(f"{prefix}.index").write_bytes(index)
    shutil.copyfile(FIXTURES / f"{model}.ckpt{SHARD}", f"{prefix}{SHARD}")

    def parse():
        checkpoint = TFCheckpoint(prefix, verify=verify)
        for name in checkpoint:
            try:
                assert isinstance(checkpoint[name], np.ndarray)
            except ProjectError as error:  # one bad tensor; the others still read
                assert "\n" not in str(error), str(error)
    within_budget(parse, len(index) + (FIXTURES / f"{model}.ckpt{SHARD}").stat().st_size)


# ----------------------------------------------------------------------------------------------------------
# A dataset in the original layout, through the restricted unpickler

def small_catalogue(path):
    """Three users and four items, with few image bytes, so that mutations mostly land in the pickle's
    structure."""
    items = [{"imgs": bytes([0xFF, 0xD8, k]), "c": [int(k == c) for c in range(3)]} for k in range(4)]
    user_train = {u: [{"productid": u}, {"productid": u + 1}] for u in range(3)}
    user_validation = {u: [{"productid": (u + 2) % 4}] for u in range(3)}
    user_test = {u: [{"productid": (u + 3) % 4}] for u in range(3)}
    save_original_format(path, user_train, user_validation, user_test, items, 3, 4)
    return path


@PROPERTY
@given(mutations=MUTATIONS)
def test_a_mutated_dataset_loads_or_is_refused_in_one_line(tmp_path, mutations):
    path = tmp_path / "Mutated.npy"
    data = mutated(small_catalogue(tmp_path / "Small.npy").read_bytes(), mutations)
    path.write_bytes(data)
    within_budget(lambda: load_dataset(path), len(data), dataset_message(path))


def dataset_message(path):
    """The file's name first; one line, but for the listing of an invalid dataset's problems, one indented line
    each, which common/data.py writes by design."""
    def check(message):
        first, *listed = message.split("\n")
        assert first.startswith(f"{path}: "), message
        assert not listed or (first.endswith("invalid dataset:") and all(line.startswith("  ") for line in listed)), \
            message
    return check


# ----------------------------------------------------------------------------------------------------------
# A run directory's checkpoint. torch's allocations escape tracemalloc, so the whole process's peak resident
# memory is checked as well, once all the examples have run.

def stage_checkpoint(path):
    save_checkpoint(path, {"stage": "dvbpr", "model": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)},
                           "config": {"k": 2, "lr": 1e-3}, "epoch": 1, "step": 3, "metrics": [0.5]})
    return path


def peak_resident_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@PROPERTY
@given(mutations=MUTATIONS, mmap=st.booleans())
def test_a_mutated_checkpoint_loads_or_is_refused_in_one_line(tmp_path, mutations, mmap):
    path = tmp_path / "checkpoint.pt"
    data = mutated(stage_checkpoint(tmp_path / "whole.pt").read_bytes(), mutations)
    path.write_bytes(data)
    within_budget(lambda: load_checkpoint(path, "dvbpr", fields=("model", "config"), mmap=mmap), len(data))


def test_mutated_checkpoints_stay_within_resident_memory(tmp_path):
    before = peak_resident_bytes()
    test_a_mutated_checkpoint_loads_or_is_refused_in_one_line(tmp_path)
    assert peak_resident_bytes() - before < 256 << 20


# ----------------------------------------------------------------------------------------------------------
# The settings a run stores, edited: any value of any JSON-like type in any field, or a field this version lacks

SETTING_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=8),
                           st.lists(st.one_of(st.integers(-5, 2**40), st.text(max_size=2)), max_size=6),
                           st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@PROPERTY
@given(stage=st.sampled_from([(DVBPRConfig, check_dvbpr), (GANConfig, check_gan)]), data=st.data())
def test_an_edited_stored_config_is_valid_or_refused_in_one_line(stage, data):
    cfg_cls, check = stage
    names = st.sampled_from([field.name for field in fields(cfg_cls)] + ["unknown"])
    saved = {**asdict(cfg_cls()), **data.draw(st.dictionaries(names, SETTING_VALUES, min_size=1, max_size=4))}
    try:
        cfg = saved_config(cfg_cls, saved, "run/checkpoint.pt", check)
    except ProjectError as error:
        one_line(str(error))
        assert str(error).startswith("run/checkpoint.pt"), str(error)
    else:
        assert asdict(cfg) == saved  # taken as stored, nothing coerced
