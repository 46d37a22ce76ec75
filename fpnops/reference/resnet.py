"""The seeds' ResNets in plain PyTorch: Bottleneck/ResNet50 from the backbone notebook, and
BasicBlock/ResNet34 from the two ResNet explainers (torchvision's layout and names)."""
import torch
import torch.nn as nn


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels), the stride on the 3x3 conv (torchvision's "v1.5")."""

    expansion = 4

    def __init__(self, in_channels, mid_channels, stride=1, downsample=None):
        super().__init__()
        out_channels = mid_channels * self.expansion
        self.conv1 = conv1x1(in_channels, mid_channels)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = conv3x3(mid_channels, mid_channels, stride)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = conv1x1(mid_channels, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class BasicBlock(nn.Module):
    """Two 3x3 convs; the stride on the first."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


def _make_layer(block, in_ch, planes, blocks, stride):
    """A stage: the first block changes stride/width (1x1 conv + BN projection shortcut)."""
    out_ch = planes * block.expansion
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))
    layers = [block(in_ch, planes, stride, downsample)]
    layers += [block(out_ch, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNet50(nn.Module):
    """The notebook's backbone: returns C2..C5 (strides 4, 8, 16, 32; 256..2048 channels)."""

    out_channels = [256, 512, 1024, 2048]

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.layer1 = _make_layer(Bottleneck, 64, 64, blocks=3, stride=1)
        self.layer2 = _make_layer(Bottleneck, 256, 128, blocks=4, stride=2)
        self.layer3 = _make_layer(Bottleneck, 512, 256, blocks=6, stride=2)
        self.layer4 = _make_layer(Bottleneck, 1024, 512, blocks=3, stride=2)

    def forward(self, x):
        c2 = self.layer1(self.stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c2, c3, c4, c5


class ResNet34(nn.Module):
    """The explainers' ResNet34 (torchvision's names, so its checkpoints load). With
    num_classes=None it is a backbone whose forward returns C2..C5 (64..512 channels);
    `features(x)` returns them either way."""

    out_channels = [64, 128, 256, 512]

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _make_layer(BasicBlock, 64, 64, 3, stride=1)
        self.layer2 = _make_layer(BasicBlock, 64, 128, 4, stride=2)
        self.layer3 = _make_layer(BasicBlock, 128, 256, 6, stride=2)
        self.layer4 = _make_layer(BasicBlock, 256, 512, 3, stride=2)
        self.num_classes = num_classes
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * BasicBlock.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _stem(self, x):
        return self.relu(self.bn1(self.conv1(x)))

    def features(self, x):
        c2 = self.layer1(self.maxpool(self._stem(x)))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c2, c3, c4, c5

    def forward(self, x):
        feats = self.features(x)
        if self.num_classes is None:
            return feats
        return self.fc(torch.flatten(self.avgpool(feats[-1]), 1))
