"""The CUDA fast paths against their CPU forms: GPU JPEG decoding, GPU-resident images, bf16 autocast with
channels_last and fused Adam, exact AUC on the GPU, the diffusion generator, and two ranks sharing one GPU.
Skipped without a GPU; on a CUDA machine `python -m pytest -q tests/test_cuda.py` runs them (bench/gpu_check.sh
does, with the benchmarks)."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from attention.main import main as attention_main
from attention.run import open_attention_run
from common.data import load_dataset
from common.device import memory_format
from common.distributed import Ranks
from common.images import ImageStore, decode_resize_nearest, image_cache
from common.metrics import evaluate_ranking
from common.sampling import TripletSampler
from common.training import train_steps
from dvbpr.config import DVBPRConfig
from dvbpr.main import main as dvbpr_main
from dvbpr.model import build_model, embed_items
from dvbpr.train import dvbpr_trainee
from gan.config import GANConfig, with_generator_latent
from gan.diffusion import Diffusion
from gan.model import build_gan, build_optimizers, train_step
from tests.helpers import run_stage
from tests.test_images import BROKEN, make_payloads

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning"),
]
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(catalogue):
    """Colour JPEGs (4:2:0, as product photos are stored) of a tiny catalogue, with its CPU-built cache."""
    path = catalogue(num_users=40, num_items=300, image_size=96)
    dataset = load_dataset(path)
    return dataset, image_cache(dataset, 32, cache_dir=path.parent / "cpu")


def smooth_jpeg(rng, width, height):
    """A product-photo-like JPEG: smooth colour gradients and one sharp-edged shape on white."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    colour = rng.uniform(40, 215, 3)
    pixels = np.full((height, width, 3), 255.0)
    inside = (x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.12
    pixels[inside] = colour + 40 * np.stack([x, y, x * y], -1)[inside]
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("size", [64, 224])
def test_gpu_jpeg_decoding_matches_pillow(size):
    """The same pixels are picked (Pillow's nearest index, exact on CPU) and undecodable files are caught; nvJPEG's
    IDCT and chroma upsampling may differ from libjpeg-turbo's by a few grey levels."""
    rng = np.random.default_rng(0)
    photos = [smooth_jpeg(rng, w, h) for w, h in [(300, 200), (64, 64), (97, 131), (320, 500), (500, 320)]]
    for payloads, mean_limit in ((photos, 1.5), (make_payloads(), 3.0)):
        gpu, bad_gpu = decode_resize_nearest(payloads, size, CUDA)
        cpu, bad_cpu = decode_resize_nearest(payloads, size, CPU)
        assert gpu.device.type == "cuda" and gpu.shape == cpu.shape and gpu.dtype == torch.uint8
        assert bad_gpu == bad_cpu
        difference = (gpu.cpu().float() - cpu.float()).abs()
        for k in range(len(payloads)):
            assert difference[k].mean() < mean_limit, f"image {k}: mean difference {difference[k].mean():.2f}"
    assert bad_cpu == list(BROKEN)


def test_image_cache_built_on_the_gpu_matches_the_cpu_one(tiny, tmp_path):
    dataset, cpu_cache = tiny
    gpu_cache = image_cache(dataset, 32, cache_dir=tmp_path, device=CUDA)
    assert gpu_cache.shape == cpu_cache.shape
    assert np.abs(gpu_cache.astype(np.int16) - cpu_cache.astype(np.int16)).mean() < 2


def test_resident_images_equal_streamed_ones_in_channels_last(tiny):
    _, cache = tiny
    resident, streamed = ImageStore(cache, CUDA), ImageStore(cache, CUDA, resident=False)
    assert resident.resident and not streamed.resident
    ids = torch.tensor([5, 0, 299, 5])
    batch = resident(ids)
    assert batch.device.type == "cuda" and batch.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(batch, streamed(ids), rtol=0, atol=0)
    # across devices the uint8 -> [-1, 1] scaling may round differently in the last bit (seen on an H200: 6e-8)
    torch.testing.assert_close(batch.cpu(), ImageStore(cache, CPU)(ids), rtol=0, atol=1e-6)
    for (batch_ids,), images in streamed.stream((torch.tensor([k, k + 1]),) for k in range(0, 20, 2)):
        torch.testing.assert_close(images, resident(batch_ids), rtol=0, atol=0)


def dvbpr_on(device, dataset, cache, bf16, steps=2):
    """A tiny DVBPR after `steps` Adam steps (dropout off) on `device`, as dvbpr.train builds it there."""
    torch.manual_seed(0)
    cfg = DVBPRConfig(k=16, image_size=32, dropout=0.0, fc_width=256, batch_size=32, bf16=bf16)
    model = build_model(cfg, dataset.usernum).to(device, memory_format=memory_format(device))
    ranks = Ranks(device=device)
    trainee = dvbpr_trainee(model, dataset, ImageStore(cache, device), cfg, ranks)
    triplets = [torch.from_numpy(a) for a in TripletSampler(dataset, seed=0).sample(steps * 32)]
    loss = train_steps(model, trainee, triplets, cfg, ranks)
    return model, loss


def test_dvbpr_cuda_step_tracks_the_cpu_step(tiny):
    """fp32 on CUDA (channels_last, fused Adam, TF32 convolutions) follows the CPU steps; bf16 autocast gives
    embeddings that point the same way and a loss within a percent. TF32 keeps 10 mantissa bits and bf16 8, so the
    limits are 0.995 and 0.98 (an H200 under torch 2.11 gave 0.9981 and 0.9882 after two steps)."""
    dataset, cache = tiny
    cpu_model, cpu_loss = dvbpr_on(CPU, dataset, cache, bf16=False)
    reference = embed_items(cpu_model, ImageStore(cache, CPU), 64)
    for bf16, cosine_limit in ((False, 0.995), (True, 0.98)):
        model, loss = dvbpr_on(CUDA, dataset, cache, bf16)
        assert loss == pytest.approx(cpu_loss, rel=0.01)
        embeddings = embed_items(model, ImageStore(cache, CUDA), 64, bf16=bf16).cpu()
        assert embeddings.dtype == torch.float32 and embeddings.shape == reference.shape
        cosine = torch.nn.functional.cosine_similarity(embeddings, reference, dim=1)
        assert cosine.min() > cosine_limit, f"bf16={bf16}: cosine {cosine.min():.5f}"


def test_dvbpr_loss_falls_under_bf16_on_cuda(tiny):
    dataset, cache = tiny
    _, first = dvbpr_on(CUDA, dataset, cache, bf16=True, steps=1)
    _, later = dvbpr_on(CUDA, dataset, cache, bf16=True, steps=60)
    assert np.isfinite(later) and later < first


def test_exact_and_sampled_metrics_on_cuda_equal_the_cpu_ones(tiny):
    """Small integer factors: every score is exact in float32 on both devices, and many scores tie."""
    dataset, _ = tiny
    rng = torch.Generator().manual_seed(0)
    theta, items = (torch.randint(-2, 3, (n, 4), generator=rng).float()
                    for n in (dataset.usernum, dataset.itemnum))
    for protocol in ("exact", "sampled100"):
        on_cpu = evaluate_ranking(dataset, lambda u: theta[u] @ items.T, protocol=protocol, cutoffs=(1, 5, 20))
        theta_gpu, items_gpu = theta.to(CUDA), items.to(CUDA)
        on_gpu = evaluate_ranking(dataset, lambda u: theta_gpu[u] @ items_gpu.T, protocol=protocol, device=CUDA,
                                  chunk_users=7, cutoffs=(1, 5, 20))
        assert on_gpu["metrics"] == on_cpu["metrics"] and len(on_cpu["metrics"]) > 2


@pytest.mark.parametrize("bf16", [False, True])
def test_gan_step_on_cuda_is_finite_and_moves_both_nets(tiny, bf16):
    dataset, cache = tiny
    cfg = GANConfig(image_size=32, z_dim=16, g_width=8, d_width=8, batch_size=16, bf16=bf16)
    generator, discriminator = build_gan(cfg, dataset.num_categories, CUDA)
    opt_g, opt_d = build_optimizers(cfg, generator, discriminator, CUDA)
    before = [p.detach().clone() for p in (generator.to_rgb.weight, discriminator.h_lin.weight)]
    ids = torch.arange(16)
    labels = torch.as_tensor(dataset.item_category[:16], device=CUDA)
    losses = train_step(generator, discriminator, opt_g, opt_d, ImageStore(cache, CUDA)(ids), labels,
                        torch.rand(16, 16, device=CUDA) * 2 - 1, bf16)
    assert all(torch.isfinite(value) for value in losses.values())
    after = (generator.to_rgb.weight, discriminator.h_lin.weight)
    assert all(not torch.equal(b, a) for b, a in zip(before, after))


def cli(dataset_path, out, *extra):
    return ["--dataset", str(dataset_path), "--out", str(out), "--image-size", "32", "--k", "8", "--fc-width", "256",
            "--batch-size", "16", "--epochs", "2", "--device", "cuda", *extra]


def test_diffusion_on_cuda_trains_under_bf16_and_samples_as_on_the_cpu():
    cfg = with_generator_latent(GANConfig(generator="diffusion", image_size=16, g_width=8, sample_steps=4))
    torch.manual_seed(0)
    cpu_model = Diffusion(cfg, num_categories=3).eval()
    model = Diffusion(cfg, num_categories=3, device=CUDA)
    model.unet.load_state_dict(cpu_model.unet.state_dict())
    z, labels = cpu_model.sample_z(4, rng=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():  # TF32 convolutions on CUDA: an H200 was 1.4e-3 off in 4 of 3072 values
        torch.testing.assert_close(model.eval()(z.to(CUDA), labels.to(CUDA)).cpu(), cpu_model(z, labels),
                                   atol=5e-3, rtol=1e-3)
    guided = model.guided_sample(z.to(CUDA), labels.to(CUDA), lambda x: x[:, 0].mean((1, 2)), scale=10.0)
    assert torch.isfinite(guided).all()
    optimizers = model.optimizers(cfg, CUDA)
    real = torch.rand(4, 3, 16, 16, device=CUDA) * 2 - 1
    losses = [model.train_step({"unet": model.unet.train()}, optimizers, real, labels.to(CUDA), None, bf16=True)
              ["loss"].item() for _ in range(5)]
    assert all(np.isfinite(losses))


def test_dvbpr_main_runs_on_cuda(tiny, tmp_path):
    dataset, _ = tiny
    results = dvbpr_main(cli(dataset.path, tmp_path / "run"))
    assert results["device"].startswith("cuda") and results["epoch"] in (1, 2)
    assert 0 <= results["test_auc"] <= 1 and json.loads((tmp_path / "run" / "results.json").read_text()) == results


def test_attention_main_runs_on_cuda_and_its_scorer_matches_the_cpu_one(tiny, tmp_path):
    """The attention stage on the shared loop under bf16 autocast; its exact scorer in fp32 on both devices."""
    dataset, cache = tiny
    results = attention_main(["--dataset", str(dataset.path), "--out", str(tmp_path / "run"), "--image-size", "32",
                              "--conv-widths", "8", "8", "8", "8", "8", "--k", "8", "--batch-size", "16",
                              "--epochs", "2", "--device", "cuda"])
    assert results["device"].startswith("cuda") and 0 <= results["test_auc"] <= 1
    run = open_attention_run(tmp_path / "run", device=CUDA)
    on_cpu = open_attention_run(tmp_path / "run", device=CPU)
    on_cpu.config.bf16 = run.config.bf16 = False
    users = torch.arange(8)
    torch.testing.assert_close(run.scorer(users.to(CUDA)).cpu(), on_cpu.scorer(users), rtol=1e-3, atol=1e-4)


def test_two_ranks_share_one_gpu_under_torchrun(tiny, tmp_path):
    """A functional check of DDP, sharded evaluation and rank-0 writing on one GPU (gloo, see cuda_placement)."""
    dataset, _ = tiny
    ranked = run_stage("dvbpr/main.py", cli(dataset.path, tmp_path / "two"), nproc=2)
    assert "x 2 ranks" in ranked.stdout and ranked.stdout.count("Epoch #2:") == 1
    assert (tmp_path / "two" / "DVBPR.log").read_text().count("\n") == 2
