"""stn_jax.nnx.SpatialTransformer: identity at init, shapes, gradients, training, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.test_util import check_grads

import stn_jax
from helpers import MODULE_CASES, identity_resample, images, randomize_head, seed_of, transformer_reference
from stn_jax.nnx import SpatialTransformer, affine_constraints, localisation_labels, with_localisation_lr


@pytest.mark.parametrize(
    "transform,out_shape",
    [
        ("affine", (7, 9)),
        ("affine", (12, 12)),  # over-sampling
        ("attention", (5, 5)),
        ("translation", (8, 10)),
        ("similarity", (8, 10)),
        ("projective", (6, 7)),
        ("tps", (8, 10)),
    ],
)
def test_identity_at_init_2d(transform, out_shape):
    x = images((3, 8, 10, 2))
    st = SpatialTransformer((8, 10, 2), out_shape=out_shape, transform=transform, hidden=(8,), rngs=nnx.Rngs(0))
    out = st(x)
    assert out.shape == (3, *out_shape, 2)
    np.testing.assert_allclose(out, identity_resample(x, out_shape), atol=1e-5)


@pytest.mark.parametrize("shape,out_shape", [((12, 3), (6,)), ((4, 5, 6, 2), (3, 5, 4))])
def test_identity_at_init_1d_3d(shape, out_shape):
    x = images((2, *shape))
    st = SpatialTransformer(shape, out_shape=out_shape, hidden=(4,), return_theta=True, rngs=nnx.Rngs(0))
    out, theta = st(x)
    n = len(out_shape)
    assert theta.shape == (2, n, n + 1)
    np.testing.assert_array_equal(theta, jnp.broadcast_to(jnp.eye(n, n + 1), theta.shape))
    np.testing.assert_allclose(out, identity_resample(x, out_shape), atol=1e-5)


@pytest.mark.parametrize("transform,input_shape,out_shape,options", MODULE_CASES)
def test_module_computes_grid_and_sample_of_its_regressed_theta(transform, input_shape, out_shape, options):
    """A random regression layer: the output and θ equal the functions' (helpers.transformer_reference)."""
    seed = seed_of("nnx", transform, input_shape, options)
    x = images((3, *input_shape), seed=seed % 1000)
    st = SpatialTransformer(
        input_shape,
        out_shape=out_shape,
        transform=transform,
        hidden=(8,),
        return_theta=True,
        rngs=nnx.Rngs(seed % 1000),
        **options,
    )
    state = nnx.state(st, nnx.Param)
    params = randomize_head(nnx.to_pure_dict(state), seed)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(st, state)
    out, theta = st(x)
    expected, expected_theta = transformer_reference(params, x, transform=transform, out_shape=out_shape, **options)
    message = f"seed {seed}"
    np.testing.assert_allclose(theta, expected_theta, rtol=1e-5, atol=1e-5, err_msg=message)
    identity = np.asarray(stn_jax.identity_params(transform, ndim=len(out_shape), num_control_points=9))
    assert np.abs(expected_theta - identity).max() > 0.1 and np.abs(expected_theta[0] - expected_theta[1]).max() > 1e-3
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4, err_msg=message)


def test_gradients_through_the_module_match_finite_differences(x64):
    st = SpatialTransformer(
        (5, 6, 2), out_shape=(4, 5), transform="projective", hidden=(4,), theta_init="random", rngs=nnx.Rngs(3)
    )
    graphdef, params = nnx.split(st, nnx.Param)
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
    x = images((2, 5, 6, 2), seed=4).astype(jnp.float64)
    check_grads(jax.jit(lambda p, x: nnx.merge(graphdef, p)(x)), (params, x), order=1, modes=("rev",), eps=1e-6)


def test_sampler_options_are_used():
    x = images((2, 6, 6, 1))
    st = SpatialTransformer(
        (6, 6, 1), out_shape=(9, 9), method="nearest", padding="border", align_corners=True, rngs=nnx.Rngs(0)
    )
    expected = identity_resample(x, (9, 9), method="nearest", padding="border", align_corners=True)
    np.testing.assert_array_equal(st(x), expected)
    assert not np.allclose(expected, identity_resample(x, (9, 9)))


