"""The README's examples run, print what it shows, and CI runs its test command."""

import contextlib
import io
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks():
    """(python code, expected output or None) for each ```python block, in order."""
    fences = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)
    pairs = []
    for i, (language, body) in enumerate(fences):
        if language == "python":
            following = fences[i + 1] if i + 1 < len(fences) else None
            expected = following[1] if following and following[0] == "text" else None
            pairs.append((body, expected))
    return pairs


def test_readme_python_examples_run_and_print_what_they_show():
    namespace: dict = {}
    blocks = _blocks()
    assert len(blocks) >= 4
    for code, expected in blocks:
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
        if expected is not None:
            assert output.getvalue() == expected, f"README block printed:\n{output.getvalue()}"


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    test_command = next(c.strip() for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()
    assert "torch==2.13.0" in test_command


@pytest.mark.parametrize("mode", ["zero", "circular", "reflect", "symmetric", "replicate"])
def test_readme_boundary_table_matches_numpy_pad(mode):
    import numpy as np
    import tensorc as tc
    numpy_mode = {"zero": "constant", "circular": "wrap", "reflect": "reflect",
                  "symmetric": "symmetric", "replicate": "edge"}[mode]
    a = np.array([1.0, 2.0, 3.0, 4.0])
    got = tc.compile(f"y[i] = a[i-2]   where i < 8, a: {mode}")(a=a)
    np.testing.assert_array_equal(got, np.pad(a, 2, mode=numpy_mode))
