"""Two ranks with gloo on CPU: the distributed step, evaluation and checkpoints equal the single-process ones."""
import dataclasses
import inspect
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from common.checkpoint import load_checkpoint
from common.data import load_dataset
from common.distributed import NO_FORWARD_BUFFER_SYNC, Ranks, cuda_placement, setup, teardown
from common.images import image_cache, image_store
from common.metrics import evaluate_auc
from common.sampling import TripletSampler
from common.seeding import seed_everything
from common.training import train_steps
from dvbpr.config import DVBPRConfig
from dvbpr.model import build_model, embed_items
from dvbpr.train import dvbpr_trainee
from gan.config import GANConfig, with_generator_latent
from gan.generators import build_generator
from gan.model import build_gan, train_step
from gan.train import labelled_items, training_batch
from tests.helpers import place_random_classifier, run_stage

WORLD = 2


@pytest.fixture(scope="module")
def tiny(catalogue):
    path = catalogue()
    image_cache(load_dataset(path), 32)  # built once here, so that the ranks only read it
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The step tests use SGD: Adam divides by sqrt(v) + 1e-8, which turns a gradient of 1e-9 (float noise where the
# single-process sum cancels to 0) into a step of lr/10, so it would hide what is compared behind its noise.

def dvbpr_steps(dataset, store, ranks):
    """Two SGD steps on global batches of 8 triplets, dropout off; (mean loss, model)."""
    torch.manual_seed(0)
    cfg = DVBPRConfig(k=8, image_size=32, dropout=0.0, fc_width=64, batch_size=8, bf16=False)
    model = build_model(cfg, dataset.usernum)
    trainee = dataclasses.replace(dvbpr_trainee(model, dataset, store, cfg, ranks),
                                  optimizer=torch.optim.SGD(model.parameters(), lr=1e-3))
    triplets = [torch.from_numpy(a) for a in TripletSampler(dataset, seed=0).sample(16)]
    loss = train_steps(ranks.wrap(model), trainee, triplets, cfg, ranks)
    return loss, model


def gan_steps(dataset, store, ranks):
    """Two GAN iterations (SGD) on global batches of 8 images; the generator's and discriminator's state."""
    torch.manual_seed(0)
    cfg = GANConfig(image_size=32, z_dim=16, g_width=4, d_width=4, batch_size=8, bf16=False)
    generator, discriminator = build_gan(cfg, dataset.num_categories, ranks.device)
    opt_g, opt_d = (torch.optim.SGD(net.parameters(), lr=0.05) for net in (generator, discriminator))
    g_net, d_net = ranks.wrap(generator), ranks.wrap(discriminator)
    items, labels, share = labelled_items(dataset), torch.as_tensor(dataset.item_category), ranks.share(8)
    for step in (1, 2):
        ids, z = training_batch(cfg, items, step)
        train_step(g_net, d_net, opt_g, opt_d, store(ids[share]), labels[ids[share]], z[share], bf16=False)
    return {**generator.state_dict(), **{f"D.{k}": v for k, v in discriminator.state_dict().items()}}


def auc_of(dataset, ranks, protocol):
    rng = torch.Generator().manual_seed(1)
    theta, items = torch.randn(dataset.usernum, 8, generator=rng), torch.randn(dataset.itemnum, 8, generator=rng)
    return evaluate_auc(dataset, lambda users: theta[users] @ items.T, protocol=protocol, split="test",
                        users=torch.tensor(ranks.shard(dataset.usernum)), combine=ranks.gather)


def rank_worker(rank, path, port):
    torch.set_num_threads(1)
    dataset = load_dataset(path)
    store = image_store(dataset, 32, device="cpu")
    single = Ranks()
    reference = dict(dvbpr=dvbpr_steps(dataset, store, single), gan=gan_steps(dataset, store, single),
                     auc={p: auc_of(dataset, single, p) for p in ("exact", "sampled100")})
    reference["embeddings"] = embed_items(reference["dvbpr"][1], store, 64, single, bf16=False)

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    ranks = setup("cpu")
    try:
        assert (ranks.rank, ranks.world_size) == (rank, WORLD)
        loss, model = dvbpr_steps(dataset, store, ranks)
        assert loss == pytest.approx(reference["dvbpr"][0], rel=1e-5)
        torch.testing.assert_close(model.state_dict(), reference["dvbpr"][1].state_dict(), rtol=1e-4, atol=1e-6)
        embeddings = embed_items(model, store, 64, ranks, bf16=False)
        torch.testing.assert_close(embeddings, reference["embeddings"], rtol=1e-4, atol=1e-6)
        # a deconvolution's bias ahead of batch norm has no gradient but float noise: 1.5e-5 apart on a 16-core CPU
        torch.testing.assert_close(gan_steps(dataset, store, ranks), reference["gan"], rtol=1e-4, atol=5e-5)
        for protocol, expected in reference["auc"].items():
            sharded = auc_of(dataset, ranks, protocol)
            assert sharded["num_users"] == expected["num_users"] == dataset.usernum
            assert sharded["all"] == pytest.approx(expected["all"]) and sharded["cold"] == pytest.approx(
                expected["cold"])
        assert ranks.gather(torch.arange(rank + 1)).tolist() == [0, 0, 1]
    finally:
        teardown()


def test_two_ranks_step_evaluate_and_gather_as_one_process(tiny):
    """One DDP step (DVBPR: BPR sums and weight decay; GAN: global batch norm) equals the single-process step on
    the same global batch; sharded embeddings and AUC equal the single ones."""
    mp.spawn(rank_worker, args=(tiny, free_port()), nprocs=WORLD)


def test_ranks_split_batches_and_shards():
    assert Ranks(1, 4).share(128) == slice(32, 64)
    with pytest.raises(ValueError, match="does not split evenly over 3 ranks"):
        Ranks(0, 3).share(128)
    shards = [Ranks(rank, 3).shard(10) for rank in range(3)]
    assert [list(s) for s in shards] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


def test_the_buffer_sync_switch_is_one_this_torchs_ddp_takes():
    """Its name changed between torch versions (2.11 on an H200 machine lacked the newer one)."""
    assert NO_FORWARD_BUFFER_SYNC in inspect.signature(DistributedDataParallel.__init__).parameters


def test_cuda_ranks_take_one_gpu_each_or_share_them_over_gloo():
    assert [cuda_placement(rank, 4, 4) for rank in range(4)] == [(0, "nccl"), (1, "nccl"), (2, "nccl"), (3, "nccl")]
    assert [cuda_placement(rank, 2, 4) for rank in range(2)] == [(0, "nccl"), (1, "nccl")]
    assert [cuda_placement(rank, 2, 1) for rank in range(2)] == [(0, "gloo"), (0, "gloo")]
    assert [cuda_placement(rank, 3, 2) for rank in range(3)] == [(0, "gloo"), (1, "gloo"), (0, "gloo")]
    with pytest.raises(RuntimeError, match="no GPU"):
        cuda_placement(0, 2, 0)


def test_dvbpr_under_torchrun_resumes_in_one_process_as_the_uninterrupted_run(tiny, tmp_path):
    """Epoch 1 on two ranks then epoch 2 in one process ends where two epochs in one process end (dropout off, so
    that the ranks' own dropout streams do not enter), and the two-rank run writes one log."""
    flags = ["--dataset", str(tiny), "--image-size", "32", "--fc-width", "64", "--k", "8", "--batch-size", "8",
             "--dropout", "0", "--device", "cpu"]
    run_stage("dvbpr/main.py", flags + ["--epochs", "2", "--out", str(tmp_path / "one")])
    ranked = run_stage("dvbpr/main.py", flags + ["--epochs", "1", "--out", str(tmp_path / "two")], nproc=2)
    assert "x 2 ranks" in ranked.stdout
    assert ranked.stdout.count("Epoch #1:") == 1
    assert (tmp_path / "two" / "DVBPR.log").read_text().count("\n") == 1
    run_stage("dvbpr/main.py", ["--resume", "--epochs", "2", "--out", str(tmp_path / "two")])

    one, two = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("one", "two"))
    assert one["step"] == two["step"]
    # Adam turns float noise in a near-zero gradient (a mostly dead ReLU's bias) into a step of up to lr (1e-4), and
    # does so again at the next step: 1.5e-4 apart on a 16-core CPU, hence atol twice lr
    torch.testing.assert_close(two["model"], one["model"], rtol=1e-3, atol=2e-4)
    results = [json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "two")]
    assert results[1]["test_auc"] == pytest.approx(results[0]["test_auc"], abs=0.01)


