r"""Convolutional and pooling synapses between image-shaped layers.

Layers are images of shape ``(height, width, channels)`` (channels last). Both
synapses are *bilinear* in the activations of the two layers they join,

$E = -\sum g_{out} \cdot \mathcal{A}(g_{in})$,

with $\mathcal{A}$ a linear map (a convolution or a linear pooling), so the forces the
dynamics feel, $-\partial E/\partial g_{out} = \mathcal{A}(g_{in})$ and
$-\partial E/\partial g_{in} = \mathcal{A}^\top(g_{out})$ (a transposed convolution /
an upsampling), come out of autodiff in [`ham.HAM`][] and the energy stays a valid
synapse energy (Krotov 2021, "Hierarchical associative memory"; Krotov 2023, "A new
frontier for Hopfield networks", on convolution and pooling as inductive biases).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Scalar

from .. import _checks as checks
from ._base import Synapse, shape_error


def _image_layers(name: str, kind: str, what: str, shapes) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The (input, output) shapes of a synapse between two (H, W, C) image layers."""
    if len(shapes) != 2:
        raise shape_error(name, kind, f"{what} joins two layers (input, output), not {len(shapes)}", shapes)
    s_in, s_out = shapes
    if len(s_in) != 3 or len(s_out) != 3:
        raise shape_error(
            name, kind, f"{what} needs image layers of shape (H, W, C); got input {s_in} and output {s_out}",
            shapes,
        )
    return s_in, s_out


def _check_output(name: str, kind: str, what: str, s_in, s_out, want, shapes) -> None:
    """The output layer must have the shape the map produces from the input layer."""
    if min(want[:2]) < 1:
        raise shape_error(
            name, kind, f"{what} does not fit the input layer of shape {s_in} (output would be {want})", shapes
        )
    if s_out != want:
        raise shape_error(
            name, kind,
            f"{what} maps the input layer of shape {s_in} to shape {want}, but the output layer has shape {s_out}",
            shapes,
        )

__all__ = ["Conv", "Pool"]

_DIMS = ("NHWC", "HWIO", "NHWC")


def _pair(name: str, what: str, value) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name}: {what} must be an int or a pair of ints, got {value!r}.") from None
    if any(isinstance(v, bool) for v in value):
        raise ValueError(f"{name}: {what} must be an int or a pair of ints, got {value!r}.")
    if len(out) != 2 or any(v < 1 for v in out) or any(int(v) != v for v in value):
        raise ValueError(f"{name}: {what} must be a pair of positive ints, got {value!r}.")
    return out


def _padding(name: str, padding):
    """``"VALID"``, ``"SAME"`` or ``((lo, hi), (lo, hi))`` with non-negative ints."""
    if isinstance(padding, str):
        p = padding.upper()
        if p not in ("VALID", "SAME"):
            raise ValueError(f"{name}: padding must be 'VALID', 'SAME' or ((lo, hi), (lo, hi)), got {padding!r}.")
        return p
    try:
        out = tuple((int(lo), int(hi)) for lo, hi in padding)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name}: padding must be 'VALID', 'SAME' or ((lo, hi), (lo, hi)), got {padding!r}."
        ) from None
    if len(out) != 2 or any(v < 0 for pair in out for v in pair):
        raise ValueError(f"{name}: explicit padding must be two non-negative (lo, hi) pairs, got {padding!r}.")
    return out


def _out_size(size: int, window: int, stride: int, padding, axis: int) -> int:
    """Output length along one spatial axis (the usual convolution arithmetic)."""
    if padding == "SAME":
        return math.ceil(size / stride)
    lo, hi = (0, 0) if padding == "VALID" else padding[axis]
    return (size + lo + hi - window) // stride + 1


def _describe(padding) -> str:
    return repr(padding) if isinstance(padding, str) else str(tuple(tuple(p) for p in padding))


