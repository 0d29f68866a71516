"""A user-conditioned region-attention recommender: the visual attention of Chen et al. (SIGIR'19, "Personalized
Fashion Recommendation with Visual Explanations based on Multimodal Attention Network"), without its reviews, on
DVBPR's CNN-F:

    f_r     = the backbone's last convolutional map, one C-dim feature per region r (CNN-F: conv5, h x h regions)
    a_u(r)  = softmax_r( w . tanh(W [f_r ; theta_u] + b) )
    x_ui    = theta_u . (P sum_r a_u(r) f_r + p)

a_u is where user u looks on the image (`python explain/main.py --method attention` draws it). Evaluation scores
every (user, item) exactly and cheaply, because W [f_r ; theta_u] = W_f f_r + W_theta theta_u and
theta_u . P f_r split into an item part (one CNN pass per item) and a user part.
"""
import torch
import torch.nn as nn

from common.bpr import bpr_loss, init_theta
from common.device import autocast
from common.errors import ConfigError
from dvbpr.backbones import build_backbone

EVAL_BLOCK_BYTES = 256 << 20   # float32 [users, items, regions, hidden] attention logits per block in evaluation


class RegionAttention(nn.Module):
    """theta [usernum, K] and attention over the regions of `backbone.conv_map(images)` [B, C, h, w]."""

    def __init__(self, backbone, usernum, k=50, hidden=16, theta_init="uniform"):
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
        self.theta = init_theta(usernum, k, theta_init)
        # The attention reads the last convolutional map: CNN-F's fc layers take no part, and are frozen so that
        # neither the optimiser, the weight decay nor DistributedDataParallel waits for their gradients.
        for layer in getattr(backbone, "fc_layers", list)():
            layer.requires_grad_(False)

    def regularised_weights(self):
        return [*(w for w in self.backbone.regularised_weights() if w.requires_grad), self.attend.weight,
                self.w.weight, self.project.weight]

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
        """x_uij = x_ui - x_uj for a batch of triplets, one pass over the 2B images."""
        scores = self.score(torch.cat([users, users]), torch.cat([images_i, images_j]))
        return scores[:len(users)] - scores[len(users):]

    def objective(self, x_uij, users, lambda_w=0.001, lambda_theta=1.0, shares=1):
        """DVBPR's loss (dvbpr/model.py, the paper's eq. 4 with its regularisers), to minimise:
        -sum log sigmoid(x_uij) + lambda_w/2 ||weights||^2 + lambda_theta/2 sum ||theta_u||^2; `shares` as
        DVBPR's."""
        weight_decay = sum(w.pow(2).sum() for w in self.regularised_weights())
        theta_decay = self.theta[users].pow(2).sum()
        return shares * (bpr_loss(x_uij) + lambda_theta / 2 * theta_decay) + lambda_w / 2 * weight_decay

    @torch.no_grad()
    def scorer(self, images, batch_size=256, bf16=True):
        """score(users) -> [B, itemnum] over every item of the image store, the CNN run once per item (in eval
        mode; the model's mode is restored)."""
        was_training = self.training
        self.eval()
        w_f = self.attend.weight[:, :self.project.in_features]
        w_theta = self.attend.weight[:, self.project.in_features:]
        logit_parts, value_parts = [], []
        for start in range(0, len(images), batch_size):
            with autocast(self.theta.device, bf16):
                regions = self.regions(images(torch.arange(start, min(start + batch_size, len(images)))))[0]
            regions = regions.float()
            logit_parts.append(regions @ w_f.T + self.attend.bias)     # [I, R, hidden]
            value_parts.append(regions @ self.project.weight.T)        # [I, R, K]
        self.train(was_training)
        item_logits, item_values = torch.cat(logit_parts), torch.cat(value_parts)
        block = max(1, EVAL_BLOCK_BYTES // (4 * item_logits.numel()))

        def score(users):
            rows = []
            for chunk in users.split(block):
                theta = self.theta[chunk]
                hidden = torch.tanh(item_logits[None] + (theta @ w_theta.T)[:, None, None, :])
                weights = self.w(hidden).squeeze(3).softmax(dim=2)     # a_u(r) [U, I, R]
                values = torch.einsum("irk,uk->uir", item_values, theta)
                rows.append((weights * values).sum(dim=2) + (theta @ self.project.bias)[:, None])
            return torch.cat(rows)
        return score


def build_attention(cfg, usernum):
    """The attention model of a config (attention/config.py); CNN-F's fc layers are unused (fc_width=1)."""
    backbone = build_backbone("cnn-f", cfg.image_size, fc_width=1, dropout=0.0, widths=cfg.conv_widths,
                              init=cfg.init)
    return RegionAttention(backbone, usernum, cfg.k, cfg.hidden, cfg.theta_init)
