"""Parser: the grammar, normalized printing and round trips, positions."""

import dataclasses
import importlib.resources

import pytest

import tensorc as tc
from tensorc import syntax as S

SPEC_PROGRAMS = [
    "C[i,k] = A[i,j] * B[j,k]",
    "y[n,o,h,w] = relu(x[n,c,h+u,w+v] * k[o,c,u,v] + b[o])",
    "y[n,o,h,w] = x[n,c,2*h+2*u-2,2*w+2*v-2] * k[o,c,u,v]   where h < 16, w < 16, x: reflect",
    "p[n,c,h,w] = max[u,v](y[n,c,2*h+u,2*w+v])   where u < 2, v < 2",
    "y[n,c,h,w] = x[n,c,h+u,w+v] * k[c,u,v]",
    "s[i] = a[i+j] * f[j]   where i < 9, a: circular",
    "m[n]   = max[j](z[n,j])",
    "e[n,j] = exp(z[n,j] - m[n])",
    "p[n,j] = e[n,j] / sum[j](e[n,j])",
    "mu[n]  = mean[d](a[n,d])",
    "var[n] = mean[d]((a[n,d] - mu[n])^2)",
    "y[n,d] = g[d] * (a[n,d] - mu[n]) / sqrt(var[n] + 1e-5) + b[d]",
    "loss   = -mean[n](sum[k](t[n,k] * log(p[n,k])))",
    "y[i] = max(0.01*z[i], z[i])",
    "x: f32[N, C, H, W]",
    "dx[n,c,h+u,w+v] += dy[n,o,h,w] * k[o,c,u,v]",
    "y[i] = x[i]   where i in 2:7",
    "y[i] = x[-i + 9]",
    "y = (a < b) + (a >= b) * 2",
]


def test_grammar_ships_as_package_resource():
    text = importlib.resources.files("tensorc.grammar").joinpath("tensorc.lark").read_text()
    assert "start:" in text


@pytest.mark.parametrize("source", SPEC_PROGRAMS)
def test_round_trip(source):
    program = tc.parse(source)
    again = tc.parse(str(program))
    assert again == program
    assert str(again) == str(program)


@pytest.mark.parametrize("source, normalized", [
    ("C[i,k]=A[i,j]*B[j,k]", "C[i,k] = A[i,j]*B[j,k]"),
    ("y[i] = x[h*2 + 1 + u - 1]", "y[i] = x[2*h+u]"),
    ("y[i] = x[2*(h+u)]", "y[i] = x[2*h+2*u]"),
    ("y = -x^2", "y = -x^2"),
    ("y = (-x)^2", "y = (-x)^2"),
    ("y = a - (b - c)", "y = a - (b - c)"),
    ("y = (a - b) - c", "y = a - b - c"),
    ("y = a / (b * c)", "y = a/(b*c)"),
    ("y = a ^ b ^ c", "y = a^b^c"),
    ("y = (a ^ b) ^ c", "y = (a^b)^c"),
    ("y = a * -b", "y = a*-b"),
    ("y = 2^-1", "y = 2^-1"),
    ("y[i] = x[i] where x: wrap", "y[i] = x[i]   where x: wrap"),
    ("a = 1; b = 2", "a = 1\nb = 2"),
    ("# comment\n\na = 1  # trailing\n\n", "a = 1"),
    ("y = 1.5e3 + .5 + 3.", "y = 1500.0 + 0.5 + 3.0"),
])
def test_normalized_source(source, normalized):
    assert str(tc.parse(source)) == normalized


def test_tree_shape_and_spans():
    program = tc.parse("y[n] = relu(x[n,2*h+u-1] * k[u])   where h < 4")
    (statement,) = program.statements
    assert isinstance(statement, S.Assignment)
    call = statement.value
    assert isinstance(call, S.Call) and call.function == "relu"
    product = call.arguments[0]
    assert isinstance(product, S.Binary) and product.op == "*"
    access = product.left
    assert access.tensor == "x"
    index = access.indices[1]
    assert [(t.name, t.coefficient) for t in index.terms] == [("h", 2), ("u", 1)]
    assert index.constant == -1
    assert (access.span.line, access.span.column) == (1, 13)
    u_term = index.terms[1]
    assert program.source[u_term.span.start:u_term.span.end] == "u"
    assert statement.where == (S.RangeBound("h", 0, 4),)


def spans(node) -> tuple:
    """Every span of a syntax tree, with the node and field it belongs to (the spans take
    no part in ==)."""
    if isinstance(node, tuple):
        return tuple(spans(child) for child in node)
    if not dataclasses.is_dataclass(node) or isinstance(node, tc.errors.Span):
        return ()
    return (type(node).__name__,) + tuple(
        (field.name, getattr(node, field.name) if "span" in field.name
         else spans(getattr(node, field.name))) for field in dataclasses.fields(node))


@pytest.mark.parametrize("source", SPEC_PROGRAMS + [
    "s: f64\nx: [N, 3]\ny[i] = -(a[i] + b[2*h-1])*sum[j](c[i,j])   where i < 3, a: zero",
    "y = a[0]*2^-b + f(c, -1.5e-07) != 3\nz[i,j] += x[-2*i+j-4]   where i in 1:N, j < M",
])
def test_placed_program_puts_every_node_where_parse_does(source):
    """tc.grad's programs are placed in their own printed source without a second parse:
    each node's span must be the one parse() gives it there."""
    normalized = str(tc.parse(source))
    parsed = tc.parse(normalized)
    placed = S.placed_program(parsed.statements)
    assert placed.source == normalized
    assert placed == parsed
    assert spans(placed) == spans(parsed)


def test_empty_program_parses_but_does_not_compile():
    assert tc.parse("# nothing\n").statements == ()
    with pytest.raises(tc.TensorcError, match="no statements"):
        tc.compile("# nothing\n", x=(1,))


def test_parse_rejects_non_strings():
    with pytest.raises(tc.ParseError):
        tc.parse(42)
