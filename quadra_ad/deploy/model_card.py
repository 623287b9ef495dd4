"""``model.json``: everything needed to use an exported graph correctly, beside the graph.

Input size and normalisation stats say how to prepare images; the :class:`Calibration`
(thresholds and score ranges, all raw, from the validation set) says how to read the outputs.
The export step fills one in and writes it (:mod:`quadra_ad.export.model_card`); every way of
running an exported model reads it.
Its keys are flat (``image_threshold``, ``pixel_min`` … at the top level), as they always were.

What the hashes guarantee. ``card_sha256`` is the SHA-256 of the card's own content (every
other key, as canonical JSON: sorted keys, no spaces, ASCII escapes) and ``sha256`` holds the
SHA-256 of every file the card names: each graph, its weights file, the valid area mask.
:func:`locate_exported_model` checks the card and every file the chosen graph needs against
them before any runner opens a file, and takes no file from outside the deployment folder. So a
card edited by hand, a file damaged in a copy, or a card, graph, weights file or mask swapped in
from another model is refused instead of silently giving other scores or labels. That is
integrity against accidents and swaps, not authenticity: whoever can write the folder can
rewrite the card and its hash to match anything, so protect the folder itself where that
matters. TorchScript is code: loading a ``model.pt`` runs it, so load only ``model.pt`` files
you trust; ONNX and OpenVINO files are data, read by their runtimes.
"""

import hashlib
import json
import math
import os
import re
import stat
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from quadra_ad.errors import ConfigError, ExportError
from quadra_ad.evaluation.thresholds import Calibration
from quadra_ad.files import file_kind, write_text

MODEL_JSON = "model.json"
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".torchscript", ".jit")
ONNX_SUFFIXES = (".onnx",)
#: OpenVINO IR: the ``.xml`` graph, its weights in the ``.bin`` of the same name beside it.
OPENVINO_SUFFIXES = (".xml",)
#: ONNX weights kept outside the graph (external data) when they are large; the graph names this file.
ONNX_WEIGHTS = "model.onnx.data"
#: Graph files looked for, in this order, when a deployment folder is given.
GRAPH_FILES = ("model.onnx", "model.xml", "model.pt")
#: The region-of-interest mask, shipped beside model.json when the training used one.
VALID_AREA_MASK = "valid_area_mask.png"
#: 2: ``sha256`` of the graph files. 3: ``card_sha256`` (the card's own content) and the valid
#: area mask's hash in ``sha256``; cards of older schemas are refused (export again).
SCHEMA_VERSION = 3
#: The key of model.json holding the hash of all its other keys.
CARD_HASH = "card_sha256"
#: The ``sha256`` key of the valid area mask (a graph's is its format, its weights' ``<format>_weights``).
MASK_HASH = "valid_area_mask"
#: The export format of each graph file ending.
FORMAT_OF_SUFFIX = {**dict.fromkeys(TORCHSCRIPT_SUFFIXES, "torchscript"), **dict.fromkeys(ONNX_SUFFIXES, "onnx"),
                    **dict.fromkeys(OPENVINO_SUFFIXES, "openvino")}
FORMATS = ("torchscript", "onnx", "openvino")
#: model.json is a few kB; a file this large is not one and is not read into memory.
MAX_CARD_BYTES = 1 << 20
#: Largest graph input (height x width): loading runs one blank image of this size through the graph.
MAX_INPUT_PIXELS = 1 << 24
_CALIBRATION_KEYS = tuple(f.name for f in fields(Calibration))
#: Calibration keys that describe rather than decide (left out of its equality): text or null, and
#: may be absent; every other key of a card must be there, pixel ones null when there are none.
_DESCRIPTIVE_CALIBRATION_KEYS = tuple(f.name for f in fields(Calibration) if not f.compare)
#: Keys of model.json in the order they are written (the calibration's sit after ``std``).
_KEY_ORDER = ("model_class", "input_size", "mean", "std", "image_threshold", "pixel_threshold", "image_min",
              "image_max", "pixel_min", "pixel_max", "task_type")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: What to do about a card that is not the one the export wrote.
_FIX = "copy the whole deployment_model folder of the training run again, or export the model again"


