"""An MLLM conditioner: Qwen2.5-VL reads the instruction with the source (and any reference), and
learnable query tokens carry what it understood to the DiT's cross-attention (Kiwi-Edit §4.1,
InstructX §3, after MetaQuery).

The base MLLM is frozen; what trains is a query set per group (image / video / reference), a
two-layer MLP connector from the MLLM width to `out_dim`, and optionally LoRA on the language
model's attention projections. Gradients reach the queries through the frozen layers.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from curation.train.data_config import GROUPS


class QueryCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: int = Field(256, gt=0, description="queries for image edits (Kiwi-Edit §4.1, InstructX §3: 256)")
    video: int = Field(512, gt=0, description="queries for video edits (Kiwi-Edit §4.1, InstructX §3: 512)")
    reference: int = Field(768, gt=0, description="queries for reference-guided edits (Kiwi-Edit §4.1: 768)")


class MLLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("Qwen/Qwen2.5-VL-3B-Instruct", description="Qwen2.5-VL hub id or local dir holding the model "
                       "and its processor (both papers use the 3B)")
    out_dim: int = Field(1024, gt=0, description="connector output width = the DiT's text input width (ours: the "
                         "DiT's own text projection maps it to its hidden size)")
    queries: QueryCounts = QueryCounts()
    video_frames: int = Field(13, gt=0, description="evenly spaced frames of a source video the MLLM sees (InstructX §3)")
    max_pixels: int = Field(200704, gt=0, description="pixels per image or frame the MLLM sees, at most (ours: "
                            "256 merged visual tokens of 28x28 px; the processor's own cap is ~12.8M)")
    lora_rank: int = Field(64, ge=0, description="LoRA rank on the language model (0 = no LoRA; ours: neither "
                           "paper gives a rank)")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha (null = the rank, a scale of 1)")
    lora_targets: list[str] = Field(["q_proj", "k_proj", "v_proj", "o_proj"], description="language-model "
                                    "linear layers that get LoRA (ours: the attention projections)")


def _require_peft() -> Any:
    try:
        return importlib.import_module("peft")
    except ImportError as e:
        raise ImportError("encoder.mllm.lora_rank > 0 needs peft: pip install 'curation[mllm]' "
                          "(or encoder.mllm.lora_rank=0)") from e


def even_frames(count: int, wanted: int) -> list[int]:
    """`wanted` frame indices spread evenly over `count` frames (repeats when the clip is shorter)."""
    return np.linspace(0, count - 1, wanted).round().astype(int).tolist()


class MLLMConditioner(torch.nn.Module):
    """(instructions, source, reference, group) -> (N, Q, out_dim) context and its (N, Q) mask."""

    def __init__(self, config: MLLMConfig, device: torch.device, bf16: bool = False):
        super().__init__()
        import transformers

        self.config, self.dim = config, config.out_dim
        self.processor = transformers.AutoProcessor.from_pretrained(config.model)
        self.processor.tokenizer.padding_side = "left"  # every row's queries end the sequence at the same place
        if self.processor.chat_template is None:
            raise ValueError(f"the processor at {config.model} has no chat template")
        # The frozen base in bf16 only where the trainer autocasts: fp32 activations cannot meet bf16 weights.
        dtype = torch.bfloat16 if bf16 else torch.float32
        mllm = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(config.model, dtype=dtype)
        self.mllm = mllm.model.eval().requires_grad_(False)  # the LM head is never used
        self.pad_id = self.processor.tokenizer.pad_token_id or 0
        embed = self.mllm.get_input_embeddings().weight
        hidden = embed.shape[1]
        # Everything trained is drawn on the CPU from the seeded RNG, so a run starts alike on any device.
        # Queries start at the scale of token embeddings, so the frozen layers see familiar inputs (ours).
        scale = embed.float().std().item()
        counts = config.queries.model_dump()
        self.queries = torch.nn.ParameterDict({g: torch.nn.Parameter(torch.randn(counts[g], hidden) * scale) for g in GROUPS})
        self.connector = torch.nn.Sequential(torch.nn.Linear(hidden, config.out_dim), torch.nn.GELU(approximate="tanh"),
                                             torch.nn.Linear(config.out_dim, config.out_dim))
        if config.lora_rank:
            peft = _require_peft()
            targets = "|".join(config.lora_targets)
            lora = peft.LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha or config.lora_rank, lora_dropout=0.0,
                                   target_modules=rf".*language_model\..*\.({targets})")
            peft.inject_adapter_in_model(lora, self.mllm)
            for name, param in self.mllm.named_parameters():
                if "lora_" in name:
                    param.data = param.data.float()  # trained in fp32 like the rest; autocast lowers them per op
                    param.requires_grad_(True)
        self.to(device)

    def train(self, mode: bool = True) -> MLLMConditioner:
        super().train(mode)
        self.mllm.eval()  # frozen: no dropout whatever the trainer's mode
        return self

    # ---- trainable state ---------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Queries, connector and LoRA: all a checkpoint needs (the base reloads from `config.model`)."""
        return {name: param.detach().clone() for name, param in self.named_parameters() if param.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        mine = {name for name, param in self.named_parameters() if param.requires_grad}
        if set(state) != mine:
            raise ValueError(f"conditioner state does not match this config: missing {sorted(mine - set(state))[:3]}, "
                             f"unexpected {sorted(set(state) - mine)[:3]}")
        self.load_state_dict(state, strict=False)

    def all_reduce_grads(self) -> None:
        """Average the trained parts' gradients over the ranks, once per optimizer step. As under DDP,
        a part no rank used (another group's queries) keeps no gradient, so AdamW leaves it alone."""
        params = [param for param in self.parameters() if param.requires_grad]
        used = torch.tensor([param.grad is not None for param in params], dtype=torch.float32, device=params[0].device)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flat = torch.cat([*(g.flatten().float() for g in grads), used])  # one collective for all of them
        torch.distributed.all_reduce(flat)
        flat /= torch.distributed.get_world_size()
        offset = 0
        for param, grad, anyone in zip(params, grads, flat[-len(params):]):
            size = grad.numel()
            param.grad = flat[offset:offset + size].view_as(param).to(param.dtype) if anyone > 0 else None
            offset += size

    # ---- inputs ------------------------------------------------------------------------------
    def _prompts(self, instructions: list[str], video: bool, references: int) -> list[str]:
        visual = [{"type": "video" if video else "image"}] + [{"type": "image"}] * references
        return [self.processor.apply_chat_template([{"role": "user", "content": visual + [{"type": "text", "text": text}]}],
                                                   add_generation_prompt=True, tokenize=False) for text in instructions]

    def _inputs(self, instructions: list[str], source: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
        """The processor's tensors for chat-formatted prompts with the source first, then the references."""
        source = source.permute(0, 2, 3, 4, 1).cpu().numpy()  # (N, T, H, W, 3) uint8
        reference = reference.permute(0, 2, 3, 4, 1).cpu().numpy()  # (N, R, H, W, 3)
        video = source.shape[1] > 1
        images = [list(refs) for refs in reference]
        size = {"shortest_edge": min(self.processor.image_processor.size["shortest_edge"], self.config.max_pixels),
                "longest_edge": self.config.max_pixels}
        kwargs: dict[str, Any] = {}
        if video:
            picks = even_frames(source.shape[1], self.config.video_frames)
            kwargs["videos"] = [clip[picks] for clip in source]  # each (F, H, W, 3)
            # the frames are already chosen; the per-video pixel budget (qwen-vl-utils') is far above 13 frames
            kwargs["videos_kwargs"] = {"do_sample_frames": False, "size": size, "cap_pixels_per_frame": True}
        else:
            images = [[clip[0], *refs] for clip, refs in zip(source, images)]
        if any(images):
            kwargs["images"] = [image for row in images for image in row]
            kwargs["images_kwargs"] = {"size": size}
        return self.processor(text=self._prompts(instructions, video, reference.shape[1]), padding=True,
                              return_tensors="pt", **kwargs)

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, instructions: list[str], source: torch.Tensor, reference: torch.Tensor,
                group: str) -> tuple[torch.Tensor, torch.Tensor]:
        """source: uint8 (N, 3, T, H, W), a video when T > 1; reference: uint8 (N, 3, R, H, W), R >= 0."""
        device = self.connector[0].weight.device
        inputs = self._inputs(instructions, source, reference).to(device)
        queries = self.queries[group]  # (Q, E)
        n, q = source.shape[0], queries.shape[0]
        # The queries ride on placeholder text tokens, so the 3D rope positions continue past the prompt.
        ids = torch.cat([inputs.pop("input_ids"), torch.full((n, q), self.pad_id, device=device)], 1)  # (N, S + Q)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones(n, q, dtype=torch.long, device=device)], 1)
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros(n, q, dtype=torch.long, device=device)], 1)
        prompt = self.mllm.get_input_embeddings()(ids[:, :-q])  # (N, S, E)
        embeds = torch.cat([prompt, queries.to(prompt.dtype).expand(n, -1, -1)], 1)  # (N, S + Q, E)
        # Both ids and embeds: the ids place the visual features and the rope positions, the embeds are read.
        states = self.mllm(input_ids=ids, inputs_embeds=embeds, use_cache=False, **inputs).last_hidden_state  # (N, S + Q, E)
        context = self.connector(states[:, -q:])  # (N, Q, out_dim)
        return context, torch.ones(n, q, dtype=torch.bool, device=device)
