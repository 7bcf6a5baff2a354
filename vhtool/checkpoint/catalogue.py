"""The one catalogue of checkpoint files: what each file is, and who may copy, replace, publish, delete or fetch it.

Every rule about file names in vhtool is a question to this module; no other module keeps a list of names.
A file of a checkpoint directory is one of the kinds of :class:`Kind`, decided by its name alone
(:func:`kind_of`). The questions:

* :func:`init_copies` — which files of a source ``init`` (and ``convert``/``make-reference``) copies beside
  the weights it writes itself: the config, tokenizer and auxiliary files of a model repo (licence, processor
  configs), never weights, pickles, training state, vhtool's own files or anything unknown;
* :func:`force_may_replace` — which entries make a directory a previous output that ``--force`` may replace:
  everything vhtool, ``init`` (through :func:`init_copies`) or ``save_pretrained``/``Trainer`` write;
* :func:`push_publishes` — which files ``push`` sends: the checkpoint without pickles, training state or
  vhtool's internal markers;
* :func:`push_may_delete` — which remote files ``push`` may delete: only files vhtool itself published
  there (listed in the remote ``vhtool.json``), or the other half of a single-file/sharded switch;
* :func:`save_supersedes` — which files of an older checkpoint a new ``save_pretrained`` replaces;
* :func:`hub_metadata_names` and :func:`hub_weight_names` — what a Hub read downloads: the small files by
  exact name first, then only the weight files the index names (never ``consolidated.safetensors``,
  ``original/…`` or ``onnx/…``).

No imports beyond the standard library: every room asks it.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Collection, Iterable, Mapping

# ---------------------------------------------------------------------------------------------- the names

#: The weights of a single-file checkpoint (also where TRL 1.12.0 reads a PEFT policy's value head).
SINGLE_FILE = "model.safetensors"
#: The index of a sharded safetensors checkpoint.
INDEX_FILE = "model.safetensors.index.json"
#: The value head stored beside the model (LLaMA-Factory's and vhtool 0.1.0's sidecar convention).
SIDECAR_FILE = "value_head.safetensors"
#: The extra shard ``init`` writes for the value head of a sharded model.
HEAD_SHARD = "model-value-head.safetensors"
#: The name a single-file source's weights take when ``init --link`` places them as the one shard of a sharded layout.
LINKED_SINGLE = "model-00001-of-00001.safetensors"
#: The model's configuration.
CONFIG_FILE = "config.json"
#: The generation defaults ``save_pretrained`` writes for a generative model.
GENERATION_CONFIG_FILE = "generation_config.json"
#: What vhtool knows about a checkpoint (see :mod:`vhtool.checkpoint.manifest`).
MANIFEST_FILE = "vhtool.json"
#: The model card.
CARD_FILE = "README.md"
#: vhtool's marker of a built-in tiny model (never published).
BUILTIN_MARKER = "builtin.json"
#: The PEFT adapter config, in the adapter folder.
ADAPTER_CONFIG = "adapter_config.json"
#: The PEFT adapter weights as safetensors (what vhtool stores).
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: The PEFT adapter weights as a pickle (read only with ``--allow-pickle``, never stored).
ADAPTER_PICKLE = "adapter_model.bin"
#: Pickled weights (``--allow-pickle`` only): single file and index as transformers writes them.
PICKLE_FILE = "pytorch_model.bin"
PICKLE_INDEX_FILE = "pytorch_model.bin.index.json"
#: The value head as a pickle (LLaMA-Factory, TRL's PEFT policy folders).
SIDECAR_PICKLE = "value_head.bin"
#: The reward adapter's default PEFT name, which is also the subfolder it is stored in.
DEFAULT_ADAPTER_NAME = "reward_model_adapter"
DEFAULT_ADAPTER_SUBFOLDER = DEFAULT_ADAPTER_NAME
#: Where a PEFT policy folder keeps its value head, in the order vhtool reads them (TRL 1.12.0's pickle,
#: :data:`PICKLE_FILE`, comes last and only with ``--allow-pickle``).
PEFT_HEAD_FILES = (SINGLE_FILE, SIDECAR_FILE)

#: Tokenizer files (``save_pretrained`` of a tokenizer, sentencepiece and tiktoken models, chat templates).
TOKENIZER_NAMES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "tokenizer.model",
        "spiece.model",
        "sentencepiece.bpe.model",
        "chat_template.jinja",
        "chat_template.json",
    }
)
TOKENIZER_PATTERNS = ("*.tiktoken",)
#: Other files of a model repo that travel with the model: licences and notices, processor configs.
AUXILIARY_PATTERNS = (
    "LICENSE",
    "LICENSE.*",
    "LICENCE*",
    "NOTICE*",
    "USE_POLICY*",
    "preprocessor_config.json",
    "processor_config.json",
    "feature_extractor_config.json",
    "image_processor_config.json",
    "video_preprocessor_config.json",
    # A remote-code model's own modules (config.json's auto_map names them): without them it does not load.
    "configuration_*.py",
    "modeling_*.py",
    "tokenization_*.py",
)
#: What ``Trainer.save_model`` writes beside the model (training state; a pickle, never published).
TRAINING_NAMES = frozenset({"training_args.bin"})
#: Weight files by name pattern: safetensors (single, sharded, the head shard), pickles.
WEIGHT_PATTERNS = ("*.safetensors",)
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
#: A sharded index (safetensors or pickle).
INDEX_PATTERNS = ("*.safetensors.index.json", "*.bin.index.json")
#: What ``save_pretrained`` writes for weights, by name: the files a new save supersedes.
SAVED_WEIGHT_PATTERNS = (
    SINGLE_FILE,
    "model-*.safetensors",
    INDEX_FILE,
    PICKLE_FILE,
    "pytorch_model-*.bin",
    PICKLE_INDEX_FILE,
    SIDECAR_FILE,
    SIDECAR_PICKLE,
    ADAPTER_WEIGHTS,
    ADAPTER_PICKLE,
    ADAPTER_CONFIG,
)


class Kind(enum.Enum):
    """What a top-level file of a checkpoint directory is."""

    WEIGHTS = "weights"  # safetensors weights: single file, shards, the head shard, the sidecar
    INDEX = "index"  # a sharded checkpoint's index
    CONFIG = "config"  # config.json, generation_config.json
    TOKENIZER = "tokenizer"
    MANIFEST = "manifest"  # vhtool.json
    CARD = "card"  # README.md
    ADAPTER = "adapter"  # a PEFT adapter's config or weights
    AUXILIARY = "auxiliary"  # licence, notices, processor configs
    PICKLE = "pickle"  # pickled weights (never unpickled by default, never published)
    TRAINING = "training"  # Trainer state saved beside the model
    INTERNAL = "internal"  # vhtool's own marker of a built-in


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def kind_of(name: str) -> Kind | None:
    """The kind of a top-level file called ``name``, or None for a file that is not part of a checkpoint."""
    if name.startswith(".") or "/" in name:
        return None
    if name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_PICKLE):
        return Kind.ADAPTER
    if name == MANIFEST_FILE:
        return Kind.MANIFEST
    if name == CARD_FILE:
        return Kind.CARD
    if name == BUILTIN_MARKER:
        return Kind.INTERNAL
    if name in (CONFIG_FILE, GENERATION_CONFIG_FILE):
        return Kind.CONFIG
    if name in TRAINING_NAMES:
        return Kind.TRAINING
    if _matches(name, INDEX_PATTERNS):
        return Kind.INDEX if name.endswith(".safetensors.index.json") else Kind.PICKLE
    if _matches(name, WEIGHT_PATTERNS):
        return Kind.WEIGHTS
    if _matches(name, PICKLE_PATTERNS):
        return Kind.PICKLE
    if name in TOKENIZER_NAMES or _matches(name, TOKENIZER_PATTERNS):
        return Kind.TOKENIZER
    if _matches(name, AUXILIARY_PATTERNS):
        return Kind.AUXILIARY
    return None


def is_weight_file(name: str) -> bool:
    """True for a top-level weight file of any format (safetensors or pickle, index excluded)."""
    kind = kind_of(name)
    return kind is Kind.WEIGHTS or (kind is Kind.PICKLE and not name.endswith(".index.json"))


def is_safetensors(name: str) -> bool:
    """True for a safetensors weight file name (a single file, a shard, the head shard or the sidecar)."""
    return kind_of(name) is Kind.WEIGHTS


def init_copies(name: str) -> bool:
    """Whether ``init`` (and the other commands that build a checkpoint from a source) copies this source file.

    Config, tokenizer and auxiliary files travel as they are. Weights are written by the command itself; an
    index is rebuilt; vhtool's manifest and card are regenerated; pickles, training state, the built-in marker,
    hidden files and unknown files stay behind.
    """
    return kind_of(name) in (Kind.CONFIG, Kind.TOKENIZER, Kind.AUXILIARY)


def force_may_replace(name: str) -> bool:
    """Whether a top-level entry called ``name`` may be in a directory that ``--force`` replaces.

    Everything vhtool or ``save_pretrained``/``Trainer.save_model`` writes, including what :func:`init_copies`
    copied from a source; never a hidden entry (``.git``) or an unknown file (scripts, data).
    """
    return kind_of(name) is not None


def adapter_folder_may_hold(name: str) -> bool:
    """Whether a file may be in a PEFT adapter subfolder of a directory that ``--force`` replaces."""
    return force_may_replace(name)


def adapter_copies(name: str) -> bool:
    """Whether ``attach-reward-adapter`` copies this top-level file of a PEFT adapter folder into its subfolder.

    The adapter's config and safetensors weights (a pickle is rewritten as safetensors instead), its card, and
    the config, tokenizer and auxiliary files :func:`init_copies` would copy; never pickles, training state,
    hidden or unknown files, so the subfolder stays one that ``--force`` may replace.
    """
    return name != ADAPTER_PICKLE and (init_copies(name) or kind_of(name) in (Kind.ADAPTER, Kind.CARD))


def push_publishes(name: str) -> bool:
    """Whether ``push`` publishes a file of the checkpoint (top level, or in the reward adapter's subfolder).

    Weights, index, config, tokenizer, manifest, card, adapter and auxiliary files; never pickles, training state,
    vhtool's built-in marker, hidden or unknown files.
    """
    if name == ADAPTER_PICKLE:  # an adapter's pickled weights: an adapter file, but a pickle all the same
        return False
    return kind_of(name) in (
        Kind.WEIGHTS,
        Kind.INDEX,
        Kind.CONFIG,
        Kind.TOKENIZER,
        Kind.MANIFEST,
        Kind.CARD,
        Kind.ADAPTER,
        Kind.AUXILIARY,
    )


def save_supersedes(name: str) -> bool:
    """Whether a new ``save_pretrained`` that did not write ``name`` makes an older top-level ``name`` stale.

    Weights, indexes, the sidecar and a top-level PEFT adapter: an index-first loader would otherwise read an old
    value head beside the new weights.
    """
    return _matches(name, SAVED_WEIGHT_PATTERNS)


def push_may_delete(
    path: str,
    *,
    published_before: Collection[str] | None,
    local_sharded: bool,
    remote_index_names: Collection[str] = (),
) -> bool:
    """Whether ``push`` may delete the remote file ``path`` that the local checkpoint no longer has.

    Args:
        path: a file of the remote revision, absent from what this push publishes.
        published_before: the files the remote ``vhtool.json`` says an earlier vhtool push published (None when
            the remote has no such list: nothing is known to be vhtool's).
        local_sharded: the local checkpoint is sharded (the remote single file is the other half of the switch).
        remote_index_names: the weight files the remote's own index names (the remote shards of a switch).

    Returns:
        True only for a file an earlier vhtool push published, or the other half of a single-file/sharded
        switch: the remote ``model.safetensors`` when the local checkpoint is sharded; the remote index and the
        shards it names when the local checkpoint is a single file. Everything else on the remote is someone
        else's (``consolidated.safetensors``, ``model.fp16.safetensors``, ``onnx/…``) and stays.
    """
    if published_before is not None and path in published_before:
        return True
    if local_sharded:
        return path == SINGLE_FILE
    return path == INDEX_FILE or (path in remote_index_names and "/" not in path)


def hub_metadata_names(*, allow_pickle: bool = False) -> list[str]:
    """Exact top-level names (and patterns that only top-level files match in practice) a Hub read fetches first.

    The small files: config, tokenizer, manifest, index, the sidecar, a top-level PEFT adapter's config,
    auxiliary files. The weights follow by :func:`hub_weight_names` once the index is known.
    """
    names = [
        CONFIG_FILE,
        GENERATION_CONFIG_FILE,
        MANIFEST_FILE,
        INDEX_FILE,
        ADAPTER_CONFIG,
        *sorted(TOKENIZER_NAMES),
        *TOKENIZER_PATTERNS,
        *(p for p in AUXILIARY_PATTERNS if not any(c in p for c in "*?[")),
    ]
    if allow_pickle:
        names.append(PICKLE_INDEX_FILE)
    return names


def hub_weight_names(
    *,
    index: Mapping[str, object] | None,
    adapter_subfolder: str | None = None,
    has_adapter_config: bool = False,
    allow_pickle: bool = False,
    pickle_index: Mapping[str, object] | None = None,
) -> list[str]:
    """The weight files a Hub read fetches: what the index names (or the single file), the sidecar, the adapter.

    Args:
        index: the parsed ``model.safetensors.index.json`` when the repo has one.
        adapter_subfolder: the reward adapter's subfolder named by the repo's ``vhtool.json``.
        has_adapter_config: the repo is a PEFT adapter (``adapter_config.json`` at the top).
        allow_pickle: also the pickled weights (``--allow-pickle``).
        pickle_index: the parsed ``pytorch_model.bin.index.json`` when the repo has one.
    """
    names: list[str] = [*_index_names(index)] if index is not None else [SINGLE_FILE]
    names.append(SIDECAR_FILE)
    if has_adapter_config:
        names.append(ADAPTER_WEIGHTS)
    if adapter_subfolder:
        sub = adapter_subfolder.strip("/")
        names += [f"{sub}/{ADAPTER_CONFIG}", f"{sub}/{ADAPTER_WEIGHTS}"]
    if allow_pickle:
        names += [*_index_names(pickle_index)] if pickle_index is not None else [PICKLE_FILE]
        names += [SIDECAR_PICKLE] + ([ADAPTER_PICKLE] if has_adapter_config else [])
    return list(dict.fromkeys(names))


def _index_names(index: Mapping[str, object] | None) -> list[str]:
    weight_map = index.get("weight_map") if index is not None else None
    if not isinstance(weight_map, dict):
        return []
    return sorted({v for v in weight_map.values() if isinstance(v, str) and "/" not in v and not v.startswith(".")})


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_PICKLE",
    "ADAPTER_WEIGHTS",
    "BUILTIN_MARKER",
    "CARD_FILE",
    "CONFIG_FILE",
    "DEFAULT_ADAPTER_NAME",
    "DEFAULT_ADAPTER_SUBFOLDER",
    "GENERATION_CONFIG_FILE",
    "HEAD_SHARD",
    "INDEX_FILE",
    "LINKED_SINGLE",
    "MANIFEST_FILE",
    "PEFT_HEAD_FILES",
    "PICKLE_FILE",
    "PICKLE_INDEX_FILE",
    "SIDECAR_FILE",
    "SIDECAR_PICKLE",
    "SINGLE_FILE",
    "Kind",
    "adapter_copies",
    "adapter_folder_may_hold",
    "force_may_replace",
    "hub_metadata_names",
    "hub_weight_names",
    "init_copies",
    "is_safetensors",
    "is_weight_file",
    "kind_of",
    "push_may_delete",
    "push_publishes",
    "save_supersedes",
]
