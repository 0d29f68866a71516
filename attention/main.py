"""Train the region-attention recommender (attention/model.py) with DVBPR's BPR objective and evaluate it by AUC.

    python attention/main.py                         # --preset paper: DVBPR's protocol, CNN-F at 224 px
    python attention/main.py --preset demo --dataset embedded --out runs/attention
    python attention/main.py --out runs/attention --resume
    torchrun --nproc_per_node=N attention/main.py    # N GPUs; --batch-size stays the global batch

Without the AmazonFashion file the run falls back to the embedded catalogue with the demo settings (printed first;
the rule for settings is in common/cli.py). The run's files are listed in attention/train.py.
"""
from attention.config import DEMO, PRESETS, AttentionConfig, check_config
from attention.train import train
from common.cli import parse_config, stage_errors, train_stage


def main(argv=None):
    with stage_errors("attention"):
        cfg, protected = parse_config(AttentionConfig, argv, PRESETS, description=__doc__.split("\n")[0])
        return train_stage(cfg, protected, "attention", DEMO, check_config, train)


if __name__ == "__main__":
    main()
