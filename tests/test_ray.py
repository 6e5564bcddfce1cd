"""``detect-predict --ray``: bulk scoring with Ray Data into a resumable Parquet folder.

Everything runs on a local Ray cluster on 127.0.0.1 (two actors at most, the
CI machine has two cores), shut down after each run, on a tiny exported
detector and 1,000 distinct paths (links to the CNNDetection thumbnails).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tiny_exports
from photo_files import photo_files
from specdet.files import file_sha256
from specdet.runtime.cli import main
from specdet.runtime.detector import Detector
from specdet.runtime.ray_scoring import IDENTITY, artifact_identity

pq = pytest.importorskip("pyarrow.parquet", reason="needs the ray extra (pyarrow)")
pytest.importorskip("ray.data", reason="needs the ray extra (ray[data])")

COUNT = 1000
CORRUPT = 2


@pytest.fixture(scope="module")
def artifact():
    return tiny_exports.exported("dual_branch_tiny", "matmul")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """1,000 links to the thumbnails (distinct paths, each thumbnail several times) and two corrupt files."""
    thumbs = photo_files()
    folder = tmp_path_factory.mktemp("ray-images")
    for i in range(COUNT):
        source = thumbs[i % len(thumbs)]
        (folder / f"{i // 100:02d}").mkdir(exist_ok=True)
        (folder / f"{i // 100:02d}" / f"{i:04d}{source.suffix}").symlink_to(source)
    (folder / "corrupt-truncated.jpg").write_bytes(thumbs[0].read_bytes()[:200])
    (folder / "corrupt-text.png").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def reference(artifact, images):
    """The plain detector's results on the same files (path -> Result); each thumbnail scored once, for its links."""
    files = sorted(images.rglob("*.*"))
    targets = sorted({str(p.resolve()) for p in files})
    with Detector(artifact, threads=2) as detector:
        scored = {r.path: r for r in detector.predict_files(targets, 4)}
    return {str(p): dataclasses.replace(scored[str(p.resolve())], path=str(p)) for p in files}


def _rows(out: Path) -> list[dict]:
    return pq.read_table(out).to_pylist()  # the folder as one table: the hidden temporaries are skipped


def _check_against(rows: list[dict], reference: dict) -> None:
    assert len({r["path"] for r in rows}) == len(rows), "a path has more than one row"
    assert {r["path"] for r in rows} == set(reference)
    for row in rows:
        expected = reference[row["path"]]
        if expected.ok:
            assert row["error"] is None
            assert abs(row["probability"] - expected.probability) <= 1e-5
            assert abs(row["logit"] - expected.logit) <= 1e-4
            assert row["label"] == expected.label
        else:
            assert row["error"] == expected.error
            assert row["probability"] is None and row["logit"] is None and row["label"] is None


def test_ray_scores_what_predict_files_scores(artifact, images, reference, tmp_path, capsys):
    out = tmp_path / "scores.parquet"
    start = time.perf_counter()
    code = main([str(artifact), str(images), "--ray", "--out", str(out), "--actors", "2", "--threads", "1"])
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 1  # two corrupt files
    rows = _rows(out)
    assert len(rows) == COUNT + CORRUPT
    _check_against(rows, reference)
    assert sum(r["error"] is not None for r in rows) == CORRUPT
    assert f"{COUNT} scored, {CORRUPT} skipped with errors, 0 already in the output" in err
    assert err.count("skipped ") == CORRUPT + 1  # one line per corrupt file, and the summary
    assert "Traceback" not in err
    with capsys.disabled():
        print(f"\n{COUNT + CORRUPT} images in {seconds:.1f} s with Ray start: {(COUNT + CORRUPT) / seconds:.0f} images/s")

    # A rerun finds everything there: nothing scored, nothing added, the earlier errors still count.
    assert main([str(artifact), str(images), "--ray", "--out", str(out), "--actors", "1"]) == 1
    assert f"0 scored, 0 skipped with errors, {COUNT + CORRUPT} already in the output ({CORRUPT} of them errors)" \
        in capsys.readouterr().err
    assert len(_rows(out)) == COUNT + CORRUPT


