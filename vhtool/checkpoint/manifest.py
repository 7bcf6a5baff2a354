"""``vhtool.json``: what vhtool knows about a checkpoint, as one typed, versioned manifest.

:class:`Manifest` and its sections are frozen dataclasses, read with :meth:`Manifest.from_json` (which
checks every known key's type and raises :class:`~vhtool.errors.CheckpointError` naming the bad one)
and written with :meth:`Manifest.to_json` / :func:`write_manifest` (sorted keys, indent 2, no
timestamps, so outputs are reproducible). Like peft's configs, each section is validated once, here;
unlike them, unknown keys are *kept* (in ``extra``) and written back, so a manifest written by a newer
vhtool or edited by hand survives ``make-reference`` and ``attach-reward-adapter``.

Semantic checks (a reward adapter without a name, a format that is not vhtool's) stay with the readers
that report them (``verify`` lists them as failed checks); this module only guarantees types.

Optional keys: a section built by code writes a key when its value is not ``None`` (and the keys in its
``_ALWAYS`` even when ``None``, as the commands always wrote them); a section read from JSON writes back
exactly the keys it was read with, so known keys round-trip as they came, nulls included.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from vhtool._version import __version__
from vhtool.checkpoint.atomic import write_file_atomic
from vhtool.checkpoint.copyio import FileRecord
from vhtool.checkpoint.jsonio import read_json_object
from vhtool.checkpoint.names import MANIFEST_FILE
from vhtool.errors import CheckpointError

FORMAT = "vhtool-checkpoint"
FORMAT_VERSION = 1

_HEX = frozenset("0123456789abcdef")
_S = TypeVar("_S", bound="_Section")


# ------------------------------------------------------------------------------------------------ type checks


def _bad(where: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{MANIFEST_FILE}: {where} {problem}.")


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _bad(where, f"must be an object, got {value!r}")
    return value


def _opt_str(doc: Mapping[str, Any], key: str, where: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise _bad(_at(where, key), f"must be a string, got {value!r}")
    return value


def _opt_int(doc: Mapping[str, Any], key: str, where: str) -> int | None:
    value = doc.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise _bad(_at(where, key), f"must be an integer, got {value!r}")
    return value


def _opt_number(doc: Mapping[str, Any], key: str, where: str) -> float | None:
    value = doc.get(key)
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise _bad(_at(where, key), f"must be a number, got {value!r}")
    return value


def _opt_bool(doc: Mapping[str, Any], key: str, where: str) -> bool | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, bool):
        raise _bad(_at(where, key), f"must be true or false, got {value!r}")
    return value


def _opt_strs(doc: Mapping[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(_at(where, key), f"must be a list of strings, got {value!r}")
    return tuple(value)


def _opt_ints(doc: Mapping[str, Any], key: str, where: str) -> tuple[int, ...] | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise _bad(_at(where, key), f"must be a list of integers, got {value!r}")
    return tuple(value)


def _opt_section(doc: Mapping[str, Any], key: str, where: str, cls: type[_S]) -> _S | None:
    value = doc.get(key)
    return None if value is None else cls.from_json(value, where=_at(where, key))


# ------------------------------------------------------------------------------------------------ sections


@dataclass(frozen=True, kw_only=True)
class _Section:
    """What every section shares: unknown keys kept, and which known keys it was read with."""

    #: Keys this version of vhtool does not know, written back unchanged.
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: The known keys present when read from JSON (``None``: built by code, see the module docstring).
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)

    _KEYS: ClassVar[tuple[str, ...]] = ()
    _ALWAYS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_json(cls: type[_S], value: object, *, where: str) -> _S:  # pragma: no cover - every section overrides
        """Parses the section from JSON, checking the type of every known key."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:  # pragma: no cover - every section overrides
        """The section as written in ``vhtool.json``."""
        raise NotImplementedError

    @classmethod
    def _meta(cls, doc: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "extra": {k: v for k, v in doc.items() if k not in cls._KEYS},
            "present": frozenset(k for k in cls._KEYS if k in doc),
        }

    def _emit(self, items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(self.extra)
        for key, value in items:
            if value is not None:
                out[key] = value
            elif key in (self.present if self.present is not None else self._ALWAYS):
                out[key] = None
        return out


def _json(value: object) -> Any:
    """A field value as JSON: sections through ``to_json``, tuples as lists."""
    if isinstance(value, _Section):
        return value.to_json()
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    return value


@dataclass(frozen=True, kw_only=True)
class FileEntry(_Section):
    """One recorded file: size in bytes, sha256 (``None`` for a linked file not hashed), how it was placed."""

    size: int
    sha256: str | None = None
    how: str | None = None

    _KEYS: ClassVar[tuple[str, ...]] = ("size", "sha256", "how")
    _ALWAYS: ClassVar[tuple[str, ...]] = ("sha256",)

    @classmethod
    def from_json(cls, value: object, *, where: str) -> FileEntry:
        """Parses a ``files`` entry.

        Raises:
            CheckpointError: not an object, a size that is not a byte count, a sha256 that is not a hex digest.
        """
        if not isinstance(value, dict):
            raise _bad(where + ":", "its record is not an object")
        size, sha = value.get("size"), value.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad(where + ":", f"its recorded size {size!r} is not a byte count")
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= _HEX):
            raise _bad(where + ":", f"its recorded sha256 {sha!r} is not a hex digest")
        return cls(size=size, sha256=sha, how=_opt_str(value, "how", where), **cls._meta(value))

    @classmethod
    def from_record(cls, record: FileRecord) -> FileEntry:
        """The entry of a file vhtool just wrote."""
        return cls(size=record.size, sha256=record.sha256, how=record.how)

    def to_json(self) -> dict[str, Any]:
        """The entry as written in ``vhtool.json``."""
        return self._emit([("size", self.size), ("sha256", self.sha256), ("how", self.how)])


