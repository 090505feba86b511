"""The one place that turns a source into features, and remembers how.

A *source* is one of

* a **feature file** (``.npz`` with ``features`` (n, d), optional ``labels``, ``logits``, ``is_inlier``, and the
  ``feature_source`` record when conformood wrote it);
* **images** (an ``.npz`` with ``images``, an image folder or a ``.tar`` archive, or an array) through an
  :class:`Encoder`: a model from ``conformood train`` or a registered backbone (frozen);
* a **protocol** on a data set (``cifar10`` with ``one-vs-rest:0``), split into train / calibration / test and
  encoded the same way.

``evaluate``, ``score``, ``extract``, ``monitor``, ``export`` and the demo all read their inputs here; the
command line only parses. Every set of features carries a *feature-source record*: how the features were made
(backbone and weights digest, or model digest; input size, resizing, normalisation, output). A calibrated
detector stores the record of its calibration features, and :func:`check_feature_source` refuses to score
features made another way, naming the first field that differs and both of its values: a detector calibrated at
224 × 224 never silently scores images resized to 128 × 128.
"""

from .encoders import Encoder, Images, get_encoder, image_features, read_images
from .features import (
    SOURCE_FIELDS,
    Features,
    FeatureSourceWarning,
    check_feature_source,
    read_features,
    same_source,
    write_features,
)
from .routes import (
    check_evaluation_sources,
    checkpoint_protocol,
    evaluation_features,
    load_features,
    protocol_features,
    protocol_task,
)

__all__ = [
    "SOURCE_FIELDS",
    "Encoder",
    "FeatureSourceWarning",
    "Features",
    "Images",
    "check_evaluation_sources",
    "check_feature_source",
    "checkpoint_protocol",
    "evaluation_features",
    "get_encoder",
    "image_features",
    "load_features",
    "protocol_features",
    "protocol_task",
    "read_features",
    "read_images",
    "same_source",
    "write_features",
]