def test_random_init_is_not_identity_and_depends_on_input():
    x = images((2, 6, 6, 1))
    st = SpatialTransformer((6, 6, 1), theta_init="random", return_theta=True, rngs=nnx.Rngs(0))
    out, theta = st(x)
    assert not np.allclose(theta[0], jnp.eye(2, 3), atol=1e-3)
    assert not np.allclose(theta[0], theta[1], atol=1e-4)
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("transform", ["affine", "projective"])
def test_random_zero_bias_init_is_random_init_less_the_identity(transform):
    # The same key draws the same kernel; only the bias differs: zero instead of the identity's free entries.
    x = images((3, 6, 6, 1))
    build = lambda init: SpatialTransformer(
        (6, 6, 1), transform=transform, theta_init=init, return_theta=True, rngs=nnx.Rngs(0)
    )
    zero_bias, around_identity = build("random_zero_bias"), build("random")
    np.testing.assert_array_equal(zero_bias.localisation_head.bias[...], 0.0)
    _, theta = zero_bias(x)
    _, theta_identity = around_identity(x)
    identity = np.eye(3)[:2] if transform == "affine" else np.eye(3)
    free = np.ones(identity.shape, bool)
    free[-1, -1] = transform == "affine"  # the projective h_22 is fixed at 1, not regressed
    np.testing.assert_allclose(np.asarray(theta)[:, free], (theta_identity - identity)[:, free], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(theta)[:, ~free], 1.0)
    assert np.std(theta[:, 0, 0]) > 1e-3  # still input-dependent


@pytest.mark.parametrize("combine", ["concat", "list", "stack"])
def test_parallel_transformers(combine):
    x = images((2, 6, 6, 3))
    st = SpatialTransformer(
        (6, 6, 3), transform="attention", num_transformers=2, combine=combine, return_theta=True, rngs=nnx.Rngs(0)
    )
    out, theta = st(x)
    assert theta.shape == (2, 2, 3)
    ident = identity_resample(x, (6, 6))
    if combine == "concat":
        assert out.shape == (2, 6, 6, 6)
        np.testing.assert_allclose(out, jnp.concatenate([ident, ident], -1), atol=1e-5)
    elif combine == "list":
        assert isinstance(out, list) and len(out) == 2
        np.testing.assert_allclose(out[1], ident, atol=1e-5)
    else:
        assert out.shape == (2, 2, 6, 6, 3)


def test_constraints_fix_entries():
    constraints = affine_constraints(shear=False)
    st = SpatialTransformer(
        (6, 6, 1), constraints=constraints, theta_init="random", return_theta=True, rngs=nnx.Rngs(0)
    )
    assert st.localisation_head.kernel.shape[-1] == 4
    _, theta = st(images((3, 6, 6, 1)))
    np.testing.assert_array_equal(theta[:, 0, 1], 0.0)
    np.testing.assert_array_equal(theta[:, 1, 0], 0.0)
    assert not np.allclose(theta[:, 0, 0], 1.0)


def test_projective_regresses_eight_numbers():
    st = SpatialTransformer((6, 6, 1), transform="projective", theta_init="random", return_theta=True, rngs=nnx.Rngs(0))
    assert st.localisation_head.kernel.shape[-1] == 8
    _, theta = st(images((2, 6, 6, 1)))
    np.testing.assert_array_equal(theta[:, 2, 2], 1.0)


def test_custom_localisation_features_inferred():
    rngs = nnx.Rngs(0)
    loc = nnx.Sequential(nnx.Conv(1, 4, (3, 3), rngs=rngs), nnx.relu)
    st = SpatialTransformer((6, 6, 1), localisation=loc, rngs=rngs)
    assert st.localisation_head.kernel.shape == (6 * 6 * 4, 6)
    x = images((2, 6, 6, 1))
    np.testing.assert_allclose(st(x), identity_resample(x, (6, 6)), atol=1e-5)


def _loss(model, x, target):
    return jnp.mean((model(x) - target) ** 2)


