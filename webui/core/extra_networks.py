"""A job's extra networks: styles, LoRA tags, embeddings and VAE, applied for one job only.

`Networks` holds the registries the composition root builds (LoRA, embeddings, VAE,
styles). The worker calls `styled` (styles into the prompt text), then runs the job inside
`applied_networks`, which reads the `<lora:...>` tags of prompt and negative prompt,
applies the LoRAs and the VAE to the leased pipeline and takes them off again when the
job ends, however it ends. What the job got goes into its infotext ("Lora hashes",
"TI hashes", "VAE hash", "VAE") and its warnings (unknown tags, unusable files).

This module must never import a UI library, and never change global options.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .prompts import extract_extra_networks, lora_requests

if TYPE_CHECKING:
    from .families.base import Family

log = logging.getLogger(__name__)


@dataclass
class Networks:
    """The registries of the running program (model_manager objects, duck-typed here)."""

    loras: object | None = None  # model_manager.lora.LoraManager
    embeddings: object | None = None  # model_manager.embeddings.EmbeddingRegistry
    vaes: object | None = None  # model_manager.vae.VaeRegistry
    styles: object | None = None  # core.styles.StyleDatabase
    approx: object | None = None  # model_manager.vae_approx.ApproxModels (previews, TAESD)


@dataclass
class ActiveNetworks:
    """What one job runs with; processing reads it, the worker reports the warnings."""

    embeddings: object | None = None
    vae_fields: dict = field(default_factory=dict)
    lora_fields: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def extra_fields(self, used_embeddings: dict) -> dict:
        """Infotext fields after the standard ones: Lora hashes, skipped tags, TI hashes."""
        fields = dict(self.lora_fields)
        hashes = []
        for name, emb in used_embeddings.items():
            shorthash = self.embeddings.shorthash(emb) if self.embeddings is not None else None
            if shorthash:
                hashes.append(f"{name}: {shorthash}")
        if hashes:
            fields["TI hashes"] = ", ".join(hashes)
        return fields


def styled(params, networks: Networks | None):
    """(params with the chosen styles applied to prompt and negative prompt, warnings)."""
    names = tuple(getattr(params, "styles", ()) or ())
    if not names or networks is None or networks.styles is None:
        return params, [f"Style not found: {n}" for n in names] if names else []
    prompt, negative, missing = networks.styles.apply(names, params.prompt, params.negative_prompt)
    return replace(params, prompt=prompt, negative_prompt=negative), [
        f"Style not found: {n}" for n in missing
    ]


@contextmanager
def applied_networks(
    lease, family: Family, params, networks: Networks | None, default_vae: str | None = None
):
    """Apply the job's LoRAs and VAE to the leased pipeline for the duration of the block
    (LoRA files the family's way: `Family.load_lora`)."""
    active = ActiveNetworks()
    if networks is None:
        yield active
        return
    active.embeddings = networks.embeddings
    _, tags = extract_extra_networks(params.prompt)
    _, negative_tags = extract_extra_networks(params.negative_prompt)
    requests, problems = lora_requests(tags + negative_tags)
    active.warnings += [message for _, message in problems]
    with ExitStack() as stack:
        if requests and networks.loras is not None:
            loras = stack.enter_context(
                networks.loras.applied(lease.pipe, requests, load=family.load_lora)
            )
            active.lora_fields = loras.infotext_fields()
            active.warnings += loras.warnings
        elif requests:
            active.warnings.append("LoRA support is not set up; tags ignored")
        if problems:
            skipped = [tag for tag, _ in problems]
            previous = active.lora_fields.get("Lora skipped")
            active.lora_fields["Lora skipped"] = ", ".join(filter(None, [previous, *skipped]))
        if networks.vaes is not None:
            choice = getattr(params, "vae", None) or default_vae
            checkpoint = getattr(lease.model, "path", None)
            try:
                file = networks.vaes.resolve(choice, checkpoint)
            except LookupError as exc:  # a VAE that has gone: the checkpoint's own, said so
                active.warnings.append(f"{exc}; using the checkpoint's own VAE")
                file = None
            vae = stack.enter_context(networks.vaes.applied(lease.pipe, file))
            active.vae_fields = vae.infotext_fields()
        for warning in active.warnings:
            log.warning("job: %s", warning)
        yield active
