"""Exports released BiT checkpoints as TF Hub SavedModels, ready to publish.

    python export/export_zoo.py --output-root /tmp/bit_hub --variants m-r50x1,s-r50x1
    python export/export_zoo.py --output-root /tmp/bit_hub --weights-dir ~/bit_npz --kinds feature_vector,classification
    python export/export_zoo.py --output-root /tmp/bit_hub --dry-run      # only print the plan

Layout (TF Hub's BiT names): OUTPUT_ROOT/<short name>/feature_vector and
OUTPUT_ROOT/<short name>/classification, e.g. /tmp/bit_hub/m-r50x1/feature_vector.
Every export is atomic, an existing one is skipped unless --overwrite (so an interrupted
batch resumes), and each runs in a fresh process so that memory is returned between
models (R152x4 alone holds 3.7 GB of weights). See export/README.md for what is written.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

from bit_keras import presets

KINDS = ("feature_vector", "classification")


def short_name(release) -> str:
    return release.name.lower().replace("bit-", "", 1)


def select(names):
    """The releases named in `names` (any accepted spelling), or all of them for 'all'."""
    if names in (None, "", "all"):
        return list(presets.PRESETS.values())
    releases = []
    for name in names.split(","):
        architecture, release = presets.resolve(name.strip())  # raises with the grammar
        if release is None:
            raise presets.ConfigError(f"{name.strip()!r} names no released BiT checkpoint; the zoo exports "
                                      "releases only (`bit_keras list`).")
        releases.append(release)
    return releases


def plan(releases, kinds, output_root, weights_dir):
    """[(release, kind, output directory, weights or None)] in export order."""
    jobs = []
    for release in releases:
        weights = os.path.join(weights_dir, release.filename) if weights_dir else None
        for kind in kinds:
            jobs.append((release, kind, os.path.join(output_root, short_name(release), kind), weights))
    return jobs


def _export_one(name, directory, weights, classifier, overwrite, cache_dir):
    from bit_keras.export import export_variant

    try:
        export_variant(name, directory, weights=weights, classifier=classifier, overwrite=overwrite,
                       cache_dir=cache_dir)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)  # our errors name the problem; no traceback
        sys.exit(2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-root", required=True, help="Exports go to OUTPUT_ROOT/<short name>/<kind>.")
    parser.add_argument("--variants", default="all",
                        help="Comma-separated release names (m-r50x1,BiT-S-R101x3,...) or 'all' (default).")
    parser.add_argument("--weights-dir", default=None,
                        help="A folder holding the release .npz files under their release file names "
                             "(`bit_keras list --json` shows the URLs). Default: download into the cache.")
    parser.add_argument("--kinds", default="feature_vector",
                        help=f"Comma-separated, from {KINDS} (default: feature_vector).")
    parser.add_argument("--overwrite", action="store_true", help="Re-export existing directories.")
    parser.add_argument("--cache-dir", default=None, help="Download cache (default $BIT_KERAS_CACHE).")
    parser.add_argument("--dry-run", action="store_true", help="Print the plan and check the weights exist.")
    args = parser.parse_args(argv)

    kinds = [kind.strip() for kind in args.kinds.split(",")]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown --kinds {unknown}; choose from {KINDS}")
    try:
        jobs = plan(select(args.variants), kinds, args.output_root, args.weights_dir)
    except ValueError as error:
        parser.error(str(error))
    missing = sorted({weights for _, _, _, weights in jobs if weights and not os.path.exists(weights)})
    if missing:
        print(f"error: {len(missing)} checkpoint(s) missing from --weights-dir, e.g. {missing[0]}. Download "
              "them from the release URLs (`bit_keras list --json`) or leave out --weights-dir.", file=sys.stderr)
        return 2

    context = multiprocessing.get_context("spawn")
    failures = 0
    for index, (release, kind, directory, weights) in enumerate(jobs, start=1):
        prefix = f"[{index}/{len(jobs)}] {release.name} {kind} -> {directory}"
        if os.path.exists(directory) and not args.overwrite:
            print(f"{prefix}: exists, skipped (--overwrite re-exports)")
            continue
        if args.dry_run:
            print(f"{prefix}: weights {weights or release.url}")
            continue
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        start = time.time()
        process = context.Process(target=_export_one, args=(
            release.name, directory, weights, kind == "classification", args.overwrite, args.cache_dir))
        process.start()
        process.join()
        if process.exitcode == 0:
            print(f"{prefix}: done in {time.time() - start:.0f} s")
        else:
            failures += 1
            print(f"{prefix}: FAILED (exit status {process.exitcode}); see the error above", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
