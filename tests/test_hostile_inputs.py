"""No code injection: hostile programs get a TensorcError or a correct result, never run text.

The NumPy backend's safety rule: user text reaches the generated module only as
identifiers the grammar accepted (renamed by `python_name`) and as parsed numbers. This
module feeds tensorc 90 hostile programs (HOSTILE below): dunder, keyword, builtin and
generated-module names used as tensors and indices, attribute syntax, quotes,
backslashes, newlines and ';' in names and where clauses, comments and f-string braces
carrying payloads, null bytes, Unicode look-alikes (Cyrillic, Greek, fullwidth,
ligatures, mathematical letters, combining marks, zero-width and bidi controls), 10,000
character names, deep nesting and long sums, huge and odd numeric literals, and huge
sizes in where clauses. Each one must either raise a `tensorc.TensorcError` or compile
to a kernel whose result equals a NumPy oracle written here. Payloads try to create a
sentinel file; it must never appear.

Every kernel that compiles has its source inspected with `ast` (`check_generated_source`):
every identifier is the module's own or derived from a user identifier through
`python_name`, a name called as a function is never one a user name shadows, string
constants are only buffer names, output names and pad modes, and module-level code is
only the fixed helpers. The same checks run on hand-built syntax trees and on the
options of `tc.compile` (dtype, sizes), which bypass the grammar.
"""

from __future__ import annotations

import ast
import os
import re
import tempfile
import unicodedata

import numpy as np
import pytest

import tensorc as tc
from tensorc import syntax as S
from tensorc.backends.numpy import NUMPY_PAD_MODES, python_name

# ---- the sentinel: payloads try to create this file ----------------------------------------

# A fixed name: the payloads appear in test ids, which must be the same in every xdist worker.
SENTINEL = os.path.join(tempfile.gettempdir(), "tensorc-pwned-sentinel")
OPEN = f"open('{SENTINEL}', 'w')"
SYSTEM = f"__import__('os').system('touch {SENTINEL}')"


@pytest.fixture(autouse=True)
def _sentinel_never_appears():
    assert not os.path.exists(SENTINEL)
    yield
    assert not os.path.exists(SENTINEL), f"hostile text was executed: {SENTINEL} exists"


# ---- the generated-source checker ----------------------------------------------------------

# Names the generated module defines or imports for itself, and the builtins its kernel calls.
MODULE_NAMES = {"np", "as_strided", "DTYPE", "kernel", "math", "threading", "_erf", "_scratch",
                "_SCRATCH", "_fold_margins"}
CALLED_BUILTINS = {"range", "list", "min"}
FLOAT_DTYPES = {"float16", "float32", "float64"}
PAD_MODES = set(NUMPY_PAD_MODES.values())
# Temporaries the renderer invents, and suffixes it appends to a (renamed) user name.
_TEMPORARY = re.compile(r"(t[0-9]+|contribution|cols)\Z")
_SUFFIX = re.compile(r"_(pad|last|strides|win|cols|mat|gemm|sum|padded|start|stop|[0-9]+)\Z")
_ALLOWED_IMPORTS = {ast.dump(ast.parse(line).body[0]) for line in (
    "import numpy as np", "import threading",
    "from numpy.lib.stride_tricks import as_strided")}
_ATTRIBUTES = {a for a in set(dir(np)) | set(dir(np.ndarray)) | set(dir(np.ufunc))
               if not a.startswith("__")}

_BENIGN_FOR_HELPERS = [
    # zero boundary: the per-thread scratch helper
    ("z[n,o,h,w] = x[n,c,h+u-1,w+v-1] * k[o,c,u,v]   where h < 6, w < 6, x: zero",
     {"x": (2, 3, 6, 6), "k": (4, 3, 3, 3)}),
    # gelu: the erf import block
    ("y[i] = gelu(x[i])", {"x": (5,)}),
    # '+=' with a folding boundary: the _fold_margins helper
    ("dx: [N]\ndx[h+u-1] += dy[h] * k[u]   where h < 5, dx: reflect",
     {"N": 5, "dy": (5,), "k": (3,)}),
]
_reference_helpers: dict[str, str] = {}


def reference_helpers() -> dict[str, str]:
    """ast.dump of each fixed module-level helper, taken from kernels of benign programs."""
    if not _reference_helpers:
        for text, shapes in _BENIGN_FOR_HELPERS:
            for node in ast.parse(tc.compile(text, **shapes).source).body:
                if isinstance(node, ast.FunctionDef) and node.name != "kernel":
                    _reference_helpers[node.name] = ast.dump(node)
                elif isinstance(node, ast.Try):
                    _reference_helpers["try"] = ast.dump(node)
        assert {"_scratch", "_fold_margins", "try"} <= set(_reference_helpers)
    return _reference_helpers


