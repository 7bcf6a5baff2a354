"""The fixed choices of vhtool's options, defined once and imported by the core and the CLI alike.

Dependency-free on purpose: the CLI builds its ``enum.Enum`` options from these tuples at start-up, so
importing this module must cost nothing (``vhtool --help`` does not import the core's packages).
"""

from __future__ import annotations

#: How base weight files get into an output (``init``, ``make-reference``, ``attach-reward-adapter``).
LINK_MODES = ("auto", "copy", "reflink", "hardlink", "symlink")
#: Value-head initialisations (``init --v-head-init``).
INIT_STRATEGIES = ("random", "normal")
#: Value-head conventions ``convert`` reads and writes (``convert --to``); the table is
#: :data:`vhtool.checkpoint.conventions.TABLE` (``verl`` and ``trlx-rm`` are read, not written).
CONVENTIONS = ("vhtool", "sidecar", "seq-cls", "token-cls", "openrlhf", "deepspeed-chat", "trlx")
#: Every convention detection names (``convert --from``): the targets plus the read-only ones.
SOURCE_CONVENTIONS = ("auto", *CONVENTIONS, "verl", "trlx-rm")
#: Where a sequence's reward is read (``score --readout``); see :mod:`vhtool.models.scoring.readout`.
READOUTS = ("last", "last-non-pad", "eos", "before-eos")
#: What a converted checkpoint is (``convert --role``).
ROLES = ("reward", "critic")
#: Classifier heads' tensor names (``convert --head-name``).
HEAD_NAMES = ("score", "value_head", "classifier")
#: ``score`` options.
HEADS = ("reward", "value")
JOIN_MODES = ("chat", "concat")
DTYPES = ("float32", "bfloat16", "float16", "auto")
DEVICES = ("cpu", "cuda", "auto")
ON_ERROR = ("fail", "skip")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
FORMATS = ("auto", "jsonl", "text")