def _files(value: object, where: str) -> dict[str, FileEntry]:
    return {name: FileEntry.from_json(e, where=f"{where}[{name!r}]") for name, e in _object(value, where).items()}


@dataclass(frozen=True, kw_only=True)
class SourceInfo(_Section):
    """Where the checkpoint (or the reward adapter) came from: a model id or path, its kind and revision.

    ``convention`` and ``origin`` are written by ``convert`` (the source's head convention and the
    source's own recorded source).
    """

    model: str | None = None
    kind: str | None = None
    path: str | None = None
    revision: str | None = None
    commit: str | None = None
    convention: str | None = None
    origin: SourceInfo | None = None

    _KEYS: ClassVar[tuple[str, ...]] = ("model", "kind", "path", "revision", "commit", "convention", "origin")

    @classmethod
    def from_json(cls, value: object, *, where: str) -> SourceInfo:
        """Parses a source record (``vhtool.hub.Source.record()``)."""
        doc = _object(value, where)
        return cls(
            model=_opt_str(doc, "model", where),
            kind=_opt_str(doc, "kind", where),
            path=_opt_str(doc, "path", where),
            revision=_opt_str(doc, "revision", where),
            commit=_opt_str(doc, "commit", where),
            convention=_opt_str(doc, "convention", where),
            origin=_opt_section(doc, "origin", where, SourceInfo),
            **cls._meta(doc),
        )

    def to_json(self) -> dict[str, Any]:
        """The record as written in ``vhtool.json``."""
        return self._emit((k, _json(getattr(self, k))) for k in self._KEYS)


@dataclass(frozen=True, kw_only=True)
class ValueHeadInfo(_Section):
    """How the value head was made and where it is: init strategy, range, seed, dtype, tensors, file."""

    init_strategy: str | None = None
    initializer_range: float | None = None
    seed: int | None = None
    dtype: str | None = None
    hidden_size: int | None = None
    tensors: tuple[str, ...] | None = None
    file: str | None = None
    convention: str | None = None

    _KEYS: ClassVar[tuple[str, ...]] = (
        "init_strategy",
        "initializer_range",
        "seed",
        "dtype",
        "hidden_size",
        "tensors",
        "file",
        "convention",
    )

    @classmethod
    def from_json(cls, value: object, *, where: str) -> ValueHeadInfo:
        """Parses the ``value_head`` section."""
        doc = _object(value, where)
        return cls(
            init_strategy=_opt_str(doc, "init_strategy", where),
            initializer_range=_opt_number(doc, "initializer_range", where),
            seed=_opt_int(doc, "seed", where),
            dtype=_opt_str(doc, "dtype", where),
            hidden_size=_opt_int(doc, "hidden_size", where),
            tensors=_opt_strs(doc, "tensors", where),
            file=_opt_str(doc, "file", where),
            convention=_opt_str(doc, "convention", where),
            **cls._meta(doc),
        )

    def to_json(self) -> dict[str, Any]:
        """The section as written in ``vhtool.json``."""
        return self._emit((k, _json(getattr(self, k))) for k in self._KEYS)


