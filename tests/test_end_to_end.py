"""detect-bench --end-to-end: files to probabilities per input worker count (benchmarks/end_to_end.py)."""

from __future__ import annotations

import json

import pytest

from specdet.benchmarks import cli, end_to_end


def test_end_to_end_reports_each_worker_count_and_that_they_agree(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "report"
    code = cli.main([str(tiny_checkpoint), "--end-to-end", "--photos", "6", "--workers", "0,2", "--repeats", "2",
                     "--batch-sizes", "4", "--out", str(out), "--quiet"])
    assert code == 0
    record = json.loads((out / "end-to-end.json").read_text())
    assert record["format"] == end_to_end.FORMAT and record["images"]["count"] == 6
    assert [row["workers"] for row in record["rows"]] == [0, 2]
    for row in record["rows"]:
        assert row["identical_probabilities"] and len(row["seconds"]) == 2
        assert row["images_per_s"]["min"] <= row["images_per_s"]["median"] <= row["images_per_s"]["max"]
        assert 0 < row["busy_fraction"]["median"] <= 1
    assert record["identical_crops"] is True and record["same_as_float_input"] is True
    assert record["rows"][1]["first_pass_s"] > 0 and record["rows"][0]["first_pass_s"] is None
    assert "| 2 |" in capsys.readouterr().out


def test_the_device_decoding_row_on_the_cpu_gives_the_pillow_paths_pixels(tiny_checkpoint, tmp_path):
    """The row the GPU suite records for nvJPEG, run on the CPU (torchvision's libjpeg-turbo, as Pillow's): every
    step but the decoder is the GPU's, and here nothing may differ."""
    photos = end_to_end.make_photos(tmp_path, 5, sizes=(300, 700))
    record = end_to_end.run(tiny_checkpoint, "torch-fp32", photos, workers=[0], batch_size=2, repeats=2,
                            decode_on_device=True)
    row = record["device_decode"]
    assert row["device"] == "cpu" and row["files_read_by_pillow"] == 0
    assert row["largest_pixel_difference"] == 0 and row["largest_probability_difference"] == 0.0
    assert row["images_per_s"]["median"] > 0
    assert "JPEGs decoded on cpu" in end_to_end.markdown(record)


def test_generated_photos_are_photo_size_jpegs(tmp_path):
    from PIL import Image

    paths = end_to_end.make_photos(tmp_path, 4, processes=2)
    assert [p.name for p in paths] == [f"photo-{i:05d}.jpg" for i in range(4)]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "JPEG" and 500 <= max(image.size) <= 1500
    again = end_to_end.make_photos(tmp_path / "again", 4)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]  # seeded by the file's number


@pytest.mark.parametrize("argv,message", [
    (["--workers", "0,1"], "--workers needs --end-to-end"),
    (["--end-to-end", "--workers", "0,x"], "--workers '0,x'"),
    (["--end-to-end", "--backends", "openvino-cpu"], "openvino-cpu"),
    (["--end-to-end", "--decode", "gpu"], "--decode gpu decodes on the GPU; torch-fp32 runs on the cpu"),
    (["--decode", "gpu"], "--decode gpu needs --end-to-end"),
])
def test_end_to_end_usage_errors_are_one_line(tiny_checkpoint, tmp_path, capsys, argv, message):
    code = cli.main([str(tiny_checkpoint), *argv, "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