@dataclass
class ModelCard:
    """The contents of ``model.json``."""

    model_class: str
    input_size: list[int]
    mean: list[float]
    std: list[float]
    calibration: Calibration
    task_type: str
    #: What every image goes through before the graph, in this order: pixels outside the valid
    #: area mask (a file beside model.json, any non-zero pixel valid) set to 0, the crop box
    #: ``[x1, y1, x2, y2]`` cut out, resized to ``input_size``, normalised with ``mean``/``std``.
    valid_area_mask: str | None = None
    crop_area: list[int] | None = None
    resize: str = "bilinear, antialiased (torchvision v2 resize)"
    channel_order: str = "RGB"
    pixel_scaling: str = "uint8 / 255, uint16 / 65535, float clipped to [0, 1]; gray and RGBA read as RGB"
    input_channels: int = 3
    input_name: str = "image"
    outputs: list[str] = field(default_factory=lambda: ["pred_score", "anomaly_map"])
    threshold_rule: str = "score >= threshold is anomalous"
    files: dict[str, str] = field(default_factory=dict)
    #: Content hash of each file the card names (filled in by :meth:`write`): ``<format>`` for a
    #: graph, ``<format>_weights`` for its weights file, ``valid_area_mask`` for the mask.
    sha256: dict[str, str] = field(default_factory=dict)
    #: Formats whose graph only takes this many images at once (others take any batch size).
    fixed_batch_size: dict[str, int] = field(default_factory=dict)
    #: False for image-level models: their graph's map is the score broadcast, not a real map.
    has_anomaly_map: bool = True
    versions: dict[str, str] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """The flat ``model.json`` mapping (without its ``card_sha256``)."""
        values = asdict(self)
        values.update(values.pop("calibration"))
        ordered = {key: values.pop(key) for key in _KEY_ORDER}
        return {**ordered, **values}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "ModelCard":
        values = dict(values)
        # Every calibration key must be there (pixel ones may be null): a card without them is not ours.
        missing = [key for key in _CALIBRATION_KEYS if key not in values and key not in _DESCRIPTIVE_CALIBRATION_KEYS]
        if missing:
            raise KeyError(f"missing {', '.join(missing)}")
        calibration = Calibration(**{key: values.pop(key) for key in _CALIBRATION_KEYS if key in values})
        return cls(calibration=calibration, **values)

    def write(self, folder: Path) -> Path:
        """``folder/model.json``, with the hash of every file it names (as they are in ``folder``
        now) and of its own content: the one way a card is written, by the export and by tests."""
        folder = Path(folder)
        self.sha256 = named_file_hashes(self, folder)
        values = self.to_json()
        problem = card_value_problem(values, folder)
        if problem:
            raise ExportError(f"cannot write {folder / MODEL_JSON}: {problem}")
        return write_card_json(values, folder)

    @classmethod
    def read(cls, path: Path) -> "ModelCard":
        """The card in ``path``, refused (ConfigError, one line) unless it is a whole, unedited card of
        this schema whose values can be used and whose files lie in its folder."""
        return read_card(Path(path))


def write_card_json(values: dict[str, Any], folder: Path) -> Path:
    """``values`` as ``folder/model.json`` with their ``card_sha256``; nothing is checked."""
    values = {key: value for key, value in values.items() if key != CARD_HASH}
    values[CARD_HASH] = card_content_hash(values)
    return write_text(Path(folder) / MODEL_JSON, json.dumps(values, indent=2) + "\n")


def card_content_hash(values: dict[str, Any]) -> str:
    """SHA-256 of every key but ``card_sha256``, as canonical JSON (sorted keys, compact, ASCII)."""
    content = {key: value for key, value in values.items() if key != CARD_HASH}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode("ascii")).hexdigest()


def named_file_hashes(card: ModelCard, folder: Path) -> dict[str, str]:
    """The ``sha256`` block for ``card``: the content hash of each graph, weights file and mask it names."""
    hashes = {}
    for export_format, name in card.files.items():
        graph = Path(folder) / name
        hashes[export_format] = file_sha256(graph)
        weights = weights_file(graph)
        if weights is not None:
            hashes[f"{export_format}_weights"] = file_sha256(weights)
    if card.valid_area_mask:
        hashes[MASK_HASH] = file_sha256(Path(folder) / card.valid_area_mask)
    return hashes


def weights_file(graph_file: Path) -> Path | None:
    """The file holding ``graph_file``'s weights when they live beside it: OpenVINO's ``.bin``,
    ONNX's external data (when the export wrote it); None when the graph file holds them."""
    suffix = graph_file.suffix.lower()
    if suffix in OPENVINO_SUFFIXES:
        return graph_file.with_suffix(".bin")
    if suffix in ONNX_SUFFIXES and (graph_file.parent / ONNX_WEIGHTS).is_file():
        return graph_file.parent / ONNX_WEIGHTS
    return None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a regular file's bytes, read in blocks (graphs can be hundreds of MB)."""
    digest = hashlib.sha256()
    with _open_regular(Path(path)) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class NotARegularFile(OSError):
    """A FIFO, device, socket or folder where a file was expected."""


