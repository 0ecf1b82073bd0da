"""The client commands of ``recserve`` (recommend, similar, events, items, health): their checks of the
arguments, and the tables they print."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import unicodedata

import pytest
from srvutil import ROOT, Server, free_port


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "recserve.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=60)


@pytest.fixture(scope="module")
def auth_server(shared_root, tmp_path_factory):
    """A one-worker server asking for the read token ``r1``."""
    d = tmp_path_factory.mktemp("cli")
    (d / "tokens").write_text("read r1\n")
    s = Server(shared_root, "--workers", "1", "--reload-interval", "0", "--tokens-file", str(d / "tokens"),
               "--events-dir", str(d / "ev"))
    yield s
    s.terminate()


def test_health_needs_no_token_and_a_malformed_one_does_not_fail_it(auth_server):
    """The health service is open: ``health`` sends no token, so a probe whose environment holds a token no
    gRPC header can carry still answers SERVING, exit 0, while the
    commands that send the token refuse it in one line, exit 2."""
    s = auth_server
    for token, bad in (("a b", "' '"), ("t\x01", "'\\x01'"), ("té", "'é'")):
        for args, env in ((("--token", token), None), ((), {"RECSERVE_TOKEN": token})):
            r = _run("health", "--addr", s.addr, *args, env=env)
            assert r.returncode == 0 and r.stdout.strip() == "SERVING", (token, r.stdout, r.stderr)
            r = _run("similar", "i1", "--addr", s.addr, *args, env=env)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and r.stdout == "" and lines == [
                "error: --token (or RECSERVE_TOKEN): a token is printable ASCII without spaces "
                f"(a gRPC header cannot carry {bad})"], (token, env, r.stdout, r.stderr)


def test_timeout_refusal_states_the_range_it_takes():
    """--timeout takes 0 < seconds < 1e6: the refusal of 1e6 or 1e9 says so (it said only "> 0")."""
    for value in ("1000000", "1e9", "0", "-1", "nan", "1_0"):
        r = _run("health", "--addr", f"127.0.0.1:{free_port()}", "--timeout", value)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and lines == [
            f"recserve health: error: argument --timeout: expected a number of seconds above 0 and below 1000000, "
            f"got '{value}' (--help for usage)"], r.stderr
    r = _run("health", "--addr", f"127.0.0.1:{free_port()}", "--timeout", "999999")   # taken: the call is made
    assert r.returncode == 1 and "UNAVAILABLE" in r.stderr, r.stderr


def _width(text: str) -> int:
    """Display columns of ``text`` in a terminal: wide East Asian characters 2, combining marks 0."""
    return sum(0 if unicodedata.category(c) in ("Mn", "Me") else 2 if unicodedata.east_asian_width(c) in "WF"
               else 1 for c in text)


def test_tables_align_by_display_width_and_show_invisible_characters():
    """Ids of wide (CJK, emoji) and zero-width (combining) characters keep the columns aligned in a terminal
    (they were padded by code points); control, bidi and zero-width characters are shown escaped, so an id
    cannot hide itself or reorder the table. Ids are printed whole (they are copied into --exclude, similar)."""
    from recserve.cli import print_items
    from recserve.v1 import recommender_pb2 as pb

    ids = ["plain", "商品番号", "🎁gift", "e\u0301te\u0301", "zw\u200bj", "rlo\u202eevil", "tab\tnl\n",
           "bom\ufeff", "ls\u2028", "\x1b[2Jclear", "L" * 64]
    items = [pb.ScoredItem(item_id=i, score=1.0 - n / 100, sources=["als", "i2i"]) for n, i in enumerate(ids)]
    out = io.StringIO()
    print_items(items, out=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 + len(ids), lines
    rows = lines[2:]
    # every row's score column starts at the same display column, that of the header's "score"
    header = lines[0]
    at = _width(header[:header.index("score")])
    for row, score in zip(rows, (f"{1.0 - n / 100:.4f}" for n in range(len(ids)))):
        assert _width(row[:row.index(score)]) == at, (row, at)
    start = len(lines[1].split("  ")[0]) + 2                     # the "#" column and its separator
    shown = [row[start:row.index(f"{1.0 - n / 100:.4f}")].rstrip() for n, row in enumerate(rows)]
    assert shown == ["plain", "商品番号", "🎁gift", "e\u0301te\u0301", "zw\\u200bj", "rlo\\u202eevil",
                     "tab\\x09nl\\x0a", "bom\\ufeff", "ls\\u2028", "\\x1b[2Jclear", "L" * 64], shown
    assert all(c.isprintable() for line in lines for c in line), lines


def test_the_line_above_the_table_shows_invisible_characters_escaped(auth_server):
    """The user id the header line of ``recommend`` repeats is escaped as the table's cells: a right-to-left
    override in it would reorder the rest of the line (the bundle version and request id)."""
    r = _run("recommend", "u\u202e1", "--k", "2", "--addr", auth_server.addr, "--token", "r1")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[0].startswith("user u\\u202e1 (cold start") and len(lines) == 6, r.stdout
    assert all(c.isprintable() for line in lines for c in line), lines
