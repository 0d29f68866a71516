"""DVBPR: a Siamese CNN Phi trained end to end with user factors theta (paper eq. 6: x_ui = theta_u . Phi(X_i)).

Phi is the "CNN-F"-like network as the original code implemented it (not the CNN-F of Chatfield et al.):
no LRN, 2x2/2 max-pools, TF "SAME" padding, Xavier-uniform weights, zero biases, trained from scratch.
At 224 px and K=100 it has 70,778,724 parameters, the original's figure.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def same_padding(size, kernel, stride):
    """TF "SAME" padding of one spatial axis as (before, after); an odd total puts the extra pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def feature_map_size(image_size):
    """Side of conv5's pooled output: conv1 (stride 4, SAME) then three 2x2/2 pools (SAME, i.e. ceil)."""
    side = math.ceil(image_size / 4)
    for _ in range(3):
        side = math.ceil(side / 2)
    return side


class CNN(nn.Module):
    """Phi: images [B, 3, S, S] in [-1, 1] -> item embeddings [B, K].

        layer  kernel  stride  padding       channels   output at 224 px
        conv1  11x11   4       SAME (3, 4)   64         56 x 56     ReLU, then 2x2/2 max-pool -> 28
        conv2  5x5     1       2             256        28 x 28     ReLU, then 2x2/2 max-pool -> 14
        conv3  3x3     1       1             256        14 x 14     ReLU
        conv4  3x3     1       1             256        14 x 14     ReLU
        conv5  3x3     1       1             256        14 x 14     ReLU, then 2x2/2 max-pool -> 7
        fc1    256*7*7 = 12544 -> 4096                               ReLU, dropout 0.5
        fc2    4096 -> 4096                                          ReLU, dropout 0.5
        fc3    4096 -> K                                             linear

    Smaller inputs (64, 32 px) work: conv1's SAME pads and fc1's input width are derived from `image_size`.
    `fc_width` (4096 in the original) and the conv `widths` (64, 256, 256, 256, 256) can be shrunk for quick CPU
    runs and tests.
    Flatten order: PyTorch flattens (C, H, W), the original flattened (H, W, C). The two differ only by a fixed
    permutation of fc1's input rows, to which Xavier init and training are blind; it matters only when importing
    the original's TF weights (permute the rows of wd1 from (h, w, c) to (c, h, w)).
    """

    def __init__(self, image_size=224, k=100, dropout=0.5, fc_width=4096, widths=(64, 256, 256, 256, 256)):
        super().__init__()
        self.image_size = image_size
        pad_before, pad_after = same_padding(image_size, kernel=11, stride=4)
        self.conv1_pad = (pad_before, pad_after, pad_before, pad_after)  # F.pad order: left, right, top, bottom
        c1, c2, c3, c4, c5 = widths
        self.conv1 = nn.Conv2d(3, c1, kernel_size=11, stride=4)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5, padding=2)
        self.conv3 = nn.Conv2d(c2, c3, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(c3, c4, kernel_size=3, padding=1)
        self.conv5 = nn.Conv2d(c4, c5, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(c5 * feature_map_size(image_size) ** 2, fc_width)
        self.fc2 = nn.Linear(fc_width, fc_width)
        self.fc3 = nn.Linear(fc_width, k)
        self.dropout = nn.Dropout(dropout)
        for layer in self.layers():
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def layers(self):
        return [self.conv1, self.conv2, self.conv3, self.conv4, self.conv5, self.fc1, self.fc2, self.fc3]

    def weights(self):
        """The 8 weight tensors the original regularises (wc1-wc5, wd1-wd3); biases are not."""
        return [layer.weight for layer in self.layers()]

    def forward(self, x):
        pool = lambda t: F.max_pool2d(t, kernel_size=2, stride=2, ceil_mode=True)  # ceil = TF SAME on odd sides
        x = pool(F.relu(self.conv1(F.pad(x, self.conv1_pad))))
        x = pool(F.relu(self.conv2(x)))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = pool(F.relu(self.conv5(x)))
        x = torch.flatten(x, 1)
        x = self.dropout(F.relu(self.fc1(x)))
        x = self.dropout(F.relu(self.fc2(x)))
        return self.fc3(x)


class DVBPR(nn.Module):
    """Phi plus one K-dim visual preference vector theta_u per user; no biases, no non-visual item factors."""

    def __init__(self, usernum, k=50, image_size=224, dropout=0.5, fc_width=4096, widths=(64, 256, 256, 256, 256)):
        super().__init__()
        self.cnn = CNN(image_size, k, dropout, fc_width, widths)
        self.theta = nn.Parameter(torch.rand(usernum, k) / 100)  # Uniform[0, 1) / 100, as the original

    def forward(self, users, images_i, images_j):
        """x_ui - x_uj for a batch of triplets. Siamese: one CNN pass over the 2B images, shared weights."""
        phi_i, phi_j = self.cnn(torch.cat([images_i, images_j])).float().chunk(2)
        return (self.theta[users] * (phi_i - phi_j)).sum(dim=1)

    def objective(self, x_uij, users, lambda_w=0.001, lambda_theta=1.0, shares=1):
        """The original's loss, to minimise, from the batch's x_uij = forward(users, ...):
            -sum_batch log sigmoid(x_uij) + lambda_w/2 sum_W ||W||^2 + lambda_theta/2 sum_batch ||theta_u||^2.

        The BPR term is a sum over the batch, not a mean; the theta term counts each triplet's user once per
        occurrence; the weight term covers the conv and fc weights, not the biases. When the batch is one of
        `shares` equal parts of a global batch whose gradients DistributedDataParallel averages, the batch terms
        are multiplied by `shares`, so that the average is the gradient of the global batch's loss.
        """
        bpr = F.logsigmoid(x_uij).sum()
        theta_decay = self.theta[users].pow(2).sum()
        weight_decay = sum(w.pow(2).sum() for w in self.cnn.weights())
        return shares * (-bpr + lambda_theta / 2 * theta_decay) + lambda_w / 2 * weight_decay
