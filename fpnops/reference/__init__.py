"""The seeds' models in plain PyTorch: the reference fpnops reproduces exactly and beats."""
from fpnops.reference.detection import DetectionModel
from fpnops.reference.fpn import FPN
from fpnops.reference.resnet import BasicBlock, Bottleneck, ResNet34, ResNet50
from fpnops.reference.rpn import RPNHead

__all__ = ["BasicBlock", "Bottleneck", "DetectionModel", "FPN", "ResNet34", "ResNet50", "RPNHead"]
