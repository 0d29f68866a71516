"""The trained stages preference maximisation reads, from their run directories: DVBPR (or several, scored as one)
and the GAN."""
from pathlib import Path

import torch

from common.errors import ConfigError, DatasetError
from common.images import image_store
from dvbpr.run import open_dvbpr_run
from gan.run import open_gan_run
from pm.design import Designer, ScoreEnsemble


class Stages:
    """What preference maximisation works with: the dataset, the Designer, the item embeddings Phi(X_i) (eq. 8)
    and the catalogue's images at the GAN's size (for display, nearest neighbours and the image metrics). With
    `ensemble_runs`, the DVBPR scored is the mean of `dvbpr_run`'s and theirs (ScoreEnsemble)."""

    def __init__(self, dvbpr_run, gan_run, dataset=None, device="cpu", ensemble_runs=()):
        self.device = torch.device(device)
        trained = open_dvbpr_run(dvbpr_run, dataset, self.device, with_model=True)
        check_trained_on(trained, trained.dataset, "--dvbpr-run")
        self.dvbpr_runs = [trained] + [open_member(run, trained, self.device) for run in ensemble_runs]
        self.gan = open_gan_run(gan_run, self.device)
        self.dataset, self.dvbpr_config = trained.dataset, trained.config
        if self.gan.num_categories != self.dataset.num_categories:
            raise DatasetError(f"the GAN has {self.gan.num_categories} categories but {self.dataset.name} has "
                               f"{self.dataset.num_categories}")
        if ensemble_runs:
            scorer = ScoreEnsemble([run.model for run in self.dvbpr_runs])
            self.item_embeddings = torch.cat([run.items for run in self.dvbpr_runs], dim=1) / len(self.dvbpr_runs)
        else:
            scorer, self.item_embeddings = trained.model, trained.items
        self.designer = Designer(scorer, self.gan.model)
        self.images = image_store(self.dataset, self.gan.config.image_size, self.gan.config.resize_filter,
                                  device=self.device)
        self.item_category = torch.as_tensor(self.dataset.item_category, device=self.device)

    def items_of(self, category):
        return (self.item_category == category).nonzero().squeeze(1)

    def category_classifier(self, fallback_dir):
        """The GAN run's category classifier (classifier.pt), else one trained now and saved in `fallback_dir`."""
        return self.gan.category_classifier(self.dataset, self.images, fallback_dir)


def open_member(run, primary, device):
    """Another DVBPR run of the primary run's dataset, to be scored with it; refused in one line when it was
    trained on another dataset, is the primary run or its exact twin, or takes images of another size."""
    member = open_dvbpr_run(run, primary.dataset.path, device, with_model=True)
    check_trained_on(member, primary.dataset, "--ensemble-runs", primary)
    if Path(run).resolve() == primary.path.resolve() or same_model(member, primary):
        raise ConfigError(f"--ensemble-runs {run} is the same model as --dvbpr-run: train it with another --seed")
    if member.model.input_size != primary.model.input_size:
        raise ConfigError(f"--ensemble-runs {run} takes {member.model.input_size} px images, --dvbpr-run "
                          f"{primary.model.input_size} px: an ensemble scores the same images")
    return member


def check_trained_on(run, dataset, flag, primary=None):
    """ConfigError when DVBPR `run` (given by `flag`) was trained on other data than `dataset` holds, by the digest
    its files record (a same-sized catalogue would otherwise pass, and a renamed copy is the same data). A run that
    records none (older or imported) is compared with the `primary` run by its dataset's file name, with a note."""
    if run.trained_on is None:
        print(f"{flag} {run.path} does not record the digest of its data (an older or imported run): "
              + ("compared by the dataset's file name" if primary else "unchecked"))
        theirs = Path(str(run.config.dataset)).name
        ours = Path(str(primary.config.dataset)).name if primary else theirs
        if theirs != ours:
            raise ConfigError(f"{flag} {run.path} was trained on {theirs}, --dvbpr-run on {ours}: give runs of one "
                              "dataset")
    elif run.trained_on != dataset.digest:
        raise ConfigError(f"{flag} {run.path} was trained on other data than {dataset.path} holds (digest "
                          f"{run.trained_on[:12]}, not {dataset.digest[:12]}): give runs of one dataset")


def same_model(run, other):
    """Whether two DVBPR runs hold the same model: the same settings and the same item embeddings."""
    return run.config == other.config and torch.equal(run.items, other.items)
