"""stn_jax.linen.SpatialTransformer: identity at init, parity with NNX, training, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.test_util import check_grads

import stn_jax
from helpers import MODULE_CASES, identity_resample, images, randomize_head, seed_of, transformer_reference
from stn_jax import linen as stn_linen
from stn_jax import nnx as stn_nnx


@pytest.mark.parametrize(
    "shape,kwargs",
    [
        ((6, 6, 2), dict()),
        ((6, 6, 2), dict(transform="tps", num_control_points=9, out_shape=(4, 5))),
        ((12, 3), dict(out_shape=(6,))),
        ((4, 4, 4, 1), dict(transform="attention")),
    ],
)
def test_identity_at_init(shape, kwargs):
    x = images((2, *shape))
    st = stn_linen.SpatialTransformer(hidden=(4,), return_theta=True, **kwargs)
    variables = st.init(jax.random.key(0), x)
    out, theta = st.apply(variables, x)
    out_shape = kwargs.get("out_shape", shape[:-1])
    assert out.shape == (2, *out_shape, shape[-1])
    np.testing.assert_allclose(out, identity_resample(x, out_shape), atol=1e-5)
    identity = stn_jax.identity_params(kwargs.get("transform", "affine"), ndim=len(shape) - 1, num_control_points=9)
    np.testing.assert_array_equal(theta, jnp.broadcast_to(identity, theta.shape))


@pytest.mark.parametrize("transform,input_shape,out_shape,options", MODULE_CASES)
def test_module_computes_grid_and_sample_of_its_regressed_theta(transform, input_shape, out_shape, options):
    """A random regression layer: the output and θ equal the functions' (helpers.transformer_reference)."""
    seed = seed_of("linen", transform, input_shape, options)
    x = images((3, *input_shape), seed=seed % 1000)
    st = stn_linen.SpatialTransformer(
        out_shape=out_shape, transform=transform, hidden=(8,), return_theta=True, **options
    )
    params = randomize_head(st.init(jax.random.key(seed % 1000), x)["params"], seed)
    out, theta = st.apply({"params": params}, x)
    expected, expected_theta = transformer_reference(params, x, transform=transform, out_shape=out_shape, **options)
    message = f"seed {seed}"
    np.testing.assert_allclose(theta, expected_theta, rtol=1e-5, atol=1e-5, err_msg=message)
    identity = np.asarray(stn_jax.identity_params(transform, ndim=len(out_shape), num_control_points=9))
    assert np.abs(expected_theta - identity).max() > 0.1 and np.abs(expected_theta[0] - expected_theta[1]).max() > 1e-3
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4, err_msg=message)


def test_gradients_through_the_module_match_finite_differences(x64):
    x = images((2, 5, 6, 2), seed=5).astype(jnp.float64)
    st = stn_linen.SpatialTransformer(
        out_shape=(4, 5), transform="tps", num_control_points=9, hidden=(4,), theta_init="random"
    )
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), st.init(jax.random.key(6), x)["params"])
    check_grads(jax.jit(lambda p, x: st.apply({"params": p}, x)), (params, x), order=1, modes=("rev",), eps=1e-6)


PARITY_CASES = [
    dict(),
    dict(transform="projective", out_shape=(5, 7)),
    dict(transform="tps", num_control_points=9, method="bicubic", padding="border"),
    dict(num_transformers=2, transform="similarity", align_corners=True),
    dict(constraints=stn_nnx.affine_constraints(shear=False)),
]


@pytest.mark.parametrize("kwargs", PARITY_CASES)
def test_nnx_and_linen_agree_given_the_same_parameters(kwargs):
    x = images((3, 6, 6, 2))
    nnx_st = stn_nnx.SpatialTransformer(
        (6, 6, 2), hidden=(8,), theta_init="random", return_theta=True, rngs=nnx.Rngs(1), **kwargs
    )
    params = nnx.state(nnx_st, nnx.Param).to_pure_dict()
    linen_st = stn_linen.SpatialTransformer(hidden=(8,), theta_init="random", return_theta=True, **kwargs)
    linen_params = linen_st.init(jax.random.key(0), x)["params"]
    assert jax.tree.structure(linen_params) == jax.tree.structure(params)
    assert jax.tree.map(jnp.shape, linen_params) == jax.tree.map(jnp.shape, params)
    out_nnx, theta_nnx = nnx_st(x)
    out_linen, theta_linen = linen_st.apply({"params": params}, x)
    np.testing.assert_allclose(theta_linen, theta_nnx, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out_linen, out_nnx, rtol=1e-5, atol=1e-5)
    assert not np.allclose(out_nnx, identity_resample(x, out_nnx.shape[1:-1]) if out_nnx.shape[-1] == 2 else 0)


class _ConvLocalisation(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(4, (3, 3))(x))