def gan_on_one_and_two_ranks(tiny, tmp_path, *flags):
    """(dataset, one, two): the checkpoints of one epoch of gan/main.py --train with `flags` on the tiny catalogue, in
    one process and under two ranks."""
    dataset = load_dataset(tiny)
    common = ["--train", "--dataset", str(tiny), "--image-size", "32", "--z-dim", "16", "--g-width", "4",
              "--d-width", "4", "--batch-size", "16", "--epochs", "1", "--consistency-samples", "4", "--device", "cpu"]
    for name, nproc in (("one", 1), ("two", 2)):
        place_random_classifier(tmp_path / name, dataset, 32)
        run_stage("gan/main.py", [*common, *flags, "--out", str(tmp_path / name)], nproc)
    one, two = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("one", "two"))
    return dataset, one, two


def assert_updates_agree(starts, one, two):
    """Each net's whole update from its `starts` ({net: {name: initial tensor}}) under two ranks within a tenth of
    the update in one process."""
    for net, start in starts.items():
        update_one, update_two = (torch.cat([(run["model"][net][name] - weight).flatten()
                                             for name, weight in start.items()]) for run in (one, two))
        assert (update_two - update_one).norm() < 0.1 * update_one.norm(), net


def test_gan_under_torchrun_learns_what_one_process_learns(tiny, tmp_path):
    """The same iterations under two ranks move the nets as one process does. Compared as the whole update from
    the shared initialisation: Adam turns float noise in near-zero gradients (e.g. of the conv biases ahead of
    batch norm, which have none) into steps of up to lr, so the runs differ by ~3% of the update; with per-rank
    batch norm instead of the global one they differ by ~35%."""
    dataset, one, two = gan_on_one_and_two_ranks(tiny, tmp_path)
    assert one["step"] == two["step"] == len(labelled_items(dataset)) // 16
    cfg = GANConfig(image_size=32, z_dim=16, g_width=4, d_width=4, batch_size=16, epochs=1)
    seed_everything(cfg.seed)  # as training does before building the nets
    initial = dict(zip(("generator", "discriminator"), build_gan(cfg, dataset.num_categories, torch.device("cpu"))))
    assert_updates_agree({net: {name: net_start.state_dict()[name] for name, _ in net_start.named_parameters()}
                          for net, net_start in initial.items()}, one, two)