def _open_regular(path: Path):
    """``path`` opened for reading, refused unless it is a regular file (checked before opening, so a
    FIFO never blocks, and again on the open file, so nothing swapped in between is read)."""
    kind = _file_kind(os.stat(path).st_mode)
    if kind:
        raise NotARegularFile(f"'{path}' is {kind}, not a regular file")
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    kind = _file_kind(os.fstat(descriptor).st_mode)
    if kind:
        os.close(descriptor)
        raise NotARegularFile(f"'{path}' is {kind}, not a regular file")
    return os.fdopen(descriptor, "rb")


def _file_kind(mode: int) -> str | None:
    """None for a regular file, else what it is, in words."""
    return None if stat.S_ISREG(mode) else file_kind(mode)


# -- reading a card --------------------------------------------------------------------------
def read_card(card_path: Path) -> ModelCard:
    """The card in ``card_path``; one ConfigError line naming the file (and key) for anything wrong."""
    values = _card_json(card_path)
    version = values.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ConfigError(f"'{card_path}': schema_version must be a whole number, got {_shown(version)}; {_FIX}")
    if version < SCHEMA_VERSION:
        raise ConfigError(f"'{card_path}' is a schema {version} model card (an older quadra_ad), without the hash "
                          f"of its own content that this version checks: export the model again with this quadra_ad")
    if version > SCHEMA_VERSION:
        raise ConfigError(f"'{card_path}' is a schema {version} model card, written by a newer quadra_ad (this one "
                          f"reads schema {SCHEMA_VERSION}): upgrade quadra_ad")
    if CARD_HASH not in values:
        raise ConfigError(f"'{card_path}' has no {CARD_HASH} (the hash of its content): it was edited after "
                          f"export; {_FIX}")
    if values[CARD_HASH] != card_content_hash(values):
        raise ConfigError(f"'{card_path}' was changed after export (its content does not match its {CARD_HASH}); {_FIX}")
    problem = card_value_problem(values, card_path.parent)
    if problem:
        raise ConfigError(f"'{card_path}': {problem}; {_FIX}")
    return ModelCard.from_json({key: value for key, value in values.items() if key != CARD_HASH})


