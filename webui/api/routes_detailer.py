"""ADetailer's own endpoints: GET /adetailer/v1/version and /adetailer/v1/ad_model.

Clients written for the ADetailer extension ask these before they send
`alwayson_scripts: {"ADetailer": ...}`: the version of ADetailer whose behaviour and
infotext the built-in detailer follows, and the detector names a unit may use (the files
in `models/adetailer`, read at each call). Included by the composition root with the
API's auth.

This module must never import torch or diffusers: it only talks to the AppContext.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..core.params_detailer import ADETAILER_VERSION
from ..services.detailer import detector_names
from .auth import api_user
from .deps import Ctx


def adetailer_router() -> APIRouter:
    router = APIRouter(prefix="/adetailer/v1", tags=["adetailer"],
                       dependencies=[Depends(api_user)])  # fmt: skip

    @router.get("/version")
    def version() -> dict[str, str]:
        """The ADetailer version whose fields and infotext this server follows."""
        return {"version": ADETAILER_VERSION}

    @router.get("/ad_model")
    def ad_model(ctx: Ctx) -> dict[str, list[str]]:
        """Detector names for ad_model (YOLO .onnx files in models/adetailer)."""
        return {"ad_model": detector_names(ctx.generation.detector_dir)}

    return router
