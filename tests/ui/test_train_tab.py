"""The Train tab's parts that need no browser: controls to params, the loss curve's data."""

from __future__ import annotations

from types import SimpleNamespace

from webui.core.train_params import LoraTrainParams
from webui.ui.train_tab import DEFAULTS, FIELDS, _params, loss_frame


def test_the_controls_values_become_params_empty_numbers_the_defaults():
    values = {name: getattr(DEFAULTS, name) for name in FIELDS}
    values.update(checkpoint="tiny [abc]", train_data_dir=" /data/set ", output_name="mine",
                  network_dim=16.0, unet_lr=None, seed="", sample_prompts="a cat\nred")  # fmt: skip
    params = _params(values)
    assert isinstance(params, LoraTrainParams)
    assert params.network_dim == 16 and isinstance(params.network_dim, int)
    assert params.unet_lr == DEFAULTS.unet_lr and params.seed == -1
    assert params.train_data_dir == "/data/set" and params.sample_prompts == "a cat\nred"


def test_the_loss_curve_is_drawn_from_the_jobs_log():
    frame = loss_frame(SimpleNamespace(losses=[(1, 0.5), (2, 0.25)]))
    assert list(frame["step"]) == [1, 2] and list(frame["loss"]) == [0.5, 0.25]
    assert loss_frame(None).empty


def test_steps_are_not_sent_through_gradio_only_the_curve_and_state_changes(monkeypatch):
    """Every Gradio stream message costs the page a walk over its components: a step of
    training changes nothing the stream sends (live_progress shows steps, loss and ETA)."""
    import asyncio
    import time

    from webui.core.jobs import JobQueue
    from webui.options import Options
    from webui.ui import train_tab

    def runner(job):
        for step in range(1, 101):  # a step every 10 ms
            job.progress.text = f"Epoch 1/1, loss {1 / step:.4f}, "
            job.progress.advance(step, 100)
            time.sleep(0.01)
        return SimpleNamespace(images=[], warnings=[], params=job.params, message="done")

    queue = JobQueue(runner)
    queue.start()
    ctx = SimpleNamespace(jobs=queue, options=Options())
    monkeypatch.setattr(train_tab, "PLOT_EVERY", 3600.0)

    async def main() -> list:
        job = queue.submit("train_lora", SimpleNamespace(prompt="train"), owner="alice")
        return [update async for update in train_tab.follow_training(ctx, job)]

    try:
        seen = asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        queue.stop()
    assert 2 <= len(seen) <= 4, [str(s[0])[:80] for s in seen]  # start, running, the end
    assert "done" in str(seen[-1][0])
