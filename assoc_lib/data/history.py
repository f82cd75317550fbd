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

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

SPLIT_RANK = {"train": 0, "validation": 1, "test": 2}


@dataclass
class History:
    """The shopper's history for a batch of baskets: purchase counts and recency-decayed counts.

    ``decayed[tau]`` holds, per history item, sum over its earlier purchases of exp(-days ago / tau)
    (TIFU-style time decay, evaluated at the basket's own time). It is what a served model computes from
    the request's ``history_counts`` and ``history_days`` (one row per purchase, or per item with the
    days since its last purchase: then the sum is approximated by count · exp(-days / tau)).
    Row slicing keeps the pieces aligned.
    """

    counts: sp.csr_matrix
    decayed: dict[float, sp.csr_matrix] = field(default_factory=dict)
    past: "PastBaskets | None" = None  # the shopper's earlier baskets themselves (personal co-occurrence)

    @property
    def shape(self) -> tuple[int, int]:
        return self.counts.shape

    def __getitem__(self, rows) -> "History":
        past = None if self.past is None else self.past[rows]
        return History(self.counts[rows], {t: m[rows] for t, m in self.decayed.items()}, past)

    def capped(self, max_items: int) -> "History":
        """Each row's ``max_items`` most-bought items only (:func:`cap_history`, ties to the lower index),
        the decayed counts restricted to them; the past baskets unchanged. Itself when no row is longer."""
        counts = self.counts.tocsr()
        if max_items <= 0 or not counts.shape[0] or np.diff(counts.indptr).max() <= max_items:
            return self
        kept = cap_history(counts, max_items)
        mask = (kept > 0).astype(np.float32)
        return History(kept, {t: sp.csr_matrix(m.multiply(mask)) for t, m in self.decayed.items()}, self.past)

    def weights(self, tau: float = 0.0) -> sp.csr_matrix:
        """The prior's input: counts (``tau`` 0) or decayed counts, as CSR."""
        if not tau:
            return self.counts
        if tau not in self.decayed:
            raise KeyError(f"history has no decay {tau:g} days (has {sorted(self.decayed)})")
        return self.decayed[tau]

    def weights_at_counts(self, tau: float) -> np.ndarray:
        """``weights(tau)`` read at the stored entries of ``counts``, in ``counts.data`` order (the
        decayed count of each history item as the counts list them)."""
        counts = self.counts.tocsr()
        rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
        return np.asarray(self.weights(tau).tocsr()[rows, counts.indices]).ravel().astype(np.float32)


