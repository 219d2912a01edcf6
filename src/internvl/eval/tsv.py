"""VLMEvalKit benchmark files (TSV): read and check every row, resolve its images; write such files.

The format (docs/mpo-prm-eval.md 3.6, `vlmeval/dataset/image_base.py`): a header, then one question per
row. `index` (unique) and `question` are required; `answer` is the reference (absent in test splits).
Images come from `image`: base64 data, a stringified list of them (several images), or, in a cell of at
most 64 characters, the `index` of another row whose image it shares (circular copies do this). Without an
`image` column, `image_path` names files (a list for several images), relative to the TSV's directory or
`image_root`. Optional: `hint`, option columns `A`, `B`, ..., `category`, `l2-category`, `split`. Rows
with an empty image cell are skipped, as VLMEvalKit does. Column names are lowercased except option letters.

Everything is checked when the file is read, before any model work, and every problem is a `DataError`
naming the file, the row (1-based, after the header) with its index, and the column. Deviation: only empty
cells count as missing (pandas, which VLMEvalKit reads with, also takes "NA", "None", "null", ... as missing).
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import io
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import DataError
from ..processing.image import open_image

REFERENCE_MAX = 64  # VLMEvalKit: an image cell this short is another row's index, not data
OPTION = re.compile(r"^[A-Z]$")


@dataclass(frozen=True)
class ImageSource:
    """One image of a row: base64 data (held as text until needed) or a file path."""

    data: str | None = None
    path: Path | None = None
    key: str = ""  # identity: the index (and position) of the row holding the data, or the path

    def load(self) -> Image.Image:
        """The image as RGB. Raises ImageLoadError (a truncated or corrupt file is found only here)."""
        return open_image(base64.b64decode(self.data) if self.data is not None else self.path)


@dataclass
class Row:
    number: int  # 1-based data row (the header is row 0)
    fields: dict[str, str]
    images: list[ImageSource] = field(default_factory=list)

    @property
    def index(self) -> str:
        return self.fields["index"]

    def get(self, column: str, default: str = "") -> str:
        return self.fields.get(column, default)


@dataclass
class Benchmark:
    path: Path
    name: str  # the file name without .tsv: VLMEvalKit's dataset name, which selects prompts and metrics
    columns: list[str]
    rows: list[Row]
    skipped: int = 0  # rows without an image

    def where(self, row: Row) -> str:
        return where(self.path, row.number, row.index)

    @property
    def has_answers(self) -> bool:
        return "answer" in self.columns


def where(path: Path | str, number: int, index: str | None = None) -> str:
    return f"{path}: row {number}" + (f" (index {index})" if index is not None else "")


def index_key(value: object) -> str:
    """An index as text; integral numbers without a decimal part ("12.0" -> "12"), as pandas may write them."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text[:text.index(".")] if re.fullmatch(r"-?\d+\.0+", text) else text


def answers(row: Row) -> list[str]:
    """The reference answers: a stringified list ("['a', 'b']", VQA's ten human answers) or one answer."""
    text = row.get("answer")
    if len(text) > 1 and text[0] == "[" and text[-1] == "]":
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return [text]
        if isinstance(value, list):
            return [str(v) for v in value]
    return [text]


def _normalize_column(name: str) -> str:
    name = name.strip()
    return name if OPTION.match(name) else name.lower()


def _parse_list(text: str) -> list[str] | None:
    """A stringified list of strings ("['a', 'b']"), or None when the text is not one."""
    if not (len(text) > 1 and text[0] == "[" and text[-1] == "]"):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else None


def _is_file(root: Path, text: str) -> Path | None:
    if not text or "\n" in text or len(text) > 4096:
        return None
    path = Path(text) if os.path.isabs(text) else root / text
    try:
        return path if path.is_file() else None
    except OSError:
        return None


