"""The error classes of fpnops' input checks.

Where a tensor given to an op or a fused module's forward is wrong (shape, channels, dtype,
device, layout), eager PyTorch mostly raises RuntimeError, while fpnops' checks, which run
before any arithmetic so that they can name the argument and the submodule, raise ValueError or
TypeError. These classes are both, so `except RuntimeError` written against eager catches
fpnops' errors too, and `except ValueError` / `except TypeError` keep working.
"""


class InputError(ValueError, RuntimeError):
    """A tensor argument with a wrong value: shape, channels, device, size."""


class InputTypeError(TypeError, RuntimeError):
    """A tensor argument of a wrong type: not a tensor, a wrong dtype or layout."""