def _derived(name: str, user: set[str]) -> bool:
    """Whether `name` is a renamed user identifier or a temporary built from one."""
    renamed = {python_name(u) for u in user}
    while True:
        if name in renamed or name in user or _TEMPORARY.match(name):
            return True
        stripped = _SUFFIX.sub("", name)
        if stripped == name:
            return False
        name = stripped


def check_generated_source(source: str, user_names: set[str], inputs: tuple[str, ...]) -> None:
    """Assert that generated NumPy source carries user text only as validated identifiers.

    `user_names`: every tensor and index name of the program; `inputs`: the kernel's
    arguments in order.
    """
    tree = ast.parse(source)
    renamed = {python_name(u) for u in user_names}
    for name in renamed:
        assert name.isascii() and name.isidentifier(), name
        assert unicodedata.normalize("NFKC", name) == name, name
    assert not renamed & (MODULE_NAMES | CALLED_BUILTINS), \
        f"a user name shadows a name the module needs: {sorted(renamed & (MODULE_NAMES | CALLED_BUILTINS))}"
    helpers = reference_helpers()
    kernels = []
    for position, node in enumerate(tree.body):
        if position == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            assert isinstance(node.value.value, str)  # the module docstring
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            assert ast.dump(node) in _ALLOWED_IMPORTS, ast.unparse(node)
        elif isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "DTYPE":
            assert isinstance(node.value, ast.Attribute) and ast.unparse(node.value.value) == "np" \
                and node.value.attr in FLOAT_DTYPES, f"DTYPE is {ast.unparse(node.value)}"
        elif isinstance(node, ast.Assign):
            assert ast.unparse(node) == "_SCRATCH = threading.local()", ast.unparse(node)
        elif isinstance(node, ast.Try):
            assert ast.dump(node) == helpers["try"], ast.unparse(node)
        elif isinstance(node, ast.FunctionDef) and node.name == "kernel":
            kernels.append(node)
        elif isinstance(node, ast.FunctionDef):
            assert helpers.get(node.name) == ast.dump(node), f"unexpected helper {node.name}"
        else:
            raise AssertionError(f"unexpected module-level code: {ast.unparse(node)[:200]}")
    assert len(kernels) == 1
    kernel = kernels[0]
    assert [a.arg for a in kernel.args.args] == [python_name(n) for n in inputs]
    assert not (kernel.args.vararg or kernel.args.kwarg or kernel.args.kwonlyargs
                or kernel.decorator_list)
    local = {a.arg for a in kernel.args.args}
    for node in ast.walk(kernel):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            local.add(node.id)
    for node in ast.walk(kernel):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef,
                             ast.Import, ast.ImportFrom, ast.Global, ast.Nonlocal)) \
                and node is not kernel:
            raise AssertionError(f"unexpected construct in kernel: {ast.unparse(node)[:200]}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            called = node.func.id
            assert called in MODULE_NAMES | CALLED_BUILTINS, f"kernel calls {called!r}"
            assert called not in local, f"{called!r} is called but is a local (a user name)"
        if isinstance(node, ast.Name):
            assert node.id in MODULE_NAMES | CALLED_BUILTINS or _derived(node.id, user_names), \
                f"identifier {node.id!r} is not derived from a user name"
        if isinstance(node, ast.Attribute):
            assert node.attr in _ATTRIBUTES, f"attribute {node.attr!r}"
        if isinstance(node, ast.keyword) and node.arg is not None:
            assert node.arg in {"out", "axis", "dtype", "shape", "strides", "writeable", "mode",
                                "zeroed", "order"}, f"keyword {node.arg!r}"
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, str):
                assert value in PAD_MODES or value == "K" or _derived(value, user_names), \
                    f"string constant {value!r} in the kernel"
            else:
                assert value is None or type(value) in (int, float, bool), repr(value)


def check_kernel_source(kern: tc.Kernel) -> None:
    ir = kern.ir
    names = set(ir.tensors) | {i for st in ir.statements for i in st.ranges}
    check_generated_source(kern.source, names, ir.inputs)


# ---- the hostile programs -------------------------------------------------------------------

