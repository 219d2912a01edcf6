"""VLMEvalKit TSV files: images by base64, index reference, list and path; hostile files get an error that names
the file, the row and the column."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from internvl.errors import DataError, ImageLoadError
from internvl.eval.tsv import answers, encode_image, index_key, read_benchmark, read_rows, write_tsv


def png(color="red", size=(40, 30)) -> str:
    return encode_image(Image.new("RGB", size, color))


def tsv(tmp_path, text, name="Bench.tsv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_base64_references_lists_and_paths(tmp_path):
    Image.new("RGB", (20, 10), "blue").save(tmp_path / "pic.png")
    red, green = png("red"), png("green")
    rows = [{"index": 1, "image": red, "question": "Q1", "answer": "A", "A": "x", "B": "y", "Category": "c1"},
            {"index": 2, "image": "1", "question": "Q2", "answer": "B", "A": "x", "B": "y"},  # by reference
            {"index": 3, "image": repr([red, green]), "question": "Q3", "answer": "A"},  # two images
            {"index": 4, "image": "pic.png", "question": "Q4", "answer": "A"},  # a file next to the TSV
            {"index": 5, "image": "", "question": "Q5", "answer": "A"},  # no image: skipped, as upstream
            {"index": 6, "image": "1", "question": "tab\there, \"quoted\"\nand a newline", "answer": "A"}]
    path = write_tsv(tmp_path / "My_Set.tsv", ["index", "image", "question", "answer", "A", "B", "Category"], rows)
    bench = read_benchmark(path)
    assert bench.name == "My_Set" and bench.skipped == 1
    assert "category" in bench.columns and "A" in bench.columns  # names lowercased, option letters kept
    by = {r.index: r for r in bench.rows}
    assert set(by) == {"1", "2", "3", "4", "6"}
    assert by["1"].images[0].load().getpixel((0, 0)) == (255, 0, 0)
    assert by["2"].images[0].key == by["1"].images[0].key == "1"  # a reference shares the original's image
    assert [im.load().getpixel((0, 0)) for im in by["3"].images] == [(255, 0, 0), (0, 128, 0)]
    assert by["4"].images[0].load().size == (20, 10)
    assert by["6"].get("question") == "tab\there, \"quoted\"\nand a newline"  # quoting round-trips
    assert by["1"].get("category") == "c1"


def test_image_path_column(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / name)
    path = tsv(tmp_path, "index\timage_path\tquestion\n1\ta.png\tQ\n2\t['a.png', 'b.png']\tQ\n")
    bench = read_benchmark(path, image_root=tmp_path / "imgs")
    assert [len(r.images) for r in bench.rows] == [1, 2]
    with pytest.raises(DataError,
                       match=r"Bench.tsv: row 1 \(index 1\), column 'image_path': no such image file 'a.png'"):
        read_benchmark(path)  # relative to the TSV's own directory, where there is none


@pytest.mark.parametrize("text, message", [
    ("image\tquestion\n" + "x\tQ\n", r"missing column 'index'"),
    ("index\timage\tanswer\n1\tx\tA\n", r"missing column 'question'"),
    ("index\tquestion\n1\tQ\n", r"missing column 'image' \(base64 images\) or 'image_path'"),
    ("index\timage\tquestion\n1\t" + "abc" * 30 + "\tQ\n", r"row 1 \(index 1\), column 'image': invalid base64"),
    ("index\timage\tquestion\n1\t" + base64.b64encode(b"not an image" * 10).decode() + "\tQ\n",
     r"row 1 \(index 1\), column 'image': the base64 data decodes to 120 bytes that are not an image"),
    ("index\timage\tquestion\n1\tPNG\tQ\n2\t99\tQ\n",
     r"row 2 \(index 2\), column 'image': unknown image reference '99'"),
    ("index\timage\tquestion\n1\tPNG\tQ\n2\t1\tQ\n3\t2\tQ\n", r"row 3 \(index 3\), column 'image': refers to row 2"),
    ("index\timage\tquestion\n1\tPNG\tQ\n1\tPNG\tQ\n", r"row 2 \(index 1\), column 'index': the same index as row 1"),
    ("index\timage\tquestion\n1\tPNG\tQ\textra\n", r"row 1: 4 tab-separated fields, but the header has 3"),
    ("index\timage\tquestion\n\tPNG\tQ\n", r"row 1, column 'index': empty"),
    ("index\timage\tquestion\n1\tPNG\t \n", r"row 1 \(index 1\), column 'question': empty"),
    ("index\timage\tquestion\n1\t['PNG', '" + "abc" * 30 + "']\tQ\n", r"row 1 \(index 1\), column 'image', image 2: "
                                                                      r"invalid base64"),
    ("index\timage\tquestion\n1\t[]\tQ\n", r"unknown image reference '\[\]'"),
    ("index\tindex\tquestion\n", r"column 'index' appears twice"),
    ("", r"empty file"),
    ("index\timage\tquestion\n1\t\tQ\n", r"no rows with an image"),
])
def test_malformed_files_name_the_row_and_column(tmp_path, text, message):
    path = tsv(tmp_path, text.replace("PNG", png()))
    with pytest.raises(DataError, match=message) as info:
        read_benchmark(path)
    assert str(path) in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_benchmark(tmp_path / "missing.tsv")
    (tmp_path / "latin.tsv").write_bytes(b"index\timage\tquestion\n1\t\xff\xfe\tQ\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_benchmark(tmp_path / "latin.tsv")
    with pytest.raises(DataError, match="is a directory"):
        read_rows(tmp_path)


def test_truncated_image_fails_when_loaded_not_when_read(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (200, 200), "red").save(buf, "JPEG")
    cut = base64.b64encode(buf.getvalue()[: len(buf.getvalue()) // 2]).decode()
    bench = read_benchmark(tsv(tmp_path, f"index\timage\tquestion\n1\t{cut}\tQ\n"))
    with pytest.raises(ImageLoadError):
        bench.rows[0].images[0].load()
    # scoring alone does not decode images at all
    assert read_benchmark(tsv(tmp_path, f"index\timage\tquestion\n1\t{'QUJD' * 20}\tQ\n", "b.tsv"),
                          check_images=False).rows[0].images[0].data == "QUJD" * 20


def test_answers_and_index_keys(tmp_path):
    bench = read_benchmark(tsv(tmp_path, f"index\timage\tquestion\tanswer\n1\t{png()}\tQ\t['a', 'b', \"c's\"]\n"
                                         f"2.0\t1\tQ\t[not a list\n3\t1\tQ\tplain\n"))
    assert [answers(r) for r in bench.rows] == [["a", "b", "c's"], ["[not a list"], ["plain"]]
    assert [r.index for r in bench.rows] == ["1", "2", "3"]  # "2.0" as pandas may write an int column
    assert index_key(12.0) == "12" and index_key("a_1.0") == "a_1.0" and index_key(" 7 ") == "7"
