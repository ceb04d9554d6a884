"""Data pipeline shared by the methods: image dataset, BoT transforms, P x K sampler and loaders."""
from common.data.dataset import ImageDataset, ImageReadError, read_image
from common.data.loaders import EpochDataLoader, build_test_loader, build_train_loader, seed_worker
from common.data.samplers import RandomIdentitySampler
from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomErasing, build_transforms

__all__ = ["ImageDataset", "ImageReadError", "read_image", "EpochDataLoader", "build_test_loader",
           "build_train_loader", "seed_worker", "RandomIdentitySampler", "IMAGENET_MEAN", "IMAGENET_STD",
           "RandomErasing", "build_transforms"]
