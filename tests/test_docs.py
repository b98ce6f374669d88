"""Executable docs: every shell block and Python snippet of README.md and docs/*.md runs (tests/docrunner.py).

One test per document; its blocks run in order in one temporary directory that starts with a shared
small world. The runner's own parsing and output matching are tested first on small documents.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import docrunner
from docrunner import DocError, DocRun, doc_paths, output_matches, parse


@pytest.fixture(scope="session")
def doc_world(tmp_path_factory) -> Path:
    return docrunner.make_world(tmp_path_factory.mktemp("doc-world"))


@pytest.fixture(scope="session")
def doc_cache(tmp_path_factory) -> Path:
    """One feature cache for every document, so a gallery encoded by one doc is not encoded again."""
    return tmp_path_factory.mktemp("doc-cache")


def _doc(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "doc.md"
    p.write_text(textwrap.dedent(text))
    return p


# ---------------------------------------------------------------------------------------------- runner


def test_parse_directives(tmp_path):
    p = _doc(tmp_path, """\
        # t

        *Not run in tests: needs a GPU.*

        ```bash
        cirlab train x
        ```

        <!-- doctest: quick: cirlab train x --max-steps 2 -->
        ```bash
        cirlab train x
        ```

        <!-- doctest: before
        echo hi > a.txt
        -->
        <!-- doctest: timeout: 12 -->
        ```python
        print(open("a.txt").read())
        ```

        <!-- doctest: output -->
        ```text
        hi
        ```

        ```json
        {"a": 1}
        ```
        """)
    b = parse(p)
    assert [x.lang for x in b] == ["bash", "bash", "python", "text", "json"]
    assert b[0].skip == "needs a GPU." and b[0].quick is None
    assert b[1].skip is None and b[1].quick == "cirlab train x --max-steps 2"
    assert b[2].before == "echo hi > a.txt" and b[2].timeout == 12.0
    assert b[2].to_run == 'echo hi > a.txt\nprint(open("a.txt").read())'
    assert b[3].expect_output and not b[4].expect_output
    assert b[0].line == 5 and b[1].line == 10


def test_untagged_command_block_is_an_error(tmp_path):
    p = _doc(tmp_path, """\
        ```
        cirlab index world/test --out runs/idx
        ```
        """)
    with pytest.raises(DocError, match=r"doc.md:1: an untagged block holds a command"):
        parse(p)


def test_output_matching():
    assert output_matches("a\nb  \n", "a\nb\n")
    assert output_matches("x: ... images\n...\nend", "x: 12 images\nfoo\nbar\nend\n")
    assert output_matches("x\n...\ny", "x\ny")
    assert not output_matches("x: 1", "x: 2")
    assert not output_matches("a\nb", "a\nb\nc")


def test_runs_blocks_in_order_and_checks_output(tmp_path, doc_world, doc_cache):
    p = _doc(tmp_path, """\
        ```bash
        echo 3 > n.txt
        ls world
        ```

        <!-- doctest: output -->
        ```text
        test
        train
        val
        ```

        ```python
        n = int(open("n.txt").read())
        ```

        ```python
        print(n * 7)
        ```

        <!-- doctest: output -->
        ```text
        21
        ```

        Not run in tests: it would fail.

        ```bash
        false
        ```
        """)
    log = DocRun(p, tmp_path / "run", doc_world, doc_cache).run()
    assert [o.status for o in log] == ["ok", "output-ok", "ok", "ok", "output-ok", "skipped"]
    assert log[-1].detail == "it would fail."

    bad = _doc(tmp_path, """\
        ```python
        print(6 * 7)
        ```

        <!-- doctest: output -->
        ```text
        41
        ```
        """)
    with pytest.raises(DocError, match=r"doc.md:6: the output differs(.|\n)*--- expected\n41\n--- got\n42"):
        DocRun(bad, tmp_path / "run2", doc_world, doc_cache).run()

    failing = _doc(tmp_path, """\
        ```bash
        echo start
        cirlab search --index nowhere --reference x --text y
        ```
        """)
    with pytest.raises(DocError, match=r"doc.md:1: exit status 2(.|\n)*nowhere"):
        DocRun(failing, tmp_path / "run3", doc_world, doc_cache).run()


# ---------------------------------------------------------------------------------------------- the docs


@pytest.mark.parametrize("doc", doc_paths(), ids=lambda p: p.name)
def test_doc(doc, tmp_path, doc_world, doc_cache):
    DocRun(doc, tmp_path / doc.stem, doc_world, doc_cache).run()
