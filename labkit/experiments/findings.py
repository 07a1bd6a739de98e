"""What an experiment's DataFrame says, for people: a small table in human units, the finding in a sentence
with its numbers, and what the experiment measures and why the result comes out as it does — in English
and Japanese. The report (``notebooks/report.ipynb``) and :class:`labkit.widgets.ExperimentPanel` use it.

Every function takes the experiment's tidy DataFrame (warm-up rows are dropped here) and never raises on
a partial one (a backend missing, one repetition): a finding it cannot compute says so in words.

>>> import pandas as pd
>>> df = pd.DataFrame({"block_bytes": [65536, 1 << 20], "repeat": [1, 1], "warmup": [False, False],
...                    "writes": [50, 50], "seconds_per_write": [4e-5, 9e-4],
...                    "bytes_exclusive": [3 << 20, 34 << 20], "metadata_blocks": [40, 8],
...                    "data_blocks": [1100, 100], "bytes_used": [70 << 20, 100 << 20]})
>>> table("block-size", df).columns.tolist()
['block size', 'one 4 KiB write', 'snapshot owns', 'metadata blocks', 'pool data used']
>>> finding("block-size", df)
'50 scattered 4 KiB writes leave a snapshot owning 3 MiB with 64 KiB blocks and 34 MiB with 1 MiB blocks (11×); ...'
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, cast

import pandas as pd

from ..plots import format_seconds
from ..units import format_size
from .cli_latency import ratios

__all__ = ["TITLES", "ABOUT", "WHY", "table", "finding", "conclusion", "about", "title", "sentence_or_none"]

LANGS = ("en", "ja")

#: a section heading per experiment
TITLES: dict[str, dict[str, str]] = {
    "snapshot-time": {"en": "Snapshot time against image size", "ja": "イメージサイズとスナップショットの時間"},
    "space-vs-containers": {"en": "Space as containers write", "ja": "コンテナが書き込むときの容量"},
    "cow-penalty": {"en": "The price of the first write (copy-on-write)", "ja": "最初の書き込みの値段（コピーオンライト）"},
    "commit-cost": {"en": "What a commit costs", "ja": "コミットのコスト"},
    "block-size": {"en": "The thin pool's block size", "ja": "シンプールのブロックサイズ"},
    "pool-exhaustion": {"en": "An over-committed pool runs out", "ja": "オーバーコミットしたプールが尽きるとき"},
    "thin-io": {"en": "I/O through the thin device", "ja": "シンデバイスの I/O 性能"},
    "start-latency": {"en": "Container start latency", "ja": "コンテナの起動時間"},
    "image-sprawl": {"en": "Image sprawl: ad-hoc commits", "ja": "イメージの乱立：場当たり的なコミット"},
    "cli-latency": {"en": "A whole `labkit run` against podman and runc", "ja": "labkit run 全体の時間：podman・runc との比較"},
}


def title(name: str, lang: str = "en") -> str:
    """A section heading for experiment ``name``."""
    return TITLES.get(name, {}).get(lang, name)

#: what each experiment measures, in a few lines
ABOUT: dict[str, dict[str, str]] = {
    "snapshot-time": {
        "en": "How long a container's snapshot takes to prepare and mount, against the size of its image. "
              "Each backend gets images of every size; each repetition times prepare, mount, a first 4 KiB write, "
              "unmount, commit and remove separately (the table shows prepare + mount).",
        "ja": "コンテナ用スナップショットの作成（prepare）とマウントにかかる時間を、元イメージのサイズごとに測ります。"
              "各バックエンドで各サイズのイメージを作り、prepare・mount・最初の 4 KiB 書き込み・unmount・commit・remove "
              "をそれぞれ計時します（表は prepare + mount の合計）。"},
    "space-vs-containers": {
        "en": "How much the store grows as containers of one image each write a file: the store's space is "
              "measured the backend's own way after every container.",
        "ja": "1 つのイメージから起動したコンテナがそれぞれファイルを書いたとき、ストアがどれだけ増えるかを測ります。"
              "コンテナを 1 つ増やすごとに、バックエンド自身の方法でストアの使用量を測ります。"},
    "cow-penalty": {
        "en": "What the first write into a file inherited from the image costs (it breaks sharing: a whole file "
              "for overlayfs, an extent for btrfs and reflink, a block for thin) against rewriting the same bytes.",
        "ja": "イメージから受け継いだファイルへの最初の書き込み（共有を解く：overlayfs はファイル全体、btrfs と reflink は"
              "エクステント、thin はブロック単位でコピー）のコストを、同じ場所への 2 回目の書き込みと比べます。"},
    "commit-cost": {
        "en": "How long a commit takes and how many bytes the new image adds, against how much the container "
              "changed (files of realistic sizes written on top of an image).",
        "ja": "コンテナが変更した量（現実的なサイズのファイル群）に対して、コミットにかかる時間と新しいイメージが"
              "追加するバイト数を測ります。"},
    "block-size": {
        "en": "The thin pool's block size traded off: what a 4 KiB write that breaks sharing costs, how much a "
              "snapshot owns after scattered writes, and how much metadata the pool keeps (labkit's pool "
              "in-process, no FUSE).",
        "ja": "シンプールのブロックサイズのトレードオフ：共有を解く 4 KiB 書き込みのコスト、散らばった書き込みの後に"
              "スナップショットが専有する容量、プールのメタデータ量を測ります（labkit のプールをプロセス内で使用）。"},
    "pool-exhaustion": {
        "en": "Thin devices that together promise far more than the pool holds (over-commit) write until the "
              "pool is full. Afterwards: is the image intact, and is the pool's metadata consistent?",
        "ja": "プールの実容量をはるかに超える容量を約束したシンデバイス（オーバーコミット）が、プールが満杯になるまで"
              "書き込みます。その後、イメージは無事か、プールのメタデータは整合しているかを確かめます。"},
    "thin-io": {
        "en": "Throughput of ext4 on a thin device (labkit's FUSE daemon behind a loop device) against ext4 on "
              "a plain loop file, in the same run: sequential write, sequential read (O_DIRECT), random 4 KiB writes.",
        "ja": "シンデバイス（ループデバイスの背後に labkit の FUSE デーモン）上の ext4 と、普通のループファイル上の ext4 の"
              "スループットを同じ実行の中で比べます：順次書き込み、順次読み出し（O_DIRECT）、ランダム 4 KiB 書き込み。"},
    "start-latency": {
        "en": "Start to exit of /bin/true in a busybox root filesystem without network, for labkit's runtime and "
              "the OCI runtimes installed here (runc, crun).",
        "ja": "ネットワークなしの busybox ルートファイルシステムで /bin/true を起動して終了するまでの時間を、labkit の"
              "ランタイムとこのマシンの OCI ランタイム（runc, crun）で比べます。"},
    "cli-latency": {
        "en": "The whole process of `labkit run --rm busybox true` (on overlay and on thin), start to exit, against "
              "`podman run --rm` and `runc run` of the same busybox root filesystem, in paired rounds: each round runs "
              "every command once, in turn, so a ratio compares runs seconds apart.",
        "ja": "`labkit run --rm busybox true` のプロセス全体（overlay と thin）の開始から終了までの時間を、同じ busybox "
              "ルートファイルシステムでの `podman run --rm` と `runc run` と比べます。各ラウンドで全コマンドを順に 1 回ずつ"
              "実行するので、比は数秒以内に測った実行どうしの比較です。"},
    "image-sprawl": {
        "en": "A chain of ad-hoc commits, each rewriting the same file, against the same result committed once; "
              "then what removing the result's tag and pruning gives back.",
        "ja": "同じファイルを書き換えるたびにコミットした場当たり的なイメージの連鎖と、同じ結果を 1 回でコミットした場合を"
              "比べ、結果のタグを外して prune したときに戻る容量を測ります。"},
}

#: why the result comes out as it does (the mechanism), appended to the finding in a section's conclusion
WHY: dict[str, dict[str, str]] = {
    "snapshot-time": {
        "en": "A thin snapshot copies no data: it shares the origin's block-mapping tree and bumps one reference "
              "count, so its cost does not depend on the image's size; overlayfs and btrfs likewise only record a "
              "new layer or subvolume. A full copy reads and writes every byte of the image.",
        "ja": "シン・スナップショットはデータをコピーせず、元デバイスのブロック対応表（木）を共有して参照カウントを 1 つ"
              "増やすだけなので、イメージのサイズに左右されません。overlayfs と btrfs も新しいレイヤーやサブボリュームを"
              "記録するだけです。フルコピーはイメージの全バイトを読んで書きます。"},
    "space-vs-containers": {
        "en": "Copy-on-write stores keep one copy of the image and give each container only the blocks or files "
              "it writes; a plain copy gives every container the whole image first.",
        "ja": "コピーオンライトのストアはイメージを 1 つだけ持ち、各コンテナには書き込んだブロックやファイルだけを"
              "割り当てます。単純なコピーは、まずコンテナごとにイメージ全体を複製します。"},
    "cow-penalty": {
        "en": "The granularity of copy-on-write decides the first write's price: overlayfs copies the whole file "
              "up before the first byte changes, btrfs and reflink copy an extent, thin copies one pool block. "
              "Once private, a rewrite costs the same everywhere.",
        "ja": "最初の書き込みの値段はコピーオンライトの粒度で決まります。overlayfs は 1 バイト変えるだけでもファイル全体を"
              "コピーアップし、btrfs と reflink はエクステント、thin はプールのブロック 1 つをコピーします。いったん専有に"
              "なれば、2 回目以降の書き込みはどれも同じです。"},
    "commit-cost": {
        "en": "No backend copies data at commit: each freezes the container's snapshot where it is (copy and "
              "reflink relabel a directory, overlay keeps the upper directory as a layer, btrfs makes its "
              "subvolume read-only, thin marks the device), so the time is bookkeeping and a flush rather than "
              "the amount. The new image's own bytes are about what was changed, rounded up to the backend's "
              "unit; copy counts its whole private copy, the image's files included.",
        "ja": "コミットでデータをコピーするバックエンドはありません。どれもコンテナのスナップショットをその場で凍結する"
              "だけです（copy と reflink はディレクトリの印を付け替え、overlay は上位ディレクトリをレイヤーとして残し、"
              "btrfs はサブボリュームを読み取り専用にし、thin はデバイスに印を付けます）。そのため時間を決めるのは量"
              "ではなく、記録の更新と書き出しです。新しいイメージ自身の容量はおおよそ変更量で、バックエンドの単位に"
              "切り上がります。copy はイメージのファイルを含む自分の複製全体を数えます。"},
    "block-size": {
        "en": "A write smaller than a block still copies the whole block, so big blocks make scattered writes "
              "expensive in space (and in time per write); small blocks need more mapping entries, i.e. more "
              "metadata. Docker's devicemapper used 64 KiB blocks.",
        "ja": "ブロックより小さな書き込みでもブロック全体がコピーされるので、ブロックが大きいと散らばった書き込みの"
              "容量（と 1 回あたりの時間）が高くつきます。ブロックが小さいと対応表の項目が増え、メタデータが増えます。"
              "Docker の devicemapper は 64 KiB ブロックでした。"},
    "pool-exhaustion": {
        "en": "Over-commit is a promise the pool cannot keep once the containers really write. When it runs out, "
              "a write that needs a block fails at once (error_if_no_space): ENOSPC, or EIO when ext4 meets the "
              "failure while writing back. Committed blocks — the image — are never touched, and the metadata's "
              "two-phase commit keeps the pool consistent.",
        "ja": "オーバーコミットは、コンテナが実際に書き始めると守れない約束です。容量が尽きると、ブロックを必要とする"
              "書き込みはすぐに失敗します（error_if_no_space）。見えるのは ENOSPC か、ext4 が書き戻しの途中で失敗に"
              "出会った場合は EIO です。コミット済みのブロック（イメージ）には触れず、メタデータの 2 段階コミットが"
              "プールの整合性を保ちます。"},
    "thin-io": {
        "en": "Both targets are ext4 on a loop device. Writes go through the FUSE daemon written in Python, which "
              "stores them in the pool; warm reads come from the page cache of the loop device's backing file, which "
              "the kernel keeps in 4 KiB pages for the thin device's FUSE file and in large folios for a plain ext4 "
              "file (the backing_folio_kib column): that, not the daemon, is what slows thin's reads.",
        "ja": "どちらもループデバイス上の ext4 です。書き込みは Python で書かれた FUSE デーモンを通ってプールに保存されます。"
              "キャッシュが温まった読み出しはループデバイスの裏のファイルのページキャッシュから来ますが、カーネルはシンデバイスの "
              "FUSE ファイルを 4 KiB ページで、普通の ext4 ファイルを大きな folio で保持します（backing_folio_kib 列）。"
              "シンの読み出しを遅くしているのはデーモンではなくこの差です。"},
    "start-latency": {
        "en": "A start is a few forks, unshare, pivot_root and exec; the differences are the runtime's own work "
              "(reading an OCI bundle, cgroups) and the cost of forking from a large process.",
        "ja": "起動は数回の fork、unshare、pivot_root、exec です。差はランタイム自身の仕事（OCI バンドルの読み込み、cgroup）"
              "と、大きなプロセスから fork するコストから来ます。"},
    "cli-latency": {
        "en": "A short command's time is mostly its program's start: the Python interpreter and the modules a verb "
              "imports (labkit), four processes of Go programs (podman), one binary (runc). Starting the container "
              "itself is the smaller part (see the start latency section).",
        "ja": "短いコマンドの時間の大半はプログラム自体の起動です：Python インタプリタとコマンドが読み込むモジュール"
              "（labkit）、Go で書かれた 4 つのプロセス（podman）、1 つのバイナリ（runc）。コンテナ自体の起動は小さい"
              "部分です（起動時間の節を参照）。"},
    "image-sprawl": {
        "en": "Every commit keeps its layer for ever: a file rewritten in each step is stored once per step, and "
              "hidden by the next. Recording the steps once (a recipe, a Dockerfile) keeps only the result; prune "
              "can reclaim the chain only once nothing is tagged or running on it.",
        "ja": "コミットしたレイヤーは消えません。毎回書き換えたファイルは手順の数だけ保存され、次の層に隠されます。"
              "手順を 1 回にまとめて記録すれば（レシピ、Dockerfile）結果だけが残ります。prune が連鎖を回収できるのは、"
              "タグも実行中のコンテナもなくなってからです。"},
}


def about(name: str, lang: str = "en") -> str:
    """What experiment ``name`` measures."""
    return ABOUT.get(name, {}).get(lang, "")


# ---- helpers ------------------------------------------------------------------------------------------------

def _kept(df: pd.DataFrame) -> pd.DataFrame:
    """Rows without the warm-up (all rows when only warm-ups exist)."""
    if "warmup" not in df or not len(df):
        return df
    d = df[~df.warmup.astype(bool)]
    return d if len(d) else df


def _sz(n: Any) -> str:
    return "–" if n is None or (isinstance(n, float) and math.isnan(n)) else format_size(round(float(n)))


def _a(size_text: str) -> str:
    """The English article before a size: "an 8 MiB image", "a 16 MiB image"."""
    return "an" if size_text[:1] == "8" or size_text[:2] in ("11", "18") else "a"


def _t(s: Any) -> str:
    return format_seconds(float(s))


def _about(s: float) -> str:
    """Seconds to two significant digits, for "about ..."."""
    text = format_seconds(float(s))
    number, unit = text.split(" ")
    v = float(number)
    return f"{float(f'{v:.2g}'):g} {unit}"


def _times(x: float, lang: str = "en") -> str:
    """A ratio as people say it: 20×, 2.5×, 1.1× (ja: 20 倍)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    n = f"{x:.0f}" if x >= 10 else f"{x:.1f}"
    return f"{n} 倍" if lang == "ja" else f"{n}×"


