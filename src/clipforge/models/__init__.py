"""Native CLIP-style models: configs + registry, towers, tokenizer, preprocessing, checkpoints."""
from clipforge.models.checkpoint import (  # noqa: F401
    build_model,
    create_model,
    load_model,
    register_resolver,
    save_pretrained,
)
from clipforge.models.clip import CLIPModel  # noqa: F401
from clipforge.models.config import (  # noqa: F401
    CLIPConfig,
    PreprocessConfig,
    TextConfig,
    VisionConfig,
    get_model_config,
    list_models,
    register_model,
)
from clipforge.models.output import CLIPOutput  # noqa: F401
from clipforge.models.tokenizer import Tokenizer, default_tokenizer, train_tokenizer  # noqa: F401
