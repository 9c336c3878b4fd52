"""AND (composable diffusion) for the flow-matching transformer families: FLUX.1, SD 3.5
and Z-Image.

A1111's `AND` joins sub-prompts, each with a weight (`a cat :1.2 AND a dog :0.8`;
`prompts.split_and`). Each sub-prompt is encoded on its own, with its own prompt-editing
schedule (`and_parts` gives the texts: `flux_text.scheduled_conditioning`,
`sd3_text.sd3_conditioning`). While one pipeline call runs, hooks on the transformer make
every call that predicts for the prompt run once per sub-prompt, in one batch ([negative
rows,] sub-prompt 1 rows, ..., sub-prompt n rows, each with that step's text), and fold
the predictions back into the one the pipeline expects (`combine`):

- with CFG (the negative prompt's rows are computed): A1111's
  `uncond + sum_i w_i (cond_i - uncond)`, so that the pipeline's guidance gives A1111's
  and Forge's composable diffusion, `uncond + g * sum_i w_i (cond_i - uncond)`;
- at CFG 1 (FLUX's usual run with its distilled guidance, Z-Image Turbo's, SD 3.5 Large
  Turbo's: no negative rows) the sub-prompts' predictions averaged by their weights,
  `sum_i w_i cond_i / sum_i w_i`, as for the UNet families (`core.composable`); when the
  weights sum to 0 or less, A1111's formula with an unconditional pass. (Forge at CFG 1
  sums the weighted denoised images, `sum_i w_i x0_i`: the same when the weights sum to
  1, an image scaled by the sum otherwise.)

How each family's pipeline calls its transformer:

- SD 3.5 (`follow_rows`): one call a step, [negative rows, prompt rows] with CFG, the
  prompt rows alone without (and the skip-layer pass's call, prompt rows);
- FLUX.1 (`follow_rows(two_calls=True)`): a call for the prompt, then with true CFG
  (CFG scale above 1) a second one for the negative prompt. The prompt's call runs the
  sub-prompts and gives their weighted mean; when the negative call follows, the
  prompt's prediction the pipeline holds is updated in place to A1111's formula with
  the negative prediction, before the pipeline applies CFG;
- Z-Image (`follow_captions`): one call a step on lists of latents and captions, the
  prompt's rows first, then the negative prompt's with CFG.

Plain prompts (one sub-prompt of weight 1) never reach this module: the families keep
their `follow_schedule` for them, with the same pixels as before.

This module must never import a UI library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from .conditioning import Conditioning, Encoded
from .prompts import split_and
from .samplers import steps_done

# FLUX's and SD 3's transformer keyword arguments that are not per row
_NOT_ROWS = frozenset({"img_ids", "txt_ids", "joint_attention_kwargs", "return_dict",
                       "encoder_hidden_states", "pooled_projections"})  # fmt: skip


def and_parts(prompt: str) -> list[tuple[str, float]]:
    """A prompt's AND sub-prompts with their weights; a prompt without AND or weight is
    kept as it is written (its pixels as before), sub-prompts are stripped (T5 and Qwen
    read a leading space as a token)."""
    parts = split_and(prompt)
    if len(parts) == 1 and parts[0] == (prompt.rstrip(), 1.0):
        return [(prompt, 1.0)]
    return [(text.strip(), weight) for text, weight in parts]


def composed(conditioning: Conditioning) -> bool:
    """Whether a conditioning combines sub-prompts (AND, or one weighted sub-prompt)."""
    return len(conditioning.conds) > 1 or conditioning.weights[0] != 1.0


def combine(
    uncond: torch.Tensor | None, preds: Sequence[torch.Tensor], weights: Sequence[float]
) -> torch.Tensor:
    """A1111's `uncond + sum w_i (pred_i - uncond)`, or without `uncond` the weighted mean."""
    if uncond is None:
        total = sum(weights)
        return sum(w / total * p for w, p in zip(weights, preds, strict=True))  # type: ignore[return-value]
    merged = uncond.clone()
    for weight, pred in zip(weights, preds, strict=True):
        merged += weight * (pred - uncond)
    return merged