MUST = "must"      # the language allows it: it must compile and match the oracle
EITHER = "either"  # a TensorcError or the oracle's value
ERROR = "error"    # there is no sane value: it must raise a TensorcError



def case(case_id, text, shapes=None, oracle=None, expect=EITHER, compile_kwargs=None, bug=None):
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    if oracle is None:
        expect = ERROR
    return pytest.param(text, shapes or {}, oracle, expect, compile_kwargs or {},
                        id=case_id, marks=marks)


def _reflect(position, size):
    return -position if position < 0 else 2 * (size - 1) - position if position >= size \
        else position


def _fold_oracle(a):
    dy, k = a["dy"], a["_fold_margins"]
    out = np.zeros(5)
    for h in range(5):
        for u in range(3):
            out[_reflect(h + u - 1, 5)] += dy[h] * k[u]
    return out


def _strided_accumulate(a):
    out = np.zeros(9)
    for h in range(4):
        for r in range(3):
            out[2 * h + r] += a["dy"][h] * a["k"][r]
    return out


def _gelu(x):
    from scipy.special import erf
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _tower(x, height):
    result = np.ones_like(x)
    for _ in range(height):
        result = x ** result
    return result


LONG = "a" * 10_000
LONG_INDEX = "i" * 10_000
HUGE = "1" + "0" * 400
DIGITS_5000 = "9" * 5000
V4 = (4,)

