"""stn_jax.models: shapes of every model, identity at init, gradients, a train step, counts, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import stn_jax
from helpers import identity_resample
from stn_jax import models
from stn_jax.models import MODEL_NAMES, build_model, count_params
from stn_jax.optim import with_localisation_lr

# (input_shape, num_classes, kwargs) per model: the paper's sizes, checked abstractly (no compile).
SHAPES = {
    "fcn": ((28, 28, 1), 10, {}),
    "cnn": ((60, 60, 1), 10, {}),
    "st_fcn_affine": ((42, 42, 1), 10, {}),
    "st_fcn_projective": ((28, 28, 1), 10, {}),
    "st_fcn_tps": ((28, 28, 1), 10, {}),
    "st_cnn_affine": ((60, 60, 1), 10, {}),
    "st_cnn_projective": ((42, 42, 1), 10, {}),
    "st_cnn_tps": ((28, 28, 1), 10, {}),
    "st_fcn_addition": ((42, 42, 2), 19, {}),
    "svhn_cnn": ((32, 32, 3), 10, {}),
    "svhn_st_cnn_single": ((64, 64, 3), 10, {"max_digits": 5}),
    "svhn_st_cnn_multi": ((64, 64, 3), 10, {"max_digits": 5}),
    "colour_cnn": ((32, 32, 3), 10, {}),
    "colour_stn": ((32, 32, 3), 10, {}),
    "cnn_1d": ((128, 1), 5, {}),
    "st_1d": ((128, 3), 5, {}),
}


def test_every_model_is_covered():
    assert set(SHAPES) == set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_and_transform_shapes(name):
    input_shape, num_classes, kwargs = SHAPES[name]
    model = nnx.eval_shape(
        lambda: build_model(name, num_classes=num_classes, input_shape=input_shape, rngs=nnx.Rngs(0), **kwargs)
    )
    x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    out = nnx.eval_shape(lambda m, x: m(x, train=True), model, x)
    if "max_digits" in kwargs:
        assert out["length"].shape == (2, kwargs["max_digits"] + 2)
        assert out["digits"].shape == (2, kwargs["max_digits"], num_classes)
    else:
        assert out.shape == (2, num_classes)
    counts = count_params(model)
    assert counts["total"] == counts["localisation"] + counts["classifier"] > 0
    assert (counts["localisation"] > 0) == model.has_transformer
    if not model.has_transformer:
        with pytest.raises(TypeError, match="transformer"):
            model.transform(jnp.zeros((2, *input_shape)))
        return
    warped, theta = nnx.eval_shape(lambda m, x: m.transform(x), model, x)
    n_st = 2 if name == "st_fcn_addition" else 1
    assert warped.shape == (2, *input_shape[:-1], n_st * input_shape[-1])
    ndim = len(input_shape) - 1
    transform = name.rsplit("_", 1)[-1] if name.startswith(("st_fcn_", "st_cnn_")) else "affine"
    expected = stn_jax.identity_params(transform if transform in stn_jax.TRANSFORMS else "affine", ndim=ndim).shape
    assert theta.shape == (2, *(() if n_st == 1 else (n_st,)), *expected)


def _build(name, **kwargs):
    """Builds a model with its initialisers in one jitted computation (one compile, not one per layer)."""
    return nnx.jit(lambda: build_model(name, rngs=nnx.Rngs(0), **kwargs))()


@pytest.mark.parametrize(
    "name,input_shape,num_classes",
    [("st_cnn_tps", (16, 16, 1), 10), ("st_fcn_addition", (12, 12, 2), 19), ("st_1d", (24, 2), 3)],
)
def test_identity_at_init(name, input_shape, num_classes):
    model = _build(name, num_classes=num_classes, input_shape=input_shape)
    x = jax.random.uniform(jax.random.key(1), (2, *input_shape))
    warped, theta = nnx.jit(lambda m, x: m.transform(x))(model, x)
    ident = identity_resample(x, input_shape[:-1])
    n_st = warped.shape[-1] // input_shape[-1]
    np.testing.assert_allclose(warped, jnp.concatenate([ident] * n_st, axis=-1), atol=1e-5)
    transform = "tps" if name == "st_cnn_tps" else "affine"
    identity = stn_jax.identity_params(transform, ndim=len(input_shape) - 1)
    np.testing.assert_array_equal(theta, jnp.broadcast_to(identity, theta.shape))
    # The classifier sees exactly the identity-resampled input.
    logits = nnx.jit(lambda m, x: m(x))(model, x)
    expected = nnx.jit(lambda m, x: m.classifier(x))(model, jnp.concatenate([ident] * n_st, axis=-1))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_svhn_multi_has_a_transformer_before_each_of_the_first_four_convs():
    model = nnx.eval_shape(
        lambda: build_model("svhn_st_cnn_multi", num_classes=10, input_shape=(64, 64, 3), rngs=nnx.Rngs(0))
    )
    shapes = [getattr(model, f"st_{i}").input_shape for i in range(4)]
    assert shapes == [(64, 64, 3), (32, 32, 12), (32, 32, 16), (16, 16, 32)]
    assert not hasattr(model, "st_4")
    assert count_params(model)["localisation"] == sum(
        count_params(getattr(model, f"st_{i}"))["total"] for i in range(4)
    )


def test_train_step_reaches_localisation():
    model = _build("st_cnn_affine", num_classes=10, input_shape=(16, 16, 1))
    x = jax.random.uniform(jax.random.key(1), (8, 16, 16, 1))
    labels = jnp.arange(8) % 10
    opt = nnx.Optimizer(model, with_localisation_lr(optax.adam(1e-3)), wrt=nnx.Param)

    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x, train=True), labels).mean()

    @nnx.jit
    def step(m, o):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        o.update(m, grads)
        return loss, grads

    loss, grads = step(model, opt)
    head = grads["transformers"][0]["localisation_head"]
    assert np.all(np.isfinite(head["kernel"][...])) and np.abs(head["kernel"][...]).max() > 0
    losses = [float(loss)] + [float(step(model, opt)[0]) for _ in range(4)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    theta = nnx.jit(lambda m, x: m.transform(x)[1])(model, x)
    assert not np.allclose(theta, jnp.eye(2, 3))  # the transformer has moved


def test_sequence_loss_and_accuracy():
    digits = jax.nn.one_hot(jnp.array([[3, 9], [4, 5]]), 10) * 20
    outputs = {"length": jax.nn.one_hot(jnp.array([1, 2]), 4) * 20, "digits": digits}
    labels = jnp.array([[1, 3, 7], [2, 4, 5]])  # the 7 lies past length 1: ignored
    assert float(models.sequence_loss(outputs, labels)) < 1e-6
    assert float(models.sequence_accuracy(outputs, labels)) == 1.0
    wrong = jnp.array([[1, 2, 7], [2, 4, 5]])
    assert float(models.sequence_accuracy(outputs, wrong)) == 0.5
    assert float(models.sequence_loss(outputs, wrong)) > 5


def test_dropout_only_in_training():
    model = _build("fcn", num_classes=10, input_shape=(8, 8, 1), dropout=0.5)
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))
    call = nnx.jit(lambda m, x, train: m(x, train=train), static_argnames="train")
    np.testing.assert_array_equal(call(model, x, False), call(model, x, False))
    assert not np.allclose(call(model, x, True), call(model, x, False))


@pytest.mark.parametrize("input_shape", [(28, 28, 1), (42, 42, 1), (60, 60, 1)])
def test_parameter_counts_are_comparable(input_shape):
    table = models.param_count_table(
        ["fcn", "st_fcn_affine", "st_fcn_tps", "cnn", "st_cnn_affine", "st_cnn_projective"], input_shape=input_shape
    )
    assert table["fcn"]["total"] == models._fcn_params(input_shape, 10, (128, 128))
    assert table["cnn"]["total"] == models._cnn_params(input_shape, 10, (32, 32))
    for st, base in [
        ("st_fcn_affine", "fcn"),
        ("st_fcn_tps", "fcn"),
        ("st_cnn_affine", "cnn"),
        ("st_cnn_projective", "cnn"),
    ]:
        assert 0.9 * table[base]["total"] <= table[st]["total"] <= table[base]["total"]
        assert table[st]["localisation"] > 0


def test_cnn_hidden_layer_for_addition_matches_the_fcn_and_2st_fcn_budget():
    # Abstract models (shapes only): building them for real costs seconds and checks nothing more here.
    cnn = nnx.eval_shape(
        lambda: build_model("cnn", num_classes=19, input_shape=(42, 42, 2), rngs=nnx.Rngs(0), hidden=(128,))
    )
    # conv 9×9 2→32, conv 7×7 32→32, FC (42/4)²·32 = 3200 → 128, FC 128 → 19 (weights + biases).
    expected = (81 * 2 + 1) * 32 + (49 * 32 + 1) * 32 + (3200 + 1) * 128 + (128 + 1) * 19
    assert models.count_params(cnn)["total"] == expected == 467_603
    two_st = nnx.eval_shape(
        lambda: build_model("st_fcn_addition", num_classes=19, input_shape=(42, 42, 2), rngs=nnx.Rngs(0))
    )
    assert abs(models.count_params(two_st)["total"] - expected) < 0.01 * expected
    logits = nnx.eval_shape(lambda m, x: m(x), cnn, jax.ShapeDtypeStruct((3, 42, 42, 2), jnp.float32))
    assert logits.shape == (3, 19)


def test_colour_stn_counts_follow_from_its_layers():
    """The counts of colour_stn on 32×32×3 (module docstring: 1,585,008), derived layer by layer."""
    conv = lambda k, c_in, c_out: (k * k * c_in + 1) * c_out
    dense = lambda n_in, n_out: (n_in + 1) * n_out
    pooled = lambda side, k: (side - k + 1) // 2
    # Localisation: conv 7×7 64 → pool → conv 5×5 128 → pool → FC 256 → the 6 entries of θ.
    side = pooled(pooled(32, 7), 5)  # 32 → 26 → 13 → 9 → 4
    localisation = conv(7, 3, 64) + conv(5, 64, 128) + dense(side * side * 128, 256) + dense(256, 6)
    # Classifier: conv 5×5 16 → pool → conv 5×5 32 → pool → FC 1024 → 10 classes.
    side = pooled(pooled(32, 5), 5)  # 32 → 28 → 14 → 10 → 5
    classifier = conv(5, 3, 16) + conv(5, 16, 32) + dense(side * side * 32, 1024) + dense(1024, 10)
    table = models.param_count_table(["colour_stn"], input_shape=(32, 32, 3))
    assert table["colour_stn"] == {
        "total": localisation + classifier,
        "localisation": localisation,
        "classifier": classifier,
    }


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(name="resnet"), ValueError, "name"),
        (dict(input_shape=(28, 28)), ValueError, "input_shape"),
        (dict(name="st_1d", input_shape=(28, 28, 1)), ValueError, "input_shape"),
        (dict(num_classes=0), ValueError, "num_classes"),
        (dict(name="st_cnn_tps", num_control_points=10), ValueError, "num_control_points"),
        (dict(name="svhn_cnn", max_digits=0), ValueError, "max_digits"),
        (dict(name="fcn", bogus=1), TypeError, "bogus"),
    ],
)
def test_build_model_errors(kwargs, error, match):
    args = dict(name="cnn", num_classes=10, input_shape=(28, 28, 1)) | kwargs
    with pytest.raises(error, match=match):
        nnx.eval_shape(lambda: build_model(args.pop("name"), rngs=nnx.Rngs(0), **args))


@pytest.mark.parametrize("shape", [(3, 21, 21, 4), (2, 42, 42, 1), (2, 11, 10, 3), (2, 9, 5)])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_matches_flax_pooling(shape, kind):
    """The reshape pooling (fast backward on CPU) equals nnx.max_pool/avg_pool (VALID), values and gradients."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    n = x.ndim - 2
    flax_pool = nnx.max_pool if kind == "max" else nnx.avg_pool

    def ours(x):
        return models._pool(x, 2, kind=kind)

    def ref(x):
        return flax_pool(x, (2,) * n, strides=(2,) * n, padding="VALID")

    np.testing.assert_array_equal(ours(x), ref(x))
    loss = lambda f: lambda x: jnp.sum(jnp.sin(f(x)))
    np.testing.assert_allclose(jax.grad(loss(ours))(x), jax.grad(loss(ref))(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(models._pool(x, 2, kind=kind, stride=1), flax_pool(x, (2,) * n, padding="SAME"))


@pytest.mark.parametrize("name", ["st_fcn_addition", "st_cnn_affine"])
def test_theta_init_reaches_every_transformer(name):
    """The init experiment (identity vs random regression layer) is expressible for the paper's ST models."""
    shape, classes = ((12, 12, 2), 19) if name == "st_fcn_addition" else ((16, 16, 1), 10)
    kernels = {}
    for init in ("identity", "random"):
        model = _build(name, num_classes=classes, input_shape=shape, theta_init=init)
        kernels[init] = [np.asarray(st.localisation_head.kernel[...]) for st in model.transformers]
    assert len(kernels["random"]) == (2 if name == "st_fcn_addition" else 1)
    assert all(np.all(k == 0) for k in kernels["identity"])
    assert all(np.std(k) > 0.01 for k in kernels["random"])


def _param_paths(model) -> set[str]:
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/").removesuffix("/value") for path, _ in leaves}


def test_parameter_paths_are_stable_and_every_mlp_is_the_one_nnx_mlp():
    # Checkpoints restore by these paths: the localisation MLP's consolidation must not move them.
    layer = lambda *names: {f"{n}/{p}" for n in names for p in ("kernel", "bias")}
    build = lambda name, shape: nnx.eval_shape(
        lambda: build_model(name, num_classes=10, input_shape=shape, rngs=nnx.Rngs(0))
    )
    fcn = build("fcn", (28, 28, 1))
    assert _param_paths(fcn) == layer("head/dense_0", "head/dense_1", "head/out")
    st_cnn = build("st_cnn_affine", (28, 28, 1))
    loc = "transformers/0/localisation"
    assert _param_paths(st_cnn) == layer(
        "classifier/features/conv_0",
        "classifier/features/conv_1",
        "classifier/head/out",
        f"{loc}/features/conv_0",
        f"{loc}/features/conv_1",
        f"{loc}/mlp/dense_0",
        "transformers/0/localisation_head",
    )
    svhn = build("svhn_st_cnn_multi", (32, 32, 3))
    assert {p for p in _param_paths(svhn) if "mlp" in p or "st_0/" in p} == layer(
        "mlp/dense_0", "mlp/dense_1", "st_0/localisation/dense_0", "st_0/localisation/dense_1", "st_0/localisation_head"
    )
    mlps = [fcn.head, st_cnn.transformers[0].localisation.mlp, st_cnn.classifier.head, svhn.mlp, svhn.st_0.localisation]
    assert all(type(m) is stn_jax.nnx.MLP for m in mlps)


def _variable_tree(state) -> dict[str, str]:
    """``{path: "variable type (shape)"}`` of every variable in an NNX state or a Linen variables dict."""
    leaves = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): (
            f"{type(v).__name__ if isinstance(v, nnx.Variable) else 'Param'} {tuple(v.shape)}"
        )
        for path, v in leaves
    }


