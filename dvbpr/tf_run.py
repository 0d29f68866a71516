"""The original's pretrained DVBPR (a TensorFlow checkpoint, read without TensorFlow) evaluated and written as a
finished run, so that everything that opens a DVBPR run (dvbpr.run.open_dvbpr_run, recommend.py, pm/, baselines/) takes
it unchanged:

    python dvbpr/main.py --preset original --from-tf DVBPR_auc_100_39728.ckpt --dataset data/Amazon...npy

K and the fc and conv widths are the checkpoint's; the image size is not recorded in it, so --image-size must be
one at which conv5's pooled output has the checkpoint's side (224 -> 7x7). The global step is the number that ends
the prefix, as the original named its checkpoints; the epoch is the one that ends at that step on the dataset
(step 39728 is epoch 19 on AmazonFashion), else None.
"""
import dataclasses
import json
import time
from pathlib import Path

from common.checkpoint import write_json
from common.cli import apply_settings
from common.datasets import describe_data, open_run_data
from common.errors import ConfigError, DatasetError
from common.metrics import epoch_metrics
from common.runlog import run_dir
from common.tf_checkpoint import (
    TFCheckpoint,
    TFCheckpointError,
    check_shapes,
    checkpoint_prefix,
    prefix_step,
    shapes_of,
)
from common.training import epoch_end_step
from dvbpr.cnnf import CNNF_WIDTHS, feature_map_size
from dvbpr.model import build_model
from dvbpr.tf_import import (
    SCOPE,
    describe_tf_model,
    dvbpr_config_from_tf,
    dvbpr_state_from_tf,
    expected_shapes,
    tf_names,
)
from dvbpr.train import (
    dvbpr_trainee,
    evaluate,
    log_line,
    results_summary,
    rewrite_logs,
    save_epoch,
)

THETA_VARIABLE = SCOPE + "Variable"


def take_tf_settings(cfg, typed):
    """The checkpoint's own settings in `cfg`: its absolute prefix, K, fc width and conv widths, except those set
    by the `typed` flags (check_fits refuses one that differs)."""
    cfg.from_tf = str(checkpoint_prefix(cfg.from_tf).resolve())
    found = dvbpr_config_from_tf(TFCheckpoint(cfg.from_tf))
    apply_settings(cfg, {"k": found["k"], "fc_width": found["fc_width"], "conv_widths": list(found["widths"])},
                   typed)


def epoch_at_step(step, num_interactions, batch_size):
    """The epoch that ends at global step `step` (the inverse of epoch_end_step), or None if none ends there."""
    if step is None:
        return None
    # step * batch // N is the only candidate when an epoch has a batch or more; with fewer, every epoch is one step
    candidates = (step * batch_size // max(num_interactions, 1), step)
    return next((epoch for epoch in candidates
                 if epoch >= 1 and epoch_end_step(epoch, num_interactions, batch_size) == step), None)


def fitting_image_sizes(side):
    """The image sizes whose conv5 output has `side`. conv1's stride 4 and three 2x2 pools make that side
    ceil(size / 32), so they are 32 * (side - 1) + 1 to 32 * side: no search, whatever side a checkpoint claims."""
    return f"{32 * (side - 1) + 1} to {32 * side}" if side >= 1 else "none"


def check_fits(tensors, cfg, dataset):
    """Refuse, naming the variable and both shapes, a checkpoint that does not fit the settings or the dataset."""
    found = dvbpr_config_from_tf(tensors)
    shapes = shapes_of(tensors, tf_names())
    check_shapes(shapes, expected_shapes(found), describe_tf_model(found))  # one consistent DVBPR at all
    if cfg.backbone != "cnn-f" or cfg.backbone_weights:
        raise ConfigError("--from-tf holds the original's cnn-f, trained from scratch: leave out --backbone and "
                          "--backbone-weights")
    side, wd1 = feature_map_size(cfg.image_size), SCOPE + "wd1"
    if found["feature_side"] != side:
        raise ConfigError(f"{wd1} has shape {list(shapes[wd1])}: a {found['feature_side']}x{found['feature_side']} "
                          f"conv5 output, which --image-size {fitting_image_sizes(found['feature_side'])} gives, "
                          f"not {cfg.image_size} ({side}x{side}); the original's is 224")
    if found["usernum"] != dataset.usernum:
        raise DatasetError(f"{THETA_VARIABLE} (theta) has shape {list(shapes[THETA_VARIABLE])}, but {dataset.name} has "
                           f"{dataset.usernum} users, which need [{dataset.usernum}, {found['k']}]: give the "
                           "--dataset the model was trained on")
    wanted = dict(found, widths=tuple(cfg.conv_widths or CNNF_WIDTHS), fc_width=cfg.fc_width, k=cfg.k)
    try:
        check_shapes(shapes, expected_shapes(wanted), describe_tf_model(wanted))
    except TFCheckpointError as error:
        raise ConfigError(f"{error}: leave out --k, --fc-width and --conv-widths to take the checkpoint's") from None


def evaluate_tf_checkpoint(cfg, ranks):
    """Evaluate cfg.from_tf under cfg.protocol and write the run's files into cfg.out, as training would have
    written them at the checkpoint's epoch; returns the results dict of results.json."""
    started = time.time()
    tensors = TFCheckpoint(cfg.from_tf)
    dataset, embedded, images = open_run_data(cfg, ranks, check=lambda dataset: check_fits(tensors, cfg, dataset))
    model = build_model(cfg, dataset.usernum)
    model.load_state_dict(dvbpr_state_from_tf(tensors, usernum=dataset.usernum, k=cfg.k))
    model.to(ranks.device).eval()
    step = prefix_step(cfg.from_tf)
    epoch = epoch_at_step(step, dataset.num_train_interactions, cfg.batch_size)
    ranks.print(f"DVBPR from {Path(cfg.from_tf).name} (step {step}, epoch {epoch}) on {describe_data(dataset)}; "
                f"K={cfg.k}, {cfg.image_size} px, {cfg.protocol} AUC; device {ranks.describe()}")
    valid, test, items = evaluate(model, dataset, images, cfg, ranks)
    record = dict(epoch=epoch, step=step, loss=None, **epoch_metrics(valid, test, cfg.protocol),
                  seconds=round(time.time() - started, 3))
    results = dict(results_summary(cfg, dataset, embedded, record, time.time() - started, ranks), epochs=epoch,
                   from_tf=cfg.from_tf)
    if ranks.is_main:
        write_run(run_dir(cfg.out, "dvbpr"), cfg, dvbpr_trainee(model, dataset, images, cfg, ranks), items, record,
                  results)
    ranks.barrier()
    return results


def write_run(out, cfg, trainee, items, record, results):
    """The files of a finished run: DVBPR.log, metrics.jsonl, best.pt, embeddings.pt, checkpoint.pt (with a fresh
    optimizer and sampler: the original's Adam state is not carried over) and results.json."""
    rewrite_logs(out, [record])
    progress = dict(epoch=record["epoch"], step=record["step"], history=[record], kept=record,
                    seconds=record["seconds"], dataset_digest=None)  # evaluated, never resumed
    if record["step"] is None:  # the original's per-epoch files are named by the step
        cfg = dataclasses.replace(cfg, save_every_epoch=False)
    save_epoch(out, cfg, trainee, items, progress)
    write_json(out / "results.json", results)
    print(log_line(record))
    print("results: " + json.dumps(results))
