"""Reading the original's TensorFlow checkpoints and converting them, checked against outputs of real TensorFlow,
and the runs that dvbpr/main.py and gan/main.py write from them with --from-tf.

The fixtures under tests/fixtures/tf/ come from make_tf_fixtures.py there (TensorFlow is needed only to remake them).
"""
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.checkpoint import load_checkpoint
from common.data import load_dataset
from common.original_format import save_original_format
from common.tf_checkpoint import (
    FOOTER_SIZE,
    TFCheckpoint,
    TFCheckpointError,
    block_handle,
    checkpoint_prefix,
    list_variables,
    prefix_step,
    read_checkpoint,
)
from common.training import epoch_end_step
from dvbpr.cnnf import CNNF
from dvbpr.main import main as dvbpr_main
from dvbpr.model import DVBPR
from dvbpr.run import open_dvbpr_run
from dvbpr.tf_import import dvbpr_config_from_tf, dvbpr_state_from_tf
from dvbpr.tf_run import epoch_at_step
from gan.main import main as gan_main
from gan.model import Discriminator, Generator
from gan.run import open_gan_run
from gan.tf_import import gan_config_from_tf, gan_state_from_tf
from pm.main import main as pm_main
from tests.helpers import place_random_classifier

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tf"
DVBPR_CKPT, GAN_CKPT = FIXTURES / "dvbpr.ckpt", FIXTURES / "gan.ckpt"
SHARD = ".data-00000-of-00001"


def copy_checkpoint(prefix, tmp_path, name=None):
    name = name or prefix.name
    for suffix in (".index", SHARD):
        shutil.copy(f"{prefix}{suffix}", tmp_path / f"{name}{suffix}")
    return tmp_path / name


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def dvbpr_from(state, config):
    model = DVBPR(CNNF(64, config["fc_width"], widths=config["widths"]), config["usernum"], config["k"])
    model.load_state_dict(state)
    return model.eval()


def dvbpr_outputs(model):
    tf_out = np.load(FIXTURES / "dvbpr_outputs.npz")
    images = (torch.from_numpy(tf_out["images"]).float() - 127.5) / 127.5  # uint8 NHWC, scaled as the original
    with torch.no_grad():
        embeddings = model.phi(images.permute(0, 3, 1, 2))
        scores = model.theta @ embeddings.T
    return tf_out, embeddings.numpy(), scores.numpy()


def gan_outputs(g_state, d_state):
    c = gan_config_from_tf(TFCheckpoint(GAN_CKPT))
    generator = Generator(64, c["z_dim"], c["num_categories"], c["g_width"])
    discriminator = Discriminator(64, c["num_categories"], c["d_width"])
    generator.load_state_dict(g_state)
    discriminator.load_state_dict(d_state)
    generator.eval(), discriminator.eval()  # BatchNorm on its moving statistics, as TF with is_train False
    tf_out = np.load(FIXTURES / "gan_outputs.npz")
    labels = torch.from_numpy(tf_out["labels"]).long()
    with torch.no_grad():
        images = generator(torch.from_numpy(tf_out["z"]), labels)
        scores = discriminator(torch.from_numpy(tf_out["x"]).permute(0, 3, 1, 2), labels)
        fake_scores = discriminator(images, labels)
    return tf_out, images.permute(0, 2, 3, 1).numpy(), scores.numpy(), fake_scores.numpy()


# ----------------------------------------------------------------------------- reading

