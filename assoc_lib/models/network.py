"""The deep basket-completion network (docs/design.md §5), as small Keras pieces.

Mult-DAE made practical: the basket enters as item ids through an embedding-bag
(``sum_i E[i] / sqrt(|basket|)`` = W·x/‖x‖ on the multi-hot basket, never a dense
vocabulary-wide input), then hidden layers, then one logit per vocabulary item.
Ids are padded with -1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from assoc_lib.config import ModelsConfig
from assoc_lib.data.history import as_history
from assoc_lib.tfrt import tensorflow

_M = ModelsConfig  # the defaults live once, in the config; DeepParams only names them for the network


@dataclass
class DeepParams:
    """The network's hyperparameters; every default is the config's (``[models] deep_*``)."""

    embedding_dim: int = _M.deep_embedding_dim
    hidden: tuple[int, ...] = ()  # extra hidden layers after the embedding-bag (each: dense + tanh [+ layer norm])
    layer_norm: bool = _M.deep_layer_norm
    input_dropout: float = _M.deep_input_dropout  # share of each basket dropped when training (denoising)
    dropout: float = _M.deep_dropout  # dropout on hidden activations
    epochs: int = _M.deep_epochs
    batch_size: int = _M.deep_batch_size
    learning_rate: float = _M.deep_learning_rate
    l2: float = _M.deep_l2
    patience: int = _M.deep_patience
    # Model selection: the latest epoch within this relative distance of the best validation NDCG@10
    # is kept (validation noise should not pick an under-trained early epoch).
    selection_tolerance: float = _M.deep_selection_tolerance
    sampled_softmax: int = _M.deep_sampled_softmax  # >0: negatives for sampled softmax; 0: full softmax
    personal: bool = False  # second input: the shopper's history (items + purchase counts); set from the data
    history_dropout: float = _M.deep_history_dropout
    # days: the repeat prior also reads log(1 + sum of exp(-days ago / decay) over each item's purchases)
    history_decay: float = _M.deep_history_decay
    masked_targets: bool = _M.deep_masked_targets  # score only the hidden items (hide-and-predict training)
    weight_average_epochs: float = _M.deep_weight_average_epochs  # horizon of the weights' average (0: off)
    deterministic: bool = _M.deep_deterministic  # CPU: TensorFlow's op determinism (see train.pick_strategy)
    seed: int = _M.seed

    @classmethod
    def from_config(cls, m: ModelsConfig, personal: bool = False) -> "DeepParams":
        return cls(
            embedding_dim=m.deep_embedding_dim,
            hidden=tuple(int(x) for x in str(m.deep_hidden).split(",") if x.strip()),
            layer_norm=m.deep_layer_norm,
            input_dropout=m.deep_input_dropout,
            dropout=m.deep_dropout,
            epochs=m.deep_epochs,
            batch_size=m.deep_batch_size,
            learning_rate=m.deep_learning_rate,
            l2=m.deep_l2,
            patience=m.deep_patience,
            selection_tolerance=m.deep_selection_tolerance,
            sampled_softmax=m.deep_sampled_softmax,
            personal=personal,
            history_dropout=m.deep_history_dropout,
            history_decay=m.deep_history_decay,
            masked_targets=m.deep_masked_targets,
            weight_average_epochs=m.deep_weight_average_epochs,
            deterministic=m.deep_deterministic,
            seed=m.seed,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


def build_network(n_items: int, params: DeepParams):
    """Keras model: ids [batch, n] (pad -1) → (logits [batch, n_items], hidden [batch, d])."""
    tensorflow()  # keras imports TF: import it quietly first (tfrt)
    import keras
    from keras import layers, ops

    class EmbeddingBag(layers.Layer):
        """sum of item embeddings / sqrt(count) + bias, skipping padding."""

        def __init__(self, n_items, dim, l2=0.0, **kw):
            super().__init__(**kw)
            self.n_items, self.dim = n_items, dim
            reg = keras.regularizers.L2(l2) if l2 else None
            self.table = self.add_weight(
                shape=(n_items + 1, dim), initializer="glorot_uniform", regularizer=reg, name="item_embeddings"
            )
            self.bias = self.add_weight(shape=(dim,), initializer="zeros", name="bag_bias")

        def call(self, ids):
            mask = ops.cast(ops.greater_equal(ids, 0), self.compute_dtype)
            vectors = ops.take(self.table, ops.maximum(ids, 0) + 1, axis=0)  # row 0 unused padding slot
            summed = ops.sum(vectors * ops.expand_dims(mask, -1), axis=1)
            count = ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1.0)
            return summed / ops.sqrt(count) + self.bias

    class HistoryBag(layers.Layer):
        """sum of history-item embeddings weighted by log(1 + count), L2-normalised by the weights."""

        def __init__(self, n_items, dim, **kw):
            super().__init__(**kw)
            self.table = self.add_weight(
                shape=(n_items + 1, dim), initializer="glorot_uniform", name="history_embeddings"
            )

        def call(self, ids, weights):
            w = weights * ops.cast(ops.greater_equal(ids, 0), self.compute_dtype)
            vectors = ops.take(self.table, ops.maximum(ids, 0) + 1, axis=0)
            summed = ops.sum(vectors * ops.expand_dims(w, -1), axis=1)
            # the norm in float32: under mixed_float16 the floor 1e-6 is a float16 subnormal, flushed to zero on
            # CPUs, and a basket shown no history (history dropout) then gave 0 / 0 and a NaN loss
            norm = ops.sqrt(ops.maximum(ops.sum(ops.square(ops.cast(w, "float32")), axis=1, keepdims=True), 1e-6))
            return summed / ops.cast(norm, summed.dtype)

    class RepeatPrior(layers.Layer):
        """logits_j += (gamma + r_j) · log(1 + count_j) + (delta + s_j) · log(1 + decayed count_j).

        How much each item is bought again (r_j), and how much that depends on how recently (s_j): an
        item bought weekly matters less a month later; a yearly one still counts."""

        def __init__(self, n_items, decay, **kw):
            super().__init__(**kw)
            self.n_items, self.decay = n_items, float(decay)
            self.gamma = self.add_weight(shape=(), initializer=keras.initializers.Constant(1.0), name="gamma")
            self.repeat_bias = self.add_weight(shape=(n_items,), initializer="zeros", name="repeat_bias")
            self.delta = self.add_weight(shape=(), initializer=keras.initializers.Constant(1.0), name="delta")
            self.recency_bias = self.add_weight(shape=(n_items,), initializer="zeros", name="recency_bias")

        def call(self, logits, ids, weights, decayed):
            return add_at(logits, ids, prior_terms(self, ids, weights, decayed))

    ids = keras.Input(shape=(None,), dtype="int32", name="items")
    inputs = [ids]
    pre = EmbeddingBag(n_items, params.embedding_dim, params.l2, name="bag")(ids)
    if params.personal:
        hist_ids = keras.Input(shape=(None,), dtype="int32", name="history")
        hist_w = keras.Input(shape=(None,), dtype="float32", name="history_weights")
        hist_dw = keras.Input(shape=(None,), dtype="float32", name="history_decayed")
        inputs += [hist_ids, hist_w, hist_dw]
        pre = layers.Add(name="bag_plus_history")(
            [pre, HistoryBag(n_items, params.embedding_dim, name="history_bag")(hist_ids, hist_w)]
        )
    h = layers.Activation("tanh", name="bag_act")(pre)
    for i, width in enumerate(params.hidden):
        if params.dropout:
            h = layers.Dropout(params.dropout, seed=params.seed + i)(h)
        h = layers.Dense(width, activation="tanh", name=f"hidden_{i}")(h)
        if params.layer_norm:
            h = layers.LayerNormalization(name=f"norm_{i}")(h)
    if params.dropout:
        h = layers.Dropout(params.dropout, seed=params.seed + 99)(h)
    logits = layers.Dense(n_items, name="item_logits", dtype="float32")(h)
    if params.personal:
        # float32 like the logits it adds to: under mixed_float16 a float16 layer would cast the float32 logits
        # and its own weights down (and its sum of float32 weights and float16 counts does not build)
        prior = RepeatPrior(n_items, params.history_decay, name="repeat_prior", dtype="float32")
        logits = prior(logits, hist_ids, hist_w, hist_dw)
    return keras.Model(inputs, [logits, h], name="basket_dae")


def forward_spec(network) -> dict:
    """Plain numpy weights of a trained network, in the order ``head`` replays them.

    The layers are found by type and graph order (Dense / LayerNormalization between the bag and the
    output layer), so renaming a layer cannot silently drop it from the export."""
    tensorflow()  # keras imports TF: import it quietly first (tfrt)
    from keras import layers as kl

    bag = network.get_layer("bag")
    out = network.get_layer("item_logits")
    spec = {
        "embeddings": np.asarray(bag.table.numpy()[1:], np.float32),
        "bag_bias": np.asarray(bag.bias.numpy(), np.float32),
        "layers": [],
    }
    for layer in network.layers:
        if isinstance(layer, kl.Dense) and layer is not out:
            k, b = layer.get_weights()
            spec["layers"].append({"type": "dense_tanh", "kernel": k.astype(np.float32), "bias": b.astype(np.float32)})
        elif isinstance(layer, kl.LayerNormalization):
            g, b = layer.get_weights()
            spec["layers"].append(
                {
                    "type": "layer_norm",
                    "gamma": g.astype(np.float32),
                    "beta": b.astype(np.float32),
                    "epsilon": float(layer.epsilon),
                }
            )
    k, b = out.get_weights()
    spec["out_kernel"], spec["out_bias"] = k.astype(np.float32), b.astype(np.float32)
    if any(layer.name == "history_bag" for layer in network.layers):
        spec["hist_embeddings"] = np.asarray(network.get_layer("history_bag").table.numpy()[1:], np.float32)
        prior = network.get_layer("repeat_prior")
        spec["repeat_weight"] = (float(prior.gamma.numpy()) + prior.repeat_bias.numpy()).astype(np.float32)
        spec["recency_weight"] = (float(prior.delta.numpy()) + prior.recency_bias.numpy()).astype(np.float32)
        spec["history_decay"] = np.asarray(prior.decay, np.float32)
    return spec


# ---------------------------------------------------------------------------------------------------------
# The forward pass after the bag, written once for numpy (evaluation) and TensorFlow (the export).
# ``ops`` is NUMPY or tf_ops(): the same few array functions under the same names.


class _NumpyOps:
    tanh = staticmethod(np.tanh)
    sqrt = staticmethod(np.sqrt)
    matmul = staticmethod(np.matmul)
    maximum = staticmethod(np.maximum)

    @staticmethod
    def moments(x, axis: int):
        return x.mean(axis=axis, keepdims=True), x.var(axis=axis, keepdims=True)


NUMPY = _NumpyOps()


def tf_ops():
    """The TensorFlow counterparts of ``NUMPY``."""
    from types import SimpleNamespace

    tf = tensorflow()
    return SimpleNamespace(
        tanh=tf.tanh,
        sqrt=tf.sqrt,
        matmul=tf.matmul,
        maximum=tf.maximum,
        moments=lambda x, axis: tf.nn.moments(x, axes=[axis], keepdims=True),
    )


def head(pre, spec: dict, ops=NUMPY):
    """Logits from the bag's pre-activation: tanh, the hidden layers (dense + tanh, layer norm), output layer."""
    h = ops.tanh(pre)
    for layer in spec["layers"]:
        if layer["type"] == "dense_tanh":
            h = ops.tanh(ops.matmul(h, layer["kernel"]) + layer["bias"])
        else:
            mu, var = ops.moments(h, -1)
            h = (h - mu) / ops.sqrt(var + layer["epsilon"]) * layer["gamma"] + layer["beta"]
    return ops.matmul(h, spec["out_kernel"]) + spec["out_bias"]


