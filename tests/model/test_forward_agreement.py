"""One forward pass, three runtimes: the Keras network (training), numpy (evaluation) and the exported
SavedModel (serving) give the same scores on the same inputs, for a network with every optional piece."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from assoc_lib.data.history import History
from assoc_lib.models.network import DeepParams, build_network, forward_spec, numpy_logits
from assoc_lib.models.servable import ServableModel
from assoc_lib.records import ModelKind
from assoc_lib.serving.export import export_saved_model

N_ITEMS = 13
BASKETS = [[0, 3, 5], [7], [2, 11, 12, 4], [9, 1]]
# the history as a client sends it: (item, count, days since) rows; an item may come back in several rows
EVENTS = [
    [(3, 2.0, 4.0), (8, 3.0, 30.0), (8, 2.0, 2.0)],
    [],
    [(0, 1.0, 90.0)],
    [(6, 3.0, 1.0), (9, 1.0, 0.0), (10, 7.0, 45.0)],
]
DECAY = 20.0
HISTORY = [{} for _ in EVENTS]  # item -> purchase count
DECAYED = [{} for _ in EVENTS]  # item -> sum of count · exp(-days / DECAY), by hand
for _row, _events in enumerate(EVENTS):
    for _item, _count, _days in _events:
        HISTORY[_row][_item] = HISTORY[_row].get(_item, 0.0) + _count
        DECAYED[_row][_item] = DECAYED[_row].get(_item, 0.0) + _count * float(np.exp(-_days / DECAY))


def _network(personal: bool):
    params = DeepParams(embedding_dim=6, hidden=(5, 4), layer_norm=True, personal=personal, history_decay=DECAY, seed=3)
    net = build_network(N_ITEMS, params)
    rng = np.random.default_rng(0)
    # random weights everywhere (biases, layer-norm gains, the repeat prior included): nothing stays at its init
    net.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in net.get_weights()])
    return net


def _padded(rows, width, fill, dtype):
    out = np.full((len(rows), width), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _csr(rows: list[dict]) -> sp.csr_matrix:
    """[len(rows), N_ITEMS] from one {item: value} dict per row."""
    return sp.csr_matrix(
        (
            [v for r in rows for v in r.values()],
            ([i for i, r in enumerate(rows) for _ in r], [j for r in rows for j in r]),
        ),
        shape=(len(rows), N_ITEMS),
        dtype=np.float32,
    )


def _baskets() -> sp.csr_matrix:
    return _csr([{j: 1.0 for j in b} for b in BASKETS])


def _history() -> History:
    return History(_csr(HISTORY), {DECAY: _csr(DECAYED)})


@pytest.mark.parametrize("personal", [False, True])
def test_keras_numpy_and_saved_model_agree(personal, tmp_path):
    import tensorflow as tf

    net = _network(personal)
    spec = forward_spec(net)
    assert len(spec["layers"]) == 4  # two dense + two layer norms, found by type
    X, H = _baskets(), _history()
    assert H.counts[0, 8] == 5.0 and H.decayed[DECAY][0, 8] == pytest.approx(3 * np.exp(-1.5) + 2 * np.exp(-0.1))
    # Keras (training path)
    ids = _padded(BASKETS, 4, -1, np.int32)
    inputs = [ids]
    if personal:
        inputs += [
            _padded([list(h) for h in HISTORY], 3, -1, np.int32),
            _padded([list(np.log1p(list(h.values()))) for h in HISTORY], 3, 0.0, np.float32),
            _padded([list(np.log1p(list(h.values()))) for h in DECAYED], 3, 0.0, np.float32),
        ]
    keras_logits = np.asarray(net(inputs, training=False)[0])
    # numpy (evaluation path)
    np_logits = numpy_logits(spec, X, H if personal else None)
    np.testing.assert_allclose(keras_logits, np_logits, rtol=1e-4, atol=1e-4)

    # SavedModel (serving path): every item but the inputs comes back with its score
    vocab = [f"i{j}" for j in range(N_ITEMS)]
    model = ServableModel("deep", ModelKind.DEEP, vocab, np.linspace(1, 0, N_ITEMS, dtype=np.float32), deep=spec)
    export = export_saved_model(model, tmp_path / "export", {}, k=N_ITEMS)
    loaded = tf.saved_model.load(str(export))
    items = tf.constant([[vocab[j] for j in b] + [""] * (4 - len(b)) for b in BASKETS])
    if personal:
        hist = tf.constant([[vocab[j] for j, _, _ in e] + [""] * (3 - len(e)) for e in EVENTS])
        counts = tf.constant([[c for _, c, _ in e] + [0.0] * (3 - len(e)) for e in EVENTS], tf.float32)
        days = tf.constant([[d for _, _, d in e] + [0.0] * (3 - len(e)) for e in EVENTS], tf.float32)
        out = loaded.signatures["complete_basket_personal"](
            items=items, history=hist, history_counts=counts, history_days=days
        )
    else:
        out = loaded.signatures["complete_basket"](items=items)
    for row, basket in enumerate(BASKETS):
        served = dict(zip([s.decode() for s in out["item_ids"][row].numpy()], out["scores"][row].numpy()))
        expected = {vocab[j]: np_logits[row, j] for j in range(N_ITEMS) if j not in basket}
        assert set(served) == set(expected) | {k for k, v in served.items() if v == -np.inf}
        for item, score in expected.items():
            assert served[item] == pytest.approx(float(score), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("personal", [False, True])
def test_logits_at_columns_equal_the_full_logits_there(personal):
    """Sampled-softmax training scores a subset of the columns: the same numbers as the full forward pass
    there, the repeat prior included (a history item outside the subset is dropped, not moved)."""
    from assoc_lib.models.network import logits_at

    net = _network(personal)
    inputs = [_padded(BASKETS, 4, -1, np.int32)]
    if personal:
        inputs += [
            _padded([list(h) for h in HISTORY], 3, -1, np.int32),
            _padded([list(np.log1p(list(h.values()))) for h in HISTORY], 3, 0.0, np.float32),
            _padded([list(np.log1p(list(h.values()))) for h in DECAYED], 3, 0.0, np.float32),
        ]
    full, hidden = net(inputs, training=False)
    cols = np.array([8, 0, 12, 3, 6], np.int32)  # history items 8, 3, 6 in; 0's history item 0 in, 9/10 out
    sub = logits_at(net, hidden, cols, tuple(inputs[1:]))
    np.testing.assert_allclose(np.asarray(sub), np.asarray(full)[:, cols], rtol=1e-5, atol=1e-5)


def test_mix_uses_its_own_weight_for_baskets_without_history(tmp_path):
    """deep+ease with a personal mix weight and an anonymous one: numpy and the SavedModel pick the weight
    per row (row 1 has no history), and the anonymous signature uses the anonymous weight."""
    import tensorflow as tf

    from assoc_lib.models.baselines import NeighbourTable
    from assoc_lib.models.network import mix

    net = _network(True)
    spec = forward_spec(net)
    rng = np.random.default_rng(4)
    table = NeighbourTable(
        rng.integers(0, N_ITEMS, size=(N_ITEMS, 3)).astype(np.int32),
        rng.random((N_ITEMS, 3)).astype(np.float32),
        np.zeros(N_ITEMS, np.float32),
        "sum",
    )
    vocab = [f"i{j}" for j in range(N_ITEMS)]
    pop = np.linspace(1, 0, N_ITEMS, dtype=np.float32)
    model = ServableModel(
        "deep+ease", ModelKind.DEEP, vocab, pop, table=table, deep=spec, mix_weight=0.2, mix_weight_anonymous=0.9
    )
    X, H = _baskets(), _history()
    scores = model.score(X, H)
    deep, other = numpy_logits(spec, X, H), table.score(X)
    for row, w in ((0, 0.2), (1, 0.9), (2, 0.2)):  # BASKETS[1] has no history
        np.testing.assert_allclose(scores[row], mix(deep, other, w)[row], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.score(X), mix(numpy_logits(spec, X), other, 0.9), rtol=1e-5, atol=1e-5)

    export = export_saved_model(model, tmp_path / "export", {}, k=N_ITEMS)
    loaded = tf.saved_model.load(str(export))
    items = tf.constant([[vocab[j] for j in b] + [""] * (4 - len(b)) for b in BASKETS])
    out = loaded.signatures["complete_basket_personal"](
        items=items,
        history=tf.constant([[vocab[j] for j, _, _ in e] + [""] * (3 - len(e)) for e in EVENTS]),
        history_counts=tf.constant([[c for _, c, _ in e] + [0.0] * (3 - len(e)) for e in EVENTS], tf.float32),
        history_days=tf.constant([[d for _, _, d in e] + [0.0] * (3 - len(e)) for e in EVENTS], tf.float32),
    )
    anonymous = loaded.signatures["complete_basket"](items=items)
    for row, basket in enumerate(BASKETS):
        expected = -np.sort(-np.delete(scores[row], basket))
        np.testing.assert_allclose(out["scores"][row].numpy()[: len(expected)], expected, rtol=1e-4, atol=1e-4)
        expected_anon = -np.sort(-np.delete(model.score(X)[row], basket))
        got = anonymous["scores"][row].numpy()[: len(expected_anon)]
        np.testing.assert_allclose(got, expected_anon, rtol=1e-4, atol=1e-4)
