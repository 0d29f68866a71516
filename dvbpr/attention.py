"""A user-conditioned region-attention recommender, trained end to end with DVBPR's BPR loss on DVBPR's triplets.

The visual attention of Chen et al. (SIGIR'19, "Personalized Fashion Recommendation with Visual Explanations based
on Multimodal Attention Network"), without its reviews:

    f_r     = the backbone's last convolutional map, one C-dim feature per region r (CNN-F: conv5, h x h regions)
    a_u(r)  = softmax_r( w . tanh(W [f_r ; theta_u] + b) )
    x_ui    = theta_u . (P sum_r a_u(r) f_r + p)

a_u is where user u looks on the image: `python explain/main.py --method attention` shows it. Evaluation scores
every (user, item) exactly and cheaply, because W [f_r ; theta_u] = W_f f_r + W_theta theta_u and
theta_u . P f_r split into an item part (one CNN pass per item) and a user part.

    python dvbpr/attention.py --dataset embedded --out runs/attention
"""
import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from common.checkpoint import load_checkpoint, save_checkpoint, write_json
from common.cli import parse_config, require_positive, settle, stage_errors
from common.datasets import open_dataset
from common.device import pick_device
from common.errors import ConfigError, TrainingDiverged
from common.images import ImageStore, image_cache
from common.metrics import TIES, TIES_HELP, evaluate_auc, tie_rule
from common.runlog import run_dir
from common.sampling import TripletSampler
from common.seeding import seed_everything
from dvbpr.backbones import build_backbone

USER_CHUNK = 16   # users per block of the [users, items, regions, hidden] attention logits in evaluation


class RegionAttention(nn.Module):
    """theta [usernum, K] and attention over the regions of `backbone.conv_map(images)` [B, C, h, w]."""

    def __init__(self, backbone, usernum, k=50, hidden=32):
        super().__init__()
        if not hasattr(backbone, "conv_map"):
            raise ConfigError("the attention model reads a backbone's last convolutional map: use cnn-f")
        self.backbone = backbone
        with torch.no_grad():
            channels = backbone.conv_map(torch.zeros(1, 3, backbone.input_size, backbone.input_size)).shape[1]
        self.attend = nn.Linear(channels + k, hidden)   # W and b
        self.w = nn.Linear(hidden, 1, bias=False)
        self.project = nn.Linear(channels, k)           # P and p
        backbone.initialise()
        for layer in (self.attend, self.w, self.project):
            nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(self.attend.bias)
        nn.init.zeros_(self.project.bias)
        self.theta = nn.Parameter(torch.rand(usernum, k) / 100)  # as DVBPR draws it

    def regions(self, images):
        """f_r [B, R, C] and the map's side (h, w)."""
        conv = self.backbone.conv_map(images)
        return conv.flatten(2).transpose(1, 2), conv.shape[2:]

    def attention(self, users, regions):
        """a_u(r) [B, R] of each row's user over that row's regions [B, R, C]; each row sums to one."""
        theta = self.theta[users][:, None, :].expand(-1, regions.shape[1], -1)
        logits = self.w(torch.tanh(self.attend(torch.cat([regions, theta], dim=2))))
        return logits.squeeze(2).softmax(dim=1)

    def attention_map(self, users, images):
        """a_u(r) as a map [B, h, w] over the image's regions."""
        regions, side = self.regions(images)
        return self.attention(users, regions).reshape(-1, *side)

    def score(self, users, images):
        """x_ui [B] of each user with the image in the same row."""
        regions, _ = self.regions(images)
        pooled = (self.attention(users, regions)[:, :, None] * regions).sum(dim=1)
        return (self.theta[users] * self.project(pooled)).sum(dim=1)

    def forward(self, users, images_i, images_j):
        """x_ui - x_uj for a batch of triplets, one pass over the 2B images."""
        scores = self.score(torch.cat([users, users]), torch.cat([images_i, images_j]))
        return scores[:len(users)] - scores[len(users):]

    def objective(self, x_uij, users, lambda_w=0.001, lambda_theta=1.0):
        """DVBPR's loss: -sum log sigmoid(x_uij) + lambda_w/2 ||weights||^2 + lambda_theta/2 sum ||theta_u||^2."""
        weights = [*self.backbone.regularised_weights(), self.attend.weight, self.w.weight, self.project.weight]
        return (-F.logsigmoid(x_uij).sum() + lambda_theta / 2 * self.theta[users].pow(2).sum()
                + lambda_w / 2 * sum(w.pow(2).sum() for w in weights))

    @torch.no_grad()
    def scorer(self, store, batch_size=256):
        """score_fn(users) -> [B, itemnum] over every item of `store`, the CNN run once per item."""
        was_training = self.training
        self.eval()
        regions = torch.cat([self.regions(store(torch.arange(start, min(start + batch_size, len(store)))))[0]
                             for start in range(0, len(store), batch_size)])
        self.train(was_training)
        channels = regions.shape[2]
        w_f, w_theta = self.attend.weight[:, :channels], self.attend.weight[:, channels:]
        item_logit_part = regions @ w_f.T + self.attend.bias          # [I, R, hidden]
        item_values = regions @ self.project.weight.T                  # [I, R, K]

        def score(users):
            blocks = []
            for chunk in users.split(USER_CHUNK):
                theta = self.theta[chunk]
                hidden = torch.tanh(item_logit_part[None] + (theta @ w_theta.T)[:, None, None, :])
                weights = self.w(hidden).squeeze(3).softmax(dim=2)     # [U, I, R]
                values = torch.einsum("irk,uk->uir", item_values, theta)
                blocks.append((weights * values).sum(dim=2) + (theta @ self.project.bias)[:, None])
            return torch.cat(blocks)
        return score


