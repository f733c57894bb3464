"""``neuralcodes prepare``: download Tiny ImageNet (or read --data), build the image cache and
print the assignment's splits."""

from __future__ import annotations

import argparse

from neuralcodes.cli.common import (
    add_config_options,
    add_progress_option,
    config_from_args,
    console_logging,
)


def register(p: argparse.ArgumentParser) -> None:
    """The ``prepare`` command's description and arguments (its summary: ``cli.COMMANDS``)."""
    p.description = (
        "Decode every train image of Tiny ImageNet (or every image of a labelled folder: one "
        "subfolder per class) once into a compact uint8 cache "
        "(images.npy + labels + class names + manifest) and print the assignment's splits (the "
        "data.* settings, e.g. --set data.ood_classes=2 --set data.max_per_class=50). Without "
        "--data the official archive is downloaded (resumable, md5-checked) from --url, else "
        "$NEURALCODES_URL, else cs231n.stanford.edu. Re-running with "
        "the same source does no work.")
    p.add_argument("--workers", type=int, metavar="N", help="decoding processes (default: one "
                   "per CPU core, at most 8; one for fewer than 2,000 images)")
    p.add_argument("--export-splits", metavar="FILE.csv", help="also write the partition to "
                   "FILE.csv: split,position,file_name,wnid (train, val, test, ood, in order)")
    add_progress_option(p)
    add_config_options(p, "--data", "--cache-dir", "--url")
    p.add_argument("--source", dest="alias_data_source", metavar="VALUE",
                   help="another spelling of --data")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from neuralcodes.data import (
        Dataset,
        check_usable,
        class_check,
        make_splits,
        prepare_cache,
        summary,
        write_splits_csv,
    )
    from neuralcodes.errors import NeuralCodesError
    from neuralcodes.files import require_folder

    cfg = config_from_args(args).data
    if args.workers is not None and args.workers < 1:
        raise NeuralCodesError(f"--workers must be at least 1 (got {args.workers})")
    if args.export_splits:
        require_folder(args.export_splits, "--export-splits")
    with console_logging():
        root, built = prepare_cache(cfg.source, cfg.cache_dir, dataset=cfg.dataset,
                                    workers=args.workers, progress=not args.no_progress,
                                    url=cfg.url, check=class_check(cfg))
    dataset = Dataset.load(root)
    splits = make_splits(dataset, cfg)
    check_usable(dataset, splits)
    print(summary(dataset, splits, built=built, splits_path=splits.save(root)))
    if args.export_splits:
        print(f"partition: {write_splits_csv(dataset, splits, args.export_splits)}")
    return 0
