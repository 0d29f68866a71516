"""Reading the original's TensorFlow checkpoints and converting them, checked against outputs of real TensorFlow.

The fixtures under tests/fixtures/tf/ come from make_tf_fixtures.py there (TensorFlow is needed only to remake them).
"""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common.tf_checkpoint import FOOTER_SIZE, TFCheckpoint, TFCheckpointError, block_handle, list_variables, \
    read_checkpoint
from dvbpr.model import CNNF, DVBPR
from dvbpr.tf_import import dvbpr_config_from_tf, dvbpr_state_from_tf
from gan.model import Discriminator, Generator
from gan.tf_import import gan_config_from_tf, gan_state_from_tf

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tf"
DVBPR_CKPT, GAN_CKPT = FIXTURES / "dvbpr.ckpt", FIXTURES / "gan.ckpt"
SHARD = ".data-00000-of-00001"


def copy_checkpoint(prefix, tmp_path):
    for suffix in (".index", SHARD):
        shutil.copy(f"{prefix}{suffix}", tmp_path / f"{prefix.name}{suffix}")
    return tmp_path / prefix.name


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
