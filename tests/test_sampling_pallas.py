"""``implementation="pallas"`` beyond the shared parity suite (tests/test_sampling.py runs that
against it too): the image gradient's adds at repeated pixels, several blocks, the variants
that skip a gradient nobody asked for, and what a GPU would run, lowered here for ``cuda``.

The kernels run in interpret mode on this CPU; sizes are tiny because each new shape costs a
few seconds of compilation.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import stn_jax
from stn_jax import _sampling_pallas, sampling

# jaxlib <= 0.10.2 emits Triton kernels as this custom call (compiled by XLA); later ones
# compile them when lowering, which needs a GPU, and emit "triton_kernel_call_ffi".
TRITON_TARGETS = ("__gpu$xla.gpu.triton", "triton_kernel_call_ffi")
UNCHECKED = [export.DisabledSafetyCheck.custom_call(target) for target in TRITON_TARGETS]


def _sample(implementation, **kw):
    return lambda u, g: stn_jax.sample(u, g, implementation=implementation, **kw)


def _vjp(implementation, image, grid, cotangent, **kw):
    out, pullback = jax.vjp(_sample(implementation, **kw), image, grid)
    return (out, *pullback(cotangent))


def test_image_gradient_adds_every_point_that_reads_a_pixel(x64):
    # Every point of the grid reads the same four pixels (and a few the same two): a vector
    # atomic add with repeated indices that kept one add per pixel would be wrong here.
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 5, 2))
    grid = np.tile(np.array([0.13, -0.41]), (3, 4, 1))
    grid[0, :2] = [0.9, -0.2]
    cotangent = rng.normal(size=(3, 4, 2))
    ours = jax.jit(lambda u, g, c: _vjp("pallas", u, g, c, padding="border"))(image, grid, cotangent)
    want = _vjp("reference", image, grid, cotangent, padding="border")
    for o, w, what in zip(ours, want, ["value", "grad image", "grad grid"]):
        np.testing.assert_allclose(o, w, rtol=1e-12, atol=1e-12, err_msg=what)


@pytest.mark.parametrize("ndim", [2, 3])
def test_several_blocks_of_points_and_padded_channels(monkeypatch, x64, ndim):
    # Blocks of 4 points: 30 points are 8 blocks, the last one padded; 3 channels are padded to 4.
    monkeypatch.setattr(_sampling_pallas, "_MAX_BLOCK_POINTS", 4)
    rng = np.random.default_rng(ndim)
    image = rng.normal(size=(*(3,) * (ndim - 1), 4, 3))
    grid = rng.uniform(-1.3, 1.3, size=(*(1,) * (ndim - 2), 5, 6, ndim))
    cotangent = rng.normal(size=(*grid.shape[:-1], 3))
    kw = dict(padding="reflection", align_corners=True)
    ours = _vjp("pallas", image, grid, cotangent, **kw)
    want = _vjp("reference", image, grid, cotangent, **kw)
    for o, w, what in zip(ours, want, ["value", "grad image", "grad grid"]):
        np.testing.assert_allclose(o, w, rtol=1e-12, atol=1e-12, err_msg=what)


def _pallas_calls(fun, *args):
    """(outputs, aliased outputs) of each pallas_call in ``fun``'s jaxpr, nested ones included."""
    calls = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "pallas_call":
                calls.append((len(eqn.outvars), len(eqn.params["input_output_aliases"])))
                continue
            for param in eqn.params.values():
                for sub in param if isinstance(param, (list, tuple)) else [param]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        visit(inner)

    visit(jax.make_jaxpr(fun)(*args).jaxpr)
    return calls


def test_backward_kernel_computes_only_the_gradients_asked_for():
    image, grid = jnp.ones((4, 5, 3)), jnp.zeros((2, 3, 2))
    loss = lambda u, g: jnp.sum(stn_jax.sample(u, g, implementation="pallas") ** 2)
    # Each pallas_call appears twice (the GPU's Triton kernel and the interpreted one).
    forward = [(1, 0)] * 2
    # Both: the grid gradient (x, y) and the image gradient, added into an aliased buffer.
    assert _pallas_calls(jax.grad(loss, (0, 1)), image, grid) == forward + [(3, 1)] * 2
    # Grid only (the image is data, as in front of a network's first layer): no atomics at all.
    assert _pallas_calls(jax.grad(loss, 1), image, grid) == forward + [(2, 0)] * 2
    # Image only.
    assert _pallas_calls(jax.grad(loss, 0), image, grid) == forward + [(1, 1)] * 2
    # The variants agree with the full backward pass.
    both = jax.grad(loss, (0, 1))(image + jnp.arange(3.0), grid + 0.3)
    np.testing.assert_array_equal(jax.grad(loss, 0)(image + jnp.arange(3.0), grid + 0.3), both[0])
    np.testing.assert_array_equal(jax.grad(loss, 1)(image + jnp.arange(3.0), grid + 0.3), both[1])


def test_forward_mode_is_refused_clearly():
    with pytest.raises(TypeError, match="forward-mode"):
        primals = (jnp.ones((3, 3, 1)), jnp.zeros((2, 2, 2)))
        jax.jvp(_sample("pallas"), primals, primals)


def test_pallas_is_never_the_default():
    for platform in ("cpu", "cuda", "rocm", "tpu"):
        assert sampling.default_implementation(platform) != "pallas"


@pytest.mark.parametrize("ndim", [2, 3])
def test_gradient_lowers_for_cuda_through_the_triton_kernels(ndim):
    def loss(images, grids):
        out = jax.vmap(_sample("pallas", padding="border"))(images, grids)
        return jnp.sum(out**2)

    args = (jnp.ones((2, *(4,) * ndim, 3)), jnp.zeros((2, *(3,) * ndim, ndim)))
    exported = export.export(jax.jit(jax.grad(loss, (0, 1))), platforms=["cuda"], disabled_checks=UNCHECKED)(*args)
    text = exported.mlir_module()
    targets = re.findall(r"stablehlo\.custom_call @([^(]+)\(", text)
    # Forward and backward kernel, both Triton, and nothing of interpret mode's loops.
    assert len(targets) == 2 and set(targets) <= set(TRITON_TARGETS), targets
    assert "stablehlo.while" not in text
    names = re.findall(r'name = "(stn_jax_sample_\w+?)"', text)
    assert sorted(set(names)) == ["stn_jax_sample_backward", "stn_jax_sample_forward"], names
    # The backward kernel adds into the image gradient atomically; without the image's
    # gradient there is no atomic at all (the op name is in the kernel's serialised IR).
    assert "atomic_rmw" in text
    grid_only = export.export(jax.jit(jax.grad(loss, 1)), platforms=["cuda"], disabled_checks=UNCHECKED)(*args)
    assert "atomic_rmw" not in grid_only.mlir_module()
