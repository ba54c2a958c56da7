"""OFA's image stem: a ResNet v1.5 trunk cut after stage 3, built from timm's Bottleneck blocks.

Module names equal the official ones (`conv1`, `bn1`, `layer{1,2,3}.{i}.conv{1,2,3}`, `.bn{1,2,3}`,
`.downsample.{0,1}`), so official `encoder.embed_images.*` weights load without renaming.
"""

from __future__ import annotations

from timm.layers import DropPath
from timm.models.resnet import Bottleneck
from torch import Tensor, nn


def linear_rates(rate: float, count: int) -> list[float]:
    """Drop-path rates growing linearly from 0 to `rate` over `count` blocks (python floats: meta-device safe)."""
    return [rate * i / (count - 1) if count > 1 else 0.0 for i in range(count)]


class ResNetTrunk(nn.Module):
    """7x7/2 stem + max-pool, then three Bottleneck stages (strides 1, 2, 2): output stride 16, 16*width channels."""

    def __init__(self, layers: list[int], width: int = 64, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for stage, (blocks, multiplier, stride) in enumerate(zip(layers, (1, 2, 4), (1, 2, 2)), start=1):
            planes = width * multiplier
            rates = linear_rates(drop_path_rate, blocks)
            stage_blocks = []
            for index in range(blocks):
                downsample = None
                if index == 0 and (stride != 1 or inplanes != planes * Bottleneck.expansion):
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                        nn.BatchNorm2d(planes * Bottleneck.expansion),
                    )
                stage_blocks.append(
                    Bottleneck(
                        inplanes,
                        planes,
                        stride=stride if index == 0 else 1,
                        downsample=downsample,
                        drop_path=DropPath(rates[index]) if rates[index] > 0 else None,
                    )
                )
                inplanes = planes * Bottleneck.expansion
            self.add_module(f"layer{stage}", nn.Sequential(*stage_blocks))
        self.out_channels = inplanes
        self.init_weights()

    def init_weights(self) -> None:
        """He init for convolutions, unit BatchNorm (as torchvision/timm ResNets), so features keep their scale."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer3(self.layer2(self.layer1(x)))
