"""``vhtool init``: a policy checkpoint with a fresh value head, built from files, never from a loaded model."""

from __future__ import annotations

import functools
import json
import math
import random
import shlex
import shutil
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vhtool.checkpoint.atomic import atomic_output_dir
from vhtool.checkpoint.catalogue import HEAD_SHARD as HEAD_SHARD
from vhtool.checkpoint.catalogue import LINKED_SINGLE as LINKED_SINGLE
from vhtool.checkpoint.catalogue import init_copies
from vhtool.checkpoint.conventions import VHEAD_BIAS, VHEAD_WEIGHT, find_heads, ties_embeddings
from vhtool.checkpoint.copyio import LINK_MODES, FileRecord, Progress, hub_blob_sha256, place_file, run_parallel
from vhtool.checkpoint.layout import (
    INDEX_FILE,
    SINGLE_FILE,
    Checkpoint,
    hidden_size,
    open_checkpoint,
    safe_member,
)
from vhtool.checkpoint.manifest import Manifest, SourceInfo, ValueHeadInfo, files_section, write_manifest
from vhtool.checkpoint.target import check_output_target
from vhtool.checkpoint.writer import PlannedTensor, RangeSource, write_safetensors
from vhtool.choices import INIT_STRATEGIES as INIT_STRATEGIES
from vhtool.errors import InputError

_CLASSIFIER_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")


@dataclass(frozen=True)
class HeadSpec:
    """How to initialise a value head. ``random`` is nn.Linear's default distribution; ``normal`` is N(0, range)."""

    strategy: str = "random"
    initializer_range: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in INIT_STRATEGIES:
            raise InputError(f"unknown value-head init {self.strategy!r}; choose one of {', '.join(INIT_STRATEGIES)}.")
        r = self.initializer_range
        if not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
            raise InputError(f"--v-head-initializer-range must be a positive number, got {r!r}.")
        if self.seed < 0:
            raise InputError(f"--seed must be >= 0, got {self.seed}.")


def make_value_head(hidden: int, spec: HeadSpec) -> tuple[array[float], array[float]]:
    """Deterministic float32 ``weight [1, hidden]`` and ``bias [1]`` (row-major) from ``spec``.

    Drawn with Python's Mersenne Twister seeded by ``spec.seed`` (no numpy or torch import, so
    ``init`` starts fast and stays small): ``random`` is nn.Linear's default distribution
    U(-1/sqrt(hidden), 1/sqrt(hidden)) for weight and bias, ``normal`` is N(0, range) with a zero bias.
    """
    rng = random.Random(spec.seed)
    if spec.strategy == "normal":
        weight = array("f", (rng.gauss(0.0, spec.initializer_range) for _ in range(hidden)))
        bias = array("f", [0.0])
    else:  # kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias
        bound = 1.0 / math.sqrt(hidden)
        weight = array("f", (rng.uniform(-bound, bound) for _ in range(hidden)))
        bias = array("f", [rng.uniform(-bound, bound)])
    if sys.byteorder != "little":  # safetensors is little-endian
        weight.byteswap()
        bias.byteswap()
    return weight, bias


@dataclass(frozen=True)
class InitResult:
    out: Path
    layout: str
    files: list[FileRecord]
    head_shape: tuple[int, ...]
    head_dtype: str
    architecture: str
    seconds: float
    reinitialised: bool
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "layout": self.layout,
            "architecture": self.architecture,
            "files": [f.to_json() for f in self.files],
            "value_head": {"shape": list(self.head_shape), "dtype": self.head_dtype},
            "reinitialised": self.reinitialised,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


def architecture_of(config: dict[str, Any], where: Path) -> str:
    """``causal`` or ``seq2seq`` from the config; refuses classifier checkpoints, which have no LM head."""
    archs = config.get("architectures") or []
    if (
        isinstance(archs, list)
        and archs
        and all(isinstance(a, str) and a.endswith(_CLASSIFIER_SUFFIXES) for a in archs)
    ):
        raise InputError(
            f"{where}: is a {archs[0]} checkpoint with no language-model head; a policy needs one "
            f"({_classifier_hint_for(config, where, Path(f'{where}-value-head'))})."
        )
    return "seq2seq" if config.get("is_encoder_decoder") else "causal"


