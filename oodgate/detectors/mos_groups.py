"""MOS class groups: read from a file (CSV/TSV/JSON, by class index or name), the shipped ImageNet taxonomy, or
computed by seeded k-means; validated so that every class is in exactly one non-empty group.

A grouping is a list of groups, each a list of class indices in slot order: group g owns n_g + 1 consecutive
logits of the MOS head, slot 0 "others", slot 1 + i the class ``groups[g][i]``.
"""

from __future__ import annotations

import csv
import difflib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OodgateError

#: ``groups='imagenet-taxonomy'``: the official MOS 8-group ImageNet taxonomy, by torchvision class index
IMAGENET_TAXONOMY = "imagenet-taxonomy"
IMAGENET_TAXONOMY_FILE = Path(__file__).resolve().parent.parent / "data" / "resources" / \
    "mos_imagenet_taxonomy_level0_groups.tsv"
#: where the group of a class is computed from when no grouping is given
KMEANS_SOURCES = ("class_means", "head_rows")

_GROUP_HEADER = re.compile(r"^group([ _]?(id|name|index|label))?$")
_CLASS_HEADERS = ("class_index", "class_id", "torchvision_index", "index", "class", "label", "class_name", "name",
                  "wnid")
_ORDER_HEADER = re.compile(r"^(sub_?class|order|slot|position|rank)")


def _listing(values: Sequence[Any], limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in list(values)[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}] ({len(values)} in all)"


# -- validation ---------------------------------------------------------------------------------------------------


def validate_groups(groups: Any, num_classes: int, source: str = "groups",
                    names: Sequence[str] | None = None) -> list[list[int]]:
    """Check that ``groups`` (lists of class indices) cover 0..C-1 exactly once with no empty group; return plain ints.

    ``names``: what to call the groups in errors (default: their position).
    """

    def label(g: int) -> str:
        return str(g) if names is None else repr(names[g])

    if not isinstance(groups, (list, tuple)) or not groups:
        raise OodgateError(f"{source}: expected a non-empty list of groups (lists of class indices), "
                           f"got {groups!r:.80}")
    out: list[list[int]] = []
    owner: dict[int, int] = {}
    for g, members in enumerate(groups):
        if isinstance(members, (str, bytes)) or not isinstance(members, (list, tuple, np.ndarray)):
            raise OodgateError(f"{source}: group {label(g)} must be a list of class indices, got {members!r:.60}")
        if len(members) == 0:
            raise OodgateError(f"{source}: group {label(g)} is empty: every group needs at least one class (drop it)")
        row = []
        for m in members:
            if isinstance(m, (bool, np.bool_)) or not isinstance(m, (int, np.integer)):
                raise OodgateError(f"{source}: group {label(g)} holds {m!r}, not a class index (an integer)")
            c = int(m)
            if not 0 <= c < num_classes:
                raise OodgateError(f"{source}: unknown class {c} in group {label(g)}: the model has {num_classes} "
                                   f"classes (0..{num_classes - 1})")
            if c in owner:
                where = "twice in group" if owner[c] == g else f"in groups {label(owner[c])} and"
                raise OodgateError(f"{source}: overlapping groups: class {c} is {where} {label(g)}: put every class in "
                                   "exactly one group")
            owner[c] = g
            row.append(c)
        out.append(row)
    missing = [c for c in range(num_classes) if c not in owner]
    if missing:
        raise OodgateError(f"{source}: missing classes: {_listing(missing)} are in no group: put every one of the "
                           f"{num_classes} classes in exactly one group")
    return out


