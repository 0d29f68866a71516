"""The original GAN's TensorFlow checkpoint (GAN/model.py and GAN/ops.py of the original repository, e.g. the
released DCGAN.model-311502) as state dicts of our 64x64 Generator and Discriminator, without TensorFlow.

Each TF layer maps to one PyTorch module; its tensors map by kind:

    kind      TF tensor            PyTorch parameter   conversion
    linear    Matrix [in, out]     weight [out, in]    transpose (plus the flatten orders below)
              bias                 bias
    conv      w [kh, kw, in, out]  weight              permute (3, 2, 0, 1) -> Conv2d [out, in, kh, kw]
              biases               bias
    deconv    w [kh, kw, out, in]  weight              permute (3, 2, 0, 1) -> ConvTranspose2d [in, out, kh, kw],
              biases               bias                no kernel flip (both are the transpose of the same conv)
    bn        gamma, beta          weight, bias
              moving_mean          running_mean
              moving_variance      running_var         (num_batches_tracked: 0; unused with momentum 0.1)

TF reshaped g_h0_lin's output to [4, 4, C] and flattened d_h3's to [4 * 4 * C] in (h, w, c) order; PyTorch uses
(c, h, w). So g_h0_lin's output columns and bias, and d_h4_lin's input rows, are permuted.
The original saved no optimiser state (its Saver came before its optimizers); any found is ignored.

    g_state, d_state = gan_state_from_tf(TFCheckpoint("DCGAN.model-311502"))
"""
import numpy as np
import torch

from common.tf_checkpoint import check_shapes, dim, require, shapes_of

GENERATOR = [  # (TF layer under GAN/generator/, PyTorch module of Generator, kind)
    ("g_h0_lin", "h0_lin", "linear"), ("g_bn0", "bn0", "bn"),
    ("g_h1", "deconvs.0", "deconv"), ("g_bn1", "bns.0", "bn"),
    ("g_h2", "deconvs.1", "deconv"), ("g_bn2", "bns.1", "bn"),
    ("g_h3", "deconvs.2", "deconv"), ("g_bn3", "bns.2", "bn"),
    ("g_h4", "deconvs.3", "deconv"), ("g_bn4", "bns.3", "bn"),
    ("g_h5", "deconvs.4", "deconv"), ("g_bn5", "bns.4", "bn"),
    ("g_h6", "deconvs.5", "deconv"), ("g_bn6", "bns.5", "bn"),
    ("g_h7", "to_rgb", "deconv"),
]
DISCRIMINATOR = [  # (TF layer under GAN/discriminator/, PyTorch module of Discriminator, kind)
    ("d_h0_conv", "convs.0", "conv"),
    ("d_h1_conv", "convs.1", "conv"), ("d_bn1", "bns.1", "bn"),
    ("d_h2_conv", "convs.2", "conv"), ("d_bn2", "bns.2", "bn"),
    ("d_h3_conv", "convs.3", "conv"), ("d_bn3", "bns.3", "bn"),
    ("d_h4_lin", "h_lin", "linear"),
]
TENSORS = {  # kind: [(TF tensor, PyTorch parameter)]
    "linear": [("Matrix", "weight"), ("bias", "bias")],
    "conv": [("w", "weight"), ("biases", "bias")],
    "deconv": [("w", "weight"), ("biases", "bias")],
    "bn": [("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"), ("moving_variance", "running_var")],
}
G_SCOPE, D_SCOPE = "GAN/generator/", "GAN/discriminator/"


def pairs(scope, layers):
    """(TF name, PyTorch key, kind, TF tensor) of every tensor of `layers`."""
    return [(f"{scope}{layer}/{tensor}", f"{module}.{param}", kind, tensor)
            for layer, module, kind in layers for tensor, param in TENSORS[kind]]


def tf_names():
    return [name for scope, layers in ((G_SCOPE, GENERATOR), (D_SCOPE, DISCRIMINATOR))
            for name, _, _, _ in pairs(scope, layers)]


def gan_config_from_tf(tensors):
    """Generator(64, z_dim, num_categories, g_width) and Discriminator(64, num_categories, d_width) sizes."""
    require(tensors, tf_names(), "GAN")
    return config_of(shapes_of(tensors, tf_names()))