def _classifier_hint(ckpt: Checkpoint, out: Path) -> str:
    return _classifier_hint_for(ckpt.config, ckpt.path, out)


def _classifier_hint_for(config: dict[str, Any], where: Path, out: Path) -> str:
    """What to do with a classifier (critic/reward) checkpoint given to ``init``: a command only when it works."""
    if ties_embeddings(config):  # the embeddings are the LM head: convert can rebuild a causal LM
        return (
            f"`vhtool convert {shlex.quote(str(where))} --to vhtool -o {shlex.quote(str(out))}` moves its head into a "
            "value head"
        )
    return (
        "its LM head is not tied to the embeddings and a classifier does not store it, so no policy can be built "
        "from it; start from the causal LM it was made from (`vhtool init MODEL`)"
    )


def _has_head_message(
    ckpt: Checkpoint, out: Path, *, kinds: str, source: dict[str, Any], force: bool, convention: str
) -> str:
    """The refusal of a source that already has a value head: what to run instead, as commands that work."""
    src_args = [str(ckpt.path)]
    model = source.get("model")
    if source.get("kind") in ("hub", "builtin") and isinstance(model, str) and model:
        src_args = [model]  # the Hub id as typed, not its cache snapshot
        revision = source.get("revision")
        if isinstance(revision, str) and revision:
            src_args += ["--revision", revision]
    src_q = shlex.join(src_args)
    out_q = shlex.quote(str(out))
    again = " --force" if force else ""  # OUT exists (check_output_target let it through only with --force)
    reinit = f"`vhtool init {src_q} -o {out_q} --reinit-head{again}` replaces it with a fresh, untrained one"
    force_note = " (--force only replaces a previous output, never a head)" if force else ""
    if ckpt.manifest is None and "--revision" not in src_args:  # convert takes no --revision
        # what save_pretrained writes after training: keep the trained head
        return (
            f"{ckpt.path}: already has a value head ({kinds}), e.g. a trained one saved by save_pretrained; "
            f"`vhtool convert {src_q} --to {convention} -o {out_q}{again}` adopts it as it is (the head kept bit for "
            f"bit, a vhtool.json written); {reinit}{force_note}."
        )
    return (
        f"{ckpt.path}: already has a value head ({kinds}) and is a value-head checkpoint as it is (use it, or copy "
        f"the folder, to keep that head); {reinit}{force_note}."
    )


def copy_aux_files(src: Path, dst: Path) -> list[str]:
    """Copies what :func:`~vhtool.checkpoint.catalogue.init_copies` allows: config, tokenizer, auxiliary files.

    Regular files at the top level only. Weights, indexes, vhtool's manifest and card, pickles, training state and
    unknown files (``train.py``) stay behind, so the output holds nothing ``--force`` may not replace later.
    """
    copied = []
    for p in sorted(src.iterdir()):
        if not init_copies(p.name) or p.is_dir():
            continue
        real = safe_member(src, p.name, "a source file")  # refuses links leading outside the source
        if not real.is_file():
            continue
        shutil.copyfile(real, dst / p.name)
        copied.append(p.name)
    return copied


def place_weight_files(
    ckpt: Checkpoint,
    tmp: Path,
    names: list[str],
    *,
    link: str,
    want_hash: bool,
    progress: Progress | None,
    fsync: bool,
    known_sha256: dict[str, str | None] | None = None,
) -> list[FileRecord]:
    """Places weight files of ``ckpt`` unchanged into ``tmp`` by ``link`` mode, two at a time, in ``names`` order.

    A file's sha256 comes with its copy; for linked files it is taken from ``known_sha256`` or the Hub
    cache's blob name, else computed only when ``want_hash``.
    """
    jobs: list[Callable[[], FileRecord]] = []
    for name in names:
        src = ckpt.weight_path(name)
        jobs.append(
            functools.partial(
                place_file,
                src,
                tmp / name,
                mode=link,
                name=name,
                want_hash=want_hash,
                known_sha256=(known_sha256 or {}).get(name) or hub_blob_sha256(src),
                progress=progress,
                fsync=fsync,
            )
        )
    return run_parallel(jobs)


