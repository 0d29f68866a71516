"""What round two left: the dataset loader's own parsing bugs, settings validated at the door (stored configs,
embeddings, GAN checkpoints, flags), an upper bound on every size flag, and resuming on other data. Each is
refused in one line naming the file or flag and the cause, within a small multiple of the input in memory."""
import os
import shutil
import struct
from dataclasses import asdict

import pytest
import torch

from common.checkpoint import load_checkpoint, save_checkpoint
from common.cli import MAX_BATCH, MAX_IMAGE_SIZE, MAX_TILE_SIZE, parse_config
from common.data import MAX_CATEGORIES, load_dataset
from common.errors import CheckpointError, ConfigError, DatasetError, UnsafePickleError
from common.images import MAX_IMAGE_FILE_BYTES, read_image_file
from common.original_format import save_original_format
from common.safe_pickle import MAX_HEADER_BYTES, read_pickled_array
from dvbpr.config import DVBPRConfig
from dvbpr.main import main as dvbpr_main
from dvbpr.run import open_dvbpr_run
from explain.main import main as explain_main
from gan.config import GANConfig
from gan.main import main as gan_main
from gan.model import build_gan
from gan.run import open_gan_run
from gan.train import GANTraining
from pm.config import PMConfig, check_ids
from pm.main import main as pm_main
from tests.helpers import refused, within
from tools.recommend import main as recommend_main

TINY_DVBPR = ["--image-size", "32", "--k", "8", "--fc-width", "64", "--conv-widths", "8", "8", "8", "8", "8",
              "--batch-size", "16", "--epochs", "1", "--device", "cpu"]




