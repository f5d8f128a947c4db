"""Each example script runs to completion (and checks its own numbers).

Every example runs in its reduced `--quick` mode; `lenet_digits.py` also runs in full mode
and must reach the accuracy it promises. `volume_filter_dask.py` starts a LocalCluster of 2
worker processes (about 10 s on 2 cores when alone).
"""

import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parent.parent / "examples").glob("*.py"))

# The figures each example writes by default, in the directory it runs in.
FIGURES = {"lenet_digits.py": ["lenet_digits.png"], "filters.py": ["filters.png"]}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# What an example's --quick output must say, beyond the checks the example makes itself:
# the Dask example still filters a volume larger than a worker's memory limit.
OUTPUT = {"volume_filter_dask.py": ["restarted: none", "OK: the slabs match NumPy"]}
ABSENT = {"volume_filter_dask.py": ["would fit within one worker's memory limit"]}


def run_example(script: pathlib.Path, cwd: pathlib.Path, *arguments: str,
                timeout: float = 300) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, str(script), *arguments], cwd=cwd, check=False,
                         capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip()
    return run


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script, tmp_path):
    run = run_example(script, tmp_path, "--quick")
    for text in OUTPUT.get(script.name, []):
        assert text in run.stdout, f"{script.name} did not print {text!r}"
    for text in ABSENT.get(script.name, []):
        assert text not in run.stdout, f"{script.name} printed {text!r}"
    for name in FIGURES.get(script.name, []):
        figure = tmp_path / name
        assert figure.is_file(), f"{script.name} did not write {name}"
        assert figure.read_bytes()[:8] == PNG_SIGNATURE
        assert figure.stat().st_size > 10_000


def test_output_checks_name_existing_examples():
    assert set(OUTPUT) | set(ABSENT) <= {p.name for p in EXAMPLES}


def test_every_example_with_a_figure_is_listed():
    # A figure an example writes must be checked above: keep FIGURES in step with examples/.
    names = {p.name for p in EXAMPLES}
    assert set(FIGURES) <= names
    for script in EXAMPLES:
        if "savefig" in script.read_text():
            assert script.name in FIGURES, f"add the figure of {script.name} to FIGURES"


@pytest.mark.slow
def test_lenet_digits_full_run_reaches_97_percent(tmp_path):
    script = next(p for p in EXAMPLES if p.name == "lenet_digits.py")
    run = run_example(script, tmp_path, "--out", "curves.png")
    last_line = run.stdout.strip().splitlines()[-1]
    match = re.match(r"test accuracy: (\d+\.\d+)%", last_line)
    assert match, f"unexpected last line: {last_line!r}"
    assert float(match.group(1)) >= 97.0, last_line
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_SIGNATURE
