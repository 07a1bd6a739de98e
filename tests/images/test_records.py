"""The store's answers are frozen records of flat fields (a list of them is a table), and the lineage
arithmetic behind df() and tree() is right on plain data. No root needed."""
from __future__ import annotations

import typing

import pytest

from labkit._sys.record import FrozenInstanceError, asdict, field_names, is_record
from labkit.images import records
from labkit.images.lineage import df_rows, render_tree
from labkit.images.records import CheckReport, ImageConfig, PruneReport, Removal, RmiReport, TreeNode

FLAT = {str, int, float, bool, type(None), tuple[str, ...]}
#: the reports that hold per-image records, and the tree: the only nested ones
NESTED = {"RmiReport": {"removals"}, "PruneReport": {"removals"}, "TreeNode": {"children"}, "BuildResult": {"steps"}}


def _flat(tp) -> bool:
    if tp in FLAT:
        return True
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return all(_flat(a) for a in typing.get_args(tp))
    return False


@pytest.mark.parametrize("name", records.__all__)
def test_records_are_frozen_flat_and_documented(name) -> None:
    cls = getattr(records, name)
    assert is_record(cls) and cls.__record_frozen__ and cls.__doc__
    hints = typing.get_type_hints(cls)
    for f in field_names(cls):
        if f in NESTED.get(name, ()):
            continue
        assert _flat(hints[f]), f"{name}.{f}: {hints[f]}"


def test_a_list_of_records_is_a_table() -> None:
    pd = pytest.importorskip("pandas")
    rows = df_rows({"a" * 64: None}, {"a" * 64: 7}, {})
    df = pd.DataFrame([asdict(r) for r in rows])
    assert list(df.columns) == ["kind", "name", "snapshot", "total", "shared", "exclusive", "reclaimable"]
    rm = (Removal("a" * 64, "a" * 12, ("x:1",), 10), Removal("b" * 64, "b" * 12, (), 5))
    report = PruneReport(removals=rm)
    assert report.freed == 15 and report.deleted == ("a" * 64, "b" * 64)
    assert pd.DataFrame([asdict(r) for r in report.removals]).freed.sum() == 15
    assert RmiReport("x:1", "a" * 64, ("x:1",), rm[:1], ()).freed == 10
    with pytest.raises(FrozenInstanceError):
        report.removals = ()        # type: ignore[misc]


def test_df_rows_shared_exclusive_reclaimable() -> None:
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    parent = {a: None, b: a, c: a}
    layer = {a: 100, b: 10, c: 20}
    rows = {r.name: r for r in df_rows(parent, layer, {b: [("web", "ctr-web", 5)]})}
    assert (rows[a[:12]].total, rows[a[:12]].shared, rows[a[:12]].reclaimable) == (100, 100, 0)
    # b is in web's chain too: shared; c alone: its layer is exclusive and reclaimable
    assert (rows[b[:12]].total, rows[b[:12]].shared, rows[b[:12]].reclaimable) == (110, 110, 0)
    assert (rows[c[:12]].total, rows[c[:12]].exclusive, rows[c[:12]].reclaimable) == (120, 20, 20)
    assert (rows["web"].total, rows["web"].exclusive, rows["web"].kind) == (115, 5, "container")


def test_render_tree() -> None:
    leaf = TreeNode("c" * 64, "c" * 12, (), None, 1, "z", (), ())
    mid = TreeNode("b" * 64, "b" * 12, ("app:1",), 5, 5, "y", ("web",), ())
    text = render_tree([TreeNode("a" * 64, "a" * 12, (), 10, 10, "x", (), (mid, leaf))])
    assert text.splitlines() == ["aaaaaaaaaaaa <none> size=10 exclusive=10",
                                 "├─ bbbbbbbbbbbb app:1 size=5 exclusive=5 containers=web",
                                 "└─ cccccccccccc <none> size=? exclusive=1"]


def test_image_config_from_hostile_json() -> None:
    cfg = ImageConfig.from_oci({"Env": ["A=1", 3, None], "Cmd": "sh -c x", "Entrypoint": [["nested"]],
                                "WorkingDir": 7, "User": "nobody", "Labels": {"k": "v", "n": 1, 2: "x"}})
    assert cfg == ImageConfig(env=("A=1",), user="nobody", labels=("k=v",))
    assert ImageConfig.from_json(cfg.to_json()) == cfg and ImageConfig.from_oci(None) == ImageConfig()


def test_check_report_rows() -> None:
    r = CheckReport(("p1", "p2"), ("removed x", "not repaired (remove y): busy"))
    assert not r.ok and r.unrepaired == ("p2",) and dict(r.rows())["p1"] == "removed x"
    assert CheckReport().ok
