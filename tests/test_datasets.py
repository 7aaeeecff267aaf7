"""Dataset runs with the local engine: results equal to xt.evaluate's, per-image seeds, the store
(Zarr + Parquet), resuming (also after a real SIGKILL), separate results per parameters,
corrupt files, streamed sources with flat memory, PyTorch/tf.data sources, the CLI verbs and
the report. The Ray engine is tested in test_datasets_ray.py."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("zarr", reason="dataset runs need the datasets extra (zarr, pyarrow)")
pytest.importorskip("pyarrow", reason="dataset runs need the datasets extra (zarr, pyarrow)")
pd = pytest.importorskip("pandas")

import xai_toolbox as xt  # noqa: E402
from xai_toolbox.cli import main  # noqa: E402
from xai_toolbox.datasets import StoreError, derive_seed, explain_dataset, open_results  # noqa: E402
from xai_toolbox.demo import load_demo_model, make_shapes, to_channels_first  # noqa: E402
from xai_toolbox.evaluation import top1  # noqa: E402

RISE = ("rise", {"nb_samples": 40, "grid_size": 4})
MUFIDELITY = ("mufidelity", {"nb_samples": 8})
DELETION = ("deletion", {"steps": 6})


# -- helpers (also used by test_datasets_ray.py) ------------------------------------------------------
def shapes(n: int, framework: str, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Demo images in ``framework``'s layout and their labels."""
    data = make_shapes(n, seed=seed)
    images = to_channels_first(data.images) if framework == "torch" else data.images
    return np.ascontiguousarray(images, dtype=np.float32), data.labels.astype(np.int64)


def factory(framework: str) -> Any:
    """A picklable zero-argument factory of the demo model."""
    return functools.partial(load_demo_model, framework)


def sorted_records(path: Path | str) -> Any:
    """A store's records without the timings, in a fixed order (for comparisons)."""
    frame = open_results(path).records().drop(columns="time_s")
    keys = ["position", "method", "method_hash", "metric", "metric_hash"]
    return frame.sort_values(keys, na_position="first", kind="stable").reset_index(drop=True)


def assert_same_store(a: Path | str, b: Path | str) -> None:
    """Same records (timings aside) and bit-identical maps."""
    pd.testing.assert_frame_equal(sorted_records(a), sorted_records(b))
    ra, rb = open_results(a), open_results(b)
    assert sorted(ra.method_keys()) == sorted(rb.method_keys())
    for key in ra.method_keys():
        ma, mb = ra.maps(key)[:], rb.maps(key)[:]
        assert ma.dtype == mb.dtype and ma.shape == mb.shape
        assert np.array_equal(ma, mb, equal_nan=True), key


