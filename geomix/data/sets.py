"""Torch datasets over any image-caption *source*: training pairs, evaluation images, tokenised captions.

A source (``ShapesData`` or ``loaders.FileSource``) has ``len()``, ``image(i)`` (uint8 array [H, W, 3] or a
PIL image), ``captions(i)`` (list[str], >= 1), and ``labels`` / ``class_prompts`` (or None). The sets
here turn it into what training and evaluation consume; every caption is tokenised once, up front.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from geomix.data.shapes import rng_for

log = logging.getLogger(__name__)

# open_clip's OPENAI_DATASET_MEAN / _STD (CLIP's normalisation), repeated so the fast path needs no import.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Tokenize = Callable[[list[str]], torch.Tensor]
Transform = Callable[[Image.Image], torch.Tensor]


class Source(Protocol):
    def __len__(self) -> int: ...
    def image(self, i: int) -> np.ndarray | Image.Image: ...
    def captions(self, i: int) -> list[str]: ...
    @property
    def labels(self) -> list[int] | None: ...
    @property
    def class_prompts(self) -> list[str] | None: ...


class FastTransform:
    """``transform=None``: RGB uint8 -> float tensor [3, S, S], normalised with CLIP's mean/std.

    Images already ``S x S`` (the embedded data, rendered at ``image_size``) are only converted; others
    are resized (shorter side to S, bicubic) and centre-cropped like open_clip's preprocess. This skips
    open_clip's PIL Resize/CenterCrop, which is wasted work on 32-pixel images.
    """

    def __init__(self, image_size: int) -> None:
        self.image_size = int(image_size)
        self.mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CLIP_STD).view(3, 1, 1)

    def _resize(self, img: Image.Image) -> Image.Image:
        s = self.image_size
        w, h = img.size
        scale = s / min(w, h)
        img = img.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - s) // 2, (h - s) // 2
        return img.crop((left, top, left + s, top + s))

    def __call__(self, img: np.ndarray | Image.Image) -> torch.Tensor:
        if isinstance(img, Image.Image):
            img = img.convert("RGB")
            if img.size != (self.image_size, self.image_size):
                img = self._resize(img)
            img = np.asarray(img)
        elif img.shape[:2] != (self.image_size, self.image_size):
            return self(Image.fromarray(img))
        # Copy: cached images are read-only arrays, which torch.from_numpy warns about.
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        return (x - self.mean) / self.std


def _apply(transform: Callable[[Any], torch.Tensor], img: np.ndarray | Image.Image) -> torch.Tensor:
    if isinstance(transform, FastTransform):
        return transform(img)
    # open_clip's preprocess expects PIL images.
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    return transform(img)


def tokenize_all(tokenize: Tokenize, texts: Sequence[str], chunk: int = 8192, *, name: str = "captions"
                 ) -> torch.Tensor:
    """Tokenise ``texts`` in chunks -> LongTensor [len(texts), L].

    The tokenizer cuts a caption at its context length ``L`` without a word; a caption that fills all ``L``
    positions (no padding left) was most likely cut, and one warning per call says how many and shows one.
    """
    if not texts:
        raise ValueError("no captions to tokenise: allowed is at least one caption")
    parts = [torch.as_tensor(tokenize(list(texts[i : i + chunk]))) for i in range(0, len(texts), chunk)]
    tokens = torch.cat(parts).long()
    full = torch.nonzero(tokens[:, -1] != 0).flatten()
    if len(full):
        i = int(full[0])
        log.warning("%s: %d of %d captions fill the tokenizer's whole %d-token context and are cut there, "
                    "e.g. caption %d (%d characters) %r", name, len(full), len(texts), tokens.shape[1], i,
                    len(texts[i]), texts[i][:80] + ("..." if len(texts[i]) > 80 else ""))
    return tokens


class ImageSet(Dataset):
    """The images of a source as tensors: ``__getitem__(i) -> FloatTensor [3, H, W]``."""

    def __init__(self, source: Source, transform: Callable[[Any], torch.Tensor]) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> torch.Tensor:
        return _apply(self.transform, self.source.image(i))


class TrainSet(Dataset):
    """Training pairs: ``__getitem__(i) -> (image FloatTensor [3, H, W], tokens LongTensor [L])``.

    Each epoch shows one caption per image, chosen by :meth:`set_epoch` from a generator seeded by a hash
    of ``(seed, epoch)`` and indexed by image, so the choice is a function of ``(seed, epoch, index)``.
    Call ``set_epoch`` before building each epoch's DataLoader iterator (persistent workers keep their
    own copy of the dataset and would not see it).

    Attributes:
        tokens: LongTensor [m, L], every caption of every image, tokenised once.
        offsets: LongTensor [n], index in ``tokens`` of image i's first caption; ``counts`` [n] how many.
        n_skipped: images a file source skipped as bad (``skip_bad``); 0 for the embedded data.
    """

    def __init__(self, source: Source, transform: Callable[[Any], torch.Tensor], tokenize: Tokenize, *,
                 seed: int) -> None:
        self.source, self.transform, self.seed = source, transform, int(seed)
        captions = [source.captions(i) for i in range(len(source))]
        self.counts = torch.tensor([len(c) for c in captions], dtype=torch.long)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts
        self.captions_text = [t for c in captions for t in c]
        self.tokens = tokenize_all(tokenize, self.captions_text, name=_name(source, "train"))
        self.n_skipped = int(getattr(source, "n_skipped", 0))
        self.labels = source.labels
        self.class_prompts = source.class_prompts
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        u = rng_for("caption-choice", self.seed, self.epoch).random(len(self.counts))
        self.choice = torch.from_numpy(np.floor(u * self.counts.numpy()).astype(np.int64))

    def caption_index(self, i: int) -> int:
        """Row of ``tokens`` / ``captions_text`` that image ``i`` is paired with this epoch."""
        return int(self.offsets[i] + self.choice[i])

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _apply(self.transform, self.source.image(i)), self.tokens[self.caption_index(i)]


@dataclass
class EvalSet:
    """One evaluation split: images, every caption, and optional class labels for zero-shot / ECE.

    Attributes:
        images: Dataset of image tensors [3, H, W], n items.
        captions: LongTensor [m, L], all captions (or the first per image when eval_captions='first').
        txt_to_img: LongTensor [m], the image index of each caption.
        labels: LongTensor [n] class ids, or None for data without classes.
        class_prompts: the zero-shot prompts, ``prompt_groups`` per class id, class-major, or None.
        captions_text: the m captions as strings.
        n_skipped: images a file source skipped as bad (``skip_bad``).
    """

    images: Dataset
    captions: torch.Tensor
    txt_to_img: torch.Tensor
    labels: torch.Tensor | None
    class_prompts: list[str] | None
    captions_text: list[str] = field(default_factory=list)
    n_skipped: int = 0
    prompt_groups: int = 1


def _name(source: Source, split: str) -> str:
    describe = getattr(source, "describe", None)
    return describe() if callable(describe) else f"{split} captions"


def make_eval_set(source: Source, transform: Callable[[Any], torch.Tensor], tokenize: Tokenize, *,
                  first_only: bool = False) -> EvalSet:
    texts: list[str] = []
    owners: list[int] = []
    for i in range(len(source)):
        caps = source.captions(i)[:1] if first_only else source.captions(i)
        texts += caps
        owners += [i] * len(caps)
    labels = source.labels
    return EvalSet(
        images=ImageSet(source, transform),
        captions=tokenize_all(tokenize, texts, name=_name(source, "evaluation")),
        txt_to_img=torch.tensor(owners, dtype=torch.long),
        labels=None if labels is None else torch.tensor(labels, dtype=torch.long),
        class_prompts=source.class_prompts,
        captions_text=texts,
        n_skipped=int(getattr(source, "n_skipped", 0)),
        prompt_groups=int(getattr(source, "prompt_groups", 1)),
    )
