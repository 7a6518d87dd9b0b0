"""Layer 2: dense feature extractors, each RGB images ``(B, 3, H, W)`` in [0, 1] -> a
:class:`~dgeo.geometry.FeaturePyramid`.

- :class:`VGGHypercolumn` (:mod:`dgeo.models.vgg`): S2DHM hypercolumns or gn_net VGG levels on a
  torchvision-layout VGG-16 trunk, with :func:`load_vgg16_weights`.
- :class:`UNetPyramid` (:mod:`dgeo.models.unet`): the GN-Net / PixLoc U-Net with confidences.
- :class:`DenseSIFT`, :class:`ImagePyramid` (:mod:`dgeo.models.dense_sift`): weight-free baselines.
- :class:`SCoordNet` (:mod:`dgeo.models.scoordnet`), :class:`OFlowNet`
  (:mod:`dgeo.models.oflownet`) and their container :class:`KFNet` (:mod:`dgeo.models.kfnet`):
  KFNet's scene-coordinate and flow networks (stride-8 cell maps).
- :class:`ACEModel`, :class:`ACEHead` (:mod:`dgeo.models.ace`): ACE-style maps, a frozen
  extractor's cell features through a homogeneous MLP head.
- :func:`save`, :func:`load`, :data:`MODELS`, :data:`NETWORKS`, :func:`build`, and the shipped
  model :func:`default_model` (:mod:`dgeo.models.io`).
"""

from dgeo.geometry import FeatureLevel, FeaturePyramid
from dgeo.models.ace import ACEHead, ACEModel
from dgeo.models.base import IMAGENET_MEAN, IMAGENET_STD, DenseExtractor
from dgeo.models.dense_sift import DenseSIFT, ImagePyramid, image_pyramid
from dgeo.models.io import (
    DEFAULT_WEIGHTS,
    MODELS,
    NETWORKS,
    build,
    default_model,
    default_weights,
    load,
    save,
)
from dgeo.models.kfnet import KFNet, KFNetOutput
from dgeo.models.oflownet import OFlowNet
from dgeo.models.scoordnet import SCoordNet
from dgeo.models.unet import UNetPyramid
from dgeo.models.vgg import VGG16, VGGHypercolumn, load_vgg16_weights, vgg16_trunk_state_dict

__all__ = [
    "DEFAULT_WEIGHTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODELS",
    "NETWORKS",
    "VGG16",
    "ACEHead",
    "ACEModel",
    "DenseExtractor",
    "DenseSIFT",
    "FeatureLevel",
    "FeaturePyramid",
    "ImagePyramid",
    "KFNet",
    "KFNetOutput",
    "OFlowNet",
    "SCoordNet",
    "UNetPyramid",
    "VGGHypercolumn",
    "build",
    "default_model",
    "default_weights",
    "image_pyramid",
    "load",
    "load_vgg16_weights",
    "save",
    "vgg16_trunk_state_dict",
]
