"""Reading a local checkpoint's headers (model weights, sidecar, reward adapter) for inspection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vhtool.checkpoint.inspect.adapter import adapter_record, adapter_report
from vhtool.checkpoint.inspect.model import (
    PART_ADAPTER,
    PART_MODEL,
    PART_SIDECAR,
    AdapterReport,
    Loaded,
    SourceInfo,
    Tensor,
)
from vhtool.checkpoint.layout import (
    SIDECAR_FILE,
    Checkpoint,
    TensorLocation,
    open_checkpoint,
    read_json_object,
    safe_member,
)
from vhtool.checkpoint.names import ADAPTER_CONFIG, ADAPTER_PICKLE, ADAPTER_WEIGHTS, DEFAULT_ADAPTER_SUBFOLDER
from vhtool.checkpoint.safetensors_io import TensorInfo, read_header
from vhtool.errors import CheckpointError


def load_local(root: Path, info: SourceInfo) -> Loaded:
    ckpt = open_checkpoint(root)
    tensors: list[Tensor] = []
    for name, loc in ckpt.tensors.items():
        hdr = ckpt.headers[loc.file]
        tensors.append(
            Tensor(
                name,
                name,
                loc.info,
                loc.file,
                PART_MODEL,
                abs_path=hdr.path,
                abs_offset=hdr.data_start + loc.info.begin,
            )
        )
    if ckpt.sidecar is not None:
        sc = ckpt.sidecar
        for name, ti in sc.tensors.items():
            tensors.append(
                Tensor(
                    f"{SIDECAR_FILE}:{name}",
                    name,
                    ti,
                    SIDECAR_FILE,
                    PART_SIDECAR,
                    abs_path=sc.path,
                    abs_offset=sc.data_start + ti.begin,
                )
            )
    adapter, adapter_tensors = local_adapter(ckpt)
    tensors.extend(adapter_tensors)
    layout = "sharded" if ckpt.sharded else "single-file"
    return Loaded(source=info, ckpt=ckpt, layout=layout, tensors=tensors, adapter=adapter)


def local_adapter(ckpt: Checkpoint) -> tuple[AdapterReport | None, list[Tensor]]:
    root = ckpt.path
    rec = adapter_record(ckpt.manifest, (root / DEFAULT_ADAPTER_SUBFOLDER / ADAPTER_CONFIG).is_file())
    if rec is None:
        return None, []
    name, sub, recorded, problems = rec
    if problems:
        return adapter_report(name, sub, recorded, None, {}, problems, ckpt.config), []
    folder = safe_member(root, sub, "the reward adapter subfolder")
    if not folder.is_dir():
        problems.append(f"subfolder {sub}/ is missing")
        return adapter_report(name, sub, recorded, None, {}, problems, ckpt.config), []
    cfg: dict[str, Any] | None = None
    cfg_path = safe_member(root, f"{sub}/{ADAPTER_CONFIG}", "the reward adapter config")
    if not cfg_path.is_file():
        problems.append(f"{sub}/{ADAPTER_CONFIG} is missing")
    else:
        try:
            cfg = read_json_object(cfg_path, ADAPTER_CONFIG)
        except CheckpointError as exc:
            problems.append(str(exc))
    tensors: list[Tensor] = []
    infos: dict[str, TensorInfo] = {}
    weights = safe_member(root, f"{sub}/{ADAPTER_WEIGHTS}", "the reward adapter weights")
    rel = f"{sub}/{ADAPTER_WEIGHTS}"
    if not weights.is_file():
        pickled = (folder / ADAPTER_PICKLE).exists()
        problems.append(
            f"{rel} is missing"
            + (" (only a pickle adapter_model.bin, which vhtool never unpickles)" if pickled else "")
        )
    else:
        try:
            hdr = read_header(weights)
        except CheckpointError as exc:
            problems.append(str(exc))
        else:
            infos = dict(hdr.tensors)
            for tname, ti in hdr.tensors.items():
                tensors.append(
                    Tensor(
                        f"{rel}:{tname}",
                        tname,
                        ti,
                        rel,
                        PART_ADAPTER,
                        abs_path=hdr.path,
                        abs_offset=hdr.data_start + ti.begin,
                    )
                )
    return adapter_report(name, sub, recorded, cfg, infos, problems, ckpt.config), tensors


#: torch dtype names -> the safetensors dtype strings the report uses.
_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def load_local_pickle(root: Path, info: SourceInfo, files: list[str]) -> Loaded:
    """A pickle-only checkpoint (DeepSpeed-Chat, trlx), read with torch's weights-only loader (``--allow-pickle``).

    The only inspection path that imports torch (the pickle must be loaded whole to learn its names and shapes);
    a folder without ``config.json`` (trlx's summarisation RM) is described from its tensors alone.
    """
    from vhtool.checkpoint.catalogue import CONFIG_FILE
    from vhtool.checkpoint.layout import read_local_manifest
    from vhtool.checkpoint.pickle_src import load_pickle_file, read_config

    config = read_config(root)
    notes = [f"read {', '.join(files)} with torch's weights-only loader (--allow-pickle)"]
    if config is None:
        notes.append(f"no {CONFIG_FILE}: a bare state dict; convert it with --config-from MODEL")
    locations: dict[str, TensorLocation] = {}
    tensors: list[Tensor] = []
    for name in files:
        path = safe_member(root, name, "the pickle index")
        offset = 0
        for tname, t in load_pickle_file(path).items():
            if tname in locations:
                raise CheckpointError(f"{root}: tensor {tname!r} is in both {locations[tname].file} and {name}.")
            nbytes = t.numel() * t.element_size()
            dtype = _DTYPES.get(str(t.dtype).removeprefix("torch."), str(t.dtype).removeprefix("torch.").upper())
            ti = TensorInfo(tname, dtype, tuple(int(d) for d in t.shape), offset, offset + nbytes)
            offset += nbytes
            locations[tname] = TensorLocation(file=name, info=ti)
            tensors.append(Tensor(tname, tname, ti, name, PART_MODEL, abs_path=path, abs_offset=ti.begin))
    ckpt = Checkpoint(
        path=root,
        config=dict(config or {}),
        weight_files=list(files),
        headers={},
        tensors=locations,
        manifest=read_local_manifest(root),
    )
    layout = "sharded" if len(files) > 1 else "single-file"
    return Loaded(source=info, ckpt=ckpt, layout=f"{layout}, pickle", tensors=tensors, adapter=None, notes=notes)