def _abstract_model(name, shape, num_classes, kwargs):
    return nnx.eval_shape(
        lambda: build_model(name, num_classes=num_classes, input_shape=shape, rngs=nnx.Rngs(0), **kwargs)
    )


def test_variable_trees_are_those_of_88df2ca():
    # Checkpoints restore by path: every variable of every model (parameters, and the dropout layers' random
    # state) must keep its path, type and shape. The expected trees were written ONCE by the code at commit
    # 88df2ca, before MLPLocalisation became MLP (how: the fixture's "about"), not by the code under test.
    import json
    import pathlib

    from stn_jax import linen as stn_linen

    expected = json.loads((pathlib.Path(__file__).parent / "model_variables_88df2ca.json").read_text())["trees"]
    trees = {}
    for name, (shape, classes, kw) in SHAPES.items():
        model = _abstract_model(name, shape, classes, kw)
        trees[f"nnx:{name}"] = _variable_tree(nnx.state(model))
    st = nnx.eval_shape(lambda: stn_jax.nnx.SpatialTransformer((28, 28, 1), rngs=nnx.Rngs(0)))
    trees["nnx:SpatialTransformer"] = _variable_tree(nnx.state(st))
    init = stn_linen.SpatialTransformer().init
    trees["linen:SpatialTransformer"] = _variable_tree(
        jax.eval_shape(init, jax.random.key(0), jnp.ones((2, 28, 28, 1)))
    )
    assert set(trees) == set(expected)
    for key, tree in trees.items():
        assert tree == expected[key], key


@pytest.mark.parametrize("input_shape", [(28, 28, 1), (42, 42, 1), (33, 27, 3)])
def test_cnn_parameter_formula_counts_the_cnn_it_builds(input_shape):
    for channels in ((32, 32), (5, 9)):
        model = nnx.eval_shape(lambda c=channels: models._cnn(input_shape, 7, channels=c, rngs=nnx.Rngs(0)))
        assert models._cnn_params(input_shape, 7, channels) == count_params(model)["total"]