HOSTILE = [
    # ---- Python names as tensors and indices ----
    case("dunder-import-target", "__import__[i] = x[i] * 2", {"x": V4},
         lambda a: 2 * a["x"], MUST),
    case("dunder-builtins", "y[i] = __builtins__[i] + __name__[i] * __file__[i]",
         {"__builtins__": V4, "__name__": V4, "__file__": V4},
         lambda a: a["__builtins__"] + a["__name__"] * a["__file__"], MUST),
    case("builtins-exec-eval-open", "y[i] = exec[i] * eval[i] - open[i] + compile[i]",
         {"exec": V4, "eval": V4, "open": V4, "compile": V4},
         lambda a: a["exec"] * a["eval"] - a["open"] + a["compile"], MUST),
    case("builtins-introspection", "print[i] = input[i] * globals[i] + locals[i] - getattr[i]",
         {"input": V4, "globals": V4, "locals": V4, "getattr": V4},
         lambda a: a["input"] * a["globals"] + a["locals"] - a["getattr"], MUST),
    case("os-system-subprocess", "y[i] = os[i] * system[i] + subprocess[i] - sys[i]",
         {"os": V4, "system": V4, "subprocess": V4, "sys": V4},
         lambda a: a["os"] * a["system"] + a["subprocess"] - a["sys"], MUST),
    case("keyword-tensors", "import[i] = from[i] + as[i] * def[i]",
         {"from": V4, "as": V4, "def": V4}, lambda a: a["from"] + a["as"] * a["def"], MUST),
    case("keyword-indices", "y[for,while] = x[for,while] * 2", {"x": (2, 3)},
         lambda a: 2 * a["x"], MUST),
    case("keyword-constants", "y[i] = None[i] + True[i] * False[i]",
         {"None": V4, "True": V4, "False": V4}, lambda a: a["None"] + a["True"] * a["False"], MUST),
    case("soft-keywords", "match[i] = case[i] + type[i] * _[i]",
         {"case": V4, "type": V4, "_": V4}, lambda a: a["case"] + a["type"] * a["_"], MUST),
    case("module-names", "y[i] = np[i] * DTYPE[i] + kernel[i] - as_strided[i] + math[i] * threading[i]",
         {n: V4 for n in ("np", "DTYPE", "kernel", "as_strided", "math", "threading")},
         lambda a: a["np"] * a["DTYPE"] + a["kernel"] - a["as_strided"] + a["math"] * a["threading"],
         MUST),
    case("module-private-names", "y[i] = _erf[i] + _scratch[i] * _SCRATCH[i] - gelu(x[i])",
         {n: V4 for n in ("_erf", "_scratch", "_SCRATCH", "x")},
         lambda a: a["_erf"] + a["_scratch"] * a["_SCRATCH"] - _gelu(a["x"]), MUST),
    case("renamed-name-collisions", "y[i] = np[i] + np_[i] * np__[i] - kernel_[i] + DTYPE__[i]",
         {n: V4 for n in ("np", "np_", "np__", "kernel_", "DTYPE__")},
         lambda a: a["np"] + a["np_"] * a["np__"] - a["kernel_"] + a["DTYPE__"], MUST),
    case("renderer-temporary-names", "y[i] = t1[i] + t2[i] * contribution[i] - cols[i]",
         {n: V4 for n in ("t1", "t2", "contribution", "cols")},
         lambda a: a["t1"] + a["t2"] * a["contribution"] - a["cols"], MUST),
    case("window-temporary-names",
         "y[i] = x[i+u-1] * k[u] + x_pad[i] + x_win[i] - x_strides[i] + x_pad_2[i]   "
         "where i < 4, x: zero",
         {"x": V4, "k": (3,), "x_pad": V4, "x_win": V4, "x_strides": V4, "x_pad_2": V4},
         lambda a: np.convolve(np.pad(a["x"], 1), a["k"][::-1], "valid") + a["x_pad"]
         + a["x_win"] - a["x_strides"] + a["x_pad_2"], MUST),
    case("keyword-window-index", "p[i] = max[lambda](x[2*i+lambda])   where lambda < 2",
         {"x": (6,)}, lambda a: a["x"].reshape(3, 2).max(1), MUST),
    case("range-tensor-in-window-loop", "y[i] = max[u](range[i+u])   where u < 3",
         {"range": (6,)}, lambda a: np.lib.stride_tricks.sliding_window_view(a["range"], 3).max(1),
         MUST),
    case("range-index-in-window-loop", "y[i] = max[range](x[i+range])   where range < 3",
         {"x": (6,)}, lambda a: np.lib.stride_tricks.sliding_window_view(a["x"], 3).max(1),
         MUST),
    case("list-tensor-in-2d-window-loop", "y[i,j] = max[u,v](list[i+u,j+v])   where u < 2, v < 2",
         {"list": (4, 4)},
         lambda a: np.lib.stride_tricks.sliding_window_view(a["list"], (2, 2)).max((2, 3)),
         MUST),
    case("range-index-in-accumulation", "dx: [N]\ndx[2*h+range] += dy[h] * k[range]",
         {"dy": V4, "k": (3,)}, _strided_accumulate, MUST, {"N": 9}),
    case("fold-margins-tensor-in-folding-accumulation",
         "dx: [N]\ndx[h+u-1] += dy[h] * _fold_margins[u]   where h < 5, dx: reflect",
         {"dy": (5,), "_fold_margins": (3,)}, _fold_oracle, MUST, {"N": 5}),
    # ---- Python syntax where a name goes ----
    case("attribute-access", "y[i] = os.system[i]", {"os": V4}),
    case("attribute-call-payload", f"y[i] = x[i] * {SYSTEM}", {"x": V4}),
    case("open-call-payload", f"y[i] = {OPEN}"),
    case("quote-in-name", "y[i] = x'[i]", {"x": V4}),
    case("string-literal", 'y[i] = x[i] * "1"', {"x": V4}),
    case("triple-quoted-payload", f'y[i] = x[i] + """{SYSTEM}"""', {"x": V4}),
    case("backslash-in-name", "y[i] = x\\[i]", {"x": V4}),
    case("line-continuation", "y[i] = x[i] \\\n    + 1", {"x": V4}, lambda a: a["x"] + 1, MUST),
    case("newline-in-name-payload", "y[i] = x\nimport os[i]", {"x": V4}),
    case("newline-in-where-payload", f"y[i] = x[i]   where i < 2\n{SYSTEM}", {"x": V4}),
    case("semicolon-statement-after-where", "y[i] = x[i]   where i < 2; import[i] = x[i]",
         {"x": V4}, lambda a: {"y": a["x"][:2], "import": a["x"]}, MUST),
    case("semicolon-payload", f"y[i] = x[i]; {OPEN}", {"x": V4}),
    case("comment-payload", f"y[i] = x[i] * 2  # '''); {OPEN}; ('''", {"x": V4},
         lambda a: 2 * a["x"], MUST),
    case("comment-triple-quotes-payload",
         f'y[i] = x[i] # """ {SYSTEM} """\nz[i] = x[i] + 1 # \\', {"x": V4},
         lambda a: {"y": a["x"], "z": a["x"] + 1}, MUST),
    case("fstring-braces-in-index", "y[i] = x[{i}]", {"x": V4}),
    case("fstring-braces-in-comment", f"y[i] = x[i] - 1  # {{{OPEN}}} {{x!r}}", {"x": V4},
         lambda a: a["x"] - 1, MUST),
    case("percent-format", "y[i] = x[i] % 2", {"x": V4}),
    case("decorator", "@kernel\ny[i] = x[i]", {"x": V4}),
    case("null-byte-in-name", "y[i] = x\x00[i]", {"x": V4}),
    case("null-byte-at-end", "y[i] = x[i]\x00", {"x": V4}),
    case("boundary-mode-payload", f"y[i] = x[i-1]   where i < 3, x: zero'); {OPEN}; ('",
         {"x": V4}),
    case("boundary-mode-python-name", "y[i] = x[i-1]   where i < 3, x: __import__", {"x": V4}),
    # ---- Unicode look-alikes ----
    case("cyrillic-names", "\u0443[i] = \u0445[i]", {"\u0445": V4}),  # у, х
    case("greek-index", "y[\u03b9] = x[\u03b9]", {"x": V4}),  # ι
    case("fullwidth-names", "\uff59[i] = \uff58[i]", {"\uff58": V4}),  # ｙ, ｘ
    case("nfkc-ligature-collision", "y[i] = \ufb01[i] + fi[i]", {"\ufb01": V4, "fi": V4},
         lambda a: a["\ufb01"] + a["fi"]),  # ﬁ vs fi
    case("nfkc-fullwidth-collision", "y[i] = \uff58[i] - x[i]", {"\uff58": V4, "x": V4},
         lambda a: a["\uff58"] - a["x"]),  # ｘ vs x
    case("nfkc-math-bold-collision", "y[i] = \U0001d431[i] * x[i]", {"\U0001d431": V4, "x": V4},
         lambda a: a["\U0001d431"] * a["x"]),  # 𝐱 vs x
    case("nfkc-superscript-index", "y[\u2071] = x[\u2071] + x[i]", {"x": V4}),  # ⁱ
    case("combining-mark", "y[i] = x\u0301[i]", {"x\u0301": V4}),
    case("zero-width-joiner", "y[i] = x\u200d[i]", {"x": V4}),
    case("zero-width-space", "y[i] = x[i]\u200b", {"x": V4}),
    case("bidi-override", "y[i] = x[i] \u202e# ]i[x * 2", {"x": V4}),
    case("byte-order-mark", "\ufeffy[i] = x[i]", {"x": V4}, lambda a: a["x"]),
    case("no-break-space", "y[i]\u00a0= x[i]", {"x": V4}, lambda a: a["x"]),
    case("arabic-indic-digit", "y[i] = x[i] * \u0663", {"x": V4}),
    case("fullwidth-digit", "y[i] = x[i] * \uff11", {"x": V4}),
    case("superscript-two", "y[i] = x[i]\u00b2", {"x": V4}),
    # ---- very long names ----
    case("10000-char-tensor-names", f"{'y' * 10_000}[i] = {LONG}[i] * 3", {LONG: V4},
         lambda a: 3 * a[LONG], MUST),
    case("10000-char-index-name", f"y[{LONG_INDEX}] = x[{LONG_INDEX}] + 1", {"x": V4},
         lambda a: a["x"] + 1, MUST),
    case("10000-char-names-differing-by-underscore", f"y[i] = {LONG}[i] - {LONG}_[i]",
         {LONG: V4, LONG + "_": V4}, lambda a: a[LONG] - a[LONG + "_"], MUST),
    # ---- deep nesting, long expressions ----
    case("600-parentheses", "y[i] = " + "(" * 600 + "x[i]" + ")" * 600, {"x": V4},
         lambda a: a["x"], MUST),
    case("5000-parentheses", "y[i] = " + "(" * 5000 + "x[i]" + ")" * 5000, {"x": V4},
         lambda a: a["x"]),
    case("301-unary-minus", "y[i] = " + "-" * 301 + "x[i]", {"x": V4}, lambda a: -a["x"], MUST),
    case("2000-unary-minus", "y[i] = " + "-" * 2000 + "x[i]", {"x": V4}, lambda a: a["x"]),
    case("450-term-sum", "y[i] = " + " + ".join(["x[i]"] * 450), {"x": V4},
         lambda a: 450 * a["x"], MUST),
    case("5000-term-sum", "y[i] = " + " - ".join(["x[i]"] * 5000), {"x": V4},
         lambda a: -4998 * a["x"]),
    case("300-nested-calls", "y[i] = " + "abs(" * 300 + "x[i]" + ")" * 300, {"x": V4},
         lambda a: np.abs(a["x"])),
    case("2000-nested-calls", "y[i] = " + "abs(" * 2000 + "x[i]" + ")" * 2000, {"x": V4},
         lambda a: np.abs(a["x"])),
    case("200-high-power-tower", "y[i] = " + "p[i]^" * 200 + "1", {"p": V4},
         lambda a: _tower(a["p"], 200)),
    # ---- numeric literals ----
    case("400-digit-integer", f"y[i] = x[i] * {HUGE}", {"x": V4}),
    case("400-digit-integer-exponent", f"y[i] = x[i] ^ {HUGE}", {"x": V4}),
    case("5000-digit-integer", f"y[i] = x[i] - {DIGITS_5000}", {"x": V4}),
    case("float-1e400", "y[i] = x[i] * 1e400", {"x": V4}),
    case("float-1e-400", "y[i] = x[i] + 1e-400", {"x": V4}, lambda a: a["x"], MUST),
    case("largest-float-times-10", "y[i] = x[i] * 1.7976931348623157e308 * 10", {"x": V4},
         lambda a: a["x"] * 1.7976931348623157e308 * 10),
    case("2-to-the-1024", "y[i] = x[i] * 2^1024", {"x": V4}, lambda a: a["x"] * np.inf),
    case("hex-literal", "y[i] = x[i] * 0x10", {"x": V4}),
    case("underscore-digits", "y[i] = x[i] * 1_000", {"x": V4}),
    case("negative-zero", "y[i] = x[i] * -0.0", {"x": V4}, lambda a: a["x"] * -0.0, MUST),
    case("leading-zeros", "y[i] = x[i+0001] * 007.50", {"x": V4}, lambda a: a["x"][1:] * 7.5,
         MUST),
    case("nan-and-inf-as-names", "y[i] = x[i] * nan + inf", {"x": V4, "nan": (), "inf": ()},
         lambda a: a["x"] * a["nan"] + a["inf"], MUST),
    case("huge-index-coefficient", f"y[i] = x[{'1' + '0' * 30}*i]", {"x": V4},
         lambda a: a["x"][:1]),
    case("5000-digit-where-size", f"y[i] = x[i]   where i < 1{'0' * 5000}, x: zero", {"x": V4}),
    # ---- huge sizes ----
    case("where-size-1e30", f"y[i] = x[i]   where i < 1{'0' * 30}, x: zero", {"x": V4}),
    case("declared-size-1e30", f"x: [1{'0' * 30}]\ny[i] = x[i]", {"x": V4}),
    case("where-size-1e11-index-values", "y[j] = mean[i](i + j)   where i < 100000000000, j < 2",
         {}, lambda a: (100000000000 - 1) / 2 + np.arange(2.0)),
    case("where-range-at-1e12", "y[i] = i   where i in 1000000000000:1000000000003", {},
         lambda a: np.arange(1000000000000, 1000000000003, dtype=np.float64), MUST),
    case("negative-where-size", "y[i] = x[i]   where i < -3", {"x": V4}),
    case("reversed-where-range", "y[i] = x[i]   where i in 3:1", {"x": V4}),
]


