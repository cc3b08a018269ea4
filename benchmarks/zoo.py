"""Models people train, as tiny configurations built without any download.

The Hugging Face models are the real ``transformers`` classes. torchvision's and timm's wheels
on the package registry are CUDA builds whose compiled operators do not load with the CPU build
of torch (``operator torchvision::nms does not exist`` at import), so their topologies are
written here as those libraries write them: torchvision's ResNet ``BasicBlock`` and
MobileNetV3 ``InvertedResidual`` (expand, depthwise, squeeze-excitation, project, residual add),
timm's ViT ``Block`` (packed ``qkv``, ``reshape(B, N, 3, heads, head_dim)``, cls token, position
embedding). :func:`real_library_model` builds the library's own model where it does load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class ResidualCNN(nn.Module):
    """A user-written stem + residual block + head, not an ``nn.Sequential``."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        y = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.bn2(self.conv2(y)))
        return self.head(x.mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet-18 topology (``widths`` 64-128-256-512 is the real one)."""

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256, 512), classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, inplanes = [], widths[0]
        for index, planes in enumerate(widths):
            stride = 1 if index == 0 else 2
            layers.append(nn.Sequential(BasicBlock(inplanes, planes, stride),
                                        BasicBlock(planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(self.avgpool(x)))))
        return scale * x


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV3 block: 1x1 expand, depthwise, SE, 1x1 project, residual."""

    def __init__(self, inp: int, expanded: int, out: int, kernel: int, stride: int,
                 se: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != inp:
            layers += [nn.Conv2d(inp, expanded, 1, bias=False), nn.BatchNorm2d(expanded),
                       nn.Hardswish()]
        layers += [nn.Conv2d(expanded, expanded, kernel, stride, kernel // 2, groups=expanded,
                             bias=False), nn.BatchNorm2d(expanded), nn.Hardswish()]
        if se:
            layers.append(SqueezeExcitation(expanded, max(8, expanded // 4)))
        layers += [nn.Conv2d(expanded, out, 1, bias=False), nn.BatchNorm2d(out)]
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res_connect else y


class MobileNetV3Small(nn.Module):
    """torchvision's mobilenet_v3_small topology (its real block table, width multiplier 1)."""

    SETTINGS = [  # input, kernel, expanded, out, SE, stride
        (16, 3, 16, 16, True, 2), (16, 3, 72, 24, False, 2), (24, 3, 88, 24, False, 1),
        (24, 5, 96, 40, True, 2), (40, 5, 240, 40, True, 1), (40, 5, 240, 40, True, 1),
        (40, 5, 120, 48, True, 1), (48, 5, 144, 48, True, 1), (48, 5, 288, 96, True, 2),
        (96, 5, 576, 96, True, 1), (96, 5, 576, 96, True, 1),
    ]

    def __init__(self, classes: int = 1000, last: int = 1024) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False),
                                                 nn.BatchNorm2d(16), nn.Hardswish())]
        for inp, kernel, expanded, out, se, stride in self.SETTINGS:
            layers.append(InvertedResidual(inp, expanded, out, kernel, stride, se))
        layers.append(nn.Sequential(nn.Conv2d(96, 576, 1, bias=False), nn.BatchNorm2d(576),
                                    nn.Hardswish()))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(576, last), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(last, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


class Attention(nn.Module):
    """timm's ViT attention: one packed qkv Linear, heads split by a reshape."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """timm's ViT topology (``vit_tiny_patch16_224``: dim 192, 12 blocks, 3 heads)."""

    def __init__(self, img_size: int = 224, patch: int = 16, dim: int = 192, depth: int = 12,
                 num_heads: int = 3, mlp_ratio: float = 4.0, classes: int = 1000) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        tokens = (img_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def hf_bert(tiny: bool = True) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    from transformers import BertConfig, BertForSequenceClassification

    if not tiny:  # bert-base
        return BertForSequenceClassification(BertConfig()), {"input_ids": _ids(30522, 1, 128)}
    config = BertConfig(vocab_size=100, max_position_embeddings=32, num_labels=3, hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    return BertForSequenceClassification(config), {"input_ids": _ids(100)}


def hf_gpt2(tiny: bool = True) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    from transformers import GPT2Config, GPT2LMHeadModel

    if not tiny:  # gpt2 (124M)
        return GPT2LMHeadModel(GPT2Config()), {"input_ids": _ids(50257, 1, 128)}
    config = GPT2Config(vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0,
                        n_embd=32, n_layer=2, n_head=4)
    return GPT2LMHeadModel(config), {"input_ids": _ids(100)}


def hf_llama(tiny: bool = True) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    if not tiny:  # Llama's architecture at a size this CPU traces in seconds (58M)
        config = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376,
                             num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8)
        return LlamaForCausalLM(config), {"input_ids": _ids(32000, 1, 128)}
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=32)
    return LlamaForCausalLM(config), {"input_ids": _ids(100)}


def hf_vit(tiny: bool = True) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    from transformers import ViTConfig, ViTForImageClassification

    if not tiny:  # vit-base-patch16-224
        return ViTForImageClassification(ViTConfig(num_labels=1000)), {
            "pixel_values": _image(224)[:1]}
    config = ViTConfig(image_size=16, patch_size=4, num_labels=3, hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    return ViTForImageClassification(config), {"pixel_values": torch.randn(2, 3, 16, 16)}


def _ids(vocab: int, batch: int = 2, length: int = 8) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))


def _image(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


# name -> (builder of (model, example input), what it stands for)
ZOO: dict[str, tuple[Callable[[], tuple[nn.Module, Any]], str]] = {
    "residual-cnn": (lambda: (ResidualCNN(), _image(8)), "user-written stem + residual block"),
    "resnet18": (lambda: (ResNet((8, 16, 32, 64), 10), _image(32)),
                 "torchvision resnet18 topology, widths / 8"),
    "mobilenet_v3_small": (lambda: (MobileNetV3Small(10, 64), _image(32)),
                           "torchvision mobilenet_v3_small topology"),
    "vit-tiny": (lambda: (VisionTransformer(16, 4, 32, 2, 4, 2.0, 10), _image(16)),
                 "timm ViT topology, dim 32, 2 blocks, 4 heads"),
    "hf-bert": (hf_bert, "Hugging Face BertForSequenceClassification, tiny config"),
    "hf-gpt2": (hf_gpt2, "Hugging Face GPT2LMHeadModel, tiny config"),
    "hf-vit": (hf_vit, "Hugging Face ViTForImageClassification, tiny config"),
    "hf-llama": (hf_llama, "Hugging Face LlamaForCausalLM (RMSNorm, rotary, SwiGLU), tiny"),
}


def real_library_model(name: str) -> tuple[nn.Module, Any]:
    """The library's own model for a zoo entry written here (raises ImportError where the
    library does not load with this torch)."""
    if name == "resnet18":
        from torchvision.models import resnet18
        return resnet18(num_classes=10), _image(32)
    if name == "mobilenet_v3_small":
        from torchvision.models import mobilenet_v3_small
        return mobilenet_v3_small(num_classes=10), _image(32)
    if name == "vit-tiny":
        import timm
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16,
                                 patch_size=4, depth=2, num_classes=10), _image(16)
    raise KeyError(name)


# name -> the real-size configuration :func:`full_size` builds (recorded with the benchmark).
FULL_SIZE: dict[str, str] = {
    "residual-cnn": "ResidualCNN() (width 16, 10 classes), input 1x3x32x32",
    "resnet18": "ResNet((64, 128, 256, 512), 1000), input 1x3x224x224",
    "mobilenet_v3_small": "MobileNetV3Small(1000, 1024), input 1x3x224x224",
    "vit-tiny": "VisionTransformer(224, 16, 192, 12, 3, 4.0, 1000), input 1x3x224x224",
    "hf-bert": "BertForSequenceClassification(BertConfig()): bert-base (vocab 30522, hidden "
               "768, 12 layers, 12 heads, FFN 3072, 2 labels); input_ids 1x128",
    "hf-gpt2": "GPT2LMHeadModel(GPT2Config()): gpt2 124M (vocab 50257, n_embd 768, 12 layers, "
               "12 heads); input_ids 1x128",
    "hf-vit": "ViTForImageClassification(ViTConfig(num_labels=1000)): vit-base-patch16-224 "
              "(hidden 768, 12 layers, 12 heads, FFN 3072); pixel_values 1x3x224x224",
    "hf-llama": "LlamaForCausalLM(LlamaConfig(vocab 32000, hidden 512, 8 layers, 8 heads, "
                "intermediate 1376)): Llama's architecture (RMSNorm, rotary, SwiGLU) at 58M; "
                "input_ids 1x128",
}


def full_size(name: str) -> tuple[nn.Module, Any]:
    """The real-size configuration of the zoo entry ``name`` (see :data:`FULL_SIZE`), built
    without any download, with an example input at the size the model is used at."""
    torch.manual_seed(0)
    if name == "residual-cnn":
        return ResidualCNN(), _image(32)[:1]
    if name == "resnet18":
        return ResNet((64, 128, 256, 512), 1000), _image(224)[:1]
    if name == "mobilenet_v3_small":
        return MobileNetV3Small(1000, 1024), _image(224)[:1]
    if name == "vit-tiny":
        return VisionTransformer(224, 16, 192, 12, 3, 4.0, 1000), _image(224)[:1]
    builders = {"hf-bert": hf_bert, "hf-gpt2": hf_gpt2, "hf-vit": hf_vit, "hf-llama": hf_llama}
    if name in builders:
        return builders[name](tiny=False)
    raise KeyError(name)
