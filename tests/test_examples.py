"""Each example script runs to completion (and checks its own numbers).

Every example runs in its reduced `--quick` mode; `lenet_digits.py` also runs in full mode
and must reach the accuracy it promises.
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
    run_example(script, tmp_path, "--quick")
    for name in FIGURES.get(script.name, []):
        figure = tmp_path / name
        assert figure.is_file(), f"{script.name} did not write {name}"
        assert figure.read_bytes()[:8] == PNG_SIGNATURE
        assert figure.stat().st_size > 10_000


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