class Conv(Synapse):
    r"""A 2-D convolution between an input layer of shape ``(H, W, C_in)`` and an output
    layer of shape ``(H', W', C_out)``:

    $E = -\sum_{i,j,o} g^{out}_{ijo}\,(g^{in} \star k)_{ijo}$, with
    $(g \star k)_{ijo} = \sum_{a,b,c} g_{s_h i + a - p_h,\; s_w j + b - p_w,\; c}\; k_{abco}$

    (cross-correlation, as ``jax.lax.conv_general_dilated``; zero padding). The kernel
    has shape ``(kh, kw, C_in, C_out)``; ``stride`` is an int or a pair; ``padding`` is
    ``"VALID"``, ``"SAME"`` (output ``ceil(H / stride)``) or explicit
    ``((lo, hi), (lo, hi))``. ``connections`` order: ``(input, output)``.

    The energy is bilinear, so the input layer is driven by the transposed convolution
    of $g^{out}$ and the output layer by the convolution of $g^{in}$ (both by autodiff).
    """

    kernel: Float[Array, "kh kw cin cout"]
    stride: tuple[int, int] = eqx.field(static=True)
    padding: str | tuple[tuple[int, int], tuple[int, int]] = eqx.field(static=True)

    def __init__(self, kernel, stride=(1, 1), padding="VALID"):
        kernel = checks.real_array("Conv", "kernel", kernel) if not hasattr(kernel, "dtype") else jnp.asarray(kernel)
        if jnp.issubdtype(kernel.dtype, jnp.floating):
            kernel = checks.finite("Conv", "kernel", kernel)
        self.kernel = kernel
        self.stride = _pair("Conv", "stride", stride)
        self.padding = _padding("Conv", padding)

    def __check_init__(self):
        if self.kernel.ndim != 4:
            raise ValueError(
                f"Conv: kernel must have shape (kh, kw, C_in, C_out), got shape {tuple(self.kernel.shape)}."
            )
        if not jnp.issubdtype(self.kernel.dtype, jnp.floating):
            raise ValueError(f"Conv: kernel must be a floating array, got dtype {self.kernel.dtype}.")

    def output_shape(self, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The shape ``(H', W', C_out)`` of the convolution of an input of shape ``(H, W, C_in)``."""
        kh, kw, _, cout = self.kernel.shape
        h, w = input_shape[0], input_shape[1]
        return (
            _out_size(h, kh, self.stride[0], self.padding, 0),
            _out_size(w, kw, self.stride[1], self.padding, 1),
            int(cout),
        )

    def convolve(self, g: Float[Array, "H W cin"]) -> Float[Array, "Hout Wout cout"]:
        """The convolution $g \\star k$ of one unbatched image."""
        out = lax.conv_general_dilated(
            g[None].astype(jnp.result_type(g, self.kernel)),
            self.kernel.astype(jnp.result_type(g, self.kernel)),
            window_strides=self.stride,
            padding=self.padding,
            dimension_numbers=_DIMS,
        )
        return out[0]

    def energy(self, g_in: Float[Array, "H W cin"], g_out: Float[Array, "Hout Wout cout"]) -> Scalar:
        r"""$-g^{out}\cdot(g^{in} \star k)$."""
        return -jnp.vdot(g_out, self.convolve(g_in))

    def check_shapes(self, name, shapes):
        """Raise unless both layers are images ``(H, W, C)``, the input has the kernel's
        input channels and the output has the convolution's output shape."""
        shapes = tuple(tuple(int(d) for d in s) for s in shapes)
        k = tuple(self.kernel.shape)
        what = f"kernel of shape {k}, stride {self.stride}, padding {_describe(self.padding)}"
        s_in, s_out = _image_layers(name, "Conv", what, shapes)
        if s_in[2] != k[2]:
            raise shape_error(
                name, "Conv", f"{what} expects {k[2]} input channels, but the input layer has shape {s_in}", shapes
            )
        _check_output(name, "Conv", what, s_in, s_out, self.output_shape(s_in), shapes)


class Pool(Synapse):
    r"""Linear (average or sum) pooling between a layer of shape ``(H, W, C)`` and one of
    shape ``(H', W', C)``:

    $E = -\sum_{i,j,c} g^{out}_{ijc}\; \lambda \sum_{(a,b) \in \text{window}} g^{in}_{s_h i + a - p_h,\; s_w j + b - p_w,\; c}$,

    $\lambda = 1/(w_h w_w)$ for ``kind="avg"`` and 1 for ``kind="sum"``. ``window`` and
    ``stride`` are ints or pairs (``stride`` defaults to ``window``: non-overlapping
    pooling); ``padding`` as for [`Conv`][] (zero padding; ``avg`` divides by the full
    window, so the map stays linear). ``connections`` order: ``(input, output)``.

    **Why no max pooling.** $-g^{out}\cdot\max_{window}(g^{in})$ is not bilinear: it is
    only piecewise linear in $g^{in}$, with a gradient that jumps where the arg-max
    switches. The vector field $-\partial E/\partial g^{in}$ is then discontinuous, so
    the ODE has no unique solutions there (sliding modes), adaptive steps collapse at
    every switch, and a fixed point with $\dot x = 0$ need not exist — the Lyapunov
    argument $dE/dt \le 0$ needs a continuously differentiable energy. A linear pooling
    keeps the energy smooth and bilinear; a selective, max-like pooling is obtained
    instead by giving the pooled layer a sharp Lagrangian (e.g. softmax over channels).
    """

    window: tuple[int, int] = eqx.field(static=True)
    stride: tuple[int, int] = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    padding: str | tuple[tuple[int, int], tuple[int, int]] = eqx.field(static=True)

    def __init__(self, window, stride=None, kind="avg", padding="VALID"):
        self.window = _pair("Pool", "window", window)
        self.stride = self.window if stride is None else _pair("Pool", "stride", stride)
        if kind not in ("avg", "sum"):
            raise ValueError(
                f"Pool: kind must be 'avg' or 'sum' (linear pooling keeps the energy bilinear; "
                f"see the docstring for why max pooling is not offered), got {kind!r}."
            )
        self.kind = kind
        self.padding = _padding("Pool", padding)

    def output_shape(self, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The shape ``(H', W', C)`` of the pooling of an input of shape ``(H, W, C)``."""
        h, w, c = input_shape
        return (
            _out_size(h, self.window[0], self.stride[0], self.padding, 0),
            _out_size(w, self.window[1], self.stride[1], self.padding, 1),
            int(c),
        )

    def pool(self, g: Float[Array, "H W C"]) -> Float[Array, "Hout Wout C"]:
        """The pooled image of one unbatched image."""
        pad = self.padding if isinstance(self.padding, str) else (*self.padding, (0, 0))
        out = lax.reduce_window(
            g, 0.0, lax.add, (*self.window, 1), (*self.stride, 1), pad
        )
        if self.kind == "avg":
            out = out / (self.window[0] * self.window[1])
        return out

    def energy(self, g_in: Float[Array, "H W C"], g_out: Float[Array, "Hout Wout C"]) -> Scalar:
        r"""$-g^{out}\cdot\mathrm{pool}(g^{in})$."""
        return -jnp.vdot(g_out, self.pool(g_in))

    def check_shapes(self, name, shapes):
        """Raise unless both layers are images ``(H, W, C)`` and the output has the
        pooling's output shape."""
        shapes = tuple(tuple(int(d) for d in s) for s in shapes)
        what = f"{self.kind} pooling with window {self.window}, stride {self.stride}, padding {_describe(self.padding)}"
        s_in, s_out = _image_layers(name, "Pool", what, shapes)
        _check_output(name, "Pool", what, s_in, s_out, self.output_shape(s_in), shapes)
