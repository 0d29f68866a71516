"""Device choice and the CUDA fast paths (bf16 autocast, channels_last, fused Adam); plain fp32 on CPU."""
import contextlib

import torch

from common.errors import ConfigError


def pick_device(name="auto"):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: this project runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but no CUDA GPU is available (use --device cpu)")
    return device


def autocast(device, enabled=True):
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device, channels_last=False):
    """channels_last on CUDA, and on the CPU where asked (oneDNN runs some small nets faster so)."""
    return torch.channels_last if channels_last or torch.device(device).type == "cuda" else torch.contiguous_format


def fused_adam_kwargs(device):
    return {"fused": True} if torch.device(device).type == "cuda" else {}


def describe(device):
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
