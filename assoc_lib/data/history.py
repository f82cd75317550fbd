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

import numpy as np
import pandas as pd
import scipy.sparse as sp

SPLIT_RANK = {"train": 0, "validation": 1, "test": 2}


def build_histories(
    baskets: pd.DataFrame, n_items: int, with_recency: bool = True, max_items: int = 0
) -> tuple[sp.csr_matrix, sp.csr_matrix | None]:
    """(counts, days_since_last + 1) as CSR [len(baskets), n_items], rows in the frame's order.

    ``with_recency=False`` skips the recency matrix (half the memory) when only counts are used;
    ``max_items`` > 0 keeps each basket's most-bought items only (as :func:`cap_history`), early,
    so the full histories are never held at once.

    Vectorised per user: a dense [baskets, distinct items] matrix of the user, cumulative counts
    and running last-purchase days, read at each basket's cut-off.
    """
    n = len(baskets)
    if n == 0:
        empty = sp.csr_matrix((0, n_items), dtype=np.float32)
        return empty, empty.copy()
    ts = baskets["ts"]
    days = ((ts - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds() / 86_400.0).to_numpy()
    stamp = ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[us]").astype(np.int64)
    split = baskets["split"].map(SPLIT_RANK).to_numpy()
    items = baskets["items"].to_numpy()
    users = baskets["user_id"].to_numpy(dtype=object)
    known = np.array([isinstance(u, str) and bool(u) for u in users])
    out_rows, out_cols, out_counts, out_recency = [], [], [], []
    if known.any():
        codes, _ = pd.factorize(pd.Series(users[known]))
        known_rows = np.flatnonzero(known)
        order = np.lexsort((known_rows, stamp[known_rows], codes))
        sorted_rows, sorted_codes = known_rows[order], codes[order]
        bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
        for rows in np.split(sorted_rows, bounds):
            _user_history(
                rows,
                items,
                days,
                stamp,
                split,
                out_rows,
                out_cols,
                out_counts,
                out_recency if with_recency else None,
                max_items,
            )
    idx = (
        np.concatenate(out_rows) if out_rows else np.zeros(0, np.int32),
        np.concatenate(out_cols) if out_cols else np.zeros(0, np.int32),
    )
    counts = sp.csr_matrix(
        (np.concatenate(out_counts) if out_counts else np.zeros(0, np.float32), idx), shape=(n, n_items)
    )
    if not with_recency:
        return counts, None
    recency = sp.csr_matrix(
        (np.concatenate(out_recency) if out_recency else np.zeros(0, np.float32), idx), shape=(n, n_items)
    )
    return counts, recency


def _user_history(
    rows, items, days, stamp, split, out_rows, out_cols, out_counts, out_recency, max_items: int = 0
) -> None:
    """History of one user's baskets (``rows`` sorted by time)."""
    lengths = np.fromiter((len(items[r]) for r in rows), np.int64, len(rows))
    flat = np.concatenate([np.asarray(items[r], np.int64) for r in rows]) if lengths.sum() else np.zeros(0, np.int64)
    distinct, local = np.unique(flat, return_inverse=True)
    if len(distinct) == 0:
        return
    B = np.zeros((len(rows), len(distinct)), np.float32)
    B[np.repeat(np.arange(len(rows)), lengths), local] = 1.0
    day = days[rows]
    bought_day = np.where(B > 0, day[:, None], -np.inf)
    sp_ = split[rows]
    history = np.zeros_like(B)
    last = np.full_like(B, -np.inf)
    train = np.flatnonzero(sp_ == 0)
    if len(train):
        cum = np.cumsum(B[train], axis=0)
        run_last = np.maximum.accumulate(bought_day[train], axis=0)
        t = stamp[rows][train]
        first_of_instant = np.searchsorted(t, t, side="left")  # baskets at one instant see only earlier ones
        has = first_of_instant > 0
        history[train[has]] = cum[first_of_instant[has] - 1]
        last[train[has]] = run_last[first_of_instant[has] - 1]
        train_total, train_last = cum[-1], run_last[-1]
    else:
        train_total, train_last = np.zeros(B.shape[1], np.float32), np.full(B.shape[1], -np.inf)
    val = np.flatnonzero(sp_ == 1)
    history[val], last[val] = train_total, train_last
    test = np.flatnonzero(sp_ == 2)
    if len(test):
        history[test] = train_total + B[val].sum(axis=0)
        last[test] = np.maximum(train_last, bought_day[val].max(axis=0)) if len(val) else train_last
    if max_items > 0 and history.shape[1] > max_items:
        for k in np.flatnonzero((history > 0).sum(axis=1) > max_items):
            order = np.lexsort((np.arange(history.shape[1]), -history[k]))  # most bought, then lower item id
            history[k, order[max_items:]] = 0.0
    r, c = np.nonzero(history)
    out_rows.append(rows[r].astype(np.int32))
    out_cols.append(distinct[c].astype(np.int32))
    out_counts.append(history[r, c].astype(np.float32))
    if out_recency is not None:
        out_recency.append((np.maximum(day[r] - last[r, c], 0.0) + 1.0).astype(np.float32))


def cap_history(counts: sp.csr_matrix, max_items: int) -> sp.csr_matrix:
    """Keep each basket's ``max_items`` most-bought history items (ties: lower item index).

    Bounds the work per basket (and a request's size): a loyal shopper's full history can hold
    thousands of items, nearly all bought once.
    """
    if max_items <= 0:
        return counts
    counts = counts.tocsr()
    lengths = np.diff(counts.indptr)
    if not len(lengths) or lengths.max() <= max_items:
        return counts
    keep = np.ones(counts.nnz, dtype=bool)
    for r in np.flatnonzero(lengths > max_items):
        lo, hi = counts.indptr[r], counts.indptr[r + 1]
        order = np.lexsort((counts.indices[lo:hi], -counts.data[lo:hi]))
        keep[lo:hi][order[max_items:]] = False
    rows = np.repeat(np.arange(counts.shape[0]), lengths)[keep]
    return sp.csr_matrix((counts.data[keep], (rows, counts.indices[keep])), shape=counts.shape)
