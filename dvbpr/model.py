"""DVBPR (paper Sec. III-A/B): an image network Phi trained end to end with user factors theta,
x_ui = theta_u . Phi(X_i) (eq. 6), where Phi(X) = head(backbone(X)): a backbone maps images to features and a
linear head maps those to K dimensions.

The default backbone is the original code's "CNN-F" (dvbpr/cnnf.py): at 224 px and K=100 DVBPR has 70,778,724
parameters, the original's figure. Other backbones (torchvision's ResNet and ViT) are in dvbpr/backbones.py.
"""
import torch
import torch.nn as nn
from tqdm import tqdm

from common.bpr import bpr_loss, init_theta
from common.device import autocast
from common.distributed import Ranks
from dvbpr.backbones import build_backbone


class DVBPR(nn.Module):
    """Phi = head(backbone(.)) plus one K-dim visual preference vector theta_u per user; no biases, no non-visual
    item factors.

    The backbone declares `input_size`, `feature_width`, `regularised_weights()` and `initialise()`. The original
    initialised its weights after building the whole network, so DVBPR initialises the backbone and the head once
    both exist, then draws theta: with CNN-F the random stream is the original layout's.
    """

    def __init__(self, backbone, usernum, k=50, theta_init="uniform"):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_width, k)
        backbone.initialise()
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.theta = init_theta(usernum, k, theta_init)

    @property
    def k(self):
        return self.head.out_features

    @property
    def input_size(self):
        return self.backbone.input_size

    def phi(self, images):
        """Item embeddings Phi(X) [B, K]."""
        return self.head(self.backbone(images))

    def score(self, users, images):
        """x_ui = theta_u . Phi(X_i) [B] of each user with the image in the same row."""
        return (self.theta[users] * self.phi(images).float()).sum(dim=1)

    def forward(self, users, images_i, images_j):
        """x_ui - x_uj for a batch of triplets. Siamese: one pass over the 2B images, shared weights."""
        phi_i, phi_j = self.phi(torch.cat([images_i, images_j])).float().chunk(2)
        return (self.theta[users] * (phi_i - phi_j)).sum(dim=1)

    def objective(self, x_uij, users, lambda_w=0.001, lambda_theta=1.0, shares=1):
        """The original's loss, to minimise, from the batch's x_uij = forward(users, ...):
            -sum_batch log sigmoid(x_uij) + lambda_w/2 sum_W ||W||^2 + lambda_theta/2 sum_batch ||theta_u||^2.

        The BPR term is a sum over the batch, not a mean; the theta term counts each triplet's user once per
        occurrence; the weight term covers the backbone's regularised weights and the head's, not the biases.
        When the batch is one of `shares` equal parts of a global batch whose gradients DistributedDataParallel
        averages, the batch terms are multiplied by `shares`, so that the average is the gradient of the global
        batch's loss.
        """
        theta_decay = self.theta[users].pow(2).sum()
        weight_decay = sum(w.pow(2).sum() for w in [*self.backbone.regularised_weights(), self.head.weight])
        return shares * (bpr_loss(x_uij) + lambda_theta / 2 * theta_decay) + lambda_w / 2 * weight_decay


def build_model(cfg, usernum):
    """The DVBPR network of a config (dvbpr/config.py): its backbone, a head to K and theta for `usernum` users."""
    backbone = build_backbone(cfg.backbone, cfg.image_size, cfg.backbone_weights, fc_width=cfg.fc_width,
                              dropout=cfg.dropout, widths=cfg.conv_widths, init=cfg.init)
    return DVBPR(backbone, usernum, cfg.k, cfg.theta_init)


@torch.no_grad()
def embed_items(model, images, batch_size, ranks=None, bf16=True):
    """Phi(X_i) of every item, float32 [itemnum, K] on every rank, with dropout off (the model's mode is restored
    afterwards); each rank embeds its shard of the items (default: one process, on the model's device)."""
    ranks = ranks or Ranks(device=model.theta.device)
    was_training = model.training
    model.eval()
    mine = ranks.shard(len(images))
    batches = ((torch.arange(start, min(start + batch_size, mine.stop)),)
               for start in range(mine.start, mine.stop, batch_size))
    embeddings = [torch.empty(0, model.k, device=ranks.device)]
    for _, batch_images in tqdm(images.stream(batches), total=-(-len(mine) // batch_size), desc="item embeddings",
                                unit="batch", leave=False, disable=not ranks.is_main):
        with autocast(ranks.device, bf16):
            embeddings.append(model.phi(batch_images).float())
    model.train(was_training)
    return ranks.gather(torch.cat(embeddings))
