"""The original DVBPR's TensorFlow checkpoint (DVBPR/main.py of the original repository, e.g. the released
DVBPR_auc_100_39728.ckpt) as a state dict of our DVBPR, without TensorFlow:

    TF (under DVBPR/)   shape                PyTorch key                 conversion
    wc1 .. wc5          [kh, kw, in, out]    backbone.conv1..5.weight    permute (3, 2, 0, 1) -> [out, in, kh, kw]
    bc1 .. bc5          [out]                backbone.conv1..5.bias      as is
    wd1                 [S*S*C, F]           backbone.fc1.weight         rows (h, w, c) -> (c, h, w), transpose
    bd1                 [F]                  backbone.fc1.bias           as is
    wd2                 [F, F]               backbone.fc2.weight         transpose
    bd2                 [F]                  backbone.fc2.bias           as is
    wd3                 [F, K]               head.weight                 transpose
    bd3                 [K]                  head.bias                   as is
    Variable            [usernum, K]         theta                       as is

TF flattened conv5's pooled output in (h, w, c) order, PyTorch flattens (c, h, w): hence the permuted rows of wd1.
The Adam slots the original saved beside its variables (DVBPR/<var>/Adam, /Adam_1) are ignored.

    ckpt = TFCheckpoint("DVBPR_auc_100_39728.ckpt")
    state = dvbpr_state_from_tf(ckpt, usernum=dataset.usernum, k=100)
"""
import math

import numpy as np
import torch

from common.tf_checkpoint import check_shapes, dim, require, shapes_of

LAYERS = [  # (TF weight, TF bias, PyTorch module, conversion of the weight)
    ("wc1", "bc1", "backbone.conv1", "conv"),
    ("wc2", "bc2", "backbone.conv2", "conv"),
    ("wc3", "bc3", "backbone.conv3", "conv"),
    ("wc4", "bc4", "backbone.conv4", "conv"),
    ("wc5", "bc5", "backbone.conv5", "conv"),
    ("wd1", "bd1", "backbone.fc1", "linear_from_hwc"),
    ("wd2", "bd2", "backbone.fc2", "linear"),
    ("wd3", "bd3", "head", "linear"),
]
THETA = ("Variable", "theta")
SCOPE = "DVBPR/"
KERNELS = (11, 5, 3, 3, 3)  # conv1..conv5, fixed by the architecture


def tf_names():
    return [SCOPE + name for weight, bias, _, _ in LAYERS for name in (weight, bias)] + [SCOPE + THETA[0]]


def dvbpr_config_from_tf(tensors):
    """The sizes of the checkpoint's model: conv widths, fc width, K, usernum and the side S of conv5's pooled
    output (7 at 224 px; the image size itself is not recorded)."""
    require(tensors, tf_names(), "DVBPR")
    return config_of(shapes_of(tensors, tf_names()))


def config_of(shapes):
    widths = tuple(dim(shapes, f"{SCOPE}wc{i}", -1) for i in range(1, 6))
    side = math.isqrt(dim(shapes, SCOPE + "wd1", 0) // max(widths[-1], 1))  # a non-square is refused later
    return {"widths": widths, "fc_width": dim(shapes, SCOPE + "wd1", -1), "k": dim(shapes, SCOPE + "wd3", -1),
            "usernum": dim(shapes, SCOPE + "Variable", 0), "feature_side": side}


def expected_shapes(c):
    w, f, k = c["widths"], c["fc_width"], c["k"]
    shapes = {"Variable": (c["usernum"], k), "wd1": (c["feature_side"] ** 2 * w[-1], f), "bd1": (f,),
              "wd2": (f, f), "bd2": (f,), "wd3": (f, k), "bd3": (k,)}
    for i, (kernel, c_in, c_out) in enumerate(zip(KERNELS, (3,) + w[:-1], w), start=1):
        shapes[f"wc{i}"], shapes[f"bc{i}"] = (kernel, kernel, c_in, c_out), (c_out,)
    return {SCOPE + name: shape for name, shape in shapes.items()}


def describe_tf_model(c):
    return (f"a DVBPR with conv widths {c['widths']}, fc width {c['fc_width']}, K={c['k']}, {c['usernum']} users "
            f"and a {c['feature_side']}x{c['feature_side']} conv5 output")


def linear_from_hwc(matrix, c):
    """TF [S*S*C, F] with rows in (h, w, c) order -> PyTorch [F, C*S*S] with columns in (c, h, w) order."""
    side, channels = c["feature_side"], c["widths"][-1]
    return matrix.reshape(side, side, channels, -1).transpose(3, 2, 0, 1).reshape(matrix.shape[1], -1)


CONVERT = {
    "conv": lambda w, c: w.transpose(3, 2, 0, 1),  # [kh, kw, in, out] -> [out, in, kh, kw]
    "linear": lambda w, c: w.T,                    # [in, out] -> [out, in]
    "linear_from_hwc": linear_from_hwc,
}


def dvbpr_state_from_tf(tensors, usernum=None, k=None):
    """{PyTorch key: tensor} for DVBPR(backbone, usernum, k) from the original's variables (a mapping name ->
    array, e.g. a TFCheckpoint). Refuses, naming the variable and both shapes, a checkpoint whose variables do not
    form one consistent DVBPR, or whose K or user count is not the given one."""
    require(tensors, tf_names(), "DVBPR")
    shapes = shapes_of(tensors, tf_names())
    c = config_of(shapes)
    c.update({key: value for key, value in (("usernum", usernum), ("k", k)) if value is not None})
    check_shapes(shapes, expected_shapes(c), describe_tf_model(c))
    arrays = {name: np.asarray(tensors[name]) for name in tf_names()}  # only now read: optimizer slots never are
    state = {}
    for weight, bias, module, kind in LAYERS:
        state[f"{module}.weight"] = CONVERT[kind](arrays[SCOPE + weight], c)
        state[f"{module}.bias"] = arrays[SCOPE + bias]
    state[THETA[1]] = arrays[SCOPE + THETA[0]]
    return {key: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)) for key, value in state.items()}
