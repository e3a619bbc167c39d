"""Docs as tests: every ```python block of README.md and docs/*.md runs, and what it prints is
checked, so the docs cannot drift from the code.

The convention (also stated at the top of docs/guide.md):

- The ```python blocks of one file run in order in one namespace, as a reader would run them,
  from the repository root.
- A block whose closing fence is followed (after blank lines) by a line starting with
  ``Output`` and then a fenced block: that block is what the python block prints. It is compared
  with the captured stdout piece by piece: the text between numbers must match (whitespace
  ignored, so NumPy's column alignment may change) and every number must match within
  ``|a - b| <= 1e-3 * max(|a|, |b|) + 1e-8`` (integers exactly; ``nan`` matches ``nan``). So
  printed counts, statuses and shapes are exact, and rounding-level noise in solver errors
  (1.5e-12 against 1.4e-12) passes.
- ``<!-- illustrative: reason -->`` on the line before an opening fence: the block is not run
  (reason required). Blocks in other languages (bash, toml, text) are not run.
- Everything else in a python block (comments included) is the reader's business: a block
  without an Output block must simply run without an exception.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))

FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])|\bnan\b"
                    r"|[-+]?\binf\b")
ILLUSTRATIVE = re.compile(r"<!--\s*illustrative:\s*\S.*-->")


def blocks(text: str) -> list[dict]:
    """The fenced blocks of a Markdown text: language, code, first line (1-based), whether
    marked illustrative, and the Output block that follows it (or None)."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(2)
        j = i + 1
        while j < len(lines) and not FENCE.match(lines[j]):
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        out.append({"lang": lang, "code": "\n".join(lines[start + 1:j]), "line": start + 1,
                    "illustrative": bool(ILLUSTRATIVE.search(prev)), "output": None,
                    "start": start, "end": j})
        i = j + 1
    # attach "Output ...:" blocks to the python block before them
    for a, b in zip(out, out[1:]):
        if a["lang"] != "python" or b["lang"] not in ("", "text"):
            continue
        between = lines[a["end"] + 1:b["start"]]
        words = [s for s in between if s.strip()]
        if len(words) == 1 and words[0].lstrip().startswith("Output"):
            a["output"] = b
            b["is_output"] = True
    return out


def _pieces(text: str):
    parts, pos = [], 0
    for m in NUMBER.finditer(text):
        parts.append(("text", re.sub(r"\s+", "", text[pos:m.start()])))
        parts.append(("num", m.group()))
        pos = m.end()
    parts.append(("text", re.sub(r"\s+", "", text[pos:])))
    return [p for p in parts if p != ("text", "")]


def _same_number(a: str, b: str) -> bool:
    x, y = float(a), float(b)
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    if re.fullmatch(r"[-+]?\d+", a) and re.fullmatch(r"[-+]?\d+", b):
        return int(a) == int(b)
    return abs(x - y) <= 1e-3 * max(abs(x), abs(y)) + 1e-8


def mismatch(expected: str, got: str) -> str | None:
    """None if ``got`` matches ``expected`` under the rule above, else where they differ."""
    e, g = _pieces(expected), _pieces(got)
    for k, (pe, pg) in enumerate(zip(e, g)):
        same = pe[0] == pg[0] and (pe[1] == pg[1] if pe[0] == "text"
                                   else _same_number(pe[1], pg[1]))
        if not same:
            return f"piece {k}: expected {pe[1]!r}, got {pg[1]!r}"
    if len(e) != len(g):
        return f"expected {len(e)} pieces, got {len(g)}"
    return None


def _registries():
    import gfsim
    from gfsim import activations, losses, methods

    return [activations.ACTIVATIONS, gfsim.nets.INITS, losses.LOSSES, methods.SOLVERS]


def run_file(doc: str, *, timings: list | None = None, errors: list | None = None) -> None:
    """Run ``doc``'s python blocks; with ``errors``, record failures there and go on."""
    import time

    with open(os.path.join(ROOT, doc)) as f:
        text = f.read()
    namespace = {"__name__": "__docs__"}
    cwd = os.getcwd()
    os.chdir(ROOT)
    # a doc may register names (an activation, a loss): each file starts from the same registries
    registries = _registries()
    saved = [dict(r._items) for r in registries]
    try:
        for b in blocks(text):
            if b["lang"] != "python" or b["illustrative"]:
                continue
            where = f"{doc}:{b['line']}"
            buf = io.StringIO()
            t = time.perf_counter()
            try:
                with contextlib.redirect_stdout(buf):
                    exec(compile(b["code"], where, "exec"), namespace)
                if timings is not None:
                    timings.append((where, time.perf_counter() - t))
                if b["output"] is not None:
                    bad = mismatch(b["output"]["code"], buf.getvalue())
                    assert bad is None, (
                        f"{where}: printed output differs from the doc ({bad}).\n--- doc\n"
                        f"{b['output']['code']}\n--- printed\n{buf.getvalue()}")
            except Exception as e:
                if errors is None:
                    raise
                errors.append(f"{where}: {type(e).__name__}: {e}")
    finally:
        os.chdir(cwd)
        for r, items in zip(registries, saved):
            r._items = items


def test_rule_compares_numbers_with_a_tolerance_and_text_exactly():
    assert mismatch("a [ 1.5e-12  2]", "a [1.4e-12 2]") is None
    assert mismatch("x 0.320402", "x 0.3204") is None
    assert mismatch("x 0.320402", "x 0.3214") is not None
    assert mismatch("{'reached_t1': 288}", "{'reached_t1': 287}") is not None
    assert mismatch("reached_t1 nan", "max_steps nan") is not None
    assert mismatch("1 2", "12") is not None


def test_every_marker_has_a_reason_and_every_output_block_a_python_block():
    for doc in DOCS:
        with open(os.path.join(ROOT, doc)) as f:
            text = f.read()
        assert "<!-- illustrative -->" not in text, f"{doc}: illustrative needs a reason"
        for b in blocks(text):
            if b["lang"] == "python" and b["output"] is not None and b["illustrative"]:
                raise AssertionError(f"{doc}:{b['line']}: an illustrative block's output "
                                     "cannot be checked")


@pytest.mark.parametrize("doc", DOCS)
def test_doc_code_runs_and_prints_what_it_shows(doc):
    run_file(doc)


if __name__ == "__main__":  # python tests/test_docs.py [doc ...]: time every block
    import sys

    for doc in sys.argv[1:] or DOCS:
        times: list = []
        errors: list = []
        run_file(doc, timings=times, errors=errors)
        for where, s in times:
            print(f"{s:7.2f}s  {where}")
        for e in errors:
            print("FAIL", e[:3000])
