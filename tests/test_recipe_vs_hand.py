"""The recipe-vs-hand experiment: one small application made by hand (sh in a container of busybox, the
commands typed into it, commit) and by a Labfile built with Lab.build, then one line changed both ways — in
real Labs, checking what each way leaves: the steps that ran, the lineage, the images and space in the store,
and whether the history says how the image was made.
"""
from __future__ import annotations

import difflib
import itertools
import os

import pandas as pd
import pytest

from labkit import Lab, errors
from labkit.experiments import framework
from labkit.experiments import recipe_vs_hand as rvh
from labkit.experiments.common import store_options
from labkit.images.recipe import parse

COLUMNS = ["method", "phase", "seconds", "steps", "steps_run", "images_in_store", "bytes_stored", "bytes_added",
           "chain_depth", "explainable", "runs"]
MiB = 1 << 20


def test_registered_with_the_framework() -> None:
    exp = framework.get("recipe-vs-hand")
    assert [p.name for p in exp.params] == ["backend", "change", "data"]
    assert exp.param("backend").default == ["overlay"] and exp.param("change").sweep
    assert exp.param("change").choices == rvh.CHANGES == ("app", "dependency")
    assert set(COLUMNS) <= set(exp.columns) and "recipe-vs-hand" in exp.describe()


def _changed(a: str, b: str) -> list[str]:
    return [d for d in difflib.ndiff(a.splitlines(), b.splitlines()) if d[:1] in "+-"]


def test_the_recipe_is_the_hand_session_written_down(tmp_path) -> None:
    typed = rvh.session(MiB)
    runs = [i.args for i in parse(rvh.labfile(1, MiB), "Labfile") if i.keyword == "RUN"]
    assert runs[0] == typed[1] == rvh.install_command(1, MiB)          # the same install line both ways
    assert "count=16 " in typed[1] and "count=1 " in rvh.install_command(1, 1)     # whole 64 KiB blocks, at least one
    # a change is one line of one file, both ways
    assert len(_changed(rvh.labfile(1, MiB), rvh.labfile(2, MiB))) == 2
    assert len(_changed(rvh.app_script(1), rvh.app_script(2))) == 2
    assert rvh.change_session("dependency", MiB) == [rvh.install_command(2, MiB)]
    with pytest.raises(errors.InvalidArgument, match="choose one of app, dependency"):
        rvh.change_session("os", MiB)
    with pytest.raises(errors.InvalidArgument, match="is not allowed"):
        framework.run("recipe-vs-hand", repeat=1, root=str(tmp_path), progress=False, change="os")
    # the context is written in its directory, never through a symlink planted there
    ctx = tmp_path / "app"
    ctx.mkdir()
    (ctx / "app.sh").symlink_to(tmp_path / "victim")
    with pytest.raises(OSError):
        rvh.write_context(str(ctx))
    assert not (tmp_path / "victim").exists()


@pytest.mark.root
def test_one_trial_of_each_change_on_overlay(tmp_path) -> None:
    df = framework.run("recipe-vs-hand", repeat=1, root=str(tmp_path), progress=False, backend="overlay",
                       change=["app", "dependency"], data="256K")
    assert not os.listdir(tmp_path)                                     # both scratch stores removed
    d = df[~df.warmup]
    assert set(COLUMNS) <= set(d.columns) and len(d) == 2 * 6
    assert set(zip(d.method, d.phase)) == set(itertools.product(rvh.METHODS, rvh.PHASES))
    assert d.runs.all() and d[d.method == "recipe"].explainable.all() and not d[d.method == "hand"].explainable.any()
    for change, rerun, images in (("app", 3, 10), ("dependency", 4, 11)):
        t = d[d.change == change].set_index(["method", "phase"])
        _check(t, rerun, images, data=256 << 10, dependency=change == "dependency")


def _check(t, rerun: int, images: int, *, data: int, dependency: bool) -> None:
    hand, recipe = t.loc["hand"], t.loc["recipe"]
    assert (hand.steps == hand.steps_run).all() and list(hand.steps) == [5, 1, 0]       # typed; nothing cached
    assert list(recipe.steps) == [7, 7, 0] and list(recipe.steps_run) == [6, rerun, 0]  # FROM from the store
    assert list(hand.chain_depth) == [2, 3, 3] and list(recipe.chain_depth) == [7, 7, 7]
    assert list(hand.images_in_store) == [2, 3, 3] and list(recipe.images_in_store) == [7, images, 7]
    left = recipe.bytes_added["after prune"] - recipe.bytes_added["first build"]
    kept = hand.bytes_added["after prune"] - hand.bytes_added["first build"]
    # prune takes the recipe's store back to one version: less than the dependency's size away from the first
    # build (thin counts 64 KiB blocks, and ext4's own metadata there moves by a block or two: 128 KiB was seen)
    assert abs(left) < data, left
    if dependency:
        assert kept >= data, kept                       # the hand chain keeps both versions of the dependency
    assert (t.seconds > 0).all()


@pytest.mark.root
def test_one_trial_on_thin(tmp_path) -> None:
    data = 256 << 10
    opts = store_options("thin", 32 * MiB + 4 * data)
    with Lab(str(tmp_path / "hand"), "thin", **opts) as hand, Lab(str(tmp_path / "recipe"), "thin", **opts) as recipe:
        try:
            for lab in (hand, recipe):
                lab.import_image("busybox", tag="busybox")
            rows = rvh.trial(hand, recipe, change="dependency", data=data, context=str(tmp_path / "app"))
            t = pd.DataFrame(rows).set_index(["method", "phase"])
            assert t.runs.all()
            _check(t, 4, 11, data=data, dependency=True)
            # a hand commit records the files, not how to start them; the recipe's CMD and ENV are in the image
            with pytest.raises(errors.InvalidArgument, match="has no command"):
                hand.run("app:latest", rm=True)
            assert recipe.run("app:latest", rm=True).output.strip() == rvh.expected_output(1, 2)
            assert "APP_CONF=/app/app.conf" in recipe.inspect("app:latest")["env"]
            history = recipe.history("app:latest")
            assert list(history.created_by[:3]) == ['CMD ["/app/app.sh"]', "RUN chmod 755 app.sh",
                                                    "COPY app.conf app.sh /app/"]
            assert set(hand.history("app:latest").created_by[:-1]) == {"sh"}
        finally:
            hand.reset()
            recipe.reset()
