"""Encoder + projection head, with a batched feature extractor for scoring."""

from __future__ import annotations

import torch
from torch import nn

from ..registry import Registry
from .encoders import SmallCNN
from .features import encode
from .heads import ClassifierHead, DeepProjectionHead, ProjectionHead


class ContrastiveModel(nn.Module):
    """f_theta followed by g_psi. ``forward`` returns projections z; :meth:`features` returns f_theta(x).

    ``aux_head`` (optional) is a second head on f_theta(x): the shift classifier of CSI / self-OECL or the
    class classifier of the CLP paper's joint recipe. ``forward(x, with_aux=True)`` returns ``(z, logits)``
    from one encoder pass (so it also works through DistributedDataParallel).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, aux_head: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.aux_head = aux_head

    def forward(self, x: torch.Tensor, with_aux: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        if not with_aux:
            return self.head(h)
        if self.aux_head is None:
            raise ValueError("this model has no auxiliary head; build it with aux_classes=...")
        return self.head(h), self.aux_head(h)

    def aux_logits(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Auxiliary-head logits in evaluation mode, computed in batches; returned on the CPU."""
        if self.aux_head is None:
            raise ValueError("this model has no auxiliary head")
        return encode(nn.Sequential(self.encoder, self.aux_head), x, batch_size=batch_size, device=_device_of(self))

    def features(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Representations f_theta(x) in evaluation mode, computed in batches; returned on the CPU."""
        return encode(self.encoder, x, batch_size=batch_size, device=_device_of(self))


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def small_contrastive_model(
    in_channels: int, widths: tuple[int, int, int] = (32, 64, 128), projection_dim: int = 128,
    aux_classes: int | None = None,
) -> ContrastiveModel:
    """:class:`SmallCNN` encoder with a 2-layer :class:`ProjectionHead`, and a linear
    :class:`ClassifierHead` with ``aux_classes`` outputs when that is given."""
    return build_contrastive_model(in_channels, "small_cnn", "mlp", widths, projection_dim, aux_classes)


ENCODERS: Registry = Registry("encoder")
HEADS: Registry = Registry("head")


@ENCODERS.register("small_cnn", description="three conv blocks of the given widths (CPU-sized)")
def _small_cnn(in_channels: int, widths: tuple[int, ...]) -> nn.Module:
    return SmallCNN(in_channels, tuple(widths))


@ENCODERS.register("resnet18", reference="FIRM appendix A", description="CIFAR ResNet-18 (3x3 stem, no max-pool)")
def _resnet18(in_channels: int, widths: tuple[int, ...]) -> nn.Module:
    from .resnet import CifarResNet18

    return CifarResNet18(in_channels)


def _pretrained_encoder(name: str):
    """The encoder factory of a registered pretrained backbone (:class:`~.backbones.BackboneEncoder`)."""
    def build(in_channels: int, widths: tuple[int, ...], weights: str | None = None, input_size: int = 128,
              freeze_blocks: int = 0, freeze_bn: bool = False) -> nn.Module:
        from .backbones import BackboneEncoder, get_backbone

        return BackboneEncoder(get_backbone(name, weights=weights, input_size=input_size), freeze_blocks, freeze_bn)

    build.__name__ = name
    return build


ENCODERS.register("mobilenet_v2", reference="Sandler et al. 2018; torchvision's ImageNet weights",
                  description="pretrained MobileNetV2 (options: weights, input_size, freeze_blocks, freeze_bn)",
                  pretrained=True)(_pretrained_encoder("mobilenet_v2"))
for _lite in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
    ENCODERS.register(_lite, reference="Tan & Le 2019 (EfficientNet-Lite); efficientnet_pytorch keys",
                      description=f"pretrained EfficientNet-Lite{_lite[-1]} (options: weights, input_size, "
                                  "freeze_blocks (the stem, then the blocks), freeze_bn)",
                      pretrained=True)(_pretrained_encoder(_lite))


@HEADS.register("mlp", reference="SimCLR", description="2-layer projection head")
def _mlp_head(feature_dim: int, projection_dim: int) -> nn.Module:
    return ProjectionHead(feature_dim, out_dim=projection_dim)


@HEADS.register("deep", reference="FIRM appendix A", description="[512 x 8, projection_dim] projection head")
def _deep_head(feature_dim: int, projection_dim: int) -> nn.Module:
    return DeepProjectionHead(feature_dim, out_dim=projection_dim)


def build_contrastive_model(
    in_channels: int, encoder: str = "small_cnn", head: str = "mlp", widths: tuple[int, ...] = (32, 64, 128),
    projection_dim: int = 128, aux_classes: int | None = None, encoder_options: dict | None = None,
) -> ContrastiveModel:
    """Encoder + projection head by registry name: ``small_cnn`` (:class:`SmallCNN` with ``widths``) or
    ``resnet18`` (:class:`CifarResNet18`, FIRM app. A; ``widths`` ignored); head ``mlp`` (SimCLR's 2 layers) or
    ``deep`` (FIRM's [512 x 8, projection_dim]). ``aux_classes`` adds a linear auxiliary head (shift or class).
    ``encoder_options`` go to the encoder's factory (a pretrained backbone's weights, input size, freezing)."""
    enc = ENCODERS.get(encoder)(in_channels, tuple(widths), **(encoder_options or {}))
    proj = HEADS.get(head)(enc.feature_dim, projection_dim)
    aux = ClassifierHead(enc.feature_dim, aux_classes) if aux_classes else None
    return ContrastiveModel(enc, proj, aux)