def scatter_rows(ids, weights, n_items: int):
    """TF: dense [batch, n_items] with ``weights`` summed at ``ids`` (padding ids < 0 ignored).

    The exported graph's scatter of history weights (the network's own repeat prior adds its terms with
    ``add_at``)."""
    tf = tensorflow()

    ids = tf.cast(ids, tf.int64)
    n_items = tf.cast(n_items, tf.int64)  # a Python int or a tensor (the sampled columns of a training step)
    batch = tf.shape(ids, out_type=tf.int64)[0]
    valid = ids >= 0
    rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(ids, out_type=tf.int64))
    seg = tf.boolean_mask(rows * n_items + ids, valid)
    flat = tf.math.unsorted_segment_sum(tf.boolean_mask(tf.cast(weights, tf.float32), valid), seg, batch * n_items)
    return tf.reshape(flat, tf.stack([batch, n_items]))


def logits_at(network, hidden, cols, hist=()):
    """The network's logits at the item columns ``cols`` only: equal to ``tf.gather(logits, cols, axis=1)``
    without computing the other columns (sampled softmax in training; tested against the full logits).

    ``hidden`` is the network's second output; ``hist`` its (history ids, weights, decayed weights) inputs,
    whose repeat prior is added at the columns it names."""
    tf = tensorflow()

    out = network.get_layer("item_logits")
    logits = tf.matmul(hidden, tf.gather(out.kernel, cols, axis=1)) + tf.gather(out.bias, cols)
    if hist:
        ids, weights, decayed = hist
        prior = network.get_layer("repeat_prior")
        at = tf.where(ids >= 0, tf.gather(column_of(cols, prior.n_items), tf.maximum(ids, 0)), -1)  # -1: not a column
        logits = add_at(logits, at, prior_terms(prior, ids, weights, decayed))
    return logits


