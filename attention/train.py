"""Training the region-attention recommender (attention/model.py) with DVBPR's BPR objective on DVBPR's triplets,
through the one training loop (common/training.py): resume, lr schedule, bf16 on CUDA, torchrun ranks and the
kept epoch as DVBPR's.

The run's files in --out (default runs/attention): metrics.jsonl (one record per epoch), checkpoint.pt (the latest,
for --resume), best.pt (the kept epoch: the best validation one, or the last with --select last) and results.json.
"""
import json
import time

import torch
from tqdm import tqdm

from attention.config import check_config
from attention.model import build_attention
from common.checkpoint import save_checkpoint, write_json
from common.datasets import describe_data, open_run_data
from common.device import fused_adam_kwargs, memory_format, pick_device
from common.distributed import Ranks, unwrap
from common.metrics import epoch_metrics, evaluate_splits, evaluation_cost, split_metrics, tie_rule
from common.runlog import RunLog, run_dir
from common.sampling import TripletSampler
from common.seeding import seed_everything
from common.training import Trainee, image_feed, save_training, snapshot, start_or_resume, train_epochs

STAGE = "attention"


def evaluate(model, dataset, images, cfg, ranks):
    """The epoch's metrics (evaluate_ranking's, All and Cold) on validation and test under cfg.protocol, users
    sharded over the ranks."""
    valid, test = evaluate_splits(dataset, model.scorer(images, cfg.eval_batch_size, cfg.bf16), cfg, ranks)
    return epoch_metrics(valid, test, cfg.protocol)


def attention_trainee(model, dataset, images, cfg, ranks):
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                 **fused_adam_kwargs(ranks.device))

    def loss(network, batch):
        return unwrap(network).objective(network(*batch), batch[0], cfg.lambda_w, cfg.lambda_theta,
                                         ranks.world_size)
    return Trainee(model, optimizer, TripletSampler(dataset, cfg.seed), image_feed(images), loss,
                   lambda: (evaluate(model, dataset, images, cfg, ranks), None))


def train(cfg, ranks=None):
    """Train and evaluate as configured (resuming from --out's checkpoint.pt with cfg.resume); returns the results
    dict also written to results.json. Under torchrun every rank calls this; rank 0 writes the files."""
    started = time.time()
    check_config(cfg)
    ranks = ranks or Ranks(device=pick_device(cfg.device))
    out = run_dir(cfg.out, STAGE)
    dataset, embedded, images = open_run_data(cfg, ranks)
    ranks.print(f"region attention on {describe_data(dataset)}; preset {cfg.preset}, K={cfg.k}, cnn-f at "
                f"{cfg.image_size} px, {cfg.epochs} epochs, {cfg.protocol} AUC; device {ranks.describe()}")
    if cost := evaluation_cost(dataset, cfg.k, cfg.eval_users):
        ranks.print(cost)
    ranks.share(cfg.batch_size)
    seed_everything(cfg.seed)
    model = build_attention(cfg, dataset.usernum).to(ranks.device, memory_format=memory_format(ranks.device))
    trainee = attention_trainee(model, dataset, images, cfg, ranks)
    progress = start_or_resume(out / "checkpoint.pt", STAGE, trainee, cfg, ranks, dataset)
    runlog = RunLog(out) if ranks.is_main else None
    for record in progress["history"] if ranks.is_main else ():
        runlog.record(**record)

    def on_epoch(record, _):
        if not ranks.is_main:
            return
        if progress["kept"] is record:
            save_checkpoint(out / "best.pt", snapshot(STAGE, model, cfg, record, progress["dataset_digest"]))
        save_training(out / "checkpoint.pt", STAGE, trainee, cfg, progress)
        runlog.record(**record)
        tqdm.write(f"attention epoch {record['epoch']}: loss {record['loss']:.4g}, valid AUC "
                   f"{record['valid_auc']:.4f}, test AUC {record['test_auc']:.4f}")
    seconds_before = progress["seconds"]
    train_epochs(trainee, cfg, ranks, progress, dataset.num_train_interactions, on_epoch, desc="attention ")
    kept = progress["kept"]
    results = dict(preset=cfg.preset, protocol=cfg.protocol, ties=tie_rule(cfg.protocol, cfg.ties),
                   dataset=dataset.name, dataset_path=str(dataset.path), embedded=embedded, epochs=cfg.epochs,
                   k=cfg.k, image_size=cfg.image_size, selected=cfg.select, select_metric=cfg.select_metric,
                   eval_users=cfg.eval_users, epoch=kept["epoch"], step=kept["step"], **split_metrics(kept),
                   history=progress["history"], wall_seconds=round(seconds_before + time.time() - started, 1),
                   device=ranks.describe())
    if ranks.is_main:
        write_json(out / "results.json", results)
        print(f"results ({cfg.select} epoch): " + json.dumps({k: v for k, v in results.items() if k != "history"}))
    ranks.barrier()
    return results