def _card_json(card_path: Path) -> dict[str, Any]:
    """The JSON object in ``card_path``, read only when it is a regular file of card size."""
    try:
        with _open_regular(card_path) as handle:
            raw = handle.read(MAX_CARD_BYTES + 1)
    except NotARegularFile as error:
        raise ConfigError(f"{error}: give the model.json the export wrote") from None
    except OSError as error:
        raise ConfigError(f"'{card_path}' cannot be read ({error.strerror or error}): check its permissions") from None
    if len(raw) > MAX_CARD_BYTES:
        raise ConfigError(f"'{card_path}' is over {MAX_CARD_BYTES} bytes, far larger than any model.json "
                          f"quadra_ad writes; {_FIX}")
    try:
        text = raw.decode("utf-8")
        values = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError as error:
        raise ConfigError(f"'{card_path}' is not UTF-8 text (byte {error.start}); {_FIX}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"'{card_path}' is not valid JSON ({error.msg}, line {error.lineno} column "
                          f"{error.colno}); {_FIX}") from None
    except _DuplicateKey as error:
        raise ConfigError(f"'{card_path}' has the key '{error.key}' more than once; {_FIX}") from None
    except RecursionError:
        raise ConfigError(f"'{card_path}' is nested too deeply to be a model card; {_FIX}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"'{card_path}' holds a JSON {_json_type(values)}, not an object of model card keys; {_FIX}")
    return values


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of two equal keys: what a reader sees would depend on the parser.
    values = {}
    for key, value in pairs:
        if key in values:
            raise _DuplicateKey(key)
        values[key] = value
    return values


# -- the values of a card ----------------------------------------------------------------------
def card_value_problem(values: dict[str, Any], folder: Path) -> str | None:
    """What is wrong with a card's values (naming the key), or None: every key known and present,
    of its type, finite, in range, consistent with the others; every file named inside ``folder``."""
    known = {f.name for f in fields(ModelCard) if f.name != "calibration"} | set(_CALIBRATION_KEYS) | {CARD_HASH}
    unknown = sorted(set(values) - known)
    if unknown:
        return f"unknown key(s) {', '.join(map(repr, unknown))} (schema {SCHEMA_VERSION} has no such key)"
    required = known - {CARD_HASH, *_DESCRIPTIVE_CALIBRATION_KEYS}
    missing = sorted(required - set(values))
    if missing:
        return f"missing key(s) {', '.join(missing)}"
    for key in [key for key in values if key != CARD_HASH]:
        problem = _CHECKS.get(key, _optional_text)(values[key])
        if problem:
            return f"{key} {problem}, got {_shown(values[key])}"
    return _relation_problem(values) or _file_problem(values, Path(folder))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


def _number(value: Any) -> str | None:
    return None if _finite(value) else "must be a finite number"


def _number_or_null(value: Any) -> str | None:
    return None if value is None or _finite(value) else "must be a finite number or null"


def _input_size(value: Any) -> str | None:
    if not (isinstance(value, list) and len(value) == 2 and all(_whole(v) and v > 0 for v in value)):
        return "must be [height, width], two whole numbers above 0"
    return None if value[0] * value[1] <= MAX_INPUT_PIXELS else f"must be at most {MAX_INPUT_PIXELS} pixels"


def _mean(value: Any) -> str | None:
    ok = isinstance(value, list) and len(value) == 3 and all(_finite(v) for v in value)
    return None if ok else "must be 3 finite numbers (R, G, B)"


def _std(value: Any) -> str | None:
    ok = isinstance(value, list) and len(value) == 3 and all(_finite(v) and v > 0 for v in value)
    return None if ok else "must be 3 finite numbers above 0 (R, G, B)"


def _crop_area(value: Any) -> str | None:
    if value is None:
        return None
    ok = isinstance(value, list) and len(value) == 4 and all(_whole(v) and v >= 0 for v in value)
    if ok and value[0] < value[2] and value[1] < value[3]:
        return None
    return "must be null or [x1, y1, x2, y2], whole numbers from 0 with x1 < x2 and y1 < y2"


def _one_of(*allowed):
    def check(value: Any) -> str | None:
        return None if value in allowed else f"must be {' or '.join(map(repr, allowed))}"
    return check


def _mapping(key_check, value_check, what: str):
    def check(value: Any) -> str | None:
        if isinstance(value, dict) and all(key_check(k) and value_check(v) for k, v in value.items()):
            return None
        return f"must be an object of {what}"
    return check


def _optional_text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, str) and value.strip()) else "must be null or a string"


_CHECKS = {
    "model_class": _text,
    "input_size": _input_size,
    "mean": _mean,
    "std": _std,
    **dict.fromkeys(("image_threshold", "image_min", "image_max"), _number),
    **dict.fromkeys(("pixel_threshold", "pixel_min", "pixel_max"), _number_or_null),
    "task_type": _one_of("segmentation", "classification"),
    "valid_area_mask": _optional_text,
    "crop_area": _crop_area,
    "resize": _text,
    # Read by no code: the RGB order and the >= rule are what every path applies, so a card that
    # says otherwise describes another pipeline.
    "channel_order": _one_of("RGB"),
    "pixel_scaling": _text,
    "input_channels": lambda v: None if _whole(v) and v > 0 else "must be a whole number above 0",
    "input_name": _text,
    "outputs": lambda v: None if isinstance(v, list) and len(v) == 2 and all(isinstance(o, str) for o in v)
    else "must be the names of the graph's 2 outputs (score, map)",
    "threshold_rule": _one_of("score >= threshold is anomalous"),
    "files": _mapping(lambda k: k in FORMATS, lambda v: isinstance(v, str), f"{'/'.join(FORMATS)}: file name"),
    "sha256": _mapping(lambda k: isinstance(k, str), lambda v: isinstance(v, str) and bool(_SHA256.fullmatch(v)),
                       "file role: 64 lowercase hex digits"),
    "fixed_batch_size": _mapping(lambda k: k in FORMATS, lambda v: _whole(v) and v > 0,
                                 f"{'/'.join(FORMATS)}: a whole number above 0"),
    "has_anomaly_map": lambda v: None if isinstance(v, bool) else "must be true or false",
    "versions": _mapping(lambda k: isinstance(k, str), lambda v: isinstance(v, str), "package: version string"),
    "training": lambda v: None if isinstance(v, dict) else "must be an object",
    "schema_version": _one_of(SCHEMA_VERSION),
}


