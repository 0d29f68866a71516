"""Train DVBPR (paper Sec. III-A/B) with BPR on (user, positive, negative) triplets and evaluate it by AUC.

    python dvbpr/main.py                      # --preset paper: K=50, exact All/Cold AUC, best.pt = best validation
    python dvbpr/main.py --preset original    # K=100, the original code's sampled-100 AUC, a checkpoint every epoch
    python dvbpr/main.py --out runs/dvbpr --resume
    python dvbpr/main.py --backbone resnet18 --backbone-weights pretrained/resnet18-f37072fd.pth
    torchrun --nproc_per_node=N dvbpr/main.py     # N GPUs; --batch-size stays the global batch (see the README)

Without the AmazonFashion file the run falls back to the embedded catalogue with demo-sized settings (printed
first; the rule for settings is in common/cli.py). Everything a run writes goes to --out (default runs/dvbpr):
DVBPR.log (the original's lines), metrics.jsonl, checkpoint.pt (latest, for --resume), best.pt and embeddings.pt
(theta and all item embeddings of the best validation epoch), results.json; under --preset original also
DVBPR_auc_<K>_<step>.pt and UI_<K>_<step>.npy.
"""
from common.cli import parse_config, stage_errors, train_stage
from dvbpr.train import DEMO, PRESETS, DVBPRConfig, check_config, train


def main(argv=None):
    with stage_errors("dvbpr"):
        cfg, protected = parse_config(DVBPRConfig, argv, PRESETS, description=__doc__.split("\n")[0])
        return train_stage(cfg, protected, "dvbpr", DEMO, check_config, train)


if __name__ == "__main__":
    main()
