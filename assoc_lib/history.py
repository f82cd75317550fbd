"""The shopper's history for the personalised protocol.

For every basket of a known user: the items that user bought before, with purchase
counts and days since the last purchase, never from the future:

- a **train** basket sees the user's train baskets strictly earlier in time;
- a **validation** basket sees the user's train baskets;
- a **test** basket sees the user's train and validation baskets.

History stops at the split boundary, so evaluation baskets never see each other.
Guests (no user id) have an empty history. The result is two CSR matrices aligned
with the baskets: purchase counts, and days since the last purchase + 1.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd
import scipy.sparse as sp

SPLIT_RANK = {"train": 0, "validation": 1, "test": 2}


class _Builder:
    def __init__(self):
        self.rows, self.cols, self.counts, self.recency = [], [], [], []

    def emit(self, row: int, count: dict, last: dict, now: float) -> None:
        for item, c in count.items():
            self.rows.append(row)
            self.cols.append(item)
            self.counts.append(float(c))
            self.recency.append(max(now - last[item], 0.0) + 1.0)

    def matrices(self, shape) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        idx = (np.asarray(self.rows, np.int64), np.asarray(self.cols, np.int64))
        return (sp.csr_matrix((np.asarray(self.counts, np.float32), idx), shape=shape),
                sp.csr_matrix((np.asarray(self.recency, np.float32), idx), shape=shape))


def _add(count: dict, last: dict, items, day: float) -> None:
    for item in items:
        item = int(item)
        count[item] = count.get(item, 0) + 1
        last[item] = day


def build_histories(baskets: pd.DataFrame, n_items: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(counts, days_since_last + 1) as CSR [len(baskets), n_items], rows in the frame's order."""
    out = _Builder()
    if len(baskets) == 0:
        return out.matrices((0, n_items))
    ts = baskets["ts"]
    days = ((ts - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds() / 86_400.0).to_numpy()
    stamp = ts.to_numpy()
    split = baskets["split"].map(SPLIT_RANK).to_numpy()
    items = baskets["items"].to_numpy()
    by_user: dict[str, list[int]] = defaultdict(list)
    for r, user in enumerate(baskets["user_id"].to_numpy(dtype=object)):
        if isinstance(user, str) and user:
            by_user[user].append(r)
    for rows in by_user.values():
        rows.sort(key=lambda r: (stamp[r], r))
        count: dict[int, int] = {}
        last: dict[int, float] = {}
        train = [r for r in rows if split[r] == 0]
        i = 0
        while i < len(train):  # baskets at the same instant do not see each other
            j = i
            while j < len(train) and stamp[train[j]] == stamp[train[i]]:
                j += 1
            for r in train[i:j]:
                out.emit(r, count, last, days[r])
            for r in train[i:j]:
                _add(count, last, items[r], days[r])
            i = j
        validation = [r for r in rows if split[r] == 1]
        for r in validation:
            out.emit(r, count, last, days[r])
        for r in validation:
            _add(count, last, items[r], days[r])
        for r in rows:
            if split[r] == 2:
                out.emit(r, count, last, days[r])
    return out.matrices((len(baskets), n_items))


def prior(counts: sp.csr_matrix) -> sp.csr_matrix:
    """log(1 + purchase count): the personal frequency prior added to a basket score."""
    out = counts.copy().astype(np.float32)
    out.data = np.log1p(out.data)
    return out
