"""Subclasses of a user's own module classes, made at run time, that mix in a fused forward:
fuse() gives a torchvision ResNet or IntermediateLayerGetter its fused stem this way, and a
torchvision Conv2dNormActivation or FeaturePyramidNetwork its fused replacement, so that
isinstance() and what keys on the class (torchvision's FX feature extraction treats the classes
of torchvision.ops as leaves) see the class they had.

pickle cannot name a class made at run time; each one's __reduce_ex__ names the mixin and the
original class instead, and unpickling (or deepcopy) makes the subclass again (_rebuild).
"""
_SUBCLASSES = {}  # (original class, mixin) -> the fused subclass


def fused_class(cls, mixin):
    """The subclass of `cls` that mixes in `mixin` (its methods first); one per pair."""
    key = (cls, mixin)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(f"Fused{cls.__name__}", (mixin, cls),
                                {"__module__": mixin.__module__, "_fpnops_base": cls,
                                 "_fpnops_mixin": mixin, "__reduce_ex__": _reduce_ex})
    return _SUBCLASSES[key]


def _reduce_ex(self, protocol):
    return (_rebuild, (self._fpnops_base, self._fpnops_mixin), self.__getstate__())


def _rebuild(cls, mixin):
    """Unpickling's and deepcopy's constructor (the state is set afterwards)."""
    return object.__new__(fused_class(cls, mixin))