def init_checkpoint(
    src: Path,
    out: Path,
    *,
    head: HeadSpec,
    source: dict[str, Any],
    link: str = "auto",
    force: bool = False,
    reinit_head: bool = False,
    want_hash: bool = False,
    progress_factory: Callable[[int], Progress] | None = None,
    durable: bool = True,
) -> InitResult:
    """Writes a policy checkpoint: ``src``'s files plus a value head, in a temporary sibling renamed to ``out``.

    Args:
        src: a local checkpoint directory (already resolved from a path, Hub id or builtin).
        out: the output directory.
        head: the value-head initialisation.
        source: what to record as the source in ``vhtool.json`` (``model``, ``revision``...).
        link: how base weight files get into ``out`` (see :data:`LINK_MODES`).
        force: replace ``out`` if it is a previous vhtool output (nothing more: see :mod:`vhtool.checkpoint.target`).
        reinit_head: replace a value head the source already has with a fresh one; without it such a source is
            refused, so a trained head is never thrown away by accident.
        want_hash: hash linked files too (a full read); copies are always hashed for free.
        progress_factory: called with the total bytes, returns a callback taking byte counts.
        durable: fsync before the final rename.

    Raises:
        InputError: ``src`` already has a value head and ``reinit_head`` is false (the message names
            ``--reinit-head`` and, for a trained save, ``vhtool convert``), or any other bad input.
    """
    started = time.perf_counter()
    if link not in LINK_MODES:
        raise InputError(f"unknown --link mode {link!r}; choose one of {', '.join(LINK_MODES)}.")
    out = check_output_target(out, force=force, inputs=[src])
    ckpt = open_checkpoint(src)
    arch = architecture_of(ckpt.config, ckpt.path)
    hidden = hidden_size(ckpt.config)
    notes: list[str] = []
    heads = find_heads(ckpt)
    drop: set[str] = set()
    if heads:
        kinds = ", ".join(h.description for h in heads)
        if any(h.convention not in ("vhtool", "sidecar") for h in heads):
            raise InputError(f"{ckpt.path}: holds a classifier head ({kinds}); {_classifier_hint(ckpt, out)}.")
        if not reinit_head:
            raise InputError(
                _has_head_message(ckpt, out, kinds=kinds, source=source, force=force, convention=heads[0].convention)
            )
        drop = {VHEAD_WEIGHT, VHEAD_BIAS}
        notes.append(f"the source's value head ({kinds}) was replaced by a fresh one (--reinit-head)")

    weight, bias = make_value_head(hidden, head)
    head_tensors = [
        PlannedTensor(VHEAD_WEIGHT, "F32", (1, hidden), weight.tobytes()),
        PlannedTensor(VHEAD_BIAS, "F32", (1,), bias.tobytes()),
    ]
    total = sum(ckpt.path.joinpath(f).stat().st_size for f in ckpt.weight_files)
    progress = progress_factory(total) if progress_factory else None

    with atomic_output_dir(out, force=force, durable=durable, inputs=[src]) as tmp:
        copy_aux_files(ckpt.path, tmp)
        if not ckpt.sharded and link in ("auto", "copy"):
            layout = "single-file"
            records = [
                _rewrite(ckpt, SINGLE_FILE, tmp, drop=drop, extra=head_tensors, progress=progress, fsync=durable)
            ]
        else:
            layout = "sharded"
            if not ckpt.sharded:
                notes.append(
                    f"--link {link} on a single-file source gives a sharded layout; TRL 1.12.0 cannot load a local "
                    "sharded value-head checkpoint (vhtool and transformers can)"
                )
            records = _write_sharded(
                ckpt,
                tmp,
                drop=drop,
                extra=head_tensors,
                link=link,
                want_hash=want_hash,
                progress=progress,
                fsync=durable,
            )
        manifest = Manifest.new(
            role="policy",
            architecture=arch,
            source=SourceInfo.from_json(source, where="source"),
            model_dtype=ckpt.dominant_dtype(drop),
            layout=layout,
            value_head=ValueHeadInfo(
                init_strategy=head.strategy,
                initializer_range=head.initializer_range,
                seed=head.seed,
                dtype="F32",
                hidden_size=hidden,
                tensors=(VHEAD_WEIGHT, VHEAD_BIAS),
                file=records[-1].name,
            ),
            files=files_section(records),
        )
        write_manifest(tmp, manifest)
    return InitResult(
        out=out,
        layout=layout,
        files=records,
        head_shape=(1, hidden),
        head_dtype="F32",
        architecture=arch,
        seconds=time.perf_counter() - started,
        reinitialised=bool(drop),
        notes=notes,
    )


