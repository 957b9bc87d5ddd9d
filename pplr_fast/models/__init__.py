"""Models: ResNet backbones, the PPLR network, and ImageNet weight loading."""
from .pplr_net import PPLRNet, PPLROutput
from .resnet import RESNETS, BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
from .weights import PretrainedReport, PretrainedWeightsError, load_pretrained

__all__ = [
    "PPLRNet", "PPLROutput",
    "RESNETS", "BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50",
    "PretrainedReport", "PretrainedWeightsError", "load_pretrained",
]