@dataclass
class PastBaskets:
    """The shopper's earlier baskets, for scores that need them whole: personal co-occurrence
    (PerNIR-style, docs/design.md §5), what *this* shopper bought together with the items now in the basket.

    Evaluation baskets only (validation and test), with the history's visibility rules: a validation
    basket sees the user's train baskets, a test basket the user's train and validation baskets. Every
    basket of one user in one split sees the same past, so the baskets are stored once, sorted by user and
    split, and each row keeps the range ``[start, stop)`` of its past in ``baskets``.
    """

    baskets: sp.csr_matrix  # [past baskets, items] multi-hot
    days: np.ndarray  # float64 [past baskets]: when each was bought (days since the epoch)
    start: np.ndarray  # int64 [rows]
    stop: np.ndarray  # int64 [rows]
    now: np.ndarray  # float64 [rows]: when the row's own basket was bought

    def __len__(self) -> int:
        return len(self.start)

    def __getitem__(self, rows) -> "PastBaskets":
        return PastBaskets(self.baskets, self.days, self.start[rows], self.stop[rows], self.now[rows])

    def purchases(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Row ``row``'s past as one (item, days ago) pair per purchase, basket by basket: the history rows a
        client sends (count 1 each; a basket's rows share its days, which is how the served model finds the
        baskets again)."""
        lo, hi = int(self.start[row]), int(self.stop[row])
        block = self.baskets[lo:hi]
        ago = np.maximum(self.now[row] - self.days[lo:hi], 0.0)
        return block.indices.astype(np.int64), np.repeat(ago, np.diff(block.indptr))

    def cooc(self, X: sp.csr_matrix, tau: float = 0.0) -> sp.csr_matrix:
        """[rows, items]: sum over the row's past baskets b of w_b · |x ∩ b| · b, where x is the row of ``X``
        (the visible basket) and w_b = exp(-(days between b and now) / tau) (tau 0: 1). An item scores by
        how often this shopper bought it together with the items in the basket."""
        X = sp.csr_matrix(X, dtype=np.float32)
        if X.shape[0] != len(self):
            raise ValueError(f"{X.shape[0]} baskets but {len(self)} history rows")
        lengths = self.stop - self.start
        row = np.repeat(np.arange(len(self)), lengths)
        basket = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) + self.start[row]
        past = self.baskets[basket]
        overlap = np.asarray(past.multiply(X[row]).sum(axis=1), dtype=np.float64).ravel()
        if tau:
            overlap *= np.exp(-np.maximum(self.now[row] - self.days[basket], 0.0) / tau)
        keep = np.flatnonzero(overlap > 0)
        pick = sp.csr_matrix((overlap[keep], (row[keep], np.arange(len(keep)))), shape=(len(self), len(keep)))
        return sp.csr_matrix(pick @ past[keep], dtype=np.float32)


def build_past_baskets(baskets: pd.DataFrame, n_items: int) -> PastBaskets:
    """:class:`PastBaskets` for every row of ``baskets`` (train rows get an empty past: the personal
    co-occurrence is added at score level with a weight chosen on validation, never a training input)."""
    n = len(baskets)
    users = baskets["user_id"].to_numpy(dtype=object)
    known = np.array([isinstance(u, str) and bool(u) for u in users], dtype=bool)
    split = baskets["split"].map(SPLIT_RANK).to_numpy() if n else np.zeros(0, np.int64)
    days = ((baskets["ts"] - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds() / 86_400.0).to_numpy()
    codes = pd.factorize(pd.Series(users).where(known, None))[0] if n else np.zeros(0, np.int64)
    seen = np.flatnonzero(known & (split <= 1))  # train and validation baskets: someone's past
    order = seen[np.lexsort((days[seen], split[seen], codes[seen]))]
    items = baskets["items"].to_numpy()
    lengths = np.fromiter((len(items[r]) for r in order), np.int64, len(order))
    flat = np.concatenate([np.asarray(items[r], np.int64) for r in order]) if lengths.sum() else np.zeros(0, np.int64)
    B = sp.csr_matrix(
        (np.ones(len(flat), np.float32), (np.repeat(np.arange(len(order)), lengths), flat)),
        shape=(len(order), n_items),
    )
    B.sum_duplicates()
    B.data[:] = 1.0
    # where each user's train and validation baskets begin and end in ``order``
    key = codes[order] * 3 + split[order]
    start = np.zeros(n, np.int64)
    stop = np.zeros(n, np.int64)
    rows = np.flatnonzero(known & (split >= 1))
    start[rows] = np.searchsorted(key, codes[rows] * 3, side="left")
    stop[rows] = np.searchsorted(key, codes[rows] * 3 + split[rows] - 1, side="right")  # val: train; test: +val
    return PastBaskets(B, days[order].astype(np.float64), start, stop, days.astype(np.float64))


def as_history(H) -> History | None:
    """A :class:`History` from a History, a counts CSR matrix, or None."""
    return H if H is None or isinstance(H, History) else History(sp.csr_matrix(H))


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
    counts, recency, _ = _histories(baskets, n_items, with_recency, max_items)
    return counts, recency


def build_history(baskets: pd.DataFrame, n_items: int, max_items: int = 0, taus=(), tau_rows=None) -> History:
    """Counts and, for each decay time in ``taus`` (days), recency-decayed counts, as one :class:`History`.

    ``tau_rows`` (a boolean mask over the baskets, or one mask per decay time) limits the decayed
    matrices to those rows (others are empty): evaluation needs a grid of decays on validation and
    test only, the network its own few decays on every basket.
    """
    counts, _, decayed = _histories(baskets, n_items, False, max_items, tuple(taus), tau_rows)
    return History(counts, decayed)


def _histories(baskets, n_items, with_recency, max_items, taus=(), tau_rows=None):
    n = len(baskets)
    if n == 0:
        empty = sp.csr_matrix((0, n_items), dtype=np.float32)
        return empty, empty.copy(), {t: empty.copy() for t in taus}
    if not isinstance(tau_rows, dict):
        mask = np.ones(n, dtype=bool) if tau_rows is None else np.asarray(tau_rows, dtype=bool)
        tau_rows = {t: mask for t in taus}
    tau_rows = {t: (np.ones(n, dtype=bool) if m is None else np.asarray(m, dtype=bool)) for t, m in tau_rows.items()}
    out_decayed = {t: ([], [], []) for t in taus}
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
                out_decayed,
                tau_rows,
            )
    shape = (n, n_items)
    counts = _csr(out_rows, out_cols, out_counts, shape)
    decayed = {t: _csr(r, c, v, shape) for t, (r, c, v) in out_decayed.items()}
    recency = _csr(out_rows, out_cols, out_recency, shape) if with_recency else None
    return counts, recency, decayed


def _csr(rows: list, cols: list, values: list, shape) -> sp.csr_matrix:
    """CSR from per-user pieces of (row, column, value) arrays (none: an empty matrix)."""
    cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)
    return sp.csr_matrix((cat(values, np.float32), (cat(rows, np.int32), cat(cols, np.int32))), shape=shape)


def _user_history(
    rows,
    items,
    days,
    stamp,
    split,
    out_rows,
    out_cols,
    out_counts,
    out_recency,
    max_items: int = 0,
    out_decayed=None,
    tau_rows=None,
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
    visible = None
    for tau, (d_rows, d_cols, d_vals) in (out_decayed or {}).items():
        wanted = tau_rows[tau][rows[r]]
        if not wanted.any():
            continue
        if visible is None:
            visible = _visibility(len(rows), first_of_instant if len(train) else None, train, val, test)
            gap = np.maximum(day[:, None] - day[None, :], 0.0)
        rr, cc = r[wanted], c[wanted]
        need, at = np.unique(rr, return_inverse=True)
        weights = np.where(visible[need], np.exp(-gap[need] / tau), 0.0)
        dec = weights @ B.astype(np.float64)  # [needed baskets, items]
        d_rows.append(rows[rr].astype(np.int32))
        d_cols.append(distinct[cc].astype(np.int32))
        d_vals.append(dec[at, cc].astype(np.float32))
    out_rows.append(rows[r].astype(np.int32))
    out_cols.append(distinct[c].astype(np.int32))
    out_counts.append(history[r, c].astype(np.float32))
    if out_recency is not None:
        out_recency.append((np.maximum(day[r] - last[r, c], 0.0) + 1.0).astype(np.float32))


def _visibility(n: int, first_of_instant, train, val, test) -> np.ndarray:
    """[basket k, basket j] of one user: may k's history see j? The counts' rules: a train basket sees
    earlier train baskets (not those at its own instant), validation sees train, test sees train and
    validation. The decayed counts weight each visible basket by exp(-(day_k - day_j) / tau)."""
    allowed = np.zeros((n, n), dtype=bool)
    if len(train):
        allowed[np.ix_(train, train)] = np.arange(len(train))[None, :] < first_of_instant[:, None]
    allowed[np.ix_(val, train)] = True
    allowed[np.ix_(test, np.concatenate([train, val]))] = True
    return allowed


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
