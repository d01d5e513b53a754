"""Model zoo: ``create_model("resnet20", weights="default")``, ``list_models("resnet*")``.

Importing this package registers every family; none of them imports transformers until a
language model is built. Builders are reached through ``create_model``.
"""

from . import efficientnet_lite0, gpt2_tiny, llama_tiny, mobilenet_v2, resnet_cifar, smollm2
from .loading import load_model
from .registry import ModelConfig, create_model, list_models, model_config, register_model
from .resnet_cifar import build_resnet_cifar, depth_from_state_dict, resnet_cifar_from_state_dict
from .weights import clean_state_dict, load_state_dict_file, resolve_weights

#: the family modules (imported for their registrations)
FAMILIES = (efficientnet_lite0, gpt2_tiny, llama_tiny, mobilenet_v2, resnet_cifar, smollm2)

__all__ = [
    "FAMILIES", "ModelConfig", "build_resnet_cifar", "clean_state_dict", "create_model",
    "depth_from_state_dict", "list_models", "load_model", "load_state_dict_file", "model_config",
    "register_model", "resnet_cifar_from_state_dict", "resolve_weights",
]
