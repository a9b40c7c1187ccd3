"""What a VLM's tokens cost: declared, never guessed from the endpoint.

`vlm.pricing: self_hosted` (your own vLLM/SGLang server, the local model) prices every token at 0.
`vlm.pricing: hosted` (a paid API, or a paid proxy in front of one) takes the model's list price from
`config/prices.yaml`, unless `vlm.usd_per_mtok_input/output` override it. A hosted model with no price
is still run and its tokens counted, but its cost is unknown (None), never a made-up number.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.resources import files

import yaml


@dataclass(frozen=True)
class TokenPrice:
    """USD per million tokens; output includes thinking tokens (billed as output by OpenAI and Google)."""

    input: float
    output: float

    def usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6


FREE = TokenPrice(0.0, 0.0)


@functools.cache
def price_table() -> dict[str, TokenPrice]:
    """The list prices of `config/prices.yaml`, by API model name (read once; no network)."""
    data = yaml.safe_load((files("curation") / "config" / "prices.yaml").read_text())
    return {name: TokenPrice(float(p["input"]), float(p["output"])) for name, p in data["models"].items()}


def token_price(model: str, pricing: str, usd_per_mtok_input: float | None = None,
                usd_per_mtok_output: float | None = None) -> TokenPrice | None:
    """The price of `model`'s tokens: each override where given, else 0 (self_hosted) or the table's
    list price (hosted); None when a side is neither overridden nor known."""
    listed = FREE if pricing == "self_hosted" else price_table().get(model)
    price_in = usd_per_mtok_input if usd_per_mtok_input is not None else (listed.input if listed else None)
    price_out = usd_per_mtok_output if usd_per_mtok_output is not None else (listed.output if listed else None)
    if price_in is None or price_out is None:
        return None
    return TokenPrice(price_in, price_out)
