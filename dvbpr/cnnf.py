"""The image network of DVBPR's Phi: the "CNN-F"-like network as the original code implemented it (DVBPR/main.py
of the original repository), not the CNN-F of Chatfield et al.: no LRN, 2x2/2 max-pools, TF "SAME" padding,
Xavier-uniform weights, zero biases, trained from scratch. Its layer table is CNNF's docstring.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

CNNF_WIDTHS = (64, 256, 256, 256, 256)   # conv1..conv5 channels of the original


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


def pool(x):
    """The original's 2x2/2 max-pool; ceil_mode is TF's SAME on odd sides."""
    return F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)


class CNNF(nn.Module):
    """The backbone of Phi: images [B, 3, S, S] in [-1, 1] -> features [B, fc_width]; the head is fc3.

        layer  kernel  stride  padding       channels   output at 224 px
        conv1  11x11   4       SAME (3, 4)   64         56 x 56     ReLU, then 2x2/2 max-pool -> 28
        conv2  5x5     1       2             256        28 x 28     ReLU, then 2x2/2 max-pool -> 14
        conv3  3x3     1       1             256        14 x 14     ReLU
        conv4  3x3     1       1             256        14 x 14     ReLU
        conv5  3x3     1       1             256        14 x 14     ReLU, then 2x2/2 max-pool -> 7
        fc1    256*7*7 = 12544 -> 4096                               ReLU, dropout 0.5
        fc2    4096 -> 4096                                          ReLU, dropout 0.5
        (fc3   4096 -> K, linear: DVBPR's head)

    Smaller inputs (64, 32 px) work: conv1's SAME pads and fc1's input width are derived from `image_size`.
    `widths` (conv1..conv5 channels) and `fc_width` can be shrunk for quick CPU runs and tests.
    Flatten order: PyTorch flattens (C, H, W), the original flattened (H, W, C). The two differ only by a fixed
    permutation of fc1's input rows, to which Xavier init and training are blind; it matters only when importing
    the original's TF weights (permute the rows of wd1 from (h, w, c) to (c, h, w)).
    """

    def __init__(self, image_size=224, fc_width=4096, dropout=0.5, widths=CNNF_WIDTHS, init="xavier"):
        super().__init__()
        self.input_size, self.feature_width, self.init = image_size, fc_width, init
        pad_before, pad_after = same_padding(image_size, kernel=11, stride=4)
        self.conv1_pad = (pad_before, pad_after, pad_before, pad_after)  # F.pad order: left, right, top, bottom
        w1, w2, w3, w4, w5 = widths
        self.conv1 = nn.Conv2d(3, w1, kernel_size=11, stride=4)
        self.conv2 = nn.Conv2d(w1, w2, kernel_size=5, padding=2)
        self.conv3 = nn.Conv2d(w2, w3, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(w3, w4, kernel_size=3, padding=1)
        self.conv5 = nn.Conv2d(w4, w5, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(w5 * feature_map_size(image_size) ** 2, fc_width)
        self.fc2 = nn.Linear(fc_width, fc_width)
        self.dropout = nn.Dropout(dropout)
        self.last_conv_map = nn.Identity()  # where layer attributions (Grad-CAM) hook conv5's map; no weights

    def convs(self):
        return [self.conv1, self.conv2, self.conv3, self.conv4, self.conv5]

    def fc_layers(self):
        return [self.fc1, self.fc2]

    def layers(self):
        return [*self.convs(), *self.fc_layers()]

    def initialise(self):
        """Zero biases and Xavier-uniform weights (the original's), or Kaiming-uniform ones (init="kaiming"),
        which keep the scale of ReLU activations from layer to layer."""
        for layer in self.layers():
            if self.init == "kaiming":
                nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def regularised_weights(self):
        """The weights the original decays (wc1-wc5, wd1-wd2; the head's wd3 is DVBPR's); biases are not."""
        return [layer.weight for layer in self.layers()]

    def conv_map(self, x):
        """conv5's output after its ReLU, before the last pool [B, widths[4], h, h]: the last convolutional map,
        14 x 14 at 224 px and 2 x 2 at 32 px (where the pooled map is a single cell)."""
        x = pool(F.relu(self.conv1(F.pad(x, self.conv1_pad))))
        x = pool(F.relu(self.conv2(x)))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        return self.last_conv_map(F.relu(self.conv5(x)))

    def feature_map(self, x):
        """conv5's pooled output [B, widths[4], s, s]: the image regions the fc layers see."""
        return pool(self.conv_map(x))

    def forward(self, x):
        x = torch.flatten(self.feature_map(x), 1)
        x = self.dropout(F.relu(self.fc1(x)))
        return self.dropout(F.relu(self.fc2(x)))
