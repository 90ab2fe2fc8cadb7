"""BASELINE ONLY, not the product: a plain FastAPI server on the same checkpoints, for comparison.

    uvicorn benchmarks.plain_server:app --port 8100   (RETINA_MODELS_DIR=models/ by default)

What a first version of a model API looks like (the project's seed server): a synchronous
``def predict`` (FastAPI runs it in its thread pool), PIL decode, the project's own
``eval_transform`` from the checkpoint's spec (so its answers equal the service's on the same
image), one torch forward per request, softmax with the checkpoint's temperature. No image gate,
no micro-batching, no audit, no metrics, no limits. ``benchmarks/serve_benchmark.py`` drives it
beside RetinaScope and prints the ratio.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, File, HTTPException, UploadFile
from PIL import Image

from retina import checkpoint, registry
from retina.gate import GATE_FILE
from retina.paths import DEFAULT_MODELS_DIR
from retina.preprocessing import eval_transform

MODELS_DIR = Path(os.environ.get("RETINA_MODELS_DIR", str(DEFAULT_MODELS_DIR)))
_LOADED: dict[str, tuple[torch.nn.Module, Any, Any]] = {}
for _path in sorted(MODELS_DIR.glob("*.pt")):
    if _path.name == GATE_FILE:
        continue
    _model, _meta = checkpoint.load(_path)
    _entry = (_model.eval(), _meta, eval_transform(_meta.preprocess))
    _LOADED[_path.stem] = _entry
for _spec in registry.MODELS.values():  # ?model=oct / fundus: the registry's defaults, as in the service
    if _spec.key in _LOADED:
        _LOADED.setdefault(_spec.task, _LOADED[_spec.key])

app = FastAPI(title="plain baseline (benchmarks only)")


@app.get("/ready")
def ready() -> dict[str, list[str]]:
    return {"models": sorted(_LOADED)}


@app.post("/predict")
def predict(model: str = "oct", file: UploadFile = File(...)) -> dict[str, Any]:
    if model not in _LOADED:
        raise HTTPException(404, f"unknown model {model}")
    net, meta, transform = _LOADED[model]
    img = Image.open(io.BytesIO(file.file.read()))
    x = transform(img).unsqueeze(0)
    with torch.no_grad():
        probs = torch.softmax(net(x)[0] / meta.temperature, dim=0)
    best = int(probs.argmax())
    return {
        "label": meta.class_names[best],
        "probabilities": {c: float(p) for c, p in zip(meta.class_names, probs, strict=True)},
    }
