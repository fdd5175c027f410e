"""Image modality: datasets (captioned shapes, MNIST, 8x8 digits, image folders), codecs
(pixel, KL-VAE, VQ-VAE / FSQ, local diffusers autoencoders), the shapes attribute classifier
(prompt-following metric) and sample-quality metrics (FD-local, precision / recall)."""

from modalities.image.attributes import (
    AttributeClassifier,
    ClassifierConfig,
    evaluate,
    load_or_train_classifier,
    real_ceiling,
    train_classifier,
)
from modalities.image.codec import KLVAE, Codec, PixelCodec, check_latent_shape
from modalities.image.codec_io import DiffusersCodec, load_codec, load_codec_dir, save_codec
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
from modalities.image.mnist import DigitsDataset, MNISTDataset, load_mnist
from modalities.image.vq import FSQ, VQVAE

__all__ = [
    "FSQ", "KLVAE", "VQVAE", "AttributeClassifier", "ClassifierConfig", "Codec",
    "DiffusersCodec", "DigitsDataset", "ImageFolderDataset", "MNISTDataset", "PixelCodec",
    "ShapesConfig", "ShapesDataset", "caption", "check_latent_shape", "evaluate",
    "heldout_pairs", "heldout_prompts", "load_codec", "load_codec_dir", "load_mnist",
    "load_or_train_classifier", "load_split", "parse_caption", "real_ceiling", "save_codec",
    "train_classifier",
]
