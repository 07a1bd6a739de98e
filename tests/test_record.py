"""labkit._sys.record behaves as a dataclass does where labkit relies on it: construction (positional,
keyword, defaults, factories, init=False with __post_init__), errors a dataclass raises, equality, hashing,
frozenness, pickling and copying (dask ships records between processes), replace/asdict/field_names.
Each check is made against a real dataclass of the same shape. No root needed."""
from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from labkit._sys.record import FrozenInstanceError, Record, asdict, field, field_names, is_record, replace


class Point(Record):
    x: int
    y: int = 0
    tags: list[str] = field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class DPoint:
    x: int
    y: int = 0
    tags: list[str] = dataclasses.field(default_factory=list)


class Cell(Record, frozen=False):
    id: str
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"labkit/{self.id}"


class Pair(Record):
    a: Point
    b: tuple[Point, ...] = ()


def test_construction_matches_a_dataclass() -> None:
    for cls in (Point, DPoint):
        assert (cls(1).x, cls(1).y, cls(1).tags) == (1, 0, [])
        assert cls(1, 2, ["t"]).tags == ["t"] and cls(x=3, y=4).y == 4
        assert cls(1).tags is not cls(1).tags                       # a factory per record
        with pytest.raises(TypeError):
            cls()                                                    # type: ignore[call-arg]
        with pytest.raises(TypeError):
            cls(1, 2, [], 4)                                         # type: ignore[call-arg]
        with pytest.raises(TypeError):
            cls(1, x=1)                                              # type: ignore[misc]
        with pytest.raises(TypeError):
            cls(1, z=1)                                              # type: ignore[call-arg]
    assert repr(Point(1)) == repr(DPoint(1)).replace("DPoint", "Point")
    assert Point.__match_args__ == DPoint.__match_args__ == ("x", "y", "tags")


def test_equality_hash_and_frozenness() -> None:
    assert Point(1) == Point(1, 0, []) and Point(1) != Point(2)
    assert Point(1) != DPoint(1) and Point(1) != (1, 0, [])           # another class is never equal
    assert hash(Pair(Point(1, tags=None))) == hash(Pair(Point(1, tags=None)))   # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hash(Point(1))                                               # a list field: unhashable, as a dataclass
    with pytest.raises(FrozenInstanceError):
        Point(1).x = 2                                               # type: ignore[misc]
    with pytest.raises(AttributeError):                              # FrozenInstanceError is an AttributeError
        del Point(1).x                                               # type: ignore[misc]
    c = Cell("a")
    assert c.name == "labkit/a" and Cell.__hash__ is None
    c.id = "b"
    assert c.id == "b" and c != Cell("a")
    with pytest.raises(TypeError):
        Cell("a", name="x")                                          # type: ignore[call-arg]


def test_definition_errors() -> None:
    with pytest.raises(TypeError, match="non-default field 'b' follows default field 'a'"):
        class Bad(Record):
            a: int = 0
            b: int
    with pytest.raises(TypeError, match="frozen and a mutable"):
        class Mixed(Point, frozen=False):
            z: int = 0
    with pytest.raises(ValueError):
        field(default=1, default_factory=list)


def test_inheritance_adds_fields_after_the_base() -> None:
    class Point3(Point):
        z: int = 0
    assert field_names(Point3) == ("x", "y", "tags", "z") and Point3(1, z=3) == Point3(1, 0, [], 3)


def test_pickle_copy_replace_asdict() -> None:
    p = Pair(Point(1, 2, ["t"]), (Point(3),))
    for clone in (pickle.loads(pickle.dumps(p)), copy.copy(p), copy.deepcopy(p)):
        assert clone == p
    assert replace(p.a, y=5) == Point(1, 5, ["t"]) and replace(DPoint(1), y=5) == DPoint(1, 5)
    with pytest.raises(TypeError):
        replace(p.a, nope=1)
    assert replace(Cell("a"), id="b").name == "labkit/b"             # __post_init__ runs again
    assert asdict(p) == {"a": {"x": 1, "y": 2, "tags": ["t"]}, "b": ({"x": 3, "y": 0, "tags": []},)}
    assert asdict(DPoint(1)) == dataclasses.asdict(DPoint(1))
    assert field_names(p) == ("a", "b") and is_record(p) and is_record(Pair) and not is_record(DPoint(1))

