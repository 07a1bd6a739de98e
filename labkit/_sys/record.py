"""Records: classes of named fields that behave like (frozen) dataclasses but cost ~50x less to define.

labkit's public value types on the path of every ``labkit run`` (``Info``, ``Mount``, ``ContainerState``,
``Limits``, ``ImageConfig`` ...) were dataclasses. Defining a dataclass compiles its ``__init__``,
``__repr__``, ``__eq__`` (and, frozen, ``__setattr__``/``__hash__``) from source with ``exec``: 0.6-1.3 ms
each here, and ``import dataclasses`` loads ``inspect``, ``ast``, ``dis`` and ``tokenize`` (~8 ms) — together
~20 ms of a 150 ms command (docs/performance.md). A :class:`Record` subclass is defined in ~30 µs: its
methods are shared, generic ones that read the class's field table. No library fits instead: ``attrs``
generates code the same way and ``msgspec`` (C) imports ``typing_extensions``, hence ``inspect`` (18-26 ms).

What a record has, as a dataclass would: positional or keyword construction in field order, defaults and
:func:`field` (``default_factory``, ``init=False``), ``__post_init__``, ``__repr__``, ``__eq__`` (same
class, equal fields), ``__match_args__``; frozen (the default; ``class C(Record, frozen=False)`` for a
mutable one): assignment raises :class:`FrozenInstanceError` and ``__hash__`` hashes the fields.
:func:`asdict`, :func:`replace` and :func:`field_names` stand for ``dataclasses.asdict``/``replace``/
``fields``; :func:`asdict` also takes a dataclass. Type checkers see a record as a dataclass (PEP 681).

>>> class Point(Record):
...     x: int
...     y: int = 0
>>> p = Point(1)
>>> p, p == Point(1, 0), asdict(p), replace(p, y=2)
(Point(x=1, y=0), True, {'x': 1, 'y': 0}, Point(x=1, y=2))
>>> p.x = 5                          # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
...
labkit._sys.record.FrozenInstanceError: cannot assign to field 'x' of Point (a frozen record: use replace())
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, cast, dataclass_transform

__all__ = ["FrozenInstanceError", "Record", "asdict", "field", "field_names", "is_record", "is_structured",
           "replace"]

T = TypeVar("T")


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record (``dataclasses.FrozenInstanceError`` for records)."""


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class _Field:
    """What :func:`field` returns, replaced by the field's default (if any) once the class is made."""

    __slots__ = ("default", "default_factory", "init")

    def __init__(self, default: Any, default_factory: Any, init: bool) -> None:
        self.default, self.default_factory, self.init = default, default_factory, init


def field(*, default: Any = MISSING, default_factory: Callable[[], Any] | Any = MISSING, init: bool = True) -> Any:
    """A field's options, as ``dataclasses.field``: a ``default``, a ``default_factory`` called for every
    new record (mutable defaults), or ``init=False`` (set by ``__post_init__``).

    >>> class Box(Record):
    ...     items: list[int] = field(default_factory=list)
    >>> Box().items is Box().items
    False
    """
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("field() takes a default or a default_factory, not both")
    return _Field(default, default_factory, init)


