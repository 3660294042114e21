"""Errors of the package: CompileError with the command line's report, warnings
through `warnings.warn`, and a sample of the hostile programs of
runtime/tests/hostile_programs.rs, each an exception or a program, never a crash."""

from __future__ import annotations

import warnings
from pathlib import Path

import losslang as ll
import numpy as np
import pytest
from conftest import STDLIB, lossc


def wrap(body: str) -> str:
    return f"loss t(x: f32[N] diff, w: f32[N, N]) -> f32 {{\n    {body}\n}}\n"


def test_compile_error_fields_and_report(tmp_path: Path) -> None:
    src = "loss bad(x: f32[N] diff) -> f32 {\n    sum(x +)\n}\n"
    path = tmp_path / "bad.loss"
    path.write_text(src)
    with pytest.raises(ll.CompileError) as e:
        ll.load(path)
    err = e.value
    assert err.code.startswith("L")
    assert err.diagnostics, "at least one diagnostic"
    code, severity, message, line, column = err.diagnostics[0]
    assert (code, severity, line) == (err.code, "error", 2)
    assert isinstance(message, str) and column >= 1
    # str() is what `lossc check` prints, without colour.
    cli = lossc("check", str(path), check=False)
    assert cli.returncode != 0
    assert str(err) == cli.stderr
    assert "\x1b[" not in str(err)


def test_unknown_name_is_a_compile_error() -> None:
    with pytest.raises(ll.CompileError) as e:
        ll.compile("loss t(x: f32[N] diff) -> f32 { sum(nope) }", name="t.loss")
    assert "nope" in str(e.value)
    assert e.value.diagnostics[0][3] == 1


def test_warnings_go_through_warnings_warn() -> None:
    text = (STDLIB / "weighted_interval_score.loss").read_text()
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        ll.compile(text, name="wis.loss")
    lw = [w for w in got if issubclass(w.category, ll.LossWarning)]
    assert lw, "the checker's warnings reach warnings.warn"
    assert "L4502" in str(lw[0].message)


def test_missing_file_and_bad_utf8(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ll.load(tmp_path / "nope.loss")
    p = tmp_path / "bin.loss"
    p.write_bytes(b"loss \xff")
    with pytest.raises(ll.CompileError) as e:
        ll.load(p)
    assert e.value.code == "L1005"
    with pytest.raises(ValueError, match="no loss"):
        ll.stdlib("nope")


def _hostile() -> list:
    out = []
    for depth in (10, 257, 5000):
        out.append(wrap(f"sum({'(' * depth}x{')' * depth})"))
        out.append(wrap(f"sum({'exp(' * depth}x{')' * depth})"))
        out.append(wrap(f"sum({'([{' * (depth // 3 + 1)}x"))
        out.append(wrap(f"let a = {'if 1 > 0 { ' * depth}1.0{' } else { 2.0 }' * depth}\n    sum(x * a)"))
    out.append(wrap("sum(" + " + ".join(["x"] * 20_000) + ")"))
    out.append(wrap(f"sum({'-' * 20_000}x)"))
    fns = "".join(f"fn f{i}(a) {{ f{i - 1}(a) + f{i - 1}(a) }}\n" for i in range(1, 64))
    out.append(f"fn f0(a) {{ a }}\n{fns}{wrap('sum(f63(x))')}")
    out.append(f"fn f(a) {{ g(a) }}\nfn g(a) {{ f(a) }}\n{wrap('sum(f(x))')}")
    for lit in ("9" * 5000, "1e309", "1e99999999999999999999", "9223372036854775808", "1__2"):
        out.append(wrap(f"sum(x) * {lit}"))
    out.append("use nope::f;\n" + wrap("sum(x)"))
    out.append("use std::nope;\n" + wrap("sum(x)"))
    out.append("")
    out.append("\x00\x01 loss")
    return out


@pytest.mark.parametrize("k", range(len(_hostile())))
def test_hostile_programs_never_crash(k: int) -> None:
    text = _hostile()[k]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = ll.compile(text, name="hostile.loss")
    except ll.CompileError as e:
        assert str(e) and e.code.startswith("L")
        return
    # A program that compiles runs or raises a DataError.
    f = ll.Loss(prog)
    try:
        r = f(np.ones(4, np.float32), np.ones((4, 4), np.float32))
        assert isinstance(r.loss, float)
    except ll.DataError:
        pass


@pytest.mark.parametrize("backend", ["jit", "interp"])
def test_hostile_arrays_never_crash(backend: str) -> None:
    f = ll.Loss(ll.stdlib("focal"), backend=backend)
    x = np.ones((8, 4), np.float32)
    t = np.zeros(8, np.int64)
    bad = [
        (np.ones((8, 4, 1), np.float32), t),
        (np.ones(8, np.float32), t),
        (x, np.zeros((8, 1), np.int64)),
        (x, np.full(8, 4)),
        (x, np.zeros(9, np.int64)),
        (np.ones((8, 4), np.int64), t),
        (np.array(["a"] * 8), t),
        (np.ones((8, 4), object), t),
        (x, np.zeros(8, np.float32)),
        (np.float32(1.0), t),
    ]
    for a, b in bad:
        with pytest.raises((ll.DataError, TypeError, ValueError)):
            f(a, b)
    # Still usable afterwards.
    assert isinstance(f(x, t).loss, float)
