"""Native CLIP-style models: configs + registry, towers, tokenizer, preprocessing, checkpoints, loading."""
from clipforge.models.checkpoint import save_pretrained  # noqa: F401
from clipforge.models.clip import CLIPModel  # noqa: F401
from clipforge.models.config import (  # noqa: F401
    CLIPConfig,
    EfficientNetConfig,
    PreprocessConfig,
    ResNetConfig,
    TextConfig,
    TimmConfig,
    VisionConfig,
    ViTConfig,
)
from clipforge.models.model_registry import get_model_config, list_models, register_model  # noqa: F401
from clipforge.models.factory import build_model, create_model  # noqa: F401
from clipforge.models.adapter import attach_adapter, base_hash, save_adapter  # noqa: F401
from clipforge.models.lora import LoRAConfig, apply_lora, has_lora, merge_lora  # noqa: F401
from clipforge.models.loading import load_model, register_resolver  # noqa: F401
from clipforge.models.output import CLIPOutput, TowerOutput  # noqa: F401
from clipforge.models.tokenizer import Tokenizer, default_tokenizer, train_tokenizer  # noqa: F401
from clipforge.models.unwrap import unwrap_model  # noqa: F401
