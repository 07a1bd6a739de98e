"""Labfiles: the Dockerfile subset ``labkit build`` reads, parsed into instructions with their line numbers.

Syntax (as Docker's): one instruction per line, the keyword first (any case); a line ending in ``\\``
continues on the next; lines whose first non-blank character is ``#`` are comments (also inside a
continued instruction); blank lines are skipped. The instructions:

==============  ====================================================================================
``FROM``        ``FROM image`` (a tag or id in the store) or ``FROM scratch``; once, first (only ``ARG``
                may come before it)
``RUN``         ``RUN command`` (``/bin/sh -c``) or ``RUN ["prog", "arg"]``
``COPY``        ``COPY [--chown=UID[:GID]] [--chmod=OCTAL] src... dest`` or the JSON form
``ENV``         ``ENV KEY=value ...`` (or ``ENV KEY value``)
``WORKDIR``     ``WORKDIR /path`` (relative to the previous one; made if missing)
``USER``        ``USER name|uid[:group]``
``CMD``         ``CMD ["prog", "arg"]`` or ``CMD command`` (``/bin/sh -c``)
``ENTRYPOINT``  the same forms; it clears a ``CMD`` inherited from the base image
``LABEL``       ``LABEL key=value ...``
``ARG``         ``ARG NAME[=default] ...`` (``--build-arg NAME=value`` sets it)
==============  ====================================================================================

``$NAME``, ``${NAME}``, ``${NAME:-default}`` and ``${NAME:+alt}`` are substituted in every instruction
but ``RUN``, ``CMD`` and ``ENTRYPOINT`` (where the shell sees build arguments as environment); single
quotes keep text literal, double quotes group words, ``\\`` escapes. A malformed recipe is one
``InvalidArgument`` naming ``<file>:<line>``.

>>> [(i.line, i.keyword, i.args) for i in parse("FROM busybox\\n# hi\\nRUN echo a \\\\\\n  b\\n", "Labfile")]
[(1, 'FROM', 'busybox'), (3, 'RUN', 'echo a   b')]
>>> words('a "b c" ${X:-d}$Y', {"Y": "!"}, "Labfile:1")
['a', 'b c', 'd!']
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .. import errors

__all__ = ["Instruction", "parse", "words", "exec_form", "KEYWORDS", "MAX_RECIPE"]

KEYWORDS = ("FROM", "RUN", "COPY", "ENV", "WORKDIR", "USER", "CMD", "ENTRYPOINT", "LABEL", "ARG")
#: Dockerfile instructions labkit does not do, and what to write instead
NOT_IN_SUBSET = {
    "ADD": "use COPY (labkit downloads nothing and unpacks no archive during a build)",
    "EXPOSE": "publish ports when running: labkit run -p HOST:CTR", "VOLUME": "bind at run time: labkit run -v",
    "HEALTHCHECK": "labkit has no health checks", "ONBUILD": "labkit has no build triggers",
    "SHELL": "write RUN [\"/bin/bash\", \"-c\", \"...\"] instead", "STOPSIGNAL": "labkit stops with SIGTERM",
    "MAINTAINER": 'use LABEL maintainer="..."'}
#: a recipe larger than this is refused before it is parsed
MAX_RECIPE = 1 << 20
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REF_FIX = "write ${NAME}, ${NAME:-default} or ${NAME:+alt}"


@dataclass(frozen=True)
class Instruction:
    """One instruction: its first line number, keyword (upper case) and argument text (continuations
    joined), and where it is (``<file>:<line>``) for messages."""

    line: int
    keyword: str
    args: str
    where: str

    @property
    def text(self) -> str:
        """``KEYWORD args`` as written (continuations joined)."""
        return f"{self.keyword} {self.args}"


def _bad(where: str, why: str, fix: str | None = None) -> errors.InvalidArgument:
    return errors.InvalidArgument(where, why, fix=fix)


def parse(text: str, path: str) -> list[Instruction]:
    """The instructions of a recipe (``path`` names it in errors). Only the syntax is checked here:
    known keywords, an argument each; what the arguments mean is :mod:`labkit.images.build`'s business."""
    out: list[Instruction] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        raw = lines[i].rstrip("\r")
        i += 1
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        start = i
        parts = [raw.lstrip()]
        while parts[-1].rstrip().endswith("\\"):
            parts[-1] = parts[-1].rstrip()[:-1]
            while i < len(lines) and lines[i].strip().startswith("#"):
                i += 1                       # comments inside a continued instruction are dropped
            if i >= len(lines):
                break
            parts.append(lines[i].rstrip("\r"))
            i += 1
        logical = "".join(parts)
        where = f"{path}:{start}"
        keyword, _, args = logical.strip().partition(" ")
        if "\t" in keyword:
            keyword, _, rest = keyword.partition("\t")
            args = rest + " " + args if args else rest
        kw = keyword.upper()
        args = args.strip()
        if kw in NOT_IN_SUBSET:
            raise _bad(where, f"{kw} is not in labkit's recipe subset", fix=NOT_IN_SUBSET[kw])
        if kw not in KEYWORDS:
            raise _bad(where, f"unknown instruction {keyword[:40]!r}", fix=f"a Labfile knows {', '.join(KEYWORDS)}")
        if not args:
            raise _bad(where, f"{kw} needs an argument", fix=_USAGE[kw])
        out.append(Instruction(line=start, keyword=kw, args=args, where=where))
    return out