def read_rows(path: str | os.PathLike) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(columns, [(row number, {column: cell})]) of a TSV, with the header's shape checked."""
    path = Path(path)
    csv.field_size_limit(sys.maxsize)  # base64 images make cells of megabytes
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            records = list(csv.reader(f, delimiter="\t"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a TSV file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a readable TSV file ({e})") from None
    if not records or not any(records[0]):
        raise DataError(f"{path}: empty file (a header line is needed: index, image, question, answer, ...)")
    header = [_normalize_column(c) for c in records[0]]
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        if name and name in seen:
            raise DataError(f"{path}: column {name!r} appears twice in the header (columns {seen[name] + 1} and "
                            f"{i + 1})")
        seen[name] = i
    rows = []
    for number, cells in enumerate(records[1:], 1):
        if not cells:  # a blank line
            continue
        if len(cells) != len(header):
            raise DataError(f"{where(path, number)}: {len(cells)} tab-separated fields, but the header has "
                            f"{len(header)}")
        rows.append((number, {name: cell for name, cell in zip(header, cells) if name}))
    return [c for c in header if c], rows


def read_benchmark(path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                   check_images: bool = True) -> Benchmark:
    """Read and check a VLMEvalKit TSV.

    Args:
        path: The .tsv file.
        image_root: Directory that relative `image_path` values (and image cells naming files) start from;
            default the TSV's directory.
        check_images: Decode every base64 image and read its header (off when only scoring, which needs no
            pixels: image cells are then not decoded at all).

    Raises:
        DataError: A missing column, a duplicate or empty index, an empty question, an image cell that is
            neither base64 image data, a list of them, a known index nor an existing file.
    """
    path = Path(path)
    columns, raw = read_rows(path)
    for required in ("index", "question"):
        if required not in columns:
            raise DataError(f"{path}: missing column {required!r} (VLMEvalKit files have index, image, question, "
                            f"answer, ...; this one has {', '.join(columns)})")
    image_column = "image" if "image" in columns else "image_path" if "image_path" in columns else None
    if image_column is None:
        raise DataError(f"{path}: missing column 'image' (base64 images) or 'image_path' (image files); "
                        f"the columns are {', '.join(columns)}")
    root = Path(image_root) if image_root is not None else path.parent
    by_index: dict[str, tuple[int, dict[str, str]]] = {}
    for number, cells in raw:
        cells["index"] = index_key(cells["index"])
        if cells["index"] == "":
            raise DataError(f"{where(path, number)}, column 'index': empty")
        if cells["index"] in by_index:
            raise DataError(f"{where(path, number, cells['index'])}, column 'index': the same index as row "
                            f"{by_index[cells['index']][0]}")
        by_index[cells["index"]] = (number, cells)
    bench = Benchmark(path, path.name[:-4] if path.name.endswith(".tsv") else path.stem, columns, [])
    for number, cells in raw:
        row = Row(number, cells)
        if cells[image_column].strip() == "":
            bench.skipped += 1
            continue
        if cells["question"].strip() == "":
            raise DataError(f"{bench.where(row)}, column 'question': empty")
        if image_column == "image":
            row.images = _resolve_image_cell(bench, row, by_index, root, check_images)
        else:
            row.images = [_path_source(bench, row, "image_path", p, root)
                          for p in (_parse_list(cells["image_path"]) or [cells["image_path"]])]
        bench.rows.append(row)
    if not bench.rows:
        raise DataError(f"{path}: no rows with an image (rows: {len(raw)}, skipped without an image: "
                        f"{bench.skipped})")
    return bench


def _path_source(bench: Benchmark, row: Row, column: str, text: str, root: Path) -> ImageSource:
    found = _is_file(root, text.strip())
    if found is None:
        raise DataError(f"{bench.where(row)}, column {column!r}: no such image file {text.strip()!r} "
                        f"(relative paths start from {root})")
    return ImageSource(path=found, key=str(found))


def _resolve_image_cell(bench: Benchmark, row: Row, by_index: dict, root: Path, check: bool) -> list[ImageSource]:
    cell = row.fields["image"].strip()
    holder = row.index
    if len(cell) <= REFERENCE_MAX:
        key = index_key(cell)
        if key in by_index:
            number, target = by_index[key]
            if len(target["image"].strip()) <= REFERENCE_MAX:
                raise DataError(f"{bench.where(row)}, column 'image': refers to row {number} (index {key}), whose "
                                f"image is not image data but {target['image'].strip()!r}; references go one level")
            cell, holder = target["image"].strip(), key
        elif (found := _is_file(root, cell)) is not None:
            return [ImageSource(path=found, key=str(found))]
        else:
            raise DataError(f"{bench.where(row)}, column 'image': unknown image reference {cell!r}: no row has this "
                            f"index and no such file exists under {root}")
    items = _parse_list(cell)
    if items is None:
        return [_base64_source(bench, row, cell, holder, check)]
    if not items:
        raise DataError(f"{bench.where(row)}, column 'image': an empty list of images")
    sources = []
    for k, item in enumerate(items):
        if len(item) <= REFERENCE_MAX and (found := _is_file(root, item)) is not None:
            sources.append(ImageSource(path=found, key=str(found)))
        else:
            sources.append(_base64_source(bench, row, item, f"{holder}#{k}", check, position=k + 1))
    return sources


def _base64_source(bench: Benchmark, row: Row, text: str, key: str, check: bool, position: int = 0) -> ImageSource:
    if not check:
        return ImageSource(data=text, key=key)
    what = "column 'image'" + (f", image {position}" if position else "")
    try:
        data = base64.b64decode(text)
    except (binascii.Error, ValueError) as e:
        raise DataError(f"{bench.where(row)}, {what}: invalid base64 ({e})") from None
    try:
        with Image.open(io.BytesIO(data)):
            pass
    except Exception:  # Pillow raises several types on data that is not an image
        raise DataError(f"{bench.where(row)}, {what}: the base64 data decodes to {len(data)} bytes that are not "
                        "an image Pillow can read") from None
    return ImageSource(data=text, key=key)


# ----------------------------------------------------------------------------------------------- writing
def write_tsv(path: str | os.PathLike, columns: list[str], rows: list[dict[str, object]]) -> Path:
    """Write rows (missing cells empty) as a TSV that VLMEvalKit's pandas reader reads back unchanged;
    written to a temporary name and renamed, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    os.replace(tmp, path)
    return path


def encode_image(image: Image.Image, fmt: str = "PNG") -> str:
    """An image as the base64 text of an `image` cell."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")
