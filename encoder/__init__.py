"""lookalike.encoder: images -> pixels -> a learned autoencoder -> search vectors.

Imports only torch, torchvision, pillow and numpy (and safetensors for weights).
"""

from .checkpoint import CheckpointError, load_model, model_id, save_model
from .images import DEFAULT_MAX_PIXELS, ImageInfo, ImageLoadError, ImageSource, find_images, load_image, open_image
from .inference import Encoder
from .model import Autoencoder, ModelConfig, create_model, list_models, register
from .train import TrainConfig, TrainError, TrainResult, train

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Autoencoder",
    "CheckpointError",
    "Encoder",
    "ImageInfo",
    "ImageLoadError",
    "ImageSource",
    "ModelConfig",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "create_model",
    "find_images",
    "list_models",
    "load_image",
    "load_model",
    "model_id",
    "open_image",
    "register",
    "save_model",
    "train",
]