def test_reader_lists_the_variables_with_their_dtypes_and_shapes():
    dvbpr = list_variables(DVBPR_CKPT)
    assert len(dvbpr) == 17 * 3  # the 17 variables and their two Adam slots each
    assert dvbpr["DVBPR/wc1"] == (np.dtype(np.float32), (11, 11, 3, 8))
    assert dvbpr["DVBPR/wd1"] == (np.dtype(np.float32), (2 * 2 * 16, 32))
    assert dvbpr["DVBPR/Variable"] == dvbpr["DVBPR/Variable/Adam_1"] == (np.dtype(np.float32), (7, 10))
    assert "DVBPR/wc1/Adam" in dvbpr
    gan = list_variables(GAN_CKPT)
    assert len(gan) == 66 and not any("Adam" in name for name in gan)
    assert gan["GAN/generator/g_h5/w"] == (np.dtype(np.float32), (3, 3, 16, 32))  # [kh, kw, out, in]
    assert gan["GAN/discriminator/d_h3_conv/w"] == (np.dtype(np.float32), (5, 5, 32 + 6, 64))
    assert gan["GAN/discriminator/d_h4_lin/Matrix"][1] == (4 * 4 * 64, 1)
    assert gan["GAN/generator/g_bn6/moving_variance"][1] == (8,)


def test_read_checkpoint_returns_every_tensor_as_listed():
    tensors = read_checkpoint(GAN_CKPT)
    assert {name: (a.dtype, a.shape) for name, a in tensors.items()} == list_variables(GAN_CKPT)
    assert tensors["GAN/generator/g_bn0/moving_mean"].any()  # trained: not at their initial values
    assert tensors["GAN/generator/g_h7/biases"].any()


# ----------------------------------------------------------------------------- conversion against TensorFlow

