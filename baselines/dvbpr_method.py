"""DVBPR as a column of Table III, read from a finished run (--dvbpr-run DIR, default runs/dvbpr) through
dvbpr/run.py."""
from baselines.finished_run import finished_run_column
from dvbpr.run import read_results


def column(ctx):
    return finished_run_column(ctx, ctx.cfg.dvbpr_run, read_results(ctx.cfg.dvbpr_run))