def _rewrite(
    ckpt: Checkpoint,
    file: str,
    tmp: Path,
    *,
    drop: set[str],
    extra: list[PlannedTensor],
    progress: Progress | None,
    out_name: str | None = None,
    fsync: bool = False,
) -> FileRecord:
    """Writes ``file`` again with ``drop`` removed and ``extra`` appended; tensor bytes move in the kernel."""
    hdr = ckpt.headers[file]
    path = ckpt.path / file
    kept = [
        PlannedTensor(t.name, t.dtype, t.shape, RangeSource(path, hdr.data_start + t.begin, t.nbytes))
        for t in sorted(hdr.tensors.values(), key=lambda t: t.begin)
        if t.name not in drop
    ]
    name = out_name or file
    return write_safetensors(
        tmp / name, kept + extra, metadata=hdr.metadata, name=name, progress=progress, fsync=fsync
    )


def _write_sharded(
    ckpt: Checkpoint,
    tmp: Path,
    *,
    drop: set[str],
    extra: list[PlannedTensor],
    link: str,
    want_hash: bool,
    progress: Progress | None,
    fsync: bool = False,
) -> list[FileRecord]:
    jobs: list[Callable[[], FileRecord]] = []
    weight_map: dict[str, str] = {}
    for file in ckpt.weight_files:
        hdr = ckpt.headers[file]
        out_name = file if ckpt.sharded else LINKED_SINGLE
        names = set(hdr.tensors) - drop
        if not names:
            continue  # a shard that held only the old value head
        if names != set(hdr.tensors):
            jobs.append(
                functools.partial(
                    _rewrite, ckpt, file, tmp, drop=drop, extra=[], progress=progress, out_name=out_name, fsync=fsync
                )
            )
        else:
            src = ckpt.weight_path(file)
            jobs.append(
                functools.partial(
                    place_file,
                    src,
                    tmp / out_name,
                    mode=link,
                    name=out_name,
                    want_hash=want_hash,
                    known_sha256=hub_blob_sha256(src),
                    progress=progress,
                    fsync=fsync,
                )
            )
        weight_map.update(dict.fromkeys(names, out_name))
    records = run_parallel(jobs)
    head_rec = write_safetensors(tmp / HEAD_SHARD, extra, metadata={"format": "pt"}, name=HEAD_SHARD, fsync=fsync)
    records.append(head_rec)
    weight_map.update(dict.fromkeys((t.name for t in extra), HEAD_SHARD))
    total_size = sum(loc.info.nbytes for n, loc in ckpt.tensors.items() if n not in drop) + sum(
        t.nbytes for t in extra
    )
    meta = dict((ckpt.index or {}).get("metadata") or {})
    meta["total_size"] = total_size
    index = {"metadata": meta, "weight_map": dict(sorted(weight_map.items()))}
    (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return records