@dataclass
class AttentionConfig:
    dataset: str | None = field(default=None, metadata={"help": "dataset: a .npy in the original format, a "
                                                                "dataset folder, or 'embedded'"})
    out: str | None = field(default=None, metadata={"help": "run directory; None: runs/attention"})
    k: int = field(default=50, metadata={"help": "latent dimensions K of theta_u and the item feature"})
    hidden: int = field(default=16, metadata={"help": "width of the attention layer W"})
    image_size: int = field(default=64, metadata={"help": "side of the input in pixels (64: 4 x 4 regions)"})
    conv_widths: list[int] = field(default_factory=lambda: [16, 32, 32, 32, 32],
                                   metadata={"help": "cnn-f conv1..conv5 channels (narrow: about a minute on "
                                                     "the embedded catalogue on 2 CPU cores)"})
    lambda_w: float = field(default=0.001, metadata={"help": "weight decay (lambda_w/2 ||W||^2)"})
    lambda_theta: float = field(default=1.0, metadata={"help": "regulariser of theta_u"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    batch_size: int = field(default=128, metadata={"help": "triplets per step"})
    epochs: int = field(default=4, metadata={"help": "epochs of N triplets; the best validation epoch is kept"})
    protocol: str = field(default="exact", metadata={"help": "AUC protocol", "choices": ["exact", "sampled100"]})
    ties: str = field(default="fail", metadata={"help": TIES_HELP, "choices": list(TIES)})
    seed: int = field(default=0, metadata={"help": "seed of the initialisation and the triplets"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})


def check_config(cfg):
    require_positive(cfg, "k", "hidden", "image_size", "batch_size", "epochs")
    if len(cfg.conv_widths) != 5 or min(cfg.conv_widths) < 1:
        raise ConfigError(f"--conv-widths takes five positive channel counts, got {cfg.conv_widths}")


def build_attention(cfg, usernum):
    # fc_width=1: CNN-F's fc layers are never used, the attention reads conv5's map
    backbone = build_backbone("cnn-f", cfg.image_size, fc_width=1, widths=cfg.conv_widths)
    return RegionAttention(backbone, usernum, cfg.k, cfg.hidden)


def train_epoch(model, optimizer, store, sampler, cfg, steps, desc):
    """`steps` Adam steps on fresh triplets; the mean loss."""
    model.train()
    total = 0.0
    for _ in tqdm(range(steps), desc=desc, unit="step", leave=False):
        users, positives, negatives = (torch.from_numpy(a).to(store.device) for a in sampler.sample(cfg.batch_size))
        loss = model.objective(model(users, store(positives), store(negatives)), users, cfg.lambda_w,
                               cfg.lambda_theta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
    if not math.isfinite(total):
        raise TrainingDiverged(f"{desc}: the loss became {total}; lower --lr")
    return total / steps


def train_attention(cfg, dataset=None):
    """Train, keep the best validation epoch in OUT/best.pt (stage "attention"), evaluate its test AUC; returns the
    results dict also written to OUT/results.json."""
    started = time.time()
    check_config(cfg)
    device, out = pick_device(cfg.device), run_dir(cfg.out, "attention")
    dataset = dataset or open_dataset(cfg.dataset)[0]
    store = ImageStore(image_cache(dataset, cfg.image_size), device)
    seed_everything(cfg.seed)
    model = build_attention(cfg, dataset.usernum).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sampler = TripletSampler(dataset, cfg.seed)
    steps = max(1, dataset.num_train_interactions // cfg.batch_size)
    evaluate = lambda split: evaluate_auc(dataset, model.scorer(store), split, cfg.protocol, device,
                                          seed=cfg.seed + (split == "test"), ties=cfg.ties)
    history, best = [], None
    for epoch in range(1, cfg.epochs + 1):
        loss = train_epoch(model, optimizer, store, sampler, cfg, steps, f"attention epoch {epoch}/{cfg.epochs}")
        record = dict(epoch=epoch, step=epoch * steps, loss=loss, valid=evaluate("validation"))
        history.append(record)
        tqdm.write(f"attention epoch {epoch}: loss {loss:.4g}, valid AUC {record['valid']['all']:.4f}")
        if best is None or record["valid"]["all"] > best["valid"]["all"]:
            best = record
            save_checkpoint(out / "best.pt", {"stage": "attention", "model": model.state_dict(),
                                              "config": dataclasses.asdict(cfg), "epoch": epoch,
                                              "step": record["step"], "metrics": record})
    model.load_state_dict(load_checkpoint(out / "best.pt", "attention")["model"])
    results = dict(dataset=dataset.name, dataset_path=str(dataset.path), protocol=cfg.protocol,
                   ties=tie_rule(cfg.protocol, cfg.ties),
                   best_epoch=best["epoch"], valid=best["valid"], test=evaluate("test"), history=history,
                   wall_seconds=round(time.time() - started, 1))
    write_json(out / "results.json", results)
    return results


def main(argv=None):
    with stage_errors("attention"):
        cfg, protected = parse_config(AttentionConfig, argv, description=__doc__.split("\n")[0])
        check_config(cfg)
        settle(cfg, protected, "attention")
        results = train_attention(cfg)
        print(f"attention: best epoch {results['best_epoch']}, test AUC {results['test']['all']:.4f} "
              f"(cold {results['test']['cold']}), valid {results['valid']['all']:.4f}")
        return results


if __name__ == "__main__":
    main()