def test_docstring_states_the_number_of_hostile_programs():
    assert f"{len(HOSTILE)} hostile programs" in __doc__
    assert len(HOSTILE) >= 40
    assert len({p.id for p in HOSTILE}) == len(HOSTILE)


def _arrays(shapes: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    # distinct, positive, not-too-large values: any mix-up of two inputs shows
    return {name: rng.uniform(0.5, 1.5, size=shape) for name, shape in shapes.items()}


def _assert_matches(got, want) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (type(got), want.keys())
        for name in want:
            _assert_matches(got[name], want[name])
        return
    got, want = np.asarray(got), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def compile_and_run(text, shapes, compile_kwargs):
    """Compile `text` and call it on fixed arrays; returns (kernel, arrays, result)."""
    arrays = _arrays(shapes)
    with np.errstate(all="ignore"):
        kern = tc.compile(text, **compile_kwargs)
        return kern, arrays, kern(**arrays)


def _check_error(error: tc.TensorcError) -> None:
    text = str(error)
    assert text and isinstance(text, str)
    if error.span is not None and error.source is not None:
        assert text.startswith(f"{error.filename}:"), text[:200]


@pytest.mark.parametrize("text, shapes, oracle, expect, compile_kwargs", HOSTILE)
def test_hostile_program(text, shapes, oracle, expect, compile_kwargs):
    try:
        kern, arrays, result = compile_and_run(text, shapes, compile_kwargs)
    except tc.TensorcError as error:
        assert expect != MUST, f"a valid program was refused: {error}"
        _check_error(error)
        return
    assert expect != ERROR, "compiled a program that must be refused"
    with np.errstate(all="ignore"):
        want = oracle(arrays)
    _assert_matches(result, want)
    check_kernel_source(kern)


# ---- the checker itself: it accepts real kernels and rejects injected code ---------------

BENIGN = [
    ("y[n,o,h,w] = relu(x[n,c,h+u,w+v] * k[o,c,u,v] + b[o])",
     {"x": (2, 3, 8, 8), "k": (4, 3, 3, 3), "b": (4,)}),
    ("y[n,o,h,w] = x[n,c,2*h+2*u-2,2*w+2*v-2] * k[o,c,u,v]   where h < 8, w < 8, x: reflect",
     {"x": (1, 2, 16, 16), "k": (3, 2, 3, 3)}),
    ("p[n,c,h,w] = max[u,v](y[n,c,2*h+u,2*w+v])   where u < 2, v < 2", {"y": (2, 3, 8, 8)}),
    ("m[n] = max[j](z[n,j])\ne[n,j] = exp(z[n,j] - m[n])\np[n,j] = e[n,j] / sum[j](e[n,j])",
     {"z": (3, 5)}),
    ("s[i] = a[i+j] * f[j]   where i < 9, a: circular", {"a": (9,), "f": (3,)}),
    ("mask[i,j] = (j <= i) * gelu(x[i] - x[j])   where i < 4, j < 4", {"x": (4,)}),
] + _BENIGN_FOR_HELPERS


@pytest.mark.parametrize("text, shapes", BENIGN, ids=[f"benign-{i}" for i in range(len(BENIGN))])
def test_checker_accepts_kernels_of_ordinary_programs(text, shapes):
    check_kernel_source(tc.compile(text, **shapes))


def test_checker_accepts_gradient_kernels():
    kern = tc.compile_grad("y[n,o,h,w] = x[n,c,h+u-1,w+v-1] * k[o,c,u,v]   where h < 6, w < 6, "
                           "x: symmetric\nl = sum[n,o,h,w](y[n,o,h,w] * y[n,o,h,w])",
                           wrt=["x", "k"], x=(2, 3, 6, 6), k=(4, 3, 3, 3))
    check_kernel_source(kern)


@pytest.mark.parametrize("injected", [
    f"    {SYSTEM}\n",
    f"    x = {OPEN}\n",
    "    exec('1')\n",
    "    y = x.__class__\n",
    "    y = 'hello'\n",
    "    import os\n",
    "    y = lambda: 0\n",
])
def test_checker_rejects_injected_code(injected):
    source = tc.compile("y[i] = x[i] * 2", x=(3,)).source
    head, tail = source.split("def kernel(x):\n")
    doctored = head + "def kernel(x):\n" + injected + tail
    with pytest.raises(AssertionError):
        check_generated_source(doctored, {"x", "y", "i"}, ("x",))


def test_checker_rejects_a_user_name_shadowing_a_called_builtin():
    source = "import numpy as np\n\n\ndef kernel(range):\n    for i in range(3):\n        pass\n"
    with pytest.raises(AssertionError, match="range"):
        check_generated_source(source, {"range", "i"}, ("range",))


# ---- python_name, the one gate for user identifiers ------------------------------------------

NAMES = ["x", "np", "np_", "np__", "DTYPE", "kernel", "import", "match", "_", "__import__",
         "range", "t1", "x_pad", "None", "True", "a" * 500, "A0_9"]


def test_python_name_is_injective_and_gives_safe_ascii_identifiers():
    import keyword
    renamed = [python_name(n) for n in NAMES]
    assert len(set(renamed)) == len(NAMES)
    for name in renamed:
        assert name.isascii() and name.isidentifier()
        assert unicodedata.normalize("NFKC", name) == name
        assert not keyword.iskeyword(name) and not keyword.issoftkeyword(name)
        assert name not in MODULE_NAMES


@pytest.mark.parametrize("name", ["\ufb01", "\uff58", "\U0001d431", "x\u0301", "x\u200d",
                                  "x.y", "x'", "x\n", "1x", "", "x y", SYSTEM])
def test_python_name_refuses_anything_but_ascii_identifiers(name):
    with pytest.raises((ValueError, tc.TensorcError)):
        python_name(name)


# ---- NFKC: names Python would merge must never merge in a kernel ------------------------------

def test_nfkc_equivalent_names_in_text_never_share_an_array():
    """'ﬁ' and 'fi' (and 'ｘ' and 'x') are one identifier to Python after NFKC; in tensorc
    text they must either be refused or stay two arrays."""
    fi, lig = np.array([1.0, 2.0]), np.array([10.0, 20.0])
    for text, arrays, want in [
        ("y[i] = \ufb01[i] - fi[i]", {"\ufb01": lig, "fi": fi}, lig - fi),
        ("y[i] = \uff58[i] - x[i]", {"\uff58": lig, "x": fi}, lig - fi),
        ("\ufb01[i] = fi[i] * 2", {"fi": fi}, 2 * fi),
    ]:
        try:
            got = tc.compile(text)(**arrays)
        except tc.TensorcError:
            continue
        np.testing.assert_array_equal(got, want)


def _syntax_program(left: str, right: str) -> S.Program:
    """`y[i] = left[i] - right[i]` built from syntax nodes, bypassing the grammar."""
    i = S.Affine((S.AffineTerm("i", 1),), 0)
    value = S.Binary("-", S.Access(left, (i,)), S.Access(right, (i,)))
    return S.Program((S.Assignment(S.Target("y", (i,)), value),))




@pytest.mark.parametrize("left, right", [("\ufb01", "fi"), ("\uff58", "x"), ("\U0001d431", "x")],
                         ids=["ligature", "fullwidth", "math-bold"])
def test_nfkc_equivalent_names_in_a_syntax_tree(left, right):
    a, b = np.array([10.0, 20.0]), np.array([1.0, 2.0])
    try:
        got = tc.compile(_syntax_program(left, right))(**{left: a, right: b})
    except tc.TensorcError:
        return
    np.testing.assert_array_equal(got, a - b)


@pytest.mark.parametrize("name", [SYSTEM, "x\nimport os", "x; import os", "x y", "", "1x",
                                  f"x[0]) or {OPEN} or (x"],
                         ids=["system", "newline", "semicolon", "space", "empty", "digit-first",
                              "expression"])
def test_payload_names_in_a_syntax_tree(name):
    try:
        tc.compile(_syntax_program(name, "b"))(**{name: np.ones(2), "b": np.ones(2)})
    except tc.TensorcError:
        return
    raise AssertionError("a non-identifier name compiled")


def test_payload_number_in_a_syntax_tree():
    i = S.Affine((S.AffineTerm("i", 1),), 0)
    value = S.Binary("*", S.Access("x", (i,)), S.Number(SYSTEM))
    program = S.Program((S.Assignment(S.Target("y", (i,)), value),))
    with pytest.raises(tc.TensorcError):
        tc.compile(program)(x=np.ones(2))


# ---- options of tc.compile that bypass the grammar ---------------------------------------



@pytest.mark.parametrize("dtype", [
    "float64", "float32", "float16", np.dtype("float32"),
    np.float32,
    "f4",
    "<f8",
    "int64",
    "complex128",
    "str_",
    f"float64; {SYSTEM}",
], ids=str)
def test_compile_dtype_option(dtype):
    try:
        kern = tc.compile("y[i] = x[i] * 2", dtype=dtype, x=(3,))
    except tc.TensorcError:
        return
    check_kernel_source(kern)
    want_dtype = np.dtype(kern.plan.dtype)
    x = np.arange(3.0).astype(want_dtype)
    got = kern(x=x)
    assert got.dtype == want_dtype
    np.testing.assert_array_equal(got, 2 * x)


@pytest.mark.parametrize("size", [SYSTEM, "3"], ids=["payload", "digit-string"])
def test_kernel_sizes_option(size):
    program = tc.parse("y[i] = x[i] * 2   where i < N")
    try:
        tc.Kernel(program, sizes={"N": size})(x=np.ones(3))
    except tc.TensorcError:
        return
    raise AssertionError("a str size compiled")


@pytest.mark.parametrize("wrt", ["x'", "os.system", "\ufb01", f"x; {SYSTEM}", "dx"])
def test_gradient_of_hostile_names_is_refused(wrt):
    with pytest.raises(tc.TensorcError):
        tc.compile_grad("y = sum[i](x[i] * x[i])", wrt=[wrt])


def test_shapes_for_look_alike_names_are_refused():
    with pytest.raises(tc.TensorcError, match="x"):
        tc.compile("y[i] = x[i]", **{"\uff58": (3,)})  # noqa: PIE804 - fullwidth x
