"""Load a MovieLens-format ratings file given by path. Nothing is downloaded.

Formats: ``u.data`` (``user<TAB>item<TAB>rating<TAB>timestamp``, ML-100K) and ``ratings.dat``
(``user::item::rating::timestamp``, ML-1M). Ratings map to actions (1-2 view, 3 click, 4 like,
5 purchase) and events are ordered by time per user. When ``u.item`` / ``movies.dat`` sits
beside the ratings file, its first genre becomes the item's category; otherwise every item gets
category ``item % 20`` (no content signal) and authors are unknown (0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genrec.data.schema import Action, Dataset, Events, ItemKind, ItemMetadata, Users
from genrec.errors import InvalidValueError

# rating 0..5 -> action (0 never occurs in the files; it maps like 1)
RATING_TO_ACTION = np.array([Action.VIEW, Action.VIEW, Action.VIEW, Action.CLICK, Action.LIKE, Action.PURCHASE], dtype=np.int8)
_GENRES_1M = "Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western".split()


def _read_ratings(path: Path) -> np.ndarray:
    rows = []
    sep = "::" if "::" in path.open(encoding="latin-1").readline() else None
    with path.open(encoding="latin-1") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(sep) if sep else line.split()
            if len(parts) < 4:
                raise InvalidValueError(str(path), f"line {n} has {len(parts)} fields, expected user, item, rating, timestamp")
            rows.append((int(parts[0]), int(parts[1]), int(float(parts[2])), int(parts[3])))
    if not rows:
        raise InvalidValueError(str(path), "no ratings")
    return np.array(rows, dtype=np.int64)


def _read_genres(path: Path) -> dict[int, int]:
    out: dict[int, int] = {}
    item_file = path.parent / "u.item"
    movies_file = path.parent / "movies.dat"
    if item_file.exists():
        for line in item_file.open(encoding="latin-1"):
            parts = line.rstrip("\n").split("|")
            if len(parts) >= 6:
                flags = [i for i, f in enumerate(parts[5:]) if f == "1"]
                out[int(parts[0])] = flags[0] if flags else 0
    elif movies_file.exists():
        for line in movies_file.open(encoding="latin-1"):
            parts = line.rstrip("\n").split("::")
            if len(parts) == 3:
                first = parts[2].split("|")[0]
                out[int(parts[0])] = _GENRES_1M.index(first) if first in _GENRES_1M else 0
    return out


def load_movielens(path: str | Path, n_devices: int = 3) -> Dataset:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (give the path to u.data or ratings.dat)")
    r = _read_ratings(path)
    users_ext, user = np.unique(r[:, 0], return_inverse=True)
    items_ext, item = np.unique(r[:, 1], return_inverse=True)
    order = np.lexsort((r[:, 3], user))
    user, item, rating, ts = user[order], item[order], np.clip(r[order, 2], 0, 5), r[order, 3]
    genres = _read_genres(path)
    n = items_ext.size
    category = np.array([genres.get(int(e), int(e) % 20) for e in items_ext], dtype=np.int32)
    n_categories = int(category.max()) + 1
    nan = np.full(n, np.nan, dtype=np.float32)
    minus = np.full(n, -1, dtype=np.int32)
    cat = ItemMetadata(
        category=category,
        author=np.zeros(n, dtype=np.int32),
        text_tokens=(category[:, None] * np.ones((1, 1), dtype=np.int32)).astype(np.int32),
        kind=np.full(n, ItemKind.CONTENT, dtype=np.int8),
        advertiser=minus,
        campaign=minus,
        bid_cpc=nan,
        daily_budget=nan,
        frequency_cap=minus,
        target_categories=np.full((n, 3), -1, dtype=np.int32),
        price=nan,
        n_categories=n_categories,
        n_authors=1,
        n_text_tokens=n_categories,
    )
    n_users = users_ext.size
    events = Events(
        user=user.astype(np.int32),
        item=item.astype(np.int32),
        action=RATING_TO_ACTION[rating],
        timestamp=ts.astype(np.int64),
        device=np.zeros(len(user), dtype=np.int8),
        n_users=n_users,
    )
    users = Users(segment=np.zeros(n_users, dtype=np.int32), main_device=np.zeros(n_users, dtype=np.int8), n_segments=1)
    return Dataset(name=f"movielens:{path.name}", item_metadata=cat, users=users, events=events)
