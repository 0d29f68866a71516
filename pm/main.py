"""Personalised fashion design with the trained DVBPR and GAN (paper sections III-D, IV-C and IV-D).

    python pm/main.py                    figures: per-user top-3 real vs generated (fig. 5), tailoring a prototype
                                         item for several users (fig. 6), samples beside their L1 nearest
                                         neighbours (fig. 4), and every start's trajectory per category
    python pm/main.py --table            Table IV (Markdown, CSV, JSON) over --trials random queries, with the
                                         judges synthesis was not optimised against (--judge-run: another DVBPR
                                         run; on generated catalogues the hidden taste, read by an attribute
                                         reader), KID, FID, precision and recall (pm/fidelity.py)
    python pm/main.py --sweep-eta 0 0.1 1 10 100     Figure 3: the three metrics against eta
    python pm/main.py --tune             the best objective that each --tune-starts x --tune-steps x --tune-lrs
                                         reaches on --trials validation queries (how the defaults were chosen),
                                         the KID of the designs it returns and their scores by the judges, and
                                         the best setting by each score whose KID stays within the generator's
                                         random samples' (--tune-guidance: also the scales of preference guidance)
    python pm/main.py --table --guidance 10     with a diffusion generator, Table IV also has preference-guided
                                         samples (the diffusion analogue of eq. 9)
    python pm/main.py --table --ensemble-runs R2 R3     retrieval and synthesis rank and maximise the mean score of
                                         --dvbpr-run and the DVBPRs R2, R3 (other seeds); the judge is none of them

Reads the trained models from --dvbpr-run (default runs/dvbpr) and --gan-run (default runs/gan) and writes into
--out (default runs/pm). Preset `paper`: z = tanh(z') from 64 starts z ~ U(-1, 1), eta 1, the top 3 drawn by
eq. 11, and 200 Adam steps at lr 0.1 (the paper gives neither; chosen with --tune, see pm/config.py). Preset
`original`: what the original code did (PM/main.py of the original repository): z optimised directly from
N(0, 0.5^2), 16 starts, 10 Adam steps at lr 0.05, all 16 kept. Preset `demo`, and the default on the embedded demo
catalogue: fewer queries and starts, 100 steps, the sngan's realism term floored, the support penalty, the shape
term and the structure term (printed).
"""
from common.cli import parse_config, stage_errors
from pm.config import PRESETS, PMConfig
from pm.stage import run_pm


def main(argv=None):
    with stage_errors("pm"):
        cfg, protected = parse_config(PMConfig, argv, PRESETS, description=__doc__.splitlines()[0])
        run_pm(cfg, protected)


if __name__ == "__main__":
    main()