def _is_classvar(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return getattr(annotation, "__origin__", None) is ClassVar or annotation is ClassVar


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
class Record:
    """Base class of a record: declare fields as class annotations (see the module docstring)."""

    #: field name -> (default, default_factory, init), in declaration order (base classes' first)
    __record_fields__: ClassVar[dict[str, tuple[Any, Any, bool]]] = {}
    __record_frozen__: ClassVar[bool] = True
    __match_args__: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, *, frozen: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if any(issubclass(b, Record) and b is not Record and b.__record_frozen__ != frozen for b in cls.__bases__):
            raise TypeError(f"{cls.__name__}: a frozen and a mutable record can't inherit from each other")
        spec: dict[str, tuple[Any, Any, bool]] = dict(cls.__record_fields__)
        # not inspect.get_annotations: importing inspect is what this module avoids (on Python >= 3.14, whose
        # class annotations are evaluated lazily, this would read annotationlib.get_annotations(cls) instead)
        for name, annotation in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
            if _is_classvar(annotation):
                continue
            value = cls.__dict__.get(name, MISSING)
            if isinstance(value, _Field):
                spec[name] = (value.default, value.default_factory, value.init)
                if value.default is MISSING:
                    delattr(cls, name)
                else:
                    setattr(cls, name, value.default)
            else:
                spec[name] = (value, MISSING, True)
        seen_default = None
        for name, (default, factory, init) in spec.items():
            if not init:
                continue
            if default is MISSING and factory is MISSING:
                if seen_default:
                    raise TypeError(f"{cls.__name__}: non-default field {name!r} follows default field "
                                    f"{seen_default!r}")
            else:
                seen_default = name
        cls.__record_fields__ = spec
        cls.__record_frozen__ = frozen
        setattr(cls, "__match_args__", tuple(n for n, (_, _, init) in spec.items() if init))  # noqa: B010 - a ClassVar
        if frozen:
            cls.__setattr__ = _frozen_setattr        # type: ignore[method-assign,assignment]
            cls.__delattr__ = _frozen_delattr        # type: ignore[method-assign,assignment]
        else:
            cls.__hash__ = None                      # type: ignore[assignment]   # as a mutable dataclass

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        spec = cls.__record_fields__
        names = cls.__match_args__
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes {len(names)} positional arguments but {len(args)} were given")
        values = self.__dict__
        for name, value in zip(names, args):
            values[name] = value
        for name, (default, factory, init) in spec.items():
            if name in values:
                if name in kwargs:
                    raise TypeError(f"{cls.__name__}() got multiple values for argument {name!r}")
                continue
            if init and name in kwargs:
                values[name] = kwargs[name]
            elif default is not MISSING:
                values[name] = default
            elif factory is not MISSING:
                values[name] = factory()
            elif init:
                raise TypeError(f"{cls.__name__}() missing required argument: {name!r}")
        bad = next((k for k in kwargs if k not in spec or not spec[k][2]), None)
        if bad is not None:
            raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {bad!r}")
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    def __repr__(self) -> str:
        values = self.__dict__
        inner = ", ".join(f"{n}={values[n]!r}" for n in type(self).__record_fields__ if n in values)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return _values(self) == _values(other)

    def __hash__(self) -> int:
        """The fields' hash (a frozen record; a mutable one is unhashable, as a mutable dataclass)."""
        return hash(_values(self))


def _values(r: Record) -> tuple[Any, ...]:
    d = r.__dict__
    return tuple(d.get(n, MISSING) for n in type(r).__record_fields__)


def _frozen_setattr(self: Record, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r} of {type(self).__name__} "
                              f"(a frozen record: use replace())")


def _frozen_delattr(self: Record, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r} of {type(self).__name__} (a frozen record)")


def is_record(obj: Any) -> bool:
    """True for a record or a record class.

    >>> is_record(Record), is_record(1)
    (True, False)
    """
    return isinstance(obj, Record) or (isinstance(obj, type) and issubclass(obj, Record))


def is_structured(obj: Any) -> bool:
    """True for a record or a dataclass instance (not a class): what :func:`asdict` turns into a dict.

    >>> is_structured(Record()), is_structured(Record), is_structured({})
    (True, False, False)
    """
    return not isinstance(obj, type) and (isinstance(obj, Record) or hasattr(type(obj), "__dataclass_fields__"))


def field_names(obj: Record | type[Record]) -> tuple[str, ...]:
    """The fields' names in order (``[f.name for f in dataclasses.fields(obj)]``)."""
    return tuple(obj.__record_fields__)


def replace(obj: T, **changes: Any) -> T:
    """A copy of ``obj`` with ``changes`` (``dataclasses.replace``; ``__post_init__`` runs again); a
    dataclass is handed to ``dataclasses.replace``."""
    cls: Any = type(obj)
    if not isinstance(obj, Record):
        if hasattr(cls, "__dataclass_fields__"):
            import dataclasses  # only when a dataclass is handed in (never on labkit run's path)
            return cast(T, dataclasses.replace(cast(Any, obj), **changes))
        raise TypeError(f"replace() takes a record or a dataclass, not {cls.__name__}")
    spec = cls.__record_fields__
    for k in changes:
        if k not in spec or not spec[k][2]:
            raise TypeError(f"{cls.__name__}: {k!r} is not a field that replace() can set")
    values = obj.__dict__
    kwargs = {n: changes.get(n, values[n]) for n, (_, _, init) in spec.items()
              if init and (n in changes or n in values)}
    return cast(T, cls(**kwargs))


def asdict(obj: Any) -> Any:
    """``obj`` as plain data: records (and dataclasses) become dicts, recursively through lists, tuples
    (named tuples stay named tuples) and dicts, as ``dataclasses.asdict`` does; anything else is returned
    as it is (not deep-copied).

    >>> class Pair(Record):
    ...     a: Any
    ...     b: Any = ()
    >>> asdict(Pair(Pair(1), [Pair(2)]))
    {'a': {'a': 1, 'b': ()}, 'b': [{'a': 2, 'b': ()}]}
    """
    if isinstance(obj, Record):
        values = obj.__dict__
        return {n: asdict(values[n]) for n in type(obj).__record_fields__ if n in values}
    if is_structured(obj):                # a dataclass instance (records were handled above)
        import dataclasses  # only when a dataclass is handed in (never on labkit run's path)
        return {f.name: asdict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*[asdict(v) for v in obj])
    if isinstance(obj, (list, tuple)):
        return type(obj)(asdict(v) for v in obj)
    if isinstance(obj, dict):
        return type(obj)((asdict(k), asdict(v)) for k, v in obj.items())
    return obj
