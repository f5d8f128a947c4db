"""The built wheel carries the grammar and parses programs without the source tree."""

import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_installed_wheel_parses_a_program(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("tensorc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tensorc/grammar/tensorc.lark" in names
    assert "tensorc/backends/numpy.py" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import tensorc, numpy as np\n"
            f"assert tensorc.__file__.startswith({str(site)!r}), tensorc.__file__\n"
            "p = tensorc.parse('y[n,o] = relu(x[n,c] * w[o,c] + b[o])')\n"
            "k = tensorc.compile(p)\n"
            "print(k(x=np.ones((2, 3)), w=np.ones((4, 3)), b=-np.ones(4)).sum())\n")
    # Run from an empty directory with the wheel's contents first on the path.
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(site), "PATH": ""})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "16.0"
