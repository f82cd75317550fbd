"""Seeded synthetic orders with planted structure, for tests and offline runs.

Structure planted (and written to ``ground_truth.json``):
- Zipf popularity over items;
- categories, and users who prefer two of them;
- complementary groups: buying an anchor A adds its partners B and C with high probability;
- users with stable favourites they buy again (the signal personalised models use).

Each day is drawn from its own ``SeedSequence((seed, day_index))`` child, so the
same seed gives the same bytes and a longer run extends a shorter one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from assoc_lib.data import contract

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthSpec:
    n_items: int = 300
    n_categories: int = 12
    n_users: int = 200
    orders_per_day: int = 60
    n_groups: int = 20
    complement_prob: float = 0.7
    guest_share: float = 0.1
    zipf_a: float = 1.1
    seed: int = 42


def _catalog(spec: SynthSpec, rng: np.random.Generator) -> pd.DataFrame:
    ids = [f"P{i:05d}" for i in range(spec.n_items)]
    categories = rng.integers(0, spec.n_categories, size=spec.n_items)
    departments = categories // 3
    return pd.DataFrame(
        {
            "item_id": ids,
            "title": [f"Product {i} ({'cat%02d' % c})" for i, c in enumerate(categories)],
            "department": [f"dept{d:02d}" for d in departments],
            "category": [f"cat{c:02d}" for c in categories],
            "product_type": [f"type{c:02d}-{i % 4}" for i, c in enumerate(categories)],
            "brand": [f"brand{i % 17:02d}" for i in range(spec.n_items)],
        }
    )


def _world(spec: SynthSpec) -> dict:
    """Everything fixed across days: catalogue, popularity, groups, users."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0xC0FFEE]))
    catalog = _catalog(spec, rng)
    ranks = rng.permutation(spec.n_items) + 1
    popularity = 1.0 / ranks.astype(float) ** spec.zipf_a
    popularity /= popularity.sum()
    # Groups from disjoint items drawn among the 150 most popular, so they are observable.
    top = np.argsort(-popularity)[: max(spec.n_groups * 3, min(150, spec.n_items))]
    chosen = rng.choice(top, size=spec.n_groups * 3, replace=False)
    groups = chosen.reshape(spec.n_groups, 3)
    categories = catalog["category"].str[3:].astype(int).to_numpy()
    users = []
    for u in range(spec.n_users):
        prefs = rng.choice(spec.n_categories, size=2, replace=False)
        favourites = rng.choice(spec.n_items, size=5, replace=False, p=popularity)
        users.append({"raw_id": f"user{u:05d}", "prefs": prefs, "favourites": favourites})
    return {"catalog": catalog, "popularity": popularity, "groups": groups, "categories": categories, "users": users}


def _day_orders(spec: SynthSpec, world: dict, day: dt.date, day_index: int) -> pd.DataFrame:
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, day_index]))
    pop, cats = world["popularity"], world["categories"]
    anchors = {int(g[0]): (int(g[1]), int(g[2])) for g in world["groups"]}
    n_orders = max(1, int(rng.poisson(spec.orders_per_day)))
    day_start = pd.Timestamp(day, tz="UTC")
    rows = []
    for o in range(n_orders):
        user = world["users"][int(rng.integers(len(world["users"])))]
        guest = rng.random() < spec.guest_share
        size = 1 + int(rng.poisson(3))
        in_pref = np.isin(cats, user["prefs"])
        pref_p = pop * in_pref
        pref_p /= pref_p.sum()
        basket: list[int] = []
        for _ in range(size):
            r = rng.random()
            if r < 0.3 and not guest:
                item = int(rng.choice(user["favourites"]))
            elif r < 0.7:
                item = int(rng.choice(len(pop), p=pref_p))
            else:
                item = int(rng.choice(len(pop), p=pop))
            if item not in basket:
                basket.append(item)
        for item in list(basket):
            for partner in anchors.get(item, ()):
                if partner not in basket and rng.random() < spec.complement_prob:
                    basket.append(partner)
        seconds = int(rng.integers(8 * 3600, 21 * 3600))
        ts = day_start + pd.Timedelta(seconds=seconds)
        order_id = f"O{day.strftime('%Y%m%d')}-{o:05d}"
        store = f"S{int(rng.integers(3)):02d}"
        for item in basket:
            rows.append(
                {
                    "order_id": order_id,
                    "user_id": None if guest else user["raw_id"],
                    "item_id": world["catalog"]["item_id"].iat[item],
                    "ts": ts,
                    "quantity": 1 + int(rng.poisson(0.3)),
                    "price": round(1.0 + (item % 23) * 0.5, 2),
                    "store_id": store,
                }
            )
    return pd.DataFrame(rows)


def synthesize(
    out_dir: str | Path,
    start: dt.date | str,
    days: int,
    seed: int = 42,
    pseudonym_key: bytes | None = None,
    spec: SynthSpec | None = None,
) -> dict:
    """Write ``days`` daily partitions from ``start`` plus catalog and ground truth under ``out_dir``."""
    spec = spec or SynthSpec(seed=seed)
    if spec.seed != seed:
        spec = SynthSpec(**{**asdict(spec), "seed": seed})
    start = contract.as_date(start)
    out = Path(out_dir)
    world = _world(spec)
    key = pseudonym_key if pseudonym_key is not None else contract.pseudonym_key()
    orders_dir = out / "raw" / "orders"
    rows = 0
    for i in range(days):
        day = start + dt.timedelta(days=i)
        df = _day_orders(spec, world, day, i)
        df["user_id"] = contract.pseudonymise(df["user_id"], key)
        contract.write_partition(
            contract.conform_orders(df).sort_by(
                [("ts", "ascending"), ("order_id", "ascending"), ("item_id", "ascending")]
            ),
            orders_dir,
            day,
        )
        rows += len(df)
    contract.write_catalog(contract.conform_catalog(world["catalog"]), out / "raw" / "catalog.parquet")
    ids = world["catalog"]["item_id"]
    truth = {
        "spec": asdict(spec),
        "start": start.isoformat(),
        "days": days,
        "groups": [[ids.iat[int(i)] for i in g] for g in world["groups"]],
        "planted_pairs": sorted([ids.iat[int(g[0])], ids.iat[int(p)]] for g in world["groups"] for p in g[1:]),
        "top_items": [ids.iat[int(i)] for i in np.argsort(-world["popularity"])[:10]],
    }
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=2, sort_keys=True) + "\n")
    summary = {"partitions": days, "rows": rows, "items": spec.n_items, "out": str(out)}
    log.info("synthetic data: %d days, %d rows, %d items -> %s", days, rows, spec.n_items, out)
    return summary
