"""Transfer learning (paper Sec. 4.3, Table 4, App. H): linear probe, fine-tuning, LoRA QV / FFN, TE tuning.

Pure parts: ``methods`` prepare a loaded model in place (new head, what is trainable, adapters),
``schedule`` holds App. H's optimisation constants, ``fit.fit_transfer`` trains and evaluates one
(model, method, seed) and returns a tidy row and a per-epoch history. See docs/transfer.md.
"""

from .fit import TransferResult, fit_transfer, infer_num_classes, param_groups, summarize_transfer
from .lora import (
    LORA_ALPHA,
    LORA_DROPOUT,
    LORA_RANK,
    FusedQKVLoRA,
    add_lora_ffn,
    add_lora_qv,
    lora_delta_weight,
    lora_layers,
    merge_lora,
)
from .methods import (
    METHOD_LABELS,
    METHODS,
    PAPER_TRAINABLE_PARAMS,
    full_finetune,
    head_parameters,
    linear_probe,
    lora_ffn,
    lora_qv,
    prepare,
    reset_head,
    time_embedding_tuning,
    trainable_parameters,
)
from .schedule import APP_H, METHOD_DEFAULTS, MethodDefaults, TransferSchedule, app_h_batch_size

__all__ = [
    "APP_H",
    "LORA_ALPHA",
    "LORA_DROPOUT",
    "LORA_RANK",
    "METHODS",
    "METHOD_DEFAULTS",
    "METHOD_LABELS",
    "PAPER_TRAINABLE_PARAMS",
    "FusedQKVLoRA",
    "MethodDefaults",
    "TransferResult",
    "TransferSchedule",
    "add_lora_ffn",
    "add_lora_qv",
    "app_h_batch_size",
    "fit_transfer",
    "full_finetune",
    "head_parameters",
    "infer_num_classes",
    "linear_probe",
    "lora_delta_weight",
    "lora_ffn",
    "lora_layers",
    "lora_qv",
    "merge_lora",
    "param_groups",
    "prepare",
    "reset_head",
    "summarize_transfer",
    "time_embedding_tuning",
    "trainable_parameters",
]