def test_gradients_reach_localisation_and_are_finite():
    x = images((4, 8, 8, 1))
    target = jnp.roll(x, 1, axis=2)
    st = SpatialTransformer((8, 8, 1), hidden=(8,), rngs=nnx.Rngs(0))
    grad_fn = nnx.jit(nnx.grad(_loss))
    grads = grad_fn(st, x, target)
    head = grads.localisation_head
    assert np.all(np.isfinite(head.kernel[...])) and np.abs(head.kernel[...]).max() > 0
    assert np.abs(head.bias[...]).max() > 0
    # Zero head kernel: nothing reaches the hidden layer yet; after one step it does.
    assert np.abs(grads.localisation.dense_0.kernel[...]).max() == 0
    opt = nnx.Optimizer(st, optax.sgd(0.01), wrt=nnx.Param)
    nnx.jit(lambda o, m, g: o.update(m, g))(opt, st, grads)
    grads = grad_fn(st, x, target)
    hidden = grads.localisation.dense_0.kernel[...]
    assert np.all(np.isfinite(hidden)) and np.abs(hidden).max() > 0


def test_jit_optax_train_step_learns_a_shift():
    x = images((8, 8, 8, 1))
    shift = stn_jax.grid(jnp.array([[1.0, 0, 0.25], [0, 1, 0]]), (8, 8))
    target = jax.jit(jax.vmap(lambda im: stn_jax.sample(im, shift)))(x)
    st = SpatialTransformer((8, 8, 1), hidden=(8,), rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(st, with_localisation_lr(optax.adam(0.02), multiplier=1.0), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(_loss)(model, x, target)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(st, opt)) for _ in range(25)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]


def test_multi_transform_scales_localisation_updates():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.st = SpatialTransformer((6, 6, 1), hidden=(4,), rngs=rngs)
            self.head = nnx.Linear(36, 3, rngs=rngs)

        def __call__(self, x):
            return self.head(self.st(x).reshape(x.shape[0], -1))

    model = Model(nnx.Rngs(0))
    labels = localisation_labels(nnx.state(model, nnx.Param)).to_pure_dict()
    assert labels["st"]["localisation_head"]["kernel"] == "localisation"
    assert labels["st"]["localisation"]["dense_0"]["bias"] == "localisation"
    assert labels["head"]["kernel"] == "default"
    tx = optax.multi_transform({"default": optax.sgd(1.0), "localisation": optax.sgd(0.1)}, localisation_labels)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = images((2, 6, 6, 1))
    before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param).to_pure_dict())
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) ** 2)))(model)
    nnx.jit(lambda o, m, g: o.update(m, g))(opt, model, grads)
    after = nnx.state(model, nnx.Param).to_pure_dict()
    g = grads.to_pure_dict()
    np.testing.assert_allclose(
        before["st"]["localisation_head"]["bias"] - after["st"]["localisation_head"]["bias"],
        0.1 * g["st"]["localisation_head"]["bias"],
        rtol=1e-5,
    )
    np.testing.assert_allclose(before["head"]["bias"] - after["head"]["bias"], g["head"]["bias"], rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(transform="warp"), ValueError, "transform"),
        (dict(out_shape=(4, 4, 4, 4)), ValueError, "out_shape"),
        (dict(out_shape=(4,)), ValueError, "out_shape"),
        (dict(transform="tps", num_control_points=10), ValueError, "num_control_points"),
        (dict(transform="tps", num_control_points=1), ValueError, "num_control_points"),
        (dict(theta_init="zeros"), ValueError, "theta_init"),
        (dict(combine="sum"), ValueError, "combine"),
        (dict(num_transformers=0), ValueError, "num_transformers"),
        (dict(method="cubic"), ValueError, "method"),
        (dict(padding="wrap"), ValueError, "padding"),
        (dict(align_corners=1), TypeError, "align_corners"),
        (dict(return_theta="yes"), TypeError, "return_theta"),
        (dict(constraints=[[None, 0.0], [0.0, None]]), ValueError, "constraints"),
        (dict(constraints=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), ValueError, "constraints"),
        (dict(hidden=(8, 0)), ValueError, "hidden"),
        (dict(out_shape=(4, 4.0)), TypeError, "out_shape"),
    ],
)
def test_bad_construction_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SpatialTransformer((6, 6, 1), rngs=nnx.Rngs(0), **kwargs)


def test_bad_input_shape_and_planar_transform_in_3d():
    with pytest.raises(ValueError, match="input_shape"):
        SpatialTransformer((6,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="out_shape"):
        SpatialTransformer((4, 4, 4, 1), transform="tps", rngs=nnx.Rngs(0))


def test_call_with_wrong_rank_raises():
    st = SpatialTransformer((6, 6, 1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="inputs"):
        st(jnp.ones((2, 6, 6, 6, 1)))
