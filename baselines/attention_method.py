"""Region attention (attention/: the visual attention of Chen et al., SIGIR'19, without reviews) as a column of
Table III, read from a finished run (--attention-run DIR, default runs/attention) through attention/run.py."""
from attention.run import read_results
from baselines.finished_run import finished_run_column


def column(ctx):
    return finished_run_column(ctx, ctx.cfg.attention_run, read_results(ctx.cfg.attention_run))