def exit_message(main, argv):
    """The one line a stage's command line exits with."""
    with pytest.raises(SystemExit) as caught:
        main([str(arg) for arg in argv])
    message = str(caught.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------------------------------------
# 1. The dataset loader: a mangled .npy header, a cut operand, a length allocated before it is read

def npy(payload, header="{'descr': '|O', 'fortran_order': False, 'shape': (6,), }", version=(1, 0)):
    """A .npy file of the given header text and pickle payload, as numpy lays it out."""
    text = header.encode().ljust(117) + b"\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack("<H" if version == (1, 0) else "<I", len(text)) + text \
        + payload


# numpy's Python-2 filter tokenizes an unbalanced header (TokenError); which error a stray ")" raises depends on the
# numpy and Python versions (TokenError with numpy 2.4 on Python 3.12, ValueError on an older numpy)
UNPARSABLE = ("TokenError", "ValueError", "SyntaxError")


@pytest.mark.parametrize("header, causes", [
    ("{'descr': '|O', 'fortran_order': False, 'shape': (6,", UNPARSABLE),
    ("{'descr': '|O', 'fortran_order': False, 'shape': (6,)) }", UNPARSABLE),
    ("{'descr': '|O', 'fortran_order': False}", ("ValueError: Header does not contain the correct keys",)),
])
def test_a_mangled_npy_header_is_one_line(tmp_path, header, causes):
    path = tmp_path / "Mangled.npy"
    path.write_bytes(npy(b"", header))
    message = refused(DatasetError, lambda: load_dataset(path))
    assert message.startswith(tuple(f"{path}: its .npy header is not the dict numpy writes ({cause}"
                                     for cause in causes))


def test_a_header_length_past_the_bound_is_refused_before_reading(tmp_path):
    path = tmp_path / "Long.npy"
    path.write_bytes(b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{}")
    with within(seconds=1, peak_bytes=1 << 20):
        message = refused(DatasetError, lambda: load_dataset(path))
    assert message == (f"{path}: a .npy header of {2**31} bytes, more than the {MAX_HEADER_BYTES} numpy writes "
                       "at most (the file is corrupted)")
    path.write_bytes(b"\x93NUMPY\x02\x00\x01")
    assert refused(DatasetError, lambda: load_dataset(path)) == (f"{path}: the file ends inside its .npy header "
                                                                 "(truncated)")


def test_a_pickle_operand_cut_short_is_one_line(tmp_path):
    path = tmp_path / "Cut.npy"
    path.write_bytes(npy(b"\x80\x02J\x01\x00"))  # BININT takes 4 bytes; the file has 2
    message = refused(DatasetError, lambda: load_dataset(path))
    assert message == f"{path}: corrupt pickle payload (an operand cut short: unpack requires a buffer of 4 bytes)"


def test_a_dtype_code_numpy_parses_with_ast_is_one_line(tmp_path):
    path = tmp_path / "Dtype.npy"
    path.write_bytes(npy(b"\x80\x02cnumpy\ndtype\nU\x06(08)i4\x85R."))  # numpy.dtype(b"(08)i4")
    message = refused(UnsafePickleError, lambda: load_dataset(path))
    assert message == f"{path}: refusing to unpickle the dtype code b'(08)i4', which numpy cannot read"


def test_a_bytearray_longer_than_the_file_is_refused_before_it_is_allocated(tmp_path):
    path = tmp_path / "Huge.npy"
    path.write_bytes(npy(b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b"ab"))  # BYTEARRAY8 of 1 TiB
    with within(seconds=1, peak_bytes=1 << 20):
        message = refused(DatasetError, lambda: load_dataset(path))
    assert message == (f"{path}: corrupt pickle payload (UnpicklingError: a BYTEARRAY8 of {2**40} bytes, more than "
                       f"the file's {path.stat().st_size})")
    path.write_bytes(npy(b"\x80\x05\x96" + struct.pack("<Q", 3) + b"abc."))  # one that fits still reads
    assert read_pickled_array(path) == bytearray(b"abc")


# ----------------------------------------------------------------------------------------------------------
# 2. Settings validated at the door: stored configs, embeddings, GAN checkpoints, flags

TINY_CONFIG = asdict(DVBPRConfig(k=4, image_size=32, fc_width=8, conv_widths=[4] * 5, dataset="absent.npy"))


def embeddings_run(run, config=TINY_CONFIG, theta=(3, 4), items=(5, 4)):
    """A run directory holding only embeddings.pt, with the given settings and matrix shapes."""
    save_checkpoint(run / "embeddings.pt", {"stage": "dvbpr-embeddings", "theta": torch.zeros(theta),
                                            "items": torch.zeros(items), "config": config, "epoch": 1, "step": 1})
    return run


@pytest.mark.parametrize("edit, says", [
    ({"k": "4"}, "its setting k is a str of length 1, not of type int (the file was edited or is corrupted)"),
    ({"lr": float("nan")}, "its setting lr is a float (nan), not a finite number (the file was edited or is "
                           "corrupted)"),
    ({"conv_widths": [4, "4", 4, 4, 4]}, "its setting conv_widths is a list of length 5, not of type list[int] | "
                                         "None (the file was edited or is corrupted)"),
    ({"resize_filter": "area"}, "its setting resize_filter is 'area', not one of nearest, bilinear, bicubic, "
                                "lanczos"),
    ({"image_size": -3}, "its settings are refused: --image-size must be at least 1, got -3"),
    ({"dropout": 2.0}, "its settings are refused: --dropout is a probability from 0 to below 1, got 2.0"),
])
def test_an_edited_stored_config_is_refused_naming_the_setting(tmp_path, edit, says):
    run = embeddings_run(tmp_path, {**TINY_CONFIG, **edit})
    message = refused(CheckpointError, lambda: open_dvbpr_run(run))
    assert message == f"{run / 'embeddings.pt'}: {says}"


def test_a_resumed_runs_stored_config_is_checked_too(tmp_path):
    save_checkpoint(tmp_path / "checkpoint.pt", {"stage": "dvbpr", "config": {**TINY_CONFIG, "image_size": 0}})
    assert exit_message(dvbpr_main, ["--resume", "--out", tmp_path]) == (
        f"dvbpr: {tmp_path / 'checkpoint.pt'}: its settings are refused: --image-size must be at least 1, got 0")


def test_embeddings_whose_k_disagrees_are_refused(tmp_path):
    message = refused(CheckpointError, lambda: open_dvbpr_run(embeddings_run(tmp_path, items=(5, 6))))
    assert message == (f"{tmp_path / 'embeddings.pt'}: its items is [5, 6], of K=6, but the run's settings give "
                       "K=4: the file was edited or comes from another run")
    message = refused(CheckpointError, lambda: open_dvbpr_run(embeddings_run(tmp_path, theta=(3,))))
    assert message == (f"{tmp_path / 'embeddings.pt'}: its theta is of shape [3] and dtype torch.float32, not a "
                       "[count, K] float matrix")


TINY_GAN = GANConfig(image_size=16, z_dim=4, g_width=2, d_width=2)


def gan_checkpoint(run, config=asdict(TINY_GAN), num_categories=2, nets=None):
    generator, discriminator = build_gan(TINY_GAN, 2, "cpu")
    nets = nets or {"generator": generator.state_dict(), "discriminator": discriminator.state_dict()}
    save_checkpoint(run / "checkpoint.pt", {"stage": "gan", "model": nets, "config": config,
                                            "num_categories": num_categories, "step": 1, "metrics": {}})
    return run


def test_a_gan_checkpoint_is_checked_before_its_nets_are_built(tmp_path):
    assert open_gan_run(gan_checkpoint(tmp_path)).num_categories == 2
    path = tmp_path / "checkpoint.pt"
    gan_checkpoint(tmp_path, {**asdict(TINY_GAN), "g_width": 0, "d_width": 0})
    assert exit_message(gan_main, ["--out", tmp_path, "--device", "cpu"]) == (
        f"gan: {path}: its settings are refused: --g-width must be at least 1, got 0")
    gan_checkpoint(tmp_path, num_categories=-1)
    assert exit_message(gan_main, ["--out", tmp_path, "--device", "cpu"]) == (
        f"gan: {path}: its category count is an int (-1), not from 1 to {MAX_CATEGORIES} (the file was edited or "
        "is corrupted)")
    gan_checkpoint(tmp_path, num_categories=3)  # weights of 2 categories
    message = refused(CheckpointError, lambda: open_gan_run(tmp_path))
    assert message.startswith(f"{path}: its weights do not fit the Generator its settings describe: size mismatch "
                              "for h0_lin.weight")


@pytest.mark.parametrize("main, argv, says", [
    (dvbpr_main, ["--dropout", "2"], "dvbpr: --dropout is a probability from 0 to below 1, got 2.0"),
    (dvbpr_main, ["--warmup-epochs", "nan"], "dvbpr: --warmup-epochs must be a finite number, got nan"),
    (dvbpr_main, ["--from-tf", ""], "dvbpr: --from-tf is empty: give a value, or leave the flag out"),
    (gan_main, ["--from-tf", " "], "gan: --from-tf is empty: give a value, or leave the flag out"),
    (explain_main, ["--user", "0", "--occlusion-patch", "-4"], "explain: --occlusion-patch must be at least 1, got -4"),
    (pm_main, ["--starts", "0"], "pm: --starts must be at least 1, got 0"),
    (dvbpr_main, ["--seed", "-1"], "dvbpr: --seed must be from 0 to 4294967295, got -1"),
    (gan_main, ["--seed", str(2**32)], "gan: --seed must be from 0 to 4294967295, got 4294967296"),
    (pm_main, ["--seed", "-3"], "pm: --seed must be from 0 to 4294967295, got -3"),
])
def test_flags_out_of_range_are_refused_before_any_data_is_read(tmp_path, main, argv, says):
    absent = ["--run", tmp_path / "absent"] if main is explain_main else \
        ["--dvbpr-run", tmp_path / "absent"] if main is pm_main else ["--dataset", tmp_path / "absent.npy"]
    assert exit_message(main, [*argv, *absent, "--out", tmp_path / "out"]) == says


def test_pm_refuses_ids_outside_the_dataset(tiny_dataset):
    def check(*argv):
        return refused(ConfigError, lambda: check_ids(parse_config(PMConfig, list(argv))[0], tiny_dataset))
    users, categories = tiny_dataset.usernum, tiny_dataset.num_categories
    assert check("--user", "-1") == f"--user -1 is out of range: the {users} users are numbered 0 to {users - 1}"
    assert check("--category", "99") == (f"--category 99 is out of range: the {categories} categories of Tiny are "
                                         f"numbered 0 to {categories - 1}")
    assert check("--prototype", "-2").startswith("--prototype -2 is out of range")
    check_ids(parse_config(PMConfig, ["--user", str(users - 1), "--category", "0"])[0], tiny_dataset)


# ----------------------------------------------------------------------------------------------------------
# 3. Upper bounds on the size flags, and an image file read with a size cap

@pytest.mark.parametrize("main, argv, says", [
    (dvbpr_main, ["--batch-size", "1000000000"], f"dvbpr: --batch-size must be at most {MAX_BATCH:,}, got 1000000000"),
    (dvbpr_main, ["--image-size", "100000"], f"dvbpr: --image-size must be at most {MAX_IMAGE_SIZE:,}, got 100000"),
    (dvbpr_main, ["--eval-batch-size", "10000000"], "dvbpr: --eval-batch-size must be at most"),
    (dvbpr_main, ["--conv-widths", "8", "8", "8", "8", "99999999"], "dvbpr: --conv-widths must be at most"),
    (gan_main, ["--train", "--batch-size", "1000000000"], "gan: --batch-size must be at most"),
    (gan_main, ["--train", "--image-size", "48"], "gan: image size must be a power of two of at least 16, got 48"),
    (recommend_main, ["--user", "0", "--tile-size", "100000"],
     f"recommend: --tile-size must be at most {MAX_TILE_SIZE}, got 100000"),
    (explain_main, ["--user", "0", "--tile-size", "100000"], "explain: --tile-size must be at most"),
    (pm_main, ["--starts", "1000000"], "pm: --starts must be at most 1,024, got 1000000"),
])
def test_size_flags_past_their_bound_are_refused_before_anything_is_read(tmp_path, main, argv, says):
    absent = ["--run", tmp_path / "absent"] if main in (explain_main, recommend_main) else \
        ["--dvbpr-run", tmp_path / "absent"] if main is pm_main else ["--dataset", tmp_path / "absent.npy"]
    with within(seconds=5, peak_bytes=16 << 20):
        message = exit_message(main, [*argv, *absent])
    assert message.startswith(says)


def test_an_image_file_is_read_with_a_size_cap(tmp_path):
    with within(seconds=2, peak_bytes=2 * MAX_IMAGE_FILE_BYTES + (1 << 20)):
        message = refused(ConfigError, lambda: read_image_file("/dev/zero"))
    assert message == (f"/dev/zero has more than the {MAX_IMAGE_FILE_BYTES:,} bytes an image file may have here "
                       "(MAX_IMAGE_FILE_BYTES)")
    assert exit_message(recommend_main, ["--run", tmp_path, "--user", "0", "--image", "/dev/zero"]).startswith(
        "recommend: /dev/zero has more than")
    (tmp_path / "shoe.jpg").write_bytes(b"not an image")
    assert refused(ConfigError, lambda: read_image_file(tmp_path / "shoe.jpg")) == (
        f"{tmp_path / 'shoe.jpg'} is not a readable image (PIL cannot decode it)")


# ----------------------------------------------------------------------------------------------------------
# The dataset a run trained on: resuming on other data under the same path, and a strip that cannot be written

@pytest.fixture(scope="module")
def tiny_path(catalogue):
    return catalogue(num_users=12, num_items=240)


@pytest.fixture(scope="module")
def tiny_dataset(tiny_path):
    return load_dataset(tiny_path)


def same_size_pair(source, ours, theirs):
    """Two datasets of the same size in bytes: `source`'s content, and the same with two users' validation
    items swapped."""
    user_train, user_validation, user_test, items, usernum, itemnum = read_pickled_array(source)
    save_original_format(ours, user_train, user_validation, user_test, items, usernum, itemnum)
    user_validation[0], user_validation[1] = user_validation[1], user_validation[0]
    save_original_format(theirs, user_train, user_validation, user_test, items, usernum, itemnum)
    assert ours.stat().st_size == theirs.stat().st_size and ours.read_bytes() != theirs.read_bytes()
    return ours, theirs


def grown(source, path):
    """`source` with one more item, a copy of its last."""
    user_train, user_validation, user_test, items, usernum, itemnum = read_pickled_array(source)
    save_original_format(path, user_train, user_validation, user_test, [*items, items[-1]], usernum, itemnum + 1)
    return path


@pytest.fixture(scope="module")
def trained(tiny_path, tmp_path_factory):
    """A one-epoch DVBPR run on a copy of the tiny catalogue, a catalogue of the same size with other data and one
    with an item more."""
    folder = tmp_path_factory.mktemp("resume")
    ours, theirs = same_size_pair(tiny_path, folder / "Tiny.npy", folder / "Other.npy")
    dvbpr_main([*TINY_DVBPR, "--dataset", str(ours), "--out", str(folder / "run"), "--cache-dir",
                str(folder / "cache")])
    return folder / "run", ours, {"replaced": theirs, "grown": grown(ours, folder / "Grown.npy")}


@pytest.mark.parametrize("other", ["replaced", "grown"])
def test_resuming_on_other_data_at_the_same_path_is_refused(trained, other):
    run, ours, others = trained
    checkpoint = load_checkpoint(run / "checkpoint.pt", "dvbpr")
    theirs = load_dataset(others[other])
    assert checkpoint["dataset_digest"] == load_dataset(ours).digest != theirs.digest
    kept, stat = ours.read_bytes(), ours.stat()
    try:
        shutil.copyfile(theirs.path, ours)
        os.utime(ours, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p or rsync -a copy: the same times
        message = exit_message(dvbpr_main, ["--resume", "--out", run, "--epochs", "2"])
    finally:
        ours.write_bytes(kept)
        os.utime(ours, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert message == (f"dvbpr: cannot resume {run / 'checkpoint.pt'}: it trained on a dataset of digest "
                       f"{checkpoint['dataset_digest'][:12]}, but {ours} now holds other data (digest "
                       f"{theirs.digest[:12]}): give the dataset it trained on, or start afresh without --resume")


def test_a_run_resumes_on_its_own_data(trained):
    run = trained[0]
    epochs = load_checkpoint(run / "checkpoint.pt", "dvbpr")["epoch"]
    dvbpr_main(["--resume", "--out", str(run), "--epochs", str(epochs + 1)])
    assert load_checkpoint(run / "checkpoint.pt", "dvbpr")["epoch"] == epochs + 1


def test_a_gan_resumes_on_its_own_data_only(tiny_dataset, tmp_path):
    other = load_dataset(same_size_pair(tiny_dataset.path, tmp_path / "A.npy", tmp_path / "B.npy")[1])
    cfg = GANConfig(**{**asdict(TINY_GAN), "out": str(tmp_path)})
    GANTraining(cfg, tiny_dataset.num_categories, "cpu", 1, tiny_dataset.digest).save(tmp_path / "checkpoint.pt")
    resumed = GANTraining(cfg, tiny_dataset.num_categories, "cpu", 1, tiny_dataset.digest)
    resumed.resume(tmp_path / "checkpoint.pt", "cpu", tiny_dataset)
    assert resumed.step == 0
    message = refused(CheckpointError, lambda: resumed.resume(tmp_path / "checkpoint.pt", "cpu", other))
    assert message.startswith(f"cannot resume {tmp_path / 'checkpoint.pt'}: it trained on a dataset of digest "
                              f"{tiny_dataset.digest[:12]}, but {other.path} now holds other data")


def test_a_gan_checkpoints_random_generator_state_that_is_not_torchs_is_refused(tiny_dataset, tmp_path):
    cfg = GANConfig(**{**asdict(TINY_GAN), "out": str(tmp_path)})
    GANTraining(cfg, tiny_dataset.num_categories, "cpu", 1, tiny_dataset.digest).save(
        tmp_path / "checkpoint.pt", rng_state={"cpu": torch.zeros(3, dtype=torch.uint8)})
    resumed = GANTraining(cfg, tiny_dataset.num_categories, "cpu", 1, tiny_dataset.digest)
    message = refused(CheckpointError, lambda: resumed.resume(tmp_path / "checkpoint.pt", "cpu", tiny_dataset))
    assert message == (f"{tmp_path / 'checkpoint.pt'}: its random generator state is a dict of length 1, not "
                       "torch's (the file was edited or is corrupted)")


def test_a_gan_checkpoint_without_one_of_its_nets_or_optimiser_states_is_refused_on_resume(tiny_dataset, tmp_path):
    cfg = GANConfig(**{**asdict(TINY_GAN), "out": str(tmp_path)})
    GANTraining(cfg, tiny_dataset.num_categories, "cpu", 1, tiny_dataset.digest).save(tmp_path / "checkpoint.pt")
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt", "gan")
    del checkpoint["model"]["discriminator"]
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    resumed = GANTraining(cfg, tiny_dataset.num_categories, "cpu", 1, tiny_dataset.digest)
    message = refused(CheckpointError, lambda: resumed.resume(tmp_path / "checkpoint.pt", "cpu", tiny_dataset))
    assert message == (f"{tmp_path / 'checkpoint.pt'}: its model is a dict of length 1, not the weights of the "
                       "LSGAN generator's nets generator, discriminator")
    GANTraining(cfg, tiny_dataset.num_categories, "cpu", 1, tiny_dataset.digest).save(tmp_path / "checkpoint.pt")
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt", "gan")
    checkpoint["optimizer"] = {"generator": checkpoint["optimizer"]["generator"]}
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    message = refused(CheckpointError, lambda: resumed.resume(tmp_path / "checkpoint.pt", "cpu", tiny_dataset))
    assert message == (f"{tmp_path / 'checkpoint.pt'}: its optimiser states are a dict of length 1, not those of "
                       "the generator's nets generator, discriminator")


def test_an_unwritable_strip_folder_is_named(trained, tmp_path):
    run, _, _ = trained
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "strips"
    message = exit_message(recommend_main, ["--run", run, "--user", "0", "--out", out, "--device", "cpu"])
    assert message.startswith(f"recommend: cannot write {out / 'user0_top10.png'}: ")
    assert message.endswith("(give another --out)")
