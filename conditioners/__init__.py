"""Conditioners: raw batch inputs -> :class:`Condition` (pooled vector, tokens + mask).

Every conditioner is an ``nn.Module`` with ``forward(values, *, drop=None) -> Condition``,
``null(B)``, ``sample_drop(B, generator)`` and the attributes ``pooled_dim``/``token_dim``.
Backbones take the result as ``net(x_t, t, cond=Condition(...))``.

- :class:`ClassConditioner`: class labels with a null class.
- :class:`TextConditioner`: frozen MiniLM / CLIP / T5 / open_clip from local files, cached;
  :class:`TrainableTextConditioner`: a small text encoder trained with the model.
- :class:`SpeakerConditioner`: speaker ids or reference mels (:class:`ReferenceEncoder`).
- :class:`ObservationConditioner`: robot state, camera images, instruction text.
- :class:`ComposedConditioner`: several of them, separate dropout and multi-CFG variants.
"""

from conditioners.base import (
    Condition,
    Conditioner,
    condition_kwargs_model,
    sample_drop_mask,
)
from conditioners.class_label import ClassConditioner
from conditioners.compose import ComposedConditioner
from conditioners.observation import ImageEncoder, ObservationConditioner
from conditioners.speaker import MelReferenceEncoder, ReferenceEncoder, SpeakerConditioner
from conditioners.text import TextConditioner, TrainableTextConditioner
from conditioners.text_backends import TextBackend, load_text_backend, minilm_path
from conditioners.text_cache import EmbeddingCache

__all__ = [
    "Condition", "Conditioner", "sample_drop_mask", "condition_kwargs_model",
    "ClassConditioner", "TextConditioner", "TrainableTextConditioner", "TextBackend",
    "load_text_backend", "minilm_path", "EmbeddingCache", "SpeakerConditioner",
    "ReferenceEncoder", "MelReferenceEncoder", "ObservationConditioner", "ImageEncoder",
    "ComposedConditioner",
]
