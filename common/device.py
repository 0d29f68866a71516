"""Device choice and the CUDA fast paths (bf16 autocast, channels_last, fused Adam); plain fp32 on CPU."""
import contextlib

import torch


def pick_device(name="auto"):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA GPU is available")
    return device


def autocast(device, enabled=True):
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device):
    return torch.channels_last if torch.device(device).type == "cuda" else torch.contiguous_format


def fused_adam_kwargs(device):
    return {"fused": True} if torch.device(device).type == "cuda" else {}


def describe(device):
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
