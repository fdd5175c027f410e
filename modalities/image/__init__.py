"""Image modality: the captioned shapes dataset, its attribute classifier (prompt-following
metric) and the imagefolder loader for fine-tuning on custom captioned images."""

from modalities.image.attributes import (
    AttributeClassifier,
    ClassifierConfig,
    evaluate,
    load_or_train_classifier,
    real_ceiling,
    train_classifier,
)
from modalities.image.data import (
    ShapesConfig,
    ShapesDataset,
    caption,
    heldout_pairs,
    heldout_prompts,
    load_split,
    parse_caption,
)
from modalities.image.folder import ImageFolderDataset

__all__ = [
    "AttributeClassifier", "ClassifierConfig", "ImageFolderDataset", "ShapesConfig",
    "ShapesDataset", "caption", "evaluate", "heldout_pairs", "heldout_prompts",
    "load_or_train_classifier", "load_split", "parse_caption", "real_ceiling",
    "train_classifier",
]