def column_of(cols, n_items: int):
    """TF: [n_items] lookup from an item id to its position among a sampled step's columns ``cols`` (-1: not
    one of them)."""
    tf = tensorflow()
    return tf.tensor_scatter_nd_update(tf.fill([n_items], -1), cols[:, None], tf.range(tf.shape(cols)[0]))


def prior_terms(prior, ids, weights, decayed):
    """TF: float32 [batch, h], the repeat prior's term of each history entry: (gamma + r_j) · log(1 + count)
    + (delta + s_j) · log(1 + decayed count) at its item j (padding gives a value that ``add_at`` drops)."""
    tf = tensorflow()
    j = tf.maximum(ids, 0)
    return tf.cast(weights, tf.float32) * tf.gather(prior.gamma + prior.repeat_bias, j) + tf.cast(
        decayed, tf.float32
    ) * tf.gather(prior.delta + prior.recency_bias, j)


def add_at(logits, cols, values):
    """TF: ``logits`` [batch, n] with ``values`` [batch, h] added at (row, ``cols``) where ``cols`` >= 0,
    repeated columns summed. A scatter of the history's entries only: with dense [batch, n] rows of the prior
    (``scatter_rows``) instead, ``benchmarks/train_step.py`` measures a sampled training step on Complete
    Journey 1.24x as long."""
    tf = tensorflow()
    valid = cols >= 0
    rows = tf.broadcast_to(tf.range(tf.shape(cols)[0])[:, None], tf.shape(cols))
    where = tf.stack([tf.boolean_mask(rows, valid), tf.boolean_mask(tf.cast(cols, tf.int32), valid)], 1)
    return tf.tensor_scatter_nd_add(logits, where, tf.boolean_mask(values, valid))