class _Steps:
    """The step the pipeline is at, moved on by its step callback."""

    def __init__(self, first_step: int):
        self.first, self.step = first_step, first_step
        self.calls = 0  # transformer calls in this step

    def wrap(self, on_step: Callable) -> Callable:
        def callback(pipe, i, t, tensors):
            self.step, self.calls = self.first + steps_done(pipe, i), 0
            return on_step(pipe, i, t, tensors)

        return callback


@contextmanager
def _hooks(module: torch.nn.Module, before, after, steps: _Steps) -> Iterator[Callable]:
    handles = [module.register_forward_pre_hook(before, with_kwargs=True),
               module.register_forward_hook(after, with_kwargs=True)]  # fmt: skip
    try:
        yield steps.wrap
    finally:
        for handle in handles:
            handle.remove()


def _rows(value: Any, rows: int, pick: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """A per-row tensor (or a list of them: ControlNet residuals) rebuilt by `pick`."""
    if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == rows:
        return pick(value)
    if isinstance(value, list | tuple) and value and all(torch.is_tensor(v) for v in value):
        return type(value)(_rows(v, rows, pick) for v in value)
    return value


class _RowConditioner:
    """FLUX's and SD 3.5's transformer calls (keyword arguments, tensors with a row per
    image): the prompt's rows become one block per sub-prompt, folded back after."""

    def __init__(self, conditioning: Conditioning, batch: int, steps: _Steps, two_calls: bool):
        self.cond, self.batch, self.steps, self.two_calls = conditioning, batch, steps, two_calls
        self.average = sum(conditioning.weights) > 0  # at CFG 1: the weighted mean
        self.layout: tuple[bool, bool, bool] = (False, False, False)  # guided, uncond, negative
        self.held: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # FLUX: the prompt's

    def before(self, module, args, kwargs):
        if "hidden_states" not in kwargs:
            raise RuntimeError("AND: the transformer was called without hidden_states")
        negative_call = self.two_calls and self.steps.calls > 0
        self.steps.calls += 1
        if negative_call:  # FLUX's true-CFG call: the negative prompt, rows as they are
            self.layout = (False, False, True)
            texts, each = [self.cond.uncond.at(self.steps.step)], kwargs["hidden_states"].shape[0]
        else:
            kwargs, texts = self._prompt_rows(kwargs)
            each = self.batch
        like_embeds, like_pooled = kwargs["encoder_hidden_states"], kwargs["pooled_projections"]
        kwargs["encoder_hidden_states"] = torch.cat(
            [e.embeds.to(like_embeds).expand(each, -1, -1) for e in texts])  # fmt: skip
        kwargs["pooled_projections"] = torch.cat(
            [e.pooled.to(like_pooled).expand(each, -1) for e in texts])  # fmt: skip
        return args, kwargs

    def _prompt_rows(self, kwargs: dict) -> tuple[dict, list[Encoded]]:
        """The call's per-row inputs as [negative rows,] one block per sub-prompt, and the
        texts of the blocks."""
        b, rows, step = self.batch, kwargs["hidden_states"].shape[0], self.steps.step
        if rows not in (b, 2 * b):
            raise RuntimeError(f"transformer batch of {rows} rows for {b} images")
        guided = not self.two_calls and rows == 2 * b
        with_uncond = guided or not self.average
        conds = [c.at(step) for c in self.cond.conds]

        def pick(t: torch.Tensor) -> torch.Tensor:
            first, second = (t[:b], t[b:]) if guided else (t, t)
            return torch.cat(([first] if with_uncond else []) + [second] * len(conds))

        self.layout = (guided, with_uncond, False)
        kwargs = {k: v if k in _NOT_ROWS else _rows(v, rows, pick) for k, v in kwargs.items()}
        return kwargs, ([self.cond.uncond.at(step)] if with_uncond else []) + conds

    def after(self, module, args, kwargs, output):
        guided, with_uncond, negative_call = self.layout
        sample = output[0] if isinstance(output, tuple) else output.sample
        if negative_call:
            if self.held is not None:  # the prompt's prediction, as the pipeline holds it
                merged, preds = self.held
                merged.copy_(combine(sample, preds, self.cond.weights))
                self.held = None
            return output
        parts = list(sample.split(self.batch))
        uncond = parts.pop(0) if with_uncond else None
        merged = combine(uncond, parts, self.cond.weights)
        if self.two_calls:
            self.held = (merged, parts)
        result = torch.cat([uncond, merged]) if guided else merged
        if isinstance(output, tuple):
            return (result, *output[1:])
        output.sample = result
        return output


@contextmanager
def follow_rows(
    pipe: Any, conditioning: Conditioning, batch_size: int, *, first_step: int = 0,
    two_calls: bool = False,
) -> Iterator[Callable]:  # fmt: skip
    """AND and prompt schedules on FLUX's (`two_calls`: the negative prompt in a call of
    its own) or SD 3.5's transformer for one pipeline call; yields a wrapper for the step
    callback that moves to the next step."""
    steps = _Steps(first_step)
    state = _RowConditioner(conditioning, batch_size, steps, two_calls)
    with _hooks(pipe.transformer, state.before, state.after, steps) as wrap:
        yield wrap


class _CaptionConditioner:
    """Z-Image's transformer calls (`x` and `cap_feats` lists, one entry per row; the
    prompt's rows first, the negative prompt's after them with CFG)."""

    def __init__(self, conditioning: Conditioning, batch: int, steps: _Steps):
        self.cond, self.batch, self.steps = conditioning, batch, steps
        self.average = sum(conditioning.weights) > 0
        self.layout: tuple[bool, bool] = (False, False)  # guided, with an uncond block

    def before(self, module, args, kwargs):
        x, t, captions = args[:3]
        b, rows = self.batch, len(x)
        if rows not in (b, 2 * b):
            raise RuntimeError(f"transformer batch of {rows} rows for {b} images")
        guided = rows == 2 * b
        with_uncond = guided or not self.average
        step, dtype = self.steps.step, captions[0].dtype
        blocks = [(c.at(step), 0) for c in self.cond.conds]  # (text, first row of its latents)
        if with_uncond:
            blocks.insert(0, (self.cond.uncond.at(step), b if guided else 0))
        new_x, new_t, new_captions = [], [], []
        for text, start in blocks:
            new_x += x[start : start + b]
            new_t.append(t[start : start + b])
            new_captions += [_caption(text, dtype)] * b
        self.layout = (guided, with_uncond)
        return (new_x, torch.cat(new_t), new_captions, *args[3:]), kwargs

    def after(self, module, args, kwargs, output):
        guided, with_uncond = self.layout
        outs = list(output[0] if isinstance(output, tuple) else output.sample)
        b = self.batch
        blocks = [outs[i : i + b] for i in range(0, len(outs), b)]
        uncond = blocks.pop(0) if with_uncond else None
        merged = [combine(None if uncond is None else uncond[j], [blk[j] for blk in blocks],
                          self.cond.weights) for j in range(b)]  # fmt: skip
        result = merged + (uncond if guided and uncond is not None else [])
        if isinstance(output, tuple):
            return (result, *output[1:])
        output.sample = result
        return output


def _caption(text: Encoded, dtype: torch.dtype) -> torch.Tensor:
    return text.embeds[0].to(dtype)


@contextmanager
def follow_captions(
    pipe: Any, conditioning: Conditioning, batch_size: int, *, first_step: int = 0
) -> Iterator[Callable]:
    """AND and prompt schedules on Z-Image's transformer for one pipeline call; yields a
    wrapper for the step callback that moves to the next step."""
    steps = _Steps(first_step)
    state = _CaptionConditioner(conditioning, batch_size, steps)
    with _hooks(pipe.transformer, state.before, state.after, steps) as wrap:
        yield wrap