def test_converted_dvbpr_gives_tensorflows_embeddings_and_scores():
    ckpt = TFCheckpoint(DVBPR_CKPT)
    config = dvbpr_config_from_tf(ckpt)
    assert config == {"widths": (8, 16, 16, 16, 16), "fc_width": 32, "k": 10, "usernum": 7, "feature_side": 2}
    tf_out, embeddings, scores = dvbpr_outputs(dvbpr_from(dvbpr_state_from_tf(ckpt, usernum=7, k=10), config))
    np.testing.assert_allclose(embeddings, tf_out["embeddings"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(scores, tf_out["scores"], rtol=0, atol=1e-5)


def test_dvbpr_state_has_the_backbone_and_head_layout():
    state = dvbpr_state_from_tf(TFCheckpoint(DVBPR_CKPT))
    assert set(state) == {f"backbone.{layer}.{p}" for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc1",
                                                                "fc2") for p in ("weight", "bias")} | \
        {"head.weight", "head.bias", "theta"}


def test_converted_gan_gives_tensorflows_images_and_scores():
    tf_out, images, scores, fake_scores = gan_outputs(*gan_state_from_tf(TFCheckpoint(GAN_CKPT)))
    np.testing.assert_allclose(images, tf_out["images"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(scores, tf_out["scores"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(fake_scores, tf_out["fake_scores"], rtol=0, atol=1e-4)


def test_the_fixtures_tell_the_flatten_orders_apart():
    """Without the (h, w, c) -> (c, h, w) permutations the outputs are far off, so the tests above check them."""
    dvbpr = TFCheckpoint(DVBPR_CKPT)
    state = dvbpr_state_from_tf(dvbpr)
    state["backbone.fc1.weight"] = torch.from_numpy(dvbpr["DVBPR/wd1"].T.copy())
    tf_out, embeddings, _ = dvbpr_outputs(dvbpr_from(state, dvbpr_config_from_tf(dvbpr)))
    assert np.abs(embeddings - tf_out["embeddings"]).max() > 1e-2
    gan = TFCheckpoint(GAN_CKPT)
    g_state, d_state = gan_state_from_tf(gan)
    d_state["h_lin.weight"] = torch.from_numpy(gan["GAN/discriminator/d_h4_lin/Matrix"].T.copy())
    g_state["h0_lin.weight"] = torch.from_numpy(gan["GAN/generator/g_h0_lin/Matrix"].T.copy())
    g_state["h0_lin.bias"] = torch.from_numpy(gan["GAN/generator/g_h0_lin/bias"])
    tf_out, images, scores, _ = gan_outputs(g_state, d_state)
    assert np.abs(scores - tf_out["scores"]).max() > 1e-2
    assert np.abs(images - tf_out["images"]).max() > 1e-2


# ----------------------------------------------------------------------------- refusals

def test_a_prefix_without_an_index_is_not_a_checkpoint(tmp_path):
    with pytest.raises(TFCheckpointError, match="not a TensorFlow checkpoint"):
        TFCheckpoint(tmp_path / "model.ckpt")


@pytest.mark.parametrize("where, message", [
    ("magic", "bad magic"),
    ("index block handle", "runs past the end|checksum|malformed"),
    ("first data block", "data block 0 fails its checksum"),
    ("truncated", "truncated"),
])
def test_a_corrupted_index_is_refused(tmp_path, where, message):
    index = copy_checkpoint(DVBPR_CKPT, tmp_path).with_suffix(".ckpt.index")
    size = index.stat().st_size
    if where == "truncated":
        index.write_bytes(index.read_bytes()[:FOOTER_SIZE - 8])
    else:
        offset = {"magic": size - 1, "index block handle": size - FOOTER_SIZE + 3, "first data block": 10}[where]
        flip_byte(index, offset)
    with pytest.raises(TFCheckpointError, match=message):
        TFCheckpoint(index.with_suffix(""))


def test_a_compressed_block_is_refused_clearly(tmp_path):
    index = copy_checkpoint(DVBPR_CKPT, tmp_path).with_suffix(".ckpt.index")
    data = bytearray(index.read_bytes())
    _, pos = block_handle(data[-FOOTER_SIZE:], 0)
    (offset, size), _ = block_handle(data[-FOOTER_SIZE:], pos)  # the index block
    data[offset + size] = 1  # its trailer's compression type: snappy
    index.write_bytes(bytes(data))
    with pytest.raises(TFCheckpointError, match="snappy"):
        TFCheckpoint(index.with_suffix(""), verify=False)


def test_a_truncated_or_missing_data_shard_is_refused(tmp_path):
    prefix = copy_checkpoint(DVBPR_CKPT, tmp_path)
    shard = Path(f"{prefix}{SHARD}")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(TFCheckpointError, match=r"data shard .* is truncated: DVBPR/\S+ needs bytes"):
        TFCheckpoint(prefix)
    shard.unlink()
    with pytest.raises(TFCheckpointError, match="missing data shard"):
        TFCheckpoint(prefix)


def test_a_checksum_mismatch_names_the_tensor(tmp_path):
    prefix = copy_checkpoint(DVBPR_CKPT, tmp_path)
    entry = TFCheckpoint(prefix).entries["DVBPR/wd2"]
    flip_byte(Path(f"{prefix}{SHARD}"), entry["offset"] + 5)
    ckpt = TFCheckpoint(prefix)
    assert ckpt["DVBPR/wd1"].shape == (64, 32)  # the others still read
    with pytest.raises(TFCheckpointError, match="DVBPR/wd2 fails its checksum"):
        ckpt["DVBPR/wd2"]
    with pytest.raises(TFCheckpointError, match="DVBPR/wd2 fails its checksum"):
        read_checkpoint(prefix)
    assert read_checkpoint(prefix, ["DVBPR/wd2"], verify=False)["DVBPR/wd2"].shape == (32, 32)


def test_a_checkpoint_of_the_other_model_is_refused():
    with pytest.raises(TFCheckpointError, match="not a DVBPR checkpoint: it lacks DVBPR/wc1.*holds GAN/"):
        dvbpr_state_from_tf(TFCheckpoint(GAN_CKPT))
    with pytest.raises(TFCheckpointError, match="not a GAN checkpoint: it lacks GAN/generator/.*holds DVBPR/"):
        gan_state_from_tf(TFCheckpoint(DVBPR_CKPT))


@pytest.mark.parametrize("kwargs, message", [
    (dict(usernum=8), r"DVBPR/Variable has shape \[7, 10\], but a DVBPR .* 8 users .* needs \[8, 10\]"),
    (dict(k=100), r"DVBPR/Variable has shape \[7, 10\], but a DVBPR .*K=100.* needs \[7, 100\]"),
])
def test_a_wrong_user_count_or_k_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dvbpr_state_from_tf(TFCheckpoint(DVBPR_CKPT), **kwargs)


def test_inconsistent_or_unexpected_variables_are_refused():
    tensors = read_checkpoint(DVBPR_CKPT)
    tensors["beta1_power"] = np.float32(0.9)  # optimizer state is ignored
    dvbpr_state_from_tf(tensors)
    bad = {**tensors, "DVBPR/wc3": np.zeros((3, 3, 8, 16), np.float32)}
    with pytest.raises(TFCheckpointError, match=r"DVBPR/wc3 has shape \[3, 3, 8, 16\], .* needs \[3, 3, 16, 16\]"):
        dvbpr_state_from_tf(bad)
    with pytest.raises(TFCheckpointError, match="variables the model does not have: DVBPR/wc6"):
        dvbpr_state_from_tf({**tensors, "DVBPR/wc6": np.zeros((3, 3, 16, 16), np.float32)})
    gan = read_checkpoint(GAN_CKPT)
    gan["GAN/generator/g_h5/w"] = np.zeros((3, 3, 32, 16), np.float32)  # [in, out] swapped
    with pytest.raises(TFCheckpointError, match=r"g_h5/w has shape \[3, 3, 32, 16\], .* needs \[3, 3, 16, 32\]"):
        gan_state_from_tf(gan)


def test_optimizer_slots_are_never_read(tmp_path):
    prefix = copy_checkpoint(DVBPR_CKPT, tmp_path)
    entry = TFCheckpoint(prefix).entries["DVBPR/wd1/Adam"]
    flip_byte(Path(f"{prefix}{SHARD}"), entry["offset"])
    dvbpr_state_from_tf(TFCheckpoint(prefix))  # the corrupted slot is skipped, not read


# ----------------------------------------------------------------------------- runs made with --from-tf

def png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_fixture_dataset(path, usernum, num_items=30, num_categories=6):
    """A dataset in the original layout for the fixtures' models: its first items are the DVBPR fixture's images
    (lossless PNGs at 64 px, so that its embeddings can be compared with TensorFlow's), then random ones; 5
    interactions per user, one each for validation and test."""
    rng = np.random.default_rng(0)
    fixture = list(np.load(FIXTURES / "dvbpr_outputs.npz")["images"])
    images = fixture + list(rng.integers(0, 256, (num_items - len(fixture), 64, 64, 3), dtype=np.uint8))
    items = [{"imgs": png(image), "c": [int(i % num_categories == c) for c in range(num_categories)]}
             for i, image in enumerate(images)]
    train, validation, test = {}, {}, {}
    for user in range(usernum):
        records = [{"productid": int(i)} for i in rng.choice(num_items, size=5, replace=False)]
        validation[user], test[user], train[user] = records[:1], records[1:2], records[2:]
    save_original_format(path, train, validation, test, items, usernum, num_items)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The fixtures' dataset (7 users: theta's rows; 6 categories: the GAN's y_dim) and the runs that the two
    command lines write from the fixtures. The DVBPR checkpoint is renamed as the original named its own, so that
    its prefix carries a global step (3)."""
    root = tmp_path_factory.mktemp("from_tf")
    dataset = write_fixture_dataset(root / "Fixture.npy", usernum=7)
    prefix = copy_checkpoint(DVBPR_CKPT, root, "DVBPR_auc_10_3.ckpt")
    dvbpr_main(["--preset", "original", "--from-tf", str(prefix), "--dataset", str(dataset), "--out",
                str(root / "dvbpr"), "--image-size", "64", "--device", "cpu"])
    gan_main(["--preset", "original", "--from-tf", str(GAN_CKPT), "--out", str(root / "gan"), "--device", "cpu"])
    return root


def test_global_steps_and_epochs_of_checkpoint_names():
    assert prefix_step("DVBPR_auc_100_39728.ckpt") == 39728 and prefix_step("x/DCGAN.model-311502") == 311502
    assert prefix_step("dvbpr.ckpt") is None and prefix_step("gan64.ckpt") is None
    assert checkpoint_prefix("p/DVBPR_auc_100_39728.ckpt.index") == Path("p/DVBPR_auc_100_39728.ckpt")
    assert checkpoint_prefix("p/DCGAN.model-311502.data-00000-of-00001") == Path("p/DCGAN.model-311502")
    for interactions, batch in ((267_640, 128), (21, 128), (1000, 7)):
        for epoch in (1, 2, 19):
            step = epoch_end_step(epoch, interactions, batch)
            assert epoch_at_step(step, interactions, batch) == epoch
    assert epoch_at_step(epoch_end_step(19, 267_640, 128) - 1, 267_640, 128) is None  # within epoch 19
    assert epoch_at_step(None, 21, 128) is None


def test_the_dvbpr_cli_writes_the_checkpoint_as_a_finished_run(converted):
    run = converted / "dvbpr"
    record, = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert (record["epoch"], record["step"], record["protocol"]) == (3, 3, "sampled100")  # 21 interactions/epoch
    epoch, test_auc, valid_auc = re.fullmatch(r"Epoch #(\d+):(\S+) (\S+)\n", (run / "DVBPR.log").read_text()).groups()
    assert (int(epoch), float(test_auc), float(valid_auc)) == pytest.approx((3, record["test_auc"],
                                                                            record["valid_auc"]), rel=1e-11)
    results = json.loads((run / "results.json").read_text())
    assert results["from_tf"].endswith("DVBPR_auc_10_3.ckpt") and results["k"] == 10 and results["epoch"] == 3
    for name in ("best.pt", "checkpoint.pt", "DVBPR_auc_10_3.pt"):
        assert load_checkpoint(run / name, "dvbpr")["step"] == 3
    embeddings = load_checkpoint(run / "embeddings.pt", "dvbpr-embeddings")
    tf_out, tensors = np.load(FIXTURES / "dvbpr_outputs.npz"), TFCheckpoint(DVBPR_CKPT)
    np.testing.assert_allclose(embeddings["items"][:5].numpy(), tf_out["embeddings"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(embeddings["theta"].numpy(), tensors["DVBPR/Variable"])
    opened = open_dvbpr_run(run, with_model=True)
    assert opened.epoch == 3 and opened.config.conv_widths == [8, 16, 16, 16, 16] and opened.config.fc_width == 32
    np.testing.assert_allclose(opened.model.theta @ opened.items[:5].T, tf_out["scores"], rtol=0, atol=1e-5)


def test_a_prefix_without_a_step_gives_no_epoch_and_exact_auc_works(converted, tmp_path):
    results = dvbpr_main(["--preset", "original", "--from-tf", str(DVBPR_CKPT), "--dataset",
                          str(converted / "Fixture.npy"), "--out", str(tmp_path), "--image-size", "64",
                          "--protocol", "exact", "--device", "cpu"])
    assert results["epoch"] is None and results["step"] is None and results["protocol"] == "exact"
    assert results["ties"] == "fail" and results["selected"] == "last"
    assert (tmp_path / "DVBPR.log").read_text().startswith("Epoch #None:")
    assert not list(tmp_path.glob("DVBPR_auc_*")) and open_dvbpr_run(tmp_path).epoch is None


def test_the_gan_cli_writes_a_run_whose_generator_is_tensorflows(converted):
    run = open_gan_run(converted / "gan")
    tf_out = np.load(FIXTURES / "gan_outputs.npz")
    assert run.num_categories == int(tf_out["config_y_dim"]) == 6 and run.model.z_dim == 16
    assert run.config.image_size == 64 and run.config.from_tf == str(GAN_CKPT)
    with torch.no_grad():
        images = run.model(torch.from_numpy(tf_out["z"]), torch.from_numpy(tf_out["labels"]).long())
    np.testing.assert_allclose(images.permute(0, 2, 3, 1).numpy(), tf_out["images"], rtol=0, atol=1e-4)
    assert len(list((converted / "gan" / "samples").glob("test_arange_*.png"))) == 6


def test_preference_maximisation_runs_on_the_converted_runs(converted, tmp_path):
    dataset = load_dataset(converted / "Fixture.npy")
    place_random_classifier(converted / "gan", dataset, 64)  # instead of training one for the in-domain IS
    pm_main(["--preset", "original", "--dvbpr-run", str(converted / "dvbpr"), "--gan-run", str(converted / "gan"),
             "--out", str(tmp_path), "--table", "--trials", "2", "--splits", "2", "--starts", "2", "--steps", "2",
             "--device", "cpu"])
    table = json.loads((tmp_path / "table_iv.json").read_text())["ours"]
    assert all(np.isfinite(v).all() for row in table.values() for v in row.values())


@pytest.mark.parametrize("users, flags, message", [
    (8, [], r"^dvbpr: DVBPR/Variable \(theta\) has shape \[7, 10\], but \S+ has 8 users, which need \[8, 10\]"),
    (7, ["--k", "12"], r"^dvbpr: DVBPR/Variable has shape \[7, 10\], but a DVBPR .*K=12.* needs \[7, 12\]"),
    (7, ["--image-size", "224"], r"^dvbpr: DVBPR/wd1 has shape \[64, 32\]: .*--image-size 33 to 64 gives"),
])
def test_a_checkpoint_that_does_not_fit_is_refused(converted, tmp_path, users, flags, message):
    dataset = converted / "Fixture.npy" if users == 7 else write_fixture_dataset(tmp_path / "Eight.npy", users)
    with pytest.raises(SystemExit, match=message) as refusal:
        dvbpr_main(["--preset", "original", "--from-tf", str(DVBPR_CKPT), "--dataset", str(dataset), "--out",
                    str(tmp_path / "run"), "--image-size", "64", "--device", "cpu", *flags])
    assert "\n" not in str(refusal.value) and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_file_that_is_not_a_checkpoint_is_refused_in_one_line(converted, tmp_path):
    (tmp_path / "model.ckpt.index").write_bytes(b"not a checkpoint")
    for given in (tmp_path / "model.ckpt.index", converted / "Fixture.npy"):
        with pytest.raises(SystemExit, match=r"^dvbpr: .*(the index is truncated|not a TensorFlow checkpoint)") \
                as refusal:
            dvbpr_main(["--from-tf", str(given), "--dataset", str(converted / "Fixture.npy"), "--out",
                        str(tmp_path / "run"), "--device", "cpu"])
        assert "\n" not in str(refusal.value)
    with pytest.raises(SystemExit, match="^gan: not a GAN checkpoint: it lacks GAN/generator/"):
        gan_main(["--from-tf", str(DVBPR_CKPT), "--out", str(tmp_path / "gan"), "--device", "cpu"])


@pytest.mark.parametrize("flags, message", [
    (["--image-size", "128"], r"^gan: the checkpoint's G has 7 transposed convs .* 64 px GAN.*--image-size 64"),
    (["--z-dim", "100"], r"^gan: GAN/generator/g_h0_lin/Matrix has shape \[22, 512\], .* needs \[106, 512\]"),
    (["--train"], r"^gan: --from-tf .* trains nothing"),
])
def test_a_gan_checkpoint_that_does_not_fit_is_refused(tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message):
        gan_main(["--preset", "original", "--from-tf", str(GAN_CKPT), "--out", str(tmp_path), "--device", "cpu",
                  *flags])
    assert not (tmp_path / "checkpoint.pt").exists()