def test_killed_run_keeps_its_parts_and_a_rerun_completes_it(artifact, images, reference, tmp_path):
    out = tmp_path / "scores.parquet"
    command = [sys.executable, "-m", "specdet.runtime.cli", str(artifact), str(images), "--ray", "--out", str(out),
               "--actors", "1", "--threads", "1", "--rows-per-part", "32"]
    # Its own session: the Ray processes the killed driver leaves behind are ended with it below.
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("part-*.parquet")) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert driver.poll() is None, f"the run ended before it was killed: {driver.stderr.read().decode()}"
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        driver.stderr.close()
    kept = _rows(out)
    assert 0 < len(kept) < COUNT + CORRUPT
    _check_against(kept, {r["path"]: reference[r["path"]] for r in kept})

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 1, rerun.stderr
    scored = COUNT + CORRUPT - len(kept)
    errors = CORRUPT - sum(r["error"] is not None for r in kept)
    assert f"{scored - errors} scored, {errors} skipped with errors, {len(kept)} already in the output" in rerun.stderr
    assert not [p for p in out.iterdir() if p.name.endswith((".partial", ".tmp"))]
    rows = _rows(out)
    assert len(rows) == COUNT + CORRUPT == scored + len(kept)
    _check_against(rows, reference)


@pytest.mark.parametrize("flags, message", [
    (["--out", "x.parquet"], "--out needs --ray"),
    (["--ray-address", "auto"], "--ray-address needs --ray"),
    (["--ray", "--json"], "--ray writes Parquet (--out); --json and --csv print"),
    (["--ray", "--csv"], "--ray writes Parquet (--out); --json and --csv print"),
])
def test_argument_errors(artifact, images, flags, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main([str(artifact), str(images), *flags])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err


def test_unwritable_output_is_one_line(artifact, images, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main([str(artifact), str(images / "00"), "--ray", "--out", str(blocker / "scores.parquet")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "is a file, not a folder" in err
    assert main([str(artifact), str(images / "00"), "--ray", "--out", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "is a file: give a folder for the scores" in err


def test_without_ray_installed_says_how_to_install(artifact, images, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    assert main([str(artifact), str(images / "00"), "--ray", "--out", str(tmp_path / "s.parquet")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.endswith(': error: install the ray extra: pip install -e ".[ray]"\n')
    assert not (tmp_path / "s.parquet").exists()


def test_paths_from_a_list_file(artifact, images, tmp_path, capsys):
    listing = tmp_path / "paths.txt"
    wanted = sorted((images / "00").iterdir())[:5]
    listing.write_text("# five images and a missing one\n" + "".join(f"{p}\n" for p in wanted) + "\n/absent/x.jpg\n")
    out = tmp_path / "s.parquet"
    assert main([str(artifact), "--list", str(listing), "--ray", "--out", str(out), "--actors", "1"]) == 1
    rows = {r["path"]: r for r in _rows(out)}
    assert set(rows) == {str(p) for p in wanted} | {"/absent/x.jpg"}
    assert rows["/absent/x.jpg"]["error"] == "no such file"
    assert "skipped /absent/x.jpg: no such file" in capsys.readouterr().err


def test_a_rerun_with_another_model_is_refused_not_mixed(artifact, images, tmp_path, capsys):
    out = tmp_path / "scores.parquet"
    assert main([str(artifact), str(images / "00"), "--ray", "--out", str(out), "--actors", "1"]) == 0
    capsys.readouterr()
    recorded = json.loads((out / IDENTITY).read_text())
    assert recorded["sha256"] == file_sha256(artifact) and recorded["external_data"] == {}
    rows = _rows(out)
    other = tiny_exports.exported("rine_ssca_tiny", "matmul")
    # more images too: without the check, the new ones would be scored by the other model beside the first's
    assert main([str(other), str(images / "00"), str(images / "01"), "--ray", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds scores of another model" in err and "rows of two models are not mixed" in err
    assert len(err.splitlines()) == 1
    assert _rows(out) == rows
    # the same model copied elsewhere is the same model: the rerun resumes
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(artifact.read_bytes())
    assert main([str(copy), str(images / "00"), "--ray", "--out", str(out)]) == 0
    assert "0 scored, 0 skipped with errors, 100 already in the output" in capsys.readouterr().err


def test_a_folder_that_is_not_a_scores_output_is_never_written(artifact, images, tmp_path, capsys):
    before = sorted(p.name for p in (images / "00").iterdir())
    # the image folder itself
    assert main([str(artifact), str(images / "00"), "--ray", "--out", str(images / "00")]) == 2
    err = capsys.readouterr().err
    assert "is not empty and has no _artifact.json" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in (images / "00").iterdir()) == before
    # a scores folder that holds input images, named through a link to it
    out = tmp_path / "scores.parquet"
    (out / "photos").mkdir(parents=True)
    (out / "photos" / before[0]).write_bytes((images / "00" / before[0]).read_bytes())
    (tmp_path / "link").symlink_to(out / "photos")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'link' / before[0]}\n")
    (out / IDENTITY).write_text(json.dumps(artifact_identity(artifact)))
    assert main([str(artifact), "--list", str(listing), "--ray", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds input images" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == [IDENTITY, "photos"]
