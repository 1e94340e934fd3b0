"""``codetr bench`` and codetr.benchmark: statistics against hand-computed values, a run over the
tiny export's AOTInductor package and ONNX file (JSON and plot checked), eager with end-to-end
timing over image files, and the errors a user can make."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from codetr.benchmark.measure import LatencyStats, PeakMemory, time_calls
from codetr.benchmark.profile import KernelTime, kernel_group, summarise_kernels
from codetr.benchmark.targets import CudaGraphMode, parse_targets
from codetr.cli import main
from codetr.contract.artifacts import Artifact

TINY = Path(__file__).resolve().parents[1] / "codetr" / "configs" / "tiny.toml"


def test_latency_statistics_are_numpys_linear_percentiles() -> None:
    # Hand-computed for 1..10 ms: rank p/100 * (n - 1) interpolated linearly, e.g. p90 at rank
    # 8.1 -> 9 + 0.1 * (10 - 9) = 9.1; p99 at rank 8.91 -> 9.91; median at 4.5 -> 5.5.
    stats = LatencyStats.from_samples([float(value) for value in (7, 1, 10, 3, 5, 2, 9, 4, 8, 6)])
    assert stats == pytest.approx(LatencyStats(min=1.0, median=5.5, p90=9.1, p99=9.91, max=10.0))
    with pytest.raises(ValueError, match="no latency samples"):
        LatencyStats.from_samples([])


def test_cpu_timing_measures_each_call_and_the_wall_clock() -> None:
    calls = []

    def sleep() -> None:
        calls.append(None)
        time.sleep(0.02)

    timing = time_calls(sleep, torch.device("cpu"), warmup=2, iterations=3)
    assert len(calls) == 5 and timing.calls == 3
    assert 20.0 <= timing.latency_ms.min <= timing.latency_ms.max < 1000.0
    assert timing.wall_seconds >= 3 * 0.02


def test_cpu_peak_memory_sees_a_large_allocation() -> None:
    memory = PeakMemory(torch.device("cpu"))
    memory.reset()
    before = memory.read()
    if before is None:
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, touched
    after = memory.read()
    del block
    assert after - before >= 60 / 1024


def test_kernel_profile_sums_per_call_by_kernel_and_group() -> None:
    # 10 model calls; hand-computed per call: MSDA 300 us / 10 = 0.030 ms in 1 launch, the GEMM
    # 0.020 ms in 2, the Triton add recorded twice under one name (30 + 20 us) 0.005 ms in 2.
    records = [
        ("void codetr::msda::forward_kernel<__half, float, 8>(codetr::msda::Problem)", 300.0, 10),
        ("sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x64", 200.0, 20),
        ("triton_per_fused_native_layer_norm_3", 50.0, 10),
        ("triton_poi_fused_add_1", 30.0, 10),
        ("triton_poi_fused_add_1", 20.0, 10),
        ("a_kernel_of_no_known_kind", 10.0, 10),
    ]
    profile = summarise_kernels(records, calls=10)
    assert profile.calls == 10 and profile.total_ms_per_call == pytest.approx(0.061)
    groups = {group.name: (group.ms_per_call, group.launches_per_call) for group in profile.groups}
    assert groups == pytest.approx({
        "MSDA (codetr::msda)": (0.030, 1), "GEMM": (0.020, 2), "normalization": (0.005, 1),
        "fused elementwise / reduction (Triton)": (0.005, 2), "other": (0.001, 1),
    })
    assert [group.name for group in profile.groups[:2]] == ["MSDA (codetr::msda)", "GEMM"]
    assert [kernel.name for kernel in profile.kernels[:2]] == [records[0][0], records[1][0]]
    assert KernelTime("triton_poi_fused_add_1", pytest.approx(0.005), 2) in profile.kernels
    assert len(profile.kernels) == 5
    assert kernel_group("triton_poi_fused__softmax_add_msda_view_3") == "softmax"  # feeds MSDA, is not MSDA
    assert kernel_group("triton_poi_fused_cat_lift_fresh_copy_masked_fill_mul_view_76") == "fused elementwise / reduction (Triton)"
    assert kernel_group("Memset (Device)") == "copy / fill"
    assert kernel_group("cudnn::detail::implicit_convolve_sgemm") == "convolution"
    assert kernel_group("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7") == "attention (SDPA)"
    assert kernel_group("at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>") == \
        "elementwise / reduction (ATen)"
    with pytest.raises(ValueError, match="calls must be at least 1"):
        summarise_kernels(records, calls=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a CUDA GPU")
def test_profile_without_a_gpu_is_refused(capsys) -> None:
    assert main(["bench", "eager", "--config", str(TINY), "--profile"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --profile records CUDA kernels") and "Traceback" not in error


def test_a_truncated_package_is_named_not_a_traceback(tiny_aoti_export: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "metadata.json").write_bytes((tiny_aoti_export / "metadata.json").read_bytes())
    package = tmp_path / "model_aoti.pt2"
    package.write_bytes((tiny_aoti_export / "model_aoti.pt2").read_bytes()[:10_000])
    assert main(["bench", str(package), "--iterations", "1", "--warmup", "0"]) == 2
    error = capsys.readouterr().err
    assert error == f"error: {package}: not an AOTInductor package (not a zip archive); was it fully written?\n"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_profile_of_the_tiny_model_on_the_gpu(tmp_path: Path, capsys) -> None:
    document = tmp_path / "bench.json"
    assert main(["bench", "eager:float16", "--config", str(TINY), "--profile", "--iterations", "3", "--warmup", "1",
                 "--json", str(document)]) == 0
    profile = json.loads(document.read_text())["results"][0]["profile"]
    groups = {group["name"]: group["ms_per_call"] for group in profile["groups"]}
    assert groups["MSDA (codetr::msda)"] > 0
    assert sum(groups.values()) == pytest.approx(profile["total_ms_per_call"])
    assert "GPU kernel time of eager float16" in capsys.readouterr().out


def test_cuda_graph_both_measures_cuda_packages_twice(tiny_aoti_export: Path, tmp_path: Path) -> None:
    package, onnx_file = str(tiny_aoti_export / "model_aoti.pt2"), str(tiny_aoti_export / "model.onnx")
    # the same package, its Inductor metadata saying it was compiled for CUDA
    cuda_package = tmp_path / "cuda_aoti.pt2"
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(cuda_package, "w") as copy:
        for name in source.namelist():
            data = source.read(name)
            copy.writestr(name, data.replace(b'"cpu"', b'"cuda"') if name.endswith("_metadata.json") else data)
    names = [str(cuda_package), package, onnx_file, "eager", "eager:float16"]
    targets = parse_targets(names, "float32", CudaGraphMode.BOTH)
    assert [(target.name, target.artifact, target.cuda_graph, target.dtype) for target in targets] == [
        (str(cuda_package), Artifact.AOTI, False, None),
        (str(cuda_package), Artifact.AOTI, True, None),
        (package, Artifact.AOTI, False, None),  # a CPU package has no CUDA graph to replay
        (onnx_file, Artifact.ONNX, False, None),
        ("eager", None, False, "float32"),
        ("eager:float16", None, False, "float16"),
    ]
    assert targets[1].label == f"{cuda_package} + CUDA graph" and targets[5].label == "eager float16"


def test_bench_runs_the_package_and_the_onnx_file(tiny_aoti_export: Path, tmp_path: Path, capsys) -> None:
    json_path, plot_path = tmp_path / "bench.json", tmp_path / "bench.png"
    artifacts = [str(tiny_aoti_export / "model_aoti.pt2"), str(tiny_aoti_export / "model.onnx")]
    status = main(["bench", *artifacts, "--batch-sizes", "1,2", "--iterations", "4", "--warmup", "1",
                   "--json", str(json_path), "--plot", str(plot_path)])
    assert status == 0
    document = json.loads(json_path.read_text())
    assert {"device", "versions", "date", "iterations", "warmup"} <= set(document["header"])
    assert document["header"]["versions"]["torch"] == torch.__version__
    results = document["results"]
    assert [(result["artifact"], result["batch_size"]) for result in results] == [(name, 1) for name in artifacts]
    for result in results:
        latency = result["latency_ms"]
        assert 0 < latency["min"] <= latency["median"] <= latency["p90"] <= latency["p99"] <= latency["max"]
        # 4 calls of 1 image each, one after the other: at most 1000 / min latency images per second
        assert 0 < result["images_per_second"] <= 1000 / latency["min"]
        assert result["input_shape"] == [1, 3, 64, 96] and result["dtype"] == "float32"
        assert result["device"] == "cpu" and result["end_to_end"] is None
    # both exports have a static batch of 1: batch 2 is skipped with the reason, not an error
    assert [(entry["artifact"], entry["batch_size"], entry["failed"]) for entry in document["skipped"]] == [
        (name, 2, False) for name in artifacts
    ]
    assert all("exported for batch size 1 (static)" in entry["reason"] for entry in document["skipped"])
    with Image.open(plot_path) as image:
        assert image.format == "PNG" and image.width > 600
    table = capsys.readouterr().out
    assert f"| {artifacts[0]} | float32 | 1 | 64x96 |" in table
    assert f"skipped {artifacts[1]}, batch 2: exported for batch size 1 (static)" in table


def test_bench_eager_with_images_times_end_to_end(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    generator = np.random.default_rng(0)
    for index, size in enumerate([(50, 70), (80, 60), (64, 64)]):
        Image.fromarray(generator.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    json_path = tmp_path / "bench.json"
    status = main(["bench", "eager", "--config", str(TINY), "--height", "64", "--width", "96", "--device", "cpu",
                   "--batch-sizes", "1,2", "--iterations", "2", "--warmup", "1", "--images", str(folder),
                   "--workers", "1", "--json", str(json_path)])
    assert status == 0
    results = json.loads(json_path.read_text())["results"]
    assert [result["batch_size"] for result in results] == [1, 2]
    for result in results:
        end_to_end = result["end_to_end"]
        assert end_to_end["images"] == 3 and end_to_end["workers"] == 1
        assert end_to_end["images_per_second"] == pytest.approx(1000 / end_to_end["ms_per_image"])
        assert result["label"] == "eager float32" and result["input_shape"] == [result["batch_size"], 3, 64, 96]


def test_bench_names_and_skips_unreadable_images(tmp_path: Path, capsys) -> None:
    """Like infer and eval: the end-to-end time covers the readable images; the others are named."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((50, 70, 3), 90, dtype=np.uint8)).save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    json_path = tmp_path / "bench.json"
    status = main(["bench", "eager", "--config", str(TINY), "--height", "64", "--width", "96", "--device", "cpu",
                   "--iterations", "1", "--warmup", "0", "--images", str(folder), "--workers", "0", "--json", str(json_path)])
    assert status == 0
    (result,) = json.loads(json_path.read_text())["results"]
    assert result["end_to_end"]["images"] == 1 and result["end_to_end"]["skipped"] == [str(folder / "b.jpg")]
    assert f"skipped 1 unreadable image(s) in the end-to-end time: {folder / 'b.jpg'}" in capsys.readouterr().err