def _relation_problem(values: dict[str, Any]) -> str | None:
    """Values that are each fine but contradict each other."""
    if values["image_min"] > values["image_max"]:
        return f"image_min {values['image_min']} is above image_max {values['image_max']}"
    if (values["pixel_min"] is None) != (values["pixel_max"] is None):
        return "pixel_min and pixel_max must both be numbers or both be null"
    if values["pixel_min"] is not None and values["pixel_min"] > values["pixel_max"]:
        return f"pixel_min {values['pixel_min']} is above pixel_max {values['pixel_max']}"
    for export_format, name in values["files"].items():
        if Path(name).suffix.lower() not in {s for s, f in FORMAT_OF_SUFFIX.items() if f == export_format}:
            return f"files.{export_format} '{name}' does not end like a {export_format} file"
    hashed = set(values["sha256"])
    named = set(values["files"]) | ({MASK_HASH} if values["valid_area_mask"] else set())
    if named - hashed:
        return f"sha256 has no hash for {', '.join(sorted(named - hashed))}, which the card names"
    allowed = named | {f"{f}_weights" for f in values["files"] if f in ("onnx", "openvino")}
    if hashed - allowed:
        return f"sha256 names {', '.join(sorted(hashed - allowed))}, a file the card does not"
    if "openvino" in values["files"] and "openvino_weights" not in hashed:
        return "sha256 has no hash for openvino_weights (model.bin), which the openvino graph needs"
    return None


def _file_problem(values: dict[str, Any], folder: Path) -> str | None:
    """The first file name in the card that does not stay inside its folder."""
    named = [(f"files.{fmt}", name) for fmt, name in values["files"].items()]
    if values["valid_area_mask"]:
        named.append(("valid_area_mask", values["valid_area_mask"]))
    for key, name in named:
        if not inside_folder(folder, name):
            return (f"{key} '{name}' is not a file inside the deployment folder; a card names its files by their "
                    f"names beside it")
    return None


def inside_folder(folder: Path, name: str) -> bool:
    """True when ``name`` is a relative path that, symbolic links followed, stays inside ``folder``."""
    if not name or "\x00" in name or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() \
            or PureWindowsPath(name).drive:
        return False
    root = Path(folder).resolve()
    return (root / name).resolve().is_relative_to(root) and (root / name).resolve() != root


# -- finding and verifying an exported model ----------------------------------------------------
def locate_exported_model(model_path: str | Path | None) -> tuple[Path, ModelCard]:
    """The graph file ``task.model_path`` names and the card beside it, both verified: the card
    whole and unedited, the graph (its weights, the mask) the files it was written for, all regular
    files inside the folder. One ConfigError per problem.

    Reads files only (no torch, no ONNX Runtime), so it runs before anything heavy is imported,
    and before any runner opens a graph (loading TorchScript runs its code).
    """
    if model_path is None or str(model_path).strip() == "":
        raise ConfigError("task.model_path is not set: give task.model_path=<run folder>/deployment_model/model.pt (or .onnx)")
    path = Path(model_path).expanduser()
    if path.is_dir() or path.name == MODEL_JSON:
        folder = path if path.is_dir() else path.parent
        found = [folder / name for name in GRAPH_FILES if (folder / name).exists()]
        if not found:
            raise ConfigError(f"task.model_path '{path}': no {', '.join(GRAPH_FILES)} in '{folder}'; give a training "
                              f"run's deployment_model folder or a graph file in it")
        path = found[0]
    if not path.exists():
        raise ConfigError(f"task.model_path '{path}' does not exist")
    kind = _file_kind(path.stat().st_mode)
    if kind:
        raise ConfigError(f"task.model_path '{path}' is {kind}, not a model file: give a training run's "
                          f"deployment_model folder or a graph file in it")
    suffix = path.suffix.lower()
    if suffix not in FORMAT_OF_SUFFIX:
        raise ConfigError(
            f"task.model_path '{path}': unknown model format '{suffix}'; give a TorchScript ({', '.join(TORCHSCRIPT_SUFFIXES)}), "
            f"ONNX (.onnx) or OpenVINO (.xml) file from a training run's deployment_model folder"
        )
    card_path = path.parent / MODEL_JSON
    if not card_path.exists():
        raise ConfigError(f"no {MODEL_JSON} beside task.model_path '{path}': keep the exported model in its deployment_model folder")
    if not inside_folder(path.parent, MODEL_JSON):
        raise ConfigError(f"'{card_path}' is a link to a file outside the deployment folder: keep the model.json "
                          f"the export wrote beside its graph")
    card = read_card(card_path)
    verify_files(card, card_path, path)
    return path, card


