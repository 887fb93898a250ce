"""A loaded model: plain transformers for generation, a TransformerBridge for hooks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import WorkbenchError
from .info import SENTENCE_EMBEDDING, ModelInfo, hook_layer


@dataclass
class LoadedModel(ModelInfo):
    """A model ready for hooked extraction and interventions.

    Beyond :class:`ModelInfo`: ``hf_model`` (plain transformers, eval: the model to generate with
    and to use ``past_key_values`` on), ``tokenizer``, ``bridge`` (decoders only: a TransformerBridge
    in compatibility mode over a parameter-sharing twin of ``hf_model``, for hooks). The load check
    of both paths is in ``load_report`` (see :func:`workbench.models.load_check.load_check`).
    """

    hf_model: Any = None
    tokenizer: Any = None
    bridge: Any = None

    @property
    def input_device(self) -> torch.device:
        """Where input ids go: the device of the embedding (the first device of a spread model)."""
        return self.hf_model.get_input_embeddings().weight.device

    def require_kv_cache(self, purpose: str = "generation") -> None:
        """Refuse a decoder whose KV-cache path failed the load check (its generations would be wrong)."""
        if self.kind != "decoder":
            raise WorkbenchError(f"{purpose} needs a decoder (causal LM); {self.name} is an {self.kind}.")
        if "kv_cache_ok" not in self.load_report:
            raise WorkbenchError(f"{self.name} was loaded without the load check (check_logits=False), so its KV-cache "
                                 f"path is unverified; load it with the check for {purpose}.")
        if self.load_report.get("kv_cache_ok") is False:
            raise WorkbenchError(
                f"{self.name}'s KV-cache path failed the load check (one cached step differs from a full "
                f"forward by {self.load_report.get('kv_step_max_abs_diff'):.3g}), so {purpose} would be wrong; "
                "report this with the model name and the workbench version.")

    # ---- the extraction forward ------------------------------------------------------------
    @torch.no_grad()
    def run_hooks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  hooks: list[str]) -> dict[str, torch.Tensor]:
        """Forward a right-padded batch and return ``{hook: float32 [B, T, ...]}`` on the CPU.

        Decoders: TransformerBridge ``run_with_cache`` restricted to ``hooks``. With right padding
        and causal attention the real tokens never see the pads, so no mask is needed and values
        equal an unpadded forward. Encoders: transformers hidden states with the attention mask,
        plus the sentence embedding (pooled over real tokens) as one vector per text.
        """
        input_ids = input_ids.to(self.input_device)
        attention_mask = attention_mask.to(self.input_device)
        if self.kind == "decoder":
            wanted = set(hooks)
            _, cache = self.bridge.run_with_cache(input_ids, names_filter=lambda n: n in wanted)
            return {h: cache[h].detach().float().cpu() for h in hooks}
        encoder = self.hf_model.get_encoder() if self.kind == "seq2seq" else self.hf_model
        out = encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        states = out.hidden_states
        result = {}
        for h in hooks:
            if h == SENTENCE_EMBEDDING:
                result[h] = self.pool(out.last_hidden_state, attention_mask).cpu()
            else:
                result[h] = states[hook_layer(h)].float().cpu()
        return result

    def pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sentence embedding from token states [B, T, D] -> [B, D] (the model's own pooling)."""
        states = states.float()
        mask = attention_mask.to(states.device).unsqueeze(-1).to(states.dtype)
        if self.sentence_pooling == "cls":
            pooled = states[:, 0]
        else:
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        if self.sentence_normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled
