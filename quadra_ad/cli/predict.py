"""``quadra-ad-predict``: score images with an exported model from a shell on the line PC.

    quadra-ad-predict MODEL IMAGES_OR_FOLDERS... [--threshold T] [--out F.csv|F.jsonl]
                      [--heatmaps DIR] [--batch N] [--fail-on-anomaly]

Runs the :class:`~quadra_ad.deploy.Predictor` (no torch for an ONNX model), streaming: images
are read ``--batch`` at a time and each result is written as soon as it is known, so memory
stays flat whatever the number of images. Exit codes for line scripts: 0 all good (or anomalies
without ``--fail-on-anomaly``), 1 at least one image anomalous with ``--fail-on-anomaly``,
2 a mistake (model, arguments) or an image that could not be read (the others are still scored),
141 the reader of the output went away (``| head``), as for a tool that SIGPIPE stops.

Heatmaps are named after the image's last path parts and a hash of its full path
(``good__000_3fa9c1d2e4_anomalous.png``): readable, the same on every run, never shared by two
images, and always inside ``--heatmaps``.
"""

import argparse
import csv
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from quadra_ad.deploy.images import IMAGE_SUFFIXES, is_image_file
from quadra_ad.errors import DatasetError, QuadraADError, mistake_line
from quadra_ad.files import atomic_path
from quadra_ad.runtime.exit_codes import EXIT_MISTAKE
from quadra_ad.runtime.run_ending import Ending, ending_the_run

PROG = "quadra-ad-predict"
COLUMNS = ["image_path", "raw_score", "normalized_score", "predicted_label", "threshold"]
#: The labels in heatmap names.
LABEL_NAMES = ("good", "anomalous")
#: Path parts of the image kept in its heatmap's name, and that name's most bytes before the hash.
HEATMAP_NAME_PARTS = 3
HEATMAP_NAME_BYTES = 120


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints the whole usage first
        _fail(f"{message} (see {PROG} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog=PROG, description="Score images with a model exported by quadra-ad.",
                            epilog="A negative threshold is given as --threshold=-1.5.")
    parser.add_argument("model", help="deployment_model folder of a training run, or its model.onnx / model.pt")
    parser.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--threshold", default="training",
                        help="'training' (model.json's image threshold, default), 'training_pixel', or a raw score")
    parser.add_argument("--out", type=Path, help="write results to this .csv or .jsonl file (default: CSV on stdout)")
    parser.add_argument("--heatmaps", type=Path, metavar="DIR", help="write a heatmap overlay per image into DIR")
    parser.add_argument("--batch", type=int, default=16, help="images scored at once (default 16)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--fail-on-anomaly", action="store_true", help="exit 1 when any image is anomalous")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def _fail(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)
    sys.exit(EXIT_MISTAKE)


def iter_images(arguments: list[str]) -> Iterator[Path]:
    """Image files named or found under the named folders, in a stable order, one at a time."""
    for argument in arguments:
        path = Path(argument).expanduser()
        if path.is_dir():
            for folder, subfolders, files in os.walk(path):
                subfolders.sort()
                for name in sorted(files):
                    if is_image_file(Path(folder) / name):
                        yield Path(folder) / name
        else:
            yield path  # a missing or unreadable file gets its own line when it is read


class _Writer:
    """CSV or JSON Lines, one record per image, flushed as it goes."""

    def __init__(self, out: Path | None) -> None:
        self.jsonl = out is not None and out.suffix.lower() == ".jsonl"
        self.handle = out.open("w", newline="", encoding="utf-8") if out is not None else sys.stdout
        self.csv = None if self.jsonl else csv.writer(self.handle)
        if self.csv is not None:
            self.csv.writerow(COLUMNS)

    def write(self, prediction) -> None:
        if self.jsonl:
            record = {"image_path": prediction.source, "raw_score": prediction.score,
                      "normalized_score": prediction.normalized_score, "predicted_label": prediction.label,
                      "threshold": prediction.threshold, "threshold_source": prediction.threshold_source}
            self.handle.write(json.dumps(record) + "\n")
        else:
            self.csv.writerow([prediction.source, f"{prediction.score:.9g}", f"{prediction.normalized_score:.8g}",
                               prediction.label, f"{prediction.threshold:.9g}"])
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not sys.stdout:
            self.handle.close()