def test_the_vaegan_under_torchrun_learns_and_keeps_the_statistics_one_process_does(tiny, tmp_path):
    """The VAE-GAN's extras: its adaptive weight from the whole batch's gradients, its ex-post prior's running
    statistics from the whole batch's codes and its prior fakes from the rows one process takes (every fourth, each
    rank's 8 a multiple of 4). Compared as the LSGAN's above, each update and the statistics' own change against one
    process's."""
    dataset, one, two = gan_on_one_and_two_ranks(tiny, tmp_path, "--generator", "vaegan", "--ex-post-prior",
                                                 "--prior-fakes", "--prior-fakes-every", "4")
    cfg = with_generator_latent(GANConfig(**one["config"]))
    seed_everything(cfg.seed)
    initial = build_generator(cfg, dataset.num_categories)
    starts = {net: getattr(initial, net).state_dict() for net in (*initial.nets, "aggregate")}
    assert_updates_agree({net: {name: weight for name, weight in start.items() if weight.is_floating_point()}
                          for net, start in starts.items()}, one, two)


def test_the_vaes_mixture_under_torchrun_is_fitted_once_to_what_one_process_learned(tiny, tmp_path):
    """--ex-post-components: the main rank fits the mixture after the last iteration, from weights that two ranks
    moved as one process does, so the two mixtures agree to float noise."""
    dataset, one, two = gan_on_one_and_two_ranks(tiny, tmp_path, "--generator", "vae", "--ex-post-prior",
                                                 "--ex-post-components", "2")
    for name in ("weight", "mean", "factor"):
        fitted_one, fitted_two = one["model"]["aggregate"][name], two["model"]["aggregate"][name]
        assert (fitted_two - fitted_one).norm() < 1e-3 * fitted_one.norm(), name   # 2e-5 measured
    assert not torch.equal(one["model"]["aggregate"]["weight"], torch.full((dataset.num_categories, 2), 0.5))