@dataclass(frozen=True, kw_only=True)
class PolicyRef(_Section):
    """The policy a reference was made from: its path and the sha256 of its weight files then."""

    path: str | None = None
    files: Mapping[str, str | None] | None = None

    _KEYS: ClassVar[tuple[str, ...]] = ("path", "files")

    @classmethod
    def from_json(cls, value: object, *, where: str) -> PolicyRef:
        """Parses ``reference.policy``."""
        doc = _object(value, where)
        files = doc.get("files")
        if files is not None:
            files = _object(files, f"{where}.files")
            if not all(v is None or isinstance(v, str) for v in files.values()):
                raise _bad(f"{where}.files", "must map file names to sha256 strings or null")
        return cls(path=_opt_str(doc, "path", where), files=files, **cls._meta(doc))

    def to_json(self) -> dict[str, Any]:
        """The record as written in ``vhtool.json``."""
        return self._emit([("path", self.path), ("files", None if self.files is None else dict(self.files))])


@dataclass(frozen=True, kw_only=True)
class ReferenceInfo(_Section):
    """What a reference shares with its policy: N leading blocks (``None``: nothing), pattern, exact tensors."""

    shared_layers: int | None = None
    pattern: str | None = None
    num_blocks: int | None = None
    frozen: bool | None = None
    shared_tensors: tuple[str, ...] | None = None
    policy: PolicyRef | None = None

    _KEYS: ClassVar[tuple[str, ...]] = ("shared_layers", "pattern", "num_blocks", "frozen", "shared_tensors", "policy")
    _ALWAYS: ClassVar[tuple[str, ...]] = ("shared_layers",)

    @classmethod
    def from_json(cls, value: object, *, where: str) -> ReferenceInfo:
        """Parses the ``reference`` section."""
        doc = _object(value, where)
        return cls(
            shared_layers=_opt_int(doc, "shared_layers", where),
            pattern=_opt_str(doc, "pattern", where),
            num_blocks=_opt_int(doc, "num_blocks", where),
            frozen=_opt_bool(doc, "frozen", where),
            shared_tensors=_opt_strs(doc, "shared_tensors", where),
            policy=_opt_section(doc, "policy", where, PolicyRef),
            **cls._meta(doc),
        )

    def to_json(self) -> dict[str, Any]:
        """The section as written in ``vhtool.json``."""
        return self._emit((k, _json(getattr(self, k))) for k in self._KEYS)


