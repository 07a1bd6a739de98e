"""Labfile syntax (no root, no store): instructions and their line numbers, words and variables, and
one-line errors naming <file>:<line>."""
from __future__ import annotations

import pytest

from labkit import errors
from labkit.images.recipe import exec_form, pairs, parse, words


def test_lines_continuations_and_comments() -> None:
    text = ("# syntax=whatever\n\nFROM busybox\nRUN echo a && \\\n# a comment inside\n    echo b\n"
            "env A=1\n  COPY x /y  \r\nCMD [\"sh\"]\n")
    got = [(i.line, i.keyword, i.args) for i in parse(text, "Labfile")]
    assert got == [(3, "FROM", "busybox"), (4, "RUN", "echo a &&     echo b"), (7, "ENV", "A=1"),
                   (8, "COPY", "x /y"), (9, "CMD", '["sh"]')]
    assert parse("FROM a\nRUN x \\", "L")[-1].args == "x"          # a continuation at the end of the file


@pytest.mark.parametrize("text,line,fragment", [
    ("FROM busybox\nFOO bar\n", 2, "unknown instruction 'FOO'"),
    ("FROM busybox\n\nRUN\n", 3, "RUN needs an argument"),
    ("FROM busybox\nADD x.tar /\n", 2, "ADD is not in labkit's recipe subset: use COPY"),
    ("FROM busybox\nEXPOSE 80\n", 2, "EXPOSE is not in labkit's recipe subset"),
    ("FROM busybox\nCOPY a \\\n  b\nWORKDIR\n", 4, "WORKDIR needs an argument"),
])
def test_syntax_errors_name_file_and_line(text, line, fragment) -> None:
    with pytest.raises(errors.InvalidArgument) as ei:
        parse(text, "ctx/Labfile")
    msg = str(ei.value)
    assert msg.startswith(f"ctx/Labfile:{line}: ") and fragment in msg and "\n" not in msg, msg


def test_words_quotes_and_variables() -> None:
    env = {"A": "1", "EMPTY": "", "SP": "x y"}
    assert words("$A ${A} ${B:-d} ${A:+set} ${EMPTY:-e} ${B:+no}x", env, "L:1") == ["1", "1", "d", "set", "e", "x"]
    assert words("'$A literal' \"$A in\" \\$A a\\ b", env, "L:1") == ["$A literal", "1 in", "$A", "a b"]
    assert words("$SP", env, "L:1") == ["x y"]                       # a value is not split again
    assert words('""', env, "L:1") == [""] and words("cost$", env, "L:1") == ["cost$"]
    for bad, what in (("'open", "unterminated '"), ('"open', 'unterminated "'), ("${A", "unterminated ${"),
                      ("${A:?x}", "bad variable reference")):
        with pytest.raises(errors.InvalidArgument) as ei:
            words(bad, env, "Labfile:7")
        assert str(ei.value).startswith("Labfile:7: ") and what in str(ei.value)


def test_pairs_and_exec_form() -> None:
    assert pairs('A=1 B="x y" C=', {}, "L:1", "ENV") == [("A", "1"), ("B", "x y"), ("C", "")]
    assert pairs("NAME John Doe", {}, "L:1", "ENV") == [("NAME", "John Doe")]
    with pytest.raises(errors.InvalidArgument, match="LABEL 'x' has no '='"):
        pairs("x", {}, "L:1", "LABEL")
    with pytest.raises(errors.InvalidArgument, match="is not KEY=value"):
        pairs("A=1 =2", {}, "L:1", "LABEL")
    assert exec_form('["a", "b c"]') == ["a", "b c"] and exec_form("[not json") is None and exec_form("[1]") is None