class _Classifier(nn.Module):
    @nn.compact
    def __call__(self, x):
        # parent=None: the transformer adopts the net as its "localisation" submodule.
        x = stn_linen.SpatialTransformer(localisation=_ConvLocalisation(parent=None))(x)
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_custom_localisation_jit_and_optax_step_with_localisation_lr():
    x = images((4, 6, 6, 1))
    labels = jnp.array([0, 1, 2, 0])
    model = _Classifier()
    params = model.init(jax.random.key(0), x)["params"]
    st_params = params["SpatialTransformer_0"]
    assert set(st_params) == {"localisation", "localisation_head"}
    assert st_params["localisation_head"]["kernel"].shape == (6 * 6 * 4, 6)
    tx = stn_linen.with_localisation_lr(optax.sgd(0.1), multiplier=0.1)
    opt_state = tx.init(params)

    def loss_fn(p):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss, grads, updates

    new_params, opt_state, loss0, grads, updates = step(params, opt_state)
    head_grad = grads["SpatialTransformer_0"]["localisation_head"]["bias"]
    assert np.all(np.isfinite(head_grad)) and np.abs(head_grad).max() > 0
    np.testing.assert_allclose(
        updates["SpatialTransformer_0"]["localisation_head"]["bias"], -0.01 * head_grad, rtol=1e-5, atol=1e-9
    )
    np.testing.assert_allclose(updates["Dense_0"]["bias"], -0.1 * grads["Dense_0"]["bias"], rtol=1e-5)
    losses = [float(loss0)]
    for _ in range(5):
        new_params, opt_state, loss, _, _ = step(new_params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < losses[0]


def test_list_output_of_parallel_transformers():
    x = images((2, 6, 6, 1))
    st = stn_linen.SpatialTransformer(num_transformers=3, combine="list", hidden=(4,))
    out = st.apply(st.init(jax.random.key(0), x), x)
    assert isinstance(out, list) and len(out) == 3 and out[2].shape == x.shape


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(transform="warp"), ValueError, "transform"),
        (dict(out_shape=(4, 4, 4, 4)), ValueError, "out_shape"),
        (dict(transform="tps", out_shape=(4,)), ValueError, "out_shape"),
        (dict(transform="tps", num_control_points=12), ValueError, "num_control_points"),
        (dict(theta_init="normal"), ValueError, "theta_init"),
        (dict(hidden=(0,)), ValueError, "hidden"),
        (dict(return_theta=None), TypeError, "return_theta"),
    ],
)
def test_bad_construction_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        stn_linen.SpatialTransformer(**kwargs)


def test_options_are_keyword_only_and_inputs_checked_at_call():
    with pytest.raises(TypeError):
        stn_linen.SpatialTransformer((4, 4))
    st = stn_linen.SpatialTransformer(out_shape=(4, 4))
    with pytest.raises(ValueError, match="out_shape"):
        st.init(jax.random.key(0), jnp.ones((1, 6, 1)))


# -- the one option list -------------------------------------------------------------------------------------
# A valid non-default value of every option: a new option in TransformerConfig makes the tests below fail
# until it gets one here, and then they check that NNX and Linen take it and pass it to the config.
NON_DEFAULT = {
    "out_shape": (5, 4),
    "transform": "projective",
    "hidden": (7,),
    "num_control_points": 9,
    "constraints": ((None, None, None), (None, None, None), (0.0, 0.0, 1.0)),
    "theta_init": "random",
    "num_transformers": 2,
    "combine": "stack",
    "method": "nearest",
    "padding": "border",
    "align_corners": True,
    "antialias": True,
    "return_theta": True,
}


def _options():
    import dataclasses

    from stn_jax import _config

    return {f.name: (f.default, f.metadata["doc"]) for f in dataclasses.fields(_config.TransformerConfig)}


def _option_types():
    import dataclasses

    from stn_jax import _config

    return {f.name: f.type for f in dataclasses.fields(_config.TransformerConfig)}


def _nnx_options():
    """(default, annotation) of each option of the NNX module's ``__init__``, in order."""
    import inspect

    parameters = inspect.signature(stn_nnx.SpatialTransformer.__init__).parameters.values()
    own = {"self", "input_shape", "localisation", "localisation_features", "rngs"}
    for p in parameters:
        assert p.kind == p.KEYWORD_ONLY or p.name in {"self", "input_shape"}, p
    return {p.name: (p.default, p.annotation) for p in parameters if p.name not in own}


def _linen_options():
    """(default, annotation) of each option field of the Linen module, in order."""
    import dataclasses

    own = {"localisation", "parent", "name"}
    fields = dataclasses.fields(stn_linen.SpatialTransformer)
    return {f.name: (f.default, f.type) for f in fields if f.name not in own}


def test_nnx_and_linen_take_exactly_the_options_of_the_one_list_with_its_defaults():
    # Written out in both modules (so type checkers see them): the same names, order, defaults and types.
    types = _option_types()
    expected = {name: (default, types[name]) for name, (default, _) in _options().items()}
    assert "antialias" in expected and "return_theta" in expected
    assert list(_nnx_options().items()) == list(expected.items())
    assert list(_linen_options().items()) == list(expected.items())
    assert set(NON_DEFAULT) == set(expected), "give the new option a non-default value in NON_DEFAULT"


