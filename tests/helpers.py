"""Stand-ins shared by several test files."""
from common.checkpoint import save_checkpoint
from gan.classifier import CategoryClassifier, classifier_identity


def place_random_classifier(run_dir, dataset, image_size, resize_filter="nearest"):
    """A random-weight category classifier in a GAN run directory, which GAN training then reuses instead of
    training one (the tests that use it check plumbing, not the classifier)."""
    save_checkpoint(run_dir / "classifier.pt", {
        "stage": "classifier", "model": CategoryClassifier(image_size, dataset.num_categories).state_dict(),
        "config": classifier_identity(dataset, image_size, resize_filter), "metrics": {}})
