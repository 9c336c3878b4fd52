"""Face restoration files as users have them, with random weights, for face tests.

- `codeformer-v0.1.0.pth` in `Codeformer/`: the real CodeFormer architecture (its VQ
  encoder and generator cannot be shrunk) with a small transformer (64 wide, 1 layer, 16
  codes), as `{"params_ema": ...}` like the released file, in float16 to keep it small;
  spandrel-extra-arches reads the sizes back from the tensors.
- `GFPGANv1.4.pth` in `GFPGAN/` (only with `gfpgan=True`): the real GFPGANv1Clean, whose
  size spandrel fixes.
- `detection_Resnet50_Final.pth` and `parsing_parsenet.pth` in `GFPGAN/`: facexlib's
  RetinaFace and ParseNet. The detector's face/background head is set so that it finds no
  face anywhere (random weights would find random ones); tests that need a face give its
  landmarks to the helper.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _half(state: dict) -> dict:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def write_face_models(models_dir: Path, *, gfpgan: bool = False, seed: int = 0) -> Path:
    """Write the files under `models_dir` (GFPGAN/, Codeformer/); returns `models_dir`."""
    from facexlib.detection.retinaface import RetinaFace
    from facexlib.parsing.parsenet import ParseNet
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    torch.manual_seed(seed)
    gfpgan_dir, codeformer_dir = models_dir / "GFPGAN", models_dir / "Codeformer"
    gfpgan_dir.mkdir(parents=True, exist_ok=True)
    codeformer_dir.mkdir(parents=True, exist_ok=True)
    detector = RetinaFace(network_name="resnet50", half=False, device="cpu").state_dict()
    for key in [k for k in detector if k.startswith("ClassHead.")]:
        if key.endswith("weight"):
            detector[key] = torch.zeros_like(detector[key])
        else:  # (anchors x [background, face]) logits: always background
            detector[key] = torch.tensor([10.0, -10.0]).repeat(detector[key].numel() // 2)
    torch.save(detector, gfpgan_dir / "detection_Resnet50_Final.pth")
    parser = ParseNet(in_size=512, out_size=512, parsing_ch=19).state_dict()
    torch.save(parser, gfpgan_dir / "parsing_parsenet.pth")
    codeformer = CodeFormer(dim_embd=64, n_head=8, n_layers=1, codebook_size=16,
                            connect_list=["32", "64", "128", "256"])  # fmt: skip
    torch.save({"params_ema": _half(codeformer.state_dict())},
               codeformer_dir / "codeformer-v0.1.0.pth")  # fmt: skip
    if gfpgan:
        write_gfpgan(gfpgan_dir / "GFPGANv1.4.pth")
    return models_dir


def write_gfpgan(path: Path) -> Path:
    from spandrel.architectures.GFPGAN import GFPGAN

    model = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2,
                   decoder_load_path=None, fix_decoder=False, num_mlp=8,
                   input_is_latent=True, different_w=True, narrow=1, sft_half=True)  # fmt: skip
    torch.save({"params_ema": _half(model.state_dict())}, path)
    return path