@dataclass(frozen=True, kw_only=True)
class RewardAdapterInfo(_Section):
    """The reward adapter: PEFT name, subfolder, source, recorded files, score head, PEFT type, targets.

    ``files`` maps a file name (relative to the subfolder) to its entry; a hand-written manifest may list
    bare names instead (``files_listed``), whose entries are ``None`` (existence only).
    """

    name: str | None = None
    subfolder: str | None = None
    source: SourceInfo | None = None
    files: Mapping[str, FileEntry | None] | None = None
    files_listed: bool = False
    score_shape: tuple[int, ...] | None = None
    score_bias: bool | None = None
    peft_type: str | None = None
    target_modules: tuple[str, ...] | str | None = None
    base_model: str | None = None

    _KEYS: ClassVar[tuple[str, ...]] = (
        "name",
        "subfolder",
        "source",
        "files",
        "score_shape",
        "score_bias",
        "peft_type",
        "target_modules",
        "base_model",
    )
    _ALWAYS: ClassVar[tuple[str, ...]] = ("target_modules", "base_model")

    @classmethod
    def from_json(cls, value: object, *, where: str) -> RewardAdapterInfo:
        """Parses the ``reward_adapter`` section."""
        doc = _object(value, where)
        tm = doc.get("target_modules")
        if not (tm is None or isinstance(tm, str)):
            tm = _opt_strs(doc, "target_modules", where)
        files, listed = cls._files(doc.get("files"), f"{where}.files")
        return cls(
            name=_opt_str(doc, "name", where),
            subfolder=_opt_str(doc, "subfolder", where),
            source=_opt_section(doc, "source", where, SourceInfo),
            files=files,
            files_listed=listed,
            score_shape=_opt_ints(doc, "score_shape", where),
            score_bias=_opt_bool(doc, "score_bias", where),
            peft_type=_opt_str(doc, "peft_type", where),
            target_modules=tm,
            base_model=_opt_str(doc, "base_model", where),
            **cls._meta(doc),
        )

    @staticmethod
    def _files(value: object, where: str) -> tuple[dict[str, FileEntry | None] | None, bool]:
        if value is None:
            return None, False
        if isinstance(value, list):
            out: dict[str, FileEntry | None] = {}
            for i, item in enumerate(value):
                if isinstance(item, str):
                    out[item] = None
                    continue
                name = item.get("name") if isinstance(item, dict) else None
                if not isinstance(name, str):
                    raise _bad(f"{where}[{i}]", "must be a file name or an object with a string name")
                out[name] = FileEntry.from_json({k: v for k, v in item.items() if k != "name"}, where=f"{where}[{i}]")
            return out, True
        if not isinstance(value, dict):
            raise _bad(where, "is neither a mapping nor a list")
        return dict(_files(value, where)), False

    def files_json(self) -> Any:
        """``files`` as written in ``vhtool.json`` (a mapping, or the list it was read as)."""
        if self.files is None:
            return None
        if self.files_listed:
            return [n if e is None else {"name": n, **e.to_json()} for n, e in self.files.items()]
        return {n: None if e is None else e.to_json() for n, e in self.files.items()}

    def to_json(self) -> dict[str, Any]:
        """The section as written in ``vhtool.json``."""
        return self._emit((k, self.files_json() if k == "files" else _json(getattr(self, k))) for k in self._KEYS)


@dataclass(frozen=True, kw_only=True)
class ConversionInfo(_Section):
    """What ``convert`` did: the source and target conventions, the source's head tensors, what was lost."""

    source: str | None = None
    target: str | None = None
    source_head: tuple[str, ...] | None = None
    lost: tuple[str, ...] | None = None
    #: Dropped without loss: e.g. the random bias of a value head never trained (see ``convert``'s critic rule).
    dropped_untrained: tuple[str, ...] | None = None
    #: Where ``score`` reads the reward, as the source framework read it (see ``docs/conventions.md``).
    readout: str | None = None

    _KEYS: ClassVar[tuple[str, ...]] = ("from", "to", "source_head", "lost", "dropped_untrained", "readout")

    @classmethod
    def from_json(cls, value: object, *, where: str) -> ConversionInfo:
        """Parses the ``conversion`` section."""
        doc = _object(value, where)
        return cls(
            source=_opt_str(doc, "from", where),
            target=_opt_str(doc, "to", where),
            source_head=_opt_strs(doc, "source_head", where),
            lost=_opt_strs(doc, "lost", where),
            dropped_untrained=_opt_strs(doc, "dropped_untrained", where),
            readout=_opt_str(doc, "readout", where),
            **cls._meta(doc),
        )

    def to_json(self) -> dict[str, Any]:
        """The section as written in ``vhtool.json``."""
        return self._emit(
            [
                ("from", self.source),
                ("to", self.target),
                ("source_head", _json(self.source_head)),
                ("lost", _json(self.lost)),
                ("dropped_untrained", _json(self.dropped_untrained)),
                ("readout", self.readout),
            ]
        )