def write_pictures(folder: Path, n: int, seed: int = 0, size: int = 64) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    images = make_shapes(n, seed=seed, size=size).images
    paths = []
    for i, image in enumerate(images):
        path = folder / f"img{i:02d}.png"
        Image.fromarray((image * 255).round().astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def factory_file(folder: Path, framework: str = "torch") -> Path:
    """``folder/demo_factory.py`` with ``build()`` and ``preprocess()`` (a marker file records
    each build, so tests can check that bad settings never load the model)."""
    path = folder / "demo_factory.py"
    path.write_text(textwrap.dedent(f"""
        from pathlib import Path
        import numpy as np
        from xai_toolbox.demo import load_demo_model

        def build():
            Path(__file__).with_name("built.marker").touch()
            return load_demo_model({framework!r})

        def preprocess(image):
            image = np.asarray(image, dtype=np.float32)
            return np.ascontiguousarray(image.transpose(2, 0, 1) if {framework == "torch"} else image)
    """))
    return path


def keys_unique(path: Path | str) -> bool:
    frame = sorted_records(path)
    keys = frame[["position", "method_hash", "metric_hash"]].astype(str)
    return not keys.duplicated().any()


@pytest.fixture
def fw(pytestconfig: pytest.Config) -> str:
    """One framework under test (the first): the tests that need one run once, not per framework."""
    frameworks = pytestconfig.frameworks  # type: ignore[attr-defined]
    if not frameworks:
        pytest.skip("no framework under test")
    return frameworks[0]


# -- results --------------------------------------------------------------------------------------------
def test_results_equal_evaluate_on_the_same_images(framework: str, tmp_path: Path) -> None:
    x, labels = shapes(6, framework)
    model = load_demo_model(framework)
    run = explain_dataset(x, model, labels=labels, out=tmp_path / "s", methods=["saliency", "gradcam"],
                          metrics=[DELETION], targets="label", group_size=4)
    assert (run.computed, run.skipped, run.failed, run.status) == (6, 0, 0, "complete")
    table = xt.evaluate(model, x, labels, methods=["saliency", "gradcam"], metrics=["deletion"],
                        metric_params={"deletion": {"steps": 6}})
    frame = run.records()
    assert len(frame) == 6 * 2 * 2 and keys_unique(tmp_path / "s")
    for method in ("saliency", "gradcam"):
        np.testing.assert_allclose(run.maps(method)[:], table.maps[method], rtol=1e-5, atol=1e-6)
        rows = frame[(frame.method == method) & (frame.metric == "deletion")].sort_values("position")
        np.testing.assert_allclose(rows.score.to_numpy(float), table.results[method]["deletion"].scores, rtol=1e-5)
    explained = frame[frame.metric.isna()].sort_values(["method", "position"])
    assert explained.label.tolist() == labels.tolist() * 2
    assert explained.target.tolist() == labels.tolist() * 2


def test_seeded_methods_use_the_image_seed_whatever_the_grouping(fw: str, tmp_path: Path) -> None:
    x, labels = shapes(7, fw)
    model = load_demo_model(fw)
    kw = dict(methods=[RISE], metrics=[MUFIDELITY], labels=labels, seed=3)
    a = explain_dataset(x, model, out=tmp_path / "a", group_size=3, **kw)
    b = explain_dataset(x, model, out=tmp_path / "b", group_size=5, **kw)
    assert np.array_equal(a.maps("rise")[:], b.maps("rise")[:])
    pd.testing.assert_frame_equal(sorted_records(tmp_path / "a"), sorted_records(tmp_path / "b"))
    # Each image's map is RISE run on that image alone with the seed derived from its id.
    predictions = top1(model, x).classes
    for i in (0, 6):
        seed = derive_seed(3, str(i), "rise")
        alone = xt.method("rise", model, nb_samples=40, grid_size=4, seed=seed)(x[i : i + 1], predictions[i : i + 1])
        assert np.array_equal(a.maps("rise")[i], np.asarray(alone)[0])
    frame = a.records()
    explained = frame[frame.metric.isna()].sort_values("position")
    assert explained.seed.tolist() == [derive_seed(3, str(i), "rise") for i in range(7)]
    scored = frame[frame.metric == "mufidelity"].sort_values("position")
    assert scored.seed.tolist() == [derive_seed(3, str(i), "mufidelity") for i in range(7)]


def test_resume_skips_what_is_stored_and_scores_stored_maps(fw: str, tmp_path: Path) -> None:
    x, labels = shapes(9, fw)
    model = load_demo_model(fw)
    out = tmp_path / "s"
    first = explain_dataset(x, model, out=out, methods=["saliency"], group_size=4)
    again = explain_dataset(x, model, out=out, methods=["saliency"], group_size=4)
    assert (again.computed, again.skipped) == (0, 9)
    maps_before = first.maps("saliency")[:]
    more = explain_dataset(x, model, out=out, methods=["saliency"], metrics=[DELETION], group_size=4)
    assert (more.computed, more.skipped) == (9, 0)
    frame = more.records()
    assert (frame.metric.isna().sum(), (frame.metric == "deletion").sum()) == (9, 9)
    assert keys_unique(out)
    assert np.array_equal(more.maps("saliency")[:], maps_before)
    # The scores of stored maps are those of a run that explains and scores at once.
    fresh = explain_dataset(x, model, out=tmp_path / "fresh", methods=["saliency"], metrics=[DELETION], group_size=4)
    assert_same_store(out, tmp_path / "fresh")
    assert fresh.computed == 9
    runs = open_results(out).info["runs"]
    assert [r["status"] for r in runs] == ["complete"] * 3


def test_float16_maps_and_reexplaining_for_new_metrics(fw: str, tmp_path: Path) -> None:
    x, _ = shapes(5, fw)
    model = load_demo_model(fw)
    out = tmp_path / "s"
    run = explain_dataset(x, model, out=out, methods=["gradcam"], map_dtype="float16", group_size=5)
    assert str(run.maps("gradcam").dtype) == "float16"
    explain_dataset(x, model, out=out, methods=["gradcam"], metrics=[DELETION], map_dtype="float16", group_size=5)
    assert keys_unique(out)
    fresh = explain_dataset(x, model, out=tmp_path / "f", methods=["gradcam"], metrics=[DELETION], group_size=5)
    scores = sorted_records(out).score.to_numpy(float)
    np.testing.assert_array_equal(scores, sorted_records(tmp_path / "f").score.to_numpy(float))
    np.testing.assert_allclose(run.maps("gradcam")[:].astype(np.float32), fresh.maps("gradcam")[:], rtol=1e-3, atol=1e-3)


def test_different_parameters_keep_separate_results(fw: str, tmp_path: Path) -> None:
    x, _ = shapes(4, fw)
    model = load_demo_model(fw)
    out = tmp_path / "s"
    explain_dataset(x, model, out=out, methods=[("rise", {"nb_samples": 20, "grid_size": 4})])
    explain_dataset(x, model, out=out, methods=[("rise", {"nb_samples": 30, "grid_size": 4})])
    again = explain_dataset(x, model, out=out, methods=[("rise", {"nb_samples": 20, "grid_size": 4, "batch_size": 7})])
    assert again.computed == 0  # batch_size is not part of a result's identity
    results = open_results(out)
    keys = results.method_keys()
    assert len(keys) == 2 and all(k.startswith("rise-") for k in keys)
    a, b = (results.maps(k)[:] for k in keys)
    assert not np.allclose(a, b)
    frame = results.records()
    assert sorted(frame.groupby("method_hash").size().tolist()) == [4, 4]
    with pytest.raises(KeyError, match="2 method configurations"):
        results.maps("rise")
    explain_dataset(x, model, out=out, methods=[("rise", {"nb_samples": 20, "grid_size": 4}),
                                                ("rise", {"nb_samples": 30, "grid_size": 4})], metrics=[DELETION])
    assert sorted(results.scores().index) == sorted(keys)  # one row per configuration
    assert {c["params"]["nb_samples"] for c in results.info["components"].values()} == {20, 30}


def test_image_folder_with_corrupt_files_labels_and_report(fw: str, tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    from PIL import Image

    root = tmp_path / "data"
    write_pictures(root / "circle", 3, seed=1)
    write_pictures(root / "square", 2, seed=2)
    (root / "circle" / "garbage.png").write_bytes(b"not an image at all")
    good = (root / "square" / "img00.png").read_bytes()
    (root / "square" / "truncated.png").write_bytes(good[: len(good) // 3])
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(root / "square" / "small.png")
    factory_path = factory_file(tmp_path, fw)
    out = tmp_path / "out"
    code = main(["run", str(root), "--model", f"{factory_path}:build", "--preprocess", "model",
                 "--method", "saliency", "--metric", "deletion", "--param", "deletion.steps=6",
                 "--target", "label", "--group-size", "3", "--out", str(out), "--no-progress", "--report"])
    assert code == 0
    results = open_results(out)
    frame = results.records()
    assert results.info["class_names"] == ["circle", "square"]
    errors = frame[frame.error.notna()].drop_duplicates("image_id").set_index("image_id").error
    assert set(errors.index) == {"circle/garbage.png", "square/truncated.png", "square/small.png"}
    assert "cannot read image" in errors["circle/garbage.png"]
    assert "(32, 48, 3)" in errors["square/small.png"] and "size=" in errors["square/small.png"]
    ok = frame[frame.error.isna() & frame.metric.isna()]
    assert sorted(ok.image_id) == ["circle/img00.png", "circle/img01.png", "circle/img02.png",
                                   "square/img00.png", "square/img01.png"]
    assert ok.set_index("image_id").label.to_dict() == {
        "circle/img00.png": 0, "circle/img01.png": 0, "circle/img02.png": 0, "square/img00.png": 1, "square/img01.png": 1,
    }
    maps = results.maps("saliency")[:]
    failed_rows = sorted(frame[frame.error.notna()].position.unique())
    assert np.isnan(maps[failed_rows]).all() and np.isfinite(maps[ok.position.to_numpy(int)]).all()
    from test_cli import check_report  # balanced tags, embedded PNGs only

    check_report(out / "report.html", "Scores", "Per class", "Best and worst images", "Failures", "square (1)",
                 "garbage.png", "<img")


def test_labels_file_and_sizes(fw: str, tmp_path: Path) -> None:
    root = tmp_path / "flat"
    write_pictures(root, 4, size=80)
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label\nimg00.png,cat\nimg01.png,dog\nimg02.png,cat\nimg03.png,dog\n")
    run = explain_dataset(root, model_factory=factory(fw), out=tmp_path / "s", labels=labels, size=64,
                          preprocess=lambda im: im.transpose(2, 0, 1) if fw == "torch" else im, methods=["saliency"],
                          targets="label")
    frame = run.records().sort_values("position")
    assert frame.label.tolist() == [0, 1, 0, 1] and run.info["class_names"] == ["cat", "dog"]
    assert run.maps("saliency").shape == (4, 64, 64)


def test_generator_streams_with_flat_memory(fw: str, tmp_path: Path) -> None:
    x, _ = shapes(8, fw)
    model = load_demo_model(fw)

    def stream(n: int) -> Any:
        for i in range(n):  # each image is made on demand; the dataset never exists whole
            yield x[i % 8] + np.float32(i % 5) * 0.01, i % 5

    def peak(n: int) -> tuple[int, Any]:
        tracemalloc.start()
        try:
            run = explain_dataset(stream(n), model, out=tmp_path / f"s{n}", methods=["saliency"], group_size=8,
                                  targets="label", commit_every=0)
            return tracemalloc.get_traced_memory()[1], run
        finally:
            tracemalloc.stop()

    explain_dataset(stream(8), model, out=tmp_path / "warm", methods=["saliency"], group_size=8)
    small, _ = peak(48)
    large, run = peak(480)
    data_bytes = 480 * x[0].nbytes  # 23.6 MB of images streamed
    assert run.computed == 480 and run.maps("saliency").shape == (480, 64, 64)
    print(f"traced peak: {small / 1e6:.2f} MB for 48 images, {large / 1e6:.2f} MB for 480 ({data_bytes / 1e6:.1f} MB of images)")
    assert large < data_bytes / 4, (large, data_bytes)
    assert large < small * 1.5 + 1_000_000, (small, large)
    frame = run.records().sort_values("position")
    assert frame.label.tolist()[:6] == [0, 1, 2, 3, 4, 0]


def test_streams_resume_and_check_ids(fw: str, tmp_path: Path) -> None:
    x, labels = shapes(6, fw)
    model = load_demo_model(fw)
    rows = [{"image": x[i], "label": labels[i], "id": f"img-{i}"} for i in range(6)]
    out = tmp_path / "s"
    explain_dataset(iter(rows), model, out=out, methods=["saliency"], group_size=4)
    again = explain_dataset(iter(rows), model, out=out, methods=["saliency"], group_size=4)
    assert (again.computed, again.skipped) == (0, 6)
    assert sorted(open_results(out).records().image_id) == [f"img-{i}" for i in range(6)]
    renamed = [{**r, "id": f"other-{i}"} for i, r in enumerate(rows)]
    with pytest.raises(StoreError, match="the data changed"):
        explain_dataset(iter(renamed), model, out=out, methods=["saliency"], group_size=4)


def test_pytorch_dataset_and_dataloader_sources(torch: Any, tmp_path: Path) -> None:
    x, labels = shapes(6, "torch")
    model = load_demo_model("torch")
    tensors = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(labels))
    kw = dict(methods=["saliency"], metrics=[DELETION], group_size=4, targets="label")
    explain_dataset(x, model, labels=labels, out=tmp_path / "array", **kw)
    explain_dataset(tensors, model, out=tmp_path / "dataset", **kw)
    loader = torch.utils.data.DataLoader(tensors, batch_size=4)
    explain_dataset(loader, model, out=tmp_path / "loader", **kw)
    assert_same_store(tmp_path / "array", tmp_path / "dataset")
    assert_same_store(tmp_path / "array", tmp_path / "loader")
    with pytest.raises(xt.ParameterError, match="shuffle"):
        explain_dataset(torch.utils.data.DataLoader(tensors, shuffle=True), model, out=tmp_path / "x", methods=["saliency"])


def test_tf_data_source(tf: Any, tmp_path: Path) -> None:
    x, labels = shapes(6, "tf")
    model = load_demo_model("tf")
    kw = dict(methods=["saliency"], group_size=4, targets="label")
    explain_dataset(x, model, labels=labels, out=tmp_path / "array", **kw)
    explain_dataset(tf.data.Dataset.from_tensor_slices((x, labels)).batch(4), model, out=tmp_path / "tfdata", **kw)
    assert_same_store(tmp_path / "array", tmp_path / "tfdata")


# -- the store and the settings --------------------------------------------------------------------------
def test_bad_settings_fail_before_the_model_is_built(fw: str, tmp_path: Path) -> None:
    x, _ = shapes(2, fw)
    built = []

    def build() -> Any:
        built.append(1)
        return load_demo_model(fw)

    def run(**kw: Any) -> Any:
        return explain_dataset(x, model_factory=build, out=tmp_path / "s", **{"methods": ["saliency"], **kw})

    with pytest.raises(xt.UnknownNameError, match="available methods"):
        run(methods=["nope"])
    with pytest.raises(xt.ParameterError, match="nb_sample"):
        run(methods=[("rise", {"nb_sample": 3})])
    with pytest.raises(xt.ParameterError, match="method_params"):
        run(method_params={"rise": {"nb_samples": 3}})
    with pytest.raises(xt.ParameterError, match="targets"):
        run(targets="best")
    with pytest.raises(xt.ParameterError, match="targets='label' needs labels"):
        run(targets="label")
    with pytest.raises(xt.ParameterError, match="engine"):
        run(engine="spark")
    with pytest.raises(xt.ParameterError, match="map_dtype"):
        run(map_dtype="int8")
    with pytest.raises(xt.ParameterError, match="group_size"):
        run(group_size=0)
    with pytest.raises(xt.ExplanationShapeError, match="masks"):
        run(metrics=["pointing_game"])
    with pytest.raises(xt.ParameterError, match="listed twice"):
        run(methods=["saliency", ("saliency", {})])
    with pytest.raises(xt.ParameterError, match="size"):
        run(size=32)  # size is for image files
    with pytest.raises(xt.ParameterError, match="ray engine builds the model"):
        explain_dataset(x, load_demo_model(fw), out=tmp_path / "s", methods=["saliency"], engine="ray")
    assert built == [] and not (tmp_path / "s").exists()


def test_target_out_of_range_stops_the_run(fw: str, tmp_path: Path) -> None:
    x, _ = shapes(3, fw)
    with pytest.raises(xt.ParameterError, match="out of range"):
        explain_dataset(x, load_demo_model(fw), out=tmp_path / "s", methods=["saliency"], targets=9)


def test_store_refuses_other_data_and_a_second_writer(fw: str, tmp_path: Path) -> None:
    x, _ = shapes(4, fw)
    model = load_demo_model(fw)
    out = tmp_path / "s"
    explain_dataset(x, model, out=out, methods=["saliency"])
    with pytest.raises(StoreError, match="another run setup"):
        explain_dataset(x[:3], model, out=out, methods=["saliency"])
    with pytest.raises(StoreError, match="first_image"):  # same shape, other images
        explain_dataset(np.ascontiguousarray(x[::-1]), model, out=out, methods=["saliency"])
    with pytest.raises(StoreError, match="group_size"):
        explain_dataset(x, model, out=out, methods=["saliency"], group_size=3)
    from xai_toolbox.datasets import ResultStore

    holder = ResultStore(out)
    holder.acquire()
    try:
        with pytest.raises(StoreError, match="another run is writing"):
            explain_dataset(x, model, out=out, methods=["saliency"])
    finally:
        holder.release()


def test_records_and_maps_are_readable_by_other_tools(fw: str, tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    import zarr

    x, _ = shapes(3, fw)
    run = explain_dataset(x, load_demo_model(fw), out=tmp_path / "s", methods=["saliency"], metrics=[DELETION])
    table = pq.read_table(tmp_path / "s" / "records")
    assert table.num_rows == 6 and "metric_hash" in table.column_names
    key = run.method_keys()[0]
    array = zarr.open_array(str(tmp_path / "s" / "maps" / f"{key}.zarr"), mode="r")
    assert array.shape == (3, 64, 64) and array.attrs["method"]["name"] == "saliency"
    assert not list((tmp_path / "s" / "records").glob(".*"))  # no temporary file left


# -- the command line ------------------------------------------------------------------------------------
def test_cli_errors_are_one_line_with_status_2_before_loading(fw: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x, _ = shapes(2, fw)
    np.save(tmp_path / "x.npy", x)
    model = f"{factory_file(tmp_path, fw)}:build"
    cases = [
        (["--method", "nope"], "unknown method 'nope'"),
        (["--param", "rise.nb_samples=3"], "not among the selected"),
        (["--target", "best"], "targets must be"),
        (["--ray-init", "[1]"], "--ray-init must be a JSON object"),
        (["--size", "32"], "size"),
    ]
    for extra, fragment in cases:
        code = main(["run", str(tmp_path / "x.npy"), "--model", model, "--out", str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("xai-toolbox: error:"), (extra, err)
        assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "built.marker").exists()
    code = main(["report", str(tmp_path / "nowhere")])
    assert code == 2 and "no run.json" in capsys.readouterr().err


def _run_cli(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    # ``cwd`` outside the checkout: ``-m`` puts it first on the path, where the source tree
    # would shadow the installed package (as tox installs it)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "xai_toolbox.cli", *args], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_killed_run_resumes_to_the_store_of_an_uninterrupted_run(fw: str, tmp_path: Path) -> None:
    x, labels = shapes(16, fw)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)
    common = [str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"), "--model", f"{factory_file(tmp_path, fw)}:build",
              "--method", "saliency", "--method", "rise", "--param", "rise.nb_samples=30", "--param", "rise.grid_size=4",
              "--metric", "deletion", "--param", "deletion.steps=4", "--group-size", "2", "--commit-every", "0",
              "--no-progress"]
    whole = _run_cli(["run", *common, "--out", str(tmp_path / "whole")], tmp_path)
    killed = tmp_path / "killed"
    proc = _run_cli(["run", *common, "--out", str(killed)], tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((killed / "records").glob("part-*.parquet"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = open_results(killed)
    done = interrupted.records().position.nunique()
    assert 0 < done < 16, done
    assert interrupted.info["runs"][-1]["status"] == "running"  # killed: it never logged its end
    resumed = _run_cli(["run", *common, "--out", str(killed)], tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode() if resumed.stderr else ""
    assert whole.wait(timeout=300) == 0, whole.stderr.read().decode() if whole.stderr else ""
    assert_same_store(killed, tmp_path / "whole")
    assert keys_unique(killed) and len(sorted_records(killed)) == 16 * 2 * 2
    assert done % 2 == 0  # whole groups are committed, never part of one
    assert open_results(killed).info["runs"][-1]["computed"] == 16 - done
