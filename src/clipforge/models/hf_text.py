"""Text towers from pretrained Hugging Face encoders (`text.hf`): any `transformers.AutoModel` encoder
(BERT, MiniLM, RoBERTa, MPNet, ...) with its own tokenizer, pooled, then a projection head.

The architecture is rebuilt from the HF config stored in clipforge's own config (`text.hf_config`), so a
checkpoint is self-contained: loading it needs transformers, never the original directory or the hub.
Pooling: `mean` over real tokens (sentence-transformers' mean pooling), `cls` (the first token), or `eos`
(the last real token). Sentence embeddings before the head equal sentence-transformers' on the same
directory (tests/test_pretrained_towers.py, against golden files made with sentence-transformers).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer as Backend
from torch import nn

from clipforge.errors import UsageError
from clipforge.models.projection import projection_head
from clipforge.models.output import TowerOutput
from clipforge.models.tokenizer import Tokenizer


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UsageError("text.hf towers need transformers: pip install 'clipforge[pretrained]'") from None
    transformers.logging.set_verbosity_error()  # "weights not initialised" lists for a pooler we never use
    transformers.utils.logging.disable_progress_bar()  # a "Loading weights" bar per model load
    return transformers


def hf_config_object(hf_config: dict):
    tf = _transformers()
    d = dict(hf_config)
    model_type = d.pop("model_type")
    try:
        return tf.AutoConfig.for_model(model_type, **d)
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"text.hf_config: transformers cannot build a {model_type!r} model ({e})") from None


_POOLER_MODELS = ("bert", "roberta", "xlm-roberta", "camembert")


class HFTextTower(nn.Module):
    """forward(ids (B, T), return_tokens) -> TowerOutput(pooled (B, D), tokens (B, T, D), mask (B, T)).

    Padding is `cfg.pad_token_id`; the attention mask is `ids != pad`. `features(ids)` is the pooled encoder
    output before the head (B, hidden), what a feature cache stores.
    """

    def __init__(self, cfg, embed_dim: int, pretrained_dir=None):
        super().__init__()
        tf = _transformers()
        self.cfg = cfg
        # BERT-like models add a pooler (a tanh layer over [CLS]) that sentence embeddings never use
        extra = {"add_pooling_layer": False} if cfg.hf_config.get("model_type") in _POOLER_MODELS else {}
        config = hf_config_object(cfg.hf_config)
        if pretrained_dir is not None:
            self.encoder = tf.AutoModel.from_pretrained(str(pretrained_dir), config=config, **extra)
        else:
            self.encoder = tf.AutoModel.from_config(config, **extra)
        self.feature_dim = int(self.encoder.config.hidden_size)
        self.head = projection_head(cfg.head, self.feature_dim, embed_dim, cfg.head_hidden)
        self.pad_id = int(cfg.pad_token_id)

    @property
    def blocks(self) -> nn.ModuleList:  # what tower locking counts ("unlock the last N blocks")
        enc = getattr(self.encoder, "encoder", None)
        layers = getattr(enc, "layer", None) or getattr(enc, "layers", None)
        if layers is None:
            layers = getattr(self.encoder, "layers", None) or getattr(self.encoder, "h", None)
        if layers is None:
            raise UsageError(f"cannot find the transformer blocks of this {type(self.encoder).__name__} "
                             "to lock or unlock")
        return layers

    def after_blocks(self) -> list:  # a final norm after the blocks, where the architecture has one
        return [m for m in (getattr(self.encoder, n, None) for n in ("norm", "final_layer_norm", "ln_f"))
                if isinstance(m, nn.Module)]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        enc = self.encoder  # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_*
        kwargs = {"use_reentrant": False}
        if enable and hasattr(enc, "activation_checkpointing_enable"):
            enc.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        elif enable:
            enc.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        elif getattr(enc, "is_activation_checkpointing", None) or (
                not hasattr(enc, "is_activation_checkpointing") and getattr(enc, "is_gradient_checkpointing", False)):
            (getattr(enc, "activation_checkpointing_disable", None) or enc.gradient_checkpointing_disable)()

    def _hidden(self, ids: torch.Tensor, full: bool = False, trim: bool = True):
        """(B, T, H) hidden states and the (B, T) mask. Padding columns past the batch's longest text are cut
        before the encoder runs (exact: masked keys get no attention, positions are kept); `full` pads the
        states back to T (zeros) for token outputs. `trim=False` keeps every column (an exported graph)."""
        mask = ids != self.pad_id  # (B, T)
        T = ids.shape[1]
        L = self.trim(ids).shape[1] if trim and ids.numel() else T
        h = self.encoder(input_ids=ids[:, :L], attention_mask=mask[:, :L].long()).last_hidden_state  # (B, L, H)
        if full and L < T:
            h = torch.nn.functional.pad(h, (0, 0, 0, T - L))
        elif not full:
            mask = mask[:, :L]
        return h, mask

    def _pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooling = self.cfg.pooling
        if pooling == "mean":
            m = mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if pooling == "cls":
            return h[:, 0]
        last = mask.long().sum(1).clamp(min=1) - 1  # eos: the last real token
        return h[torch.arange(h.shape[0], device=h.device), last]

    @property
    def token_embedding(self) -> nn.Embedding:  # the word-piece embedding table (prompt tuning reads it)
        return self.encoder.get_input_embeddings()

    def forward_embeddings(self, x: torch.Tensor, ids: torch.Tensor, return_tokens: bool = False) -> TowerOutput:
        """The tower on word embeddings `x` (B, T, H) in place of `ids`' own (CoOp's learned context); `ids`
        still decide the mask and pooling. The encoder adds its own position embeddings."""
        mask = ids != self.pad_id
        L = self.trim(ids).shape[1] if ids.numel() else ids.shape[1]
        h = self.encoder(inputs_embeds=x[:, :L], attention_mask=mask[:, :L].long()).last_hidden_state
        pooled = self.head(self._pool(h, mask[:, :L]))
        if return_tokens:
            h = torch.nn.functional.pad(h, (0, 0, 0, ids.shape[1] - L))
            return TowerOutput(pooled, self.head(h), mask)
        return TowerOutput(pooled)

    def trim(self, ids: torch.Tensor) -> torch.Tensor:
        """`ids` without the padding columns past the longest text: exact (masked keys get no attention and
        positions are kept). Engines running an exported graph call this before it."""
        if not ids.numel():
            return ids
        return ids[:, : max(int((ids != self.pad_id).sum(1).max()), 1)]

    def embed(self, ids: torch.Tensor) -> TowerOutput:
        """The tower on `ids` as given, no padding trimmed (what an exported ONNX graph holds)."""
        h, mask = self._hidden(ids, trim=False)
        return TowerOutput(self.head(self._pool(h, mask)))

    def features(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, hidden)
        return self._pool(*self._hidden(ids))

    def forward(self, ids: torch.Tensor, return_tokens: bool = False) -> TowerOutput:
        h, mask = self._hidden(ids, full=return_tokens)
        pooled = self.head(self._pool(h, mask))
        if return_tokens:
            return TowerOutput(pooled, self.head(h), mask)
        return TowerOutput(pooled)


def hf_tokenizer(directory: Path, context_length: int):
    """clipforge's `Tokenizer` over the model's own `tokenizer.json` (its normaliser and word pieces), with
    the model's start/end tokens ([CLS] ... [SEP] for BERT) and padding id: the same ids as transformers'
    tokenizer with truncation at `context_length`."""
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise UsageError(f"text.hf: {directory} has no tokenizer.json (a fast tokenizer file is needed)")
    backend = Backend.from_file(str(path))
    backend.no_truncation()
    backend.no_padding()
    specials = _special_tokens(Path(directory), backend)
    return Tokenizer(backend, context_length, pad_id=backend.token_to_id(specials["pad"]),
                     sot_token=specials["sot"], eot_token=specials["eot"], clean="none")


def _special_tokens(d: Path, backend) -> dict:
    tc = {}
    if (d / "tokenizer_config.json").is_file():
        try:
            tc = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            tc = {}

    def tok(key, *fallbacks):
        v = tc.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        for cand in ([v] if v else []) + list(fallbacks):
            if cand and backend.token_to_id(cand) is not None:
                return cand
        raise UsageError(f"text.hf: the tokenizer in {d} has no {key} among {[v, *fallbacks]}")

    return {"sot": tok("cls_token", "[CLS]", "<s>"), "eot": tok("sep_token", "[SEP]", "</s>"),
            "pad": tok("pad_token", "[PAD]", "<pad>")}

