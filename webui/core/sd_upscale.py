"""SD upscale (A1111's img2img script): upscale with a model, redraw it tile by tile.

The first init image is upscaled by `scale` with the chosen upscaler, cut into tiles of
the job's width x height overlapping by at least `overlap` pixels, and every tile goes
through img2img with the job's checkpoint, prompt and denoising strength, `batch_size`
tiles at a time. The redrawn tiles are joined with linear blends over the overlaps, so
the seams do not show. `batch_count` gives that many upscaled images, seeds counting up
(A1111: in image n, tile j of the c-th group of tiles gets seed + n + c + j).

This module must never import a UI library.
"""

from __future__ import annotations

import logging
import math
import time

from ..imaging import masks as geometry
from ..imaging.codec import to_rgb
from .faces import restored
from .img2img import Img2ImgJob, Prepared
from .params import MAX_SEED
from .params_img2img import Img2ImgParams
from .processing import GeneratedImage, finish_image
from .run import RunContext

log = logging.getLogger(__name__)


def sd_upscale(run: RunContext, params: Img2ImgParams) -> list[GeneratedImage]:
    sd, progress = params.sd_upscale, run.progress
    progress.text = "SD upscale: upscaling"
    source = to_rgb(params.init_images[0])
    upscaled = run.upscalers.upscale(source, sd.scale, sd.upscaler, should_stop=run.should_stop)
    grid = geometry.split_grid(upscaled, params.width, params.height, sd.overlap)
    tiles = grid.tiles()
    fields = {"SD upscale overlap": sd.overlap, "SD upscale upscaler": sd.upscaler.name}
    job = Img2ImgJob(run, params, fields)
    chunks = math.ceil(len(tiles) / params.batch_size)
    progress.batches = chunks * params.batch_count
    progress.text = f"SD upscale: {len(tiles)} tiles"
    results: list[GeneratedImage] = []
    for n in range(params.batch_count):
        seed = (params.seed + n) % (MAX_SEED + 1)
        redrawn = []
        for chunk in range(chunks):
            if run.should_stop():
                break
            progress.batch, progress.step = n * chunks + chunk, 0
            if not results and chunk == 0:
                progress.started_at = time.monotonic()
            part = tiles[chunk * params.batch_size : (chunk + 1) * params.batch_size]
            step = 0 if params.subseed_strength > 0 else 1  # variation: the subseed counts
            seeds = [(seed + (chunk + i) * step) % (MAX_SEED + 1) for i in range(len(part))]
            subseeds = [(params.subseed + chunk + i) % (MAX_SEED + 1) for i in range(len(part))]
            redrawn += job.run([Prepared(tile, tile) for tile in part], seeds, subseeds)
        if len(redrawn) < len(tiles):  # interrupted: keep the upscale where not redrawn
            redrawn += tiles[len(redrawn) :]
        grid.replace_tiles(redrawn)
        combined = restored(run, params, geometry.combine_grid(grid))  # the whole picture
        results.append(finish_image(run, params, combined, seed, job.fields))
        if run.should_stop():
            break
    progress.text = ""
    return results
