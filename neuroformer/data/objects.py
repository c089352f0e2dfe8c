"""The one place torch_brain's data layer is imported, so an upstream rename touches one file.

Never import the standalone `temporaldata` package: its classes are distinct and fail
isinstance checks against these.
"""
from torch_brain.batching import collate, pad, track_mask
from torch_brain.data import (
    ArrayDict,
    Data,
    Interval,
    IrregularTimeSeries,
    RegularTimeSeries,
    SessionDescription,
    SubjectDescription,
)
from torch_brain.datasets import Dataset, DatasetIndex
from torch_brain.samplers import RandomFixedWindowSampler, SequentialFixedWindowSampler

__all__ = [
    "ArrayDict", "Data", "Interval", "IrregularTimeSeries", "RegularTimeSeries",
    "SessionDescription", "SubjectDescription", "Dataset", "DatasetIndex",
    "RandomFixedWindowSampler", "SequentialFixedWindowSampler", "collate", "pad", "track_mask",
]
