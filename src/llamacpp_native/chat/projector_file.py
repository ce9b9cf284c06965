"""A projector (mmproj GGUF) checked before llama.cpp reads it.

llama.cpp's GGUF getters abort the process on a key of the wrong type, and a
projector made for another model fails late: both are refused here with a
``ProjectorLoadError`` naming the file.
"""

from __future__ import annotations

from pathlib import Path

from llamacpp_native.binding._library import lib
from llamacpp_native.binding.gguf_header import (
    GGUFFormatError,
    GGUFTensor,
    GGUFType,
    GGUFValue,
    read_gguf_tensors,
)
from llamacpp_native.binding.model import Model
from llamacpp_native.errors import ProjectorLoadError

_U32, _I32, _F32 = GGUFType.UINT32, GGUFType.INT32, GGUFType.FLOAT32
_BOOL, _STR = GGUFType.BOOL, GGUFType.STRING
_PER_MODALITY = {
    "embedding_length": _U32,
    "attention.head_count": _U32,
    "attention.head_count_kv": _U32,
    "attention.head_dim": _U32,
    "feed_forward_length": _U32,
    "block_count": _U32,
    "projection_dim": _U32,
    "attention.layer_norm_epsilon": _F32,
    "projector_type": _STR,
}
SCALAR_KEYS: dict[str, GGUFType] = {
    "general.name": _STR,
    "general.description": _STR,
    "clip.projector_type": _STR,
    "clip.has_vision_encoder": _BOOL,
    "clip.has_audio_encoder": _BOOL,
    "clip.has_gen_audio_encoder": _BOOL,
    "clip.use_gelu": _BOOL,
    "clip.use_silu": _BOOL,
    "clip.minicpmv_version": _I32,
    "clip.minicpmv_query_num": _U32,
    "clip.vision.image_size": _U32,
    "clip.vision.patch_size": _U32,
    "clip.vision.image_min_pixels": _U32,
    "clip.vision.image_max_pixels": _U32,
    "clip.vision.preproc_min_tiles": _U32,
    "clip.vision.preproc_max_tiles": _U32,
    "clip.vision.preproc_image_size": _U32,
    "clip.vision.projector.scale_factor": _U32,
    "clip.vision.projector.query_side": _U32,
    "clip.vision.projector.window_side": _U32,
    "clip.vision.spatial_merge_size": _U32,
    "clip.vision.swiglu_clamp": _F32,
    "clip.vision.mm_patch_merge_type": _STR,
    "clip.vision.n_wa_pattern": _U32,
    "clip.vision.window_size": _U32,
    "clip.vision.sam.head_count": _U32,
    "clip.vision.sam.block_count": _U32,
    "clip.vision.sam.embedding_length": _U32,
    "clip.vision.expert_used_count": _U32,
    "clip.audio.num_mel_bins": _U32,
    "clip.audio.projector.stack_factor": _U32,
    "clip.audio.chunk_size": _U32,
    "clip.audio.conv_kernel_size": _U32,
    "clip.audio.max_pos_emb": _U32,
    "clip.audio.projector.window_size": _U32,
    "clip.audio.projector.downsample_rate": _U32,
    "clip.audio.projector.head_count": _U32,
    "clip.audio.rvq.num_quantizers": _U32,
    "clip.audio.window_size": _U32,
    "clip.audio.local_block_count": _U32,
    "clip.audio.local_group_size": _U32,
    "clip.audio.subsampling_factor": _U32,
    "clip.gen.audio.model_variant": _STR,
    **{f"clip.{m}.{k}": t for m in ("vision", "audio", "gen.audio") for k, t in _PER_MODALITY.items()},
}
"""Scalar keys llama.cpp's projector loader (``tools/mtmd/clip.cpp``) reads, with the only type it accepts."""

ARRAY_KEYS: dict[str, GGUFType] = {
    "clip.vision.image_mean": _F32,
    "clip.vision.image_std": _F32,
    "clip.vision.image_grid_pinpoints": _I32,
    "clip.vision.projector.spatial_offsets": _I32,
    "clip.vision.wa_layer_indexes": _I32,
    "clip.vision.wa_pattern_mode": _I32,
    "clip.vision.feature_layer": _I32,
    "clip.audio.feature_layer": _I32,
    "clip.audio.rvq.codebook_size": _I32,
    "clip.audio.wa_pattern_mode": _I32,
}

OUTPUT_WIDTH = {
    "gemma3": ("mm.input_projection.weight", 0),
    "idefics3": ("mm.model.fc.weight", 1),
    "mlp": ("mm.2.weight", 1),
}
"""Where some projector types keep their output width (the tensor and its dimension), as clip.cpp reads it."""


_FALSE = GGUFValue(GGUFType.BOOL, False)


def _describe(entry: GGUFValue) -> str:
    return f"an array of {entry.type.name}" if entry.is_array else entry.type.name


def check_projector_file(path: Path, model: Model) -> str:
    """Raise ``ProjectorLoadError`` for what llama.cpp would reject or abort on; return the projector type."""
    if not path.exists():
        raise ProjectorLoadError(f"projector (mmproj) file not found: {path}")
    if not path.is_file():
        raise ProjectorLoadError(f"projector (mmproj) path is not a file (a directory?): {path}")
    try:
        metadata, tensors = read_gguf_tensors(path)
    except (GGUFFormatError, OSError) as error:
        raise ProjectorLoadError(f"not a projector (mmproj) GGUF: {path}: {error}") from None
    for key, entry in metadata.items():
        scalar, array = SCALAR_KEYS.get(key), ARRAY_KEYS.get(key)
        if scalar is not None and (entry.is_array or entry.type != scalar):
            raise ProjectorLoadError(
                f"bad projector {path}: {key} must be {scalar.name}, not {_describe(entry)}"
            )
        if array is not None and (not entry.is_array or entry.type != array):
            raise ProjectorLoadError(
                f"bad projector {path}: {key} must be an array of {array.name}, not {_describe(entry)}"
            )
    encoders = [m for m in ("vision", "audio") if metadata.get(f"clip.has_{m}_encoder", _FALSE).value]
    if not encoders:
        kind = metadata.get("general.architecture")
        hint = "" if kind is None else f" (general.architecture is {kind.value!r}; is it the model itself?)"
        raise ProjectorLoadError(
            f"not a projector (mmproj) GGUF: {path}: it has no vision or audio encoder{hint}"
        )
    keys = ("clip.projector_type", "clip.vision.projector_type")
    projector = str(next((metadata[k].value for k in keys if k in metadata), ""))
    _check_output_width(path, projector, tensors, model)
    return projector or "+".join(str(metadata[f"clip.{m}.projector_type"].value) for m in encoders)


def _check_output_width(path: Path, projector: str, tensors: dict[str, GGUFTensor], model: Model) -> None:
    where = OUTPUT_WIDTH.get(projector)
    if where is None:
        return  # llama.cpp checks it too, and fails without aborting
    name, dim = where
    tensor = tensors.get(name)
    if tensor is None or len(tensor.shape) <= dim:
        raise ProjectorLoadError(f"bad {projector} projector {path}: tensor {name} is missing or malformed")
    with model.gate:
        expected = int(lib.llama_model_n_embd_inp(model.handle))
    width = tensor.shape[dim]
    if width != expected:
        raise ProjectorLoadError(
            f"projector {path} outputs embeddings of width {width}, but model {model.path.name} takes "
            f"{expected}: this mmproj belongs to another model"
        )
