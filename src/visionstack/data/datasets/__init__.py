"""Datasets registered in ``DATASETS`` (the registry imports this module on first lookup).

==================  =====================================================================================
name                layout
==================  =====================================================================================
``image_folder``    ``root[/split]/<class>/**/<image>``
``list_file``       ``path label`` lines (Awesome-Backbones), paths relative to ``root``
``csv``             ``image,label`` table with a header; labels integers or class names
``cub200``          CUB-200-2011 (``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``, ...)
``fgvc_aircraft``   FGVC-Aircraft 2013b (``data/images_<level>_<split>.txt``), variant / family / manufacturer
``stanford_cars``   devkit ``.mat`` layout (torchvision's) or ``cars_annos.mat`` + ``car_ims/``
``stanford_dogs``   ``Images/`` + ``train_list.mat`` / ``test_list.mat``
``digits``          scikit-learn's digits written once as PNGs into a cache folder (the demo set)
==================  =====================================================================================

Every dataset derives from :class:`ImageDataset`: ``samples``, ``class_names``, ``num_classes``,
``targets``, ``bad_files``; item ``i`` is ``{"image", "label", "index"}``.
"""

from __future__ import annotations

from visionstack.data.datasets.base import ImageDataset, index_only, seeded_rng
from visionstack.data.datasets.digits import DigitsDataset, ensure_digits
from visionstack.data.datasets.fgvc import (
    Cub200Dataset,
    FgvcAircraftDataset,
    StanfordCarsDataset,
    StanfordDogsDataset,
)
from visionstack.data.datasets.folder import (
    CsvDataset,
    ImageFolderDataset,
    ListFileDataset,
    scan_class_folders,
)

__all__ = [
    "CsvDataset",
    "Cub200Dataset",
    "DigitsDataset",
    "FgvcAircraftDataset",
    "ImageDataset",
    "ImageFolderDataset",
    "ListFileDataset",
    "StanfordCarsDataset",
    "StanfordDogsDataset",
    "ensure_digits",
    "index_only",
    "scan_class_folders",
    "seeded_rng",
]