@dataclass(frozen=True, kw_only=True)
class AdoptedInfo(_Section):
    """Where an adopted checkpoint came from: a folder written by ``save_pretrained`` without a ``vhtool.json``.

    ``kind`` is ``save_pretrained`` (a full model with ``v_head.*`` among its tensors) or ``peft`` (a PEFT
    policy folder: adapter plus the value head in its own file); ``head_file`` is where the head was found;
    ``by`` the command that wrote this manifest (``vhtool convert`` or ``vhtool push``).
    """

    path: str | None = None
    kind: str | None = None
    head_file: str | None = None
    by: str | None = None

    _KEYS: ClassVar[tuple[str, ...]] = ("path", "kind", "head_file", "by")

    @classmethod
    def from_json(cls, value: object, *, where: str) -> AdoptedInfo:
        """Parses the ``adopted`` section."""
        doc = _object(value, where)
        return cls(
            path=_opt_str(doc, "path", where),
            kind=_opt_str(doc, "kind", where),
            head_file=_opt_str(doc, "head_file", where),
            by=_opt_str(doc, "by", where),
            **cls._meta(doc),
        )

    def to_json(self) -> dict[str, Any]:
        """The section as written in ``vhtool.json``."""
        return self._emit((k, _json(getattr(self, k))) for k in self._KEYS)


# ------------------------------------------------------------------------------------------------ manifest


@dataclass(frozen=True, kw_only=True)
class Manifest(_Section):
    """``vhtool.json``: role, architecture, source, value head, files, reference, reward adapter, conversion.

    Attributes:
        format: always :data:`FORMAT` when written by vhtool.
        format_version: :data:`FORMAT_VERSION` when written.
        vhtool_version: the vhtool that last wrote it (stamped by :func:`write_manifest`).
        role: ``policy`` or ``reference``.
        architecture: ``causal`` or ``seq2seq``.
        source: where the model came from.
        model_dtype: the dtype holding most parameters.
        layout: ``single-file`` or ``sharded``.
        value_head: how the value head was made and where it is.
        files: weight file name -> its entry.
        reference: what a reference shares with its policy.
        reward_adapter: the attached reward adapter.
        conversion: what ``convert`` did.
        adopted: where a checkpoint saved without a manifest came from (``convert`` to its own convention, ``push``).
        normalization: reward normalisation statistics carried from an OpenRLHF config (free-form).
        published: in a ``vhtool.json`` on the Hub, every path the ``vhtool push`` that wrote it published there
            (sorted); the next push deletes a remote file the checkpoint no longer has only when it is listed here
            (or is the other half of a single-file/sharded switch). Absent from local checkpoints.
    """

    format: str | None = FORMAT
    format_version: int | None = FORMAT_VERSION
    vhtool_version: str | None = None
    role: str | None = None
    architecture: str | None = None
    source: SourceInfo | None = None
    model_dtype: str | None = None
    layout: str | None = None
    value_head: ValueHeadInfo | None = None
    files: Mapping[str, FileEntry] = field(default_factory=dict)
    reference: ReferenceInfo | None = None
    reward_adapter: RewardAdapterInfo | None = None
    conversion: ConversionInfo | None = None
    adopted: AdoptedInfo | None = None
    normalization: Mapping[str, Any] | None = None
    published: tuple[str, ...] | None = None

    _KEYS: ClassVar[tuple[str, ...]] = (
        "format",
        "format_version",
        "vhtool_version",
        "role",
        "architecture",
        "source",
        "model_dtype",
        "layout",
        "value_head",
        "files",
        "reference",
        "reward_adapter",
        "conversion",
        "adopted",
        "normalization",
        "published",
    )
    _ALWAYS: ClassVar[tuple[str, ...]] = ("format", "format_version", "vhtool_version", "role", "architecture")

    @classmethod
    def from_json(cls, value: object, *, where: str = "") -> Manifest:
        """Parses and type-checks a ``vhtool.json`` document.

        Args:
            value: the parsed JSON.
            where: a prefix for messages (empty for the top level).

        Returns:
            The manifest; keys it does not know are kept in ``extra``.

        Raises:
            CheckpointError: not an object, or a known key of the wrong type (the message names it).
        """
        if not isinstance(value, dict):
            raise CheckpointError(f"{MANIFEST_FILE} must be a JSON object, got {type(value).__name__}.")
        doc: Mapping[str, Any] = value
        files = doc.get("files")
        norm = doc.get("normalization")
        return cls(
            format=_opt_str(doc, "format", where),
            format_version=_opt_int(doc, "format_version", where),
            vhtool_version=_opt_str(doc, "vhtool_version", where),
            role=_opt_str(doc, "role", where),
            architecture=_opt_str(doc, "architecture", where),
            source=_opt_section(doc, "source", where, SourceInfo),
            model_dtype=_opt_str(doc, "model_dtype", where),
            layout=_opt_str(doc, "layout", where),
            value_head=_opt_section(doc, "value_head", where, ValueHeadInfo),
            files={} if files is None else _files(files, _at(where, "files")),
            reference=_opt_section(doc, "reference", where, ReferenceInfo),
            reward_adapter=_opt_section(doc, "reward_adapter", where, RewardAdapterInfo),
            conversion=_opt_section(doc, "conversion", where, ConversionInfo),
            adopted=_opt_section(doc, "adopted", where, AdoptedInfo),
            normalization=None if norm is None else dict(_object(norm, _at(where, "normalization"))),
            published=_opt_strs(doc, "published", where),
            **cls._meta(doc),
        )

    @classmethod
    def new(cls, *, role: str, architecture: str, **fields: Any) -> Manifest:
        """A manifest of the current format; ``fields`` are the other attributes (``source``, ``value_head``...)."""
        return cls(role=role, architecture=architecture, **fields)

    def replace(self, **changes: Any) -> Manifest:
        """A copy with ``changes`` applied; a section set to ``None`` is dropped from the document."""
        if self.present is not None:
            changes.setdefault("present", self.present - {k for k, v in changes.items() if v is None})
        return dataclasses.replace(self, **changes)

    def stamped(self) -> Manifest:
        """This manifest as the running vhtool writes it: ``vhtool_version`` set to its version."""
        return self.replace(vhtool_version=__version__)

    def to_json(self) -> dict[str, Any]:
        """The document as a JSON object (see :func:`manifest_text` for the bytes)."""
        items: list[tuple[str, Any]] = []
        for key in self._KEYS:
            value = getattr(self, key)
            if key == "files":
                value = {name: value[name].to_json() for name in sorted(value)}
            elif key == "normalization" and value is not None:
                value = dict(value)
            items.append((key, _json(value)))
        return self._emit(items)

    @property
    def symlinked_files(self) -> set[str]:
        """Weight files recorded as placed by ``--link symlink`` (links that may leave the folder)."""
        return {name for name, entry in self.files.items() if entry.how == "symlink"}