def history_weights(H: sp.csr_matrix) -> sp.csr_matrix:
    """log(1 + w) of each history item's (decayed) purchase count."""
    W = sp.csr_matrix(H, dtype=np.float32, copy=True)
    W.data = np.log1p(W.data)
    return W


def numpy_logits(spec: dict, X: sp.csr_matrix, H=None) -> np.ndarray:
    """The network's logits computed from ``forward_spec`` with numpy (reference for the export).

    ``H``: the history (a ``History`` with the network's decay, CSR rows aligned with X); ignored by a
    basket-only network.
    """
    H = as_history(H)
    counts = np.maximum(np.asarray(X.sum(axis=1)).ravel(), 1.0)
    pre = np.asarray(X @ spec["embeddings"]) / np.sqrt(counts)[:, None] + spec["bag_bias"]
    personal = H is not None and "hist_embeddings" in spec
    if personal:
        W = history_weights(H.counts)
        norm = np.sqrt(np.maximum(np.asarray(W.multiply(W).sum(axis=1)).ravel(), 1e-6))
        pre = pre + np.asarray(W @ spec["hist_embeddings"]) / norm[:, None]
    logits = head(pre, spec, NUMPY)
    if personal:
        _add_at_entries(logits, W, spec["repeat_weight"])
        if "recency_weight" in spec:
            _add_at_entries(logits, history_weights(H.weights(float(spec["history_decay"]))), spec["recency_weight"])
    return logits


def _add_at_entries(logits: np.ndarray, W: sp.csr_matrix, weight: np.ndarray) -> None:
    """``logits += W · diag(weight)``, in place and at W's entries only (the dense form's other terms add 0):
    no dense [batch, items] copy of the history."""
    W.sum_duplicates()
    rows = np.repeat(np.arange(W.shape[0]), np.diff(W.indptr))
    logits[rows, W.indices] += W.data * weight[W.indices]


def item_embeddings(spec: dict) -> np.ndarray:
    """One vector per item: its input (basket) embedding and its output weights, each L2-normalised.

    On Complete Journey the pair predicts categories better than either half (insights.category_prediction).
    """

    def unit(a):
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    return np.hstack([unit(spec["embeddings"]), unit(spec["out_kernel"].T)]).astype(np.float32)


def standardise(scores, ops=NUMPY):
    """Per-basket z-score over the vocabulary: puts different scorers on one scale before mixing."""
    mu, var = ops.moments(scores, 1)
    return (scores - mu) / ops.maximum(ops.sqrt(var), 1e-8)


def mix(deep_logits, other, weight: float, ops=NUMPY):
    """``(1-w)·z(deep) + w·z(other)``: the score-level mix of the network and a neighbour table."""
    return (1.0 - weight) * standardise(deep_logits, ops) + weight * standardise(other, ops)
