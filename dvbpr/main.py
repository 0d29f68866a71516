"""Train DVBPR (paper Sec. III-A/B) with BPR on (user, positive, negative) triplets and evaluate it by AUC and
full-ranking Recall@K, NDCG@K and MRR.

    python dvbpr/main.py                      # --preset paper: K=50, exact All/Cold AUC, best.pt = best validation
    python dvbpr/main.py --preset original    # K=100, sampled-100 AUC, a checkpoint every epoch, best.pt = the last
    python dvbpr/main.py --out runs/dvbpr --resume
    python dvbpr/main.py --preset original --from-tf DVBPR_auc_100_39728.ckpt --out runs/dvbpr_original
    python dvbpr/main.py --backbone resnet18 --backbone-weights pretrained/resnet18-f37072fd.pth
    torchrun --nproc_per_node=N dvbpr/main.py     # N GPUs; --batch-size stays the global batch (see the README)
    python dvbpr/main.py --select-metric valid_ndcg@20 --cutoffs 10 20 50   # keep the epoch of the best NDCG@20

Without the AmazonFashion file the run falls back to the embedded catalogue with demo-sized settings (printed
first; the rule for settings is in common/cli.py). Everything a run writes goes to --out (default runs/dvbpr):
DVBPR.log (the original's lines), metrics.jsonl, checkpoint.pt (latest, for --resume), best.pt and embeddings.pt
(theta and all item embeddings of the kept epoch: the best validation one, or the last with --select last),
results.json (the kept epoch's metrics, named valid_auc, test_ndcg@20, test_recall@20_cold, ...); under
--preset original also
DVBPR_auc_<K>_<step>.pt and UI_<K>_<step>.npy. With --from-tf the original's TensorFlow checkpoint is evaluated,
not trained, and written as such a run (dvbpr/tf_run.py).
"""
from common.cli import parse_config, stage_errors, train_stage, typed_flags
from dvbpr.config import DEMO, PRESETS, DVBPRConfig, check_config
from dvbpr.tf_run import evaluate_tf_checkpoint, take_tf_settings
from dvbpr.train import train


def main(argv=None):
    with stage_errors("dvbpr"):
        cfg, protected = parse_config(DVBPRConfig, argv, PRESETS, description=__doc__.split("\n")[0])
        typed = typed_flags(DVBPRConfig, argv)

        def check(cfg):
            check_config(cfg)
            if cfg.from_tf:  # the checkpoint's sizes, under the flags typed for them
                take_tf_settings(cfg, typed)
        return train_stage(cfg, protected, "dvbpr", DEMO, check, evaluate_tf_checkpoint if cfg.from_tf else train)


if __name__ == "__main__":
    main()
