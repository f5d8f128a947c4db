"""The `tensorc` command line."""

import subprocess
import sys

import pytest

from tensorc.cli import main

CONV = "y[n,o,h,w] = relu(x[n,c,h+u,w+v] * k[o,c,u,v] + b[o])"
SHAPES = ["--shape", "x=2,3,8,8", "--shape", "k=4,3,3,3", "--shape", "b=4"]


def test_compile_shows_plan_by_default(capsys):
    assert main(["compile", CONV, *SHAPES]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tensorc plan: 1 statement")
    assert "batched GEMM" in out or "GEMM" in out


def test_compile_shows_several_things(capsys):
    assert main(["compile", CONV, *SHAPES, "--show", "program,ir", "--show", "source"]) == 0
    out = capsys.readouterr().out
    assert "==== program ====" in out and "==== ir ====" in out and "==== source ====" in out
    assert "def kernel(x, k, b):" in out
    assert "where n < 2, o < 4, h < 6, w < 6" in out


def test_compile_from_file_with_sizes(tmp_path, capsys):
    path = tmp_path / "layer.tc"
    path.write_text("x: f32[N, C]\nw: f32[O, C]\ny[n,o] = x[n,c] * w[o,c]\n")
    assert main(["compile", str(path), "--size", "N=5", "--size", "C=3", "--size", "O=2",
                 "--show", "ir"]) == 0
    assert "# outputs: y[5, 2]" in capsys.readouterr().out


def test_run_prints_statistics_and_time(capsys):
    assert main(["run", CONV, *SHAPES, "--repeat", "3", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "y[2, 4, 6, 6]: mean" in out and "time: median" in out and "float32" in out


def test_compile_for_the_gpu_shows_the_cuda_c_without_a_device(capsys):
    pool = "p[n,c,h,w] = max[u,v](x[n,c,2*h+u,2*w+v])   where u < 2, v < 2"
    assert main(["compile", pool, "--shape", "x=2,3,8,8", "--backend", "cupy",
                 "--show", "plan,cuda"]) == 0
    out = capsys.readouterr().out
    assert "strategy: CUDA loop kernel compute_p_1" in out
    assert 'extern "C" __global__ void compute_p_1(' in out
    assert main(["compile", pool, "--shape", "x=2,3,8,8", "--show", "cuda"]) == 0
    assert "compile with --backend cupy" in capsys.readouterr().out


def test_run_on_the_gpu_without_one_is_an_error(capsys):
    from conftest import gpu_missing
    if gpu_missing() is None:
        pytest.skip("a GPU is present")
    assert main(["run", CONV, *SHAPES, "--backend", "cupy"]) == 2
    assert "needs" in capsys.readouterr().err  # CuPy, or a CUDA device


def test_errors_print_a_caret_and_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.tc"
    path.write_text("y[i] = x[i+j]\n")
    assert main(["compile", str(path), "--shape", "x=4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tensorc: error: {path}:1:12: index 'j' has no range")
    assert err.rstrip().endswith("^")


def test_bad_shape_argument():
    with pytest.raises(SystemExit, match="--shape takes NAME=D1,D2"):
        main(["compile", CONV, "--shape", "x"])


def test_console_script_is_installed():
    run = subprocess.run([sys.executable, "-m", "tensorc.cli", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0 and "compile" in run.stdout