def _and(items: list[str], lang: str) -> str:
    if lang == "ja":
        return "、".join(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _yes(v: Any, lang: str = "en") -> str:
    return ("はい" if v else "いいえ") if lang == "ja" else ("yes" if v else "no")


# ---- tables ---------------------------------------------------------------------------------------------------

def _snapshot_medians(df: pd.DataFrame) -> pd.DataFrame:
    d = _kept(df)
    d = d[d.phase.isin(["prepare", "mount"])]
    per = d.groupby(["backend", "parent_bytes", "repeat"]).seconds.sum().reset_index()
    return per.groupby(["backend", "parent_bytes"]).seconds.median().unstack("parent_bytes")


def _table_snapshot_time(df: pd.DataFrame) -> pd.DataFrame:
    m = _snapshot_medians(df)
    out = pd.DataFrame({"backend": m.index})
    for size in m.columns:
        out[f"{_sz(size)} image"] = [_t(v) for v in m[size]]
    if len(m.columns) > 1:
        out["largest / smallest"] = [_times(a / b) if b > 0 else "–" for a, b in zip(m[m.columns[-1]], m[m.columns[0]])]
    return out


def _rows(m: pd.DataFrame) -> Iterator[tuple[Any, pd.Series]]:
    """``m.iterrows()``, the row labels typed as what they are here: a name, or a tuple of index levels."""
    return cast("Iterator[tuple[Any, pd.Series]]", m.iterrows())


def _space_last(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    d = _kept(df)
    n = d.containers.max()
    return d[d.containers == n].groupby("backend").agg(added=("bytes_added", "median"),
                                                       exclusive=("bytes_exclusive", "median")), int(n)


def _table_space(df: pd.DataFrame) -> pd.DataFrame:
    last, n = _space_last(df)
    write = int(df["write"].iloc[0]) if "write" in df else None
    return pd.DataFrame({"backend": last.index, "containers": n,
                         "they wrote": _sz(n * write) if write else "–",
                         "space added": [_sz(v) for v in last.added],
                         "per container": [_sz(v / max(n, 1)) for v in last.added]})


def _table_cow(df: pd.DataFrame) -> pd.DataFrame:
    d = _kept(df)
    m = d.groupby(["backend", "write_bytes", "phase"]).seconds.median().unstack("phase")
    rows = []
    for (backend, size), r in _rows(m):
        first, again = r.get("first_write", float("nan")), r.get("rewrite", float("nan"))
        rows.append({"backend": backend, "write": _sz(size), "first write": _t(first), "rewrite": _t(again),
                     "first / rewrite": _times(first / again) if again and again > 0 else "–"})
    return pd.DataFrame(rows)


def _table_commit(df: pd.DataFrame) -> pd.DataFrame:
    d = _kept(df)
    m = d.groupby(["backend", "changed_bytes"]).agg(seconds=("seconds", "median"), added=("bytes_added", "median"))
    return pd.DataFrame([{"backend": b, "changed": _sz(c), "commit time": _t(r.seconds), "image adds": _sz(r.added)}
                         for (b, c), r in _rows(m)])


def _table_block_size(df: pd.DataFrame) -> pd.DataFrame:
    d = _kept(df)
    m = d.groupby("block_bytes")[["seconds_per_write", "bytes_exclusive", "metadata_blocks", "bytes_used"]].median()
    return pd.DataFrame({"block size": [_sz(b) for b in m.index],
                         "one 4 KiB write": [_t(v) for v in m.seconds_per_write],
                         "snapshot owns": [_sz(v) for v in m.bytes_exclusive],
                         "metadata blocks": [f"{v:.0f}" for v in m.metadata_blocks],
                         "pool data used": [_sz(v) for v in m.bytes_used]})


def _table_pool(df: pd.DataFrame) -> pd.DataFrame:
    d = _kept(df)
    return pd.DataFrame({"run": d.repeat.astype(int), "container": d.container.astype(int),
                         "wrote before the error": [_sz(v) for v in d.bytes_written],
                         "error": d.error.fillna("").replace("", "–"),
                         "image intact": [_yes(v) for v in d.image_intact],
                         "pool check clean": [_yes(v) for v in d.pool_ok_after]}).reset_index(drop=True)


def _io_medians(df: pd.DataFrame) -> pd.DataFrame:
    m = _kept(df).groupby(["op", "target"]).mib_per_s.median().unstack("target")
    order = [o for o in ("seq_write", "seq_read", "rand_write_4k") if o in m.index]
    return m.loc[order + [o for o in m.index if o not in order]]


def _table_thin_io(df: pd.DataFrame) -> pd.DataFrame:
    m = _io_medians(df)
    out = pd.DataFrame({"operation": [o.replace("_", " ") for o in m.index]})
    for target in m.columns:
        out[f"{target} MiB/s"] = [f"{v:.0f}" for v in m[target]]
    if {"thin", "loop"} <= set(m.columns):
        out["thin / loop"] = [f"{a / b:.2f}" if b else "–" for a, b in zip(m.thin, m.loop)]
    return out


def _table_start(df: pd.DataFrame) -> pd.DataFrame:
    d = _kept(df)
    d = d[d.seconds.notna()]
    g = d.groupby("runtime").seconds
    out = pd.DataFrame({"runtime": list(g.groups), "runs": [int(v) for v in g.count()],
                        "median": [_t(v) for v in g.median()], "25 %": [_t(v) for v in g.quantile(0.25)],
                        "75 %": [_t(v) for v in g.quantile(0.75)]})
    skipped = df.attrs.get("skipped") or {}
    for name, why in skipped.items():
        out.loc[len(out)] = [name, 0, "not run", "", str(why)[:60]]
    return out


def _table_sprawl(df: pd.DataFrame) -> pd.DataFrame:
    d = _kept(df)
    m = d.groupby(["backend", "approach"])[["images", "bytes_total", "bytes_freed"]].median()
    return pd.DataFrame([{"backend": b, "approach": a, "images": int(r.images),
                          "size above the base": _sz(r.bytes_total), "freed by rmi + prune": _sz(r.bytes_freed)}
                         for (b, a), r in _rows(m)])


def _table_cli(df: pd.DataFrame) -> pd.DataFrame:
    r = ratios(df)
    has = "vs_podman" in r
    out = pd.DataFrame({"command": [_PEER_COMMAND.get(p, p) for p in r.index],
                        "runs": [int(v) if v == v else 0 for v in r["count"]],
                        "median": [_t(v) for v in r["50%"]], "25 %": [_t(v) for v in r["25%"]],
                        "75 %": [_t(v) for v in r["75%"]],
                        "× podman (paired)": [f"{v:.2f}" if has and v == v else "" for v in
                                              (r["vs_podman"] if has else [float("nan")] * len(r))]})
    for name, why in (df.attrs.get("skipped") or {}).items():
        if _PEER_COMMAND.get(name, name) not in set(out.command):
            out.loc[len(out)] = [_PEER_COMMAND.get(name, name), 0, "not run", "", str(why)[:60], ""]
    return out


_PEER_COMMAND = {"labkit": "labkit run --rm (overlay)", "labkit-thin": "labkit run --rm (thin)",
                 "podman": "podman run --rm", "runc": "runc run"}


TABLES: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "snapshot-time": _table_snapshot_time, "space-vs-containers": _table_space, "cow-penalty": _table_cow,
    "commit-cost": _table_commit, "block-size": _table_block_size, "pool-exhaustion": _table_pool,
    "thin-io": _table_thin_io, "start-latency": _table_start, "image-sprawl": _table_sprawl,
    "cli-latency": _table_cli,
}


def table(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """A small table of ``df`` in human units (every cell a string or an int; show it without its index)."""
    if name in TABLES:
        return TABLES[name](df).reset_index(drop=True)
    return _kept(df).describe().reset_index()


# ---- findings ---------------------------------------------------------------------------------------------

def _f_snapshot(df: pd.DataFrame, lang: str) -> str:
    m = _snapshot_medians(df)
    small, big = m.columns[0], m.columns[-1]
    if small == big:
        times = _and([f"{b} {_t(v)}" for b, v in m[small].items()], lang)
        return (f"{_sz(small)} のイメージのスナップショット作成＋マウント：{times}。" if lang == "ja" else
                f"Preparing and mounting a snapshot of {_a(_sz(small))} {_sz(small)} image takes {times}.")
    ratio = m[big] / m[small]
    flat = [b for b in m.index if ratio[b] < 2]
    grow = [b for b in m.index if ratio[b] >= 2]
    out = []
    if "thin" in m.index:
        t0, t1, r = m[small]["thin"], m[big]["thin"], ratio["thin"]
        if r < 1.3:
            out.append(f"シン・スナップショットの作成とマウントは、イメージが {_sz(small)} でも {_sz(big)} でも約 {_about(t1)} です"
                       if lang == "ja" else
                       f"A thin snapshot takes about {_about(t1)} to prepare and mount whether the image is "
                       f"{_sz(small)} or {_sz(big)}")
        else:
            out.append(f"シン・スナップショットの作成とマウントは {_sz(small)} のイメージで {_t(t0)}、{_sz(big)} で {_t(t1)}"
                       f"（{_times(r, lang)}）です" if lang == "ja" else
                       f"A thin snapshot takes {_t(t0)} to prepare and mount for {_a(_sz(small))} {_sz(small)} "
                       f"image and {_t(t1)} for {_a(_sz(big))} {_sz(big)} one ({_times(r)})")
    if "copy" in m.index:
        c0, c1 = m.loc["copy", small], m.loc["copy", big]
        out.append(f"フルコピーは同じ範囲で {_times(ratio['copy'], lang)}（{_t(c0)} → {_t(c1)}）になります" if lang == "ja"
                   else f"a full copy grows {_times(ratio['copy'])} over the same range ({_t(c0)} → {_t(c1)})")
    others_flat = [b for b in flat if b not in ("thin", "copy")]
    others_grow = [f"{b} ({_times(ratio[b], lang)})" for b in grow if b not in ("thin", "copy")]
    if others_flat:
        out.append(("2 倍以内にとどまったのは " + _and(others_flat, lang) + " です") if lang == "ja" else
                   "within 2× as well: " + _and(others_flat, lang))
    if others_grow:
        out.append(("イメージとともに増えたのは " + _and(others_grow, lang) + " です") if lang == "ja" else
                   "also growing with the image: " + _and(others_grow, lang))
    if lang == "ja":
        return "。".join(out) + "。"
    text = "; ".join(out) + "."
    return text[0].upper() + text[1:]


def _f_space(df: pd.DataFrame, lang: str) -> str:
    last, n = _space_last(df)
    write = int(df["write"].iloc[0]) if "write" in df else 0
    image = int(df["image_size"].iloc[0]) if "image_size" in df else 0
    per = (last.added / max(n, 1)).sort_values()
    lean = [str(b) for b, v in per.items() if write and v <= 1.5 * write]      # backend names
    fat = [str(b) for b, v in per.items() if image and v >= write + 0.5 * image]
    items = _and([f"{b} {_sz(v)}" for b, v in per.items()], lang)
    if lang == "ja":
        s = f"{_sz(image)} のイメージから {n} 個のコンテナがそれぞれ {_sz(write)} 書いたとき、1 コンテナあたりの増加は {items} でした。"
        if lean:
            s += f"{_and(lean, lang)} は書いた分だけを使い、"
        if fat:
            s += f"{_and(fat, lang)} はコンテナごとにイメージをもう 1 つ持ちます。"
        return s.rstrip("、") if s.endswith("、") else s
    s = (f"{n} containers of {_a(_sz(image))} {_sz(image)} image, each writing {_sz(write)}, added per container: "
         f"{items}.")
    if lean:
        s += f" {_and(lean, lang)} store{'s' if len(lean) == 1 else ''} only what was written"
        again = f"; {_and(fat, lang)} store{'s' if len(fat) == 1 else ''} the image again for every container."
        s += again if fat else "."
    elif fat:
        s += f" {_and(fat, lang)} store{'s' if len(fat) == 1 else ''} the image again for every container."
    return s


def _f_cow(df: pd.DataFrame, lang: str) -> str:
    d = _kept(df)
    smallest = d.write_bytes.min()
    m = d[d.write_bytes == smallest].groupby(["backend", "phase"]).seconds.median().unstack("phase")
    size = int(df["file_size"].iloc[0]) if "file_size" in df else 0
    first = m["first_write"].sort_values(ascending=False)
    worst = first.index[0]
    rest = _and([f"{b} {_t(v)}" for b, v in first.iloc[1:].items()], lang)
    again = m["rewrite"] if "rewrite" in m else None
    span = f"{_t(again.min())}–{_t(again.max())}" if again is not None else "–"
    if lang == "ja":
        return (f"イメージから受け継いだ {_sz(size)} のファイルへの最初の {_sz(smallest)} 書き込みは、{worst} で {_t(first[worst])}"
                f"（ほかは {rest}）。2 回目の書き込みはどれも {span} です。")
    why = " — it copies the whole file up —" if worst == "overlay" else ""
    return (f"The first {_sz(smallest)} write into {_a(_sz(size))} {_sz(size)} file inherited from the image costs "
            f"{worst} {_t(first[worst])}{why} against {rest}; rewriting the same bytes costs {span} on every backend.")


def _f_commit(df: pd.DataFrame, lang: str) -> str:
    d = _kept(df)
    big = d.changed_bytes.max()
    m = d[d.changed_bytes == big].groupby("backend").agg(seconds=("seconds", "median"), added=("bytes_added", "median"))
    m = m.sort_values("seconds")
    times = _and([f"{b} {_t(v)}" for b, v in m.seconds.items()], lang)
    lo, hi = m.added.min(), m.added.max()
    if lang == "ja":
        return (f"{_sz(big)} を変更したコンテナのコミットは {times} かかりました。新しいイメージが追加した容量は "
                f"{_sz(lo)}〜{_sz(hi)} です。")
    return (f"Committing a container that changed {_sz(big)} takes {times}; the new image adds "
            f"{_sz(lo)} to {_sz(hi)}.")


def _f_block(df: pd.DataFrame, lang: str) -> str:
    d = _kept(df)
    m = d.groupby("block_bytes")[["seconds_per_write", "bytes_exclusive", "metadata_blocks"]].median()
    lo, hi = m.index.min(), m.index.max()
    writes = int(df["writes"].iloc[0]) if "writes" in df else 0
    r = m.loc[hi, "bytes_exclusive"] / m.loc[lo, "bytes_exclusive"] if m.loc[lo, "bytes_exclusive"] else float("nan")
    if lang == "ja":
        return (f"散らばった {writes} 回の 4 KiB 書き込みの後、スナップショットが専有する容量は {_sz(lo)} ブロックで "
                f"{_sz(m.loc[lo, 'bytes_exclusive'])}、{_sz(hi)} ブロックで {_sz(m.loc[hi, 'bytes_exclusive'])}"
                f"（{_times(r, lang)}）。"
                f"メタデータは {m.loc[lo, 'metadata_blocks']:.0f} から {m.loc[hi, 'metadata_blocks']:.0f} ブロックに減り、"
                f"1 回の書き込みは {_t(m.loc[lo, 'seconds_per_write'])} 対 {_t(m.loc[hi, 'seconds_per_write'])} です。")
    return (f"{writes} scattered 4 KiB writes leave a snapshot owning {_sz(m.loc[lo, 'bytes_exclusive'])} with "
            f"{_sz(lo)} blocks and {_sz(m.loc[hi, 'bytes_exclusive'])} with {_sz(hi)} blocks ({_times(r)}); "
            f"metadata goes from {m.loc[lo, 'metadata_blocks']:.0f} to {m.loc[hi, 'metadata_blocks']:.0f} blocks, "
            f"and a write costs {_t(m.loc[lo, 'seconds_per_write'])} against {_t(m.loc[hi, 'seconds_per_write'])}.")


def _f_pool(df: pd.DataFrame, lang: str) -> str:
    d = _kept(df)
    pool = int(d.pool_size.iloc[0]) if "pool_size" in d else 0
    n = int(d.container.nunique())
    wrote = d.groupby("repeat").bytes_written.sum().median()
    errors_seen = sorted({e for e in d.error.fillna("") if e})
    over = float(d.overcommit.iloc[0]) if "overcommit" in d else float("nan")
    intact, ok = bool(d.image_intact.all()), bool(d.pool_ok_after.all())
    err = " / ".join(f"“{e}”" for e in errors_seen) or ("（エラーなし）" if lang == "ja" else "no error")
    if lang == "ja":
        return (f"プールの {over:.0f} 倍を約束した {n} 個のコンテナは、{_sz(pool)} のプールに合わせて {_sz(wrote)} 書いたところで"
                f"全員が {err} を受け取りました。その後もイメージは{'無事' if intact else '壊れていました'}で、"
                f"プールの検査は{'問題なし' if ok else '問題あり'}でした。")
    return (f"{n} containers promised {over:.0f}× the pool's {_sz(pool)}; together they wrote {_sz(wrote)} before each "
            f"saw {err}. Afterwards the image was {'intact' if intact else 'DAMAGED'} and the pool's check "
            f"{'clean' if ok else 'found problems'}.")


def _f_io(df: pd.DataFrame, lang: str) -> str:
    m = _io_medians(df)
    if "thin" not in m or "loop" not in m:
        return ""
    names = {"seq_write": ("sequential writes", "順次書き込み"), "seq_read": ("sequential reads", "順次読み出し"),
             "rand_write_4k": ("random 4 KiB writes", "ランダム 4 KiB 書き込み")}
    parts = [(names.get(op, (op, op))[lang == "ja"], r.thin, r.thin / r.loop if r.loop else float("nan"))
             for op, r in _rows(m)]
    if lang == "ja":
        return "シンデバイス上では、" + "、".join(f"{n}が {v:.0f} MiB/s（ループファイルの {x:.2f} 倍）" for n, v, x in parts) + "でした。"
    return "Through the thin device, " + _and([f"{n} run at {v:.0f} MiB/s ({x:.2f}× a plain loop file)"
                                               for n, v, x in parts], lang) + "."


def _f_start(df: pd.DataFrame, lang: str) -> str:
    d = _kept(df)
    d = d[d.seconds.notna()]
    med = d.groupby("runtime").seconds.median().sort_values()
    items = _and([f"{r} {_t(v)}" for r, v in med.items()], lang)
    skipped = list(df.attrs.get("skipped") or {})
    if lang == "ja":
        s = f"コンテナで /bin/true を起動して終了するまでの中央値は {items} です。"
        return s + (f"（{_and(skipped, lang)} はこのマシンでは動きませんでした）" if skipped else "")
    s = f"Starting /bin/true in a container and seeing it exit takes (median) {items}."
    return s + (f" Not run here: {_and(skipped, lang)}." if skipped else "")


def _f_sprawl(df: pd.DataFrame, lang: str) -> str:
    d = _kept(df)
    m = d.groupby(["backend", "approach"])[["bytes_total", "bytes_freed"]].median()
    steps = int(df["steps"].iloc[0]) if "steps" in df else 0
    write = int(df["write"].iloc[0]) if "write" in df else 0
    parts = []
    for b in sorted(m.index.get_level_values("backend").unique()):
        if (b, "chain") in m.index and (b, "once") in m.index:
            c, o = m.loc[(b, "chain"), "bytes_total"], m.loc[(b, "once"), "bytes_total"]
            parts.append((b, c, o, c / o if o else float("nan"), m.loc[(b, "chain"), "bytes_freed"]))
    if not parts:
        return ""
    if lang == "ja":
        return (f"同じ {_sz(write)} のファイルを書き換えながら {steps} 回コミットした連鎖は、" +
                "、".join(f"{b} で {_sz(c)}（1 回のコミットなら {_sz(o)}、{_times(x, lang)}）" for b, c, o, x, _ in parts) +
                "。タグを外して prune すると " + "、".join(f"{b} で {_sz(f)}" for b, _, _, _, f in parts) + " が戻りました。")
    return (f"{steps} ad-hoc commits that each rewrote one {_sz(write)} file took " +
            _and([f"{_sz(c)} on {b} against {_sz(o)} committed once ({_times(x)})" for b, c, o, x, _ in parts], lang) +
            "; untagging the result and pruning gave back "
            + _and([f"{_sz(f)} on {b}" for b, _, _, _, f in parts], lang) + ".")


def _f_cli(df: pd.DataFrame, lang: str) -> str:
    r = ratios(df)
    med = r["50%"].dropna()
    if "labkit" not in med:
        return ""
    x = float(cast(float, r.loc["labkit", "vs_podman"])) if "vs_podman" in r else float("nan")
    thin = _t(med["labkit-thin"]) if "labkit-thin" in med else ""
    if lang == "ja":
        s = f"`labkit run --rm busybox true` 全体の中央値は overlay で {_t(med['labkit'])}"
        s += f"、thin で {thin}" if thin else ""
        if "podman" in med:
            s += f"、`podman run --rm` は {_t(med['podman'])}（labkit は podman の {x:.2f} 倍、同じラウンドどうしの比）"
        if "runc" in med:
            s += f"、`runc run` は {_t(med['runc'])}"
        return s + "でした。"
    s = f"A whole `labkit run --rm busybox true` takes {_t(med['labkit'])} (median) on overlay"
    s += f" and {thin} on thin" if thin else ""
    if "podman" in med:
        s += f", against {_t(med['podman'])} for `podman run --rm` ({x:.2f}× podman, paired rounds)"
    if "runc" in med:
        s += f" and {_t(med['runc'])} for `runc run`"
    return s + "."


FINDINGS: dict[str, Callable[[pd.DataFrame, str], str]] = {
    "snapshot-time": _f_snapshot, "space-vs-containers": _f_space, "cow-penalty": _f_cow,
    "commit-cost": _f_commit, "block-size": _f_block, "pool-exhaustion": _f_pool, "thin-io": _f_io,
    "start-latency": _f_start, "image-sprawl": _f_sprawl, "cli-latency": _f_cli,
}


def sentence_or_none(name: str, df: pd.DataFrame, lang: str = "en") -> str | None:
    """The finding, or None when ``df`` holds too little to say it (a backend missing, no rows)."""
    fn = FINDINGS.get(name)
    if fn is None or df is None or not len(df):
        return None
    try:
        return fn(df, lang) or None
    except (KeyError, IndexError, ValueError, ZeroDivisionError, AttributeError, TypeError):
        return None


def finding(name: str, df: pd.DataFrame, lang: str = "en") -> str:
    """The result of ``df`` in one or two sentences with its numbers (``lang``: ``"en"`` or ``"ja"``)."""
    s = sentence_or_none(name, df, lang)
    if s is not None:
        return s
    return ("このデータからは結論を出せませんでした（行が足りません）。" if lang == "ja" else
            "These results are too few to say more (see the table).")


def conclusion(name: str, df: pd.DataFrame, lang: str = "en") -> str:
    """The finding and why it comes out that way: a section's last paragraph."""
    return finding(name, df, lang) + " " + WHY.get(name, {}).get(lang, "")