def test_the_json_never_replaces_an_artifacts_metadata(tmp_path: Path, capsys) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not read: the output check comes first")
    (tmp_path / "metadata.json").write_text("{}")
    assert main(["bench", str(tmp_path / "model.onnx"), "--json", str(tmp_path / "metadata.json")]) == 2
    assert f"--json {tmp_path / 'metadata.json'} is the input" in capsys.readouterr().err
    assert (tmp_path / "metadata.json").read_text() == "{}"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["eager"], "'eager' needs --config"),
        (["eager:float8", "--config", str(TINY)], "eager dtype must be one of"),
        (["missing/model_aoti.pt2"], "no model file at missing/model_aoti.pt2"),
        (["eager", "--config", str(TINY), "--batch-sizes", "1,x"], "--batch-sizes must be comma-separated integers"),
        (["eager", "--config", str(TINY), "--batch-sizes", "0"], "--batch-sizes must be positive"),
        (["eager", "--config", str(TINY), "--iterations", "0"], "iterations must be at least 1"),
        (["eager", "--config", str(TINY), "--json", "no/such/folder/b.json"],
         "--json no/such/folder/b.json: folder no/such/folder does not exist"),
        # Checked before any timing (the run would otherwise end in "[Errno 21] Is a directory").
        (["eager", "--config", str(TINY), "--height", "64", "--width", "64", "--iterations", "1", "--warmup", "0",
          "--json", "."], "--json . is a folder; give a file name, e.g. --json results"),
        (["eager", "--config", str(TINY), "--height", "64", "--width", "64", "--iterations", "1", "--warmup", "0",
          "--plot", str(TINY.parent)], f"--plot {TINY.parent} is a folder; give a file name"),
        (["eager", "--config", str(TINY), "--json", str(TINY)], f"--json {TINY} is the input {TINY}; writing it would"),
        (["eager", "--config", str(TINY), "--plot", "bench.txt"], "--plot bench.txt: matplotlib writes"),
        (["eager", "--config", str(TINY)], "needs --height and --width: the config pads to the largest image"),
        (["eager", "--config", "missing.toml"], "config missing.toml: no such file, and not a shipped config (shipped: "),
    ],
)
def test_mistakes_are_reported_without_a_traceback(arguments: list[str], message: str, capsys) -> None:
    assert main(["bench", *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and "Traceback" not in error


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu0", "argument --device: 'gpu0' is not a device (e.g. cpu, cuda, cuda:1)"),
        pytest.param("cuda", "argument --device: cuda: no CUDA GPU is visible; use --device cpu",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")),
    ],
)
def test_device_is_checked_like_every_command(device: str, message: str, capsys) -> None:
    """The one --device check of codetr.cli.common (argparse's usage error, status 2), as infer's."""
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "eager", "--config", str(TINY), "--device", device])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_help_shows_the_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    help_text = capsys.readouterr().out
    assert "--iterations ITERATIONS" in help_text and "(default: 50)" in help_text


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--dtype", "float16"], "--dtype sets the precision of plain 'eager', which is not among the ARTIFACTs"),
        (["eager:float16", "--config", str(TINY), "--dtype", "float16"], "--dtype sets the precision of plain 'eager'"),
        (["--config", str(TINY)], "--config applies to 'eager' only"),
        (["--checkpoint", __file__], "--checkpoint applies to 'eager' only"),
        (["--allow-tf32"], "--allow-tf32 applies to 'eager' only"),
    ],
)
def test_options_of_the_eager_model_need_an_eager_target(tmp_path: Path, arguments: list[str], message: str, capsys) -> None:
    """They would be silently ignored: the artifacts' weights and precision are fixed by their export."""
    (tmp_path / "model.onnx").touch()
    assert main(["bench", str(tmp_path / "model.onnx"), *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error