def heatmap_stem(source: str) -> str:
    """The heatmap's name for the image at ``source``, before its label: the image's last path
    parts, made safe and visible, and a hash of its absolute path, so that two images never
    share a name (``a/x.png`` and ``b/x.png``, ``../x.png``) and one image keeps its name."""
    path = Path(source)
    parts = [part for part in path.with_suffix("").parts if part not in ("..", ".", path.anchor)]
    readable = "__".join(re.sub(r"[^\w.-]+", "_", part) for part in parts[-HEATMAP_NAME_PARTS:]).lstrip(".-_")
    readable = readable.encode("utf-8")[:HEATMAP_NAME_BYTES].decode("utf-8", errors="ignore") or "image"
    digest = hashlib.sha256(os.path.abspath(source).encode("utf-8", errors="surrogateescape")).hexdigest()[:10]
    return f"{readable}_{digest}"


def write_heatmap(prediction, folder: Path, low: float, high: float) -> Path:
    """The raw anomaly map over the image (kept by the Predictor), coloured from ``low`` (blue) to ``high`` (red)."""
    image = prediction.image
    span = high - low if high > low else 1.0
    level = np.clip((prediction.anomaly_map_original - low) / span, 0.0, 1.0)
    colour = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)
    picture = cv2.addWeighted((image[:, :, ::-1] * 255).astype(np.uint8), 0.6, colour, 0.4, 0.0)
    stem = heatmap_stem(prediction.source)
    path = folder / f"{stem}_{LABEL_NAMES[prediction.label]}.png"
    # A run with another threshold may have labelled the image otherwise: one heatmap per image.
    (folder / f"{stem}_{LABEL_NAMES[1 - prediction.label]}.png").unlink(missing_ok=True)
    ok, encoded = cv2.imencode(".png", picture)  # imencode + write: cv2.imwrite fails on some non-ASCII paths
    if not ok:
        raise OSError(f"OpenCV could not encode the heatmap of {prediction.source}")
    with atomic_path(path) as temporary:  # a stopped run leaves no half-written heatmap
        temporary.write_bytes(encoded.tobytes())
    return path


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.batch < 1:
        _fail(f"--batch {args.batch}: give a whole number of at least 1")
    if args.out is not None and args.out.suffix.lower() not in (".csv", ".jsonl"):
        _fail(f"--out {args.out}: give a .csv or .jsonl file name")
    from quadra_ad.deploy.predictor import Predictor  # after the argument checks: loading takes a moment

    try:
        predictor = Predictor.load(args.model, threshold=args.threshold, device=args.device,
                                   key_names={"task.model_path": "MODEL", "task.device": "--device"})
    except QuadraADError as error:
        _fail(str(error))
    if args.heatmaps is not None:
        if predictor.card.has_anomaly_map is False:
            _fail("--heatmaps: this model scores whole images and has no anomaly map")
        try:
            args.heatmaps.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            _fail(f"--heatmaps {args.heatmaps}: cannot make the folder ({error.strerror or error})")
    low, high = predictor.calibration.map_range
    unreadable: list[str] = []

    def skip(source: str, error: DatasetError) -> None:
        unreadable.append(source)
        print(f"{PROG}: skipped: {error}", file=sys.stderr)

    try:
        writer = _Writer(args.out)
    except OSError as error:
        _fail(f"--out {args.out}: cannot write it ({error.strerror or error})")
    anomalous = scored = 0
    progress = None
    if not args.no_progress and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(unit="img", file=sys.stderr)

    def say(ending: Ending) -> None:
        # A closed output (`quadra-ad-predict … | head` read what it wanted) ends quietly, as tools do.
        if ending.stopped:
            print(f"{PROG}: interrupted after {scored} images; the results written so far are complete lines",
                  file=sys.stderr)
        elif ending.mistake:
            print(f"{PROG}: {mistake_line(ending.error)}", file=sys.stderr)

    try:
        with ending_the_run(say=say, exits=True):
            for prediction in predictor.predict_stream(iter_images(args.images), args.batch, on_error=skip,
                                                       keep_images=args.heatmaps is not None):
                writer.write(prediction)
                if args.heatmaps is not None:
                    write_heatmap(prediction, args.heatmaps, low, high)
                scored += 1
                anomalous += prediction.label
                if progress is not None:
                    progress.update(1)
    except OSError as error:  # --out or a heatmap could not be written (full disk, permissions)
        _fail(f"cannot write '{error.filename or args.out or args.heatmaps}': {error.strerror or error}")
    finally:
        writer.close()
        if progress is not None:
            progress.close()
    if scored == 0 and not unreadable:
        _fail(f"no image files in {' '.join(args.images)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    print(f"{PROG}: {scored} images scored, {anomalous} anomalous (threshold {predictor.threshold:.9g}, "
          f"{predictor.threshold_source}){f', {len(unreadable)} unreadable' if unreadable else ''}", file=sys.stderr)
    if unreadable:
        return 2
    return 1 if args.fail_on_anomaly and anomalous else 0


if __name__ == "__main__":
    sys.exit(main())