def files_section(records: Iterable[FileRecord]) -> dict[str, FileEntry]:
    """The ``files`` entries of files vhtool just wrote, by name."""
    return {r.name: FileEntry.from_record(r) for r in sorted(records, key=lambda r: r.name)}


def manifest_text(manifest: Manifest) -> str:
    """The exact text of ``vhtool.json`` for ``manifest``: sorted keys, indent 2, a final newline."""
    return json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n"


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Writes ``directory/vhtool.json``, stamped with the running vhtool's version (the one place that stamps).

    Written by the one atomic file writer (temporary sibling, fsync, lock, rename), so updating a manifest
    in place never leaves half of one, and a concurrent writer of the same manifest fails clearly.

    Raises:
        InputError: the folder cannot be written (exit 2).
        OperationError: another run is writing the manifest, or the write failed (the old one is kept).
    """
    write_file_atomic(directory / MANIFEST_FILE, manifest_text(manifest.stamped()))


def read_manifest(path: Path) -> Manifest:
    """Reads and type-checks a ``vhtool.json`` file.

    Raises:
        CheckpointError: unreadable, not JSON, or not a well-typed manifest.
    """
    return Manifest.from_json(read_json_object(path, MANIFEST_FILE))


def symlinked_files(manifest: Manifest | None) -> set[str]:
    """:attr:`Manifest.symlinked_files`, or the empty set when there is no manifest."""
    return manifest.symlinked_files if manifest is not None else set()


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "AdoptedInfo",
    "ConversionInfo",
    "FileEntry",
    "Manifest",
    "PolicyRef",
    "ReferenceInfo",
    "RewardAdapterInfo",
    "SourceInfo",
    "ValueHeadInfo",
    "files_section",
    "manifest_text",
    "read_manifest",
    "symlinked_files",
    "write_manifest",
]
