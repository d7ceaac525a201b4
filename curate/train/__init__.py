"""The bundled fine-tuning module: weighted SFT and DPO on a selection, mixture sampling, per-domain held-out loss.

    from curate.train import train
    res = train("runs/x", "ila", model="smollm2", lora=True, heldout_split=300)
    res.metrics["heldout"]["macro"]

Built on transformers' `Trainer` (subclassed for the loss, the batch sampler and the logs, see
`curate.train.trainer`) and peft for LoRA. Stage layout and key: `curate.train.stage`.
"""

from curate.train.data import TrainDataError, TrainRows, from_files, from_selection
from curate.train.model import ModelDirError, merge_adapter
from curate.train.sampler import MixtureBatchSampler, TokenBudgetBatchSampler, load_mixture
from curate.train.stage import TrainResult, train

__all__ = [
    "MixtureBatchSampler",
    "ModelDirError",
    "TokenBudgetBatchSampler",
    "TrainDataError",
    "TrainResult",
    "TrainRows",
    "from_files",
    "from_selection",
    "load_mixture",
    "merge_adapter",
    "train",
]