_USAGE = {"FROM": "write FROM busybox (an image in the store) or FROM scratch",
          "RUN": "write RUN command or RUN [\"prog\", \"arg\"]",
          "COPY": "write COPY src... dest (sources inside the build context)",
          "ENV": "write ENV KEY=value", "WORKDIR": "write WORKDIR /path", "USER": "write USER name or USER uid[:gid]",
          "CMD": 'write CMD ["prog", "arg"]', "ENTRYPOINT": 'write ENTRYPOINT ["prog"]',
          "LABEL": "write LABEL key=value", "ARG": "write ARG NAME or ARG NAME=default"}


def usage(keyword: str) -> str:
    """How to write ``keyword`` (for error messages)."""
    return _USAGE.get(keyword, "")


def exec_form(args: str) -> list[str] | None:
    """The JSON array of strings of an exec-form instruction (``["prog", "arg"]``), else None (Docker
    treats anything that is not such an array as the shell form).

    >>> exec_form('["sh", "-c", "echo hi"]'), exec_form("echo hi"), exec_form('["a", 1]')
    (['sh', '-c', 'echo hi'], None, None)
    """
    s = args.strip()
    if not s.startswith("["):
        return None
    try:
        v = json.loads(s)
    except ValueError:
        return None
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return v
    return None


def _subst(text: str, i: int, env: dict[str, str], where: str) -> tuple[str, int]:
    """The value of the variable reference at ``text[i] == '$'``, and the index after it."""
    if i + 1 < len(text) and text[i + 1] == "{":
        end = text.find("}", i + 2)
        if end < 0:
            raise _bad(where, f"unterminated ${{ in {text[:80]!r}", fix="close it with }")
        body = text[i + 2:end]
        m = _NAME.match(body)
        if not m:
            raise _bad(where, f"bad variable reference ${{{body[:40]}}}", fix=_REF_FIX)
        name, rest = m.group(0), body[m.end():]
        value = env.get(name)
        if rest == "":
            return value or "", end + 1
        if rest.startswith(":-"):
            return (value if value else "".join(words(rest[2:], env, where, split=False))), end + 1
        if rest.startswith(":+"):
            return ("".join(words(rest[2:], env, where, split=False)) if value else ""), end + 1
        raise _bad(where, f"bad variable reference ${{{body[:40]}}}", fix=_REF_FIX)
    m = _NAME.match(text, i + 1)
    if not m:
        return "$", i + 1
    return env.get(m.group(0), ""), m.end()


def words(text: str, env: dict[str, str], where: str, *, split: bool = True) -> list[str]:
    """``text`` as words, variables substituted, quotes and backslashes processed (Docker's shell-word
    rules for ENV, LABEL, COPY, ...). ``split=False``: one word, whitespace kept."""
    out: list[str] = []
    cur: list[str] = []
    have = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if split and c in " \t\n":
            if have:
                out.append("".join(cur))
                cur, have = [], False
            i += 1
            continue
        have = True
        if c == "'":
            j = text.find("'", i + 1)
            if j < 0:
                raise _bad(where, f"unterminated ' in {text[:80]!r}", fix="close the quote")
            cur.append(text[i + 1:j])
            i = j + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    raise _bad(where, f'unterminated " in {text[:80]!r}', fix="close the quote")
                d = text[i]
                if d == '"':
                    i += 1
                    break
                if d == "\\" and i + 1 < n and text[i + 1] in '"\\$':
                    cur.append(text[i + 1])
                    i += 2
                elif d == "$":
                    v, i = _subst(text, i, env, where)
                    cur.append(v)
                else:
                    cur.append(d)
                    i += 1
        elif c == "\\":
            if i + 1 < n:
                cur.append(text[i + 1])
            i += 2
        elif c == "$":
            v, i = _subst(text, i, env, where)
            cur.append(v)
        else:
            cur.append(c)
            i += 1
    if have:
        out.append("".join(cur))
    return out


def pairs(args: str, env: dict[str, str], where: str, keyword: str) -> list[tuple[str, str]]:
    """``KEY=value`` words of ENV and LABEL (``ENV KEY value...``: one pair, the rest is the value).

    >>> pairs('A=1 B="two words"', {}, "Labfile:2", "ENV")
    [('A', '1'), ('B', 'two words')]
    >>> pairs("A one two", {}, "Labfile:2", "ENV")
    [('A', 'one two')]
    """
    ws = words(args, env, where)
    if not ws:
        raise _bad(where, f"{keyword} needs KEY=value", fix=usage(keyword))
    if "=" not in ws[0]:
        if keyword != "ENV" or len(ws) < 2:
            raise _bad(where, f"{keyword} {ws[0][:40]!r} has no '='", fix=usage(keyword))
        return [(ws[0], " ".join(ws[1:]))]
    out = []
    for w in ws:
        k, sep, v = w.partition("=")
        if not sep or not k:
            raise _bad(where, f"{keyword} word {w[:40]!r} is not KEY=value", fix=usage(keyword))
        out.append((k, v))
    return out