def group_layout(groups: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays of the MOS head for ``groups`` (G groups, largest size M).

    Returns ``gather`` (G, M+1): the head logit of each (group, slot), padding repeats the group's "others" logit;
    ``valid`` (G, M+1): 1 for real slots; ``slot_class`` (G, M): the class index of each non-others slot (0 at
    padding, which ``valid`` excludes).
    """
    sizes = [len(g) for g in groups]
    m = max(sizes)
    gather = np.zeros((len(groups), m + 1), np.int64)
    valid = np.zeros((len(groups), m + 1), np.float32)
    slot_class = np.zeros((len(groups), m), np.int64)
    start = 0
    for g, members in enumerate(groups):
        gather[g, :] = start
        gather[g, :len(members) + 1] = np.arange(start, start + len(members) + 1)
        valid[g, :len(members) + 1] = 1.0
        slot_class[g, :len(members)] = members
        start += len(members) + 1
    return gather, valid, slot_class


def group_targets(groups: list[list[int]], num_classes: int) -> np.ndarray:
    """(C, G) slot target of each class in each group: 1 + its position in its own group, 0 ("others") elsewhere."""
    table = np.zeros((num_classes, len(groups)), np.int64)
    for g, members in enumerate(groups):
        table[np.asarray(members, np.int64), g] = np.arange(1, len(members) + 1)
    return table


# -- files ------------------------------------------------------------------------------------------------------


def _class_index(token: Any, num_classes: int, class_names: Sequence[str] | None, where: str) -> int:
    """A class index from an index (int or digit string) or a class name."""
    if isinstance(token, bool):
        raise OodgateError(f"{where}: {token!r} is not a class index or name")
    if isinstance(token, (int, np.integer)) or (isinstance(token, str) and re.fullmatch(r"\s*\d+\s*", token)):
        c = int(token)
        if not 0 <= c < num_classes:
            raise OodgateError(f"{where}: unknown class {c}: the model has {num_classes} classes "
                               f"(0..{num_classes - 1})")
        return c
    if not isinstance(token, str) or not token.strip():
        raise OodgateError(f"{where}: {token!r} is not a class index or name")
    name = token.strip()
    if class_names is None:
        raise OodgateError(f"{where}: class {name!r} is given by name, but the model's class names are unknown: "
                           "pass class_names=[...] to fit, or write class indices")
    names = [str(n) for n in class_names]
    if name in names:
        return names.index(name)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise OodgateError(f"{where}: unknown class {name!r}{hint}: not one of the model's {len(names)} class names")


def _group_order(keys: list[Any]) -> list[Any]:
    """Groups sorted by their key when all keys are integers, else in order of first appearance."""
    unique = list(dict.fromkeys(keys))
    if all(isinstance(k, int) or (isinstance(k, str) and re.fullmatch(r"-?\d+", k)) for k in unique):
        return sorted(unique, key=int)
    return unique


def _from_pairs(pairs: list[tuple[Any, Any, Any, str]], num_classes: int, class_names: Sequence[str] | None,
                source: str) -> list[list[int]]:
    """Groups from (class token, group key, slot order or None, where) rows; the class within a group is ordered by
    the order column when there is one, else by file order."""
    if not pairs:
        raise OodgateError(f"{source}: no class -> group rows found")
    keys = [str(k).strip() for _, k, _, _ in pairs]
    order = {k: i for i, k in enumerate(_group_order(keys))}
    rows: list[list[tuple[float, int, int]]] = [[] for _ in order]
    owner: dict[int, tuple[str, str]] = {}
    for n, ((token, _, slot, where), key) in enumerate(zip(pairs, keys)):
        c = _class_index(token, num_classes, class_names, where)
        if c in owner:
            first_where, first_key = owner[c]
            raise OodgateError(f"{where}: overlapping groups: class {token!r} is already in group {first_key!r} "
                               f"({first_where}): put every class in exactly one group")
        owner[c] = (where, key)
        if slot is not None:
            try:
                rank = float(slot)
            except ValueError:
                raise OodgateError(f"{where}: slot order {slot!r} is not a number") from None
        else:
            rank = float(n)
        rows[order[key]].append((rank, n, c))
    groups = [[c for _, _, c in sorted(r)] for r in rows]
    return validate_groups(groups, num_classes, source)


def _read_table(path: Path, source: str) -> list[tuple[Any, Any, Any, str]]:
    """(class, group, order, where) rows of a CSV/TSV file with or without a header."""
    text = path.read_text(encoding="utf-8-sig")
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise OodgateError(f"{source}: the file is empty")
    suffix = path.suffix.lower()
    delimiter = "\t" if suffix in (".tsv", ".tab") or (suffix != ".csv" and "\t" in lines[0][1]) else ","
    cells = [(no, [c.strip() for c in row]) for no, row in
             zip((n for n, _ in lines), csv.reader([ln for _, ln in lines], delimiter=delimiter))]
    header = [c.lower() for c in cells[0][1]]
    if any(_GROUP_HEADER.match(h) for h in header):
        group_col = next(i for i, h in enumerate(header) if _GROUP_HEADER.match(h))
        class_col = next((header.index(n) for n in _CLASS_HEADERS if n in header), None)
        if class_col is None:
            raise OodgateError(f"{source}: the header {cells[0][1]} has no class column: name one "
                               f"{' / '.join(_CLASS_HEADERS[:5])} / class_name")
        order_col = next((i for i, h in enumerate(header) if _ORDER_HEADER.match(h)), None)
        cells = cells[1:]
    else:
        class_col, group_col, order_col = 0, 1, (2 if len(cells[0][1]) > 2 else None)
    need = max(class_col, group_col, -1 if order_col is None else order_col) + 1
    out = []
    for no, row in cells:
        where = f"{source}, line {no}"
        if len(row) < need:
            raise OodgateError(f"{where}: expected {need} {'tab' if delimiter == chr(9) else 'comma'}-separated "
                               f"columns (class, group), got {len(row)}: {delimiter.join(row)!r:.60}")
        out.append((row[class_col], row[group_col], None if order_col is None else row[order_col], where))
    return out


def _read_json(path: Path, num_classes: int, class_names: Sequence[str] | None, source: str) -> list[list[int]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise OodgateError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict) and set(data) == {"groups"}:
        data = data["groups"]
    if isinstance(data, list):  # [[class, ...], ...]
        groups = []
        for g, members in enumerate(data):
            if not isinstance(members, list):
                raise OodgateError(f"{source}: group {g} must be a list of classes, got {members!r:.60}")
            groups.append([_class_index(m, num_classes, class_names, f"{source}, group {g}") for m in members])
        return validate_groups(groups, num_classes, source)
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):  # {group: [classes]}
        groups = [[_class_index(m, num_classes, class_names, f"{source}, group {k!r}") for m in v]
                  for k, v in data.items()]
        return validate_groups(groups, num_classes, source, names=[str(k) for k in data])
    if isinstance(data, dict) and data and not any(isinstance(v, (list, dict)) for v in data.values()):
        pairs = [(k, v, None, f"{source}, class {k!r}") for k, v in data.items()]  # {class: group}
        return _from_pairs(pairs, num_classes, class_names, source)
    raise OodgateError(f"{source}: expected a list of groups ([[0, 1], [2]]), a mapping group -> classes "
                       "({'a': [0, 1]}) or a mapping class -> group ({'0': 'a'})")


def load_group_file(path: str | Path, num_classes: int, class_names: Sequence[str] | None = None) -> list[list[int]]:
    """Groups from a CSV/TSV (class, group[, order] rows; header optional) or JSON file, classes by index or name."""
    path = Path(path)
    source = f"group file {path}"
    if not path.is_file():
        raise OodgateError(f"no such group file: {path} (give a .csv/.tsv/.json file, or groups='{IMAGENET_TAXONOMY}'"
                           " or None for k-means groups)")
    if path.suffix.lower() == ".json":
        return _read_json(path, num_classes, class_names, source)
    return _from_pairs(_read_table(path, source), num_classes, class_names, source)


def imagenet_taxonomy(num_classes: int = 1000) -> list[list[int]]:
    """The official MOS 8-group ImageNet-1k taxonomy (sizes 398, 521, 9, 7, 52, 8, 3, 2), by torchvision index."""
    if num_classes != 1000:
        raise OodgateError(f"groups='{IMAGENET_TAXONOMY}' is for ImageNet-1k classifiers (1000 classes in torchvision "
                           f"order); this head has {num_classes} classes: give a group file or groups=None (k-means)")
    return load_group_file(IMAGENET_TAXONOMY_FILE, num_classes)


# -- k-means --------------------------------------------------------------------------------------------------


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(N, K) squared Euclidean distances (never negative)."""
    return np.maximum((x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :], 0.0)


def kmeans(points: np.ndarray, k: int, seed: int = 0, n_init: int = 10, max_iter: int = 300) -> np.ndarray:
    """Seeded k-means (k-means++ starts, Lloyd steps, best of ``n_init``); no cluster is left empty."""
    x = np.asarray(points, np.float64)
    n = len(x)
    rng = np.random.default_rng(seed)
    best, best_inertia = np.zeros(n, np.int64), np.inf
    for _ in range(n_init):
        centres = [x[rng.integers(n)]]
        for _ in range(1, k):
            d2 = _sq_dist(x, np.asarray(centres)).min(axis=1)
            total = d2.sum()
            centres.append(x[rng.choice(n, p=d2 / total)] if total > 0 else x[rng.integers(n)])
        c = np.asarray(centres)
        assign = np.full(n, -1)
        for _ in range(max_iter):
            d2 = _sq_dist(x, c)
            new = np.argmin(d2, axis=1)
            for j in range(k):  # an empty cluster takes the point furthest from its centre in a cluster of 2+
                if not np.any(new == j):
                    movable = np.bincount(new, minlength=k)[new] > 1
                    new[int(np.argmax(np.where(movable, d2[np.arange(n), new], -1.0)))] = j
            if np.array_equal(new, assign):
                break
            assign = new
            c = np.stack([x[assign == j].mean(axis=0) for j in range(k)])
        inertia = float(((x - c[assign]) ** 2).sum())
        if inertia < best_inertia - 1e-12:
            best, best_inertia = assign.copy(), inertia
    return best


def kmeans_groups(points: np.ndarray, k: int, seed: int = 0) -> list[list[int]]:
    """k groups of the C rows of ``points`` (L2-normalised first: direction, not scale), ordered by smallest class."""
    c = len(points)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= c:
        raise OodgateError(f"num_groups={k!r}: k-means needs between 1 and the number of classes ({c}) groups")
    x = np.asarray(points, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    assign = kmeans(x, int(k), seed)
    groups = [sorted(int(i) for i in np.nonzero(assign == j)[0]) for j in range(int(k))]
    return sorted(groups, key=lambda g: g[0])


def default_num_groups(num_classes: int) -> int:
    """k-means groups when none is asked for: min(4, C // 2), at least 1."""
    return max(1, min(4, num_classes // 2))


def resolve_groups(spec: Any, num_classes: int, *, class_names: Sequence[str] | None = None,
                   class_means: np.ndarray | None = None, head_rows: np.ndarray | None = None,
                   num_groups: int | None = None, kmeans_on: str = "class_means", seed: int = 0,
                   ) -> tuple[list[list[int]], str]:
    """(groups, where they came from) for a group spec: None (k-means), 'imagenet-taxonomy', a path or lists."""
    if spec is None:
        if kmeans_on not in KMEANS_SOURCES:
            raise OodgateError(f"kmeans_on={kmeans_on!r}: use one of {', '.join(KMEANS_SOURCES)}")
        points = class_means if kmeans_on == "class_means" else head_rows
        if points is None:
            raise OodgateError(f"k-means over {kmeans_on} needs them: pass features with labels and the head weight")
        k = default_num_groups(num_classes) if num_groups is None else num_groups
        groups = kmeans_groups(points, k, seed)
        return validate_groups(groups, num_classes, "k-means groups"), f"kmeans(on={kmeans_on}, k={k}, seed={seed})"
    if isinstance(spec, str) and spec.strip().lower() in (IMAGENET_TAXONOMY, "imagenet_taxonomy"):
        return imagenet_taxonomy(num_classes), IMAGENET_TAXONOMY
    if isinstance(spec, (str, Path)):
        return load_group_file(spec, num_classes, class_names), f"file:{Path(spec).name}"
    if isinstance(spec, (list, tuple)):
        groups = [[_class_index(m, num_classes, class_names, f"groups, group {g}") for m in members]
                  if isinstance(members, (list, tuple)) else members for g, members in enumerate(spec)]
        return validate_groups(groups, num_classes, "groups"), "given"
    raise OodgateError(f"groups={spec!r:.60}: give None (k-means), '{IMAGENET_TAXONOMY}', a group file path or a "
                       "list of lists of class indices")


__all__ = ["IMAGENET_TAXONOMY", "KMEANS_SOURCES", "default_num_groups", "group_layout", "group_targets",
           "imagenet_taxonomy", "kmeans", "kmeans_groups", "load_group_file", "resolve_groups", "validate_groups"]