def verify_files(card: ModelCard, card_path: Path, graph_file: Path) -> None:
    """Refuse unless ``graph_file``, its weights and the mask are regular files inside the card's
    folder with the content the card was written for (the graph by its format's hash, not any)."""
    folder = card_path.parent
    export_format = FORMAT_OF_SUFFIX[graph_file.suffix.lower()]
    if not inside_folder(folder, graph_file.name):
        raise ConfigError(f"task.model_path '{graph_file}' is a link to a file outside its folder '{folder}': "
                          f"give the graph file itself, beside its model.json")
    expected = card.sha256.get(export_format)
    if expected is None:
        written = ", ".join(f"{name} ({fmt})" for fmt, name in card.files.items()) or "none"
        raise ConfigError(f"'{card_path}' was written for no {export_format} graph (its graphs: {written}), so it "
                          f"cannot describe '{graph_file}'; give one of its graphs")
    if _sha256_of(graph_file, "task.model_path") != expected:
        raise ConfigError(
            f"'{card_path}' was written for other graph files than '{graph_file}' (content hash differs: the card "
            f"comes from another model, or the file changed after export); use the model.json exported with it"
        )
    weights = _expected_weights(card, export_format, graph_file)
    if weights is not None:
        if not weights.exists():
            raise ConfigError(f"task.model_path '{graph_file}': its weights '{weights.name}' are missing beside it; "
                              f"copy the whole deployment_model folder")
        _check_named_file(folder, weights, card.sha256[f"{export_format}_weights"], card_path,
                          f"was written for other graph files than '{graph_file}' (its weights '{weights.name}' "
                          f"differ: another model's, or changed after export)")
    if card.valid_area_mask:
        mask = folder / card.valid_area_mask
        if not mask.exists():
            raise ConfigError(f"'{card_path}' needs its valid area mask '{card.valid_area_mask}' beside it, and it is "
                              f"missing: copy the whole deployment_model folder")
        _check_named_file(folder, mask, card.sha256[MASK_HASH], card_path,
                          f"was written with another valid area mask than '{card.valid_area_mask}' (content hash differs)")


def _check_named_file(folder: Path, path: Path, expected: str, card_path: Path, mismatch: str) -> None:
    """Refuse ``path`` unless it is a regular file inside ``folder`` with the ``expected`` content."""
    if not inside_folder(folder, str(path.relative_to(folder))):
        raise ConfigError(f"'{path}' is a link to a file outside the deployment folder '{folder}': "
                          f"copy the whole deployment_model folder, files and not links")
    if _sha256_of(path, "") != expected:
        raise ConfigError(f"'{card_path}' {mismatch}; {_FIX}")


def _expected_weights(card: ModelCard, export_format: str, graph_file: Path) -> Path | None:
    """The weights file the card says ``graph_file`` loads, None when the graph holds its weights."""
    if f"{export_format}_weights" not in card.sha256:
        return None
    return graph_file.with_suffix(".bin") if export_format == "openvino" else graph_file.parent / ONNX_WEIGHTS


def _sha256_of(path: Path, key: str) -> str:
    """``path``'s content hash; a non-regular or unreadable file is one line (``key``: what names it)."""
    prefix = f"{key} " if key else ""
    try:
        return file_sha256(path)
    except NotARegularFile as error:
        raise ConfigError(f"{prefix}{error}: give the file the export wrote") from None
    except OSError as error:
        raise ConfigError(f"{prefix}'{path}' cannot be read ({error.strerror or error})") from None


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    return ("list" if isinstance(value, list) else "string" if isinstance(value, str) else "null" if value is None
            else "boolean" if isinstance(value, bool) else "number")


def check_input_size(given, card: ModelCard) -> None:
    """Refuse an input size other than the one the graph was exported for."""
    if given is not None and [int(s) for s in given] != list(card.input_size):
        raise ConfigError(
            f"transforms.input_size={[int(s) for s in given]} but the model was exported for {list(card.input_size)} "
            f"(model.json input_size): remove transforms.input_size, the model's size is used"
        )


def preparation_from_card(card: ModelCard, folder: Path) -> dict[str, Any]:
    """The datamodule arguments that reproduce the training's preparation of images."""
    return {
        "image_size": list(card.input_size), "mean": list(card.mean), "std": list(card.std),
        "crop_area": list(card.crop_area) if card.crop_area is not None else None,
        "valid_area_mask": str(Path(folder) / card.valid_area_mask) if card.valid_area_mask else None,
    }
