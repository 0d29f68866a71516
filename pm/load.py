"""The trained stages preference maximisation reads, from their run directories: DVBPR and the GAN."""
import torch

from common.errors import DatasetError
from common.images import ImageStore, image_cache
from dvbpr.run import open_dvbpr_run
from gan.run import open_gan_run
from pm.design import Designer


class Stages:
    """What preference maximisation works with: the dataset, the Designer, the item embeddings Phi(X_i) (eq. 8)
    and the catalogue's images at the GAN's size (for display, nearest neighbours and the image metrics)."""

    def __init__(self, dvbpr_run, gan_run, dataset=None, device="cpu"):
        self.device = torch.device(device)
        trained = open_dvbpr_run(dvbpr_run, dataset, self.device, with_model=True)
        self.gan = open_gan_run(gan_run, self.device)
        self.dataset, self.item_embeddings, self.dvbpr_config = trained.dataset, trained.items, trained.config
        if self.gan.num_categories != self.dataset.num_categories:
            raise DatasetError(f"the GAN has {self.gan.num_categories} categories but {self.dataset.name} has "
                               f"{self.dataset.num_categories}")
        self.designer = Designer(trained.model, self.gan.model)
        self.images = ImageStore(image_cache(self.dataset, self.gan.config.image_size, self.gan.config.resize_filter),
                                 self.device)
        self.item_category = torch.as_tensor(self.dataset.item_category, device=self.device)

    def items_of(self, category):
        return (self.item_category == category).nonzero().squeeze(1)

    def category_classifier(self, fallback_dir):
        """The GAN run's category classifier (classifier.pt), else one trained now and saved in `fallback_dir`."""
        return self.gan.category_classifier(self.dataset, self.device, self.images, fallback_dir)
