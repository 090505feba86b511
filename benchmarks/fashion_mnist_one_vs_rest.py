"""Fashion-MNIST one-vs-rest (FIRM Table 4 protocol): NT-Xent vs SupCon (binary) vs FIRM with rotations.

For each class c, the three objectives train the same small CNN (same widths, initial weights, epochs, batch,
optimiser and seed) on ``--n-train`` training images of class c, drawn once per class and identical for
every method. The official test set (1,000 images of c, 9,000 of the other classes) is scored with s_con
(FIRM eq. 3: cosine similarity to the k-th nearest training feature, k = 5) on the encoder's features; the
raw-pixel s_con on the same training images is the untrained baseline. Rotations by 90, 180 and 270 degrees
are the synthetic outliers of FIRM and SupCon (FIRM section 2.1); NT-Xent sees only the inliers.

    python benchmarks/fashion_mnist_one_vs_rest.py [--classes 0 1 ...] [--methods firm ntxent supcon]
        [--epochs E] [--n-train N] [--out benchmarks/results]

Every finished (class, method) run is saved to ``fmnist.json`` at once and a rerun skips the runs already
there, so the benchmark can be stopped and continued. ``fmnist.md`` and ``fmnist_auroc.png`` are written at
the end. The wall time is recorded in the JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _one_vs_rest import add_common_arguments, class_sampler, run_benchmark
from conformood.data import load_fashion_mnist
from conformood.data.idx import FASHION_MNIST_CLASSES

METHODS = {
    "ntxent": {"objective": "ntxent", "temperature": 0.2},
    "supcon": {"objective": "supcon", "temperature": 0.2},
    "firm": {"objective": "firm", "temperature": 0.2},
}
LABELS = {
    "raw_pixels": "raw pixels",
    "ntxent": "NT-Xent (SimCLR, inliers only)",
    "supcon": "SupCon (binary: inliers vs rotations)",
    "firm": "FIRM (rotations as synthetic outliers, eq. 2)",
}

NOTES = (
    "For reference, the FIRM paper's Fashion-MNIST column of Table 4 (ResNet-18, 2000 epochs on GPUs, s_con "
    "with k = 1, mean over seeds): NT-Xent 0.957, SupCon (binary) 0.964, SupCon* 0.967, FIRM 0.968. Per class "
    "(its Table 16, k = 5) SupCon beats FIRM on t-shirt/top and pullover and ties it on dress, and NT-Xent beats "
    "both on shirt. On this data set the paper itself ranks SupCon (binary) above NT-Xent, so the ordering "
    "FIRM >= NT-Xent > SupCon (binary) of its other data sets is not expected here; FIRM >= NT-Xent is.",
)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, epochs=6, n_train=6000, batch_size=64, crop_scale_min=0.6, weight_decay=5e-4,
                         out=Path(__file__).parent / "results")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    args = parser.parse_args(argv)
    args.classes = args.classes if args.classes is not None else list(range(10))
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")

    return run_benchmark(
        name="fmnist",
        title="Fashion-MNIST one-vs-rest: NT-Xent vs SupCon (binary) vs FIRM",
        description="Small CNN (3 conv stages, widths 32-64-128, global average pooling; 2-layer projection head "
        "to 64-d) trained from scratch per class on the CPU.",
        args=args,
        class_names=list(FASHION_MNIST_CLASSES),
        train_images=class_sampler(train, args.n_train),
        x_test=test.tensor(),
        test_labels=test.labels,
        methods={m: METHODS[m] for m in args.methods},
        method_labels=LABELS,
        notes=NOTES,
    )


if __name__ == "__main__":
    main()