def config_of(shapes):
    num_categories = dim(shapes, D_SCOPE + "d_h0_conv/w", 2) - 3  # D's input is the image's 3 channels + y
    return {"z_dim": dim(shapes, G_SCOPE + "g_h0_lin/Matrix", 0) - num_categories, "num_categories": num_categories,
            "g_width": dim(shapes, G_SCOPE + "g_h6/w", 2), "d_width": dim(shapes, D_SCOPE + "d_h0_conv/w", 3)}


def expected_shapes(c):
    g, d, y = c["g_width"], c["d_width"], c["num_categories"]
    shapes = {G_SCOPE + "g_h0_lin/Matrix": (c["z_dim"] + y, 4 * 4 * 4 * g), G_SCOPE + "g_h0_lin/bias": (4 * 4 * 4 * g,)}
    g_channels = [4 * g, 4 * g, 4 * g, 4 * g, 4 * g, 2 * g, g, 3]  # g_h0_lin's reshape, then g_h1 .. g_h7
    for n in range(1, 8):
        c_in, c_out = g_channels[n - 1], g_channels[n]
        shapes[f"{G_SCOPE}g_h{n}/w"], shapes[f"{G_SCOPE}g_h{n}/biases"] = (3, 3, c_out, c_in), (c_out,)
    for n in range(7):
        for tensor, _ in TENSORS["bn"]:
            shapes[f"{G_SCOPE}g_bn{n}/{tensor}"] = (g_channels[n],)
    d_channels = [3, d, 2 * d, 4 * d, 8 * d]
    for n in range(4):
        c_in, c_out = d_channels[n] + y, d_channels[n + 1]
        shapes[f"{D_SCOPE}d_h{n}_conv/w"], shapes[f"{D_SCOPE}d_h{n}_conv/biases"] = (5, 5, c_in, c_out), (c_out,)
    for n in range(1, 4):
        for tensor, _ in TENSORS["bn"]:
            shapes[f"{D_SCOPE}d_bn{n}/{tensor}"] = (d_channels[n + 1],)
    shapes[D_SCOPE + "d_h4_lin/Matrix"], shapes[D_SCOPE + "d_h4_lin/bias"] = (4 * 4 * 8 * d, 1), (1,)
    return shapes


def describe_tf_model(c):
    return (f"a 64x64 GAN with z_dim {c['z_dim']}, {c['num_categories']} categories, G width {c['g_width']} and "
            f"D width {c['d_width']}")


def hwc_rows_to_chw(m, side=4):
    """[side*side*C, n] with rows in (h, w, c) order -> rows in (c, h, w) order."""
    return m.reshape(side, side, -1, m.shape[-1]).transpose(2, 0, 1, 3).reshape(m.shape)


FLATTENED = {  # TF reshaped g_h0_lin's output to 4x4xC and flattened d_h3's 4x4xC output, both in (h, w, c) order
    G_SCOPE + "g_h0_lin/Matrix": lambda m: hwc_rows_to_chw(m.T),     # its output columns
    G_SCOPE + "g_h0_lin/bias": lambda b: hwc_rows_to_chw(b[:, None])[:, 0],
    D_SCOPE + "d_h4_lin/Matrix": lambda m: hwc_rows_to_chw(m).T,     # its input rows
}


def convert(name, tensor, a):
    if name in FLATTENED:
        return FLATTENED[name](a)
    if tensor == "w":
        return a.transpose(3, 2, 0, 1)
    return a.T if tensor == "Matrix" else a


def state_of(arrays, scope, layers):
    state = {}
    for name, key, _, tensor in pairs(scope, layers):
        state[key] = torch.from_numpy(np.ascontiguousarray(convert(name, tensor, arrays[name]), dtype=np.float32))
    for _, module, kind in layers:
        if kind == "bn":
            state[f"{module}.num_batches_tracked"] = torch.tensor(0)
    return state


def gan_state_from_tf(tensors):
    """(Generator state dict, Discriminator state dict) from the original's variables (a mapping name -> array,
    e.g. a TFCheckpoint). Refuses, naming the variable and both shapes, a checkpoint whose variables do not form
    one consistent 64x64 GAN of the original's layout; build the models with gan_config_from_tf's sizes."""
    c = gan_config_from_tf(tensors)
    check_shapes(shapes_of(tensors, tf_names()), expected_shapes(c), describe_tf_model(c))
    arrays = {name: np.asarray(tensors[name]) for name in tf_names()}
    return state_of(arrays, G_SCOPE, GENERATOR), state_of(arrays, D_SCOPE, DISCRIMINATOR)