def test_every_option_is_documented_once_in_the_config_and_in_both_modules():
    def flat(text):
        return " ".join(text.split())

    for name, (_, doc) in _options().items():
        entry = flat(f"{name}: {doc}")
        for owner in (stn_nnx.SpatialTransformer, stn_linen.SpatialTransformer):
            assert flat(owner.__doc__).count(entry) == 1, f"{owner.__module__}: {name}"
    assert "<options>" not in stn_nnx.SpatialTransformer.__doc__ + stn_linen.SpatialTransformer.__doc__


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_each_option_reaches_the_config_of_both_modules(name):
    value = NON_DEFAULT[name]
    base = {"out_shape": (5, 4), "transform": "projective"} if name == "constraints" else {}
    base.update({"transform": "tps"} if name == "num_control_points" else {})
    kwargs = {**base, name: value}
    nnx_st = stn_nnx.SpatialTransformer((6, 6, 1), rngs=nnx.Rngs(0), **kwargs)
    for config in (nnx_st.config, stn_linen.SpatialTransformer(**kwargs).config):
        assert getattr(config, name) == value, (name, config)
    assert nnx_st.return_theta == (name == "return_theta")


def test_an_unknown_option_is_named():
    with pytest.raises(TypeError, match="unexpected keyword argument 'antialiased'"):
        stn_nnx.SpatialTransformer((6, 6, 1), antialiased=True, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="antialiased"):
        stn_linen.SpatialTransformer(antialiased=True)


# -- the one MLP, in both APIs --------------------------------------------------------------------------------
def test_mlp_takes_the_same_options_in_both_apis():
    # NNX needs the input size (in_features) and rngs; Linen infers the size and owns parent and name.
    import dataclasses
    import inspect

    nnx_options = {
        p.name: (p.default, p.annotation)
        for p in inspect.signature(stn_nnx.MLP.__init__).parameters.values()
        if p.kind == p.KEYWORD_ONLY and p.name != "rngs"
    }
    linen_options = {
        f.name: (f.default, f.type) for f in dataclasses.fields(stn_linen.MLP) if f.name not in {"parent", "name"}
    }
    assert list(nnx_options) == ["hidden", "out_features", "dropout"]
    assert nnx_options["hidden"][0] is inspect.Parameter.empty and linen_options["hidden"][0] is dataclasses.MISSING
    assert {k: v[1] for k, v in nnx_options.items()} == {k: v[1] for k, v in linen_options.items()}
    assert {k: v[0] for k, v in nnx_options.items() if k != "hidden"} == {
        k: v[0] for k, v in linen_options.items() if k != "hidden"
    }


@pytest.mark.parametrize("hidden", [(8, 4), ()])
def test_nnx_and_linen_mlp_agree_given_the_same_parameters(hidden):
    x = images((3, 4, 3, 2))
    nnx_mlp = stn_nnx.MLP(24, hidden=hidden, out_features=5, dropout=0.5, rngs=nnx.Rngs(1))
    params = nnx.state(nnx_mlp, nnx.Param).to_pure_dict()
    linen_mlp = stn_linen.MLP(hidden=hidden, out_features=5, dropout=0.5)
    linen_params = linen_mlp.init(jax.random.key(0), x)["params"]
    assert jax.tree.map(jnp.shape, linen_params) == jax.tree.map(jnp.shape, params)
    assert sorted(params) == [*(f"dense_{i}" for i in range(len(hidden))), "out"]
    np.testing.assert_allclose(linen_mlp.apply({"params": params}, x), nnx_mlp(x), rtol=1e-6, atol=1e-6)


def test_linen_mlp_drops_out_only_when_training():
    x = jnp.ones((4, 16))
    net = stn_linen.MLP(hidden=(64,), out_features=3, dropout=0.5)
    variables = net.init(jax.random.key(0), x)
    evaluated = net.apply(variables, x)
    np.testing.assert_array_equal(net.apply(variables, x, train=False), evaluated)
    trained = net.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    assert trained.shape == (4, 3) and not np.allclose(trained, evaluated)
    with pytest.raises(Exception, match="dropout"):  # Linen asks for the "dropout" stream by name
        net.apply(variables, x, train=True)
    plain = stn_linen.MLP(hidden=(64,), out_features=3)
    np.testing.assert_array_equal(plain.apply(variables, x, train=True), evaluated)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(hidden=(8, 0)), ValueError, "hidden must be >= 1"),
        (dict(hidden=8), TypeError, "hidden must be a sequence of ints"),
        (dict(hidden=(8,), out_features=0), ValueError, "out_features must be >= 1"),
        (dict(hidden=(8,), out_features=2.0), TypeError, "out_features must be an int"),
        (dict(hidden=(8,), dropout=1.5), ValueError, r"dropout must be None or a rate in \[0, 1\]"),
        (dict(hidden=(8,), dropout="0.5"), TypeError, "dropout must be a real number"),
    ],
)
def test_bad_mlp_options_are_named_by_both_apis(kwargs, error, match):
    with pytest.raises(error, match=match):
        stn_nnx.MLP(4, **kwargs, rngs=nnx.Rngs(0))
    with pytest.raises(error, match=match):
        stn_linen.MLP(**kwargs)
